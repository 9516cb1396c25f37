//! The Task-Key memory (eq. 7–8, docs/method.md#task-key-memory): one key per task, an EMA of the
//! task queries of its training batches, and per-sample task prediction by cosine similarity. With
//! `--task-key layer` there is one such table per encoder layer.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One key table: `keys[k]` is task k's key.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskKeys {
    pub keys: Vec<Vec<f32>>,
}

/// Eq. (7) on the query's device: key ← β·key + (1−β)·mean_batch(q) for `q [n, d]`, in place;
/// the first batch (`key` = None) sets the batch mean itself, not a decayed zero.
pub fn ema_key(be: &dyn Backend, key: &mut Option<Tensor>, q: &Tensor, beta: f32) -> Result<()> {
    if q.rank() != 2 || q.dim(0) == 0 {
        return Err(Error::shape(
            "task-key update",
            format!(
                "expected a non-empty [n, d] batch of queries, got {:?}",
                q.shape()
            ),
        ));
    }
    let sum = be.sum_rows(q)?;
    let n = q.dim(0) as f32;
    match key {
        None => *key = Some(be.scale(&sum, 1.0 / n)?),
        Some(k) => be.axpby(k, beta, &sum, (1.0 - beta) / n)?,
    }
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
    dot / (na * nb)
}

impl TaskKeys {
    /// Appends the key of the task that just finished.
    pub fn push(&mut self, key: &Tensor) -> Result<()> {
        self.keys.push(key.to_vec_f32()?);
        Ok(())
    }

    /// Eq. (8): k* = argmax_k cos(q, key_k) for every row of `q [n, d]`, among the first
    /// `seen` keys; ties go to the lower task.
    pub fn predict(&self, q: &[f32], d: usize, seen: usize) -> Vec<usize> {
        q.chunks(d)
            .map(|row| {
                (0..seen.min(self.keys.len()))
                    .map(|k| (k, cosine(row, &self.keys[k])))
                    .fold((0, f32::NEG_INFINITY), |best, (k, c)| {
                        if c > best.1 {
                            (k, c)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect()
    }
}

/// The head's task under `--task-key layer`: per sample, the task most layers picked (ties to
/// the lower task). `picks[l][b]` is layer l's task for sample b.
pub fn majority(picks: &[Vec<usize>], tasks: usize) -> Vec<usize> {
    let n = picks.first().map_or(0, Vec::len);
    (0..n)
        .map(|b| {
            let mut votes = vec![0usize; tasks];
            for layer in picks {
                votes[layer[b]] += 1;
            }
            (0..tasks).fold(0, |best, k| if votes[k] > votes[best] { k } else { best })
        })
        .collect()
}
