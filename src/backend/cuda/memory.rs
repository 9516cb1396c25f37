//! Device memory of the CUDA backend: a caching block allocator in front of the driver's
//! stream-ordered allocator, and host-side counters of what the backend asks of the driver.
//!
//! A training step allocates and frees the same few hundred buffers every time. Each
//! `cuMemAllocAsync` is a driver call (about a microsecond, and a memory node once steps are
//! captured as graphs), so freed blocks go to a free list keyed by their rounded size and the
//! next request of that size takes one back without calling the driver: after the first step,
//! a step allocates nothing (docs/engine.md#caching-allocator). Reusing a block at once is safe
//! because the backend has one stream: every kernel that used the block's previous owner is queued
//! before any kernel of the new owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, CudaStream, DriverError};
use serde::Serialize;

use super::graph::Recorder;
use crate::error::{Error, Result};

/// Running totals of the driver work that shapes a step's cost, counted on the host where the
/// backend asks for it (event records and the readback's small copies are not counted). Valid
/// on a real GPU as under the emulated driver, whose own counters `tests/cuda_step.rs` checks
/// these against.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    launches: AtomicU64,
    memops: AtomicU64,
    host_syncs: AtomicU64,
    event_waits: AtomicU64,
    allocs: AtomicU64,
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
    graph_launches: AtomicU64,
}

/// Which counter an event adds to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    /// A kernel launch or a cuBLAS call.
    Launch,
    /// A device-side memset or device-to-device copy.
    Memop,
    /// A host wait for all queued work: a stream synchronisation or a blocking copy to the host.
    HostSync,
    /// A host wait for one recorded event (work queued earlier, e.g. the previous step).
    EventWait,
    /// A `cuMemAllocAsync` (a request the block cache could not serve).
    Alloc,
    /// A host-to-device copy.
    Upload,
    /// A `cuGraphLaunch` (a whole step's work).
    GraphLaunch,
}

impl Counters {
    pub(crate) fn add(&self, c: Count) {
        let n = match c {
            Count::Launch => &self.launches,
            Count::Memop => &self.memops,
            Count::HostSync => &self.host_syncs,
            Count::EventWait => &self.event_waits,
            Count::Alloc => &self.allocs,
            Count::Upload => &self.uploads,
            Count::GraphLaunch => &self.graph_launches,
        };
        n.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `bytes` to the bytes copied host → device (a plain upload or a graph's payload).
    pub(crate) fn add_upload_bytes(&self, bytes: usize) {
        self.upload_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(crate) fn snapshot(&self) -> DriverCounts {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DriverCounts {
            launches: r(&self.launches),
            memops: r(&self.memops),
            host_syncs: r(&self.host_syncs),
            event_waits: r(&self.event_waits),
            allocs: r(&self.allocs),
            uploads: r(&self.uploads),
            upload_bytes: r(&self.upload_bytes),
            graph_launches: r(&self.graph_launches),
        }
    }
}

/// A snapshot of the backend's counters (totals since it was created), or the difference of
/// two snapshots ([`DriverCounts::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DriverCounts {
    /// Kernel launches and cuBLAS calls.
    pub launches: u64,
    /// Device memsets and device-to-device copies.
    pub memops: u64,
    /// Host waits for everything queued (stream synchronisations, blocking downloads).
    pub host_syncs: u64,
    /// Host waits for one event, i.e. for work queued earlier (the loss of the previous step).
    pub event_waits: u64,
    /// Device allocations asked of the driver (the block cache's misses).
    pub allocs: u64,
    /// Host-to-device copies.
    pub uploads: u64,
    /// Bytes copied host → device: by plain uploads, and by graph launches (the payload their
    /// captured uploads read from the staging buffer).
    pub upload_bytes: u64,
    /// CUDA-graph launches (each a whole step's kernels, copies and uploads).
    pub graph_launches: u64,
}

impl DriverCounts {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &DriverCounts) -> DriverCounts {
        DriverCounts {
            launches: self.launches - earlier.launches,
            memops: self.memops - earlier.memops,
            host_syncs: self.host_syncs - earlier.host_syncs,
            event_waits: self.event_waits - earlier.event_waits,
            allocs: self.allocs - earlier.allocs,
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            graph_launches: self.graph_launches - earlier.graph_launches,
        }
    }
}

/// Bytes actually reserved for a request of `bytes`: multiples of 512 B up to 1 MiB, above that
/// steps of an eighth of the power of two below (at most 12.5% over), so that buffers of nearby
/// sizes (e.g. a proxy forward's sub-batch) share blocks.
pub(crate) fn block_bytes(bytes: usize) -> usize {
    let b = bytes.max(1);
    if b <= 1 << 20 {
        return b.div_ceil(512) * 512;
    }
    let step = (1usize << (usize::BITS - 1 - b.leading_zeros())) / 8;
    b.div_ceil(step) * step
}

/// Free blocks by size, and the stream their frees are ordered on.
pub(crate) struct BlockCache {
    stream: Arc<CudaStream>,
    /// Whether the device has stream-ordered allocation (else plain cuMemAlloc/cuMemFree).
    stream_ordered: bool,
    free: Mutex<HashMap<usize, Vec<u64>>>,
    counters: Arc<Counters>,
    /// The step recorder: blocks its trace uses stay, even free, until the step is issued.
    recorder: Arc<Recorder>,
    /// Incremented whenever blocks go back to the driver (graphs holding their addresses are
    /// stale from then on).
    epoch: AtomicU64,
}

impl BlockCache {
    pub(crate) fn new(
        stream: Arc<CudaStream>,
        counters: Arc<Counters>,
        recorder: Arc<Recorder>,
        stream_ordered: bool,
    ) -> Arc<BlockCache> {
        Arc::new(BlockCache {
            stream,
            stream_ordered,
            recorder,
            free: Mutex::new(HashMap::new()),
            counters,
            epoch: AtomicU64::new(0),
        })
    }

    /// A block of at least `bytes` bytes (uninitialised), from the free list when one of its
    /// size is there.
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuf> {
        let size = block_bytes(bytes);
        let cached = self.lock()?.get_mut(&size).and_then(Vec::pop);
        let ptr = match cached {
            Some(p) => p,
            None => self.alloc_from_driver(size)?,
        };
        Ok(DeviceBuf {
            ptr,
            size,
            cache: self.clone(),
        })
    }

    fn alloc_from_driver(&self, size: usize) -> Result<u64> {
        use cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY;
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| Error::Cuda(format!("binding the context: {e}")))?;
        let fail = |e| Error::Cuda(format!("allocating {size} bytes of device memory: {e}"));
        match self.driver_alloc(size) {
            Err(e) if e.0 == CUDA_ERROR_OUT_OF_MEMORY => {
                // Give every cached block back and try once more.
                self.release_cached()?;
                self.driver_alloc(size).map_err(|e| {
                    Error::Cuda(format!(
                        "allocating {size} bytes of device memory: {e}, even after returning \
                         every cached block to the driver"
                    ))
                })
            }
            r => r.map_err(fail),
        }
    }

    fn driver_alloc(&self, size: usize) -> std::result::Result<u64, DriverError> {
        self.counters.add(Count::Alloc);
        // SAFETY: plain allocations on this backend's context (current, see the caller).
        unsafe {
            match self.stream_ordered {
                true => result::malloc_async(self.stream.cu_stream(), size),
                false => result::malloc_sync(size),
            }
        }
    }

    /// Puts every free list in one order (the lowest address is handed out first), so that
    /// the same sequence of requests from the same free blocks gets the same addresses.
    pub(crate) fn canonicalize(&self) -> Result<()> {
        for list in self.lock()?.values_mut() {
            list.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(())
    }

    /// How many times blocks went back to the driver.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Returns every free block to the driver (stream-ordered where the device allows), but
    /// for those the ops of a step being traced use: they run only once the step is issued.
    pub(crate) fn release_cached(&self) -> Result<()> {
        let mut blocks = Vec::new();
        for (&size, list) in self.lock()?.iter_mut() {
            let (used, unused): (Vec<u64>, Vec<u64>) = list
                .drain(..)
                .partition(|&p| self.recorder.references(p, size));
            *list = used;
            blocks.extend(unused);
        }
        if !blocks.is_empty() {
            self.epoch.fetch_add(1, Ordering::Relaxed);
        }
        for p in blocks {
            // SAFETY: `p` came from this cache's allocator and no buffer owns it any more; a
            // synchronous free waits for the work that used it.
            unsafe {
                match self.stream_ordered {
                    true => result::free_async(p, self.stream.cu_stream()),
                    false => result::free_sync(p),
                }
            }
            .map_err(|e| Error::Cuda(format!("freeing device memory: {e}")))?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<usize, Vec<u64>>>> {
        self.free
            .lock()
            .map_err(|_| Error::Cuda("the block cache's lock is poisoned".into()))
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        // Nothing to report to from a drop; the context's teardown reclaims what fails here.
        if self.stream.context().bind_to_thread().is_ok() {
            let _ = self.release_cached();
        }
    }
}

/// One block of device memory; back to its cache's free list when dropped.
pub(crate) struct DeviceBuf {
    ptr: u64,
    size: usize,
    cache: Arc<BlockCache>,
}

impl DeviceBuf {
    /// The block's device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if let Ok(mut free) = self.cache.free.lock() {
            free.entry(self.size).or_default().push(self.ptr);
        }
    }
}

/// Page-locked host memory (at least one byte), freed when dropped. Its owner keeps it until no
/// queued copy can still use it, and has the context current when it drops.
pub(crate) struct PinnedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is owned by one value and only reached through it.
unsafe impl Send for PinnedBuf {}

impl PinnedBuf {
    /// `len` bytes of page-locked memory (uninitialised); the context must be current.
    pub(crate) fn new(len: usize, what: &str) -> Result<PinnedBuf> {
        // SAFETY: a plain page-locked allocation.
        let ptr = unsafe { result::malloc_host(len.max(1), 0) }
            .map_err(|e| Error::Cuda(format!("allocating pinned host memory for {what}: {e}")))?;
        Ok(PinnedBuf {
            ptr: ptr as *mut u8,
            len,
        })
    }
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        // Nothing to report to from a drop: a failure leaves at most a leak.
        // SAFETY: allocated by malloc_host; the owner guarantees no queued copy uses it.
        let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}

#[cfg(test)]
mod tests {
    use super::block_bytes;

    #[test]
    fn block_sizes_round_up_within_an_eighth() {
        assert_eq!(block_bytes(0), 512);
        assert_eq!(block_bytes(1), 512);
        assert_eq!(block_bytes(512), 512);
        assert_eq!(block_bytes(513), 1024);
        assert_eq!(block_bytes(1 << 20), 1 << 20);
        // Just above 1 MiB: steps of 128 KiB.
        assert_eq!(block_bytes((1 << 20) + 1), (1 << 20) + (128 << 10));
        for b in [(1usize << 20) + 7, 3 << 20, (5 << 24) + 12345, 1 << 33] {
            let r = block_bytes(b);
            assert!(r >= b && (r - b) * 8 <= b, "{b} → {r}");
        }
    }
}
