//! Hand-written SVG plots of a run (no plotting crate): the accuracy matrices as heatmaps,
//! the factor selection frequency of every pool (paper Fig. 5), the histogram of
//! cos(q_v, q_t) over complete samples (paper Fig. 4b) and each task's training loss curves.
//!
//! Every plot is a standalone, well-formed SVG document with a title, axis labels and, for
//! heatmaps, a colour scale legend. Colours follow viridis (perceptually uniform, readable in
//! grey-scale and by colour-blind readers).

use std::collections::BTreeMap;
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
            heatmap_cell(&mut svg, left + j as f64 * cell, y, cell, font, *v);
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

/// One square heatmap cell of side `size` at (x, y): coloured by the percentage `v` on the
/// 0–100 % scale with the value printed in a legible colour, or grey "n/a" when `v` is absent.
fn heatmap_cell(svg: &mut Svg, x: f64, y: f64, size: f64, font: f64, v: Option<f64>) {
    let (fill, label, fg, class) = match v {
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
        r##"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="{size:.1}" height="{size:.1}" fill="{fill}" stroke="#fff" stroke-width="1"/>"##
    ));
    svg.text(
        x + size / 2.0,
        y + size / 2.0 + font / 3.0,
        font,
        "middle",
        &format!(r#" fill="{fg}""#),
        &label,
    );
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
    let g = SelectionGrid::new(sel);
    let mut svg = Svg::new(g.legend_x + 60.0, g.top + g.grid_h + 52.0);
    svg.text(
        g.left + g.panel_w + g.panel_gap / 2.0,
        22.0,
        14.0,
        "middle",
        "",
        "Factor selection frequency (share of each pool's selections)",
    );
    svg.vtext(
        14.0,
        g.top + g.grid_h / 2.0,
        12.0,
        "pool (layer.target.modality)",
    );
    g.pool_labels(&mut svg);
    for (k, (side, name)) in [(FactorSide::A, "A pools"), (FactorSide::B, "B pools")]
        .into_iter()
        .enumerate()
    {
        g.panel(&mut svg, k, name, sel.side(side));
    }
    colour_legend(
        &mut svg,
        "scale-selection",
        g.legend_x,
        g.top,
        g.grid_h.clamp(80.0, 300.0),
        0.0,
        g.hi,
        g.step,
        "%",
    );
    Some(svg.finish())
}

/// Each factor's share of its pool's selections, in percent (all 0 when nothing was selected).
fn shares(counts: &[u64]) -> Vec<f64> {
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
}

/// The layout of [`selection_frequency_svg`]: the pools in row order, the factor count, the
/// colour scale and the positions (px) of the label column, the two panels and the legend.
struct SelectionGrid<'a> {
    pools: Vec<&'a String>,
    /// Factors per pool: the longest pool's.
    e: usize,
    /// The colour scale's top (a multiple of `step` at or above the largest share) and ticks.
    hi: f64,
    step: f64,
    /// Cell width and height.
    cw: f64,
    ch: f64,
    label_w: f64,
    left: f64,
    top: f64,
    panel_w: f64,
    panel_gap: f64,
    grid_h: f64,
    legend_x: f64,
}

impl<'a> SelectionGrid<'a> {
    fn new(sel: &'a SelectionFrequency) -> SelectionGrid<'a> {
        let mut pools: Vec<&String> = sel.a.keys().chain(sel.b.keys()).collect();
        pools.sort_by_key(|p| natural_key(p));
        pools.dedup();
        let counts = || sel.a.values().chain(sel.b.values());
        let e = counts().map(Vec::len).max().unwrap_or(0).max(1);
        let max_share = counts().flat_map(|c| shares(c)).fold(0.0f64, f64::max);
        let step = nice_step(max_share.max(1.0), 4);
        let hi = (max_share / step).ceil().max(1.0) * step;
        let (cw, ch) = (12.0, 10.0);
        let label_w =
            12.0 + 5.6 * pools.iter().map(|p| p.chars().count()).max().unwrap_or(4) as f64;
        let (top, panel_gap) = (64.0, 28.0);
        let panel_w = cw * e as f64;
        let grid_h = ch * pools.len() as f64;
        let left = label_w + 28.0;
        let legend_x = left + 2.0 * panel_w + panel_gap + 22.0;
        SelectionGrid {
            pools,
            e,
            hi,
            step,
            cw,
            ch,
            label_w,
            left,
            top,
            panel_w,
            panel_gap,
            grid_h,
            legend_x,
        }
    }

    /// The pool names down the left, with a rule across both panels where the layer changes.
    fn pool_labels(&self, svg: &mut Svg) {
        for (r, pool) in self.pools.iter().enumerate() {
            let y = self.top + r as f64 * self.ch;
            svg.text(self.left - 4.0, y + self.ch - 2.0, 8.5, "end", "", pool);
            // A rule where the layer (text before the first '.') changes groups the 6 pools
            // of one layer visually.
            if r > 0 {
                let layer = |p: &str| p.split('.').next().unwrap_or("").to_string();
                if layer(pool) != layer(self.pools[r - 1]) {
                    svg.line(
                        self.left - self.label_w,
                        y,
                        self.left + 2.0 * self.panel_w + self.panel_gap,
                        y,
                        "#999",
                    );
                }
            }
        }
    }

    /// Panel `k` (0 on the left) named `name`: one cell per pool of `map` and factor, with the
    /// factor indices below.
    fn panel(&self, svg: &mut Svg, k: usize, name: &str, map: &BTreeMap<String, Vec<u64>>) {
        let (cw, ch) = (self.cw, self.ch);
        let (top, grid_h) = (self.top, self.grid_h);
        let x0 = self.left + k as f64 * (self.panel_w + self.panel_gap);
        svg.text(
            x0 + self.panel_w / 2.0,
            top - 10.0,
            12.0,
            "middle",
            "",
            name,
        );
        // 2 × 72 × 16 cells: the shared stroke sits on one group and tooltips stay short
        // (the pool is the row label, the factor the column) to keep the file small.
        svg.raw(r##"<g stroke="#fff" stroke-width="0.5">"##);
        for (r, pool) in self.pools.iter().enumerate() {
            let y = top + r as f64 * ch;
            let Some(counts) = map.get(*pool) else {
                continue;
            };
            for (f, s) in shares(counts).into_iter().enumerate() {
                let x = x0 + f as f64 * cw;
                let fill = hex(viridis(s / self.hi));
                svg.raw(&format!(
                    r#"<rect class="cell" x="{x:.1}" y="{y:.1}" width="{cw}" height="{ch}" fill="{fill}"><title>{s:.1}% ({})</title></rect>"#,
                    counts[f]
                ));
            }
        }
        svg.raw("</g>");
        // Factor indices below the panel; every 4th when pools are large.
        let every = if self.e > 32 { 4 } else { 1 };
        for f in (0..self.e).step_by(every) {
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
            x0 + self.panel_w / 2.0,
            top + grid_h + 30.0,
            11.0,
            "middle",
            "",
            "factor index",
        );
    }
}

// ---------------------------------------------------------------------------------------
// Charts with axes

/// The plot area of the charts with axes (the cos(q_v, q_t) histogram, the loss curves), in
/// px: room on the left for the y ticks, above for the title, below for the x ticks and label.
struct Frame {
    left: f64,
    top: f64,
    w: f64,
    h: f64,
}

/// The one size both charts share.
const FRAME: Frame = Frame {
    left: 64.0,
    top: 44.0,
    w: 520.0,
    h: 260.0,
};

impl Frame {
    /// A document holding the frame and `right` px beside it (for a legend), with `title`
    /// centred above the plot area.
    fn svg(&self, right: f64, title: &str) -> Svg {
        let mut svg = Svg::new(self.left + self.w + right, self.top + self.h + 56.0);
        svg.text(self.left + self.w / 2.0, 24.0, 14.0, "middle", "", title);
        svg
    }

    /// The y position of `v` on a y axis from 0 to `max`.
    fn y(&self, v: f64, max: f64) -> f64 {
        self.top + self.h - v / max * self.h
    }

    /// Light horizontal grid lines with ticks and labels at every multiple of `step` from 0
    /// to `max`.
    fn y_grid(&self, svg: &mut Svg, max: f64, step: f64) {
        let n = (max / step).round() as usize;
        let decimals = step_decimals(step);
        for k in 0..=n {
            let v = k as f64 * step;
            let y = self.y(v, max);
            svg.line(self.left, y, self.left + self.w, y, "#e3e3e3");
            svg.line(self.left - 4.0, y, self.left, y, "#333");
            svg.text(
                self.left - 7.0,
                y + 3.5,
                10.0,
                "end",
                "",
                &format!("{v:.decimals$}"),
            );
        }
    }

    /// A tick on the x axis at position `x` (px) with its label.
    fn x_tick(&self, svg: &mut Svg, x: f64, label: &str) {
        let base = self.top + self.h;
        svg.line(x, base, x, base + 4.0, "#333");
        svg.text(x, base + 16.0, 10.0, "middle", "", label);
    }

    /// The x and y axis lines.
    fn axes(&self, svg: &mut Svg) {
        let base = self.top + self.h;
        svg.line(self.left, base, self.left + self.w, base, "#333");
        svg.line(self.left, self.top, self.left, base, "#333");
    }

    /// The axes' captions: `x` below the plot area, `y` rotated on its left.
    fn axis_labels(&self, svg: &mut Svg, x: &str, y: &str) {
        let (left, top, w, h) = (self.left, self.top, self.w, self.h);
        svg.text(left + w / 2.0, top + h + 40.0, 12.0, "middle", "", x);
        svg.vtext(18.0, top + h / 2.0, 12.0, y);
    }
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
    let (lo, hi, step) = cosine_range(min, max);
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for &v in samples {
        let i = (((v as f64 - lo) / w).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let cmax = counts.iter().copied().max().unwrap_or(1).max(1);
    let ystep = nice_step(cmax as f64, 5).max(1.0).round();
    let ymax = (cmax as f64 / ystep).ceil() * ystep;

    let f = &FRAME;
    let mut svg = f.svg(
        24.0,
        &format!(
            "cos(q_v, q_t) on complete samples (n = {}, mean = {mean:.3})",
            samples.len()
        ),
    );
    let sx = |v: f64| f.left + (v - lo) / (hi - lo) * f.w;
    f.y_grid(&mut svg, ymax, ystep);
    let bar_fill = hex(viridis(0.35));
    for (i, &c) in counts.iter().enumerate() {
        let x = sx(lo + i as f64 * w);
        let y = f.y(c as f64, ymax);
        let bw = (f.w / bins as f64 - 1.0).max(0.5);
        svg.raw(&format!(
            r##"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{:.1}" fill="{bar_fill}"><title>[{:.3}, {:.3}): {c}</title></rect>"##,
            f.top + f.h - y,
            lo + i as f64 * w,
            lo + (i + 1) as f64 * w
        ));
    }
    f.axes(&mut svg);
    let decimals = step_decimals(step);
    let n_x = ((hi - lo) / step).round() as usize;
    for k in 0..=n_x {
        let v = lo + k as f64 * step;
        f.x_tick(&mut svg, sx(v), &format!("{v:.decimals$}"));
    }
    mean_marker(&mut svg, sx(mean));
    f.axis_labels(&mut svg, "cos(q_v, q_t)", "samples");
    Some(svg.finish())
}

/// The histogram's x range `(lo, hi)` and tick step for data in `[min, max]`: the data rounded
/// out to tick steps inside [−1, 1], so bars fill the plot instead of crowding one end of
/// [−1, 1]; padded by a step when every sample is equal.
fn cosine_range(min: f64, max: f64) -> (f64, f64, f64) {
    let step = nice_step((max - min).max(0.02), 5);
    let mut lo = ((min / step).floor() * step).max(-1.0);
    let mut hi = ((max / step).ceil() * step).min(1.0);
    if hi - lo < step {
        lo = (lo - step).max(-1.0);
        hi = (hi + step).min(1.0);
    }
    (lo, hi, step)
}

/// The mean as a dashed red line across the frame at `x` (px), labelled on the side with
/// room for the label.
fn mean_marker(svg: &mut Svg, x: f64) {
    let f = &FRAME;
    let top = f.top;
    svg.raw(&format!(
        r##"<line class="mean" x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{:.1}" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="5,3"/>"##,
        top + f.h
    ));
    let (lx, anchor) = if x > f.left + f.w - 40.0 {
        (x - 4.0, "end")
    } else {
        (x + 4.0, "start")
    };
    svg.text(lx, top + 10.0, 10.0, anchor, r##" fill="#c0392b""##, "mean");
}

// ---------------------------------------------------------------------------------------
// (d) Training loss curves

/// One line of a loss plot: its legend, its value at a point and its viridis position.
type Series = (&'static str, fn(&LossPoint) -> f64, f64);

/// The four lines of a loss plot (eq. 9–10).
static LOSS_SERIES: [Series; 4] = [
    ("L (total)", |p| p.loss, 0.0),
    ("L_c", |p| p.l_c, 0.35),
    ("L_align", |p| p.l_align, 0.62),
    ("L_con", |p| p.l_con, 0.85),
];

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
    let drawn = run_means(pts, per);
    let ymax_data = drawn
        .iter()
        .flat_map(|p| LOSS_SERIES.iter().map(move |s| (s.1)(p)))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let ystep = nice_step(ymax_data.max(1e-6), 5);
    let ymax = ((ymax_data / ystep).ceil() * ystep).max(ystep);
    let (x_lo, x_hi) = (
        pts.first().map_or(1, |p| p.step) as f64,
        pts.last().map_or(1, |p| p.step) as f64,
    );
    let x_hi = if x_hi > x_lo { x_hi } else { x_lo + 1.0 };

    let mut title = format!(
        "Training loss, task {} ({} steps",
        curve.task + 1,
        pts.len()
    );
    if per > 1 {
        let _ = write!(title, ", mean of every {per}");
    }
    title.push(')');
    let f = &FRAME;
    let mut svg = f.svg(130.0, &title);
    let sx = |v: f64| f.left + (v - x_lo) / (x_hi - x_lo) * f.w;
    f.y_grid(&mut svg, ymax, ystep);
    let xstep = nice_step(x_hi - x_lo, 6).max(1.0);
    let mut x = (x_lo / xstep).ceil() * xstep;
    while x <= x_hi + 1e-9 {
        f.x_tick(&mut svg, sx(x), &format!("{x:.0}"));
        x += xstep;
    }
    f.axes(&mut svg);
    for (k, (name, value, colour)) in LOSS_SERIES.iter().enumerate() {
        let colour = hex(viridis(*colour));
        let mut points = String::new();
        for p in &drawn {
            let v = value(p);
            if v.is_finite() {
                let _ = write!(points, "{:.1},{:.1} ", sx(p.step as f64), f.y(v, ymax));
            }
        }
        svg.raw(&format!(
            r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#,
            points.trim_end(),
            esc(name)
        ));
        let (lx, ly) = (f.left + f.w, f.top + 10.0 + 18.0 * k as f64);
        svg.line(lx + 14.0, ly, lx + 34.0, ly, &colour);
        svg.text(lx + 40.0, ly + 3.5, 11.0, "start", "", name);
    }
    f.axis_labels(&mut svg, "step", "loss");
    Some(svg.finish())
}

/// The means of every run of `per` consecutive points, each at its runs' mean step.
fn run_means(pts: &[LossPoint], per: usize) -> Vec<LossPoint> {
    pts.chunks(per)
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
        .collect()
}
