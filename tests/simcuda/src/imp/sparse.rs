//! Sparse and deferred-mapping arrays (`CUDA_ARRAY3D_SPARSE`, `CUDA_ARRAY3D_DEFERRED_MAPPING`)
//! and `cuMemMapArrayAsync` (CUDA 11.1): such an array has no memory of its own; each `MAP`
//! operation maps memory of a `cuMemCreate` handle into a region of it (a region of a mip
//! level, or of the mip tail), which keeps that memory until an `UNMAP` of a region covering
//! it or the array's destruction. Tile sizes and the region's bytes are not checked.

use std::ffi::{c_int, c_uint};

use super::{CUresult, INVALID_HANDLE, INVALID_VALUE, code, with};

/// `CUDA_ARRAY3D_SPARSE`.
pub(super) const ARRAY3D_SPARSE: u32 = 0x40;
/// `CUDA_ARRAY3D_DEFERRED_MAPPING`.
pub(super) const ARRAY3D_DEFERRED_MAPPING: u32 = 0x80;
/// `CU_ARRAY_SPARSE_SUBRESOURCE_TYPE_SPARSE_LEVEL`, `_MIPTAIL`.
const SUBRESOURCE_SPARSE_LEVEL: c_int = 0;
const SUBRESOURCE_MIPTAIL: c_int = 1;
/// `CU_MEM_OPERATION_TYPE_MAP`, `_UNMAP`.
const OPERATION_MAP: c_int = 1;
const OPERATION_UNMAP: c_int = 2;
/// `CU_RESOURCE_TYPE_ARRAY`, `_MIPMAPPED_ARRAY`.
const RESOURCE_ARRAY: c_int = 0;
const RESOURCE_MIPMAPPED_ARRAY: c_int = 1;

/// `CUarrayMapInfo`. The subresource union is 32 bytes, 8-aligned: `sparseLevel` (level,
/// layer, offsetX/Y/Z, extentWidth/Height/Depth, all `unsigned int`) or `miptail` (layer,
/// then the offset and size as `unsigned long long`).
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

/// A mapped region of an array: where it starts and how far it goes, in elements (a mip
/// level's region), or in bytes along `offset[0]` / `extent[0]` (the mip tail's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tile {
    miptail: bool,
    level: u32,
    layer: u32,
    offset: [u64; 3],
    extent: [u64; 3],
}

impl Tile {
    fn of(info: &ArrayMapInfo) -> Result<Tile, CUresult> {
        let w = info.subresource;
        let lo = |v: u64| v & 0xffff_ffff;
        match info.subresource_type {
            SUBRESOURCE_SPARSE_LEVEL => Ok(Tile {
                miptail: false,
                level: lo(w[0]) as u32,
                layer: (w[0] >> 32) as u32,
                offset: [lo(w[1]), w[1] >> 32, lo(w[2])],
                extent: [w[2] >> 32, lo(w[3]), w[3] >> 32],
            }),
            SUBRESOURCE_MIPTAIL => Ok(Tile {
                miptail: true,
                level: 0,
                layer: lo(w[0]) as u32,
                offset: [w[1], 0, 0],
                extent: [w[2], 0, 0],
            }),
            _ => Err(INVALID_VALUE),
        }
    }

    /// Whether this region lies inside `outer` (same level and layer).
    fn inside(&self, outer: &Tile) -> bool {
        self.miptail == outer.miptail
            && self.level == outer.level
            && self.layer == outer.layer
            && (0..3).all(|i| {
                self.offset[i] >= outer.offset[i]
                    && self.offset[i] + self.extent[i] <= outer.offset[i] + outer.extent[i]
            })
    }
}

/// `cuMemMapArrayAsync(CUarrayMapInfo *mapInfoList, unsigned int count, CUstream hStream)`.
pub extern "C" fn cuMemMapArrayAsync(
    list: *const ArrayMapInfo,
    count: c_uint,
    _stream: *mut std::ffi::c_void,
) -> CUresult {
    map_array(list, count)
}

pub extern "C" fn cuMemMapArrayAsync_ptsz(
    list: *const ArrayMapInfo,
    count: c_uint,
    _stream: *mut std::ffi::c_void,
) -> CUresult {
    map_array(list, count)
}

fn map_array(list: *const ArrayMapInfo, count: c_uint) -> CUresult {
    if list.is_null() || count == 0 {
        return INVALID_VALUE;
    }
    // SAFETY: non-null; the caller passes `count` `CUarrayMapInfo`s.
    let infos = unsafe { std::slice::from_raw_parts(list, count as usize) };
    code(with(|st| {
        for info in infos {
            if !matches!(
                info.resource_type,
                RESOURCE_ARRAY | RESOURCE_MIPMAPPED_ARRAY
            ) || info.flags != 0
            {
                return Err(INVALID_VALUE);
            }
            let tile = Tile::of(info)?;
            let array = st.arrays.get(&info.resource).ok_or(INVALID_HANDLE)?;
            if !array.sparse {
                return Err(INVALID_VALUE);
            }
            match info.mem_operation_type {
                OPERATION_MAP => {
                    let p = st.phys.get(&info.mem_handle).ok_or(INVALID_HANDLE)?;
                    if info.mem_handle_type != 0
                        || p.released
                        || p.imported
                        || p.dev != Some(array.dev)
                        || info.offset >= p.size
                        || array.tiles.contains_key(&tile)
                    {
                        return Err(INVALID_VALUE);
                    }
                    if let Some(a) = st.arrays.get_mut(&info.resource) {
                        a.tiles.insert(tile, info.mem_handle);
                    }
                    if let Some(p) = st.phys.get_mut(&info.mem_handle) {
                        p.binds += 1;
                    }
                }
                OPERATION_UNMAP => {
                    let gone: Vec<Tile> = array
                        .tiles
                        .keys()
                        .filter(|t| t.inside(&tile))
                        .copied()
                        .collect();
                    for t in gone {
                        let h = st
                            .arrays
                            .get_mut(&info.resource)
                            .and_then(|a| a.tiles.remove(&t));
                        if let Some(h) = h {
                            st.unbind_memory(h);
                        }
                    }
                }
                _ => return Err(INVALID_VALUE),
            }
        }
        Ok(())
    }))
}
