//! Loading the driver library and resolving entry points the way CUDA 12
//! runtimes do: `dlsym` for `cuGetProcAddress_v2` (or `cuGetProcAddress`) only,
//! everything else through it. Every call is counted under the exact exported
//! symbol it reached.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::Mutex;

use anyhow::{Context, bail};

pub type P = *mut c_void;
pub type R = c_uint;

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const PER_THREAD: u64 = 1 << 1;
/// The CUDA version a CUDA 12.4 runtime asks for.
pub const CUDA_VERSION: c_int = 12040;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemLocation {
    pub kind: u32,
    pub id: c_int,
}

/// `CUmemAllocationProp`.
#[repr(C)]
pub struct AllocProp {
    pub kind: u32,
    pub handle_types: u32,
    pub location: MemLocation,
    pub win32_meta: P,
    pub alloc_flags: [u8; 8],
}

impl AllocProp {
    /// Pinned physical memory at `location_kind` (1 device, 2 host), `id`.
    pub fn pinned(location_kind: u32, id: c_int) -> AllocProp {
        AllocProp {
            kind: 1,
            handle_types: 0,
            location: MemLocation {
                kind: location_kind,
                id,
            },
            win32_meta: std::ptr::null_mut(),
            alloc_flags: [0; 8],
        }
    }
}

/// `CUctxCreateParams` (CUDA 12.5), none of its parameters given.
#[repr(C)]
pub struct CtxCreateParams {
    pub exec_affinity_params: P,
    pub num_exec_affinity_params: c_int,
    pub cig_params: P,
}

impl CtxCreateParams {
    pub fn none() -> CtxCreateParams {
        CtxCreateParams {
            exec_affinity_params: std::ptr::null_mut(),
            num_exec_affinity_params: 0,
            cig_params: std::ptr::null_mut(),
        }
    }
}

/// `CU_CTX_SCHED_BLOCKING_SYNC`.
pub const CTX_SCHED_BLOCKING_SYNC: c_uint = 4;

/// `CU_DEV_RESOURCE_TYPE_SM`.
pub const DEV_RESOURCE_TYPE_SM: c_uint = 1;
/// `CU_GREEN_CTX_DEFAULT_STREAM`, required by `cuGreenCtxCreate` in CUDA 13.0.
pub const GREEN_CTX_DEFAULT_STREAM: c_uint = 1;

/// `CUdevResource`: 144 bytes in CUDA 12.4, larger since; room for any of them.
#[repr(C, align(8))]
pub struct DevResource {
    pub bytes: [u8; 512],
}

/// The green-context entry points (CUDA 12.4), resolved where the driver has them.
#[derive(Clone, Copy)]
pub struct Green {
    pub get_resource: Sym<FnDevResource>,
    pub generate_desc: Sym<FnResourceDesc>,
    pub create: Sym<FnGreenCtxCreate>,
    pub from_green: Sym<FnCtxFromGreen>,
    pub destroy: Sym<FnHandle>,
}

impl Green {
    /// Resolves them at `version` (12.4 at least, where they appeared); `None` where the
    /// driver has none (535).
    pub fn resolve(d: &Driver, version: c_int) -> Option<Green> {
        let v = version.max(12040);
        Some(Green {
            get_resource: d
                .resolve("cuDeviceGetDevResource", v, 0, "cuDeviceGetDevResource")
                .ok()?,
            generate_desc: d
                .resolve(
                    "cuDevResourceGenerateDesc",
                    v,
                    0,
                    "cuDevResourceGenerateDesc",
                )
                .ok()?,
            create: d
                .resolve("cuGreenCtxCreate", v, 0, "cuGreenCtxCreate")
                .ok()?,
            from_green: d
                .resolve("cuCtxFromGreenCtx", v, 0, "cuCtxFromGreenCtx")
                .ok()?,
            destroy: d
                .resolve("cuGreenCtxDestroy", v, 0, "cuGreenCtxDestroy")
                .ok()?,
        })
    }

    /// A green context on `dev` with all its SMs, and the `CUcontext` for it: every call is
    /// made, each failure leaves a null handle.
    pub fn create(&self, d: &Driver, dev: c_int) -> (P, P) {
        let mut res = DevResource { bytes: [0; 512] };
        crate::call!(d, self.get_resource, dev, &mut res, DEV_RESOURCE_TYPE_SM);
        let mut desc: P = std::ptr::null_mut();
        crate::call!(d, self.generate_desc, &mut desc, &res, 1);
        let mut green: P = std::ptr::null_mut();
        crate::call!(
            d,
            self.create,
            &mut green,
            desc,
            dev,
            GREEN_CTX_DEFAULT_STREAM
        );
        let mut ctx: P = std::ptr::null_mut();
        crate::call!(d, self.from_green, &mut ctx, green);
        (green, ctx)
    }
}

/// `CUmemAccessDesc`.
#[repr(C)]
pub struct AccessDesc {
    pub location: MemLocation,
    pub flags: u32,
}

/// `CUmemPoolProps` (CUDA 12.x: 88 bytes).
#[repr(C)]
pub struct PoolProps {
    pub alloc_type: u32,
    pub handle_types: u32,
    pub location: MemLocation,
    pub win32_security: P,
    pub max_size: usize,
    pub reserved: [u8; 56],
}

/// `CUDA_ARRAY_DESCRIPTOR`.
#[repr(C)]
pub struct ArrayDesc {
    pub width: usize,
    pub height: usize,
    pub format: u32,
    pub channels: u32,
}

/// Legacy `CUDA_ARRAY_DESCRIPTOR` (32-bit sizes).
#[repr(C)]
pub struct ArrayDesc32 {
    pub width: c_uint,
    pub height: c_uint,
    pub format: u32,
    pub channels: u32,
}

/// `CUDA_ARRAY3D_DESCRIPTOR`.
#[repr(C)]
pub struct Array3DDesc {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
    pub format: u32,
    pub channels: u32,
    pub flags: u32,
}

/// Legacy `CUDA_ARRAY3D_DESCRIPTOR` (32-bit sizes).
#[repr(C)]
pub struct Array3DDesc32 {
    pub width: c_uint,
    pub height: c_uint,
    pub depth: c_uint,
    pub format: u32,
    pub channels: u32,
    pub flags: u32,
}

pub type FnInit = unsafe extern "C" fn(c_uint) -> R;
pub type FnOutInt = unsafe extern "C" fn(*mut c_int) -> R;
pub type FnDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> R;
pub type FnTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> R;
pub type FnTotalMem32 = unsafe extern "C" fn(*mut c_uint, c_int) -> R;
pub type FnMemInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> R;
pub type FnMemInfo32 = unsafe extern "C" fn(*mut c_uint, *mut c_uint) -> R;
pub type FnGpa = unsafe extern "C" fn(*const c_char, *mut P, c_int, u64) -> R;
pub type FnGpa2 = unsafe extern "C" fn(*const c_char, *mut P, c_int, u64, *mut c_int) -> R;
pub type FnAlloc = unsafe extern "C" fn(*mut u64, usize) -> R;
pub type FnAlloc32 = unsafe extern "C" fn(*mut c_uint, c_uint) -> R;
pub type FnPitch = unsafe extern "C" fn(*mut u64, *mut usize, usize, usize, c_uint) -> R;
pub type FnPitch32 = unsafe extern "C" fn(*mut c_uint, *mut c_uint, c_uint, c_uint, c_uint) -> R;
pub type FnU64 = unsafe extern "C" fn(u64) -> R;
pub type FnU32 = unsafe extern "C" fn(c_uint) -> R;
pub type FnAllocAsync = unsafe extern "C" fn(*mut u64, usize, P) -> R;
pub type FnAllocFromPool = unsafe extern "C" fn(*mut u64, usize, P, P) -> R;
pub type FnFreeAsync = unsafe extern "C" fn(u64, P) -> R;
pub type FnPoolCreate = unsafe extern "C" fn(*mut P, *const PoolProps) -> R;
pub type FnHandle = unsafe extern "C" fn(P) -> R;
pub type FnTrim = unsafe extern "C" fn(P, usize) -> R;
/// `cuMemPoolSetAttribute` / `cuMemPoolGetAttribute(pool, attr, void *value)`.
pub type FnPoolAttr = unsafe extern "C" fn(P, c_int, *mut c_void) -> R;
/// `cuEventCreate(CUevent *phEvent, unsigned Flags)`.
pub type FnEventCreate = unsafe extern "C" fn(*mut P, c_uint) -> R;
pub type FnOutHandleDev = unsafe extern "C" fn(*mut P, c_int) -> R;
pub type FnMemCreate = unsafe extern "C" fn(*mut u64, usize, *const AllocProp, u64) -> R;
pub type FnReserve = unsafe extern "C" fn(*mut u64, usize, usize, u64, u64) -> R;
pub type FnRange = unsafe extern "C" fn(u64, usize) -> R;
pub type FnMap = unsafe extern "C" fn(u64, usize, usize, u64, u64) -> R;
pub type FnSetAccess = unsafe extern "C" fn(u64, usize, *const AccessDesc, usize) -> R;
pub type FnGranularity = unsafe extern "C" fn(*mut usize, *const AllocProp, c_uint) -> R;
pub type FnArray = unsafe extern "C" fn(*mut P, *const ArrayDesc) -> R;
pub type FnArray32 = unsafe extern "C" fn(*mut P, *const ArrayDesc32) -> R;
pub type FnArray3D = unsafe extern "C" fn(*mut P, *const Array3DDesc) -> R;
pub type FnArray3D32 = unsafe extern "C" fn(*mut P, *const Array3DDesc32) -> R;
pub type FnMipmap = unsafe extern "C" fn(*mut P, *const Array3DDesc, c_uint) -> R;
pub type FnManaged = unsafe extern "C" fn(*mut u64, usize, c_uint) -> R;
pub type FnAllocHost = unsafe extern "C" fn(*mut P, usize) -> R;
pub type FnAllocHost32 = unsafe extern "C" fn(*mut P, c_uint) -> R;
pub type FnHostAlloc = unsafe extern "C" fn(*mut P, usize, c_uint) -> R;
pub type FnHostRegister = unsafe extern "C" fn(P, usize, c_uint) -> R;
pub type FnCtxCreate = unsafe extern "C" fn(*mut P, c_uint, c_int) -> R;
pub type FnCtxCreate3 = unsafe extern "C" fn(*mut P, P, c_int, c_uint, c_int) -> R;
pub type FnCtxCreate4 = unsafe extern "C" fn(*mut P, *const CtxCreateParams, c_uint, c_int) -> R;
pub type FnDev = unsafe extern "C" fn(c_int) -> R;
pub type FnOutHandle = unsafe extern "C" fn(*mut P) -> R;
pub type FnVoid = unsafe extern "C" fn() -> R;
pub type FnHtoD = unsafe extern "C" fn(u64, *const c_void, usize) -> R;
pub type FnHtoD32 = unsafe extern "C" fn(c_uint, *const c_void, c_uint) -> R;
pub type FnHtoDAsync = unsafe extern "C" fn(u64, *const c_void, usize, P) -> R;
pub type FnHtoDAsync32 = unsafe extern "C" fn(c_uint, *const c_void, c_uint, P) -> R;
pub type FnDevSetPool = unsafe extern "C" fn(c_int, P) -> R;
pub type FnGetPoolAt = unsafe extern "C" fn(*mut P, *const MemLocation, c_uint) -> R;
pub type FnSetPoolAt = unsafe extern "C" fn(*const MemLocation, c_uint, P) -> R;
pub type FnMemcpy = unsafe extern "C" fn(u64, u64, usize) -> R;
pub type FnMemcpyAsync = unsafe extern "C" fn(u64, u64, usize, P) -> R;
pub type FnMemcpy2D = unsafe extern "C" fn(*const Memcpy2D) -> R;
pub type FnMemcpy2DAsync = unsafe extern "C" fn(*const Memcpy2D, P) -> R;
pub type FnMemcpy3D = unsafe extern "C" fn(*const Memcpy3D) -> R;
pub type FnMemcpy3DAsync = unsafe extern "C" fn(*const Memcpy3D, P) -> R;
/// The unversioned 2D/3D copies take the CUDA 3.x descriptors; probe-all passes zeroes.
pub type FnDevResource = unsafe extern "C" fn(c_int, *mut DevResource, c_uint) -> R;
pub type FnResourceDesc = unsafe extern "C" fn(*mut P, *const DevResource, c_uint) -> R;
pub type FnGreenCtxCreate = unsafe extern "C" fn(*mut P, P, c_int, c_uint) -> R;
pub type FnCtxFromGreen = unsafe extern "C" fn(*mut P, P) -> R;
pub type FnMemcpyLegacy = unsafe extern "C" fn(*const [u64; 32]) -> R;
pub type FnMemcpyLegacyAsync = unsafe extern "C" fn(*const [u64; 32], P) -> R;

/// `CUmemorytype`.
pub const MEMORYTYPE_HOST: c_uint = 1;
pub const MEMORYTYPE_DEVICE: c_uint = 2;
pub const MEMORYTYPE_UNIFIED: c_uint = 4;

/// `CUDA_MEMCPY2D` (`_v2`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Memcpy2D {
    pub src_x_in_bytes: usize,
    pub src_y: usize,
    pub src_memory_type: c_uint,
    pub src_host: *const c_void,
    pub src_device: u64,
    pub src_array: P,
    pub src_pitch: usize,
    pub dst_x_in_bytes: usize,
    pub dst_y: usize,
    pub dst_memory_type: c_uint,
    pub dst_host: P,
    pub dst_device: u64,
    pub dst_array: P,
    pub dst_pitch: usize,
    pub width_in_bytes: usize,
    pub height: usize,
}

impl Memcpy2D {
    /// A `width` × `height` copy from `src` (of memory type `src_type`, pitch `width`) to
    /// device memory at `dst` with row pitch `dst_pitch`.
    pub fn to_device(
        src_type: c_uint,
        src: u64,
        dst: u64,
        dst_pitch: usize,
        width: usize,
        height: usize,
    ) -> Memcpy2D {
        Memcpy2D {
            src_x_in_bytes: 0,
            src_y: 0,
            src_memory_type: src_type,
            src_host: src as *const c_void,
            src_device: src,
            src_array: std::ptr::null_mut(),
            src_pitch: width,
            dst_x_in_bytes: 0,
            dst_y: 0,
            dst_memory_type: MEMORYTYPE_DEVICE,
            dst_host: std::ptr::null_mut(),
            dst_device: dst,
            dst_array: std::ptr::null_mut(),
            dst_pitch,
            width_in_bytes: width,
            height,
        }
    }
}

/// `CUDA_MEMCPY3D` (`_v2`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Memcpy3D {
    pub src_x_in_bytes: usize,
    pub src_y: usize,
    pub src_z: usize,
    pub src_lod: usize,
    pub src_memory_type: c_uint,
    pub src_host: *const c_void,
    pub src_device: u64,
    pub src_array: P,
    pub reserved0: P,
    pub src_pitch: usize,
    pub src_height: usize,
    pub dst_x_in_bytes: usize,
    pub dst_y: usize,
    pub dst_z: usize,
    pub dst_lod: usize,
    pub dst_memory_type: c_uint,
    pub dst_host: P,
    pub dst_device: u64,
    pub dst_array: P,
    pub reserved1: P,
    pub dst_pitch: usize,
    pub dst_height: usize,
    pub width_in_bytes: usize,
    pub height: usize,
    pub depth: usize,
}

impl Memcpy3D {
    /// A `width` × `height` × `depth` copy from `src` (of memory type `src_type`, packed) to
    /// device memory at `dst`, packed.
    pub fn to_device(
        src_type: c_uint,
        src: u64,
        dst: u64,
        width: usize,
        height: usize,
        depth: usize,
    ) -> Memcpy3D {
        Memcpy3D {
            src_x_in_bytes: 0,
            src_y: 0,
            src_z: 0,
            src_lod: 0,
            src_memory_type: src_type,
            src_host: src as *const c_void,
            src_device: src,
            src_array: std::ptr::null_mut(),
            reserved0: std::ptr::null_mut(),
            src_pitch: width,
            src_height: height,
            dst_x_in_bytes: 0,
            dst_y: 0,
            dst_z: 0,
            dst_lod: 0,
            dst_memory_type: MEMORYTYPE_DEVICE,
            dst_host: std::ptr::null_mut(),
            dst_device: dst,
            dst_array: std::ptr::null_mut(),
            reserved1: std::ptr::null_mut(),
            dst_pitch: width,
            dst_height: height,
            width_in_bytes: width,
            height,
            depth,
        }
    }
}

/// A resolved entry point and the exported symbol it is.
#[derive(Clone, Copy)]
pub struct Sym<F> {
    pub name: &'static str,
    pub f: F,
}

/// Calls a resolved entry point and counts the call and its result. The
/// arguments are evaluated before the unsafe call.
#[macro_export]
macro_rules! call {
    ($drv:expr, $sym:expr $(, $arg:expr)* $(,)?) => {
        $crate::call!(@bind $drv, $sym, [] $(, $arg)*)
    };
    (@bind $drv:expr, $sym:expr, [$($b:ident)*], $a:expr $(, $rest:expr)*) => {{
        let arg = $a;
        $crate::call!(@bind $drv, $sym, [$($b)* arg] $(, $rest)*)
    }};
    (@bind $drv:expr, $sym:expr, [$($b:ident)*]) => {{
        let sym = $sym;
        let f = sym.f;
        // SAFETY: `f` was resolved for exactly the exported symbol `sym.name`
        // (checked with dladdr), whose C signature is its type; the arguments
        // are well-formed values and pointers to live locals.
        let ret = unsafe { f($($b),*) };
        $drv.record(sym.name, ret);
        ret
    }};
}

#[derive(Default)]
pub struct Stats {
    pub calls: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    pub alloc_bytes: BTreeMap<String, u64>,
    pub failed_bytes: BTreeMap<String, u64>,
    pub rets: BTreeMap<String, u32>,
    pub resolved_via: BTreeMap<String, String>,
}

enum Resolver {
    V2(FnGpa2),
    V1(FnGpa),
}

pub struct Driver {
    lib: &'static libloading::Library,
    resolver: Resolver,
    resolver_name: &'static str,
    pub stats: Mutex<Stats>,
}

/// The exported symbol at `addr`, as the dynamic linker names it.
fn symbol_name(addr: P) -> Option<String> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: `info` is a valid out-parameter; dladdr only inspects `addr`.
    let ok = unsafe { libc::dladdr(addr, &mut info) };
    if ok == 0 || info.dli_sname.is_null() || info.dli_saddr != addr {
        return None;
    }
    // SAFETY: dladdr returned a non-null NUL-terminated symbol name that lives
    // as long as the library stays loaded (it is never unloaded).
    let name = unsafe { CStr::from_ptr(info.dli_sname) };
    Some(name.to_string_lossy().into_owned())
}

impl Driver {
    pub fn open(path: &str) -> anyhow::Result<Driver> {
        // SAFETY: loading the driver library runs its initializers, as any CUDA
        // runtime does; the library is never unloaded.
        let lib =
            unsafe { libloading::Library::new(path) }.with_context(|| format!("dlopen {path}"))?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: `cuGetProcAddress_v2` has the C signature `FnGpa2` in cuda.h.
        let v2 = unsafe { lib.get::<FnGpa2>(b"cuGetProcAddress_v2") };
        let (resolver, resolver_name) = match v2 {
            Ok(f) => (Resolver::V2(*f), "cuGetProcAddress_v2"),
            Err(_) => {
                // SAFETY: `cuGetProcAddress` has the C signature `FnGpa`.
                let f = unsafe { lib.get::<FnGpa>(b"cuGetProcAddress") }
                    .context("neither cuGetProcAddress_v2 nor cuGetProcAddress is exported")?;
                (Resolver::V1(*f), "cuGetProcAddress")
            }
        };
        Ok(Driver {
            lib,
            resolver,
            resolver_name,
            stats: Mutex::new(Stats::default()),
        })
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, name: &str, ret: R) {
        let mut s = self.stats();
        *s.calls.entry(name.to_string()).or_default() += 1;
        if ret != 0 {
            *s.failed.entry(name.to_string()).or_default() += 1;
        }
        s.rets.insert(name.to_string(), ret);
    }

    /// Counts the bytes an allocation call asked for.
    pub fn bytes(&self, name: &str, bytes: u64, ret: R) {
        let mut s = self.stats();
        let map = if ret == 0 {
            &mut s.alloc_bytes
        } else {
            &mut s.failed_bytes
        };
        *map.entry(name.to_string()).or_default() += bytes;
    }

    /// Asks the driver for `base` at `version` with `flags`; returns the address.
    fn proc_address(&self, base: &str, version: c_int, flags: u64) -> P {
        let Ok(c) = CString::new(base) else {
            return std::ptr::null_mut();
        };
        let mut pfn: P = std::ptr::null_mut();
        let mut status: c_int = -1;
        // SAFETY: `c` is a NUL-terminated name and both out-pointers are live.
        let ret = unsafe {
            match self.resolver {
                Resolver::V2(f) => f(c.as_ptr(), &mut pfn, version, flags, &mut status),
                Resolver::V1(f) => f(c.as_ptr(), &mut pfn, version, flags),
            }
        };
        self.record(self.resolver_name, ret);
        if ret != 0 {
            return std::ptr::null_mut();
        }
        pfn
    }

    /// The exported symbol that `base` resolves to at `version` with `flags`, if any.
    pub fn resolved_name(&self, base: &str, version: c_int, flags: u64) -> Option<String> {
        let pfn = self.proc_address(base, version, flags);
        (!pfn.is_null()).then(|| symbol_name(pfn)).flatten()
    }

    /// Resolves `base` and checks that it is the export `expect`, whose C
    /// signature `F` must be.
    pub fn resolve<F: Copy>(
        &self,
        base: &str,
        version: c_int,
        flags: u64,
        expect: &'static str,
    ) -> anyhow::Result<Sym<F>> {
        let pfn = self.proc_address(base, version, flags);
        if pfn.is_null() {
            bail!(
                "{} could not resolve {base} (version {version}, flags {flags})",
                self.resolver_name
            );
        }
        let name = symbol_name(pfn).unwrap_or_else(|| "<unnamed>".into());
        if name != expect {
            bail!(
                "{base} (version {version}, flags {flags}) resolved to {name}, expected {expect}"
            );
        }
        self.stats()
            .resolved_via
            .insert(expect.to_string(), self.resolver_name.to_string());
        Ok(Sym {
            name: expect,
            f: fn_from(pfn),
        })
    }

    /// Like `resolve`, falling back to `dlsym` of the exact exported name when
    /// the driver does not resolve it.
    /// The export `name` by `dlsym`, when the library has it: for variants that
    /// `cuGetProcAddress` never returns.
    pub fn dlsym<F: Copy>(&self, name: &'static str) -> Option<Sym<F>> {
        // SAFETY: the exported symbol `name` has the C signature `F`.
        let f = unsafe { self.lib.get::<F>(name.as_bytes()) }.ok()?;
        self.stats()
            .resolved_via
            .insert(name.to_string(), "dlsym".to_string());
        Some(Sym { name, f: *f })
    }

    pub fn resolve_or_dlsym<F: Copy>(
        &self,
        base: &str,
        version: c_int,
        flags: u64,
        expect: &'static str,
    ) -> anyhow::Result<Sym<F>> {
        match self.resolve(base, version, flags, expect) {
            Ok(s) => Ok(s),
            Err(e) => {
                eprintln!("falling back to dlsym for {expect}: {e:#}");
                // SAFETY: the exported symbol `expect` has the C signature `F`.
                let f = unsafe { self.lib.get::<F>(expect.as_bytes()) }
                    .with_context(|| format!("dlsym {expect}"))?;
                self.stats()
                    .resolved_via
                    .insert(expect.to_string(), "dlsym".to_string());
                Ok(Sym {
                    name: expect,
                    f: *f,
                })
            }
        }
    }
}

fn fn_from<F: Copy>(p: P) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<P>());
    // SAFETY: `F` is a function-pointer type of pointer size (asserted) and `p`
    // is the non-null address of the exported function it names.
    unsafe { std::mem::transmute_copy::<P, F>(&p) }
}
