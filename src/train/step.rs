//! One training step of one task, as both the trainer and `delo bench train` run it: the
//! objective of eq. (9)–(10) (main forward and, with λ_con > 0, the L_con proxy forwards),
//! backward, one AdamW step over the task's parameters and the EMA of its task keys (eq. 7).
//!
//! Nothing here reads the device: the loss stays a one-element device tensor, which callers
//! queue on a [`ScalarQueue`] and read one step later, so that on a GPU the host prepares the
//! next step while the device runs this one (docs/engine.md#asynchronous-read-back).

use std::collections::VecDeque;

use crate::autograd::{ParamId, Tape};
use crate::backend::cuda::ScalarReadback;
use crate::backend::Device;
use crate::data::MissingType;
use crate::delo::adapter::BoundTask;
use crate::delo::config::{DeloConfig, TaskKeySource};
use crate::delo::keys::ema_key;
use crate::delo::losses::{batch_losses, Targets};
use crate::error::Result;
use crate::params::ParamSet;
use crate::tensor::Tensor;
use crate::vilt::{Vilt, ViltInputs};

/// What one task trains: its parameters and, per key table, the running task key `[d]`
/// (`None` before the first batch).
pub struct TaskState {
    pub params: ParamSet,
    pub keys: Vec<Option<Tensor>>,
}

/// AdamW's settings for one step (docs/method.md#optimisation).
#[derive(Clone, Copy, Debug)]
pub struct StepOptim {
    /// This step's learning rate (after warm-up and cosine decay).
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
}

/// One batch as a step takes it: host tensors, moved to the model's device by the step.
#[derive(Clone, Copy)]
pub struct StepBatch<'a> {
    pub inputs: &'a ViltInputs,
    pub missing: &'a [MissingType],
    pub targets: &'a Targets,
}

/// [`train_step`] on a CUDA device replayed as a CUDA graph when `graph` is set (a kind of step
/// runs kernel by kernel when first seen and as a graph from its second sight on; see
/// `backend::cuda::graph`); as is otherwise.
pub fn run_step(
    vilt: &Vilt,
    cfg: &DeloConfig,
    state: &mut TaskState,
    batch: &StepBatch,
    optim: StepOptim,
    graph: bool,
) -> Result<StepLosses> {
    match &vilt.device {
        Device::Cuda(b) if graph => b.graphed(|| train_step(vilt, cfg, state, batch, optim)),
        _ => train_step(vilt, cfg, state, batch, optim),
    }
}

/// The loss terms of one step (eq. 9–10) as `[1]` f32 tensors on the device, unread: the total
/// L, L_c, and L_align and L_con where the step computed them (`None` when their λ is 0 or the
/// batch has no complete sample).
pub struct StepLosses {
    pub total: Tensor,
    pub c: Tensor,
    pub align: Option<Tensor>,
    pub con: Option<Tensor>,
}

/// Runs one step on `batch` (host tensors, moved to the model's device) and returns its loss
/// terms as `[1]` tensors on the device. The keys are updated from the task query of the
/// `--task-key` source: the frozen model's pooled output, the input embeddings (eq. 7), or
/// every layer's input with one table per layer.
pub fn train_step(
    vilt: &Vilt,
    cfg: &DeloConfig,
    state: &mut TaskState,
    batch: &StepBatch,
    optim: StepOptim,
) -> Result<StepLosses> {
    let StepBatch {
        inputs,
        missing,
        targets,
    } = *batch;
    let mut tape = Tape::new(vilt.device.clone());
    let frozen_query = match cfg.task_key {
        TaskKeySource::Frozen => Some(vilt.infer(inputs)?.pooled),
        _ => None,
    };
    let params = &mut state.params;
    let vars = (0..params.len())
        .map(|i| {
            let name = params.slots()[i].name.clone();
            Ok((name, params.bind(&mut tape, ParamId(i))?))
        })
        .collect::<Result<_>>()?;
    let bound = BoundTask::new(vars);
    let losses = batch_losses(vilt, cfg, &mut tape, &bound, inputs, missing, targets)?;
    let value = |v| tape.value(v).clone();
    let loss = StepLosses {
        total: value(losses.total),
        c: value(losses.c),
        align: losses.align.map(value),
        con: losses.con.map(value),
    };
    let grads = tape.backward(losses.total)?;
    params.accumulate(&grads)?;
    params.adamw_step(optim.lr, optim.betas, optim.eps, optim.weight_decay)?;
    params.zero_grads()?;
    let queries = match (frozen_query, cfg.task_key) {
        (Some(q), _) => vec![q],
        (None, TaskKeySource::Layer) => losses.layer_queries,
        (None, _) => vec![losses.task_query],
    };
    let be = vilt.device.backend();
    for (key, q) in state.keys.iter_mut().zip(&queries) {
        ema_key(be, key, q, cfg.ema_beta)?;
    }
    Ok(loss)
}

/// Groups of one-element device values (a step's loss terms) read back in the order queued,
/// each group waited for only when taken: on CUDA asynchronous copies into pinned memory with
/// the device error word beside them, one event wait per group; on the CPU the values
/// themselves.
pub enum ScalarQueue {
    /// The groups, the most the queue holds and the most values a group holds.
    Host(VecDeque<Vec<f32>>, usize, usize),
    Cuda(ScalarReadback),
}

impl ScalarQueue {
    /// A queue holding at most `depth` groups of at most `width` values not yet taken.
    pub fn new(device: &Device, depth: usize, width: usize) -> Result<ScalarQueue> {
        Ok(match device {
            Device::Cpu => ScalarQueue::Host(VecDeque::new(), depth.max(1), width.max(1)),
            Device::Cuda(b) => ScalarQueue::Cuda(ScalarReadback::new(b.clone(), depth, width)?),
        })
    }
    /// Queues the values of the one-element f32 tensors `group`. Fails when the queue already
    /// holds `depth` groups: take the oldest first.
    pub fn push(&mut self, group: &[&Tensor]) -> Result<()> {
        match self {
            ScalarQueue::Host(q, depth, _) if q.len() == *depth => {
                return Err(crate::error::Error::Msg(format!(
                    "scalar readback: all {depth} slots are pending; take a value first"
                )))
            }
            ScalarQueue::Host(_, _, width) if group.len() > *width => {
                return Err(crate::error::Error::shape(
                    "scalar readback",
                    format!("{} values in a group of at most {width}", group.len()),
                ))
            }
            ScalarQueue::Host(q, _, _) => {
                q.push_back(group.iter().map(|t| t.item()).collect::<Result<_>>()?)
            }
            ScalarQueue::Cuda(r) => r.push(group)?,
        }
        Ok(())
    }
    /// Queues `group` and, once more than one group waits, takes the oldest: values come out
    /// one step late, so that the device runs one step while the host waits for the previous
    /// one. Drain the rest with [`ScalarQueue::pop`].
    pub fn push_late(&mut self, group: &[&Tensor]) -> Result<Option<Vec<f32>>> {
        self.push(group)?;
        match self.pending() > 1 {
            true => self.pop(),
            false => Ok(None),
        }
    }
    /// The oldest group not yet taken (waiting for it on a GPU); `None` when none is queued.
    pub fn pop(&mut self) -> Result<Option<Vec<f32>>> {
        match self {
            ScalarQueue::Host(q, _, _) => Ok(q.pop_front()),
            ScalarQueue::Cuda(r) => r.pop(),
        }
    }
    /// Groups queued and not yet taken.
    pub fn pending(&self) -> usize {
        match self {
            ScalarQueue::Host(q, _, _) => q.len(),
            ScalarQueue::Cuda(r) => r.pending(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_queue_keeps_groups_in_order_and_refuses_what_does_not_fit() {
        let v = |x: f32| Tensor::from_f32(vec![x], &[1]).unwrap();
        let mut q = ScalarQueue::new(&Device::Cpu, 2, 2).unwrap();
        assert_eq!(q.push_late(&[&v(1.0), &v(2.0)]).unwrap(), None);
        assert!(
            q.push(&[&v(1.0), &v(2.0), &v(3.0)]).is_err(),
            "three in a group of two"
        );
        assert_eq!(q.push_late(&[&v(3.0)]).unwrap(), Some(vec![1.0, 2.0]));
        q.push(&[&v(4.0)]).unwrap();
        assert!(q.push(&[&v(5.0)]).is_err(), "a third group in two slots");
        assert_eq!(q.pop().unwrap(), Some(vec![3.0]));
        assert_eq!(q.pop().unwrap(), Some(vec![4.0]));
        assert_eq!(q.pop().unwrap(), None);
    }
}
