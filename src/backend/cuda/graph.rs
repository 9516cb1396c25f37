//! A training step replayed as a CUDA graph (`--cuda-graph on`).
//!
//! The step's host program runs every step, as on the plain path, but against a backend that
//! records instead of calling the driver: each kernel launch (function, grid, arguments),
//! cuBLAS call, memset, device copy and upload becomes an [`Op`] of a trace, and each upload's
//! bytes go to the trace's payload. Two traces with the same ops describe the same device work
//! on different data. A kind of step seen once runs kernel by kernel; on its second and third
//! sight one graph instance each is captured (its uploads as copies from a page-locked staging
//! buffer), and from then on a step of that kind costs one `cuGraphLaunch` after its payload is
//! copied into the staging buffer of the instance whose turn it is.
//!
//! What makes consecutive steps trace alike: the block cache hands out blocks in a canonical
//! order at the start of each step ([`super::memory::BlockCache::canonicalize`]), a step keeps
//! nothing allocated past its end (the optimiser, the gradient zeroing and the key EMA work in
//! place), and per-step scalars (the learning rate, Adam's bias corrections) travel as
//! uploaded data, not as kernel arguments. A step of another kind (the first one of a task,
//! whose key has nothing to decay yet, or a batch with another count of complete samples)
//! traces differently and gets a graph of its own. Ops are compared in full, never by hash
//! alone, so a replayed graph is always exactly the work the plain path would have queued.

use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::driver::{result, sys, CudaEvent, LaunchConfig};

use super::gemm::GemmCall;
use super::kernels::Ptr;
use super::memory::{Count, PinnedBuf};
use super::{cuda_err, CudaBackend};
use crate::error::{Error, Result};

/// One kernel argument: its bytes (little-endian, in the low bytes) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Arg {
    bits: u64,
    size: u8,
}

impl From<Ptr> for Arg {
    fn from(p: Ptr) -> Arg {
        Arg { bits: p.0, size: 8 }
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg {
            bits: v as u64,
            size: 8,
        }
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Arg {
        Arg {
            bits: v as u32 as u64,
            size: 4,
        }
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg {
            bits: v.to_bits() as u64,
            size: 4,
        }
    }
}

/// One unit of device work of a step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Kernel {
        name: &'static str,
        /// The `CUfunction`, as an address.
        function: usize,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared: u32,
        args: Vec<Arg>,
    },
    Gemm(GemmCall),
    Memset {
        dst: u64,
        bytes: usize,
    },
    Copy {
        dst: u64,
        src: u64,
        bytes: usize,
    },
    /// `bytes` bytes of the payload, from `offset`, to `dst`.
    Upload {
        dst: u64,
        offset: usize,
        bytes: usize,
    },
}

/// The device work of one step and the bytes its uploads carry.
#[derive(Default)]
pub(crate) struct Trace {
    ops: Vec<Op>,
    payload: Vec<u8>,
}

/// Where ops go while a step is traced; empty otherwise.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Option<Trace>>);

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Trace>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Whether a step is being traced.
    pub(crate) fn active(&self) -> bool {
        self.lock().is_some()
    }
    /// Adds `op` to the trace; false (and nothing recorded) when no step is traced.
    pub(crate) fn record(&self, op: impl FnOnce() -> Op) -> bool {
        match self.lock().as_mut() {
            Some(t) => {
                t.ops.push(op());
                true
            }
            None => false,
        }
    }
    /// Adds a kernel launch to the trace; false when no step is traced.
    pub(crate) fn kernel(
        &self,
        name: &'static str,
        function: &cudarc::driver::CudaFunction,
        cfg: &LaunchConfig,
        args: &[Arg],
    ) -> bool {
        self.record(|| Op::Kernel {
            name,
            function: function.cu_function() as usize,
            grid: cfg.grid_dim,
            block: cfg.block_dim,
            shared: cfg.shared_mem_bytes,
            args: args.to_vec(),
        })
    }
    /// Adds an upload of `bytes` to `dst`; false when no step is traced.
    pub(crate) fn upload(&self, dst: u64, bytes: &[u8]) -> bool {
        match self.lock().as_mut() {
            Some(t) => {
                t.ops.push(Op::Upload {
                    dst,
                    offset: t.payload.len(),
                    bytes: bytes.len(),
                });
                t.payload.extend_from_slice(bytes);
                true
            }
            None => false,
        }
    }
    /// Whether ops traced so far use memory in `base..base + size` (checked before a free
    /// block goes back to the driver in the middle of a traced step).
    pub(crate) fn references(&self, base: u64, size: usize) -> bool {
        let trace = self.lock();
        let Some(t) = trace.as_ref() else {
            return false;
        };
        let inside = |p: u64| p >= base && p < base + size as u64;
        t.ops.iter().any(|op| match op {
            Op::Kernel { args, .. } => args.iter().any(|a| a.size == 8 && inside(a.bits)),
            Op::Gemm(g) => [g.a, g.b, g.c].iter().any(|p| inside(p.0)),
            Op::Memset { dst, .. } | Op::Upload { dst, .. } => inside(*dst),
            Op::Copy { dst, src, .. } => inside(*dst) || inside(*src),
        })
    }

    fn start(&self) -> Result<()> {
        let mut t = self.lock();
        if t.is_some() {
            return Err(Error::Cuda("a graphed step inside another one".into()));
        }
        *t = Some(Trace::default());
        Ok(())
    }
    fn finish(&self) -> Trace {
        self.lock().take().unwrap_or_default()
    }
}

/// Kinds of step kept per backend; beyond either bound the least recently used goes.
const MAX_KINDS: usize = 32;
/// Page-locked staging bytes kept per backend (two buffers per kind).
const MAX_STAGING_BYTES: usize = 1 << 30;

/// One instantiated graph, its staging buffer and the event after its last launch.
struct Instance {
    exec: sys::CUgraphExec,
    staging: PinnedBuf,
    done: CudaEvent,
    launched: bool,
}

/// The graphs of one kind of step. Two instances, used in turn, so that the host fills one
/// staging buffer while the device may still read the other's. A kind seen once runs kernel by
/// kernel (every GEMM shape meets cuBLAS outside a capture first, and a one-off step, such as
/// a task's first, costs no capture); from its second step on it runs as a graph.
struct Entry {
    ops: Vec<Op>,
    payload_len: usize,
    instances: [Option<Instance>; 2],
    next: usize,
    last_used: u64,
}

/// Counts of what graphed steps did, since the backend was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GraphStats {
    /// Steps run through [`CudaBackend::graphed`].
    pub steps: u64,
    /// Of those, steps replayed as a graph launch.
    pub replayed: u64,
    /// Graphs captured (every kind of step, every instance).
    pub captured: u64,
    /// Kinds of step seen (each runs kernel by kernel when first seen).
    pub kinds: u64,
    /// Kinds dropped to stay within the cache's size (each seen again pays for new captures).
    pub evicted: u64,
}

/// Every captured kind of step of a backend, and the block-cache epoch they were captured in
/// (blocks given back to the driver invalidate them all).
#[derive(Default)]
pub(crate) struct StepGraphs {
    entries: Vec<Entry>,
    epoch: u64,
    stats: GraphStats,
    /// Whether a capture failed (reported once; such steps run kernel by kernel).
    capture_failed: bool,
}

// SAFETY: the raw graph and pinned pointers are only used under the backend's mutex.
unsafe impl Send for StepGraphs {}

impl CudaBackend {
    /// Runs `step`, the host program of one step, traced, and issues its device work: kernel
    /// by kernel the first time this kind of step is seen, as a CUDA graph from then on
    /// (captured on the second and third sight, one instance each). `step` must not read
    /// the device (a download or synchronisation inside it is an error). Returns what `step`
    /// returns; its tensors hold the step's results once the graph has run (stream order).
    pub fn graphed<T>(&self, step: impl FnOnce() -> Result<T>) -> Result<T> {
        /// Ends the recording however `step` ends, a panic included.
        struct Recording<'a>(&'a Recorder);
        impl Drop for Recording<'_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        self.cache.canonicalize()?;
        self.recorder.start()?;
        let recording = Recording(&self.recorder);
        let out = step();
        let trace = self.recorder.finish();
        drop(recording);
        let out = out?;
        let mut graphs = self
            .graphs
            .lock()
            .map_err(|_| Error::Cuda("the step graphs' lock is poisoned".into()))?;
        self.replay(&mut graphs, trace)?;
        Ok(out)
    }

    /// Graphs captured by [`CudaBackend::graphed`] so far.
    pub fn graphs_captured(&self) -> u64 {
        self.graph_stats().captured
    }

    /// What [`CudaBackend::graphed`] has done so far.
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs.lock().map(|g| g.stats).unwrap_or_default()
    }

    fn replay(&self, graphs: &mut StepGraphs, trace: Trace) -> Result<()> {
        let epoch = self.cache.epoch();
        if graphs.epoch != epoch {
            self.drop_entries(graphs, |_| true)?;
            graphs.epoch = epoch;
        }
        graphs.stats.steps += 1;
        let Some(i) = graphs.entries.iter().position(|e| e.ops == trace.ops) else {
            return self.first_sight(graphs, trace);
        };
        let uses = graphs.stats.steps;
        let entry = &mut graphs.entries[i];
        entry.last_used = uses;
        let slot = entry.next;
        if entry.instances[slot].is_none() {
            match self.instantiate(&entry.ops, entry.payload_len) {
                Ok(inst) => entry.instances[slot] = Some(inst),
                Err(e) => {
                    // A capture the driver refuses costs speed, not the step.
                    if !graphs.capture_failed {
                        eprintln!("CUDA graph capture failed ({e}); running kernel by kernel");
                    }
                    graphs.capture_failed = true;
                    return self.issue_all(&trace);
                }
            }
            graphs.stats.captured += 1;
        }
        let entry = &mut graphs.entries[i];
        entry.next = 1 - slot;
        let inst = entry.instances[slot].as_mut().expect("just instantiated");
        self.launch_instance(inst, &trace)?;
        graphs.stats.replayed += 1;
        if let Err(e) = inst.done.record(&self.stream) {
            self.sync_stream()?;
            return Err(cuda_err("recording an event")(e));
        }
        Ok(())
    }

    /// A trace not seen before: evicts the least recently used graphs while the kinds or their
    /// staging would exceed the limits, then issues it kernel by kernel and remembers it for a
    /// capture next time.
    fn first_sight(&self, graphs: &mut StepGraphs, trace: Trace) -> Result<()> {
        let staging =
            |g: &StepGraphs| -> usize { g.entries.iter().map(|e| 2 * e.payload_len).sum() };
        while !graphs.entries.is_empty()
            && (graphs.entries.len() >= MAX_KINDS
                || staging(graphs) + 2 * trace.payload.len() > MAX_STAGING_BYTES)
        {
            let stale = graphs.entries.iter().map(|e| e.last_used).min();
            self.drop_entries(graphs, |e| Some(e.last_used) == stale)?;
            graphs.stats.evicted += 1;
        }
        self.issue_all(&trace)?;
        graphs.entries.push(Entry {
            ops: trace.ops,
            payload_len: trace.payload.len(),
            instances: [None, None],
            next: 0,
            last_used: graphs.stats.steps,
        });
        graphs.stats.kinds += 1;
        Ok(())
    }

    /// Launches one instance of a captured graph with this trace's uploads: waits for the
    /// instance's launch before last (it may still read the staging buffer), copies the payload
    /// into the staging buffer, and launches.
    fn launch_instance(&self, inst: &mut Instance, trace: &Trace) -> Result<()> {
        if inst.launched {
            self.counters.add(Count::EventWait);
            inst.done
                .synchronize()
                .map_err(cuda_err("waiting for a graph's previous launch"))?;
        }
        debug_assert_eq!(inst.staging.len(), trace.payload.len());
        // SAFETY: the staging buffer holds `payload_len` bytes, the trace's payload exactly
        // (equal ops imply equal upload sizes), and no launch reads it now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                trace.payload.as_ptr(),
                inst.staging.ptr(),
                trace.payload.len(),
            )
        };
        self.bind()?;
        self.counters.add(Count::GraphLaunch);
        self.counters.add_upload_bytes(trace.payload.len());
        // SAFETY: a live graph of this context, launched on the backend's stream.
        unsafe { result::graph::launch(inst.exec, self.stream.cu_stream()) }
            .map_err(cuda_err("launching a step's graph"))?;
        // From here the staging buffer may be in use: even if recording the launch's event
        // fails (in `replay`), the next use of this instance must wait.
        inst.launched = true;
        Ok(())
    }

    /// Issues a trace kernel by kernel, its uploads from the payload.
    fn issue_all(&self, trace: &Trace) -> Result<()> {
        self.bind()?;
        for op in &trace.ops {
            match op {
                Op::Upload { dst, offset, bytes } => {
                    // SAFETY: the destination was a live block of the size when traced, and
                    // stays one: the block cache gives nothing back to the driver meanwhile.
                    unsafe {
                        self.upload_from(Ptr(*dst), &trace.payload[*offset..offset + bytes])?
                    };
                }
                Op::Gemm(_) | Op::Kernel { .. } => {
                    self.counters.add(Count::Launch);
                    self.issue(op, std::ptr::null_mut())?;
                }
                Op::Memset { .. } | Op::Copy { .. } => {
                    self.counters.add(Count::Memop);
                    self.issue(op, std::ptr::null_mut())?;
                }
            }
        }
        Ok(())
    }

    /// Captures `ops` as a graph whose uploads read from a fresh staging buffer.
    fn instantiate(&self, ops: &[Op], payload_len: usize) -> Result<Instance> {
        self.bind()?;
        // Freed on an error below: nothing was launched that reads it.
        let staging = PinnedBuf::new(payload_len, "a graph's staging buffer")?;
        let done = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(cuda_err("creating an event"))?;
        let exec = self.capture(ops, staging.ptr())?;
        Ok(Instance {
            exec,
            staging,
            done,
            launched: false,
        })
    }

    fn capture(&self, ops: &[Op], staging: *mut u8) -> Result<sys::CUgraphExec> {
        let stream = self.stream.cu_stream();
        // SAFETY: the backend's own stream, not capturing (graphed steps do not nest).
        unsafe {
            result::stream::begin_capture(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(cuda_err("beginning a stream capture"))?;
        let queued = ops.iter().try_for_each(|op| self.issue(op, staging));
        // SAFETY: ends the capture begun above, whatever happened in between.
        let graph = unsafe { result::stream::end_capture(stream) };
        let graph = match (queued, graph) {
            (Ok(()), Ok(g)) => g,
            (Ok(()), Err(e)) => return Err(cuda_err("ending a stream capture")(e)),
            (Err(e), Ok(g)) => {
                // SAFETY: a graph of this capture, used by nothing.
                let _ = unsafe { result::graph::destroy(g) };
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
        };
        // SAFETY: a graph just captured; it is not needed once instantiated.
        unsafe {
            let exec = result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = result::graph::destroy(graph);
            exec.map_err(cuda_err("instantiating a step's graph"))
        }
    }

    /// Queues one op on the stream (capturing, or not for ops other than uploads), uploads from
    /// the staging buffer.
    fn issue(&self, op: &Op, staging: *mut u8) -> Result<()> {
        let stream = self.stream.cu_stream();
        let err = |what: &'static str| cuda_err(what);
        // SAFETY: the ops were traced from this backend's own calls, with live blocks of the
        // block cache (kept out of the driver's hands while graphs exist, see `epoch`) and
        // the staging buffer sized for the payload.
        unsafe {
            match op {
                Op::Kernel {
                    function,
                    grid,
                    block,
                    shared,
                    args,
                    ..
                } => {
                    let mut bits: Vec<u64> = args.iter().map(|a| a.bits).collect();
                    let mut params: Vec<*mut c_void> = bits
                        .iter_mut()
                        .map(|b| b as *mut u64 as *mut c_void)
                        .collect();
                    result::launch_kernel(
                        *function as sys::CUfunction,
                        *grid,
                        *block,
                        *shared,
                        stream,
                        &mut params,
                    )
                    .map_err(err("capturing a kernel launch"))
                }
                Op::Gemm(g) => self.gemm_now(g),
                Op::Memset { dst, bytes } => result::memset_d8_async(*dst, 0, *bytes, stream)
                    .map_err(err("capturing a memset")),
                Op::Copy { dst, src, bytes } => {
                    result::memcpy_dtod_async(*dst, *src, *bytes, stream)
                        .map_err(err("capturing a device copy"))
                }
                Op::Upload { dst, offset, bytes } => {
                    let src = std::slice::from_raw_parts(staging.add(*offset), *bytes);
                    result::memcpy_htod_async(*dst, src, stream).map_err(err("capturing an upload"))
                }
            }
        }
    }

    /// Destroys the entries `which` selects, after their last launches.
    fn drop_entries(&self, graphs: &mut StepGraphs, which: impl Fn(&Entry) -> bool) -> Result<()> {
        self.bind()?;
        let (gone, kept): (Vec<Entry>, Vec<Entry>) =
            graphs.entries.drain(..).partition(|e| which(e));
        graphs.entries = kept;
        for inst in gone.into_iter().flat_map(|e| e.instances).flatten() {
            destroy(inst);
        }
        Ok(())
    }
}

/// Frees an instance once its last launch is done.
fn destroy(inst: Instance) {
    // Nothing to report to: a failure here leaves at most a leak.
    let _ = inst.done.synchronize();
    // SAFETY: the graph is no longer running; its staging buffer, no longer read, goes with
    // `inst` (the event's wait made the context current).
    let _ = unsafe { result::graph::exec_destroy(inst.exec) };
}

impl Drop for StepGraphs {
    fn drop(&mut self) {
        for inst in self.entries.drain(..).flat_map(|e| e.instances).flatten() {
            destroy(inst);
        }
    }
}
