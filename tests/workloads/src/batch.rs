//! Batches of copies (CUDA 12.8, `_v2` in 13.0): weights filled from host memory through
//! `cuMemcpyBatchAsync` and `cuMemcpy3DBatchAsync`, a KV cache written by a batch of
//! device-to-device copies, and one batch longer than the probe reads (its copies past the
//! fourth go into buffers already filled, so what is not read changes no class).

use std::ffi::{c_int, c_uint};

use anyhow::bail;
use serde_json::json;

use crate::book::Label::{KvCache, Weights};
use crate::call;
use crate::driver::*;
use crate::rt::{MIB, Rt};
use crate::scenarios::Extra;

/// `CUmemcpyAttributes`: `srcAccessOrder`, `srcLocHint`, `dstLocHint`, `flags`.
#[repr(C)]
pub struct MemcpyAttributes {
    pub src_access_order: c_uint,
    pub src_loc_hint: MemLocation,
    pub dst_loc_hint: MemLocation,
    pub flags: c_uint,
}

/// `cuMemcpyBatchAsync` (CUDA 12.8: with `failIdx`).
pub type FnBatch = unsafe extern "C" fn(
    *const u64,
    *const u64,
    *const usize,
    usize,
    *const MemcpyAttributes,
    *const usize,
    usize,
    *mut usize,
    P,
) -> R;
/// `cuMemcpyBatchAsync_v2` (CUDA 13.0: without `failIdx`).
pub type FnBatchV2 = unsafe extern "C" fn(
    *const u64,
    *const u64,
    *const usize,
    usize,
    *const MemcpyAttributes,
    *const usize,
    usize,
    P,
) -> R;
/// `cuMemcpy3DBatchAsync(numOps, opList, failIdx, flags, hStream)` (CUDA 12.8).
pub type Fn3DBatch = unsafe extern "C" fn(usize, *const Memcpy3DBatchOp, *mut usize, u64, P) -> R;
/// `cuMemcpy3DBatchAsync_v2(numOps, opList, flags, hStream)`.
pub type Fn3DBatchV2 = unsafe extern "C" fn(usize, *const Memcpy3DBatchOp, u64, P) -> R;

/// `CUmemcpy3DOperand` of type `CU_MEMCPY_OPERAND_TYPE_POINTER` (1): `ptr`, `rowLength`,
/// `layerHeight`, `locHint`.
#[repr(C)]
pub struct Memcpy3DOperand {
    pub kind: c_int,
    pub ptr: u64,
    pub row_length: usize,
    pub layer_height: usize,
    pub loc_hint: MemLocation,
}

/// `CUDA_MEMCPY3D_BATCH_OP`.
#[repr(C)]
pub struct Memcpy3DBatchOp {
    pub src: Memcpy3DOperand,
    pub dst: Memcpy3DOperand,
    pub extent: [usize; 3],
    pub src_access_order: c_uint,
    pub flags: c_uint,
}

/// `CU_STREAM_PER_THREAD`: batches refuse the legacy NULL stream.
pub const STREAM_PER_THREAD: usize = 0x2;
/// `CU_MEMCPY_SRC_ACCESS_ORDER_STREAM`.
const ORDER_STREAM: c_uint = 1;

impl MemcpyAttributes {
    /// Source read in stream order, no location hints.
    pub fn stream_ordered() -> Self {
        MemcpyAttributes {
            src_access_order: ORDER_STREAM,
            src_loc_hint: MemLocation { kind: 0, id: 0 },
            dst_loc_hint: MemLocation { kind: 0, id: 0 },
            flags: 0,
        }
    }
}

impl Memcpy3DBatchOp {
    /// `bytes` bytes from `src` to `dst`, pointers both, in one row.
    pub fn bytes(src: u64, dst: u64, bytes: u64) -> Self {
        Memcpy3DBatchOp {
            src: pointer(src, bytes),
            dst: pointer(dst, bytes),
            extent: [bytes as usize, 1, 1],
            src_access_order: ORDER_STREAM,
            flags: 0,
        }
    }
}

fn pointer(ptr: u64, bytes: u64) -> Memcpy3DOperand {
    Memcpy3DOperand {
        kind: 1,
        ptr,
        row_length: bytes as usize,
        layer_height: 1,
        loc_hint: MemLocation { kind: 0, id: 0 },
    }
}

/// Weights: four 4 MiB buffers by one `cuMemcpyBatchAsync_v2` of four copies, two more by
/// a `cuMemcpyBatchAsync` (12.8) of two, an 8 MiB buffer by `cuMemcpy3DBatchAsync_v2`. A KV
/// cache of 8 MiB written by a batch of device-to-device copies from the weights. Then a
/// batch of six copies, the last two into buffers the first four already filled. All live at
/// exit.
pub fn batch_copies(rt: &Rt) -> anyhow::Result<Extra> {
    let d = &rt.d;
    let v2: Sym<FnBatchV2> = d.resolve("cuMemcpyBatchAsync", 13000, 0, "cuMemcpyBatchAsync_v2")?;
    let v1: Sym<FnBatch> = d.resolve("cuMemcpyBatchAsync", 12080, 0, "cuMemcpyBatchAsync")?;
    let batch_3d: Sym<Fn3DBatchV2> =
        d.resolve("cuMemcpy3DBatchAsync", 13000, 0, "cuMemcpy3DBatchAsync_v2")?;
    let stream = STREAM_PER_THREAD as P;
    let host = rt.host_src();
    let piece = 4 * MIB;
    if rt.host_len() < 2 * piece {
        bail!("batch-copies: the host buffer is under 8 MiB");
    }
    let attrs = MemcpyAttributes::stream_ordered();
    let first = [0usize];
    let mut weights = Vec::new();
    for _ in 0..6 {
        match rt.alloc(piece, Weights) {
            Some(p) => weights.push(p),
            None => bail!("batch-copies: allocation failed"),
        }
    }
    let mut batches = Vec::new();
    let mut run = |name: &str, dsts: &[u64], srcs: &[u64], sizes: &[usize], v1_call: bool| {
        let mut fail = usize::MAX;
        let ret = if v1_call {
            call!(
                d,
                v1,
                dsts.as_ptr(),
                srcs.as_ptr(),
                sizes.as_ptr(),
                dsts.len(),
                &attrs,
                first.as_ptr(),
                1,
                &mut fail,
                stream
            )
        } else {
            call!(
                d,
                v2,
                dsts.as_ptr(),
                srcs.as_ptr(),
                sizes.as_ptr(),
                dsts.len(),
                &attrs,
                first.as_ptr(),
                1,
                stream
            )
        };
        batches.push(json!({
            "name": name, "ret": ret, "dsts": dsts, "srcs": srcs, "sizes": sizes,
        }));
        ret
    };
    let n = piece as usize;
    let hosts = [host; 6];
    run("weights-v2", &weights[..4], &hosts[..4], &[n; 4], false);
    run("weights-v1", &weights[4..], &hosts[..2], &[n; 2], true);
    // 8 MiB of weights by one 3D operation: 8 rows of 1 MiB.
    let Some(big) = rt.alloc(8 * MIB, Weights) else {
        bail!("batch-copies: allocation failed");
    };
    let op = Memcpy3DBatchOp {
        src: pointer(host, MIB),
        dst: pointer(big, MIB),
        extent: [MIB as usize, 8, 1],
        src_access_order: ORDER_STREAM,
        flags: 0,
    };
    let ret_3d = call!(d, batch_3d, 1, &op, 0, stream);
    // A KV cache written from the weights: device to device, no fill.
    let Some(kv) = rt.alloc(8 * MIB, KvCache) else {
        bail!("batch-copies: allocation failed");
    };
    run(
        "kv-from-device",
        &[kv, kv + piece],
        &weights[..2],
        &[n; 2],
        false,
    );
    // Six copies into the six buffers filled above: the probe reads the first four.
    run("six", &weights, &hosts, &[n; 6], false);
    let mut extra = Extra::new();
    extra.insert(
        "batch".into(),
        json!({"batches": batches, "op3d": {"ret": ret_3d, "dst": big, "src": host, "bytes": 8 * MIB}}),
    );
    Ok(extra)
}
