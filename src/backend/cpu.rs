//! The CPU backend: f32, threaded with rayon, GEMMs by the `gemm` crate. It is the reference
//! that every CUDA kernel is checked against, so clarity wins over cleverness wherever the two
//! disagree and the op is not on the hot path.

use half::bf16;
use rayon::prelude::*;

use crate::backend::shapes::{
    adamw_operands, attention_backward_dims, attention_dims, bias_dims, check_parts, concat_dims,
    cosine_backward_dims, gather_dims, layernorm_backward_dims, layernorm_dims, loss_dims,
    loss_grad, masked_backward_dims, masked_dims, matmul_bias_dims, matmul_dims, matmul_into_dims,
    row_choice_dims, rows_cols, same_shape, scatter_dims, split_dims, MatmulDims,
};
use crate::backend::{cpu_simd, AdamW, Backend, Device, Gemm, LayerNormGrads, LayerNormOut, Unary};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::{numel, CpuStorage, DType, Storage, Tensor};

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// A raw pointer that parallel tasks may share because each writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// One attention head's matrix for [`head_product`]: its elements from the head's first, its
/// row stride (`H·Dh` in a `[B, T, H·Dh]` tensor, `T` in a score block), and whether it enters
/// transposed.
#[derive(Clone, Copy)]
struct HeadMatrix<'a> {
    data: &'a [f32],
    ld: usize,
    trans: bool,
}

/// The head matrix of `x` starting at element `start` with row stride `ld`.
fn head(x: &[f32], start: usize, ld: usize) -> HeadMatrix<'_> {
    HeadMatrix {
        data: &x[start..],
        ld,
        trans: false,
    }
}

impl HeadMatrix<'_> {
    /// The matrix transposed.
    fn t(self) -> Self {
        HeadMatrix {
            trans: true,
            ..self
        }
    }
}

/// `c = α · op(a) · op(b)` for one (sample, head) of attention, `op(a) [m, k]`, `op(b) [k, n]`,
/// `c` of row stride `ldc`, on one thread (the heads run in parallel).
fn head_product(
    c: *mut f32,
    ldc: usize,
    mnk: (usize, usize, usize),
    a: HeadMatrix,
    b: HeadMatrix,
    alpha: f32,
) {
    sgemm(
        mnk, a.data, a.ld, a.trans, b.data, b.ld, b.trans, c, ldc, alpha, 0.0, 1,
    );
}

impl SharedMut {
    /// The pointer `off` elements in. A method (not a field access) so that closures capture
    /// the whole `Send` wrapper rather than the bare pointer.
    fn at(self, off: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation the pointer came from.
        unsafe { self.0.add(off) }
    }
}

fn out(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_f32(data, shape)
}

fn floats(t: &Tensor) -> Result<std::borrow::Cow<'_, [f32]>> {
    match t.cpu()? {
        CpuStorage::F32(_) => Ok(std::borrow::Cow::Borrowed(t.f32s()?)),
        CpuStorage::BF16(_) => Ok(std::borrow::Cow::Owned(
            t.bf16s()?.iter().map(|x| x.to_f32()).collect(),
        )),
        CpuStorage::I32(_) => Err(Error::Msg("expected a float tensor, got i32".into())),
    }
}

/// Row-major `c = alpha · op(a) · op(b) + beta · c` for one matrix, with leading dimensions
/// given explicitly so that strided head slices of attention need no copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    let (a_rs, a_cs) = if trans_a { (1, lda) } else { (lda, 1) };
    let (b_rs, b_cs) = if trans_b { (1, ldb) } else { (ldb, 1) };
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: callers pass slices that cover every element the strides address, and a `c`
    // valid for m rows of ldc elements that no other thread touches during the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

fn matmul_cpu(
    a: &Tensor,
    b: &Tensor,
    g: Gemm,
    c: &mut [f32],
    beta: f32,
    d: &MatmulDims,
) -> Result<()> {
    let (av, bv) = (floats(a)?, floats(b)?);
    let (lda, ldb) = (a.dim(-1), b.dim(-1));
    let (sa, sb, sc) = (
        d.m * d.k,
        if d.b_batched { d.k * d.n } else { 0 },
        d.m * d.n,
    );
    let threads = rayon::current_num_threads();
    for i in 0..d.batch {
        sgemm(
            (d.m, d.n, d.k),
            &av[i * sa..(i + 1) * sa],
            lda,
            g.trans_a,
            &bv[i * sb..i * sb + d.k * d.n],
            ldb,
            g.trans_b,
            c[i * sc..(i + 1) * sc].as_mut_ptr(),
            d.n,
            g.alpha,
            beta,
            threads,
        );
    }
    Ok(())
}

fn map(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
    let v: Vec<f32> = x.f32s()?.par_iter().map(|&a| f(a)).collect();
    out(v, x.shape())
}

fn zip(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    same_shape(op, a, b)?;
    let v: Vec<f32> = a
        .f32s()?
        .par_iter()
        .zip(b.f32s()?.par_iter())
        .map(|(&x, &y)| f(x, y))
        .collect();
    out(v, a.shape())
}

/// Elements per parallel task of the vectorised elementwise ops: large enough that rayon's
/// per-task cost vanishes, small enough to spread a [740, 3072] activation over the cores.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// An output of `n` elements built in parallel: `f(offset, chunk)` fills each `chunk`-element
/// piece (the last may be shorter) and returns a per-piece value, collected in order.
///
/// `vec![0.0; n]` would first zero the whole buffer on the calling thread: reused heap memory
/// (see [`crate::malloc`]) is not fresh zero pages, so that is a serial pass over memory about
/// as long as a parallel elementwise op itself. Here each piece is zeroed by its own task just
/// before `f` overwrites it, while it is in cache.
fn par_build<T: Send>(
    n: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) -> T + Sync,
) -> (Vec<f32>, Vec<T>) {
    let chunk = chunk.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(n);
    let per_piece = v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(i, piece)| {
            piece.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: every element of `piece` was initialised just above, and
            // MaybeUninit<f32> has the layout of f32.
            let piece = unsafe { &mut *(piece as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            f(i * chunk, piece)
        })
        .collect();
    // SAFETY: the pieces cover 0..n and each was initialised.
    unsafe { v.set_len(n) };
    (v, per_piece)
}

/// `n` zeros, written in parallel (see [`par_build`]).
fn par_zeros(n: usize) -> Vec<f32> {
    par_build(n, ELEMENTWISE_CHUNK, |_, _| ()).0
}

/// log(1 + eˣ) without overflow.
fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax of one row into `y`, returning log-sum-exp.
fn softmax_row(x: &[f32], y: &mut [f32]) -> f32 {
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0f32;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v - mx).exp();
        s += *o;
    }
    for o in y.iter_mut() {
        *o /= s;
    }
    mx + s.ln()
}

/// The upstream gradient of a scalar loss, read from its one-element tensor.
fn scalar(t: &Tensor, op: &'static str) -> Result<f32> {
    loss_grad(op, t)?;
    Ok(t.f32s()?[0])
}

fn check_labels(labels: &[i32], c: usize, op: &'static str) -> Result<()> {
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 0 || l as usize >= c)
    {
        return Err(Error::shape(
            op,
            format!("label {l} of row {i} is outside 0..{c}"),
        ));
    }
    Ok(())
}

/// Sums rows of `x [rows, d]` in parallel blocks, in f64 so the reference stays accurate.
fn column_sums(rows: usize, d: usize, f: impl Fn(usize, &mut [f64]) + Sync) -> Vec<f32> {
    let block = 64;
    let partial: Vec<Vec<f64>> = (0..rows.div_ceil(block))
        .into_par_iter()
        .map(|bi| {
            let mut acc = vec![0f64; d];
            for r in bi * block..((bi + 1) * block).min(rows) {
                f(r, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0f64; d];
    for p in partial {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total.into_iter().map(|v| v as f32).collect()
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload(&self, host: &Tensor) -> Result<Tensor> {
        host.cpu()?;
        Ok(host.clone())
    }
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        t.cpu()?;
        Ok(t.clone())
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = numel(shape);
        let s = match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::I32 => CpuStorage::I32(vec![0; n]),
        };
        Tensor::from_storage(Storage::Cpu(s), shape)
    }
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let s = match (x.cpu()?, dtype) {
            (CpuStorage::I32(_), _) | (_, DType::I32) if x.dtype() != dtype => {
                return Err(Error::Msg(format!(
                    "cast from {:?} to {dtype:?} is not supported",
                    x.dtype()
                )))
            }
            (_, DType::F32) => CpuStorage::F32(floats(x)?.into_owned()),
            (_, DType::BF16) => {
                CpuStorage::BF16(floats(x)?.iter().map(|&v| bf16::from_f32(v)).collect())
            }
            (_, DType::I32) => CpuStorage::I32(x.i32s()?.to_vec()),
        };
        Tensor::from_storage(Storage::Cpu(s), x.shape())
    }
    fn copy(&self, x: &Tensor) -> Result<Tensor> {
        self.cast(x, x.dtype())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn matmul(&self, a: &Tensor, b: &Tensor, g: Gemm) -> Result<Tensor> {
        let d = matmul_dims(a, b, g)?;
        let mut c = par_zeros(numel(&d.out_shape));
        matmul_cpu(a, b, g, &mut c, 0.0, &d)?;
        out(c, &d.out_shape)
    }
    fn matmul_bias(&self, a: &Tensor, b: &Tensor, g: Gemm, bias: &Tensor) -> Result<Tensor> {
        let d = matmul_bias_dims(a, b, g, bias)?;
        let bv = bias.f32s()?;
        // The output starts as the bias rows and the GEMM accumulates onto it, which saves
        // the separate pass over the product that `bias_add` would make.
        let rows_per_task = (ELEMENTWISE_CHUNK / d.n.max(1)).max(1);
        let (mut c, _) = par_build(numel(&d.out_shape), rows_per_task * d.n, |_, piece| {
            for row in piece.chunks_mut(d.n) {
                row.copy_from_slice(bv);
            }
        });
        matmul_cpu(a, b, g, &mut c, 1.0, &d)?;
        out(c, &d.out_shape)
    }
    fn gemm_folds_bias(&self) -> bool {
        true
    }
    fn matmul_into(
        &self,
        a: &Tensor,
        b: &Tensor,
        g: Gemm,
        c: &mut Tensor,
        beta: f32,
    ) -> Result<()> {
        let d = matmul_into_dims(a, b, g, c)?;
        matmul_cpu(a, b, g, c.f32s_mut()?, beta, &d)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        zip("add", a, b, |x, y| x + y)
    }
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        same_shape("add_assign", a, b)?;
        let bv = b.f32s()?;
        a.f32s_mut()?
            .par_iter_mut()
            .zip(bv.par_iter())
            .for_each(|(x, &y)| *x += y);
        Ok(())
    }
    fn add_assign_parts(&self, dst: &mut Tensor, parts: &[(usize, &Tensor)]) -> Result<()> {
        check_parts(dst.numel(), parts)?;
        let d = dst.f32s_mut()?;
        for (offset, part) in parts {
            let p = part.f32s()?;
            d[*offset..offset + p.len()]
                .par_iter_mut()
                .zip(p.par_iter())
                .for_each(|(x, &y)| *x += y);
        }
        Ok(())
    }
    fn axpby(&self, y: &mut Tensor, a: f32, x: &Tensor, b: f32) -> Result<()> {
        same_shape("axpby", y, x)?;
        let xv = x.f32s()?;
        y.f32s_mut()?
            .par_iter_mut()
            .zip(xv.par_iter())
            .for_each(|(y, &x)| *y = a * *y + b * x);
        Ok(())
    }
    fn fill_zero(&self, t: &mut Tensor) -> Result<()> {
        match t.storage_mut()? {
            (Storage::Cpu(CpuStorage::F32(v)), off, n) => v[off..off + n].fill(0.0),
            (Storage::Cpu(CpuStorage::BF16(v)), off, n) => v[off..off + n].fill(bf16::ZERO),
            (Storage::Cpu(CpuStorage::I32(v)), off, n) => v[off..off + n].fill(0),
            (Storage::Cuda(_), ..) => {
                return Err(Error::Msg(
                    "fill_zero: a CUDA tensor was given to the CPU backend".into(),
                ))
            }
        }
        Ok(())
    }
    fn scale(&self, x: &Tensor, s: f32) -> Result<Tensor> {
        map(x, |v| v * s)
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        zip("mul", a, b, |x, y| x * y)
    }
    fn bias_add(&self, x: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (_, d) = bias_dims("bias_add", x, b)?;
        let (xv, bv) = (x.f32s()?, b.f32s()?);
        // One pass: the output is written from the input, not copied first and then updated.
        let rows_per_task = (ELEMENTWISE_CHUNK / d.max(1)).max(1);
        let (v, _) = par_build(xv.len(), rows_per_task * d, |off, piece| {
            for (orow, xrow) in piece.chunks_mut(d).zip(xv[off..].chunks(d)) {
                for ((o, &xj), &bj) in orow.iter_mut().zip(xrow).zip(bv) {
                    *o = xj + bj;
                }
            }
        });
        out(v, x.shape())
    }
    fn sum_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, d) = rows_cols(x);
        let xv = x.f32s()?;
        let s = column_sums(rows, d, |r, acc| {
            acc.iter_mut()
                .zip(&xv[r * d..(r + 1) * d])
                .for_each(|(a, &v)| *a += v as f64)
        });
        out(s, &[d])
    }
    fn unary(&self, op: Unary, x: &Tensor) -> Result<Tensor> {
        let xv = x.f32s()?;
        let (y, _) = par_build(xv.len(), ELEMENTWISE_CHUNK, |off, yc| {
            op.forward_cpu(&xv[off..off + yc.len()], yc)
        });
        out(y, x.shape())
    }
    fn unary_backward(&self, op: Unary, dy: &Tensor, saved: &Tensor) -> Result<Tensor> {
        same_shape(op.backward_name(), dy, saved)?;
        let (gv, sv) = (dy.f32s()?, saved.f32s()?);
        let (dx, _) = par_build(sv.len(), ELEMENTWISE_CHUNK, |off, dc| {
            let r = off..off + dc.len();
            op.backward_cpu(&gv[r.clone()], &sv[r], dc)
        });
        out(dx, saved.shape())
    }

    fn layernorm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<LayerNormOut> {
        let (rows, d) = layernorm_dims("layernorm", x, w, b)?;
        let (xv, wv, bv) = (x.f32s()?, w.f32s()?, b.f32s()?);
        let (y, stats) = par_build(rows * d, d, |off, yr| {
            cpu_simd::layernorm_row(&xv[off..off + d], wv, bv, eps, yr)
        });
        let (mean, rstd): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
        Ok(LayerNormOut {
            y: out(y, x.shape())?,
            mean: out(mean, &[rows])?,
            rstd: out(rstd, &[rows])?,
        })
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
        let (rows, d) = layernorm_backward_dims(dy, x, w, mean, rstd)?;
        let (dyv, xv, wv, mv, rv) = (dy.f32s()?, x.f32s()?, w.f32s()?, mean.f32s()?, rstd.f32s()?);
        let xhat = |r: usize, j: usize| (xv[r * d + j] - mv[r]) * rv[r];
        let mut dx = vec![0f32; rows * d];
        dx.par_chunks_mut(d).enumerate().for_each(|(r, dxr)| {
            let dyr = &dyv[r * d..(r + 1) * d];
            let (mut s1, mut s2) = (0f64, 0f64);
            for j in 0..d {
                let g = (dyr[j] * wv[j]) as f64;
                s1 += g;
                s2 += g * xhat(r, j) as f64;
            }
            let (m1, m2) = ((s1 / d as f64) as f32, (s2 / d as f64) as f32);
            for j in 0..d {
                dxr[j] = rv[r] * (dyr[j] * wv[j] - m1 - xhat(r, j) * m2);
            }
        });
        let (dw, db) = if affine_grads {
            let dw = column_sums(rows, d, |r, acc| {
                (0..d).for_each(|j| acc[j] += (dyv[r * d + j] * xhat(r, j)) as f64)
            });
            let db = column_sums(rows, d, |r, acc| {
                (0..d).for_each(|j| acc[j] += dyv[r * d + j] as f64)
            });
            (Some(out(dw, &[d])?), Some(out(db, &[d])?))
        } else {
            (None, None)
        };
        Ok(LayerNormGrads {
            dx: out(dx, x.shape())?,
            dw,
            db,
        })
    }
    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let (_, d) = rows_cols(x);
        let xv = x.f32s()?;
        let (y, _) = par_build(xv.len(), d, |off, yr| {
            yr.copy_from_slice(&xv[off..off + d]);
            cpu_simd::softmax(yr)
        });
        out(y, x.shape())
    }
    fn softmax_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
        same_shape("softmax_backward", dy, y)?;
        let (_, d) = rows_cols(y);
        let (dyv, yv) = (dy.f32s()?, y.f32s()?);
        let mut dx = vec![0f32; y.numel()];
        dx.par_chunks_mut(d).enumerate().for_each(|(r, dxr)| {
            let (g, p) = (&dyv[r * d..(r + 1) * d], &yv[r * d..(r + 1) * d]);
            let dot: f32 = g.iter().zip(p).map(|(a, b)| a * b).sum();
            dxr.iter_mut()
                .zip(g.iter().zip(p))
                .for_each(|(o, (&gi, &pi))| *o = pi * (gi - dot));
        });
        out(dx, y.shape())
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        heads: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (bsz, t, dh) = attention_dims(q, k, v, mask, heads)?;
        let dm = heads * dh;
        let (qv, kv, vv, mv) = (q.f32s()?, k.f32s()?, v.f32s()?, mask.f32s()?);
        let scale = 1.0 / (dh as f32).sqrt();
        let mut o = par_zeros(bsz * t * dm);
        let optr = SharedMut(o.as_mut_ptr());
        let (probs, _) = par_build(bsz * heads * t * t, t * t, |off, p| {
            let bh = off / (t * t);
            let (b, h) = (bh / heads, bh % heads);
            let base = b * t * dm + h * dh;
            let (q, k) = (head(qv, base, dm), head(kv, base, dm).t());
            head_product(p.as_mut_ptr(), t, (t, t, dh), q, k, scale);
            let m = &mv[b * t..(b + 1) * t];
            for row in p.chunks_mut(t) {
                row.iter_mut().zip(m).for_each(|(s, &mk)| {
                    if mk == 0.0 {
                        *s += f32::MIN
                    }
                });
                cpu_simd::softmax(row);
            }
            // Each (b, h) writes its own columns h·dh.. of batch b's rows.
            let v = head(vv, base, dm);
            head_product(optr.at(base), dm, (t, dh, t), head(p, 0, t), v, 1.0);
        });
        Ok((out(o, q.shape())?, out(probs, &[bsz, heads, t, t])?))
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
        let (bsz, t, dh) = attention_backward_dims(dout, q, k, v, probs, heads)?;
        let dm = dh * heads;
        let (gv, qv, kv, vv, pv) = (dout.f32s()?, q.f32s()?, k.f32s()?, v.f32s()?, probs.f32s()?);
        let scale = 1.0 / (dh as f32).sqrt();
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.numel()],
            vec![0f32; q.numel()],
            vec![0f32; q.numel()],
        );
        let (dqp, dkp, dvp) = (
            SharedMut(dq.as_mut_ptr()),
            SharedMut(dk.as_mut_ptr()),
            SharedMut(dv.as_mut_ptr()),
        );
        (0..bsz * heads).into_par_iter().for_each(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            let base = b * t * dm + h * dh;
            let p = &pv[bh * t * t..(bh + 1) * t * t];
            // dV = Pᵀ · dO
            let d_o = head(gv, base, dm);
            head_product(dvp.at(base), dm, (t, dh, t), head(p, 0, t).t(), d_o, 1.0);
            // dP = dO · Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P))
            let mut ds = vec![0f32; t * t];
            let v = head(vv, base, dm).t();
            head_product(ds.as_mut_ptr(), t, (t, t, dh), d_o, v, 1.0);
            for (dr, pr) in ds.chunks_mut(t).zip(p.chunks(t)) {
                let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
                dr.iter_mut()
                    .zip(pr)
                    .for_each(|(x, &pi)| *x = pi * (*x - dot));
            }
            // dQ = dS · K · scale, dK = dSᵀ · Q · scale
            let (d_s, k, q) = (head(&ds, 0, t), head(kv, base, dm), head(qv, base, dm));
            head_product(dqp.at(base), dm, (t, dh, t), d_s, k, scale);
            head_product(dkp.at(base), dm, (t, dh, t), d_s.t(), q, scale);
        });
        Ok((
            out(dq, q.shape())?,
            out(dk, q.shape())?,
            out(dv, q.shape())?,
        ))
    }

    fn copy_rows_where(
        &self,
        dst: &mut Tensor,
        src: &Tensor,
        choice: &Tensor,
        k: usize,
        n: usize,
    ) -> Result<()> {
        let (_, row) = row_choice_dims(dst, src, choice, k, n)?;
        let cv = choice.i32s()?;
        if let Some((r, &c)) = cv
            .iter()
            .enumerate()
            .find(|(_, &c)| c < 0 || c as usize >= n)
        {
            return Err(Error::shape(
                "copy_rows_where",
                format!("row {r} chooses {c}, outside 0..{n}"),
            ));
        }
        let sv = src.f32s()?;
        dst.f32s_mut()?
            .par_chunks_mut(row.max(1))
            .zip(sv.par_chunks(row.max(1)))
            .zip(cv.par_iter())
            .filter(|(_, &c)| c as usize == k)
            .for_each(|((d, s), _)| d.copy_from_slice(s));
        Ok(())
    }
    fn gather_rows(&self, table: &Tensor, idx: &Tensor) -> Result<Tensor> {
        let (m, row, shape) = gather_dims(table, idx)?;
        let (tv, iv) = (table.f32s()?, idx.i32s()?);
        if let Some((i, &j)) = iv
            .iter()
            .enumerate()
            .find(|(_, &j)| j < 0 || j as usize >= m)
        {
            return Err(Error::shape(
                "gather_rows",
                format!("index {j} at position {i} is outside 0..{m}"),
            ));
        }
        let mut o = vec![0f32; iv.len() * row];
        o.par_chunks_mut(row.max(1))
            .zip(iv.par_iter())
            .for_each(|(dst, &j)| {
                dst.copy_from_slice(&tv[j as usize * row..(j as usize + 1) * row])
            });
        out(o, &shape)
    }
    fn scatter_add_rows(&self, dy: &Tensor, idx: &Tensor, m: usize) -> Result<Tensor> {
        let (row, shape) = scatter_dims(dy, idx, m)?;
        let (gv, iv) = (dy.f32s()?, idx.i32s()?);
        let mut o = vec![0f32; m * row];
        for (i, &j) in iv.iter().enumerate() {
            ensure_shape!(
                j >= 0 && (j as usize) < m,
                "scatter_add_rows",
                "index {j} at position {i} is outside 0..{m}"
            );
            let dst = &mut o[j as usize * row..(j as usize + 1) * row];
            dst.iter_mut()
                .zip(&gv[i * row..(i + 1) * row])
                .for_each(|(a, &g)| *a += g);
        }
        out(o, &shape)
    }
    fn concat_seq(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (bsz, t1, t2, d) = concat_dims(a, b)?;
        let (av, bv) = (a.f32s()?, b.f32s()?);
        let mut o = Vec::with_capacity(bsz * (t1 + t2) * d);
        for i in 0..bsz {
            o.extend_from_slice(&av[i * t1 * d..(i + 1) * t1 * d]);
            o.extend_from_slice(&bv[i * t2 * d..(i + 1) * t2 * d]);
        }
        out(o, &[bsz, t1 + t2, d])
    }
    fn split_seq(&self, x: &Tensor, t1: usize) -> Result<(Tensor, Tensor)> {
        let (bsz, t, d) = split_dims(x, t1)?;
        let xv = x.f32s()?;
        let (mut a, mut b) = (
            Vec::with_capacity(bsz * t1 * d),
            Vec::with_capacity(bsz * (t - t1) * d),
        );
        for row in xv.chunks(t * d) {
            a.extend_from_slice(&row[..t1 * d]);
            b.extend_from_slice(&row[t1 * d..]);
        }
        Ok((out(a, &[bsz, t1, d])?, out(b, &[bsz, t - t1, d])?))
    }

    fn masked_mean(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (bsz, t, d) = masked_dims(x.shape(), mask)?;
        let (xv, mv) = (x.f32s()?, mask.f32s()?);
        let mut o = vec![0f32; bsz * d];
        o.par_chunks_mut(d).enumerate().for_each(|(b, or)| {
            let valid: Vec<usize> = (0..t).filter(|&i| mv[b * t + i] != 0.0).collect();
            for &i in &valid {
                or.iter_mut()
                    .zip(&xv[(b * t + i) * d..(b * t + i + 1) * d])
                    .for_each(|(a, &v)| *a += v);
            }
            let n = valid.len().max(1) as f32;
            or.iter_mut().for_each(|a| *a /= n);
        });
        out(o, &[bsz, d])
    }
    fn masked_mean_backward(&self, dy: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (bsz, t, d) = masked_backward_dims(dy, mask)?;
        let (gv, mv) = (dy.f32s()?, mask.f32s()?);
        let mut o = vec![0f32; bsz * t * d];
        o.par_chunks_mut(t * d).enumerate().for_each(|(b, ob)| {
            let m = &mv[b * t..(b + 1) * t];
            let n = m.iter().filter(|&&v| v != 0.0).count().max(1) as f32;
            for (i, orow) in ob.chunks_mut(d).enumerate() {
                if m[i] != 0.0 {
                    orow.iter_mut()
                        .zip(&gv[b * d..(b + 1) * d])
                        .for_each(|(a, &g)| *a = g / n);
                }
            }
        });
        out(o, &[bsz, t, d])
    }
    fn cosine(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_shape("cosine", a, b)?;
        let (rows, d) = rows_cols(a);
        let (av, bv) = (a.f32s()?, b.f32s()?);
        let o: Vec<f32> = (0..rows)
            .into_par_iter()
            .map(|r| cos_parts(&av[r * d..(r + 1) * d], &bv[r * d..(r + 1) * d]).0)
            .collect();
        out(o, &[rows])
    }
    fn cosine_backward(&self, dc: &Tensor, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        let (rows, d) = cosine_backward_dims(dc, a, b)?;
        let (gv, av, bv) = (dc.f32s()?, a.f32s()?, b.f32s()?);
        let mut da = vec![0f32; rows * d];
        let mut db = vec![0f32; rows * d];
        da.par_chunks_mut(d)
            .zip(db.par_chunks_mut(d))
            .enumerate()
            .for_each(|(r, (dar, dbr))| {
                let (x, y) = (&av[r * d..(r + 1) * d], &bv[r * d..(r + 1) * d]);
                let (c, na, nb, ca, cb) = cos_parts(x, y);
                let g = gv[r];
                for j in 0..d {
                    dar[j] = g * (y[j] / (na * nb) - if ca { c * x[j] / (na * na) } else { 0.0 });
                    dbr[j] = g * (x[j] / (na * nb) - if cb { c * y[j] / (nb * nb) } else { 0.0 });
                }
            });
        Ok((out(da, a.shape())?, out(db, b.shape())?))
    }

    fn cross_entropy(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (rows, c) = loss_dims("cross_entropy", logits, labels.numel())?;
        let (lv, yv) = (logits.f32s()?, labels.i32s()?);
        check_labels(yv, c, "cross_entropy")?;
        let total: f64 = (0..rows)
            .into_par_iter()
            .map(|r| {
                let row = &lv[r * c..(r + 1) * c];
                let mut p = vec![0f32; c];
                (softmax_row(row, &mut p) - row[yv[r] as usize]) as f64
            })
            .sum();
        Ok(Tensor::scalar((total / rows as f64) as f32))
    }
    fn cross_entropy_backward(
        &self,
        dloss: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor> {
        let (rows, c) = loss_dims("cross_entropy_backward", logits, labels.numel())?;
        let g = scalar(dloss, "cross_entropy_backward")? / rows as f32;
        let (lv, yv) = (logits.f32s()?, labels.i32s()?);
        check_labels(yv, c, "cross_entropy_backward")?;
        let mut d = vec![0f32; rows * c];
        d.par_chunks_mut(c).enumerate().for_each(|(r, dr)| {
            softmax_row(&lv[r * c..(r + 1) * c], dr);
            dr[yv[r] as usize] -= 1.0;
            dr.iter_mut().for_each(|v| *v *= g);
        });
        out(d, logits.shape())
    }
    fn bce_with_logits(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        same_shape("bce_with_logits", logits, targets)?;
        let s: f64 = logits
            .f32s()?
            .par_iter()
            .zip(targets.f32s()?.par_iter())
            .map(|(&x, &t)| (softplus(x) - x * t) as f64)
            .sum();
        Ok(Tensor::scalar((s / logits.numel().max(1) as f64) as f32))
    }
    fn bce_with_logits_backward(
        &self,
        dloss: &Tensor,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<Tensor> {
        let g = scalar(dloss, "bce_with_logits_backward")? / logits.numel().max(1) as f32;
        zip("bce_with_logits_backward", logits, targets, |x, t| {
            g * (sigmoid(x) - t)
        })
    }
    fn kl_categorical(&self, target: &Tensor, logits: &Tensor) -> Result<Tensor> {
        same_shape("kl_categorical", target, logits)?;
        let (rows, c) = rows_cols(logits);
        let (tv, lv) = (target.f32s()?, logits.f32s()?);
        let total: f64 = (0..rows)
            .into_par_iter()
            .map(|r| {
                let (tr, lr) = (&tv[r * c..(r + 1) * c], &lv[r * c..(r + 1) * c]);
                let mut p = vec![0f32; c];
                let mut q = vec![0f32; c];
                let (lse_t, lse_l) = (softmax_row(tr, &mut p), softmax_row(lr, &mut q));
                (0..c)
                    .filter(|&j| p[j] > 0.0)
                    .map(|j| p[j] as f64 * (((tr[j] - lse_t) - (lr[j] - lse_l)) as f64))
                    .sum::<f64>()
            })
            .sum();
        Ok(Tensor::scalar((total / rows as f64) as f32))
    }
    fn kl_categorical_backward(
        &self,
        dloss: &Tensor,
        target: &Tensor,
        logits: &Tensor,
    ) -> Result<Tensor> {
        same_shape("kl_categorical_backward", target, logits)?;
        let (rows, c) = rows_cols(logits);
        let g = scalar(dloss, "kl_categorical_backward")? / rows as f32;
        let (tv, lv) = (target.f32s()?, logits.f32s()?);
        let mut d = vec![0f32; rows * c];
        d.par_chunks_mut(c).enumerate().for_each(|(r, dr)| {
            let mut p = vec![0f32; c];
            softmax_row(&tv[r * c..(r + 1) * c], &mut p);
            softmax_row(&lv[r * c..(r + 1) * c], dr);
            dr.iter_mut()
                .zip(&p)
                .for_each(|(q, &pj)| *q = g * (*q - pj));
        });
        out(d, logits.shape())
    }
    fn kl_bernoulli(&self, target: &Tensor, logits: &Tensor) -> Result<Tensor> {
        same_shape("kl_bernoulli", target, logits)?;
        let s: f64 = target
            .f32s()?
            .par_iter()
            .zip(logits.f32s()?.par_iter())
            .map(|(&t, &l)| {
                let p = sigmoid(t);
                // log p = −softplus(−t), log(1−p) = −softplus(t); likewise for q with l.
                (p * (softplus(-l) - softplus(-t)) + (1.0 - p) * (softplus(l) - softplus(t))) as f64
            })
            .sum();
        Ok(Tensor::scalar((s / target.numel().max(1) as f64) as f32))
    }
    fn kl_bernoulli_backward(
        &self,
        dloss: &Tensor,
        target: &Tensor,
        logits: &Tensor,
    ) -> Result<Tensor> {
        let g = scalar(dloss, "kl_bernoulli_backward")? / target.numel().max(1) as f32;
        zip("kl_bernoulli_backward", target, logits, |t, l| {
            g * (sigmoid(l) - sigmoid(t))
        })
    }

    fn adamw(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: AdamW,
    ) -> Result<()> {
        adamw_operands(params, grads, m, v, &hp)?;
        let gv = grads.f32s()?;
        let bc1 = 1.0 - hp.beta1.powi(hp.step as i32);
        let bc2 = 1.0 - hp.beta2.powi(hp.step as i32);
        let (mv, vv) = (m.f32s_mut()?, v.f32s_mut()?);
        params
            .f32s_mut()?
            .par_iter_mut()
            .zip(mv.par_iter_mut().zip(vv.par_iter_mut()))
            .zip(gv.par_iter())
            .for_each(|((p, (m, v)), &g)| {
                adamw_scalar(p, m, v, g, &hp, bc1, bc2);
            });
        Ok(())
    }
}

/// One AdamW element update, PyTorch's formulation: decay, moments, bias-corrected step.
pub fn adamw_scalar(p: &mut f32, m: &mut f32, v: &mut f32, g: f32, hp: &AdamW, bc1: f32, bc2: f32) {
    *p -= hp.lr * hp.weight_decay * *p;
    *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
    *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
    let denom = (*v).sqrt() / bc2.sqrt() + hp.eps;
    *p -= hp.lr / bc1 * *m / denom;
}

/// Cosine of two rows with norms clamped at 1e-8: `(cos, ‖a‖, ‖b‖, a unclamped, b unclamped)`.
fn cos_parts(a: &[f32], b: &[f32]) -> (f32, f32, f32, bool, bool) {
    const EPS: f32 = 1e-8;
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    let (ca, cb) = (na > EPS, nb > EPS);
    let (na, nb) = (na.max(EPS), nb.max(EPS));
    (dot / (na * nb), na, nb, ca, cb)
}
