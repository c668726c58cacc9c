//! CUDA graphs with memory nodes: graphs, their alloc and free nodes, execs, launches that run
//! the nodes, and each device's graph memory pool.
//!
//! The model (CUDA Programming Guide, "Graph Memory Nodes"; driver API reference of
//! `cuGraphAddMemAllocNode`, `cuDeviceGraphMemTrim`, `cuDeviceGetGraphMemAttribute`):
//!
//! - `cuGraphAddMemAllocNode` fixes the node's virtual address (written to
//!   `nodeParams->dptr`) from the device's address range, charging nothing;
//! - a launch runs the exec's alloc nodes, then its free nodes. An alloc node's address
//!   must not be live (`CUDA_ERROR_INVALID_VALUE` otherwise), a free node's must be; the
//!   launch checks every node before it changes anything. Physical memory comes from the
//!   device's graph pool: what the pool reserves grows to what is in use, charged to the
//!   device (`CUDA_ERROR_OUT_OF_MEMORY` past its capacity);
//! - a free node, `cuMemFree*` or `cuMemFreeAsync*` of the address gives it back to the
//!   pool, which keeps it reserved until `cuDeviceGraphMemTrim` (down to what is in use);
//! - a context's destruction leaves graph memory alone: the pool is the device's.
//! - `cuDeviceGetGraphMemAttribute` answers used and reserved bytes, current and high;
//!   `cuDeviceSetGraphMemAttribute` resets a high-water mark (value 0 only) to the current
//!   figure.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_uint, c_void};

use super::{
    CUdevice, CUdeviceptr, CUresult, Handle, INVALID_VALUE, MEM_ALLOCATION_TYPE_PINNED,
    MEM_LOCATION_DEVICE, MemPoolProps, State, code, nonnull, put, round_up, with,
};
use super::{GRANULE, OUT_OF_MEMORY};

/// `CUDA_MEM_ALLOC_NODE_PARAMS` (`_v1`, also `_v2`).
#[repr(C)]
pub struct MemAllocNodeParams {
    pool_props: MemPoolProps,
    /// `win32SecurityAttributes`, `maxSize`, `usage` and the reserved bytes: 88 bytes in all
    /// with the fields above.
    _pool_props_rest: [u8; 72],
    access_descs: *const c_void,
    access_desc_count: usize,
    bytesize: usize,
    dptr: CUdeviceptr,
}
const _: () = assert!(std::mem::size_of::<MemAllocNodeParams>() == 120);

/// `CUgraphMem_attribute`.
const USED_MEM_CURRENT: c_uint = 0;
const USED_MEM_HIGH: c_uint = 1;
const RESERVED_MEM_CURRENT: c_uint = 2;
const RESERVED_MEM_HIGH: c_uint = 3;

#[derive(Clone, Copy)]
enum Node {
    Alloc(u64),
    Free(u64),
}

/// A graph allocation's address: its device, size, and whether a launch made it live.
struct Va {
    dev: usize,
    size: u64,
    live: bool,
}

/// A device's graph memory pool.
#[derive(Clone, Copy, Default)]
struct Pool {
    used: u64,
    reserved: u64,
    used_high: u64,
    reserved_high: u64,
}

#[derive(Default)]
pub(super) struct Graphs {
    graphs: HashMap<u64, Vec<Node>>,
    execs: HashMap<u64, Vec<Node>>,
    vas: BTreeMap<u64, Va>,
    pools: HashMap<usize, Pool>,
}

impl State {
    /// `cuMemFree*` / `cuMemFreeAsync*` of a live graph allocation: back to its pool.
    pub(super) fn graph_free(&mut self, ptr: u64) -> bool {
        let Some(va) = self.graphs.vas.get_mut(&ptr).filter(|v| v.live) else {
            return false;
        };
        va.live = false;
        let pool = self.graphs.pools.entry(va.dev).or_default();
        pool.used -= va.size;
        true
    }

    fn graph_launch(&mut self, exec: u64) -> Result<(), CUresult> {
        let nodes = self.graphs.execs.get(&exec).ok_or(INVALID_VALUE)?.clone();
        // Check every node, and what the pools must grow by, before changing anything.
        let mut live: HashMap<u64, bool> = HashMap::new();
        let mut used: HashMap<usize, u64> = HashMap::new();
        let mut peak: HashMap<usize, u64> = HashMap::new();
        for node in nodes.iter() {
            let Node::Alloc(addr) = *node else { continue };
            let va = self.graphs.vas.get(&addr).ok_or(INVALID_VALUE)?;
            if *live.get(&addr).unwrap_or(&va.live) {
                return Err(INVALID_VALUE);
            }
            live.insert(addr, true);
            let pool = self.graphs.pools.get(&va.dev).copied().unwrap_or_default();
            let u = used.entry(va.dev).or_insert(pool.used);
            *u += va.size;
            let p = peak.entry(va.dev).or_insert(pool.reserved);
            *p = (*p).max(*u);
        }
        for node in nodes.iter() {
            let Node::Free(addr) = *node else { continue };
            let va = self.graphs.vas.get(&addr).ok_or(INVALID_VALUE)?;
            if !*live.get(&addr).unwrap_or(&va.live) {
                return Err(INVALID_VALUE);
            }
            live.insert(addr, false);
        }
        for (&dev, &reserve) in &peak {
            let grow = reserve - self.graphs.pools.get(&dev).map_or(0, |p| p.reserved);
            let d = &self.devices[dev];
            if d.used + grow > d.capacity {
                return Err(OUT_OF_MEMORY);
            }
        }
        for (&dev, &reserve) in &peak {
            let pool = self.graphs.pools.entry(dev).or_default();
            let grow = reserve - pool.reserved;
            pool.reserved = reserve;
            pool.reserved_high = pool.reserved_high.max(reserve);
            pool.used_high = pool.used_high.max(used[&dev]);
            self.charge(dev, grow)?;
        }
        for node in nodes.iter() {
            if let Node::Alloc(addr) = *node
                && let Some(va) = self.graphs.vas.get_mut(&addr)
            {
                va.live = true;
                self.graphs.pools.entry(va.dev).or_default().used += va.size;
            }
        }
        for node in nodes.iter() {
            if let Node::Free(addr) = *node {
                self.graph_free(addr);
            }
        }
        Ok(())
    }
}

pub extern "C" fn cuGraphCreate(graph: *mut Handle, flags: c_uint) -> CUresult {
    code(with(|st| {
        nonnull(graph)?;
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        let h = st.handle();
        st.graphs.graphs.insert(h, Vec::new());
        put(graph, h as Handle);
        Ok(())
    }))
}

pub extern "C" fn cuGraphAddMemAllocNode(
    node: *mut Handle,
    graph: Handle,
    _deps: *const Handle,
    _ndeps: usize,
    params: *mut MemAllocNodeParams,
) -> CUresult {
    code(with(|st| {
        nonnull(node)?;
        nonnull(params)?;
        // SAFETY: checked non-null; the caller passes a valid CUDA_MEM_ALLOC_NODE_PARAMS.
        let p = unsafe { &mut *params };
        let props = &p.pool_props;
        if !st.graphs.graphs.contains_key(&(graph as u64))
            || p.bytesize == 0
            || props.alloc_type != MEM_ALLOCATION_TYPE_PINNED
            || props.handle_types != 0
            || props.location.kind != MEM_LOCATION_DEVICE
        {
            return Err(INVALID_VALUE);
        }
        let dev = st.device(props.location.id)?;
        let size = p.bytesize as u64;
        let span = round_up(size, GRANULE);
        let d = &mut st.devices[dev];
        if d.next + span > d.end {
            return Err(OUT_OF_MEMORY);
        }
        let addr = d.next;
        d.next += span;
        st.graphs.vas.insert(
            addr,
            Va {
                dev,
                size,
                live: false,
            },
        );
        if let Some(nodes) = st.graphs.graphs.get_mut(&(graph as u64)) {
            nodes.push(Node::Alloc(addr));
        }
        p.dptr = addr;
        let h = st.handle();
        put(node, h as Handle);
        Ok(())
    }))
}

pub extern "C" fn cuGraphAddMemFreeNode(
    node: *mut Handle,
    graph: Handle,
    _deps: *const Handle,
    _ndeps: usize,
    dptr: CUdeviceptr,
) -> CUresult {
    code(with(|st| {
        nonnull(node)?;
        if !st.graphs.vas.contains_key(&dptr) {
            return Err(INVALID_VALUE);
        }
        let nodes = st
            .graphs
            .graphs
            .get_mut(&(graph as u64))
            .ok_or(INVALID_VALUE)?;
        nodes.push(Node::Free(dptr));
        let h = st.handle();
        put(node, h as Handle);
        Ok(())
    }))
}

fn instantiate(exec: *mut Handle, graph: Handle) -> CUresult {
    code(with(|st| {
        nonnull(exec)?;
        let nodes = st
            .graphs
            .graphs
            .get(&(graph as u64))
            .ok_or(INVALID_VALUE)?
            .clone();
        let h = st.handle();
        st.graphs.execs.insert(h, nodes);
        put(exec, h as Handle);
        Ok(())
    }))
}

/// `cuGraphInstantiate` (CUDA 10) and `_v2` (CUDA 11): with an error node and a log buffer.
pub extern "C" fn cuGraphInstantiate(
    exec: *mut Handle,
    graph: Handle,
    _error_node: *mut Handle,
    _log: *mut c_char,
    _log_size: usize,
) -> CUresult {
    instantiate(exec, graph)
}

pub extern "C" fn cuGraphInstantiate_v2(
    exec: *mut Handle,
    graph: Handle,
    _error_node: *mut Handle,
    _log: *mut c_char,
    _log_size: usize,
) -> CUresult {
    instantiate(exec, graph)
}

pub extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut Handle,
    graph: Handle,
    _flags: u64,
) -> CUresult {
    instantiate(exec, graph)
}

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`: `flags`, `hUploadStream`, `hErrNode_out`, `result_out`.
#[repr(C)]
pub struct InstantiateParams {
    flags: u64,
    upload_stream: Handle,
    err_node_out: Handle,
    result_out: u32,
}

/// `cuGraphInstantiateWithParams*`: the parameters are required (driver 580 refuses a null
/// pointer with `CUDA_ERROR_INVALID_VALUE`); `result_out` says
/// `CUDA_GRAPH_INSTANTIATE_SUCCESS` (0) when the exec is made.
fn instantiate_with_params(
    exec: *mut Handle,
    graph: Handle,
    params: *mut InstantiateParams,
) -> CUresult {
    if params.is_null() {
        return INVALID_VALUE;
    }
    let ret = instantiate(exec, graph);
    if ret == 0 {
        // SAFETY: checked non-null; the caller passes a `CUDA_GRAPH_INSTANTIATE_PARAMS`.
        unsafe { (*params).result_out = 0 };
    }
    ret
}

pub extern "C" fn cuGraphInstantiateWithParams(
    exec: *mut Handle,
    graph: Handle,
    params: *mut InstantiateParams,
) -> CUresult {
    instantiate_with_params(exec, graph, params)
}

pub extern "C" fn cuGraphInstantiateWithParams_ptsz(
    exec: *mut Handle,
    graph: Handle,
    params: *mut InstantiateParams,
) -> CUresult {
    instantiate_with_params(exec, graph, params)
}

pub extern "C" fn cuGraphLaunch(exec: Handle, _stream: Handle) -> CUresult {
    code(with(|st| st.graph_launch(exec as u64)))
}

pub extern "C" fn cuGraphLaunch_ptsz(exec: Handle, _stream: Handle) -> CUresult {
    code(with(|st| st.graph_launch(exec as u64)))
}

/// Drops handle `h` from `map`: `CUDA_ERROR_INVALID_VALUE` when it is not there.
fn forget(map: &mut HashMap<u64, Vec<Node>>, h: Handle) -> Result<(), CUresult> {
    map.remove(&(h as u64)).map(|_| ()).ok_or(INVALID_VALUE)
}

pub extern "C" fn cuGraphExecDestroy(exec: Handle) -> CUresult {
    code(with(|st| forget(&mut st.graphs.execs, exec)))
}

pub extern "C" fn cuGraphDestroy(graph: Handle) -> CUresult {
    code(with(|st| forget(&mut st.graphs.graphs, graph)))
}

pub extern "C" fn cuDeviceGraphMemTrim(dev: CUdevice) -> CUresult {
    code(with(|st| {
        let dev = st.device(dev)?;
        let pool = st.graphs.pools.entry(dev).or_default();
        let released = pool.reserved - pool.used;
        pool.reserved = pool.used;
        st.uncharge(dev, released);
        Ok(())
    }))
}

pub extern "C" fn cuDeviceGetGraphMemAttribute(
    dev: CUdevice,
    attr: c_uint,
    value: *mut c_void,
) -> CUresult {
    code(with(|st| {
        nonnull(value)?;
        let dev = st.device(dev)?;
        let pool = st.graphs.pools.get(&dev).copied().unwrap_or_default();
        let v = match attr {
            USED_MEM_CURRENT => pool.used,
            USED_MEM_HIGH => pool.used_high,
            RESERVED_MEM_CURRENT => pool.reserved,
            RESERVED_MEM_HIGH => pool.reserved_high,
            _ => return Err(INVALID_VALUE),
        };
        put(value.cast::<u64>(), v);
        Ok(())
    }))
}

pub extern "C" fn cuDeviceSetGraphMemAttribute(
    dev: CUdevice,
    attr: c_uint,
    value: *mut c_void,
) -> CUresult {
    code(with(|st| {
        nonnull(value)?;
        let dev = st.device(dev)?;
        // SAFETY: checked non-null; the attribute's value is a cuuint64_t.
        if unsafe { value.cast::<u64>().read() } != 0 {
            return Err(INVALID_VALUE);
        }
        let pool = st.graphs.pools.entry(dev).or_default();
        match attr {
            USED_MEM_HIGH => pool.used_high = pool.used,
            RESERVED_MEM_HIGH => pool.reserved_high = pool.reserved,
            _ => return Err(INVALID_VALUE),
        }
        Ok(())
    }))
}
