//! Task-agnostic evaluation (docs/data.md#evaluation-protocol): the Task-Key memory picks k* per
//! sample, the head of k* predicts, a sample routed to the wrong task gets no correct label;
//! task-id accuracy is reported beside the metric.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::autograd::Tape;
use crate::backend::cuda::DriverCounts;
use crate::backend::Device;
use crate::data::{Label, LabelKind, MissingType, Split};
use crate::delo::adapter::{groups_of, row_index, BoundTask, DeloAdapter, Proxy, TaskChoice};
use crate::delo::config::TaskKeySource;
use crate::delo::keys::majority;
use crate::delo::losses::head_logits;
use crate::error::Result;
use crate::report::metrics::MultiLabelCounts;
use crate::tensor::Tensor;
use crate::train::Trainer;

/// One evaluated (split, task) cell: the metric in percent and the task-id accuracy in percent.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub metric: f64,
    pub task_id: f64,
    /// No sample was evaluated (all skipped): `metric` and `task_id` mean nothing.
    #[serde(default)]
    pub empty: bool,
}

/// Evaluations after training one task: for each split, one cell per seen task.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskRow {
    pub val: Vec<Cell>,
    pub test: Vec<Cell>,
}

/// What the final evaluation also collects for the report's plots.
#[derive(Default)]
pub struct Probes {
    /// Pool name → how often each A / B factor was selected.
    pub selection_a: BTreeMap<String, Vec<u64>>,
    pub selection_b: BTreeMap<String, Vec<u64>>,
    /// cos(q_v, q_t) at the last layer's input, per complete sample.
    pub cos_qv_qt: Vec<f32>,
}

/// One evaluated sample: its item index, the task it was attributed to (the task whose head
/// answered, or with `seq-lora` the task owning the top class) and its predicted global classes.
pub type SamplePrediction = (usize, usize, Vec<usize>);

/// The logits of one sample from the head trained with task `k` (with `seq-lora`: the latest).
pub(crate) struct Answer {
    pub(crate) k: usize,
    pub(crate) logits: Vec<f32>,
}

impl Answer {
    /// The head column with the largest logit (the first of equal ones).
    pub(crate) fn top(&self) -> usize {
        let l = &self.logits;
        (0..l.len()).fold(0, |b, c| if l[c] > l[b] { c } else { b })
    }

    /// The task the sample is attributed to: the answering head's, or with `seq-lora` the
    /// task whose columns (`spans`, per task up to `trained`) hold the top class.
    pub(crate) fn attributed(&self, seq: bool, spans: &[std::ops::Range<usize>]) -> usize {
        if !seq {
            return self.k;
        }
        let top = self.top();
        (0..spans.len())
            .find(|&j| spans[j].contains(&top))
            .unwrap_or(spans.len() - 1)
    }
}

/// Runs the trained tasks 0..=`trained` on a batch and says, per sample, which head answered
/// with what: per key group (`input`, `frozen`, `oracle`), by per-layer choice with the head of
/// the majority (`layer`), or the one shared model (`seq-lora`).
///
/// What it waits for on a GPU: the task query once (`input`, `frozen`: the Task-Key choice is
/// made on the host), each layer's query once (`layer`, inside the adapter), and the logits of
/// every picked task once, together, after all forwards are queued. On CUDA (without `probes`)
/// the whole batch is one forward whatever tasks it picked ([`answer_mixed`]); elsewhere each
/// picked task runs on its own samples ([`answer_by_group`]).
pub(crate) fn answer_batch(
    tr: &Trainer,
    batch: &crate::data::Batch<crate::vilt::ViltInputs>,
    task: usize,
    trained: usize,
    probes: Option<&mut Probes>,
) -> Result<Vec<Answer>> {
    let s = tr.settings();
    let missing: Vec<MissingType> = batch.samples.iter().map(|x| x.missing).collect();
    let shared = s.delo.variant.shares_one_model();
    // Each task's logits stay on the device until every forward is queued.
    let groups = if s.delo.task_key == TaskKeySource::Layer && !shared {
        answer_per_layer(tr, batch, &missing, trained, probes)?
    } else {
        let picked: Vec<usize> = match (shared, s.delo.task_key) {
            (true, _) => vec![trained; missing.len()],
            (_, TaskKeySource::Oracle) => vec![task; missing.len()],
            _ => {
                let mut tape = Tape::new(tr.device.clone());
                let q = tr.task_query(&mut tape, &batch.data, &missing)?;
                let host = tr.device.backend().download_group(&[&q])?;
                tr.keys[0].predict(&host[0].to_vec_f32()?, q.dim(1), trained + 1)
            }
        };
        // Padding rows would be counted in the probes; the CPU keeps its shapes (and bits).
        match tr.device.is_cuda() && probes.is_none() {
            true => answer_mixed(tr, batch, &missing, &picked)?,
            false => answer_by_group(tr, batch, &missing, &picked, probes)?,
        }
    };
    let logits: Vec<&Tensor> = groups.iter().map(|g| &g.logits).collect();
    let host = tr.device.backend().download_group(&logits)?;
    let mut answers: Vec<Option<Answer>> = (0..missing.len()).map(|_| None).collect();
    for (g, lv) in groups.iter().zip(&host) {
        let n = lv.numel() / lv.dim(0).max(1);
        let lv = lv.to_vec_f32()?;
        for (&r, &i) in g.rows.iter().zip(&g.samples) {
            answers[i] = Some(Answer {
                k: g.task,
                logits: lv[r * n..(r + 1) * n].to_vec(),
            });
        }
    }
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| crate::Error::Msg("a sample got no answer".into())))
        .collect()
}

/// `--task-key layer`: one forward in which every layer picks each sample's task by its own
/// key table, then the head of each sample's majority task.
fn answer_per_layer(
    tr: &Trainer,
    batch: &crate::data::Batch<crate::vilt::ViltInputs>,
    missing: &[MissingType],
    trained: usize,
    probes: Option<&mut Probes>,
) -> Result<Vec<TaskLogits>> {
    let s = tr.settings();
    let layers = tr.vilt.cfg.num_hidden_layers;
    let mut tape = Tape::new(tr.device.clone());
    let bound: Vec<BoundTask> = tr.tasks[..=trained]
        .iter()
        .map(|t| BoundTask::constants(&mut tape, &t.params))
        .collect();
    let choice = TaskChoice::PerLayer {
        tasks: &bound,
        tables: &tr.keys,
    };
    let mut ad = DeloAdapter::new(&s.delo, choice, missing, layers, Proxy::None);
    if probes.is_some() {
        ad = ad.record_selections();
    }
    let out = tr.vilt.forward(&mut tape, &batch.data, &mut ad)?;
    if let Some(p) = probes {
        collect_probes(p, &tape, &ad, missing)?;
    }
    groups_of(&majority(&ad.picks, trained + 1))
        .into_iter()
        .map(|(k, rows)| {
            let pooled = tape.gather_rows(out.pooled, &row_index(&tape, &rows)?)?;
            let logits = head_logits(&mut tape, &bound[k], pooled)?;
            Ok(TaskLogits::own(k, rows, tape.value(logits).clone()))
        })
        .collect()
}

/// One forward per picked task over its own samples (the CPU, and any device when recording
/// probes): each sample's result is exactly its task's forward of its group.
fn answer_by_group(
    tr: &Trainer,
    batch: &crate::data::Batch<crate::vilt::ViltInputs>,
    missing: &[MissingType],
    picked: &[usize],
    mut probes: Option<&mut Probes>,
) -> Result<Vec<TaskLogits>> {
    let s = tr.settings();
    let layers = tr.vilt.cfg.num_hidden_layers;
    groups_of(picked)
        .into_iter()
        .map(|(k, rows)| {
            let sub = match rows.len() == picked.len() {
                true => batch.data.clone(),
                false => batch.data.select(&rows)?,
            };
            let sub_missing: Vec<MissingType> = rows.iter().map(|&i| missing[i]).collect();
            // A tape per group: its intermediates go back to the device block cache once its
            // forward is queued, so a batch needs one group's buffers at a time.
            let mut tape = Tape::new(tr.device.clone());
            let bound = BoundTask::constants(&mut tape, &tr.tasks[k].params);
            let choice = TaskChoice::One(&bound);
            let mut ad = DeloAdapter::new(&s.delo, choice, &sub_missing, layers, Proxy::None);
            if probes.is_some() {
                ad = ad.record_selections();
            }
            let out = tr.vilt.forward(&mut tape, &sub, &mut ad)?;
            if let Some(p) = probes.as_deref_mut() {
                collect_probes(p, &tape, &ad, &sub_missing)?;
            }
            let logits = head_logits(&mut tape, &bound, out.pooled)?;
            Ok(TaskLogits::own(k, rows, tape.value(logits).clone()))
        })
        .collect()
}

/// One picked task's logits `[rows, classes]` for a batch, and where its samples sit in them.
struct TaskLogits {
    task: usize,
    /// The task's samples (rows of the batch).
    samples: Vec<usize>,
    /// Each sample's row of `logits`; the other rows (padding, other tasks' samples) are dropped.
    rows: Vec<usize>,
    logits: Tensor,
}

impl TaskLogits {
    /// Logits of a forward of the task's own samples, in order.
    fn own(task: usize, samples: Vec<usize>, logits: Tensor) -> TaskLogits {
        let rows = (0..samples.len()).collect();
        TaskLogits {
            task,
            samples,
            rows,
            logits,
        }
    }
}

/// The forward of a whole batch on CUDA whose samples `picked` different tasks: one forward
/// of the batch, padded by [`bucket_rows`], in which each sample takes its own task's adapters
/// ([`TaskChoice::PerSample`]), then every picked task's head over all rows. Every buffer's
/// shape depends only on the batch's size and text length, not on how the batch splits
/// between tasks, so once batches picking as many tasks as any later one have run, the
/// device block cache serves every buffer. Each picked task's adapters run on every row (the
/// rows of other tasks are dropped), which on a GPU costs far less than the launches and
/// buffers of a forward per task; the price is memory: the tape holds each picked task's
/// adapter outputs for the whole batch until the forward ends. Returns, per picked task
/// (ascending), its samples at the same rows of its logits, still on the device.
fn answer_mixed(
    tr: &Trainer,
    batch: &crate::data::Batch<crate::vilt::ViltInputs>,
    missing: &[MissingType],
    picked: &[usize],
) -> Result<Vec<TaskLogits>> {
    let s = tr.settings();
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<usize> = (0..picked.len()).collect();
    let run = bucket_rows(&all, s.eval_batch_size);
    let data = match run == all {
        true => batch.data.clone(),
        false => batch.data.select(&run)?,
    };
    let run_missing: Vec<MissingType> = run.iter().map(|&i| missing[i]).collect();
    let groups = groups_of(picked);
    // Per sample: the position of its task among the picked ones.
    let mut position = vec![0; picked.len()];
    for (j, (_, rows)) in groups.iter().enumerate() {
        rows.iter().for_each(|&i| position[i] = j);
    }
    let mut tape = Tape::new(tr.device.clone());
    let run_position: Vec<usize> = run.iter().map(|&i| position[i]).collect();
    let bound: Vec<BoundTask> = groups
        .iter()
        .map(|(k, _)| BoundTask::constants(&mut tape, &tr.tasks[*k].params))
        .collect();
    // A batch of one task needs no choosing (nor the choices' upload).
    let choice = match bound.len() {
        1 => None,
        _ => Some(row_index(&tape, &run_position)?),
    };
    let choice_of = match &choice {
        None => TaskChoice::One(&bound[0]),
        Some(choice) => TaskChoice::PerSample {
            tasks: &bound,
            choice,
        },
    };
    let layers = tr.vilt.cfg.num_hidden_layers;
    let mut ad = DeloAdapter::new(&s.delo, choice_of, &run_missing, layers, Proxy::None);
    let out = tr.vilt.forward(&mut tape, &data, &mut ad)?;
    groups
        .into_iter()
        .zip(&bound)
        .map(|((k, rows), task)| {
            let logits = head_logits(&mut tape, task, out.pooled)?;
            Ok(TaskLogits {
                task: k,
                samples: rows.clone(),
                rows,
                logits: tape.value(logits).clone(),
            })
        })
        .collect()
}

/// `rows` followed by copies of its first row up to a bucket size: the smallest power of two
/// that holds them, or `batch` (the evaluation batch size) when that is smaller. A last,
/// partial batch then has one of about log₂(batch) + 1 shapes instead of any size up to the
/// batch's. The copies' answers are dropped: samples do not interact in the encoder,
/// so they change no sample's logits and no metric.
pub(crate) fn bucket_rows(rows: &[usize], batch: usize) -> Vec<usize> {
    let size = rows.len().next_power_of_two().min(batch.max(rows.len()));
    let mut out = rows.to_vec();
    out.resize(size, rows.first().copied().unwrap_or(0));
    out
}

/// Evaluates `task` on `split` with the tasks trained so far (0..=`trained`).
pub fn evaluate(
    tr: &Trainer,
    task: usize,
    split: Split,
    trained: usize,
    probes: Option<&mut Probes>,
) -> Result<(Cell, Vec<SamplePrediction>)> {
    evaluate_counted(tr, task, split, trained, probes, None)
}

/// What the CUDA driver has been asked so far (`None` on the CPU).
fn driver_counts(tr: &Trainer) -> Option<DriverCounts> {
    match &tr.device {
        Device::Cuda(b) => Some(b.counts()),
        Device::Cpu => None,
    }
}

/// [`evaluate`], appending to `work` (on CUDA) what each batch asked of the driver: its
/// uploads, launches, copies, waits and allocations, counted by the backend.
fn evaluate_counted(
    tr: &Trainer,
    task: usize,
    split: Split,
    trained: usize,
    mut probes: Option<&mut Probes>,
    mut work: Option<&mut Vec<DriverCounts>>,
) -> Result<(Cell, Vec<SamplePrediction>)> {
    let n_cls = tr.bench.tasks[task].classes.len();
    let loader = tr.loader(task, split, false)?;
    let (mut total, mut correct, mut id_correct) = (0usize, 0usize, 0usize);
    let mut f1 = MultiLabelCounts::new(n_cls);
    let mut predictions = Vec::new();
    let seq = tr.settings().delo.variant.shares_one_model();
    // Per head: its columns as global classes; per task: its columns in the latest head.
    let columns: Vec<Vec<usize>> = (0..=trained).map(|k| tr.head_classes(k)).collect();
    let spans: Vec<_> = (0..=trained).map(|j| tr.head_span(j, trained)).collect();
    let mut epoch = loader.epoch(0);
    for batch in &mut epoch {
        let batch = batch?;
        let before = driver_counts(tr);
        let answers = answer_batch(tr, &batch, task, trained, probes.as_deref_mut())?;
        if let (Some(w), Some(before), Some(after)) =
            (work.as_deref_mut(), before, driver_counts(tr))
        {
            w.push(after.since(&before));
        }
        for (a, sample) in answers.iter().zip(&batch.samples) {
            let columns = &columns[a.k];
            let top = a.top();
            let attributed = a.attributed(seq, &spans);
            let span = spans[task].clone();
            let own = (seq || a.k == task).then_some(span);
            id_correct += (attributed == task) as usize;
            total += 1;
            let predicted: Vec<usize> = match (&sample.label, &sample.local_label) {
                (Label::Single(truth), _) => {
                    correct += (columns[top] == *truth) as usize;
                    vec![columns[top]]
                }
                (_, Label::Multi(truth)) => {
                    let positives: Vec<bool> = match &own {
                        Some(r) => a.logits[r.clone()].iter().map(|&x| x > 0.0).collect(),
                        None => vec![false; n_cls],
                    };
                    let truth: Vec<bool> = truth.iter().map(|&x| x != 0).collect();
                    f1.add(&positives, &truth)?;
                    let classes = &tr.bench.tasks[task].classes;
                    (0..n_cls)
                        .filter(|&c| positives[c])
                        .map(|c| classes[c])
                        .collect()
                }
                _ => {
                    return Err(crate::Error::Msg(
                        "a multi-label sample without a multi-hot local label".into(),
                    ))
                }
            };
            predictions.push((sample.index, attributed, predicted));
        }
    }
    tr.note_skipped(task, split, epoch.skipped());
    let metric = match tr.bench.kind {
        LabelKind::Single => 100.0 * correct as f64 / total.max(1) as f64,
        LabelKind::Multi => f1.f1_macro()?,
    };
    Ok((
        Cell {
            metric,
            task_id: 100.0 * id_correct as f64 / total.max(1) as f64,
            empty: total == 0,
        },
        predictions,
    ))
}

fn collect_probes(
    p: &mut Probes,
    tape: &Tape,
    ad: &DeloAdapter<'_>,
    missing: &[MissingType],
) -> Result<()> {
    for (name, sa, sb) in ad.selections.iter().flatten() {
        for (map, sel) in [(&mut p.selection_a, sa), (&mut p.selection_b, sb)] {
            let counts = map.entry(name.clone()).or_default();
            for f in sel.to_vec_i32()? {
                let f = f as usize;
                if counts.len() <= f {
                    counts.resize(f + 1, 0);
                }
                counts[f] += 1;
            }
        }
    }
    if let Some((qv, qt)) = ad.last_queries {
        let be = tape.device().backend();
        let cos = be.cosine(tape.value(qv), tape.value(qt))?.to_vec_f32()?;
        p.cos_qv_qt.extend(
            cos.iter()
                .zip(missing)
                .filter(|(_, m)| **m == MissingType::None)
                .map(|(c, _)| *c),
        );
    }
    Ok(())
}

/// Val and test of every task seen so far, after training task `t`.
/// With `probes`, the test evaluations also record factor selections and cos(q_v, q_t).
pub fn evaluate_after(tr: &Trainer, t: usize, mut probes: Option<&mut Probes>) -> Result<TaskRow> {
    let mut row = TaskRow::default();
    for j in 0..=t {
        row.val.push(evaluate(tr, j, Split::Val, t, None)?.0);
        row.test
            .push(evaluate(tr, j, Split::Test, t, probes.as_deref_mut())?.0);
    }
    Ok(row)
}

pub fn row_summary(t: usize, row: &TaskRow) -> String {
    // A cell without samples shows as "-", never as a 0 that reads like a result.
    let f = |cells: &[Cell]| {
        cells
            .iter()
            .map(|c| match c.empty {
                true => "-".into(),
                false => format!("{:.1}", c.metric),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let id = |cells: &[Cell]| {
        cells
            .iter()
            .map(|c| match c.empty {
                true => "-".into(),
                false => format!("{:.0}", c.task_id),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "after task {t}: test [{}] (task-id % [{}]); val [{}]",
        f(&row.test),
        id(&row.test),
        f(&row.val)
    )
}

/// `delo eval`: every finished task of a run on `split`, with the task keys (or `oracle`),
/// optionally writing per-sample predictions as CSV. Returns a Markdown table.
pub fn eval_run(
    tr: &Trainer,
    split: Split,
    predictions_csv: Option<&std::path::Path>,
) -> Result<String> {
    let done = tr.tasks.len();
    if done == 0 {
        return Err(crate::Error::Msg(format!(
            "{} has no finished task to evaluate",
            tr.run_dir.display()
        )));
    }
    let mut table = format!(
        "| task | {} | task-id accuracy |\n|---:|---:|---:|\n",
        if tr.bench.kind == LabelKind::Single {
            "accuracy"
        } else {
            "F1-macro"
        }
    );
    let mut csv = String::from("item_index,task,predicted_task,prediction\n");
    let (mut sum, mut counted) = (0.0, 0usize);
    let mut work = tr.device.is_cuda().then(Vec::new);
    for j in 0..done {
        let (cell, preds) = evaluate_counted(tr, j, split, done - 1, None, work.as_mut())?;
        if cell.empty {
            table += &format!("| {} | no samples | no samples |\n", j + 1);
            continue;
        }
        sum += cell.metric;
        counted += 1;
        table += &format!("| {} | {:.2} | {:.2} |\n", j + 1, cell.metric, cell.task_id);
        for (index, k, classes) in preds {
            let pred: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
            csv += &format!("{index},{j},{k},{}\n", pred.join("|"));
        }
    }
    match counted {
        0 => table += "| mean (AP) | no samples | |\n",
        n => table += &format!("| mean (AP) | {:.2} | |\n", sum / n as f64),
    }
    let skipped = tr.skipped_images();
    if !skipped.is_empty() {
        table += &format!(
            "\n{} image(s) could not be read and were left out (--skip-bad):\n",
            skipped.len()
        );
        for s in &skipped {
            table += &format!("- item {} ({}): {}\n", s.item, s.split, s.error);
        }
    }
    if let Some(work) = work {
        table += &driver_work(&work);
    }
    if let Some(path) = predictions_csv {
        crate::st::write_atomic(path, csv.as_bytes())?;
    }
    Ok(table)
}

/// The mean driver work of the evaluation batches after the first (whose buffers fill the
/// device block cache), as one line of `delo eval`'s output.
fn driver_work(batches: &[DriverCounts]) -> String {
    let steady = if batches.len() > 1 {
        &batches[1..]
    } else {
        batches
    };
    let n = steady.len().max(1) as f64;
    let mean = |f: fn(&DriverCounts) -> u64| steady.iter().map(f).sum::<u64>() as f64 / n;
    format!(
        "\nCUDA driver work per evaluation batch (mean of {} batches after the first, counted by the backend): launches {:.1}, memsets + copies {:.1}, host syncs {:.2}, event waits {:.2}, allocations {:.2}, uploads {:.1}\n",
        steady.len(),
        mean(|c| c.launches),
        mean(|c| c.memops),
        mean(|c| c.host_syncs),
        mean(|c| c.event_waits),
        mean(|c| c.allocs),
        mean(|c| c.uploads),
    )
}

#[cfg(test)]
mod tests {
    use super::bucket_rows;

    #[test]
    fn groups_are_padded_with_their_first_row_to_a_few_sizes() {
        assert_eq!(bucket_rows(&[3], 16), vec![3]);
        assert_eq!(bucket_rows(&[2, 5, 9], 16), vec![2, 5, 9, 2]);
        assert_eq!(bucket_rows(&(0..9).collect::<Vec<_>>(), 16).len(), 16);
        // A batch size that is not a power of two caps the bucket.
        assert_eq!(bucket_rows(&(0..9).collect::<Vec<_>>(), 12).len(), 12);
        assert_eq!(bucket_rows(&(0..12).collect::<Vec<_>>(), 12).len(), 12);
        let sizes: std::collections::BTreeSet<usize> = (1..=16)
            .map(|n| bucket_rows(&(0..n).collect::<Vec<_>>(), 16).len())
            .collect();
        assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![1, 2, 4, 8, 16]);
    }
}
