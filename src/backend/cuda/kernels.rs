//! The kernel table: every `extern "C"` kernel of `kernels/*.cu`, loaded once at init, with a
//! typed launcher per kernel.
//!
//! Each kernel is declared once below with the Rust types of its parameters, in order: [`Ptr`]
//! for a device pointer, `i32` for `int`, `i64` for `long long`, `f32` for `float`. The macro
//! generates the field that holds the loaded function, a launcher that takes exactly those
//! arguments (so a pointer cannot be passed where a count is expected, nor an argument left
//! out), and [`kernel_signatures`], which `tests/cuda_ptx.rs` checks against the `.param` list
//! of every `.entry` of the embedded PTX, kernel by kernel.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig};

use super::graph::{Arg, Recorder};
use super::memory::{Count, Counters};
use crate::backend::Unary;
use crate::error::{Error, Result};

/// A device address (`T*` in a kernel signature), already offset to the tensor's first element.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ptr(pub u64);

// SAFETY: a device pointer is passed to a kernel as its 64-bit value.
unsafe impl DeviceRepr for Ptr {}

/// PTX parameter type of each Rust argument type of the launchers.
macro_rules! ptx_type {
    (Ptr) => {
        ".u64"
    };
    (i64) => {
        ".u64"
    };
    (i32) => {
        ".u32"
    };
    (f32) => {
        ".f32"
    };
}

macro_rules! kernels {
    ($( $name:ident ( $( $arg:ident : $ty:ident ),* $(,)? ); )*) => {
        /// Every kernel function of the embedded PTX.
        pub(crate) struct Kernels {
            $( $name: CudaFunction, )*
            /// Per activation of [`Unary::ALL`]: its forward and backward kernels.
            unary: Vec<(CudaFunction, CudaFunction)>,
            counters: Arc<Counters>,
            recorder: Arc<Recorder>,
        }

        impl Kernels {
            pub(crate) fn load(
                module: &Arc<CudaModule>,
                counters: Arc<Counters>,
                recorder: Arc<Recorder>,
            ) -> Result<Kernels> {
                let load = |name: &str| {
                    module.load_function(name).map_err(|e| {
                        Error::Cuda(format!("kernel {name} is missing from the PTX: {e}"))
                    })
                };
                Ok(Kernels {
                    unary: Unary::ALL
                        .iter()
                        .map(|op| Ok((load(op.kernels().0)?, load(op.kernels().1)?)))
                        .collect::<Result<_>>()?,
                    counters,
                    recorder,
                    $(
                        $name: load(stringify!($name))?,
                    )*
                })
            }

            $(
                /// Launches the kernel of this name on `stream`.
                ///
                /// # Safety
                /// The pointers must address device memory of the sizes the kernel reads and
                /// writes for these dimensions, alive until the stream has run the kernel.
                #[allow(clippy::too_many_arguments, dead_code)]
                pub(crate) unsafe fn $name(
                    &self,
                    stream: &CudaStream,
                    cfg: LaunchConfig,
                    $( $arg: $ty, )*
                ) -> Result<()> {
                    use cudarc::driver::PushKernelArg;
                    let args = [$( Arg::from($arg) ),*];
                    if self.recorder.kernel(stringify!($name), &self.$name, &cfg, &args) {
                        return Ok(());
                    }
                    self.counters.add(Count::Launch);
                    let mut b = stream.launch_builder(&self.$name);
                    $( b.arg(&$arg); )*
                    b.launch(cfg).map(|_| ()).map_err(|e| {
                        Error::Cuda(format!("launching {}: {e}", stringify!($name)))
                    })
                }
            )*
        }

        /// `(kernel name, PTX parameter types)` of every kernel the backend launches.
        pub fn kernel_signatures() -> Vec<(&'static str, Vec<&'static str>)> {
            let mut all = vec![ $( (stringify!($name), vec![ $( ptx_type!($ty) ),* ]), )* ];
            for op in Unary::ALL {
                let (forward, backward) = op.kernels();
                // (x, out, n) and (dy, saved, out, n): pointers and a long long.
                let (ptr, long) = (ptx_type!(Ptr), ptx_type!(i64));
                all.push((forward, vec![ptr, ptr, long]));
                all.push((backward, vec![ptr, ptr, ptr, long]));
            }
            all
        }

    };
}

kernels! {
    // elementwise.cu
    ew_add_f32(a: Ptr, b: Ptr, out: Ptr, n: i64);
    ew_add_assign_f32(a: Ptr, b: Ptr, n: i64);
    ew_add_assign_parts_f32(table: Ptr, parts: i32);
    ew_axpby_f32(y: Ptr, x: Ptr, a: f32, b: f32, n: i64);
    ew_scale_f32(x: Ptr, s: f32, out: Ptr, n: i64);
    ew_mul_f32(a: Ptr, b: Ptr, out: Ptr, n: i64);
    ew_bias_add_f32(x: Ptr, b: Ptr, out: Ptr, n: i64, d: i64);
    ew_bias_add_parts_f32(y: Ptr, b: Ptr, p0: Ptr, p1: Ptr, out: Ptr, n: i64, d: i64);
    ew_bias_gelu_f32(y: Ptr, b: Ptr, pre: Ptr, out: Ptr, n: i64, d: i64);
    cast_f32_to_bf16(x: Ptr, out: Ptr, n: i64);
    cast_bf16_to_f32(x: Ptr, out: Ptr, n: i64);
    adamw_f32(
        p: Ptr, g: Ptr, m: Ptr, v: Ptr, n: i64, step_hp: Ptr, beta1: f32, beta2: f32, eps: f32,
        wd: f32,
    );
    // reduce.cu
    colsum_partial_f32(x: Ptr, rows: i32, d: i32, rpc: i32, partial: Ptr);
    ln_affine_partial_f32(
        dy: Ptr, x: Ptr, mean: Ptr, rstd: Ptr, rows: i32, d: i32, rpc: i32, pdw: Ptr, pdb: Ptr,
    );
    colsum_final_f32(partial: Ptr, nchunks: i32, d: i32, out: Ptr);
    masked_mean_f32(x: Ptr, mask: Ptr, t: i32, d: i32, out: Ptr);
    masked_mean_backward_f32(dy: Ptr, mask: Ptr, t: i32, d: i32, dx: Ptr);
    cosine_f32(a: Ptr, b: Ptr, rows: i32, d: i32, out: Ptr);
    cosine_backward_f32(dc: Ptr, a: Ptr, b: Ptr, rows: i32, d: i32, da: Ptr, db: Ptr);
    reduce_mean_f32(v: Ptr, n: i64, div: i64, out: Ptr);
    // norm.cu
    layernorm_f32(
        x: Ptr, w: Ptr, b: Ptr, rows: i32, d: i32, eps: f32, y: Ptr, mean: Ptr, rstd: Ptr,
    );
    add_layernorm_f32(
        x: Ptr, yin: Ptr, bias: Ptr, w: Ptr, b: Ptr, rows: i32, d: i32, eps: f32, s: Ptr, y: Ptr,
        mean: Ptr, rstd: Ptr,
    );
    layernorm_backward_f32(
        dy: Ptr, x: Ptr, w: Ptr, mean: Ptr, rstd: Ptr, rows: i32, d: i32, dx: Ptr,
    );
    softmax_f32(x: Ptr, rows: i32, d: i32, y: Ptr);
    softmax_backward_f32(dy: Ptr, y: Ptr, rows: i32, d: i32, dx: Ptr);
    attn_masked_softmax_f32(s: Ptr, mask: Ptr, rows: i32, t: i32, heads: i32);
    // indexing.cu
    gather_rows_f32(table: Ptr, idx: Ptr, n_idx: i64, row: i64, m: i32, out: Ptr, err: Ptr);
    scatter_add_rows_f32(dy: Ptr, idx: Ptr, n_idx: i64, row: i64, m: i32, out: Ptr, err: Ptr);
    copy_rows_where_f32(
        src: Ptr, choice: Ptr, k: i32, n: i32, rows: i64, row: i64, dst: Ptr, err: Ptr,
    );
    copy2d_f32(src: Ptr, src_ld: i64, dst: Ptr, dst_ld: i64, rows: i64, cols: i64);
    // images.cu
    patches_from_u8(
        images: Ptr, n_bytes: i64, samples: Ptr, n_samples: i32, cells: Ptr, rows: i64, p: i32,
        gw: i32, out: Ptr, err: Ptr,
    );
    // losses.cu
    ce_rows_f32(logits: Ptr, labels: Ptr, rows: i32, c: i32, loss: Ptr, err: Ptr);
    ce_backward_f32(
        dloss: Ptr, logits: Ptr, labels: Ptr, rows: i32, c: i32, dx: Ptr, err: Ptr,
    );
    bce_elems_f32(x: Ptr, t: Ptr, n: i64, out: Ptr);
    bce_backward_f32(dloss: Ptr, x: Ptr, t: Ptr, n: i64, div: i64, dx: Ptr);
    kl_cat_rows_f32(target: Ptr, logits: Ptr, rows: i32, c: i32, out: Ptr);
    kl_cat_backward_f32(dloss: Ptr, target: Ptr, logits: Ptr, rows: i32, c: i32, dx: Ptr);
    kl_bern_elems_f32(t: Ptr, l: Ptr, n: i64, out: Ptr);
    kl_bern_backward_f32(dloss: Ptr, t: Ptr, l: Ptr, n: i64, div: i64, dx: Ptr);
    // route.cu
    route_f32(
        la: Ptr, lb: Ptr, a_pool: Ptr, wc: Ptr, e: i32, rho: i32, d: i32, r: i32, lambda: f32,
        sel_a: Ptr, sel_b: Ptr, p_a: Ptr, p_b: Ptr, compat: Ptr, abar: Ptr, pa_sel: Ptr,
        pb_sel: Ptr,
    );
    route_backward_f32(
        gpa: Ptr, gpb: Ptr, sel_a: Ptr, sel_b: Ptr, pa: Ptr, pb: Ptr, comp: Ptr, bsz: i32,
        e: i32, r: i32, lambda: f32, dla: Ptr, dlb: Ptr, dz: Ptr, err: Ptr,
    );
    route_dwc_f32(abar: Ptr, dz: Ptr, bsz: i32, r: i32, d: i32, e: i32, pools: i32, dwc: Ptr);
    // route.cu: every pool of a layer's group at once
    route_group_f32(
        table: Ptr, e: i32, rho: i32, d: i32, r: i32, lambda: f32, sel_a: Ptr, sel_b: Ptr,
        p_a: Ptr, p_b: Ptr, compat: Ptr, abar: Ptr, pa_sel: Ptr, pb_sel: Ptr,
    );
    router_backward_group_f32(
        table: Ptr, dla: Ptr, dlb: Ptr, pools: i32, bsz: i32, e: i32, d: i32, queries: i32,
        dwa: Ptr, dwb: Ptr, dba: Ptr, dbb: Ptr, dq: Ptr,
    );
    // experts.cu: the fused gathered factor composition, one launcher per register width KM
    expert_fwd_k4(
        x: Ptr, a_pool: Ptr, b_pool: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, t: i32, din: i32,
        dout: i32, e: i32, rho: i32, r: i32, tt: i32, cha: i32, alpha: f32, vec: i32, y: Ptr,
        u: Ptr, err: Ptr,
    );
    expert_fwd_k8(
        x: Ptr, a_pool: Ptr, b_pool: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, t: i32, din: i32,
        dout: i32, e: i32, rho: i32, r: i32, tt: i32, cha: i32, alpha: f32, vec: i32, y: Ptr,
        u: Ptr, err: Ptr,
    );
    expert_fwd_k16(
        x: Ptr, a_pool: Ptr, b_pool: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, t: i32, din: i32,
        dout: i32, e: i32, rho: i32, r: i32, tt: i32, cha: i32, alpha: f32, vec: i32, y: Ptr,
        u: Ptr, err: Ptr,
    );
    expert_bwd_k4(
        dy: Ptr, x: Ptr, a_pool: Ptr, b_pool: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, u: Ptr,
        t: i32, din: i32, dout: i32, e: i32, rho: i32, r: i32, tt: i32, chb: i32, alpha: f32,
        vec: i32, dx: Ptr, pda: Ptr, pdb: Ptr, pdg: Ptr, err: Ptr,
    );
    expert_bwd_k8(
        dy: Ptr, x: Ptr, a_pool: Ptr, b_pool: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, u: Ptr,
        t: i32, din: i32, dout: i32, e: i32, rho: i32, r: i32, tt: i32, chb: i32, alpha: f32,
        vec: i32, dx: Ptr, pda: Ptr, pdb: Ptr, pdg: Ptr, err: Ptr,
    );
    expert_bwd_k16(
        dy: Ptr, x: Ptr, a_pool: Ptr, b_pool: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, u: Ptr,
        t: i32, din: i32, dout: i32, e: i32, rho: i32, r: i32, tt: i32, chb: i32, alpha: f32,
        vec: i32, dx: Ptr, pda: Ptr, pdb: Ptr, pdg: Ptr, err: Ptr,
    );
    // experts.cu: every pool of a layer's group at once (blockIdx.z the pool)
    expert_fwd_group_k4(
        table: Ptr, x: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, t: i32, din: i32, dout: i32,
        e: i32, rho: i32, r: i32, tt: i32, cha: i32, alpha: f32, vec: i32, y: Ptr, u: Ptr,
        err: Ptr,
    );
    expert_fwd_group_k8(
        table: Ptr, x: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, t: i32, din: i32, dout: i32,
        e: i32, rho: i32, r: i32, tt: i32, cha: i32, alpha: f32, vec: i32, y: Ptr, u: Ptr,
        err: Ptr,
    );
    expert_bwd_group_k4(
        table: Ptr, x: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, u: Ptr, t: i32, din: i32,
        dout: i32, e: i32, rho: i32, r: i32, tt: i32, chb: i32, alpha: f32, vec: i32, dx: Ptr,
        pda: Ptr, pdb: Ptr, pdg: Ptr, err: Ptr,
    );
    expert_bwd_group_k8(
        table: Ptr, x: Ptr, sel_a: Ptr, sel_b: Ptr, gates: Ptr, u: Ptr, t: i32, din: i32,
        dout: i32, e: i32, rho: i32, r: i32, tt: i32, chb: i32, alpha: f32, vec: i32, dx: Ptr,
        pda: Ptr, pdb: Ptr, pdg: Ptr, err: Ptr,
    );
    expert_sum_tiles_f32(p: Ptr, ntiles: i32, n: i64, bsz: i64, out: Ptr);
    expert_scatter_pool_f32(
        s: Ptr, sel: Ptr, bsz: i32, r: i32, rho: i32, e: i32, w: i32, b_layout: i32, pools: i32,
        pool: Ptr,
    );
    // experts.cu: the unfused path's helpers
    expert_gather_f32(
        pool: Ptr, sel: Ptr, bsz: i32, r: i32, rho: i32, w: i32, se: i64, sj: i64, sc: i64,
        e: i32, out: Ptr, err: Ptr,
    );
    expert_gate_scale_f32(
        v: Ptr, gates: Ptr, n: i64, tk: i64, k: i32, rho: i32, r: i32, alpha: f32, out: Ptr,
    );
    expert_dgates_f32(dug: Ptr, u: Ptr, t: i32, k: i32, rho: i32, r: i32, out: Ptr);
}

/// Threads of a block in the flat (grid-stride) and one-warp-per-row kernels.
pub(crate) const BLOCK: u32 = 256;
/// Rows per block of the one-warp-per-row kernels (`DELO_ROWS_PER_BLOCK` in common.cuh).
pub(crate) const ROWS_PER_BLOCK: usize = 8;

/// Grid-stride launch over `n` elements (at least one block; the kernels bound-check).
pub(crate) fn cfg_flat(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, [`ROWS_PER_BLOCK`] rows per 256-thread block.
pub(crate) fn cfg_rows(rows: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(ROWS_PER_BLOCK).max(1);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Kernels {
    /// Launches activation `op`'s forward kernel, `out = f(x)` over `n` elements.
    ///
    /// # Safety
    /// `x` and `out` must address `n` f32 each, alive until the stream has run the kernel.
    pub(crate) unsafe fn unary_forward(
        &self,
        stream: &CudaStream,
        cfg: LaunchConfig,
        op: Unary,
        x: Ptr,
        out: Ptr,
        n: i64,
    ) -> Result<()> {
        let function = &self.unary[op as usize].0;
        self.launch_pointwise(stream, cfg, op.kernels().0, function, &[x, out], n)
    }

    /// Launches activation `op`'s backward kernel, `out = dy · f'(saved)` over `n` elements.
    ///
    /// # Safety
    /// The pointers must address `n` f32 each, alive until the stream has run the kernel.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn unary_backward(
        &self,
        stream: &CudaStream,
        cfg: LaunchConfig,
        op: Unary,
        dy: Ptr,
        saved: Ptr,
        out: Ptr,
        n: i64,
    ) -> Result<()> {
        let function = &self.unary[op as usize].1;
        self.launch_pointwise(stream, cfg, op.kernels().1, function, &[dy, saved, out], n)
    }

    /// A `(pointers.., n)` kernel: recorded into a graph being captured, else launched.
    unsafe fn launch_pointwise(
        &self,
        stream: &CudaStream,
        cfg: LaunchConfig,
        name: &'static str,
        function: &CudaFunction,
        ptrs: &[Ptr],
        n: i64,
    ) -> Result<()> {
        use cudarc::driver::PushKernelArg;
        let mut args: Vec<Arg> = ptrs.iter().map(|&p| Arg::from(p)).collect();
        args.push(Arg::from(n));
        if self.recorder.kernel(name, function, &cfg, &args) {
            return Ok(());
        }
        self.counters.add(Count::Launch);
        let mut b = stream.launch_builder(function);
        for p in ptrs {
            b.arg(p);
        }
        b.arg(&n);
        b.launch(cfg)
            .map(|_| ())
            .map_err(|e| Error::Cuda(format!("launching {name}: {e}")))
    }
}
