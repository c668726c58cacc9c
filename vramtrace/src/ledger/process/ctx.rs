//! Contexts: each thread's stack of current contexts, primary contexts, green contexts, and
//! what a context's destruction frees (`LiveAllocation::freed_with_context`).
//!
//! A green context retains its device's primary context until it is destroyed, and the
//! `CUcontext` that `cuCtxFromGreenCtx` returns for it is treated as that primary context by
//! every call that does not depend on the green context's resources (CUDA driver API
//! reference, `cuGreenCtxCreate`, `cuCtxFromGreenCtx`, `cuGreenCtxDestroy`): memory allocated
//! while it is current is the primary context's, and stays until the primary context is reset
//! or destroyed, not when the green context is.

use std::sync::Arc;

use super::{LiveAllocation, ProcessState, describe};
use crate::ledger::change::EndCause;
use crate::ledger::usage::Totals;
use crate::trace::Call;

#[derive(Clone, Debug, Default)]
pub(super) struct PrimaryCtx {
    /// Its handle, once `cuDevicePrimaryCtxRetain` returned it (`cuGreenCtxCreate` retains
    /// it without telling).
    pub(super) ctx: Option<u64>,
    pub(super) refs: u32,
    /// The `CUcontext`s of green contexts on its device: what is allocated in them is the
    /// primary context's.
    pub(super) green: Vec<u64>,
}

impl PrimaryCtx {
    /// Every context handle whose memory is this primary context's.
    fn owned(&self) -> impl Iterator<Item = u64> + '_ {
        self.ctx.into_iter().chain(self.green.iter().copied())
    }
}

#[derive(Clone, Debug)]
pub(super) struct GreenCtx {
    device: Option<i32>,
    /// Its `CUcontext`, once `cuCtxFromGreenCtx` returned it.
    ctx: Option<u64>,
}

impl ProcessState {
    pub(crate) fn on_ctx_create(&mut self, c: &Call) {
        if c.api.starts_with("cuGreenCtxCreate") {
            self.on_green_ctx_create(c);
            return;
        }
        if c.api.starts_with("cuCtxFromGreenCtx") {
            self.on_ctx_from_green_ctx(c);
            return;
        }
        let Some(ctx) = c.handle else {
            self.anomaly("ctx_without_handle", || describe(c));
            return;
        };
        self.ctx_device.insert(ctx, c.device);
        if c.api.starts_with("cuDevicePrimaryCtxRetain") {
            // Retaining the primary context does not make it current.
            let p = self.primary.entry(c.device).or_default();
            p.ctx = Some(ctx);
            p.refs += 1;
        } else {
            // cuCtxCreate pushes the new context on the calling thread's stack.
            self.threads.entry(c.tid).or_default().push(ctx);
        }
    }

    pub(crate) fn on_ctx_destroy(&mut self, t: &mut Totals, c: &Call) {
        if c.api.starts_with("cuDevicePrimaryCtxReset") {
            // Everything allocated in the primary context goes; the context stays retained.
            match self.primary.get(&c.device) {
                Some(p) => {
                    let owned: Vec<u64> = p.owned().collect();
                    for ctx in owned {
                        self.free_ctx_memory(t, ctx, &c.api, c.ts_ns);
                    }
                }
                None => self.anomaly("reset_unretained_primary_ctx", || describe(c)),
            }
            return;
        }
        if c.api.starts_with("cuDevicePrimaryCtxRelease") {
            self.release_primary(t, c, c.device);
            return;
        }
        if c.api.starts_with("cuGreenCtxDestroy") {
            let Some(g) = c.green.and_then(|h| self.green.remove(&h)) else {
                self.anomaly("destroy_unknown_green_ctx", || describe(c));
                return;
            };
            // Its CUcontext is gone; what was allocated in it is the primary context's and
            // goes when the last reference to that does.
            if let Some(ctx) = g.ctx {
                self.ctx_device.remove(&ctx);
            }
            self.release_primary(t, c, g.device);
            return;
        }
        let Some(ctx) = c.handle else {
            self.anomaly("ctx_without_handle", || describe(c));
            return;
        };
        if !self.ctx_device.contains_key(&ctx) {
            self.anomaly("destroy_unknown_ctx", || describe(c));
        }
        // The destroyed context is popped from the calling thread only; other threads keep it
        // current (and get CUDA_ERROR_CONTEXT_IS_DESTROYED from then on).
        if let Some(stack) = self.threads.get_mut(&c.tid)
            && stack.last() == Some(&ctx)
        {
            stack.pop();
        }
        self.destroy_ctx(t, ctx, &c.api, c.ts_ns);
    }

    /// `cuGreenCtxCreate` retains `dev`'s primary context.
    fn on_green_ctx_create(&mut self, c: &Call) {
        let Some(green) = c.green else {
            self.anomaly("green_ctx_without_handle", || describe(c));
            return;
        };
        self.green.insert(
            green,
            GreenCtx {
                device: c.device,
                ctx: None,
            },
        );
        self.primary.entry(c.device).or_default().refs += 1;
    }

    /// `cuCtxFromGreenCtx`: the returned `CUcontext` is on the green context's device, and
    /// what is allocated in it belongs to that device's primary context.
    fn on_ctx_from_green_ctx(&mut self, c: &Call) {
        let (Some(ctx), Some(green)) = (c.handle, c.green) else {
            self.anomaly("ctx_without_handle", || describe(c));
            return;
        };
        let Some(g) = self.green.get_mut(&green) else {
            self.anomaly("unknown_green_ctx", || describe(c));
            return;
        };
        g.ctx = Some(ctx);
        let device = g.device;
        self.ctx_device.insert(ctx, device);
        let p = self.primary.entry(device).or_default();
        if !p.green.contains(&ctx) {
            p.green.push(ctx);
        }
    }

    /// Drops one reference to `device`'s primary context (`cuDevicePrimaryCtxRelease*`,
    /// `cuGreenCtxDestroy`); the last one destroys it and what it owns.
    fn release_primary(&mut self, t: &mut Totals, c: &Call, device: Option<i32>) {
        let Some(p) = self.primary.get_mut(&device) else {
            self.anomaly("release_unretained_primary_ctx", || describe(c));
            return;
        };
        p.refs = p.refs.saturating_sub(1);
        if p.refs == 0
            && let Some(p) = self.primary.remove(&device)
        {
            for ctx in p.owned() {
                self.destroy_ctx(t, ctx, &c.api, c.ts_ns);
            }
        }
    }

    /// What `ctx` owns is freed with it (`LiveAllocation::freed_with_context`).
    fn destroy_ctx(&mut self, t: &mut Totals, ctx: u64, api: &str, ts: u64) {
        self.ctx_device.remove(&ctx);
        self.free_ctx_memory(t, ctx, api, ts);
    }

    /// Frees what was allocated in `ctx` and goes with it: not stream-ordered or VMM memory,
    /// which no context owns (`LiveAllocation::freed_with_context`).
    fn free_ctx_memory(&mut self, t: &mut Totals, ctx: u64, api: &str, ts: u64) {
        let addrs: Vec<u64> = self
            .by_addr
            .iter()
            .filter(|(_, a)| a.ctx == Some(ctx) && a.freed_with_context())
            .map(|(&k, _)| k)
            .collect();
        let arrays: Vec<u64> = self
            .arrays
            .iter()
            .filter(|(_, a)| a.ctx == Some(ctx) && a.freed_with_context())
            .map(|(&k, _)| k)
            .collect();
        let mut freed: Vec<Arc<LiveAllocation>> = Vec::with_capacity(addrs.len() + arrays.len());
        freed.extend(addrs.iter().filter_map(|k| self.by_addr.remove(k)));
        freed.extend(arrays.iter().filter_map(|k| self.arrays.remove(k)));
        if freed.is_empty() {
            return;
        }
        let calls = freed.len() as u64;
        let mut bytes = 0u64;
        for a in freed {
            bytes = bytes.saturating_add(a.bytes);
            self.release(t, a, EndCause::ContextDestroyed, ts);
        }
        for k in arrays {
            self.array_maps_gone(t, k, ts);
        }
        self.count_free(api, calls, bytes);
    }

    pub(crate) fn on_ctx_current(&mut self, c: &Call) {
        let ctx = c.handle.unwrap_or(0);
        let stack = self.threads.entry(c.tid).or_default();
        if c.api.starts_with("cuCtxPushCurrent") {
            stack.push(ctx);
        } else if c.api.starts_with("cuCtxPopCurrent") {
            match stack.pop() {
                None => self.anomaly("pop_empty_ctx_stack", || describe(c)),
                Some(top) if c.handle.is_some_and(|h| h != top) => {
                    self.anomaly("pop_other_ctx", || describe(c));
                }
                Some(_) => {}
            }
        } else if let Some(top) = stack.last_mut() {
            *top = ctx;
        } else if ctx != 0 {
            stack.push(ctx);
        }
    }
}
