//! The CUDA backend: one context, one stream, cuBLAS for GEMMs, kernels from `kernels/*.cu`.
//!
//! Every op queues its kernels (or cuBLAS calls) on the backend's one stream and returns at
//! once; nothing inside an op copies through the host. Outputs are blocks of the backend's
//! caching allocator ([`memory`]), which calls the driver's stream-ordered allocator only when
//! no freed block of the size is at hand. Because there is only one stream, stream order alone
//! makes every read follow the write it depends on, and every reuse follow the last use.
//!
//! Invalid indices (class labels, gather/scatter rows) cannot be reported by the op that meets
//! them without a host round trip, so the kernel sets a device error word and writes NaN (or
//! zeros); the next [`Backend::synchronize`] or download reads the word and fails with the op's
//! name.

// DeLo's expert ops live with their dimensions and CPU reference in backend/experts/; they are
// compiled here, inside the CUDA backend, for its launch helpers.
#[path = "../experts/cuda.rs"]
mod experts;
mod gemm;
mod graph;
mod image_cache;
mod kernels;
mod memory;
pub mod nvtx;
mod ops;
#[path = "../experts/cuda_group.rs"]
mod pool_group;
mod readback;

use std::sync::{Arc, Mutex, Weak};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaModule, CudaStream, DeviceRepr};

use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

pub use experts::{ExpertPath, FUSED_MAX_K};
pub use graph::GraphStats;
pub use image_cache::{DeviceImageCache, DEVICE_CACHE_SHARE};
pub use kernels::kernel_signatures;
use kernels::{Kernels, Ptr};
pub use memory::DriverCounts;
use memory::{BlockCache, Count, Counters, DeviceBuf};
pub use pool_group::GROUP_MAX_K;
pub use readback::ScalarReadback;

/// The PTX of every kernel, embedded by `build.rs` when nvcc was found.
pub const PTX: Option<&str> = {
    #[cfg(delo_ptx)]
    {
        Some(include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx")))
    }
    #[cfg(not(delo_ptx))]
    {
        None
    }
};

/// Device memory of a tensor, with the backend that owns it.
pub struct CudaStorage {
    pub backend: Arc<CudaBackend>,
    buf: DeviceBuf,
    dtype: DType,
    /// Elements of the storage. An empty storage still holds a block (zero-byte allocations
    /// are not portable across drivers), so this can be below the block's capacity.
    len: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?}, {})", self.dtype(), self.len())
    }
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn backend(&self) -> Arc<CudaBackend> {
        self.backend.clone()
    }
}

pub struct CudaBackend {
    // Field order is drop order: the step graphs go first (they launch the module's kernels,
    // cuBLAS calls and the blocks), then the cuBLAS handle and the module, before the stream
    // and the context they live in.
    /// Graphs of the steps run through [`CudaBackend::graphed`].
    graphs: Mutex<graph::StepGraphs>,
    blas: Mutex<CudaBlas>,
    /// cuBLAS's workspace, ours so that graphed and plain calls share it (see `new_private`).
    _blas_workspace: DeviceBuf,
    k: Kernels,
    recorder: Arc<graph::Recorder>,
    cache: Arc<BlockCache>,
    counters: Arc<Counters>,
    /// The device error word (see the module docs); 0 when no kernel met an invalid input.
    err: DeviceBuf,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    /// Streaming multiprocessors of the device (grid sizing of the expert kernels).
    sms: usize,
    me: Weak<CudaBackend>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend(cuda:{})", self.ctx.ordinal())
    }
}

/// Whether a CUDA driver and at least one device are present (cudarc panics without libcuda,
/// so this is asked before anything else touches CUDA).
pub fn cuda_available() -> bool {
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// What a code of the device error word means (codes from kernels/common.cuh).
fn kernel_error(code: i32) -> Error {
    let what = match code {
        1 => "cross_entropy: a class label is outside 0..C",
        2 => "gather_rows: an index is outside the table's rows",
        3 => "scatter_add_rows: an index is outside 0..m",
        4 => {
            "route_backward / expert_forward / expert_backward: a factor selection is outside 0..E"
        }
        5 => "copy_rows_where: a row's choice is outside 0..n",
        6 => "patches_from_u8: a sample or its image lies outside the device image cache",
        _ => "unknown kernel error code",
    };
    Error::Cuda(format!(
        "{what} (device error code {code}, found at the next synchronisation)"
    ))
}

/// What a CUDA backend needs before it touches a device, each with its own message: kernels
/// compiled into this binary, the driver library, device `ordinal`, and cuBLAS. Returns the
/// kernels' PTX.
fn check_runtime(ordinal: usize) -> Result<&'static str> {
    let Some(ptx) = PTX else {
        return Err(Error::Cuda(
            "this delo binary was built without nvcc, so it has no CUDA kernels; rebuild \
             with nvcc on PATH (or NVCC=/path/to/nvcc) and REQUIRE_NVCC=1"
                .into(),
        ));
    };
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Cuda(
            "no CUDA driver: libcuda.so was not found (no NVIDIA driver on this machine, \
             or its library is outside the loader path)"
                .into(),
        ));
    }
    let count = CudaContext::device_count().map_err(cuda_err("initialising the driver"))?;
    if count <= 0 {
        return Err(Error::Cuda("the CUDA driver reports no device".into()));
    }
    if ordinal >= count as usize {
        return Err(Error::Cuda(format!(
            "cuda:{ordinal} asked for, but there are only {count} device(s)"
        )));
    }
    // SAFETY: only tries to dlopen libcublas (which needs libcublasLt beside it).
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(Error::Cuda(
            "cuBLAS was not found: libcublas.so.13 (with libcublasLt.so.13) must be on the \
             loader path; add its directory to LD_LIBRARY_PATH (scripts/gpu-check.sh \
             searches the usual places)"
                .into(),
        ));
    }
    Ok(ptx)
}

/// The kernels' PTX loaded into `ctx`.
fn load_ptx(ctx: &Arc<CudaContext>, ptx: &str) -> Result<Arc<CudaModule>> {
    ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| {
            Error::Cuda(format!(
                "loading the kernels' PTX failed: {e} (a driver older than the CUDA 13 \
                 toolkit that compiled them, or CUDA_ARCH above this GPU)"
            ))
        })
}

/// A cuBLAS handle on `stream` with a workspace of our own (32 MiB, cuBLAS's recommendation
/// for Hopper): without one, cuBLAS allocates its own, inside a graph capture as graph memory,
/// so captured and plain calls would not share it. The block must live as long as the handle.
fn blas_with_workspace(
    stream: &Arc<CudaStream>,
    cache: &Arc<BlockCache>,
) -> Result<(CudaBlas, DeviceBuf)> {
    let blas = CudaBlas::new(stream.clone())
        .map_err(|e| Error::Cuda(format!("creating the cuBLAS handle: {e:?}")))?;
    let blas_workspace = cache.alloc(BLAS_WORKSPACE_BYTES)?;
    // SAFETY: a live handle on this stream and a block of the size given, kept as long as
    // the handle (field order).
    unsafe {
        cudarc::cublas::sys::cublasSetWorkspace_v2(
            *blas.handle(),
            blas_workspace.ptr() as *mut std::ffi::c_void,
            BLAS_WORKSPACE_BYTES,
        )
    }
    .result()
    .map_err(|e| Error::Cuda(format!("setting cuBLAS's workspace: {e:?}")))?;
    Ok((blas, blas_workspace))
}

impl CudaBackend {
    /// The backend of device `ordinal`, shared by every caller while one is alive, so that
    /// tensors made through any `Device::parse("cuda")` work together (one stream orders them).
    pub fn new(ordinal: usize) -> Result<Arc<CudaBackend>> {
        use std::collections::HashMap;
        static OPEN: Mutex<Option<HashMap<usize, Weak<CudaBackend>>>> = Mutex::new(None);
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let map = open.get_or_insert_with(HashMap::new);
        if let Some(b) = map.get(&ordinal).and_then(Weak::upgrade) {
            return Ok(b);
        }
        let b = CudaBackend::new_private(ordinal)?;
        map.insert(ordinal, Arc::downgrade(&b));
        Ok(b)
    }

    /// A backend of its own on device `ordinal`: its own stream, cuBLAS handle and error word.
    /// Its tensors cannot be mixed with those of any other backend instance.
    pub fn new_private(ordinal: usize) -> Result<Arc<CudaBackend>> {
        let ptx = check_runtime(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("creating the context"))?;
        // SAFETY: this backend uses one stream only, so stream order is all the
        // synchronisation there is to do; buffers allocated from now on carry no events.
        unsafe { ctx.disable_event_tracking() };
        keep_pool_memory(&ctx);
        let stream = ctx.new_stream().map_err(cuda_err("creating the stream"))?;
        let module = load_ptx(&ctx, ptx)?;
        let counters = Arc::new(Counters::default());
        let recorder = Arc::new(graph::Recorder::default());
        let k = Kernels::load(&module, counters.clone(), recorder.clone())?;
        let cache = BlockCache::new(
            stream.clone(),
            counters.clone(),
            recorder.clone(),
            ctx.has_async_alloc(),
        );
        let (blas, blas_workspace) = blas_with_workspace(&stream, &cache)?;
        let err = cache.alloc(4)?;
        // SAFETY: the error word is a fresh 4-byte block of this stream.
        unsafe { cudarc::driver::result::memset_d8_async(err.ptr(), 0, 4, stream.cu_stream()) }
            .map_err(cuda_err("zeroing the error word"))?;
        stream.synchronize().map_err(cuda_err("initialising"))?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map(|n| n.max(1) as usize)
            .unwrap_or(100);
        Ok(Arc::new_cyclic(|me| CudaBackend {
            graphs: Mutex::new(graph::StepGraphs::default()),
            blas: Mutex::new(blas),
            _blas_workspace: blas_workspace,
            k,
            recorder,
            cache,
            counters,
            err,
            stream,
            ctx,
            sms,
            me: me.clone(),
        }))
    }
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(cuda_err("device name"))
    }
    /// What this backend has asked of the driver so far (launches, host waits, allocations,
    /// uploads); the difference of two snapshots is what the work between them cost.
    pub fn counts(&self) -> DriverCounts {
        self.counters.snapshot()
    }
    /// Streaming multiprocessors of the device.
    pub fn multiprocessors(&self) -> usize {
        self.sms
    }
    /// Peak DRAM bandwidth in bytes/s from the device attributes: 2 (double data rate) ×
    /// memory clock × bus width / 8. Also returns the clock (kHz) and the bus width (bits).
    pub fn peak_memory_bandwidth(&self) -> Result<(f64, i32, i32)> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let clock_khz = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            .map_err(cuda_err("memory clock rate"))?;
        let bus_bits = self
            .ctx
            .attribute(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            .map_err(cuda_err("memory bus width"))?;
        let bps = 2.0 * clock_khz as f64 * 1e3 * bus_bits as f64 / 8.0;
        Ok((bps, clock_khz, bus_bits))
    }
    /// Average device time in milliseconds of one call of `f`, measured with CUDA events
    /// around `reps` back-to-back calls queued on the backend's stream, after `warmup` calls.
    /// Host-side launch gaps between the calls are part of the time (as in a training step).
    pub fn time_ms(
        &self,
        warmup: usize,
        reps: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        use cudarc::driver::sys::CUevent_flags;
        for _ in 0..warmup {
            f()?;
        }
        self.sync_stream()?;
        self.check_kernel_errors()?;
        let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(timed).map_err(cuda_err("event"))?;
        for _ in 0..reps {
            f()?;
        }
        let end = self.stream.record_event(timed).map_err(cuda_err("event"))?;
        let ms = start.elapsed_ms(&end).map_err(cuda_err("event timing"))?;
        self.check_kernel_errors()?;
        Ok(ms as f64 / reps.max(1) as f64)
    }

    fn arc(&self) -> Arc<CudaBackend> {
        self.me
            .upgrade()
            .expect("a live backend is owned by an Arc")
    }

    /// Makes the context current on the calling thread (cuBLAS calls need it).
    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("binding the context"))
    }

    /// Fails inside a traced step (see [`CudaBackend::graphed`]): `what` would read the device.
    fn not_traced(&self, what: &str) -> Result<()> {
        match self.recorder.active() {
            true => Err(Error::Cuda(format!(
                "{what} inside a graphed step: a step replayed as a CUDA graph cannot read the \
                 device"
            ))),
            false => Ok(()),
        }
    }

    /// Waits for everything queued on the stream.
    fn sync_stream(&self) -> Result<()> {
        self.not_traced("a synchronisation")?;
        self.counters.add(Count::HostSync);
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// Reads and clears the device error word (a stream synchronisation).
    fn check_kernel_errors(&self) -> Result<()> {
        let mut v = [0i32];
        self.download_into(&mut v, self.err_ptr(), "reading the error word")?;
        if v[0] != 0 {
            // SAFETY: the error word is a live 4-byte allocation of this backend.
            unsafe { self.memset0(self.err_ptr(), 4)? };
            return Err(kernel_error(v[0]));
        }
        Ok(())
    }

    /// The address of the device error word.
    fn err_ptr(&self) -> Ptr {
        Ptr(self.err.ptr())
    }

    /// Copies device memory at `src` into `dst` once the stream's queued work is done (a
    /// blocking download, counted as a host synchronisation: a copy into pageable memory
    /// returns only when complete).
    fn download_into<T: DeviceRepr>(&self, dst: &mut [T], src: Ptr, what: &str) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.not_traced(what)?;
        self.bind()?;
        self.counters.add(Count::HostSync);
        // SAFETY: callers pass `src` addressing at least `dst.len()` elements of a live block.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src.0, self.stream.cu_stream()) }
            .map_err(cuda_err(what))
    }

    /// Queues a copy of host memory into device memory at `dst`.
    ///
    /// # Safety
    /// `dst` must address at least `src.len()` elements of a live block of this backend.
    unsafe fn upload_from<T: DeviceRepr>(&self, dst: Ptr, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: plain-old-data elements seen as their bytes.
        let bytes =
            std::slice::from_raw_parts(src.as_ptr() as *const u8, std::mem::size_of_val(src));
        if self.recorder.upload(dst.0, bytes) {
            return Ok(());
        }
        self.bind()?;
        self.counters.add(Count::Upload);
        self.counters.add_upload_bytes(bytes.len());
        cudarc::driver::result::memcpy_htod_async(dst.0, src, self.stream.cu_stream())
            .map_err(cuda_err("upload"))
    }

    /// The CUDA storage of `t`, which must live on this very backend.
    fn storage_of<'a>(&self, t: &'a Tensor, op: &'static str) -> Result<&'a CudaStorage> {
        match t.storage() {
            Storage::Cuda(s) if std::ptr::eq(Arc::as_ptr(&s.backend), self) => Ok(s),
            Storage::Cuda(_) => Err(Error::Cuda(format!(
                "{op}: a tensor of another CUDA backend instance was given"
            ))),
            Storage::Cpu(_) => Err(Error::Msg(format!(
                "{op}: a host tensor was given to a CUDA operation; move it with to_device first"
            ))),
        }
    }

    /// The address of `t`'s first element, checking its device and dtype.
    fn ptr(&self, t: &Tensor, dtype: DType, op: &'static str) -> Result<Ptr> {
        let s = self.storage_of(t, op)?;
        if s.dtype() != dtype {
            return Err(Error::shape(
                op,
                format!("expected a {dtype:?} tensor, got {:?}", s.dtype()),
            ));
        }
        Ok(Ptr(s.buf.ptr() + (t.offset() * dtype.size_bytes()) as u64))
    }

    /// Like [`Self::ptr`] for an in-place update: fails unless `t` alone holds its storage.
    fn ptr_mut(&self, t: &mut Tensor, dtype: DType, op: &'static str) -> Result<Ptr> {
        self.storage_of(t, op)?;
        t.storage_mut()?;
        self.ptr(t, dtype, op)
    }

    /// Uninitialised scratch memory for `n` f32 values (a kernel's partial results); back to
    /// the cache when dropped, which stream order makes safe at any point after the launches
    /// that use it are queued.
    fn scratch_f32(&self, n: usize) -> Result<Scratch> {
        Ok(Scratch(self.cache.alloc(n * 4)?))
    }

    /// A fresh, uninitialised tensor of `dtype` and its address; the caller fills it.
    fn empty(&self, shape: &[usize], dtype: DType) -> Result<(Tensor, Ptr)> {
        let len = crate::tensor::numel(shape);
        let buf = self.cache.alloc(len * dtype.size_bytes())?;
        let p = Ptr(buf.ptr());
        let storage = Storage::Cuda(CudaStorage {
            backend: self.arc(),
            buf,
            dtype,
            len,
        });
        Ok((Tensor::from_storage(storage, shape)?, p))
    }

    /// A fresh tensor of zeros and its address.
    fn zeros_of(&self, shape: &[usize], dtype: DType) -> Result<(Tensor, Ptr)> {
        let (t, p) = self.empty(shape, dtype)?;
        // SAFETY: `p` addresses the whole fresh allocation (at least one element).
        unsafe { self.memset0(p, crate::tensor::numel(shape).max(1) * dtype.size_bytes())? };
        Ok((t, p))
    }

    /// A fresh f32 tensor of zeros and its address.
    fn zeros_f32(&self, shape: &[usize]) -> Result<(Tensor, Ptr)> {
        self.zeros_of(shape, DType::F32)
    }

    /// Queues the zeroing of `bytes` bytes at `p`.
    ///
    /// # Safety
    /// `p..p + bytes` must lie in a live allocation of this backend.
    unsafe fn memset0(&self, p: Ptr, bytes: usize) -> Result<()> {
        // Raw driver calls need the context current on this thread (cudarc's own calls bind it).
        if self
            .recorder
            .record(|| graph::Op::Memset { dst: p.0, bytes })
        {
            return Ok(());
        }
        self.bind()?;
        self.counters.add(Count::Memop);
        cudarc::driver::result::memset_d8_async(p.0, 0, bytes, self.stream.cu_stream())
            .map_err(cuda_err("zeroing device memory"))
    }

    /// Queues a device-to-device copy of `bytes` bytes.
    ///
    /// # Safety
    /// Both ranges must lie in live allocations of this backend.
    unsafe fn memcpy_dtod(&self, dst: Ptr, src: Ptr, bytes: usize) -> Result<()> {
        let op = || graph::Op::Copy {
            dst: dst.0,
            src: src.0,
            bytes,
        };
        if self.recorder.record(op) {
            return Ok(());
        }
        self.bind()?;
        self.counters.add(Count::Memop);
        cudarc::driver::result::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream())
            .map_err(cuda_err("copying device memory"))
    }
}

/// Bytes of cuBLAS's workspace.
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Scratch device memory of one op (see [`CudaBackend::scratch_f32`]).
struct Scratch(DeviceBuf);

impl Scratch {
    fn ptr(&self) -> Ptr {
        Ptr(self.0.ptr())
    }
}

/// Keeps freed blocks in the device's default memory pool instead of returning them to the
/// driver at every synchronisation (the pool's default release threshold is 0), so that the
/// allocations of a training step are served from the pool after the first step.
fn keep_pool_memory(ctx: &Arc<CudaContext>) {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return;
    }
    // SAFETY: plain driver calls on this context's device with valid out-pointers.
    unsafe {
        let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
        if sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device())
            .result()
            .is_ok()
        {
            let mut threshold: u64 = u64::MAX;
            // A failure only costs speed, never correctness: ignore it.
            let _ = sys::cuMemPoolSetAttribute(
                pool.assume_init(),
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}
