//! Every task parameter's name, made here and nowhere else: the parameter list
//! ([`crate::delo::params::task_specs`]), the adapter that binds the tensors and the losses
//! that read the head all ask these functions, so a checkpoint's names cannot drift apart.
//!
//! Layout: `layer{l}.{target}.{pool}.{tensor}` for a routed pool (`pool` = `v`, `t` or `u`,
//! [`crate::delo::variant::RoutedPool::suffix`]), `layer{l}.{target}.lora_a|lora_b` for a LoRA
//! pair, `head.weight` and `head.bias`.

use crate::vilt::Target;

/// The head's `[classes, d]` weight.
pub const HEAD_WEIGHT: &str = "head.weight";
/// The head's `[classes]` bias.
pub const HEAD_BIAS: &str = "head.bias";

/// The adapted linear `target` of encoder layer `layer`: `layer{l}.{target}`.
pub fn linear(layer: usize, target: Target) -> String {
    format!("layer{layer}.{}", target.name())
}

/// A routed pool of an adapted linear: `{linear}.{suffix}`.
pub fn pool(linear: &str, suffix: &str) -> String {
    format!("{linear}.{suffix}")
}

/// The LoRA pair of an adapted linear: `({linear}.lora_a, {linear}.lora_b)`.
pub fn lora(linear: &str) -> (String, String) {
    (format!("{linear}.lora_a"), format!("{linear}.lora_b"))
}

/// The tensors of one routed pool, in the order the parameter list holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolTensor {
    /// A factors `[E, ρ, d_in]`.
    APool,
    /// B factors `[E, d_out, ρ]`.
    BPool,
    /// Router A's weight `[E, d_in]`.
    RouterAWeight,
    /// Router A's bias `[E]`.
    RouterABias,
    /// Router B's weight `[E, d_in]`.
    RouterBWeight,
    /// Router B's bias `[E]`.
    RouterBBias,
    /// The compatibility router `[r, d_in, E]`.
    Compat,
}

impl PoolTensor {
    pub const ALL: [PoolTensor; 7] = [
        PoolTensor::APool,
        PoolTensor::BPool,
        PoolTensor::RouterAWeight,
        PoolTensor::RouterABias,
        PoolTensor::RouterBWeight,
        PoolTensor::RouterBBias,
        PoolTensor::Compat,
    ];

    /// The tensor's name in the pool at `pool` (see [`pool`]).
    pub fn name(self, pool: &str) -> String {
        let tail = match self {
            PoolTensor::APool => "a_pool",
            PoolTensor::BPool => "b_pool",
            PoolTensor::RouterAWeight => "router_a.weight",
            PoolTensor::RouterABias => "router_a.bias",
            PoolTensor::RouterBWeight => "router_b.weight",
            PoolTensor::RouterBBias => "router_b.bias",
            PoolTensor::Compat => "compat",
        };
        format!("{pool}.{tail}")
    }
}
