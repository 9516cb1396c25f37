//! DeLo as a ViLT adapter: per-layer queries with cross-modal guidance (eq. 5), routed
//! modality-specific factor pools on every adapted linear (eq. 2–4), and the variants.

use std::collections::HashMap;

use crate::autograd::{Tape, Var};
use crate::data::MissingType;
use crate::delo::config::{DeloConfig, Variant};
use crate::delo::experts::{compose, route, PoolVars};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::vilt::{Adapter, Embedded, Target};

/// One task's tensors on a tape: trainable parameters while the task trains, constants once
/// it is frozen.
pub struct BoundTask {
    vars: HashMap<String, Var>,
}

impl BoundTask {
    pub fn new(vars: HashMap<String, Var>) -> BoundTask {
        BoundTask { vars }
    }
    /// Frozen tensors as constants (they record nothing).
    pub fn constants(tape: &mut Tape, tensors: &[(String, Tensor)]) -> BoundTask {
        BoundTask {
            vars: tensors
                .iter()
                .map(|(n, t)| (n.clone(), tape.constant(t.clone())))
                .collect(),
        }
    }
    pub fn var(&self, name: &str) -> Result<Var> {
        self.vars
            .get(name)
            .copied()
            .ok_or_else(|| Error::Msg(format!("the task has no parameter `{name}`")))
    }
    fn pool(&self, prefix: &str) -> Result<PoolVars> {
        let v = |s: &str| self.var(&format!("{prefix}.{s}"));
        Ok(PoolVars {
            a_pool: v("a_pool")?,
            b_pool: v("b_pool")?,
            wa: v("router_a.weight")?,
            ba: v("router_a.bias")?,
            wb: v("router_b.weight")?,
            bb: v("router_b.bias")?,
            wc: v("compat")?,
        })
    }
}

/// Which query the text (or image) routers of a consistency forward use (DELO.md L_con).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// Ordinary forward: eq. (5) from each sample's missing type.
    None,
    /// q̂_t := q_v for every sample.
    Text,
    /// q̂_v := q_t for every sample.
    Image,
}

/// Per-batch state of the DeLo adapter.
pub struct DeloAdapter<'a> {
    cfg: &'a DeloConfig,
    task: &'a BoundTask,
    missing: Vec<MissingType>,
    proxy: Proxy,
    layers: usize,
    /// Guided queries (q̂_v, q̂_t) of the layer being run.
    guided: Option<(Var, Var)>,
    /// Unguided (q_v, q_t) at the input of the last layer, for L_align.
    pub last_queries: Option<(Var, Var)>,
    /// (name, S_A, S_B) of every routed pool, when recording.
    pub selections: Option<Vec<(String, Tensor, Tensor)>>,
}

impl<'a> DeloAdapter<'a> {
    pub fn new(
        cfg: &'a DeloConfig,
        task: &'a BoundTask,
        missing: &[MissingType],
        layers: usize,
        proxy: Proxy,
    ) -> Self {
        DeloAdapter {
            cfg,
            task,
            missing: missing.to_vec(),
            proxy,
            layers,
            guided: None,
            last_queries: None,
            selections: None,
        }
    }
    pub fn record_selections(mut self) -> Self {
        self.selections = Some(Vec::new());
        self
    }
    fn routed(&self) -> bool {
        matches!(self.cfg.variant, Variant::Delo | Variant::UnifiedPool)
    }
}

/// Row b of the result is row b of `b_rows` where `take_b[b]`, else of `a_rows` (`[B, d]`).
pub fn choose_rows(tape: &mut Tape, a: Var, b: Var, take_b: &[bool]) -> Result<Var> {
    if take_b.iter().all(|&t| !t) {
        return Ok(a);
    }
    if take_b.iter().all(|&t| t) {
        return Ok(b);
    }
    let (n, d) = (take_b.len(), tape.value(a).dim(-1));
    let a3 = tape.reshape(a, &[n, 1, d])?;
    let b3 = tape.reshape(b, &[n, 1, d])?;
    let both = tape.concat_seq(a3, b3)?;
    let rows = tape.reshape(both, &[2 * n, d])?;
    let idx = Tensor::from_i32(
        take_b
            .iter()
            .enumerate()
            .map(|(i, &t)| (2 * i + t as usize) as i32)
            .collect(),
        &[n],
    )?;
    let idx = idx.to_device(tape.device())?;
    tape.gather_rows(rows, &idx)
}

/// Cross-modal guided queries, eq. (5): a text-missing sample routes its text pool by q_v, an
/// image-missing one its image pool by q_t. Returns (q̂_v, q̂_t).
pub fn guide_queries(
    tape: &mut Tape,
    qv: Var,
    qt: Var,
    missing: &[MissingType],
    enabled: bool,
    proxy: Proxy,
) -> Result<(Var, Var)> {
    let text_missing: Vec<bool> = missing
        .iter()
        .map(|m| enabled && *m == MissingType::Text)
        .collect();
    let image_missing: Vec<bool> = missing
        .iter()
        .map(|m| enabled && *m == MissingType::Image)
        .collect();
    let qt_hat = match proxy {
        Proxy::Text => qv,
        _ => choose_rows(tape, qt, qv, &text_missing)?,
    };
    let qv_hat = match proxy {
        Proxy::Image => qt,
        _ => choose_rows(tape, qv, qt, &image_missing)?,
    };
    Ok((qv_hat, qt_hat))
}

impl Adapter for DeloAdapter<'_> {
    fn layer_input(&mut self, tape: &mut Tape, layer: usize, x: Var, emb: &Embedded) -> Result<()> {
        let last = layer + 1 == self.layers;
        let align = last && self.cfg.lambda_align > 0.0 && self.cfg.variant != Variant::HeadsOnly;
        if !self.routed() && !align {
            return Ok(());
        }
        let qv = tape.masked_mean(x, &emb.image_mask)?;
        let qt = tape.masked_mean(x, &emb.text_mask)?;
        if last {
            self.last_queries = Some((qv, qt));
        }
        if self.routed() {
            self.guided = Some(guide_queries(
                tape,
                qv,
                qt,
                &self.missing,
                self.cfg.cross_modal_guide,
                self.proxy,
            )?);
        }
        Ok(())
    }

    fn adapt(
        &mut self,
        tape: &mut Tape,
        layer: usize,
        target: Target,
        x: Var,
    ) -> Result<Option<Var>> {
        if !self.cfg.targets.contains(&target) {
            return Ok(None);
        }
        let p = format!("layer{layer}.{}", target.name());
        let cfg = self.cfg;
        let mut routed = |tape: &mut Tape, prefix: String, q: Var| -> Result<Var> {
            let pool = self.task.pool(&prefix)?;
            let sel = route(tape, q, &pool, cfg.lambda_cfs, cfg.gate)?;
            if let Some(rec) = self.selections.as_mut() {
                rec.push((prefix, sel.sel_a.clone(), sel.sel_b.clone()));
            }
            compose(tape, x, &pool, &sel, cfg.alpha)
        };
        let delta = match cfg.variant {
            Variant::HeadsOnly => return Ok(None),
            Variant::Delo => {
                let (qv, qt) = self
                    .guided
                    .ok_or_else(|| Error::Msg("routing before the layer's queries".into()))?;
                let dv = routed(tape, format!("{p}.v"), qv)?;
                let dt = routed(tape, format!("{p}.t"), qt)?;
                tape.add(dv, dt)?
            }
            Variant::UnifiedPool => {
                let (qv, qt) = self
                    .guided
                    .ok_or_else(|| Error::Msg("routing before the layer's queries".into()))?;
                let s = tape.add(qv, qt)?;
                let q = tape.scale(s, 0.5)?;
                routed(tape, format!("{p}.u"), q)?
            }
            Variant::Lora | Variant::SeqLora => {
                let (a, b) = (
                    self.task.var(&format!("{p}.lora_a"))?,
                    self.task.var(&format!("{p}.lora_b"))?,
                );
                let ax = tape.linear_param(x, a, None)?;
                let bax = tape.linear_param(ax, b, None)?;
                tape.scale(bax, cfg.alpha)?
            }
        };
        Ok(Some(delta))
    }
}
