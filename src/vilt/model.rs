//! The frozen ViLT forward (docs/vilt.md#encoder-blocks and #output-and-pooler) on the tape, with a
//! hook at every layer input and at every adaptable linear, through which DeLo adds its experts.

use std::sync::{Arc, Mutex, PoisonError};

use crate::autograd::{LinearOut, PendingLayerNorm, Tape, Var};
use crate::backend::{Device, Unary};
use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::{DType, Tensor};
use crate::vilt::embed::{Embedded, EmbeddingTables, ViltInputs};
use crate::vilt::{stretch_text_positions, LayerNorm, Linear, Target, ViltConfig, ViltWeights};

/// What the encoder lets an adapter see and change.
pub trait Adapter {
    /// Called with the residual stream `X_l` at the input of layer `l`, before any linear.
    fn layer_input(&mut self, tape: &mut Tape, layer: usize, x: Var, emb: &Embedded) -> Result<()>;
    /// The updates to add to the output of the frozen linear `target` of layer `l`, given
    /// that linear's input, each of the output's shape (DeLo: one per modality pool); none
    /// leaves the linear as it is. They are added in order, summed first.
    fn adapt(
        &mut self,
        tape: &mut Tape,
        layer: usize,
        target: Target,
        input: Var,
    ) -> Result<Vec<Var>>;
    /// Whether the linears `targets` of layer `l`, which read the same input, take their
    /// updates from one [`Adapter::adapt_together`] (called after the linears are recorded)
    /// instead of one [`Adapter::adapt`] each (called after each linear).
    fn adapts_together(&self, _tape: &Tape, _layer: usize, _targets: &[Target]) -> bool {
        false
    }
    /// The updates of each of `targets` (one list per target, as [`Adapter::adapt`] gives
    /// them) for their shared `input`.
    fn adapt_together(
        &mut self,
        tape: &mut Tape,
        layer: usize,
        targets: &[Target],
        input: Var,
    ) -> Result<Vec<Vec<Var>>> {
        targets
            .iter()
            .map(|&t| self.adapt(tape, layer, t, input))
            .collect()
    }
}

/// The frozen backbone alone.
pub struct NoAdapter;

impl Adapter for NoAdapter {
    fn layer_input(&mut self, _: &mut Tape, _: usize, _: Var, _: &Embedded) -> Result<()> {
        Ok(())
    }
    fn adapt(&mut self, _: &mut Tape, _: usize, _: Target, _: Var) -> Result<Vec<Var>> {
        Ok(Vec::new())
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

/// Outputs of [`Vilt::infer`]: the final hidden states `[B, S, d]` and the pooled text CLS
/// `[B, d]`.
pub struct Features {
    pub last_hidden_state: Tensor,
    pub pooled: Tensor,
}

impl Features {
    /// Writes `last_hidden_state` and `pooler_output` (Hugging Face's names) to a safetensors
    /// file.
    pub fn write(self, output: &std::path::Path) -> Result<()> {
        crate::st::write_file(
            output,
            &[
                ("last_hidden_state".into(), self.last_hidden_state),
                ("pooler_output".into(), self.pooled),
            ],
            None,
        )
    }
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

    /// A frozen linear plus whatever the adapter adds to it (bias and updates in one node).
    fn linear(
        &self,
        tape: &mut Tape,
        ad: &mut dyn Adapter,
        layer: usize,
        target: Target,
        x: Var,
        l: &Linear,
    ) -> Result<Var> {
        let y = self.linear_for_fusion(tape, ad, layer, target, x, l)?;
        tape.add_parts(y, &[])
    }

    /// A frozen linear whose bias is left to the fused op that reads it; with adapter updates,
    /// they are added (with the bias) first.
    fn linear_for_fusion(
        &self,
        tape: &mut Tape,
        ad: &mut dyn Adapter,
        layer: usize,
        target: Target,
        x: Var,
        l: &Linear,
    ) -> Result<LinearOut> {
        let y = tape.linear_deferred(x, &l.weight, &l.bias)?;
        let parts = ad.adapt(tape, layer, target, x)?;
        if parts.is_empty() {
            return Ok(y);
        }
        Ok(LinearOut::biased(tape.add_parts(y, &parts)?))
    }

    /// Linears of one layer that read the same input `x`, each plus its adapter updates and
    /// bias; the adapter may compute the updates of all of them at once
    /// ([`Adapter::adapts_together`]).
    fn linears_sharing_input<const N: usize>(
        &self,
        tape: &mut Tape,
        ad: &mut dyn Adapter,
        layer: usize,
        x: Var,
        lins: [(Target, &Linear); N],
    ) -> Result<[Var; N]> {
        let targets = lins.map(|(t, _)| t);
        let outs = if ad.adapts_together(tape, layer, &targets) {
            let ys = lins
                .iter()
                .map(|(_, l)| tape.linear_deferred(x, &l.weight, &l.bias))
                .collect::<Result<Vec<_>>>()?;
            let parts = ad.adapt_together(tape, layer, &targets, x)?;
            ensure_shape!(
                parts.len() == N,
                "adapt_together",
                "{} update lists for {N} linears",
                parts.len()
            );
            ys.into_iter()
                .zip(parts)
                .map(|(y, p)| tape.add_parts(y, &p))
                .collect::<Result<Vec<_>>>()?
        } else {
            lins.iter()
                .map(|(t, l)| self.linear(tape, ad, layer, *t, x, l))
                .collect::<Result<Vec<_>>>()?
        };
        outs.try_into()
            .map_err(|_| crate::error::Error::Msg("linears_sharing_input: count".into()))
    }

    /// The encoder, final LayerNorm and pooler over an embedded batch. Each sublayer's output
    /// bias, residual add and the LayerNorm after it are one fused node
    /// ([`Tape::add_layernorm`]), as are the MLP's first bias and GELU.
    pub fn encode(
        &self,
        tape: &mut Tape,
        emb: Embedded,
        ad: &mut dyn Adapter,
    ) -> Result<ViltOutput> {
        let eps = self.cfg.layer_norm_eps as f32;
        let heads = self.cfg.num_attention_heads;
        let mut x = tape.constant(emb.x.clone());
        let mut pending: Option<PendingLayerNorm> = None;
        let mut h = None;
        for (li, l) in self.layers.iter().enumerate() {
            ad.layer_input(tape, li, x, &emb)?;
            let hb = match pending.take() {
                Some(ln) => tape.record_layernorm(x, ln),
                None => {
                    let ln = &l.layernorm_before;
                    tape.layernorm(x, &ln.weight, &ln.bias, eps)?
                }
            };
            let a = &l.attention;
            let qkv = [
                (Target::Q, &a.query),
                (Target::K, &a.key),
                (Target::V, &a.value),
            ];
            let [q, k, v] = self.linears_sharing_input(tape, ad, li, hb, qkv)?;
            let ctx = tape.attention(q, k, v, &emb.mask, heads)?;
            let o = self.linear_for_fusion(tape, ad, li, Target::O, ctx, &a.output)?;
            let ln = &l.layernorm_after;
            let (x_mid, ln_after) = tape.add_layernorm(x, o, &ln.weight, &ln.bias, eps)?;
            let ha = tape.record_layernorm(x_mid, ln_after);
            let f = self.linear_for_fusion(tape, ad, li, Target::Fc1, ha, &l.intermediate)?;
            let f = tape.bias_gelu(f)?;
            let f = self.linear_for_fusion(tape, ad, li, Target::Fc2, f, &l.output)?;
            let next = self
                .layers
                .get(li + 1)
                .map(|n| &n.layernorm_before)
                .unwrap_or(&self.final_ln);
            let (x_out, ln_next) = tape.add_layernorm(x_mid, f, &next.weight, &next.bias, eps)?;
            x = x_out;
            if li + 1 == self.layers.len() {
                h = Some(tape.record_layernorm(x, ln_next));
            } else {
                pending = Some(ln_next);
            }
        }
        let last = match h {
            Some(h) => h,
            None => tape.layernorm(x, &self.final_ln.weight, &self.final_ln.bias, eps)?,
        };
        let (b, s, d) = {
            let v = tape.value(last);
            (v.dim(0), v.dim(1), v.dim(2))
        };
        let rows = tape.reshape(last, &[b * s, d])?;
        let cls_idx = Tensor::from_i32((0..b).map(|i| (i * s) as i32).collect(), &[b])?
            .to_device(&self.device)?;
        let cls = tape.gather_rows(rows, &cls_idx)?;
        let pooled = tape.linear(cls, &self.pooler.weight, Some(&self.pooler.bias))?;
        let pooled = tape.unary(Unary::Tanh, pooled)?;
        Ok(ViltOutput {
            last_hidden_state: last,
            pooled,
            embedded: emb,
        })
    }

    /// The frozen forward of a batch for inference (no adapter, nothing to differentiate),
    /// as plain tensors. On the CPU with several rayon threads the samples are shared out
    /// instead of each operation: see [`Vilt::infer_in_chunks`].
    pub fn infer(&self, inputs: &ViltInputs) -> Result<Features> {
        self.infer_in_chunks(inputs, rayon::current_num_threads())
    }

    /// [`Vilt::infer`] with the batch cut into at most `chunks` runs of consecutive samples,
    /// each encoded whole by one thread whose rayon calls run serially. On two cores a
    /// single-threaded GEMM runs near the core's peak while the gemm crate's two-thread
    /// split of one product loses 15–30% to MKL's, and every small op (LayerNorm, GELU,
    /// softmax) stops paying a fork-join per call. Samples do not interact in the encoder, so
    /// the result is that of the whole batch: the sequence length and masks come from one
    /// embedding of the whole batch, and only the GEMMs' blocking over fewer rows may
    /// reorder their sums. The GPU, a single sample or `chunks` ≤ 1 take the ordinary path.
    pub fn infer_in_chunks(&self, inputs: &ViltInputs, chunks: usize) -> Result<Features> {
        let emb = self.embed(inputs)?;
        let b = emb.x.dim(0);
        let chunks = chunks.min(b);
        if self.device.is_cuda() || chunks <= 1 {
            let mut tape = Tape::new(self.device.clone());
            let out = self.encode(&mut tape, emb, &mut NoAdapter)?;
            return Ok(Features {
                last_hidden_state: tape.value(out.last_hidden_state).clone(),
                pooled: tape.value(out.pooled).clone(),
            });
        }
        let (s, d) = (emb.x.dim(1), emb.x.dim(2));
        let pieces = (0..chunks)
            .map(|i| {
                let (lo, hi) = (b * i / chunks, b * (i + 1) / chunks);
                let rows = |t: &Tensor, per: usize, shape: &[usize]| {
                    let mut shape = shape.to_vec();
                    shape[0] = hi - lo;
                    t.view(lo * per, &shape)
                };
                Ok(Embedded {
                    x: rows(&emb.x, s * d, &[0, s, d])?,
                    mask: rows(&emb.mask, s, &[0, s])?,
                    text_mask: rows(&emb.text_mask, s, &[0, s])?,
                    image_mask: rows(&emb.image_mask, s, &[0, s])?,
                    text_len: emb.text_len,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let pools = serial_pools(chunks)?;
        let encode = |(piece, pool): (Embedded, &rayon::ThreadPool)| {
            pool.install(|| {
                let mut tape = Tape::new(Device::Cpu);
                let out = self.encode(&mut tape, piece, &mut NoAdapter)?;
                Ok((
                    tape.value(out.last_hidden_state).clone(),
                    tape.value(out.pooled).clone(),
                ))
            })
        };
        let mut jobs = pieces.into_iter().zip(pools.iter().map(|p| &**p));
        let first = jobs.next().expect("chunks ≥ 2");
        let outs: Vec<Result<(Tensor, Tensor)>> = std::thread::scope(|sc| {
            let rest: Vec<_> = jobs.map(|job| sc.spawn(move || encode(job))).collect();
            std::iter::once(encode(first))
                .chain(rest.into_iter().map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                }))
                .collect()
        });
        let (mut last, mut pooled) = (Vec::with_capacity(b * s * d), Vec::with_capacity(b * d));
        for out in outs {
            let (l, p) = out?;
            last.extend_from_slice(l.f32s()?);
            pooled.extend_from_slice(p.f32s()?);
        }
        Ok(Features {
            last_hidden_state: Tensor::from_f32(last, &[b, s, d])?,
            pooled: Tensor::from_f32(pooled, &[b, d])?,
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

/// Single-thread rayon pools for [`Vilt::infer_in_chunks`], made once and kept: the same
/// threads serve every batch, so each keeps its allocator arena and the activations' pages
/// warm (see [`crate::malloc`]).
fn serial_pools(n: usize) -> Result<Vec<Arc<rayon::ThreadPool>>> {
    static POOLS: Mutex<Vec<Arc<rayon::ThreadPool>>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    while pools.len() < n {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "delo-infer".into())
            .build()
            .map_err(|e| crate::Error::Msg(format!("cannot start an inference thread: {e}")))?;
        pools.push(Arc::new(pool));
    }
    Ok(pools[..n].to_vec())
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
        pixel_values: get("pixel_values")?.into(),
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
    model.infer(&inputs)?.write(output)
}
