//! The workload's own record of what it holds: the ground truth printed at
//! exit. Pool-held bytes mirror the driver's documented pool model (best-fit
//! reuse with the remainder staying held; a trim, and every synchronization
//! down to the release threshold, keep that many reserved bytes, in use plus
//! held, giving back the largest blocks first).

use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Label {
    Weights,
    KvCache,
    Dynamic,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Key {
    /// A `cuMemAlloc*` / `cuMemAllocPitch*` / stream-ordered allocation.
    Ptr(u64),
    /// A CUDA array or mipmapped array handle.
    Array(u64),
}

struct DevRec {
    bytes: u64,
    label: Label,
    ctx: u64,
    pool: Option<u64>,
}

struct PhysRec {
    bytes: u64,
    /// `None` for host-located physical memory.
    label: Option<Label>,
    released: bool,
    maps: u32,
    /// Bindings to multicast objects: each keeps the memory.
    binds: u32,
}

/// A multicast object: no memory of its own; its bindings keep their handles' memory.
#[derive(Default)]
struct MulticastRec {
    released: bool,
    maps: u32,
    /// (device, offset) → the bound handle.
    bound: BTreeMap<(i32, u64), u64>,
}

#[derive(Default)]
struct PoolRec {
    held: Vec<u64>,
    destroyed: bool,
    /// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD` (0 by default).
    threshold: u64,
}

#[derive(Default)]
pub struct Book {
    dev: HashMap<Key, DevRec>,
    phys: HashMap<u64, PhysRec>,
    mappings: BTreeMap<u64, (u64, u64)>,
    pools: HashMap<u64, PoolRec>,
    /// Host memory: its bytes and the context that owns it (`None`: from a pool, which no
    /// context owns).
    host: HashMap<u64, (u64, Option<u64>)>,
    live: u64,
    peak: u64,
    /// CUDA graph memory (one device): live graph allocations and the graph pool.
    graph: GraphBook,
    multicast: HashMap<u64, MulticastRec>,
    /// Sparse arrays: the handles mapped into each, by region.
    sparse: HashMap<u64, BTreeMap<[u64; 6], u64>>,
}

/// The device's graph memory pool as the driver documents it: what it reserves grows to what
/// graph allocations use, a free leaves it reserved, a trim gives back what is not in use.
#[derive(Default)]
struct GraphBook {
    live: HashMap<u64, (u64, Label)>,
    used: u64,
    reserved: u64,
    used_high: u64,
    reserved_high: u64,
}

/// `CUgraphMem_attribute`: used and reserved bytes, current and high.
#[derive(Clone, Copy, Debug)]
pub enum GraphAttr {
    UsedCurrent = 0,
    UsedHigh = 1,
    ReservedCurrent = 2,
    ReservedHigh = 3,
}

pub struct Summary {
    pub device_bytes: u64,
    pub pool_held: u64,
    pub host_bytes: u64,
    pub peak: u64,
    pub weights: u64,
    pub kv_cache: u64,
    pub dynamic: u64,
}

impl Book {
    fn grow(&mut self, bytes: u64) {
        self.live += bytes;
        self.peak = self.peak.max(self.live);
    }

    fn shrink(&mut self, bytes: u64) {
        self.live = self.live.saturating_sub(bytes);
    }

    pub fn add(&mut self, key: Key, bytes: u64, label: Label, ctx: u64) {
        self.dev.insert(
            key,
            DevRec {
                bytes,
                label,
                ctx,
                pool: None,
            },
        );
        self.grow(bytes);
    }

    /// A freed allocation: its bytes leave the live set (into its pool if it
    /// came from one that still exists).
    pub fn remove(&mut self, key: Key) {
        let Some(rec) = self.dev.remove(&key) else {
            return;
        };
        self.shrink(rec.bytes);
        if let Some(pool) = rec.pool {
            let p = self.pools.entry(pool).or_default();
            if !p.destroyed {
                p.held.push(rec.bytes);
            }
        }
    }

    pub fn pool_alloc(&mut self, pool: u64, ptr: u64, bytes: u64, label: Label, ctx: u64) {
        let p = self.pools.entry(pool).or_default();
        let best = p
            .held
            .iter()
            .enumerate()
            .filter(|(_, s)| **s >= bytes)
            .min_by_key(|(i, s)| (**s, *i))
            .map(|(i, _)| i);
        if let Some(i) = best {
            let block = p.held.remove(i);
            if block > bytes {
                p.held.push(block - bytes);
            }
        }
        self.dev.insert(
            Key::Ptr(ptr),
            DevRec {
                bytes,
                label,
                ctx,
                pool: Some(pool),
            },
        );
        self.grow(bytes);
    }

    /// Bytes of the pool's live allocations.
    fn pool_used(&self, pool: u64) -> u64 {
        self.dev
            .values()
            .filter(|r| r.pool == Some(pool))
            .map(|r| r.bytes)
            .sum()
    }

    /// `cuMemPoolTrimTo`: the pool keeps `keep` reserved bytes (in use plus held).
    pub fn pool_trim(&mut self, pool: u64, keep: u64) {
        let keep = keep.saturating_sub(self.pool_used(pool));
        let p = self.pools.entry(pool).or_default();
        let held: u64 = p.held.iter().sum();
        if held <= keep {
            return;
        }
        let mut excess = held - keep;
        while excess > 0 {
            let Some(i) = p
                .held
                .iter()
                .enumerate()
                .max_by_key(|(i, s)| (**s, std::cmp::Reverse(*i)))
                .map(|(i, _)| i)
            else {
                break;
            };
            if p.held[i] <= excess {
                excess -= p.held.remove(i);
            } else {
                p.held[i] -= excess;
                excess = 0;
            }
        }
    }

    /// A launch ran an alloc node: `addr` is live, out of the graph pool.
    pub fn graph_alloc(&mut self, addr: u64, bytes: u64, label: Label) {
        let g = &mut self.graph;
        g.live.insert(addr, (bytes, label));
        g.used += bytes;
        g.reserved = g.reserved.max(g.used);
        g.used_high = g.used_high.max(g.used);
        g.reserved_high = g.reserved_high.max(g.reserved);
        self.grow(bytes);
    }

    /// A free node (or `cuMemFree*` / `cuMemFreeAsync*`) ended graph allocation `addr`: it
    /// stays reserved by the graph pool.
    pub fn graph_free(&mut self, addr: u64) {
        if let Some((bytes, _)) = self.graph.live.remove(&addr) {
            self.graph.used -= bytes;
            self.shrink(bytes);
        }
    }

    /// `cuDeviceGraphMemTrim`.
    pub fn graph_trim(&mut self) {
        self.graph.reserved = self.graph.used;
    }

    /// `cuDeviceSetGraphMemAttribute` of a high-water mark to 0: it restarts from now.
    pub fn graph_reset_high(&mut self, attr: GraphAttr) {
        let g = &mut self.graph;
        match attr {
            GraphAttr::UsedHigh => g.used_high = g.used,
            GraphAttr::ReservedHigh => g.reserved_high = g.reserved,
            GraphAttr::UsedCurrent | GraphAttr::ReservedCurrent => {}
        }
    }

    /// What `cuDeviceGetGraphMemAttribute` should answer.
    pub fn graph_attr(&self, attr: GraphAttr) -> u64 {
        let g = &self.graph;
        match attr {
            GraphAttr::UsedCurrent => g.used,
            GraphAttr::UsedHigh => g.used_high,
            GraphAttr::ReservedCurrent => g.reserved,
            GraphAttr::ReservedHigh => g.reserved_high,
        }
    }

    pub fn pool_threshold(&mut self, pool: u64, threshold: u64) {
        self.pools.entry(pool).or_default().threshold = threshold;
    }

    /// A stream, event or context synchronization: every pool gives back what it holds
    /// above its release threshold.
    pub fn sync(&mut self) {
        let due: Vec<(u64, u64)> = self
            .pools
            .iter()
            .filter(|(_, p)| !p.destroyed)
            .map(|(id, p)| (*id, p.threshold))
            .collect();
        for (pool, threshold) in due {
            self.pool_trim(pool, threshold);
        }
    }

    pub fn pool_destroy(&mut self, pool: u64) {
        let p = self.pools.entry(pool).or_default();
        p.held.clear();
        p.destroyed = true;
    }

    /// What the driver API reference of `cuCtxDestroy` says goes with a context: every
    /// `cuMemAlloc*` allocation, array, pinned and managed host allocation made in `ctx`
    /// (registered host memory too, on which it is silent). Stream-ordered memory belongs to
    /// its pool's device, not to a context, and stays, as VMM memory does.
    pub fn ctx_destroyed(&mut self, ctx: u64) {
        let dead: Vec<Key> = self
            .dev
            .iter()
            .filter(|(_, r)| r.ctx == ctx && r.pool.is_none())
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            self.remove(k);
        }
        self.host.retain(|_, (_, owner)| *owner != Some(ctx));
    }

    /// Physical VMM memory; `label` is `None` for host-located memory.
    pub fn phys_create(&mut self, handle: u64, bytes: u64, label: Option<Label>) {
        self.phys.insert(
            handle,
            PhysRec {
                bytes,
                label,
                released: false,
                maps: 0,
                binds: 0,
            },
        );
        if label.is_some() {
            self.grow(bytes);
        }
    }

    fn phys_gone_if_done(&mut self, handle: u64) {
        if let Some(p) = self.phys.get(&handle)
            && p.released
            && p.maps == 0
            && p.binds == 0
        {
            let (bytes, device) = (p.bytes, p.label.is_some());
            self.phys.remove(&handle);
            if device {
                self.shrink(bytes);
            }
        }
    }

    pub fn phys_release(&mut self, handle: u64) {
        if let Some(p) = self.phys.get_mut(&handle) {
            p.released = true;
        } else if let Some(m) = self.multicast.get_mut(&handle) {
            m.released = true;
            self.multicast_gone_if_done(handle);
        }
        self.phys_gone_if_done(handle);
    }

    pub fn map(&mut self, va: u64, size: u64, handle: u64) {
        self.mappings.insert(va, (size, handle));
        if let Some(p) = self.phys.get_mut(&handle) {
            p.maps += 1;
        } else if let Some(m) = self.multicast.get_mut(&handle) {
            m.maps += 1;
        }
    }

    /// A sparse (or deferred-mapping) array made: no memory of its own.
    pub fn sparse_array(&mut self, array: u64) {
        self.sparse.insert(array, BTreeMap::new());
    }

    /// `handle`'s memory mapped into `region` (start and extent) of sparse array `array`.
    pub fn array_map(&mut self, array: u64, region: [u64; 6], handle: u64) {
        if let Some(a) = self.sparse.get_mut(&array) {
            a.insert(region, handle);
            if let Some(p) = self.phys.get_mut(&handle) {
                p.binds += 1;
            }
        }
    }

    /// What is mapped at `region` of `array` unmapped (exactly that region).
    pub fn array_unmap(&mut self, array: u64, region: [u64; 6]) {
        if let Some(h) = self.sparse.get_mut(&array).and_then(|a| a.remove(&region)) {
            self.unbind(h);
        }
    }

    /// A sparse array destroyed: what was mapped into it is let go.
    pub fn sparse_array_destroy(&mut self, array: u64) {
        for h in self
            .sparse
            .remove(&array)
            .into_iter()
            .flat_map(|a| a.into_values())
        {
            self.unbind(h);
        }
    }

    /// A multicast object made (no memory of its own).
    pub fn multicast_create(&mut self, mc: u64) {
        self.multicast.insert(mc, MulticastRec::default());
    }

    /// `handle`'s memory bound at `offset` of `mc` for `device`.
    pub fn multicast_bind(&mut self, mc: u64, device: i32, offset: u64, handle: u64) {
        if let Some(m) = self.multicast.get_mut(&mc) {
            m.bound.insert((device, offset), handle);
            if let Some(p) = self.phys.get_mut(&handle) {
                p.binds += 1;
            }
        }
    }

    pub fn multicast_unbind(&mut self, mc: u64, device: i32, offset: u64) {
        if let Some(h) = self
            .multicast
            .get_mut(&mc)
            .and_then(|m| m.bound.remove(&(device, offset)))
        {
            self.unbind(h);
        }
    }

    fn unbind(&mut self, handle: u64) {
        if let Some(p) = self.phys.get_mut(&handle) {
            p.binds = p.binds.saturating_sub(1);
        }
        self.phys_gone_if_done(handle);
    }

    /// A released multicast object that is not mapped goes, and its bindings with it.
    fn multicast_gone_if_done(&mut self, mc: u64) {
        if self
            .multicast
            .get(&mc)
            .is_some_and(|m| m.released && m.maps == 0)
            && let Some(m) = self.multicast.remove(&mc)
        {
            for h in m.bound.into_values() {
                self.unbind(h);
            }
        }
    }

    pub fn unmap(&mut self, va: u64, size: u64) {
        let inside: Vec<u64> = self
            .mappings
            .range(va..va.saturating_add(size))
            .map(|(k, _)| *k)
            .collect();
        for k in inside {
            if let Some((_, handle)) = self.mappings.remove(&k) {
                if let Some(p) = self.phys.get_mut(&handle) {
                    p.maps = p.maps.saturating_sub(1);
                } else if let Some(m) = self.multicast.get_mut(&handle) {
                    m.maps = m.maps.saturating_sub(1);
                    self.multicast_gone_if_done(handle);
                }
                self.phys_gone_if_done(handle);
            }
        }
    }

    /// Host memory made in `ctx` (`None`: from a pool of host or managed memory).
    pub fn host_add(&mut self, ptr: u64, bytes: u64, ctx: Option<u64>) {
        self.host.insert(ptr, (bytes, ctx));
    }

    pub fn host_remove(&mut self, ptr: u64) {
        self.host.remove(&ptr);
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            device_bytes: 0,
            pool_held: self
                .pools
                .values()
                .filter(|p| !p.destroyed)
                .flat_map(|p| p.held.iter())
                .sum::<u64>()
                + (self.graph.reserved - self.graph.used),
            host_bytes: self.host.values().map(|(b, _)| b).sum(),
            peak: self.peak,
            weights: 0,
            kv_cache: 0,
            dynamic: 0,
        };
        let mut count = |bytes: u64, label: Label| {
            s.device_bytes += bytes;
            match label {
                Label::Weights => s.weights += bytes,
                Label::KvCache => s.kv_cache += bytes,
                Label::Dynamic => s.dynamic += bytes,
            }
        };
        for r in self.dev.values() {
            count(r.bytes, r.label);
        }
        for &(bytes, label) in self.graph.live.values() {
            count(bytes, label);
        }
        let mut host_phys = 0;
        for p in self.phys.values() {
            match p.label {
                Some(l) => count(p.bytes, l),
                None => host_phys += p.bytes,
            }
        }
        s.host_bytes += host_phys;
        s
    }
}
