//! `delo forward` on raw images and texts: the items go through the training pre-processing
//! (the loader with ViLT's image processor and tokenizer; a missing image becomes a white
//! image and a missing text the empty string, as in training), then through the frozen ViLT.
//! The pre-processed tensors can be written under Hugging Face's names, to compare them with
//! `ViltProcessor` or to run `delo forward --inputs` on them.

use std::path::Path;
use std::sync::Arc;

use crate::backend::Device;
use crate::data::image::ImageProcessor;
use crate::data::tokenizer::BertTokenizer;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use crate::train::inputs::{self, NewItem};
use crate::train::prep::ViltPrep;
use crate::vilt::{load_model_dir, Vilt, ViltConfig, ViltInputs};

/// How raw items are pre-processed.
#[derive(Clone, Debug, PartialEq)]
pub struct RawPrep {
    /// Forced square image size; `None`: ViLT's shortest-edge resize (`ViltProcessor`'s
    /// default).
    pub image_size: Option<u32>,
    /// Texts are truncated to this many tokens; 0: the model's text position table
    /// (`max_position_embeddings`, 40 for ViLT), as `ViltProcessor` truncates.
    pub max_text_len: usize,
}

/// The items' model inputs, as one batch padded like a training batch (texts to the longest,
/// images to the largest), with the tokenizer of `model_dir`.
pub fn preprocess(
    model_dir: &Path,
    cfg: &ViltConfig,
    items: &[NewItem],
    opts: &RawPrep,
) -> Result<ViltInputs> {
    let prep = Arc::new(ViltPrep {
        tokenizer: Arc::new(BertTokenizer::from_model_dir(model_dir)?),
        images: ImageProcessor::with_image_size(opts.image_size),
        max_text_len: text_tokens(cfg, opts.max_text_len),
        text_bucket: 1,
    });
    let loader = inputs::loader(items, prep, items.len().max(1), 0)?;
    let mut batches = loader.epoch(0);
    let batch = batches
        .next()
        .ok_or_else(|| Error::Msg("no item to pre-process".into()))??;
    Ok(batch.data)
}

/// Tokens a text may have: `max_text_len`, or the model's position table when that is 0.
fn text_tokens(cfg: &ViltConfig, max_text_len: usize) -> usize {
    match max_text_len {
        0 => cfg.max_position_embeddings,
        n => n,
    }
}

/// The inputs under Hugging Face's names (`pixel_values` f32 `[B, 3, H, W]`, `pixel_mask`,
/// `input_ids`, `attention_mask`, `token_type_ids` i32 `[B, H, W]` / `[B, T]`), the tensors
/// `ViltProcessor` returns; `token_type_ids` are zeros, a single text segment.
pub fn hf_tensors(inputs: &ViltInputs) -> Result<Vec<(String, Tensor)>> {
    let ids = &inputs.input_ids;
    let token_types = match &inputs.token_type_ids {
        Some(t) => t.clone(),
        None => Tensor::from_i32(vec![0; ids.numel()], ids.shape())?,
    };
    Ok(vec![
        ("pixel_values".into(), inputs.pixel_values.values()?.clone()),
        ("pixel_mask".into(), inputs.pixel_mask.clone()),
        ("input_ids".into(), ids.clone()),
        ("attention_mask".into(), inputs.attention_mask.clone()),
        ("token_type_ids".into(), token_types),
    ])
}

/// `delo forward` from raw items: pre-processes them ([`preprocess`]), optionally writes the
/// inputs to `dump_inputs` ([`hf_tensors`]), runs the frozen model of `model_dir` and writes
/// `last_hidden_state` `[B, S, d]` and `pooler_output` `[B, d]` to `output`, as
/// `delo forward --inputs` does.
pub fn forward_raw(
    model_dir: &Path,
    items: &[NewItem],
    opts: &RawPrep,
    output: &Path,
    dump_inputs: Option<&Path>,
    device: &Device,
    linear_dtype: DType,
) -> Result<()> {
    let (cfg, weights) = load_model_dir(model_dir)?;
    let inputs = preprocess(model_dir, &cfg, items, opts)?;
    if let Some(path) = dump_inputs {
        crate::st::write_file(path, &hf_tensors(&inputs)?, None)?;
    }
    let model = Vilt::new(cfg, weights, device, opts.max_text_len, linear_dtype)?;
    model.infer(&inputs)?.write(output)
}
