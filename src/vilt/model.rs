//! The frozen ViLT forward (VILT.md §Forward 8–9) on the tape, with a hook at every layer
//! input and at every adaptable linear, through which DeLo adds its experts.

use crate::autograd::{Tape, Var};
use crate::backend::Device;
use crate::error::Result;
use crate::tensor::{DType, Tensor};
use crate::vilt::embed::{Embedded, EmbeddingTables, ViltInputs};
use crate::vilt::{stretch_text_positions, LayerNorm, Linear, Target, ViltConfig, ViltWeights};

/// What the encoder lets an adapter see and change.
pub trait Adapter {
    /// Called with the residual stream `X_l` at the input of layer `l`, before any linear.
    fn layer_input(&mut self, tape: &mut Tape, layer: usize, x: Var, emb: &Embedded) -> Result<()>;
    /// An update to add to the output of the frozen linear `target` of layer `l`, given that
    /// linear's input; `None` leaves the linear as it is.
    fn adapt(
        &mut self,
        tape: &mut Tape,
        layer: usize,
        target: Target,
        input: Var,
    ) -> Result<Option<Var>>;
}

/// The frozen backbone alone.
pub struct NoAdapter;

impl Adapter for NoAdapter {
    fn layer_input(&mut self, _: &mut Tape, _: usize, _: Var, _: &Embedded) -> Result<()> {
        Ok(())
    }
    fn adapt(&mut self, _: &mut Tape, _: usize, _: Target, _: Var) -> Result<Option<Var>> {
        Ok(None)
    }
}

/// A frozen ViLT on one device. Linear weights may be kept in bf16 (GPU mixed precision);
/// everything else stays f32.
pub struct Vilt {
    pub cfg: ViltConfig,
    pub device: Device,
    tables: EmbeddingTables,
    layers: Vec<crate::vilt::ViltLayer>,
    final_ln: LayerNorm,
    pooler: Linear,
}

/// Outputs of a forward: the final hidden states `[B, S, d]` and the pooled text CLS `[B, d]`.
pub struct ViltOutput {
    pub last_hidden_state: Var,
    pub pooled: Var,
    pub embedded: Embedded,
}

impl Vilt {
    /// Moves `weights` to `device`, stretching the text position table to `max_text_len` rows
    /// when that is longer than the table. `linear_dtype` is F32 or BF16.
    pub fn new(
        cfg: ViltConfig,
        weights: ViltWeights,
        device: &Device,
        max_text_len: usize,
        linear_dtype: DType,
    ) -> Result<Vilt> {
        let be = device.backend();
        let up = |t: &Tensor| t.to_device(device);
        let lin = |l: &Linear| -> Result<Linear> {
            let w = up(&l.weight)?;
            Ok(Linear {
                weight: if linear_dtype == DType::F32 {
                    w
                } else {
                    be.cast(&w, linear_dtype)?
                },
                bias: up(&l.bias)?,
            })
        };
        let ln = |l: &LayerNorm| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: up(&l.weight)?,
                bias: up(&l.bias)?,
            })
        };
        let e = &weights.embeddings;
        let (p_rows, d) = (cfg.max_position_embeddings, cfg.hidden_size);
        let text_pos = if max_text_len > p_rows {
            let v = stretch_text_positions(
                e.text.position_embeddings.f32s()?,
                p_rows,
                d,
                max_text_len,
            )?;
            Tensor::from_f32(v, &[max_text_len, d])?
        } else {
            e.text.position_embeddings.clone()
        };
        let pw = &e.patch.weight;
        let tables = EmbeddingTables {
            word: up(&e.text.word_embeddings)?,
            text_pos: up(&text_pos)?,
            segment: up(&e.text.token_type_embeddings)?,
            ln_w: up(&e.text.layer_norm.weight)?,
            ln_b: up(&e.text.layer_norm.bias)?,
            patch_w: up(&pw.reshape(&[pw.dim(0), pw.numel() / pw.dim(0)])?)?,
            patch_b: up(&e.patch.bias)?,
            image_pos: e.position_embeddings.to_vec_f32()?,
            cls: e.cls_token.to_vec_f32()?,
            modality: e.token_type_embeddings.to_vec_f32()?,
        };
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(crate::vilt::ViltLayer {
                    attention: crate::vilt::ViltAttention {
                        query: lin(&l.attention.query)?,
                        key: lin(&l.attention.key)?,
                        value: lin(&l.attention.value)?,
                        output: lin(&l.attention.output)?,
                    },
                    intermediate: lin(&l.intermediate)?,
                    output: lin(&l.output)?,
                    layernorm_before: ln(&l.layernorm_before)?,
                    layernorm_after: ln(&l.layernorm_after)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Vilt {
            final_ln: ln(&weights.layernorm)?,
            pooler: lin(&weights.pooler)?,
            cfg,
            device: device.clone(),
            tables,
            layers,
        })
    }

    pub fn embed(&self, inputs: &ViltInputs) -> Result<Embedded> {
        self.tables.embed(self.device.backend(), &self.cfg, inputs)
    }

    /// A frozen linear plus whatever the adapter adds to it.
    fn linear(
        &self,
        tape: &mut Tape,
        ad: &mut dyn Adapter,
        layer: usize,
        target: Target,
        x: Var,
        l: &Linear,
    ) -> Result<Var> {
        let y = tape.linear(x, &l.weight, Some(&l.bias))?;
        match ad.adapt(tape, layer, target, x)? {
            Some(delta) => tape.add(y, delta),
            None => Ok(y),
        }
    }

    /// The encoder, final LayerNorm and pooler over an embedded batch.
    pub fn encode(
        &self,
        tape: &mut Tape,
        emb: Embedded,
        ad: &mut dyn Adapter,
    ) -> Result<ViltOutput> {
        let eps = self.cfg.layer_norm_eps as f32;
        let heads = self.cfg.num_attention_heads;
        let mut x = tape.constant(emb.x.clone());
        for (li, l) in self.layers.iter().enumerate() {
            ad.layer_input(tape, li, x, &emb)?;
            let h = tape.layernorm(x, &l.layernorm_before.weight, &l.layernorm_before.bias, eps)?;
            let a = &l.attention;
            let q = self.linear(tape, ad, li, Target::Q, h, &a.query)?;
            let k = self.linear(tape, ad, li, Target::K, h, &a.key)?;
            let v = self.linear(tape, ad, li, Target::V, h, &a.value)?;
            let ctx = tape.attention(q, k, v, &emb.mask, heads)?;
            let o = self.linear(tape, ad, li, Target::O, ctx, &a.output)?;
            x = tape.add(x, o)?;
            let h = tape.layernorm(x, &l.layernorm_after.weight, &l.layernorm_after.bias, eps)?;
            let f = self.linear(tape, ad, li, Target::Fc1, h, &l.intermediate)?;
            let f = tape.gelu(f)?;
            let f = self.linear(tape, ad, li, Target::Fc2, f, &l.output)?;
            x = tape.add(x, f)?;
        }
        let last = tape.layernorm(x, &self.final_ln.weight, &self.final_ln.bias, eps)?;
        let (b, s, d) = {
            let v = tape.value(last);
            (v.dim(0), v.dim(1), v.dim(2))
        };
        let rows = tape.reshape(last, &[b * s, d])?;
        let cls_idx = Tensor::from_i32((0..b).map(|i| (i * s) as i32).collect(), &[b])?
            .to_device(&self.device)?;
        let cls = tape.gather_rows(rows, &cls_idx)?;
        let pooled = tape.linear(cls, &self.pooler.weight, Some(&self.pooler.bias))?;
        let pooled = tape.tanh(pooled)?;
        Ok(ViltOutput {
            last_hidden_state: last,
            pooled,
            embedded: emb,
        })
    }

    /// Embeds and encodes a batch.
    pub fn forward(
        &self,
        tape: &mut Tape,
        inputs: &ViltInputs,
        ad: &mut dyn Adapter,
    ) -> Result<ViltOutput> {
        let emb = self.embed(inputs)?;
        self.encode(tape, emb, ad)
    }
}

/// `delo forward`: reads HF-named inputs from a safetensors file, runs the frozen model and
/// writes `last_hidden_state` and `pooler_output` beside them in `output`.
pub fn forward_file(
    model_dir: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    max_text_len: usize,
    device: &Device,
    linear_dtype: DType,
) -> Result<()> {
    let t = crate::st::read_file(input)?;
    let get = |name: &str| {
        t.get(name).cloned().ok_or_else(|| crate::Error::format(input, format!("missing tensor `{name}` (expected pixel_values, pixel_mask, input_ids, attention_mask, optional token_type_ids)")))
    };
    let inputs = ViltInputs {
        input_ids: get("input_ids")?,
        attention_mask: get("attention_mask")?,
        token_type_ids: t.get("token_type_ids").cloned(),
        pixel_values: get("pixel_values")?,
        pixel_mask: get("pixel_mask")?,
    };
    for (name, want) in [("input_ids", DType::I32), ("pixel_values", DType::F32)] {
        let have = t[name].dtype();
        if have != want {
            return Err(crate::Error::format(
                input,
                format!(
                    "tensor `{name}` has dtype {have:?}; expected {}",
                    if want == DType::I32 {
                        "an integer type"
                    } else {
                        "a float type"
                    }
                ),
            ));
        }
    }
    let (cfg, weights) = crate::vilt::load_model_dir(model_dir)?;
    let model = Vilt::new(cfg, weights, device, max_text_len, linear_dtype)?;
    let mut tape = Tape::new(device.clone());
    let out = model.forward(&mut tape, &inputs, &mut NoAdapter)?;
    crate::st::write_file(
        output,
        &[
            (
                "last_hidden_state".into(),
                tape.value(out.last_hidden_state).clone(),
            ),
            ("pooler_output".into(), tape.value(out.pooled).clone()),
        ],
        None,
    )
}
