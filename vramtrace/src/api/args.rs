//! Reading one call's registers, out-parameters and memory windows: what the decoders of the
//! table in [`super::APIS`] are given, and the readers of the structures they share.

use vramtrace_common::{CallEvent, flags};

use crate::trace::{Call, CopySrc, Mem, Record};

pub(super) const U32: u64 = 0xffff_ffff;

/// One returned (or never returned) call, as a decoder reads it.
pub struct Args<'a> {
    /// The raw event: registers, out-parameters, the blob and wide windows.
    pub ev: &'a CallEvent,
    /// The six integer arguments.
    pub a: &'a [u64; 6],
    /// Arguments and out-parameters are 32-bit (the CUDA 3.x ABI).
    pub legacy32: bool,
    /// The variant's ABI version: N of a `_vN` suffix, 1 without one.
    pub version: u32,
    /// The call returned: its result and out-parameters mean something.
    pub returned: bool,
    /// It returned `CUDA_SUCCESS`.
    pub ok: bool,
    /// The blob and wide windows were read without a fault.
    pub blob_ok: bool,
}

impl<'a> Args<'a> {
    /// The event `ev` of a variant whose arguments are 32-bit when `legacy32`, of ABI
    /// `version`.
    pub fn new(ev: &'a CallEvent, legacy32: bool, version: u32) -> Self {
        // A call that never returned has no result and no out-parameters: only what it was
        // asked.
        let returned = ev.flags & flags::NO_RETURN == 0;
        Args {
            ev,
            a: &ev.args,
            legacy32,
            version,
            returned,
            ok: returned && ev.ret == 0,
            blob_ok: ev.flags & flags::BLOB_FAULT == 0,
        }
    }

    /// A size or device pointer: the 32-bit ABI passes them as unsigned int, so the upper
    /// halves of the registers and of the out-parameter are not ours.
    pub fn word(&self, v: u64) -> u64 {
        if self.legacy32 { v & U32 } else { v }
    }

    /// Argument `i` as an `int` (a device ordinal).
    pub fn int(&self, i: usize) -> i32 {
        self.a[i] as i32
    }

    /// Argument `i` as an `unsigned int` (flags, an enum).
    pub fn uint(&self, i: usize) -> u32 {
        (self.a[i] & U32) as u32
    }

    /// What the first out-parameter points at, after the call; `None` (and marked
    /// unreadable) when reading it faulted.
    pub fn out0(&self, c: &mut Call) -> Option<u64> {
        self.out0_unmasked(c).map(|v| self.word(v))
    }

    /// The first out-parameter's 64 bits whatever the ABI (a host pointer).
    pub fn out0_unmasked(&self, c: &mut Call) -> Option<u64> {
        if self.ev.flags & flags::OUT0_FAULT != 0 {
            c.unreadable.push("out0".into());
            None
        } else {
            Some(self.ev.out[0])
        }
    }

    /// The value read through argument 2 at return (an attribute's `void *value`).
    pub fn out1(&self, c: &mut Call, what: &str) -> Option<u64> {
        if self.ev.flags & flags::OUT1_FAULT != 0 {
            c.unreadable.push(what.into());
            None
        } else {
            Some(self.ev.out[1])
        }
    }

    /// The record `made` when the call succeeded, `failed` when it returned an error,
    /// `unreturned` when it never returned: its thread ended inside it, and the record says
    /// what its arguments asked for. A call is delivered once, in place of its return, so it
    /// never doubles a record of the same call.
    pub fn done(&self, c: &mut Call, made: fn(Call) -> Record) -> Record {
        if !self.returned {
            c.ret = 0;
            Record::Unreturned(std::mem::take(c))
        } else if self.ok {
            made(std::mem::take(c))
        } else {
            Record::Failed(std::mem::take(c))
        }
    }
}

/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`.
const HANDLE_TYPE_POSIX_FD: u32 = 1;

/// An OS handle as its type has it: a file descriptor is an `int`.
pub(super) fn os_handle(handle_type: Option<u32>, raw: u64) -> u64 {
    if handle_type == Some(HANDLE_TYPE_POSIX_FD) {
        raw & U32
    } else {
        raw
    }
}

/// Which open file a successful shareable-handle call's POSIX descriptor is (read by the
/// probe as `cookie::FILE_OF_FD` asks): an identity within this recording, a keyed hash of
/// the kernel's address, never the address. `None` for other handle types, and marked
/// unreadable when the probe did not find it.
pub(super) fn file_of(d: &Args<'_>, c: &mut Call) -> Option<u64> {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    if !d.ok || c.handle_type != Some(HANDLE_TYPE_POSIX_FD) {
        return None;
    }
    if d.ev.flags & flags::FILE_UNKNOWN != 0 {
        c.unreadable.push("file".into());
        return None;
    }
    Some(
        KEY.get_or_init(std::hash::RandomState::new)
            .hash_one(d.ev.out[1]),
    )
}

/// The 64 bytes of a `CUipcMemHandle` or `CUmemPoolPtrExportData` in the wide window, in
/// hex, as they lie in memory; `None` (and marked unreadable) when the read faulted.
pub(super) fn share_of(ev: &CallEvent, c: &mut Call) -> Option<String> {
    if ev.flags & flags::BLOB_FAULT != 0 {
        c.unreadable.push("share".into());
        return None;
    }
    let mut hex = String::with_capacity(128);
    for w in ev.wide {
        for b in w.to_ne_bytes() {
            hex.push_str(&format!("{b:02x}"));
        }
    }
    Some(hex)
}

/// `CU_MEM_ALLOCATION_TYPE_MANAGED` (`cuda.h`, CUDA 13.0).
const MEM_ALLOCATION_TYPE_MANAGED: u64 = 2;

/// A pool attribute's value from the 8 bytes read at its pointer: the reuse policies are an
/// `int`, the byte counts a `cuuint64_t` (CUDA driver API reference, `CUmemPool_attribute`).
pub(super) fn pool_attr_value(attr: u32, raw: u64) -> u64 {
    if super::pool_attr::is_bytes(attr) {
        raw
    } else {
        raw & U32
    }
}

/// What a pool's allocation type and `CUmemLocation` (`{ type, id }` in one word) say of its
/// memory: host memory of a kind (managed, or pinned at a host location) with no device, or
/// device memory (no `mem`) on a device.
pub(super) fn pool_location(alloc_type: u64, location: u64) -> (Option<Mem>, Option<i32>) {
    let host_located = (2..=4).contains(&(location & U32));
    if alloc_type == MEM_ALLOCATION_TYPE_MANAGED {
        (
            Some(Mem::Managed),
            (!host_located).then_some((location >> 32) as i32),
        )
    } else if host_located {
        (Some(Mem::HostPinned), None)
    } else {
        (None, Some((location >> 32) as i32))
    }
}

/// `CUmemorytype` values (`cuda.h`).
const MEMORYTYPE_HOST: u64 = 1;
const MEMORYTYPE_DEVICE: u64 = 2;
const MEMORYTYPE_ARRAY: u64 = 3;
const MEMORYTYPE_UNIFIED: u64 = 4;

/// Reads a `CUDA_MEMCPY2D` or `CUDA_MEMCPY3D` from the windows the cookie asked for
/// (`COPY_2D`, `COPY_3D`): the source's memory type and address, the destination's device
/// address, and the bytes copied (width × height × depth; the pitch only spaces the rows). A
/// destination that is host memory or an array has no address here.
pub(super) fn copy_descriptor(three: bool, ev: &CallEvent, c: &mut Call) {
    // blob: srcMemoryType, srcHost, srcDevice, srcArray, ...
    let (src_type, src_host, src_device) = (ev.blob[0] & U32, ev.blob[1], ev.blob[2]);
    (c.src_mem, c.src) = match src_type {
        MEMORYTYPE_HOST => (Some(CopySrc::Host), Some(src_host)),
        MEMORYTYPE_DEVICE => (Some(CopySrc::Device), Some(src_device)),
        MEMORYTYPE_ARRAY => (Some(CopySrc::Array), None),
        MEMORYTYPE_UNIFIED => (Some(CopySrc::Unified), Some(src_device)),
        // Not a memory type: the source is unknown, which the Ledger never takes for host.
        _ => {
            c.unreadable.push("srcMemoryType".into());
            (Some(CopySrc::Unified), None)
        }
    };
    let w = &ev.wide;
    if three {
        // wide: dstDevice, dstArray, reserved1, dstPitch, dstHeight, WidthInBytes, Height,
        // Depth. dstMemoryType is not in the windows: a zero dstDevice is no device address.
        c.addr = (w[0] != 0).then_some(w[0]);
        c.pitch = Some(w[3]);
        c.bytes = Some(w[5].saturating_mul(w[6].max(1)).saturating_mul(w[7].max(1)));
    } else {
        // wide: dstY, dstMemoryType, dstHost, dstDevice, dstArray, dstPitch, WidthInBytes,
        // Height.
        let (dst_y, dst_type, dst_device, pitch) = (w[0], w[1] & U32, w[3], w[5]);
        if matches!(dst_type, MEMORYTYPE_DEVICE | MEMORYTYPE_UNIFIED) {
            c.addr = Some(dst_device.saturating_add(dst_y.saturating_mul(pitch)));
        }
        c.pitch = Some(pitch);
        c.bytes = Some(w[6].saturating_mul(w[7].max(1)));
    }
}

/// The descriptor an array is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrayShape {
    /// `CUDA_ARRAY_DESCRIPTOR`: Width, Height, Format, NumChannels.
    TwoD,
    /// `CUDA_ARRAY3D_DESCRIPTOR`: Width, Height, Depth, Format, NumChannels, Flags.
    ThreeD,
    /// A `CUDA_ARRAY3D_DESCRIPTOR` and a number of levels, each half the one before.
    Mipmapped,
}

/// Bytes of a CUDA array from its descriptor, as the layout implies (the driver may pad rows;
/// this is the payload it was asked for).
pub fn array_bytes(shape: ArrayShape, legacy32: bool, blob: &[u64; 5], levels: u64) -> u64 {
    // CUDA_ARRAY_DESCRIPTOR: Width, Height (size_t, or unsigned int in the 3.x ABI), Format,
    // NumChannels. CUDA_ARRAY3D_DESCRIPTOR adds Depth after Height, Flags after NumChannels.
    let two = shape == ArrayShape::TwoD;
    let words: Vec<u64> = if legacy32 {
        blob.iter()
            .flat_map(|w| [w & U32, w >> 32])
            .collect::<Vec<_>>()
    } else {
        let mut v = Vec::with_capacity(8);
        let dims = if two { 2 } else { 3 };
        v.extend_from_slice(&blob[..dims]);
        v.push(blob[dims] & U32);
        v.push(blob[dims] >> 32);
        v
    };
    let (w, h, d, format, channels) = if two {
        (words[0], words[1], 1, words[2], words[3])
    } else {
        (words[0], words[1], words[2], words[3], words[4])
    };
    let elem = match format {
        0x01 | 0x08 => 1,        // (UNSIGNED|SIGNED)_INT8
        0x02 | 0x09 | 0x10 => 2, // (UNSIGNED|SIGNED)_INT16, HALF
        0x03 | 0x0a | 0x20 => 4, // (UNSIGNED|SIGNED)_INT32, FLOAT
        _ => 1,
    };
    let base = w
        .max(1)
        .saturating_mul(h.max(1))
        .saturating_mul(d.max(1))
        .saturating_mul(channels.max(1))
        .saturating_mul(elem);
    if shape == ArrayShape::Mipmapped {
        // Each level halves every dimension: the chain adds at most a third (2D) or a
        // seventh (3D) on top of level 0; bound it by summing levels explicitly.
        let mut total = 0u64;
        let (mut lw, mut lh, mut ld) = (w.max(1), h.max(1), d.max(1));
        for _ in 0..levels.clamp(1, 32) {
            total = total.saturating_add(
                lw.saturating_mul(lh)
                    .saturating_mul(ld)
                    .saturating_mul(channels.max(1))
                    .saturating_mul(elem),
            );
            lw = (lw / 2).max(1);
            lh = (lh / 2).max(1);
            ld = (ld / 2).max(1);
        }
        total
    } else {
        base
    }
}

/// `CUmemcpy3DOperandType`: `CU_MEMCPY_OPERAND_TYPE_POINTER`.
const OPERAND_POINTER: u64 = 1;
/// `CU_MEMCPY_OPERAND_TYPE_ARRAY`.
const OPERAND_ARRAY: u64 = 2;

/// Reads the first `CUDA_MEMCPY3D_BATCH_OP` of `cuMemcpy3DBatchAsync` (`cuda.h`, CUDA 12.8;
/// 14 words): `src` (a `CUmemcpy3DOperand`: `type`, then a pointer operand's `ptr`,
/// `rowLength`, `layerHeight`, `locHint`, or an array operand's `array` and offset) in the
/// blob, words 0..5; `dst` (words 5..10) and `extent` (`width`, `height`, `depth`, words
/// 10..13) in the wide window. A pointer is a unified address; the extent counts bytes when
/// no array takes part, the array's elements otherwise (then the bytes are not known).
pub(super) fn copy_3d_batch_op(ev: &CallEvent, c: &mut Call) {
    let (src_type, src_ptr) = (ev.blob[0] & U32, ev.blob[1]);
    let w = &ev.wide;
    let (dst_type, dst_ptr) = (w[0] & U32, w[1]);
    (c.src_mem, c.src) = match src_type {
        OPERAND_POINTER => (Some(CopySrc::Unified), Some(src_ptr)),
        OPERAND_ARRAY => (Some(CopySrc::Array), None),
        _ => {
            c.unreadable.push("src.type".into());
            (Some(CopySrc::Unified), None)
        }
    };
    match dst_type {
        OPERAND_POINTER => c.addr = Some(dst_ptr),
        OPERAND_ARRAY => {}
        _ => c.unreadable.push("dst.type".into()),
    }
    if src_type == OPERAND_POINTER && dst_type == OPERAND_POINTER {
        c.bytes = Some(w[5].saturating_mul(w[6].max(1)).saturating_mul(w[7].max(1)));
    } else {
        c.unreadable.push("bytes (array elements)".into());
    }
}
