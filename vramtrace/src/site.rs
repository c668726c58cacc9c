//! The frame of a stack that names the user's code, and how reports write frames.
//!
//! A stack captured at a driver call starts inside the driver, the CUDA runtime and the
//! frameworks (libcudart, libcublas, libtorch*, libc10*, the Python interpreter) and reaches
//! the user's code further out: a Python line, or a native function of the program. Every
//! report titles a finding by that frame ([`Site`], picked by [`user_frame`]), so that it says
//! `train.py:88 forward`, not `libcudart.so.12+0x1234`, and groups findings by the frames in
//! the user's code ([`SiteKey`]): two call paths that differ only inside the runtime (two
//! ways of the caching allocator to reach `cudaMalloc`, say) are one finding.
//!
//! Deciding which frame is the user's is a reading of the stack, not a fact about memory:
//! nothing here touches the Ledger's accounts.

use serde::{Deserialize, Serialize};

use crate::trace::{Frame, Stack};

/// Library names (the file name up to `.so`) that are runtime, not the user's code: the
/// driver, the CUDA libraries, the frameworks, the interpreter, the C and C++ runtimes.
const RUNTIME_NAMES: &[&str] = &[
    "ld",
    "libc",
    "libcuda",
    "libcudart",
    "libcufft",
    "libcufftw",
    "libcupti",
    "libcurand",
    "libdl",
    "libffi",
    "libgcc_s",
    "libm",
    "libnvJitLink",
    "libnvToolsExt",
    "libpthread",
    "librt",
    "libstdc++",
];

/// Prefixes of such names: families of libraries (`libcublasLt`, `libcudnn_ops`,
/// `libtorch_cuda`, `libc10_cuda`, `libpython3.12`), old glibc's versioned names
/// (`libc-2.31`, `ld-2.31`), the loader (`ld-linux-x86-64`), and vramtrace's simulated
/// driver.
const RUNTIME_PREFIXES: &[&str] = &[
    "ld-",
    "libc-",
    "libc10",
    "libcaffe2",
    "libcublas",
    "libcudnn",
    "libcusolver",
    "libcusparse",
    "libnccl",
    "libnvidia-",
    "libnvrtc",
    "libpython",
    "libsimcuda",
    "libtorch",
];

/// The last component of a path.
fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether the object file at `path` is the driver, a CUDA or framework library, the Python
/// interpreter or the C/C++ runtime: code that a stack passes through on its way from the
/// user's code to the driver.
pub fn is_runtime_file(path: &str) -> bool {
    let base = basename(path);
    let name = base.split(".so").next().unwrap_or(base);
    if RUNTIME_NAMES.contains(&name) || RUNTIME_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    // The interpreter's binary: python, python3, python3.12, python3.13t.
    if let Some(version) = base.strip_prefix("python")
        && version
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'd' | 'm' | 't' | 'u'))
    {
        return true;
    }
    // PyTorch's extension module (`torch/_C.cpython-312-x86_64-linux-gnu.so`) is a thin
    // layer over libtorch_python; its other libraries live beside it in `torch/lib/`.
    path.contains("/torch/_C.") || path.contains("/torch/lib/")
}

/// Whether the object file at `path` is the driver or the CUDA runtime, whose frames name
/// only the entry point that was called.
fn is_driver_file(path: &str) -> bool {
    let base = basename(path);
    let name = base.split(".so").next().unwrap_or(base);
    matches!(name, "libcuda" | "libcudart") || name.starts_with("libsimcuda")
}

/// `path/file.ext:LINE` as (path, line); a `src` without a line is all path.
fn split_src(src: &str) -> (&str, Option<u32>) {
    match src.rsplit_once(':') {
        Some((file, line)) => match line.parse() {
            Ok(n) => (file, Some(n)),
            Err(_) => (src, None),
        },
        None => (src, None),
    }
}

/// A demangled C++ name without its parameter list and what follows it (`ns::f(int) const`
/// is `ns::f`): enough to cite a frame on one line. Other names are kept whole.
pub fn without_parameters(sym: &str) -> &str {
    const ANONYMOUS: &str = "(anonymous namespace)";
    let mut depth = 0i32;
    let mut i = 0;
    while let Some(c) = sym[i..].chars().next() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            '(' if sym[i..].starts_with(ANONYMOUS) => {
                i += ANONYMOUS.len();
                continue;
            }
            '(' if depth == 0 && i > 0 => return &sym[..i],
            _ => {}
        }
        i += c.len_utf8();
    }
    sym
}

impl Frame {
    /// Whether the frame is in the user's code: a Python frame, or a native frame in a file
    /// that is not runtime ([`is_runtime_file`]). A frame without a file (unmapped, JIT code,
    /// the vDSO) is not.
    pub fn is_user_code(&self) -> bool {
        if self.python {
            // A Python frame that could not be read (`unknown`: no name, no line) says
            // nothing of who called.
            return self.sym.is_some() || self.src.is_some();
        }
        self.file
            .as_deref()
            .is_some_and(|f| !f.starts_with('[') && !is_runtime_file(f))
    }

    /// The source file and line (`src`), where known: the `.py` file of a Python frame, the
    /// source from debug information of a native one.
    pub fn source(&self) -> Option<(&str, Option<u32>)> {
        self.src.as_deref().map(split_src)
    }

    /// Where the frame is, without a name: `libfoo.so+0x1234`, or the address.
    fn place(&self) -> String {
        match (&self.file, self.offset) {
            (Some(file), Some(off)) => format!("{}+{off:#x}", basename(file)),
            (Some(file), None) if self.python => basename(file).to_owned(),
            _ => format!("{:#x}", self.addr),
        }
    }

    /// The frame as a line of a stack: `function (file:line)` for a Python frame or a native
    /// one with its source line, `function (libfoo.so+0x1234)` without it, else the place and
    /// why it has no name; a function inlined into the next frame ends in ` [inlined]`.
    pub fn line(&self) -> String {
        if self.python {
            let name = self.sym.as_deref().unwrap_or("<python>");
            return match self.src.as_deref().or(self.file.as_deref()) {
                Some(at) => format!("{name} ({at})"),
                None => name.to_owned(),
            };
        }
        let place = self.place();
        let line = match (&self.sym, &self.src) {
            (Some(sym), Some(src)) => format!("{sym} ({src})"),
            (Some(sym), None) => format!("{sym} ({place})"),
            (None, _) => match &self.unknown {
                Some(why) => format!("{place} ({why})"),
                None => place,
            },
        };
        if self.inlined {
            format!("{line} [inlined]")
        } else {
            line
        }
    }

    /// The frame as a title, short enough for a heading: `train.py:88 forward` (Python),
    /// `file.c:12 fn` (native with its source line), `fn (libfoo.so)` (a symbol only),
    /// `libfoo.so+0x1234` (nothing more known).
    pub fn title(&self) -> String {
        let sym = self.sym.as_deref().map(without_parameters);
        let src = self.src.as_deref().map(split_src);
        match (sym, src, self.python) {
            (Some(sym), Some((file, Some(line))), _) => {
                format!("{}:{line} {sym}", basename(file))
            }
            (Some(sym), Some((file, None)), _) => format!("{} {sym}", basename(file)),
            (Some(sym), None, _) => match &self.file {
                Some(file) if self.python => format!("{} {sym}", basename(file)),
                Some(file) => format!("{sym} ({})", basename(file)),
                None => sym.to_owned(),
            },
            (None, Some((file, Some(line))), true) => format!("{}:{line}", basename(file)),
            (None, _, _) => self.place(),
        }
    }

    /// What makes two frames the same code location for grouping: the source line and
    /// function where known, else the file and offset, else the address.
    fn location(&self) -> String {
        let sym = self.sym.as_deref().map(without_parameters).unwrap_or("");
        let file = self.file.as_deref().unwrap_or("");
        match (&self.src, self.offset) {
            (Some(src), _) => format!("{file}\0{src}\0{sym}"),
            (None, Some(off)) => format!("{file}+{off:#x}"),
            (None, None) if self.python => format!("{file}\0\0{sym}"),
            (None, None) => format!("{:#x}", self.addr),
        }
    }
}

/// The index of the frame in the user's code, innermost first: the first read Python frame,
/// else the first native frame outside the runtime ([`Frame::is_user_code`]). `None` when
/// the stack has none: only runtime frames, or cut short before it reached the user's code.
/// A Python frame that could not be read (its reason in `unknown`) says nothing of who
/// called.
pub fn user_frame(frames: &[Frame]) -> Option<usize> {
    frames
        .iter()
        .position(|f| f.python && f.is_user_code())
        .or_else(|| frames.iter().position(Frame::is_user_code))
}

/// The frame a stack without a frame in the user's code is cited by: its first named frame
/// outside the driver and the CUDA runtime (theirs name only the entry point called), else
/// its first named frame, else its first.
fn fallback_frame(frames: &[Frame]) -> Option<usize> {
    let driver = |f: &Frame| f.file.as_deref().is_some_and(is_driver_file);
    frames
        .iter()
        .position(|f| f.sym.is_some() && !driver(f))
        .or_else(|| frames.iter().position(|f| f.sym.is_some()))
        .or_else(|| (!frames.is_empty()).then_some(0))
}

/// The frame that names who made an allocation, as reports carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// `train.py:88 forward`, `main.c:12 fn`, `fn (libfoo.so)`, `libfoo.so+0x1234`.
    pub title: String,
    /// The frame's index in the stack, innermost 0.
    pub frame: usize,
    /// Whether the frame is in the user's code. `false`: the stack has no such frame (only
    /// runtime frames, or cut short), and the site is its first named frame outside the
    /// driver and the CUDA runtime.
    pub user: bool,
    /// A Python frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub python: bool,
    /// The source file (`.py`, or the native source from debug information), else the
    /// object file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line in `file`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The function, when known (a C++ name without its parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

impl Site {
    /// The site of a stack's `frames` (innermost first): its frame in the user's code
    /// ([`user_frame`]), else the best frame it has. `None` for an empty stack.
    pub fn of(frames: &[Frame]) -> Option<Site> {
        let (index, user) = match user_frame(frames) {
            Some(i) => (i, true),
            None => (fallback_frame(frames)?, false),
        };
        let f = frames.get(index)?;
        let (file, line) = match f.src.as_deref().map(split_src) {
            Some((file, line)) => (Some(file.to_owned()), line),
            None => (f.file.clone(), None),
        };
        Some(Site {
            title: f.title(),
            frame: index,
            user,
            python: f.python,
            file,
            line,
            function: f.sym.as_deref().map(|s| without_parameters(s).to_owned()),
        })
    }
}

/// What findings are grouped by: the frames of a stack in the user's code, innermost
/// first, each as its code location (source line and function where known). Stacks that
/// differ only in runtime frames share it; a stack with no frame in the user's code is a
/// group of its own.
///
/// The key is the whole chain of user frames, not the first alone: a program that
/// allocates through a helper of its own (`fn alloc(bytes)`) has that helper as the first
/// user frame of every stack, and its leak would vanish into the sum of every allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiteKey {
    /// The code locations of the stack's frames in the user's code.
    User(Vec<String>),
    /// A stack with no frame in the user's code (or none at all), by its id.
    Stack(Option<u32>),
}

impl SiteKey {
    /// The key of stack `id`, whose record is `stack` when the trace has it.
    pub fn of(id: Option<u32>, stack: Option<&Stack>) -> SiteKey {
        let user: Vec<String> = stack
            .map(|s| {
                s.frames
                    .iter()
                    .filter(|f| f.is_user_code())
                    .map(Frame::location)
                    .collect()
            })
            .unwrap_or_default();
        if user.is_empty() {
            SiteKey::Stack(id)
        } else {
            SiteKey::User(user)
        }
    }
}

impl Stack {
    /// The frame in the user's code ([`user_frame`]), if the stack has one.
    pub fn user_frame(&self) -> Option<&Frame> {
        user_frame(&self.frames).and_then(|i| self.frames.get(i))
    }

    /// The stack's [`Site`]; `None` when it has no frames.
    pub fn site(&self) -> Option<Site> {
        Site::of(&self.frames)
    }

    /// What findings made by this stack are grouped by.
    pub fn site_key(&self) -> SiteKey {
        SiteKey::of(Some(self.id), Some(self))
    }
}

/// [`Frame::line`] as a function, for `map`.
pub fn frame_line(f: &Frame) -> String {
    f.line()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(file: &str, off: u64, sym: Option<&str>, src: Option<&str>) -> Frame {
        Frame {
            addr: 0x7f00_0000_0000 + off,
            file: Some(file.into()),
            build_id: Some("ab".into()),
            offset: Some(off),
            sym: sym.map(Into::into),
            src: src.map(Into::into),
            ..Frame::default()
        }
    }

    fn py(file: &str, line: u32, sym: &str) -> Frame {
        Frame {
            file: Some(file.into()),
            sym: Some(sym.into()),
            src: Some(format!("{file}:{line}")),
            python: true,
            ..Frame::default()
        }
    }

    #[test]
    fn an_unnamed_python_frame_is_not_the_users_code() {
        let unnamed = Frame {
            python: true,
            file: Some("/usr/lib/libpython3.14.so.1.0".into()),
            unknown: Some("CPython 3.14: layout not known".into()),
            ..Frame::default()
        };
        let frames = [
            native("/usr/lib/libffi.so.8", 0x10, Some("ffi_call"), None),
            unnamed.clone(),
            py("/srv/train.py", 7, "main"),
        ];
        assert_eq!(user_frame(&frames), Some(2));
        assert_eq!(user_frame(&[unnamed]), None);
    }

    const CUDA: &str = "/usr/lib/x86_64-linux-gnu/libcuda.so.1";
    const CUDART: &str = "/venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcudart.so.13";
    const C10: &str = "/venv/lib/python3.12/site-packages/torch/lib/libc10_cuda.so";
    const TORCH: &str = "/venv/lib/python3.12/site-packages/torch/lib/libtorch_cuda.so";
    const PYTHON: &str = "/usr/bin/python3.12";

    /// A PyTorch allocation: the driver, the runtime, the caching allocator, the
    /// interpreter's own frames, then the Python frames, the user's line first.
    fn torch_stack(line: u32, allocator_offset: u64) -> Vec<Frame> {
        vec![
            native(CUDA, 0x1000, Some("cuMemAlloc_v2"), None),
            native(CUDART, 0x3e225, None, None),
            native(
                C10,
                allocator_offset,
                Some(
                    "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc(signed char, unsigned long, CUstream_st*)",
                ),
                Some("/build/c10/cuda/CUDACachingAllocator.cpp:1234"),
            ),
            native(TORCH, 0x9000, Some("at::native::empty_cuda"), None),
            native(PYTHON, 0x1d0000, Some("_PyEval_EvalFrameDefault"), None),
            py("/home/me/train.py", line, "Model.forward"),
            native(PYTHON, 0x1d0000, Some("_PyEval_EvalFrameDefault"), None),
            py("/home/me/train.py", 120, "main"),
        ]
    }

    #[test]
    fn runtime_files_are_told_from_the_users() {
        for f in [
            CUDA,
            CUDART,
            C10,
            TORCH,
            PYTHON,
            "/usr/lib/libcublasLt.so.12",
            "/usr/lib/libcublas.so.12.4.5.8",
            "/usr/lib/libcudnn_ops.so.9",
            "/usr/lib/libnccl.so.2",
            "/usr/lib/libnvrtc-builtins.so.12.4",
            "/usr/lib/x86_64-linux-gnu/libffi.so.8",
            "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0",
            "/usr/bin/python3",
            "/usr/bin/python",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc-2.31.so",
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/target/debug/libsimcuda.so",
            "/venv/lib/python3.12/site-packages/torch/_C.cpython-312-x86_64-linux-gnu.so",
        ] {
            assert!(is_runtime_file(f), "{f} is runtime");
        }
        for f in [
            "/home/me/bin/trainer",
            "/opt/app/libmyops.so",
            "/usr/local/bin/llama-server",
            "/home/me/ext/my_kernels.cpython-312-x86_64-linux-gnu.so",
            "/usr/bin/python_tool_of_mine",
            "/usr/lib/libcudaq.so",
        ] {
            assert!(!is_runtime_file(f), "{f} is the user's");
        }
    }

    #[test]
    fn the_first_python_frame_is_the_users() {
        let frames = torch_stack(88, 0x2f4cb);
        assert_eq!(user_frame(&frames), Some(5));
        let site = Site::of(&frames).expect("a site");
        assert_eq!(site.title, "train.py:88 Model.forward");
        assert_eq!(
            site,
            Site {
                title: "train.py:88 Model.forward".into(),
                frame: 5,
                user: true,
                python: true,
                file: Some("/home/me/train.py".into()),
                line: Some(88),
                function: Some("Model.forward".into()),
            }
        );
        // In order among the native frames, named as py-spy names them.
        let lines: Vec<String> = frames.iter().map(Frame::line).collect();
        assert_eq!(lines[5], "Model.forward (/home/me/train.py:88)");
        assert_eq!(lines[4], "_PyEval_EvalFrameDefault (python3.12+0x1d0000)");
    }

    #[test]
    fn a_python_frame_wins_over_a_native_frame_of_the_user_nearer_the_driver() {
        let mut frames = torch_stack(88, 0x2f4cb);
        frames.insert(2, native("/opt/app/libmyops.so", 0x40, Some("my_op"), None));
        assert_eq!(user_frame(&frames), Some(6));
    }

    #[test]
    fn without_python_the_first_native_frame_outside_the_runtime_is_the_users() {
        let frames = vec![
            native(CUDA, 0x1000, Some("cuMemAlloc_v2"), None),
            native(CUDART, 0x3e225, Some("cudaMalloc"), None),
            native(
                "/home/me/bin/solver",
                0x1234,
                Some("Solver::setup(int)"),
                Some("/home/me/src/solver.cc:12"),
            ),
            native("/home/me/bin/solver", 0x2000, Some("main"), None),
        ];
        let site = Site::of(&frames).expect("a site");
        assert_eq!(site.frame, 2);
        assert!(site.user);
        assert!(!site.python);
        assert_eq!(site.title, "solver.cc:12 Solver::setup");
        assert_eq!(site.file.as_deref(), Some("/home/me/src/solver.cc"));
        assert_eq!(site.line, Some(12));

        // A symbol without a source line; nothing but the place.
        let sym_only = native("/opt/app/libmyops.so", 0x40, Some("my_op(int)"), None);
        assert_eq!(sym_only.title(), "my_op (libmyops.so)");
        let bare = native("/opt/app/libmyops.so", 0x1234, None, None);
        assert_eq!(bare.title(), "libmyops.so+0x1234");
        let site = Site::of(&[native(CUDA, 0x10, None, None), bare]).expect("a site");
        assert_eq!((site.frame, site.user), (1, true));
        assert_eq!(site.file.as_deref(), Some("/opt/app/libmyops.so"));
        assert_eq!(site.line, None);
    }

    #[test]
    fn a_stack_of_runtime_frames_only_is_cited_by_its_first_named_frame_past_the_driver() {
        let frames: Vec<Frame> = torch_stack(88, 0x2f4cb).into_iter().take(4).collect();
        assert_eq!(user_frame(&frames), None);
        let site = Site::of(&frames).expect("a site");
        assert!(!site.user);
        assert_eq!(site.frame, 2);
        assert_eq!(
            site.title,
            "CUDACachingAllocator.cpp:1234 c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc"
        );
        // Nothing named: the first frame.
        let unnamed = [native(CUDART, 0x3e225, None, None)];
        let site = Site::of(&unnamed).expect("a site");
        assert_eq!((site.frame, site.user), (0, false));
        assert_eq!(site.title, "libcudart.so.13+0x3e225");
        // Unmapped frames are nobody's code.
        let unmapped = Frame {
            addr: 0x10,
            unknown: Some("not in any mapping the process had".into()),
            ..Frame::default()
        };
        assert!(!unmapped.is_user_code());
        assert_eq!(
            Site::of(std::slice::from_ref(&unmapped)).map(|s| s.title),
            Some("0x10".into())
        );
        assert_eq!(Site::of(&[]), None);
        assert_eq!(unmapped.line(), "0x10 (not in any mapping the process had)");
    }

    fn stack(id: u32, frames: Vec<Frame>) -> Stack {
        Stack {
            id,
            frames,
            truncated: None,
        }
    }

    #[test]
    fn stacks_that_differ_only_in_the_runtime_share_a_key() {
        // Two ways of the allocator to reach the driver, from the same line.
        let a = stack(1, torch_stack(88, 0x2f4cb));
        let b = stack(2, torch_stack(88, 0x3a000));
        assert_ne!(a.frames, b.frames);
        assert_eq!(a.site_key(), b.site_key());
        assert_eq!(a.site(), b.site());
        // Another line of the user's stays apart.
        let c = stack(3, torch_stack(91, 0x2f4cb));
        assert_ne!(a.site_key(), c.site_key());
        // So does the same line reached from another caller in the user's code.
        let mut d = torch_stack(88, 0x2f4cb);
        d[7] = py("/home/me/train.py", 140, "evaluate");
        assert_ne!(a.site_key(), stack(4, d).site_key());
        // Stacks with no user frame are each their own group.
        let runtime: Vec<Frame> = torch_stack(88, 0x2f4cb).into_iter().take(4).collect();
        let e = stack(5, runtime.clone());
        let f = stack(6, runtime);
        assert_eq!(e.site_key(), SiteKey::Stack(Some(5)));
        assert_ne!(e.site_key(), f.site_key());
        assert_eq!(SiteKey::of(None, None), SiteKey::Stack(None));
    }

    #[test]
    fn a_helper_of_the_users_does_not_merge_its_callers() {
        let helper = native(
            "/w/workloads",
            0x500,
            Some("workloads::rt::Rt::alloc"),
            Some("/w/src/rt.rs:295"),
        );
        let via = |caller: &str, off: u64| {
            stack(
                off as u32,
                vec![
                    native("/w/libsimcuda.so", 0x10, Some("cuMemAlloc_v2"), None),
                    helper.clone(),
                    native(
                        "/w/workloads",
                        off,
                        Some(caller),
                        Some("/w/src/scenarios.rs:1"),
                    ),
                ],
            )
        };
        let leak = via("leak_metrics_buffer", 0x900);
        let steps = via("step_activations", 0xa00);
        assert_eq!(leak.site().map(|s| s.title), steps.site().map(|s| s.title));
        assert_ne!(leak.site_key(), steps.site_key());
    }

    #[test]
    fn python_frames_with_less_known() {
        let no_line = Frame {
            file: Some("/home/me/train.py".into()),
            sym: Some("step".into()),
            python: true,
            ..Frame::default()
        };
        assert_eq!(no_line.title(), "train.py step");
        assert_eq!(no_line.line(), "step (/home/me/train.py)");
        let no_name = Frame {
            src: Some("/home/me/train.py:7".into()),
            python: true,
            ..Frame::default()
        };
        assert_eq!(no_name.title(), "train.py:7");
        assert_eq!(no_name.line(), "<python> (/home/me/train.py:7)");
        assert!(no_name.is_user_code());
    }

    #[test]
    fn parameters_are_cut_from_cpp_names_only() {
        assert_eq!(without_parameters("ns::f(int) const"), "ns::f");
        assert_eq!(
            without_parameters("std::vector<std::pair<int, int>>::push_back(x)"),
            "std::vector<std::pair<int, int>>::push_back"
        );
        assert_eq!(
            without_parameters("(anonymous namespace)::g(long)"),
            "(anonymous namespace)::g"
        );
        assert_eq!(
            without_parameters(
                "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc(unsigned long, CUstream_st*)"
            ),
            "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc"
        );
        assert_eq!(
            without_parameters("void at::f<std::function<void (int)> >(int) [clone .isra.0]"),
            "void at::f<std::function<void (int)> >"
        );
        assert_eq!(without_parameters("cudaMalloc"), "cudaMalloc");
        assert_eq!(
            without_parameters(
                "at::native::(anonymous namespace)::addmm_out_cuda_impl(at::Tensor&)"
            ),
            "at::native::(anonymous namespace)::addmm_out_cuda_impl"
        );
        assert_eq!(without_parameters("Model.forward"), "Model.forward");
        assert_eq!(without_parameters("<module>"), "<module>");
    }
}
