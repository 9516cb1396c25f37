//! `--cache-images` on CUDA: a task's training images kept in device memory
//! ([`DeviceImageCache`]) when they fit its budget, so that a step after an image's first use
//! uploads a small table of where its samples' images lie instead of its f32 patches; the host
//! cache of the loader otherwise (the notice says why).
//!
//! Images first seen are prepared by the loader's workers as always (decoded, resized, kept in
//! the loader's host cache as 8-bit values) and uploaded once, between steps, by [`place`]
//! (`DeviceImages::place`), never inside a step: a step replayed as a CUDA graph would replay
//! the upload too.

use std::sync::Arc;

use crate::backend::cuda::{DeviceImageCache, DEVICE_CACHE_SHARE};
use crate::backend::patches::StoredImage;
use crate::backend::Device;
use crate::data::image::{ImageProcessor, PixelImage};
use crate::data::{Batch, Loader, MissingType, SamplePrep};
use crate::error::Result;
use crate::vilt::{Pixels, ViltInputs};

/// The cache key of the stand-in for missing images (item positions are below it).
const BLANK: usize = usize::MAX;

/// The device image cache of one loader.
pub struct DeviceImages {
    cache: Arc<DeviceImageCache>,
}

/// What [`DeviceImages::for_loader`] decided, with the line that says so.
pub struct Placement {
    pub images: Option<DeviceImages>,
    pub notice: String,
}

const MIB: f64 = 1048576.0;

impl DeviceImages {
    /// A device cache for every image of `loader` (its items, at the largest size `images`
    /// gives, plus the stand-in) on `device`, reserved now when that fits the budget
    /// ([`DeviceImageCache::budget`]); `None` (the host cache) when it does not, or off CUDA.
    pub fn for_loader<P: SamplePrep>(
        device: &Device,
        loader: &Loader<P>,
        images: &ImageProcessor,
    ) -> Result<Placement> {
        let Device::Cuda(backend) = device else {
            return Ok(Placement {
                images: None,
                notice: "--cache-images: images kept in host memory (CPU device)".into(),
            });
        };
        let need = (loader.len() + 1) * images.max_image_bytes();
        let budget = DeviceImageCache::budget(backend)?;
        if need > budget {
            return Ok(Placement {
                images: None,
                notice: format!(
                    "--cache-images: {} images need up to {:.0} MiB, over the device budget of {:.0} MiB ({:.0}% of free device memory); keeping them in host memory",
                    loader.len(),
                    need as f64 / MIB,
                    budget as f64 / MIB,
                    DEVICE_CACHE_SHARE * 100.0
                ),
            });
        }
        Ok(Placement {
            images: Some(DeviceImages {
                cache: Arc::new(DeviceImageCache::new(backend, need)?),
            }),
            notice: format!(
                "--cache-images: {} images kept in device memory ({:.0} MiB reserved, budget {:.0} MiB)",
                loader.len(),
                need as f64 / MIB,
                budget as f64 / MIB
            ),
        })
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<DeviceImageCache> {
        &self.cache
    }

    /// `batch`'s inputs with its pixels taken from the device cache, after uploading the
    /// images of its samples that are not there yet (from `loader`'s host cache, where the
    /// batch's preparation left them; the stand-in for a sample without its image).
    pub fn place<P: SamplePrep<Image = PixelImage>>(
        &self,
        loader: &Loader<P>,
        batch: &Batch<ViltInputs>,
    ) -> Result<ViltInputs> {
        let stored = batch
            .samples
            .iter()
            .map(|s| {
                let key = match s.missing {
                    MissingType::Image => BLANK,
                    _ => s.position,
                };
                if let Some(im) = self.cache.get(key)? {
                    return Ok(im);
                }
                let image = match key {
                    BLANK => loader.blank().ok_or_else(|| {
                        crate::error::Error::Msg(
                            "a sample without its image in a loader with no stand-in".into(),
                        )
                    })?,
                    p => loader.image(p)?,
                };
                self.cache
                    .store(key, image.height, image.width, &image.data)
            })
            .collect::<Result<Vec<StoredImage>>>()?;
        let shape = batch.data.pixel_values.shape();
        Ok(ViltInputs {
            pixel_values: Pixels::Cached {
                cache: self.cache.clone(),
                images: stored,
                height: shape[2],
                width: shape[3],
            },
            ..batch.data.clone()
        })
    }
}
