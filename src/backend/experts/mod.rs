//! DeLo's own ops, apart from the generic tensor ops of [`crate::backend::Backend`]: routing
//! with the compatibility term (eq. 3) and the gathered factor composition (eq. 2/4), forward
//! and backward, one pool at a time or every routed pool of a layer together. Side by side:
//! their operand checks ([`dims`]), the CPU reference ([`cpu`], [`group`]'s pool-by-pool
//! definition of a group) and the CUDA launchers (`cuda.rs`, `cuda_group.rs`, compiled inside
//! [`crate::backend::cuda`], whose launch helpers they use).

pub mod cpu;
pub(crate) mod dims;
pub mod group;

use crate::backend::Device;
use crate::error::Result;
use crate::tensor::Tensor;
use group::{GroupForward, GroupGrads, PoolGroup};

/// The DeLo expert ops of a backend (every [`crate::backend::Backend`] has them).
pub trait ExpertOps {
    /// Factor selection of one pool pair for every sample (eq. 3, docs/method.md#routing): softmax
    /// of the router logits `la, lb [B, E]`, top-r of p_A, the compatibility term from the
    /// selected A factors `a_pool [E, ρ, d]` and `wc [r, d, E]`, top-r of p_B + λ·c.
    fn route(
        &self,
        la: &Tensor,
        lb: &Tensor,
        a_pool: &Tensor,
        wc: &Tensor,
        lambda: f32,
    ) -> Result<Routing>;
    /// Gradients of the selected probabilities `P_A, P_B [B, r]` back to the router logits and
    /// the compatibility router: `(dla, dlb, dwc)`.
    fn route_backward(
        &self,
        d_pa: &Tensor,
        d_pb: &Tensor,
        routing: &Routing,
        lambda: f32,
    ) -> Result<(Tensor, Tensor, Tensor)>;
    /// The gathered factor composition, eq. (2)/(4): for every sample b and token t,
    /// `α · Σᵢ gᵢ · B[S_B[i]] (A[S_A[i]] x)` with `x [B, T, d_in]`, `a_pool [E, ρ, d_in]`,
    /// `b_pool [E, d_out, ρ]`, selections `[B, r]` (i32) and gates `[B, r]`. Returns the update
    /// `[B, T, d_out]` and the factor activations `u = A_sel x`, `[B, T, r·ρ]`, for backward.
    #[allow(clippy::too_many_arguments)]
    fn expert_forward(
        &self,
        x: &Tensor,
        a_pool: &Tensor,
        b_pool: &Tensor,
        sel_a: &Tensor,
        sel_b: &Tensor,
        gates: &Tensor,
        alpha: f32,
    ) -> Result<(Tensor, Tensor)>;
    /// Gradients of [`ExpertOps::expert_forward`] to the input, both pools (scattered back into
    /// pool shape) and the gates.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<ExpertGrads>;

    // ---- every routed pool of a layer's shared-input linears at once --------------------------
    /// Whether [`ExpertOps::pool_group_forward`] does each stage for the whole group at once
    /// (one launch each on CUDA). The CPU says no: its pools stay separate tape nodes, so that
    /// its sums keep the order of the single-pool ops.
    fn groups_pools(&self) -> bool;
    /// Routing (router linears included), gates and composition of every pool of `g`
    /// (eq. 2–4, docs/method.md#composition). The CPU goes pool by pool
    /// ([`group::forward_by_pool`]).
    fn pool_group_forward(&self, g: &PoolGroup) -> Result<GroupForward>;
    /// Gradients of [`ExpertOps::pool_group_forward`] from each pool's update gradient `dys[p]`
    /// to the shared input, the queries and every pool's parameters.
    fn pool_group_backward(
        &self,
        g: &PoolGroup,
        f: &GroupForward,
        dys: &[&Tensor],
    ) -> Result<GroupGrads>;
}

/// What [`ExpertOps::route`] decides, with what its backward needs.
#[derive(Clone, Debug)]
pub struct Routing {
    /// Selected A factors per sample, best first, `[B, r]` i32.
    pub sel_a: Tensor,
    /// Selected B factors per sample, best first, `[B, r]` i32.
    pub sel_b: Tensor,
    /// softmax(W_A q + b_A), `[B, E]`.
    pub p_a: Tensor,
    /// softmax(W_B q + b_B), `[B, E]` (without the compatibility term).
    pub p_b: Tensor,
    /// Per-slot softmax_E(ā_i · W_C[i]), `[B, r, E]`.
    pub compat: Tensor,
    /// ā_i, the selected A factors summed over their ρ rows, `[B, r, d]` (stop-gradient).
    pub abar: Tensor,
    /// P_A,i = p_A[S_A[i]], `[B, r]`.
    pub pa_sel: Tensor,
    /// P_B,i = (p_B + λ·c)[S_B[i]], `[B, r]`.
    pub pb_sel: Tensor,
}

impl Routing {
    pub fn to_device(&self, d: &Device) -> Result<Routing> {
        Ok(Routing {
            sel_a: self.sel_a.to_device(d)?,
            sel_b: self.sel_b.to_device(d)?,
            p_a: self.p_a.to_device(d)?,
            p_b: self.p_b.to_device(d)?,
            compat: self.compat.to_device(d)?,
            abar: self.abar.to_device(d)?,
            pa_sel: self.pa_sel.to_device(d)?,
            pb_sel: self.pb_sel.to_device(d)?,
        })
    }
}

/// Gradients of the gathered factor composition.
pub struct ExpertGrads {
    pub dx: Tensor,
    /// `[E, ρ, d_in]`, zero for factors no sample selected.
    pub da_pool: Tensor,
    /// `[E, d_out, ρ]`.
    pub db_pool: Tensor,
    /// `[B, r]`.
    pub dgates: Tensor,
}
