//! Missing-modality tables (docs/data.md#missing-modality).
//!
//! Per (task, split) with N items, a seeded shuffle marks ⌊N·η⌋ items as missing. The seed is
//! derived from (run seed, task, split) only, so a table never depends on earlier runs or on
//! cached files, and train, val and test follow the same rule. For type `both`, the first
//! ⌊m/2⌋ of the m marked items lack the image and the rest lack the text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::cmml::{Benchmark, Split};
use super::rng::DetRng;
use crate::error::{Error, Result};

/// What one sample lacks. Travels with the sample into the model (cross-modal guidance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingType {
    /// Both modalities present.
    #[default]
    None,
    /// The text is missing (replaced by the empty string).
    Text,
    /// The image is missing (replaced by a white image).
    Image,
}

impl MissingType {
    /// `none`, `text` or `image`.
    pub fn as_str(self) -> &'static str {
        match self {
            MissingType::None => "none",
            MissingType::Text => "text",
            MissingType::Image => "image",
        }
    }
    pub fn text_present(self) -> bool {
        self != MissingType::Text
    }
    pub fn image_present(self) -> bool {
        self != MissingType::Image
    }
}

impl fmt::Display for MissingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which modality a missing-modality setting removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MissingKind {
    Text,
    Image,
    /// Half of the marked items lack the image, the other half the text.
    Both,
}

impl MissingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MissingKind::Text => "text",
            MissingKind::Image => "image",
            MissingKind::Both => "both",
        }
    }
}

impl FromStr for MissingKind {
    type Err = Error;
    /// `text`, `image` or `both`, in any case.
    fn from_str(s: &str) -> Result<Self> {
        [MissingKind::Text, MissingKind::Image, MissingKind::Both]
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::Msg(format!("missing type '{s}': expected text, image or both")))
    }
}

/// A missing-modality setting: type and rate η, written `both:0.7`, `text:10%` or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MissingSpec {
    pub kind: MissingKind,
    /// η ∈ [0, 1].
    pub ratio: f64,
}

impl MissingSpec {
    /// No modality missing.
    pub const NONE: MissingSpec = MissingSpec {
        kind: MissingKind::Both,
        ratio: 0.0,
    };

    /// A spec with η checked to lie in [0, 1].
    pub fn new(kind: MissingKind, ratio: f64) -> Result<MissingSpec> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Error::Msg(format!(
                "missing-modality rate {ratio} is outside [0, 1]"
            )));
        }
        Ok(MissingSpec { kind, ratio })
    }

    /// The expected share of items with the text present and with the image present,
    /// (text, image), as in the paper's Table 2/3 headers (up to the floor of ⌊N·η⌋).
    pub fn presence(&self) -> (f64, f64) {
        let r = self.ratio;
        match self.kind {
            MissingKind::Text => (1.0 - r, 1.0),
            MissingKind::Image => (1.0, 1.0 - r),
            MissingKind::Both => (1.0 - r / 2.0, 1.0 - r / 2.0),
        }
    }
}

impl fmt::Display for MissingSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ratio == 0.0 {
            f.write_str("none")
        } else {
            write!(f, "{}:{}", self.kind.as_str(), self.ratio)
        }
    }
}

impl FromStr for MissingSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Msg(format!(
                "bad missing-modality spec {s:?}: {why}; expected TYPE:RATE with TYPE one of \
                 text, image, both and RATE in [0, 1] or a percentage (e.g. both:0.7, text:10%), \
                 or \"none\""
            ))
        };
        let t = s.trim();
        if t.eq_ignore_ascii_case("none") {
            return Ok(MissingSpec::NONE);
        }
        let (kind, rate) = t.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let kind: MissingKind = kind.parse().map_err(|_| bad("unknown type"))?;
        let rate = rate.trim();
        let ratio = match rate.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
            None => rate.parse::<f64>(),
        }
        .map_err(|_| bad("the rate is not a number"))?;
        if !ratio.is_finite() || !(0.0..=1.0).contains(&ratio) {
            return Err(bad("the rate is outside [0, 1]"));
        }
        Ok(MissingSpec { kind, ratio })
    }
}

impl TryFrom<String> for MissingSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<MissingSpec> for String {
    fn from(s: MissingSpec) -> String {
        s.to_string()
    }
}

/// ⌊n·η⌋, with a tolerance of 1e-9 so that rates written in decimal (0.7, 0.29) give the
/// mathematically intended count rather than one less from binary rounding (0.29·100 is
/// 28.999999999999996 in f64).
pub fn missing_count(n: usize, ratio: f64) -> usize {
    let m = ((n as f64) * ratio + 1e-9).floor();
    (m.max(0.0) as usize).min(n)
}

/// The missing type of each of the `n` items of (task, split), indexed like the items of that
/// split in file order. Depends only on (n, spec, run seed, task, split).
pub fn missing_table(
    n: usize,
    spec: &MissingSpec,
    run_seed: u64,
    task: usize,
    split: Split,
) -> Vec<MissingType> {
    let mut table = vec![MissingType::None; n];
    let m = missing_count(n, spec.ratio);
    if m == 0 {
        return table;
    }
    let mut order: Vec<usize> = (0..n).collect();
    DetRng::derived("missing", &[run_seed, task as u64, split.index() as u64]).shuffle(&mut order);
    for (rank, &i) in order[..m].iter().enumerate() {
        table[i] = match spec.kind {
            MissingKind::Text => MissingType::Text,
            MissingKind::Image => MissingType::Image,
            MissingKind::Both if rank < m / 2 => MissingType::Image,
            MissingKind::Both => MissingType::Text,
        };
    }
    table
}

impl Benchmark {
    /// [`missing_table`] for one task's split of this benchmark, aligned with
    /// [`Benchmark::split_indices`].
    pub fn missing_table(
        &self,
        task: usize,
        split: Split,
        spec: &MissingSpec,
        run_seed: u64,
    ) -> Vec<MissingType> {
        missing_table(
            self.split_indices(task, split).len(),
            spec,
            run_seed,
            task,
            split,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(t: &[MissingType]) -> (f64, f64) {
        let n = t.len() as f64;
        let text = t.iter().filter(|m| m.text_present()).count() as f64 / n;
        let image = t.iter().filter(|m| m.image_present()).count() as f64 / n;
        (text, image)
    }

    #[test]
    fn table2_mapping() {
        // "#Image 100% #Text 90%" is η = 10% of type text.
        let s: MissingSpec = "text:0.1".parse().unwrap();
        let t = missing_table(1000, &s, 0, 0, Split::Train);
        assert_eq!(shares(&t), (0.9, 1.0));
        assert_eq!(s.presence(), (0.9, 1.0));
        // "95% 95%" is η = 10% of type both.
        let s: MissingSpec = "both:10%".parse().unwrap();
        let t = missing_table(1000, &s, 0, 3, Split::Test);
        assert_eq!(shares(&t), (0.95, 0.95));
        assert_eq!(s.presence(), (0.95, 0.95));
        let s: MissingSpec = "image:0.3".parse().unwrap();
        assert_eq!(
            shares(&missing_table(1000, &s, 0, 0, Split::Val)),
            (1.0, 0.7)
        );
    }

    #[test]
    fn counts_and_both_split() {
        let s = MissingSpec::new(MissingKind::Both, 0.7).unwrap();
        let t = missing_table(11, &s, 5, 1, Split::Train);
        // ⌊11·0.7⌋ = 7: ⌊7/2⌋ = 3 image-missing, 4 text-missing.
        assert_eq!(t.iter().filter(|&&m| m == MissingType::Image).count(), 3);
        assert_eq!(t.iter().filter(|&&m| m == MissingType::Text).count(), 4);
        assert_eq!(missing_count(100, 0.29), 29);
        assert_eq!(missing_count(10, 0.7), 7);
        assert_eq!(missing_count(10, 1.0), 10);
        assert_eq!(missing_count(0, 0.5), 0);
        assert!(missing_table(5, &MissingSpec::NONE, 1, 0, Split::Train)
            .iter()
            .all(|&m| m == MissingType::None));
    }

    #[test]
    fn deterministic_and_seed_task_split_dependent() {
        let s: MissingSpec = "both:0.5".parse().unwrap();
        let a = missing_table(200, &s, 42, 2, Split::Train);
        assert_eq!(a, missing_table(200, &s, 42, 2, Split::Train));
        assert_ne!(a, missing_table(200, &s, 43, 2, Split::Train));
        assert_ne!(a, missing_table(200, &s, 42, 3, Split::Train));
        assert_ne!(a, missing_table(200, &s, 42, 2, Split::Val));
    }

    #[test]
    fn spec_parsing() {
        let s: MissingSpec = " Both : 70% ".parse().unwrap();
        assert_eq!(s.kind, MissingKind::Both);
        assert!((s.ratio - 0.7).abs() < 1e-12);
        assert_eq!(s.to_string().parse::<MissingSpec>().unwrap(), s);
        assert_eq!("none".parse::<MissingSpec>().unwrap().ratio, 0.0);
        for bad in [
            "both",
            "audio:0.5",
            "text:1.5",
            "text:-0.1",
            "text:abc",
            "image:",
            "text:nan",
        ] {
            let e = bad.parse::<MissingSpec>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("TYPE:RATE"), "{bad}: {e}");
        }
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, "\"both:0.7\"");
        assert_eq!(serde_json::from_str::<MissingSpec>(&j).unwrap(), s);
        assert!(serde_json::from_str::<MissingSpec>("\"x:1\"").is_err());
    }
}
