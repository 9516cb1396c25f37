//! Resizing of the position tables, on host data, exactly as PyTorch's `F.interpolate` does it
//! for f32 (same index arithmetic in f32, same weights), so the forward matches HF and MAP/RebQ.
//!
//! Tables are row-major `[rows, dim]`: one row per position, `dim` features each.

use crate::error::{Error, Result};

/// One output position's two source rows and weights, as PyTorch's
/// `compute_source_index_and_lambda` (f32 arithmetic).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

fn taps(in_size: usize, out_size: usize, align_corners: bool) -> Vec<Tap> {
    if in_size == out_size {
        // PyTorch copies when the size is unchanged, whatever align_corners says.
        return (0..out_size)
            .map(|i| Tap {
                i0: i,
                i1: i,
                w0: 1.0,
                w1: 0.0,
            })
            .collect();
    }
    let scale: f32 = if align_corners {
        if out_size > 1 {
            (in_size - 1) as f32 / (out_size - 1) as f32
        } else {
            0.0
        }
    } else {
        in_size as f32 / out_size as f32
    };
    (0..out_size)
        .map(|o| {
            let src = if align_corners {
                scale * o as f32
            } else {
                (scale * (o as f32 + 0.5) - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(in_size - 1);
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

fn check_table(op: &'static str, len: usize, rows: usize, dim: usize) -> Result<()> {
    if rows == 0 || dim == 0 || len != rows * dim {
        return Err(Error::shape(
            op,
            format!("table of {len} values is not [{rows}, {dim}] (both must be positive)"),
        ));
    }
    Ok(())
}

/// Stretches the text position table `[rows, dim]` to `[out_rows, dim]` by 1-D linear
/// interpolation with `align_corners = false`, as MAP/RebQ do for `max_text_len` ≠ 40
/// (`F.interpolate(table.view(1, 1, rows, dim), size=(out_rows, dim), mode="bilinear")`):
/// src = max((i + 0.5)·rows/out_rows − 0.5, 0), i0 = ⌊src⌋, i1 = min(i0 + 1, rows − 1).
pub fn stretch_text_positions(
    table: &[f32],
    rows: usize,
    dim: usize,
    out_rows: usize,
) -> Result<Vec<f32>> {
    check_table("stretch_text_positions", table.len(), rows, dim)?;
    if out_rows == 0 {
        return Err(Error::shape(
            "stretch_text_positions",
            "target length must be positive",
        ));
    }
    let mut out = vec![0f32; out_rows * dim];
    for (o, t) in taps(rows, out_rows, false).into_iter().enumerate() {
        let r0 = &table[t.i0 * dim..(t.i0 + 1) * dim];
        let r1 = &table[t.i1 * dim..(t.i1 + 1) * dim];
        for ((y, &a), &b) in out[o * dim..(o + 1) * dim].iter_mut().zip(r0).zip(r1) {
            *y = a * t.w0 + b * t.w1;
        }
    }
    Ok(out)
}

/// Resizes the image position grid `[grid_h·grid_w, dim]` (row-major cells, i.e. rows 1.. of
/// `embeddings.position_embeddings`) to `[out_h·out_w, dim]` bilinearly with
/// `align_corners = true`, as HF's `ViltEmbeddings.visual_embed` does per image.
pub fn resize_image_positions(
    grid: &[f32],
    grid_h: usize,
    grid_w: usize,
    dim: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<f32>> {
    check_table("resize_image_positions", grid.len(), grid_h * grid_w, dim)?;
    if out_h == 0 || out_w == 0 {
        return Err(Error::shape(
            "resize_image_positions",
            format!("target grid {out_h}×{out_w} must be non-empty (an image with no valid patch)"),
        ));
    }
    let th = taps(grid_h, out_h, true);
    let tw = taps(grid_w, out_w, true);
    let mut out = vec![0f32; out_h * out_w * dim];
    let cell = |r: usize, c: usize| &grid[(r * grid_w + c) * dim..(r * grid_w + c + 1) * dim];
    for (oh, h) in th.iter().enumerate() {
        for (ow, w) in tw.iter().enumerate() {
            let (x00, x01) = (cell(h.i0, w.i0), cell(h.i0, w.i1));
            let (x10, x11) = (cell(h.i1, w.i0), cell(h.i1, w.i1));
            let y = &mut out[(oh * out_w + ow) * dim..(oh * out_w + ow + 1) * dim];
            for k in 0..dim {
                // PyTorch's order: interpolate along W within each source row, then along H.
                let top = x00[k] * w.w0 + x01[k] * w.w1;
                let bottom = x10[k] * w.w0 + x11[k] * w.w1;
                y[k] = top * h.w0 + bottom * h.w1;
            }
        }
    }
    Ok(out)
}

/// [`resize_image_positions`] to the valid region `h_b × w_b`, zero-padded bottom/right to the
/// batch's patch grid `gh × gw`: docs/vilt.md#image-position-embeddings for one image,
/// `[gh·gw, dim]` row-major.
#[allow(clippy::too_many_arguments)]
pub fn image_positions_padded(
    grid: &[f32],
    grid_h: usize,
    grid_w: usize,
    dim: usize,
    h_b: usize,
    w_b: usize,
    gh: usize,
    gw: usize,
) -> Result<Vec<f32>> {
    if h_b > gh || w_b > gw {
        return Err(Error::shape(
            "image_positions_padded",
            format!("valid region {h_b}×{w_b} exceeds the patch grid {gh}×{gw}"),
        ));
    }
    let r = resize_image_positions(grid, grid_h, grid_w, dim, h_b, w_b)?;
    let mut out = vec![0f32; gh * gw * dim];
    for i in 0..h_b {
        out[i * gw * dim..(i * gw + w_b) * dim]
            .copy_from_slice(&r[i * w_b * dim..(i + 1) * w_b * dim]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stretch_formula() {
        // rows 3, one feature: values 0, 10, 20 stretched to 6 rows.
        // scale 0.5: src = max(0.5(i+0.5) - 0.5, 0) = 0, 0.25, 0.75, 1.25, 1.75, 2.25.
        let out = stretch_text_positions(&[0.0, 10.0, 20.0], 3, 1, 6).unwrap();
        let want = [0.0, 2.5, 7.5, 12.5, 17.5, 20.0];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
        // Same length is the identity; features are interpolated independently.
        let t = [1.0, -1.0, 2.0, -2.0];
        assert_eq!(stretch_text_positions(&t, 2, 2, 2).unwrap(), t);
        let out = stretch_text_positions(&t, 2, 2, 4).unwrap();
        assert_eq!(&out[..2], &[1.0, -1.0]);
        assert!(
            (out[2] - 1.25).abs() < 1e-6 && (out[3] + 1.25).abs() < 1e-6,
            "{out:?}"
        );
        assert!(stretch_text_positions(&t, 3, 2, 4).is_err());
    }

    #[test]
    fn image_resize_align_corners() {
        // 2×2 grid, 1 feature, to 3×3: corners kept, centre is the mean.
        let g = [0.0, 1.0, 2.0, 3.0];
        let out = resize_image_positions(&g, 2, 2, 1, 3, 3).unwrap();
        let want = [0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
        // To 1×1: align_corners picks cell (0, 0).
        assert_eq!(
            resize_image_positions(&g, 2, 2, 1, 1, 1).unwrap(),
            vec![0.0]
        );
        assert!(resize_image_positions(&g, 2, 2, 1, 0, 3).is_err());
    }

    #[test]
    fn padded_grid_places_valid_region_top_left() {
        let g: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 2×2 grid, dim 2
        let out = image_positions_padded(&g, 2, 2, 2, 2, 2, 3, 4).unwrap();
        assert_eq!(out.len(), 3 * 4 * 2);
        assert_eq!(&out[0..4], &g[0..4]);
        assert_eq!(&out[4..8], &[0.0; 4]);
        assert_eq!(&out[8..12], &g[4..8]);
        assert!(out[16..].iter().all(|&x| x == 0.0));
    }
}
