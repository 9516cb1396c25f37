//! Every routed pool of a layer's shared-input linears on the device, one launch per stage
//! (`route_group_f32`, `expert_fwd_group_k*`, `expert_bwd_group_k*`, `router_backward_group_f32`
//! and the stacked reductions): the CUDA twin of [`crate::backend::experts::group::forward_by_pool`]
//! and [`crate::backend::experts::group::backward_by_pool`]. Per-pool pointers (parameters, queries,
//! upstream gradients) go in a table uploaded beside the launch; everything the group computes
//! is stacked pool-major, and each pool gets views of it.

use cudarc::driver::LaunchConfig;

use super::experts::{aligned16, km_of, stage_cols, EXP_THREADS};
use super::kernels::{cfg_flat, cfg_rows, Ptr};
use super::ops::{int, long};
use super::{nvtx, CudaBackend, Scratch};
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

/// Largest r·ρ of the grouped composition kernels (register widths 4 and 8): at 16 the
/// per-pool pointers beside the register tiles would cost the backward a stack frame
/// (`tests/cuda_ptx.rs` checks for none), so such groups run pool by pool.
pub const GROUP_MAX_K: usize = 8;

/// Pool-major stacked tensor `[P, …]` cut into its P views of `shape`.
fn views(t: &Tensor, pools: usize, shape: &[usize]) -> Result<Vec<Tensor>> {
    let n = crate::tensor::numel(shape);
    (0..pools).map(|p| t.view(p * n, shape)).collect()
}

impl CudaBackend {
    /// Whether the grouped kernels take this group: r·ρ ≤ [`GROUP_MAX_K`], the router's
    /// E ≤ 1024 and the grid's limits; the pool-by-pool ops take the rest.
    fn groupable(&self, g: &PoolGroup) -> Result<bool> {
        let (b, t, _, _, e, rho, r) = group_dims(g)?;
        let k = r * rho;
        Ok(b * t > 0
            && (1..=GROUP_MAX_K).contains(&k)
            && (1..=1024).contains(&e)
            && b <= 65_535
            && g.pools.len() <= 65_535)
    }

    /// Uploads a table of 64-bit words (device addresses and small integers) for one launch.
    fn upload_table(&self, words: &[u64]) -> Result<Scratch> {
        let s = self.scratch_f32(2 * words.len())?;
        // SAFETY: the scratch block holds exactly these words.
        unsafe { self.upload_from(s.ptr(), words)? };
        Ok(s)
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

    /// [`crate::backend::ExpertOps::pool_group_forward`]: the router linears and routing of every pool in one
    /// launch, the gates (one upload, or one product for `score`), the composition in one.
    pub(super) fn pool_group_forward_device(&self, g: &PoolGroup) -> Result<GroupForward> {
        const OP: &str = "pool_group_forward";
        if !self.groupable(g)? {
            return forward_by_pool(self, g);
        }
        let _r = nvtx::range("pool_group_forward");
        let (bsz, t, din, dout, e, rho, r) = group_dims(g)?;
        let (np, k) = (g.pools.len(), r * rho);
        let rows = np * bsz;

        let mut words = Vec::with_capacity(7 * np);
        for p in g.pools {
            for v in [g.queries[p.query], p.wa, p.ba, p.wb, p.bb, p.a_pool, p.wc] {
                words.push(self.ptr(v, F32, OP)?.0);
            }
        }
        let table = self.upload_table(&words)?;
        let (sel_a, psa) = self.empty(&[rows, r], I32)?;
        let (sel_b, psb) = self.empty(&[rows, r], I32)?;
        let (p_a, ppa) = self.empty(&[rows, e], F32)?;
        let (p_b, ppb) = self.empty(&[rows, e], F32)?;
        let (compat, pc) = self.empty(&[rows, r, e], F32)?;
        let (abar, pab) = self.empty(&[rows, r, din], F32)?;
        let (pa_sel, ppas) = self.empty(&[rows, r], F32)?;
        let (pb_sel, ppbs) = self.empty(&[rows, r], F32)?;
        let cfg = self.route_launch(bsz, np, e, r, 6 * e, OP)?;
        unsafe {
            self.k.route_group_f32(
                &self.stream,
                cfg,
                table.ptr(),
                int(e, OP)?,
                int(rho, OP)?,
                int(din, OP)?,
                int(r, OP)?,
                g.lambda,
                psa,
                psb,
                ppa,
                ppb,
                pc,
                pab,
                ppas,
                ppbs,
            )?;
        }
        let gates = match g.gate {
            GateMode::Score => self.mul(&pa_sel, &pb_sel)?,
            GateMode::St | GateMode::Hard => {
                self.upload(&Tensor::from_f32(vec![1.0; rows * r], &[rows, r])?)?
            }
        };

        let (a_ptrs, b_ptrs) = g.pools.iter().try_fold(
            (Vec::new(), Vec::new()),
            |(mut a, mut b), p| -> Result<_> {
                a.push(self.ptr(p.a_pool, F32, OP)?);
                b.push(self.ptr(p.b_pool, F32, OP)?);
                Ok((a, b))
            },
        )?;
        let words: Vec<u64> = a_ptrs
            .iter()
            .zip(&b_ptrs)
            .flat_map(|(a, b)| [a.0, b.0])
            .collect();
        let table = self.upload_table(&words)?;
        let px = self.ptr(g.x, F32, OP)?;
        let km = km_of(k);
        let tt = self.expert_tile(rows, t, 2 * self.sms);
        let cha = stage_cols(din, km);
        let (y, py) = self.empty(&[np, bsz, t, dout], F32)?;
        let (u, pu) = self.empty(&[np, bsz, t, k], F32)?;
        let vec = din % 4 == 0
            && dout % 4 == 0
            && aligned16(px)
            && aligned16(py)
            && a_ptrs.iter().all(|&a| aligned16(a));
        let cfg = LaunchConfig {
            grid_dim: (int(t.div_ceil(tt), OP)? as u32, bsz as u32, np as u32),
            block_dim: (EXP_THREADS, 1, 1),
            shared_mem_bytes: (km * cha * 4) as u32,
        };
        let pg = self.ptr(&gates, F32, OP)?;
        macro_rules! launch {
            ($f:ident) => {
                self.k.$f(
                    &self.stream,
                    cfg,
                    table.ptr(),
                    px,
                    psa,
                    psb,
                    pg,
                    int(t, OP)?,
                    int(din, OP)?,
                    int(dout, OP)?,
                    int(e, OP)?,
                    int(rho, OP)?,
                    int(r, OP)?,
                    tt as i32,
                    cha as i32,
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

        let sel = [bsz, r];
        let routings = (0..np)
            .map(|p| {
                let v =
                    |t: &Tensor, shape: &[usize]| t.view(p * crate::tensor::numel(shape), shape);
                Ok(Routing {
                    sel_a: v(&sel_a, &sel)?,
                    sel_b: v(&sel_b, &sel)?,
                    p_a: v(&p_a, &[bsz, e])?,
                    p_b: v(&p_b, &[bsz, e])?,
                    compat: v(&compat, &[bsz, r, e])?,
                    abar: v(&abar, &[bsz, r, din])?,
                    pa_sel: v(&pa_sel, &sel)?,
                    pb_sel: v(&pb_sel, &sel)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupForward {
            ys: views(&y, np, &[bsz, t, dout])?,
            routings,
            gates: views(&gates, np, &sel)?,
            us: views(&u, np, &[bsz, t, k])?,
        })
    }

    /// [`crate::backend::ExpertOps::pool_group_backward`]: the composition's backward for every pool in one
    /// launch, the stacked tile sums and pool scatters, the routing backward over all P·B rows,
    /// dW_C of every pool, and the router linears' gradients (weights, biases and each query's)
    /// in one launch. A forward that is not this backend's own grouped one goes pool by pool.
    pub(super) fn pool_group_backward_device(
        &self,
        g: &PoolGroup,
        f: &GroupForward,
        dys: &[&Tensor],
    ) -> Result<GroupGrads> {
        const OP: &str = "pool_group_backward";
        check_backward(g, f, dys)?;
        if !self.groupable(g)? {
            return backward_by_pool(self, g, f, dys);
        }
        let field = |pick: fn(&Routing) -> &Tensor| f.routings.iter().map(pick).collect::<Vec<_>>();
        let (sa, sb, pa, pb, comp, abar) = (
            self.stacked(&field(|r| &r.sel_a), I32, OP)?,
            self.stacked(&field(|r| &r.sel_b), I32, OP)?,
            self.stacked(&field(|r| &r.p_a), F32, OP)?,
            self.stacked(&field(|r| &r.p_b), F32, OP)?,
            self.stacked(&field(|r| &r.compat), F32, OP)?,
            self.stacked(&field(|r| &r.abar), F32, OP)?,
        );
        let (pas, pbs) = (
            self.stacked(&field(|r| &r.pa_sel), F32, OP)?,
            self.stacked(&field(|r| &r.pb_sel), F32, OP)?,
        );
        let gates = self.stacked(&f.gates.iter().collect::<Vec<_>>(), F32, OP)?;
        let u = self.stacked(&f.us.iter().collect::<Vec<_>>(), F32, OP)?;
        let [Some(psa), Some(psb), Some(ppa), Some(ppb), Some(pc), Some(pab), Some(ppas), Some(ppbs), Some(pg), Some(pu)] =
            [sa, sb, pa, pb, comp, abar, pas, pbs, gates, u]
        else {
            return backward_by_pool(self, g, f, dys);
        };
        let _r = nvtx::range("pool_group_backward");
        let (bsz, t, din, dout, e, rho, r) = group_dims(g)?;
        let (np, k) = (g.pools.len(), r * rho);
        let rows = np * bsz;

        // The composition's backward, every pool in one launch.
        let mut words = Vec::with_capacity(3 * np);
        let mut vec = din % 4 == 0 && dout % 4 == 0;
        for (p, dy) in g.pools.iter().zip(dys) {
            let (a, b, d) = (
                self.ptr(p.a_pool, F32, OP)?,
                self.ptr(p.b_pool, F32, OP)?,
                self.ptr(dy, F32, OP)?,
            );
            vec &= aligned16(a) && aligned16(d);
            words.extend([a.0, b.0, d.0]);
        }
        let table = self.upload_table(&words)?;
        let px = self.ptr(g.x, F32, OP)?;
        let km = km_of(k);
        let tt = self.expert_tile(rows, t, self.sms);
        let ntiles = t.div_ceil(tt);
        let chb = stage_cols(dout, km);
        let (dx, pdx) = self.empty(&[bsz, t, din], F32)?;
        // One pool writes dx itself; several write a slab each, summed below in pool order.
        let dx_slabs = (np > 1)
            .then(|| self.scratch_f32(rows * t * din))
            .transpose()?;
        let pdx_all = dx_slabs.as_ref().map_or(pdx, |s| s.ptr());
        vec &= aligned16(px) && aligned16(pdx_all);
        let parts = rows * ntiles;
        let (pda_s, pdb_s, pdg_s) = (
            self.scratch_f32(parts * k * din)?,
            self.scratch_f32(parts * k * dout)?,
            self.scratch_f32(parts * r)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (int(ntiles, OP)? as u32, bsz as u32, np as u32),
            block_dim: (EXP_THREADS, 1, 1),
            shared_mem_bytes: (km * chb * 4) as u32,
        };
        macro_rules! launch {
            ($f:ident) => {
                self.k.$f(
                    &self.stream,
                    cfg,
                    table.ptr(),
                    px,
                    psa,
                    psb,
                    pg,
                    pu,
                    int(t, OP)?,
                    int(din, OP)?,
                    int(dout, OP)?,
                    int(e, OP)?,
                    int(rho, OP)?,
                    int(r, OP)?,
                    tt as i32,
                    chb as i32,
                    g.alpha,
                    vec as i32,
                    pdx_all,
                    pda_s.ptr(),
                    pdb_s.ptr(),
                    pdg_s.ptr(),
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

        // Stacked reductions: dx over pools, the factor partials over tiles (P·B rows each).
        let mut keep = Vec::new();
        let mut sum =
            |p: Ptr, terms: usize, n: usize, groups: usize, out: Option<Ptr>| -> Result<Ptr> {
                if terms == 1 && out.is_none() {
                    return Ok(p);
                }
                let dst = match out {
                    Some(o) => o,
                    None => {
                        let s = self.scratch_f32(groups * n)?;
                        let ps = s.ptr();
                        keep.push(s);
                        ps
                    }
                };
                unsafe {
                    self.k.expert_sum_tiles_f32(
                        &self.stream,
                        cfg_flat(groups * n),
                        p,
                        int(terms, OP)?,
                        long(n),
                        long(groups),
                        dst,
                    )?;
                }
                Ok(dst)
            };
        if np > 1 {
            sum(pdx_all, np, bsz * t * din, 1, Some(pdx))?;
        }
        let da_rows = sum(pda_s.ptr(), ntiles, k * din, rows, None)?;
        let db_rows = sum(pdb_s.ptr(), ntiles, k * dout, rows, None)?;
        let (dgates, pdgates) = self.empty(&[rows, r], F32)?;
        sum(pdg_s.ptr(), ntiles, r, rows, Some(pdgates))?;
        let (da, pda) = self.empty(&[np, e, rho, din], F32)?;
        let (db, pdb) = self.empty(&[np, e, dout, rho], F32)?;
        for (src, sel, w, b_layout, out) in
            [(da_rows, psa, din, 0, pda), (db_rows, psb, dout, 1, pdb)]
        {
            unsafe {
                self.k.expert_scatter_pool_f32(
                    &self.stream,
                    cfg_flat(np * e * rho * w),
                    src,
                    sel,
                    int(bsz, OP)?,
                    int(r, OP)?,
                    int(rho, OP)?,
                    int(e, OP)?,
                    int(w, OP)?,
                    b_layout,
                    int(np, OP)?,
                    out,
                )?;
            }
        }
        drop(keep);
        let da_pools = views(&da, np, &[e, rho, din])?;
        let db_pools = views(&db, np, &[e, dout, rho])?;

        let routers = match g.gate {
            GateMode::Hard => None,
            GateMode::St | GateMode::Score => Some(self.group_router_backward(
                g,
                &dgates,
                [psa, psb, ppa, ppb, pc, pab, ppas, ppbs],
            )?),
        };
        let (dq, mut router_grads) = match routers {
            Some((dq, grads)) => (dq, grads.into_iter().map(Some).collect()),
            None => (
                g.queries.iter().map(|_| None).collect(),
                (0..np).map(|_| None).collect::<Vec<_>>(),
            ),
        };
        let pools = da_pools
            .into_iter()
            .zip(db_pools)
            .enumerate()
            .map(|(i, (da_pool, db_pool))| PoolGrads {
                da_pool,
                db_pool,
                routers: router_grads[i].take(),
            })
            .collect();
        Ok(GroupGrads { dx, dq, pools })
    }

    /// From the stacked gate gradients `[P·B, r]` to the router logits (one launch over all
    /// P·B rows), dW_C of every pool (one), and the router linears' weights, biases and queries
    /// (one). `ptrs`: the stacked S_A, S_B, P_A, P_B, compatibility softmaxes, ā, and the
    /// selected probabilities P_A[S_A], P_B[S_B].
    fn group_router_backward(
        &self,
        g: &PoolGroup,
        dgates: &Tensor,
        [psa, psb, ppa, ppb, pc, pab, ppas, ppbs]: [Ptr; 8],
    ) -> Result<(Vec<Option<Tensor>>, Vec<RouterGrads>)> {
        const OP: &str = "pool_group_backward";
        let (bsz, _, din, _, e, _, r) = group_dims(g)?;
        let (np, nq) = (g.pools.len(), g.queries.len());
        let rows = np * bsz;
        let pdg = self.ptr(dgates, F32, OP)?;
        // dP_A, dP_B: the gates' own gradient (straight-through), or the product rule.
        let score = (g.gate == GateMode::Score)
            .then(|| -> Result<_> {
                let (d_pa, d_pb) = (self.scratch_f32(rows * r)?, self.scratch_f32(rows * r)?);
                let n = rows * r;
                unsafe {
                    self.k
                        .ew_mul_f32(&self.stream, cfg_flat(n), pdg, ppbs, d_pa.ptr(), long(n))?;
                    self.k
                        .ew_mul_f32(&self.stream, cfg_flat(n), pdg, ppas, d_pb.ptr(), long(n))?;
                }
                Ok((d_pa, d_pb))
            })
            .transpose()?;
        let (gpa, gpb) = score
            .as_ref()
            .map_or((pdg, pdg), |(a, b)| (a.ptr(), b.ptr()));
        let (dla, dlb, dz) = (
            self.scratch_f32(rows * e)?,
            self.scratch_f32(rows * e)?,
            self.scratch_f32(rows * r * e)?,
        );
        let (dwc, pdwc) = self.empty(&[np, r, din, e], F32)?;
        unsafe {
            self.k.route_backward_f32(
                &self.stream,
                cfg_rows(rows),
                gpa,
                gpb,
                psa,
                psb,
                ppa,
                ppb,
                pc,
                int(rows, OP)?,
                int(e, OP)?,
                int(r, OP)?,
                g.lambda,
                dla.ptr(),
                dlb.ptr(),
                dz.ptr(),
                self.err_ptr(),
            )?;
            if r * din > 0 {
                self.k.route_dwc_f32(
                    &self.stream,
                    cfg_flat(np * r * din * e),
                    pab,
                    dz.ptr(),
                    int(bsz, OP)?,
                    int(r, OP)?,
                    int(din, OP)?,
                    int(e, OP)?,
                    int(np, OP)?,
                    pdwc,
                )?;
            }
        }
        let mut words = Vec::with_capacity(4 * np);
        for p in g.pools {
            words.extend([
                self.ptr(g.queries[p.query], F32, OP)?.0,
                self.ptr(p.wa, F32, OP)?.0,
                self.ptr(p.wb, F32, OP)?.0,
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
                int(np, OP)?,
                int(bsz, OP)?,
                int(e, OP)?,
                int(din, OP)?,
                int(nq, OP)?,
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
        let grads = [
            views(&dwa, np, &[e, din])?,
            views(&dba, np, &[e])?,
            views(&dwb, np, &[e, din])?,
            views(&dbb, np, &[e])?,
            views(&dwc, np, &[r, din, e])?,
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
}
