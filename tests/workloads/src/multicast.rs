//! Multicast objects (CUDA 12.1; `_v2` binds of CUDA 13): memory bound to an object stays
//! while bound, whatever else lets go of it. Two objects on the workload's device:
//!
//! - the first, 8 MiB: 4 MiB of weights bound by handle (`cuMulticastBindMem`), then
//!   released and later unbound (it goes at the unbind); 4 MiB of KV cache mapped, bound by
//!   address (`cuMulticastBindAddr_v2`, `cuMulticastBindAddr` without it), released and
//!   unmapped (kept by the binding); the object mapped, released while mapped, then unmapped:
//!   it goes, and the KV cache with it;
//! - the second, 4 MiB: 4 MiB of weights bound by handle (`cuMulticastBindMem_v2`, or
//!   `cuMulticastBindMem`), released at once; live at exit, held by the binding alone.
//!
//! A driver or GPU without multicast support refuses the calls and nothing is made here:
//! the ground truth says what each call returned.

use std::ffi::c_int;

use serde_json::json;

use crate::book::Label::{KvCache, Weights};
use crate::call;
use crate::driver::*;
use crate::rt::{MIB, Rt};
use crate::scenarios::Extra;

/// `CUmulticastObjectProp`.
#[repr(C)]
pub struct MulticastObjectProp {
    pub num_devices: std::ffi::c_uint,
    pub size: usize,
    pub handle_types: u64,
    pub flags: u64,
}

pub type FnCreate = unsafe extern "C" fn(*mut u64, *const MulticastObjectProp) -> R;
pub type FnAddDevice = unsafe extern "C" fn(u64, c_int) -> R;
/// `cuMulticastBindMem(mcHandle, mcOffset, memHandle, memOffset, size, flags)`.
pub type FnBindMem = unsafe extern "C" fn(u64, usize, u64, usize, usize, u64) -> R;
/// `cuMulticastBindMem_v2(mcHandle, dev, mcOffset, memHandle, memOffset, size, flags)`.
pub type FnBindMemV2 = unsafe extern "C" fn(u64, c_int, usize, u64, usize, usize, u64) -> R;
/// `cuMulticastBindAddr(mcHandle, mcOffset, memptr, size, flags)`.
pub type FnBindAddr = unsafe extern "C" fn(u64, usize, u64, usize, u64) -> R;
/// `cuMulticastBindAddr_v2(mcHandle, dev, mcOffset, memptr, size, flags)`.
pub type FnBindAddrV2 = unsafe extern "C" fn(u64, c_int, usize, u64, usize, u64) -> R;
/// `cuMulticastUnbind(mcHandle, dev, mcOffset, size)`.
pub type FnUnbind = unsafe extern "C" fn(u64, c_int, usize, usize) -> R;

pub struct Multicast {
    pub create: Sym<FnCreate>,
    pub add_device: Sym<FnAddDevice>,
    pub bind_mem: Sym<FnBindMem>,
    pub bind_addr: Sym<FnBindAddr>,
    pub unbind: Sym<FnUnbind>,
    /// CUDA 13's variants, where the driver exports them.
    pub bind_mem_v2: Option<Sym<FnBindMemV2>>,
    pub bind_addr_v2: Option<Sym<FnBindAddrV2>>,
}

impl Multicast {
    pub fn resolve(d: &Driver) -> anyhow::Result<Multicast> {
        let v = 12050;
        Ok(Multicast {
            create: d.resolve("cuMulticastCreate", v, 0, "cuMulticastCreate")?,
            add_device: d.resolve("cuMulticastAddDevice", v, 0, "cuMulticastAddDevice")?,
            bind_mem: d.resolve("cuMulticastBindMem", v, 0, "cuMulticastBindMem")?,
            bind_addr: d.resolve("cuMulticastBindAddr", v, 0, "cuMulticastBindAddr")?,
            unbind: d.resolve("cuMulticastUnbind", v, 0, "cuMulticastUnbind")?,
            bind_mem_v2: d.dlsym("cuMulticastBindMem_v2"),
            bind_addr_v2: d.dlsym("cuMulticastBindAddr_v2"),
        })
    }
}

pub fn multicast(rt: &Rt) -> anyhow::Result<Extra> {
    let d = &rt.d;
    let m = Multicast::resolve(d)?;
    let dev = rt.device;
    let piece = 4 * MIB;
    let mut calls = Vec::new();
    let mut note = |what: &str, api: &str, ret: R| {
        calls.push(json!({"what": what, "api": api, "ret": ret}));
        ret == 0
    };
    let create = |bytes: u64, note: &mut dyn FnMut(&str, &str, R) -> bool| {
        let prop = MulticastObjectProp {
            num_devices: 1,
            size: bytes as usize,
            handle_types: 0,
            flags: 0,
        };
        let mut mc = 0u64;
        let ok = note("create", m.create.name, call!(d, m.create, &mut mc, &prop));
        let ok = ok
            && note(
                "add_device",
                m.add_device.name,
                call!(d, m.add_device, mc, dev),
            );
        if ok {
            rt.book().multicast_create(mc);
        }
        ok.then_some(mc)
    };
    let mut objects = Vec::new();
    if let Some(mc) = create(2 * piece, &mut note) {
        objects.push(mc);
        // Weights bound by handle, released: kept by the binding until the unbind.
        if let Some(a) = rt.mem_create(piece, Some(Weights)) {
            let r = call!(d, m.bind_mem, mc, 0, a, 0, piece as usize, 0);
            if note("bind weights", m.bind_mem.name, r) {
                rt.book().multicast_bind(mc, dev, 0, a);
            }
            rt.mem_release(a);
        }
        // A KV cache mapped, bound by address, released and unmapped: kept by the binding.
        let va = rt.reserve(4 * piece);
        let kv = rt.mem_create(piece, Some(KvCache));
        if let (Some(va), Some(kv)) = (va, kv)
            && rt.map(va, piece, kv)
        {
            rt.set_access(va, piece);
            let (api, r) = match m.bind_addr_v2 {
                Some(f) => (
                    f.name,
                    call!(d, f, mc, dev, piece as usize, va, piece as usize, 0),
                ),
                None => (
                    m.bind_addr.name,
                    call!(d, m.bind_addr, mc, piece as usize, va, piece as usize, 0),
                ),
            };
            if note("bind kv cache", api, r) {
                rt.book().multicast_bind(mc, dev, piece, kv);
            }
            rt.mem_release(kv);
            rt.unmap(va, piece);
            // The object mapped: no memory of its own.
            let at = va + 2 * piece;
            if rt.map(at, 2 * piece, mc) {
                rt.set_access(at, 2 * piece);
            }
            let r = call!(d, m.unbind, mc, dev, 0, piece as usize);
            if note("unbind weights", m.unbind.name, r) {
                rt.book().multicast_unbind(mc, dev, 0);
            }
            // Released while mapped: it goes at the unmap, and the KV cache with it.
            rt.mem_release(mc);
            rt.unmap(at, 2 * piece);
            rt.addr_free(va, 4 * piece);
        }
    }
    if let Some(mc) = create(piece, &mut note) {
        objects.push(mc);
        if let Some(w) = rt.mem_create(piece, Some(Weights)) {
            let (api, r) = match m.bind_mem_v2 {
                Some(f) => (f.name, call!(d, f, mc, dev, 0, w, 0, piece as usize, 0)),
                None => (
                    m.bind_mem.name,
                    call!(d, m.bind_mem, mc, 0, w, 0, piece as usize, 0),
                ),
            };
            if note("bind live weights", api, r) {
                rt.book().multicast_bind(mc, dev, 0, w);
            }
            // Held by the binding alone from here to the exit.
            rt.mem_release(w);
        }
    }
    let mut extra = Extra::new();
    extra.insert(
        "multicast".into(),
        json!({"objects": objects, "calls": calls}),
    );
    Ok(extra)
}
