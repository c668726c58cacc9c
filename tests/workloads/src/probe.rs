//! `probe-all`: every hooked entry point called once, with well-formed
//! arguments, whatever the results. Each is resolved through the driver's
//! `cuGetProcAddress_v2` at the CUDA version asked for (per-thread variants with
//! the per-thread flag, older variants at the version that returns them), falling
//! back to `dlsym`.

use std::ffi::{c_int, c_uint};

use serde_json::json;

use crate::book::{Book, Key, Label};
use crate::call;
use crate::driver::*;
use crate::ipc::{
    FnIpcGet, FnIpcOpen, FnPoolExport, FnPoolImport, FnPoolShExport, FnPoolShImport, FnRetain,
    FnShExport, FnShImport, Handle64,
};
use crate::rt::{MIB, array_bytes, mipmap_bytes};
use crate::scenarios::Extra;

macro_rules! sym {
    ($d:expr, $ty:ty, $base:literal, $ver:expr, $flags:expr, $exp:literal) => {
        $d.resolve_or_dlsym::<$ty>($base, $ver, $flags, $exp)?
    };
}

fn null() -> P {
    std::ptr::null_mut()
}

/// `CU_CTX_SCHED_BLOCKING_SYNC`, passed to every `cuCtxCreate` variant so that the tracer's
/// reading of the flags and the device can be checked.
const CTX_FLAGS: c_uint = CTX_SCHED_BLOCKING_SYNC;

/// CUDA graph memory nodes: one graph allocates 2 MiB and frees it; every instantiation
/// variant makes an exec of it, each launched in turn (plain and per-thread); the driver's
/// figures are read, a high-water mark reset, the pool trimmed so that nothing stays.
#[expect(
    non_snake_case,
    reason = "V is the CUDA version every call below is resolved at, as in probe_all"
)]
fn probe_graphs(d: &Driver, book: &mut Book, V: c_int, dev: c_int) -> anyhow::Result<()> {
    use crate::book::GraphAttr;
    use crate::graph::{FnInstantiate, FnInstantiateParams, GraphApi, InstantiateParams};
    let api = GraphApi::resolve(d, V)?;
    let legacy = sym!(
        d,
        FnInstantiate,
        "cuGraphInstantiate",
        10000,
        0,
        "cuGraphInstantiate"
    );
    let with_params = sym!(
        d,
        FnInstantiateParams,
        "cuGraphInstantiateWithParams",
        V,
        0,
        "cuGraphInstantiateWithParams"
    );
    let bytes = 2 * MIB;
    let graph = api.create(d);
    let node = api.alloc_node(d, graph, dev, bytes);
    api.free_node(d, graph, node.unwrap_or(0));
    let mut execs = [null(); 5];
    let (no_node, no_log) = (std::ptr::null_mut(), std::ptr::null_mut());
    call!(d, legacy, &mut execs[0], graph, no_node, no_log, 0);
    call!(d, api.instantiate, &mut execs[1], graph, no_node, no_log, 0);
    call!(d, api.instantiate_flags, &mut execs[2], graph, 0);
    // Without its parameters: refused (CUDA_ERROR_INVALID_VALUE), as driver 580 does.
    call!(d, with_params, &mut execs[3], graph, std::ptr::null_mut());
    let mut params = InstantiateParams::default();
    call!(d, api.instantiate_params, &mut execs[4], graph, &mut params);
    for (i, &exec) in execs.iter().enumerate() {
        let launch = if i % 2 == 0 {
            api.launch
        } else {
            api.launch_ptsz
        };
        if call!(d, launch, exec, null()) == 0
            && let Some(addr) = node
        {
            book.graph_alloc(addr, bytes, Label::Dynamic);
            book.graph_free(addr);
        }
    }
    api.get(d, dev, GraphAttr::ReservedCurrent);
    let mut zero = 0u64;
    let high = GraphAttr::ReservedHigh as c_uint;
    if call!(d, api.set_attr, dev, high, (&mut zero as *mut u64).cast()) == 0 {
        book.graph_reset_high(GraphAttr::ReservedHigh);
    }
    if call!(d, api.trim, dev) == 0 {
        book.graph_trim();
    }
    api.get(d, dev, GraphAttr::ReservedCurrent);
    for exec in execs {
        call!(d, api.exec_destroy, exec);
    }
    call!(d, api.destroy, graph);
    Ok(())
}

pub fn probe_all(d: &Driver, book: &mut Book, version: c_int) -> anyhow::Result<Extra> {
    #[expect(
        non_snake_case,
        reason = "V is the CUDA version every call below is resolved at, as the constant was"
    )]
    let V = version;
    let mib = MIB as usize;
    let src = vec![0x42u8; mib];
    let srcp = src.as_ptr().cast();

    // Initialization and devices.
    let init = sym!(d, FnInit, "cuInit", V, 0, "cuInit");
    let init_ret = call!(d, init, 0);
    let f = sym!(
        d,
        FnOutInt,
        "cuDriverGetVersion",
        V,
        0,
        "cuDriverGetVersion"
    );
    let mut driver_version = 0;
    call!(d, f, &mut driver_version);
    let f = sym!(d, FnOutInt, "cuDeviceGetCount", V, 0, "cuDeviceGetCount");
    let mut count = 0;
    call!(d, f, &mut count);
    let f = sym!(d, FnDeviceGet, "cuDeviceGet", V, 0, "cuDeviceGet");
    let mut dev = 0;
    call!(d, f, &mut dev, 0);
    let f = sym!(
        d,
        FnTotalMem32,
        "cuDeviceTotalMem",
        2000,
        0,
        "cuDeviceTotalMem"
    );
    let mut total32: c_uint = 0;
    call!(d, f, &mut total32, dev);
    let f = sym!(
        d,
        FnTotalMem,
        "cuDeviceTotalMem",
        V,
        0,
        "cuDeviceTotalMem_v2"
    );
    let mut total = 0usize;
    call!(d, f, &mut total, dev);

    // Contexts.
    let retain = sym!(
        d,
        FnOutHandleDev,
        "cuDevicePrimaryCtxRetain",
        V,
        0,
        "cuDevicePrimaryCtxRetain"
    );
    let mut primary: P = null();
    call!(d, retain, &mut primary, dev);
    let f = sym!(d, FnHandle, "cuCtxSetCurrent", V, 0, "cuCtxSetCurrent");
    call!(d, f, primary);
    let f = sym!(d, FnOutHandle, "cuCtxGetCurrent", V, 0, "cuCtxGetCurrent");
    let mut cur: P = null();
    call!(d, f, &mut cur);
    let f = sym!(d, FnMemInfo32, "cuMemGetInfo", 2000, 0, "cuMemGetInfo");
    let (mut free32, mut tot32): (c_uint, c_uint) = (0, 0);
    call!(d, f, &mut free32, &mut tot32);
    let f = sym!(d, FnMemInfo, "cuMemGetInfo", V, 0, "cuMemGetInfo_v2");
    let (mut free, mut tot) = (0usize, 0usize);
    call!(d, f, &mut free, &mut tot);

    // The resolvers themselves, called through the pointers they return.
    let gpa1 = sym!(d, FnGpa, "cuGetProcAddress", 11030, 0, "cuGetProcAddress");
    let mut pfn: P = null();
    call!(d, gpa1, c"cuMemAlloc".as_ptr(), &mut pfn, V, 0);
    let gpa2 = sym!(
        d,
        FnGpa2,
        "cuGetProcAddress",
        12000,
        0,
        "cuGetProcAddress_v2"
    );
    let mut status: c_int = 0;
    call!(d, gpa2, c"cuMemAlloc".as_ptr(), &mut pfn, V, 0, &mut status);

    // What `cuCtxCreate` means at this version (`_v3` before 12.5, `_v4` from it where the
    // driver has it); each variant is also called by the version that returns it.
    let ctx_create_at_version = d.resolved_name("cuCtxCreate", V, 0);
    let create1 = sym!(d, FnCtxCreate, "cuCtxCreate", 2000, 0, "cuCtxCreate");
    let create2 = sym!(d, FnCtxCreate, "cuCtxCreate", 3020, 0, "cuCtxCreate_v2");
    let create3 = sym!(d, FnCtxCreate3, "cuCtxCreate", 12000, 0, "cuCtxCreate_v3");
    let create4 = d
        .resolve::<FnCtxCreate4>("cuCtxCreate", V.max(12050), 0, "cuCtxCreate_v4")
        .ok();
    let (mut c1, mut c2, mut c3, mut c4): (P, P, P, P) = (null(), null(), null(), null());
    call!(d, create1, &mut c1, CTX_FLAGS, dev);
    call!(d, create2, &mut c2, CTX_FLAGS, dev);
    call!(d, create3, &mut c3, null(), 0, CTX_FLAGS, dev);
    let mut ctx_creates = vec![create1.name, create2.name, create3.name];
    if let Some(create4) = create4 {
        let params = CtxCreateParams::none();
        call!(d, create4, &mut c4, &params, CTX_FLAGS, dev);
        ctx_creates.push(create4.name);
        let destroy = sym!(d, FnHandle, "cuCtxDestroy", V, 0, "cuCtxDestroy_v2");
        if !c4.is_null() {
            call!(d, destroy, c4);
        }
    }
    let pop2 = sym!(
        d,
        FnOutHandle,
        "cuCtxPopCurrent",
        V,
        0,
        "cuCtxPopCurrent_v2"
    );
    let pop1 = sym!(
        d,
        FnOutHandle,
        "cuCtxPopCurrent",
        2000,
        0,
        "cuCtxPopCurrent"
    );
    let mut popped: P = null();
    call!(d, pop2, &mut popped);
    call!(d, pop1, &mut popped);
    let push1 = sym!(d, FnHandle, "cuCtxPushCurrent", 2000, 0, "cuCtxPushCurrent");
    let push2 = sym!(d, FnHandle, "cuCtxPushCurrent", V, 0, "cuCtxPushCurrent_v2");
    call!(d, push1, c2);
    call!(d, push2, c3);
    let f = sym!(d, FnVoid, "cuCtxSynchronize", V, 0, "cuCtxSynchronize");
    call!(d, f);
    let destroy2 = sym!(d, FnHandle, "cuCtxDestroy", V, 0, "cuCtxDestroy_v2");
    let destroy1 = sym!(d, FnHandle, "cuCtxDestroy", 2000, 0, "cuCtxDestroy");
    call!(d, destroy2, c3);
    call!(d, destroy1, c2);
    let set = sym!(d, FnHandle, "cuCtxSetCurrent", V, 0, "cuCtxSetCurrent");
    call!(d, set, primary);
    let ctx = primary as u64;

    // Device memory and copies.
    let f = sym!(d, FnAlloc32, "cuMemAlloc", 2000, 0, "cuMemAlloc");
    let mut p32: c_uint = 0;
    let r = call!(d, f, &mut p32, mib as c_uint);
    d.bytes(f.name, MIB, r);
    let f = sym!(d, FnHtoD32, "cuMemcpyHtoD", 2000, 0, "cuMemcpyHtoD");
    call!(d, f, p32, srcp, mib as c_uint);
    let f = sym!(
        d,
        FnHtoDAsync32,
        "cuMemcpyHtoDAsync",
        2000,
        0,
        "cuMemcpyHtoDAsync"
    );
    call!(d, f, p32, srcp, mib as c_uint, null());
    let f = sym!(d, FnU32, "cuMemFree", 2000, 0, "cuMemFree");
    call!(d, f, p32);

    let f = sym!(d, FnAlloc, "cuMemAlloc", V, 0, "cuMemAlloc_v2");
    let mut ptr = 0u64;
    let r = call!(d, f, &mut ptr, mib);
    d.bytes(f.name, MIB, r);
    let f = sym!(d, FnHtoD, "cuMemcpyHtoD", V, 0, "cuMemcpyHtoD_v2");
    call!(d, f, ptr, srcp, mib);
    let f = sym!(
        d,
        FnHtoD,
        "cuMemcpyHtoD",
        V,
        PER_THREAD,
        "cuMemcpyHtoD_v2_ptds"
    );
    call!(d, f, ptr, srcp, mib);
    let f = sym!(
        d,
        FnHtoDAsync,
        "cuMemcpyHtoDAsync",
        V,
        0,
        "cuMemcpyHtoDAsync_v2"
    );
    call!(d, f, ptr, srcp, mib, null());
    let f = sym!(
        d,
        FnHtoDAsync,
        "cuMemcpyHtoDAsync",
        V,
        PER_THREAD,
        "cuMemcpyHtoDAsync_v2_ptsz"
    );
    call!(d, f, ptr, srcp, mib, null());
    // Unified, 2D and 3D copies from host memory, every variant.
    let host = src.as_ptr() as u64;
    for (ver, flags, exp) in [(V, 0, "cuMemcpy"), (V, PER_THREAD, "cuMemcpy_ptds")] {
        let f = d.resolve_or_dlsym::<FnMemcpy>("cuMemcpy", ver, flags, exp)?;
        call!(d, f, ptr, host, mib);
    }
    for (flags, exp) in [(0, "cuMemcpyAsync"), (PER_THREAD, "cuMemcpyAsync_ptsz")] {
        let f = d.resolve_or_dlsym::<FnMemcpyAsync>("cuMemcpyAsync", V, flags, exp)?;
        call!(d, f, ptr, host, mib, null());
    }
    let c2 = Memcpy2D::to_device(MEMORYTYPE_HOST, host, ptr, 1024, 1024, 1024);
    for (base, flags, exp) in [
        ("cuMemcpy2D", 0, "cuMemcpy2D_v2"),
        ("cuMemcpy2D", PER_THREAD, "cuMemcpy2D_v2_ptds"),
        ("cuMemcpy2DUnaligned", 0, "cuMemcpy2DUnaligned_v2"),
        (
            "cuMemcpy2DUnaligned",
            PER_THREAD,
            "cuMemcpy2DUnaligned_v2_ptds",
        ),
    ] {
        let f = d.resolve_or_dlsym::<FnMemcpy2D>(base, V, flags, exp)?;
        call!(d, f, &c2);
    }
    for (flags, exp) in [
        (0, "cuMemcpy2DAsync_v2"),
        (PER_THREAD, "cuMemcpy2DAsync_v2_ptsz"),
    ] {
        let f = d.resolve_or_dlsym::<FnMemcpy2DAsync>("cuMemcpy2DAsync", V, flags, exp)?;
        call!(d, f, &c2, null());
    }
    let c3 = Memcpy3D::to_device(MEMORYTYPE_HOST, host, ptr, 1024, 32, 32);
    for (flags, exp) in [(0, "cuMemcpy3D_v2"), (PER_THREAD, "cuMemcpy3D_v2_ptds")] {
        let f = d.resolve_or_dlsym::<FnMemcpy3D>("cuMemcpy3D", V, flags, exp)?;
        call!(d, f, &c3);
    }
    for (flags, exp) in [
        (0, "cuMemcpy3DAsync_v2"),
        (PER_THREAD, "cuMemcpy3DAsync_v2_ptsz"),
    ] {
        let f = d.resolve_or_dlsym::<FnMemcpy3DAsync>("cuMemcpy3DAsync", V, flags, exp)?;
        call!(d, f, &c3, null());
    }
    // Batches (CUDA 12.8 and 13.0), where the library exports them: one 4 KiB copy from
    // host memory each, on the per-thread stream.
    {
        use crate::batch::{
            Fn3DBatch, Fn3DBatchV2, FnBatch, FnBatchV2, Memcpy3DBatchOp, MemcpyAttributes,
        };
        let attrs = MemcpyAttributes::stream_ordered();
        let (dsts, srcs, sizes, first) = ([ptr], [host], [4096usize], [0usize]);
        let stream = crate::batch::STREAM_PER_THREAD as P;
        let op = Memcpy3DBatchOp::bytes(host, ptr, 4096);
        for (version, flags, exp) in [
            (12080, 0, "cuMemcpyBatchAsync"),
            (12080, PER_THREAD, "cuMemcpyBatchAsync_ptsz"),
            (13000, 0, "cuMemcpyBatchAsync_v2"),
            (13000, PER_THREAD, "cuMemcpyBatchAsync_v2_ptsz"),
        ] {
            let mut fail = 0usize;
            let (d0, s0, z0, f0) = (dsts.as_ptr(), srcs.as_ptr(), sizes.as_ptr(), first.as_ptr());
            if version == 13000 {
                if let Ok(f) =
                    d.resolve_or_dlsym::<FnBatchV2>("cuMemcpyBatchAsync", version, flags, exp)
                {
                    call!(d, f, d0, s0, z0, 1, &attrs, f0, 1, stream);
                }
            } else if let Ok(f) =
                d.resolve_or_dlsym::<FnBatch>("cuMemcpyBatchAsync", version, flags, exp)
            {
                call!(d, f, d0, s0, z0, 1, &attrs, f0, 1, &mut fail, stream);
            }
        }
        for (version, flags, exp) in [
            (12080, 0, "cuMemcpy3DBatchAsync"),
            (12080, PER_THREAD, "cuMemcpy3DBatchAsync_ptsz"),
            (13000, 0, "cuMemcpy3DBatchAsync_v2"),
            (13000, PER_THREAD, "cuMemcpy3DBatchAsync_v2_ptsz"),
        ] {
            let mut fail = 0usize;
            if version == 13000 {
                if let Ok(f) =
                    d.resolve_or_dlsym::<Fn3DBatchV2>("cuMemcpy3DBatchAsync", version, flags, exp)
                {
                    call!(d, f, 1, &op, 0, stream);
                }
            } else if let Ok(f) =
                d.resolve_or_dlsym::<Fn3DBatch>("cuMemcpy3DBatchAsync", version, flags, exp)
            {
                call!(d, f, 1, &op, &mut fail, 0, stream);
            }
        }
    }
    // The CUDA 3.x names, where the library has them (NVIDIA's does; the simulated one
    // does not): zeroed descriptors, whatever the results.
    let zeroes = [0u64; 32];
    for (base, exp) in [
        ("cuMemcpy2D", "cuMemcpy2D"),
        ("cuMemcpy2DUnaligned", "cuMemcpy2DUnaligned"),
        ("cuMemcpy3D", "cuMemcpy3D"),
    ] {
        if let Ok(f) = d.resolve_or_dlsym::<FnMemcpyLegacy>(base, 2000, 0, exp) {
            call!(d, f, &zeroes);
        }
    }
    for (base, exp) in [
        ("cuMemcpy2DAsync", "cuMemcpy2DAsync"),
        ("cuMemcpy3DAsync", "cuMemcpy3DAsync"),
    ] {
        if let Ok(f) = d.resolve_or_dlsym::<FnMemcpyLegacyAsync>(base, 2000, 0, exp) {
            call!(d, f, &zeroes, null());
        }
    }
    // IPC: a handle of this process's own memory cannot be opened by it
    // (CUDA_ERROR_INVALID_CONTEXT), nor closed; both names of the open are called.
    let f = sym!(d, FnIpcGet, "cuIpcGetMemHandle", V, 0, "cuIpcGetMemHandle");
    let mut handle = Handle64 { reserved: [0; 64] };
    call!(d, f, &mut handle, ptr);
    let mut opened = 0u64;
    let f = sym!(
        d,
        FnIpcOpen,
        "cuIpcOpenMemHandle",
        V,
        0,
        "cuIpcOpenMemHandle_v2"
    );
    call!(d, f, &mut opened, handle, 1);
    let f = sym!(
        d,
        FnIpcOpen,
        "cuIpcOpenMemHandle",
        4010,
        0,
        "cuIpcOpenMemHandle"
    );
    call!(d, f, &mut opened, handle, 1);
    let f = sym!(d, FnU64, "cuIpcCloseMemHandle", V, 0, "cuIpcCloseMemHandle");
    call!(d, f, ptr);
    let f = sym!(d, FnU64, "cuMemFree", V, 0, "cuMemFree_v2");
    call!(d, f, ptr);

    let f = sym!(d, FnPitch32, "cuMemAllocPitch", 2000, 0, "cuMemAllocPitch");
    let (mut p32, mut pitch32): (c_uint, c_uint) = (0, 0);
    let r = call!(d, f, &mut p32, &mut pitch32, 1000, 256, 4);
    let bytes = if r == 0 {
        u64::from(pitch32) * 256
    } else {
        1000 * 256
    };
    d.bytes(f.name, bytes, r);
    if r == 0 {
        book.add(Key::Ptr(u64::from(p32)), bytes, Label::Dynamic, ctx);
    }
    let f = sym!(d, FnPitch, "cuMemAllocPitch", V, 0, "cuMemAllocPitch_v2");
    let (mut pp, mut pitch) = (0u64, 0usize);
    let r = call!(d, f, &mut pp, &mut pitch, 1000, 256, 4);
    let bytes = if r == 0 {
        pitch as u64 * 256
    } else {
        1000 * 256
    };
    d.bytes(f.name, bytes, r);
    if r == 0 {
        book.add(Key::Ptr(pp), bytes, Label::Dynamic, ctx);
    }

    // Stream-ordered pools.
    let f = sym!(
        d,
        FnOutHandleDev,
        "cuDeviceGetDefaultMemPool",
        V,
        0,
        "cuDeviceGetDefaultMemPool"
    );
    let mut pool0: P = null();
    call!(d, f, &mut pool0, dev);
    // The device's current pool, set to itself; CUDA 13.0's pools by location where the
    // library has them.
    let f = sym!(
        d,
        FnOutHandleDev,
        "cuDeviceGetMemPool",
        V,
        0,
        "cuDeviceGetMemPool"
    );
    let mut current: P = null();
    call!(d, f, &mut current, dev);
    let f = sym!(
        d,
        FnDevSetPool,
        "cuDeviceSetMemPool",
        V,
        0,
        "cuDeviceSetMemPool"
    );
    call!(d, f, dev, pool0);
    let here = MemLocation { kind: 1, id: dev };
    for (base, current) in [("cuMemGetDefaultMemPool", false), ("cuMemGetMemPool", true)] {
        if let Ok(f) = d.resolve_or_dlsym::<FnGetPoolAt>(base, 13000, 0, base) {
            let mut p: P = null();
            call!(d, f, &mut p, &here, 1);
            let _ = current;
        }
    }
    if let Ok(f) = d.resolve_or_dlsym::<FnSetPoolAt>("cuMemSetMemPool", 13000, 0, "cuMemSetMemPool")
    {
        call!(d, f, &here, 1, pool0);
    }
    let alloc_async = sym!(d, FnAllocAsync, "cuMemAllocAsync", V, 0, "cuMemAllocAsync");
    let alloc_async_pt = sym!(
        d,
        FnAllocAsync,
        "cuMemAllocAsync",
        V,
        PER_THREAD,
        "cuMemAllocAsync_ptsz"
    );
    let free_async = sym!(d, FnFreeAsync, "cuMemFreeAsync", V, 0, "cuMemFreeAsync");
    let free_async_pt = sym!(
        d,
        FnFreeAsync,
        "cuMemFreeAsync",
        V,
        PER_THREAD,
        "cuMemFreeAsync_ptsz"
    );
    let pool_export = sym!(
        d,
        FnPoolExport,
        "cuMemPoolExportPointer",
        V,
        0,
        "cuMemPoolExportPointer"
    );
    let pool_import = sym!(
        d,
        FnPoolImport,
        "cuMemPoolImportPointer",
        V,
        0,
        "cuMemPoolImportPointer"
    );
    for (i, (alloc, freef)) in [(alloc_async, free_async), (alloc_async_pt, free_async_pt)]
        .into_iter()
        .enumerate()
    {
        let mut a = 0u64;
        let r = call!(d, alloc, &mut a, mib, null());
        d.bytes(alloc.name, MIB, r);
        if r == 0 {
            book.pool_alloc(pool0 as u64, a, MIB, Label::Dynamic, ctx);
            book.remove(Key::Ptr(a));
        }
        if i == 0 {
            // Exported, and imported by the process that made it: refused.
            let mut data = Handle64 { reserved: [0; 64] };
            call!(d, pool_export, &mut data, a);
            let mut imported = 0u64;
            call!(d, pool_import, &mut imported, pool0, &data);
        }
        call!(d, freef, a, null());
    }
    let f = sym!(d, FnPoolCreate, "cuMemPoolCreate", V, 0, "cuMemPoolCreate");
    let props = PoolProps {
        alloc_type: 1,
        handle_types: 0,
        location: MemLocation { kind: 1, id: dev },
        win32_security: null(),
        max_size: 0,
        reserved: [0; 56],
    };
    let mut pool: P = null();
    call!(d, f, &mut pool, &props);
    // A pool made without `handleTypes` is not shareable: both refused.
    let f = sym!(
        d,
        FnPoolShExport,
        "cuMemPoolExportToShareableHandle",
        V,
        0,
        "cuMemPoolExportToShareableHandle"
    );
    let mut pool_fd: c_int = -1;
    call!(d, f, (&mut pool_fd as *mut c_int).cast(), pool, 1, 0);
    let f = sym!(
        d,
        FnPoolShImport,
        "cuMemPoolImportFromShareableHandle",
        V,
        0,
        "cuMemPoolImportFromShareableHandle"
    );
    let mut imported_pool: P = null();
    call!(d, f, &mut imported_pool, pool_fd as isize as P, 1, 0);
    let fp = sym!(
        d,
        FnAllocFromPool,
        "cuMemAllocFromPoolAsync",
        V,
        0,
        "cuMemAllocFromPoolAsync"
    );
    let fp_pt = sym!(
        d,
        FnAllocFromPool,
        "cuMemAllocFromPoolAsync",
        V,
        PER_THREAD,
        "cuMemAllocFromPoolAsync_ptsz"
    );
    for f in [fp, fp_pt] {
        let mut a = 0u64;
        let r = call!(d, f, &mut a, mib, pool, null());
        d.bytes(f.name, MIB, r);
        if r == 0 {
            book.pool_alloc(pool as u64, a, MIB, Label::Dynamic, ctx);
        }
    }
    let f = sym!(d, FnTrim, "cuMemPoolTrimTo", V, 0, "cuMemPoolTrimTo");
    if call!(d, f, pool0, 0) == 0 {
        book.pool_trim(pool0 as u64, 0);
    }

    // The release threshold (CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, 4) decides what the pool
    // keeps at each synchronization: 1 MiB of a freed 2 MiB block, then nothing, then
    // 1 MiB again, which it still holds at exit.
    let set_attr = sym!(
        d,
        FnPoolAttr,
        "cuMemPoolSetAttribute",
        V,
        0,
        "cuMemPoolSetAttribute"
    );
    let get_attr = sym!(
        d,
        FnPoolAttr,
        "cuMemPoolGetAttribute",
        V,
        0,
        "cuMemPoolGetAttribute"
    );
    let ctx_sync = sym!(d, FnVoid, "cuCtxSynchronize", V, 0, "cuCtxSynchronize");
    let stream_sync = sym!(
        d,
        FnHandle,
        "cuStreamSynchronize",
        V,
        0,
        "cuStreamSynchronize"
    );
    let stream_sync_pt = sym!(
        d,
        FnHandle,
        "cuStreamSynchronize",
        V,
        PER_THREAD,
        "cuStreamSynchronize_ptsz"
    );
    let event_create = sym!(d, FnEventCreate, "cuEventCreate", V, 0, "cuEventCreate");
    let event_sync = sym!(
        d,
        FnHandle,
        "cuEventSynchronize",
        V,
        0,
        "cuEventSynchronize"
    );
    let event_destroy = sym!(d, FnHandle, "cuEventDestroy", V, 0, "cuEventDestroy_v2");
    let mut event: P = null();
    let event_ok = call!(d, event_create, &mut event, 0) == 0;
    let set_threshold = |book: &mut Book, bytes: u64| {
        let mut v = bytes;
        if call!(d, set_attr, pool0, 4, (&raw mut v).cast()) == 0 {
            book.pool_threshold(pool0 as u64, bytes);
        }
    };
    set_threshold(book, MIB);
    let mut threshold = 0u64;
    call!(d, get_attr, pool0, 4, (&raw mut threshold).cast());
    let mut reserved = 0u64;
    call!(d, get_attr, pool0, 5, (&raw mut reserved).cast());
    let mut syncs: Vec<Box<dyn Fn() -> u32 + '_>> = vec![
        Box::new(|| call!(d, stream_sync, null())),
        Box::new(|| call!(d, stream_sync_pt, null())),
        Box::new(|| call!(d, event_sync, event)),
        Box::new(|| call!(d, ctx_sync)),
    ];
    // cuCtxSynchronize_v2 (CUDA 12.9) names the context it waits for; where the driver has it.
    if let Ok(ctx_sync_v2) =
        d.resolve_or_dlsym::<FnHandle>("cuCtxSynchronize", V, 0, "cuCtxSynchronize_v2")
    {
        syncs.push(Box::new(move || call!(d, ctx_sync_v2, primary)));
    }
    for (i, sync) in syncs.iter().enumerate() {
        match i {
            1 => set_threshold(book, 0),
            3 => set_threshold(book, MIB),
            _ => {}
        }
        let mut a = 0u64;
        let r = call!(d, alloc_async, &mut a, 2 * mib, null());
        d.bytes(alloc_async.name, 2 * MIB, r);
        if r == 0 {
            book.pool_alloc(pool0 as u64, a, 2 * MIB, Label::Dynamic, ctx);
            book.remove(Key::Ptr(a));
            call!(d, free_async, a, null());
        }
        if sync() == 0 {
            book.sync();
        }
    }
    if event_ok {
        call!(d, event_destroy, event);
    }
    let f = sym!(d, FnHandle, "cuMemPoolDestroy", V, 0, "cuMemPoolDestroy");
    if call!(d, f, pool) == 0 {
        book.pool_destroy(pool as u64);
    }

    // Virtual memory management.
    let prop = AllocProp::pinned(1, dev);
    let f = sym!(
        d,
        FnGranularity,
        "cuMemGetAllocationGranularity",
        V,
        0,
        "cuMemGetAllocationGranularity"
    );
    let mut g = 0usize;
    if call!(d, f, &mut g, &prop, 0) != 0 || g == 0 {
        g = 2 * mib;
    }
    let f = sym!(d, FnMemCreate, "cuMemCreate", V, 0, "cuMemCreate");
    let mut h = 0u64;
    let r = call!(d, f, &mut h, g, &prop, 0);
    d.bytes(f.name, g as u64, r);
    if r == 0 {
        book.phys_create(h, g as u64, Some(Label::Dynamic));
    }
    let f = sym!(
        d,
        FnReserve,
        "cuMemAddressReserve",
        V,
        0,
        "cuMemAddressReserve"
    );
    let mut va = 0u64;
    call!(d, f, &mut va, 2 * g, 0, 0, 0);
    let f = sym!(d, FnMap, "cuMemMap", V, 0, "cuMemMap");
    if call!(d, f, va, g, 0, h, 0) == 0 {
        book.map(va, g as u64, h);
    }
    let f = sym!(d, FnSetAccess, "cuMemSetAccess", V, 0, "cuMemSetAccess");
    let desc = AccessDesc {
        location: MemLocation { kind: 1, id: dev },
        flags: 3,
    };
    call!(d, f, va, g, &desc, 1);
    let release = sym!(d, FnU64, "cuMemRelease", V, 0, "cuMemRelease");
    // One more reference to the mapped handle, given back; its POSIX descriptor exported
    // and imported by the process that made it (refused).
    let f = sym!(
        d,
        FnRetain,
        "cuMemRetainAllocationHandle",
        V,
        0,
        "cuMemRetainAllocationHandle"
    );
    let mut retained = 0u64;
    if call!(d, f, &mut retained, va as P) == 0 {
        call!(d, release, retained);
    }
    let f = sym!(
        d,
        FnShExport,
        "cuMemExportToShareableHandle",
        V,
        0,
        "cuMemExportToShareableHandle"
    );
    let mut fd: c_int = -1;
    call!(d, f, (&mut fd as *mut c_int).cast(), h, 1, 0);
    let f = sym!(
        d,
        FnShImport,
        "cuMemImportFromShareableHandle",
        V,
        0,
        "cuMemImportFromShareableHandle"
    );
    let mut imported = 0u64;
    call!(d, f, &mut imported, fd as usize as P, 1);
    if fd >= 0 {
        // SAFETY: the descriptor the export made, closed once.
        unsafe { libc::close(fd) };
    }
    // Multicast objects (CUDA 12.1), where the library exports them: one of the granularity,
    // the handle bound by handle and by address in every variant, each unbound at once.
    {
        use crate::multicast::{
            FnAddDevice, FnBindAddr, FnBindAddrV2, FnBindMem, FnBindMemV2, FnCreate, FnUnbind,
            MulticastObjectProp,
        };
        let mv = V.max(12050);
        let create =
            d.resolve_or_dlsym::<FnCreate>("cuMulticastCreate", mv, 0, "cuMulticastCreate");
        let add = d.resolve_or_dlsym::<FnAddDevice>(
            "cuMulticastAddDevice",
            mv,
            0,
            "cuMulticastAddDevice",
        );
        let unbind =
            d.resolve_or_dlsym::<FnUnbind>("cuMulticastUnbind", mv, 0, "cuMulticastUnbind");
        if let (Ok(create), Ok(add), Ok(unbind)) = (create, add, unbind) {
            let prop = MulticastObjectProp {
                num_devices: 1,
                size: g,
                handle_types: 0,
                flags: 0,
            };
            let mut mc = 0u64;
            if call!(d, create, &mut mc, &prop) == 0 {
                book.multicast_create(mc);
            }
            call!(d, add, mc, dev);
            // Unbound whether or not the bind took (on a driver without a GPU it did not).
            let bound = |r: R, book: &mut Book| {
                if r == 0 {
                    book.multicast_bind(mc, dev, 0, h);
                }
                if call!(d, unbind, mc, dev, 0, g) == 0 {
                    book.multicast_unbind(mc, dev, 0);
                }
            };
            if let Ok(f) =
                d.resolve_or_dlsym::<FnBindMem>("cuMulticastBindMem", mv, 0, "cuMulticastBindMem")
            {
                bound(call!(d, f, mc, 0, h, 0, g, 0), book);
            }
            if let Ok(f) = d.resolve_or_dlsym::<FnBindAddr>(
                "cuMulticastBindAddr",
                mv,
                0,
                "cuMulticastBindAddr",
            ) {
                bound(call!(d, f, mc, 0, va, g, 0), book);
            }
            if let Some(f) = d.dlsym::<FnBindMemV2>("cuMulticastBindMem_v2") {
                bound(call!(d, f, mc, dev, 0, h, 0, g, 0), book);
            }
            if let Some(f) = d.dlsym::<FnBindAddrV2>("cuMulticastBindAddr_v2") {
                bound(call!(d, f, mc, dev, 0, va, g, 0), book);
            }
            if call!(d, release, mc) == 0 {
                book.phys_release(mc);
            }
        }
    }
    let f = sym!(d, FnRange, "cuMemUnmap", V, 0, "cuMemUnmap");
    if call!(d, f, va, g) == 0 {
        book.unmap(va, g as u64);
    }
    if call!(d, release, h) == 0 {
        book.phys_release(h);
    }
    let f = sym!(d, FnRange, "cuMemAddressFree", V, 0, "cuMemAddressFree");
    call!(d, f, va, 2 * g);

    // Arrays.
    let f = sym!(d, FnArray32, "cuArrayCreate", 2000, 0, "cuArrayCreate");
    let desc32 = ArrayDesc32 {
        width: 256,
        height: 256,
        format: 0x20,
        channels: 1,
    };
    let mut a1: P = null();
    let r = call!(d, f, &mut a1, &desc32);
    let bytes = array_bytes(256, 256, 0, 0x20, 1);
    d.bytes(f.name, bytes, r);
    if r == 0 {
        book.add(Key::Array(a1 as u64), bytes, Label::Dynamic, ctx);
    }
    let f = sym!(d, FnArray, "cuArrayCreate", V, 0, "cuArrayCreate_v2");
    let desc = ArrayDesc {
        width: 256,
        height: 256,
        format: 0x20,
        channels: 1,
    };
    let mut a2: P = null();
    let r = call!(d, f, &mut a2, &desc);
    d.bytes(f.name, bytes, r);
    if r == 0 {
        book.add(Key::Array(a2 as u64), bytes, Label::Dynamic, ctx);
    }
    let bytes3 = array_bytes(64, 64, 64, 0x01, 4);
    let f = sym!(
        d,
        FnArray3D32,
        "cuArray3DCreate",
        2000,
        0,
        "cuArray3DCreate"
    );
    let d32 = Array3DDesc32 {
        width: 64,
        height: 64,
        depth: 64,
        format: 0x01,
        channels: 4,
        flags: 0,
    };
    let mut a3: P = null();
    let r = call!(d, f, &mut a3, &d32);
    d.bytes(f.name, bytes3, r);
    if r == 0 {
        book.add(Key::Array(a3 as u64), bytes3, Label::Dynamic, ctx);
    }
    let f = sym!(d, FnArray3D, "cuArray3DCreate", V, 0, "cuArray3DCreate_v2");
    let d3 = Array3DDesc {
        width: 64,
        height: 64,
        depth: 64,
        format: 0x01,
        channels: 4,
        flags: 0,
    };
    let mut a4: P = null();
    let r = call!(d, f, &mut a4, &d3);
    d.bytes(f.name, bytes3, r);
    if r == 0 {
        book.add(Key::Array(a4 as u64), bytes3, Label::Dynamic, ctx);
    }
    let f = sym!(
        d,
        FnMipmap,
        "cuMipmappedArrayCreate",
        V,
        0,
        "cuMipmappedArrayCreate"
    );
    let dm = Array3DDesc {
        width: 256,
        height: 256,
        depth: 0,
        format: 0x20,
        channels: 1,
        flags: 0,
    };
    let mut m: P = null();
    let r = call!(d, f, &mut m, &dm, 4);
    let mbytes = mipmap_bytes([256, 256, 0], 0x20, 1, 4);
    d.bytes(f.name, mbytes, r);
    if r == 0 {
        book.add(Key::Array(m as u64), mbytes, Label::Dynamic, ctx);
    }
    // A sparse array (no memory of its own), a region of it unmapped by each variant of
    // cuMemMapArrayAsync (nothing was mapped: a no-op), destroyed.
    {
        use crate::sparse::{ARRAY3D_SPARSE, ArrayMapInfo, FnMapArray};
        let f = sym!(d, FnArray3D, "cuArray3DCreate", V, 0, "cuArray3DCreate_v2");
        let ds = Array3DDesc {
            flags: ARRAY3D_SPARSE,
            ..d3
        };
        let mut s: P = null();
        let r = call!(d, f, &mut s, &ds);
        d.bytes(f.name, bytes3, r);
        if r == 0 {
            book.sparse_array(s as u64);
        }
        let unmap = ArrayMapInfo::level(s as u64, [0, 0, 0, 64, 64, 64], None);
        for (flags, exp) in [
            (0, "cuMemMapArrayAsync"),
            (PER_THREAD, "cuMemMapArrayAsync_ptsz"),
        ] {
            let f = d.resolve_or_dlsym::<FnMapArray>("cuMemMapArrayAsync", V, flags, exp)?;
            call!(d, f, &unmap, 1, null());
        }
        book.sparse_array_destroy(s as u64);
        let f = sym!(d, FnHandle, "cuArrayDestroy", V, 0, "cuArrayDestroy");
        call!(d, f, s);
    }
    let f = sym!(d, FnHandle, "cuArrayDestroy", V, 0, "cuArrayDestroy");
    book.remove(Key::Array(a2 as u64));
    call!(d, f, a2);
    let f = sym!(
        d,
        FnHandle,
        "cuMipmappedArrayDestroy",
        V,
        0,
        "cuMipmappedArrayDestroy"
    );
    book.remove(Key::Array(m as u64));
    call!(d, f, m);

    // Host memory.
    let f = sym!(d, FnManaged, "cuMemAllocManaged", V, 0, "cuMemAllocManaged");
    let mut mp = 0u64;
    let r = call!(d, f, &mut mp, mib, 1);
    d.bytes(f.name, MIB, r);
    if r == 0 {
        book.host_add(mp, MIB, Some(ctx));
    }
    let f = sym!(
        d,
        FnAllocHost32,
        "cuMemAllocHost",
        2000,
        0,
        "cuMemAllocHost"
    );
    let mut h1: P = null();
    let r = call!(d, f, &mut h1, mib as c_uint);
    d.bytes(f.name, MIB, r);
    if r == 0 {
        book.host_add(h1 as u64, MIB, Some(ctx));
    }
    let f = sym!(d, FnAllocHost, "cuMemAllocHost", V, 0, "cuMemAllocHost_v2");
    let mut h2: P = null();
    let r = call!(d, f, &mut h2, mib);
    d.bytes(f.name, MIB, r);
    if r == 0 {
        book.host_add(h2 as u64, MIB, Some(ctx));
    }
    let f = sym!(d, FnHostAlloc, "cuMemHostAlloc", V, 0, "cuMemHostAlloc");
    let mut h3: P = null();
    let r = call!(d, f, &mut h3, mib, 0);
    d.bytes(f.name, MIB, r);
    let f = sym!(d, FnHandle, "cuMemFreeHost", V, 0, "cuMemFreeHost");
    call!(d, f, h3);
    let buf_a: &'static mut [u8] = Box::leak(vec![0u8; mib].into_boxed_slice());
    let buf_b: &'static mut [u8] = Box::leak(vec![0u8; mib].into_boxed_slice());
    let f = sym!(
        d,
        FnHostRegister,
        "cuMemHostRegister",
        4000,
        0,
        "cuMemHostRegister"
    );
    let r = call!(d, f, buf_a.as_mut_ptr().cast(), mib, 0);
    d.bytes(f.name, MIB, r);
    let f = sym!(
        d,
        FnHostRegister,
        "cuMemHostRegister",
        V,
        0,
        "cuMemHostRegister_v2"
    );
    let r = call!(d, f, buf_b.as_mut_ptr().cast(), mib, 0);
    d.bytes(f.name, MIB, r);
    if r == 0 {
        book.host_add(buf_b.as_ptr() as u64, MIB, Some(ctx));
    }
    let f = sym!(
        d,
        FnHandle,
        "cuMemHostUnregister",
        V,
        0,
        "cuMemHostUnregister"
    );
    call!(d, f, buf_a.as_mut_ptr().cast());

    // Resetting the primary context frees what it holds; it stays retained.
    let alloc = sym!(d, FnAlloc, "cuMemAlloc", V, 0, "cuMemAlloc_v2");
    let resets = [
        sym!(
            d,
            FnDev,
            "cuDevicePrimaryCtxReset",
            7000,
            0,
            "cuDevicePrimaryCtxReset"
        ),
        sym!(
            d,
            FnDev,
            "cuDevicePrimaryCtxReset",
            V,
            0,
            "cuDevicePrimaryCtxReset_v2"
        ),
    ];
    for f in resets {
        let mut p = 0u64;
        let r = call!(d, alloc, &mut p, MIB as usize);
        d.bytes(alloc.name, MIB, r);
        if r == 0 {
            book.add(Key::Ptr(p), MIB, Label::Dynamic, ctx);
        }
        if call!(d, f, dev) == 0 {
            book.ctx_destroyed(ctx);
        }
    }

    probe_graphs(d, book, V, dev)?;

    // A green context retains the primary context; what is allocated while its CUcontext
    // is current is the primary context's, outlives the green context and goes with the
    // primary context below.
    if let Some(green) = Green::resolve(d, V) {
        let (g, gctx) = green.create(d, dev);
        let push = sym!(d, FnHandle, "cuCtxPushCurrent", V, 0, "cuCtxPushCurrent_v2");
        let pop = sym!(
            d,
            FnOutHandle,
            "cuCtxPopCurrent",
            V,
            0,
            "cuCtxPopCurrent_v2"
        );
        call!(d, push, gctx);
        let mut p = 0u64;
        let r = call!(d, alloc, &mut p, MIB as usize);
        d.bytes(alloc.name, MIB, r);
        if r == 0 {
            book.add(Key::Ptr(p), MIB, Label::Dynamic, ctx);
        }
        let mut popped: P = null();
        call!(d, pop, &mut popped);
        call!(d, green.destroy, g);
    }

    // Releasing the only primary-context reference destroys it and what it holds.
    let f = sym!(
        d,
        FnDev,
        "cuDevicePrimaryCtxRelease",
        7000,
        0,
        "cuDevicePrimaryCtxRelease"
    );
    if call!(d, f, dev) == 0 {
        book.ctx_destroyed(ctx);
    }
    let f = sym!(
        d,
        FnDev,
        "cuDevicePrimaryCtxRelease",
        V,
        0,
        "cuDevicePrimaryCtxRelease_v2"
    );
    call!(d, f, dev);

    let mut extra = Extra::new();
    extra.insert(
        "driver".into(),
        json!({"init_ret": init_ret, "version": driver_version, "devices": count}),
    );
    extra.insert(
        "cuda_version".into(),
        json!({"asked": V, "cuCtxCreate": ctx_create_at_version}),
    );
    extra.insert(
        "ctx_create".into(),
        json!({"apis": ctx_creates, "device": dev, "flags": CTX_FLAGS}),
    );
    Ok(extra)
}
