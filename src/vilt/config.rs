//! `ViltConfig`: the backbone's hyper-parameters, read from a Hugging Face `config.json`.
//!
//! Field names are those of transformers' `ViltConfig`; a field missing from the file takes the
//! ViLT-B/32 value (`dandelin/vilt-b32-mlm`), which is also transformers' default. Fields this
//! engine does not use (dropout, `architectures`, `id2label`, …) are ignored on load.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// Hyper-parameters of a ViLT backbone, as in transformers' `ViltConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViltConfig {
    pub vocab_size: usize,
    /// Text segment vocabulary (`token_type_ids`).
    pub type_vocab_size: usize,
    /// Modality vocabulary: 0 text, 1 image (2 for a second image in NLVR2).
    pub modality_type_vocab_size: usize,
    /// Rows of the text position table (40 for ViLT).
    pub max_position_embeddings: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Only `"gelu"` (exact erf GELU) is supported.
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// Standard deviation of the Hugging Face initialisation (`_init_weights`).
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    /// Side of the square pre-training image (the image position table covers
    /// `(image_size / patch_size)^2` patches). HF also accepts `[h, w]`; only square is
    /// meaningful for ViLT, whose position grid is square.
    #[serde(deserialize_with = "square_size")]
    pub image_size: usize,
    #[serde(deserialize_with = "square_size")]
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    /// Patches kept per image; −1 keeps every valid patch.
    pub max_image_length: i64,
    pub num_images: i64,
    /// Always `"vilt"`; written so that transformers' `AutoConfig` recognises the directory.
    pub model_type: String,
}

impl Default for ViltConfig {
    /// ViLT-B/32 (`dandelin/vilt-b32-mlm`), the defaults of docs/vilt.md#model-directory.
    fn default() -> Self {
        ViltConfig {
            vocab_size: 30522,
            type_vocab_size: 2,
            modality_type_vocab_size: 2,
            max_position_embeddings: 40,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            image_size: 384,
            patch_size: 32,
            num_channels: 3,
            qkv_bias: true,
            max_image_length: -1,
            num_images: -1,
            model_type: "vilt".into(),
        }
    }
}

/// Accepts `384` or `[384, 384]`; a non-square size is rejected because ViLT's image position
/// table is a square grid.
fn square_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(usize),
        Two([usize; 2]),
    }
    match Size::deserialize(d)? {
        Size::One(s) => Ok(s),
        Size::Two([h, w]) if h == w => Ok(h),
        Size::Two([h, w]) => Err(serde::de::Error::custom(format!(
            "non-square size [{h}, {w}] is not supported (ViLT's position grid is square)"
        ))),
    }
}

impl ViltConfig {
    /// The ViLT-B/32 configuration.
    pub fn base() -> Self {
        Self::default()
    }

    /// A tiny model for CPU tests and smoke training: hidden 32, 2 layers, 2 heads,
    /// 96×96 images in 32-pixel patches (9 patches), the full BERT vocabulary. Its weights are
    /// drawn 10× wider than B/32's (σ = 0.2): at width 32 the usual 0.02 leaves every linear
    /// near zero, so a random tiny backbone would average its tokens into features that barely
    /// tell samples apart, and nothing built on it could be seen to learn.
    pub fn tiny() -> Self {
        ViltConfig {
            initializer_range: 0.2,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 64,
            image_size: 96,
            patch_size: 32,
            ..Self::default()
        }
    }

    /// Parses a `config.json` text and validates it; `path` only names the source in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let cfg: ViltConfig = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not a valid ViltConfig: {e}")))?;
        cfg.validate()
            .map_err(|msg| Error::format(path, format!("invalid ViltConfig: {msg}")))?;
        Ok(cfg)
    }

    /// Reads and validates a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Checks that the hyper-parameters describe a model this engine can run; the message says
    /// which field is wrong and what it must be.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("type_vocab_size", self.type_vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive, got 0"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.modality_type_vocab_size < 2 {
            return Err(format!(
                "modality_type_vocab_size must be at least 2 (text and image), got {}",
                self.modality_type_vocab_size
            ));
        }
        if self.num_channels != 3 {
            return Err(format!(
                "num_channels must be 3 (RGB images), got {}",
                self.num_channels
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act must be \"gelu\" (exact erf GELU), got {:?}",
                self.hidden_act
            ));
        }
        if !self.qkv_bias {
            return Err("qkv_bias must be true (query/key/value projections with bias)".into());
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(format!(
                "layer_norm_eps must be a positive number, got {}",
                self.layer_norm_eps
            ));
        }
        if self.max_image_length == 0 {
            return Err("max_image_length must be positive or -1 (keep every patch), got 0".into());
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Side of the pre-training patch grid, `image_size / patch_size`.
    pub fn patch_grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patches of a pre-training image, `(image_size / patch_size)^2`.
    pub fn num_patches(&self) -> usize {
        self.patch_grid() * self.patch_grid()
    }

    /// Pretty JSON as written into a model directory's `config.json`.
    pub fn to_json_string(&self) -> String {
        let mut v = serde_json::to_value(self).expect("ViltConfig is plain data");
        // transformers reads `architectures` to pick the class; the weights we write carry
        // `ViltModel` names (no `vilt.` prefix, no heads).
        v["architectures"] = serde_json::json!(["ViltModel"]);
        serde_json::to_string_pretty(&v).expect("a JSON value serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_b32_defaults() {
        let cfg = ViltConfig::from_json_str(
            r#"{"hidden_size": 64, "num_attention_heads": 4}"#,
            Path::new("c.json"),
        )
        .unwrap();
        assert_eq!(cfg.hidden_size, 64);
        assert_eq!(cfg.num_hidden_layers, 12);
        assert_eq!(cfg.max_position_embeddings, 40);
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert_eq!(cfg.num_patches(), 144);
    }

    #[test]
    fn rejects_bad_heads_and_names_the_file() {
        let err = ViltConfig::from_json_str(
            r#"{"hidden_size": 30, "num_attention_heads": 4}"#,
            Path::new("dir/config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dir/config.json"), "{err}");
        assert!(
            err.contains("not a multiple of num_attention_heads 4"),
            "{err}"
        );
    }

    #[test]
    fn image_size_list_and_unknown_fields() {
        let cfg = ViltConfig::from_json_str(
            r#"{"image_size": [384, 384], "architectures": ["ViltForMaskedLM"], "id2label": {}}"#,
            Path::new("c.json"),
        )
        .unwrap();
        assert_eq!(cfg.image_size, 384);
        let err = ViltConfig::from_json_str(r#"{"image_size": [384, 320]}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("non-square"), "{err}");
        let err = ViltConfig::from_json_str(r#"{"hidden_act": "gelu_new"}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_act"), "{err}");
    }

    #[test]
    fn json_round_trip() {
        let cfg = ViltConfig::tiny();
        let back = ViltConfig::from_json_str(&cfg.to_json_string(), Path::new("c.json")).unwrap();
        assert_eq!(cfg, back);
        assert!(cfg.to_json_string().contains("\"model_type\": \"vilt\""));
    }
}
