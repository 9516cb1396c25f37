//! Image pre-processing with `ViltImageProcessor` semantics (docs/vilt.md#images).
//!
//! Decode ([`crate::data::decode`]: every format Pillow reads that the `image` crate reads) → RGB8 → resize → CHW u8
//! ([`PixelImage`], what the loader's image cache keeps: a quarter of the f32 bytes) → x/255 →
//! (x − 0.5)/0.5 → f32 when a batch is collated ([`collate_images`]).
//! Resizing is a port of Pillow's `Image.resize(..., BICUBIC)` for 8-bit images (separable
//! Keys cubic with a = −0.5, support scaled by the down-sampling factor, 22-bit fixed-point
//! coefficients, two separable passes each rounded and clipped to u8), which is
//! what transformers' PIL image processor calls. It is bit-exact with Pillow 13 (checked by
//! `tests/vilt_preprocess.rs` against `scripts/fixtures/make_preprocess_fixture.py`). The
//! `image` crate's own CatmullRom filter is the same kernel but keeps f32 intermediates and
//! different rounding, so it is not used.
//!
//! Two resize modes: ViLT's shortest-edge resize (shortest side 384, longest ≤ 639, both sides
//! floored to multiples of 32), and a forced S×S square (`--image-size S`, as the CMML code).

use std::path::Path;

use image::RgbImage;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// ViLT's `size = {"shortest_edge": 384}`.
pub const VILT_SHORTEST_EDGE: u32 = 384;
/// ViLT's `size_divisor`.
pub const VILT_SIZE_DIVISOR: u32 = 32;

/// Output size `(height, width)` of `ViltImageProcessor`'s resize for an `h × w` image:
/// shortest side → `shortest`, longest capped at ⌊1333/800 · shortest⌋ (both scaled), rounded,
/// then floored to multiples of `divisor`. Same f64 arithmetic as transformers'
/// `get_resize_output_image_size`.
pub fn vilt_output_size(h: u32, w: u32, shortest: u32, divisor: u32) -> (u32, u32) {
    let longer = (1333.0 / 800.0 * shortest as f64) as u32 as f64;
    let (h, w, min_size) = (h as f64, w as f64, shortest as f64);
    let scale = min_size / h.min(w);
    let (mut nh, mut nw) = if h < w {
        (min_size, scale * w)
    } else {
        (scale * h, min_size)
    };
    if nh.max(nw) > longer {
        let s = longer / nh.max(nw);
        nh *= s;
        nw *= s;
    }
    let (nh, nw) = ((nh + 0.5) as u32, (nw + 0.5) as u32);
    (nh / divisor * divisor, nw / divisor * divisor)
}

/// How images are resized before patching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// ViltImageProcessor: shortest edge, capped longest edge, multiples of `divisor`.
    ShortestEdge { shortest: u32, divisor: u32 },
    /// Forced `size × size` (aspect ratio not kept).
    Square(u32),
}

/// One pre-processed image: resized, CHW, 3 channels, 8-bit values not yet normalised (the
/// loader's image cache keeps these; [`collate_images`] normalises them).
#[derive(Clone, Debug, PartialEq)]
pub struct PixelImage {
    pub height: usize,
    pub width: usize,
    /// `[3, height, width]` row-major, 0..=255.
    pub data: Vec<u8>,
}

impl PixelImage {
    /// The normalised values `[3, height, width]` (see [`normalized`]), as the batch holds them.
    pub fn normalized(&self) -> Vec<f32> {
        self.data.iter().map(|&v| normalized(v)).collect()
    }
}

/// ViLT's normalisation of one 8-bit value, exactly as transformers computes it: x/255 in f64
/// rounded to f32 (`rescale`), then (x − 0.5)/0.5 in f32 (`normalize`, mean = std = 0.5).
/// 0 ↦ −1 and 255 ↦ 1 exactly.
pub fn normalized(v: u8) -> f32 {
    NORMALIZED[v as usize]
}

/// [`normalized`] of every 8-bit value.
static NORMALIZED: std::sync::LazyLock<[f32; 256]> = std::sync::LazyLock::new(|| {
    std::array::from_fn(|v| {
        let r = (v as f64 * (1.0 / 255.0)) as f32;
        (r - 0.5) / 0.5
    })
});

/// A padded batch of images.
#[derive(Clone, Debug)]
pub struct ImageBatch {
    /// `[B, 3, H, W]` f32, zero-padded bottom/right to the largest H and W of the batch.
    pub pixel_values: Tensor,
    /// `[B, H, W]` i32, 1 on each image's real region.
    pub pixel_mask: Tensor,
}

/// `ViltImageProcessor` as a value: a resize mode plus the fixed x/255, mean = std = 0.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageProcessor {
    pub mode: ResizeMode,
}

impl Default for ImageProcessor {
    fn default() -> Self {
        Self::vilt()
    }
}

impl ImageProcessor {
    /// ViLT's processor: shortest edge 384, multiples of 32.
    pub fn vilt() -> Self {
        ImageProcessor {
            mode: ResizeMode::ShortestEdge {
                shortest: VILT_SHORTEST_EDGE,
                divisor: VILT_SIZE_DIVISOR,
            },
        }
    }

    /// Forced `size × size` resize (`--image-size`).
    pub fn square(size: u32) -> Self {
        ImageProcessor {
            mode: ResizeMode::Square(size),
        }
    }

    /// The processor for an optional `--image-size`: square when given, ViLT's otherwise.
    pub fn with_image_size(size: Option<u32>) -> Self {
        size.map_or_else(Self::vilt, Self::square)
    }

    /// Output `(height, width)` for an `h × w` input; `None` when the result would be empty
    /// (an extreme aspect ratio that the multiple-of-32 floor reduces to nothing).
    pub fn output_size(&self, h: u32, w: u32) -> Option<(u32, u32)> {
        let (oh, ow) = match self.mode {
            ResizeMode::ShortestEdge { shortest, divisor } => {
                if h == 0 || w == 0 {
                    return None;
                }
                vilt_output_size(h, w, shortest, divisor)
            }
            ResizeMode::Square(s) => (s, s),
        };
        (oh > 0 && ow > 0).then_some((oh, ow))
    }

    /// Reads and pre-processes an image file; errors name the file.
    pub fn load(&self, path: &Path) -> Result<PixelImage> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.decode(&bytes, path)
    }

    /// Decodes an image file's bytes (any format of [`crate::data::decode`], as Pillow reads
    /// it) and pre-processes them; `source` names the image in errors.
    pub fn decode(&self, bytes: &[u8], source: &Path) -> Result<PixelImage> {
        let img = crate::data::decode::decode_rgb(bytes, source)?;
        self.process(&img)
            .map_err(|e| Error::format(source, e.to_string()))
    }

    /// Resizes and normalises a decoded RGB image.
    pub fn process(&self, img: &RgbImage) -> Result<PixelImage> {
        let (w, h) = img.dimensions();
        let (oh, ow) = self.output_size(h, w).ok_or_else(|| {
            Error::Msg(format!(
                "a {w}×{h} image resizes to nothing under {:?} (aspect ratio too extreme)",
                self.mode
            ))
        })?;
        Ok(planar(&resize_bicubic_pil(img, ow, oh)))
    }

    /// The most bytes one pre-processed image ([`PixelImage`]) can take, the stand-in for a
    /// missing image included: `3 × H × W` at the largest output size of the mode.
    pub fn max_image_bytes(&self) -> usize {
        let (h, w) = match self.mode {
            ResizeMode::Square(s) => (s, s),
            ResizeMode::ShortestEdge { shortest, divisor } => {
                // Each side floored to the divisor from at most `shortest` (the short side) and
                // ⌊1333/800 · shortest⌋ (the long one), as in `vilt_output_size`; the stand-in
                // is shortest × shortest.
                let longest = (1333.0 / 800.0 * shortest as f64) as u32;
                let floor = |v: u32| v / divisor.max(1) * divisor.max(1);
                (shortest, floor(longest).max(shortest))
            }
        };
        3 * h as usize * w as usize
    }

    /// The stand-in for a missing image: white (255, every normalised value 1.0) at the forced
    /// size, or `shortest × shortest` in shortest-edge mode.
    pub fn missing(&self) -> PixelImage {
        let s = match self.mode {
            ResizeMode::Square(s) => s,
            ResizeMode::ShortestEdge { shortest, .. } => shortest,
        } as usize;
        PixelImage {
            height: s,
            width: s,
            data: vec![255; 3 * s * s],
        }
    }
}

/// HWC → CHW, values kept.
fn planar(img: &RgbImage) -> PixelImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut data = vec![0u8; 3 * h * w];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = px[c];
        }
    }
    PixelImage {
        height: h,
        width: w,
        data,
    }
}

/// Normalises images ([`normalized`]), pads them bottom/right with zeros to the batch's largest
/// height and width and builds the pixel mask, as `ViltImageProcessor(do_pad=True)`.
pub fn collate_images(images: &[&PixelImage]) -> Result<ImageBatch> {
    if images.is_empty() {
        return Err(Error::Msg(
            "cannot build an image batch of zero images".into(),
        ));
    }
    for (i, im) in images.iter().enumerate() {
        if im.data.len() != 3 * im.height * im.width {
            return Err(Error::shape(
                "collate_images",
                format!(
                    "image {i} has {} values, expected 3×{}×{}",
                    im.data.len(),
                    im.height,
                    im.width
                ),
            ));
        }
    }
    let b = images.len();
    let hm = images.iter().map(|i| i.height).max().unwrap_or(0);
    let wm = images.iter().map(|i| i.width).max().unwrap_or(0);
    let lut: &[f32; 256] = &NORMALIZED;
    let mut px = vec![0f32; b * 3 * hm * wm];
    let mut mask = vec![0i32; b * hm * wm];
    for (n, im) in images.iter().enumerate() {
        for c in 0..3 {
            for y in 0..im.height {
                let src = &im.data[(c * im.height + y) * im.width..][..im.width];
                let dst = ((n * 3 + c) * hm + y) * wm;
                for (o, &v) in px[dst..dst + im.width].iter_mut().zip(src) {
                    *o = lut[v as usize];
                }
            }
        }
        for y in 0..im.height {
            let dst = (n * hm + y) * wm;
            mask[dst..dst + im.width].fill(1);
        }
    }
    Ok(ImageBatch {
        pixel_values: Tensor::from_f32(px, &[b, 3, hm, wm])?,
        pixel_mask: Tensor::from_i32(mask, &[b, hm, wm])?,
    })
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Keys cubic convolution with a = −0.5 (Pillow's `bicubic_filter`), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first source index, tap count and 22-bit fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`, whole-image box).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero; negatives are clamped to 0 right after either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let w = if x < xmax && ww != 0.0 {
                k[x] / ww
            } else if x < xmax {
                k[x]
            } else {
                0.0
            };
            let f = w * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, kk }
}

/// Pillow's `clip8`: drop the fraction bits and saturate to 0..=255.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's horizontal pass over RGB8 rows (`ImagingResampleHorizontal_8bpc`).
fn pass_horizontal(src: &[u8], w: usize, h: usize, out_w: usize) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let c = precompute_coeffs(w, out_w);
    let mut out = vec![0u8; h * out_w * 3];
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, &(xmin, xmax)) in c.bounds.iter().enumerate() {
            let k = &c.kk[xx * c.ksize..xx * c.ksize + xmax];
            let mut ss = [half; 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &row[(x + xmin) * 3..(x + xmin) * 3 + 3];
                for ch in 0..3 {
                    ss[ch] += p[ch] as i32 * kx;
                }
            }
            for ch in 0..3 {
                out[(y * out_w + xx) * 3 + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

/// Pillow's vertical pass over RGB8 columns (`ImagingResampleVertical_8bpc`).
fn pass_vertical(src: &[u8], w: usize, h: usize, out_h: usize) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let c = precompute_coeffs(h, out_h);
    let mut out = vec![0u8; out_h * w * 3];
    for (yy, &(ymin, ymax)) in c.bounds.iter().enumerate() {
        let k = &c.kk[yy * c.ksize..yy * c.ksize + ymax];
        for xx in 0..w * 3 {
            let mut ss = half;
            for (y, &ky) in k.iter().enumerate() {
                ss += src[(y + ymin) * w * 3 + xx] as i32 * ky;
            }
            out[yy * w * 3 + xx] = clip8(ss);
        }
    }
    out
}

/// Resizes an RGB8 image to `out_w × out_h` exactly as Pillow's
/// `Image.resize((out_w, out_h), Image.BICUBIC)` does (see the module doc).
///
/// Pass order follows Pillow ≥ 13 (python-pillow/Pillow#9549): the vertical pass runs first
/// when the height shrinks by more than twice as many pixels as the width; older Pillow always
/// runs the horizontal pass first. The order only changes rounding of the 8-bit intermediate
/// (±1 grey level on some pixels), e.g. for portrait photos squashed to a square.
pub fn resize_bicubic_pil(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (out_w as usize, out_h as usize);
    if out_w == 0 || out_h == 0 {
        return RgbImage::new(out_w as u32, out_h as u32);
    }
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    let vertical_first = dh > 0 && dh > 2 * dw;
    let mut cur: Vec<u8> = img.as_raw().clone();
    // Pillow skips a pass whose size does not change; so do we.
    if vertical_first {
        cur = pass_vertical(&cur, in_w, in_h, out_h);
        if out_w != in_w {
            cur = pass_horizontal(&cur, in_w, out_h, out_w);
        }
    } else {
        if out_w != in_w {
            cur = pass_horizontal(&cur, in_w, in_h, out_w);
        }
        if out_h != in_h {
            cur = pass_vertical(&cur, out_w, in_h, out_h);
        }
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, cur).expect("buffer sized for the image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vilt_sizes() {
        // (H, W) in, (H, W) out.
        assert_eq!(vilt_output_size(1080, 1920, 384, 32), (352, 608));
        assert_eq!(vilt_output_size(480, 640, 384, 32), (384, 512));
        assert_eq!(vilt_output_size(640, 480, 384, 32), (512, 384));
        assert_eq!(vilt_output_size(500, 500, 384, 32), (384, 384));
        // Never 640: the longest side is capped at 639 before flooring.
        assert_eq!(vilt_output_size(384, 1000, 384, 32), (224, 608));
    }

    #[test]
    fn constant_image_stays_constant_and_identity_is_exact() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 99]));
        let r = resize_bicubic_pil(&img, 64, 11);
        assert!(r.pixels().all(|p| p.0 == [200, 10, 99]));
        let noisy = RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 29 + y * 7) as u8, 3, 250]));
        assert_eq!(resize_bicubic_pil(&noisy, 9, 7), noisy);
    }

    #[test]
    fn normalisation_maps_0_and_255_to_minus1_and_1() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 255 }; 3]));
        let p = ImageProcessor::square(2).process(&img).unwrap();
        // CHW: channel 0 row 0 = [0, 255] → [-1, 1] (resized 2×1 → 2×2 keeps columns).
        assert_eq!(&p.data[0..2], &[0, 255]);
        assert_eq!(&p.normalized()[0..2], &[-1.0, 1.0]);
        assert_eq!(p.data.len(), 12);
    }

    /// The f32 values that pre-processing produced before images were kept as u8 (each pixel
    /// normalised as decoded, with transformers' two roundings written out again here): the
    /// u8 path must give them bit for bit.
    fn normalized_as_f32_path(v: u8) -> f32 {
        let rescaled = (f64::from(v) * (1.0 / 255.0)) as f32;
        (rescaled - 0.5f32) / 0.5f32
    }

    #[test]
    fn u8_images_collate_to_the_f32_path_values_bit_for_bit() {
        for v in 0..=255u8 {
            assert_eq!(
                normalized(v).to_bits(),
                normalized_as_f32_path(v).to_bits(),
                "value {v}"
            );
        }
        let img = RgbImage::from_fn(45, 31, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (x * y) as u8, (255 - x * 3) as u8])
        });
        let p = ImageProcessor::square(24).process(&img).unwrap();
        let small = ImageProcessor::square(16).process(&img).unwrap();
        let batch = collate_images(&[&p, &small]).unwrap();
        let got = batch.pixel_values.f32s().unwrap();
        // The f32 path: resize, then normalise every value, then pad with zeros.
        let resized = resize_bicubic_pil(&img, 24, 24);
        for (i, px) in resized.pixels().enumerate() {
            for c in 0..3 {
                let want = normalized_as_f32_path(px[c]);
                assert_eq!(
                    got[c * 576 + i].to_bits(),
                    want.to_bits(),
                    "pixel {i}, channel {c}"
                );
            }
        }
        let resized = resize_bicubic_pil(&img, 16, 16);
        for (i, px) in resized.pixels().enumerate() {
            let (y, x) = (i / 16, i % 16);
            for c in 0..3 {
                let want = normalized_as_f32_path(px[c]);
                let at = 3 * 576 + c * 576 + y * 24 + x;
                assert_eq!(
                    got[at].to_bits(),
                    want.to_bits(),
                    "small: pixel {i}, channel {c}"
                );
            }
        }
        // Padding stays 0.0 (not a normalised value).
        assert_eq!(got[3 * 576 + 16], 0.0);
        assert!(ImageProcessor::square(8)
            .missing()
            .normalized()
            .iter()
            .all(|&x| x == 1.0));
    }
}
