//! CUDA graph memory nodes: the entry points, resolved as a CUDA 12.4 runtime does, and the
//! `graphs` scenario with its ground truth, the driver's own graph-memory figures included.

use std::ffi::{c_char, c_int, c_uint, c_void};

use serde_json::{Value, json};

use crate::book::GraphAttr;
use crate::book::Label::{Dynamic, KvCache};
use crate::call;
use crate::driver::{Driver, FnDev, FnHandle, MemLocation, P, PER_THREAD, Sym};
use crate::rt::{MIB, Ptsz, Rt};
use crate::scenarios::Extra;

/// `CUmemPoolProps` (88 bytes): pinned memory on a device, no handle types.
#[repr(C)]
pub struct PoolPropsFull {
    alloc_type: u32,
    handle_types: u32,
    location: MemLocation,
    win32: P,
    max_size: usize,
    usage: u16,
    reserved: [u8; 54],
}

/// `CUDA_MEM_ALLOC_NODE_PARAMS`.
#[repr(C)]
pub struct AllocNodeParams {
    pool_props: PoolPropsFull,
    access_descs: *const c_void,
    access_desc_count: usize,
    bytesize: usize,
    dptr: u64,
}
const _: () = assert!(std::mem::size_of::<AllocNodeParams>() == 120);

pub type FnGraphCreate = unsafe extern "C" fn(*mut P, c_uint) -> u32;
pub type FnAddAllocNode =
    unsafe extern "C" fn(*mut P, P, *const P, usize, *mut AllocNodeParams) -> u32;
pub type FnAddFreeNode = unsafe extern "C" fn(*mut P, P, *const P, usize, u64) -> u32;
pub type FnInstantiate = unsafe extern "C" fn(*mut P, P, *mut P, *mut c_char, usize) -> u32;
pub type FnInstantiateFlags = unsafe extern "C" fn(*mut P, P, u64) -> u32;
pub type FnInstantiateParams = unsafe extern "C" fn(*mut P, P, *mut InstantiateParams) -> u32;

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`: `flags`, `hUploadStream`, `hErrNode_out`, `result_out`.
/// The driver refuses a null pointer (`CUDA_ERROR_INVALID_VALUE`).
#[repr(C)]
pub struct InstantiateParams {
    pub flags: u64,
    pub upload_stream: P,
    pub err_node_out: P,
    pub result_out: u32,
}

impl Default for InstantiateParams {
    fn default() -> Self {
        InstantiateParams {
            flags: 0,
            upload_stream: std::ptr::null_mut(),
            err_node_out: std::ptr::null_mut(),
            result_out: u32::MAX,
        }
    }
}
pub type FnLaunch = unsafe extern "C" fn(P, P) -> u32;
pub type FnGraphMemAttr = unsafe extern "C" fn(c_int, c_uint, *mut c_void) -> u32;

/// The graph entry points (CUDA 11.4 for memory nodes; `WithParams` 12.0).
#[derive(Clone, Copy)]
pub struct GraphApi {
    pub create: Sym<FnGraphCreate>,
    pub add_alloc: Sym<FnAddAllocNode>,
    pub add_free: Sym<FnAddFreeNode>,
    pub instantiate: Sym<FnInstantiate>,
    pub instantiate_flags: Sym<FnInstantiateFlags>,
    pub instantiate_params: Sym<FnInstantiateParams>,
    pub launch: Sym<FnLaunch>,
    pub launch_ptsz: Sym<FnLaunch>,
    pub exec_destroy: Sym<FnHandle>,
    pub destroy: Sym<FnHandle>,
    pub trim: Sym<FnDev>,
    pub get_attr: Sym<FnGraphMemAttr>,
    pub set_attr: Sym<FnGraphMemAttr>,
}

impl GraphApi {
    /// Resolves them at `version`, the per-thread variants with the per-thread flag.
    pub fn resolve(d: &Driver, version: c_int) -> anyhow::Result<GraphApi> {
        let v = version.max(12000);
        Ok(GraphApi {
            create: d.resolve("cuGraphCreate", v, 0, "cuGraphCreate")?,
            add_alloc: d.resolve("cuGraphAddMemAllocNode", v, 0, "cuGraphAddMemAllocNode")?,
            add_free: d.resolve("cuGraphAddMemFreeNode", v, 0, "cuGraphAddMemFreeNode")?,
            instantiate: d.resolve("cuGraphInstantiate", v, 0, "cuGraphInstantiate_v2")?,
            instantiate_flags: d.resolve(
                "cuGraphInstantiateWithFlags",
                v,
                0,
                "cuGraphInstantiateWithFlags",
            )?,
            instantiate_params: d.resolve(
                "cuGraphInstantiateWithParams",
                v,
                PER_THREAD,
                "cuGraphInstantiateWithParams_ptsz",
            )?,
            launch: d.resolve("cuGraphLaunch", v, 0, "cuGraphLaunch")?,
            launch_ptsz: d.resolve("cuGraphLaunch", v, PER_THREAD, "cuGraphLaunch_ptsz")?,
            exec_destroy: d.resolve("cuGraphExecDestroy", v, 0, "cuGraphExecDestroy")?,
            destroy: d.resolve("cuGraphDestroy", v, 0, "cuGraphDestroy")?,
            trim: d.resolve("cuDeviceGraphMemTrim", v, 0, "cuDeviceGraphMemTrim")?,
            get_attr: d.resolve(
                "cuDeviceGetGraphMemAttribute",
                v,
                0,
                "cuDeviceGetGraphMemAttribute",
            )?,
            set_attr: d.resolve(
                "cuDeviceSetGraphMemAttribute",
                v,
                0,
                "cuDeviceSetGraphMemAttribute",
            )?,
        })
    }

    /// `cuGraphCreate`: a null handle when it failed.
    pub fn create(&self, d: &Driver) -> P {
        let mut g: P = std::ptr::null_mut();
        call!(d, self.create, &mut g, 0);
        g
    }

    /// An alloc node of `bytes` on `dev` in `graph`: the address the driver fixed, if any.
    pub fn alloc_node(&self, d: &Driver, graph: P, dev: c_int, bytes: u64) -> Option<u64> {
        let mut params = AllocNodeParams {
            pool_props: PoolPropsFull {
                alloc_type: 1,
                handle_types: 0,
                location: MemLocation { kind: 1, id: dev },
                win32: std::ptr::null_mut(),
                max_size: 0,
                usage: 0,
                reserved: [0; 54],
            },
            access_descs: std::ptr::null(),
            access_desc_count: 0,
            bytesize: bytes as usize,
            dptr: 0,
        };
        let mut node: P = std::ptr::null_mut();
        let r = call!(
            d,
            self.add_alloc,
            &mut node,
            graph,
            std::ptr::null(),
            0,
            &mut params
        );
        (r == 0).then_some(params.dptr)
    }

    pub fn free_node(&self, d: &Driver, graph: P, addr: u64) -> u32 {
        let mut node: P = std::ptr::null_mut();
        call!(
            d,
            self.add_free,
            &mut node,
            graph,
            std::ptr::null(),
            0,
            addr
        )
    }

    /// `cuDeviceGetGraphMemAttribute`: the driver's figure, if it answered.
    pub fn get(&self, d: &Driver, dev: c_int, attr: GraphAttr) -> Option<u64> {
        let mut v = 0u64;
        let r = call!(
            d,
            self.get_attr,
            dev,
            attr as c_uint,
            (&mut v as *mut u64).cast()
        );
        (r == 0).then_some(v)
    }
}

const A: u64 = 8 * MIB;
const B: u64 = 4 * MIB;
const C: u64 = 6 * MIB;

/// Three graphs on the runtime's device: graph 1 allocates A (8 MiB, freed by graph 2) and B
/// (4 MiB, freed in graph 1 itself); graph 3 allocates C (6 MiB), freed by cuMemFreeAsync.
/// Launches (one refused while A is live), the driver's figures read along the way, a trim,
/// a high-water mark reset; at exit C is live again and the pool holds 2 MiB more.
pub fn graphs(rt: &Rt) -> anyhow::Result<Extra> {
    let api = GraphApi::resolve(&rt.d, 12040)?;
    let pt = Ptsz::load(&rt.d)?;
    let d = &rt.d;
    let dev = rt.device;
    let (g1, g2, g3) = (api.create(d), api.create(d), api.create(d));
    if g1.is_null() || g2.is_null() || g3.is_null() {
        anyhow::bail!("graphs: cuGraphCreate failed");
    }
    let (Some(a), Some(b), Some(c)) = (
        api.alloc_node(d, g1, dev, A),
        api.alloc_node(d, g1, dev, B),
        api.alloc_node(d, g3, dev, C),
    ) else {
        anyhow::bail!("graphs: cuGraphAddMemAllocNode failed");
    };
    api.free_node(d, g1, b);
    api.free_node(d, g2, a);
    let mut e1: P = std::ptr::null_mut();
    let mut e2: P = std::ptr::null_mut();
    let mut e3: P = std::ptr::null_mut();
    call!(d, api.instantiate_flags, &mut e1, g1, 0);
    call!(
        d,
        api.instantiate,
        &mut e2,
        g2,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        0
    );
    let mut params = InstantiateParams::default();
    call!(d, api.instantiate_params, &mut e3, g3, &mut params);

    let mut readings: Vec<Value> = Vec::new();
    let mut read = |attr: GraphAttr| {
        let driver = api.get(d, dev, attr);
        let expected = rt.book().graph_attr(attr);
        readings.push(json!({"attr": attr as u32, "driver": driver, "expected": expected}));
    };
    let launch = |f: Sym<FnLaunch>, exec: P| call!(d, f, exec, std::ptr::null_mut()) == 0;

    // Graph 1: A live, B made and freed: 12 MiB reserved.
    if launch(api.launch, e1) {
        let mut book = rt.book();
        book.graph_alloc(a, A, KvCache);
        book.graph_alloc(b, B, Dynamic);
        book.graph_free(b);
    }
    // Refused: A is still live.
    let refused = !launch(api.launch, e1);
    read(GraphAttr::UsedCurrent);
    read(GraphAttr::ReservedCurrent);
    // Graph 2 frees A: nothing in use, 12 MiB reserved.
    if launch(api.launch_ptsz, e2) {
        rt.book().graph_free(a);
    }
    read(GraphAttr::UsedCurrent);
    read(GraphAttr::ReservedCurrent);
    // Graph 1 again, from what the pool holds; then graph 3 grows it to 14 MiB.
    for (exec, nodes) in [(e1, vec![(a, A), (b, B)]), (e3, vec![(c, C)])] {
        if launch(api.launch, exec) {
            let mut book = rt.book();
            for (addr, bytes) in nodes {
                book.graph_alloc(addr, bytes, Dynamic);
            }
            book.graph_free(b);
        }
    }
    read(GraphAttr::UsedCurrent);
    read(GraphAttr::UsedHigh);
    read(GraphAttr::ReservedHigh);
    // C freed outside any graph, then the pool trimmed to what A uses.
    rt.book().graph_free(c);
    call!(d, pt.free_async, c, std::ptr::null_mut());
    if call!(d, api.trim, dev) == 0 {
        rt.book().graph_trim();
    }
    read(GraphAttr::ReservedCurrent);
    let mut zero = 0u64;
    if call!(
        d,
        api.set_attr,
        dev,
        GraphAttr::ReservedHigh as c_uint,
        (&mut zero as *mut u64).cast()
    ) == 0
    {
        rt.book().graph_reset_high(GraphAttr::ReservedHigh);
    }
    read(GraphAttr::ReservedHigh);
    // Graph 2 frees A; graph 3 makes C live again: 6 MiB in use, 2 MiB held at exit.
    for (exec, alloc) in [(e2, None), (e3, Some(c))] {
        if launch(api.launch_ptsz, exec) {
            let mut book = rt.book();
            match alloc {
                Some(c) => book.graph_alloc(c, C, Dynamic),
                None => book.graph_free(a),
            }
        }
    }
    read(GraphAttr::UsedCurrent);
    read(GraphAttr::ReservedCurrent);
    for e in [e1, e2, e3] {
        call!(d, api.exec_destroy, e);
    }
    for g in [g1, g2, g3] {
        call!(d, api.destroy, g);
    }
    let mut extra = Extra::new();
    extra.insert(
        "graphs".into(),
        json!({
            "device": dev,
            "relaunch_refused": refused,
            "readings": readings,
        }),
    );
    Ok(extra)
}
