//! A batch's patch rows gathered from 8-bit images in one store (the device image cache of
//! `--cache-images`, `backend::cuda::DeviceImageCache`): which image and which grid cell each
//! row of ViLT's patch projection input comes from (docs/vilt.md#patch-embeddings), and the
//! CPU twin of the CUDA kernel `patches_from_u8` that builds the rows.
//!
//! The rows equal what the host path builds: the images collated with
//! [`crate::data::image::collate_images`] (normalised, zero-padded to the batch's largest
//! size), then each selected cell's `3 × p × p` pixels copied out.

use crate::data::image::normalized;
use crate::error::{Error, Result};

/// Where one image lies in a store of CHW 8-bit images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredImage {
    /// Byte offset of its first value.
    pub offset: usize,
    pub height: usize,
    pub width: usize,
}

/// The patch rows of a batch: per sample its image in the store, per row `(sample, cell)` with
/// cells numbered row-major over the batch's padded grid of `grid_w` columns of `patch`-pixel
/// squares.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchPlan {
    pub samples: Vec<StoredImage>,
    pub rows: Vec<(usize, usize)>,
    pub patch: usize,
    pub grid_w: usize,
}

impl PatchPlan {
    /// Values per row: `3 · patch²`.
    pub fn row_len(&self) -> usize {
        3 * self.patch * self.patch
    }

    /// The sample table as the kernel reads it: `[offset, height, width]` per sample.
    pub fn sample_words(&self) -> Vec<i64> {
        self.samples
            .iter()
            .flat_map(|s| [s.offset as i64, s.height as i64, s.width as i64])
            .collect()
    }

    /// The row table as the kernel reads it: `[sample, cell]` per row.
    pub fn row_words(&self) -> Result<Vec<i32>> {
        let word = |v: usize| {
            i32::try_from(v).map_err(|_| {
                Error::shape("patches_from_u8", format!("index {v} does not fit an i32"))
            })
        };
        self.rows
            .iter()
            .map(|&(s, c)| Ok([word(s)?, word(c)?]))
            .collect::<Result<Vec<_>>>()
            .map(|v| v.concat())
    }

    /// Fails unless every row names a sample of the plan and every image lies in a store of
    /// `store_len` bytes (what the kernel reports through the device error word).
    pub fn check(&self, store_len: usize) -> Result<()> {
        if self.patch == 0 || self.grid_w == 0 {
            return Err(Error::shape(
                "patches_from_u8",
                "patch size and grid width must be at least 1",
            ));
        }
        if let Some(&(s, _)) = self.rows.iter().find(|r| r.0 >= self.samples.len()) {
            return Err(Error::shape(
                "patches_from_u8",
                format!("row of sample {s} in a batch of {}", self.samples.len()),
            ));
        }
        for (i, s) in self.samples.iter().enumerate() {
            if s.offset + 3 * s.height * s.width > store_len {
                return Err(Error::shape(
                    "patches_from_u8",
                    format!(
                        "sample {i}: image of {}×{} at byte {} outside a store of {store_len} bytes",
                        s.height, s.width, s.offset
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The patch rows `[rows, 3 · p · p]` (channel, row, column within the patch) of `plan` from
/// the 8-bit images in `store`: ViLT's normalised value inside each image, 0 in the padding.
/// Errors as [`PatchPlan::check`].
pub fn patches_from_u8(store: &[u8], plan: &PatchPlan) -> Result<Vec<f32>> {
    plan.check(store.len())?;
    let p = plan.patch;
    let mut out = vec![0f32; plan.rows.len() * plan.row_len()];
    for (row, &(s, cell)) in out.chunks_exact_mut(plan.row_len()).zip(&plan.rows) {
        let im = plan.samples[s];
        let (y0, x0) = (cell / plan.grid_w * p, cell % plan.grid_w * p);
        for ch in 0..3 {
            for y in 0..p {
                let yy = y0 + y;
                if yy >= im.height {
                    break;
                }
                let src = im.offset + (ch * im.height + yy) * im.width;
                let dst = &mut row[(ch * p + y) * p..(ch * p + y + 1) * p];
                for (x, o) in dst.iter_mut().enumerate() {
                    if x0 + x < im.width {
                        *o = normalized(store[src + x0 + x]);
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::{collate_images, PixelImage};

    /// Images of the given sizes with varied values, stored one after another.
    fn store_of(sizes: &[(usize, usize)]) -> (Vec<PixelImage>, Vec<u8>, Vec<StoredImage>) {
        let images: Vec<PixelImage> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(height, width))| PixelImage {
                height,
                width,
                data: (0..3 * height * width)
                    .map(|k| ((k * 37 + i * 101) % 256) as u8)
                    .collect(),
            })
            .collect();
        let mut store = vec![7u8; 5];
        let mut stored = Vec::new();
        for im in &images {
            stored.push(StoredImage {
                offset: store.len(),
                height: im.height,
                width: im.width,
            });
            store.extend(&im.data);
        }
        (images, store, stored)
    }

    #[test]
    fn rows_equal_the_collated_pixels_patch_by_patch() {
        // Padding in both directions, a patch straddling an image's edge, repeated rows.
        let (images, store, stored) = store_of(&[(8, 12), (6, 7), (8, 4)]);
        let (p, h, w) = (4, 8, 12);
        let gw = w / p;
        let rows: Vec<(usize, usize)> = (0..3)
            .flat_map(|s| (0..(h / p) * gw).map(move |c| (s, c)))
            .chain([(1, 0), (2, 5)])
            .collect();
        let plan = PatchPlan {
            samples: stored,
            rows: rows.clone(),
            patch: p,
            grid_w: gw,
        };
        let got = patches_from_u8(&store, &plan).unwrap();
        let refs: Vec<&PixelImage> = images.iter().collect();
        let batch = collate_images(&refs).unwrap();
        let pix = batch.pixel_values.f32s().unwrap();
        for (r, &(s, cell)) in rows.iter().enumerate() {
            for ch in 0..3 {
                for y in 0..p {
                    for x in 0..p {
                        let (yy, xx) = (cell / gw * p + y, cell % gw * p + x);
                        let want = pix[((s * 3 + ch) * h + yy) * w + xx];
                        let at = r * 3 * p * p + (ch * p + y) * p + x;
                        assert_eq!(got[at].to_bits(), want.to_bits(), "row {r}, {ch} {y} {x}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_or_image_outside_the_store_is_refused() {
        let (_, store, stored) = store_of(&[(4, 4)]);
        let plan = |rows: Vec<(usize, usize)>, offset: usize| PatchPlan {
            samples: vec![StoredImage {
                offset,
                ..stored[0]
            }],
            rows,
            patch: 2,
            grid_w: 2,
        };
        assert!(patches_from_u8(&store, &plan(vec![(0, 3)], 5)).is_ok());
        let err = patches_from_u8(&store, &plan(vec![(1, 0)], 5)).unwrap_err();
        assert!(err.to_string().contains("sample 1"), "{err}");
        let err = patches_from_u8(&store, &plan(vec![(0, 0)], 6)).unwrap_err();
        assert!(err.to_string().contains("outside a store"), "{err}");
    }
}
