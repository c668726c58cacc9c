//! CUDA graph memory nodes: the alloc and free nodes of each graph, the execs made from them,
//! and each device's graph memory pool.
//!
//! What the driver documents (CUDA Programming Guide, "Graph Memory Nodes"; driver API
//! reference of `cuGraphAddMemAllocNode`, `cuDeviceGraphMemTrim`): an alloc node's virtual
//! address is fixed when the node is added; the physical memory behind it comes from the
//! device's graph memory pool each time a launch runs the node, and goes back to that pool
//! when a free node (or `cuMemFree*` / `cuMemFreeAsync*` of the address) runs. The pool keeps
//! what it reserved across launches, until `cuDeviceGraphMemTrim` gives back what no graph
//! allocation uses, or the process ends. Physical pages are mapped behind each node's own
//! address, so the pool serves any size out of what it holds: it is a byte count, not blocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{ProcessState, describe};
use crate::api::graph_mem_attr;
use crate::ledger::change::{Change, PoolId};
use crate::ledger::usage::{Held, Totals};
use crate::trace::{Call, Mem};

/// One memory node of a graph, as it was added.
#[derive(Clone, Debug)]
pub(super) enum Node {
    /// `cuGraphAddMemAllocNode`: the call, with the address and size the driver fixed.
    Alloc(Arc<Call>),
    /// `cuGraphAddMemFreeNode`: the address it frees.
    Free(u64),
}

/// The graph memory of a process: graphs and execs by handle, pools by device.
#[derive(Clone, Debug, Default)]
pub(super) struct Graphs {
    /// Memory nodes of each graph, in the order they were added.
    graphs: HashMap<u64, Vec<Node>>,
    /// The memory nodes of each exec, as its graph had them when it was instantiated.
    execs: HashMap<u64, Arc<[Node]>>,
    /// Each device's graph memory pool.
    pub(super) pools: BTreeMap<Option<i32>, GraphPool>,
    /// The driver's own figures, last read, with the Ledger's at the same moment.
    pub(super) reported: BTreeMap<(Option<i32>, u32), GraphMemReport>,
}

/// A device's graph memory pool, as the trace knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphPool {
    /// Bytes of live graph allocations (`CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT`).
    pub used: u64,
    /// Bytes the pool holds from the GPU, in use or not (`RESERVED_MEM_CURRENT`).
    pub reserved: u64,
    /// Highest `used` since the process began or the mark was reset (`USED_MEM_HIGH`).
    pub used_high: u64,
    /// Highest `reserved` since the process began or the mark was reset
    /// (`RESERVED_MEM_HIGH`).
    pub reserved_high: u64,
}

impl GraphPool {
    /// Reserved bytes no graph allocation uses: held from the GPU, not live.
    pub fn held(&self) -> u64 {
        self.reserved - self.used
    }

    /// The Ledger's value of a `CUgraphMem_attribute`.
    pub fn attribute(&self, attr: u32) -> Option<u64> {
        match attr {
            graph_mem_attr::USED_MEM_CURRENT => Some(self.used),
            graph_mem_attr::USED_MEM_HIGH => Some(self.used_high),
            graph_mem_attr::RESERVED_MEM_CURRENT => Some(self.reserved),
            graph_mem_attr::RESERVED_MEM_HIGH => Some(self.reserved_high),
            _ => None,
        }
    }
}

/// One `cuDeviceGetGraphMemAttribute` answer beside what the Ledger had then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphMemReport {
    /// When the driver answered.
    pub ts_ns: u64,
    /// What the driver said.
    pub driver: u64,
    /// What the Ledger had booked.
    pub ledger: u64,
}

impl ProcessState {
    /// Each device's graph memory pool (`None`: device unknown); for a process that exited,
    /// as it was at its exit.
    pub fn graph_pools(&self) -> impl Iterator<Item = (Option<i32>, &GraphPool)> + '_ {
        self.graphs.pools.iter().map(|(d, p)| (*d, p))
    }

    /// The driver's graph-memory figures as last read (`cuDeviceGetGraphMemAttribute`), by
    /// device and attribute, each with the Ledger's figure at that moment.
    pub fn graph_mem_reports(
        &self,
    ) -> impl Iterator<Item = (Option<i32>, u32, &GraphMemReport)> + '_ {
        self.graphs.reported.iter().map(|((d, a), r)| (*d, *a, r))
    }

    pub(crate) fn on_graph_alloc_node(&mut self, c: &Call) {
        let (Some(graph), Some(_), Some(_)) = (c.graph, c.addr, c.bytes) else {
            self.anomaly("graph_node_incomplete", || describe(c));
            return;
        };
        let node = Node::Alloc(Arc::new(c.clone()));
        self.graphs.graphs.entry(graph).or_default().push(node);
    }

    pub(crate) fn on_graph_free_node(&mut self, c: &Call) {
        let (Some(graph), Some(addr)) = (c.graph, c.addr) else {
            self.anomaly("graph_node_incomplete", || describe(c));
            return;
        };
        let nodes = self.graphs.graphs.entry(graph).or_default();
        nodes.push(Node::Free(addr));
    }

    /// An exec runs the memory nodes its graph had when it was made; a graph with none
    /// (or one made before the recording) gives an exec that allocates nothing seen.
    pub(crate) fn on_graph_instantiate(&mut self, c: &Call) {
        let (Some(graph), Some(exec)) = (c.graph, c.handle) else {
            self.anomaly("graph_without_handle", || describe(c));
            return;
        };
        let nodes: Arc<[Node]> = self
            .graphs
            .graphs
            .get(&graph)
            .map_or_else(|| Arc::from([]), |n| n.as_slice().into());
        self.graphs.execs.insert(exec, nodes);
    }

    /// A launch runs the exec's alloc nodes, then its free nodes: a node frees only what a
    /// node before it (in this graph or an earlier launch) allocated.
    pub(crate) fn on_graph_launch(&mut self, t: &mut Totals, c: &Call) {
        let Some(exec) = c.handle else {
            self.anomaly("graph_without_handle", || describe(c));
            return;
        };
        let Some(nodes) = self.graphs.execs.get(&exec).cloned() else {
            return;
        };
        for node in nodes.iter() {
            if let Node::Alloc(def) = node {
                let alloc = Call {
                    ts_ns: c.ts_ns,
                    tid: c.tid,
                    proc: c.proc,
                    pid: c.pid,
                    ..Call::clone(def)
                };
                self.on_alloc(t, &alloc);
            }
        }
        for node in nodes.iter() {
            if let Node::Free(addr) = node {
                let free = Call {
                    addr: Some(*addr),
                    mem: Some(Mem::Graph),
                    ..c.clone()
                };
                self.on_free(t, &free);
            }
        }
    }

    pub(crate) fn on_graph_destroy(&mut self, c: &Call) {
        if let Some(graph) = c.graph {
            self.graphs.graphs.remove(&graph);
        } else if let Some(exec) = c.handle {
            self.graphs.execs.remove(&exec);
        } else {
            self.anomaly("graph_without_handle", || describe(c));
        }
    }

    /// Graph memory becomes live: out of the pool's held bytes first, the rest reserved anew.
    pub(super) fn graph_take(&mut self, t: &mut Totals, device: Option<i32>, bytes: u64) {
        let pool = self.graphs.pools.entry(device).or_default();
        let reuse = bytes.min(pool.held());
        pool.used += bytes;
        pool.reserved = pool.reserved.max(pool.used);
        pool.used_high = pool.used_high.max(pool.used);
        pool.reserved_high = pool.reserved_high.max(pool.reserved);
        if reuse > 0 {
            self.book_sub(t, device, Held::Pool, reuse);
        }
        self.graph_pool_changed(device);
    }

    /// Graph memory freed: it stays reserved by the pool, held from the GPU.
    pub(super) fn graph_give(&mut self, t: &mut Totals, device: Option<i32>, bytes: u64, ts: u64) {
        let pool = self.graphs.pools.entry(device).or_default();
        pool.used = pool.used.saturating_sub(bytes);
        self.book_add(t, device, Held::Pool, bytes, ts);
        self.graph_pool_changed(device);
    }

    /// `cuDeviceGraphMemTrim`: the pool gives back what no graph allocation uses.
    pub(crate) fn on_graph_mem_trim(&mut self, t: &mut Totals, c: &Call) {
        let device = c.device;
        let Some(pool) = self.graphs.pools.get_mut(&device) else {
            return;
        };
        let held = pool.held();
        pool.reserved = pool.used;
        if held > 0 {
            self.book_sub(t, device, Held::Pool, held);
            self.graph_pool_changed(device);
        }
    }

    /// `cuDeviceSetGraphMemAttribute` resets a high-water mark (to the current figure, as the
    /// driver does for a set to 0); `cuDeviceGetGraphMemAttribute` is the driver's figure,
    /// kept beside the Ledger's. The driver reserves graph memory in chunks (32 MiB on an
    /// H100 with driver 580) that no call shows: its `RESERVED_MEM_CURRENT`, when the process
    /// reads it, is what the pool has from then on, as for a stream-ordered pool.
    pub(crate) fn on_graph_mem_attr(&mut self, t: &mut Totals, c: &Call) {
        let (Some(attr), Some(value)) = (c.attr, c.value) else {
            self.anomaly("graph_mem_attr_without_value", || describe(c));
            return;
        };
        let pool = self.graphs.pools.entry(c.device).or_default();
        if c.api.starts_with("cuDeviceSetGraphMemAttribute") {
            match attr {
                graph_mem_attr::USED_MEM_HIGH => pool.used_high = pool.used,
                graph_mem_attr::RESERVED_MEM_HIGH => pool.reserved_high = pool.reserved,
                _ => self.anomaly("graph_mem_attr_not_settable", || describe(c)),
            }
            return;
        }
        let Some(ledger) = pool.attribute(attr) else {
            self.anomaly("graph_mem_attr_unknown", || describe(c));
            return;
        };
        let report = GraphMemReport {
            ts_ns: c.ts_ns,
            driver: value,
            ledger,
        };
        self.graphs.reported.insert((c.device, attr), report);
        if attr == graph_mem_attr::RESERVED_MEM_CURRENT {
            let device = c.device;
            let before = pool.held();
            pool.reserved = value.max(pool.used);
            pool.reserved_high = pool.reserved_high.max(pool.reserved);
            let after = pool.held();
            if after > before {
                self.book_add(t, device, Held::Pool, after - before, c.ts_ns);
            } else if after < before {
                self.book_sub(t, device, Held::Pool, before - after);
            }
            if after != before {
                self.graph_pool_changed(device);
            }
        }
    }

    fn graph_pool_changed(&mut self, device: Option<i32>) {
        let held = self.graphs.pools.get(&device).map_or(0, GraphPool::held);
        self.changes.push(Change::PoolHeld {
            proc: self.proc,
            pool: PoolId::Graph(device),
            device,
            held,
        });
    }

    /// The process ended: its pools are gone with it (their bytes come off with its
    /// devices'); their figures stay as they were at exit, for the report.
    pub(super) fn graphs_gone(&mut self) {
        self.graphs.graphs.clear();
        self.graphs.execs.clear();
        for (&device, pool) in &self.graphs.pools {
            if pool.held() > 0 {
                self.changes.push(Change::PoolHeld {
                    proc: self.proc,
                    pool: PoolId::Graph(device),
                    device,
                    held: 0,
                });
            }
        }
    }
}
