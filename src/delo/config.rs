//! DeLo's settings: variant, pool sizes, targets, gates, loss weights, task-key source
//! (defaults of docs/method.md#notation-and-defaults).

use serde::{Deserialize, Serialize};

use crate::delo::experts::GateMode;
pub use crate::delo::variant::Variant;
use crate::error::{Error, Result};
pub use crate::vilt::Target;

/// A setting's word as `run.json` spells it (its serde name), so that the command line and
/// the stored settings share one spelling; `what` and `expected` make the error.
fn from_word<T: serde::de::DeserializeOwned>(s: &str, what: &str, expected: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| Error::Msg(format!("{what} '{s}': expected {expected}")))
}

/// Where the Task-Key memory reads its query (docs/method.md#key-sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKeySource {
    Input,
    Frozen,
    Layer,
    Oracle,
}

impl std::str::FromStr for TaskKeySource {
    type Err = Error;
    fn from_str(s: &str) -> Result<TaskKeySource> {
        from_word(s, "task key", "input, frozen, layer or oracle")
    }
}

/// Which direction(s) the consistency loss L_con proxies for complete samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConProxy {
    Text,
    Image,
    Both,
}

impl std::str::FromStr for ConProxy {
    type Err = Error;
    fn from_str(s: &str) -> Result<ConProxy> {
        from_word(s, "consistency proxy", "text, image or both")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeloConfig {
    pub variant: Variant,
    /// Pool size E.
    pub experts: usize,
    /// Selected rank r (slots per sample).
    pub rank: usize,
    /// Rows per factor ρ (1: the paper's rank-one factors; r: the released code's shapes).
    pub factor_rank: usize,
    pub alpha: f32,
    pub targets: Vec<Target>,
    pub gate: GateMode,
    pub lambda_cfs: f32,
    pub lambda_align: f32,
    pub lambda_con: f32,
    pub ema_beta: f32,
    pub cross_modal_guide: bool,
    pub task_key: TaskKeySource,
    pub con_proxy: ConProxy,
}

impl Default for DeloConfig {
    fn default() -> Self {
        DeloConfig {
            variant: Variant::Delo,
            experts: 16,
            rank: 4,
            factor_rank: 1,
            alpha: 2.0,
            targets: vec![Target::Q, Target::K, Target::V],
            gate: GateMode::St,
            lambda_cfs: 1.0,
            lambda_align: 0.1,
            lambda_con: 0.1,
            ema_beta: 0.99,
            cross_modal_guide: true,
            task_key: TaskKeySource::Input,
            con_proxy: ConProxy::Text,
        }
    }
}

impl DeloConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Msg(format!("DeLo settings: {m}")));
        if self.experts == 0 || self.rank == 0 || self.factor_rank == 0 {
            return bad(format!(
                "experts ({}), rank ({}) and factor rank ({}) must be positive",
                self.experts, self.rank, self.factor_rank
            ));
        }
        if self.rank > self.experts {
            return bad(format!(
                "cannot select rank {} of {} experts",
                self.rank, self.experts
            ));
        }
        if self.targets.is_empty() && self.variant.has_adapters() {
            return bad("no adapted targets".into());
        }
        if !(0.0..1.0).contains(&self.ema_beta) {
            return bad(format!("EMA β {} must be in [0, 1)", self.ema_beta));
        }
        Ok(())
    }
}

/// Parameter counts of a DeLo model (what `delo params` prints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Trainable scalars of one task (its adapters and its head; with `seq-lora` the shared
    /// adapter and the head grown to all classes, as the last task trains them).
    pub trainable_per_task: usize,
    /// The frozen backbone, with the text position table at `text_positions` rows.
    pub backbone: usize,
    /// Backbone plus every task's parameters.
    pub total: usize,
}

/// Counts for `tasks` tasks of `classes` classes each on backbone `vcfg`, whose text position
/// table is stretched to `text_positions` rows (512 in the CMML code).
pub fn count_params(
    cfg: &DeloConfig,
    vcfg: &crate::vilt::ViltConfig,
    tasks: usize,
    classes: usize,
    text_positions: usize,
) -> ParamCounts {
    let backbone: usize = crate::vilt::expected_shapes(vcfg)
        .iter()
        .map(|(name, shape)| match name.as_str() {
            "embeddings.text_embeddings.position_embeddings.weight" => {
                text_positions.max(shape[0]) * shape[1]
            }
            _ => shape.iter().product(),
        })
        .sum();
    // seq-lora keeps one adapter and one head that grows to every class; the last task
    // trains all of it.
    let (head_classes, copies) = match cfg.variant.shares_one_model() {
        true => (tasks * classes, 1),
        false => (classes, tasks),
    };
    let per_task = crate::delo::params::task_specs(cfg, vcfg, head_classes)
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    ParamCounts {
        trainable_per_task: per_task,
        backbone,
        total: backbone + copies * per_task,
    }
}
