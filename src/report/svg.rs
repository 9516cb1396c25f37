//! Hand-written SVG plots of a run (no plotting crate): the accuracy matrices as heatmaps,
//! the factor selection frequency of every pool (paper Fig. 5), the histogram of
//! cos(q_v, q_t) over complete samples (paper Fig. 4b) and each task's training loss curves.
//!
//! Every plot is a standalone, well-formed SVG document with a title, axis labels and, for
//! heatmaps, a colour scale legend. Colours follow viridis (perceptually uniform, readable in
//! grey-scale and by colour-blind readers).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::data::Split;
use crate::error::{Error, Result};
use crate::report::results::{FactorSide, LossCurve, LossPoint, Results, SelectionFrequency};

/// Bins of the cos(q_v, q_t) histogram written by [`write_plots`].
pub const COS_BINS: usize = 30;

/// One plot [`write_plots`] writes for these results: its file name (relative to the run
/// directory) and a caption. The report links exactly these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlotFile {
    pub file: String,
    pub caption: String,
    kind: PlotKind,
}

/// What a [`PlotFile`] draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlotKind {
    Accuracy(Split),
    Selection,
    Cosine,
    /// The loss curve at this index of [`Results::loss_curves`].
    Loss(usize),
}

impl PlotFile {
    fn new(file: String, caption: String, kind: PlotKind) -> PlotFile {
        PlotFile {
            file,
            caption,
            kind,
        }
    }
}

/// The plots [`write_plots`] writes for `results`, in order: both accuracy heatmaps always,
/// the selection frequency and the cosine histogram only when they have data, then one loss
/// curve per task with recorded steps (`loss_task{t}.svg`, tasks 1-based).
pub fn plot_files(results: &Results) -> Vec<PlotFile> {
    let mut v = vec![
        PlotFile::new(
            "accuracy_test.svg".into(),
            "Metric matrix, test split".into(),
            PlotKind::Accuracy(Split::Test),
        ),
        PlotFile::new(
            "accuracy_val.svg".into(),
            "Metric matrix, validation split".into(),
            PlotKind::Accuracy(Split::Val),
        ),
    ];
    if !results.selection_frequency.is_empty() {
        v.push(PlotFile::new(
            "selection_frequency.svg".into(),
            "Factor selection frequency per pool (Fig. 5)".into(),
            PlotKind::Selection,
        ));
    }
    if !results.cos_qv_qt.is_empty() {
        v.push(PlotFile::new(
            "cos_qv_qt.svg".into(),
            "cos(q_v, q_t) over complete samples (Fig. 4b)".into(),
            PlotKind::Cosine,
        ));
    }
    for (i, c) in results.loss_curves.iter().enumerate() {
        if !c.points.is_empty() {
            v.push(PlotFile::new(
                format!("loss_task{}.svg", c.task + 1),
                format!("Training loss per step, task {}", c.task + 1),
                PlotKind::Loss(i),
            ));
        }
    }
    v
}

/// Writes the plots of [`plot_files`] into `dir` (created if needed), each atomically, and
/// returns their paths.
pub fn write_plots(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    for p in plot_files(results) {
        let svg = match p.kind {
            PlotKind::Accuracy(split) => accuracy_heatmap_svg(results, split)?,
            PlotKind::Selection => selection_frequency_svg(&results.selection_frequency)
                .ok_or_else(|| Error::Msg("selection frequency vanished".into()))?,
            PlotKind::Cosine => cos_histogram_svg(&results.cos_qv_qt, COS_BINS)
                .ok_or_else(|| Error::Msg("cos(q_v, q_t) samples vanished".into()))?,
            PlotKind::Loss(i) => loss_curve_svg(&results.loss_curves[i])
                .ok_or_else(|| Error::Msg("a loss curve vanished".into()))?,
        };
        let path = dir.join(&p.file);
        crate::st::write_atomic(&path, svg.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

// ---------------------------------------------------------------------------------------
// Building blocks

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Viridis anchor colours at 0, 1/9, …, 1 (matplotlib's table, subsampled).
const VIRIDIS: [(u8, u8, u8); 10] = [
    (0x44, 0x01, 0x54),
    (0x48, 0x28, 0x78),
    (0x3e, 0x49, 0x89),
    (0x31, 0x68, 0x8e),
    (0x26, 0x82, 0x8e),
    (0x1f, 0x9e, 0x89),
    (0x35, 0xb7, 0x79),
    (0x6e, 0xce, 0x58),
    (0xb5, 0xde, 0x2b),
    (0xfd, 0xe7, 0x25),
];

/// Viridis at `x ∈ [0, 1]` (clamped), linearly interpolated between anchors.
fn viridis(x: f64) -> (u8, u8, u8) {
    let x = if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = x * (VIRIDIS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(VIRIDIS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Black text on light cells, white on dark ones, so printed values stay legible.
fn text_colour((r, g, b): (u8, u8, u8)) -> &'static str {
    if 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64 > 140.0 {
        "#000"
    } else {
        "#fff"
    }
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `target` intervals over `range`.
fn nice_step(range: f64, target: usize) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Decimals needed to print multiples of a 1/2/5 × 10^k step exactly.
fn step_decimals(step: f64) -> usize {
    (-step.log10().floor()).max(0.0) as usize
}

/// An SVG document under construction.
struct Svg {
    body: String,
    width: f64,
    height: f64,
}

impl Svg {
    fn new(width: f64, height: f64) -> Svg {
        Svg {
            body: String::new(),
            width,
            height,
        }
    }

    fn raw(&mut self, s: &str) {
        self.body.push_str(s);
        self.body.push('\n');
    }

    /// Text at (x, y); `anchor` is start | middle | end; `extra` adds attributes.
    fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, extra: &str, s: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size:.1}" text-anchor="{anchor}"{extra}>{}</text>"#,
            esc(s)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="1"/>"#
        );
    }

    /// A vertical label rotated by −90° around its anchor point.
    fn vtext(&mut self, x: f64, y: f64, size: f64, s: &str) {
        let extra = format!(r#" transform="rotate(-90 {x:.1} {y:.1})""#);
        self.text(x, y, size, "middle", &extra, s);
    }

    fn finish(self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" \
             viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"DejaVu Sans, Helvetica, Arial, \
             sans-serif\">\n<rect x=\"0\" y=\"0\" width=\"{w:.0}\" height=\"{h:.0}\" \
             fill=\"#fff\"/>\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// A vertical viridis colour bar at (x, y) of height `h` for values `lo..hi`, with a tick every
/// `step` and a caption above; `id` names its gradient.
#[allow(clippy::too_many_arguments)]
fn colour_legend(
    svg: &mut Svg,
    id: &str,
    x: f64,
    y: f64,
    h: f64,
    lo: f64,
    hi: f64,
    step: f64,
    caption: &str,
) {
    let w = 14.0;
    let mut grad = format!(r#"<defs><linearGradient id="{id}" x1="0" y1="1" x2="0" y2="0">"#);
    for (k, &c) in VIRIDIS.iter().enumerate() {
        let off = k as f64 / (VIRIDIS.len() - 1) as f64;
        let _ = write!(grad, r#"<stop offset="{off:.3}" stop-color="{}"/>"#, hex(c));
    }
    grad.push_str("</linearGradient></defs>");
    svg.raw(&grad);
    svg.raw(&format!(
        r##"<rect class="legend" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="url(#{id})" stroke="#444" stroke-width="0.5"/>"##
    ));
    svg.text(x + w / 2.0, y - 8.0, 10.0, "middle", "", caption);
    let decimals = step_decimals(step);
    let n = ((hi - lo) / step).round() as usize;
    for k in 0..=n {
        let v = lo + k as f64 * step;
        let ty = y + h - (v - lo) / (hi - lo) * h;
        svg.line(x + w, ty, x + w + 4.0, ty, "#444");
        svg.text(
            x + w + 6.0,
            ty + 3.5,
            9.0,
            "start",
            "",
            &format!("{v:.decimals$}"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// (a) Metric matrix heatmap

/// The metric matrix of `split` as a heatmap: one coloured cell per entry on and below the
/// diagonal with its value printed (grey "n/a" when not evaluated yet), blank above it; rows
/// "trained up to task", columns "evaluated task", tasks 1-based; colour scale 0–100 %.
pub fn accuracy_heatmap_svg(results: &Results, split: Split) -> Result<String> {
    let s = results.split(split)?;
    let title = format!(
        "{} — {} split{}",
        results.metric.display_name(),
        split.as_str(),
        match (s.ap, s.fg) {
            (Some(ap), Some(fg)) if s.tasks_evaluated < results.num_tasks => format!(
                " (AP {ap:.2}, FG {fg:.2} after task {} of {})",
                s.tasks_evaluated, results.num_tasks
            ),
            (Some(ap), Some(fg)) => format!(" (AP {ap:.2}, FG {fg:.2})"),
            _ => String::new(),
        }
    );
    Ok(matrix_heatmap_svg(&title, &s.matrix))
}

/// Heatmap of a lower-triangular percentage matrix (`matrix[t][j]`, row = after task t).
pub fn matrix_heatmap_svg(title: &str, matrix: &[Vec<Option<f64>>]) -> String {
    let t = matrix.len().max(1);
    // Large enough to print "100.0" inside a cell for the usual 5–10 tasks, shrinking for more.
    let cell = (560.0 / t as f64).clamp(16.0, 56.0);
    let font = (cell * 0.26).clamp(5.0, 13.0);
    let (left, top) = (78.0, 48.0);
    let grid = cell * matrix.len() as f64;
    let legend_x = left + grid + 24.0;
    // Wide enough for the title too (≈ 0.55 em per character at 14 px), which matters for one
    // or two tasks.
    let width = (legend_x + 60.0).max(title.chars().count() as f64 * 7.7 + 40.0);
    // The legend keeps a readable minimum height even for one or two tasks.
    let legend_h = grid.max(100.0);
    let height = top + legend_h + 56.0;
    let mut svg = Svg::new(width, height);
    svg.text(width / 2.0, 24.0, 14.0, "middle", "", title);
    let tick_font = font.clamp(8.0, 11.0);
    for (i, row) in matrix.iter().enumerate() {
        let y = top + i as f64 * cell;
        svg.text(
            left - 6.0,
            y + cell / 2.0 + tick_font / 3.0,
            tick_font,
            "end",
            "",
            &(i + 1).to_string(),
        );
        for (j, v) in row.iter().enumerate().take(i + 1) {
            let x = left + j as f64 * cell;
            let (fill, label, fg, class) = match *v {
                Some(v) => {
                    let c = viridis(v / 100.0);
                    (hex(c), format!("{v:.1}"), text_colour(c), "cell")
                }
                None => (
                    "#e6e6e6".to_string(),
                    "n/a".to_string(),
                    "#666",
                    "cell missing",
                ),
            };
            svg.raw(&format!(
                r##"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="{fill}" stroke="#fff" stroke-width="1"/>"##
            ));
            svg.text(
                x + cell / 2.0,
                y + cell / 2.0 + font / 3.0,
                font,
                "middle",
                &format!(r#" fill="{fg}""#),
                &label,
            );
        }
    }
    for j in 0..matrix.len() {
        svg.text(
            left + (j as f64 + 0.5) * cell,
            top + grid + 14.0,
            tick_font,
            "middle",
            "",
            &(j + 1).to_string(),
        );
    }
    svg.text(
        left + grid / 2.0,
        top + grid + 38.0,
        12.0,
        "middle",
        "",
        "evaluated task",
    );
    svg.vtext(24.0, top + grid / 2.0, 12.0, "trained up to task");
    colour_legend(
        &mut svg,
        "scale-metric",
        legend_x,
        top,
        legend_h,
        0.0,
        100.0,
        20.0,
        "%",
    );
    svg.finish()
}

// ---------------------------------------------------------------------------------------
// (b) Factor selection frequency

/// Sort key that orders `layer2.q.v` before `layer10.q.v` (numbers compared as numbers).
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        let mut chunk = String::new();
        let digits = c.is_ascii_digit();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() != digits {
                break;
            }
            chunk.push(d);
            chars.next();
        }
        if digits {
            key.push((chunk.parse().unwrap_or(u64::MAX), String::new()));
        } else {
            key.push((0, chunk));
        }
    }
    key
}

/// Factor selection frequency (paper Fig. 5) as two heatmaps side by side, A pools and B
/// pools, one row per pool (`layer{l}.{target}.{modality}`, in natural order, a thin rule
/// between layers), one column per factor. A cell is the factor's share of its pool's
/// selections, in percent (uniform top-r routing over E factors gives 100/E %); 72 pools × 16
/// factors stay readable at 10 px rows. `None` when nothing was recorded.
pub fn selection_frequency_svg(sel: &SelectionFrequency) -> Option<String> {
    if sel.is_empty() {
        return None;
    }
    let mut pools: Vec<&String> = sel.a.keys().chain(sel.b.keys()).collect();
    pools.sort_by_key(|p| natural_key(p));
    pools.dedup();
    let e = sel
        .a
        .values()
        .chain(sel.b.values())
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(1);
    let share = |counts: &[u64]| -> Vec<f64> {
        let total: u64 = counts.iter().sum();
        counts
            .iter()
            .map(|&c| {
                if total == 0 {
                    0.0
                } else {
                    100.0 * c as f64 / total as f64
                }
            })
            .collect()
    };
    let max_share = sel
        .a
        .values()
        .chain(sel.b.values())
        .flat_map(|c| share(c))
        .fold(0.0f64, f64::max);
    let step = nice_step(max_share.max(1.0), 4);
    let hi = (max_share / step).ceil().max(1.0) * step;

    let (cw, ch) = (12.0, 10.0);
    let label_w = 12.0 + 5.6 * pools.iter().map(|p| p.chars().count()).max().unwrap_or(4) as f64;
    let (top, panel_gap) = (64.0, 28.0);
    let panel_w = cw * e as f64;
    let grid_h = ch * pools.len() as f64;
    let left = label_w + 28.0;
    let legend_x = left + 2.0 * panel_w + panel_gap + 22.0;
    let mut svg = Svg::new(legend_x + 60.0, top + grid_h + 52.0);
    svg.text(
        left + panel_w + panel_gap / 2.0,
        22.0,
        14.0,
        "middle",
        "",
        "Factor selection frequency (share of each pool's selections)",
    );
    svg.vtext(
        14.0,
        top + grid_h / 2.0,
        12.0,
        "pool (layer.target.modality)",
    );
    for (r, pool) in pools.iter().enumerate() {
        let y = top + r as f64 * ch;
        svg.text(left - 4.0, y + ch - 2.0, 8.5, "end", "", pool);
        // A rule where the layer (text before the first '.') changes groups the 6 pools of
        // one layer visually.
        if r > 0 {
            let layer = |p: &str| p.split('.').next().unwrap_or("").to_string();
            if layer(pool) != layer(pools[r - 1]) {
                svg.line(
                    left - label_w,
                    y,
                    left + 2.0 * panel_w + panel_gap,
                    y,
                    "#999",
                );
            }
        }
    }
    for (k, (side, name)) in [(FactorSide::A, "A pools"), (FactorSide::B, "B pools")]
        .into_iter()
        .enumerate()
    {
        let x0 = left + k as f64 * (panel_w + panel_gap);
        svg.text(x0 + panel_w / 2.0, top - 10.0, 12.0, "middle", "", name);
        let map = sel.side(side);
        // 2 × 72 × 16 cells: the shared stroke sits on one group and tooltips stay short
        // (the pool is the row label, the factor the column) to keep the file small.
        svg.raw(r##"<g stroke="#fff" stroke-width="0.5">"##);
        for (r, pool) in pools.iter().enumerate() {
            let y = top + r as f64 * ch;
            let Some(counts) = map.get(*pool) else {
                continue;
            };
            for (f, s) in share(counts).into_iter().enumerate() {
                let x = x0 + f as f64 * cw;
                let fill = hex(viridis(s / hi));
                svg.raw(&format!(
                    r#"<rect class="cell" x="{x:.1}" y="{y:.1}" width="{cw}" height="{ch}" fill="{fill}"><title>{s:.1}% ({})</title></rect>"#,
                    counts[f]
                ));
            }
        }
        svg.raw("</g>");
        // Factor indices below the panel; every 4th when pools are large.
        let every = if e > 32 { 4 } else { 1 };
        for f in (0..e).step_by(every) {
            svg.text(
                x0 + (f as f64 + 0.5) * cw,
                top + grid_h + 11.0,
                7.5,
                "middle",
                "",
                &f.to_string(),
            );
        }
        svg.text(
            x0 + panel_w / 2.0,
            top + grid_h + 30.0,
            11.0,
            "middle",
            "",
            "factor index",
        );
    }
    colour_legend(
        &mut svg,
        "scale-selection",
        legend_x,
        top,
        grid_h.clamp(80.0, 300.0),
        0.0,
        hi,
        step,
        "%",
    );
    Some(svg.finish())
}

// ---------------------------------------------------------------------------------------
// (c) cos(q_v, q_t) histogram

/// Histogram of cos(q_v, q_t) over complete samples (paper Fig. 4b) with `bins` equal bins
/// over a nicely rounded data range inside [−1, 1], x and y ticks, and the mean as a dashed
/// line. `None` when there are no samples.
pub fn cos_histogram_svg(samples: &[f32], bins: usize) -> Option<String> {
    if samples.is_empty() {
        return None;
    }
    let bins = bins.max(1);
    let (min, max) = samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v as f64), b.max(v as f64))
        });
    let mean = samples.iter().map(|&v| v as f64).sum::<f64>() / samples.len() as f64;
    // Range: the data rounded out to tick steps, so bars fill the plot instead of crowding one
    // end of [−1, 1]; padded when every sample is equal.
    let step = nice_step((max - min).max(0.02), 5);
    let mut lo = ((min / step).floor() * step).max(-1.0);
    let mut hi = ((max / step).ceil() * step).min(1.0);
    if hi - lo < step {
        lo = (lo - step).max(-1.0);
        hi = (hi + step).min(1.0);
    }
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for &v in samples {
        let i = (((v as f64 - lo) / w).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let cmax = counts.iter().copied().max().unwrap_or(1).max(1);
    let ystep = nice_step(cmax as f64, 5).max(1.0).round();
    let ymax = (cmax as f64 / ystep).ceil() * ystep;

    let (left, top, pw, ph) = (64.0, 44.0, 520.0, 260.0);
    let mut svg = Svg::new(left + pw + 24.0, top + ph + 56.0);
    svg.text(
        left + pw / 2.0,
        24.0,
        14.0,
        "middle",
        "",
        &format!(
            "cos(q_v, q_t) on complete samples (n = {}, mean = {mean:.3})",
            samples.len()
        ),
    );
    let sx = |v: f64| left + (v - lo) / (hi - lo) * pw;
    let sy = |c: f64| top + ph - c / ymax * ph;
    // Y grid and ticks.
    let n_y = (ymax / ystep).round() as usize;
    for k in 0..=n_y {
        let c = k as f64 * ystep;
        let y = sy(c);
        svg.line(left, y, left + pw, y, "#e3e3e3");
        svg.line(left - 4.0, y, left, y, "#333");
        svg.text(left - 7.0, y + 3.5, 10.0, "end", "", &format!("{c:.0}"));
    }
    let bar_fill = hex(viridis(0.35));
    for (i, &c) in counts.iter().enumerate() {
        let x = sx(lo + i as f64 * w);
        let y = sy(c as f64);
        let bw = (pw / bins as f64 - 1.0).max(0.5);
        svg.raw(&format!(
            r##"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{:.1}" fill="{bar_fill}"><title>[{:.3}, {:.3}): {c}</title></rect>"##,
            top + ph - y,
            lo + i as f64 * w,
            lo + (i + 1) as f64 * w
        ));
    }
    // Axes.
    svg.line(left, top + ph, left + pw, top + ph, "#333");
    svg.line(left, top, left, top + ph, "#333");
    let decimals = step_decimals(step);
    let n_x = ((hi - lo) / step).round() as usize;
    for k in 0..=n_x {
        let v = lo + k as f64 * step;
        let x = sx(v);
        svg.line(x, top + ph, x, top + ph + 4.0, "#333");
        svg.text(
            x,
            top + ph + 16.0,
            10.0,
            "middle",
            "",
            &format!("{v:.decimals$}"),
        );
    }
    let mx = sx(mean);
    svg.raw(&format!(
        r##"<line class="mean" x1="{mx:.1}" y1="{top:.1}" x2="{mx:.1}" y2="{:.1}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="5,3"/>"##,
        top + ph
    ));
    // The label sits on the side of the line with room for it.
    let (lx, anchor) = if mx > left + pw - 40.0 {
        (mx - 4.0, "end")
    } else {
        (mx + 4.0, "start")
    };
    svg.text(lx, top + 10.0, 10.0, anchor, r##" fill="#c0392b""##, "mean");
    svg.text(
        left + pw / 2.0,
        top + ph + 40.0,
        12.0,
        "middle",
        "",
        "cos(q_v, q_t)",
    );
    svg.vtext(18.0, top + ph / 2.0, 12.0, "samples");
    Some(svg.finish())
}

// ---------------------------------------------------------------------------------------
// (d) Training loss curves

/// One line of a loss plot: its legend, its value at a point and its viridis position.
type Series = (&'static str, fn(&LossPoint) -> f64, f64);

/// Points drawn per series at most: longer curves are averaged over runs of equal steps.
pub const LOSS_CURVE_POINTS: usize = 500;

/// The loss terms of one task against the step (eq. 9–10): L, L_c, L_align and L_con as four
/// lines with a legend, x = step (1-based), y from 0. Curves longer than
/// [`LOSS_CURVE_POINTS`] steps are drawn as means over runs of consecutive steps (the title
/// says how many). `None` when the curve has no point.
pub fn loss_curve_svg(curve: &LossCurve) -> Option<String> {
    let pts = &curve.points;
    if pts.is_empty() {
        return None;
    }
    let per = pts.len().div_ceil(LOSS_CURVE_POINTS);
    // Means over runs of `per` steps, at their mean step.
    let drawn: Vec<LossPoint> = pts
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            let mean = |f: fn(&LossPoint) -> f64| c.iter().map(f).sum::<f64>() / n;
            LossPoint {
                step: (c.iter().map(|p| p.step as f64).sum::<f64>() / n).round() as u64,
                loss: mean(|p| p.loss),
                l_c: mean(|p| p.l_c),
                l_align: mean(|p| p.l_align),
                l_con: mean(|p| p.l_con),
            }
        })
        .collect();
    let series: [Series; 4] = [
        ("L (total)", |p| p.loss, 0.0),
        ("L_c", |p| p.l_c, 0.35),
        ("L_align", |p| p.l_align, 0.62),
        ("L_con", |p| p.l_con, 0.85),
    ];
    let ymax_data = drawn
        .iter()
        .flat_map(|p| series.iter().map(move |s| (s.1)(p)))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let ystep = nice_step(ymax_data.max(1e-6), 5);
    let ymax = ((ymax_data / ystep).ceil() * ystep).max(ystep);
    let (x_lo, x_hi) = (
        pts.first().map_or(1, |p| p.step) as f64,
        pts.last().map_or(1, |p| p.step) as f64,
    );
    let x_hi = if x_hi > x_lo { x_hi } else { x_lo + 1.0 };

    let (left, top, pw, ph) = (64.0, 44.0, 520.0, 260.0);
    let mut svg = Svg::new(left + pw + 130.0, top + ph + 56.0);
    let mut title = format!(
        "Training loss, task {} ({} steps",
        curve.task + 1,
        pts.len()
    );
    if per > 1 {
        let _ = write!(title, ", mean of every {per}");
    }
    title.push(')');
    svg.text(left + pw / 2.0, 24.0, 14.0, "middle", "", &title);
    let sx = |v: f64| left + (v - x_lo) / (x_hi - x_lo) * pw;
    let sy = |v: f64| top + ph - v / ymax * ph;
    let n_y = (ymax / ystep).round() as usize;
    let y_dec = step_decimals(ystep);
    for k in 0..=n_y {
        let v = k as f64 * ystep;
        let y = sy(v);
        svg.line(left, y, left + pw, y, "#e3e3e3");
        svg.line(left - 4.0, y, left, y, "#333");
        svg.text(
            left - 7.0,
            y + 3.5,
            10.0,
            "end",
            "",
            &format!("{v:.y_dec$}"),
        );
    }
    let xstep = nice_step(x_hi - x_lo, 6).max(1.0);
    let mut x = (x_lo / xstep).ceil() * xstep;
    while x <= x_hi + 1e-9 {
        let px = sx(x);
        svg.line(px, top + ph, px, top + ph + 4.0, "#333");
        svg.text(px, top + ph + 16.0, 10.0, "middle", "", &format!("{x:.0}"));
        x += xstep;
    }
    svg.line(left, top + ph, left + pw, top + ph, "#333");
    svg.line(left, top, left, top + ph, "#333");
    for (k, (name, value, colour)) in series.iter().enumerate() {
        let colour = hex(viridis(*colour));
        let mut points = String::new();
        for p in &drawn {
            let v = value(p);
            if v.is_finite() {
                let _ = write!(points, "{:.1},{:.1} ", sx(p.step as f64), sy(v));
            }
        }
        svg.raw(&format!(
            r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            points.trim_end(),
            esc(name)
        ));
        let ly = top + 10.0 + 18.0 * k as f64;
        svg.line(left + pw + 14.0, ly, left + pw + 34.0, ly, &colour);
        svg.text(left + pw + 40.0, ly + 3.5, 11.0, "start", "", name);
    }
    svg.text(left + pw / 2.0, top + ph + 40.0, 12.0, "middle", "", "step");
    svg.vtext(18.0, top + ph / 2.0, 12.0, "loss");
    Some(svg.finish())
}
