//! The expert linear: routing of a factor pool pair (eq. 3 with the compatibility term), the
//! slot gates, and the gathered factor composition (eq. 2/4), as tape nodes.

use crate::autograd::{Tape, Var};
use crate::backend::experts::group::{gate_backward, gates_of, with_pool_group};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How the binary factor mask passes gradient to the routers (docs/method.md#gates).
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
    let g = gates_of(be, &rt, gate)?;
    let gates = match gate {
        GateMode::Hard => tape.constant(g),
        GateMode::St | GateMode::Score => tape.custom(&[la, lb, pool.wc], g, move |be, dg, _| {
            let Some((d_pa, d_pb)) = gate_backward(be, dg, &rt, gate)? else {
                return Ok(vec![None, None, None]);
            };
            let (dla, dlb, dwc) = be.route_backward(&d_pa, &d_pb, &rt, lambda_cfs)?;
            Ok(vec![Some(dla), Some(dlb), Some(dwc)])
        }),
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

/// Each pool's selections `(S_A, S_B)`, `[B, r]` i32.
pub type SelectionPairs = Vec<(Tensor, Tensor)>;

/// Every routed pool of the linears of one layer that read the same input `x [B, T, d_in]`,
/// as one tape node: [`route`] and [`compose`] for each `(pool, query index)` of `pools`, with
/// `queries[i]` `[B, d_in]`, done together by [`crate::backend::Backend::pool_group_forward`]
/// (one launch per stage on CUDA). Returns each pool's update `[B, T, d_out]` and its
/// selections `(S_A, S_B)`, `[B, r]` i32, in the order of `pools`.
pub fn route_compose_group(
    tape: &mut Tape,
    x: Var,
    queries: &[Var],
    pools: &[(PoolVars, usize)],
    lambda_cfs: f32,
    gate: GateMode,
    alpha: f32,
) -> Result<(Vec<Var>, SelectionPairs)> {
    let be = tape.device().backend();
    let xv = tape.value(x).clone();
    let qv: Vec<Tensor> = queries.iter().map(|&q| tape.value(q).clone()).collect();
    let params: Vec<[Tensor; 7]> = pools
        .iter()
        .map(|(p, _)| {
            [p.a_pool, p.b_pool, p.wa, p.ba, p.wb, p.bb, p.wc].map(|v| tape.value(v).clone())
        })
        .collect();
    let which: Vec<usize> = pools.iter().map(|&(_, q)| q).collect();
    let fwd = with_pool_group(&xv, &qv, &params, &which, lambda_cfs, gate, alpha, |g| {
        be.pool_group_forward(g)
    })?;
    let selections = fwd
        .routings
        .iter()
        .map(|rt| (rt.sel_a.clone(), rt.sel_b.clone()))
        .collect();
    let mut inputs = vec![x];
    inputs.extend_from_slice(queries);
    for (p, _) in pools {
        inputs.extend([p.a_pool, p.b_pool, p.wa, p.ba, p.wb, p.bb, p.wc]);
    }
    let ys = fwd.ys.clone();
    let outs = tape.custom_multi(&inputs, ys, move |be, dys, _| {
        let dys = dys
            .iter()
            .zip(&fwd.ys)
            .map(|(dy, y)| match dy {
                Some(dy) => Ok(dy.clone()),
                None => be.zeros(y.shape(), y.dtype()),
            })
            .collect::<Result<Vec<Tensor>>>()?;
        let dys: Vec<&Tensor> = dys.iter().collect();
        let g = with_pool_group(&xv, &qv, &params, &which, lambda_cfs, gate, alpha, |g| {
            be.pool_group_backward(g, &fwd, &dys)
        })?;
        let mut out = vec![Some(g.dx)];
        out.extend(g.dq);
        for p in g.pools {
            out.extend([Some(p.da_pool), Some(p.db_pool)]);
            match p.routers {
                Some(r) => out.extend([r.dwa, r.dba, r.dwb, r.dbb, r.dwc].map(Some)),
                None => out.extend([None, None, None, None, None]),
            }
        }
        Ok(out)
    });
    Ok((outs, selections))
}
