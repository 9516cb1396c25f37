//! Small groups of one-element results (a step's loss terms) read back without stopping the
//! device: the copies are queued into pinned host memory with the device error word beside
//! them, and waited for later, once more work has been queued behind them: one event wait per
//! group. The trainer shows each step's losses (and checks them for NaN) one step late this
//! way, so a step never waits for its own kernels (docs/engine.md#asynchronous-read-back).

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaEvent};

use super::memory::{Count, PinnedBuf};
use super::{cuda_err, CudaBackend, Ptr};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A ring of `depth` pending reads of up to `width` values each; see the module docs.
pub struct ScalarReadback {
    be: Arc<CudaBackend>,
    /// `slots` groups of `width` f32 values and the error word (i32); freed after every
    /// pending slot's wait (see `Drop`).
    pinned: PinnedBuf,
    slots: usize,
    width: usize,
    /// How many values each slot holds, once queued.
    lens: Vec<usize>,
    events: Vec<CudaEvent>,
    /// Slots queued and not yet taken, oldest first.
    queued: VecDeque<usize>,
}

impl ScalarReadback {
    /// A readback ring of `depth` ≥ 1 slots of at most `width` ≥ 1 values on `be`'s stream.
    pub fn new(be: Arc<CudaBackend>, depth: usize, width: usize) -> Result<ScalarReadback> {
        let (depth, width) = (depth.max(1), width.max(1));
        be.bind()?;
        let pinned = PinnedBuf::new(4 * (width + 1) * depth, "a scalar readback")?;
        let events = (0..depth)
            .map(|_| {
                be.ctx
                    .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                    .map_err(cuda_err("creating an event"))
            })
            .collect::<Result<_>>()?;
        Ok(ScalarReadback {
            be,
            pinned,
            slots: depth,
            width,
            lens: vec![0; depth],
            events,
            queued: VecDeque::new(),
        })
    }

    /// Queues the copies of the one-element f32 tensors `group` (at most `width`) and of the
    /// error word, then clears the word, so that each group carries the kernel errors of the
    /// work queued since the previous one. Fails when every slot is still pending: take the
    /// oldest first.
    pub fn push(&mut self, group: &[&Tensor]) -> Result<()> {
        const OP: &str = "scalar readback";
        if group.len() > self.width {
            return Err(Error::shape(
                OP,
                format!(
                    "{} values in a group of at most {}",
                    group.len(),
                    self.width
                ),
            ));
        }
        if let Some(t) = group.iter().find(|t| t.numel() != 1) {
            return Err(Error::shape(
                OP,
                format!("expected one element, got shape {:?}", t.shape()),
            ));
        }
        if self.queued.len() == self.slots {
            return Err(Error::Msg(format!(
                "{OP}: all {} slots are pending; take a value first",
                self.slots
            )));
        }
        self.be.not_traced(OP)?;
        let srcs = group
            .iter()
            .map(|t| self.be.ptr(t, DType::F32, OP))
            .collect::<Result<Vec<Ptr>>>()?;
        // The slot after the newest pending one (the ring's free slots follow it).
        let slot = self.queued.back().map_or(0, |&s| (s + 1) % self.slots);
        let queued = self.queue_copies(slot, &srcs);
        if queued.is_err() {
            // A copy may be queued into a slot that is not marked pending: let it land before
            // the slot (or the pinned memory) is used again.
            let _ = self.be.sync_stream();
        }
        queued?;
        self.lens[slot] = srcs.len();
        self.queued.push_back(slot);
        Ok(())
    }

    fn queue_copies(&self, slot: usize, srcs: &[Ptr]) -> Result<()> {
        const OP: &str = "scalar readback";
        let be = &self.be;
        be.bind()?;
        let w = self.width + 1;
        // SAFETY: the slot's words are ours and not pending (checked by the caller); the
        // sources are live device memory of this backend, kept alive by stream order until the
        // copies run.
        unsafe {
            let host = std::slice::from_raw_parts_mut(self.words().add(w * slot), w);
            let stream = be.stream.cu_stream();
            for (i, src) in srcs.iter().enumerate() {
                result::memcpy_dtoh_async(&mut host[i..i + 1], src.0, stream)
                    .map_err(cuda_err(OP))?;
            }
            result::memcpy_dtoh_async(&mut host[w - 1..], be.err_ptr().0, stream)
                .map_err(cuda_err(OP))?;
            be.memset0(be.err_ptr(), 4)?;
        }
        self.events[slot]
            .record(&be.stream)
            .map_err(cuda_err("recording an event"))
    }

    /// The pinned slots as 32-bit words.
    fn words(&self) -> *mut u32 {
        self.pinned.ptr() as *mut u32
    }

    /// Number of groups queued and not yet taken.
    pub fn pending(&self) -> usize {
        self.queued.len()
    }

    /// Waits for the oldest queued group and returns its values (`None` when nothing is
    /// queued). Fails with the kernel error a step met, if its error word was set.
    pub fn pop(&mut self) -> Result<Option<Vec<f32>>> {
        let Some(slot) = self.queued.pop_front() else {
            return Ok(None);
        };
        self.be.counters.add(Count::EventWait);
        self.events[slot]
            .synchronize()
            .map_err(cuda_err("waiting for a queued read"))?;
        let w = self.width + 1;
        // SAFETY: the copies into this slot are complete (its event has passed).
        let words = unsafe { std::slice::from_raw_parts(self.words().add(w * slot), w) };
        let code = words[w - 1] as i32;
        if code != 0 {
            // The word was cleared when this group was queued: later groups are unaffected.
            return Err(super::kernel_error(code));
        }
        Ok(Some(
            words[..self.lens[slot]]
                .iter()
                .map(|&b| f32::from_bits(b))
                .collect(),
        ))
    }
}

impl Drop for ScalarReadback {
    fn drop(&mut self) {
        // The pinned memory may only go once no queued copy can still write into it, and its
        // free needs the context current.
        let _ = self.be.bind();
        while let Some(slot) = self.queued.pop_front() {
            let _ = self.events[slot].synchronize();
        }
    }
}
