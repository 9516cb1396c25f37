//! `Backend for CudaBackend`: every op of the trait on the device. Shape checks are the CPU
//! backend's own (shared helpers), so both backends refuse the same inputs with the same words.

use cudarc::driver::{CudaStream, LaunchConfig};
use half::bf16;

use super::gemm::{scores, tokens, GemmCall};
use super::kernels::{cfg_flat, cfg_rows, Kernels, Ptr};
use super::{nvtx, CudaBackend};
use crate::backend::shapes::{
    adamw_operands, attention_backward_dims, attention_dims, bias_dims, check_parts, concat_dims,
    cosine_backward_dims, gather_dims, layernorm_backward_dims, layernorm_dims, loss_dims,
    loss_grad, masked_backward_dims, masked_dims, matmul_dims, matmul_into_dims, row_choice_dims,
    rows_cols, same_shape, scatter_dims, split_dims, MatmulDims,
};
use crate::backend::{AdamW, Backend, Device, Gemm, LayerNormGrads, LayerNormOut, Unary};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, DType, Tensor};

const F32: DType = DType::F32;
const I32: DType = DType::I32;

/// A dimension as a kernel's `int`.
pub(super) fn int(v: usize, op: &'static str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::shape(op, format!("dimension {v} exceeds i32")))
}

/// A count as a kernel's `long long`.
pub(super) fn long(v: usize) -> i64 {
    v as i64
}

/// `p` advanced by `elems` f32 elements.
fn at(p: Ptr, elems: usize) -> Ptr {
    Ptr(p.0 + (elems * 4) as u64)
}

/// Block (32, 8) over 32 columns by a chunk of rows, for the column-sum kernels.
fn cfg_colsum(d: usize, nchunks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (d.div_ceil(32) as u32, nchunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// How a column sum over `rows` rows is cut into chunks: `(nchunks, rows per chunk)`. Aims at
/// about a thousand blocks in all, with at least 32 rows a chunk; at most 1024 chunks. The cut
/// depends only on the shape, so the summation order (and the result) is reproducible.
fn colsum_chunks(rows: usize, d: usize) -> (usize, usize) {
    let want = (1024 / d.div_ceil(32).max(1)).max(1);
    let rpc = rows.div_ceil(want).max(32);
    (rows.div_ceil(rpc), rpc)
}

/// Up to this many rows, column sums skip the partial pass.
const SMALL_COLSUM_ROWS: usize = 32;

/// One block of 1024 threads (the scalar loss reduction).
const CFG_ONE_BLOCK: LaunchConfig = LaunchConfig {
    grid_dim: (1, 1, 1),
    block_dim: (1024, 1, 1),
    shared_mem_bytes: 0,
};

/// Launcher of a per-element loss kernel: `(a, b, n, out)`.
type ElemsKernel = unsafe fn(&Kernels, &CudaStream, LaunchConfig, Ptr, Ptr, i64, Ptr) -> Result<()>;
/// Launcher of its gradient kernel: `(dloss, a, b, n, div, dx)`.
type GradKernel =
    unsafe fn(&Kernels, &CudaStream, LaunchConfig, Ptr, Ptr, Ptr, i64, i64, Ptr) -> Result<()>;

impl CudaBackend {
    /// Column sums of `x [rows, d]` (rows ≥ 1, d ≥ 1) into `out [d]`, deterministically.
    fn colsum(&self, x: Ptr, rows: usize, d: usize, out: Ptr, op: &'static str) -> Result<()> {
        if rows <= SMALL_COLSUM_ROWS {
            // A few rows (router and key batches): one launch, each thread summing its column
            // in row order, as the second pass does over the chunks' partial sums.
            return unsafe {
                self.k.colsum_final_f32(
                    &self.stream,
                    cfg_flat(d),
                    x,
                    int(rows, op)?,
                    int(d, op)?,
                    out,
                )
            };
        }
        let (nchunks, rpc) = colsum_chunks(rows, d);
        let partial = self.scratch_f32(nchunks * d)?;
        let pp = partial.ptr();
        let (r, dd) = (int(rows, op)?, int(d, op)?);
        unsafe {
            self.k.colsum_partial_f32(
                &self.stream,
                cfg_colsum(d, nchunks),
                x,
                r,
                dd,
                int(rpc, op)?,
                pp,
            )?;
            self.k
                .colsum_final_f32(&self.stream, cfg_flat(d), pp, int(nchunks, op)?, dd, out)
        }
    }

    /// The mean of `n` f32 values divided by `div`, into a fresh `[1]` tensor.
    fn mean_scalar(&self, v: Ptr, n: usize, div: usize) -> Result<Tensor> {
        let (out, po) = self.empty(&[1], F32)?;
        unsafe {
            self.k
                .reduce_mean_f32(&self.stream, CFG_ONE_BLOCK, v, long(n), long(div), po)?;
        }
        Ok(out)
    }

    /// The address of a one-element f32 upstream loss gradient.
    fn dloss_ptr(&self, t: &Tensor, op: &'static str) -> Result<Ptr> {
        loss_grad(op, t)?;
        self.ptr(t, F32, op)
    }

    /// The mean of a per-element loss of two same-shaped inputs (BCE, Bernoulli KL): `elems`
    /// writes each element's loss, reduce_mean_f32 averages them.
    fn elementwise_loss(
        &self,
        op: &'static str,
        a: &Tensor,
        b: &Tensor,
        elems: ElemsKernel,
    ) -> Result<Tensor> {
        same_shape(op, a, b)?;
        let n = a.numel();
        let (pa, pb) = (self.ptr(a, F32, op)?, self.ptr(b, F32, op)?);
        let per_elem = self.scratch_f32(n)?;
        let pe = per_elem.ptr();
        unsafe { elems(&self.k, &self.stream, cfg_flat(n), pa, pb, long(n), pe)? };
        self.mean_scalar(pe, n, n.max(1))
    }

    /// The gradient of an [`Self::elementwise_loss`]: `grad` scales by the upstream gradient
    /// over the element count (1 when empty, as the CPU backend divides).
    fn elementwise_loss_backward(
        &self,
        op: &'static str,
        dloss: &Tensor,
        a: &Tensor,
        b: &Tensor,
        grad: GradKernel,
    ) -> Result<Tensor> {
        let pg = self.dloss_ptr(dloss, op)?;
        same_shape(op, a, b)?;
        let n = a.numel();
        let (pa, pb) = (self.ptr(a, F32, op)?, self.ptr(b, F32, op)?);
        let (dx, pdx) = self.empty(a.shape(), F32)?;
        unsafe {
            grad(
                &self.k,
                &self.stream,
                cfg_flat(n),
                pg,
                pa,
                pb,
                long(n),
                long(n.max(1)),
                pdx,
            )?
        };
        Ok(dx)
    }

    /// An f32 map `out = f(x)` of one input by a flat kernel.
    fn map1(
        &self,
        x: &Tensor,
        op: &'static str,
        launch: impl FnOnce(Ptr, Ptr, i64) -> Result<()>,
    ) -> Result<Tensor> {
        let px = self.ptr(x, F32, op)?;
        let (out, po) = self.empty(x.shape(), F32)?;
        launch(px, po, long(x.numel()))?;
        Ok(out)
    }

    /// An f32 map `out = f(a, b)` of two inputs of one shape by a flat kernel.
    fn map2(
        &self,
        a: &Tensor,
        b: &Tensor,
        op: &'static str,
        launch: impl FnOnce(Ptr, Ptr, Ptr, i64) -> Result<()>,
    ) -> Result<Tensor> {
        same_shape(op, a, b)?;
        let (pa, pb) = (self.ptr(a, F32, op)?, self.ptr(b, F32, op)?);
        let (out, po) = self.empty(a.shape(), F32)?;
        launch(pa, pb, po, long(a.numel()))?;
        Ok(out)
    }

    /// The device address of an optional bias `[d]` for the rows of `x [.., d]`, or null when
    /// absent.
    fn opt_bias(&self, bias: Option<&Tensor>, x: &Tensor, op: &'static str) -> Result<Ptr> {
        let Some(b) = bias else { return Ok(Ptr(0)) };
        bias_dims(op, x, b)?;
        self.ptr(b, F32, op)
    }

    /// The cuBLAS call of a (batched) matmul; a shared 2-D `b` under an untransposed `a` folds
    /// the batch into the rows of one GEMM.
    #[allow(clippy::too_many_arguments)]
    fn matmul_call(
        &self,
        d: &MatmulDims,
        g: Gemm,
        a: &Tensor,
        b: &Tensor,
        pa: Ptr,
        pb: Ptr,
        pc: Ptr,
        beta: f32,
    ) -> GemmCall {
        let fold = !d.b_batched && !g.trans_a && d.batch > 1;
        GemmCall {
            dtype: a.dtype(),
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            m: if fold { d.batch * d.m } else { d.m },
            n: d.n,
            k: d.k,
            alpha: g.alpha,
            beta,
            a: pa,
            lda: a.dim(-1),
            stride_a: d.m * d.k,
            b: pb,
            ldb: b.dim(-1),
            stride_b: if d.b_batched { d.k * d.n } else { 0 },
            c: pc,
            ldc: d.n,
            stride_c: d.m * d.n,
            batch: if fold { 1 } else { d.batch },
        }
    }

    fn copy2d(
        &self,
        src: Ptr,
        src_ld: usize,
        dst: Ptr,
        dst_ld: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        unsafe {
            self.k.copy2d_f32(
                &self.stream,
                cfg_flat(rows * cols),
                src,
                long(src_ld),
                dst,
                long(dst_ld),
                long(rows),
                long(cols),
            )
        }
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(self.arc())
    }

    // ---- memory ---------------------------------------------------------------------------
    fn upload(&self, host: &Tensor) -> Result<Tensor> {
        let (out, p) = self.empty(host.shape(), host.dtype())?;
        // SAFETY: `out` was allocated for exactly this many elements of this dtype.
        unsafe {
            match host.cpu()? {
                CpuStorage::F32(_) => self.upload_from(p, host.f32s()?)?,
                CpuStorage::BF16(_) => self.upload_from(p, host.bf16s()?)?,
                CpuStorage::I32(_) => self.upload_from(p, host.i32s()?)?,
            }
        }
        Ok(out)
    }
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        const WHAT: &str = "download";
        let (p, n) = (self.ptr(t, t.dtype(), WHAT)?, t.numel());
        let out = match t.dtype() {
            DType::F32 => {
                let mut v = vec![0f32; n];
                self.download_into(&mut v, p, WHAT)?;
                Tensor::from_f32(v, t.shape())?
            }
            DType::BF16 => {
                let mut v = vec![bf16::ZERO; n];
                self.download_into(&mut v, p, WHAT)?;
                Tensor::from_bf16(v, t.shape())?
            }
            DType::I32 => {
                let mut v = vec![0i32; n];
                self.download_into(&mut v, p, WHAT)?;
                Tensor::from_i32(v, t.shape())?
            }
        };
        self.check_kernel_errors()?;
        Ok(out)
    }
    fn download_group(&self, ts: &[&Tensor]) -> Result<Vec<Tensor>> {
        const WHAT: &str = "download_group";
        self.not_traced(WHAT)?;
        // Each tensor at a 4-byte-aligned offset of one block, the error word last: one
        // blocking download reads the values and the kernel errors of the work before them.
        let mut offsets = Vec::with_capacity(ts.len());
        let mut words = 0usize;
        for t in ts {
            offsets.push(words);
            words += (t.numel() * t.dtype().size_bytes()).div_ceil(4);
        }
        let (_block, base) = self.empty(&[words + 1], DType::I32)?;
        for (t, &off) in ts.iter().zip(&offsets) {
            let bytes = t.numel() * t.dtype().size_bytes();
            if bytes > 0 {
                let src = self.ptr(t, t.dtype(), WHAT)?;
                // SAFETY: `src` holds `bytes` bytes of a live block; the destination range lies
                // inside `_block`, sized for every tensor's words.
                unsafe { self.memcpy_dtod(Ptr(base.0 + 4 * off as u64), src, bytes)? };
            }
        }
        let mut host = vec![0u32; words + 1];
        // SAFETY: the error word is a live 4-byte allocation; the last word of `_block` is free.
        unsafe {
            self.memcpy_dtod(Ptr(base.0 + 4 * words as u64), self.err_ptr(), 4)?;
            self.memset0(self.err_ptr(), 4)?;
        }
        self.download_into(&mut host, base, WHAT)?;
        if host[words] != 0 {
            return Err(super::kernel_error(host[words] as i32));
        }
        ts.iter()
            .zip(&offsets)
            .map(|(t, &off)| {
                let n = t.numel();
                let raw = &host[off..];
                match t.dtype() {
                    DType::F32 => Tensor::from_f32(
                        raw[..n].iter().map(|&b| f32::from_bits(b)).collect(),
                        t.shape(),
                    ),
                    DType::I32 => {
                        Tensor::from_i32(raw[..n].iter().map(|&b| b as i32).collect(), t.shape())
                    }
                    // Two bf16 per word, the lower address in the low half (little-endian).
                    DType::BF16 => Tensor::from_bf16(
                        (0..n)
                            .map(|i| bf16::from_bits((raw[i / 2] >> (16 * (i % 2))) as u16))
                            .collect(),
                        t.shape(),
                    ),
                }
            })
            .collect()
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(self.zeros_of(shape, dtype)?.0)
    }
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        const OP: &str = "cast";
        let n = x.numel();
        match (x.dtype(), dtype) {
            (a, b) if a == b => self.copy(x),
            (DType::F32, DType::BF16) => {
                let px = self.ptr(x, F32, OP)?;
                let (out, po) = self.empty(x.shape(), DType::BF16)?;
                unsafe {
                    self.k
                        .cast_f32_to_bf16(&self.stream, cfg_flat(n), px, po, long(n))?
                };
                Ok(out)
            }
            (DType::BF16, DType::F32) => {
                let px = self.ptr(x, DType::BF16, OP)?;
                let (out, po) = self.empty(x.shape(), F32)?;
                unsafe {
                    self.k
                        .cast_bf16_to_f32(&self.stream, cfg_flat(n), px, po, long(n))?
                };
                Ok(out)
            }
            (from, to) => Err(Error::Msg(format!(
                "cast from {from:?} to {to:?} is not supported"
            ))),
        }
    }
    fn copy(&self, x: &Tensor) -> Result<Tensor> {
        let px = self.ptr(x, x.dtype(), "copy")?;
        let (out, po) = self.empty(x.shape(), x.dtype())?;
        let bytes = x.numel() * x.dtype().size_bytes();
        if bytes > 0 {
            // SAFETY: both ranges are `bytes` long inside live allocations of this backend.
            unsafe { self.memcpy_dtod(po, px, bytes)? };
        }
        Ok(out)
    }
    fn synchronize(&self) -> Result<()> {
        self.sync_stream()?;
        self.check_kernel_errors()
    }

    // ---- GEMM -------------------------------------------------------------------------------
    fn matmul(&self, a: &Tensor, b: &Tensor, g: Gemm) -> Result<Tensor> {
        let _r = nvtx::range("gemm");
        let d = matmul_dims(a, b, g)?;
        let (pa, pb) = (
            self.ptr(a, a.dtype(), "matmul")?,
            self.ptr(b, a.dtype(), "matmul")?,
        );
        if d.batch * d.m * d.n == 0 || d.k == 0 {
            return self.zeros(&d.out_shape, F32);
        }
        let (out, pc) = self.empty(&d.out_shape, F32)?;
        self.gemm(&self.matmul_call(&d, g, a, b, pa, pb, pc, 0.0))?;
        Ok(out)
    }
    fn matmul_into(
        &self,
        a: &Tensor,
        b: &Tensor,
        g: Gemm,
        out: &mut Tensor,
        beta: f32,
    ) -> Result<()> {
        let _r = nvtx::range("gemm");
        const OP: &str = "matmul_into";
        let d = matmul_into_dims(a, b, g, out)?;
        let (pa, pb) = (self.ptr(a, a.dtype(), OP)?, self.ptr(b, a.dtype(), OP)?);
        let pc = self.ptr_mut(out, F32, OP)?;
        let n = out.numel();
        if n == 0 {
            return Ok(());
        }
        if d.k == 0 {
            // An empty inner dimension: out = beta · out, never reading out when beta is 0.
            if beta != 0.0 {
                return unsafe {
                    self.k
                        .ew_scale_f32(&self.stream, cfg_flat(n), pc, beta, pc, long(n))
                };
            }
            // SAFETY: `pc` addresses the `n` elements of `out`.
            unsafe { self.memset0(pc, n * 4)? };
            return Ok(());
        }
        self.gemm(&self.matmul_call(&d, g, a, b, pa, pb, pc, beta))
    }

    // ---- elementwise ----------------------------------------------------------------------
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.map2(a, b, "add", |pa, pb, po, n| unsafe {
            self.k
                .ew_add_f32(&self.stream, cfg_flat(n as usize), pa, pb, po, n)
        })
    }
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        const OP: &str = "add_assign";
        same_shape(OP, a, b)?;
        let pb = self.ptr(b, F32, OP)?;
        let pa = self.ptr_mut(a, F32, OP)?;
        let n = a.numel();
        unsafe {
            self.k
                .ew_add_assign_f32(&self.stream, cfg_flat(n), pa, pb, long(n))
        }
    }
    fn add_assign_parts(&self, dst: &mut Tensor, parts: &[(usize, &Tensor)]) -> Result<()> {
        const OP: &str = "add_assign_parts";
        check_parts(dst.numel(), parts)?;
        let pd = self.ptr_mut(dst, F32, OP)?;
        let mut table = Vec::with_capacity(3 * parts.len());
        let mut longest = 0;
        for (offset, part) in parts.iter().filter(|(_, p)| p.numel() > 0) {
            table.extend([
                self.ptr(part, F32, OP)?.0,
                pd.0 + 4 * *offset as u64,
                part.numel() as u64,
            ]);
            longest = longest.max(part.numel());
        }
        // Rows of {src, dst, n}; the grid's y dimension takes at most 65 535 parts at a time.
        for rows in table.chunks(3 * 65_535) {
            let parts = rows.len() / 3;
            let words = self.scratch_f32(2 * rows.len())?;
            let mut cfg = cfg_flat(longest);
            cfg.grid_dim.1 = parts as u32;
            // SAFETY: the scratch block holds exactly these words; each row addresses a part
            // and its disjoint destination range, both checked above.
            unsafe {
                self.upload_from(words.ptr(), rows)?;
                self.k
                    .ew_add_assign_parts_f32(&self.stream, cfg, words.ptr(), int(parts, OP)?)?;
            }
        }
        Ok(())
    }
    fn axpby(&self, y: &mut Tensor, a: f32, x: &Tensor, b: f32) -> Result<()> {
        const OP: &str = "axpby";
        same_shape(OP, y, x)?;
        let px = self.ptr(x, F32, OP)?;
        let py = self.ptr_mut(y, F32, OP)?;
        let n = y.numel();
        unsafe {
            self.k
                .ew_axpby_f32(&self.stream, cfg_flat(n), py, px, a, b, long(n))
        }
    }
    fn fill_zero(&self, t: &mut Tensor) -> Result<()> {
        let p = self.ptr_mut(t, t.dtype(), "fill_zero")?;
        let bytes = t.numel() * t.dtype().size_bytes();
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: the tensor's own range of a live block of this backend.
        unsafe { self.memset0(p, bytes) }
    }
    fn scale(&self, x: &Tensor, s: f32) -> Result<Tensor> {
        self.map1(x, "scale", |px, po, n| unsafe {
            self.k
                .ew_scale_f32(&self.stream, cfg_flat(n as usize), px, s, po, n)
        })
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.map2(a, b, "mul", |pa, pb, po, n| unsafe {
            self.k
                .ew_mul_f32(&self.stream, cfg_flat(n as usize), pa, pb, po, n)
        })
    }
    fn bias_add(&self, x: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "bias_add";
        let (_, d) = bias_dims(OP, x, b)?;
        let pb = self.ptr(b, F32, OP)?;
        self.map1(x, OP, |px, po, n| unsafe {
            self.k
                .ew_bias_add_f32(&self.stream, cfg_flat(n as usize), px, pb, po, n, long(d))
        })
    }
    fn gemm_accumulates(&self) -> bool {
        true
    }
    fn bias_add_parts(
        &self,
        y: &Tensor,
        bias: Option<&Tensor>,
        parts: &[&Tensor],
    ) -> Result<Tensor> {
        const OP: &str = "bias_add_parts";
        let (_, d) = rows_cols(y);
        let pb = self.opt_bias(bias, y, OP)?;
        // More than two parts (never in ViLT + DeLo) are summed first, in order.
        let folded;
        let parts = if parts.len() > 2 {
            let mut sum = self.add(parts[0], parts[1])?;
            for p in &parts[2..] {
                sum = self.add(&sum, p)?;
            }
            folded = sum;
            vec![&folded]
        } else {
            parts.to_vec()
        };
        let mut pp = [Ptr(0); 2];
        for (slot, p) in pp.iter_mut().zip(&parts) {
            same_shape(OP, y, p)?;
            *slot = self.ptr(p, F32, OP)?;
        }
        self.map1(y, OP, |py, po, n| unsafe {
            self.k.ew_bias_add_parts_f32(
                &self.stream,
                cfg_flat(n as usize),
                py,
                pb,
                pp[0],
                pp[1],
                po,
                n,
                long(d),
            )
        })
    }
    fn bias_gelu(&self, y: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        const OP: &str = "bias_gelu";
        let (_, d) = rows_cols(y);
        let pb = self.opt_bias(bias, y, OP)?;
        let py = self.ptr(y, F32, OP)?;
        let (pre, ppre) = self.empty(y.shape(), F32)?;
        let (out, po) = self.empty(y.shape(), F32)?;
        let n = y.numel();
        unsafe {
            self.k.ew_bias_gelu_f32(
                &self.stream,
                cfg_flat(n),
                py,
                pb,
                ppre,
                po,
                long(n),
                long(d),
            )?
        };
        Ok((pre, out))
    }
    fn sum_rows(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "sum_rows";
        let (rows, d) = rows_cols(x);
        let px = self.ptr(x, F32, OP)?;
        if rows == 0 || d == 0 {
            return self.zeros(&[d], F32);
        }
        let (out, po) = self.empty(&[d], F32)?;
        self.colsum(px, rows, d, po, OP)?;
        Ok(out)
    }
    fn unary(&self, op: Unary, x: &Tensor) -> Result<Tensor> {
        self.map1(x, op.name(), |px, po, n| unsafe {
            self.k
                .unary_forward(&self.stream, cfg_flat(n as usize), op, px, po, n)
        })
    }
    fn unary_backward(&self, op: Unary, dy: &Tensor, saved: &Tensor) -> Result<Tensor> {
        self.map2(dy, saved, op.backward_name(), |pg, ps, po, n| unsafe {
            self.k
                .unary_backward(&self.stream, cfg_flat(n as usize), op, pg, ps, po, n)
        })
    }

    // ---- normalisation and softmax ----------------------------------------------------------
    fn layernorm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<LayerNormOut> {
        let _r = nvtx::range("layernorm");
        const OP: &str = "layernorm";
        let (rows, d) = layernorm_dims(OP, x, w, b)?;
        let (px, pw, pb) = (
            self.ptr(x, F32, OP)?,
            self.ptr(w, F32, OP)?,
            self.ptr(b, F32, OP)?,
        );
        let (y, py) = self.empty(x.shape(), F32)?;
        let (mean, pm) = self.empty(&[rows], F32)?;
        let (rstd, pr) = self.empty(&[rows], F32)?;
        unsafe {
            self.k.layernorm_f32(
                &self.stream,
                cfg_rows(rows),
                px,
                pw,
                pb,
                int(rows, OP)?,
                int(d, OP)?,
                eps,
                py,
                pm,
                pr,
            )?;
        }
        Ok(LayerNormOut { y, mean, rstd })
    }
    fn add_layernorm(
        &self,
        x: &Tensor,
        y: &Tensor,
        bias: Option<&Tensor>,
        w: &Tensor,
        b: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, LayerNormOut)> {
        let _r = nvtx::range("add_layernorm");
        const OP: &str = "add_layernorm";
        same_shape(OP, x, y)?;
        let (rows, d) = layernorm_dims(OP, x, w, b)?;
        let pbias = self.opt_bias(bias, y, OP)?;
        let (px, py, pw, pb) = (
            self.ptr(x, F32, OP)?,
            self.ptr(y, F32, OP)?,
            self.ptr(w, F32, OP)?,
            self.ptr(b, F32, OP)?,
        );
        let (s, ps) = self.empty(x.shape(), F32)?;
        let (out, pout) = self.empty(x.shape(), F32)?;
        let (mean, pm) = self.empty(&[rows], F32)?;
        let (rstd, pr) = self.empty(&[rows], F32)?;
        unsafe {
            self.k.add_layernorm_f32(
                &self.stream,
                cfg_rows(rows),
                px,
                py,
                pbias,
                pw,
                pb,
                int(rows, OP)?,
                int(d, OP)?,
                eps,
                ps,
                pout,
                pm,
                pr,
            )?;
        }
        Ok((s, LayerNormOut { y: out, mean, rstd }))
    }
    fn layernorm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        affine_grads: bool,
    ) -> Result<LayerNormGrads> {
        let _r = nvtx::range("layernorm_backward");
        const OP: &str = "layernorm_backward";
        let (rows, d) = layernorm_backward_dims(dy, x, w, mean, rstd)?;
        let (pg, px, pw, pm, pr) = (
            self.ptr(dy, F32, OP)?,
            self.ptr(x, F32, OP)?,
            self.ptr(w, F32, OP)?,
            self.ptr(mean, F32, OP)?,
            self.ptr(rstd, F32, OP)?,
        );
        let (ri, di) = (int(rows, OP)?, int(d, OP)?);
        let (dx, pdx) = self.empty(x.shape(), F32)?;
        unsafe {
            self.k.layernorm_backward_f32(
                &self.stream,
                cfg_rows(rows),
                pg,
                px,
                pw,
                pm,
                pr,
                ri,
                di,
                pdx,
            )?;
        }
        let (dw, db) = if !affine_grads {
            (None, None)
        } else if rows == 0 || d == 0 {
            (Some(self.zeros(&[d], F32)?), Some(self.zeros(&[d], F32)?))
        } else {
            let (nchunks, rpc) = colsum_chunks(rows, d);
            let pdw_part = self.scratch_f32(nchunks * d)?;
            let pdb_part = self.scratch_f32(nchunks * d)?;
            let (qw, qb) = (pdw_part.ptr(), pdb_part.ptr());
            let (dw, pdw) = self.empty(&[d], F32)?;
            let (db, pdb) = self.empty(&[d], F32)?;
            let nc = int(nchunks, OP)?;
            unsafe {
                self.k.ln_affine_partial_f32(
                    &self.stream,
                    cfg_colsum(d, nchunks),
                    pg,
                    px,
                    pm,
                    pr,
                    ri,
                    di,
                    int(rpc, OP)?,
                    qw,
                    qb,
                )?;
                self.k
                    .colsum_final_f32(&self.stream, cfg_flat(d), qw, nc, di, pdw)?;
                self.k
                    .colsum_final_f32(&self.stream, cfg_flat(d), qb, nc, di, pdb)?;
            }
            (Some(dw), Some(db))
        };
        Ok(LayerNormGrads { dx, dw, db })
    }
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        const OP: &str = "softmax";
        let (rows, d) = rows_cols(x);
        let px = self.ptr(x, F32, OP)?;
        let (y, py) = self.empty(x.shape(), F32)?;
        unsafe {
            self.k.softmax_f32(
                &self.stream,
                cfg_rows(rows),
                px,
                int(rows, OP)?,
                int(d, OP)?,
                py,
            )?;
        }
        Ok(y)
    }
    fn softmax_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        const OP: &str = "softmax_backward";
        same_shape(OP, dy, y)?;
        let (rows, d) = rows_cols(y);
        let (pg, py) = (self.ptr(dy, F32, OP)?, self.ptr(y, F32, OP)?);
        let (dx, pdx) = self.empty(y.shape(), F32)?;
        unsafe {
            self.k.softmax_backward_f32(
                &self.stream,
                cfg_rows(rows),
                pg,
                py,
                int(rows, OP)?,
                int(d, OP)?,
                pdx,
            )?;
        }
        Ok(dx)
    }

    // ---- attention --------------------------------------------------------------------------
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        heads: usize,
    ) -> Result<(Tensor, Tensor)> {
        let _r = nvtx::range("attention");
        const OP: &str = "attention";
        let (bsz, t, dh) = attention_dims(q, k, v, mask, heads)?;
        let (pq, pk, pv, pmask) = (
            self.ptr(q, F32, OP)?,
            self.ptr(k, F32, OP)?,
            self.ptr(v, F32, OP)?,
            self.ptr(mask, F32, OP)?,
        );
        let rows = bsz * heads * t;
        let pshape = [bsz, heads, t, t];
        if rows == 0 {
            return Ok((self.zeros(q.shape(), F32)?, self.zeros(&pshape, F32)?));
        }
        let scale = 1.0 / (dh as f32).sqrt();
        let dims = (bsz, t, heads, dh);
        let (out, po) = self.empty(q.shape(), F32)?;
        let (probs, pp) = if dh == 0 {
            self.zeros_f32(&pshape)?
        } else {
            let (probs, pp) = self.empty(&pshape, F32)?;
            // S = scale · Q Kᵀ per (b, h)
            let (q, k, s) = (tokens(pq), tokens(pk).t(), scores(pp));
            self.gemm_heads(dims, (t, t, dh), q, k, s, scale)?;
            (probs, pp)
        };
        unsafe {
            self.k.attn_masked_softmax_f32(
                &self.stream,
                cfg_rows(rows),
                pp,
                pmask,
                int(rows, OP)?,
                int(t, OP)?,
                int(heads, OP)?,
            )?;
        }
        if dh > 0 {
            // O = P V per (b, h), into the head's columns of [B, T, H·Dh]
            let (p, v, o) = (scores(pp), tokens(pv), tokens(po));
            self.gemm_heads(dims, (t, dh, t), p, v, o, 1.0)?;
        }
        Ok((out, probs))
    }
    fn attention_backward(
        &self,
        dout: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        heads: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let _r = nvtx::range("attention_backward");
        const OP: &str = "attention_backward";
        let (bsz, t, dh) = attention_backward_dims(dout, q, k, v, probs, heads)?;
        let (d_o, q_h, k_h, v_h) = (
            tokens(self.ptr(dout, F32, OP)?),
            tokens(self.ptr(q, F32, OP)?),
            tokens(self.ptr(k, F32, OP)?),
            tokens(self.ptr(v, F32, OP)?),
        );
        let pp = self.ptr(probs, F32, OP)?;
        let p = scores(pp);
        if bsz * t * dh == 0 {
            return Ok((
                self.zeros(q.shape(), F32)?,
                self.zeros(q.shape(), F32)?,
                self.zeros(q.shape(), F32)?,
            ));
        }
        let scale = 1.0 / (dh as f32).sqrt();
        let dims = (bsz, t, heads, dh);
        let rows = bsz * heads * t;
        let (dq, pdq) = self.empty(q.shape(), F32)?;
        let (dk, pdk) = self.empty(q.shape(), F32)?;
        let (dv, pdv) = self.empty(q.shape(), F32)?;
        let ds = self.scratch_f32(rows * t)?;
        let d_s = scores(ds.ptr());
        // dV = Pᵀ · dO
        self.gemm_heads(dims, (t, dh, t), p.t(), d_o, tokens(pdv), 1.0)?;
        // dP = dO · Vᵀ
        self.gemm_heads(dims, (t, t, dh), d_o, v_h.t(), d_s, 1.0)?;
        // dS = P ⊙ (dP − rowsum(dP ⊙ P)), in place
        unsafe {
            self.k.softmax_backward_f32(
                &self.stream,
                cfg_rows(rows),
                ds.ptr(),
                pp,
                int(rows, OP)?,
                int(t, OP)?,
                ds.ptr(),
            )?;
        }
        // dQ = scale · dS · K
        self.gemm_heads(dims, (t, dh, t), d_s, k_h, tokens(pdq), scale)?;
        // dK = scale · dSᵀ · Q
        self.gemm_heads(dims, (t, dh, t), d_s.t(), q_h, tokens(pdk), scale)?;
        drop(ds);
        Ok((dq, dk, dv))
    }

    // ---- indexing ---------------------------------------------------------------------------
    fn copy_rows_where(
        &self,
        dst: &mut Tensor,
        src: &Tensor,
        choice: &Tensor,
        k: usize,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "copy_rows_where";
        let (rows, row) = row_choice_dims(dst, src, choice, k, n)?;
        let (ps, pc) = (self.ptr(src, F32, OP)?, self.ptr(choice, I32, OP)?);
        let pd = self.ptr_mut(dst, F32, OP)?;
        unsafe {
            self.k.copy_rows_where_f32(
                &self.stream,
                cfg_flat(rows * row.max(1)),
                ps,
                pc,
                int(k, OP)?,
                int(n, OP)?,
                long(rows),
                long(row),
                pd,
                self.err_ptr(),
            )
        }
    }
    fn gather_rows(&self, table: &Tensor, idx: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather_rows";
        let (m, row, shape) = gather_dims(table, idx)?;
        let (pt, pi) = (self.ptr(table, F32, OP)?, self.ptr(idx, I32, OP)?);
        let n_idx = idx.numel();
        let (out, po) = self.empty(&shape, F32)?;
        unsafe {
            self.k.gather_rows_f32(
                &self.stream,
                cfg_flat(n_idx * row.max(1)),
                pt,
                pi,
                long(n_idx),
                long(row),
                int(m, OP)?,
                po,
                self.err_ptr(),
            )?;
        }
        Ok(out)
    }
    fn scatter_add_rows(&self, dy: &Tensor, idx: &Tensor, m: usize) -> Result<Tensor> {
        const OP: &str = "scatter_add_rows";
        let n = idx.numel();
        let (row, shape) = scatter_dims(dy, idx, m)?;
        let (pg, pi) = (self.ptr(dy, F32, OP)?, self.ptr(idx, I32, OP)?);
        let (out, po) = self.zeros_f32(&shape)?;
        unsafe {
            self.k.scatter_add_rows_f32(
                &self.stream,
                cfg_flat(n * row.max(1)),
                pg,
                pi,
                long(n),
                long(row),
                int(m, OP)?,
                po,
                self.err_ptr(),
            )?;
        }
        Ok(out)
    }
    fn concat_seq(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "concat_seq";
        let (bsz, t1, t2, d) = concat_dims(a, b)?;
        let (pa, pb) = (self.ptr(a, F32, OP)?, self.ptr(b, F32, OP)?);
        let (out, po) = self.empty(&[bsz, t1 + t2, d], F32)?;
        let ld = (t1 + t2) * d;
        self.copy2d(pa, t1 * d, po, ld, bsz, t1 * d)?;
        self.copy2d(pb, t2 * d, at(po, t1 * d), ld, bsz, t2 * d)?;
        Ok(out)
    }
    fn split_seq(&self, x: &Tensor, t1: usize) -> Result<(Tensor, Tensor)> {
        const OP: &str = "split_seq";
        let (bsz, t, d) = split_dims(x, t1)?;
        let px = self.ptr(x, F32, OP)?;
        let (a, pa) = self.empty(&[bsz, t1, d], F32)?;
        let (b, pb) = self.empty(&[bsz, t - t1, d], F32)?;
        self.copy2d(px, t * d, pa, t1 * d, bsz, t1 * d)?;
        self.copy2d(at(px, t1 * d), t * d, pb, (t - t1) * d, bsz, (t - t1) * d)?;
        Ok((a, b))
    }

    // ---- reductions -------------------------------------------------------------------------
    fn masked_mean(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        const OP: &str = "masked_mean";
        let (bsz, t, d) = masked_dims(x.shape(), mask)?;
        let (px, pm) = (self.ptr(x, F32, OP)?, self.ptr(mask, F32, OP)?);
        let (out, po) = self.empty(&[bsz, d], F32)?;
        if bsz * d == 0 {
            return Ok(out);
        }
        ensure_shape!(bsz <= 65_535, OP, "batch {bsz} exceeds the grid's 65535");
        const THREADS: usize = 128;
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(THREADS) as u32, bsz as u32, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            self.k
                .masked_mean_f32(&self.stream, cfg, px, pm, int(t, OP)?, int(d, OP)?, po)?;
        }
        Ok(out)
    }
    fn masked_mean_backward(&self, dy: &Tensor, mask: &Tensor) -> Result<Tensor> {
        const OP: &str = "masked_mean_backward";
        let (bsz, t, d) = masked_backward_dims(dy, mask)?;
        let (pg, pm) = (self.ptr(dy, F32, OP)?, self.ptr(mask, F32, OP)?);
        let (out, po) = self.empty(&[bsz, t, d], F32)?;
        let rows = bsz * t;
        if rows * d == 0 {
            return Ok(out);
        }
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(rows).map_err(|_| Error::shape(OP, "too many rows"))?,
                1,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe {
            self.k.masked_mean_backward_f32(
                &self.stream,
                cfg,
                pg,
                pm,
                int(t, OP)?,
                int(d, OP)?,
                po,
            )?;
        }
        Ok(out)
    }
    fn cosine(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "cosine";
        same_shape(OP, a, b)?;
        let (rows, d) = rows_cols(a);
        let (pa, pb) = (self.ptr(a, F32, OP)?, self.ptr(b, F32, OP)?);
        let (out, po) = self.empty(&[rows], F32)?;
        unsafe {
            self.k.cosine_f32(
                &self.stream,
                cfg_rows(rows),
                pa,
                pb,
                int(rows, OP)?,
                int(d, OP)?,
                po,
            )?;
        }
        Ok(out)
    }
    fn cosine_backward(&self, dc: &Tensor, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        const OP: &str = "cosine_backward";
        let (rows, d) = cosine_backward_dims(dc, a, b)?;
        let (pg, pa, pb) = (
            self.ptr(dc, F32, OP)?,
            self.ptr(a, F32, OP)?,
            self.ptr(b, F32, OP)?,
        );
        let (da, pda) = self.empty(a.shape(), F32)?;
        let (db, pdb) = self.empty(b.shape(), F32)?;
        unsafe {
            self.k.cosine_backward_f32(
                &self.stream,
                cfg_rows(rows),
                pg,
                pa,
                pb,
                int(rows, OP)?,
                int(d, OP)?,
                pda,
                pdb,
            )?;
        }
        Ok((da, db))
    }

    // ---- losses -----------------------------------------------------------------------------
    fn cross_entropy(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        let (rows, c) = loss_dims(OP, logits, labels.numel())?;
        let (pl, py) = (self.ptr(logits, F32, OP)?, self.ptr(labels, I32, OP)?);
        let per_row = self.scratch_f32(rows)?;
        let pr = per_row.ptr();
        unsafe {
            self.k.ce_rows_f32(
                &self.stream,
                cfg_rows(rows),
                pl,
                py,
                int(rows, OP)?,
                int(c, OP)?,
                pr,
                self.err_ptr(),
            )?;
        }
        self.mean_scalar(pr, rows, rows)
    }
    fn cross_entropy_backward(
        &self,
        dloss: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "cross_entropy_backward";
        let (rows, c) = loss_dims(OP, logits, labels.numel())?;
        let pg = self.dloss_ptr(dloss, OP)?;
        let (pl, py) = (self.ptr(logits, F32, OP)?, self.ptr(labels, I32, OP)?);
        let (dx, pdx) = self.empty(logits.shape(), F32)?;
        unsafe {
            self.k.ce_backward_f32(
                &self.stream,
                cfg_rows(rows),
                pg,
                pl,
                py,
                int(rows, OP)?,
                int(c, OP)?,
                pdx,
                self.err_ptr(),
            )?;
        }
        Ok(dx)
    }
    fn bce_with_logits(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.elementwise_loss("bce_with_logits", logits, targets, Kernels::bce_elems_f32)
    }
    fn bce_with_logits_backward(
        &self,
        dloss: &Tensor,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<Tensor> {
        self.elementwise_loss_backward(
            "bce_with_logits_backward",
            dloss,
            logits,
            targets,
            Kernels::bce_backward_f32,
        )
    }
    fn kl_categorical(&self, target: &Tensor, logits: &Tensor) -> Result<Tensor> {
        const OP: &str = "kl_categorical";
        same_shape(OP, target, logits)?;
        let (rows, c) = rows_cols(logits);
        let (pt, pl) = (self.ptr(target, F32, OP)?, self.ptr(logits, F32, OP)?);
        let per_row = self.scratch_f32(rows)?;
        let pr = per_row.ptr();
        unsafe {
            self.k.kl_cat_rows_f32(
                &self.stream,
                cfg_rows(rows),
                pt,
                pl,
                int(rows, OP)?,
                int(c, OP)?,
                pr,
            )?;
        }
        self.mean_scalar(pr, rows, rows)
    }
    fn kl_categorical_backward(
        &self,
        dloss: &Tensor,
        target: &Tensor,
        logits: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "kl_categorical_backward";
        same_shape(OP, target, logits)?;
        let (rows, c) = rows_cols(logits);
        let pg = self.dloss_ptr(dloss, OP)?;
        let (pt, pl) = (self.ptr(target, F32, OP)?, self.ptr(logits, F32, OP)?);
        let (dx, pdx) = self.empty(logits.shape(), F32)?;
        unsafe {
            self.k.kl_cat_backward_f32(
                &self.stream,
                cfg_rows(rows),
                pg,
                pt,
                pl,
                int(rows, OP)?,
                int(c, OP)?,
                pdx,
            )?;
        }
        Ok(dx)
    }
    fn kl_bernoulli(&self, target: &Tensor, logits: &Tensor) -> Result<Tensor> {
        self.elementwise_loss("kl_bernoulli", target, logits, Kernels::kl_bern_elems_f32)
    }
    fn kl_bernoulli_backward(
        &self,
        dloss: &Tensor,
        target: &Tensor,
        logits: &Tensor,
    ) -> Result<Tensor> {
        self.elementwise_loss_backward(
            "kl_bernoulli_backward",
            dloss,
            target,
            logits,
            Kernels::kl_bern_backward_f32,
        )
    }

    // ---- optimiser --------------------------------------------------------------------------
    fn adamw(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: AdamW,
    ) -> Result<()> {
        const OP: &str = "adamw";
        let _r = nvtx::range("adamw");
        adamw_operands(params, grads, m, v, &hp)?;
        // Bias corrections exactly as the CPU backend computes them, uploaded with the
        // learning rate: the kernel's arguments stay the same from step to step.
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
        let step_hp = self.scratch_f32(3)?;
        // SAFETY: the scratch block holds 3 floats.
        unsafe { self.upload_from(step_hp.ptr(), &[hp.lr, bc1, bc2])? };
        let pg = self.ptr(grads, F32, OP)?;
        let pp = self.ptr_mut(params, F32, OP)?;
        let pm = self.ptr_mut(m, F32, OP)?;
        let pv = self.ptr_mut(v, F32, OP)?;
        let n = params.numel();
        unsafe {
            self.k.adamw_f32(
                &self.stream,
                cfg_flat(n),
                pp,
                pg,
                pm,
                pv,
                long(n),
                step_hp.ptr(),
                hp.beta1,
                hp.beta2,
                hp.eps,
                hp.weight_decay,
            )
        }
    }
}
