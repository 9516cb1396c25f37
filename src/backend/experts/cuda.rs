//! The DeLo expert ops on the device: routing (`kernels/route.cu`) and the gathered factor
//! composition (`kernels/experts.cu`), fused or unfused.
//!
//! Fused (the default when r·ρ ≤ [`FUSED_MAX_K`]): one kernel per pass, a block per (sample,
//! tile of tokens); the selected factors are gathered by index into shared memory and registers,
//! x (forward) and dy, x (backward) are read from DRAM once, y and dx written once, and ΔW is
//! never formed. The factor gradients of each tile are reduced over tiles and scattered into
//! the pools by two small deterministic kernels (no atomics), so results are reproducible bit
//! for bit.
//!
//! Unfused (for comparison, and for r·ρ above the fused kernels' register tiles): the selected
//! factors are gathered into dense per-sample matrices, then cuBLAS strided-batched GEMMs.

use cudarc::driver::LaunchConfig;

use super::gemm::GemmCall;
use super::kernels::{cfg_flat, cfg_rows, Ptr};
use super::ops::{int, long};
use super::{nvtx, CudaBackend};
use crate::backend::experts::dims::{
    expert_backward_dims, expert_dims, route_backward_dims, route_dims, ExpertDims,
};
use crate::backend::experts::group::{GroupForward, GroupGrads, PoolGroup};
use crate::backend::{Backend, ExpertGrads, ExpertOps, Routing};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

const F32: DType = DType::F32;
const I32: DType = DType::I32;

/// Which implementation of the gathered factor composition runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertPath {
    /// Fused when r·ρ ≤ [`FUSED_MAX_K`], unfused otherwise (what the `Backend` trait uses).
    Auto,
    /// The fused kernels; an error when r·ρ > [`FUSED_MAX_K`].
    Fused,
    /// Gather + cuBLAS strided-batched GEMMs.
    Unfused,
}

/// Largest r·ρ the fused kernels take (their per-token register tile).
pub const FUSED_MAX_K: usize = 16;

/// Threads of a fused expert block (`DELO_EXP_THREADS`).
pub(super) const EXP_THREADS: u32 = 256;
/// Most tokens of a fused block (`DELO_EXP_TT_MAX`).
const TT_MAX: usize = 64;
/// Floats of factor columns a fused block stages in shared memory at a time (32 KiB; with the
/// static tiles below 48 KiB, so no opt-in attribute is needed).
const STAGE_FLOATS: usize = 8192;
/// Dynamic shared memory a block may use without the opt-in attribute.
const SMEM_LIMIT: usize = 48 * 1024;

/// The register width of the fused kernels for `k = r·ρ` factor rows.
pub(super) fn km_of(k: usize) -> usize {
    match k {
        0..=4 => 4,
        5..=8 => 8,
        _ => 16,
    }
}

/// Columns of a row of `n` staged at a time for width `km`: a multiple of 4.
pub(super) fn stage_cols(n: usize, km: usize) -> usize {
    n.next_multiple_of(4).min(STAGE_FLOATS / km / 4 * 4)
}

pub(super) fn aligned16(p: Ptr) -> bool {
    p.0.is_multiple_of(16)
}

/// The fused kernels' size arguments in their order: T, d_in, d_out, E, ρ, r, the tile's
/// tokens and the staged columns.
pub(super) fn launch_dims(
    d: &ExpertDims,
    tile: usize,
    cols: usize,
    op: &'static str,
) -> Result<[i32; 8]> {
    Ok([
        int(d.t, op)?,
        int(d.d_in, op)?,
        int(d.d_out, op)?,
        int(d.e, op)?,
        int(d.rho, op)?,
        int(d.r, op)?,
        int(tile, op)?,
        int(cols, op)?,
    ])
}

/// Which factor pool a gradient belongs to.
#[derive(Clone, Copy)]
pub(super) enum Factor {
    /// `A [E, ρ, d_in]`
    A,
    /// `B [E, d_out, ρ]`
    B,
}

impl Factor {
    /// The pool's shape.
    fn shape(self, d: &ExpertDims) -> [usize; 3] {
        match self {
            Factor::A => [d.e, d.rho, d.d_in],
            Factor::B => [d.e, d.d_out, d.rho],
        }
    }

    /// The shape of `pools` such pools stacked.
    pub(super) fn stacked_shape(self, d: &ExpertDims, pools: usize) -> [usize; 4] {
        let [e, x, y] = self.shape(d);
        [pools, e, x, y]
    }
}

/// The per-tile partial gradients a fused composition backward writes, summed over tiles by
/// [`CudaBackend::reduce_tile_partials`].
pub(super) struct TilePartials {
    da: super::Scratch,
    db: super::Scratch,
    dg: super::Scratch,
    /// Token tiles per (pool, sample) row.
    pub(super) tiles: usize,
}

impl TilePartials {
    /// `dA_sel` partials, `dB_selᵀ` partials and gate partials, for the kernel's arguments.
    pub(super) fn ptrs(&self) -> (Ptr, Ptr, Ptr) {
        (self.da.ptr(), self.db.ptr(), self.dg.ptr())
    }
}

/// Device addresses of a routing's tensors, in [`Routing`]'s order.
#[derive(Clone, Copy)]
pub(super) struct RoutingPtrs {
    pub(super) sel_a: Ptr,
    pub(super) sel_b: Ptr,
    pub(super) p_a: Ptr,
    pub(super) p_b: Ptr,
    pub(super) compat: Ptr,
    pub(super) abar: Ptr,
    pub(super) pa_sel: Ptr,
    pub(super) pb_sel: Ptr,
}

impl RoutingPtrs {
    /// What the routing backward reads ([`CudaBackend::route_backward_rows`]): S_A, S_B, P_A,
    /// P_B, the compatibility softmaxes and ā.
    pub(super) fn saved(&self) -> [Ptr; 6] {
        [
            self.sel_a,
            self.sel_b,
            self.p_a,
            self.p_b,
            self.compat,
            self.abar,
        ]
    }
}

/// Device addresses of the operands of one expert composition.
struct Operands {
    x: Ptr,
    a: Ptr,
    b: Ptr,
    sa: Ptr,
    sb: Ptr,
    g: Ptr,
}

impl CudaBackend {
    fn expert_operands(
        &self,
        op: &'static str,
        [x, a_pool, b_pool, sel_a, sel_b, gates]: [&Tensor; 6],
    ) -> Result<Operands> {
        Ok(Operands {
            x: self.ptr(x, F32, op)?,
            a: self.ptr(a_pool, F32, op)?,
            b: self.ptr(b_pool, F32, op)?,
            sa: self.ptr(sel_a, I32, op)?,
            sb: self.ptr(sel_b, I32, op)?,
            g: self.ptr(gates, F32, op)?,
        })
    }

    /// Tokens per fused block: the largest of 64, 32, 16 that still gives `min_blocks` blocks,
    /// else 8.
    pub(super) fn expert_tile(&self, bsz: usize, t: usize, min_blocks: usize) -> usize {
        [64, 32, 16]
            .into_iter()
            .find(|&tt| bsz * t.div_ceil(tt) >= min_blocks)
            .unwrap_or(8)
    }

    fn resolve_path(&self, path: ExpertPath, k: usize, op: &'static str) -> Result<bool> {
        match path {
            ExpertPath::Auto => Ok(k <= FUSED_MAX_K),
            ExpertPath::Unfused => Ok(false),
            ExpertPath::Fused if k <= FUSED_MAX_K => Ok(true),
            ExpertPath::Fused => Err(Error::shape(
                op,
                format!(
                    "the fused kernels take r·ρ ≤ {FUSED_MAX_K}, got {k}; use the unfused path"
                ),
            )),
        }
    }

    /// `c[i] = α · op(a[i]) · op(b[i])` for `batch` row-major matrices `op(a) [m, k]`,
    /// `op(b) [k, n]` and `c [m, n]` lying one after another (cuBLAS strided-batched), `op`
    /// transposing where the flag is set: skipped when `c` is empty, zeros when `k` is 0.
    fn batched_product(
        &self,
        batch: usize,
        (m, n, k): (usize, usize, usize),
        (a, trans_a): (Ptr, bool),
        (b, trans_b): (Ptr, bool),
        alpha: f32,
        c: Ptr,
    ) -> Result<()> {
        let n_out = batch * m * n;
        if n_out == 0 {
            return Ok(());
        }
        if k == 0 {
            // SAFETY: `c` addresses the `n_out` contiguous elements of the output.
            return unsafe { self.memset0(c, n_out * 4) };
        }
        self.gemm(&GemmCall {
            dtype: F32,
            trans_a,
            trans_b,
            m,
            n,
            k,
            alpha,
            beta: 0.0,
            a,
            lda: if trans_a { m } else { k },
            stride_a: m * k,
            b,
            ldb: if trans_b { k } else { n },
            stride_b: k * n,
            c,
            ldc: n,
            stride_c: m * n,
            batch,
        })
    }

    /// Deterministic scatter of the selected factors' gradients `s [P·B, r·ρ, w]` into the
    /// `pools` stacked pools of `factor` (no atomics: each pool element sums its samples in order).
    pub(super) fn scatter_into_pools(
        &self,
        s: Ptr,
        sel: Ptr,
        d: &ExpertDims,
        pools: usize,
        factor: Factor,
        op: &'static str,
    ) -> Result<Tensor> {
        let (w, b_layout) = match factor {
            Factor::A => (d.d_in, 0),
            Factor::B => (d.d_out, 1),
        };
        let (pool, pp) = self.empty(&factor.stacked_shape(d, pools), F32)?;
        unsafe {
            self.k.expert_scatter_pool_f32(
                &self.stream,
                cfg_flat(pools * d.e * d.rho * w),
                s,
                sel,
                int(d.b, op)?,
                int(d.r, op)?,
                int(d.rho, op)?,
                int(d.e, op)?,
                int(w, op)?,
                b_layout,
                int(pools, op)?,
                pp,
            )?;
        }
        Ok(pool)
    }

    /// Sums partials `src [groups, terms, n]` into `dst [groups, n]`, each group's `terms`
    /// blocks of `n` in order (the deterministic tile and pool reductions of the composition's
    /// backward).
    pub(super) fn sum_partials(
        &self,
        src: Ptr,
        terms: usize,
        (groups, n): (usize, usize),
        dst: Ptr,
        op: &'static str,
    ) -> Result<()> {
        unsafe {
            self.k.expert_sum_tiles_f32(
                &self.stream,
                cfg_flat(groups * n),
                src,
                int(terms, op)?,
                long(n),
                long(groups),
                dst,
            )
        }
    }

    /// The fused backward's tile partials summed per (pool, sample) row and scattered into the
    /// pools: `dA [P, E, ρ, d_in]`, `dB [P, E, d_out, ρ]` and the gates' `[P·B, r]`.
    pub(super) fn reduce_tile_partials(
        &self,
        parts: &TilePartials,
        (sel_a, sel_b): (Ptr, Ptr),
        d: &ExpertDims,
        pools: usize,
        op: &'static str,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (rows, k) = (pools * d.b, d.k());
        let mut keep = Vec::new();
        let mut rows_sum = |src: Ptr, n: usize| -> Result<Ptr> {
            if parts.tiles == 1 {
                return Ok(src);
            }
            let s = self.scratch_f32(rows * n)?;
            let dst = s.ptr();
            self.sum_partials(src, parts.tiles, (rows, n), dst, op)?;
            keep.push(s);
            Ok(dst)
        };
        let da_rows = rows_sum(parts.da.ptr(), k * d.d_in)?;
        let db_rows = rows_sum(parts.db.ptr(), k * d.d_out)?;
        let (dgates, pdgates) = self.empty(&[rows, d.r], F32)?;
        self.sum_partials(parts.dg.ptr(), parts.tiles, (rows, d.r), pdgates, op)?;
        let da = self.scatter_into_pools(da_rows, sel_a, d, pools, Factor::A, op)?;
        let db = self.scatter_into_pools(db_rows, sel_b, d, pools, Factor::B, op)?;
        // The partial buffers are freed in stream order after the kernels that read them.
        drop(keep);
        Ok((da, db, dgates))
    }

    // ---- routing ------------------------------------------------------------------------------

    /// Launch shape of the routing kernels: a block per (sample, pool), at least 64 threads and
    /// at least E, with `fixed` floats of shared memory besides the slot scores, the reduction
    /// buffer and the selections.
    pub(super) fn route_launch(
        &self,
        bsz: usize,
        pools: usize,
        e: usize,
        r: usize,
        fixed: usize,
        op: &'static str,
    ) -> Result<LaunchConfig> {
        ensure_shape!(e <= 1024, op, "the CUDA router takes E ≤ 1024, got {e}");
        let threads = if e <= 256 {
            256
        } else {
            e.next_multiple_of(32)
        };
        let smem = (fixed + r * e + threads + 2 * r) * 4;
        ensure_shape!(
            smem <= SMEM_LIMIT,
            op,
            "E={e}, r={r} needs {smem} bytes of shared memory, above the {SMEM_LIMIT} a block has"
        );
        let dim = |n: usize| u32::try_from(n).map_err(|_| Error::shape(op, "grid too large"));
        Ok(LaunchConfig {
            grid_dim: (dim(bsz)?, dim(pools)?, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        })
    }

    /// [`crate::backend::ExpertOps::route`] on the device, eq. (3) with the compatibility term
    /// (docs/method.md#routing, steps 1–3): one block per sample.
    pub(super) fn route_device(
        &self,
        la: &Tensor,
        lb: &Tensor,
        a_pool: &Tensor,
        wc: &Tensor,
        lambda: f32,
    ) -> Result<Routing> {
        const OP: &str = "route";
        let _r = nvtx::range("route");
        let (bsz, e, rho, d, r) = route_dims(la, lb, a_pool, wc)?;
        let (pla, plb, pa, pw) = (
            self.ptr(la, F32, OP)?,
            self.ptr(lb, F32, OP)?,
            self.ptr(a_pool, F32, OP)?,
            self.ptr(wc, F32, OP)?,
        );
        let (routing, o) = self.routing_outputs(bsz, e, r, d)?;
        if bsz > 0 && e > 0 {
            let cfg = self.route_launch(bsz, 1, e, r, 4 * e, OP)?;
            unsafe {
                self.k.route_f32(
                    &self.stream,
                    cfg,
                    pla,
                    plb,
                    pa,
                    pw,
                    int(e, OP)?,
                    int(rho, OP)?,
                    int(d, OP)?,
                    int(r, OP)?,
                    lambda,
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
        }
        Ok(routing)
    }

    /// The outputs of a routing over `rows` rows, uninitialised, with their addresses: `S_A`,
    /// `S_B [rows, r]` i32, `P_A`, `P_B [rows, E]`, the compatibility softmaxes `[rows, r, E]`,
    /// `ā [rows, r, d]` and the selected scores `[rows, r]`.
    pub(super) fn routing_outputs(
        &self,
        rows: usize,
        e: usize,
        r: usize,
        d: usize,
    ) -> Result<(Routing, RoutingPtrs)> {
        let (sel_a, psa) = self.empty(&[rows, r], I32)?;
        let (sel_b, psb) = self.empty(&[rows, r], I32)?;
        let (p_a, ppa) = self.empty(&[rows, e], F32)?;
        let (p_b, ppb) = self.empty(&[rows, e], F32)?;
        let (compat, pc) = self.empty(&[rows, r, e], F32)?;
        let (abar, pab) = self.empty(&[rows, r, d], F32)?;
        let (pa_sel, ppas) = self.empty(&[rows, r], F32)?;
        let (pb_sel, ppbs) = self.empty(&[rows, r], F32)?;
        let ptrs = RoutingPtrs {
            sel_a: psa,
            sel_b: psb,
            p_a: ppa,
            p_b: ppb,
            compat: pc,
            abar: pab,
            pa_sel: ppas,
            pb_sel: ppbs,
        };
        let routing = Routing {
            sel_a,
            sel_b,
            p_a,
            p_b,
            compat,
            abar,
            pa_sel,
            pb_sel,
        };
        Ok((routing, ptrs))
    }

    /// [`crate::backend::ExpertOps::route_backward`] on the device: a warp per sample for the
    /// router logits and the compatibility softmax, then one thread per element of dW_C
    /// summing over the samples in order (deterministic).
    pub(super) fn route_backward_device(
        &self,
        d_pa: &Tensor,
        d_pb: &Tensor,
        rt: &Routing,
        lambda: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "route_backward";
        let _r = nvtx::range("route_backward");
        let (bsz, e, r, d) = route_backward_dims(d_pa, d_pb, rt)?;
        let (pga, pgb) = (self.ptr(d_pa, F32, OP)?, self.ptr(d_pb, F32, OP)?);
        let (psa, psb) = (self.ptr(&rt.sel_a, I32, OP)?, self.ptr(&rt.sel_b, I32, OP)?);
        let (ppa, ppb, pc, pab) = (
            self.ptr(&rt.p_a, F32, OP)?,
            self.ptr(&rt.p_b, F32, OP)?,
            self.ptr(&rt.compat, F32, OP)?,
            self.ptr(&rt.abar, F32, OP)?,
        );
        let (dla, pdla) = self.empty(&[bsz, e], F32)?;
        let (dlb, pdlb) = self.empty(&[bsz, e], F32)?;
        if bsz == 0 || e == 0 {
            // No sample or no factor: the gradients are empty, or zeros for dW_C.
            return Ok((dla, dlb, self.zeros(&[r, d, e], F32)?));
        }
        let saved = [psa, psb, ppa, ppb, pc, pab];
        let shape = (1, bsz, e, r, d);
        let dwc = self.route_backward_rows(shape, (pga, pgb), saved, lambda, (pdla, pdlb), OP)?;
        Ok((dla, dlb, dwc.reshape(&[r, d, e])?))
    }

    /// The routing backward of `pools × b` rows, eq. (3) with the compatibility term: a warp
    /// per row writes the router logits' gradients `dla`, `dlb [rows, E]`, then one thread per
    /// element of dW_C `[pools, r, d, E]` sums its pool's samples in order (deterministic).
    /// `saved`: the forward's S_A, S_B, P_A, P_B, compatibility softmaxes and ā.
    pub(super) fn route_backward_rows(
        &self,
        (pools, b, e, r, d): (usize, usize, usize, usize, usize),
        (d_pa, d_pb): (Ptr, Ptr),
        [sel_a, sel_b, p_a, p_b, compat, abar]: [Ptr; 6],
        lambda: f32,
        (dla, dlb): (Ptr, Ptr),
        op: &'static str,
    ) -> Result<Tensor> {
        let rows = pools * b;
        let dz = self.scratch_f32(rows * r * e)?;
        // (an empty dW_C when r·d = 0: r = 0 still gives the logits their zero gradients)
        let (dwc, pdwc) = self.empty(&[pools, r, d, e], F32)?;
        unsafe {
            self.k.route_backward_f32(
                &self.stream,
                cfg_rows(rows),
                d_pa,
                d_pb,
                sel_a,
                sel_b,
                p_a,
                p_b,
                compat,
                int(rows, op)?,
                int(e, op)?,
                int(r, op)?,
                lambda,
                dla,
                dlb,
                dz.ptr(),
                self.err_ptr(),
            )?;
            if r * d * e > 0 {
                self.k.route_dwc_f32(
                    &self.stream,
                    cfg_flat(pools * r * d * e),
                    abar,
                    dz.ptr(),
                    int(b, op)?,
                    int(r, op)?,
                    int(d, op)?,
                    int(e, op)?,
                    int(pools, op)?,
                    pdwc,
                )?;
            }
        }
        Ok(dwc)
    }

    // ---- the gathered factor composition -------------------------------------------------------

    /// [`crate::backend::ExpertOps::expert_forward`], eq. (2)/(4): `α · Σᵢ gᵢ · B[S_B[i]] (A[S_A[i]] x)`
    /// for every token, by the chosen implementation.
    #[allow(clippy::too_many_arguments)]
    pub fn expert_forward_path(
        &self,
        path: ExpertPath,
        x: &Tensor,
        a_pool: &Tensor,
        b_pool: &Tensor,
        sel_a: &Tensor,
        sel_b: &Tensor,
        gates: &Tensor,
        alpha: f32,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "expert_forward";
        let d = expert_dims(x, a_pool, b_pool, sel_a, sel_b, gates)?;
        let ops = self.expert_operands(OP, [x, a_pool, b_pool, sel_a, sel_b, gates])?;
        if d.b * d.t == 0 || d.k() == 0 {
            return Ok((
                self.zeros(&[d.b, d.t, d.d_out], F32)?,
                self.zeros(&[d.b, d.t, d.k()], F32)?,
            ));
        }
        ensure_shape!(d.b <= 65_535, OP, "batch {} exceeds the grid's 65535", d.b);
        if self.resolve_path(path, d.k(), OP)? {
            let _r = nvtx::range("expert_forward (fused)");
            self.expert_forward_fused(&ops, &d, alpha)
        } else {
            let _r = nvtx::range("expert_forward (unfused)");
            self.expert_forward_unfused(&ops, &d, alpha)
        }
    }

    /// [`crate::backend::ExpertOps::expert_backward`] (gradients of eq. (2)/(4)) by the chosen
    /// implementation.
    #[allow(clippy::too_many_arguments)]
    pub fn expert_backward_path(
        &self,
        path: ExpertPath,
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
        const OP: &str = "expert_backward";
        let d = expert_backward_dims(dy, x, a_pool, b_pool, sel_a, sel_b, gates, u)?;
        let ops = self.expert_operands(OP, [x, a_pool, b_pool, sel_a, sel_b, gates])?;
        let (pdy, pu) = (self.ptr(dy, F32, OP)?, self.ptr(u, F32, OP)?);
        if d.b * d.t == 0 || d.k() == 0 {
            return Ok(ExpertGrads {
                dx: self.zeros(x.shape(), F32)?,
                da_pool: self.zeros(&Factor::A.shape(&d), F32)?,
                db_pool: self.zeros(&Factor::B.shape(&d), F32)?,
                dgates: self.zeros(&[d.b, d.r], F32)?,
            });
        }
        ensure_shape!(d.b <= 65_535, OP, "batch {} exceeds the grid's 65535", d.b);
        if self.resolve_path(path, d.k(), OP)? {
            let _r = nvtx::range("expert_backward (fused)");
            self.expert_backward_fused(&ops, pdy, pu, &d, alpha)
        } else {
            let _r = nvtx::range("expert_backward (unfused)");
            self.expert_backward_unfused(&ops, pdy, pu, &d, alpha)
        }
    }

    fn expert_forward_fused(
        &self,
        o: &Operands,
        d: &ExpertDims,
        alpha: f32,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "expert_forward";
        let (bsz, t, din, dout) = (d.b, d.t, d.d_in, d.d_out);
        let k = d.k();
        let km = km_of(k);
        let tt = self.expert_tile(bsz, t, 2 * self.sms);
        debug_assert!(tt <= TT_MAX);
        let cha = stage_cols(din, km);
        let (y, py) = self.empty(&[bsz, t, dout], F32)?;
        let (u, pu) = self.empty(&[bsz, t, k], F32)?;
        let vec = din % 4 == 0 && dout % 4 == 0 && aligned16(o.x) && aligned16(o.a);
        let cfg = LaunchConfig {
            grid_dim: (int(t.div_ceil(tt), OP)? as u32, bsz as u32, 1),
            block_dim: (EXP_THREADS, 1, 1),
            shared_mem_bytes: (km * cha * 4) as u32,
        };
        let args = launch_dims(d, tt, cha, OP)?;
        macro_rules! launch {
            ($f:ident) => {
                self.k.$f(
                    &self.stream,
                    cfg,
                    o.x,
                    o.a,
                    o.b,
                    o.sa,
                    o.sb,
                    o.g,
                    args[0],
                    args[1],
                    args[2],
                    args[3],
                    args[4],
                    args[5],
                    args[6],
                    args[7],
                    alpha,
                    vec as i32,
                    py,
                    pu,
                    self.err_ptr(),
                )
            };
        }
        unsafe {
            match km {
                4 => launch!(expert_fwd_k4),
                8 => launch!(expert_fwd_k8),
                _ => launch!(expert_fwd_k16),
            }?;
        }
        Ok((y, u))
    }

    /// The fused backward: one launch writes dx and each tile's partial factor and gate
    /// gradients, which [`CudaBackend::reduce_tile_partials`] sums and scatters.
    fn expert_backward_fused(
        &self,
        o: &Operands,
        pdy: Ptr,
        pu: Ptr,
        d: &ExpertDims,
        alpha: f32,
    ) -> Result<ExpertGrads> {
        const OP: &str = "expert_backward";
        let (bsz, t, din, dout) = (d.b, d.t, d.d_in, d.d_out);
        let km = km_of(d.k());
        let tt = self.expert_tile(bsz, t, self.sms);
        debug_assert!(tt <= TT_MAX);
        let chb = stage_cols(dout, km);
        let vec =
            din % 4 == 0 && dout % 4 == 0 && aligned16(o.x) && aligned16(o.a) && aligned16(pdy);
        let (dx, pdx) = self.empty(&[bsz, t, din], F32)?;
        let parts = self.tile_partials(bsz, t.div_ceil(tt), d)?;
        let (pda, pdb, pdg) = parts.ptrs();
        let cfg = LaunchConfig {
            grid_dim: (int(parts.tiles, OP)? as u32, bsz as u32, 1),
            block_dim: (EXP_THREADS, 1, 1),
            shared_mem_bytes: (km * chb * 4) as u32,
        };
        let args = launch_dims(d, tt, chb, OP)?;
        macro_rules! launch {
            ($f:ident) => {
                self.k.$f(
                    &self.stream,
                    cfg,
                    pdy,
                    o.x,
                    o.a,
                    o.b,
                    o.sa,
                    o.sb,
                    o.g,
                    pu,
                    args[0],
                    args[1],
                    args[2],
                    args[3],
                    args[4],
                    args[5],
                    args[6],
                    args[7],
                    alpha,
                    vec as i32,
                    pdx,
                    pda,
                    pdb,
                    pdg,
                    self.err_ptr(),
                )
            };
        }
        unsafe {
            match km {
                4 => launch!(expert_bwd_k4),
                8 => launch!(expert_bwd_k8),
                _ => launch!(expert_bwd_k16),
            }?;
        }
        let (da, db, dgates) = self.reduce_tile_partials(&parts, (o.sa, o.sb), d, 1, OP)?;
        Ok(ExpertGrads {
            dx,
            da_pool: da.reshape(&Factor::A.shape(d))?,
            db_pool: db.reshape(&Factor::B.shape(d))?,
            dgates,
        })
    }

    /// Scratch for the partial gradients of `rows` (pool, sample) rows cut into `tiles` token
    /// tiles: `dA_sel [rows, tiles, r·ρ, d_in]`, `dB_selᵀ [rows, tiles, r·ρ, d_out]`, `dg [rows, tiles, r]`.
    pub(super) fn tile_partials(
        &self,
        rows: usize,
        tiles: usize,
        d: &ExpertDims,
    ) -> Result<TilePartials> {
        let (parts, k) = (rows * tiles, d.k());
        Ok(TilePartials {
            da: self.scratch_f32(parts * k * d.d_in)?,
            db: self.scratch_f32(parts * k * d.d_out)?,
            dg: self.scratch_f32(parts * d.r)?,
            tiles,
        })
    }

    /// Dense selected factors: `A_sel [B, K, d_in]` and `B_selᵀ [B, K, d_out]`.
    fn gather_factors(
        &self,
        o: &Operands,
        d: &ExpertDims,
    ) -> Result<(super::Scratch, super::Scratch)> {
        const OP: &str = "expert (unfused)";
        let ExpertDims {
            b: bsz,
            d_in: din,
            d_out: dout,
            e,
            rho,
            r,
            ..
        } = *d;
        let k = d.k();
        let a_sel = self.scratch_f32(bsz * k * din)?;
        let b_selt = self.scratch_f32(bsz * k * dout)?;
        let err = self.err_ptr();
        unsafe {
            self.k.expert_gather_f32(
                &self.stream,
                cfg_flat(bsz * k * din),
                o.a,
                o.sa,
                int(bsz, OP)?,
                int(r, OP)?,
                int(rho, OP)?,
                int(din, OP)?,
                long(rho * din),
                long(din),
                1,
                int(e, OP)?,
                a_sel.ptr(),
                err,
            )?;
            self.k.expert_gather_f32(
                &self.stream,
                cfg_flat(bsz * k * dout),
                o.b,
                o.sb,
                int(bsz, OP)?,
                int(r, OP)?,
                int(rho, OP)?,
                int(dout, OP)?,
                long(dout * rho),
                1,
                long(rho),
                int(e, OP)?,
                b_selt.ptr(),
                err,
            )?;
        }
        Ok((a_sel, b_selt))
    }

    /// `out = alpha · g[b, k/ρ] · v` over `[B, T, K]`: each factor row scaled by its slot's gate.
    fn gate_scale(&self, v: Ptr, g: Ptr, d: &ExpertDims, alpha: f32, out: Ptr) -> Result<()> {
        const OP: &str = "expert (unfused)";
        let (t, k) = (d.t, d.k());
        let n = d.b * t * k;
        unsafe {
            self.k.expert_gate_scale_f32(
                &self.stream,
                cfg_flat(n),
                v,
                g,
                long(n),
                long(t * k),
                int(k, OP)?,
                int(d.rho, OP)?,
                int(d.r, OP)?,
                alpha,
                out,
            )
        }
    }

    fn expert_forward_unfused(
        &self,
        o: &Operands,
        d: &ExpertDims,
        alpha: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (bsz, t, din, dout, k) = (d.b, d.t, d.d_in, d.d_out, d.k());
        let (a_sel, b_selt) = self.gather_factors(o, d)?;
        let (u, pu) = self.empty(&[bsz, t, k], F32)?;
        let (y, py) = self.empty(&[bsz, t, dout], F32)?;
        // u[b] = x[b] · A_sel[b]ᵀ
        self.batched_product(bsz, (t, k, din), (o.x, false), (a_sel.ptr(), true), 1.0, pu)?;
        let ug = self.scratch_f32(bsz * t * k)?;
        self.gate_scale(pu, o.g, d, alpha, ug.ptr())?;
        // y[b] = (α g u)[b] · B_selᵀ[b]
        self.batched_product(
            bsz,
            (t, dout, k),
            (ug.ptr(), false),
            (b_selt.ptr(), false),
            1.0,
            py,
        )?;
        Ok((y, u))
    }

    /// `dgates[b, i] = Σ_t Σ_j dug · u` over slot i's ρ rows: the gates' gradient `[B, r]` from
    /// the gated activations' `dug [B, T, r·ρ]` and the activations `u`.
    fn gate_grads(&self, dug: Ptr, pu: Ptr, d: &ExpertDims) -> Result<Tensor> {
        const OP: &str = "expert_backward (unfused)";
        let (dgates, pdg) = self.empty(&[d.b, d.r], F32)?;
        unsafe {
            self.k.expert_dgates_f32(
                &self.stream,
                LaunchConfig {
                    grid_dim: (int(d.r, OP)? as u32, d.b as u32, 1),
                    block_dim: (EXP_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                },
                dug,
                pu,
                int(d.t, OP)?,
                int(d.k(), OP)?,
                int(d.rho, OP)?,
                int(d.r, OP)?,
                pdg,
            )?;
        }
        Ok(dgates)
    }

    fn expert_backward_unfused(
        &self,
        o: &Operands,
        pdy: Ptr,
        pu: Ptr,
        d: &ExpertDims,
        alpha: f32,
    ) -> Result<ExpertGrads> {
        const OP: &str = "expert_backward (unfused)";
        let (bsz, t, din, dout, k) = (d.b, d.t, d.d_in, d.d_out, d.k());
        let (a_sel, b_selt) = self.gather_factors(o, d)?;
        // dug[b] = α · dy[b] · B_selᵀ[b]ᵀ   [T, K]
        let dug = self.scratch_f32(bsz * t * k)?;
        self.batched_product(
            bsz,
            (t, k, dout),
            (pdy, false),
            (b_selt.ptr(), true),
            alpha,
            dug.ptr(),
        )?;
        let dgates = self.gate_grads(dug.ptr(), pu, d)?;
        // dB_selᵀ[b] = (α g u)[b]ᵀ · dy[b]   [K, d_out]
        let ug = self.scratch_f32(bsz * t * k)?;
        self.gate_scale(pu, o.g, d, alpha, ug.ptr())?;
        let dbs = self.scratch_f32(bsz * k * dout)?;
        self.batched_product(
            bsz,
            (k, dout, t),
            (ug.ptr(), true),
            (pdy, false),
            1.0,
            dbs.ptr(),
        )?;
        // du = dug · g
        let du = self.scratch_f32(bsz * t * k)?;
        self.gate_scale(dug.ptr(), o.g, d, 1.0, du.ptr())?;
        // dx[b] = du[b] · A_sel[b]   [T, d_in]
        let (dx, pdx) = self.empty(&[bsz, t, din], F32)?;
        self.batched_product(
            bsz,
            (t, din, k),
            (du.ptr(), false),
            (a_sel.ptr(), false),
            1.0,
            pdx,
        )?;
        // dA_sel[b] = du[b]ᵀ · x[b]   [K, d_in]
        let das = self.scratch_f32(bsz * k * din)?;
        self.batched_product(
            bsz,
            (k, din, t),
            (du.ptr(), true),
            (o.x, false),
            1.0,
            das.ptr(),
        )?;
        let da = self.scatter_into_pools(das.ptr(), o.sa, d, 1, Factor::A, OP)?;
        let db = self.scatter_into_pools(dbs.ptr(), o.sb, d, 1, Factor::B, OP)?;
        Ok(ExpertGrads {
            dx,
            da_pool: da.reshape(&Factor::A.shape(d))?,
            db_pool: db.reshape(&Factor::B.shape(d))?,
            dgates,
        })
    }
}

impl ExpertOps for CudaBackend {
    fn route(
        &self,
        la: &Tensor,
        lb: &Tensor,
        a_pool: &Tensor,
        wc: &Tensor,
        lambda: f32,
    ) -> Result<Routing> {
        self.route_device(la, lb, a_pool, wc, lambda)
    }
    fn route_backward(
        &self,
        d_pa: &Tensor,
        d_pb: &Tensor,
        routing: &Routing,
        lambda: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.route_backward_device(d_pa, d_pb, routing, lambda)
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
        self.expert_forward_path(
            ExpertPath::Auto,
            x,
            a_pool,
            b_pool,
            sel_a,
            sel_b,
            gates,
            alpha,
        )
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
        self.expert_backward_path(
            ExpertPath::Auto,
            dy,
            x,
            a_pool,
            b_pool,
            sel_a,
            sel_b,
            gates,
            u,
            alpha,
        )
    }
    fn groups_pools(&self) -> bool {
        true
    }
    fn pool_group_forward(&self, g: &PoolGroup) -> Result<GroupForward> {
        self.pool_group_forward_device(g)
    }
    fn pool_group_backward(
        &self,
        g: &PoolGroup,
        f: &GroupForward,
        dys: &[&Tensor],
    ) -> Result<GroupGrads> {
        self.pool_group_backward_device(g, f, dys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_widths_and_stage_widths() {
        assert_eq!([1, 4, 5, 8, 9, 16].map(km_of), [4, 4, 8, 8, 16, 16]);
        // paper shape: all 768 columns of the 4 factor rows in one 12 KiB stage
        assert_eq!(stage_cols(768, 4), 768);
        assert_eq!(stage_cols(3072, 4), 2048);
        assert_eq!(stage_cols(768, 16), 512);
        assert_eq!(stage_cols(7, 8), 8);
        assert_eq!(stage_cols(0, 4), 0);
        for km in [4, 8, 16] {
            for n in [1, 3, 768, 3072, 4099] {
                let c = stage_cols(n, km);
                assert!(
                    c.is_multiple_of(4) && c >= 4 && km * c <= STAGE_FLOATS,
                    "{n} {km} {c}"
                );
                // the static tiles (3 × TT_MAX × KM floats at most) and the stage fit 48 KiB
                assert!((km * c + 3 * TT_MAX * km) * 4 + 256 <= SMEM_LIMIT);
            }
        }
    }
}
