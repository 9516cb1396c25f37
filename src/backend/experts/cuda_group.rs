//! Every routed pool of a layer's shared-input linears on the device, one launch per stage
//! (`route_group_f32`, `expert_fwd_group_k*`, `expert_bwd_group_k*`, `router_backward_group_f32`
//! and the stacked reductions): the CUDA twin of [`crate::backend::experts::group::forward_by_pool`]
//! and [`crate::backend::experts::group::backward_by_pool`]. Per-pool pointers (parameters, queries,
//! upstream gradients) go in a table uploaded beside the launch; everything the group computes
//! is stacked pool-major, and each pool gets views of it.

use cudarc::driver::LaunchConfig;

use super::experts::{
    aligned16, km_of, launch_dims, stage_cols, RoutingPtrs, TilePartials, EXP_THREADS,
};
use super::kernels::{cfg_flat, Ptr};
use super::ops::{int, long};
use super::{nvtx, CudaBackend, Scratch};
use crate::backend::experts::dims::ExpertDims;
use crate::backend::experts::group::{
    backward_by_pool, check_backward, forward_by_pool, group_dims, GroupForward, GroupGrads,
    PoolGrads, PoolGroup, RouterGrads,
};
use crate::backend::{Backend, Routing};
use crate::delo::experts::GateMode;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

const F32: DType = DType::F32;
const I32: DType = DType::I32;
const FWD: &str = "pool_group_forward";
const BWD: &str = "pool_group_backward";

/// Largest r·ρ of the grouped composition kernels (register widths 4 and 8): at 16 the
/// per-pool pointers beside the register tiles would cost the backward a stack frame
/// (`tests/cuda_ptx.rs` checks for none), so such groups run pool by pool.
pub const GROUP_MAX_K: usize = 8;

/// Pool-major stacked tensor `[P, …]` cut into its P views of `shape`.
fn views(t: &Tensor, pools: usize, shape: &[usize]) -> Result<Vec<Tensor>> {
    let n = crate::tensor::numel(shape);
    (0..pools).map(|p| t.view(p * n, shape)).collect()
}

/// A grouped forward's outputs as the backward reads them: each stacked over the P·B
/// (pool, sample) rows, pool-major.
struct StackedForward {
    routing: RoutingPtrs,
    gates: Ptr,
    u: Ptr,
}

impl CudaBackend {
    /// Whether the grouped kernels take this group: r·ρ ≤ [`GROUP_MAX_K`], the router's
    /// E ≤ 1024 and the grid's limits; the pool-by-pool ops take the rest.
    fn groupable(&self, g: &PoolGroup, d: &ExpertDims) -> bool {
        d.b * d.t > 0
            && (1..=GROUP_MAX_K).contains(&d.k())
            && (1..=1024).contains(&d.e)
            && d.b <= 65_535
            && g.pools.len() <= 65_535
    }

    /// Uploads a table of 64-bit words (device addresses and small integers) for one launch.
    fn upload_table(&self, words: &[u64]) -> Result<Scratch> {
        let s = self.scratch_f32(2 * words.len())?;
        // SAFETY: the scratch block holds exactly these words.
        unsafe { self.upload_from(s.ptr(), words)? };
        Ok(s)
    }

    /// The per-pool pointer table of the grouped composition kernels: each pool's A and B pools
    /// and, in the backward, its upstream gradient `dys[p]`; with whether every A pool and
    /// gradient is 16-byte aligned (the kernels' vector loads).
    fn factor_table(
        &self,
        g: &PoolGroup,
        dys: Option<&[&Tensor]>,
        op: &'static str,
    ) -> Result<(Scratch, bool)> {
        debug_assert!(dys.is_none_or(|d| d.len() == g.pools.len()));
        let per_pool = if dys.is_some() { 3 } else { 2 };
        let mut words = Vec::with_capacity(per_pool * g.pools.len());
        let mut aligned = true;
        for (i, p) in g.pools.iter().enumerate() {
            let a = self.ptr(p.a_pool, F32, op)?;
            aligned &= aligned16(a);
            words.extend([a.0, self.ptr(p.b_pool, F32, op)?.0]);
            if let Some(dys) = dys {
                let dy = self.ptr(dys[i], F32, op)?;
                aligned &= aligned16(dy);
                words.push(dy.0);
            }
        }
        Ok((self.upload_table(&words)?, aligned))
    }

    /// The address of the first of `parts` when they lie one after another in device memory,
    /// as the views of one stacked tensor do; `None` otherwise.
    fn stacked(&self, parts: &[&Tensor], dtype: DType, op: &'static str) -> Result<Option<Ptr>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let p0 = self.ptr(first, dtype, op)?;
        let step = (first.numel() * dtype.size_bytes()) as u64;
        for (i, t) in parts.iter().enumerate() {
            if t.shape() != first.shape() || self.ptr(t, dtype, op)?.0 != p0.0 + i as u64 * step {
                return Ok(None);
            }
        }
        Ok(Some(p0))
    }

    /// [`crate::backend::ExpertOps::pool_group_forward`]: the router linears and routing of
    /// every pool in one launch, the gates (one upload, or one product for `score`), the
    /// composition in one.
    pub(super) fn pool_group_forward_device(&self, g: &PoolGroup) -> Result<GroupForward> {
        let d = group_dims(g)?;
        if !self.groupable(g, &d) {
            return forward_by_pool(self, g);
        }
        let _r = nvtx::range("pool_group_forward");
        let np = g.pools.len();
        let (routing, ptrs) = self.route_group(g, &d)?;
        let gates = match g.gate {
            GateMode::Score => self.mul(&routing.pa_sel, &routing.pb_sel)?,
            GateMode::St | GateMode::Hard => {
                let rows = np * d.b;
                self.upload(&Tensor::from_f32(vec![1.0; rows * d.r], &[rows, d.r])?)?
            }
        };
        let (y, u) = self.compose_group(g, &d, &ptrs, self.ptr(&gates, F32, FWD)?)?;
        Ok(GroupForward {
            ys: views(&y, np, &[d.b, d.t, d.d_out])?,
            routings: pool_routings(&routing, np, &d)?,
            gates: views(&gates, np, &[d.b, d.r])?,
            us: views(&u, np, &[d.b, d.t, d.k()])?,
        })
    }

    /// The router linears `W q + b` and the routing (eq. 3 with the compatibility term,
    /// docs/method.md#routing) of every pool in one launch: a [`Routing`] of the P·B
    /// (pool, sample) rows, pool-major.
    fn route_group(&self, g: &PoolGroup, d: &ExpertDims) -> Result<(Routing, RoutingPtrs)> {
        let ExpertDims {
            b: bsz,
            d_in: din,
            e,
            rho,
            r,
            ..
        } = *d;
        let (np, rows) = (g.pools.len(), g.pools.len() * bsz);
        let mut words = Vec::with_capacity(7 * np);
        for p in g.pools {
            for v in [g.queries[p.query], p.wa, p.ba, p.wb, p.bb, p.a_pool, p.wc] {
                words.push(self.ptr(v, F32, FWD)?.0);
            }
        }
        let table = self.upload_table(&words)?;
        let (routing, o) = self.routing_outputs(rows, e, r, din)?;
        let cfg = self.route_launch(bsz, np, e, r, 6 * e, FWD)?;
        unsafe {
            self.k.route_group_f32(
                &self.stream,
                cfg,
                table.ptr(),
                int(e, FWD)?,
                int(rho, FWD)?,
                int(din, FWD)?,
                int(r, FWD)?,
                g.lambda,
                o.sel_a,
                o.sel_b,
                o.p_a,
                o.p_b,
                o.compat,
                o.abar,
                o.pa_sel,
                o.pb_sel,
            )?;
        }
        Ok((routing, o))
    }

    /// The gated factor composition of eq. (2)/(4) for every pool in one launch: the updates
    /// `y [P, B, T, d_out]` and the factor activations `u [P, B, T, r·ρ]`.
    fn compose_group(
        &self,
        g: &PoolGroup,
        d: &ExpertDims,
        rp: &RoutingPtrs,
        pg: Ptr,
    ) -> Result<(Tensor, Tensor)> {
        let (bsz, t, din, dout) = (d.b, d.t, d.d_in, d.d_out);
        let (np, k) = (g.pools.len(), d.k());
        let (table, factors_aligned) = self.factor_table(g, None, FWD)?;
        let px = self.ptr(g.x, F32, FWD)?;
        let km = km_of(k);
        let tt = self.expert_tile(np * bsz, t, 2 * self.sms);
        let cha = stage_cols(din, km);
        let (y, py) = self.empty(&[np, bsz, t, dout], F32)?;
        let (u, pu) = self.empty(&[np, bsz, t, k], F32)?;
        let vec =
            din % 4 == 0 && dout % 4 == 0 && aligned16(px) && aligned16(py) && factors_aligned;
        let cfg = LaunchConfig {
            grid_dim: (int(t.div_ceil(tt), FWD)? as u32, bsz as u32, np as u32),
            block_dim: (EXP_THREADS, 1, 1),
            shared_mem_bytes: (km * cha * 4) as u32,
        };
        let args = launch_dims(d, tt, cha, FWD)?;
        macro_rules! launch {
            ($f:ident) => {
                self.k.$f(
                    &self.stream,
                    cfg,
                    table.ptr(),
                    px,
                    rp.sel_a,
                    rp.sel_b,
                    pg,
                    args[0],
                    args[1],
                    args[2],
                    args[3],
                    args[4],
                    args[5],
                    args[6],
                    args[7],
                    g.alpha,
                    vec as i32,
                    py,
                    pu,
                    self.err_ptr(),
                )
            };
        }
        unsafe {
            match km {
                4 => launch!(expert_fwd_group_k4),
                _ => launch!(expert_fwd_group_k8),
            }?;
        }
        Ok((y, u))
    }

    /// [`crate::backend::ExpertOps::pool_group_backward`]: the composition's backward for every
    /// pool in one launch, the stacked tile sums and pool scatters, the routing backward over
    /// all P·B rows, dW_C of every pool, and the router linears' gradients (weights, biases and
    /// each query's) in one launch. A forward that is not this backend's own grouped one goes
    /// pool by pool.
    pub(super) fn pool_group_backward_device(
        &self,
        g: &PoolGroup,
        f: &GroupForward,
        dys: &[&Tensor],
    ) -> Result<GroupGrads> {
        let d = check_backward(g, f, dys)?;
        let stacked = match self.groupable(g, &d) {
            true => self.stacked_forward(f)?,
            false => None,
        };
        let Some(sf) = stacked else {
            return backward_by_pool(self, g, f, dys);
        };
        let _r = nvtx::range("pool_group_backward");
        let np = g.pools.len();
        let (dx, parts) = self.compose_group_backward(g, &d, &sf, dys)?;
        let rp = &sf.routing;
        let (da, db, dgates) =
            self.reduce_tile_partials(&parts, (rp.sel_a, rp.sel_b), &d, np, BWD)?;
        let (dq, mut routers) = match g.gate {
            GateMode::Hard => (
                g.queries.iter().map(|_| None).collect(),
                (0..np).map(|_| None).collect(),
            ),
            GateMode::St | GateMode::Score => {
                let (dq, grads) = self.group_router_backward(g, &d, &dgates, rp)?;
                (dq, grads.into_iter().map(Some).collect::<Vec<_>>())
            }
        };
        let da_pools = views(&da, np, &[d.e, d.rho, d.d_in])?;
        let db_pools = views(&db, np, &[d.e, d.d_out, d.rho])?;
        let pools = da_pools
            .into_iter()
            .zip(db_pools)
            .zip(&mut routers)
            .map(|((da_pool, db_pool), routers)| PoolGrads {
                da_pool,
                db_pool,
                routers: routers.take(),
            })
            .collect();
        Ok(GroupGrads { dx, dq, pools })
    }

    /// The forward's routing, gates and activations when each is one stacked tensor, as
    /// [`CudaBackend::pool_group_forward_device`] leaves them; `None` otherwise.
    fn stacked_forward(&self, f: &GroupForward) -> Result<Option<StackedForward>> {
        let field = |pick: fn(&Routing) -> &Tensor| f.routings.iter().map(pick).collect::<Vec<_>>();
        let ptrs = [
            self.stacked(&field(|r| &r.sel_a), I32, BWD)?,
            self.stacked(&field(|r| &r.sel_b), I32, BWD)?,
            self.stacked(&field(|r| &r.p_a), F32, BWD)?,
            self.stacked(&field(|r| &r.p_b), F32, BWD)?,
            self.stacked(&field(|r| &r.compat), F32, BWD)?,
            self.stacked(&field(|r| &r.abar), F32, BWD)?,
            self.stacked(&field(|r| &r.pa_sel), F32, BWD)?,
            self.stacked(&field(|r| &r.pb_sel), F32, BWD)?,
            self.stacked(&f.gates.iter().collect::<Vec<_>>(), F32, BWD)?,
            self.stacked(&f.us.iter().collect::<Vec<_>>(), F32, BWD)?,
        ];
        let [Some(sel_a), Some(sel_b), Some(p_a), Some(p_b), Some(compat), Some(abar), Some(pa_sel), Some(pb_sel), Some(gates), Some(u)] =
            ptrs
        else {
            return Ok(None);
        };
        let routing = RoutingPtrs {
            sel_a,
            sel_b,
            p_a,
            p_b,
            compat,
            abar,
            pa_sel,
            pb_sel,
        };
        Ok(Some(StackedForward { routing, gates, u }))
    }

    /// The composition's backward for every pool in one launch: `dx [B, T, d_in]` summed over
    /// the pools in order, and each tile's partial factor and gate gradients.
    fn compose_group_backward(
        &self,
        g: &PoolGroup,
        d: &ExpertDims,
        sf: &StackedForward,
        dys: &[&Tensor],
    ) -> Result<(Tensor, TilePartials)> {
        let (bsz, t, din, dout) = (d.b, d.t, d.d_in, d.d_out);
        let (np, rows) = (g.pools.len(), g.pools.len() * bsz);
        let (table, factors_aligned) = self.factor_table(g, Some(dys), BWD)?;
        let mut vec = din % 4 == 0 && dout % 4 == 0 && factors_aligned;
        let px = self.ptr(g.x, F32, BWD)?;
        let km = km_of(d.k());
        let tt = self.expert_tile(rows, t, self.sms);
        let chb = stage_cols(dout, km);
        let (dx, pdx) = self.empty(&[bsz, t, din], F32)?;
        // One pool writes dx itself; several write a slab each, summed below in pool order.
        let dx_slabs = (np > 1)
            .then(|| self.scratch_f32(rows * t * din))
            .transpose()?;
        let pdx_all = dx_slabs.as_ref().map_or(pdx, |s| s.ptr());
        vec &= aligned16(px) && aligned16(pdx_all);
        let parts = self.tile_partials(rows, t.div_ceil(tt), d)?;
        let (pda, pdb, pdg) = parts.ptrs();
        let cfg = LaunchConfig {
            grid_dim: (int(parts.tiles, BWD)? as u32, bsz as u32, np as u32),
            block_dim: (EXP_THREADS, 1, 1),
            shared_mem_bytes: (km * chb * 4) as u32,
        };
        let args = launch_dims(d, tt, chb, BWD)?;
        macro_rules! launch {
            ($f:ident) => {
                self.k.$f(
                    &self.stream,
                    cfg,
                    table.ptr(),
                    px,
                    sf.routing.sel_a,
                    sf.routing.sel_b,
                    sf.gates,
                    sf.u,
                    args[0],
                    args[1],
                    args[2],
                    args[3],
                    args[4],
                    args[5],
                    args[6],
                    args[7],
                    g.alpha,
                    vec as i32,
                    pdx_all,
                    pda,
                    pdb,
                    pdg,
                    self.err_ptr(),
                )
            };
        }
        unsafe {
            match km {
                4 => launch!(expert_bwd_group_k4),
                _ => launch!(expert_bwd_group_k8),
            }?;
        }
        if np > 1 {
            self.sum_partials(pdx_all, np, (1, bsz * t * din), pdx, BWD)?;
        }
        Ok((dx, parts))
    }

    /// From the stacked gate gradients `[P·B, r]` to every pool's router gradients and each
    /// query's: the gate backward, the routing backward over all P·B rows with dW_C of every
    /// pool, then the router linears.
    fn group_router_backward(
        &self,
        g: &PoolGroup,
        d: &ExpertDims,
        dgates: &Tensor,
        rp: &RoutingPtrs,
    ) -> Result<(Vec<Option<Tensor>>, Vec<RouterGrads>)> {
        let np = g.pools.len();
        let rows = np * d.b;
        let pdg = self.ptr(dgates, F32, BWD)?;
        // dP_A, dP_B: the gates' own gradient (straight-through), or the product rule.
        let score = (g.gate == GateMode::Score)
            .then(|| -> Result<_> {
                let n = rows * d.r;
                let (d_pa, d_pb) = (self.scratch_f32(n)?, self.scratch_f32(n)?);
                unsafe {
                    let cfg = cfg_flat(n);
                    self.k
                        .ew_mul_f32(&self.stream, cfg, pdg, rp.pb_sel, d_pa.ptr(), long(n))?;
                    self.k
                        .ew_mul_f32(&self.stream, cfg, pdg, rp.pa_sel, d_pb.ptr(), long(n))?;
                }
                Ok((d_pa, d_pb))
            })
            .transpose()?;
        let d_sel = score
            .as_ref()
            .map_or((pdg, pdg), |(a, b)| (a.ptr(), b.ptr()));
        let (dla, dlb) = (self.scratch_f32(rows * d.e)?, self.scratch_f32(rows * d.e)?);
        let shape = (np, d.b, d.e, d.r, d.d_in);
        let dwc = self.route_backward_rows(
            shape,
            d_sel,
            rp.saved(),
            g.lambda,
            (dla.ptr(), dlb.ptr()),
            BWD,
        )?;
        let (dq, [dwa, dba, dwb, dbb]) = self.group_router_linears_backward(g, d, &dla, &dlb)?;
        let grads = [
            views(&dwa, np, &[d.e, d.d_in])?,
            views(&dba, np, &[d.e])?,
            views(&dwb, np, &[d.e, d.d_in])?,
            views(&dbb, np, &[d.e])?,
            views(&dwc, np, &[d.r, d.d_in, d.e])?,
        ];
        let [dwa, dba, dwb, dbb, dwc] = grads.map(Vec::into_iter);
        let grads = dwa
            .zip(dba)
            .zip(dwb)
            .zip(dbb)
            .zip(dwc)
            .map(|((((dwa, dba), dwb), dbb), dwc)| RouterGrads {
                dwa,
                dba,
                dwb,
                dbb,
                dwc,
            })
            .collect();
        Ok((dq, grads))
    }

    /// The router linears' backward in one launch: the stacked `dW_A, dB_A, dW_B, dB_B` of
    /// every pool, and each query's gradient summed over the pools it routes (`None` for a
    /// query no pool reads).
    fn group_router_linears_backward(
        &self,
        g: &PoolGroup,
        d: &ExpertDims,
        dla: &Scratch,
        dlb: &Scratch,
    ) -> Result<(Vec<Option<Tensor>>, [Tensor; 4])> {
        let ExpertDims {
            b: bsz,
            d_in: din,
            e,
            ..
        } = *d;
        let (np, nq) = (g.pools.len(), g.queries.len());
        let mut words = Vec::with_capacity(4 * np);
        for p in g.pools {
            words.extend([
                self.ptr(g.queries[p.query], F32, BWD)?.0,
                self.ptr(p.wa, F32, BWD)?.0,
                self.ptr(p.wb, F32, BWD)?.0,
                p.query as u64,
            ]);
        }
        let table = self.upload_table(&words)?;
        let (dwa, pdwa) = self.empty(&[np, e, din], F32)?;
        let (dwb, pdwb) = self.empty(&[np, e, din], F32)?;
        let (dba, pdba) = self.empty(&[np, e], F32)?;
        let (dbb, pdbb) = self.empty(&[np, e], F32)?;
        let (dq, pdq) = self.empty(&[nq, bsz, din], F32)?;
        let total = 2 * np * e * din + 2 * np * e + nq * bsz * din;
        unsafe {
            self.k.router_backward_group_f32(
                &self.stream,
                cfg_flat(total),
                table.ptr(),
                dla.ptr(),
                dlb.ptr(),
                int(np, BWD)?,
                int(bsz, BWD)?,
                int(e, BWD)?,
                int(din, BWD)?,
                int(nq, BWD)?,
                pdwa,
                pdwb,
                pdba,
                pdbb,
                pdq,
            )?;
        }
        let read = |i: usize| g.pools.iter().any(|p| p.query == i);
        let dq = views(&dq, nq, &[bsz, din])?
            .into_iter()
            .enumerate()
            .map(|(i, q)| read(i).then_some(q))
            .collect();
        Ok((dq, [dwa, dba, dwb, dbb]))
    }
}

/// Each pool's [`Routing`]: views of the stacked routing of the P·B rows.
fn pool_routings(stacked: &Routing, pools: usize, d: &ExpertDims) -> Result<Vec<Routing>> {
    let (b, r, e) = (d.b, d.r, d.e);
    let sel = [b, r];
    (0..pools)
        .map(|p| {
            let v = |t: &Tensor, shape: &[usize]| t.view(p * crate::tensor::numel(shape), shape);
            Ok(Routing {
                sel_a: v(&stacked.sel_a, &sel)?,
                sel_b: v(&stacked.sel_b, &sel)?,
                p_a: v(&stacked.p_a, &[b, e])?,
                p_b: v(&stacked.p_b, &[b, e])?,
                compat: v(&stacked.compat, &[b, r, e])?,
                abar: v(&stacked.abar, &[b, r, d.d_in])?,
                pa_sel: v(&stacked.pa_sel, &sel)?,
                pb_sel: v(&stacked.pb_sel, &sel)?,
            })
        })
        .collect()
}
