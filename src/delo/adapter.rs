//! DeLo as a ViLT adapter: per-layer queries with cross-modal guidance (eq. 5), routed
//! modality-specific factor pools on every adapted linear (eq. 2–4), and the variants.

use std::collections::HashMap;

use crate::autograd::{Tape, Var};
use crate::data::MissingType;
use crate::delo::config::DeloConfig;
use crate::delo::experts::{compose, route, route_compose_group, PoolVars};
use crate::delo::keys::TaskKeys;
use crate::delo::names::{self, PoolTensor};
use crate::delo::variant::{PoolQuery, Update};
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
        let v = |t: PoolTensor| self.var(&t.name(prefix));
        Ok(PoolVars {
            a_pool: v(PoolTensor::APool)?,
            b_pool: v(PoolTensor::BPool)?,
            wa: v(PoolTensor::RouterAWeight)?,
            ba: v(PoolTensor::RouterABias)?,
            wb: v(PoolTensor::RouterBWeight)?,
            bb: v(PoolTensor::RouterBBias)?,
            wc: v(PoolTensor::Compat)?,
        })
    }
}

/// Which query the text (or image) routers of a consistency forward use
/// (docs/method.md#consistency-loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// Ordinary forward: eq. (5) from each sample's missing type.
    None,
    /// q̂_t := q_v for the sample.
    Text,
    /// q̂_v := q_t for the sample.
    Image,
}

/// Which trained task's adapters each sample uses.
#[derive(Clone, Copy)]
pub enum TaskChoice<'a> {
    /// One task for every sample and layer (training, and evaluation of one key group).
    One(&'a BoundTask),
    /// `--task-key layer`: at every layer each sample takes the task whose key in that layer's
    /// table is nearest (cosine) to its query there. `tables[l]` belongs to layer l.
    PerLayer {
        tasks: &'a [BoundTask],
        tables: &'a [TaskKeys],
    },
    /// Sample r takes `tasks[choice[r]]` at every layer (`choice` i32 `[B]` on the tape's
    /// device): evaluation of a batch whose samples the Task-Key memory sent to different
    /// tasks, in one forward of the whole batch. Every task's update is computed for every
    /// sample and each row keeps its own ([`Tape::select_rows`]), so no buffer's shape depends
    /// on how the batch splits between tasks. Recording selections is refused: they would mix
    /// tasks.
    PerSample {
        tasks: &'a [BoundTask],
        choice: &'a Tensor,
    },
}

/// Per-batch state of the DeLo adapter.
pub struct DeloAdapter<'a> {
    cfg: &'a DeloConfig,
    choice: TaskChoice<'a>,
    missing: Vec<MissingType>,
    /// Per sample: which query a consistency forward replaces.
    proxies: Vec<Proxy>,
    layers: usize,
    /// Guided queries (q̂_v, q̂_t) of the layer being run.
    guided: Option<(Var, Var)>,
    /// Unguided (q_v, q_t) at the input of the last layer, for L_align.
    pub last_queries: Option<(Var, Var)>,
    /// (name, S_A, S_B) of every routed pool, when recording.
    pub selections: Option<Vec<(String, Tensor, Tensor)>>,
    /// The task query (q̂_v + q̂_t)/2 at every layer's input, `[B, d]` for the adapter's `B`
    /// samples (a step's L_con rows included: [`crate::delo::losses::batch_losses`] keeps the
    /// batch's own), when recording (the EMA of the per-layer key tables).
    pub layer_queries: Option<Vec<Tensor>>,
    /// Under [`TaskChoice::PerLayer`]: each layer's task per sample.
    pub picks: Vec<Vec<usize>>,
}

impl<'a> DeloAdapter<'a> {
    pub fn new(
        cfg: &'a DeloConfig,
        choice: TaskChoice<'a>,
        missing: &[MissingType],
        layers: usize,
        proxy: Proxy,
    ) -> Self {
        DeloAdapter {
            cfg,
            choice,
            missing: missing.to_vec(),
            proxies: vec![proxy; missing.len()],
            layers,
            guided: None,
            last_queries: None,
            selections: None,
            layer_queries: None,
            picks: Vec::new(),
        }
    }
    /// A proxy per sample instead of one for the batch (see [`guide_queries_per_sample`]).
    /// Fails unless there is one per sample.
    pub fn with_proxies(mut self, proxies: Vec<Proxy>) -> Result<Self> {
        if proxies.len() != self.missing.len() {
            return Err(Error::Msg(format!(
                "{} proxies for {} samples",
                proxies.len(),
                self.missing.len()
            )));
        }
        self.proxies = proxies;
        Ok(self)
    }
    pub fn record_selections(mut self) -> Self {
        self.selections = Some(Vec::new());
        self
    }
    pub fn record_layer_queries(mut self) -> Self {
        self.layer_queries = Some(Vec::new());
        self
    }
    fn routed(&self) -> bool {
        self.cfg.variant.routed()
    }
    fn keyed(&self) -> bool {
        self.layer_queries.is_some() || matches!(self.choice, TaskChoice::PerLayer { .. })
    }

    /// One task's updates of target `p` (`layer{l}.{target}`) for input `x` and guided
    /// queries: one per pool (DeLo: the image pool's, then the text pool's, eq. 4).
    fn task_delta(
        &mut self,
        tape: &mut Tape,
        task: &BoundTask,
        p: &str,
        x: Var,
        q: Option<(Var, Var)>,
    ) -> Result<Vec<Var>> {
        let cfg = self.cfg;
        let mut routed = |tape: &mut Tape, prefix: String, q: Var| -> Result<Var> {
            let pool = task.pool(&prefix)?;
            let sel = route(tape, q, &pool, cfg.lambda_cfs, cfg.gate)?;
            if let Some(rec) = self.selections.as_mut() {
                rec.push((prefix, sel.sel_a.clone(), sel.sel_b.clone()));
            }
            compose(tape, x, &pool, &sel, cfg.alpha)
        };
        match cfg.variant.update() {
            Update::None => Err(Error::Msg(format!(
                "variant {} has no adapters",
                cfg.variant.name()
            ))),
            Update::Routed(pools) => {
                let guided =
                    q.ok_or_else(|| Error::Msg("routing before the layer's queries".into()))?;
                pools
                    .iter()
                    .map(|pool| {
                        let q = pool_query(tape, guided, pool.query)?;
                        routed(tape, names::pool(p, pool.suffix), q)
                    })
                    .collect()
            }
            Update::LowRank => {
                let (a, b) = names::lora(p);
                let (a, b) = (task.var(&a)?, task.var(&b)?);
                let ax = tape.linear_param(x, a, None)?;
                let bax = tape.linear_param(ax, b, None)?;
                Ok(vec![tape.scale(bax, cfg.alpha)?])
            }
        }
    }
}

/// Runs `f` on the samples of each group (`groups[k]`: rows, ascending) of `x [B, N, d]` with
/// their rows of the queries, and puts the `[n_k, N, d_out]` results back in sample order.
fn by_group(
    tape: &mut Tape,
    x: Var,
    q: Option<(Var, Var)>,
    groups: &[(usize, Vec<usize>)],
    mut f: impl FnMut(&mut Tape, usize, Var, Option<(Var, Var)>) -> Result<Var>,
) -> Result<Var> {
    let shape = tape.value(x).shape().to_vec();
    let (b, n) = (shape[0], shape[1]);
    let flat = tape.reshape(x, &[b, n * shape[2]])?;
    let mut joined: Option<Var> = None;
    let mut order = Vec::with_capacity(b);
    let mut d_out = 0;
    for (k, rows) in groups {
        let idx = row_index(tape, rows)?;
        let sub = tape.gather_rows(flat, &idx)?;
        let sub = tape.reshape(sub, &[rows.len(), n, shape[2]])?;
        let sub_q = match q {
            Some((qv, qt)) => Some((tape.gather_rows(qv, &idx)?, tape.gather_rows(qt, &idx)?)),
            None => None,
        };
        let y = f(tape, *k, sub, sub_q)?;
        d_out = tape.value(y).dim(2);
        let y = tape.reshape(y, &[1, rows.len(), n * d_out])?;
        joined = Some(match joined {
            None => y,
            Some(j) => tape.concat_seq(j, y)?,
        });
        order.extend_from_slice(rows);
    }
    let joined = joined.ok_or_else(|| Error::Msg("no sample to adapt".into()))?;
    let mut inverse = vec![0usize; b];
    for (j, &i) in order.iter().enumerate() {
        inverse[i] = j;
    }
    let rows = tape.reshape(joined, &[b, n * d_out])?;
    let back = tape.gather_rows(rows, &row_index(tape, &inverse)?)?;
    tape.reshape(back, &[b, n, d_out])
}

/// A layer's routing queries for [`route_compose_group`]: `queries`, and per pool of the
/// variant its name suffix and the index of its query.
struct GroupQueries {
    queries: Vec<Var>,
    pools: Vec<(&'static str, usize)>,
}

/// The query of eq. (5) that routes a pool, from the guided `(q̂_v, q̂_t)`.
fn pool_query(tape: &mut Tape, (qv, qt): (Var, Var), kind: PoolQuery) -> Result<Var> {
    match kind {
        PoolQuery::Image => Ok(qv),
        PoolQuery::Text => Ok(qt),
        PoolQuery::Mean => {
            let s = tape.add(qv, qt)?;
            tape.scale(s, 0.5)
        }
    }
}

/// The sum of a task's per-pool updates, in order.
fn sum_parts(tape: &mut Tape, parts: &[Var]) -> Result<Var> {
    let (&first, rest) = parts
        .split_first()
        .ok_or_else(|| Error::Msg("a task with no update".into()))?;
    rest.iter().try_fold(first, |acc, &p| tape.add(acc, p))
}

/// Per part position j, row r of `per_task[choice[r]][j]`: each sample's own task's updates
/// (every task has the same parts, in the same order). One task needs no choosing.
fn select_parts(tape: &mut Tape, per_task: Vec<Vec<Var>>, choice: &Tensor) -> Result<Vec<Var>> {
    if per_task.len() == 1 {
        return Ok(per_task.into_iter().flatten().collect());
    }
    let n = per_task.first().map_or(0, Vec::len);
    if per_task.iter().any(|p| p.len() != n) {
        return Err(Error::Msg(format!(
            "tasks with different numbers of updates: {:?}",
            per_task.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    (0..n)
        .map(|j| {
            let parts: Vec<Var> = per_task.iter().map(|p| p[j]).collect();
            tape.select_rows(&parts, choice)
        })
        .collect()
}

/// The Task-Key query of eq. (7), (q̂_v + q̂_t)/2 per sample, as a value (keys take no
/// gradient).
pub fn key_query(tape: &Tape, (qv, qt): (Var, Var)) -> Result<Tensor> {
    let be = tape.device().backend();
    be.scale(&be.add(tape.value(qv), tape.value(qt))?, 0.5)
}

/// Sample indices as an i32 tensor on the tape's device.
pub fn row_index(tape: &Tape, rows: &[usize]) -> Result<Tensor> {
    Tensor::from_i32(rows.iter().map(|&r| r as i32).collect(), &[rows.len()])?
        .to_device(tape.device())
}

/// The samples of each task in `picks` (task per sample), tasks ascending, empty ones left out.
pub fn groups_of(picks: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut g: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &k) in picks.iter().enumerate() {
        g.entry(k).or_default().push(i);
    }
    g.into_iter().collect()
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
/// image-missing one its image pool by q_t; a consistency forward's `proxy` replaces one query
/// of every sample (docs/method.md#consistency-loss). Returns (q̂_v, q̂_t).
pub fn guide_queries(
    tape: &mut Tape,
    qv: Var,
    qt: Var,
    missing: &[MissingType],
    enabled: bool,
    proxy: Proxy,
) -> Result<(Var, Var)> {
    guide_queries_per_sample(tape, qv, qt, missing, enabled, &vec![proxy; missing.len()])
}

/// [`guide_queries`] with a proxy per sample: the ordinary and the consistency forwards of a
/// step run as one batch, each sample with its own rule (samples do not interact in the
/// encoder, so each row gets what its own forward would give it).
pub fn guide_queries_per_sample(
    tape: &mut Tape,
    qv: Var,
    qt: Var,
    missing: &[MissingType],
    enabled: bool,
    proxies: &[Proxy],
) -> Result<(Var, Var)> {
    if proxies.len() != missing.len() {
        return Err(Error::Msg(format!(
            "{} proxies for {} samples",
            proxies.len(),
            missing.len()
        )));
    }
    let takes_other = |own: Proxy, gone: MissingType| -> Vec<bool> {
        missing
            .iter()
            .zip(proxies)
            .map(|(m, p)| *p == own || (enabled && *m == gone))
            .collect()
    };
    let qt_hat = choose_rows(tape, qt, qv, &takes_other(Proxy::Text, MissingType::Text))?;
    let qv_hat = choose_rows(tape, qv, qt, &takes_other(Proxy::Image, MissingType::Image))?;
    Ok((qv_hat, qt_hat))
}

impl Adapter for DeloAdapter<'_> {
    fn layer_input(&mut self, tape: &mut Tape, layer: usize, x: Var, emb: &Embedded) -> Result<()> {
        let last = layer + 1 == self.layers;
        let align = last && self.cfg.lambda_align > 0.0 && self.cfg.variant.has_adapters();
        if !self.routed() && !align && !self.keyed() {
            return Ok(());
        }
        let qv = tape.masked_mean(x, &emb.image_mask)?;
        let qt = tape.masked_mean(x, &emb.text_mask)?;
        if last {
            self.last_queries = Some((qv, qt));
        }
        if !self.routed() && !self.keyed() {
            return Ok(());
        }
        let guided = guide_queries_per_sample(
            tape,
            qv,
            qt,
            &self.missing,
            self.cfg.cross_modal_guide,
            &self.proxies,
        )?;
        self.guided = Some(guided);
        if self.keyed() {
            let q = key_query(tape, guided)?;
            if let TaskChoice::PerLayer { tasks, tables } = self.choice {
                let table = tables
                    .get(layer)
                    .ok_or_else(|| Error::Msg(format!("no task-key table for layer {layer}")))?;
                let d = q.dim(1);
                self.picks
                    .push(table.predict(&q.to_vec_f32()?, d, tasks.len()));
            }
            if let Some(rec) = self.layer_queries.as_mut() {
                rec.push(q);
            }
        }
        Ok(())
    }

    /// On a backend that groups pools, with one task for every sample or a task per sample
    /// (not per layer): every routed pool of the shared-input targets in one node per task
    /// ([`route_compose_group`]).
    fn adapts_together(&self, tape: &Tape, _layer: usize, targets: &[Target]) -> bool {
        tape.device().backend().groups_pools()
            && self.routed()
            && !matches!(self.choice, TaskChoice::PerLayer { .. })
            && targets.iter().any(|t| self.cfg.targets.contains(t))
    }

    fn adapt_together(
        &mut self,
        tape: &mut Tape,
        layer: usize,
        targets: &[Target],
        x: Var,
    ) -> Result<Vec<Vec<Var>>> {
        match self.choice {
            TaskChoice::One(task) => {
                let queries = self.group_queries(tape)?;
                self.task_group(tape, task, layer, targets, x, &queries)
            }
            TaskChoice::PerSample { tasks, choice } => {
                self.refuse_mixed_selections()?;
                // The layer's queries are every task's: computed once, shared by all.
                let queries = self.group_queries(tape)?;
                let per_task = tasks
                    .iter()
                    .map(|task| self.task_group(tape, task, layer, targets, x, &queries))
                    .collect::<Result<Vec<_>>>()?;
                (0..targets.len())
                    .map(|i| {
                        let parts = per_task.iter().map(|g| g[i].clone()).collect();
                        select_parts(tape, parts, choice)
                    })
                    .collect()
            }
            TaskChoice::PerLayer { .. } => Err(Error::Msg(
                "a per-layer task choice adapts target by target".into(),
            )),
        }
    }

    fn adapt(&mut self, tape: &mut Tape, layer: usize, target: Target, x: Var) -> Result<Vec<Var>> {
        if !self.cfg.targets.contains(&target) || !self.cfg.variant.has_adapters() {
            return Ok(Vec::new());
        }
        let p = names::linear(layer, target);
        let q = self.guided;
        match self.choice {
            TaskChoice::One(task) => self.task_delta(tape, task, &p, x, q),
            TaskChoice::PerSample { tasks, choice } => {
                self.refuse_mixed_selections()?;
                let per_task = tasks
                    .iter()
                    .map(|task| self.task_delta(tape, task, &p, x, q))
                    .collect::<Result<Vec<_>>>()?;
                select_parts(tape, per_task, choice)
            }
            TaskChoice::PerLayer { tasks, .. } => {
                let groups = groups_of(self.picks.last().ok_or_else(|| {
                    Error::Msg("per-layer task choice before the layer's queries".into())
                })?);
                if let [(k, _)] = groups.as_slice() {
                    self.task_delta(tape, &tasks[*k], &p, x, q)
                } else {
                    let joined = by_group(tape, x, q, &groups, |tape, k, x, q| {
                        let parts = self.task_delta(tape, &tasks[k], &p, x, q)?;
                        sum_parts(tape, &parts)
                    })?;
                    Ok(vec![joined])
                }
            }
        }
    }
}

impl DeloAdapter<'_> {
    fn refuse_mixed_selections(&self) -> Result<()> {
        match self.selections {
            Some(_) => Err(Error::Msg(
                "factor selections are recorded per task, and this forward mixes tasks".into(),
            )),
            None => Ok(()),
        }
    }

    /// One task's routed pools of the shared-input `targets` of `layer` as one node
    /// ([`route_compose_group`]): per target, its pools' updates (none for a target that is not
    /// adapted).
    /// The queries that route this layer's pools, each distinct one once in the order the
    /// pools first use it, and per pool its suffix and the index of its query.
    fn group_queries(&self, tape: &mut Tape) -> Result<GroupQueries> {
        let guided = self
            .guided
            .ok_or_else(|| Error::Msg("routing before the layer's queries".into()))?;
        let Update::Routed(routed_pools) = self.cfg.variant.update() else {
            return Err(Error::Msg(format!(
                "variant {} has no routed pools to group",
                self.cfg.variant.name()
            )));
        };
        let mut kinds: Vec<PoolQuery> = Vec::new();
        let mut pools = Vec::new();
        for pool in routed_pools {
            let at = match kinds.iter().position(|&k| k == pool.query) {
                Some(at) => at,
                None => {
                    kinds.push(pool.query);
                    kinds.len() - 1
                }
            };
            pools.push((pool.suffix, at));
        }
        let queries = kinds
            .iter()
            .map(|&k| pool_query(tape, guided, k))
            .collect::<Result<Vec<Var>>>()?;
        Ok(GroupQueries { queries, pools })
    }

    fn task_group(
        &mut self,
        tape: &mut Tape,
        task: &BoundTask,
        layer: usize,
        targets: &[Target],
        x: Var,
        q: &GroupQueries,
    ) -> Result<Vec<Vec<Var>>> {
        let (queries, modalities) = (&q.queries, &q.pools);
        let adapted: Vec<bool> = targets
            .iter()
            .map(|t| self.cfg.targets.contains(t))
            .collect();
        let mut prefixes = Vec::new();
        let mut pools = Vec::new();
        for (t, _) in targets.iter().zip(&adapted).filter(|(_, &a)| a) {
            for &(m, qi) in modalities {
                let prefix = names::pool(&names::linear(layer, *t), m);
                pools.push((task.pool(&prefix)?, qi));
                prefixes.push(prefix);
            }
        }
        let cfg = self.cfg;
        let (ys, sels) = route_compose_group(
            tape,
            x,
            queries,
            &pools,
            cfg.lambda_cfs,
            cfg.gate,
            cfg.alpha,
        )?;
        if let Some(rec) = self.selections.as_mut() {
            rec.extend(prefixes.into_iter().zip(sels).map(|(p, (a, b))| (p, a, b)));
        }
        let mut ys = ys.into_iter();
        Ok(adapted
            .iter()
            .map(|&a| match a {
                true => ys.by_ref().take(modalities.len()).collect(),
                false => Vec::new(),
            })
            .collect())
    }
}
