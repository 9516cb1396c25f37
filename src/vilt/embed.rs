//! ViLT's input side (docs/vilt.md#forward, steps 1–7): text embeddings, the patch mask, per-image
//! position grids, the deterministic patch selection and the joint sequence with its masks.
//!
//! What depends on the pixel mask (patch selection, interpolated positions) is decided on the
//! host, like a data loader would; the heavy parts (patch projection, table lookups,
//! LayerNorm) run on the model's device.

use std::sync::Arc;

use crate::backend::cuda::DeviceImageCache;
use crate::backend::patches::{PatchPlan, StoredImage};
use crate::backend::{Backend, Device, Gemm};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::vilt::{image_positions_padded, ViltConfig};

/// One batch in Hugging Face's input names, as host tensors.
#[derive(Clone, Debug)]
pub struct ViltInputs {
    /// `[B, T]` i32.
    pub input_ids: Tensor,
    /// `[B, T]` i32 or f32, 1 on real tokens.
    pub attention_mask: Tensor,
    /// `[B, T]` i32 segment ids; zeros when absent.
    pub token_type_ids: Option<Tensor>,
    /// `[B, 3, H, W]`: f32 values, or 8-bit images in a device image cache.
    pub pixel_values: Pixels,
    /// `[B, H, W]` i32 or f32, 1 on each image's real region.
    pub pixel_mask: Tensor,
}

/// A batch's pixels `[B, 3, H, W]`.
#[derive(Clone, Debug)]
pub enum Pixels {
    /// f32 values (normalised, zero-padded), on the host or the model's device.
    Values(Tensor),
    /// The 8-bit images of `--cache-images` in device memory, one per sample, zero-padded to
    /// `height × width` as they are normalised: only the patch rows are ever built from them,
    /// on the device ([`crate::backend::patches`]).
    Cached {
        cache: Arc<DeviceImageCache>,
        images: Vec<StoredImage>,
        height: usize,
        width: usize,
    },
}

impl From<Tensor> for Pixels {
    fn from(t: Tensor) -> Pixels {
        Pixels::Values(t)
    }
}

impl Pixels {
    /// `[B, C, H, W]`.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Pixels::Values(t) => t.shape().to_vec(),
            Pixels::Cached {
                images,
                height,
                width,
                ..
            } => vec![images.len(), 3, *height, *width],
        }
    }

    /// The f32 values; an error for cached images, which exist only as patch rows.
    pub fn values(&self) -> Result<&Tensor> {
        match self {
            Pixels::Values(t) => Ok(t),
            Pixels::Cached { .. } => Err(Error::Msg(
                "the pixels of this batch are 8-bit images in the device image cache; \
                 their f32 values are not materialised"
                    .into(),
            )),
        }
    }

    /// The samples `rows`.
    fn select(&self, rows: &[usize]) -> Result<Pixels> {
        Ok(match self {
            Pixels::Values(t) => Pixels::Values(select_host_rows(t, rows)?),
            Pixels::Cached {
                cache,
                images,
                height,
                width,
            } => Pixels::Cached {
                cache: cache.clone(),
                images: rows
                    .iter()
                    .map(|&r| {
                        images.get(r).copied().ok_or_else(|| {
                            Error::shape("select rows", format!("row {r} of {}", images.len()))
                        })
                    })
                    .collect::<Result<_>>()?,
                height: *height,
                width: *width,
            },
        })
    }
}

/// The embedded joint sequence `[text (T) ; image CLS ; L patches]` and its masks, all `[B, S]`
/// f32 on the model's device.
pub struct Embedded {
    /// `[B, S, d]`
    pub x: Tensor,
    /// Attention key mask.
    pub mask: Tensor,
    /// Valid text tokens (the positions q_t averages).
    pub text_mask: Tensor,
    /// Image CLS and valid patches (the positions q_v averages).
    pub image_mask: Tensor,
    pub text_len: usize,
}

/// Mask values as f32 whatever integer or float type they came in.
fn mask_f32(t: &Tensor) -> Result<Vec<f32>> {
    match t.dtype() {
        crate::DType::I32 => Ok(t
            .to_vec_i32()?
            .into_iter()
            .map(|v| (v != 0) as i32 as f32)
            .collect()),
        _ => Ok(t
            .to_vec_f32()?
            .into_iter()
            .map(|v| (v != 0.0) as i32 as f32)
            .collect()),
    }
}

/// Patch selection of one image (§Forward 5): its valid cells in row-major order, then, if it
/// has fewer than `l`, its invalid cells cyclically; with the mask of each chosen cell.
pub fn select_patches(cell_mask: &[bool], l: usize) -> Result<Vec<(usize, bool)>> {
    let valid: Vec<usize> = (0..cell_mask.len()).filter(|&i| cell_mask[i]).collect();
    let invalid: Vec<usize> = (0..cell_mask.len()).filter(|&i| !cell_mask[i]).collect();
    let mut out: Vec<(usize, bool)> = valid.iter().take(l).map(|&i| (i, true)).collect();
    if out.len() < l {
        if invalid.is_empty() {
            return Err(Error::Msg(format!(
                "an image has {} patches, {l} are needed",
                out.len()
            )));
        }
        out.extend((0..l - out.len()).map(|j| (invalid[j % invalid.len()], false)));
    }
    Ok(out)
}

/// A batch's images cut into `p × p` patches: `[B, C, H, W]` pixels on a `gh × gw` grid.
struct PatchGrid {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
    gh: usize,
    gw: usize,
}

impl PatchGrid {
    /// The grid of `inputs`, with its pixel values and mask checked against `cfg`.
    fn of(cfg: &ViltConfig, inputs: &ViltInputs) -> Result<PatchGrid> {
        let shape = inputs.pixel_values.shape();
        ensure_shape!(
            shape.len() == 4 && shape[1] == cfg.num_channels,
            "vilt image",
            "pixel_values must be [B, {}, H, W], got {:?}",
            cfg.num_channels,
            shape
        );
        let (b, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
        ensure_shape!(
            inputs.pixel_mask.shape() == [b, h, w],
            "vilt image",
            "pixel_mask {:?} does not fit pixel_values {:?}",
            inputs.pixel_mask.shape(),
            shape
        );
        let p = cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        ensure_shape!(
            gh > 0 && gw > 0,
            "vilt image",
            "images of {h}×{w} are smaller than one {p}×{p} patch"
        );
        Ok(PatchGrid {
            b,
            c,
            h,
            w,
            p,
            gh,
            gw,
        })
    }

    /// Each sample's patch mask `[gh·gw]`, by nearest downsampling of its pixel mask `[H, W]`.
    fn cells(&self, pixel_mask: &[f32]) -> Vec<Vec<bool>> {
        let (h, w, gh, gw) = (self.h, self.w, self.gh, self.gw);
        (0..self.b)
            .map(|bi| {
                (0..gh * gw)
                    .map(|k| {
                        pixel_mask[bi * h * w + (k / gw * h / gh) * w + (k % gw * w / gw)] != 0.0
                    })
                    .collect()
            })
            .collect()
    }

    /// The valid region of a patch mask, `(rows, cols)`: a top-left rectangle.
    fn extent(&self, cells: &[bool]) -> (usize, usize) {
        (
            (0..self.gh).filter(|&i| cells[i * self.gw]).count(),
            (0..self.gw).filter(|&j| cells[j]).count(),
        )
    }

    /// The picked patches `(sample, cell)` of `pixels [B, C, H, W]` as rows `[C·p·p]`, each
    /// flattened in (channel, row, col) order as the patch projection's weight is.
    fn gather_patches(&self, pixels: &[f32], picks: &[(usize, usize)]) -> Vec<f32> {
        let (c, h, w, p) = (self.c, self.h, self.w, self.p);
        let pp = c * p * p;
        let mut patches = vec![0f32; picks.len() * pp];
        for (out, &(bi, cell)) in patches.chunks_exact_mut(pp).zip(picks) {
            let (ci, cj) = (cell / self.gw, cell % self.gw);
            for ch in 0..c {
                for y in 0..p {
                    let src = ((bi * c + ch) * h + ci * p + y) * w + cj * p;
                    out[(ch * p + y) * p..(ch * p + y + 1) * p]
                        .copy_from_slice(&pixels[src..src + p]);
                }
            }
        }
        patches
    }
}

/// What [`EmbeddingTables::image_rows`] builds: the kept patches `(sample, cell)` sample by
/// sample, the additive rows `[B, 1 + L, d]` and the token mask `[B, 1 + L]`.
struct ImageRows {
    picks: Vec<(usize, usize)>,
    add: Vec<f32>,
    mask: Vec<f32>,
}

/// Frozen embedding tables on the model's device, plus what the host-side steps need.
pub struct EmbeddingTables {
    pub word: Tensor,
    /// Stretched to `max_text_len` rows when that exceeds the table (MAP/RebQ).
    pub text_pos: Tensor,
    pub segment: Tensor,
    pub ln_w: Tensor,
    pub ln_b: Tensor,
    /// Patch projection as a matrix `[d, 3·p·p]`, and its bias.
    pub patch_w: Tensor,
    pub patch_b: Tensor,
    /// Host copies: image position table `[1 + n², d]`, CLS `[d]`, modality table `[2, d]`.
    pub image_pos: Vec<f32>,
    pub cls: Vec<f32>,
    pub modality: Vec<f32>,
}

impl EmbeddingTables {
    /// Text tokens: word[ids] + segment[tt] + position[0..T) → LayerNorm → + modality[0].
    pub fn text(&self, be: &dyn Backend, cfg: &ViltConfig, inputs: &ViltInputs) -> Result<Tensor> {
        let ids = &inputs.input_ids;
        ensure_shape!(
            ids.rank() == 2,
            "vilt text",
            "input_ids must be [B, T], got {:?}",
            ids.shape()
        );
        let (b, t) = (ids.dim(0), ids.dim(1));
        let d = cfg.hidden_size;
        ensure_shape!(
            t <= self.text_pos.dim(0),
            "vilt text",
            "text of {t} tokens is longer than the position table ({} rows); raise --max-text-len",
            self.text_pos.dim(0)
        );
        let tt = match &inputs.token_type_ids {
            Some(tt) => tt.clone(),
            None => Tensor::from_i32(vec![0; b * t], &[b, t])?,
        };
        // Checked here, where the tensors still have their names: a table lookup only knows
        // an index and a row count.
        check_ids(
            "input_ids",
            ids,
            &[b, t],
            self.word.dim(0),
            "the vocabulary",
        )?;
        check_ids(
            "token_type_ids",
            &tt,
            &[b, t],
            self.segment.dim(0),
            "the token types (type_vocab_size)",
        )?;
        let dev = be.device();
        let ids_d = ids.to_device(&dev)?;
        let pos = Tensor::from_i32((0..b * t).map(|i| (i % t) as i32).collect(), &[b, t])?;
        let x = be.gather_rows(&self.word, &ids_d)?;
        let x = be.add(&x, &be.gather_rows(&self.segment, &tt.to_device(&dev)?)?)?;
        let x = be.add(&x, &be.gather_rows(&self.text_pos, &pos.to_device(&dev)?)?)?;
        let x = be
            .layernorm(&x, &self.ln_w, &self.ln_b, cfg.layer_norm_eps as f32)?
            .y;
        let m0 = Tensor::from_f32(self.modality[..d].repeat(b * t), &[b, t, d])?.to_device(&dev)?;
        be.add(&x, &m0)
    }

    /// Image tokens `[B, 1 + L, d]` and their mask `[B, 1 + L]` (docs/vilt.md#forward,
    /// steps 2–6): the patch mask, the selected patches, their projection, and the CLS row,
    /// positions and modality embedding added.
    pub fn image(
        &self,
        be: &dyn Backend,
        cfg: &ViltConfig,
        inputs: &ViltInputs,
    ) -> Result<(Tensor, Vec<f32>)> {
        let g = PatchGrid::of(cfg, inputs)?;
        let cells = g.cells(&mask_f32(&inputs.pixel_mask)?);
        let extents: Vec<(usize, usize)> = cells.iter().map(|m| g.extent(m)).collect();
        let mut l = extents.iter().map(|&(a, b)| a * b).max().unwrap_or(0);
        if cfg.max_image_length > 0 {
            l = l.min(cfg.max_image_length as usize);
        }
        let rows = self.image_rows(cfg, &g, &cells, &extents, l)?;
        let dev = be.device();
        let patches = match &inputs.pixel_values {
            Pixels::Values(pv) => {
                let patches = g.gather_patches(&pv.to_vec_f32()?, &rows.picks);
                Tensor::from_f32(patches, &[g.b * l, g.c * g.p * g.p])?.to_device(&dev)?
            }
            Pixels::Cached { cache, images, .. } => cache.patches(&PatchPlan {
                samples: images.clone(),
                rows: rows.picks,
                patch: g.p,
                grid_w: g.gw,
            })?,
        };
        let d = cfg.hidden_size;
        let proj = be.matmul(&patches, &self.patch_w, Gemm::nt())?;
        let proj = be.bias_add(&proj, &self.patch_b)?.reshape(&[g.b, l, d])?;
        let add = Tensor::from_f32(rows.add, &[g.b, 1 + l, d])?.to_device(&dev)?;
        let (cls_add, patch_add) = be.split_seq(&add, 1)?;
        let tokens = be.concat_seq(&cls_add, &be.add(&proj, &patch_add)?)?;
        Ok((tokens, rows.mask))
    }

    /// Per sample, the `l` patches it keeps ([`select_patches`]) and what is added to each image
    /// token: the CLS row's `cls + pos₀ + modality₁`, a patch's interpolated position
    /// `+ modality₁`; with the token mask.
    fn image_rows(
        &self,
        cfg: &ViltConfig,
        g: &PatchGrid,
        cells: &[Vec<bool>],
        extents: &[(usize, usize)],
        l: usize,
    ) -> Result<ImageRows> {
        let (d, n) = (cfg.hidden_size, cfg.patch_grid());
        let grid = &self.image_pos[d..];
        let mut picks = Vec::with_capacity(g.b * l);
        let mut add = vec![0f32; g.b * (1 + l) * d];
        let mut mask = vec![0f32; g.b * (1 + l)];
        let (mod1, pos0) = (&self.modality[d..2 * d], &self.image_pos[..d]);
        for bi in 0..g.b {
            let (hb, wb) = extents[bi];
            let pos = image_positions_padded(grid, n, n, d, hb, wb, g.gh, g.gw)?;
            let sel = select_patches(&cells[bi], l)?;
            let row = &mut add[bi * (1 + l) * d..(bi + 1) * (1 + l) * d];
            for k in 0..d {
                row[k] = self.cls[k] + pos0[k] + mod1[k];
            }
            mask[bi * (1 + l)] = 1.0;
            for (s, &(cell, valid)) in sel.iter().enumerate() {
                mask[bi * (1 + l) + 1 + s] = valid as i32 as f32;
                let dst = &mut row[(1 + s) * d..(2 + s) * d];
                for k in 0..d {
                    dst[k] = pos[cell * d + k] + mod1[k];
                }
                picks.push((bi, cell));
            }
        }
        Ok(ImageRows { picks, add, mask })
    }

    /// The joint sequence and its masks.
    pub fn embed(
        &self,
        be: &dyn Backend,
        cfg: &ViltConfig,
        inputs: &ViltInputs,
    ) -> Result<Embedded> {
        let text = self.text(be, cfg, inputs)?;
        let (image, image_mask) = self.image(be, cfg, inputs)?;
        let (b, t) = (text.dim(0), text.dim(1));
        ensure_shape!(
            image.dim(0) == b,
            "vilt",
            "{b} texts but {} images",
            image.dim(0)
        );
        let li = image.dim(1);
        let am = mask_f32(&inputs.attention_mask)?;
        ensure_shape!(
            am.len() == b * t,
            "vilt",
            "attention_mask has {} values for input_ids [{b}, {t}]",
            am.len()
        );
        let s = t + li;
        let (mut mask, mut tm, mut im) = (vec![0f32; b * s], vec![0f32; b * s], vec![0f32; b * s]);
        for bi in 0..b {
            for j in 0..t {
                mask[bi * s + j] = am[bi * t + j];
                tm[bi * s + j] = am[bi * t + j];
            }
            for j in 0..li {
                mask[bi * s + t + j] = image_mask[bi * li + j];
                im[bi * s + t + j] = image_mask[bi * li + j];
            }
        }
        let dev: Device = be.device();
        let up = |v: Vec<f32>| Tensor::from_f32(v, &[b, s])?.to_device(&dev);
        Ok(Embedded {
            x: be.concat_seq(&text, &image)?,
            mask: up(mask)?,
            text_mask: up(tm)?,
            image_mask: up(im)?,
            text_len: t,
        })
    }
}

/// Errors naming the tensor, the sample and the position of the first id outside
/// `0..rows` of the table it indexes (`table` says which), or a shape other than `shape`.
pub fn check_ids(
    name: &str,
    ids: &Tensor,
    shape: &[usize],
    rows: usize,
    table: &str,
) -> Result<()> {
    if ids.shape() != shape {
        return Err(Error::Msg(format!(
            "`{name}` has shape {:?}; expected {shape:?} (batch, text length)",
            ids.shape()
        )));
    }
    if ids.dtype() != crate::DType::I32 {
        return Err(Error::Msg(format!(
            "`{name}` has dtype {:?}; expected integer ids",
            ids.dtype()
        )));
    }
    let t = shape[1].max(1);
    let values = ids.to_device(&Device::Cpu)?.to_vec_i32()?;
    if let Some((i, &v)) = values
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v as usize >= rows)
    {
        return Err(Error::Msg(format!(
            "`{name}` of sample {} at position {} is {v}, outside {table} (ids 0..{rows}, \
             that is 0 to {})",
            i / t,
            i % t,
            rows as i64 - 1
        )));
    }
    Ok(())
}

fn pick_any<T: Copy>(v: &[T], rows: &[usize], per: usize) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| v[r * per..(r + 1) * per].iter().copied())
        .collect()
}

/// Rows `rows` of a host tensor's first dimension, whatever its dtype.
pub fn select_host_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let host = t.to_device(&Device::Cpu)?;
    let n = host.dim(0);
    let per = host.numel() / n.max(1);
    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
        return Err(Error::shape(
            "select rows",
            format!("row {r} of a tensor with {n}"),
        ));
    }
    let mut shape = host.shape().to_vec();
    shape[0] = rows.len();
    match host.dtype() {
        crate::DType::I32 => Tensor::from_i32(pick_any(host.i32s()?, rows, per), &shape),
        crate::DType::F32 => Tensor::from_f32(pick_any(host.f32s()?, rows, per), &shape),
        crate::DType::BF16 => Tensor::from_bf16(pick_any(host.bf16s()?, rows, per), &shape),
    }
}

impl ViltInputs {
    /// The samples `rows` of the batch (for the consistency forward on complete samples).
    pub fn select(&self, rows: &[usize]) -> Result<ViltInputs> {
        Ok(ViltInputs {
            input_ids: select_host_rows(&self.input_ids, rows)?,
            attention_mask: select_host_rows(&self.attention_mask, rows)?,
            token_type_ids: self
                .token_type_ids
                .as_ref()
                .map(|t| select_host_rows(t, rows))
                .transpose()?,
            pixel_values: self.pixel_values.select(rows)?,
            pixel_mask: select_host_rows(&self.pixel_mask, rows)?,
        })
    }
}
