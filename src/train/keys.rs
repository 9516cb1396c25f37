//! The Task-Key memory (eq. 7–8): one key per task, an EMA of the task queries of its
//! training batches, and per-sample task prediction by cosine similarity.

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskKeys {
    pub keys: Vec<Vec<f32>>,
}

/// Mean of the rows of `q [n, d]` (host values).
fn batch_mean(q: &[f32], d: usize) -> Vec<f32> {
    let n = (q.len() / d).max(1);
    let mut m = vec![0f32; d];
    for row in q.chunks(d) {
        m.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
    m.iter_mut().for_each(|a| *a /= n as f32);
    m
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8);
    dot / (na * nb)
}

impl TaskKeys {
    /// Eq. (8): key_k ← β·key_k + (1−β)·mean_batch(q_task), starting from the first batch mean.
    pub fn ema_update(&mut self, task: usize, q: &[f32], d: usize, beta: f32) -> Result<()> {
        let m = batch_mean(q, d);
        match task.cmp(&self.keys.len()) {
            std::cmp::Ordering::Less => {
                self.keys[task]
                    .iter_mut()
                    .zip(&m)
                    .for_each(|(k, &v)| *k = beta * *k + (1.0 - beta) * v);
            }
            std::cmp::Ordering::Equal => self.keys.push(m),
            std::cmp::Ordering::Greater => {
                return Err(Error::Msg(format!(
                    "task key {task} updated before key {}",
                    self.keys.len()
                )))
            }
        }
        Ok(())
    }

    /// Eq. (7): k* = argmax_k cos(q, key_k) for every row of `q [n, d]`, among the first
    /// `seen` keys.
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
