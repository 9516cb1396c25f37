//! The DeLo settings of docs/method.md#notation-and-defaults as flags, shared by `delo train`
//! and `delo params`.

use anyhow::Result;
use clap::Args;
use delo::delo::config::{ConProxy, DeloConfig, TaskKeySource, Variant};
use delo::delo::experts::GateMode;
use delo::vilt::Target;

/// Every DeLo setting of docs/method.md, with its defaults.
#[derive(Args, Clone)]
pub(super) struct DeloArgs {
    /// delo, lora, unified-pool, heads-only or seq-lora.
    #[arg(long, default_value = "delo")]
    variant: Variant,
    /// Pool size E.
    #[arg(long = "experts", default_value_t = 16)]
    experts: usize,
    /// Selected rank r.
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// Rows per factor ρ: a number, or `r` for ρ = r (the released code's shapes).
    #[arg(long, default_value = "1")]
    factor_rank: FactorRank,
    #[arg(long, default_value_t = 2.0)]
    alpha: f32,
    /// Adapted linears of every layer, from q,k,v,o,fc1,fc2.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v")]
    targets: Vec<Target>,
    /// st (straight-through), score or hard.
    #[arg(long, default_value = "st")]
    gate: GateMode,
    #[arg(long, default_value_t = 1.0)]
    lambda_cfs: f32,
    #[arg(long, default_value_t = 0.1)]
    lambda_align: f32,
    #[arg(long, default_value_t = 0.1)]
    lambda_con: f32,
    /// EMA momentum β of the task keys.
    #[arg(long, default_value_t = 0.99)]
    ema_beta: f32,
    /// Ablation: route dummy modalities by their own queries.
    #[arg(long)]
    no_cross_modal_guide: bool,
    /// input, frozen, layer or oracle.
    #[arg(long, default_value = "input")]
    task_key: TaskKeySource,
    /// text, image or both.
    #[arg(long, default_value = "text")]
    con_proxy: ConProxy,
}

/// `--factor-rank`: ρ as a number, or `r` for ρ equal to the selected rank.
#[derive(Clone, Copy)]
enum FactorRank {
    SameAsRank,
    Rows(usize),
}

impl std::str::FromStr for FactorRank {
    type Err = String;
    fn from_str(s: &str) -> Result<FactorRank, String> {
        match s {
            "r" => Ok(FactorRank::SameAsRank),
            n => n
                .parse()
                .map(FactorRank::Rows)
                .map_err(|_| format!("'{n}': expected a number or `r`")),
        }
    }
}

impl DeloArgs {
    /// The settings, checked ([`DeloConfig::validate`]).
    pub(super) fn config(&self) -> Result<DeloConfig> {
        let cfg = DeloConfig {
            variant: self.variant,
            experts: self.experts,
            rank: self.rank,
            factor_rank: match self.factor_rank {
                FactorRank::SameAsRank => self.rank,
                FactorRank::Rows(rho) => rho,
            },
            alpha: self.alpha,
            targets: Target::canonical(self.targets.clone()),
            gate: self.gate,
            lambda_cfs: self.lambda_cfs,
            lambda_align: self.lambda_align,
            lambda_con: self.lambda_con,
            ema_beta: self.ema_beta,
            cross_modal_guide: !self.no_cross_modal_guide,
            task_key: self.task_key,
            con_proxy: self.con_proxy,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
