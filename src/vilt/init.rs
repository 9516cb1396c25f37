//! Randomly initialised ViLT model directories in the Hugging Face layout (`delo init-model`).
//!
//! The default initialisation follows transformers' `_init_weights`: Linear, Conv2d and
//! Embedding weights ~ N(0, initializer_range), biases 0, LayerNorm weight 1 and bias 0, and
//! `cls_token` / image `position_embeddings` left at the zeros `ViltEmbeddings` creates them with.
//! [`InitOptions::randomize_all`] also randomises the terms HF leaves constant (biases,
//! LayerNorms, CLS, position tables), so a fixture exercises every term of the forward.

use std::path::Path;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::data::tokenizer::BERT_UNCASED_VOCAB;
use crate::error::{Error, Result};
use crate::st::write_atomic;
use crate::tensor::Tensor;
use crate::vilt::config::ViltConfig;
use crate::vilt::weights::{expected_shapes, ViltWeights, CONFIG_FILE, WEIGHTS_FILE};

/// A named model size for `init-model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Hidden 32, 2 layers, 2 heads, 96×96 images: trains on a CPU in seconds.
    Tiny,
    /// ViLT-B/32 dimensions.
    Base,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Preset::parse(s)
    }
}

impl Preset {
    /// `tiny` or `base`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "base" => Ok(Preset::Base),
            _ => Err(Error::Msg(format!(
                "unknown preset {s:?}; expected \"tiny\" or \"base\""
            ))),
        }
    }
    pub fn config(self) -> ViltConfig {
        match self {
            Preset::Tiny => ViltConfig::tiny(),
            Preset::Base => ViltConfig::base(),
        }
    }
}

/// How to initialise.
#[derive(Clone, Copy, Debug)]
pub struct InitOptions {
    pub seed: u64,
    /// Also randomise biases (N(0, σ)), LayerNorms (weight 1 + N(0, 0.1), bias N(0, 0.1)),
    /// `cls_token` and both position tables (N(0, σ)); σ = `initializer_range`.
    pub randomize_all: bool,
}

/// What a parameter is, for choosing its initialisation from its HF name.
enum Kind {
    Weight,
    Bias,
    NormWeight,
    NormBias,
    /// `cls_token` and the image position table: zeros in HF.
    ZeroParam,
}

fn kind(name: &str) -> Kind {
    let norm = name.contains("LayerNorm.") || name.contains("layernorm");
    if name == "embeddings.cls_token" || name == "embeddings.position_embeddings" {
        Kind::ZeroParam
    } else if norm && name.ends_with(".weight") {
        Kind::NormWeight
    } else if norm {
        Kind::NormBias
    } else if name.ends_with(".bias") {
        Kind::Bias
    } else {
        Kind::Weight
    }
}

/// Initialised weights for `cfg`; deterministic for a given seed and options.
pub fn init_weights(cfg: &ViltConfig, opts: InitOptions) -> Result<ViltWeights> {
    cfg.validate()
        .map_err(|m| Error::Msg(format!("invalid ViltConfig: {m}")))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let std = cfg.initializer_range as f32;
    let normal = Normal::new(0.0f32, std)
        .map_err(|e| Error::Msg(format!("initializer_range {std}: {e}")))?;
    let norm_jitter = Normal::new(0.0f32, 0.1).expect("0.1 is a valid std");
    let mut map = std::collections::HashMap::new();
    for (name, shape) in expected_shapes(cfg) {
        let n: usize = shape.iter().product();
        let mut sample = |d: &Normal<f32>, offset: f32| -> Vec<f32> {
            (0..n).map(|_| offset + d.sample(&mut rng)).collect()
        };
        let data = match (kind(&name), opts.randomize_all) {
            (Kind::Weight, _) => sample(&normal, 0.0),
            (Kind::Bias | Kind::ZeroParam, false) | (Kind::NormBias, false) => vec![0.0; n],
            (Kind::NormWeight, false) => vec![1.0; n],
            (Kind::Bias | Kind::ZeroParam, true) => sample(&normal, 0.0),
            (Kind::NormWeight, true) => sample(&norm_jitter, 1.0),
            (Kind::NormBias, true) => sample(&norm_jitter, 0.0),
        };
        map.insert(name, Tensor::from_f32(data, &shape)?);
    }
    ViltWeights::from_tensors(cfg, map, Path::new("<init>"))
}

/// Writes a Hugging Face model directory: `config.json`, `model.safetensors` (f32, `ViltModel`
/// names) and the bert-base-uncased `vocab.txt`. Creates `dir` if needed.
pub fn write_model_dir(dir: &Path, cfg: &ViltConfig, weights: &ViltWeights) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    weights.save_safetensors(&dir.join(WEIGHTS_FILE))?;
    write_atomic(&dir.join(CONFIG_FILE), cfg.to_json_string().as_bytes())?;
    write_atomic(&dir.join("vocab.txt"), BERT_UNCASED_VOCAB.as_bytes())
}

/// `delo init-model`: a fresh model directory for `preset`. Refuses to replace existing
/// weights unless `force`, so a trained checkpoint is never overwritten by accident.
pub fn init_model_dir(dir: &Path, preset: Preset, opts: InitOptions, force: bool) -> Result<()> {
    if !force && dir.join(WEIGHTS_FILE).exists() {
        return Err(Error::format(
            dir,
            format!("{WEIGHTS_FILE} already exists; pass --force to overwrite it"),
        ));
    }
    let cfg = preset.config();
    let w = init_weights(&cfg, opts)?;
    write_model_dir(dir, &cfg, &w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_style_init() {
        let cfg = ViltConfig::tiny();
        let w = init_weights(
            &cfg,
            InitOptions {
                seed: 1,
                randomize_all: false,
            },
        )
        .unwrap();
        assert!(w.layers[0]
            .layernorm_before
            .weight
            .f32s()
            .unwrap()
            .iter()
            .all(|&x| x == 1.0));
        assert!(w.pooler.bias.f32s().unwrap().iter().all(|&x| x == 0.0));
        assert!(w
            .embeddings
            .cls_token
            .f32s()
            .unwrap()
            .iter()
            .all(|&x| x == 0.0));
        let q = w.layers[1].attention.query.weight.f32s().unwrap();
        let mean = q.iter().sum::<f32>() / q.len() as f32;
        let sd = (q.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / q.len() as f32).sqrt();
        // N(0, initializer_range): 0.2 for the tiny preset (see ViltConfig::tiny).
        let want = cfg.initializer_range as f32;
        assert!(
            mean.abs() < 0.25 * want && (sd - want).abs() < 0.25 * want,
            "mean {mean} sd {sd}, want N(0, {want})"
        );
    }

    #[test]
    fn randomize_all_touches_every_term_and_seed_matters() {
        let cfg = ViltConfig::tiny();
        let opts = InitOptions {
            seed: 7,
            randomize_all: true,
        };
        let a = init_weights(&cfg, opts).unwrap();
        for (name, t) in a.named_tensors() {
            let v = t.f32s().unwrap();
            assert!(v.windows(2).any(|p| p[0] != p[1]), "{name} is constant");
        }
        let b = init_weights(&cfg, opts).unwrap();
        let c = init_weights(&cfg, InitOptions { seed: 8, ..opts }).unwrap();
        let get = |w: &ViltWeights| w.embeddings.position_embeddings.f32s().unwrap().to_vec();
        assert_eq!(get(&a), get(&b));
        assert_ne!(get(&a), get(&c));
    }
}
