//! Stream-ordered pools: the blocks a pool holds from the GPU, and the pool records.

use std::collections::BTreeMap;

use super::{ProcessState, describe};
use crate::api::pool_attr;
use crate::ledger::change::PoolId;
use crate::ledger::usage::{Held, Totals};
use crate::trace::{Call, Mem};

/// A stream-ordered pool as the trace can know it: the freed blocks it still holds from the
/// GPU. An allocation reuses the smallest held block that fits (the rest of that block stays
/// held); one that fits in no block takes new memory from the GPU. A trim, and a
/// synchronization above the release threshold, give back the largest blocks first. This is
/// the suballocation the driver documents for pools. Held bytes follow the calls exactly
/// where the release threshold is known; where it is not (a pool of a process that was running
/// before the recording, until a `cuMemPoolSetAttribute` / `cuMemPoolGetAttribute` of it),
/// nothing is given back at synchronizations and they are an upper bound. The driver
/// reserves in chunks no call shows; a reading of the pool's reserved bytes by the process
/// sets the held bytes to the driver's figure.
#[derive(Clone, Debug, Default)]
pub(super) struct Pool {
    pub(super) device: Option<i32>,
    /// A pool of managed memory or located in host memory (`cuMemPoolCreate`'s props): what
    /// its allocations are. They are host memory, booked as such; what such a pool keeps
    /// after a free is host memory too, and not modelled (nothing of it is pool-held GPU
    /// memory).
    pub(super) host: Option<Mem>,
    /// Sum of `blocks`.
    pub(super) held: u64,
    /// Bytes of the pool's live allocations: with `held`, what the pool has reserved from
    /// the GPU, which is what the release threshold and `cuMemPoolTrimTo` speak of.
    pub(super) used: u64,
    /// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`, where known: 0 for a pool made while traced,
    /// until set.
    pub(super) threshold: Option<u64>,
    /// The held blocks as a multiset, by size: blocks of one size are alike, so which of
    /// them a take or a trim picks changes nothing, and the smallest that fits or the
    /// largest is one tree lookup, however many the pool holds.
    blocks: BTreeMap<u64, u32>,
    pub(super) destroyed: bool,
}

impl Pool {
    pub(super) fn new(device: Option<i32>, threshold: Option<u64>) -> Self {
        Pool {
            device,
            threshold,
            ..Pool::default()
        }
    }

    /// Gives back held bytes until the pool reserves no more than `reserved` (in use plus
    /// held), largest blocks first: the bytes released. Live allocations stay.
    pub(super) fn trim_reserved(&mut self, reserved: u64) -> u64 {
        self.trim(reserved.saturating_sub(self.used))
    }

    pub(super) fn give(&mut self, bytes: u64) {
        if bytes > 0 {
            self.add_block(bytes);
            self.held += bytes;
        }
    }

    fn add_block(&mut self, bytes: u64) {
        *self.blocks.entry(bytes).or_default() += 1;
    }

    fn remove_block(&mut self, bytes: u64) {
        if let Some(n) = self.blocks.get_mut(&bytes) {
            *n -= 1;
            if *n == 0 {
                self.blocks.remove(&bytes);
            }
        }
    }

    /// Serves an allocation of `bytes` from a held block, if one fits: the bytes reused.
    pub(super) fn take(&mut self, bytes: u64) -> u64 {
        let Some((&block, _)) = self.blocks.range(bytes..).next() else {
            return 0;
        };
        self.remove_block(block);
        if block > bytes {
            self.add_block(block - bytes);
        }
        self.held -= bytes;
        bytes
    }

    /// Gives back held bytes above `keep`, largest blocks first: the bytes released.
    fn trim(&mut self, keep: u64) -> u64 {
        let mut excess = self.held.saturating_sub(keep);
        let released = excess;
        while excess > 0 {
            let Some((&block, _)) = self.blocks.iter().next_back() else {
                break;
            };
            self.remove_block(block);
            if block <= excess {
                excess -= block;
            } else {
                self.add_block(block - excess);
                excess = 0;
            }
        }
        self.held -= released - excess;
        released - excess
    }

    /// Lets go of everything held: the bytes released.
    pub(super) fn clear(&mut self) -> u64 {
        self.blocks.clear();
        std::mem::take(&mut self.held)
    }

    pub(super) fn absorb(&mut self, other: Pool) {
        self.held += other.held;
        self.used += other.used;
        for (size, n) in other.blocks {
            *self.blocks.entry(size).or_default() += n;
        }
    }
}

impl ProcessState {
    /// The release threshold of a pool first seen now: the driver's default, 0, unless the
    /// process ran before the recording began and may have set it unseen.
    pub(super) fn new_pool_threshold(&self) -> Option<u64> {
        (!self.running_before).then_some(0)
    }

    fn merge_default_pool(&mut self, t: &mut Totals, device: Option<i32>, handle: u64, ts: u64) {
        self.default_pools.insert(device, handle);
        let threshold = self.new_pool_threshold();
        let Some(old) = self.pools.remove(&PoolId::Default(device)) else {
            self.pools
                .entry(PoolId::Handle(handle))
                .or_insert_with(|| Pool::new(device, threshold));
            return;
        };
        let (old_device, old_held) = (old.device, old.held);
        let pool = self
            .pools
            .entry(PoolId::Handle(handle))
            .or_insert_with(|| Pool::new(old_device, threshold));
        pool.absorb(old);
        let to = pool.device;
        if to != old_device && old_held > 0 {
            self.book_sub(t, old_device, Held::Pool, old_held);
            self.book_add(t, to, Held::Pool, old_held, ts);
        }
        if old_held > 0 {
            self.pool_changed(PoolId::Default(device));
            self.pool_changed(PoolId::Handle(handle));
        }
    }

    pub(crate) fn on_pool_create(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.pool.or(c.handle) else {
            self.anomaly("pool_without_handle", || describe(c));
            return;
        };
        let api = &*c.api;
        let threshold = self.new_pool_threshold();
        // The device's default pool: cuDeviceGetDefaultMemPool, or cuMemGetDefaultMemPool at
        // a device location for pinned memory (a pool with no `mem`).
        if api.starts_with("cuDeviceGetDefaultMemPool")
            || (api.starts_with("cuMemGetDefaultMemPool") && c.mem.is_none())
        {
            self.merge_default_pool(t, c.device, h, c.ts_ns);
            return;
        }
        // The device's current pool, which cuMemAllocAsync takes from from now on.
        if api.starts_with("cuDeviceSetMemPool")
            || (api.starts_with("cuMemSetMemPool") && c.mem.is_none())
        {
            self.current_pools.insert(c.device, h);
            self.pools
                .entry(PoolId::Handle(h))
                .or_insert_with(|| Pool::new(c.device, threshold));
            return;
        }
        // A pool made elsewhere, learned: cuDeviceGetMemPool, cuMemGetMemPool, the default or
        // current pool of host or managed memory, and a pool imported from another process
        // (cuMemPoolImportFromShareableHandle: it only maps that process's pointers, which
        // are imports, and holds nothing here). It may be known already.
        if !api.starts_with("cuMemPoolCreate") {
            let pool = self
                .pools
                .entry(PoolId::Handle(h))
                .or_insert_with(|| Pool::new(c.device, threshold));
            if pool.host.is_none() {
                pool.host = c.mem.filter(|m| m.is_host());
            }
            return;
        }
        let fresh = Pool {
            host: c.mem.filter(|m| m.is_host()),
            ..Pool::new(c.device, Some(0))
        };
        match self.pools.get(&PoolId::Handle(h)) {
            Some(p) if !p.destroyed => {
                self.anomaly("pool_create_over_live", || describe(c));
            }
            _ => {
                self.pools.insert(PoolId::Handle(h), fresh);
            }
        }
    }

    /// The pool a handle names, learning it where it is new. A handle never seen is the
    /// default pool got through an entry point that is not traced (`cuDeviceGetMemPool`
    /// before 13.0's pool calls were traced): with one default pool in use it can only be
    /// that one. `None` when it could be several (an anomaly) or names a pool with nothing
    /// in it yet, which is then learned.
    fn pool_of_handle(&mut self, t: &mut Totals, c: &Call, h: u64) -> Option<PoolId> {
        let key = PoolId::Handle(h);
        if self.pools.contains_key(&key) {
            return Some(key);
        }
        let unresolved: Vec<Option<i32>> = self
            .pools
            .iter()
            .filter_map(|(k, p)| match k {
                PoolId::Default(d) if p.held > 0 || p.used > 0 => Some(*d),
                _ => None,
            })
            .collect();
        match unresolved.as_slice() {
            [] => {
                let threshold = self.new_pool_threshold();
                self.pools.insert(key, Pool::new(c.device, threshold));
            }
            [d] => self.merge_default_pool(t, *d, h, c.ts_ns),
            _ => {
                self.anomaly("ambiguous_pool", || describe(c));
                return None;
            }
        }
        Some(key)
    }

    /// Gives back what `key` holds beyond `reserved` reserved bytes.
    fn trim_pool(&mut self, t: &mut Totals, key: PoolId, reserved: u64) {
        let Some(pool) = self.pools.get_mut(&key) else {
            return;
        };
        let release = pool.trim_reserved(reserved);
        let device = pool.device;
        if release > 0 {
            self.book_sub(t, device, Held::Pool, release);
            self.pool_changed(key);
        }
    }

    /// `cuMemPoolTrimTo`: the pool keeps at least `minBytesToKeep` reserved (in use plus
    /// held) and gives back the rest of what it holds.
    pub(crate) fn on_pool_trim(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.pool.or(c.handle) else {
            self.anomaly("pool_without_handle", || describe(c));
            return;
        };
        let Some(keep) = c.bytes else {
            self.anomaly("trim_without_size", || describe(c));
            return;
        };
        if let Some(key) = self.pool_of_handle(t, c, h) {
            self.trim_pool(t, key, keep);
        }
    }

    /// `cuMemPoolSetAttribute` / `cuMemPoolGetAttribute`: the release threshold, set or
    /// read back, is the pool's from now on; the reserved bytes read back are the driver's
    /// own figure for the pool (see [`Self::pool_reserved_reported`]). The other attributes
    /// change nothing the Ledger counts.
    pub(crate) fn on_pool_attr(&mut self, t: &mut Totals, c: &Call) {
        let attr = match c.attr {
            Some(a @ (pool_attr::RELEASE_THRESHOLD | pool_attr::RESERVED_MEM_CURRENT)) => a,
            _ => return,
        };
        // Only a read tells what the driver has reserved; setting it is not possible.
        if attr == pool_attr::RESERVED_MEM_CURRENT && !c.api.starts_with("cuMemPoolGetAttribute") {
            return;
        }
        let Some(h) = c.pool else {
            self.anomaly("pool_without_handle", || describe(c));
            return;
        };
        let Some(value) = c.value else {
            self.anomaly("pool_attr_without_value", || describe(c));
            return;
        };
        let Some(key) = self.pool_of_handle(t, c, h) else {
            return;
        };
        if attr == pool_attr::RESERVED_MEM_CURRENT {
            self.pool_reserved_reported(t, key, value, c.ts_ns);
        } else if let Some(pool) = self.pools.get_mut(&key) {
            pool.threshold = Some(value);
        }
    }

    /// The driver said the pool has `reserved` bytes from the GPU
    /// (`CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`, read by the process, as PyTorch's
    /// `cudaMallocAsync` backend does for its memory statistics): what of it is not in use is
    /// what the pool holds. The driver reserves in chunks (32 MiB on an H100 with driver
    /// 580) and keeps what an allocation leaves of one, which no call shows, so the model
    /// drifts from the truth between readings; a reading sets it right. Fewer held bytes
    /// than the model's: blocks go back, largest first, as a trim; more: one block of the
    /// difference, which later allocations may reuse.
    fn pool_reserved_reported(&mut self, t: &mut Totals, key: PoolId, reserved: u64, ts: u64) {
        let Some(pool) = self.pools.get_mut(&key) else {
            return;
        };
        if pool.destroyed || pool.host.is_some() {
            return;
        }
        let held = reserved.saturating_sub(pool.used);
        if held < pool.held {
            self.trim_pool(t, key, reserved);
        } else if held > pool.held {
            let extra = held - pool.held;
            pool.give(extra);
            let device = pool.device;
            self.book_add(t, device, Held::Pool, extra, ts);
            self.pool_changed(key);
        }
    }

    /// A stream, event or context synchronization: every pool of device memory gives back
    /// what it holds above its release threshold. The driver documents the release "on the
    /// next call to stream, event or context synchronize" without naming which pools; the
    /// model takes all of the process's pools, as the simulated driver does.
    pub(crate) fn on_sync(&mut self, t: &mut Totals) {
        let due: Vec<(PoolId, u64)> = self
            .pools
            .iter()
            .filter(|(_, p)| !p.destroyed && p.host.is_none() && p.held > 0)
            .filter_map(|(k, p)| p.threshold.map(|th| (*k, th)))
            .collect();
        for (key, threshold) in due {
            self.trim_pool(t, key, threshold);
        }
    }

    pub(crate) fn on_pool_destroy(&mut self, t: &mut Totals, c: &Call) {
        let Some(h) = c.pool.or(c.handle) else {
            self.anomaly("pool_without_handle", || describe(c));
            return;
        };
        match self.pools.get_mut(&PoolId::Handle(h)) {
            Some(p) if !p.destroyed => {
                let held = p.clear();
                p.destroyed = true;
                let device = p.device;
                if held > 0 {
                    self.book_sub(t, device, Held::Pool, held);
                    self.pool_changed(PoolId::Handle(h));
                }
            }
            _ => self.anomaly("destroy_unknown_pool", || describe(c)),
        }
    }
}
