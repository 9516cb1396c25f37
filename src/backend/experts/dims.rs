//! Operand checks of the DeLo expert ops, shared by the CPU reference and the CUDA launchers:
//! each returns the dimensions the op runs on, or an error naming the op and what was expected.

use crate::backend::Routing;
use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::Tensor;

/// Shapes of one routing: `(B, E, ρ, d, r)`, checked as both backends require.
pub(crate) fn route_dims(
    la: &Tensor,
    lb: &Tensor,
    a_pool: &Tensor,
    wc: &Tensor,
) -> Result<(usize, usize, usize, usize, usize)> {
    const OP: &str = "route";
    ensure_shape!(
        la.rank() == 2 && la.shape() == lb.shape(),
        OP,
        "router logits {:?} and {:?} must both be [B, E]",
        la.shape(),
        lb.shape()
    );
    let (bsz, e) = (la.dim(0), la.dim(1));
    ensure_shape!(
        a_pool.rank() == 3 && a_pool.dim(0) == e,
        OP,
        "A pool {:?} must be [E={e}, ρ, d]",
        a_pool.shape()
    );
    let (rho, d) = (a_pool.dim(1), a_pool.dim(2));
    ensure_shape!(
        wc.rank() == 3 && wc.dim(1) == d && wc.dim(2) == e,
        OP,
        "compatibility router {:?} must be [r, d={d}, E={e}]",
        wc.shape()
    );
    let r = wc.dim(0);
    ensure_shape!(r <= e, OP, "cannot select r={r} of E={e} factors");
    Ok((bsz, e, rho, d, r))
}

/// Shapes of one expert composition (eq. 2/4, docs/method.md): `x [B, T, d_in]`, pools
/// `A [E, ρ, d_in]` and `B [E, d_out, ρ]`, and `r` selected slots per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExpertDims {
    /// B: samples.
    pub b: usize,
    /// T: tokens of a sample.
    pub t: usize,
    pub d_in: usize,
    pub d_out: usize,
    /// E: factors in a pool (ρ rows each; rank-one at ρ = 1).
    pub e: usize,
    /// ρ: rows of a factor.
    pub rho: usize,
    /// r: slots selected per sample.
    pub r: usize,
}

impl ExpertDims {
    /// r·ρ: the selected factor rows of a sample, the width of the activations `u`.
    pub fn k(&self) -> usize {
        self.r * self.rho
    }
}

/// The dimensions of [`crate::backend::ExpertOps::expert_forward`]'s operands, checked.
pub(crate) fn expert_dims(
    x: &Tensor,
    a_pool: &Tensor,
    b_pool: &Tensor,
    sel_a: &Tensor,
    sel_b: &Tensor,
    gates: &Tensor,
) -> Result<ExpertDims> {
    const OP: &str = "expert";
    ensure_shape!(
        x.rank() == 3,
        OP,
        "input {:?} must be [B, T, d_in]",
        x.shape()
    );
    let (bsz, t, din) = (x.dim(0), x.dim(1), x.dim(2));
    ensure_shape!(
        a_pool.rank() == 3 && a_pool.dim(2) == din,
        OP,
        "A pool {:?} must be [E, ρ, d_in={din}]",
        a_pool.shape()
    );
    let (e, rho) = (a_pool.dim(0), a_pool.dim(1));
    ensure_shape!(
        b_pool.rank() == 3 && b_pool.dim(0) == e && b_pool.dim(2) == rho,
        OP,
        "B pool {:?} must be [E={e}, d_out, ρ={rho}]",
        b_pool.shape()
    );
    ensure_shape!(
        sel_a.rank() == 2
            && sel_a.dim(0) == bsz
            && sel_a.shape() == sel_b.shape()
            && sel_a.shape() == gates.shape(),
        OP,
        "selections {:?}, {:?} and gates {:?} must all be [B={bsz}, r]",
        sel_a.shape(),
        sel_b.shape(),
        gates.shape()
    );
    Ok(ExpertDims {
        b: bsz,
        t,
        d_in: din,
        d_out: b_pool.dim(1),
        e,
        rho,
        r: sel_a.dim(1),
    })
}

/// `(B, E, r, d)` of the routing backward: the gradients of the selected probabilities
/// `P_A, P_B [B, r]` against the forward's routing.
pub(crate) fn route_backward_dims(
    d_pa: &Tensor,
    d_pb: &Tensor,
    rt: &Routing,
) -> Result<(usize, usize, usize, usize)> {
    const OP: &str = "route_backward";
    ensure_shape!(
        rt.p_a.rank() == 2 && rt.abar.rank() == 3,
        OP,
        "routing probabilities {:?} / factor sums {:?} must be [B, E] / [B, r, d]",
        rt.p_a.shape(),
        rt.abar.shape()
    );
    let (bsz, e) = (rt.p_a.dim(0), rt.p_a.dim(1));
    let (r, d) = (rt.abar.dim(1), rt.abar.dim(2));
    ensure_shape!(
        d_pa.shape() == [bsz, r] && d_pb.shape() == [bsz, r],
        OP,
        "gradients {:?}, {:?} must be [B={bsz}, r={r}]",
        d_pa.shape(),
        d_pb.shape()
    );
    ensure_shape!(
        rt.abar.dim(0) == bsz
            && rt.p_b.shape() == [bsz, e]
            && rt.compat.shape() == [bsz, r, e]
            && rt.sel_a.shape() == [bsz, r]
            && rt.sel_b.shape() == [bsz, r],
        OP,
        "inconsistent routing: p_b {:?}, compat {:?}, sel_a {:?}, sel_b {:?} for B={bsz}, \
         E={e}, r={r}",
        rt.p_b.shape(),
        rt.compat.shape(),
        rt.sel_a.shape(),
        rt.sel_b.shape()
    );
    Ok((bsz, e, r, d))
}

/// [`expert_dims`] of the composition's backward, with its upstream gradient
/// `dy [B, T, d_out]` and the forward's factor activations `u [B, T, r·ρ]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn expert_backward_dims(
    dy: &Tensor,
    x: &Tensor,
    a_pool: &Tensor,
    b_pool: &Tensor,
    sel_a: &Tensor,
    sel_b: &Tensor,
    gates: &Tensor,
    u: &Tensor,
) -> Result<ExpertDims> {
    let d = expert_dims(x, a_pool, b_pool, sel_a, sel_b, gates)?;
    ensure_shape!(
        dy.shape() == [d.b, d.t, d.d_out] && u.shape() == [d.b, d.t, d.k()],
        "expert_backward",
        "gradient {:?} / activations {:?} do not fit [B, T, d_out] / [B, T, r·ρ]",
        dy.shape(),
        u.shape()
    );
    Ok(d)
}
