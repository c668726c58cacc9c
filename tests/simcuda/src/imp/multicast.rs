//! Multicast objects (CUDA 12.1 and later): `cuMulticastCreate`, `cuMulticastAddDevice`,
//! `cuMulticastBindMem` / `cuMulticastBindAddr` (and CUDA 13's `_v2`, which name the device),
//! `cuMulticastUnbind`, `cuMulticastGetGranularity`. A multicast object is a handle with a
//! size and a team of devices; it has no memory of its own: what is bound to it is memory of
//! `cuMemCreate` handles, which a binding keeps until it is unbound or the object goes. It is
//! mapped with `cuMemMap` and released with `cuMemRelease`, like a VMM handle, and goes once
//! released and unmapped (its bindings with it).
//!
//! Where the driver blocks until every device of the team is added (a bind, a map), this one
//! refuses with `CUDA_ERROR_INVALID_VALUE`.

use std::collections::BTreeMap;
use std::ffi::{c_int, c_uint};

use super::{
    CUdevice, CUdeviceptr, CUresult, GRANULE, INVALID_DEVICE, INVALID_HANDLE, INVALID_VALUE, State,
    code, nonnull, put, with,
};

/// `CU_MEM_HANDLE_TYPE_NONE`, `_POSIX_FILE_DESCRIPTOR` and `_FABRIC`: what a multicast object
/// may be exported as.
const HANDLE_TYPES: u64 = 0x1 | 0x8;
/// `CU_MULTICAST_GRANULARITY_MINIMUM` and `_RECOMMENDED`.
const GRANULARITY_MINIMUM: c_int = 0;
const GRANULARITY_RECOMMENDED: c_int = 1;

/// `CUmulticastObjectProp`.
#[repr(C)]
pub struct MulticastObjectProp {
    pub num_devices: c_uint,
    pub size: usize,
    pub handle_types: u64,
    pub flags: u64,
}

/// One binding: the memory handle behind `size` bytes of the object for one device.
struct Bound {
    handle: u64,
    size: u64,
}

pub(super) struct Multicast {
    pub(super) size: u64,
    team: usize,
    devices: Vec<usize>,
    /// By (device, offset in the object).
    bound: BTreeMap<(usize, u64), Bound>,
    pub(super) released: bool,
    pub(super) maps: u32,
}

impl Multicast {
    /// Every device of the team is added: memory may be bound and the object mapped.
    pub(super) fn team_complete(&self) -> bool {
        self.devices.len() == self.team
    }
}

impl State {
    /// `cuMemRelease` of a multicast object.
    pub(super) fn release_multicast(&mut self, h: u64) -> Result<(), CUresult> {
        let m = self.multicast.get_mut(&h).ok_or(INVALID_VALUE)?;
        if m.released {
            return Err(INVALID_VALUE);
        }
        m.released = true;
        self.drop_multicast_if_done(h);
        Ok(())
    }

    /// A released multicast object that is no longer mapped goes, and its bindings with it.
    pub(super) fn drop_multicast_if_done(&mut self, h: u64) {
        if !self
            .multicast
            .get(&h)
            .is_some_and(|m| m.released && m.maps == 0)
        {
            return;
        }
        if let Some(m) = self.multicast.remove(&h) {
            for b in m.bound.into_values() {
                self.unbind_memory(b.handle);
            }
        }
    }

    /// One binding of a memory handle (to a multicast object, or a sparse array's tile) is
    /// gone.
    pub(super) fn unbind_memory(&mut self, handle: u64) {
        if let Some(p) = self.phys.get_mut(&handle) {
            p.binds = p.binds.saturating_sub(1);
        }
        self.free_phys_if_done(handle);
    }

    /// Binds `size` bytes of memory handle `handle` from `mem_offset` at `mc_offset` of
    /// object `mc`, for `dev` (the memory's own device when `None`).
    fn bind(
        &mut self,
        mc: u64,
        dev: Option<CUdevice>,
        mc_offset: u64,
        handle: u64,
        mem_offset: u64,
        size: u64,
    ) -> Result<(), CUresult> {
        let dev = dev.map(|d| self.device(d)).transpose()?;
        let p = self.phys.get(&handle).ok_or(INVALID_HANDLE)?;
        let m = self.multicast.get(&mc).ok_or(INVALID_HANDLE)?;
        if !m.team_complete() || m.released || p.released || p.imported {
            return Err(INVALID_VALUE);
        }
        let Some(dev) = dev.or(p.dev) else {
            // Host memory is never bound to a multicast object.
            return Err(INVALID_VALUE);
        };
        if !m.devices.contains(&dev) {
            return Err(INVALID_DEVICE);
        }
        let aligned = |v: u64| v.is_multiple_of(GRANULE);
        if size == 0
            || !aligned(size)
            || !aligned(mc_offset)
            || !aligned(mem_offset)
            || mc_offset.checked_add(size).is_none_or(|e| e > m.size)
            || mem_offset.checked_add(size).is_none_or(|e| e > p.size)
        {
            return Err(INVALID_VALUE);
        }
        // One binding per device per range of the object.
        let overlaps = m
            .bound
            .range((dev, 0)..(dev + 1, 0))
            .any(|(&(_, o), b)| o < mc_offset + size && mc_offset < o + b.size);
        if overlaps {
            return Err(INVALID_VALUE);
        }
        if let Some(m) = self.multicast.get_mut(&mc) {
            m.bound.insert((dev, mc_offset), Bound { handle, size });
        }
        if let Some(p) = self.phys.get_mut(&handle) {
            p.binds += 1;
        }
        Ok(())
    }

    /// The memory handle mapped at `ptr` and the offset into it.
    fn handle_at(&self, ptr: CUdeviceptr) -> Result<(u64, u64), CUresult> {
        let (&start, m) = self
            .mappings
            .range(..=ptr)
            .next_back()
            .filter(|(s, m)| ptr < *s + m.size)
            .ok_or(INVALID_VALUE)?;
        if !self.phys.contains_key(&m.handle) {
            return Err(INVALID_VALUE);
        }
        Ok((m.handle, ptr - start))
    }
}

pub extern "C" fn cuMulticastCreate(
    mc_handle: *mut u64,
    prop: *const MulticastObjectProp,
) -> CUresult {
    code(with(|st| {
        nonnull(mc_handle)?;
        nonnull(prop)?;
        // SAFETY: checked non-null; the caller passes a `CUmulticastObjectProp`.
        let prop = unsafe { &*prop };
        let size = prop.size as u64;
        let team = prop.num_devices as usize;
        if prop.flags != 0
            || prop.handle_types & !HANDLE_TYPES != 0
            || team == 0
            || team > st.devices.len()
            || size == 0
            || !size.is_multiple_of(GRANULE)
        {
            return Err(INVALID_VALUE);
        }
        let h = st.handle();
        st.multicast.insert(
            h,
            Multicast {
                size,
                team,
                devices: Vec::new(),
                bound: BTreeMap::new(),
                released: false,
                maps: 0,
            },
        );
        put(mc_handle, h);
        Ok(())
    }))
}

pub extern "C" fn cuMulticastAddDevice(mc_handle: u64, dev: CUdevice) -> CUresult {
    code(with(|st| {
        let dev = st.device(dev)?;
        let m = st.multicast.get_mut(&mc_handle).ok_or(INVALID_HANDLE)?;
        if m.released || m.team_complete() || m.devices.contains(&dev) {
            return Err(INVALID_VALUE);
        }
        m.devices.push(dev);
        Ok(())
    }))
}

pub extern "C" fn cuMulticastGetGranularity(
    granularity: *mut usize,
    prop: *const MulticastObjectProp,
    option: c_int,
) -> CUresult {
    code(with(|st| {
        nonnull(granularity)?;
        nonnull(prop)?;
        // SAFETY: checked non-null; the caller passes a `CUmulticastObjectProp`.
        let prop = unsafe { &*prop };
        if !matches!(option, GRANULARITY_MINIMUM | GRANULARITY_RECOMMENDED)
            || prop.num_devices == 0
            || prop.num_devices as usize > st.devices.len()
        {
            return Err(INVALID_VALUE);
        }
        put(granularity, GRANULE as usize);
        Ok(())
    }))
}

pub extern "C" fn cuMulticastBindMem(
    mc_handle: u64,
    mc_offset: usize,
    mem_handle: u64,
    mem_offset: usize,
    size: usize,
    flags: u64,
) -> CUresult {
    bind_mem(
        mc_handle, None, mc_offset, mem_handle, mem_offset, size, flags,
    )
}

pub extern "C" fn cuMulticastBindMem_v2(
    mc_handle: u64,
    dev: CUdevice,
    mc_offset: usize,
    mem_handle: u64,
    mem_offset: usize,
    size: usize,
    flags: u64,
) -> CUresult {
    bind_mem(
        mc_handle,
        Some(dev),
        mc_offset,
        mem_handle,
        mem_offset,
        size,
        flags,
    )
}

fn bind_mem(
    mc: u64,
    dev: Option<CUdevice>,
    mc_offset: usize,
    handle: u64,
    mem_offset: usize,
    size: usize,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        st.bind(
            mc,
            dev,
            mc_offset as u64,
            handle,
            mem_offset as u64,
            size as u64,
        )
    }))
}

pub extern "C" fn cuMulticastBindAddr(
    mc_handle: u64,
    mc_offset: usize,
    memptr: CUdeviceptr,
    size: usize,
    flags: u64,
) -> CUresult {
    bind_addr(mc_handle, None, mc_offset, memptr, size, flags)
}

pub extern "C" fn cuMulticastBindAddr_v2(
    mc_handle: u64,
    dev: CUdevice,
    mc_offset: usize,
    memptr: CUdeviceptr,
    size: usize,
    flags: u64,
) -> CUresult {
    bind_addr(mc_handle, Some(dev), mc_offset, memptr, size, flags)
}

fn bind_addr(
    mc: u64,
    dev: Option<CUdevice>,
    mc_offset: usize,
    memptr: CUdeviceptr,
    size: usize,
    flags: u64,
) -> CUresult {
    code(with(|st| {
        if flags != 0 {
            return Err(INVALID_VALUE);
        }
        // Memory of a `cuMemCreate` handle mapped here; stream-ordered memory, which the
        // driver also binds, is not simulated.
        let (handle, offset) = st.handle_at(memptr)?;
        st.bind(mc, dev, mc_offset as u64, handle, offset, size as u64)
    }))
}

pub extern "C" fn cuMulticastUnbind(
    mc_handle: u64,
    dev: CUdevice,
    mc_offset: usize,
    size: usize,
) -> CUresult {
    code(with(|st| {
        let dev = st.device(dev)?;
        let m = st.multicast.get_mut(&mc_handle).ok_or(INVALID_HANDLE)?;
        let key = (dev, mc_offset as u64);
        // The offset and size must be those of the bind.
        if m.bound.get(&key).is_none_or(|b| b.size != size as u64) {
            return Err(INVALID_VALUE);
        }
        let b = m.bound.remove(&key).ok_or(INVALID_VALUE)?;
        st.unbind_memory(b.handle);
        Ok(())
    }))
}
