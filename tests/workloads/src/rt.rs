//! A small CUDA "runtime" over the driver: the entry points a CUDA 12 runtime
//! resolves at start-up, and helpers that call them and keep the ground truth.

use std::cell::Cell;
use std::ffi::{c_int, c_uint};
use std::sync::{Mutex, MutexGuard};

use crate::book::{Book, Key, Label};
use crate::call;
use crate::driver::*;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The entry points resolved at start-up (flags 0, CUDA 12.4).
pub struct Cu {
    pub init: Sym<FnInit>,
    pub driver_version: Sym<FnOutInt>,
    pub device_get: Sym<FnDeviceGet>,
    pub device_count: Sym<FnOutInt>,
    pub total_mem: Sym<FnTotalMem>,
    pub mem_info: Sym<FnMemInfo>,
    pub mem_alloc: Sym<FnAlloc>,
    pub mem_alloc_pitch: Sym<FnPitch>,
    pub mem_free: Sym<FnU64>,
    pub alloc_async: Sym<FnAllocAsync>,
    pub alloc_from_pool: Sym<FnAllocFromPool>,
    pub free_async: Sym<FnFreeAsync>,
    pub pool_create: Sym<FnPoolCreate>,
    pub pool_destroy: Sym<FnHandle>,
    pub pool_trim: Sym<FnTrim>,
    pub pool_set_attr: Sym<FnPoolAttr>,
    pub default_pool: Sym<FnOutHandleDev>,
    pub mem_create: Sym<FnMemCreate>,
    pub mem_release: Sym<FnU64>,
    pub reserve: Sym<FnReserve>,
    pub addr_free: Sym<FnRange>,
    pub map: Sym<FnMap>,
    pub unmap: Sym<FnRange>,
    pub set_access: Sym<FnSetAccess>,
    pub granularity: Sym<FnGranularity>,
    pub array_create: Sym<FnArray>,
    pub array3d_create: Sym<FnArray3D>,
    pub mipmap_create: Sym<FnMipmap>,
    pub array_destroy: Sym<FnHandle>,
    pub mipmap_destroy: Sym<FnHandle>,
    pub alloc_managed: Sym<FnManaged>,
    pub alloc_host: Sym<FnAllocHost>,
    pub host_alloc: Sym<FnHostAlloc>,
    pub free_host: Sym<FnHandle>,
    pub host_register: Sym<FnHostRegister>,
    pub host_unregister: Sym<FnHandle>,
    pub ctx_create: Sym<FnCtxCreate>,
    pub ctx_create_v3: Sym<FnCtxCreate3>,
    pub ctx_destroy: Sym<FnHandle>,
    pub primary_retain: Sym<FnOutHandleDev>,
    pub primary_release: Sym<FnDev>,
    pub set_current: Sym<FnHandle>,
    pub get_current: Sym<FnOutHandle>,
    pub push_current: Sym<FnHandle>,
    pub pop_current: Sym<FnOutHandle>,
    pub synchronize: Sym<FnVoid>,
    pub stream_sync: Sym<FnHandle>,
    pub event_create: Sym<FnEventCreate>,
    pub event_sync: Sym<FnHandle>,
    pub event_destroy: Sym<FnHandle>,
    pub htod: Sym<FnHtoD>,
    pub htod_async: Sym<FnHtoDAsync>,
}

/// What a workload synchronizes with: each one lets pools give back what they hold above
/// their release threshold.
#[derive(Clone, Copy, Debug)]
pub enum SyncPoint {
    /// `cuStreamSynchronize` of the legacy default stream.
    Stream,
    /// `cuStreamSynchronize_ptsz` of the per-thread default stream.
    StreamPerThread,
    /// `cuEventSynchronize` of an event made for it.
    Event,
    /// `cuCtxSynchronize`.
    Context,
}

/// The stream-ordered entry points resolved with the per-thread-default-stream flag.
pub struct Ptsz {
    pub stream_sync: Sym<FnHandle>,
    pub alloc_async: Sym<FnAllocAsync>,
    pub alloc_from_pool: Sym<FnAllocFromPool>,
    pub free_async: Sym<FnFreeAsync>,
    pub htod: Sym<FnHtoD>,
    pub htod_async: Sym<FnHtoDAsync>,
}

impl Cu {
    pub fn load(d: &Driver) -> anyhow::Result<Cu> {
        let v = CUDA_VERSION;
        Ok(Cu {
            init: d.resolve("cuInit", v, 0, "cuInit")?,
            driver_version: d.resolve("cuDriverGetVersion", v, 0, "cuDriverGetVersion")?,
            device_get: d.resolve("cuDeviceGet", v, 0, "cuDeviceGet")?,
            device_count: d.resolve("cuDeviceGetCount", v, 0, "cuDeviceGetCount")?,
            total_mem: d.resolve("cuDeviceTotalMem", v, 0, "cuDeviceTotalMem_v2")?,
            mem_info: d.resolve("cuMemGetInfo", v, 0, "cuMemGetInfo_v2")?,
            mem_alloc: d.resolve("cuMemAlloc", v, 0, "cuMemAlloc_v2")?,
            mem_alloc_pitch: d.resolve("cuMemAllocPitch", v, 0, "cuMemAllocPitch_v2")?,
            mem_free: d.resolve("cuMemFree", v, 0, "cuMemFree_v2")?,
            alloc_async: d.resolve("cuMemAllocAsync", v, 0, "cuMemAllocAsync")?,
            alloc_from_pool: d.resolve(
                "cuMemAllocFromPoolAsync",
                v,
                0,
                "cuMemAllocFromPoolAsync",
            )?,
            free_async: d.resolve("cuMemFreeAsync", v, 0, "cuMemFreeAsync")?,
            pool_create: d.resolve("cuMemPoolCreate", v, 0, "cuMemPoolCreate")?,
            pool_destroy: d.resolve("cuMemPoolDestroy", v, 0, "cuMemPoolDestroy")?,
            pool_trim: d.resolve("cuMemPoolTrimTo", v, 0, "cuMemPoolTrimTo")?,
            pool_set_attr: d.resolve("cuMemPoolSetAttribute", v, 0, "cuMemPoolSetAttribute")?,
            default_pool: d.resolve(
                "cuDeviceGetDefaultMemPool",
                v,
                0,
                "cuDeviceGetDefaultMemPool",
            )?,
            mem_create: d.resolve("cuMemCreate", v, 0, "cuMemCreate")?,
            mem_release: d.resolve("cuMemRelease", v, 0, "cuMemRelease")?,
            reserve: d.resolve("cuMemAddressReserve", v, 0, "cuMemAddressReserve")?,
            addr_free: d.resolve("cuMemAddressFree", v, 0, "cuMemAddressFree")?,
            map: d.resolve("cuMemMap", v, 0, "cuMemMap")?,
            unmap: d.resolve("cuMemUnmap", v, 0, "cuMemUnmap")?,
            set_access: d.resolve("cuMemSetAccess", v, 0, "cuMemSetAccess")?,
            granularity: d.resolve(
                "cuMemGetAllocationGranularity",
                v,
                0,
                "cuMemGetAllocationGranularity",
            )?,
            array_create: d.resolve("cuArrayCreate", v, 0, "cuArrayCreate_v2")?,
            array3d_create: d.resolve("cuArray3DCreate", v, 0, "cuArray3DCreate_v2")?,
            mipmap_create: d.resolve("cuMipmappedArrayCreate", v, 0, "cuMipmappedArrayCreate")?,
            array_destroy: d.resolve("cuArrayDestroy", v, 0, "cuArrayDestroy")?,
            mipmap_destroy: d.resolve(
                "cuMipmappedArrayDestroy",
                v,
                0,
                "cuMipmappedArrayDestroy",
            )?,
            alloc_managed: d.resolve("cuMemAllocManaged", v, 0, "cuMemAllocManaged")?,
            alloc_host: d.resolve("cuMemAllocHost", v, 0, "cuMemAllocHost_v2")?,
            host_alloc: d.resolve("cuMemHostAlloc", v, 0, "cuMemHostAlloc")?,
            free_host: d.resolve("cuMemFreeHost", v, 0, "cuMemFreeHost")?,
            host_register: d.resolve("cuMemHostRegister", v, 0, "cuMemHostRegister_v2")?,
            host_unregister: d.resolve("cuMemHostUnregister", v, 0, "cuMemHostUnregister")?,
            // The runtime's PFN_cuCtxCreate_v3020 typedef asks for version 3020.
            ctx_create: d.resolve("cuCtxCreate", 3020, 0, "cuCtxCreate_v2")?,
            ctx_create_v3: d.resolve("cuCtxCreate", v, 0, "cuCtxCreate_v3")?,
            ctx_destroy: d.resolve("cuCtxDestroy", v, 0, "cuCtxDestroy_v2")?,
            primary_retain: d.resolve(
                "cuDevicePrimaryCtxRetain",
                v,
                0,
                "cuDevicePrimaryCtxRetain",
            )?,
            primary_release: d.resolve(
                "cuDevicePrimaryCtxRelease",
                v,
                0,
                "cuDevicePrimaryCtxRelease_v2",
            )?,
            set_current: d.resolve("cuCtxSetCurrent", v, 0, "cuCtxSetCurrent")?,
            get_current: d.resolve("cuCtxGetCurrent", v, 0, "cuCtxGetCurrent")?,
            push_current: d.resolve("cuCtxPushCurrent", v, 0, "cuCtxPushCurrent_v2")?,
            pop_current: d.resolve("cuCtxPopCurrent", v, 0, "cuCtxPopCurrent_v2")?,
            synchronize: d.resolve("cuCtxSynchronize", v, 0, "cuCtxSynchronize")?,
            stream_sync: d.resolve("cuStreamSynchronize", v, 0, "cuStreamSynchronize")?,
            event_create: d.resolve("cuEventCreate", v, 0, "cuEventCreate")?,
            event_sync: d.resolve("cuEventSynchronize", v, 0, "cuEventSynchronize")?,
            event_destroy: d.resolve("cuEventDestroy", v, 0, "cuEventDestroy_v2")?,
            htod: d.resolve("cuMemcpyHtoD", v, 0, "cuMemcpyHtoD_v2")?,
            htod_async: d.resolve("cuMemcpyHtoDAsync", v, 0, "cuMemcpyHtoDAsync_v2")?,
        })
    }
}

impl Ptsz {
    pub fn load(d: &Driver) -> anyhow::Result<Ptsz> {
        let (v, f) = (CUDA_VERSION, PER_THREAD);
        Ok(Ptsz {
            stream_sync: d.resolve("cuStreamSynchronize", v, f, "cuStreamSynchronize_ptsz")?,
            alloc_async: d.resolve("cuMemAllocAsync", v, f, "cuMemAllocAsync_ptsz")?,
            alloc_from_pool: d.resolve(
                "cuMemAllocFromPoolAsync",
                v,
                f,
                "cuMemAllocFromPoolAsync_ptsz",
            )?,
            free_async: d.resolve("cuMemFreeAsync", v, f, "cuMemFreeAsync_ptsz")?,
            htod: d.resolve("cuMemcpyHtoD", v, f, "cuMemcpyHtoD_v2_ptds")?,
            htod_async: d.resolve("cuMemcpyHtoDAsync", v, f, "cuMemcpyHtoDAsync_v2_ptsz")?,
        })
    }
}

thread_local! {
    /// The context this thread made current through the helpers below.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// Deterministic sizes: xorshift64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `lo..=hi`, rounded down to a multiple of `align` (at least `lo`).
    pub fn size(&mut self, lo: u64, hi: u64, align: u64) -> u64 {
        let v = lo + self.next() % (hi - lo + 1);
        (v / align * align).max(lo)
    }
}

pub struct Rt {
    pub d: Driver,
    pub cu: Cu,
    pub book: Mutex<Book>,
    pub device: c_int,
    pub primary: u64,
    pub init_ret: u32,
    pub driver_version: c_int,
    pub device_count: c_int,
    pub peak_tolerance: Mutex<u64>,
    host_src: Vec<u8>,
}

fn p(v: u64) -> P {
    v as P
}

impl Rt {
    /// Resolves the entry points and initializes like a runtime does on the
    /// main thread: cuInit, device query, primary context retained and current.
    pub fn start(d: Driver) -> anyhow::Result<Rt> {
        let cu = Cu::load(&d)?;
        let init_ret = call!(d, cu.init, 0);
        let mut version = 0;
        call!(d, cu.driver_version, &mut version);
        let mut count = 0;
        call!(d, cu.device_count, &mut count);
        let mut device = 0;
        call!(d, cu.device_get, &mut device, 0);
        let mut total = 0usize;
        call!(d, cu.total_mem, &mut total, device);
        let mut rt = Rt {
            d,
            cu,
            book: Mutex::new(Book::default()),
            device,
            primary: 0,
            init_ret,
            driver_version: version,
            device_count: count,
            peak_tolerance: Mutex::new(0),
            host_src: vec![0x5a; 64 * MIB as usize],
        };
        rt.primary = rt.thread_init();
        Ok(rt)
    }

    /// The host buffer that fills copy from.
    pub fn host_src(&self) -> u64 {
        self.host_src.as_ptr() as u64
    }

    /// The host buffer's length.
    pub fn host_len(&self) -> u64 {
        self.host_src.len() as u64
    }

    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn widen_peak_tolerance(&self, bytes: u64) {
        let mut t = self
            .peak_tolerance
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *t = (*t).max(bytes);
    }

    /// What every runtime thread does before its first call: retain the
    /// primary context and make it current. Returns the context.
    pub fn thread_init(&self) -> u64 {
        let mut ctx: P = std::ptr::null_mut();
        call!(self.d, self.cu.primary_retain, &mut ctx, self.device);
        call!(self.d, self.cu.set_current, ctx);
        CURRENT.with(|c| c.set(ctx as u64));
        ctx as u64
    }

    pub fn current(&self) -> u64 {
        CURRENT.with(|c| c.get())
    }

    // --- device memory -----------------------------------------------------

    pub fn alloc(&self, bytes: u64, label: Label) -> Option<u64> {
        let mut ptr = 0u64;
        let r = call!(self.d, self.cu.mem_alloc, &mut ptr, bytes as usize);
        self.d.bytes(self.cu.mem_alloc.name, bytes, r);
        (r == 0).then(|| {
            self.book().add(Key::Ptr(ptr), bytes, label, self.current());
            ptr
        })
    }

    pub fn free(&self, ptr: u64) -> u32 {
        self.book().remove(Key::Ptr(ptr));
        call!(self.d, self.cu.mem_free, ptr)
    }

    /// Fills `[ptr, ptr + bytes)` from host memory, in chunks of the host buffer.
    pub fn fill(&self, htod: Sym<FnHtoD>, ptr: u64, bytes: u64) {
        let mut off = 0;
        while off < bytes {
            let n = (bytes - off).min(self.host_src.len() as u64);
            call!(
                self.d,
                htod,
                ptr + off,
                self.host_src.as_ptr().cast(),
                n as usize
            );
            off += n;
        }
    }

    pub fn fill_async(&self, htod: Sym<FnHtoDAsync>, ptr: u64, bytes: u64) {
        let n = bytes.min(self.host_src.len() as u64) as usize;
        call!(
            self.d,
            htod,
            ptr,
            self.host_src.as_ptr().cast(),
            n,
            std::ptr::null_mut()
        );
    }

    /// A pitched allocation; returns the pointer and pitch × height.
    pub fn alloc_pitch(&self, width: u64, height: u64, label: Label) -> Option<(u64, u64)> {
        let (mut ptr, mut pitch) = (0u64, 0usize);
        let r = call!(
            self.d,
            self.cu.mem_alloc_pitch,
            &mut ptr,
            &mut pitch,
            width as usize,
            height as usize,
            4
        );
        let bytes = if r == 0 {
            pitch as u64 * height
        } else {
            width * height
        };
        self.d.bytes(self.cu.mem_alloc_pitch.name, bytes, r);
        (r == 0).then(|| {
            self.book().add(Key::Ptr(ptr), bytes, label, self.current());
            (ptr, bytes)
        })
    }

    // --- arrays ------------------------------------------------------------

    pub fn array2d(&self, w: u64, h: u64, format: u32, ch: u32, label: Label) -> Option<u64> {
        let desc = ArrayDesc {
            width: w as usize,
            height: h as usize,
            format,
            channels: ch,
        };
        let mut a: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.array_create, &mut a, &desc);
        let bytes = array_bytes(w, h, 0, format, ch);
        self.d.bytes(self.cu.array_create.name, bytes, r);
        (r == 0).then(|| {
            self.book()
                .add(Key::Array(a as u64), bytes, label, self.current());
            a as u64
        })
    }

    pub fn array3d(&self, dims: [u64; 3], format: u32, ch: u32, label: Label) -> Option<u64> {
        let desc = Array3DDesc {
            width: dims[0] as usize,
            height: dims[1] as usize,
            depth: dims[2] as usize,
            format,
            channels: ch,
            flags: 0,
        };
        let mut a: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.array3d_create, &mut a, &desc);
        let bytes = array_bytes(dims[0], dims[1], dims[2], format, ch);
        self.d.bytes(self.cu.array3d_create.name, bytes, r);
        (r == 0).then(|| {
            self.book()
                .add(Key::Array(a as u64), bytes, label, self.current());
            a as u64
        })
    }

    pub fn mipmap(
        &self,
        dims: [u64; 3],
        format: u32,
        ch: u32,
        levels: u32,
        label: Label,
    ) -> Option<u64> {
        let desc = Array3DDesc {
            width: dims[0] as usize,
            height: dims[1] as usize,
            depth: dims[2] as usize,
            format,
            channels: ch,
            flags: 0,
        };
        let mut a: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.mipmap_create, &mut a, &desc, levels);
        let bytes = mipmap_bytes(dims, format, ch, levels);
        self.d.bytes(self.cu.mipmap_create.name, bytes, r);
        (r == 0).then(|| {
            self.book()
                .add(Key::Array(a as u64), bytes, label, self.current());
            a as u64
        })
    }

    pub fn array_destroy(&self, a: u64, mipmapped: bool) {
        self.book().remove(Key::Array(a));
        if mipmapped {
            call!(self.d, self.cu.mipmap_destroy, p(a));
        } else {
            call!(self.d, self.cu.array_destroy, p(a));
        }
    }

    // --- stream-ordered pools ----------------------------------------------

    pub fn default_pool(&self) -> Option<u64> {
        let mut pool: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.default_pool, &mut pool, self.device);
        (r == 0).then_some(pool as u64)
    }

    /// `cuMemAllocAsync(_ptsz)` from the current device's default pool `pool`.
    pub fn alloc_async(&self, f: Sym<FnAllocAsync>, pool: u64, bytes: u64) -> Option<u64> {
        let mut ptr = 0u64;
        let r = call!(self.d, f, &mut ptr, bytes as usize, std::ptr::null_mut());
        self.d.bytes(f.name, bytes, r);
        (r == 0).then(|| {
            self.book()
                .pool_alloc(pool, ptr, bytes, Label::Dynamic, self.current());
            ptr
        })
    }

    pub fn alloc_from_pool(&self, f: Sym<FnAllocFromPool>, pool: u64, bytes: u64) -> Option<u64> {
        let mut ptr = 0u64;
        let r = call!(
            self.d,
            f,
            &mut ptr,
            bytes as usize,
            p(pool),
            std::ptr::null_mut()
        );
        self.d.bytes(f.name, bytes, r);
        (r == 0).then(|| {
            self.book()
                .pool_alloc(pool, ptr, bytes, Label::Dynamic, self.current());
            ptr
        })
    }

    /// `cuMemAllocFromPoolAsync` from a pool of managed or host memory: host memory.
    pub fn alloc_from_host_pool(&self, pool: u64, bytes: u64) -> Option<u64> {
        let f = self.cu.alloc_from_pool;
        let mut ptr = 0u64;
        let r = call!(
            self.d,
            f,
            &mut ptr,
            bytes as usize,
            p(pool),
            std::ptr::null_mut()
        );
        self.d.bytes(f.name, bytes, r);
        (r == 0).then(|| {
            self.book().host_add(ptr, bytes, None);
            ptr
        })
    }

    /// `cuMemFreeAsync` of an allocation from a pool of managed or host memory.
    pub fn free_host_pooled(&self, ptr: u64) {
        self.book().host_remove(ptr);
        call!(self.d, self.cu.free_async, ptr, std::ptr::null_mut());
    }

    pub fn free_async(&self, f: Sym<FnFreeAsync>, ptr: u64) {
        self.book().remove(Key::Ptr(ptr));
        call!(self.d, f, ptr, std::ptr::null_mut());
    }

    pub fn pool_create(&self) -> Option<u64> {
        self.pool_create_of(1, 1, self.device)
    }

    /// `cuMemPoolCreate` of allocation type `alloc_type` (1 pinned, 2 managed) at location
    /// `kind` (1 device, 2 host, 3 host NUMA node), `id`.
    pub fn pool_create_of(&self, alloc_type: u32, kind: u32, id: c_int) -> Option<u64> {
        self.pool_create_shareable(alloc_type, kind, id, 0)
    }

    /// `cuMemPoolCreate` whose pool and pointers may be exported as `handle_types`
    /// (`CUmemAllocationHandleType` bits; 0 for none).
    pub fn pool_create_shareable(
        &self,
        alloc_type: u32,
        kind: u32,
        id: c_int,
        handle_types: u32,
    ) -> Option<u64> {
        let props = PoolProps {
            alloc_type,
            handle_types,
            location: MemLocation { kind, id },
            win32_security: std::ptr::null_mut(),
            max_size: 0,
            reserved: [0; 56],
        };
        let mut pool: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.pool_create, &mut pool, &props);
        (r == 0).then_some(pool as u64)
    }

    pub fn pool_trim(&self, pool: u64, keep: u64) {
        if call!(self.d, self.cu.pool_trim, p(pool), keep as usize) == 0 {
            self.book().pool_trim(pool, keep);
        }
    }

    /// `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD` of `pool`: what it keeps reserved at a
    /// synchronization.
    pub fn pool_set_threshold(&self, pool: u64, threshold: u64) {
        let mut v = threshold;
        let attr = 4; // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
        if call!(
            self.d,
            self.cu.pool_set_attr,
            p(pool),
            attr,
            (&raw mut v).cast()
        ) == 0
        {
            self.book().pool_threshold(pool, threshold);
        }
    }

    /// `cuCtxSynchronize`: pools give back what they hold above their release threshold.
    pub fn synchronize(&self) {
        self.sync(SyncPoint::Context);
    }

    /// A synchronization of the kind asked: pools give back what they hold above their
    /// release threshold.
    pub fn sync(&self, kind: SyncPoint) {
        let r = match kind {
            SyncPoint::Context => call!(self.d, self.cu.synchronize),
            SyncPoint::Stream => call!(self.d, self.cu.stream_sync, std::ptr::null_mut()),
            SyncPoint::StreamPerThread => match Ptsz::load(&self.d) {
                Ok(pt) => call!(self.d, pt.stream_sync, std::ptr::null_mut()),
                Err(e) => {
                    eprintln!("cuStreamSynchronize_ptsz: {e}");
                    return;
                }
            },
            SyncPoint::Event => {
                let mut event: P = std::ptr::null_mut();
                if call!(self.d, self.cu.event_create, &mut event, 0) != 0 {
                    return;
                }
                let r = call!(self.d, self.cu.event_sync, event);
                call!(self.d, self.cu.event_destroy, event);
                r
            }
        };
        if r == 0 {
            self.book().sync();
        }
    }

    pub fn pool_destroy(&self, pool: u64) {
        if call!(self.d, self.cu.pool_destroy, p(pool)) == 0 {
            self.book().pool_destroy(pool);
        }
    }

    // --- virtual memory management -------------------------------------------

    pub fn granularity(&self) -> u64 {
        let prop = AllocProp::pinned(1, self.device);
        let mut g = 0usize;
        let r = call!(self.d, self.cu.granularity, &mut g, &prop, 0);
        if r == 0 && g > 0 { g as u64 } else { 2 * MIB }
    }

    /// `cuMemCreate`; `label` `None` makes it host-located.
    pub fn mem_create(&self, bytes: u64, label: Option<Label>) -> Option<u64> {
        self.mem_create_shareable(bytes, label, 0)
    }

    /// `cuMemCreate` that may be exported as `handle_types` (`requestedHandleTypes`).
    pub fn mem_create_shareable(
        &self,
        bytes: u64,
        label: Option<Label>,
        handle_types: u32,
    ) -> Option<u64> {
        let mut prop = match label {
            Some(_) => AllocProp::pinned(1, self.device),
            None => AllocProp::pinned(2, 0),
        };
        prop.handle_types = handle_types;
        let mut h = 0u64;
        let r = call!(self.d, self.cu.mem_create, &mut h, bytes as usize, &prop, 0);
        self.d.bytes(self.cu.mem_create.name, bytes, r);
        (r == 0).then(|| {
            self.book().phys_create(h, bytes, label);
            h
        })
    }

    pub fn mem_release(&self, h: u64) {
        if call!(self.d, self.cu.mem_release, h) == 0 {
            self.book().phys_release(h);
        }
    }

    pub fn reserve(&self, bytes: u64) -> Option<u64> {
        let mut va = 0u64;
        let r = call!(self.d, self.cu.reserve, &mut va, bytes as usize, 0, 0, 0);
        (r == 0).then_some(va)
    }

    pub fn map(&self, va: u64, bytes: u64, h: u64) -> bool {
        let ok = call!(self.d, self.cu.map, va, bytes as usize, 0, h, 0) == 0;
        if ok {
            self.book().map(va, bytes, h);
        }
        ok
    }

    pub fn set_access(&self, va: u64, bytes: u64) {
        let desc = AccessDesc {
            location: MemLocation {
                kind: 1,
                id: self.device,
            },
            flags: 3,
        };
        call!(self.d, self.cu.set_access, va, bytes as usize, &desc, 1);
    }

    pub fn unmap(&self, va: u64, bytes: u64) {
        if call!(self.d, self.cu.unmap, va, bytes as usize) == 0 {
            self.book().unmap(va, bytes);
        }
    }

    pub fn addr_free(&self, va: u64, bytes: u64) {
        call!(self.d, self.cu.addr_free, va, bytes as usize);
    }

    // --- host memory -------------------------------------------------------

    pub fn alloc_managed(&self, bytes: u64) -> Option<u64> {
        let mut ptr = 0u64;
        let r = call!(self.d, self.cu.alloc_managed, &mut ptr, bytes as usize, 1);
        self.d.bytes(self.cu.alloc_managed.name, bytes, r);
        (r == 0).then(|| {
            self.book().host_add(ptr, bytes, Some(self.current()));
            ptr
        })
    }

    pub fn free_managed(&self, ptr: u64) {
        self.book().host_remove(ptr);
        call!(self.d, self.cu.mem_free, ptr);
    }

    /// Pinned host memory from `cuMemAllocHost_v2`; it is written to, to show
    /// it is real memory.
    pub fn alloc_host(&self, bytes: u64) -> Option<u64> {
        let mut hp: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.alloc_host, &mut hp, bytes as usize);
        self.d.bytes(self.cu.alloc_host.name, bytes, r);
        (r == 0 && !hp.is_null()).then(|| {
            // SAFETY: the driver returned `bytes` bytes of host memory at `hp`.
            unsafe { std::ptr::write_bytes(hp.cast::<u8>(), 0x11, bytes as usize) };
            self.book().host_add(hp as u64, bytes, Some(self.current()));
            hp as u64
        })
    }

    pub fn host_alloc(&self, bytes: u64, flags: c_uint) -> Option<u64> {
        let mut hp: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.host_alloc, &mut hp, bytes as usize, flags);
        self.d.bytes(self.cu.host_alloc.name, bytes, r);
        (r == 0).then(|| {
            self.book().host_add(hp as u64, bytes, Some(self.current()));
            hp as u64
        })
    }

    pub fn free_host(&self, hp: u64) {
        self.book().host_remove(hp);
        call!(self.d, self.cu.free_host, p(hp));
    }

    pub fn register(&self, buf: &mut [u8]) -> bool {
        let bytes = buf.len() as u64;
        let r = call!(
            self.d,
            self.cu.host_register,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0
        );
        self.d.bytes(self.cu.host_register.name, bytes, r);
        if r == 0 {
            self.book()
                .host_add(buf.as_ptr() as u64, bytes, Some(self.current()));
        }
        r == 0
    }

    pub fn unregister(&self, buf: &mut [u8]) {
        self.book().host_remove(buf.as_ptr() as u64);
        call!(self.d, self.cu.host_unregister, buf.as_mut_ptr().cast());
    }

    // --- contexts ----------------------------------------------------------

    /// `cuCtxCreate_v2`: the new context becomes current.
    pub fn ctx_create(&self, device: c_int) -> Option<u64> {
        let mut ctx: P = std::ptr::null_mut();
        let r = call!(self.d, self.cu.ctx_create, &mut ctx, 0, device);
        (r == 0).then(|| {
            CURRENT.with(|c| c.set(ctx as u64));
            ctx as u64
        })
    }

    /// `cuCtxCreate_v3` with no affinity parameters.
    pub fn ctx_create_v3(&self, device: c_int) -> Option<u64> {
        let mut ctx: P = std::ptr::null_mut();
        let r = call!(
            self.d,
            self.cu.ctx_create_v3,
            &mut ctx,
            std::ptr::null_mut(),
            0,
            0,
            device
        );
        (r == 0).then(|| {
            CURRENT.with(|c| c.set(ctx as u64));
            ctx as u64
        })
    }

    /// `cuCtxCreate_v4` (`create`, resolved by the caller) with empty parameters and `flags`.
    pub fn ctx_create_v4(
        &self,
        create: Sym<FnCtxCreate4>,
        device: c_int,
        flags: c_uint,
    ) -> Option<u64> {
        let mut ctx: P = std::ptr::null_mut();
        let params = CtxCreateParams::none();
        let r = call!(self.d, create, &mut ctx, &params, flags, device);
        (r == 0).then(|| {
            CURRENT.with(|c| c.set(ctx as u64));
            ctx as u64
        })
    }

    /// Destroys `ctx`; `then_current` is what the thread's stack has on top
    /// afterwards.
    pub fn ctx_destroy(&self, ctx: u64, then_current: u64) {
        if call!(self.d, self.cu.ctx_destroy, p(ctx)) == 0 {
            self.book().ctx_destroyed(ctx);
            if self.current() == ctx {
                CURRENT.with(|c| c.set(then_current));
            }
        }
    }

    pub fn push(&self, ctx: u64) {
        if call!(self.d, self.cu.push_current, p(ctx)) == 0 {
            CURRENT.with(|c| c.set(ctx));
        }
    }

    /// Pops the current context; `below` is the context under it.
    pub fn pop(&self, below: u64) {
        let mut ctx: P = std::ptr::null_mut();
        if call!(self.d, self.cu.pop_current, &mut ctx) == 0 {
            CURRENT.with(|c| c.set(below));
        }
    }
}

pub fn format_size(format: u32) -> u64 {
    match format {
        0x01 | 0x08 => 1,
        0x02 | 0x09 | 0x10 => 2,
        _ => 4,
    }
}

/// Bytes of an array: W × max(H,1) × max(D,1) × channels × element size.
pub fn array_bytes(w: u64, h: u64, d: u64, format: u32, ch: u32) -> u64 {
    w * h.max(1) * d.max(1) * u64::from(ch) * format_size(format)
}

/// Bytes of a mipmapped array: the sum of its levels, each halving every
/// nonzero dimension down to 1.
pub fn mipmap_bytes(dims: [u64; 3], format: u32, ch: u32, levels: u32) -> u64 {
    (0..levels.min(32))
        .map(|l| {
            let s = |v: u64| if v == 0 { 0 } else { (v >> l).max(1) };
            array_bytes(s(dims[0]), s(dims[1]), s(dims[2]), format, ch)
        })
        .sum()
}
