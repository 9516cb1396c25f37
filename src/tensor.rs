//! The tensor: a shape, a dtype and a contiguous range of one device buffer.
//!
//! Tensors are cheap to clone (the storage is shared through an `Arc`) and immutable while shared.
//! In-place updates (gradient accumulation, AdamW) go through [`Tensor::storage_mut`], which
//! succeeds only when no other tensor views the same storage: a shared buffer is never mutated
//! behind a reader's back.

use std::sync::Arc;

use half::bf16;

use crate::backend::cuda::CudaStorage;
use crate::backend::{Backend, Device};
use crate::error::{Error, Result};

/// Element types the engine stores. `I32` holds token ids, labels and gather indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    I32,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 => 2,
        }
    }
}

/// Host memory of a tensor.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I32(_) => DType::I32,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::I32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The memory behind a tensor, on the host or on a CUDA device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
    offset: usize,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Wraps a storage whose whole length is the tensor.
    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        if storage.len() != numel(shape) {
            return Err(Error::shape(
                "tensor",
                format!(
                    "{} elements cannot have shape {shape:?} ({} elements)",
                    storage.len(),
                    numel(shape)
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(storage),
            offset: 0,
        })
    }

    pub fn from_f32(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(CpuStorage::F32(data)), shape)
    }
    pub fn from_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(CpuStorage::BF16(data)), shape)
    }
    pub fn from_i32(data: Vec<i32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(CpuStorage::I32(data)), shape)
    }
    /// A one-element f32 tensor on the host.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::from_f32(vec![v], &[1]).expect("one element has shape [1]")
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// Size of dimension `i`, counting from the end when negative.
    pub fn dim(&self, i: isize) -> usize {
        let r = self.shape.len() as isize;
        self.shape[if i < 0 { r + i } else { i } as usize]
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.backend()),
        }
    }
    pub fn is_cpu(&self) -> bool {
        matches!(&*self.storage, Storage::Cpu(_))
    }

    /// The same elements under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} cannot become {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
            offset: self.offset,
        })
    }

    /// A contiguous sub-range of this tensor's elements, starting `offset` elements in.
    pub fn view(&self, offset: usize, shape: &[usize]) -> Result<Tensor> {
        if offset + numel(shape) > self.numel() {
            return Err(Error::shape(
                "view",
                format!(
                    "range {offset}..{} outside a tensor of {} elements",
                    offset + numel(shape),
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
            offset: self.offset + offset,
        })
    }

    /// Runs `f` on a view of `self` (elements `offset..offset + numel(shape)`) that may be
    /// updated in place, e.g. one parameter's slice of a flat gradient buffer.
    pub fn with_view_mut<R>(
        &mut self,
        offset: usize,
        shape: &[usize],
        f: impl FnOnce(&mut Tensor) -> Result<R>,
    ) -> Result<R> {
        if offset + numel(shape) > self.numel() {
            return Err(Error::shape(
                "with_view_mut",
                format!(
                    "range {offset}..{} outside {:?}",
                    offset + numel(shape),
                    self.shape
                ),
            ));
        }
        let saved = (
            std::mem::replace(&mut self.shape, shape.to_vec()),
            self.offset,
        );
        self.offset += offset;
        let r = f(self);
        (self.shape, self.offset) = saved;
        r
    }

    /// Exclusive access to the storage, for in-place updates; fails while other tensors share it.
    pub fn storage_mut(&mut self) -> Result<(&mut Storage, usize, usize)> {
        let (off, n) = (self.offset, self.numel());
        match Arc::get_mut(&mut self.storage) {
            Some(s) => Ok((s, off, n)),
            None => Err(Error::Msg(
                "in-place update of a tensor whose storage is shared with another tensor".into(),
            )),
        }
    }

    pub fn cpu(&self) -> Result<&CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s),
            Storage::Cuda(_) => Err(Error::Msg(
                "a CUDA tensor was given to a CPU operation; move it with to_device first".into(),
            )),
        }
    }

    /// The f32 elements of a host tensor.
    pub fn f32s(&self) -> Result<&[f32]> {
        match self.cpu()? {
            CpuStorage::F32(v) => Ok(&v[self.offset..self.offset + self.numel()]),
            s => Err(Error::Msg(format!(
                "expected an f32 tensor, got {:?}",
                s.dtype()
            ))),
        }
    }
    /// The i32 elements of a host tensor.
    pub fn i32s(&self) -> Result<&[i32]> {
        match self.cpu()? {
            CpuStorage::I32(v) => Ok(&v[self.offset..self.offset + self.numel()]),
            s => Err(Error::Msg(format!(
                "expected an i32 tensor, got {:?}",
                s.dtype()
            ))),
        }
    }
    /// The bf16 elements of a host tensor.
    pub fn bf16s(&self) -> Result<&[bf16]> {
        match self.cpu()? {
            CpuStorage::BF16(v) => Ok(&v[self.offset..self.offset + self.numel()]),
            s => Err(Error::Msg(format!(
                "expected a bf16 tensor, got {:?}",
                s.dtype()
            ))),
        }
    }
    /// Mutable f32 elements of an unshared host tensor.
    pub fn f32s_mut(&mut self) -> Result<&mut [f32]> {
        let (s, off, n) = self.storage_mut()?;
        match s {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(&mut v[off..off + n]),
            s => Err(Error::Msg(format!(
                "expected a host f32 tensor, got {:?} on {}",
                s.dtype(),
                if matches!(s, Storage::Cpu(_)) {
                    "cpu"
                } else {
                    "cuda"
                }
            ))),
        }
    }

    /// Copies the tensor to `device` (a no-op clone when it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match (device, &*self.storage) {
            (Device::Cpu, Storage::Cpu(_)) => Ok(self.clone()),
            (Device::Cpu, Storage::Cuda(s)) => s.backend().download(self),
            (Device::Cuda(b), _) => {
                let host = self.to_device(&Device::Cpu)?;
                b.upload(&host)
            }
        }
    }

    /// All elements as f32 on the host, whatever the device and float dtype.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        let host = self.to_device(&Device::Cpu)?;
        match host.cpu()? {
            CpuStorage::F32(_) => Ok(host.f32s()?.to_vec()),
            CpuStorage::BF16(_) => Ok(host.bf16s()?.iter().map(|x| x.to_f32()).collect()),
            CpuStorage::I32(_) => Err(Error::Msg(
                "to_vec_f32 on an i32 tensor; use to_vec_i32".into(),
            )),
        }
    }
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        let host = self.to_device(&Device::Cpu)?;
        Ok(host.i32s()?.to_vec())
    }
    /// The single value of a one-element tensor (a device sync when on the GPU).
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor of shape {:?} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_vec_f32()?[0])
    }
}
