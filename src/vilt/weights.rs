//! The backbone's parameters, pulled by their Hugging Face names from a model directory.
//!
//! One struct per HF module (the candle style), every weight a host f32 [`Tensor`] in HF's
//! layout: Linear weights are `[out, in]` (y = x·Wᵀ + b), the patch projection keeps its conv
//! shape `[d, 3, p, p]` (row-major, so `reshape([d, 3·p·p])` is the matmul form over patches
//! flattened in (channel, row, col) order).
//!
//! Accepted directories: `model.safetensors`, or `model.safetensors.index.json` plus its shards.
//! Keys may carry the `vilt.` prefix of `ViltForMaskedLM` / `ViltFor*` checkpoints (stripped);
//! heads (`mlm_score.*`, `classifier.*`, …) and buffers (`*.position_ids`, `*.token_type_ids`)
//! are skipped. F32, F16, BF16 and F64 tensors are converted to f32.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::vilt::config::ViltConfig;

/// File names of a Hugging Face model directory.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const TORCH_WEIGHTS_FILE: &str = "pytorch_model.bin";

/// `y = x·Wᵀ + b` with `weight [out, in]`, `bias [out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// LayerNorm over the last dimension; the epsilon is `ViltConfig::layer_norm_eps`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// BERT-style text embeddings (`embeddings.text_embeddings.*`).
#[derive(Clone, Debug)]
pub struct TextEmbeddings {
    /// `[vocab_size, d]`
    pub word_embeddings: Tensor,
    /// `[max_position_embeddings, d]`; stretch with [`crate::vilt::interp::stretch_text_positions`]
    /// when the text is longer.
    pub position_embeddings: Tensor,
    /// Segment table `[type_vocab_size, d]`.
    pub token_type_embeddings: Tensor,
    /// HF name `LayerNorm`.
    pub layer_norm: LayerNorm,
}

/// Patch projection (`embeddings.patch_embeddings.projection`), a conv with kernel = stride = p.
#[derive(Clone, Debug)]
pub struct PatchEmbeddings {
    /// `[d, num_channels, p, p]`
    pub weight: Tensor,
    /// `[d]`
    pub bias: Tensor,
}

/// `embeddings.*`: text side, patch side, image CLS, image positions and modality table.
#[derive(Clone, Debug)]
pub struct ViltEmbeddings {
    pub text: TextEmbeddings,
    pub patch: PatchEmbeddings,
    /// `[1, 1, d]`
    pub cls_token: Tensor,
    /// `[1, 1 + (S/p)^2, d]`: row 0 for the image CLS, then the (S/p)×(S/p) grid row-major;
    /// resize with [`crate::vilt::interp::resize_image_positions`].
    pub position_embeddings: Tensor,
    /// Modality table `[modality_type_vocab_size, d]` (0 text, 1 image).
    pub token_type_embeddings: Tensor,
}

/// `encoder.layer.N.attention.*`
#[derive(Clone, Debug)]
pub struct ViltAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    /// `attention.output.dense`
    pub output: Linear,
}

/// One pre-LN transformer block, `encoder.layer.N.*`.
#[derive(Clone, Debug)]
pub struct ViltLayer {
    pub attention: ViltAttention,
    /// `intermediate.dense`, `[intermediate_size, d]`
    pub intermediate: Linear,
    /// `output.dense`, `[d, intermediate_size]`
    pub output: Linear,
    pub layernorm_before: LayerNorm,
    pub layernorm_after: LayerNorm,
}

/// Every parameter of `ViltModel` (with its pooler).
#[derive(Clone, Debug)]
pub struct ViltWeights {
    pub embeddings: ViltEmbeddings,
    pub layers: Vec<ViltLayer>,
    /// Final LayerNorm (`layernorm`).
    pub layernorm: LayerNorm,
    /// `pooler.dense`; pooler_output = tanh(dense(last_hidden_state[:, 0])).
    pub pooler: Linear,
}

/// A dimension of a backbone tensor, resolved against a [`ViltConfig`].
#[derive(Clone, Copy, Debug)]
enum Dim {
    Hidden,
    Inner,
    Vocab,
    TextPositions,
    Segments,
    Modalities,
    Channels,
    Patch,
    /// The image CLS plus one row per patch of the grid.
    ImagePositions,
    One,
}

impl Dim {
    fn size(self, cfg: &ViltConfig) -> usize {
        match self {
            Dim::Hidden => cfg.hidden_size,
            Dim::Inner => cfg.intermediate_size,
            Dim::Vocab => cfg.vocab_size,
            Dim::TextPositions => cfg.max_position_embeddings,
            Dim::Segments => cfg.type_vocab_size,
            Dim::Modalities => cfg.modality_type_vocab_size,
            Dim::Channels => cfg.num_channels,
            Dim::Patch => cfg.patch_size,
            Dim::ImagePositions => 1 + cfg.num_patches(),
            Dim::One => 1,
        }
    }
}

/// Every backbone tensor's `ViltModel` name (no `vilt.` prefix) with its shape in symbols, in
/// module order, for `layers` encoder layers: the one place the Hugging Face names are
/// written. Loading ([`ViltWeights::from_tensors`]), saving ([`ViltWeights::named_tensors`])
/// and the expected shapes ([`expected_shapes`]) all follow it.
fn layout(layers: usize) -> Vec<(String, Vec<Dim>)> {
    use Dim::*;
    let mut v: Vec<(String, Vec<Dim>)> = Vec::new();
    let mut module = |name: String, shape: &[Dim]| v.push((name, shape.to_vec()));
    let te = "embeddings.text_embeddings";
    module(format!("{te}.word_embeddings.weight"), &[Vocab, Hidden]);
    module(
        format!("{te}.position_embeddings.weight"),
        &[TextPositions, Hidden],
    );
    module(
        format!("{te}.token_type_embeddings.weight"),
        &[Segments, Hidden],
    );
    module(format!("{te}.LayerNorm.weight"), &[Hidden]);
    module(format!("{te}.LayerNorm.bias"), &[Hidden]);
    let patch = "embeddings.patch_embeddings.projection";
    module(format!("{patch}.weight"), &[Hidden, Channels, Patch, Patch]);
    module(format!("{patch}.bias"), &[Hidden]);
    module("embeddings.cls_token".into(), &[One, One, Hidden]);
    module(
        "embeddings.position_embeddings".into(),
        &[One, ImagePositions, Hidden],
    );
    module(
        "embeddings.token_type_embeddings.weight".into(),
        &[Modalities, Hidden],
    );
    let linears: [(&str, [Dim; 2]); 6] = [
        ("attention.attention.query", [Hidden, Hidden]),
        ("attention.attention.key", [Hidden, Hidden]),
        ("attention.attention.value", [Hidden, Hidden]),
        ("attention.output.dense", [Hidden, Hidden]),
        ("intermediate.dense", [Inner, Hidden]),
        ("output.dense", [Hidden, Inner]),
    ];
    for l in 0..layers {
        let pre = format!("encoder.layer.{l}");
        for (name, [out, inp]) in linears {
            module(format!("{pre}.{name}.weight"), &[out, inp]);
            module(format!("{pre}.{name}.bias"), &[out]);
        }
        for ln in ["layernorm_before", "layernorm_after"] {
            module(format!("{pre}.{ln}.weight"), &[Hidden]);
            module(format!("{pre}.{ln}.bias"), &[Hidden]);
        }
    }
    module("layernorm.weight".into(), &[Hidden]);
    module("layernorm.bias".into(), &[Hidden]);
    module("pooler.dense.weight".into(), &[Hidden, Hidden]);
    module("pooler.dense.bias".into(), &[Hidden]);
    v
}

/// Every parameter name of `ViltModel` (no `vilt.` prefix) with the shape `cfg` implies, in
/// module order ([`layout`]).
pub fn expected_shapes(cfg: &ViltConfig) -> Vec<(String, Vec<usize>)> {
    layout(cfg.num_hidden_layers)
        .into_iter()
        .map(|(name, dims)| (name, dims.iter().map(|d| d.size(cfg)).collect()))
        .collect()
}

/// Every tensor of a [`ViltWeights`] in [`layout`] order, borrowed with `&` or `&mut`: the
/// one walk of the struct's fields, which loading and saving share.
macro_rules! in_layout_order {
    ($w:expr, $($r:tt)+) => {{
        let w = $w;
        let mut v = vec![
            $($r)+ w.embeddings.text.word_embeddings,
            $($r)+ w.embeddings.text.position_embeddings,
            $($r)+ w.embeddings.text.token_type_embeddings,
            $($r)+ w.embeddings.text.layer_norm.weight,
            $($r)+ w.embeddings.text.layer_norm.bias,
            $($r)+ w.embeddings.patch.weight,
            $($r)+ w.embeddings.patch.bias,
            $($r)+ w.embeddings.cls_token,
            $($r)+ w.embeddings.position_embeddings,
            $($r)+ w.embeddings.token_type_embeddings,
        ];
        for l in $($r)+ w.layers {
            v.extend([
                $($r)+ l.attention.query.weight,
                $($r)+ l.attention.query.bias,
                $($r)+ l.attention.key.weight,
                $($r)+ l.attention.key.bias,
                $($r)+ l.attention.value.weight,
                $($r)+ l.attention.value.bias,
                $($r)+ l.attention.output.weight,
                $($r)+ l.attention.output.bias,
                $($r)+ l.intermediate.weight,
                $($r)+ l.intermediate.bias,
                $($r)+ l.output.weight,
                $($r)+ l.output.bias,
                $($r)+ l.layernorm_before.weight,
                $($r)+ l.layernorm_before.bias,
                $($r)+ l.layernorm_after.weight,
                $($r)+ l.layernorm_after.bias,
            ]);
        }
        v.extend([
            $($r)+ w.layernorm.weight,
            $($r)+ w.layernorm.bias,
            $($r)+ w.pooler.weight,
            $($r)+ w.pooler.bias,
        ]);
        v
    }};
}

/// Maps a checkpoint key to the `ViltModel` name this engine loads, or `None` for keys that
/// belong to heads or are buffers.
fn backbone_name(key: &str) -> Option<&str> {
    let name = key.strip_prefix("vilt.").unwrap_or(key);
    let backbone = ["embeddings.", "encoder.", "layernorm.", "pooler."]
        .iter()
        .any(|p| name.starts_with(p));
    // position_ids / token_type_ids are index buffers older transformers saved; they carry no
    // parameters.
    let buffer = name.ends_with("position_ids") || name.ends_with(".token_type_ids");
    (backbone && !buffer).then_some(name)
}

/// Reads every backbone tensor of one safetensors file into `out` (names without `vilt.`).
fn read_safetensors_into(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    for (key, view) in st.iter() {
        let Some(name) = backbone_name(key) else {
            continue;
        };
        if out.contains_key(name) {
            return Err(Error::format(
                path,
                format!("tensor `{name}` appears twice (with and without the `vilt.` prefix, or in two shards)"),
            ));
        }
        let t = crate::st::view_to_tensor(&view, path, key)?;
        if t.dtype() != crate::tensor::DType::F32 {
            return Err(Error::format(
                path,
                format!("tensor `{key}` is an integer tensor; expected floating point weights"),
            ));
        }
        out.insert(name.to_string(), t);
    }
    Ok(())
}

/// The conversion a user needs when a directory only has PyTorch pickles. `clone()` because
/// the pickle's tied `mlm_score.decoder.weight` shares storage with the word embeddings, which
/// `save_file` refuses.
fn conversion_hint(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "this engine reads only safetensors; convert once with:\n  python -c \"import torch; from safetensors.torch import save_file; \
sd = torch.load('{d}/pytorch_model.bin', map_location='cpu', weights_only=True); \
save_file({{k: v.clone().contiguous() for k, v in sd.items()}}, '{d}/model.safetensors', metadata={{'format': 'pt'}})\""
    )
}

/// Reads every backbone tensor of a model directory (single file or sharded), by HF name
/// without the `vilt.` prefix, converted to f32. Shapes are not checked here.
pub fn read_dir_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(WEIGHTS_INDEX_FILE);
    let mut out = HashMap::new();
    if single.is_file() {
        read_safetensors_into(&single, &mut out)?;
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&index, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
        let mut shards = BTreeSet::new();
        for (key, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::format(&index, format!("weight_map[`{key}`] is not a file name"))
            })?;
            // A shard must sit in the directory: refuse paths that climb out of it.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(Error::format(
                    &index,
                    format!("shard `{file}` of `{key}` is not a plain file name"),
                ));
            }
            if backbone_name(key).is_some() {
                shards.insert(file.to_string());
            }
        }
        for file in shards {
            read_safetensors_into(&dir.join(file), &mut out)?;
        }
    } else if dir.join(TORCH_WEIGHTS_FILE).is_file()
        || dir.join("pytorch_model.bin.index.json").is_file()
    {
        return Err(Error::format(
            dir,
            format!(
                "no {WEIGHTS_FILE}, only PyTorch pickle weights; {}",
                conversion_hint(dir)
            ),
        ));
    } else if !dir.is_dir() {
        return Err(Error::format(dir, "model directory does not exist"));
    } else {
        return Err(Error::format(
            dir,
            format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in the model directory"),
        ));
    }
    Ok(out)
}

impl ViltWeights {
    /// Builds the weights from tensors keyed by `ViltModel` names (no `vilt.` prefix). Every
    /// expected tensor must be present with the shape `cfg` implies; a backbone tensor the
    /// config does not know (e.g. a 13th layer) is an error too, since it means the config and
    /// the weights disagree. `source` names the directory or file in errors.
    pub fn from_tensors(
        cfg: &ViltConfig,
        mut tensors: HashMap<String, Tensor>,
        source: &Path,
    ) -> Result<Self> {
        let expected = expected_shapes(cfg);
        for (name, shape) in &expected {
            match tensors.get(name) {
                None => {
                    return Err(Error::format(
                        source,
                        format!("missing tensor `{name}` (expected shape {shape:?})"),
                    ))
                }
                Some(t) if t.shape() != shape.as_slice() => {
                    return Err(Error::format(
                        source,
                        format!(
                            "tensor `{name}` has shape {:?}, expected {shape:?} from config.json \
                             (hidden_size {}, intermediate_size {}, vocab_size {}, \
                             max_position_embeddings {}, image_size {}, patch_size {})",
                            t.shape(),
                            cfg.hidden_size,
                            cfg.intermediate_size,
                            cfg.vocab_size,
                            cfg.max_position_embeddings,
                            cfg.image_size,
                            cfg.patch_size
                        ),
                    ))
                }
                Some(t) if !t.is_cpu() || t.f32s().is_err() => {
                    return Err(Error::format(
                        source,
                        format!("tensor `{name}` must be a host f32 tensor"),
                    ))
                }
                Some(_) => {}
            }
        }
        let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(Error::format(
                source,
                format!(
                    "unexpected backbone tensor `{}` ({} in all) that config.json \
                     (num_hidden_layers {}) does not describe",
                    extra[0],
                    extra.len(),
                    cfg.num_hidden_layers
                ),
            ));
        }
        let mut w = ViltWeights::unfilled(cfg.num_hidden_layers)?;
        for (slot, (name, _)) in in_layout_order!(&mut w, &mut).into_iter().zip(&expected) {
            *slot = tensors
                .remove(name)
                .ok_or_else(|| Error::format(source, format!("missing tensor `{name}`")))?;
        }
        Ok(w)
    }

    /// The struct of `layers` encoder layers with every tensor empty, for
    /// [`ViltWeights::from_tensors`] to fill in [`layout`] order.
    fn unfilled(layers: usize) -> Result<ViltWeights> {
        let t = Tensor::from_f32(Vec::new(), &[0])?;
        let linear = || Linear {
            weight: t.clone(),
            bias: t.clone(),
        };
        let norm = || LayerNorm {
            weight: t.clone(),
            bias: t.clone(),
        };
        Ok(ViltWeights {
            embeddings: ViltEmbeddings {
                text: TextEmbeddings {
                    word_embeddings: t.clone(),
                    position_embeddings: t.clone(),
                    token_type_embeddings: t.clone(),
                    layer_norm: norm(),
                },
                patch: PatchEmbeddings {
                    weight: t.clone(),
                    bias: t.clone(),
                },
                cls_token: t.clone(),
                position_embeddings: t.clone(),
                token_type_embeddings: t.clone(),
            },
            layers: (0..layers)
                .map(|_| ViltLayer {
                    attention: ViltAttention {
                        query: linear(),
                        key: linear(),
                        value: linear(),
                        output: linear(),
                    },
                    intermediate: linear(),
                    output: linear(),
                    layernorm_before: norm(),
                    layernorm_after: norm(),
                })
                .collect(),
            layernorm: norm(),
            pooler: linear(),
        })
    }

    /// Loads the weights of a model directory whose config is `cfg` (see the module doc for
    /// the accepted layouts).
    pub fn load_dir(dir: &Path, cfg: &ViltConfig) -> Result<Self> {
        let tensors = read_dir_tensors(dir)?;
        // Errors name the weights file when there is one; shards share the directory.
        let single = dir.join(WEIGHTS_FILE);
        let source = if single.is_file() { &single } else { dir };
        Self::from_tensors(cfg, tensors, source)
    }

    /// Every tensor with its `ViltModel` name, in module order (the order of
    /// [`expected_shapes`]).
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        layout(self.layers.len())
            .into_iter()
            .map(|(name, _)| name)
            .zip(in_layout_order!(self, &))
            .collect()
    }

    /// Writes the weights as an f32 safetensors file with `ViltModel` names (loadable by
    /// `ViltModel.from_pretrained`), atomically: a temporary file renamed into place.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let mut views: BTreeMap<String, safetensors::tensor::TensorView<'_>> = BTreeMap::new();
        for (name, t) in self.named_tensors() {
            let data = t.f32s()?;
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                t.shape().to_vec(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
            views.insert(name, view);
        }
        // transformers checks this metadata key before loading a safetensors checkpoint.
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::format(path, format!("serialising safetensors: {e}")))?;
        crate::st::write_atomic(path, &bytes)
    }
}

/// Loads `config.json` and the weights of a Hugging Face ViLT model directory.
pub fn load_model_dir(dir: &Path) -> Result<(ViltConfig, ViltWeights)> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(Error::format(
            dir,
            format!("no {CONFIG_FILE}: not a Hugging Face model directory"),
        ));
    }
    let cfg = ViltConfig::from_file(&cfg_path)?;
    let w = ViltWeights::load_dir(dir, &cfg)?;
    Ok((cfg, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbone_names_strip_prefix_and_skip_heads() {
        assert_eq!(
            backbone_name("vilt.encoder.layer.0.output.dense.bias"),
            Some("encoder.layer.0.output.dense.bias")
        );
        assert_eq!(backbone_name("layernorm.weight"), Some("layernorm.weight"));
        assert_eq!(backbone_name("mlm_score.decoder.weight"), None);
        assert_eq!(backbone_name("classifier.0.weight"), None);
        assert_eq!(
            backbone_name("vilt.embeddings.text_embeddings.position_ids"),
            None
        );
    }

    #[test]
    fn expected_count_matches_b32() {
        // 10 embedding tensors + 16 per layer + 4 (final LN, pooler).
        assert_eq!(expected_shapes(&ViltConfig::base()).len(), 10 + 16 * 12 + 4);
    }
}
