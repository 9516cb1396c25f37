//! CPU reference of the DeLo expert ops: routing with the compatibility term and the
//! gathered factor composition, forward and backward. Loops are per sample (in parallel);
//! each sample's products go through the same `sgemm` as the rest of the CPU backend.

use rayon::prelude::*;

use super::dims::{expert_backward_dims, expert_dims, route_backward_dims, route_dims, ExpertDims};
use super::group::{self, GroupForward, GroupGrads, PoolGroup};
use super::{ExpertGrads, ExpertOps, Routing};
use crate::backend::cpu::sgemm;
use crate::backend::CpuBackend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Indices of the `r` largest values, largest first; ties go to the lower index (eq. 3).
pub fn top_r(p: &[f32], r: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&i, &j| p[j].total_cmp(&p[i]).then(i.cmp(&j)));
    idx.truncate(r);
    idx
}

fn softmax_into(x: &[f32], y: &mut [f32]) {
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v - mx).exp();
        s += *o;
    }
    y.iter_mut().for_each(|o| *o /= s);
}

/// `dx = y ⊙ (dy − Σ dy·y)`, the softmax backward of one row.
fn softmax_grad(dy: &[f32], y: &[f32]) -> Vec<f32> {
    let dot: f32 = dy.iter().zip(y).map(|(a, b)| a * b).sum();
    dy.iter().zip(y).map(|(g, p)| p * (g - dot)).collect()
}

fn ids(t: &Tensor) -> Result<Vec<usize>> {
    Ok(t.i32s()?.iter().map(|&v| v as usize).collect())
}

fn check_selection(sel: &[usize], e: usize, what: &str) -> Result<()> {
    match sel.iter().find(|&&s| s >= e) {
        Some(s) => Err(Error::shape(
            "experts",
            format!("{what} selects factor {s} of a pool of {e}"),
        )),
        None => Ok(()),
    }
}

/// One sample's routing, the rows of a [`Routing`].
struct SampleRouting {
    sel_a: Vec<usize>,
    sel_b: Vec<usize>,
    p_a: Vec<f32>,
    p_b: Vec<f32>,
    /// `[r, E]`: each selected A slot's compatibility softmax.
    compat: Vec<f32>,
    /// `[r, d]`: each selected A slot's factor rows summed.
    abar: Vec<f32>,
}

/// Routes one sample from its router logits `la, lb [E]` (eq. 3 with the compatibility term,
/// docs/method.md#routing): S_A is the top r of softmax(la); slot i's factor sum āᵢ scores the
/// pool through `softmax(āᵢ · W_C[i])`; S_B is the top r of softmax(lb) + λ Σᵢ of those.
fn route_sample(
    (la, lb): (&[f32], &[f32]),
    av: &[f32],
    wv: &[f32],
    (rho, d, r): (usize, usize, usize),
    lambda: f32,
) -> SampleRouting {
    let e = la.len();
    let mut p_a = vec![0f32; e];
    softmax_into(la, &mut p_a);
    let sel_a = top_r(&p_a, r);
    let mut abar = vec![0f32; r * d];
    let mut compat = vec![0f32; r * e];
    let mut c = vec![0f32; e];
    for (i, &s) in sel_a.iter().enumerate() {
        let ai = &mut abar[i * d..(i + 1) * d];
        for j in 0..rho {
            ai.iter_mut()
                .zip(&av[(s * rho + j) * d..(s * rho + j + 1) * d])
                .for_each(|(o, &v)| *o += v);
        }
        let w = &wv[i * d * e..(i + 1) * d * e];
        let z: Vec<f32> = (0..e)
            .map(|k| (0..d).map(|m| ai[m] * w[m * e + k]).sum())
            .collect();
        softmax_into(&z, &mut compat[i * e..(i + 1) * e]);
        c.iter_mut()
            .zip(&compat[i * e..(i + 1) * e])
            .for_each(|(o, &v)| *o += v);
    }
    let mut p_b = vec![0f32; e];
    softmax_into(lb, &mut p_b);
    let full: Vec<f32> = p_b.iter().zip(&c).map(|(p, c)| p + lambda * c).collect();
    let sel_b = top_r(&full, r);
    SampleRouting {
        sel_a,
        sel_b,
        p_a,
        p_b,
        compat,
        abar,
    }
}

pub fn route(
    la: &Tensor,
    lb: &Tensor,
    a_pool: &Tensor,
    wc: &Tensor,
    lambda: f32,
) -> Result<Routing> {
    let (bsz, e, rho, d, r) = route_dims(la, lb, a_pool, wc)?;
    let (lav, lbv, av, wv) = (la.f32s()?, lb.f32s()?, a_pool.f32s()?, wc.f32s()?);
    let rows: Vec<SampleRouting> = (0..bsz)
        .into_par_iter()
        .map(|b| {
            let logits = (&lav[b * e..(b + 1) * e], &lbv[b * e..(b + 1) * e]);
            route_sample(logits, av, wv, (rho, d, r), lambda)
        })
        .collect();
    let cat =
        |f: &dyn Fn(&SampleRouting) -> Vec<f32>| rows.iter().flat_map(f).collect::<Vec<f32>>();
    let sel = |f: &dyn Fn(&SampleRouting) -> &Vec<usize>| {
        rows.iter()
            .flat_map(|x| f(x).iter().map(|&v| v as i32))
            .collect::<Vec<i32>>()
    };
    let pa_sel = cat(&|x| x.sel_a.iter().map(|&s| x.p_a[s]).collect());
    let pb_sel = cat(&|x| {
        x.sel_b
            .iter()
            .map(|&s| x.p_b[s] + lambda * (0..r).map(|i| x.compat[i * e + s]).sum::<f32>())
            .collect()
    });
    Ok(Routing {
        sel_a: Tensor::from_i32(sel(&|x| &x.sel_a), &[bsz, r])?,
        sel_b: Tensor::from_i32(sel(&|x| &x.sel_b), &[bsz, r])?,
        p_a: Tensor::from_f32(cat(&|x| x.p_a.clone()), &[bsz, e])?,
        p_b: Tensor::from_f32(cat(&|x| x.p_b.clone()), &[bsz, e])?,
        compat: Tensor::from_f32(cat(&|x| x.compat.clone()), &[bsz, r, e])?,
        abar: Tensor::from_f32(cat(&|x| x.abar.clone()), &[bsz, r, d])?,
        pa_sel: Tensor::from_f32(pa_sel, &[bsz, r])?,
        pb_sel: Tensor::from_f32(pb_sel, &[bsz, r])?,
    })
}

pub fn route_backward(
    d_pa: &Tensor,
    d_pb: &Tensor,
    rt: &Routing,
    lambda: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (bsz, e, r, d) = route_backward_dims(d_pa, d_pb, rt)?;
    let (gpa, gpb) = (d_pa.f32s()?, d_pb.f32s()?);
    let (sa, sb) = (ids(&rt.sel_a)?, ids(&rt.sel_b)?);
    let (pa, pb, comp, abar) = (
        rt.p_a.f32s()?,
        rt.p_b.f32s()?,
        rt.compat.f32s()?,
        rt.abar.f32s()?,
    );
    let mut dla = vec![0f32; bsz * e];
    let mut dlb = vec![0f32; bsz * e];
    let mut dwc = vec![0f32; r * d * e];
    for b in 0..bsz {
        // Scatter the selected-probability gradients back to the full distributions.
        let (mut dpa, mut dpb) = (vec![0f32; e], vec![0f32; e]);
        for i in 0..r {
            dpa[sa[b * r + i]] += gpa[b * r + i];
            dpb[sb[b * r + i]] += gpb[b * r + i];
        }
        dla[b * e..(b + 1) * e].copy_from_slice(&softmax_grad(&dpa, &pa[b * e..(b + 1) * e]));
        dlb[b * e..(b + 1) * e].copy_from_slice(&softmax_grad(&dpb, &pb[b * e..(b + 1) * e]));
        // c = Σᵢ softmax(zᵢ) enters p_B scaled by λ; zᵢ = āᵢ · W_C[i] with ā held constant.
        let dc: Vec<f32> = dpb.iter().map(|g| lambda * g).collect();
        for i in 0..r {
            let dz = softmax_grad(&dc, &comp[(b * r + i) * e..(b * r + i + 1) * e]);
            let ai = &abar[(b * r + i) * d..(b * r + i + 1) * d];
            let w = &mut dwc[i * d * e..(i + 1) * d * e];
            for m in 0..d {
                for k in 0..e {
                    w[m * e + k] += ai[m] * dz[k];
                }
            }
        }
    }
    Ok((
        Tensor::from_f32(dla, &[bsz, e])?,
        Tensor::from_f32(dlb, &[bsz, e])?,
        Tensor::from_f32(dwc, &[r, d, e])?,
    ))
}

/// `out = α · op(a) · op(b)` for `op(a) [m, k]` and `op(b) [k, n]`, row-major, `op` transposing
/// where the flag is set: the backend's `sgemm` on one thread (the samples run in parallel).
fn product(
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (a, trans_a): (&[f32], bool),
    (b, trans_b): (&[f32], bool),
    alpha: f32,
) {
    debug_assert!(out.len() >= m * n);
    let lda = if trans_a { m } else { k };
    let ldb = if trans_b { k } else { n };
    sgemm(
        (m, n, k),
        a,
        lda,
        trans_a,
        b,
        ldb,
        trans_b,
        out.as_mut_ptr(),
        n,
        alpha,
        0.0,
        1,
    );
}

/// One sample's selected factors as dense matrices: `A_sel [r·ρ, d_in]` and
/// `B_sel [d_out, r·ρ]`, slot i's ρ rows/columns at i·ρ.
struct Selected {
    a_sel: Vec<f32>,
    b_sel: Vec<f32>,
}

impl Selected {
    /// Gathers one sample's factors, selected by its slots `sa`, `sb` `[r]`, from the pools
    /// `av [E, ρ, d_in]` and `bv [E, d_out, ρ]`.
    fn gather(av: &[f32], bv: &[f32], (sa, sb): (&[usize], &[usize]), d: &ExpertDims) -> Self {
        let (din, dout, rho, k) = (d.d_in, d.d_out, d.rho, d.k());
        let mut a_sel = Vec::with_capacity(k * din);
        for &s in sa {
            a_sel.extend_from_slice(&av[s * rho * din..(s + 1) * rho * din]);
        }
        let mut b_sel = vec![0f32; dout * k];
        for (i, &s) in sb.iter().enumerate() {
            for o in 0..dout {
                for j in 0..rho {
                    b_sel[o * k + i * rho + j] = bv[(s * dout + o) * rho + j];
                }
            }
        }
        Selected { a_sel, b_sel }
    }
}

/// `v[n] · g[slot of n]` over a sample's `[T, r·ρ]` activations: each factor row scaled by its
/// slot's gate.
fn gate_rows(v: &[f32], g: &[f32], d: &ExpertDims) -> Vec<f32> {
    let k = d.k();
    v.iter()
        .enumerate()
        .map(|(n, &x)| x * g[(n % k) / d.rho])
        .collect()
}

pub fn expert_forward(
    x: &Tensor,
    a_pool: &Tensor,
    b_pool: &Tensor,
    sel_a: &Tensor,
    sel_b: &Tensor,
    gates: &Tensor,
    alpha: f32,
) -> Result<(Tensor, Tensor)> {
    let d = expert_dims(x, a_pool, b_pool, sel_a, sel_b, gates)?;
    let ExpertDims {
        b: bsz,
        t,
        d_in: din,
        d_out: dout,
        e,
        r,
        ..
    } = d;
    let (sa, sb) = (ids(sel_a)?, ids(sel_b)?);
    check_selection(&sa, e, "sel_a")?;
    check_selection(&sb, e, "sel_b")?;
    let (xv, av, bv, gv) = (x.f32s()?, a_pool.f32s()?, b_pool.f32s()?, gates.f32s()?);
    let k = d.k();
    let mut y = vec![0f32; bsz * t * dout];
    let mut u = vec![0f32; bsz * t * k];
    y.par_chunks_mut(t * dout)
        .zip(u.par_chunks_mut(t * k))
        .enumerate()
        .for_each(|(b, (yb, ub))| {
            let slots = b * r..(b + 1) * r;
            let f = Selected::gather(av, bv, (&sa[slots.clone()], &sb[slots.clone()]), &d);
            let xb = &xv[b * t * din..(b + 1) * t * din];
            product(ub, (t, k, din), (xb, false), (&f.a_sel, true), 1.0);
            let ug = gate_rows(ub, &gv[slots], &d);
            product(yb, (t, dout, k), (&ug, false), (&f.b_sel, true), alpha);
        });
    Ok((
        Tensor::from_f32(y, &[bsz, t, dout])?,
        Tensor::from_f32(u, &[bsz, t, k])?,
    ))
}

/// One sample's gradients of the composition: `dx [T, d_in]`, the selected factors'
/// `dA_sel [r·ρ, d_in]` and `dB_sel [d_out, r·ρ]`, and the gates' `dg [r]`.
struct SampleGrads {
    dx: Vec<f32>,
    da_sel: Vec<f32>,
    db_sel: Vec<f32>,
    dg: Vec<f32>,
}

/// The backward of one sample's `y = α · B_sel (g ⊙ (A_sel x))` (eq. 2/4) from its upstream
/// gradient `gy [T, d_out]`, input `xb [T, d_in]`, activations `ub [T, r·ρ]` and gates `g [r]`.
fn sample_backward(
    (gy, xb, ub): (&[f32], &[f32], &[f32]),
    f: &Selected,
    g: &[f32],
    d: &ExpertDims,
    alpha: f32,
) -> SampleGrads {
    let ExpertDims {
        t,
        d_in: din,
        d_out: dout,
        rho,
        r,
        ..
    } = *d;
    let k = d.k();
    // dug = α·dy·B_sel; the B factors see the gated activations ug.
    let mut dug = vec![0f32; t * k];
    product(
        &mut dug,
        (t, k, dout),
        (gy, false),
        (&f.b_sel, false),
        alpha,
    );
    let ug = gate_rows(ub, g, d);
    let mut db_sel = vec![0f32; dout * k];
    product(&mut db_sel, (dout, k, t), (gy, true), (&ug, false), alpha);
    let mut dg = vec![0f32; r];
    for (n, (&dv, &v)) in dug.iter().zip(ub).enumerate() {
        dg[(n % k) / rho] += dv * v;
    }
    let du = gate_rows(&dug, g, d);
    let mut da_sel = vec![0f32; k * din];
    product(&mut da_sel, (k, din, t), (&du, true), (xb, false), 1.0);
    let mut dx = vec![0f32; t * din];
    product(&mut dx, (t, din, k), (&du, false), (&f.a_sel, false), 1.0);
    SampleGrads {
        dx,
        da_sel,
        db_sel,
        dg,
    }
}

/// Adds every sample's selected-factor gradients into the pools' `dA [E, ρ, d_in]` and
/// `dB [E, d_out, ρ]`, in sample order (serially: samples may share factors).
fn scatter_into_pools(
    per: &[SampleGrads],
    (sa, sb): (&[usize], &[usize]),
    d: &ExpertDims,
) -> (Vec<f32>, Vec<f32>) {
    let ExpertDims {
        d_in: din,
        d_out: dout,
        e,
        rho,
        r,
        ..
    } = *d;
    let k = d.k();
    let mut da = vec![0f32; e * rho * din];
    let mut db = vec![0f32; e * dout * rho];
    for (b, s) in per.iter().enumerate() {
        for i in 0..r {
            let (fa, fb) = (sa[b * r + i], sb[b * r + i]);
            da[fa * rho * din..(fa + 1) * rho * din]
                .iter_mut()
                .zip(&s.da_sel[i * rho * din..(i + 1) * rho * din])
                .for_each(|(o, &v)| *o += v);
            for o in 0..dout {
                for j in 0..rho {
                    db[(fb * dout + o) * rho + j] += s.db_sel[o * k + i * rho + j];
                }
            }
        }
    }
    (da, db)
}

#[allow(clippy::too_many_arguments)]
pub fn expert_backward(
    dy: &Tensor,
    x: &Tensor,
    a_pool: &Tensor,
    b_pool: &Tensor,
    sel_a: &Tensor,
    sel_b: &Tensor,
    gates: &Tensor,
    u: &Tensor,
    alpha: f32,
) -> Result<ExpertGrads> {
    let d = expert_backward_dims(dy, x, a_pool, b_pool, sel_a, sel_b, gates, u)?;
    let ExpertDims {
        b: bsz,
        t,
        d_in: din,
        d_out: dout,
        r,
        ..
    } = d;
    let k = d.k();
    let (sa, sb) = (ids(sel_a)?, ids(sel_b)?);
    let (gyv, xv, av, bv, gv, uv) = (
        dy.f32s()?,
        x.f32s()?,
        a_pool.f32s()?,
        b_pool.f32s()?,
        gates.f32s()?,
        u.f32s()?,
    );
    let per: Vec<SampleGrads> = (0..bsz)
        .into_par_iter()
        .map(|b| {
            let slots = b * r..(b + 1) * r;
            let f = Selected::gather(av, bv, (&sa[slots.clone()], &sb[slots.clone()]), &d);
            let operands = (
                &gyv[b * t * dout..(b + 1) * t * dout],
                &xv[b * t * din..(b + 1) * t * din],
                &uv[b * t * k..(b + 1) * t * k],
            );
            sample_backward(operands, &f, &gv[slots], &d, alpha)
        })
        .collect();
    let (da, db) = scatter_into_pools(&per, (&sa, &sb), &d);
    let cat = |f: fn(&SampleGrads) -> &[f32]| per.iter().flat_map(f).copied().collect();
    Ok(ExpertGrads {
        dx: Tensor::from_f32(cat(|s| &s.dx), x.shape())?,
        da_pool: Tensor::from_f32(da, a_pool.shape())?,
        db_pool: Tensor::from_f32(db, b_pool.shape())?,
        dgates: Tensor::from_f32(cat(|s| &s.dg), &[bsz, r])?,
    })
}

impl ExpertOps for CpuBackend {
    fn route(
        &self,
        la: &Tensor,
        lb: &Tensor,
        a_pool: &Tensor,
        wc: &Tensor,
        lambda: f32,
    ) -> Result<Routing> {
        route(la, lb, a_pool, wc, lambda)
    }
    fn route_backward(
        &self,
        d_pa: &Tensor,
        d_pb: &Tensor,
        routing: &Routing,
        lambda: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        route_backward(d_pa, d_pb, routing, lambda)
    }
    fn expert_forward(
        &self,
        x: &Tensor,
        a_pool: &Tensor,
        b_pool: &Tensor,
        sel_a: &Tensor,
        sel_b: &Tensor,
        gates: &Tensor,
        alpha: f32,
    ) -> Result<(Tensor, Tensor)> {
        expert_forward(x, a_pool, b_pool, sel_a, sel_b, gates, alpha)
    }
    fn expert_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        a_pool: &Tensor,
        b_pool: &Tensor,
        sel_a: &Tensor,
        sel_b: &Tensor,
        gates: &Tensor,
        u: &Tensor,
        alpha: f32,
    ) -> Result<ExpertGrads> {
        expert_backward(dy, x, a_pool, b_pool, sel_a, sel_b, gates, u, alpha)
    }
    /// No: the CPU's pools stay separate tape nodes, so that its sums keep the order of the
    /// single-pool ops.
    fn groups_pools(&self) -> bool {
        false
    }
    fn pool_group_forward(&self, g: &PoolGroup) -> Result<GroupForward> {
        group::forward_by_pool(self, g)
    }
    fn pool_group_backward(
        &self,
        g: &PoolGroup,
        f: &GroupForward,
        dys: &[&Tensor],
    ) -> Result<GroupGrads> {
        group::backward_by_pool(self, g, f, dys)
    }
}
