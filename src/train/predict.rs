//! `delo predict`: a trained run applied to new image–text items. Each item goes through the
//! training pre-processing (missing modalities as in training: a white image, an empty text,
//! cross-modal guidance from the item's missing type) and the evaluation's answering code
//! ([`eval::answer_batch`]), so a benchmark item gets the prediction `delo eval` gives it.

use std::path::Path;

use crate::autograd::Tape;
use crate::data::{LabelKind, MissingType, SampleInfo};
use crate::delo::config::TaskKeySource;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::train::eval::{self, Answer};
use crate::train::inputs::{self, NewItem};
use crate::train::Trainer;

/// How `delo predict` answers.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictOptions {
    /// Classes listed per item, best first.
    pub top_k: usize,
    /// Multi-label: a label is predicted when its probability (sigmoid) exceeds this, in
    /// (0, 1); 0.5 is the evaluation's rule.
    pub threshold: f32,
    /// With `--task-key oracle`: the task (0-based) whose head answers every item.
    pub task: Option<usize>,
    /// Items per forward (default: the run's evaluation batch size).
    pub batch_size: Option<usize>,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            top_k: 5,
            threshold: 0.5,
            task: None,
            batch_size: None,
        }
    }
}

/// The answer for one item.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The item's position in the input (0-based).
    pub index: usize,
    /// The image path as given (empty when the image is missing).
    pub image: String,
    pub missing: MissingType,
    /// The task (0-based) the item was attributed to: the Task-Key memory's choice, the oracle
    /// task, or with `seq-lora` the task owning the top class.
    pub task: usize,
    /// cos(q_task, key of `task`) when one key table chose the task (`input` and `frozen`
    /// keys); `None` with `layer` keys (per-layer choices), `oracle` and `seq-lora`.
    pub task_cosine: Option<f32>,
    /// The top class (global id) and its probability: softmax over the answering head
    /// (single-label) or sigmoid (multi-label).
    pub class: usize,
    pub score: f32,
    /// The best `top_k` classes with their probabilities, best first.
    pub top_k: Vec<(usize, f32)>,
    /// The predicted classes: the top class (single-label), or every class whose sigmoid
    /// exceeds the threshold (multi-label; possibly none).
    pub labels: Vec<usize>,
}

/// Predicts every item with the run's finished tasks. `tr`'s task-key source decides how the
/// task is chosen (see [`Trainer::use_task_key`]); `oracle` needs `opts.task`.
pub fn predict(tr: &Trainer, items: &[NewItem], opts: &PredictOptions) -> Result<Vec<Prediction>> {
    let s = tr.settings();
    let Some(trained) = tr.tasks.len().checked_sub(1) else {
        return Err(Error::Msg(format!(
            "{} has no finished task to predict with",
            tr.run_dir.display()
        )));
    };
    if !(opts.threshold > 0.0 && opts.threshold < 1.0) {
        return Err(Error::Msg(format!(
            "--threshold {}: expected a probability strictly between 0 and 1",
            opts.threshold
        )));
    }
    let task = oracle_task(tr, opts.task, trained)?;
    let reader = AnswerReader::new(tr, trained, opts);
    let batch_size = opts.batch_size.unwrap_or(s.eval_batch_size).max(1);
    let loader = inputs::loader(items, tr.prep.clone(), batch_size, s.loader_threads)?;
    let mut out = Vec::with_capacity(items.len());
    for batch in loader.epoch(0) {
        let batch = batch?;
        let answers = eval::answer_batch(tr, &batch, task, trained, None)?;
        let cosines = if reader.one_table {
            Some(key_cosines(tr, &batch, &answers)?)
        } else {
            None
        };
        for (i, (a, sample)) in answers.iter().zip(&batch.samples).enumerate() {
            let image = items[sample.index].image.clone().unwrap_or_default();
            out.push(reader.prediction(a, sample, image, cosines.as_ref().map(|c| c[i])));
        }
    }
    Ok(out)
}

/// The task whose head answers every item with `--task-key oracle` (`task`, checked against
/// the finished tasks `0..=trained`); 0, unused, with the Task-Key memory, which takes no
/// `--task`.
fn oracle_task(tr: &Trainer, task: Option<usize>, trained: usize) -> Result<usize> {
    let oracle = tr.settings().delo.task_key == TaskKeySource::Oracle;
    match (oracle, task) {
        (true, Some(t)) if t <= trained => Ok(t),
        (true, Some(t)) => Err(Error::Msg(format!(
            "--task {t}: the run has finished tasks 0..={trained} (0-based)"
        ))),
        (true, None) => Err(Error::Msg(
            "--task-key oracle needs --task T, the task (0-based) to answer with".into(),
        )),
        (false, Some(_)) => Err(Error::Msg(
            "--task is for --task-key oracle; the Task-Key memory chooses otherwise".into(),
        )),
        (false, None) => Ok(0),
    }
}

/// What turns an [`Answer`] into a [`Prediction`]: the heads' global classes, the task spans,
/// the label kind and the options' threshold and `top_k`.
struct AnswerReader {
    kind: LabelKind,
    /// `seq-lora`: one shared model, the task is the one owning the top class.
    seq: bool,
    /// One key table chose the task, so its cosine is reported.
    one_table: bool,
    /// Per finished task, its head's global classes.
    columns: Vec<Vec<usize>>,
    /// Per finished task, the columns of its own classes in the last head (see
    /// [`Trainer::head_span`]).
    spans: Vec<std::ops::Range<usize>>,
    /// sigmoid(x) > p ⇔ x > logit(p): at 0.5 exactly the evaluation's `x > 0`.
    min_logit: f32,
    top_k: usize,
}

impl AnswerReader {
    fn new(tr: &Trainer, trained: usize, opts: &PredictOptions) -> AnswerReader {
        let delo = &tr.settings().delo;
        let seq = delo.variant.shares_one_model();
        AnswerReader {
            kind: tr.bench.kind,
            seq,
            one_table: !seq
                && matches!(delo.task_key, TaskKeySource::Input | TaskKeySource::Frozen),
            columns: (0..=trained).map(|k| tr.head_classes(k)).collect(),
            spans: (0..=trained).map(|j| tr.head_span(j, trained)).collect(),
            min_logit: (opts.threshold / (1.0 - opts.threshold)).ln(),
            top_k: opts.top_k,
        }
    }

    /// `a`'s prediction for `sample`, whose image path and key cosine the caller knows.
    fn prediction(
        &self,
        a: &Answer,
        sample: &SampleInfo,
        image: String,
        task_cosine: Option<f32>,
    ) -> Prediction {
        let cols = &self.columns[a.k];
        let probs = probabilities(&a.logits, self.kind);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        // Stable: equal probabilities keep column order, so the first is `a.top()`.
        order.sort_by(|&x, &y| a.logits[y].total_cmp(&a.logits[x]));
        let top = a.top();
        let labels = match self.kind {
            LabelKind::Single => vec![cols[top]],
            LabelKind::Multi => (0..cols.len())
                .filter(|&c| a.logits[c] > self.min_logit)
                .map(|c| cols[c])
                .collect(),
        };
        Prediction {
            index: sample.index,
            image,
            missing: sample.missing,
            task: a.attributed(self.seq, &self.spans),
            task_cosine,
            class: cols[top],
            score: probs[top],
            top_k: order
                .iter()
                .take(self.top_k)
                .map(|&c| (cols[c], probs[c]))
                .collect(),
            labels,
        }
    }
}

/// Per sample, cos(q_task, key of the task that answered it), with the query of the run's key
/// source computed as the answering code does.
fn key_cosines(
    tr: &Trainer,
    batch: &crate::data::Batch<crate::vilt::ViltInputs>,
    answers: &[Answer],
) -> Result<Vec<f32>> {
    let missing = batch.missing();
    let mut tape = Tape::new(tr.device.clone());
    let q = tr.task_query(&mut tape, &batch.data, &missing)?;
    let (n, d) = (q.dim(0), q.dim(1));
    let keys: Vec<f32> = answers
        .iter()
        .flat_map(|a| tr.keys[0].keys[a.k].iter().copied())
        .collect();
    let keys = Tensor::from_f32(keys, &[n, d])?.to_device(&tr.device)?;
    tr.device.backend().cosine(&q, &keys)?.to_vec_f32()
}

/// Softmax over the head (single-label) or per-class sigmoid (multi-label), in f64.
fn probabilities(logits: &[f32], kind: LabelKind) -> Vec<f32> {
    match kind {
        LabelKind::Single => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|v| (v / sum) as f32).collect()
        }
        LabelKind::Multi => logits
            .iter()
            .map(|&x| (1.0 / (1.0 + (-(x as f64)).exp())) as f32)
            .collect(),
    }
}

/// Writes predictions as CSV: `index,image,missing,task,task_cosine,class,class_name,score,
/// top_k,labels,label_names`. Tasks are 0-based as in `delo eval --predictions`; `top_k` is
/// `class:probability` pairs and `labels` / `label_names` are joined with `|`; class names
/// come from the benchmark's `meta.json` (empty without one).
pub fn write_csv(tr: &Trainer, preds: &[Prediction], path: &Path) -> Result<()> {
    let name = |c: usize| {
        tr.bench
            .class_names
            .as_ref()
            .and_then(|n| n.get(c).cloned())
            .unwrap_or_default()
    };
    let join = |v: Vec<String>| v.join("|");
    let err = |e: csv::Error| Error::format(path, e.to_string());
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "index",
        "image",
        "missing",
        "task",
        "task_cosine",
        "class",
        "class_name",
        "score",
        "top_k",
        "labels",
        "label_names",
    ])
    .map_err(err)?;
    for p in preds {
        w.write_record([
            p.index.to_string(),
            p.image.clone(),
            p.missing.as_str().to_string(),
            p.task.to_string(),
            p.task_cosine.map(|c| format!("{c:.6}")).unwrap_or_default(),
            p.class.to_string(),
            name(p.class),
            format!("{:.6}", p.score),
            join(p.top_k.iter().map(|(c, s)| format!("{c}:{s:.6}")).collect()),
            join(p.labels.iter().map(|c| c.to_string()).collect()),
            join(p.labels.iter().map(|&c| name(c)).collect()),
        ])
        .map_err(err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::format(path, e.to_string()))?;
    crate::st::write_atomic(path, &bytes)
}
