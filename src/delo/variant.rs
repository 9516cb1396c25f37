//! The method variants and everything that sets them apart, in one place: which update each
//! adapted linear gets (routed pools and their queries, a static LoRA pair, or none), whether
//! one model is shared by every task, and the name reports use. The adapter, the parameter
//! list, the losses, training and evaluation ask these questions instead of matching on the
//! variant, so a variant built from these behaviours is added here alone.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The method variants of the paper's ablations (docs: method variants).
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

/// The query that routes a pool: the guided image or text query of eq. (5), or their mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolQuery {
    /// q̂_v.
    Image,
    /// q̂_t.
    Text,
    /// (q̂_v + q̂_t) / 2.
    Mean,
}

/// One routed pool of an adapted linear: its parameter-name suffix
/// (`layer{l}.{target}.{suffix}.*`) and its query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutedPool {
    pub suffix: &'static str,
    pub query: PoolQuery,
}

/// What a variant adds to each adapted linear's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Nothing: the backbone stays as it is.
    None,
    /// The sum of these routed pools' compositions (eq. 2–4), in this order.
    Routed(&'static [RoutedPool]),
    /// A static LoRA pair `α · B A x`, `lora_a [r, d_in]`, `lora_b [d_out, r]`.
    LowRank,
}

const DELO_POOLS: &[RoutedPool] = &[
    RoutedPool {
        suffix: "v",
        query: PoolQuery::Image,
    },
    RoutedPool {
        suffix: "t",
        query: PoolQuery::Text,
    },
];

const UNIFIED_POOL: &[RoutedPool] = &[RoutedPool {
    suffix: "u",
    query: PoolQuery::Mean,
}];

impl Variant {
    /// Every variant, in declaration order.
    pub const ALL: [Variant; 5] = [
        Variant::Delo,
        Variant::Lora,
        Variant::UnifiedPool,
        Variant::HeadsOnly,
        Variant::SeqLora,
    ];

    /// The update of every adapted linear.
    pub fn update(self) -> Update {
        match self {
            Variant::Delo => Update::Routed(DELO_POOLS),
            Variant::UnifiedPool => Update::Routed(UNIFIED_POOL),
            Variant::Lora | Variant::SeqLora => Update::LowRank,
            Variant::HeadsOnly => Update::None,
        }
    }

    /// Whether the adapted linears have routed pools (and so routers, queries and L_con).
    pub fn routed(self) -> bool {
        matches!(self.update(), Update::Routed(_))
    }

    /// Whether any linear is adapted.
    pub fn has_adapters(self) -> bool {
        self.update() != Update::None
    }

    /// Whether every task trains one shared model with one head grown to every class seen so
    /// far, instead of parameters of its own (seq-lora: no task choice at evaluation).
    pub fn shares_one_model(self) -> bool {
        self == Variant::SeqLora
    }

    /// The command-line and file name (`delo`, `unified-pool`, …).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Delo => "delo",
            Variant::Lora => "lora",
            Variant::UnifiedPool => "unified-pool",
            Variant::HeadsOnly => "heads-only",
            Variant::SeqLora => "seq-lora",
        }
    }

    /// The name reports print.
    pub fn display_name(self) -> &'static str {
        match self {
            Variant::Delo => "DeLo",
            v => v.name(),
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Variant> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
                let (last, rest) = names.split_last().unwrap_or((&"", &[]));
                Error::Msg(format!(
                    "variant '{s}': expected {} or {last}",
                    rest.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_match_the_serialized_form() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
        let e = "lora2".parse::<Variant>().unwrap_err().to_string();
        assert!(
            e.contains("expected delo, lora, unified-pool, heads-only or seq-lora"),
            "{e}"
        );
    }
}
