//! One-element results read back without stopping the device: the copy is queued into pinned
//! host memory with the device error word beside it, and waited for later, once more work has
//! been queued behind it. The trainer shows each step's loss (and checks it for NaN) one step
//! late this way, so a step never waits for its own kernels (ENGINE.md "Speed, measured honestly").

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaEvent};

use super::memory::Count;
use super::{cuda_err, CudaBackend};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Page-locked host memory for `slots` pairs of (value f32, error word i32).
struct Pinned {
    ptr: *mut u32,
    slots: usize,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host below and no longer referenced by queued copies
        // (the readback waits for every outstanding slot before it is dropped).
        let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}

/// A ring of `depth` pending one-element reads; see the module docs.
pub struct ScalarReadback {
    be: Arc<CudaBackend>,
    pinned: Pinned,
    events: Vec<CudaEvent>,
    /// Slots queued and not yet taken, oldest first.
    queued: VecDeque<usize>,
    next: usize,
}

// SAFETY: the pinned pointer is owned by this value alone and only touched through `&mut self`.
unsafe impl Send for ScalarReadback {}

impl ScalarReadback {
    /// A readback ring of `depth` ≥ 1 slots on `be`'s stream.
    pub fn new(be: Arc<CudaBackend>, depth: usize) -> Result<ScalarReadback> {
        let depth = depth.max(1);
        be.bind()?;
        // SAFETY: a plain page-locked allocation of 8 bytes per slot.
        let ptr = unsafe { result::malloc_host(8 * depth, 0) }
            .map_err(cuda_err("allocating pinned host memory"))? as *mut u32;
        let pinned = Pinned { ptr, slots: depth };
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
            events,
            queued: VecDeque::new(),
            next: 0,
        })
    }

    /// Queues the copy of the one-element f32 tensor `t` (and of the error word). Fails when
    /// every slot is still pending: take the oldest first.
    pub fn push(&mut self, t: &Tensor) -> Result<()> {
        const OP: &str = "scalar readback";
        if t.numel() != 1 {
            return Err(Error::shape(
                OP,
                format!("expected one element, got shape {:?}", t.shape()),
            ));
        }
        if self.queued.len() == self.pinned.slots {
            return Err(Error::Msg(format!(
                "{OP}: all {} slots are pending; take a value first",
                self.pinned.slots
            )));
        }
        let src = self.be.ptr(t, DType::F32, OP)?;
        let slot = self.next;
        self.next = (slot + 1) % self.pinned.slots;
        let be = &self.be;
        be.bind()?;
        // SAFETY: the slot's 8 bytes are ours and not pending (checked above); the sources are
        // live device memory of this backend, kept alive by stream order until the copies run.
        unsafe {
            let host = std::slice::from_raw_parts_mut(self.pinned.ptr.add(2 * slot), 2);
            let stream = be.stream.cu_stream();
            result::memcpy_dtoh_async(&mut host[..1], src.0, stream).map_err(cuda_err(OP))?;
            result::memcpy_dtoh_async(&mut host[1..], be.err_ptr().0, stream)
                .map_err(cuda_err(OP))?;
        }
        self.events[slot]
            .record(&be.stream)
            .map_err(cuda_err("recording an event"))?;
        self.queued.push_back(slot);
        Ok(())
    }

    /// Number of values queued and not yet taken.
    pub fn pending(&self) -> usize {
        self.queued.len()
    }

    /// Waits for the oldest queued value and returns it (`None` when nothing is queued).
    /// Fails with the kernel error a step met, if its error word was set.
    pub fn pop(&mut self) -> Result<Option<f32>> {
        let Some(slot) = self.queued.pop_front() else {
            return Ok(None);
        };
        self.be.counters.add(Count::EventWait);
        self.events[slot]
            .synchronize()
            .map_err(cuda_err("waiting for a queued read"))?;
        // SAFETY: the copies into this slot are complete (its event has passed).
        let (bits, code) = unsafe {
            (
                *self.pinned.ptr.add(2 * slot),
                *self.pinned.ptr.add(2 * slot + 1) as i32,
            )
        };
        self.be.raise_kernel_error(code)?;
        Ok(Some(f32::from_bits(bits)))
    }
}

impl Drop for ScalarReadback {
    fn drop(&mut self) {
        // The pinned memory may only go once no queued copy can still write into it.
        while let Some(slot) = self.queued.pop_front() {
            let _ = self.events[slot].synchronize();
        }
    }
}
