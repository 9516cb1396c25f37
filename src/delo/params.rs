//! One task's trainable tensors: names, shapes and initialisation (docs/method.md#parameters).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::delo::config::DeloConfig;
use crate::delo::names::{self, PoolTensor};
use crate::delo::variant::Update;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::vilt::ViltConfig;

/// How a tensor starts out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, 1/fan_in).
    NormalFanIn(usize),
    /// U(−1/√fan_in, 1/√fan_in), PyTorch's Linear default.
    UniformFanIn(usize),
    Zeros,
}

/// A named tensor of one task.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

fn spec(name: String, shape: Vec<usize>, init: Init) -> ParamSpec {
    ParamSpec { name, shape, init }
}

/// The pool pair, routers and compatibility router of one modality (`v`, `t`, or `u` for the
/// unified pool) at `prefix`.
fn pool_specs(out: &mut Vec<ParamSpec>, prefix: &str, cfg: &DeloConfig, d_in: usize, d_out: usize) {
    let (e, r, rho) = (cfg.experts, cfg.rank, cfg.factor_rank);
    for tensor in PoolTensor::ALL {
        let (shape, init) = match tensor {
            PoolTensor::APool => (vec![e, rho, d_in], Init::NormalFanIn(d_in)),
            PoolTensor::BPool => (vec![e, d_out, rho], Init::Zeros),
            PoolTensor::RouterAWeight | PoolTensor::RouterBWeight => {
                (vec![e, d_in], Init::UniformFanIn(d_in))
            }
            PoolTensor::RouterABias | PoolTensor::RouterBBias => {
                (vec![e], Init::UniformFanIn(d_in))
            }
            PoolTensor::Compat => (vec![r, d_in, e], Init::NormalFanIn(d_in)),
        };
        out.push(spec(tensor.name(prefix), shape, init));
    }
}

/// Every trainable tensor of one task with `classes` outputs, in a fixed order. Names:
/// `layer{l}.{target}.{v|t|u}.{a_pool,b_pool,router_a.*,router_b.*,compat}` (DeLo, unified
/// pool), `layer{l}.{target}.lora_a/lora_b` (LoRA variants), `head.weight`, `head.bias`.
pub fn task_specs(cfg: &DeloConfig, vcfg: &ViltConfig, classes: usize) -> Vec<ParamSpec> {
    let (d, d_ff) = (vcfg.hidden_size, vcfg.intermediate_size);
    let mut out = Vec::new();
    for l in 0..vcfg.num_hidden_layers {
        for t in &cfg.targets {
            let (d_in, d_out) = t.dims(d, d_ff);
            let p = names::linear(l, *t);
            match cfg.variant.update() {
                Update::Routed(pools) => {
                    for pool in pools {
                        pool_specs(&mut out, &names::pool(&p, pool.suffix), cfg, d_in, d_out);
                    }
                }
                Update::LowRank => {
                    let (a, b) = names::lora(&p);
                    out.push(spec(a, vec![cfg.rank, d_in], Init::NormalFanIn(d_in)));
                    out.push(spec(b, vec![d_out, cfg.rank], Init::Zeros));
                }
                Update::None => {}
            }
        }
    }
    out.push(spec(
        names::HEAD_WEIGHT.into(),
        vec![classes, d],
        Init::UniformFanIn(d),
    ));
    out.push(spec(
        names::HEAD_BIAS.into(),
        vec![classes],
        Init::UniformFanIn(d),
    ));
    out
}

/// Draws the initial values of `specs` (the initial values of docs/method.md#parameters),
/// deterministically for `seed`.
pub fn init_params(specs: &[ParamSpec], seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let v: Vec<f32> = match s.init {
                Init::Zeros => vec![0.0; n],
                Init::NormalFanIn(f) => {
                    let dist = Normal::new(0.0, (1.0 / f as f64).sqrt()).expect("positive std");
                    (0..n).map(|_| dist.sample(&mut rng) as f32).collect()
                }
                Init::UniformFanIn(f) => {
                    let b = 1.0 / (f as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-b..b)).collect()
                }
            };
            Ok((s.name.clone(), Tensor::from_f32(v, &s.shape)?))
        })
        .collect()
}
