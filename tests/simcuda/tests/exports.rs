//! Checks the built `libsimcuda.so`: every driver entry point is exported, each
//! begins like NVIDIA's (`cmpl $0x0, X(%rip)` then `je`), and the memory model
//! behaves as documented.

use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::PathBuf;

use object::{Object, ObjectSection, ObjectSymbol};

const EXPORTS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceTotalMem",
    "cuDeviceTotalMem_v2",
    "cuMemGetInfo",
    "cuMemGetInfo_v2",
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "cuMemAlloc",
    "cuMemAlloc_v2",
    "cuMemAllocPitch",
    "cuMemAllocPitch_v2",
    "cuMemFree",
    "cuMemFree_v2",
    "cuMemAllocAsync",
    "cuMemAllocAsync_ptsz",
    "cuMemAllocFromPoolAsync",
    "cuMemAllocFromPoolAsync_ptsz",
    "cuMemFreeAsync",
    "cuMemFreeAsync_ptsz",
    "cuMemPoolCreate",
    "cuMemPoolDestroy",
    "cuMemPoolTrimTo",
    "cuMemPoolSetAttribute",
    "cuMemPoolGetAttribute",
    "cuDeviceGetDefaultMemPool",
    "cuDeviceGetMemPool",
    "cuDeviceSetMemPool",
    "cuMemGetDefaultMemPool",
    "cuMemGetMemPool",
    "cuMemSetMemPool",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
    "cuMemGetAllocationGranularity",
    "cuArrayCreate",
    "cuArrayCreate_v2",
    "cuArray3DCreate",
    "cuArray3DCreate_v2",
    "cuMipmappedArrayCreate",
    "cuArrayDestroy",
    "cuMipmappedArrayDestroy",
    "cuMemAllocManaged",
    "cuMemAllocHost",
    "cuMemAllocHost_v2",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemHostRegister",
    "cuMemHostRegister_v2",
    "cuMemHostUnregister",
    "cuCtxCreate",
    "cuCtxCreate_v2",
    "cuCtxCreate_v3",
    "cuCtxCreate_v4",
    "cuCtxDestroy",
    "cuCtxDestroy_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxReset",
    "cuDevicePrimaryCtxReset_v2",
    "cuDeviceGetDevResource",
    "cuDevResourceGenerateDesc",
    "cuGreenCtxCreate",
    "cuGreenCtxDestroy",
    "cuCtxFromGreenCtx",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxPushCurrent",
    "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent",
    "cuCtxPopCurrent_v2",
    "cuCtxSynchronize",
    "cuCtxSynchronize_v2",
    "cuStreamSynchronize",
    "cuStreamSynchronize_ptsz",
    "cuEventCreate",
    "cuEventDestroy",
    "cuEventDestroy_v2",
    "cuEventSynchronize",
    "cuMemcpyHtoD",
    "cuMemcpyHtoD_v2",
    "cuMemcpyHtoD_v2_ptds",
    "cuMemcpyHtoDAsync",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyHtoDAsync_v2_ptsz",
    "cuMemcpy",
    "cuMemcpy_ptds",
    "cuMemcpyAsync",
    "cuMemcpyAsync_ptsz",
    "cuMemcpy2D_v2",
    "cuMemcpy2D_v2_ptds",
    "cuMemcpy2DUnaligned_v2",
    "cuMemcpy2DUnaligned_v2_ptds",
    "cuMemcpy2DAsync_v2",
    "cuMemcpy2DAsync_v2_ptsz",
    "cuMemcpy3D_v2",
    "cuMemcpy3D_v2_ptds",
    "cuMemcpy3DAsync_v2",
    "cuMemcpy3DAsync_v2_ptsz",
    "cuMemcpyBatchAsync",
    "cuMemcpyBatchAsync_ptsz",
    "cuMemcpyBatchAsync_v2",
    "cuMemcpyBatchAsync_v2_ptsz",
    "cuMemcpy3DBatchAsync",
    "cuMemcpy3DBatchAsync_ptsz",
    "cuMemcpy3DBatchAsync_v2",
    "cuMemcpy3DBatchAsync_v2_ptsz",
    "cuIpcGetMemHandle",
    "cuIpcOpenMemHandle",
    "cuIpcOpenMemHandle_v2",
    "cuIpcCloseMemHandle",
    "cuMemPoolExportPointer",
    "cuMemPoolImportPointer",
    "cuMemExportToShareableHandle",
    "cuMemImportFromShareableHandle",
    "cuMemPoolExportToShareableHandle",
    "cuMemPoolImportFromShareableHandle",
    "cuMemRetainAllocationHandle",
    "cuGraphCreate",
    "cuGraphAddMemAllocNode",
    "cuGraphAddMemFreeNode",
    "cuGraphInstantiate",
    "cuGraphInstantiate_v2",
    "cuGraphInstantiateWithFlags",
    "cuGraphInstantiateWithParams",
    "cuGraphInstantiateWithParams_ptsz",
    "cuGraphLaunch",
    "cuGraphLaunch_ptsz",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuDeviceGraphMemTrim",
    "cuDeviceGetGraphMemAttribute",
    "cuDeviceSetGraphMemAttribute",
    "cuMulticastCreate",
    "cuMulticastAddDevice",
    "cuMulticastGetGranularity",
    "cuMulticastBindMem",
    "cuMulticastBindMem_v2",
    "cuMulticastBindAddr",
    "cuMulticastBindAddr_v2",
    "cuMulticastUnbind",
    "cuMemMapArrayAsync",
    "cuMemMapArrayAsync_ptsz",
];

/// The cdylib of this package: `SIMCUDA_LIB` if set, else next to the `deps`
/// directory that holds this test binary.
fn library_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SIMCUDA_LIB") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let deps = exe.parent().expect("deps directory");
    for dir in [Some(deps), deps.parent()].into_iter().flatten() {
        let candidate = dir.join("libsimcuda.so");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("libsimcuda.so not found near {}", exe.display());
}

#[test]
fn every_export_starts_with_rip_relative_cmp_then_je() {
    let path = library_path();
    let data = std::fs::read(&path).expect("read libsimcuda.so");
    let file = object::File::parse(&*data).expect("parse ELF");
    let mut seen = Vec::new();
    for sym in file.dynamic_symbols() {
        let Ok(name) = sym.name() else { continue };
        if !name.starts_with("cu") || sym.is_undefined() {
            continue;
        }
        let section = file
            .section_by_index(sym.section_index().expect("defined symbol has a section"))
            .expect("symbol section");
        let (sec_off, _) = section.file_range().expect("section has file data");
        let off = (sym.address() - section.address() + sec_off) as usize;
        let code = &data[off..off + 14];
        assert_eq!(
            &code[0..2],
            &[0x83, 0x3d],
            "{name}: cmpl imm8, rip-relative"
        );
        assert_eq!(code[6], 0x00, "{name}: compares with 0");
        assert_eq!(code[7], 0x74, "{name}: je rel8");
        assert_eq!(code[9], 0xe9, "{name}: jmp rel32 to the implementation");
        seen.push(name.to_string());
    }
    for want in EXPORTS {
        assert!(seen.iter().any(|s| s == want), "{want} is not exported");
    }
    assert_eq!(
        seen.len(),
        EXPORTS.len(),
        "unexpected extra exports: {seen:?}"
    );
}

type Ret = c_uint;

struct Lib(libloading::Library);

impl Lib {
    fn f<T: Copy>(&self, name: &str) -> T {
        // SAFETY: each call site names the C signature of the entry point it
        // looks up.
        unsafe { *self.0.get::<T>(name.as_bytes()).expect(name) }
    }
}

#[repr(C)]
struct Location {
    kind: u32,
    id: c_int,
}

#[repr(C)]
struct AllocProp {
    kind: u32,
    handle_types: u32,
    location: Location,
    meta: *mut c_void,
    flags: [u8; 8],
}

const MIB: usize = 1 << 20;

#[test]
fn memory_model() {
    // SAFETY: loading the simulated driver runs no foreign initializers beyond
    // Rust's own.
    let lib = Lib(unsafe { libloading::Library::new(library_path()) }.expect("dlopen"));
    let init: unsafe extern "C" fn(c_uint) -> Ret = lib.f("cuInit");
    let alloc: unsafe extern "C" fn(*mut u64, usize) -> Ret = lib.f("cuMemAlloc_v2");
    let free: unsafe extern "C" fn(u64) -> Ret = lib.f("cuMemFree_v2");
    let info: unsafe extern "C" fn(*mut usize, *mut usize) -> Ret = lib.f("cuMemGetInfo_v2");
    let gpa: unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> Ret =
        lib.f("cuGetProcAddress_v2");
    let gpa1: unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> Ret =
        lib.f("cuGetProcAddress");
    let retain: unsafe extern "C" fn(*mut *mut c_void, c_int) -> Ret =
        lib.f("cuDevicePrimaryCtxRetain");
    let set_current: unsafe extern "C" fn(*mut c_void) -> Ret = lib.f("cuCtxSetCurrent");
    let pitch_alloc: unsafe extern "C" fn(*mut u64, *mut usize, usize, usize, c_uint) -> Ret =
        lib.f("cuMemAllocPitch_v2");
    let default_pool: unsafe extern "C" fn(*mut *mut c_void, c_int) -> Ret =
        lib.f("cuDeviceGetDefaultMemPool");
    let alloc_async: unsafe extern "C" fn(*mut u64, usize, *mut c_void) -> Ret =
        lib.f("cuMemAllocAsync_ptsz");
    let free_async: unsafe extern "C" fn(u64, *mut c_void) -> Ret = lib.f("cuMemFreeAsync");
    let trim: unsafe extern "C" fn(*mut c_void, usize) -> Ret = lib.f("cuMemPoolTrimTo");
    let set_attr: unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> Ret =
        lib.f("cuMemPoolSetAttribute");
    let get_attr: unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> Ret =
        lib.f("cuMemPoolGetAttribute");
    let stream_sync: unsafe extern "C" fn(*mut c_void) -> Ret = lib.f("cuStreamSynchronize");
    let event_create: unsafe extern "C" fn(*mut *mut c_void, c_uint) -> Ret =
        lib.f("cuEventCreate");
    let event_sync: unsafe extern "C" fn(*mut c_void) -> Ret = lib.f("cuEventSynchronize");
    let event_destroy: unsafe extern "C" fn(*mut c_void) -> Ret = lib.f("cuEventDestroy_v2");
    let create: unsafe extern "C" fn(*mut u64, usize, *const AllocProp, u64) -> Ret =
        lib.f("cuMemCreate");
    let release: unsafe extern "C" fn(u64) -> Ret = lib.f("cuMemRelease");
    let reserve: unsafe extern "C" fn(*mut u64, usize, usize, u64, u64) -> Ret =
        lib.f("cuMemAddressReserve");
    let map: unsafe extern "C" fn(u64, usize, usize, u64, u64) -> Ret = lib.f("cuMemMap");
    let unmap: unsafe extern "C" fn(u64, usize) -> Ret = lib.f("cuMemUnmap");
    let addr_free: unsafe extern "C" fn(u64, usize) -> Ret = lib.f("cuMemAddressFree");
    let alloc_host: unsafe extern "C" fn(*mut *mut c_void, usize) -> Ret =
        lib.f("cuMemAllocHost_v2");
    let free_host: unsafe extern "C" fn(*mut c_void) -> Ret = lib.f("cuMemFreeHost");
    let ctx_create: unsafe extern "C" fn(*mut *mut c_void, c_uint, c_int) -> Ret =
        lib.f("cuCtxCreate_v2");
    let ctx_destroy: unsafe extern "C" fn(*mut c_void) -> Ret = lib.f("cuCtxDestroy_v2");
    let htod: unsafe extern "C" fn(u64, *const c_void, usize) -> Ret = lib.f("cuMemcpyHtoD_v2");

    // SAFETY: every call below passes arguments of the declared C types, with
    // out-pointers to live locals.
    unsafe {
        let mut p = 0u64;
        assert_eq!(alloc(&mut p, MIB), 3, "before cuInit");
        assert_eq!(init(0), 0);

        let resolve = |name: &str, version: c_int, flags: u64| {
            let c = CString::new(name).expect("name");
            let mut f: *mut c_void = std::ptr::null_mut();
            let mut status = -1;
            assert_eq!(gpa(c.as_ptr(), &mut f, version, flags, &mut status), 0);
            (f, status)
        };
        let addr_of = |name: &str| -> *mut c_void {
            *lib.0.get::<*mut c_void>(name.as_bytes()).expect("symbol")
        };
        assert_eq!(
            resolve("cuMemAlloc", 12040, 0),
            (addr_of("cuMemAlloc_v2"), 0)
        );
        assert_eq!(resolve("cuMemAlloc", 2000, 0), (addr_of("cuMemAlloc"), 0));
        assert_eq!(
            resolve("cuMemAllocAsync", 12040, 2),
            (addr_of("cuMemAllocAsync_ptsz"), 0)
        );
        assert_eq!(
            resolve("cuMemcpyHtoD", 12040, 2),
            (addr_of("cuMemcpyHtoD_v2_ptds"), 0)
        );
        assert_eq!(
            resolve("cuCtxCreate", 12040, 0),
            (addr_of("cuCtxCreate_v3"), 0)
        );
        for version in [12050, 13000] {
            assert_eq!(
                resolve("cuCtxCreate", version, 0),
                (addr_of("cuCtxCreate_v4"), 0)
            );
        }
        assert_eq!(
            resolve("cuMemAlloc_v2", 12040, 0),
            (std::ptr::null_mut(), 1)
        );
        assert_eq!(
            resolve("cuMemAllocAsync", 11000, 0),
            (std::ptr::null_mut(), 2)
        );
        let mut f: *mut c_void = std::ptr::null_mut();
        let name = CString::new("cuNope").expect("name");
        assert_eq!(gpa1(name.as_ptr(), &mut f, 12040, 0), 500);

        assert_eq!(alloc(&mut p, MIB), 201, "no current context");
        let mut ctx: *mut c_void = std::ptr::null_mut();
        assert_eq!(retain(&mut ctx, 0), 0);
        assert_eq!(set_current(ctx), 0);

        let (mut free0, mut total) = (0usize, 0usize);
        assert_eq!(info(&mut free0, &mut total), 0);
        assert_eq!(total, 8 << 30);

        let (mut a, mut b) = (0u64, 0u64);
        assert_eq!(alloc(&mut a, MIB), 0);
        assert!(a >= 0x7f00_0000_0000 && a % (2 * MIB as u64) == 0);
        assert_eq!(free(a), 0);
        assert_eq!(free(a), 1, "double free");
        assert_eq!(alloc(&mut b, MIB), 0);
        assert!(b > a, "addresses are never reused");
        let src = vec![7u8; MIB];
        assert_eq!(htod(b, src.as_ptr().cast(), MIB), 0);
        assert_eq!(htod(b + 1, src.as_ptr().cast(), MIB), 1, "past the end");
        assert_eq!(free(b), 0);
        assert_eq!(alloc(&mut a, total + 1), 2, "out of memory");

        let mut pitch = 0usize;
        assert_eq!(pitch_alloc(&mut a, &mut pitch, 1000, 10, 4), 0);
        assert_eq!(pitch, 1024);
        let mut fr = 0usize;
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0 - 10240);
        assert_eq!(free(a), 0);

        // Pools: a freed block stays held and is reused; trimming releases it.
        let mut pool: *mut c_void = std::ptr::null_mut();
        assert_eq!(default_pool(&mut pool, 0), 0);
        assert_eq!(alloc_async(&mut a, 4 * MIB, std::ptr::null_mut()), 0);
        assert_eq!(free_async(a, std::ptr::null_mut()), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0 - 4 * MIB, "held by the pool");
        assert_eq!(alloc_async(&mut b, MIB, std::ptr::null_mut()), 0);
        assert_eq!(b, a, "reused from the pool");
        assert_eq!(trim(pool, 0), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0 - MIB, "trimmed down to the live block");
        assert_eq!(free_async(b, std::ptr::null_mut()), 0);
        assert_eq!(trim(pool, 0), 0);

        // Trims and synchronizations keep reserved bytes (in use plus held): what is held
        // above the release threshold (0 by default) goes back at a synchronization.
        let attr = |a: c_int| {
            let mut v = u64::MAX;
            assert_eq!(get_attr(pool, a, (&raw mut v).cast()), 0);
            v
        };
        assert_eq!(attr(4), 0, "threshold 0 by default");
        let (mut c, mut d) = (0u64, 0u64);
        assert_eq!(alloc_async(&mut a, 4 * MIB, std::ptr::null_mut()), 0);
        assert_eq!(alloc_async(&mut c, 2 * MIB, std::ptr::null_mut()), 0);
        assert_eq!(free_async(a, std::ptr::null_mut()), 0);
        assert_eq!((attr(5), attr(7)), (6 * MIB as u64, 2 * MIB as u64));
        assert_eq!(trim(pool, 3 * MIB), 0);
        assert_eq!(
            attr(5),
            3 * MIB as u64,
            "1 MiB stays held beside 2 MiB in use"
        );
        assert_eq!(stream_sync(std::ptr::null_mut()), 0);
        assert_eq!(attr(5), 2 * MIB as u64, "threshold 0: nothing held");
        let mut threshold = 5 * MIB as u64;
        assert_eq!(set_attr(pool, 4, (&raw mut threshold).cast()), 0);
        assert_eq!(attr(4), 5 * MIB as u64);
        assert_eq!(alloc_async(&mut d, 8 * MIB, std::ptr::null_mut()), 0);
        assert_eq!(free_async(d, std::ptr::null_mut()), 0);
        let mut ev: *mut c_void = std::ptr::null_mut();
        assert_eq!(event_create(&mut ev, 0), 0);
        assert_eq!(event_sync(ev), 0);
        assert_eq!(attr(5), 5 * MIB as u64, "held down to the threshold");
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0 - 5 * MIB);
        assert_eq!(event_destroy(ev), 0);
        assert_eq!(event_sync(ev), 400, "destroyed event");
        assert_eq!(
            set_attr(pool, 5, (&raw mut threshold).cast()),
            1,
            "read-only"
        );
        assert_eq!(
            get_attr(pool, 9, (&raw mut threshold).cast()),
            1,
            "no such attribute"
        );
        threshold = 0;
        assert_eq!(set_attr(pool, 4, (&raw mut threshold).cast()), 0);
        assert_eq!(free_async(c, std::ptr::null_mut()), 0);
        assert_eq!(trim(pool, 0), 0);

        // VMM: physical memory goes when released and unmapped.
        let prop = AllocProp {
            kind: 1,
            handle_types: 0,
            location: Location { kind: 1, id: 0 },
            meta: std::ptr::null_mut(),
            flags: [0; 8],
        };
        let mut h = 0u64;
        assert_eq!(create(&mut h, 3 * MIB, &prop, 0), 1, "not granular");
        assert_eq!(create(&mut h, 4 * MIB, &prop, 0), 0);
        let mut va = 0u64;
        assert_eq!(reserve(&mut va, 64 * MIB, 0, 0, 0), 0);
        assert_eq!(map(va, 4 * MIB, 0, h, 0), 0);
        assert_eq!(release(h), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0 - 4 * MIB, "still mapped");
        assert_eq!(addr_free(va, 64 * MIB), 1, "still mapped");
        assert_eq!(unmap(va, 4 * MIB), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0);
        assert_eq!(addr_free(va, 64 * MIB), 0);
        let host_prop = AllocProp {
            location: Location { kind: 2, id: 0 },
            ..prop
        };
        assert_eq!(create(&mut h, 2 * MIB, &host_prop, 0), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0, "host-located memory is not device memory");
        assert_eq!(release(h), 0);

        // Pinned host memory is real memory and not device memory.
        let mut hp: *mut c_void = std::ptr::null_mut();
        assert_eq!(alloc_host(&mut hp, MIB), 0);
        std::ptr::write_bytes(hp.cast::<u8>(), 0xab, MIB);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, free0);
        assert_eq!(free_host(hp), 0);

        // Destroying a context frees its device and pinned host memory, not stream-ordered
        // memory, which belongs to its pool's device (cuCtxDestroy in the driver API
        // reference).
        let mut c2: *mut c_void = std::ptr::null_mut();
        assert_eq!(info(&mut fr, &mut total), 0);
        let before = fr;
        assert_eq!(ctx_create(&mut c2, 0, 0), 0);
        assert_eq!(alloc(&mut a, 8 * MIB), 0);
        let mut s = 0u64;
        assert_eq!(alloc_async(&mut s, 2 * MIB, std::ptr::null_mut()), 0);
        assert_eq!(alloc_host(&mut hp, MIB), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        let during = fr;
        assert_eq!(ctx_destroy(c2), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(
            fr,
            during + 8 * MIB,
            "the device memory went with the context"
        );
        assert_eq!(free(a), 1, "freed with its context");
        assert_eq!(free_host(hp), 1, "pinned memory freed with its context");
        assert_eq!(
            free_async(s, std::ptr::null_mut()),
            0,
            "stream-ordered stays"
        );
        assert_eq!(trim(pool, 0), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, before);

        // Graph memory: nothing is charged when the node is added, the pool reserves at
        // launch and keeps it past the free until trimmed; the driver's error codes.
        let graph_create: unsafe extern "C" fn(*mut *mut c_void, c_uint) -> Ret =
            lib.f("cuGraphCreate");
        let add_alloc: unsafe extern "C" fn(
            *mut *mut c_void,
            *mut c_void,
            *const c_void,
            usize,
            *mut AllocNodeParams,
        ) -> Ret = lib.f("cuGraphAddMemAllocNode");
        let add_free: unsafe extern "C" fn(
            *mut *mut c_void,
            *mut c_void,
            *const c_void,
            usize,
            u64,
        ) -> Ret = lib.f("cuGraphAddMemFreeNode");
        let instantiate: unsafe extern "C" fn(*mut *mut c_void, *mut c_void, u64) -> Ret =
            lib.f("cuGraphInstantiateWithFlags");
        let launch: unsafe extern "C" fn(*mut c_void, *mut c_void) -> Ret = lib.f("cuGraphLaunch");
        let graph_trim: unsafe extern "C" fn(c_int) -> Ret = lib.f("cuDeviceGraphMemTrim");
        let graph_attr: unsafe extern "C" fn(c_int, c_uint, *mut c_void) -> Ret =
            lib.f("cuDeviceGetGraphMemAttribute");
        let set_graph_attr: unsafe extern "C" fn(c_int, c_uint, *mut c_void) -> Ret =
            lib.f("cuDeviceSetGraphMemAttribute");
        let null = std::ptr::null_mut::<c_void>;
        let reserved = || {
            let mut v = 0u64;
            assert_eq!(graph_attr(0, 2, (&mut v as *mut u64).cast()), 0);
            v
        };
        let (mut g, mut node, mut exec) = (null(), null(), null());
        assert_eq!(graph_create(&mut g, 0), 0);
        let mut params = AllocNodeParams {
            alloc_type: 1,
            handle_types: 0,
            location: Location { kind: 1, id: 0 },
            rest: [0; 72],
            access: std::ptr::null(),
            access_count: 0,
            bytesize: 6 * MIB,
            dptr: 0,
        };
        assert_eq!(add_alloc(&mut node, g, std::ptr::null(), 0, &mut params), 0);
        assert_ne!(
            params.dptr, 0,
            "the address is fixed when the node is added"
        );
        assert_eq!(add_free(&mut node, g, std::ptr::null(), 0, 0x1000), 1);
        assert_eq!(instantiate(&mut exec, g, 0), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(fr, before, "nothing charged before a launch");
        assert_eq!(launch(exec, null()), 0);
        assert_eq!(launch(exec, null()), 1, "its allocation is still live");
        assert_eq!(free(params.dptr), 0, "cuMemFree ends graph memory");
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!(
            (fr, reserved()),
            (before - 6 * MIB, 6 * MIB as u64),
            "kept by the pool"
        );
        let mut one = 1u64;
        assert_eq!(set_graph_attr(0, 3, (&mut one as *mut u64).cast()), 1);
        assert_eq!(graph_attr(0, 9, (&mut one as *mut u64).cast()), 1);
        assert_eq!(launch(null(), null()), 1);
        assert_eq!(graph_trim(0), 0);
        assert_eq!(info(&mut fr, &mut total), 0);
        assert_eq!((fr, reserved()), (before, 0));
    }
}

/// `CUDA_MEM_ALLOC_NODE_PARAMS`: the pool properties (88 bytes), then the rest.
#[repr(C)]
struct AllocNodeParams {
    alloc_type: u32,
    handle_types: u32,
    location: Location,
    rest: [u8; 72],
    access: *const c_void,
    access_count: usize,
    bytesize: usize,
    dptr: u64,
}
