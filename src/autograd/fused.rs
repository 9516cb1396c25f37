//! Fused tape nodes of the ViLT block: a frozen linear's bias added together with what follows
//! it (the adapter's updates, GELU, the residual add and the next LayerNorm), so that a CUDA
//! step launches one kernel where the unfused ops launched two to four (issue #12's launch
//! budget). Each node's value is computed by one backend op whose CPU version is the unfused
//! sequence itself, and each gives its inputs the gradients the unfused nodes gave them, in the
//! same order, so the CPU's results do not change by a bit.

use super::{Tape, Var};
use crate::backend::Unary;
use crate::error::Result;
use crate::tensor::Tensor;

/// A frozen linear's product `x · Wᵀ`, with its bias still to be added where the backend does
/// not fold it into the GEMM ([`crate::backend::Backend::gemm_folds_bias`]). Consumed by
/// [`Tape::add_parts`], [`Tape::bias_gelu`] or [`Tape::add_layernorm`].
pub struct LinearOut {
    y: Var,
    bias: Option<Tensor>,
}

/// The LayerNorm of a residual stream computed by [`Tape::add_layernorm`], recorded on the tape
/// by [`Tape::record_layernorm`] once whatever else reads the stream first has been recorded.
pub struct PendingLayerNorm {
    out: crate::backend::LayerNormOut,
    w: Tensor,
}

impl LinearOut {
    /// A value that already carries its bias.
    pub fn biased(y: Var) -> LinearOut {
        LinearOut { y, bias: None }
    }
}

impl Tape {
    /// Frozen linear `x · Wᵀ (+ b)` over the last dimension with the bias deferred to the
    /// consumer (docs/vilt.md#encoder-blocks; `W` stored `[out, in]`, `b [out]`).
    pub fn linear_deferred(&mut self, x: Var, w: &Tensor, b: &Tensor) -> Result<LinearOut> {
        if self.be().gemm_folds_bias() {
            return Ok(LinearOut {
                y: self.linear(x, w, Some(b))?,
                bias: None,
            });
        }
        Ok(LinearOut {
            y: self.linear(x, w, None)?,
            bias: Some(b.clone()),
        })
    }

    /// `(y + b) + (parts₀ + parts₁ + …)`: a frozen linear with the updates an adapter adds to
    /// it (eq. 2/4, docs/method.md#composition: `W x + ΔW x`), as one node whose gradient passes to
    /// every input.
    pub fn add_parts(&mut self, lin: LinearOut, parts: &[Var]) -> Result<Var> {
        if parts.is_empty() && lin.bias.is_none() {
            return Ok(lin.y);
        }
        let values: Vec<Tensor> = parts.iter().map(|&p| self.value(p).clone()).collect();
        let refs: Vec<&Tensor> = values.iter().collect();
        let out = self
            .be()
            .bias_add_parts(self.value(lin.y), lin.bias.as_ref(), &refs)?;
        let mut inputs = vec![lin.y];
        inputs.extend_from_slice(parts);
        let n = inputs.len();
        Ok(self.record(&inputs, out, move |_, dy, _| Ok(vec![Some(dy.clone()); n])))
    }

    /// Exact GELU of a frozen linear's output with its bias (ViLT's MLP,
    /// docs/vilt.md#encoder-blocks).
    pub fn bias_gelu(&mut self, lin: LinearOut) -> Result<Var> {
        let (pre, out) = self.be().bias_gelu(self.value(lin.y), lin.bias.as_ref())?;
        Ok(self.record(&[lin.y], out, move |be, dy, _| {
            Ok(vec![Some(be.unary_backward(Unary::Gelu, dy, &pre)?)])
        }))
    }

    /// The residual stream `s = x + (y + b)` after a sublayer, recorded, and the LayerNorm of
    /// `s` with frozen `w`, `b_ln`, computed in the same pass but recorded only by
    /// [`Tape::record_layernorm`]: ViLT's adapter reads the stream of the next layer before its
    /// LayerNorm, and the backward must meet the nodes in that order.
    pub fn add_layernorm(
        &mut self,
        x: Var,
        sub: LinearOut,
        w: &Tensor,
        b_ln: &Tensor,
        eps: f32,
    ) -> Result<(Var, PendingLayerNorm)> {
        let (s, out) = self.be().add_layernorm(
            self.value(x),
            self.value(sub.y),
            sub.bias.as_ref(),
            w,
            b_ln,
            eps,
        )?;
        let s = self.record(&[x, sub.y], s, |_, dy, _| {
            Ok(vec![Some(dy.clone()), Some(dy.clone())])
        });
        Ok((s, PendingLayerNorm { out, w: w.clone() }))
    }

    /// Records the LayerNorm of `s` that [`Tape::add_layernorm`] computed.
    pub fn record_layernorm(&mut self, s: Var, ln: PendingLayerNorm) -> Var {
        let sv = self.value(s).clone();
        let PendingLayerNorm { out, w } = ln;
        let (mean, rstd) = (out.mean, out.rstd);
        self.record(&[s], out.y, move |be, dy, _| {
            let g = be.layernorm_backward(dy, &sv, &w, &mean, &rstd, false)?;
            Ok(vec![Some(g.dx)])
        })
    }
}
