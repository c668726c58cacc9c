//! The fast path for call lines: the shape the writer gives them, read without serde.

use super::Names;
use crate::trace::record::{Call, CopySrc, Mem};

/// Parses a call line in exactly the shape the writer gives it: `{"type":"KIND",` then known
/// keys without whitespace, integers without sign (but `ret`, `device`), strings without
/// escapes, no `null`, each key once, the required ones present. Anything else is `None`, and
/// serde decides (it accepts the same lines and more, and explains what it refuses).
///
/// Calls are nearly every line of a trace and serde's generic path spends most of the reading
/// time on them: this is what gets the reader past 10^6 lines a second.
pub(super) fn fast_call(line: &[u8], names: &mut Names) -> Option<Call> {
    let mut call = Call::default();
    fill_call(line, names, &mut call)?;
    Some(call)
}

// What call_key returns.
const API: usize = 0;
const PROC: usize = 1;
const PID: usize = 2;
const TID: usize = 3;
const TS_NS: usize = 4;
const RET: usize = 5;
const DUR_NS: usize = 6;
const BYTES: usize = 7;
const ADDR: usize = 8;
const MEM: usize = 9;
const HANDLE: usize = 10;
const DEVICE: usize = 11;
const POOL: usize = 12;
const STREAM: usize = 13;
const OFFSET: usize = 14;
const FLAGS: usize = 15;
const PITCH: usize = 16;
const STACK: usize = 17;
const SRC: usize = 18;
const SRC_MEM: usize = 19;
const REQUIRED: u32 =
    (1 << API) | (1 << PROC) | (1 << PID) | (1 << TID) | (1 << TS_NS) | (1 << RET);

/// [`fast_call`] into `call`, which is empty (its default); left partly filled when the line
/// is not in the writer's shape.
pub(super) fn fill_call(line: &[u8], names: &mut Names, call: &mut Call) -> Option<()> {
    let mut cur = Cursor {
        bytes: line.strip_prefix(b"{\"type\":")?,
        at: 0,
    };
    cur.raw_string()?;
    let bytes = cur.bytes;
    let end = fill_keys(cur, 0, names, call)?;
    matches!(&bytes[end..], b"" | b"\n").then_some(())
}

/// [`fill_call`] for what follows the `api` that [`leading_api`] read, `call` named by it
/// already: the rest of the line, and maybe more lines after it (the newline is found
/// here, not searched for first). Returns the length of the line's rest, its newline
/// included.
#[inline(always)]
pub(super) fn fill_after_api(rest: &[u8], names: &mut Names, call: &mut Call) -> Option<usize> {
    let end = fill_keys(Cursor { bytes: rest, at: 0 }, 1 << API, names, call)?;
    (rest.get(end) == Some(&b'\n')).then_some(end + 1)
}

/// [`fill_after_api`] for a line whose keys come in the writer's order (that of [`Call`]'s
/// fields, the absent ones left out), nearly every line of a trace: each key is compared
/// with the one literal expected there, in a straight line, instead of being looked up
/// among all of them. `None` for a line in any other order, which [`fill_after_api`] reads.
#[inline(always)]
pub(super) fn fill_in_order(rest: &[u8], call: &mut Call) -> Option<usize> {
    let mut cur = Cursor { bytes: rest, at: 0 };
    cur.key(b",\"proc\":")?;
    value(&mut cur, PROC, call)?;
    cur.key(b",\"pid\":")?;
    value(&mut cur, PID, call)?;
    cur.key(b",\"tid\":")?;
    value(&mut cur, TID, call)?;
    cur.key(b",\"ts_ns\":")?;
    value(&mut cur, TS_NS, call)?;
    cur.key(b",\"dur_ns\":")?;
    value(&mut cur, DUR_NS, call)?;
    cur.key(b",\"ret\":")?;
    value(&mut cur, RET, call)?;
    if cur.key(b",\"bytes\":").is_some() {
        value(&mut cur, BYTES, call)?;
    }
    if cur.key(b",\"addr\":").is_some() {
        value(&mut cur, ADDR, call)?;
    }
    if cur.key(b",\"mem\":").is_some() {
        value(&mut cur, MEM, call)?;
    }
    if cur.key(b",\"handle\":").is_some() {
        value(&mut cur, HANDLE, call)?;
    }
    if cur.key(b",\"device\":").is_some() {
        value(&mut cur, DEVICE, call)?;
    }
    if cur.key(b",\"pool\":").is_some() {
        value(&mut cur, POOL, call)?;
    }
    if cur.key(b",\"stream\":").is_some() {
        value(&mut cur, STREAM, call)?;
    }
    if cur.key(b",\"offset\":").is_some() {
        value(&mut cur, OFFSET, call)?;
    }
    if cur.key(b",\"flags\":").is_some() {
        value(&mut cur, FLAGS, call)?;
    }
    if cur.key(b",\"pitch\":").is_some() {
        value(&mut cur, PITCH, call)?;
    }
    if cur.key(b",\"stack\":").is_some() {
        value(&mut cur, STACK, call)?;
    }
    if cur.key(b",\"src_mem\":").is_some() {
        value(&mut cur, SRC_MEM, call)?;
    }
    if cur.key(b",\"src\":").is_some() {
        value(&mut cur, SRC, call)?;
    }
    cur.key(b"}\n")?;
    Some(cur.at)
}

fn mem_kind(name: &[u8]) -> Option<Mem> {
    Some(match name {
        b"device" => Mem::Device,
        b"device_async" => Mem::DeviceAsync,
        b"array" => Mem::Array,
        b"vmm_device" => Mem::VmmDevice,
        b"vmm_host" => Mem::VmmHost,
        b"managed" => Mem::Managed,
        b"host_pinned" => Mem::HostPinned,
        b"host_registered" => Mem::HostRegistered,
        b"graph" => Mem::Graph,
        _ => return None,
    })
}

fn copy_src(name: &[u8]) -> Option<CopySrc> {
    Some(match name {
        b"host" => CopySrc::Host,
        b"device" => CopySrc::Device,
        b"array" => CopySrc::Array,
        b"unified" => CopySrc::Unified,
        _ => return None,
    })
}

/// The value of key `field` (as [`call_key`] numbers them, `api` apart) at `cur`, into
/// `call`: the one place that says how each key's value is read, whichever order the keys
/// come in.
#[inline(always)]
fn value(cur: &mut Cursor<'_>, field: usize, call: &mut Call) -> Option<()> {
    match field {
        PROC => {
            call.proc = cur.unsigned()?.try_into().ok()?;
        }
        PID => {
            call.pid = cur.unsigned()?.try_into().ok()?;
        }
        TID => {
            call.tid = cur.unsigned()?.try_into().ok()?;
        }
        TS_NS => {
            call.ts_ns = cur.unsigned()?;
        }
        DUR_NS => {
            call.dur_ns = cur.unsigned()?;
        }
        RET => {
            call.ret = cur.signed()?.try_into().ok()?;
        }
        BYTES => {
            call.bytes = Some(cur.unsigned()?);
        }
        ADDR => {
            call.addr = Some(cur.unsigned()?);
        }
        MEM => {
            call.mem = Some(mem_kind(cur.raw_string()?)?);
        }
        HANDLE => {
            call.handle = Some(cur.unsigned()?);
        }
        DEVICE => {
            call.device = Some(cur.signed()?.try_into().ok()?);
        }
        POOL => {
            call.pool = Some(cur.unsigned()?);
        }
        STREAM => {
            call.stream = Some(cur.unsigned()?);
        }
        OFFSET => {
            call.offset = Some(cur.unsigned()?);
        }
        FLAGS => {
            call.flags = Some(cur.unsigned()?);
        }
        PITCH => {
            call.pitch = Some(cur.unsigned()?);
        }
        STACK => {
            call.stack = Some(cur.unsigned()?.try_into().ok()?);
        }
        SRC => {
            call.src = Some(cur.unsigned()?);
        }
        SRC_MEM => {
            call.src_mem = Some(copy_src(cur.raw_string()?)?);
        }
        _ => unreachable!("call_key returns no other index"),
    }
    Some(())
}

/// The keys of a call line from `cur` on, those in `seen` already read, to its closing
/// brace: where in `cur`'s bytes the line goes on after it.
#[inline(always)]
fn fill_keys(
    mut cur: Cursor<'_>,
    mut seen: u32,
    names: &mut Names,
    call: &mut Call,
) -> Option<usize> {
    loop {
        match cur.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
        let (field, len) = call_key(&cur.bytes[cur.at..])?;
        cur.at += len;
        match field {
            API => {
                call.api = names.get(cur.raw_string()?)?;
            }
            _ => value(&mut cur, field, call)?,
        }
        let bit = 1u32 << field;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    (seen & REQUIRED == REQUIRED).then_some(cur.at)
}

/// The key a call line has at the start of `rest`, `"KEY":` with its quotes and colon: its
/// index (`api` 0, `proc` 1, ... as below) and its length. Told apart by its first three
/// bytes, then compared whole with one literal, without scanning for the closing quote.
/// `None` for any other key (`unreadable` is rare, and keys of later minor versions are
/// serde's to skip).
#[inline(always)]
pub(super) fn call_key(rest: &[u8]) -> Option<(usize, usize)> {
    // Each literal is compared where its length is a constant, as a few loads rather than a
    // call to `memcmp`: this runs for every key of every line.
    fn is<const N: usize>(rest: &[u8], i: usize, lit: &[u8; N]) -> Option<(usize, usize)> {
        (rest.get(..N)? == lit).then_some((i, N))
    }
    match rest.get(..4)? {
        [b'"', b'a', b'p', _] => is(rest, 0, b"\"api\":"),
        [b'"', b'p', b'r', _] => is(rest, 1, b"\"proc\":"),
        [b'"', b'p', b'i', b'd'] => is(rest, 2, b"\"pid\":"),
        [b'"', b't', b'i', _] => is(rest, 3, b"\"tid\":"),
        [b'"', b't', b's', _] => is(rest, 4, b"\"ts_ns\":"),
        [b'"', b'r', b'e', _] => is(rest, 5, b"\"ret\":"),
        [b'"', b'd', b'u', _] => is(rest, 6, b"\"dur_ns\":"),
        [b'"', b'b', b'y', _] => is(rest, 7, b"\"bytes\":"),
        [b'"', b'a', b'd', _] => is(rest, 8, b"\"addr\":"),
        [b'"', b'm', b'e', _] => is(rest, 9, b"\"mem\":"),
        [b'"', b'h', b'a', _] => is(rest, 10, b"\"handle\":"),
        [b'"', b'd', b'e', _] => is(rest, 11, b"\"device\":"),
        [b'"', b'p', b'o', _] => is(rest, 12, b"\"pool\":"),
        [b'"', b's', b't', b'r'] => is(rest, 13, b"\"stream\":"),
        [b'"', b'o', b'f', _] => is(rest, 14, b"\"offset\":"),
        [b'"', b'f', b'l', _] => is(rest, 15, b"\"flags\":"),
        [b'"', b'p', b'i', b't'] => is(rest, 16, b"\"pitch\":"),
        [b'"', b's', b't', b'a'] => is(rest, 17, b"\"stack\":"),
        [b'"', b's', b'r', b'c'] if rest.get(4) == Some(&b'_') => is(rest, 19, b"\"src_mem\":"),
        [b'"', b's', b'r', b'c'] => is(rest, 18, b"\"src\":"),
        _ => None,
    }
}

/// A position in a line, for [`fast_call`].
pub(super) struct Cursor<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// Steps over `lit` when the bytes at the cursor are `lit`.
    #[inline(always)]
    fn key<const N: usize>(&mut self, lit: &[u8; N]) -> Option<()> {
        let at = self.bytes.get(self.at..)?.first_chunk::<N>()?;
        (at == lit).then(|| self.at += N)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// The bytes of a string without escapes or control characters, not checked as UTF-8
    /// (keys and kinds are compared with ASCII; names are checked when first seen).
    #[inline(always)]
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&rest[..len])
    }

    /// Digits, no sign, no leading zero, then `,` or `}`.
    #[inline(always)]
    pub(super) fn unsigned(&mut self) -> Option<u64> {
        let rest = &self.bytes[self.at..];
        let (n, len) = digits(rest)?;
        if len == 0 || (len > 1 && rest[0] == b'0') || !matches!(rest.get(len)?, b',' | b'}') {
            return None;
        }
        self.at += len;
        Some(n)
    }

    /// An integer that may be negative (not `-0`: serde reads that as a float).
    #[inline(always)]
    fn signed(&mut self) -> Option<i64> {
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
            let n = self.unsigned()?;
            if n == 0 {
                return None;
            }
            0i64.checked_sub_unsigned(n)
        } else {
            self.unsigned()?.try_into().ok()
        }
    }
}

/// How the writer starts every line.
const TYPE_PREFIX: &[u8] = b"{\"type\":\"";

/// The `type` of a line that starts `{"type":"KIND"`, as the writer writes it.
pub(super) fn leading_tag(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(TYPE_PREFIX)?;
    let end = rest.iter().take(32).position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// The entry point a call line of type `tag` (from [`leading_tag`]) names, when its `api`
/// comes right after the type, as the writer writes it: `{"type":"KIND","api":"NAME"`; and
/// the rest of the line after it.
pub(super) fn leading_api<'a>(line: &'a [u8], tag: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let mut cur = Cursor {
        bytes: api_value(line, tag)?,
        at: 0,
    };
    let name = cur.raw_string()?;
    Some((name, &cur.bytes[cur.at..]))
}

/// What follows the `api` key of a call line of type `tag` (from [`leading_tag`]) when it
/// comes right after the type: its value, from its opening quote on.
#[inline(always)]
pub(super) fn api_value<'a>(line: &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    const KEY: &[u8] = b"\",\"api\":";
    line.get(TYPE_PREFIX.len() + tag.len()..)?.strip_prefix(KEY)
}

/// The run of ASCII digits that starts `rest`: its value and length; `None` when the value
/// does not fit a u64. A byte at a time: most numbers of a call line are a few digits long,
/// and eight-byte words (tried) cost more instructions than they save.
#[inline(always)]
pub(super) fn digits(rest: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    let mut len = 0;
    while let Some(d) = rest
        .get(len)
        .map(|b| b.wrapping_sub(b'0'))
        .filter(|&d| d <= 9)
    {
        if len == 19 {
            // 19 digits always fit in a u64; the 20th may not.
            return digits_checked(rest);
        }
        n = n * 10 + u64::from(d);
        len += 1;
    }
    Some((n, len))
}

/// [`digits`] with every step checked: for runs of more than 19 digits.
fn digits_checked(rest: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    let mut len = 0;
    for d in rest
        .iter()
        .map(|b| b.wrapping_sub(b'0'))
        .take_while(|&d| d <= 9)
    {
        n = n.checked_mul(10)?.checked_add(u64::from(d))?;
        len += 1;
    }
    Some((n, len))
}
