//! The training step as the trainer runs it on CUDA: steps queued back to back with each loss
//! read one step late. Checks that it matches the CPU step for step, that the steady state
//! neither synchronises the host nor allocates, that the backend's own counters agree with the
//! emulated driver's, and that a kernel's error still stops the run through the late read.
//! Each test needs a CUDA device and the embedded PTX (`common::harness`).

mod common;

use common::assert_close;
use common::fixture::{load_on, param_set_on, Fixture};
use common::harness::{self, cuda_device};
use std::sync::{Mutex, MutexGuard};

use delo::backend::cuda::{CudaBackend, DriverCounts};
use delo::train::step::{run_step, ScalarQueue, StepBatch, StepOptim, TaskState};
use delo::vilt::{Pixels, ViltInputs};
use delo::{DType, Device, Tensor};

fn main() {
    let tests = [
        trial!(pipelined_steps_match_cpu_without_syncs_or_allocations),
        trial!(backend_counts_match_the_emulated_driver).needs(emulated_driver()),
        trial!(late_read_reports_a_kernel_error),
        trial!(graph_and_plain_steps_are_bit_identical),
        trial!(a_graphed_step_cannot_read_the_device),
        trial!(a_host_wait_inside_a_capture_is_refused),
        trial!(device_image_cache_steps_equal_host_cache_steps),
    ];
    harness::main(tests.map(|t| t.needs(cuda_device())).into());
}

/// A CUDA backend of the test's own (its own stream, counters and error word), taken while
/// holding the returned guard: the tests of this file run one at a time, since the emulated
/// driver's counters are global to the process.
fn gpu() -> (Device, MutexGuard<'static, ()>) {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let be = CudaBackend::new_private(0).expect("a CUDA device is present but the backend failed");
    (Device::Cuda(be), guard)
}

fn counts(d: &Device) -> DriverCounts {
    match d {
        Device::Cuda(b) => b.counts(),
        Device::Cpu => panic!("counts of the CPU"),
    }
}

/// Steps before the steady state.
const WARM_UP: usize = 2;

const OPTIM: StepOptim = StepOptim {
    lr: 1e-3,
    betas: (0.9, 0.98),
    eps: 1e-8,
    weight_decay: 0.01,
};

/// What [`run`] returns: each step's loss (in order), the final parameters, the task key, and
/// `probe` taken at the start and the end of the steady state: every step after the first
/// two (the first ones without and with a task key to decay), before the last loss is drained.
struct Run<T> {
    losses: Vec<f32>,
    params: Vec<f32>,
    key: Vec<f32>,
    window: (T, T),
}

/// Runs `steps` steps pipelined as the trainer does, on the plain path (`graph` false) or
/// replayed as CUDA graphs, whose steady state starts three steps later: the steady kind of
/// step runs kernel by kernel when first seen, then both instances of its graph are captured.
/// Each step's images are the fixture's scaled by a step-dependent factor, so that every step
/// uploads different data.
fn run<T>(
    f: &Fixture,
    device: &Device,
    steps: usize,
    graph: bool,
    probe: impl Fn() -> T,
) -> Run<T> {
    let scaled = |step: usize| {
        let mut inputs = f.inputs.clone();
        let scale = 1.0 + 0.01 * step as f32;
        let pixels = inputs.pixel_values.values().unwrap();
        inputs.pixel_values = Tensor::from_f32(
            pixels
                .to_vec_f32()
                .unwrap()
                .iter()
                .map(|v| v * scale)
                .collect(),
            pixels.shape(),
        )
        .unwrap()
        .into();
        inputs
    };
    run_with(f, device, steps, graph, scaled, probe)
}

/// [`run`] with the inputs of each step from `inputs_of(step)`.
fn run_with<T>(
    f: &Fixture,
    device: &Device,
    steps: usize,
    graph: bool,
    inputs_of: impl Fn(usize) -> ViltInputs,
    probe: impl Fn() -> T,
) -> Run<T> {
    let warm_up = WARM_UP + if graph { 3 } else { 0 };
    let mut state = TaskState {
        params: param_set_on(f, device),
        keys: vec![None],
    };
    let mut queue = ScalarQueue::new(device, 2, 1).unwrap();
    let mut losses = Vec::new();
    let mut start = None;
    for step in 0..steps {
        if step == warm_up {
            start = Some(probe());
        }
        let inputs = inputs_of(step);
        let batch = StepBatch {
            inputs: &inputs,
            missing: &f.missing,
            targets: &f.targets,
        };
        let loss = run_step(&f.vilt, &f.cfg, &mut state, &batch, OPTIM, graph)
            .unwrap()
            .total;
        losses.extend(queue.push_late(&[&loss]).unwrap().map(|g| g[0]));
    }
    let window = (start.expect("more steps than the warm-up"), probe());
    while let Some(g) = queue.pop().unwrap() {
        losses.push(g[0]);
    }
    Run {
        losses,
        params: state.params.flat_values().to_vec_f32().unwrap(),
        key: state.keys[0].as_ref().unwrap().to_vec_f32().unwrap(),
        window,
    }
}

fn pipelined_steps_match_cpu_without_syncs_or_allocations() {
    let (gpu, _serial) = gpu();
    let steps = 5;
    let cpu = &Device::Cpu;
    let c = run(
        &load_on("delo-tiny", 1, cpu, DType::F32),
        cpu,
        steps,
        false,
        || (),
    );
    let f = load_on("delo-tiny", 1, &gpu, DType::F32);
    let g = run(&f, &gpu, steps, false, || counts(&gpu));
    assert_eq!(g.losses.len(), steps);
    assert_close("losses, step by step", &g.losses, &c.losses, 1e-5, 1e-4);
    assert_close(
        "parameters after the steps",
        &g.params,
        &c.params,
        1e-5,
        1e-3,
    );
    assert_close("task key after the steps", &g.key, &c.key, 1e-5, 1e-4);
    let used = g.window.1.since(&g.window.0);
    let later = (steps - WARM_UP) as u64;
    assert_eq!(
        used.host_syncs, 0,
        "host synchronisations in steady state: {used:?}"
    );
    assert_eq!(
        used.allocs, 0,
        "driver allocations in steady state: {used:?}"
    );
    // One wait per step, each for the previous step's loss (the last one drained at the end
    // is outside the window).
    assert_eq!(used.event_waits, later, "{used:?}");
    assert!(used.launches >= 100 * later, "{used:?}");
}

/// Why the emulated driver's counters are out of reach (not running under it), or None.
fn emulated_driver() -> Option<String> {
    emu_stats()
        .is_none()
        .then(|| "needs the emulated CUDA driver (scripts/emulated-cuda)".to_string())
}

/// The emulated driver's counters (`delo_emu_stats_json` of the loaded libcuda), if it is the
/// library in this process.
fn emu_stats() -> Option<serde_json::Value> {
    // SAFETY: opening the already-loaded driver library and calling its documented export with
    // a buffer of the length passed.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").ok()?;
        let f: libloading::Symbol<unsafe extern "C" fn(*mut u8, usize) -> usize> =
            lib.get(b"delo_emu_stats_json\0").ok()?;
        let mut buf = vec![0u8; 1 << 16];
        // The returned length counts the terminating NUL.
        let n = f(buf.as_mut_ptr(), buf.len()).saturating_sub(1);
        serde_json::from_slice(&buf[..n.min(buf.len() - 1)]).ok()
    }
}

/// The backend's counts and the emulated driver's over one window, field by field.
fn assert_counts_agree(
    what: &str,
    ours: DriverCounts,
    (e0, e1): (serde_json::Value, serde_json::Value),
) {
    let theirs = |k: &str| e1[k].as_u64().unwrap() - e0[k].as_u64().unwrap();
    assert_eq!(ours.launches, theirs("launches"), "{what}: launches");
    assert_eq!(ours.host_syncs, theirs("host_syncs"), "{what}: host syncs");
    assert_eq!(
        ours.event_waits,
        theirs("event_waits"),
        "{what}: event waits"
    );
    assert_eq!(ours.allocs, theirs("allocs"), "{what}: allocations");
    assert_eq!(
        ours.upload_bytes,
        theirs("bytes_htod"),
        "{what}: bytes uploaded"
    );
}

fn backend_counts_match_the_emulated_driver() {
    let (gpu, _serial) = gpu();
    let f = load_on("delo-tiny", 1, &gpu, DType::F32);
    let r = run(&f, &gpu, 5, false, || (counts(&gpu), emu_stats().unwrap()));
    let ((ours0, emu0), (ours1, emu1)) = r.window;
    let ours = ours1.since(&ours0);
    assert!(ours.launches > 0 && ours.event_waits > 0, "{ours:?}");
    assert_counts_agree("steady-state steps", ours, (emu0, emu1));
    // What the steps never do: a fresh block size (a driver allocation), an upload and a
    // blocking download (the copy, then the error word's).
    let (ours0, emu0) = (counts(&gpu), emu_stats().unwrap());
    let big = Tensor::from_f32(vec![0.5; 1 << 20], &[1 << 20]).unwrap();
    let back = gpu.backend().upload(&big).unwrap().to_vec_f32().unwrap();
    assert_eq!(back, big.to_vec_f32().unwrap());
    let ours = counts(&gpu).since(&ours0);
    assert_eq!(
        (ours.allocs, ours.uploads, ours.host_syncs),
        (1, 1, 2),
        "{ours:?}"
    );
    assert_counts_agree("upload and download", ours, (emu0, emu_stats().unwrap()));
}

fn late_read_reports_a_kernel_error() {
    let (gpu, _serial) = gpu();
    let be = gpu.backend();
    let one = |v: f32| {
        be.upload(&Tensor::from_f32(vec![v], &[1]).unwrap())
            .unwrap()
    };
    let table = be
        .upload(&Tensor::from_f32(vec![1.0; 6], &[3, 2]).unwrap())
        .unwrap();
    let bad = be
        .upload(&Tensor::from_i32(vec![0, 7], &[2]).unwrap())
        .unwrap();
    let mut queue = ScalarQueue::new(&gpu, 3, 2).unwrap();
    queue.push(&[&one(1.5), &one(-1.0)]).unwrap();
    be.gather_rows(&table, &bad).unwrap();
    queue.push(&[&one(2.5)]).unwrap();
    queue.push(&[&one(3.5), &one(0.25)]).unwrap();
    assert!(
        queue.push(&[&one(4.5)]).is_err(),
        "a fourth group in three slots"
    );
    assert!(
        ScalarQueue::new(&gpu, 1, 2)
            .unwrap()
            .push(&[&one(1.0), &one(2.0), &one(3.0)])
            .is_err(),
        "three values in a group of two"
    );
    // The group queued before the bad gather reads back clean; the one after carries its
    // error, once: the word is cleared as each group is queued.
    assert_eq!(queue.pop().unwrap(), Some(vec![1.5, -1.0]));
    let err = queue.pop().unwrap_err().to_string();
    assert!(err.contains("gather_rows"), "{err}");
    assert_eq!(queue.pop().unwrap(), Some(vec![3.5, 0.25]));
    assert_eq!(queue.pop().unwrap(), None);
}

/// The acceptance check: 20 steps replayed as CUDA graphs, each on other images, leave
/// exactly the parameters, keys and losses of 20 plain steps, and a steady-state graphed step launches one graph and
/// nothing else: no kernel launch, upload, allocation or host synchronisation of its own.
fn graph_and_plain_steps_are_bit_identical() {
    let (gpu, _serial) = gpu();
    let steps = 20;
    let f = load_on("delo-tiny", 1, &gpu, DType::BF16);
    let plain = run(&f, &gpu, steps, false, || ());
    let graphed = run(&f, &gpu, steps, true, || counts(&gpu));
    assert_eq!(graphed.losses, plain.losses, "losses");
    assert_eq!(
        graphed.params, plain.params,
        "parameters after {steps} steps"
    );
    assert_eq!(graphed.key, plain.key, "task key after {steps} steps");
    let used = graphed.window.1.since(&graphed.window.0);
    let later = (steps - WARM_UP - 3) as u64;
    assert_eq!(used.graph_launches, later, "{used:?}");
    assert_eq!(
        (used.launches, used.uploads, used.allocs, used.host_syncs),
        (0, 0, 0, 0),
        "{used:?}"
    );
    let Device::Cuda(b) = &gpu else {
        unreachable!()
    };
    // The first step (no key yet) and the second (the key's block taken) are each seen once
    // and run kernel by kernel; the steady state's graph has two instances used in turn.
    assert_eq!(b.graphs_captured(), 2);
}

fn a_graphed_step_cannot_read_the_device() {
    let (gpu, _serial) = gpu();
    let Device::Cuda(b) = &gpu else {
        unreachable!()
    };
    let t = gpu
        .backend()
        .upload(&Tensor::from_f32(vec![1.0, 2.0], &[2]).unwrap())
        .unwrap();
    let err = b.graphed(|| t.to_vec_f32()).unwrap_err().to_string();
    assert!(err.contains("graphed step"), "{err}");
    // The backend is usable afterwards, outside and inside graphed steps.
    assert_eq!(t.to_vec_f32().unwrap(), vec![1.0, 2.0]);
    let doubled = b.graphed(|| gpu.backend().scale(&t, 2.0)).unwrap();
    assert_eq!(doubled.to_vec_f32().unwrap(), vec![2.0, 4.0]);
}

/// A host wait on a capturing stream fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and
/// invalidates the capture, on a GPU as under the emulated driver.
fn a_host_wait_inside_a_capture_is_refused() {
    use cudarc::driver::{result, sys};
    let (gpu, _serial) = gpu();
    let Device::Cuda(b) = &gpu else {
        unreachable!()
    };
    b.stream().context().bind_to_thread().unwrap();
    let s = b.stream().cu_stream();
    // SAFETY: the backend's own stream, idle; the capture is ended below whatever happens.
    unsafe {
        result::stream::begin_capture(
            s,
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
        .unwrap();
        let sync = result::stream::synchronize(s).unwrap_err();
        assert_eq!(
            sync.0,
            sys::cudaError_enum::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        );
        let end = result::stream::end_capture(s).unwrap_err();
        assert_eq!(
            end.0,
            sys::cudaError_enum::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        );
    }
    // The stream works again.
    gpu.backend().synchronize().unwrap();
}

/// `--cache-images` on CUDA: steps whose patch rows the device gathers from 8-bit images in the
/// device image cache leave exactly the parameters, keys and losses of steps on the host
/// cache's collated f32 pixels, plain and replayed as CUDA graphs, with each step's samples on
/// other images (of several sizes, padded; the white stand-in for the image-missing sample).
/// In the steady state such a step uploads its table of where the images lie instead of its
/// f32 patch rows, and a graphed one allocates nothing.
fn device_image_cache_steps_equal_host_cache_steps() {
    use delo::backend::cuda::DeviceImageCache;
    use delo::data::image::{collate_images, ImageProcessor, PixelImage};
    use delo::data::MissingType;
    let (gpu, _serial) = gpu();
    let Device::Cuda(be) = &gpu else {
        unreachable!()
    };
    let f = load_on("delo-tiny", 1, &gpu, DType::F32);
    let [b, _, h, w] = f.inputs.pixel_values.shape()[..] else {
        panic!("the fixture's pixels are [B, 3, H, W]")
    };
    let sizes = [(h, w), (h - 16, w), (h, w), (h, w / 2)];
    let images: Vec<PixelImage> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(height, width))| PixelImage {
            height,
            width,
            data: (0..3 * height * width)
                .map(|k| ((k * 131 + i * 53 + k / 7) % 256) as u8)
                .collect(),
        })
        .collect();
    let blank = ImageProcessor::square(h as u32).missing();
    let bytes = images.iter().map(|i| i.data.len()).sum::<usize>() + blank.data.len();
    let cache = std::sync::Arc::new(DeviceImageCache::new(be, bytes).unwrap());
    // Step `step`'s image per sample: the stand-in, or one of `images` in turn.
    let pick = |step: usize| {
        (0..b)
            .map(|i| match f.missing[i] {
                MissingType::Image => (usize::MAX, &blank),
                _ => (
                    (i + step) % images.len(),
                    &images[(i + step) % images.len()],
                ),
            })
            .collect::<Vec<(usize, &PixelImage)>>()
    };
    let host_inputs = |step: usize| {
        let refs: Vec<&PixelImage> = pick(step).into_iter().map(|(_, im)| im).collect();
        let batch = collate_images(&refs).unwrap();
        ViltInputs {
            pixel_values: batch.pixel_values.into(),
            pixel_mask: batch.pixel_mask,
            ..f.inputs.clone()
        }
    };
    let cached_inputs = |step: usize| {
        let stored = pick(step)
            .into_iter()
            .map(|(key, im)| cache.store(key, im.height, im.width, &im.data).unwrap())
            .collect();
        ViltInputs {
            pixel_values: Pixels::Cached {
                cache: cache.clone(),
                images: stored,
                height: h,
                width: w,
            },
            ..host_inputs(step)
        }
    };
    let steps = 10;
    let host = run_with(&f, &gpu, steps, false, host_inputs, || counts(&gpu));
    let plain = run_with(&f, &gpu, steps, false, cached_inputs, || counts(&gpu));
    let graphed = run_with(&f, &gpu, steps, true, cached_inputs, || counts(&gpu));
    for (what, r) in [("plain", &plain), ("graphed", &graphed)] {
        assert_eq!(r.losses, host.losses, "{what}: losses");
        assert_eq!(
            r.params, host.params,
            "{what}: parameters after {steps} steps"
        );
        assert_eq!(r.key, host.key, "{what}: task key after {steps} steps");
    }
    let per_step = |r: &Run<DriverCounts>, warm_up: usize| {
        let used = r.window.1.since(&r.window.0);
        let n = (steps - warm_up) as u64;
        (used, used.upload_bytes / n, used.uploads / n)
    };
    let (_, host_bytes, host_uploads) = per_step(&host, WARM_UP);
    let (_, plain_bytes, plain_uploads) = per_step(&plain, WARM_UP);
    let (used, graphed_bytes, _) = per_step(&graphed, WARM_UP + 3);
    // Per sample the step embeds (the batch's, then the complete ones again for the L_con
    // proxies) its f32 patch rows [L, 3 · p²] (L = 16 cells of 16 × 16 pixels here) give way
    // to its words of the table: 3 for the sample and 1 per row.
    let cells = (h / 16) * (w / 16);
    let per_sample = (cells * 3 * 16 * 16 * 4 - 8 * (3 + cells)) as u64;
    let saved = host_bytes - plain_bytes;
    assert!(
        saved.is_multiple_of(per_sample) && saved / per_sample >= b as u64,
        "bytes uploaded per step: host cache {host_bytes}, device cache {plain_bytes}"
    );
    assert_eq!(plain_uploads, host_uploads, "uploads per step");
    assert_eq!(graphed_bytes, plain_bytes, "bytes per graphed step");
    assert_eq!(
        (used.allocs, used.uploads, used.launches),
        (0, 0, 0),
        "{used:?}"
    );
    println!(
        "per steady-state step (delo-tiny, B = {b}, {h}×{w}): uploads {host_uploads} → {plain_uploads}, bytes uploaded {host_bytes} → {plain_bytes} (graphed: {graphed_bytes}, allocations {})",
        used.allocs
    );
}
