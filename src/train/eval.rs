//! Task-agnostic evaluation (CMML.md "Metrics"): the Task-Key memory picks k* per sample, the
//! head of k* predicts, a sample routed to the wrong task gets no correct label; task-id
//! accuracy is reported beside the metric.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::autograd::Tape;
use crate::data::{Label, LabelKind, MissingType, Split};
use crate::delo::adapter::{BoundTask, DeloAdapter, Proxy};
use crate::delo::config::TaskKeySource;
use crate::delo::losses::head_logits;
use crate::error::Result;
use crate::report::metrics::MultiLabelCounts;
use crate::train::Trainer;

/// One evaluated (split, task) cell: the metric in percent and the task-id accuracy in percent.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub metric: f64,
    pub task_id: f64,
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

/// One evaluated sample: its item index, the task whose head answered, and that head's logits.
pub type SamplePrediction = (usize, usize, Vec<f32>);

/// Predicted label of one sample, in global terms: a class id, or the positives among the
/// evaluated task's classes (empty when another task's head answered).
enum Prediction {
    Class(usize),
    Positives(Vec<bool>),
}

/// Evaluates `task` on `split` with the tasks trained so far (0..=`trained`).
pub fn evaluate(
    tr: &Trainer,
    task: usize,
    split: Split,
    trained: usize,
    mut probes: Option<&mut Probes>,
) -> Result<(Cell, Vec<SamplePrediction>)> {
    let s = tr.settings();
    let d = tr.vilt.cfg.hidden_size;
    let n_cls = tr.bench.tasks[task].classes.len();
    let loader = tr.loader(task, split, false)?;
    let (mut total, mut correct, mut id_correct) = (0usize, 0usize, 0usize);
    let mut f1 = MultiLabelCounts::new(n_cls);
    let mut predictions = Vec::new();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let missing: Vec<MissingType> = batch.samples.iter().map(|x| x.missing).collect();
        let picked: Vec<usize> = if s.delo.task_key == TaskKeySource::Oracle {
            vec![task; missing.len()]
        } else {
            let mut tape = Tape::new(tr.device.clone());
            let q = tr.task_query(&mut tape, &batch.data, &missing)?;
            tr.keys.predict(&q, d, trained + 1)
        };
        for k in 0..=trained {
            let rows: Vec<usize> = (0..picked.len()).filter(|&i| picked[i] == k).collect();
            if rows.is_empty() {
                continue;
            }
            let sub = if rows.len() == picked.len() {
                batch.data.clone()
            } else {
                batch.data.select(&rows)?
            };
            let sub_missing: Vec<MissingType> = rows.iter().map(|&i| missing[i]).collect();
            let mut tape = Tape::new(tr.device.clone());
            let bound = BoundTask::constants(&mut tape, &tr.tasks[k].params);
            let mut ad = DeloAdapter::new(
                &s.delo,
                &bound,
                &sub_missing,
                tr.vilt.cfg.num_hidden_layers,
                Proxy::None,
            );
            if probes.is_some() {
                ad = ad.record_selections();
            }
            let out = tr.vilt.forward(&mut tape, &sub, &mut ad)?;
            let logits = head_logits(&mut tape, &bound, out.pooled)?;
            let lv = tape.value(logits).to_vec_f32()?;
            let nk = tr.bench.tasks[k].classes.len();
            if let Some(p) = probes.as_deref_mut() {
                collect_probes(p, &tape, &ad, &sub_missing)?;
            }
            for (r, &i) in rows.iter().enumerate() {
                let row = &lv[r * nk..(r + 1) * nk];
                let sample = &batch.samples[i];
                id_correct += (k == task) as usize;
                total += 1;
                let pred = match tr.bench.kind {
                    LabelKind::Single => {
                        let best = (0..nk).fold(0, |b, c| if row[c] > row[b] { c } else { b });
                        Prediction::Class(tr.bench.tasks[k].classes[best])
                    }
                    LabelKind::Multi => Prediction::Positives(if k == task {
                        row.iter().map(|&x| x > 0.0).collect()
                    } else {
                        vec![false; n_cls]
                    }),
                };
                match (&pred, &sample.label, &sample.local_label) {
                    (Prediction::Class(c), Label::Single(truth), _) => {
                        correct += (c == truth) as usize
                    }
                    (Prediction::Positives(p), _, Label::Multi(truth)) => {
                        let truth: Vec<bool> = truth.iter().map(|&x| x != 0).collect();
                        f1.add(p, &truth)?;
                    }
                    _ => {
                        return Err(crate::Error::Msg(
                            "label kind and prediction kind disagree".into(),
                        ))
                    }
                }
                predictions.push((sample.index, k, row.to_vec()));
            }
        }
    }
    let metric = match tr.bench.kind {
        LabelKind::Single => 100.0 * correct as f64 / total.max(1) as f64,
        LabelKind::Multi => f1.f1_macro()?,
    };
    Ok((
        Cell {
            metric,
            task_id: 100.0 * id_correct as f64 / total.max(1) as f64,
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
    let f = |cells: &[Cell]| {
        cells
            .iter()
            .map(|c| format!("{:.1}", c.metric))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let id = |cells: &[Cell]| {
        cells
            .iter()
            .map(|c| format!("{:.0}", c.task_id))
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
    let mut sum = 0.0;
    for j in 0..done {
        let (cell, preds) = evaluate(tr, j, split, done - 1, None)?;
        sum += cell.metric;
        table += &format!("| {} | {:.2} | {:.2} |\n", j + 1, cell.metric, cell.task_id);
        for (index, k, logits) in preds {
            let classes = &tr.bench.tasks[k].classes;
            let pred = match tr.bench.kind {
                LabelKind::Single => classes
                    [(0..logits.len()).fold(0, |b, c| if logits[c] > logits[b] { c } else { b })]
                .to_string(),
                LabelKind::Multi => (0..logits.len())
                    .filter(|&c| logits[c] > 0.0)
                    .map(|c| classes[c].to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            };
            csv += &format!("{index},{j},{k},{pred}\n");
        }
    }
    table += &format!("| mean (AP) | {:.2} | |\n", sum / done as f64);
    if let Some(path) = predictions_csv {
        crate::st::write_atomic(path, csv.as_bytes())?;
    }
    Ok(table)
}
