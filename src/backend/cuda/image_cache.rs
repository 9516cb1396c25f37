//! The device image cache of `--cache-images` on CUDA: a loader's pre-processed 8-bit images
//! (CHW, [`crate::data::image::PixelImage`]) kept in one block of device memory, each uploaded
//! once, the first time a batch uses it; a step's patch rows are then gathered from it by the
//! kernel `patches_from_u8` ([`crate::backend::patches`]), so that a step uploads a small table
//! instead of its f32 patches.
//!
//! The block is reserved whole when the cache is made (its address stays, so the steps that
//! read it replay as the same CUDA graph), for the most images the loader can hold, each at the
//! largest size the pre-processing gives; [`DeviceImageCache::budget`] is how much may be
//! reserved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::kernels::{cfg_flat, Ptr};
use super::memory::DeviceBuf;
use super::ops::{int, long};
use super::{cuda_err, CudaBackend};
use crate::backend::patches::{PatchPlan, StoredImage};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The share of the device's free memory a cache may reserve: the rest is the training step's
/// (activations, the block cache, cuBLAS) and the evaluations'.
pub const DEVICE_CACHE_SHARE: f64 = 0.5;

/// 8-bit images in device memory, by key (the loader's item position).
pub struct DeviceImageCache {
    backend: Arc<CudaBackend>,
    block: DeviceBuf,
    capacity: usize,
    stored: Mutex<Stored>,
}

impl std::fmt::Debug for DeviceImageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceImageCache({} images, {} of {} bytes)",
            self.len(),
            self.used(),
            self.capacity
        )
    }
}

#[derive(Default)]
struct Stored {
    used: usize,
    images: HashMap<usize, StoredImage>,
}

impl DeviceImageCache {
    /// Bytes a cache may reserve now: [`DEVICE_CACHE_SHARE`] of the device's free memory
    /// (`cuMemGetInfo`).
    pub fn budget(backend: &CudaBackend) -> Result<usize> {
        backend.bind()?;
        let (free, _total) =
            cudarc::driver::result::mem_get_info().map_err(cuda_err("reading free memory"))?;
        Ok((free as f64 * DEVICE_CACHE_SHARE) as usize)
    }

    /// A cache of `capacity` bytes, reserved now (an allocation of the backend's block cache).
    pub fn new(backend: &Arc<CudaBackend>, capacity: usize) -> Result<DeviceImageCache> {
        Ok(DeviceImageCache {
            backend: backend.clone(),
            block: backend.cache.alloc(capacity.max(1))?,
            capacity,
            stored: Mutex::new(Stored::default()),
        })
    }

    /// Bytes reserved.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of images stored.
    pub fn used(&self) -> usize {
        self.lock().map(|s| s.used).unwrap_or(0)
    }

    /// Images stored.
    pub fn len(&self) -> usize {
        self.lock().map(|s| s.images.len()).unwrap_or(0)
    }

    /// Whether no image is stored yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the image of `key` lies in the cache; `None` until it is stored.
    pub fn get(&self, key: usize) -> Result<Option<StoredImage>> {
        Ok(self.lock()?.images.get(&key).copied())
    }

    /// Stores the image of `key`, `data` CHW `[3, height, width]`, uploading it (once: a key
    /// already stored keeps its image). Fails when it does not fit the rest of the cache, and
    /// inside a graphed step, whose device work is replayed: an upload there would be replayed
    /// with every step.
    pub fn store(
        &self,
        key: usize,
        height: usize,
        width: usize,
        data: &[u8],
    ) -> Result<StoredImage> {
        if self.backend.recorder.active() {
            return Err(Error::Cuda(
                "storing an image in the device cache inside a graphed step".into(),
            ));
        }
        if data.len() != 3 * height * width {
            return Err(Error::shape(
                "device image cache",
                format!("{} bytes for a 3×{height}×{width} image", data.len()),
            ));
        }
        let mut stored = self.lock()?;
        if let Some(&im) = stored.images.get(&key) {
            return Ok(im);
        }
        if stored.used + data.len() > self.capacity {
            return Err(Error::Cuda(format!(
                "the device image cache is full: {} of {} bytes used, an image of {} more",
                stored.used,
                self.capacity,
                data.len()
            )));
        }
        let im = StoredImage {
            offset: stored.used,
            height,
            width,
        };
        // SAFETY: the range lies inside the cache's block (checked above), which lives as long
        // as `self`; a copy from pageable memory is staged before the call returns.
        unsafe {
            self.backend
                .upload_from(Ptr(self.block.ptr() + im.offset as u64), data)?
        };
        stored.used += data.len();
        stored.images.insert(key, im);
        Ok(im)
    }

    /// The patch rows `[rows, 3 · p · p]` f32 of `plan` (on this cache's backend), built by
    /// the kernel `patches_from_u8` from one upload of the plan's tables. An image outside the
    /// cache is an error at once when the plan says so, else at the next synchronisation.
    pub fn patches(&self, plan: &PatchPlan) -> Result<Tensor> {
        const OP: &str = "patches_from_u8";
        plan.check(self.capacity)?;
        let be = &self.backend;
        let rows = plan.rows.len();
        // One table: the samples' words, then per row its sample and cell as two i32s.
        let mut words = plan.sample_words();
        let cells = plan.row_words()?;
        words.extend(
            cells
                .chunks_exact(2)
                .map(|c| (c[0] as u32 as i64) | ((c[1] as i64) << 32)),
        );
        let table = be.cache.alloc(8 * words.len())?;
        let (out, po) = be.empty(&[rows, plan.row_len()], DType::F32)?;
        // SAFETY: the table block holds exactly `words`; the kernel reads the cache's block
        // within `capacity` bytes, the table and writes `out`, all alive until it has run
        // (the blocks go back to the block cache, which stream order makes safe).
        unsafe {
            be.upload_from(Ptr(table.ptr()), &words[..])?;
            be.k.patches_from_u8(
                &be.stream,
                cfg_flat(rows * plan.row_len()),
                Ptr(self.block.ptr()),
                long(self.capacity),
                Ptr(table.ptr()),
                int(plan.samples.len(), OP)?,
                Ptr(table.ptr() + 24 * plan.samples.len() as u64),
                long(rows),
                int(plan.patch, OP)?,
                int(plan.grid_w, OP)?,
                po,
                be.err_ptr(),
            )?;
        }
        Ok(out)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Stored>> {
        self.stored
            .lock()
            .map_err(|_| Error::Cuda("the device image cache's lock is poisoned".into()))
    }
}
