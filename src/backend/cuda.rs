//! The CUDA backend: one context, one stream, cuBLAS for GEMMs, kernels from `kernels/*.cu`.

use std::sync::{Arc, Weak};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;

use crate::backend::{AdamW, Backend, Device, Gemm, LayerNormGrads, LayerNormOut};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The PTX of every kernel, embedded by `build.rs` when nvcc was found.
pub const PTX: Option<&str> = {
    #[cfg(delo_ptx)]
    {
        Some(include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx")))
    }
    #[cfg(not(delo_ptx))]
    {
        None
    }
};

/// Device memory of a tensor, with the backend that owns it.
pub struct CudaStorage {
    pub backend: Arc<CudaBackend>,
    pub data: CudaData,
}

pub enum CudaData {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    I32(CudaSlice<i32>),
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?}, {})", self.dtype(), self.len())
    }
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        match &self.data {
            CudaData::F32(_) => DType::F32,
            CudaData::BF16(_) => DType::BF16,
            CudaData::I32(_) => DType::I32,
        }
    }
    pub fn len(&self) -> usize {
        match &self.data {
            CudaData::F32(s) => s.len(),
            CudaData::BF16(s) => s.len(),
            CudaData::I32(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn backend(&self) -> Arc<CudaBackend> {
        self.backend.clone()
    }
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    me: Weak<CudaBackend>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend(cuda:{})", self.ctx.ordinal())
    }
}

/// Whether a CUDA driver and at least one device are present (cudarc panics without libcuda,
/// so this is asked before anything else touches CUDA).
pub fn cuda_available() -> bool {
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

impl CudaBackend {
    pub fn new(ordinal: usize) -> Result<Arc<CudaBackend>> {
        if PTX.is_none() {
            return Err(Error::Cuda(
                "this delo binary was built without nvcc, so it has no CUDA kernels; rebuild \
                 with nvcc on PATH (or NVCC=/path/to/nvcc) and REQUIRE_NVCC=1"
                    .into(),
            ));
        }
        if !cuda_available() {
            return Err(Error::Cuda("no CUDA driver or device found".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::Cuda(e.to_string()))?;
        let stream = ctx.default_stream();
        Ok(Arc::new_cyclic(|me| CudaBackend {
            ctx,
            stream,
            me: me.clone(),
        }))
    }
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl Backend for CudaBackend {
    fn device(&self) -> Device {
        Device::Cuda(
            self.me
                .upgrade()
                .expect("a live backend is owned by an Arc"),
        )
    }
    fn upload(&self, _host: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("upload: not yet".into()))
    }
    fn download(&self, _t: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("download: not yet".into()))
    }
    fn zeros(&self, _shape: &[usize], _dtype: DType) -> Result<Tensor> {
        Err(Error::Cuda("zeros: not yet".into()))
    }
    fn cast(&self, _x: &Tensor, _dtype: DType) -> Result<Tensor> {
        Err(Error::Cuda("cast: not yet".into()))
    }
    fn copy(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("copy: not yet".into()))
    }
    fn synchronize(&self) -> Result<()> {
        Err(Error::Cuda("synchronize: not yet".into()))
    }
    fn matmul(&self, _a: &Tensor, _b: &Tensor, _g: Gemm) -> Result<Tensor> {
        Err(Error::Cuda("matmul: not yet".into()))
    }
    fn matmul_into(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _g: Gemm,
        _out: &mut Tensor,
        _beta: f32,
    ) -> Result<()> {
        Err(Error::Cuda("matmul_into: not yet".into()))
    }
    fn add(&self, _a: &Tensor, _b: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("add: not yet".into()))
    }
    fn add_assign(&self, _a: &mut Tensor, _b: &Tensor) -> Result<()> {
        Err(Error::Cuda("add_assign: not yet".into()))
    }
    fn scale(&self, _x: &Tensor, _s: f32) -> Result<Tensor> {
        Err(Error::Cuda("scale: not yet".into()))
    }
    fn mul(&self, _a: &Tensor, _b: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("mul: not yet".into()))
    }
    fn bias_add(&self, _x: &Tensor, _b: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("bias_add: not yet".into()))
    }
    fn sum_rows(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("sum_rows: not yet".into()))
    }
    fn gelu(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("gelu: not yet".into()))
    }
    fn gelu_backward(&self, _dy: &Tensor, _x: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("gelu_backward: not yet".into()))
    }
    fn tanh(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("tanh: not yet".into()))
    }
    fn tanh_backward(&self, _dy: &Tensor, _y: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("tanh_backward: not yet".into()))
    }
    fn layernorm(&self, _x: &Tensor, _w: &Tensor, _b: &Tensor, _eps: f32) -> Result<LayerNormOut> {
        Err(Error::Cuda("layernorm: not yet".into()))
    }
    fn layernorm_backward(
        &self,
        _dy: &Tensor,
        _x: &Tensor,
        _w: &Tensor,
        _mean: &Tensor,
        _rstd: &Tensor,
        _affine_grads: bool,
    ) -> Result<LayerNormGrads> {
        Err(Error::Cuda("layernorm_backward: not yet".into()))
    }
    fn softmax(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("softmax: not yet".into()))
    }
    fn softmax_backward(&self, _dy: &Tensor, _y: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("softmax_backward: not yet".into()))
    }
    fn attention(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _mask: &Tensor,
        _heads: usize,
    ) -> Result<(Tensor, Tensor)> {
        Err(Error::Cuda("attention: not yet".into()))
    }
    fn attention_backward(
        &self,
        _dout: &Tensor,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _probs: &Tensor,
        _heads: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        Err(Error::Cuda("attention_backward: not yet".into()))
    }
    fn gather_rows(&self, _table: &Tensor, _idx: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("gather_rows: not yet".into()))
    }
    fn scatter_add_rows(&self, _dy: &Tensor, _idx: &Tensor, _m: usize) -> Result<Tensor> {
        Err(Error::Cuda("scatter_add_rows: not yet".into()))
    }
    fn concat_seq(&self, _a: &Tensor, _b: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("concat_seq: not yet".into()))
    }
    fn split_seq(&self, _x: &Tensor, _t1: usize) -> Result<(Tensor, Tensor)> {
        Err(Error::Cuda("split_seq: not yet".into()))
    }
    fn masked_mean(&self, _x: &Tensor, _mask: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("masked_mean: not yet".into()))
    }
    fn masked_mean_backward(&self, _dy: &Tensor, _mask: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("masked_mean_backward: not yet".into()))
    }
    fn cosine(&self, _a: &Tensor, _b: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("cosine: not yet".into()))
    }
    fn cosine_backward(&self, _dc: &Tensor, _a: &Tensor, _b: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(Error::Cuda("cosine_backward: not yet".into()))
    }
    fn cross_entropy(&self, _logits: &Tensor, _labels: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("cross_entropy: not yet".into()))
    }
    fn cross_entropy_backward(
        &self,
        _dloss: &Tensor,
        _logits: &Tensor,
        _labels: &Tensor,
    ) -> Result<Tensor> {
        Err(Error::Cuda("cross_entropy_backward: not yet".into()))
    }
    fn bce_with_logits(&self, _logits: &Tensor, _targets: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("bce_with_logits: not yet".into()))
    }
    fn bce_with_logits_backward(
        &self,
        _dloss: &Tensor,
        _logits: &Tensor,
        _targets: &Tensor,
    ) -> Result<Tensor> {
        Err(Error::Cuda("bce_with_logits_backward: not yet".into()))
    }
    fn kl_categorical(&self, _target: &Tensor, _logits: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("kl_categorical: not yet".into()))
    }
    fn kl_categorical_backward(
        &self,
        _dloss: &Tensor,
        _target: &Tensor,
        _logits: &Tensor,
    ) -> Result<Tensor> {
        Err(Error::Cuda("kl_categorical_backward: not yet".into()))
    }
    fn kl_bernoulli(&self, _target: &Tensor, _logits: &Tensor) -> Result<Tensor> {
        Err(Error::Cuda("kl_bernoulli: not yet".into()))
    }
    fn kl_bernoulli_backward(
        &self,
        _dloss: &Tensor,
        _target: &Tensor,
        _logits: &Tensor,
    ) -> Result<Tensor> {
        Err(Error::Cuda("kl_bernoulli_backward: not yet".into()))
    }
    fn adamw(
        &self,
        _params: &mut Tensor,
        _grads: &Tensor,
        _m: &mut Tensor,
        _v: &mut Tensor,
        _hp: AdamW,
    ) -> Result<()> {
        Err(Error::Cuda("adamw: not yet".into()))
    }
}
