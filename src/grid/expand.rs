//! The paper's settings as runs: each table of the paper (2–6) as a layout of rows and
//! method columns whose cells are [`Setting`]s, one `delo train` run each. The same layout
//! gives `delo grid` its runs and `delo table` its shape, so the two cannot disagree.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::{MissingKind, MissingSpec};
use crate::delo::config::{DeloConfig, Variant};
use crate::error::{Error, Result};
use crate::grid::paper::{self, Claim};
use crate::report::markdown::pct;
use crate::train::TrainSettings;

/// A table of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum TableId {
    /// UPMC-Food101-CMML: η × missing type, AP/FG per method (accuracy).
    T2,
    /// MM-IMDb-CMML: the same settings as Table 2 (F1-macro).
    T3,
    /// Components: DeLo, DeLo-LoRA, w/o cross-modal guide, w/o modality-specific pools.
    T4,
    /// Pool size E × selected rank r.
    T5,
    /// The loss terms (λ_align, λ_con on or off).
    T6,
}

impl TableId {
    pub fn number(self) -> u8 {
        match self {
            TableId::T2 => 2,
            TableId::T3 => 3,
            TableId::T4 => 4,
            TableId::T5 => 5,
            TableId::T6 => 6,
        }
    }
}

impl From<TableId> for u8 {
    fn from(t: TableId) -> u8 {
        t.number()
    }
}

impl TryFrom<u8> for TableId {
    type Error = Error;
    fn try_from(n: u8) -> Result<TableId> {
        Ok(match n {
            2 => TableId::T2,
            3 => TableId::T3,
            4 => TableId::T4,
            5 => TableId::T5,
            6 => TableId::T6,
            _ => {
                return Err(Error::Msg(format!(
                    "table {n}: the paper's tables of results are 2, 3, 4, 5 and 6"
                )))
            }
        })
    }
}

/// What a run trains: a variant of docs/method.md#variants, with the cross-modal guide on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Delo,
    /// `--variant lora`.
    DeloLora,
    /// DeLo with `--no-cross-modal-guide`.
    DeloNoGuide,
    /// `--variant unified-pool`.
    UnifiedPool,
    HeadsOnly,
    SeqLora,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Delo,
        Method::DeloLora,
        Method::DeloNoGuide,
        Method::UnifiedPool,
        Method::HeadsOnly,
        Method::SeqLora,
    ];

    /// The name in run directories and on the command line (`--methods`).
    pub fn slug(self) -> &'static str {
        match self {
            Method::Delo => "delo",
            Method::DeloLora => "delo-lora",
            Method::DeloNoGuide => "delo-no-guide",
            Method::UnifiedPool => "unified-pool",
            Method::HeadsOnly => "heads-only",
            Method::SeqLora => "seq-lora",
        }
    }

    /// The name in tables, in the paper's wording (Table 4) where it has one.
    pub fn label(self) -> &'static str {
        match self {
            Method::Delo => "DeLo",
            Method::DeloLora => "DeLo-LoRA",
            Method::DeloNoGuide => "w/o Cross-Modal Guide",
            Method::UnifiedPool => "w/o Modality-Specific Factor Pool",
            Method::HeadsOnly => "heads-only",
            Method::SeqLora => "seq-lora",
        }
    }

    fn variant(self) -> Variant {
        match self {
            Method::Delo | Method::DeloNoGuide => Variant::Delo,
            Method::DeloLora => Variant::Lora,
            Method::UnifiedPool => Variant::UnifiedPool,
            Method::HeadsOnly => Variant::HeadsOnly,
            Method::SeqLora => Variant::SeqLora,
        }
    }

    /// Whether the method trains adapters (so that E, r and the λs matter).
    fn adapts(self) -> bool {
        self != Method::HeadsOnly
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.slug() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.slug()).collect();
                Error::Msg(format!(
                    "method '{s}': expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// One run of the grid: the missing-modality setting and the method with its pool size, rank
/// and loss weights (the defaults of docs/method.md#notation-and-defaults unless a table varies
/// them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setting {
    pub kind: MissingKind,
    /// η in percent.
    pub eta: u32,
    pub method: Method,
    pub experts: usize,
    pub rank: usize,
    pub lambda_align: f32,
    pub lambda_con: f32,
}

impl Setting {
    /// `method` at the defaults of docs/method.md (E = 16, r = 4, λ_align = λ_con = 0.1).
    pub fn new(method: Method, kind: MissingKind, eta: u32) -> Setting {
        let d = DeloConfig::default();
        Setting {
            kind,
            eta,
            method,
            experts: d.experts,
            rank: d.rank,
            lambda_align: d.lambda_align,
            lambda_con: d.lambda_con,
        }
    }

    /// The ablations' setting: η = 70 %, both missing (paper §Ablation Study).
    fn ablation(method: Method) -> Setting {
        Setting::new(method, MissingKind::Both, 70)
    }

    /// `type:η` as `--missing` takes it, e.g. `both:0.7`.
    pub fn missing(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.eta as f64 / 100.0)
    }

    /// The run directory's name, e.g. `both70-delo`, `both70-delo-e32-r8`,
    /// `both70-delo-align0-con0`: the missing setting, the method, then whatever differs from
    /// the defaults of docs/method.md#notation-and-defaults.
    pub fn name(&self) -> String {
        let mut name = format!("{}{}-{}", self.kind.as_str(), self.eta, self.method.slug());
        let d = Setting::new(self.method, self.kind, self.eta);
        if self.method.adapts() {
            if (self.experts, self.rank) != (d.experts, d.rank) {
                name.push_str(&format!("-e{}-r{}", self.experts, self.rank));
            }
            if self.lambda_align != d.lambda_align {
                name.push_str(&format!("-align{}", self.lambda_align));
            }
            if self.lambda_con != d.lambda_con {
                name.push_str(&format!("-con{}", self.lambda_con));
            }
        }
        name
    }

    /// The `delo train` flags that make this setting (every run of the grid adds the same
    /// extra flags after them).
    pub fn train_flags(&self) -> Vec<String> {
        let mut f = vec![
            "--missing".to_string(),
            self.missing(),
            "--variant".into(),
            variant_name(self.method.variant()),
        ];
        if self.method.adapts() {
            f.extend([
                "--experts".into(),
                self.experts.to_string(),
                "--rank".into(),
                self.rank.to_string(),
                "--lambda-align".into(),
                self.lambda_align.to_string(),
                "--lambda-con".into(),
                self.lambda_con.to_string(),
            ]);
        }
        if self.method == Method::DeloNoGuide {
            f.push("--no-cross-modal-guide".into());
        }
        f
    }

    /// Whether a run's recorded settings are this setting's; the differences otherwise.
    pub fn check_run(&self, s: &TrainSettings) -> std::result::Result<(), String> {
        let mut diffs = Vec::new();
        let want = MissingSpec {
            kind: self.kind,
            ratio: self.eta as f64 / 100.0,
        };
        match s.missing.parse::<MissingSpec>() {
            Ok(m) if m == want => {}
            _ => diffs.push(format!(
                "missing {} (expected {})",
                s.missing,
                self.missing()
            )),
        }
        let d = &s.delo;
        let expected_variant = self.method.variant();
        if d.variant != expected_variant {
            diffs.push(format!(
                "variant {} (expected {})",
                variant_name(d.variant),
                variant_name(expected_variant)
            ));
        }
        if d.cross_modal_guide != (self.method != Method::DeloNoGuide) {
            diffs.push(format!("cross-modal guide {}", d.cross_modal_guide));
        }
        if self.method.adapts() {
            for (what, got, want) in [
                ("experts", d.experts as f32, self.experts as f32),
                ("rank", d.rank as f32, self.rank as f32),
                ("lambda-align", d.lambda_align, self.lambda_align),
                ("lambda-con", d.lambda_con, self.lambda_con),
            ] {
                if got != want {
                    diffs.push(format!("{what} {got} (expected {want})"));
                }
            }
        }
        match diffs.is_empty() {
            true => Ok(()),
            false => Err(diffs.join(", ")),
        }
    }
}

/// A variant's name as `--variant` takes it.
fn variant_name(v: Variant) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|x| x.as_str().map(String::from))
        .expect("variants serialise as strings")
}

/// Which part of Tables 2/3 to run: η values (percent), missing types and methods. The
/// ablation tables (4–6) have one setting each and ignore it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub etas: Vec<u32>,
    #[serde(with = "kinds")]
    pub types: Vec<MissingKind>,
    pub methods: Vec<Method>,
}

impl Default for Selection {
    /// The whole of Tables 2/3: η ∈ {10, 30, 50, 70, 90} %, each type, DeLo beside the
    /// heads-only and seq-lora baselines.
    fn default() -> Self {
        Selection {
            etas: MAIN_ETAS.to_vec(),
            types: MAIN_TYPES.to_vec(),
            methods: vec![Method::Delo, Method::HeadsOnly, Method::SeqLora],
        }
    }
}

/// The η values of Tables 2/3, in percent.
pub const MAIN_ETAS: [u32; 5] = [10, 30, 50, 70, 90];
/// The missing types of Tables 2/3 in the paper's row order (#Image 100 % first).
pub const MAIN_TYPES: [MissingKind; 3] = [MissingKind::Text, MissingKind::Image, MissingKind::Both];

/// Serde for missing types as their names.
mod kinds {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        k: &[MissingKind],
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(k.iter().map(|k| k.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Vec<MissingKind>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// One row of a table: its labels (one per row-header column), one run per measured column
/// and the paper's claim per reference column.
#[derive(Clone, Debug)]
pub struct Row {
    pub labels: Vec<String>,
    pub runs: Vec<Setting>,
    pub claims: Vec<Option<Claim>>,
}

/// A table of the paper as runs: row headers, measured columns (each AP, FG and task-id
/// accuracy), reference columns (the paper's AP and FG).
#[derive(Clone, Debug)]
pub struct Layout {
    pub table: TableId,
    pub title: String,
    pub row_header: Vec<&'static str>,
    /// Measured column groups, e.g. `DeLo`, `heads-only`; empty name for a single group.
    pub methods: Vec<String>,
    /// Reference column groups (the paper's methods; empty name for a single group), and
    /// whether Markdown shows them (the CSV has all).
    pub paper: Vec<(&'static str, bool)>,
    pub rows: Vec<Row>,
}

/// The layout of `table`; Tables 2/3 restricted to `sel`.
pub fn layout(table: TableId, sel: &Selection) -> Layout {
    match table {
        TableId::T2 | TableId::T3 => main_layout(table, sel),
        TableId::T4 => Layout {
            table,
            title: "Table 4: component-wise analysis (η = 70 %, both missing)".into(),
            row_header: vec!["Method"],
            methods: vec![String::new()],
            paper: vec![("", true)],
            rows: [
                Method::Delo,
                Method::DeloLora,
                Method::DeloNoGuide,
                Method::UnifiedPool,
            ]
            .into_iter()
            .zip(paper::TABLE4)
            .map(|(m, (_, claim))| Row {
                labels: vec![m.label().into()],
                runs: vec![Setting::ablation(m)],
                claims: vec![Some(claim)],
            })
            .collect(),
        },
        TableId::T5 => Layout {
            table,
            title: "Table 5: factor pool size E and selected rank r (η = 70 %, both missing)"
                .into(),
            row_header: vec!["E", "r"],
            methods: vec![String::new()],
            paper: vec![("", true)],
            rows: paper::TABLE5
                .into_iter()
                .map(|(experts, rank, claim)| Row {
                    labels: vec![experts.to_string(), rank.to_string()],
                    runs: vec![Setting {
                        experts,
                        rank,
                        ..Setting::ablation(Method::Delo)
                    }],
                    claims: vec![Some(claim)],
                })
                .collect(),
        },
        TableId::T6 => Layout {
            table,
            title: "Table 6: the loss terms (η = 70 %, both missing)".into(),
            row_header: vec!["L_c", "L_align", "L_con"],
            methods: vec![String::new()],
            paper: vec![("", true)],
            rows: paper::TABLE6
                .into_iter()
                .map(|(align, con, claim)| {
                    let full = Setting::ablation(Method::Delo);
                    let tick = |on: bool| if on { "✓" } else { "-" }.to_string();
                    Row {
                        labels: vec![tick(true), tick(align), tick(con)],
                        runs: vec![Setting {
                            lambda_align: if align { full.lambda_align } else { 0.0 },
                            lambda_con: if con { full.lambda_con } else { 0.0 },
                            ..full
                        }],
                        claims: vec![Some(claim)],
                    }
                })
                .collect(),
        },
    }
}

fn main_layout(table: TableId, sel: &Selection) -> Layout {
    let table3 = table == TableId::T3;
    let mut rows = Vec::new();
    for &eta in &sel.etas {
        for kind in MAIN_TYPES.into_iter().filter(|k| sel.types.contains(k)) {
            let spec = MissingSpec {
                kind,
                ratio: eta as f64 / 100.0,
            };
            let (text, image) = spec.presence();
            let claims = match paper::main_row(table3, kind, eta) {
                Some(c) => c.map(Some).to_vec(),
                None => vec![None; paper::MAIN_METHODS.len()],
            };
            rows.push(Row {
                labels: vec![format!("{eta}%"), pct(image), pct(text)],
                runs: sel
                    .methods
                    .iter()
                    .map(|&m| Setting::new(m, kind, eta))
                    .collect(),
                claims,
            });
        }
    }
    let (number, bench, metric) = match table3 {
        false => (2, "UPMC-Food101-CMML", "accuracy"),
        true => (3, "MM-IMDb-CMML", "F1-macro"),
    };
    Layout {
        table,
        title: format!("Table {number}: {bench} (AP and FG of {metric})"),
        row_header: vec!["η", "#Image", "#Text"],
        methods: sel.methods.iter().map(|m| m.label().to_string()).collect(),
        paper: paper::MAIN_METHODS
            .into_iter()
            .map(|m| (m, m == "DeLo" || m == "RebQ"))
            .collect(),
        rows,
    }
}

/// Every run of `tables`, each once, in table order: a setting shared by several tables (the
/// full method at η = 70 % both is in all of them) is one run.
pub fn settings(tables: &[TableId], sel: &Selection) -> Vec<Setting> {
    let mut out: Vec<Setting> = Vec::new();
    for &t in tables {
        for row in layout(t, sel).rows {
            for s in row.runs {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table 2 is 5 η × 3 types × 3 methods; the ablations add their own settings only, the
    /// full method at η = 70 % both being shared; every run has its own directory name, and
    /// its flags are the setting it is checked against.
    #[test]
    fn the_paper_grid_has_one_run_per_setting() {
        let sel = Selection::default();
        assert_eq!(settings(&[TableId::T2], &sel).len(), 45);
        let all = settings(&[TableId::T2, TableId::T4, TableId::T5, TableId::T6], &sel);
        assert_eq!(all.len(), 45 + 3 + 5 + 3);
        let mut names: Vec<String> = all.iter().map(Setting::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            all.len(),
            "two settings share a directory name"
        );
        for s in &all {
            let mut t = TrainSettings {
                missing: s.missing(),
                ..TrainSettings::default()
            };
            let f = s.train_flags();
            let value = |flag: &str| f.iter().position(|x| x == flag).map(|i| f[i + 1].clone());
            t.delo.variant = value("--variant").unwrap().parse().unwrap();
            if let Some(v) = value("--experts") {
                t.delo.experts = v.parse().unwrap();
                t.delo.rank = value("--rank").unwrap().parse().unwrap();
                t.delo.lambda_align = value("--lambda-align").unwrap().parse().unwrap();
                t.delo.lambda_con = value("--lambda-con").unwrap().parse().unwrap();
            }
            t.delo.cross_modal_guide = !f.contains(&"--no-cross-modal-guide".to_string());
            assert_eq!(s.check_run(&t), Ok(()), "{}", s.name());
        }
        let other = Setting {
            rank: 8,
            ..Setting::new(Method::Delo, MissingKind::Both, 70)
        };
        let full = TrainSettings::default();
        assert!(other
            .check_run(&full)
            .unwrap_err()
            .contains("rank 4 (expected 8)"));
    }
}
