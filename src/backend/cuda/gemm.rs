//! Row-major GEMMs through cuBLAS (column-major) with f32 accumulation and f32 output.
//!
//! A row-major matrix `X [r, c]` with row stride `ld` is, read column-major, `Xᵀ [c, r]` with
//! the same leading dimension. So the row-major product `C = op(A) · op(B)` is computed as the
//! column-major `Cᵀ = op(B)ᵀ · op(A)ᵀ`: cuBLAS gets `B` first with `trans_b`'s operation, then
//! `A` with `trans_a`'s, and the dimensions `(n, m, k)`.

use std::ffi::c_void;

use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};

use super::kernels::Ptr;
use super::CudaBackend;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// One (strided-batched) row-major GEMM `C = alpha · op(A) · op(B) + beta · C`; `C` is f32.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmCall {
    /// Element type of `A` and `B` (f32 or bf16).
    pub dtype: DType,
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub a: Ptr,
    /// Row stride of `A` as stored (`[m, k]`, or `[k, m]` when transposed).
    pub lda: usize,
    /// Elements between consecutive batch items of `A`.
    pub stride_a: usize,
    pub b: Ptr,
    pub ldb: usize,
    /// 0 shares one `B` among all batch items.
    pub stride_b: usize,
    pub c: Ptr,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
}

/// Equal calls do the same work: the scales compare by their bits (a NaN scale equals itself,
/// −0 differs from +0), like a traced kernel's arguments.
impl PartialEq for GemmCall {
    fn eq(&self, o: &Self) -> bool {
        let key = |g: &GemmCall| {
            (
                (g.dtype, g.trans_a, g.trans_b, g.m, g.n, g.k),
                (g.alpha.to_bits(), g.beta.to_bits()),
                (g.a, g.lda, g.stride_a, g.b, g.ldb, g.stride_b),
                (g.c, g.ldc, g.stride_c, g.batch),
            )
        };
        key(self) == key(o)
    }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Cuda(format!("GEMM {what} = {v} exceeds cuBLAS's i32")))
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl CudaBackend {
    /// Runs one GEMM call on the backend's stream. `m`, `n`, `k` and `batch` must be non-zero
    /// (callers handle empty products themselves).
    pub(crate) fn gemm(&self, g: &GemmCall) -> Result<()> {
        debug_assert!(g.m > 0 && g.n > 0 && g.k > 0 && g.batch > 0);
        if self.recorder.record(|| super::graph::Op::Gemm(*g)) {
            return Ok(());
        }
        self.counters.add(super::memory::Count::Launch);
        self.gemm_now(g)
    }

    /// [`CudaBackend::gemm`] issued to cuBLAS whether or not a step is being traced (and not
    /// counted: a capture replays it into a graph).
    pub(crate) fn gemm_now(&self, g: &GemmCall) -> Result<()> {
        let ab_type = match g.dtype {
            DType::F32 => cudaDataType_t::CUDA_R_32F,
            DType::BF16 => cudaDataType_t::CUDA_R_16BF,
            DType::I32 => return Err(Error::Cuda("GEMM of i32 tensors".into())),
        };
        let (m, n, k) = (int(g.m, "m")?, int(g.n, "n")?, int(g.k, "k")?);
        let (lda, ldb, ldc) = (int(g.lda, "lda")?, int(g.ldb, "ldb")?, int(g.ldc, "ldc")?);
        let batch = int(g.batch, "batch")?;
        let (alpha, beta) = (g.alpha, g.beta);
        let guard = self
            .blas
            .lock()
            .map_err(|_| Error::Cuda("the cuBLAS handle's lock is poisoned".into()))?;
        let handle = *guard.handle();
        self.bind()?;
        // SAFETY: the callers derive every pointer, leading dimension and stride from tensors
        // whose storage covers the addressed elements; alpha and beta are host f32 (the
        // handle's default pointer mode) as COMPUTE_32F requires.
        let r = unsafe {
            if g.batch == 1 {
                blas::gemm_ex(
                    handle,
                    op(g.trans_b),
                    op(g.trans_a),
                    n,
                    m,
                    k,
                    &alpha as *const f32 as *const c_void,
                    g.b.0 as *const c_void,
                    ab_type,
                    ldb,
                    g.a.0 as *const c_void,
                    ab_type,
                    lda,
                    &beta as *const f32 as *const c_void,
                    g.c.0 as *mut c_void,
                    cudaDataType_t::CUDA_R_32F,
                    ldc,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            } else {
                blas::gemm_strided_batched_ex(
                    handle,
                    op(g.trans_b),
                    op(g.trans_a),
                    n,
                    m,
                    k,
                    &alpha as *const f32 as *const c_void,
                    g.b.0 as *const c_void,
                    ab_type,
                    ldb,
                    g.stride_b as i64,
                    g.a.0 as *const c_void,
                    ab_type,
                    lda,
                    g.stride_a as i64,
                    &beta as *const f32 as *const c_void,
                    g.c.0 as *mut c_void,
                    cudaDataType_t::CUDA_R_32F,
                    ldc,
                    g.stride_c as i64,
                    batch,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
        };
        r.map_err(|e| Error::Cuda(format!("cuBLAS GEMM ({m}×{n}×{k}, batch {batch}): {e:?}")))
    }

    /// `c = α · op(a) · op(b)` for every (sample, head) of attention, `op(a) [m, k]`,
    /// `op(b) [k, n]`, `c [m, n]` row-major. In a [`HeadLayout::Tokens`] tensor `[B, T, H·Dh]`
    /// head `h` of sample `b` starts at `b·T·H·Dh + h·Dh` with row stride `H·Dh`; in a
    /// [`HeadLayout::Scores`] tensor `[B, H, T, T]` at `(b·H + h)·T·T`. No single stride walks
    /// both indices, so the loop runs over the smaller of `B` and `H` and batches the other.
    pub(crate) fn gemm_heads(
        &self,
        (bsz, t, heads, dh): (usize, usize, usize, usize),
        (m, n, k): (usize, usize, usize),
        a: HeadOperand,
        b: HeadOperand,
        c: HeadOperand,
        alpha: f32,
    ) -> Result<()> {
        let ld = |o: HeadOperand| match o.layout {
            HeadLayout::Tokens => heads * dh,
            HeadLayout::Scores => t,
        };
        let call = GemmCall {
            dtype: DType::F32,
            trans_a: a.trans,
            trans_b: b.trans,
            m,
            n,
            k,
            alpha,
            beta: 0.0,
            a: a.ptr,
            lda: ld(a),
            stride_a: 0,
            b: b.ptr,
            ldb: ld(b),
            stride_b: 0,
            c: c.ptr,
            ldc: ld(c),
            stride_c: 0,
            batch: 1,
        };
        // (stride between samples, stride between heads) of each operand, in elements.
        let strides = |o: HeadOperand| match o.layout {
            HeadLayout::Tokens => (t * heads * dh, dh),
            HeadLayout::Scores => (heads * t * t, t * t),
        };
        let (sa, sb, sc) = (strides(a), strides(b), strides(c));
        let bytes = 4u64; // every attention operand is f32
        let shift = |p: Ptr, elems: usize| Ptr(p.0 + elems as u64 * bytes);
        if bsz <= heads {
            for sample in 0..bsz {
                self.gemm(&GemmCall {
                    a: shift(call.a, sample * sa.0),
                    b: shift(call.b, sample * sb.0),
                    c: shift(call.c, sample * sc.0),
                    stride_a: sa.1,
                    stride_b: sb.1,
                    stride_c: sc.1,
                    batch: heads,
                    ..call
                })?;
            }
        } else {
            for h in 0..heads {
                self.gemm(&GemmCall {
                    a: shift(call.a, h * sa.1),
                    b: shift(call.b, h * sb.1),
                    c: shift(call.c, h * sc.1),
                    stride_a: sa.0,
                    stride_b: sb.0,
                    stride_c: sc.0,
                    batch: bsz,
                    ..call
                })?;
            }
        }
        Ok(())
    }
}

/// How an attention operand stores its heads (see [`CudaBackend::gemm_heads`]).
#[derive(Clone, Copy)]
pub(crate) enum HeadLayout {
    /// `[B, T, H·Dh]`: queries, keys, values and their gradients.
    Tokens,
    /// `[B, H, T, T]`: scores and probabilities.
    Scores,
}

/// One operand of [`CudaBackend::gemm_heads`]: its address, layout and whether it enters
/// transposed.
#[derive(Clone, Copy)]
pub(crate) struct HeadOperand {
    ptr: Ptr,
    layout: HeadLayout,
    trans: bool,
}

/// A `[B, T, H·Dh]` operand of [`CudaBackend::gemm_heads`].
pub(crate) fn tokens(ptr: Ptr) -> HeadOperand {
    HeadOperand {
        ptr,
        layout: HeadLayout::Tokens,
        trans: false,
    }
}

/// A `[B, H, T, T]` operand of [`CudaBackend::gemm_heads`].
pub(crate) fn scores(ptr: Ptr) -> HeadOperand {
    HeadOperand {
        ptr,
        layout: HeadLayout::Scores,
        trans: false,
    }
}

impl HeadOperand {
    /// The operand transposed (per head).
    pub(crate) fn t(self) -> Self {
        HeadOperand {
            trans: true,
            ..self
        }
    }
}
