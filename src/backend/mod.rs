//! The device-neutral op set of ViLT + DeLo, forward and backward.
//!
//! Every op takes tensors on the backend's own device and returns tensors there; a CUDA
//! backend does each op with kernels on its stream and never copies through the host inside an
//! op. Scalars that the step computes (losses, their upstream gradients) stay one-element device
//! tensors for the same reason. The CPU backend is the f32 reference every kernel is checked
//! against.

pub mod cpu;
mod cpu_simd;
pub mod cuda;
pub mod experts;
pub mod patches;
pub mod pointwise;
pub(crate) mod shapes;

use std::sync::Arc;

use crate::error::Result;
use crate::tensor::{DType, Tensor};

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
pub use experts::{ExpertGrads, ExpertOps, Routing};
pub use pointwise::{Saved, Unary};

/// Where tensors live and ops run.
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    Cuda(Arc<CudaBackend>),
}

static CPU: CpuBackend = CpuBackend;

impl Device {
    pub fn backend(&self) -> &dyn Backend {
        match self {
            Device::Cpu => &CPU,
            Device::Cuda(b) => b.as_ref(),
        }
    }
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
    /// Opens the device `cpu`, `cuda` or `cuda:N` (see [`DeviceName`]).
    pub fn parse(name: &str) -> Result<Device> {
        name.parse::<DeviceName>()?.open()
    }
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(b) => format!("cuda:{}", b.ordinal()),
        }
    }
}

/// A device as the command line names it, before it is opened: `cpu`, `cuda` (the first GPU)
/// or `cuda:N`. It prints as it was given, so that a run's settings keep the user's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceName {
    Cpu,
    /// `cuda` (`None`, the first GPU) or `cuda:N`.
    Cuda(Option<usize>),
}

impl DeviceName {
    /// The device itself; CUDA fails here when no driver, kernels or device `N` is present.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceName::Cpu => Ok(Device::Cpu),
            DeviceName::Cuda(ordinal) => Ok(Device::Cuda(CudaBackend::new(ordinal.unwrap_or(0))?)),
        }
    }
}

impl std::str::FromStr for DeviceName {
    type Err = crate::error::Error;
    fn from_str(name: &str) -> Result<DeviceName> {
        match name.trim() {
            "cpu" => Ok(DeviceName::Cpu),
            "cuda" => Ok(DeviceName::Cuda(None)),
            s if s.starts_with("cuda:") => s[5..]
                .parse()
                .map(|n| DeviceName::Cuda(Some(n)))
                .map_err(|_| crate::error::Error::Msg(format!("device '{s}': expected cuda:N"))),
            s => Err(crate::error::Error::Msg(format!(
                "unknown device '{s}': expected cpu, cuda or cuda:N"
            ))),
        }
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceName::Cpu => f.write_str("cpu"),
            DeviceName::Cuda(None) => f.write_str("cuda"),
            DeviceName::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// Transposes and scale of one (batched) matrix product `alpha · op(a) · op(b)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
}

impl Gemm {
    /// `a · b`.
    pub fn nn() -> Gemm {
        Gemm {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
        }
    }
    /// `a · bᵀ`: a linear layer `x · Wᵀ` with `W` stored `[out, in]`.
    pub fn nt() -> Gemm {
        Gemm {
            trans_b: true,
            ..Gemm::nn()
        }
    }
    /// `aᵀ · b`: the weight gradient `dyᵀ · x`.
    pub fn tn() -> Gemm {
        Gemm {
            trans_a: true,
            ..Gemm::nn()
        }
    }
}

/// Output of a LayerNorm forward, with what its backward needs.
pub struct LayerNormOut {
    pub y: Tensor,
    /// Per-row mean, `[N]`.
    pub mean: Tensor,
    /// Per-row 1/sqrt(var + eps), `[N]`.
    pub rstd: Tensor,
}

/// Gradients of a LayerNorm; the affine ones only when asked for.
pub struct LayerNormGrads {
    pub dx: Tensor,
    pub dw: Option<Tensor>,
    pub db: Option<Tensor>,
}

/// Hyper-parameters of one AdamW step (decoupled weight decay, bias-corrected moments).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step number, for the bias corrections.
    pub step: u32,
}

/// The op set. Shapes are row-major; "rows" means all leading dimensions flattened.
pub trait Backend: ExpertOps + Send + Sync {
    fn device(&self) -> Device;

    // ---- memory -------------------------------------------------------------------------
    /// A host tensor copied to this device.
    fn upload(&self, host: &Tensor) -> Result<Tensor>;
    /// A tensor of this device copied to the host.
    fn download(&self, t: &Tensor) -> Result<Tensor>;
    /// Several tensors of this device copied to the host together: on CUDA one wait for the
    /// device however many tensors there are (they are gathered into one block first), where
    /// a [`Backend::download`] each would wait once per tensor. Same values as `download`.
    fn download_group(&self, ts: &[&Tensor]) -> Result<Vec<Tensor>> {
        ts.iter().map(|t| self.download(t)).collect()
    }
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;
    /// f32 ↔ bf16 (round to nearest even); same dtype gives a copy.
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
    /// A copy with storage of its own.
    fn copy(&self, x: &Tensor) -> Result<Tensor>;
    /// Waits until all queued work of this device is done.
    fn synchronize(&self) -> Result<()>;

    // ---- GEMM ---------------------------------------------------------------------------
    /// `alpha · op(a) · op(b)` in f32 accumulation, f32 output. `a` is `[batch.., m, k]`
    /// (`[batch.., k, m]` when transposed); `b` is `[batch.., k, n]` with the same batch
    /// dimensions, or 2-D and shared by every batch. `a` and `b` are both f32 or both bf16.
    fn matmul(&self, a: &Tensor, b: &Tensor, g: Gemm) -> Result<Tensor>;
    /// `alpha · op(a) · op(b) + bias`, the f32 `bias [n]` added to every row of the product
    /// (a linear layer). A backend may fold the bias into the product's output pass.
    fn matmul_bias(&self, a: &Tensor, b: &Tensor, g: Gemm, bias: &Tensor) -> Result<Tensor> {
        self.bias_add(&self.matmul(a, b, g)?, bias)
    }
    /// `out = alpha · op(a) · op(b) + beta · out`, in place into an f32 `out`.
    fn matmul_into(
        &self,
        a: &Tensor,
        b: &Tensor,
        g: Gemm,
        out: &mut Tensor,
        beta: f32,
    ) -> Result<()>;

    // ---- elementwise --------------------------------------------------------------------
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `a += b`.
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()>;
    /// `dst[offset .. offset + part.numel()] += part` for every `(offset, part)`, all f32, the
    /// ranges inside the flat `dst` and disjoint (a task's parameter gradients into its flat
    /// gradient buffer). One launch on CUDA, whatever the number of parts.
    fn add_assign_parts(&self, dst: &mut Tensor, parts: &[(usize, &Tensor)]) -> Result<()>;
    /// `y = a·y + b·x` in place, for `y`, `x` f32 of one shape.
    fn axpby(&self, y: &mut Tensor, a: f32, x: &Tensor, b: f32) -> Result<()>;
    /// Sets every element of `t` to zero, in place.
    fn fill_zero(&self, t: &mut Tensor) -> Result<()>;
    fn scale(&self, x: &Tensor, s: f32) -> Result<Tensor>;
    /// Elementwise product of two tensors of one shape.
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `x [rows, d] + b [d]`.
    fn bias_add(&self, x: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Sum over all rows, `[rows, d] → [d]` (the gradient of a bias).
    fn sum_rows(&self, x: &Tensor) -> Result<Tensor>;
    /// The activation `op` elementwise, `f(x)`, f32, of `x`'s shape ([`pointwise`]).
    fn unary(&self, op: Unary, x: &Tensor) -> Result<Tensor>;
    /// The gradient of [`Backend::unary`], `dy · f'`, from `saved`: the forward's input or its
    /// output, as [`Unary::saves`] says; `dy` and `saved` f32 of one shape.
    fn unary_backward(&self, op: Unary, dy: &Tensor, saved: &Tensor) -> Result<Tensor>;

    /// `(y + bias) + (parts₀ + parts₁ + …)` for `y [rows, d]`, `bias [d]` and parts of `y`'s
    /// shape: a frozen linear's output with its bias and the updates an adapter adds to it, in
    /// the order of the unfused ops (bias add, the parts summed left to right, one add), so a
    /// backend that does not fuse gives exactly their result. One launch on CUDA for up to two
    /// parts. With no bias, `y` already carries it (see [`Backend::gemm_folds_bias`]).
    fn bias_add_parts(
        &self,
        y: &Tensor,
        bias: Option<&Tensor>,
        parts: &[&Tensor],
    ) -> Result<Tensor> {
        let biased = match bias {
            Some(b) => self.bias_add(y, b)?,
            None => y.clone(),
        };
        let Some((first, rest)) = parts.split_first() else {
            return Ok(biased);
        };
        let mut sum = (*first).clone();
        for p in rest {
            sum = self.add(&sum, p)?;
        }
        self.add(&biased, &sum)
    }
    /// `pre = y + bias` and `gelu(pre)`, both returned (the backward needs `pre`): the bias of
    /// the MLP's first linear fused with its activation. One launch on CUDA.
    fn bias_gelu(&self, y: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let pre = match bias {
            Some(b) => self.bias_add(y, b)?,
            None => y.clone(),
        };
        let out = self.unary(Unary::Gelu, &pre)?;
        Ok((pre, out))
    }
    /// Whether [`Backend::matmul_bias`] adds the bias inside the product at no extra pass (the
    /// CPU's GEMM starts from the bias rows). Where it does not, a linear leaves its bias to the
    /// fused op that follows it ([`Backend::bias_add_parts`], [`Backend::bias_gelu`],
    /// [`Backend::add_layernorm`]).
    fn gemm_folds_bias(&self) -> bool {
        false
    }
    /// Whether the backward adds a product into a gradient already accumulated through the
    /// GEMM itself (β = 1, [`Backend::matmul_into`]) instead of a separate `add_assign`. The
    /// CPU does not, so that its sums keep the order of the unfused ops.
    fn gemm_accumulates(&self) -> bool {
        false
    }

    // ---- normalisation and softmax --------------------------------------------------------
    /// LayerNorm over the last dimension with affine `w`, `b`.
    fn layernorm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<LayerNormOut>;
    fn layernorm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        affine_grads: bool,
    ) -> Result<LayerNormGrads>;
    /// The residual stream and the LayerNorm that reads it, `s = x + (y + bias)` and
    /// `LayerNorm(s)`, for `x, y [rows, d]` (the sublayer's output `y` without or with its
    /// bias): both returned. One launch on CUDA (ViLT's post-attention and post-MLP residuals,
    /// docs/vilt.md#encoder-blocks).
    fn add_layernorm(
        &self,
        x: &Tensor,
        y: &Tensor,
        bias: Option<&Tensor>,
        w: &Tensor,
        b: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, LayerNormOut)> {
        let y = match bias {
            Some(bias) => self.bias_add(y, bias)?,
            None => y.clone(),
        };
        let s = self.add(x, &y)?;
        let ln = self.layernorm(&s, w, b, eps)?;
        Ok((s, ln))
    }
    /// Softmax over the last dimension.
    fn softmax(&self, x: &Tensor) -> Result<Tensor>;
    /// Gradient of softmax given its output `y`.
    fn softmax_backward(&self, dy: &Tensor, y: &Tensor) -> Result<Tensor>;

    // ---- attention ----------------------------------------------------------------------
    /// Multi-head attention of `q, k, v [B, T, H·Dh]` with key mask `[B, T]` (1 valid, 0
    /// masked to f32::MIN before the softmax), scores scaled by 1/√Dh. Returns the output
    /// `[B, T, H·Dh]` and the probabilities `[B, H, T, T]` its backward needs.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        heads: usize,
    ) -> Result<(Tensor, Tensor)>;
    /// Returns `(dq, dk, dv)`.
    fn attention_backward(
        &self,
        dout: &Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        heads: usize,
    ) -> Result<(Tensor, Tensor, Tensor)>;

    // ---- indexing -----------------------------------------------------------------------
    /// Rows of `table [M, ..]` picked by `idx` (i32, any shape): `[idx.shape.., ..]`. An
    /// embedding lookup is a gather from its table.
    fn gather_rows(&self, table: &Tensor, idx: &Tensor) -> Result<Tensor>;
    /// The adjoint of `gather_rows`: `dy [idx.numel(), ..]` summed into `m` zero rows.
    fn scatter_add_rows(&self, dy: &Tensor, idx: &Tensor, m: usize) -> Result<Tensor>;
    /// `dst[r] = src[r]` for every row `r` (first dimension) whose `choice[r] == k`, in place;
    /// the other rows keep their values. `dst`, `src` f32 of one shape `[R, ..]`, `choice` i32
    /// `[R]` with every value in `0..n` (the building block of a per-row choice among `n`
    /// tensors, [`crate::autograd::Tape::select_rows`]). A choice outside `0..n` is an error
    /// (on CUDA reported at the next synchronisation, since the choices may be device-made).
    fn copy_rows_where(
        &self,
        dst: &mut Tensor,
        src: &Tensor,
        choice: &Tensor,
        k: usize,
        n: usize,
    ) -> Result<()>;
    /// `[B, T1, d] ; [B, T2, d] → [B, T1+T2, d]`.
    fn concat_seq(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// The adjoint of `concat_seq`: splits `[B, T, d]` after `t1` positions.
    fn split_seq(&self, x: &Tensor, t1: usize) -> Result<(Tensor, Tensor)>;

    // ---- reductions ---------------------------------------------------------------------
    /// Mean of `x [B, T, d]` over the positions where `mask [B, T]` is non-zero; `[B, d]`.
    /// A row with no valid position gives zeros.
    fn masked_mean(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor>;
    fn masked_mean_backward(&self, dy: &Tensor, mask: &Tensor) -> Result<Tensor>;
    /// Row-wise cosine similarity of `a, b [B, d]`; `[B]`. Norms are clamped below at 1e-8.
    fn cosine(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Returns `(da, db)` for upstream `dc [B]`.
    fn cosine_backward(&self, dc: &Tensor, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)>;

    // ---- losses (mean-reduced to a `[1]` tensor) -------------------------------------------
    /// Softmax cross-entropy of `logits [B, C]` against class ids `labels [B]` (i32).
    fn cross_entropy(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor>;
    fn cross_entropy_backward(
        &self,
        dloss: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor>;
    /// Binary cross-entropy with logits against `targets [B, C]` in [0, 1], mean over all.
    fn bce_with_logits(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor>;
    fn bce_with_logits_backward(
        &self,
        dloss: &Tensor,
        logits: &Tensor,
        targets: &Tensor,
    ) -> Result<Tensor>;
    /// KL(softmax(target) ‖ softmax(logits)) per row, mean over rows; `target` is a constant.
    fn kl_categorical(&self, target: &Tensor, logits: &Tensor) -> Result<Tensor>;
    /// Gradient with respect to `logits` only.
    fn kl_categorical_backward(
        &self,
        dloss: &Tensor,
        target: &Tensor,
        logits: &Tensor,
    ) -> Result<Tensor>;
    /// Bernoulli KL(σ(target) ‖ σ(logits)) per element, mean over all elements.
    fn kl_bernoulli(&self, target: &Tensor, logits: &Tensor) -> Result<Tensor>;
    fn kl_bernoulli_backward(
        &self,
        dloss: &Tensor,
        target: &Tensor,
        logits: &Tensor,
    ) -> Result<Tensor>;

    // ---- optimiser ----------------------------------------------------------------------
    /// One AdamW step over flat f32 buffers of one length, all updated in place.
    fn adamw(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: AdamW,
    ) -> Result<()>;
}
