//! A tape of layer-level nodes (frozen linear, trainable linear, LayerNorm, attention, GELU,
//! residual add, losses, …), in the spirit of llm.c rather than of a general framework.
//!
//! "Needs grad" starts at trainable parameters and flows forward: an op none of whose inputs
//! needs a gradient runs its forward and records nothing, so the frozen part of the network
//! costs exactly its forward. Backward through a frozen linear computes only the input
//! gradient (one GEMM), and only for inputs that need it. Gradients of a value used several
//! times accumulate (+=).

mod fused;

use std::collections::BTreeMap;

use crate::backend::{Backend, Device, Gemm, Saved, Unary};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub use fused::{LinearOut, PendingLayerNorm};

/// A value recorded on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Var(usize);

/// Names a trainable parameter; gradients are returned per `ParamId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParamId(pub usize);

type BackwardFn = Box<dyn FnOnce(&dyn Backend, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;
/// A backward that may add an input's gradient straight into that input's accumulated
/// gradient (given in the last argument, where one exists), returning `None` for it.
type AccumulatingFn = Box<
    dyn FnOnce(
        &dyn Backend,
        &Tensor,
        &[bool],
        &mut [Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>>,
>;

/// The backward of a node with several outputs: one upstream gradient per output (`None`
/// where nothing used it).
type MultiFn =
    Box<dyn FnOnce(&dyn Backend, &[Option<Tensor>], &[bool]) -> Result<Vec<Option<Tensor>>>>;

enum Backward {
    Plain(BackwardFn),
    Accumulating(AccumulatingFn),
    Multi(MultiFn),
}

struct Node {
    inputs: Vec<Var>,
    /// One output, except for [`Backward::Multi`].
    outputs: Vec<Var>,
    backward: Backward,
}

struct Entry {
    value: Tensor,
    needs_grad: bool,
    param: Option<ParamId>,
}

/// Parameter gradients of one backward pass.
#[derive(Default)]
pub struct Grads {
    pub by_param: BTreeMap<ParamId, Tensor>,
}

impl Grads {
    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.by_param.get(&id)
    }
}

pub struct Tape {
    device: Device,
    entries: Vec<Entry>,
    nodes: Vec<Node>,
    /// The latest input of a frozen linear cast to its weight's dtype: the q, k and v
    /// projections of a layer share one input, and so one cast.
    last_cast: Option<(Var, Tensor)>,
}

impl Tape {
    pub fn new(device: Device) -> Tape {
        Tape {
            device,
            entries: Vec::new(),
            nodes: Vec::new(),
            last_cast: None,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    fn be(&self) -> &dyn Backend {
        self.device.backend()
    }

    /// A value that never receives a gradient (inputs, frozen weights used as data).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.push(value, false, None)
    }
    /// A trainable parameter: the origin of "needs grad".
    pub fn param(&mut self, id: ParamId, value: Tensor) -> Var {
        self.push(value, true, Some(id))
    }
    pub fn value(&self, v: Var) -> &Tensor {
        &self.entries[v.0].value
    }
    pub fn needs_grad(&self, v: Var) -> bool {
        self.entries[v.0].needs_grad
    }
    /// Number of recorded nodes (frozen-only computations record none).
    pub fn recorded(&self) -> usize {
        self.nodes.len()
    }

    fn push(&mut self, value: Tensor, needs_grad: bool, param: Option<ParamId>) -> Var {
        self.entries.push(Entry {
            value,
            needs_grad,
            param,
        });
        Var(self.entries.len() - 1)
    }

    /// Records `output = f(inputs)` with its backward, or only the value when no input needs
    /// a gradient. `backward` receives the upstream gradient and which inputs need theirs.
    fn record(
        &mut self,
        inputs: &[Var],
        output: Tensor,
        backward: impl FnOnce(&dyn Backend, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        self.record_node(inputs, output, Backward::Plain(Box::new(backward)))
    }

    /// [`Tape::record`] for a backward that can add into the inputs' accumulated gradients.
    fn record_accumulating(
        &mut self,
        inputs: &[Var],
        output: Tensor,
        backward: impl FnOnce(
                &dyn Backend,
                &Tensor,
                &[bool],
                &mut [Option<Tensor>],
            ) -> Result<Vec<Option<Tensor>>>
            + 'static,
    ) -> Var {
        self.record_node(inputs, output, Backward::Accumulating(Box::new(backward)))
    }

    fn record_node(&mut self, inputs: &[Var], output: Tensor, backward: Backward) -> Var {
        let needs = inputs.iter().any(|&v| self.needs_grad(v));
        let out = self.push(output, needs, None);
        if needs {
            self.nodes.push(Node {
                inputs: inputs.to_vec(),
                outputs: vec![out],
                backward,
            });
        }
        out
    }

    // ---- layer-level nodes ----------------------------------------------------------------

    /// Frozen linear `x · Wᵀ + b` over the last dimension, `W` stored `[out, in]`. Its
    /// backward is the input gradient alone: `dx = dy · W`.
    pub fn linear(&mut self, x: Var, w: &Tensor, b: Option<&Tensor>) -> Result<Var> {
        let xv = self.value(x).clone();
        let xin = match &self.last_cast {
            _ if xv.dtype() == w.dtype() => xv.clone(),
            Some((v, c)) if *v == x && c.dtype() == w.dtype() => c.clone(),
            _ => {
                let c = self.be().cast(&xv, w.dtype())?;
                self.last_cast = Some((x, c.clone()));
                c
            }
        };
        let y = linear_forward(self.be(), &xin, w, b)?;
        let w = w.clone();
        let x_shape = xv.shape().to_vec();
        Ok(self.record_accumulating(&[x], y, move |be, dy, _, acc| {
            let dy2 = rows2(dy)?;
            let dy2 = match dy2.dtype() == w.dtype() {
                true => dy2,
                false => be.cast(&dy2, w.dtype())?,
            };
            Ok(vec![product_into(
                be,
                &dy2,
                &w,
                Gemm::nn(),
                &mut acc[0],
                &x_shape,
            )?])
        }))
    }

    /// Trainable linear `x · Wᵀ + b` (task heads): gradients to `W`, `b` and, when it needs
    /// one, `x`.
    pub fn linear_param(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let (xv, wv) = (self.value(x).clone(), self.value(w).clone());
        let bv = b.map(|b| self.value(b).clone());
        let y = linear_forward(self.be(), &xv, &wv, bv.as_ref())?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok(
            self.record_accumulating(&inputs, y, move |be, dy, needs, acc| {
                let (dy2, x2) = (rows2(dy)?, rows2(&xv)?);
                let dx = match needs[0] {
                    true => product_into(be, &dy2, &wv, Gemm::nn(), &mut acc[0], xv.shape())?,
                    false => None,
                };
                let dw = Some(be.matmul(&dy2, &x2, Gemm::tn())?);
                let mut g = vec![dx, dw];
                if bv.is_some() {
                    g.push(Some(be.sum_rows(&dy2)?));
                }
                Ok(g)
            }),
        )
    }

    /// LayerNorm over the last dimension with frozen affine parameters.
    pub fn layernorm(&mut self, x: Var, w: &Tensor, b: &Tensor, eps: f32) -> Result<Var> {
        let xv = self.value(x).clone();
        let o = self.be().layernorm(&xv, w, b, eps)?;
        let w = w.clone();
        let (mean, rstd) = (o.mean, o.rstd);
        Ok(self.record(&[x], o.y, move |be, dy, _| {
            let g = be.layernorm_backward(dy, &xv, &w, &mean, &rstd, false)?;
            Ok(vec![Some(g.dx)])
        }))
    }

    /// Masked multi-head attention of `[B, T, H·Dh]` projections; `mask [B, T]` marks valid keys.
    pub fn attention(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        mask: &Tensor,
        heads: usize,
    ) -> Result<Var> {
        let (qv, kv, vv) = (
            self.value(q).clone(),
            self.value(k).clone(),
            self.value(v).clone(),
        );
        let (o, probs) = self.be().attention(&qv, &kv, &vv, mask, heads)?;
        Ok(self.record(&[q, k, v], o, move |be, dy, _| {
            let (dq, dk, dv) = be.attention_backward(dy, &qv, &kv, &vv, &probs, heads)?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        }))
    }

    /// The activation `op` elementwise ([`Unary`]), its backward reading the value
    /// [`Unary::saves`] names.
    pub fn unary(&mut self, op: Unary, x: Var) -> Result<Var> {
        let y = self.be().unary(op, self.value(x))?;
        let saved = match op.saves() {
            Saved::Input => self.value(x).clone(),
            Saved::Output => y.clone(),
        };
        Ok(self.record(&[x], y, move |be, dy, _| {
            Ok(vec![Some(be.unary_backward(op, dy, &saved)?)])
        }))
    }

    /// Softmax over the last dimension.
    pub fn softmax(&mut self, x: Var) -> Result<Var> {
        let y = self.be().softmax(self.value(x))?;
        let yv = y.clone();
        Ok(self.record(&[x], y, move |be, dy, _| {
            Ok(vec![Some(be.softmax_backward(dy, &yv)?)])
        }))
    }

    /// Residual (or any) sum of two values of one shape.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = self.be().add(self.value(a), self.value(b))?;
        Ok(self.record(&[a, b], y, |_, dy, _| {
            Ok(vec![Some(dy.clone()), Some(dy.clone())])
        }))
    }

    pub fn scale(&mut self, x: Var, s: f32) -> Result<Var> {
        let y = self.be().scale(self.value(x), s)?;
        Ok(self.record(&[x], y, move |be, dy, _| Ok(vec![Some(be.scale(dy, s)?)])))
    }

    /// Elementwise product.
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let y = self.be().mul(&av, &bv)?;
        Ok(self.record(&[a, b], y, move |be, dy, needs| {
            Ok(vec![
                needs[0].then(|| be.mul(dy, &bv)).transpose()?,
                needs[1].then(|| be.mul(dy, &av)).transpose()?,
            ])
        }))
    }

    /// The same value under another shape.
    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let xv = self.value(x);
        let old = xv.shape().to_vec();
        let y = xv.reshape(shape)?;
        Ok(self.record(&[x], y, move |_, dy, _| Ok(vec![Some(dy.reshape(&old)?)])))
    }

    /// Rows of `table [M, ..]` picked by `idx` (an i32 tensor on the tape's device).
    pub fn gather_rows(&mut self, table: Var, idx: &Tensor) -> Result<Var> {
        let m = self.value(table).dim(0);
        let y = self.be().gather_rows(self.value(table), idx)?;
        let idx = idx.clone();
        Ok(self.record(&[table], y, move |be, dy, _| {
            Ok(vec![Some(be.scatter_add_rows(dy, &idx, m)?)])
        }))
    }

    /// Row `r` of the result is row `r` of `parts[choice[r]]`: a per-row choice among tensors of
    /// one shape `[R, ..]` (each sample's own task in a forward of a batch that mixes tasks).
    /// `choice` is i32 `[R]` on the tape's device with values in `0..parts.len()`; a row's
    /// gradient goes to the part it chose and the others get zeros there. Errors: parts of
    /// different shapes, no part, a choice per row missing or out of range.
    pub fn select_rows(&mut self, parts: &[Var], choice: &Tensor) -> Result<Var> {
        let n = parts.len();
        let first = parts
            .first()
            .ok_or_else(|| crate::error::Error::shape("select_rows", "no tensor to choose from"))?;
        let shape = self.value(*first).shape().to_vec();
        let mut y = self.be().zeros(&shape, crate::tensor::DType::F32)?;
        for (k, &p) in parts.iter().enumerate() {
            self.be()
                .copy_rows_where(&mut y, self.value(p), choice, k, n)?;
        }
        let choice = choice.clone();
        Ok(self.record(parts, y, move |be, dy, needs| {
            (0..n)
                .map(|k| match needs[k] {
                    false => Ok(None),
                    true => {
                        let mut dx = be.zeros(dy.shape(), crate::tensor::DType::F32)?;
                        be.copy_rows_where(&mut dx, dy, &choice, k, n)?;
                        Ok(Some(dx))
                    }
                })
                .collect()
        }))
    }

    /// `[B, T1, d] ; [B, T2, d] → [B, T1+T2, d]`.
    pub fn concat_seq(&mut self, a: Var, b: Var) -> Result<Var> {
        let t1 = self.value(a).dim(1);
        let y = self.be().concat_seq(self.value(a), self.value(b))?;
        Ok(self.record(&[a, b], y, move |be, dy, _| {
            let (da, db) = be.split_seq(dy, t1)?;
            Ok(vec![Some(da), Some(db)])
        }))
    }

    /// Mean over the valid positions of `x [B, T, d]`, `mask [B, T]`.
    pub fn masked_mean(&mut self, x: Var, mask: &Tensor) -> Result<Var> {
        let y = self.be().masked_mean(self.value(x), mask)?;
        let mask = mask.clone();
        Ok(self.record(&[x], y, move |be, dy, _| {
            Ok(vec![Some(be.masked_mean_backward(dy, &mask)?)])
        }))
    }

    /// Row-wise cosine similarity `[B, d] × [B, d] → [B]`.
    pub fn cosine(&mut self, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let y = self.be().cosine(&av, &bv)?;
        Ok(self.record(&[a, b], y, move |be, dy, _| {
            let (da, db) = be.cosine_backward(dy, &av, &bv)?;
            Ok(vec![Some(da), Some(db)])
        }))
    }

    /// Mean softmax cross-entropy against class ids (`[B]` i32).
    pub fn cross_entropy(&mut self, logits: Var, labels: &Tensor) -> Result<Var> {
        let lv = self.value(logits).clone();
        let y = self.be().cross_entropy(&lv, labels)?;
        let labels = labels.clone();
        Ok(self.record(&[logits], y, move |be, dy, _| {
            Ok(vec![Some(be.cross_entropy_backward(dy, &lv, &labels)?)])
        }))
    }

    /// Mean binary cross-entropy with logits against multi-hot targets.
    pub fn bce_with_logits(&mut self, logits: Var, targets: &Tensor) -> Result<Var> {
        let lv = self.value(logits).clone();
        let y = self.be().bce_with_logits(&lv, targets)?;
        let t = targets.clone();
        Ok(self.record(&[logits], y, move |be, dy, _| {
            Ok(vec![Some(be.bce_with_logits_backward(dy, &lv, &t)?)])
        }))
    }

    /// KL(softmax(target) ‖ softmax(logits)), target held constant (stop-gradient).
    pub fn kl_categorical(&mut self, target: &Tensor, logits: Var) -> Result<Var> {
        let lv = self.value(logits).clone();
        let y = self.be().kl_categorical(target, &lv)?;
        let t = target.clone();
        Ok(self.record(&[logits], y, move |be, dy, _| {
            Ok(vec![Some(be.kl_categorical_backward(dy, &t, &lv)?)])
        }))
    }

    /// Mean per-label Bernoulli KL(σ(target) ‖ σ(logits)), target held constant.
    pub fn kl_bernoulli(&mut self, target: &Tensor, logits: Var) -> Result<Var> {
        let lv = self.value(logits).clone();
        let y = self.be().kl_bernoulli(target, &lv)?;
        let t = target.clone();
        Ok(self.record(&[logits], y, move |be, dy, _| {
            Ok(vec![Some(be.kl_bernoulli_backward(dy, &t, &lv)?)])
        }))
    }

    /// A node defined outside this module (e.g. the expert linear): `forward` has already
    /// produced `output`; `backward` maps the upstream gradient to one gradient per input.
    pub fn custom(
        &mut self,
        inputs: &[Var],
        output: Tensor,
        backward: impl FnOnce(&dyn Backend, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        self.record(inputs, output, backward)
    }

    /// [`Tape::custom`] with several outputs computed together (e.g. every routed pool of a
    /// layer): `backward` receives one upstream gradient per output, `None` for an output
    /// nothing used, and is skipped when no output has one.
    pub fn custom_multi(
        &mut self,
        inputs: &[Var],
        outputs: Vec<Tensor>,
        backward: impl FnOnce(&dyn Backend, &[Option<Tensor>], &[bool]) -> Result<Vec<Option<Tensor>>>
            + 'static,
    ) -> Vec<Var> {
        let needs = inputs.iter().any(|&v| self.needs_grad(v));
        let outs: Vec<Var> = outputs
            .into_iter()
            .map(|o| self.push(o, needs, None))
            .collect();
        if needs {
            self.nodes.push(Node {
                inputs: inputs.to_vec(),
                outputs: outs.clone(),
                backward: Backward::Multi(Box::new(backward)),
            });
        }
        outs
    }

    /// Back-propagates from a one-element `loss` and returns every parameter's gradient.
    /// Consumes the tape: saved activations are freed node by node as backward passes them.
    pub fn backward(self, loss: Var) -> Result<Grads> {
        let Tape {
            device,
            entries,
            nodes,
            ..
        } = self;
        let be = device.backend();
        ensure_shape!(
            entries[loss.0].value.numel() == 1,
            "backward",
            "loss must have one element, got shape {:?}",
            entries[loss.0].value.shape()
        );
        let mut grads: Vec<Option<Tensor>> = (0..entries.len()).map(|_| None).collect();
        grads[loss.0] = Some(
            Tensor::scalar(1.0)
                .reshape(entries[loss.0].value.shape())?
                .to_device(&device)?,
        );
        for node in nodes.into_iter().rev() {
            let dys: Vec<Option<Tensor>> = node.outputs.iter().map(|o| grads[o.0].take()).collect();
            // A node none of whose outputs received a gradient adds nothing.
            if dys.iter().all(Option::is_none) {
                continue;
            }
            let needs: Vec<bool> = node
                .inputs
                .iter()
                .map(|v| entries[v.0].needs_grad)
                .collect();
            let input_grads = match node.backward {
                Backward::Multi(f) => f(be, &dys, &needs)?,
                Backward::Plain(f) => f(be, single_gradient(&dys)?, &needs)?,
                Backward::Accumulating(f) => {
                    let dy = single_gradient(&dys)?;
                    let mut acc: Vec<Option<Tensor>> =
                        node.inputs.iter().map(|v| grads[v.0].take()).collect();
                    let g = f(be, dy, &needs, &mut acc);
                    for (v, a) in node.inputs.iter().zip(acc) {
                        if a.is_some() {
                            grads[v.0] = a;
                        }
                    }
                    g?
                }
            };
            if input_grads.len() != node.inputs.len() {
                return Err(Error::Msg(format!(
                    "a backward returned {} gradients for {} inputs",
                    input_grads.len(),
                    node.inputs.len()
                )));
            }
            for ((v, g), need) in node.inputs.iter().zip(input_grads).zip(needs) {
                let (Some(g), true) = (g, need) else { continue };
                let expected = entries[v.0].value.shape();
                ensure_shape!(
                    g.shape() == expected,
                    "backward",
                    "gradient of shape {:?} for a value of shape {expected:?}",
                    g.shape()
                );
                accumulate(be, &mut grads[v.0], g)?;
            }
        }
        let mut by_param: BTreeMap<ParamId, Option<Tensor>> = BTreeMap::new();
        for (e, g) in entries.iter().zip(grads) {
            if let (Some(id), Some(g)) = (e.param, g) {
                accumulate(be, by_param.entry(id).or_default(), g)?;
            }
        }
        Ok(Grads {
            by_param: by_param
                .into_iter()
                .filter_map(|(k, g)| Some((k, g?)))
                .collect(),
        })
    }
}

/// `slot += g`, taking `g` itself when the slot is empty.
fn accumulate(be: &dyn Backend, slot: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    match slot {
        None => *slot = Some(g),
        Some(acc) => {
            // A gradient passed through unchanged (e.g. by `add`) may share storage with
            // another; give the accumulator storage of its own before writing into it.
            if acc.storage_mut().is_err() {
                *acc = be.copy(acc)?;
            }
            be.add_assign(acc, &g)?;
        }
    }
    Ok(())
}

/// `a · op(b)` as an input's gradient of shape `shape`: added straight into its accumulated
/// gradient `acc` by the GEMM (β = 1) where the backend accumulates in its GEMMs and `acc` has
/// storage of its own (returns `None`), else returned for the ordinary accumulation.
fn product_into(
    be: &dyn Backend,
    a: &Tensor,
    b: &Tensor,
    g: Gemm,
    acc: &mut Option<Tensor>,
    shape: &[usize],
) -> Result<Option<Tensor>> {
    if be.gemm_accumulates() {
        if let Some(held) = acc.take() {
            let mut flat = rows2(&held)?;
            drop(held);
            let own = flat.storage_mut().is_ok();
            if own {
                be.matmul_into(a, b, g, &mut flat, 1.0)?;
            }
            *acc = Some(flat.reshape(shape)?);
            if own {
                return Ok(None);
            }
        }
    }
    Ok(Some(be.matmul(a, b, g)?.reshape(shape)?))
}

/// A tensor of rank ≥ 1 seen as `[rows, last]`.
fn rows2(t: &Tensor) -> Result<Tensor> {
    let d = *t.shape().last().unwrap_or(&1);
    t.reshape(&[t.numel() / d.max(1), d])
}

/// `x · Wᵀ + b` over the last dimension of `x`; with a bf16 `W` the activations are cast to
/// bf16 and multiplied with f32 accumulation and f32 output.
pub fn linear_forward(
    be: &dyn Backend,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    ensure_shape!(
        w.rank() == 2 && x.dim(-1) == w.dim(1),
        "linear",
        "input {:?} does not fit weight {:?}",
        x.shape(),
        w.shape()
    );
    let a = rows2(x)?;
    let a = if a.dtype() == w.dtype() {
        a
    } else {
        be.cast(&a, w.dtype())?
    };
    let y = match b {
        Some(b) => be.matmul_bias(&a, w, Gemm::nt(), b)?,
        None => be.matmul(&a, w, Gemm::nt())?,
    };
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank ≥ 1") = w.dim(0);
    y.reshape(&shape)
}

/// The upstream gradient of a single-output node (whose one output has received one).
fn single_gradient(dys: &[Option<Tensor>]) -> Result<&Tensor> {
    match dys {
        [Some(dy)] => Ok(dy),
        _ => Err(Error::Msg(format!(
            "a single-output node with {} outputs",
            dys.len()
        ))),
    }
}
