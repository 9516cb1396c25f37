//! The training objective, eq. (9)–(10): L = L_c + λ_align·L_align + λ_con·L_con.

use crate::autograd::{Tape, Var};
use crate::data::MissingType;
use crate::delo::adapter::{row_index, BoundTask, DeloAdapter, Proxy, TaskChoice};
use crate::delo::config::{ConProxy, DeloConfig, TaskKeySource};
use crate::delo::names;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::vilt::{Vilt, ViltInputs};

/// Labels of a batch in the head's local classes.
#[derive(Clone, Debug)]
pub enum Targets {
    /// Class ids `[B]` (i32): cross-entropy.
    Single(Tensor),
    /// Multi-hot `[B, n]` (f32): mean binary cross-entropy with logits.
    Multi(Tensor),
}

/// The loss terms of one batch, on the tape.
pub struct Losses {
    pub total: Var,
    pub c: Var,
    pub align: Option<Var>,
    pub con: Option<Var>,
    pub logits: Var,
    /// Logits of the consistency forward(s) on the complete samples.
    pub proxy_logits: Vec<Var>,
    /// (q̂_v + q̂_t)/2 of the layer-0 input per sample, `[B, d]`: the task-key query.
    pub task_query: Tensor,
    /// With `--task-key layer`: the same at every layer's input (one per key table).
    pub layer_queries: Vec<Tensor>,
}

/// Mean of all elements as a `[1]` value.
fn mean_all(tape: &mut Tape, x: Var) -> Result<Var> {
    let n = tape.value(x).numel();
    let flat = tape.reshape(x, &[1, n])?;
    let w = Tensor::from_f32(vec![1.0 / n as f32; n], &[1, n])?.to_device(tape.device())?;
    let m = tape.linear(flat, &w, None)?;
    tape.reshape(m, &[1])
}

/// `c + s·x` for scalars, skipping absent terms.
fn add_scaled(tape: &mut Tape, c: Var, x: Option<Var>, s: f32) -> Result<Var> {
    match x {
        Some(x) if s != 0.0 => {
            let sx = tape.scale(x, s)?;
            tape.add(c, sx)
        }
        _ => Ok(c),
    }
}

/// L_c: cross-entropy over head k (single-label) or mean BCE with logits (multi-label).
pub fn classification_loss(tape: &mut Tape, logits: Var, targets: &Targets) -> Result<Var> {
    match targets {
        Targets::Single(y) => tape.cross_entropy(logits, &y.to_device(tape.device())?),
        Targets::Multi(y) => tape.bce_with_logits(logits, &y.to_device(tape.device())?),
    }
}

/// L_align: mean over the complete samples of 1 − cos(q_v, q_t) (queries at the input of the
/// last adapted layer).
pub fn alignment_loss(tape: &mut Tape, qv: Var, qt: Var, complete: &[usize]) -> Result<Var> {
    let idx = row_index(tape, complete)?;
    let (a, b) = (tape.gather_rows(qv, &idx)?, tape.gather_rows(qt, &idx)?);
    let cos = tape.cosine(a, b)?;
    let m = mean_all(tape, cos)?;
    let neg = tape.scale(m, -1.0)?;
    let one = tape.constant(Tensor::scalar(1.0).to_device(tape.device())?);
    tape.add(one, neg)
}

/// The head of a bound task on a pooled feature.
pub fn head_logits(tape: &mut Tape, task: &BoundTask, pooled: Var) -> Result<Var> {
    let (w, b) = (task.var(names::HEAD_WEIGHT)?, task.var(names::HEAD_BIAS)?);
    tape.linear_param(pooled, w, Some(b))
}

/// The full objective of one batch for one task (eq. 9–10, docs/method.md#losses): one
/// forward of the batch and its L_con proxy rows, then L_c, L_align and L_con from it.
pub fn batch_losses(
    vilt: &Vilt,
    cfg: &DeloConfig,
    tape: &mut Tape,
    task: &BoundTask,
    inputs: &ViltInputs,
    missing: &[MissingType],
    targets: &Targets,
) -> Result<Losses> {
    let joint = JointRows::new(cfg, missing);
    let b = joint.batch;
    let all_inputs = match joint.proxies.is_empty() {
        true => inputs.clone(),
        false => inputs.select(&joint.rows)?,
    };
    let mut ad = DeloAdapter::new(
        cfg,
        TaskChoice::One(task),
        &joint.missing,
        vilt.cfg.num_hidden_layers,
        Proxy::None,
    )
    .with_proxies(joint.proxy.clone())?;
    if cfg.task_key == TaskKeySource::Layer {
        ad = ad.record_layer_queries();
    }
    let emb = vilt.embed(&all_inputs)?;
    let task_query = first_rows(
        task_query(tape, &emb, &joint.missing, cfg.cross_modal_guide)?,
        b,
    )?;
    let out = vilt.encode(tape, emb, &mut ad)?;
    let all_logits = head_logits(tape, task, out.pooled)?;
    let logits = match joint.proxies.is_empty() {
        true => all_logits,
        false => tape.gather_rows(all_logits, &row_index(tape, &joint.rows[..b])?)?,
    };
    let c = classification_loss(tape, logits, targets)?;
    let align = match ad.last_queries {
        Some((qv, qt)) if cfg.lambda_align > 0.0 && !joint.complete.is_empty() => {
            Some(alignment_loss(tape, qv, qt, &joint.complete)?)
        }
        _ => None,
    };
    let (con, proxy_logits) = consistency_loss(tape, &joint, logits, all_logits, targets)?;
    let total = add_scaled(tape, c, align, cfg.lambda_align)?;
    let total = add_scaled(tape, total, con, cfg.lambda_con)?;
    Ok(Losses {
        total,
        c,
        align,
        con,
        logits,
        proxy_logits,
        task_query,
        layer_queries: ad
            .layer_queries
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|q| first_rows(q, b))
            .collect::<Result<_>>()?,
    })
}

/// The rows of the objective's one forward: the batch as it is, then its complete samples once
/// per L_con proxy (docs/method.md#consistency-loss). Samples do not interact in the encoder,
/// so each row is what its own forward would give (up to the GEMMs' f32 summation order), and
/// the step launches one encoder instead of one per proxy.
struct JointRows {
    /// Samples in the batch, whose rows come first.
    batch: usize,
    /// The batch's complete samples (both modalities present).
    complete: Vec<usize>,
    /// The proxy forwards L_con needs: none when it is off, has no complete sample or the
    /// variant has no routers.
    proxies: &'static [Proxy],
    /// Per row, the batch sample it repeats, its missing type and its proxy rule.
    rows: Vec<usize>,
    missing: Vec<MissingType>,
    proxy: Vec<Proxy>,
}

impl JointRows {
    fn new(cfg: &DeloConfig, missing: &[MissingType]) -> JointRows {
        let b = missing.len();
        let complete: Vec<usize> = (0..b)
            .filter(|&i| missing[i] == MissingType::None)
            .collect();
        let proxies: &[Proxy] = match cfg.con_proxy {
            _ if cfg.lambda_con <= 0.0 || !cfg.variant.routed() || complete.is_empty() => &[],
            ConProxy::Text => &[Proxy::Text],
            ConProxy::Image => &[Proxy::Image],
            ConProxy::Both => &[Proxy::Text, Proxy::Image],
        };
        let n = complete.len();
        let mut rows: Vec<usize> = (0..b).collect();
        let mut all_missing = missing.to_vec();
        let mut all_proxies = vec![Proxy::None; b];
        for &p in proxies {
            rows.extend_from_slice(&complete);
            all_missing.extend(std::iter::repeat_n(MissingType::None, n));
            all_proxies.extend(std::iter::repeat_n(p, n));
        }
        JointRows {
            batch: b,
            complete,
            proxies,
            rows,
            missing: all_missing,
            proxy: all_proxies,
        }
    }
}

/// L_con (docs/method.md#consistency-loss): per proxy, the KL divergence from the complete
/// samples' ordinary `logits`, held constant, to their proxy rows of `all_logits`; with both
/// proxies the mean of the two. Returns it (`None` without proxies) and each proxy's logits.
fn consistency_loss(
    tape: &mut Tape,
    joint: &JointRows,
    logits: Var,
    all_logits: Var,
    targets: &Targets,
) -> Result<(Option<Var>, Vec<Var>)> {
    if joint.proxies.is_empty() {
        return Ok((None, Vec::new()));
    }
    let (b, n) = (joint.batch, joint.complete.len());
    let idx = row_index(tape, &joint.complete)?;
    let target = tape
        .device()
        .backend()
        .gather_rows(tape.value(logits), &idx)?;
    let mut proxy_logits = Vec::new();
    let mut terms = Vec::new();
    for j in 0..joint.proxies.len() {
        let own: Vec<usize> = (b + j * n..b + (j + 1) * n).collect();
        let pl = tape.gather_rows(all_logits, &row_index(tape, &own)?)?;
        proxy_logits.push(pl);
        terms.push(match targets {
            Targets::Single(_) => tape.kl_categorical(&target, pl)?,
            Targets::Multi(_) => tape.kl_bernoulli(&target, pl)?,
        });
    }
    let mut sum = terms[0];
    for &t in &terms[1..] {
        sum = tape.add(sum, t)?;
    }
    Ok((
        Some(tape.scale(sum, 1.0 / terms.len() as f32)?),
        proxy_logits,
    ))
}

/// The first `b` rows of `t [N, ..]` (a view, nothing copied).
fn first_rows(t: Tensor, b: usize) -> Result<Tensor> {
    let mut shape = t.shape().to_vec();
    if shape.first() == Some(&b) {
        return Ok(t);
    }
    shape[0] = b;
    t.view(0, &shape)
}

/// The Task-Key query at the `input` source (eq. 7): (q̂_v + q̂_t)/2 of the frozen
/// embeddings, with cross-modal guidance; `[B, d]`, no gradient.
pub fn task_query(
    tape: &mut Tape,
    emb: &crate::vilt::Embedded,
    missing: &[MissingType],
    guide: bool,
) -> Result<Tensor> {
    let dev = tape.device().clone();
    let be = dev.backend();
    let qv = be.masked_mean(&emb.x, &emb.image_mask)?;
    let qt = be.masked_mean(&emb.x, &emb.text_mask)?;
    let (cv, ct) = (tape.constant(qv), tape.constant(qt));
    let guided = crate::delo::adapter::guide_queries(tape, cv, ct, missing, guide, Proxy::None)?;
    crate::delo::adapter::key_query(tape, guided)
}
