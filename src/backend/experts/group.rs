//! Every routed pool of the linears of one layer that read the same input (ViLT's q, k and v
//! projections × DeLo's two modality pools) as one op: routing with the router linears
//! (eq. 3 and the compatibility term, docs/method.md#routing), the slot gates and the gathered
//! factor composition (eq. 2/4), and their backward.
//!
//! [`forward_by_pool`] and [`backward_by_pool`] compose the single-pool ops pool by pool: the
//! reference (CPU twin) of the CUDA backend's grouped kernels, which do each stage for every pool
//! of the group in one launch (`route_group_f32`, `expert_fwd_group_k*`, `expert_bwd_group_k*`,
//! `router_backward_group_f32`).

use super::dims::ExpertDims;
use crate::backend::{Backend, Gemm, Routing};
use crate::delo::experts::GateMode;
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// One modality pool of a group with its routers.
#[derive(Clone, Copy)]
pub struct GroupPool<'a> {
    /// Which of [`PoolGroup::queries`] routes this pool.
    pub query: usize,
    /// `[E, ρ, d_in]`
    pub a_pool: &'a Tensor,
    /// `[E, d_out, ρ]`
    pub b_pool: &'a Tensor,
    /// Router A: weight `[E, d_in]`, bias `[E]`.
    pub wa: &'a Tensor,
    pub ba: &'a Tensor,
    /// Router B: weight `[E, d_in]`, bias `[E]`.
    pub wb: &'a Tensor,
    pub bb: &'a Tensor,
    /// Compatibility router `[r, d_in, E]`.
    pub wc: &'a Tensor,
}

/// The pools of one layer's linears that read the same input `x`.
pub struct PoolGroup<'a> {
    /// `[B, T, d_in]`, shared by every pool.
    pub x: &'a Tensor,
    /// The routing queries, each `[B, d_in]` (DeLo: the guided q̂_v and q̂_t of eq. 5).
    pub queries: &'a [&'a Tensor],
    pub pools: &'a [GroupPool<'a>],
    /// Weight of the compatibility term in S_B's scores.
    pub lambda: f32,
    pub gate: GateMode,
    /// The LoRA scale α of eq. (2).
    pub alpha: f32,
}

/// The forward of a [`PoolGroup`], per pool in the group's order.
pub struct GroupForward {
    /// Each pool's update `[B, T, d_out]`.
    pub ys: Vec<Tensor>,
    pub routings: Vec<Routing>,
    /// Slot gates `[B, r]`.
    pub gates: Vec<Tensor>,
    /// Factor activations `A_sel x`, `[B, T, r·ρ]`.
    pub us: Vec<Tensor>,
}

/// Gradients of one pool's router parameters (none with [`GateMode::Hard`]).
pub struct RouterGrads {
    pub dwa: Tensor,
    pub dba: Tensor,
    pub dwb: Tensor,
    pub dbb: Tensor,
    pub dwc: Tensor,
}

/// Gradients of one pool's parameters.
pub struct PoolGrads {
    /// `[E, ρ, d_in]`, zero for factors no sample selected.
    pub da_pool: Tensor,
    /// `[E, d_out, ρ]`.
    pub db_pool: Tensor,
    pub routers: Option<RouterGrads>,
}

/// Gradients of a [`PoolGroup`]'s inputs.
pub struct GroupGrads {
    /// `[B, T, d_in]`: the sum over the pools.
    pub dx: Tensor,
    /// Per query `[B, d_in]`; `None` where no gradient reaches it (no pool routed by it, or
    /// [`GateMode::Hard`]).
    pub dq: Vec<Option<Tensor>>,
    pub pools: Vec<PoolGrads>,
}

/// The group's common dimensions, checked on every pool: the grouped kernels take one set for
/// the whole group.
pub(crate) fn group_dims(g: &PoolGroup) -> Result<ExpertDims> {
    const OP: &str = "pool_group";
    let first = g
        .pools
        .first()
        .ok_or_else(|| Error::shape(OP, "a group with no pool"))?;
    ensure_shape!(
        g.x.rank() == 3 && first.a_pool.rank() == 3 && first.b_pool.rank() == 3,
        OP,
        "input {:?} must be [B, T, d_in] and the pools [E, ρ, d_in] / [E, d_out, ρ], got {:?} / {:?}",
        g.x.shape(),
        first.a_pool.shape(),
        first.b_pool.shape()
    );
    let (b, t, din) = (g.x.dim(0), g.x.dim(1), g.x.dim(2));
    let (e, rho, dout) = (
        first.a_pool.dim(0),
        first.a_pool.dim(1),
        first.b_pool.dim(1),
    );
    ensure_shape!(
        first.wc.rank() == 3,
        OP,
        "compatibility router {:?} must be [r, d_in, E]",
        first.wc.shape()
    );
    let r = first.wc.dim(0);
    for (i, p) in g.pools.iter().enumerate() {
        let q = g.queries.get(p.query).ok_or_else(|| {
            Error::shape(
                OP,
                format!("pool {i} reads query {} of {}", p.query, g.queries.len()),
            )
        })?;
        ensure_shape!(
            q.shape() == [b, din]
                && p.a_pool.shape() == [e, rho, din]
                && p.b_pool.shape() == [e, dout, rho]
                && p.wa.shape() == [e, din]
                && p.wb.shape() == [e, din]
                && p.ba.shape() == [e]
                && p.bb.shape() == [e]
                && p.wc.shape() == [r, din, e],
            OP,
            "pool {i} does not fit the group's B={b}, d_in={din}, d_out={dout}, E={e}, ρ={rho}, \
             r={r}: query {:?}, A {:?}, B {:?}, routers {:?} {:?} {:?} {:?}, W_C {:?}",
            q.shape(),
            p.a_pool.shape(),
            p.b_pool.shape(),
            p.wa.shape(),
            p.ba.shape(),
            p.wb.shape(),
            p.bb.shape(),
            p.wc.shape()
        );
    }
    Ok(ExpertDims {
        b,
        t,
        d_in: din,
        d_out: dout,
        e,
        rho,
        r,
    })
}

/// The slot gates of eq. (4) for one pool's routing: 1 in the forward for `st` and `hard`,
/// `P_A · P_B` for `score` (docs/method.md#gates).
pub fn gates_of<B: Backend + ?Sized>(be: &B, rt: &Routing, gate: GateMode) -> Result<Tensor> {
    match gate {
        GateMode::Score => be.mul(&rt.pa_sel, &rt.pb_sel),
        GateMode::St | GateMode::Hard => {
            let n = rt.pa_sel.numel();
            Tensor::from_f32(vec![1.0; n], rt.pa_sel.shape())?.to_device(&be.device())
        }
    }
}

/// The gradients of the selected probabilities `(dP_A, dP_B)` from the gates' gradient: the
/// straight-through estimator's `(dg, dg)` for `st` (at the forward value each factor of
/// `(1 + P_A − sg P_A)(1 + P_B − sg P_B)` has derivative 1), the product rule for `score`,
/// none for `hard`.
pub fn gate_backward<B: Backend + ?Sized>(
    be: &B,
    dg: &Tensor,
    rt: &Routing,
    gate: GateMode,
) -> Result<Option<(Tensor, Tensor)>> {
    Ok(match gate {
        GateMode::Hard => None,
        GateMode::St => Some((dg.clone(), dg.clone())),
        GateMode::Score => Some((be.mul(dg, &rt.pb_sel)?, be.mul(dg, &rt.pa_sel)?)),
    })
}

/// [`crate::backend::ExpertOps::pool_group_forward`] pool by pool with the single-pool ops: the router linears
/// `W q + b`, [`crate::backend::ExpertOps::route`], the gates and [`crate::backend::ExpertOps::expert_forward`].
pub fn forward_by_pool<B: Backend + ?Sized>(be: &B, g: &PoolGroup) -> Result<GroupForward> {
    group_dims(g)?;
    let mut f = GroupForward {
        ys: Vec::new(),
        routings: Vec::new(),
        gates: Vec::new(),
        us: Vec::new(),
    };
    for p in g.pools {
        let q = g.queries[p.query];
        let la = be.matmul_bias(q, p.wa, Gemm::nt(), p.ba)?;
        let lb = be.matmul_bias(q, p.wb, Gemm::nt(), p.bb)?;
        let rt = be.route(&la, &lb, p.a_pool, p.wc, g.lambda)?;
        let gates = gates_of(be, &rt, g.gate)?;
        let (y, u) = be.expert_forward(
            g.x, p.a_pool, p.b_pool, &rt.sel_a, &rt.sel_b, &gates, g.alpha,
        )?;
        f.ys.push(y);
        f.routings.push(rt);
        f.gates.push(gates);
        f.us.push(u);
    }
    Ok(f)
}

/// [`crate::backend::ExpertOps::pool_group_backward`] pool by pool with the single-pool ops; `dys[p]` is the
/// gradient of pool p's update. Sums over pools in the group's order.
pub fn backward_by_pool<B: Backend + ?Sized>(
    be: &B,
    g: &PoolGroup,
    f: &GroupForward,
    dys: &[&Tensor],
) -> Result<GroupGrads> {
    check_backward(g, f, dys)?;
    let mut dx: Option<Tensor> = None;
    let mut dq: Vec<Option<Tensor>> = g.queries.iter().map(|_| None).collect();
    let mut pools = Vec::with_capacity(g.pools.len());
    let add_into = |slot: &mut Option<Tensor>, v: Tensor| -> Result<()> {
        match slot {
            None => *slot = Some(v),
            Some(acc) => be.add_assign(acc, &v)?,
        }
        Ok(())
    };
    for (i, p) in g.pools.iter().enumerate() {
        let rt = &f.routings[i];
        let eg = be.expert_backward(
            dys[i],
            g.x,
            p.a_pool,
            p.b_pool,
            &rt.sel_a,
            &rt.sel_b,
            &f.gates[i],
            &f.us[i],
            g.alpha,
        )?;
        add_into(&mut dx, eg.dx)?;
        let routers = match gate_backward(be, &eg.dgates, rt, g.gate)? {
            None => None,
            Some((d_pa, d_pb)) => {
                let (dla, dlb, dwc) = be.route_backward(&d_pa, &d_pb, rt, g.lambda)?;
                let q = g.queries[p.query];
                let dq_a = be.matmul(&dla, p.wa, Gemm::nn())?;
                let dq_b = be.matmul(&dlb, p.wb, Gemm::nn())?;
                add_into(&mut dq[p.query], be.add(&dq_a, &dq_b)?)?;
                Some(RouterGrads {
                    dwa: be.matmul(&dla, q, Gemm::tn())?,
                    dba: be.sum_rows(&dla)?,
                    dwb: be.matmul(&dlb, q, Gemm::tn())?,
                    dbb: be.sum_rows(&dlb)?,
                    dwc,
                })
            }
        };
        pools.push(PoolGrads {
            da_pool: eg.da_pool,
            db_pool: eg.db_pool,
            routers,
        });
    }
    Ok(GroupGrads {
        dx: dx.ok_or_else(|| Error::shape("pool_group_backward", "a group with no pool"))?,
        dq,
        pools,
    })
}

/// Checks a backward's operands: one forward of this group, one gradient per pool of the
/// update's shape. Returns the group's dimensions.
pub(crate) fn check_backward(
    g: &PoolGroup,
    f: &GroupForward,
    dys: &[&Tensor],
) -> Result<ExpertDims> {
    let dims = group_dims(g)?;
    let ExpertDims {
        b, t, d_out: dout, ..
    } = dims;
    let n = g.pools.len();
    ensure_shape!(
        f.ys.len() == n
            && f.routings.len() == n
            && f.gates.len() == n
            && f.us.len() == n
            && dys.len() == n,
        "pool_group_backward",
        "{n} pools, but a forward of {} and {} gradients",
        f.ys.len(),
        dys.len()
    );
    for (i, dy) in dys.iter().enumerate() {
        ensure_shape!(
            dy.shape() == [b, t, dout] && dy.dtype() == DType::F32,
            "pool_group_backward",
            "gradient of pool {i} is {:?} {:?}, expected f32 [{b}, {t}, {dout}]",
            dy.dtype(),
            dy.shape()
        );
    }
    Ok(dims)
}

/// Runs `f` on the [`PoolGroup`] of these values: `params[p]` holds pool p's A pool, B pool,
/// router A weight and bias, router B weight and bias and compatibility router, in that order,
/// and `which[p]` the index of the query that routes it.
#[allow(clippy::too_many_arguments)]
pub fn with_pool_group<R>(
    x: &Tensor,
    queries: &[Tensor],
    params: &[[Tensor; 7]],
    which: &[usize],
    lambda: f32,
    gate: GateMode,
    alpha: f32,
    f: impl FnOnce(&PoolGroup) -> Result<R>,
) -> Result<R> {
    let queries: Vec<&Tensor> = queries.iter().collect();
    let pools: Vec<GroupPool> = params
        .iter()
        .zip(which)
        .map(|([a_pool, b_pool, wa, ba, wb, bb, wc], &query)| GroupPool {
            query,
            a_pool,
            b_pool,
            wa,
            ba,
            wb,
            bb,
            wc,
        })
        .collect();
    f(&PoolGroup {
        x,
        queries: &queries,
        pools: &pools,
        lambda,
        gate,
        alpha,
    })
}
