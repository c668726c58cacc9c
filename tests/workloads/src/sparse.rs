//! Sparse arrays (`CUDA_ARRAY3D_SPARSE`, `CUDA_ARRAY3D_DEFERRED_MAPPING`) and
//! `cuMemMapArrayAsync` (CUDA 11.1): an array made so has no memory of its own; VMM memory
//! mapped into its regions is kept by each mapping.
//!
//! - A sparse 1024 × 1024 array of floats (4 MiB described, none made): 2 MiB of weights
//!   mapped into its left half (`cuMemMapArrayAsync`), 2 MiB of KV cache into its right half
//!   (`cuMemMapArrayAsync_ptsz`), both handles released at once (kept by the mappings); the
//!   left half unmapped (the weights go), then the array destroyed (the KV cache goes).
//! - A deferred-mapping array of the same shape with 2 MiB of weights mapped into its mip
//!   tail and released: live at exit, held by the mapping alone.

use std::ffi::{c_int, c_uint};

use serde_json::json;

use crate::book::Label::{KvCache, Weights};
use crate::call;
use crate::driver::*;
use crate::rt::{MIB, Rt};
use crate::scenarios::Extra;

/// `CUarrayMapInfo` (the subresource union 32 bytes, 8-aligned).
#[repr(C)]
pub struct ArrayMapInfo {
    pub resource_type: c_int,
    pub resource: u64,
    pub subresource_type: c_int,
    pub subresource: [u64; 4],
    pub mem_operation_type: c_int,
    pub mem_handle_type: c_int,
    pub mem_handle: u64,
    pub offset: u64,
    pub device_bit_mask: c_uint,
    pub flags: c_uint,
    pub reserved: [c_uint; 2],
}

pub type FnMapArray = unsafe extern "C" fn(*const ArrayMapInfo, c_uint, P) -> R;

/// `CUDA_ARRAY3D_SPARSE`, `CUDA_ARRAY3D_DEFERRED_MAPPING`.
pub const ARRAY3D_SPARSE: u32 = 0x40;
pub const ARRAY3D_DEFERRED_MAPPING: u32 = 0x80;
const FLOAT: u32 = 0x20;
const MAP: c_int = 1;
const UNMAP: c_int = 2;

impl ArrayMapInfo {
    /// A region of mip level 0 of array `array`: `[x, y, z, width, height, depth]` in
    /// elements; mapped to `handle` (`Some`) or unmapped.
    pub fn level(array: u64, r: [u64; 6], handle: Option<u64>) -> Self {
        let pack = |lo: u64, hi: u64| (lo & 0xffff_ffff) | (hi << 32);
        ArrayMapInfo::new(
            array,
            0,
            [
                pack(0, 0),
                pack(r[0], r[1]),
                pack(r[2], r[3]),
                pack(r[4], r[5]),
            ],
            handle,
        )
    }

    /// `bytes` of the mip tail of layer 0, from `offset`.
    pub fn miptail(array: u64, offset: u64, bytes: u64, handle: Option<u64>) -> Self {
        ArrayMapInfo::new(array, 1, [0, offset, bytes, 0], handle)
    }

    fn new(array: u64, subresource_type: c_int, sub: [u64; 4], handle: Option<u64>) -> Self {
        ArrayMapInfo {
            resource_type: 0,
            resource: array,
            subresource_type,
            subresource: sub,
            mem_operation_type: if handle.is_some() { MAP } else { UNMAP },
            mem_handle_type: 0,
            mem_handle: handle.unwrap_or(0),
            offset: 0,
            device_bit_mask: 0,
            flags: 0,
            reserved: [0; 2],
        }
    }
}

/// A sparse (or deferred-mapping, by `flags`) 2D array of 1024 × 1024 floats.
fn sparse_array(rt: &Rt, flags: u32) -> Option<u64> {
    let desc = Array3DDesc {
        width: 1024,
        height: 1024,
        depth: 0,
        format: FLOAT,
        channels: 1,
        flags,
    };
    let mut a: P = std::ptr::null_mut();
    let r = call!(rt.d, rt.cu.array3d_create, &mut a, &desc);
    // What it describes; none of it is made.
    rt.d.bytes(rt.cu.array3d_create.name, 4 * MIB, r);
    (r == 0).then(|| {
        rt.book().sparse_array(a as u64);
        a as u64
    })
}

pub fn sparse_arrays(rt: &Rt) -> anyhow::Result<Extra> {
    let d = &rt.d;
    let map: Sym<FnMapArray> = d.resolve("cuMemMapArrayAsync", 12000, 0, "cuMemMapArrayAsync")?;
    let map_pt: Sym<FnMapArray> = d.resolve(
        "cuMemMapArrayAsync",
        12000,
        PER_THREAD,
        "cuMemMapArrayAsync_ptsz",
    )?;
    let half = 2 * MIB;
    let (left, right) = ([0, 0, 0, 512, 1024, 1], [512, 0, 0, 512, 1024, 1]);
    let mut calls = Vec::new();
    let mut run = |f: Sym<FnMapArray>, what: &str, info: &ArrayMapInfo| {
        let r = call!(d, f, info, 1, std::ptr::null_mut());
        calls.push(json!({"what": what, "api": f.name, "ret": r}));
        r == 0
    };
    let mut arrays = Vec::new();
    if let Some(a) = sparse_array(rt, ARRAY3D_SPARSE) {
        arrays.push(a);
        if let Some(w) = rt.mem_create(half, Some(Weights)) {
            if run(map, "map weights", &ArrayMapInfo::level(a, left, Some(w))) {
                rt.book().array_map(a, left, w);
            }
            rt.mem_release(w);
        }
        if let Some(kv) = rt.mem_create(half, Some(KvCache)) {
            if run(
                map_pt,
                "map kv cache",
                &ArrayMapInfo::level(a, right, Some(kv)),
            ) {
                rt.book().array_map(a, right, kv);
            }
            rt.mem_release(kv);
        }
        if run(map, "unmap weights", &ArrayMapInfo::level(a, left, None)) {
            rt.book().array_unmap(a, left);
        }
        rt.book().sparse_array_destroy(a);
        call!(d, rt.cu.array_destroy, a as P);
    }
    if let Some(a) = sparse_array(rt, ARRAY3D_DEFERRED_MAPPING) {
        arrays.push(a);
        if let Some(w) = rt.mem_create(half, Some(Weights)) {
            if run(
                map,
                "map live weights",
                &ArrayMapInfo::miptail(a, 0, half, Some(w)),
            ) {
                rt.book().array_map(a, [0, 0, 0, half, 0, 0], w);
            }
            rt.mem_release(w);
        }
    }
    let mut extra = Extra::new();
    extra.insert("sparse".into(), json!({"arrays": arrays, "calls": calls}));
    Ok(extra)
}
