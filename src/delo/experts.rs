//! The expert linear: routing of a factor pool pair (eq. 3 with the compatibility term), the
//! slot gates, and the gathered factor composition (eq. 2/4), as tape nodes.

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How the binary factor mask passes gradient to the routers (DELO.md "Routing", step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMode {
    /// Forward value 1; straight-through gradient `(1 + P_A − sg P_A)(1 + P_B − sg P_B)`.
    St,
    /// `g = P_A · P_B` in the forward too.
    Score,
    /// Forward value 1 and no gradient: routers stay at their initialisation.
    Hard,
}

impl std::str::FromStr for GateMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<GateMode> {
        match s {
            "st" => Ok(GateMode::St),
            "score" => Ok(GateMode::Score),
            "hard" => Ok(GateMode::Hard),
            _ => Err(Error::Msg(format!(
                "gate '{s}': expected st, score or hard"
            ))),
        }
    }
}

/// One modality's pool pair and routers for one target, as values on a tape.
#[derive(Clone, Copy, Debug)]
pub struct PoolVars {
    /// `[E, ρ, d_in]`
    pub a_pool: Var,
    /// `[E, d_out, ρ]`
    pub b_pool: Var,
    /// Router A: `[E, d_in]`, `[E]`.
    pub wa: Var,
    pub ba: Var,
    /// Router B: `[E, d_in]`, `[E]`.
    pub wb: Var,
    pub bb: Var,
    /// Compatibility router `[r, d_in, E]`.
    pub wc: Var,
}

/// Per-sample factor choice of one pool pair.
pub struct Selection {
    /// Slot gates `[B, r]`.
    pub gates: Var,
    /// `[B, r]` i32, best first.
    pub sel_a: Tensor,
    pub sel_b: Tensor,
}

/// Routes every sample's query `q [B, d_in]` to `r` A factors and `r` B factors: eq. (3)
/// (softmax routers, top-r with ties to the lower index), the compatibility term
/// c = Σᵢ softmax(āᵢ·W_C[i]) added to p_B with weight `lambda_cfs`, and the slot gates.
pub fn route(
    tape: &mut Tape,
    q: Var,
    pool: &PoolVars,
    lambda_cfs: f32,
    gate: GateMode,
) -> Result<Selection> {
    let la = tape.linear_param(q, pool.wa, Some(pool.ba))?;
    let lb = tape.linear_param(q, pool.wb, Some(pool.bb))?;
    let be = tape.device().backend();
    let rt = be.route(
        tape.value(la),
        tape.value(lb),
        tape.value(pool.a_pool),
        tape.value(pool.wc),
        lambda_cfs,
    )?;
    let (sel_a, sel_b) = (rt.sel_a.clone(), rt.sel_b.clone());
    let ones = || {
        Tensor::from_f32(vec![1.0; rt.pa_sel.numel()], rt.pa_sel.shape())?.to_device(tape.device())
    };
    let gates = match gate {
        GateMode::Hard => tape.constant(ones()?),
        GateMode::St => {
            let g = ones()?;
            tape.custom(&[la, lb, pool.wc], g, move |be, dg, _| {
                // At the forward value P − sg(P) = 0, so each factor of g has derivative 1.
                let (dla, dlb, dwc) = be.route_backward(dg, dg, &rt, lambda_cfs)?;
                Ok(vec![Some(dla), Some(dlb), Some(dwc)])
            })
        }
        GateMode::Score => {
            let g = be.mul(&rt.pa_sel, &rt.pb_sel)?;
            tape.custom(&[la, lb, pool.wc], g, move |be, dg, _| {
                let (d_pa, d_pb) = (be.mul(dg, &rt.pb_sel)?, be.mul(dg, &rt.pa_sel)?);
                let (dla, dlb, dwc) = be.route_backward(&d_pa, &d_pb, &rt, lambda_cfs)?;
                Ok(vec![Some(dla), Some(dlb), Some(dwc)])
            })
        }
    };
    Ok(Selection {
        gates,
        sel_a,
        sel_b,
    })
}

/// The composed low-rank update of eq. (2)/(4) for every token of `x [B, T, d_in]`:
/// `ΔW x = α · Σᵢ gᵢ · B[S_B[i]] (A[S_A[i]] x)`, slot i pairing the i-th best A and B factors.
pub fn compose(
    tape: &mut Tape,
    x: Var,
    pool: &PoolVars,
    sel: &Selection,
    alpha: f32,
) -> Result<Var> {
    let be = tape.device().backend();
    let (xv, av, bv, gv) = (
        tape.value(x).clone(),
        tape.value(pool.a_pool).clone(),
        tape.value(pool.b_pool).clone(),
        tape.value(sel.gates).clone(),
    );
    let (sa, sb) = (sel.sel_a.clone(), sel.sel_b.clone());
    let (y, u) = be.expert_forward(&xv, &av, &bv, &sa, &sb, &gv, alpha)?;
    Ok(tape.custom(
        &[x, pool.a_pool, pool.b_pool, sel.gates],
        y,
        move |be, dy, _| {
            let g = be.expert_backward(dy, &xv, &av, &bv, &sa, &sb, &gv, &u, alpha)?;
            Ok(vec![
                Some(g.dx),
                Some(g.da_pool),
                Some(g.db_pool),
                Some(g.dgates),
            ])
        },
    ))
}
