//! Where on a function to place its entry and return probes: at the symbol, or on the first
//! instruction that the kernel emulates instead of single-stepping, when every instruction
//! before it provably leaves the arguments and the return address as they were at entry.
//!
//! # Why
//!
//! A uprobe replaces an instruction with `int3`. On the hit, the kernel runs the BPF program
//! and then has to execute the displaced instruction. A few instructions it *emulates* in the
//! trap handler; every other one is copied to a per-thread slot and *single-stepped* there,
//! which costs a second trap. NVIDIA's driver begins every export with a RIP-relative `cmpl`
//! (single-stepped) followed by a `je` (emulated): an entry and return probe on the `je`, 10
//! bytes in, costs about a twentieth of the same probes on the symbol.
//!
//! # What the kernel emulates (x86-64, Linux 6.18)
//!
//! From `arch/x86/kernel/uprobes.c`, `arch_uprobe_analyze_insn()`:
//!
//! - `branch_setup_xol_ops()`: `jmp rel8` (`eb`), `jmp rel32` (`e9`), `call rel32` (`e8`),
//!   `jcc rel8` (`70`–`7f`) and `jcc rel32` (`0f 80`–`0f 8f`), refused with an operand-size
//!   prefix `66`; and, since the generalized `insn_is_nop()` (`arch/x86/lib/insn-eval.c`, 6.18),
//!   every NOP: `90` without `f3` (that is `pause`) and `0f 1f /0` (`nopl`/`nopw`).
//!   Older kernels emulate `90` only; a `nopl` chosen there is single-stepped: slower, never
//!   wrong.
//! - `push_setup_xol_ops()`: `push reg` (`50`–`57`, or `41 50`–`41 57`); any other encoding
//!   is single-stepped.
//! - `uprobe_init_insn()` / `is_prefix_bad()`: an instruction with a segment prefix `26`, `2e`,
//!   `36`, `3e` or a `lock` prefix `f0` cannot be probed at all.
//!
//! Source read: <https://github.com/torvalds/linux/blob/master/arch/x86/kernel/uprobes.c>
//! (`branch_setup_xol_ops`, `push_setup_xol_ops`, `is_prefix_bad`, `uprobe_init_insn`,
//! `arch_uprobe_analyze_insn`) and
//! <https://github.com/torvalds/linux/blob/master/arch/x86/lib/insn-eval.c> (`insn_is_nop`).
//! This module recognizes a subset of those encodings (see [`emulated`]): an instruction it
//! does not recognize costs speed, never correctness.
//!
//! # When skipping is safe
//!
//! The entry probe reads the six argument registers (`rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`),
//! the return address at `*rsp` (and memory the arguments point to); the stack walk starts
//! from `rbp`. The return probe replaces `*rsp` with its trampoline. So the probe may sit on
//! the instruction at offset `k` only if every instruction in `[0, k)`:
//!
//! - decodes, and falls through to the next one (no branch, call, return, trap);
//! - writes no memory;
//! - writes no register other than flags and the scratch registers `rax`, `rbx`, `r10`–`r15`
//!   (never `rsp`, `rbp`, an argument register, a vector, segment or system register);
//!
//! and no direct branch seen in the function's bytes (the chosen instruction included)
//! lands inside `(0, k]`, which would run the probe a second time in one call. A branch to
//! offset 0 is harmless: it would re-run a probe at the symbol too. Otherwise the probe goes
//! on the symbol.

use std::{fs::File, io, os::unix::fs::FileExt as _, path::Path};

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register,
};

/// Where to put the probes on each function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeAt {
    /// On the symbol itself, whatever its first instruction costs.
    Entry,
    /// On the first instruction the kernel emulates, when skipping what comes before it is
    /// provably safe; otherwise on the symbol.
    #[default]
    Auto,
}

/// Where the probes of one function go, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Bytes past the symbol.
    pub offset: u64,
    /// One line for `record --verbose` and debug logs.
    pub reason: String,
}

impl Placement {
    fn entry(reason: impl Into<String>) -> Placement {
        Placement {
            offset: 0,
            reason: reason.into(),
        }
    }
}

/// At most this many instructions are examined for a probe site.
pub const MAX_INSNS: usize = 8;
/// The probe site must end within this many bytes of the symbol.
pub const MAX_BYTES: usize = 64;
/// Bytes read per function by [`place`]: the prologue, and the code swept for branches back
/// into it.
pub const READ_BYTES: usize = 256;

/// Registers a skipped instruction may write: everything the probes read is left out.
const SCRATCH: [Register; 8] = [
    Register::RAX,
    Register::RBX,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// Reads up to `len` bytes of `path` at `file_offset`; fewer at the end of the file.
pub fn code_at(path: &Path, file_offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut buf = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], file_offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The placement of the function at `file_offset` of `path`, as `probe_at` asks. Code that
/// cannot be read is probed at the symbol.
pub fn place(path: &Path, file_offset: u64, probe_at: ProbeAt) -> Placement {
    match probe_at {
        ProbeAt::Entry => Placement::entry("--probe-at entry"),
        ProbeAt::Auto => match code_at(path, file_offset, READ_BYTES) {
            Ok(code) => choose(&code, file_offset),
            Err(e) => Placement::entry(format!("code unreadable: {e}")),
        },
    }
}

/// Chooses the probe site of the function whose code starts `code`, at address `ip`. `code`
/// may run past the function's end: the first [`MAX_BYTES`] are examined for the site, and
/// all of it is swept for direct branches back into the skipped prefix.
pub fn choose(code: &[u8], ip: u64) -> Placement {
    let window = &code[..code.len().min(MAX_BYTES)];
    let mut decoder = Decoder::with_ip(64, window, ip, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut insn = Instruction::default();
    let mut skipped: Vec<String> = Vec::new();
    for _ in 0..MAX_INSNS {
        if !decoder.can_decode() {
            break;
        }
        let at = decoder.position();
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return Placement::entry(format!("undecodable instruction at +{at}"));
        }
        let bytes = &window[at..at + insn.len()];
        let name = mnemonic(&insn);
        if let Some(kind) = emulated(bytes) {
            if at == 0 {
                return Placement::entry(format!(
                    "{name} at the symbol is already emulated ({kind})"
                ));
            }
            let offset = at as u64;
            if let Some(from) = branch_into(code, ip, offset) {
                return Placement::entry(format!(
                    "a branch at +{from} lands inside the skipped prefix (0, +{offset}]"
                ));
            }
            return Placement {
                offset,
                reason: format!(
                    "{name} at +{offset} is emulated ({kind}); skipped {} (writing only flags or scratch registers)",
                    skipped.join(", ")
                ),
            };
        }
        if let Some(why) = unsafe_to_skip(&insn, &mut factory) {
            return Placement::entry(format!(
                "{name} at +{at} {why}, before any emulated instruction"
            ));
        }
        skipped.push(name);
    }
    Placement::entry(format!(
        "no emulated instruction in the first {MAX_INSNS} instructions or {MAX_BYTES} bytes"
    ))
}

fn mnemonic(insn: &Instruction) -> String {
    format!("{:?}", insn.mnemonic()).to_lowercase()
}

/// Splits legacy prefixes, a REX prefix and the rest (opcode onwards) of one instruction.
fn split_prefixes(bytes: &[u8]) -> (&[u8], Option<u8>, &[u8]) {
    let legacy = bytes
        .iter()
        .take_while(|b| {
            matches!(
                b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
            )
        })
        .count();
    let (prefixes, rest) = bytes.split_at(legacy);
    match rest.split_first() {
        Some((&rex, opcode)) if rex & 0xf0 == 0x40 => (prefixes, Some(rex), opcode),
        _ => (prefixes, None, rest),
    }
}

/// Whether the kernel emulates this instruction (the raw bytes of one decoded instruction),
/// and as what. A conservative subset of `arch_uprobe_analyze_insn()`'s rules (see the
/// module documentation).
pub fn emulated(bytes: &[u8]) -> Option<&'static str> {
    let (prefixes, rex, op) = split_prefixes(bytes);
    // is_prefix_bad(): such an instruction cannot be probed at all.
    if prefixes
        .iter()
        .any(|p| matches!(p, 0x26 | 0x2e | 0x36 | 0x3e | 0xf0))
    {
        return None;
    }
    let only = |allowed: &[u8]| prefixes.iter().all(|p| allowed.contains(p));
    match op {
        // branch_setup_xol_ops(); operand-size overrides are refused there, and this module
        // takes no other legacy prefix than BND (f2) on a branch.
        [0xeb, _] | [0xe9, _, _, _, _] if only(&[0xf2]) => Some("jmp rel, branch_setup_xol_ops"),
        [0xe8, _, _, _, _] if only(&[0xf2]) => Some("call rel32, branch_setup_xol_ops"),
        [0x70..=0x7f, _] if only(&[0xf2]) => Some("jcc rel8, branch_setup_xol_ops"),
        [0x0f, 0x80..=0x8f, _, _, _, _] if only(&[0xf2]) => Some("jcc rel32, branch_setup_xol_ops"),
        // push_setup_xol_ops(): one byte, or REX 41 for r8-r15.
        [0x50..=0x57] if prefixes.is_empty() && matches!(rex, None | Some(0x41)) => {
            Some("push reg, push_setup_xol_ops")
        }
        // insn_is_nop(): 90 without REP (pause) and without REX.B (xchg r8, rax).
        [0x90] if only(&[0x66]) && rex.is_none_or(|r| r & 1 == 0) => Some("nop, insn_is_nop"),
        // insn_is_nop(): 0f 1f /0.
        [0x0f, 0x1f, modrm, ..] if only(&[0x66]) && (modrm >> 3) & 7 == 0 => {
            Some("nopl, insn_is_nop")
        }
        _ => None,
    }
}

/// Why the probe cannot sit after this instruction, if it cannot.
fn unsafe_to_skip(insn: &Instruction, factory: &mut InstructionInfoFactory) -> Option<String> {
    if insn.flow_control() != FlowControl::Next {
        return Some(format!("is a branch ({:?})", insn.flow_control()));
    }
    let info = factory.info(insn);
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return Some("writes memory".into());
    }
    info.used_registers()
        .iter()
        .filter(|r| writes(r.access()))
        .map(|r| r.register().full_register())
        .find(|r| !SCRATCH.contains(r))
        .map(|r| format!("writes {}", format!("{r:?}").to_lowercase()))
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// The offset of a direct branch in `code` (swept linearly from the start) whose target
/// lies in `(ip, ip + offset]`.
fn branch_into(code: &[u8], ip: u64, offset: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        let direct = matches!(
            insn.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
        );
        if !direct || insn.is_invalid() {
            continue;
        }
        let target = insn.near_branch_target();
        if target > ip && target <= ip + offset {
            return Some(insn.ip() - ip);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVIDIA's cuMemAlloc_v2, driver 535 (file offset 0x2d5720 of libcuda.so.1):
    /// `cmpl $0x321cba00,0x193347e(%rip)`; `je +0x18`; `jmp *0x183b806(%rip)`; `nopw`;
    /// `mov $4,%eax`; `ret`; `xchg %ax,%ax`.
    const NVIDIA_CU_MEM_ALLOC_V2: [u8; 32] = [
        0x81, 0x3d, 0x7e, 0x34, 0x93, 0x01, 0x00, 0xba, 0x1c, 0x32, 0x74, 0x0c, 0xff, 0x25, 0x06,
        0xb8, 0x83, 0x01, 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0xb8, 0x04, 0x00, 0x00, 0x00, 0xc3,
        0x66, 0x90,
    ];

    #[test]
    fn nvidia_prologue_is_probed_on_its_je() {
        let p = choose(&NVIDIA_CU_MEM_ALLOC_V2, 0x2d5720);
        assert_eq!(p.offset, 10, "{}", p.reason);
        assert!(p.reason.contains("je"), "{}", p.reason);
    }

    #[test]
    fn the_simulated_driver_prologue_is_probed_on_its_je() {
        // simcuda: `cmp dword ptr [rip+x], 0`; `je +0`; `jmp imp`.
        let code = [
            0x83, 0x3d, 0x25, 0x2f, 0xfd, 0xff, 0x00, 0x74, 0x00, 0xe9, 0xca, 0x9c, 0xff, 0xff,
        ];
        assert_eq!(choose(&code, 0x381c8).offset, 7);
    }

    #[test]
    fn entry_is_entry() {
        let p = place(Path::new("/nonexistent"), 0, ProbeAt::Entry);
        assert_eq!(p.offset, 0);
        let p = place(Path::new("/nonexistent"), 0, ProbeAt::Auto);
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("unreadable"), "{}", p.reason);
    }

    #[test]
    fn code_at_reads_short_at_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [1, 2, 3, 4, 5]).unwrap();
        assert_eq!(code_at(&path, 1, 3).unwrap(), [2, 3, 4]);
        assert_eq!(code_at(&path, 3, 100).unwrap(), [4, 5]);
        assert_eq!(code_at(&path, 9, 4).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn emulated_encodings() {
        let yes: &[&[u8]] = &[
            &[0x74, 0x0c],
            &[0x0f, 0x84, 1, 0, 0, 0],
            &[0xeb, 0xfe],
            &[0xe9, 0, 0, 0, 0],
            &[0xe8, 0, 0, 0, 0],
            &[0x55],
            &[0x41, 0x57],
            &[0x90],
            &[0x66, 0x90],
            &[0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0xf2, 0xe9, 0, 0, 0, 0],
        ];
        for b in yes {
            assert!(emulated(b).is_some(), "{b:02x?}");
        }
        let no: &[&[u8]] = &[
            &[0x66, 0x74, 0x0c],                         // jcc with 66: refused by the kernel
            &[0x2e, 0x74, 0x0c],                         // branch hint: bad prefix
            &[0x3e, 0xe9, 0, 0, 0, 0],                   // notrack-style prefix: bad prefix
            &[0xf3, 0x90],                               // pause
            &[0x41, 0x90],                               // xchg r8, rax
            &[0x48, 0x50],                               // push with REX.W: single-stepped
            &[0x66, 0x50],                               // push ax
            &[0x0f, 0x1f, 0x4c, 0x00, 0x00],             // 0f 1f /1: not a NOP to the kernel
            &[0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0, 0], // cs nopw: bad prefix
            &[0xff, 0x25, 0, 0, 0, 0],                   // jmp *(rip)
            &[0xe3, 0x00],                               // jrcxz
            &[0xf3, 0x0f, 0x1e, 0xfa],                   // endbr64
            &[0x81, 0x3d, 0, 0, 0, 0, 0, 0, 0, 0],       // cmpl
        ];
        for b in no {
            assert!(emulated(b).is_none(), "{b:02x?}");
        }
    }

    #[test]
    fn refuses_a_je_back_into_the_prefix() {
        // cmp [rip], 0; je -9 (to +0 is fine); je -2 (to itself at +7: re-fires).
        let back_to_start = [0x83, 0x3d, 0, 0, 0, 0, 0, 0x74, 0xf7];
        assert_eq!(choose(&back_to_start, 0x1000).offset, 7);
        let to_itself = [0x83, 0x3d, 0, 0, 0, 0, 0, 0x74, 0xfe];
        assert_eq!(choose(&to_itself, 0x1000).offset, 0);
        let into_cmp = [0x83, 0x3d, 0, 0, 0, 0, 0, 0x74, 0xf9];
        assert_eq!(choose(&into_cmp, 0x1000).offset, 0);
    }

    #[test]
    fn refuses_a_later_branch_back_onto_the_probe() {
        // cmp; je +2; nop; nop; jmp -> +7 (the je).
        let code = [
            0x83, 0x3d, 0, 0, 0, 0, 0, 0x74, 0x02, 0x90, 0x90, 0xeb, 0xfa,
        ];
        let p = choose(&code, 0x1000);
        assert_eq!(p.offset, 0, "{}", p.reason);
        assert!(p.reason.contains("+11"), "{}", p.reason);
    }

    /// Bytes of every exported function of one of NVIDIA's driver libraries, by name.
    fn nvidia_exports(path: &Path) -> Vec<(String, u64, Vec<u8>)> {
        use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
        let data = std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; install Debian's libcuda1 (non-free): scripts/setup.sh does",
                path.display()
            )
        });
        let file = object::File::parse(&*data).expect("libcuda.so.1 is ELF");
        let segments: Vec<_> = file
            .segments()
            .map(|s| (s.address(), s.size(), s.file_range().0))
            .collect();
        let mut out = Vec::new();
        for sym in file.dynamic_symbols() {
            if sym.kind() != object::SymbolKind::Text || sym.is_undefined() {
                continue;
            }
            let addr = sym.address();
            let Some((va, _, off)) = segments
                .iter()
                .find(|(va, size, _)| addr >= *va && addr < va + size)
            else {
                continue;
            };
            let file_offset = addr - va + off;
            let code = code_at(path, file_offset, READ_BYTES).expect("reading libcuda.so.1");
            out.push((sym.name().unwrap_or("?").to_string(), file_offset, code));
        }
        out
    }

    #[test]
    fn nvidia_exports_are_probed_on_their_je() {
        for generation in crate::testing::nvidia::generations() {
            exports_of_one_generation_are_probed_on_their_je(&generation);
        }
    }

    fn exports_of_one_generation_are_probed_on_their_je(
        generation: &crate::testing::nvidia::Generation,
    ) {
        let label = generation.label();
        let exports = nvidia_exports(&generation.path);
        assert!(exports.len() > 500, "{label}: {} exports", exports.len());
        // Every exported variant of every hooked entry point, as this library names them.
        let mut hooked = 0;
        for (name, off, code) in &exports {
            if !crate::api::APIS
                .iter()
                .any(|d| crate::api::is_variant(name, d.base))
            {
                continue;
            }
            let p = choose(code, *off);
            assert_eq!(p.offset, 10, "{label}: {name}: {}", p.reason);
            hooked += 1;
        }
        println!("{label}: {hooked} hooked variants, each probed at +10");
        assert!(hooked >= 50, "{label}: {hooked} hooked variants");
        // Every export: the chosen instruction is one the kernel emulates; the driver API
        // proper (cu*) all share the cmpl/je prologue.
        let mut at_symbol = Vec::new();
        for (name, off, code) in &exports {
            let p = choose(code, *off);
            let k = p.offset as usize;
            if k == 0 {
                at_symbol.push(format!("{name}: {}", p.reason));
                continue;
            }
            let mut decoder = Decoder::with_ip(64, &code[k..], 0, DecoderOptions::NONE);
            let insn = decoder.decode();
            assert!(
                emulated(&code[k..k + insn.len()]).is_some(),
                "{label}: {name}: {}",
                p.reason
            );
            if name.starts_with("cu") && !name.starts_with("cudbg") {
                assert_eq!(
                    (k, &code[..2], code[10]),
                    (10, &[0x81, 0x3d][..], 0x74),
                    "{label}: {name}"
                );
            }
        }
        assert!(
            at_symbol.len() < exports.len() / 10,
            "{label}: {at_symbol:#?}"
        );
    }

    /// Property tests on synthetic prologues: each instruction is hand-encoded, so what the
    /// analysis must conclude is known from how the prologue was built.
    mod props {
        use proptest::prelude::*;

        use super::super::*;

        fn rip_rel(op: &[u8], disp: i32, imm: &[u8]) -> Vec<u8> {
            [op, &disp.to_le_bytes(), imm].concat()
        }

        /// Instructions that write only flags or scratch registers and fall through.
        fn harmless() -> impl Strategy<Value = Vec<u8>> {
            let scratch = prop::sample::select(vec![0u8, 3, 10, 11, 12, 13, 14, 15]);
            prop_oneof![
                (any::<i32>(), any::<u32>()).prop_map(|(d, i)| rip_rel(
                    &[0x81, 0x3d],
                    d,
                    &i.to_le_bytes()
                )),
                (any::<i32>(), any::<u8>()).prop_map(|(d, i)| rip_rel(&[0x83, 0x3d], d, &[i])),
                (any::<i32>(), any::<u8>()).prop_map(|(d, i)| rip_rel(&[0x80, 0x3d], d, &[i])),
                // cmp / test reg, reg (any of the 16: reading is fine).
                (0u8..16, 0u8..16, any::<bool>()).prop_map(|(r, m, test)| vec![
                    0x48 | ((r >> 3) << 2) | (m >> 3),
                    if test { 0x85 } else { 0x39 },
                    0xc0 | ((r & 7) << 3) | (m & 7),
                ]),
                // mov scratch, [rip+d]; lea scratch, [rip+d].
                (scratch.clone(), any::<i32>(), any::<bool>()).prop_map(|(n, d, lea)| rip_rel(
                    &[
                        0x48 | ((n >> 3) << 2),
                        if lea { 0x8d } else { 0x8b },
                        0x05 | ((n & 7) << 3)
                    ],
                    d,
                    &[]
                )),
                // mov scratch, argument register (reads rdi..r9, writes a scratch register).
                (scratch, prop::sample::select(vec![7u8, 6, 2, 1, 8, 9])).prop_map(|(n, a)| vec![
                    0x48 | ((a >> 3) << 2) | (n >> 3),
                    0x89,
                    0xc0 | ((a & 7) << 3) | (n & 7),
                ]),
                any::<u32>().prop_map(|i| [&[0xb8][..], &i.to_le_bytes()].concat()), // mov eax, imm32
                Just(vec![0x31, 0xc0]),                                              // xor eax, eax
                Just(vec![0xf3, 0x0f, 0x1e, 0xfa]),                                  // endbr64
                Just(vec![0xf3, 0x90]),                                              // pause
                Just(vec![0x0f, 0x1f, 0x48, 0x00]),                                  // 0f 1f /1
            ]
        }

        /// Instructions the kernel emulates; branches go forward, past themselves.
        fn emulated_insn() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                (0u8..16, 0u8..128).prop_map(|(cc, r)| vec![0x70 + cc, r]),
                (0u8..16, 0i32..i32::MAX).prop_map(|(cc, r)| [
                    &[0x0f, 0x80 + cc][..],
                    &r.to_le_bytes()
                ]
                .concat()),
                (0u8..128).prop_map(|r| vec![0xeb, r]),
                (0i32..i32::MAX).prop_map(|r| [&[0xe9][..], &r.to_le_bytes()].concat()),
                (0i32..i32::MAX).prop_map(|r| [&[0xe8][..], &r.to_le_bytes()].concat()),
                (0u8..8).prop_map(|r| vec![0x50 + r]),
                (0u8..8).prop_map(|r| vec![0x41, 0x50 + r]),
                Just(vec![0x90]),
                Just(vec![0x0f, 0x1f, 0x00]),
                Just(vec![0x0f, 0x1f, 0x44, 0x00, 0x00]),
                Just(vec![0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00]),
                Just(vec![0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00]),
            ]
        }

        /// Instructions that must never be skipped.
        fn forbidden() -> impl Strategy<Value = Vec<u8>> {
            let arg = prop::sample::select(vec![7u8, 6, 2, 1, 8, 9]);
            prop_oneof![
                // mov arg, imm32; mov arg32, [rip+d]; mov arg, rax
                (arg.clone(), any::<u32>()).prop_map(|(a, i)| [
                    &[0x48 | (a >> 3), 0xc7, 0xc0 | (a & 7)][..],
                    &i.to_le_bytes()
                ]
                .concat()),
                (arg.clone(), any::<i32>()).prop_map(|(a, d)| rip_rel(
                    &[0x40 | ((a >> 3) << 2), 0x8b, 0x05 | ((a & 7) << 3)],
                    d,
                    &[]
                )),
                arg.clone()
                    .prop_map(|a| vec![0x48 | (a >> 3), 0x89, 0xc0 | (a & 7)]),
                arg.prop_map(|a| vec![0x40 | (a >> 3), 0x0f, 0x94, 0xc0 | (a & 7)]), // sete arg8
                any::<u8>().prop_map(|i| vec![0x48, 0x83, 0xec, i]), // sub rsp, imm8
                any::<u8>().prop_map(|i| vec![0x48, 0x83, 0xc4, i]), // add rsp, imm8
                Just(vec![0x58]),                                    // pop rax
                Just(vec![0x48, 0x89, 0xe5]),                        // mov rbp, rsp
                any::<i32>().prop_map(|d| rip_rel(&[0xff, 0x35], d, &[])), // push [rip+d]
                any::<i32>().prop_map(|d| rip_rel(&[0x89, 0x05], d, &[])), // mov [rip+d], eax
                Just(vec![0x48, 0x89, 0x44, 0x24, 0x08]),            // mov [rsp+8], rax
                any::<i32>().prop_map(|d| rip_rel(&[0xf0, 0xff, 0x05], d, &[])), // lock inc [rip+d]
                any::<i32>().prop_map(|d| rip_rel(&[0xff, 0x25], d, &[])), // jmp [rip+d]
                any::<i32>().prop_map(|d| rip_rel(&[0xff, 0x15], d, &[])), // call [rip+d]
                Just(vec![0xff, 0xe0]),                              // jmp rax
                Just(vec![0xc3]),                                    // ret
                any::<u8>().prop_map(|r| vec![0x66, 0x74, r]),       // je with 66
                any::<u8>().prop_map(|r| vec![0x2e, 0x74, r]),       // je with cs
                any::<u8>().prop_map(|r| vec![0xe3, r]),             // jrcxz
                Just(vec![0xcc]),                                    // int3
                Just(vec![0x0f, 0x05]),                              // syscall
                Just(vec![0x0f, 0xa2]),                              // cpuid
                Just(vec![0x0f, 0x31]),                              // rdtsc
                Just(vec![0x48, 0x97]),                              // xchg rdi, rax
                Just(vec![0x0f, 0x0b]),                              // ud2
                Just(vec![0x66, 0x0f, 0xef, 0xc0]),                  // pxor xmm0, xmm0
            ]
        }

        fn ip() -> impl Strategy<Value = u64> {
            0x1000u64..0x7fff_0000_0000
        }

        prop_compose! {
            fn prologue(max: usize)(insns in prop::collection::vec(harmless(), 0..=max)) -> Vec<u8> {
                insns.concat()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn harmless_prefix_then_emulated_is_probed_there(
                prefix in prologue(5), site in emulated_insn(), tail in prologue(3), ip in ip()
            ) {
                let code = [&prefix[..], &site, &tail, &[0xc3]].concat();
                let p = choose(&code, ip);
                prop_assert_eq!(p.offset, prefix.len() as u64, "{}", p.reason);
            }

            #[test]
            fn a_forbidden_instruction_before_the_site_means_the_symbol(
                before in prologue(3), bad in forbidden(), after in prologue(3),
                site in emulated_insn(), ip in ip()
            ) {
                let code = [&before[..], &bad, &after, &site, &[0xc3]].concat();
                let p = choose(&code, ip);
                prop_assert_eq!(p.offset, 0, "{}", p.reason);
            }

            #[test]
            fn a_branch_at_the_site_back_into_the_prefix_means_the_symbol(
                prefix in prologue(5).prop_filter("not empty", |p| !p.is_empty()),
                cc in prop::option::of(0u8..16), near in any::<bool>(), back in 0usize..64, ip in ip()
            ) {
                // The branch lands on (0, site]: `back` bytes before its own start.
                let site = prefix.len();
                let back = back % site;
                let len = match (cc, near) { (Some(_), true) => 6, (None, true) => 5, (_, false) => 2 };
                let rel = -((back + len) as i64);
                let insn = match (cc, near) {
                    (Some(c), true) => [&[0x0f, 0x80 + c][..], &(rel as i32).to_le_bytes()].concat(),
                    (None, true) => [&[0xe9][..], &(rel as i32).to_le_bytes()].concat(),
                    (Some(c), false) => vec![0x70 + c, rel as i8 as u8],
                    (None, false) => vec![0xeb, rel as i8 as u8],
                };
                let code = [&prefix[..], &insn, &[0xc3]].concat();
                let p = choose(&code, ip);
                prop_assert_eq!(p.offset, 0, "{}", p.reason);
            }

            #[test]
            fn a_later_branch_back_into_the_prefix_means_the_symbol(
                prefix in prologue(5).prop_filter("not empty", |p| !p.is_empty()),
                site in emulated_insn(), middle in prologue(4), to in 1usize..64, call in any::<bool>(),
                ip in ip()
            ) {
                // Keep the site's own branch (if any) short of the later one: forward by 0.
                let site = if site.len() >= 5 && matches!(site[0], 0xe8 | 0xe9 | 0x0f) && site[1] != 0x1f {
                    let mut s = site.clone();
                    let n = s.len();
                    s[n - 4..].copy_from_slice(&0i32.to_le_bytes());
                    s
                } else if site.len() == 2 && site[0] != 0x41 {
                    vec![site[0], 0]
                } else {
                    site
                };
                let to = 1 + (to - 1) % prefix.len();
                let from = prefix.len() + site.len() + middle.len();
                let rel = to as i64 - (from + 5) as i64;
                let branch = [&[if call { 0xe8 } else { 0xe9 }][..], &(rel as i32).to_le_bytes()].concat();
                let code = [&prefix[..], &site, &middle, &branch, &[0xc3]].concat();
                let p = choose(&code, ip);
                prop_assert_eq!(p.offset, 0, "{}", p.reason);
            }

            #[test]
            fn too_deep_a_site_means_the_symbol(n in MAX_INSNS..MAX_INSNS + 4, site in emulated_insn(), ip in ip()) {
                let code = [[0x31, 0xc0].repeat(n), site, vec![0xc3]].concat();
                prop_assert_eq!(choose(&code, ip).offset, 0);
            }

            #[test]
            fn any_bytes_give_a_site_the_kernel_emulates(code in prop::collection::vec(any::<u8>(), 0..128), ip in ip()) {
                let p = choose(&code, ip);
                let k = p.offset as usize;
                prop_assert!(k < MAX_BYTES);
                if k > 0 {
                    let mut decoder = Decoder::with_ip(64, &code[k..], ip + k as u64, DecoderOptions::NONE);
                    let insn = decoder.decode();
                    prop_assert!(!insn.is_invalid());
                    prop_assert!(emulated(&code[k..k + insn.len()]).is_some());
                }
            }
        }
    }
}
