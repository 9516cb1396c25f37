//! DeLo's settings: variant, pool sizes, targets, gates, loss weights, task-key source
//! (defaults of DELO.md).

use serde::{Deserialize, Serialize};

use crate::delo::experts::GateMode;
use crate::error::{Error, Result};

/// A frozen linear of a ViLT block that can carry experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Fc1,
    Fc2,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Fc1,
        Target::Fc2,
    ];

    /// `(d_in, d_out)` for hidden size `d` and MLP size `d_ff`.
    pub fn dims(self, d: usize, d_ff: usize) -> (usize, usize) {
        match self {
            Target::Q | Target::K | Target::V | Target::O => (d, d),
            Target::Fc1 => (d, d_ff),
            Target::Fc2 => (d_ff, d),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Fc1 => "fc1",
            Target::Fc2 => "fc2",
        }
    }
    /// Parses a comma-separated list such as `q,k,v`.
    pub fn parse_list(s: &str) -> Result<Vec<Target>> {
        let mut out: Vec<Target> = s
            .split(',')
            .map(|t| {
                Target::ALL
                    .into_iter()
                    .find(|x| x.name() == t.trim())
                    .ok_or_else(|| {
                        Error::Msg(format!("target '{t}': expected one of q,k,v,o,fc1,fc2"))
                    })
            })
            .collect::<Result<_>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The method variants of DELO.md "Variants".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Modality-specific routed factor pools (the method).
    Delo,
    /// One static LoRA pair per task and target ("DeLo-LoRA").
    Lora,
    /// One pool and router per target and task, routed by the mean of both queries.
    UnifiedPool,
    /// Frozen ViLT, per-task heads and task keys only.
    HeadsOnly,
    /// One LoRA and one growing head fine-tuned across all tasks: the forgetting lower bound.
    SeqLora,
}

impl std::str::FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Variant> {
        serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
            Error::Msg(format!(
                "variant '{s}': expected delo, lora, unified-pool, heads-only or seq-lora"
            ))
        })
    }
}

/// Where the Task-Key memory reads its query (DELO.md "Task-Key memory").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKeySource {
    Input,
    Frozen,
    Layer,
    Oracle,
}

/// Which direction(s) the consistency loss L_con proxies for complete samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConProxy {
    Text,
    Image,
    Both,
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
        if self.targets.is_empty() && self.variant != Variant::HeadsOnly {
            return bad("no adapted targets".into());
        }
        if !(0.0..1.0).contains(&self.ema_beta) {
            return bad(format!("EMA β {} must be in [0, 1)", self.ema_beta));
        }
        Ok(())
    }

    /// Trainable scalars of one adapted target for one task: `d_in × d_out` linear.
    pub fn adapter_params(&self, d_in: usize, d_out: usize) -> usize {
        let (e, r, rho) = (self.experts, self.rank, self.factor_rank);
        // A pool, B pool, routers A and B (weights + biases), compatibility router.
        let pool = e * rho * d_in + e * d_out * rho + 2 * (e * d_in + e) + r * d_in * e;
        match self.variant {
            Variant::Delo => 2 * pool,
            Variant::UnifiedPool => pool,
            Variant::Lora | Variant::SeqLora => r * d_in + d_out * r,
            Variant::HeadsOnly => 0,
        }
    }

    /// Trainable scalars of one task: every target of every layer, plus its head.
    pub fn task_params(&self, layers: usize, d: usize, d_ff: usize, classes: usize) -> usize {
        let adapters: usize = self
            .targets
            .iter()
            .map(|t| {
                let (i, o) = t.dims(d, d_ff);
                self.adapter_params(i, o)
            })
            .sum();
        layers * adapters + d * classes + classes
    }
}
