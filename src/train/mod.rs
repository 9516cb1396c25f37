//! The continual trainer (docs/data.md#training-protocol, docs/method.md#optimisation): tasks in
//! sequence, AdamW over the current task's parameters only, EMA task keys, evaluation of every
//! seen task after each task, atomic checkpoints (at task ends and every `--checkpoint-every`
//! inside a task) and resume from the newest one, one training process per run directory.

pub mod checkpoint;
pub mod demo;
pub mod device_images;
pub mod eval;
pub mod forward;
pub mod inputs;
pub mod lock;
pub mod metrics;
pub mod predict;
pub mod prep;
pub mod results;
pub mod schedule;
pub mod step;
pub mod step_checkpoint;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::autograd::Tape;
use crate::backend::Device;
use crate::data::image::ImageProcessor;
use crate::data::tokenizer::BertTokenizer;
use crate::data::{
    Batch, Benchmark, Label, LabelKind, Loader, LoaderConfig, MissingSpec, MissingType, Skipped,
    Split,
};
use crate::delo::config::{DeloConfig, TaskKeySource};
use crate::delo::losses::Targets;
use crate::delo::params::{init_params, task_specs};
use crate::error::{Error, Result};
use crate::params::ParamSet;
use crate::report::{Resume, SkippedImage};
use crate::tensor::{DType, Tensor};
use crate::vilt::{load_model_dir, Vilt, ViltInputs};

pub use crate::delo::keys::TaskKeys;
use device_images::DeviceImages;
use lock::RunLock;
use metrics::StepLog;
use prep::ViltPrep;
use step::{run_step, StepBatch, StepLosses, StepOptim, TaskState};
use step_checkpoint::{CheckpointEvery, StepCheckpoint, StepState};

/// One loader thread per core the process may use (2 when that is unknown): decoding and
/// resizing keep up with a GPU step only with every core on them.
pub fn default_loader_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// On CUDA, text lengths are rounded up to a multiple of this many tokens (see
/// [`BertTokenizer::encode_batch_bucketed`]).
pub const CUDA_TEXT_BUCKET: usize = 32;

/// The frozen linears' element type that the `frozen_dtype` setting asks for on `device`.
fn frozen_dtype(setting: &str, device: &Device) -> Result<DType> {
    match setting {
        "auto" if device.is_cuda() => Ok(DType::BF16),
        "auto" | "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::Msg(format!(
            "frozen_dtype: expected auto, f32 or bf16, got {other:?}"
        ))),
    }
}

/// Everything a run needs besides the data and the model, with the defaults of docs/method.md.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    /// Fraction of each task's steps spent warming up.
    pub warmup: f32,
    pub seed: u64,
    /// `type:η`, e.g. `both:0.7` (docs/data.md#missing-modality).
    pub missing: String,
    pub max_text_len: usize,
    /// Text lengths are rounded up to a multiple of this many tokens; `None`:
    /// [`CUDA_TEXT_BUCKET`] on CUDA, 1 (the batch's longest text) on the CPU.
    pub text_bucket: Option<usize>,
    /// Forced square image size (`None`: ViLT's shortest-edge resize).
    pub image_size: Option<u32>,
    pub loader_threads: usize,
    pub cache_images: bool,
    pub skip_bad: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Element type of the frozen linears' weights: `auto` (bf16 on CUDA, f32 on the CPU),
    /// `f32` or `bf16`.
    pub frozen_dtype: String,
    /// On CUDA, replay each kind of step as one CUDA graph (else launch kernel by kernel).
    pub cuda_graph: bool,
    /// Stop each task after this many steps (quick runs and tests); `None`: all epochs.
    pub max_steps_per_task: Option<usize>,
    /// How often to checkpoint inside a task (`step_checkpoint`); changes no result.
    pub checkpoint_every: CheckpointEvery,
    pub delo: DeloConfig,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            epochs: 10,
            batch_size: 4,
            eval_batch_size: 16,
            lr: 1e-4,
            betas: (0.9, 0.98),
            eps: 1e-8,
            weight_decay: 0.01,
            warmup: 0.1,
            seed: 42,
            missing: "both:0.7".into(),
            max_text_len: 512,
            text_bucket: None,
            image_size: Some(384),
            loader_threads: default_loader_threads(),
            cache_images: false,
            skip_bad: false,
            device: "cpu".into(),
            frozen_dtype: "auto".into(),
            cuda_graph: true,
            max_steps_per_task: None,
            checkpoint_every: CheckpointEvery::default(),
            delo: DeloConfig::default(),
        }
    }
}

/// What a run directory records about itself (`run.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSpec {
    pub data: PathBuf,
    pub model: PathBuf,
    pub settings: TrainSettings,
    /// Each `--resume` that went on training, in order.
    #[serde(default)]
    pub resumes: Vec<Resume>,
}

/// What `delo train --resume` may change, each `None` when not given. All but `override_lr`
/// change no result (with the caveat that another device rounds differently); `override_lr`
/// is the deliberate change of the base learning rate (e.g. after a NaN loss), used from the
/// resumed step on and recorded in the run.
#[derive(Clone, Debug, Default)]
pub struct ResumeOptions {
    pub device: Option<String>,
    pub loader_threads: Option<usize>,
    pub cache_images: Option<bool>,
    pub cuda_graph: Option<bool>,
    pub checkpoint_every: Option<CheckpointEvery>,
    pub override_lr: Option<f32>,
}

impl ResumeOptions {
    /// Applies the options to `s`; returns each change as `name: stored → given`.
    fn apply(&self, s: &mut TrainSettings) -> Vec<String> {
        fn set<T: PartialEq + std::fmt::Debug>(
            changes: &mut Vec<String>,
            name: &str,
            field: &mut T,
            given: Option<T>,
        ) {
            match given {
                Some(v) if v != *field => {
                    changes.push(format!("{name}: {field:?} → {v:?}"));
                    *field = v;
                }
                _ => {}
            }
        }
        let mut changes = Vec::new();
        set(&mut changes, "device", &mut s.device, self.device.clone());
        set(
            &mut changes,
            "loader_threads",
            &mut s.loader_threads,
            self.loader_threads,
        );
        set(
            &mut changes,
            "cache_images",
            &mut s.cache_images,
            self.cache_images,
        );
        set(
            &mut changes,
            "cuda_graph",
            &mut s.cuda_graph,
            self.cuda_graph,
        );
        set(
            &mut changes,
            "checkpoint_every",
            &mut s.checkpoint_every,
            self.checkpoint_every,
        );
        set(
            &mut changes,
            "lr (--override-lr)",
            &mut s.lr,
            self.override_lr,
        );
        changes
    }
}

/// Per-task training statistics.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskStats {
    pub epochs: usize,
    pub wall_seconds: f64,
    pub train_samples_per_second: f64,
    pub steps: usize,
    pub final_loss: f32,
}

/// A finished task: its frozen tensors (by name, on the model's device) and its classes.
pub struct FrozenTask {
    pub params: Vec<(String, Tensor)>,
}

/// A run in progress: model, data, finished tasks and their keys.
pub struct Trainer {
    pub spec: RunSpec,
    pub run_dir: PathBuf,
    pub device: Device,
    pub vilt: Vilt,
    pub bench: Benchmark,
    pub prep: Arc<ViltPrep>,
    pub missing: MissingSpec,
    pub tasks: Vec<FrozenTask>,
    /// The key tables: one, or one per encoder layer with `--task-key layer`.
    pub keys: Vec<TaskKeys>,
    pub stats: Vec<TaskStats>,
    /// Evaluation rows so far: `evals[t]` = per split, per seen task j, (metric, task-id %).
    pub evals: Vec<eval::TaskRow>,
    /// Images left out with `--skip-bad`, by item index (each reported once); behind a lock
    /// because evaluation sees the trainer shared.
    skipped: Mutex<BTreeMap<usize, SkippedImage>>,
    /// The run directory's lock, taken when the trainer first trains.
    lock: Option<RunLock>,
    /// For a resumed run not yet recorded: the settings changed with the resume.
    pending_resume: Option<Vec<String>>,
}

/// What a run reports while it goes: a training step, or a line (evaluations, phases).
pub enum Event<'a> {
    Step {
        task: usize,
        step: usize,
        total: usize,
        loss: f32,
        lr: f32,
        samples_per_second: f64,
    },
    Line(&'a str),
}

impl Event<'_> {
    /// The event as one log line.
    pub fn line(&self) -> String {
        match self {
            Event::Step {
                task,
                step,
                total,
                loss,
                lr,
                samples_per_second,
            } => {
                format!("task {task} step {step}/{total} loss {loss:.4} lr {lr:.2e} {samples_per_second:.1} samples/s")
            }
            Event::Line(l) => l.to_string(),
        }
    }
}

impl Trainer {
    /// Opens a new run (or fails if `run_dir` already holds one; resume it instead).
    pub fn create(
        data: &Path,
        model: &Path,
        run_dir: &Path,
        settings: TrainSettings,
    ) -> Result<Trainer> {
        settings.delo.validate()?;
        if run_dir.join(checkpoint::RUN_FILE).exists() {
            return Err(Error::Msg(format!(
                "{} already holds a run; use --resume to continue it",
                run_dir.display()
            )));
        }
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let lock = RunLock::acquire(run_dir)?;
        let spec = RunSpec {
            data: data.to_path_buf(),
            model: model.to_path_buf(),
            settings,
            resumes: Vec::new(),
        };
        let mut t = Trainer::open(spec, run_dir)?;
        t.lock = Some(lock);
        checkpoint::write_run(run_dir, &t.spec)?;
        Ok(t)
    }

    /// Reopens a run from its directory, with every finished task restored (to evaluate or
    /// predict; training on with [`Trainer::run`] takes the run's lock and goes on from the
    /// newest checkpoint).
    pub fn resume(run_dir: &Path) -> Result<Trainer> {
        let spec = checkpoint::read_run(run_dir)?;
        let mut t = Trainer::open(spec, run_dir)?;
        checkpoint::restore(&mut t)?;
        t.pending_resume = Some(Vec::new());
        Ok(t)
    }

    /// Reopens a run to train on (`delo train --resume`): takes the run's lock first (an
    /// error names the process that holds it), then applies `opts` to the stored settings.
    pub fn resume_with(run_dir: &Path, opts: &ResumeOptions) -> Result<Trainer> {
        let lock = RunLock::acquire(run_dir)?;
        let mut spec = checkpoint::read_run(run_dir)?;
        let changes = opts.apply(&mut spec.settings);
        let mut t = Trainer::open(spec, run_dir)?;
        checkpoint::restore(&mut t)?;
        t.lock = Some(lock);
        t.pending_resume = Some(changes);
        Ok(t)
    }

    fn open(spec: RunSpec, run_dir: &Path) -> Result<Trainer> {
        let s = &spec.settings;
        let device = Device::parse(&s.device)?;
        let bench = Benchmark::load(&spec.data)?;
        let (vcfg, weights) = load_model_dir(&spec.model)?;
        let dtype = frozen_dtype(&s.frozen_dtype, &device)?;
        let vilt = Vilt::new(vcfg, weights, &device, s.max_text_len, dtype)?;
        let tokenizer = Arc::new(BertTokenizer::from_model_dir(&spec.model)?);
        let images = ImageProcessor::with_image_size(s.image_size);
        let prep = Arc::new(ViltPrep {
            tokenizer,
            images,
            max_text_len: s.max_text_len,
            // On CUDA a few text lengths, so that steps come in a few kinds, each one graph.
            text_bucket: s.text_bucket.unwrap_or(match device.is_cuda() {
                true => CUDA_TEXT_BUCKET,
                false => 1,
            }),
        });
        let missing: MissingSpec = s.missing.parse()?;
        Ok(Trainer {
            run_dir: run_dir.to_path_buf(),
            device,
            vilt,
            bench,
            prep,
            missing,
            tasks: Vec::new(),
            keys: Vec::new(),
            stats: Vec::new(),
            evals: Vec::new(),
            skipped: Mutex::new(BTreeMap::new()),
            lock: None,
            pending_resume: None,
            spec,
        })
    }

    /// Records images a loader of `task`'s `split` left out (`--skip-bad`).
    pub fn note_skipped(&self, task: usize, split: Split, skipped: &[Skipped]) {
        for s in skipped {
            self.record_skipped(SkippedImage {
                item: s.index,
                task,
                split: split.as_str().into(),
                path: s.path.display().to_string(),
                error: s.error.clone(),
            });
        }
    }

    /// Records one skipped image (once per item).
    pub fn record_skipped(&self, s: SkippedImage) {
        let mut map = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(s.item).or_insert(s);
    }

    /// Every image left out so far, in item order.
    pub fn skipped_images(&self) -> Vec<SkippedImage> {
        let map = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    pub fn settings(&self) -> &TrainSettings {
        &self.spec.settings
    }

    /// Answers with `key` instead of the run's own task-key source: `oracle` (the true task,
    /// task-incremental use) always, another source only if it is the run's own, since keys
    /// built from one source's queries mean nothing to another's.
    pub fn use_task_key(&mut self, key: TaskKeySource) -> Result<()> {
        let own = self.settings().delo.task_key;
        if key != own && key != TaskKeySource::Oracle {
            let name = |k: TaskKeySource| format!("{k:?}").to_lowercase();
            return Err(Error::Msg(format!(
                "--task-key {}: this run's keys were built from `{}` queries; only oracle (or the run's own source) can be used",
                name(key),
                name(own)
            )));
        }
        self.spec.settings.delo.task_key = key;
        Ok(())
    }

    /// The CUDA-graph counts of the run's backend, when its steps are graphed.
    fn graph_stats(&self) -> Option<crate::backend::cuda::GraphStats> {
        match &self.device {
            Device::Cuda(b) if self.settings().cuda_graph => Some(b.graph_stats()),
            _ => None,
        }
    }

    pub fn loader(&self, task: usize, split: Split, train: bool) -> Result<Loader<ViltPrep>> {
        let s = self.settings();
        let cfg = LoaderConfig {
            batch_size: if train {
                s.batch_size
            } else {
                s.eval_batch_size
            },
            shuffle: train,
            seed: s.seed,
            threads: s.loader_threads,
            prefetch: 2,
            cache_images: s.cache_images,
            skip_bad: s.skip_bad,
            drop_last: false,
        };
        Loader::from_benchmark(
            &self.bench,
            task,
            split,
            &self.missing,
            s.seed,
            self.prep.clone(),
            cfg,
        )
    }

    /// Labels of a batch of task `task` as the loss of its head wants them: local class ids
    /// or multi-hot vectors, placed at the task's columns of a `seq-lora` head (the other
    /// columns are negatives there).
    pub fn targets(&self, task: usize, labels: &[Label]) -> Result<Targets> {
        let n = self.bench.tasks[task].classes.len();
        let span = self.head_span(task, task);
        let width = self.head_classes(task).len();
        match self.bench.kind {
            LabelKind::Single => {
                let v: Vec<i32> = labels
                    .iter()
                    .map(|l| match l {
                        Label::Single(c) => Ok((span.start + *c) as i32),
                        Label::Multi(_) => Err(Error::Msg(
                            "a multi-hot label in a single-label benchmark".into(),
                        )),
                    })
                    .collect::<Result<_>>()?;
                Ok(Targets::Single(Tensor::from_i32(v, &[labels.len()])?))
            }
            LabelKind::Multi => {
                let mut v = vec![0f32; labels.len() * width];
                for (row, l) in v.chunks_mut(width).zip(labels) {
                    match l {
                        Label::Multi(h) if h.len() == n => row[span.clone()]
                            .iter_mut()
                            .zip(h)
                            .for_each(|(o, &x)| *o = x as f32),
                        _ => {
                            return Err(Error::Msg(format!(
                                "a label that is not a {n}-class multi-hot vector"
                            )))
                        }
                    }
                }
                Ok(Targets::Multi(Tensor::from_f32(v, &[labels.len(), width])?))
            }
        }
    }

    /// The task-key query `[B, d]` of a batch at the `frozen` or `input` source, on the device.
    pub fn task_query(
        &self,
        tape: &mut Tape,
        inputs: &ViltInputs,
        missing: &[MissingType],
    ) -> Result<Tensor> {
        if self.settings().delo.task_key == TaskKeySource::Frozen {
            return Ok(self.vilt.infer(inputs)?.pooled);
        }
        let emb = self.vilt.embed(inputs)?;
        crate::delo::losses::task_query(tape, &emb, missing, self.settings().delo.cross_modal_guide)
    }

    /// Number of key tables the run keeps.
    pub fn key_tables(&self) -> usize {
        match self.settings().delo.task_key {
            TaskKeySource::Layer => self.vilt.cfg.num_hidden_layers,
            _ => 1,
        }
    }

    /// Classes of the head trained with task `t`: its own, or with `seq-lora` every class
    /// seen so far (tasks 0..=t in order), as global class ids.
    pub fn head_classes(&self, t: usize) -> Vec<usize> {
        let tasks = &self.bench.tasks;
        if self.settings().delo.variant.shares_one_model() {
            tasks[..=t]
                .iter()
                .flat_map(|x| x.classes.iter().copied())
                .collect()
        } else {
            tasks[t].classes.clone()
        }
    }

    /// The head columns of task `t`'s own classes in the head trained with task `trained`.
    pub fn head_span(&self, t: usize, trained: usize) -> std::ops::Range<usize> {
        let n = self.bench.tasks[t].classes.len();
        if self.settings().delo.variant.shares_one_model() && t <= trained {
            let offset = self.bench.tasks[..t].iter().map(|x| x.classes.len()).sum();
            offset..offset + n
        } else {
            0..n
        }
    }

    /// Starting parameters of task `t`: freshly drawn, or with `seq-lora` the parameters left
    /// by task t−1 with the head grown by rows for task t's classes.
    fn initial_params(&self, t: usize) -> Result<Vec<(String, Tensor)>> {
        let s = self.settings();
        let specs = task_specs(&s.delo, &self.vilt.cfg, self.head_classes(t).len());
        let fresh = init_params(&specs, s.seed.wrapping_add(1000 * t as u64 + 1))?;
        let prev = match (s.delo.variant.shares_one_model(), t.checked_sub(1)) {
            (true, Some(p)) => &self.tasks[p].params,
            _ => return Ok(fresh),
        };
        fresh
            .into_iter()
            .map(|(name, new)| {
                let old = prev
                    .iter()
                    .find(|(n, _)| *n == name)
                    .ok_or_else(|| Error::Msg(format!("task {} has no `{name}`", t - 1)))?
                    .1
                    .to_vec_f32()?;
                // The head grows: the old classes' rows, then the new ones as drawn.
                let mut v = new.to_vec_f32()?;
                if old.len() > v.len() {
                    return Err(Error::shape(
                        "seq-lora head growth",
                        format!(
                            "task {}'s `{name}` has {} values, more than task {t}'s {}",
                            t - 1,
                            old.len(),
                            v.len()
                        ),
                    ));
                }
                v[..old.len()].copy_from_slice(&old);
                Ok((name, Tensor::from_f32(v, new.shape())?))
            })
            .collect()
    }

    /// Trains every task not yet done, evaluating, checkpointing and reporting after each.
    pub fn run(&mut self, log: &mut dyn FnMut(Event)) -> Result<crate::report::Results> {
        self.run_until(self.bench.num_tasks(), log)
    }

    /// Trains the tasks before `until` that are not yet done (a partial run, e.g. to be
    /// resumed later); results.json covers the tasks finished so far.
    pub fn run_until(
        &mut self,
        until: usize,
        log: &mut dyn FnMut(Event),
    ) -> Result<crate::report::Results> {
        let total = self.bench.num_tasks();
        if self.lock.is_none() {
            self.lock = Some(RunLock::acquire(&self.run_dir)?);
        }
        if let Some(pid) = self.lock.as_mut().and_then(|l| l.stale_pid.take()) {
            log(Event::Line(&format!(
                "took over the lock of {} left by process {pid}, which has ended",
                self.run_dir.display()
            )));
        }
        let mut probes = eval::Probes::default();
        let mut reported: BTreeSet<usize> = self.skipped_images().iter().map(|s| s.item).collect();
        let first = self.tasks.len();
        let mut resume_from = None;
        if first < until.min(total) {
            resume_from =
                step_checkpoint::latest(&self.run_dir, first, &mut |w| log(Event::Line(w)))?;
            if let Some(changes) = self.pending_resume.take() {
                self.record_resume(first, resume_from.as_ref(), changes, log)?;
            }
        }
        for t in first..until.min(total) {
            let stats = self.train_task(t, resume_from.take(), log)?;
            self.stats.push(stats);
            // The final evaluation also feeds the report's selection and cos(q_v, q_t) plots.
            let last = t + 1 == total;
            let row = eval::evaluate_after(self, t, last.then_some(&mut probes))?;
            log(Event::Line(&eval::row_summary(t, &row)));
            self.log_skipped(&mut reported, log);
            self.evals.push(row);
            checkpoint::save_task(self, t)?;
            step_checkpoint::clear(&self.run_dir, t + 1)?;
            if !last {
                results::write(self, None)?;
            }
        }
        let done = self.evals.len() == total;
        results::write(self, done.then_some(&probes))
    }

    /// Records a resume at task `task` (from `from`, or the task's start) in run.json, and so in
    /// results.json and report.md.
    fn record_resume(
        &mut self,
        task: usize,
        from: Option<&StepCheckpoint>,
        changes: Vec<String>,
        log: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let step = from.map_or(0, |c| c.state.step);
        let checkpoint = from.map(|c| {
            c.file
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        });
        log(Event::Line(&format!(
            "resuming task {task} after step {step} ({}){}",
            checkpoint.as_deref().unwrap_or("from its start"),
            match changes.is_empty() {
                true => String::new(),
                false => format!("; changed: {}", changes.join("; ")),
            }
        )));
        self.spec.resumes.push(Resume {
            at: utc_now(),
            task,
            step,
            checkpoint,
            changes,
        });
        checkpoint::write_run(&self.run_dir, &self.spec)
    }

    /// Logs each image skipped and not yet in `reported` (one line each: item, task,
    /// split and the error, which names the file), then the count so far.
    fn log_skipped(&self, reported: &mut BTreeSet<usize>, log: &mut dyn FnMut(Event)) {
        let all = self.skipped_images();
        let mut fresh = 0;
        for s in &all {
            if reported.insert(s.item) {
                fresh += 1;
                log(Event::Line(&format!(
                    "--skip-bad: left out item {} (task {}, {}): {}",
                    s.item, s.task, s.split, s.error
                )));
            }
        }
        if fresh > 0 {
            log(Event::Line(&format!(
                "--skip-bad: {} unreadable image(s) left out so far; results.json and report.md \
                 list them",
                all.len()
            )));
        }
    }

    /// Puts a checkpoint's state into `state` and the run; returns where the task stands.
    fn restore_step(&self, state: &mut TaskState, cp: StepCheckpoint) -> Result<StepState> {
        let file = cp.file.display();
        if cp.keys.len() != state.keys.len() {
            return Err(Error::format(
                &cp.file,
                format!(
                    "holds {} task-key tables; this run's --task-key needs {}",
                    cp.keys.len(),
                    state.keys.len()
                ),
            ));
        }
        state
            .params
            .restore(cp.params)
            .map_err(|e| Error::Msg(format!("{file} does not fit this run's task: {e}")))?;
        state.keys = cp
            .keys
            .into_iter()
            .map(|k| k.map(|k| k.to_device(&self.device)).transpose())
            .collect::<Result<_>>()?;
        for sk in &cp.state.skipped {
            self.record_skipped(sk.clone());
        }
        Ok(cp.state)
    }

    /// Writes a checkpoint of the task's state after `at.step` steps: first every queued loss
    /// is read back (so `metrics.jsonl` holds exactly those steps, and each loss is known to be
    /// finite), then the state is read from the device (which waits for its last step).
    /// Errors (a full disk, say) stop the run and say that the checkpoints before are intact.
    fn checkpoint_step(
        &self,
        losses: &mut StepLog,
        state: &TaskState,
        mut at: StepState,
        log: &mut dyn FnMut(Event),
    ) -> Result<()> {
        losses.flush(log)?;
        let started = Instant::now();
        at.seconds = losses.started.elapsed().as_secs_f64();
        at.skipped = self.skipped_images();
        let cp = StepCheckpoint {
            file: PathBuf::new(),
            params: state.params.snapshot()?,
            keys: state
                .keys
                .iter()
                .map(|k| k.as_ref().map(|k| k.to_device(&Device::Cpu)).transpose())
                .collect::<Result<_>>()?,
            state: at,
        };
        let (task, step) = (cp.state.task, cp.state.step);
        let before = step_checkpoint::list(&self.run_dir, task)?;
        let (path, bytes) = step_checkpoint::save(&self.run_dir, &cp).map_err(|e| {
            let intact = match before.first() {
                Some((s, p)) => format!(
                    "The checkpoint of task {task} at step {s} ({}) is intact.",
                    p.display()
                ),
                None => saved_tasks_note(task, &self.run_dir),
            };
            Error::Msg(format!(
                "the checkpoint of task {task} at step {step} could not be written: {e}. \
                 Stopping. {intact} Free space or fix the error, then run \
                 `delo train --resume {}`",
                self.run_dir.display()
            ))
        })?;
        log(Event::Line(&format!(
            "task {task}: checkpoint at step {step}: {} ({:.2} MB in {:.1} ms)",
            path.display(),
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64() * 1e3
        )));
        Ok(())
    }

    /// Trains task `t` from its start, or from the checkpoint `from` of it
    /// (docs/data.md#training-protocol): the task's steps under the cosine schedule, with step
    /// checkpoints when due, then the task's parameters and keys frozen.
    fn train_task(
        &mut self,
        t: usize,
        from: Option<StepCheckpoint>,
        log: &mut dyn FnMut(Event),
    ) -> Result<TaskStats> {
        let s = self.settings().clone();
        // The task's keys live on the device while it trains: no host round trip per step.
        let mut state = TaskState {
            params: ParamSet::new(&self.device, self.initial_params(t)?)?,
            keys: vec![None; self.key_tables()],
        };
        let at = match from {
            Some(cp) => self.restore_step(&mut state, cp)?,
            None => StepState::start(t),
        };
        let batches = self.train_batches(t, log)?;
        let per_epoch = batches.loader.num_batches();
        let mut total = per_epoch * s.epochs;
        if let Some(m) = s.max_steps_per_task {
            total = total.min(m);
        }
        let mut losses =
            StepLog::new(&self.device, &self.run_dir, t, total, (at.step, at.seconds))?;
        let (mut step, mut samples) = (at.step, at.samples);
        let mut since = (step, Instant::now());
        let graphs_before = self.graph_stats();
        'epochs: for epoch in at.epoch..s.epochs {
            let first = if epoch == at.epoch { at.next_batch } else { 0 };
            for batch in batches.loader.epoch_from(epoch as u64, first) {
                if step >= total {
                    break 'epochs;
                }
                let batch = batch?;
                let lr = schedule::cosine_with_warmup(s.lr, step, total, s.warmup);
                let loss = self.train_on_batch(t, &mut state, &batches, &batch, lr)?;
                samples += batch.samples.len();
                // Shown one step late: this step's kernels keep the device busy meanwhile.
                losses.push(step, epoch, lr, samples, &loss, log)?;
                step += 1;
                if step < total && s.checkpoint_every.due(step - since.0, since.1.elapsed()) {
                    let at = StepState {
                        step,
                        epoch,
                        next_batch: batch.number + 1,
                        samples,
                        ..StepState::start(t)
                    };
                    self.checkpoint_step(&mut losses, &state, at, log)?;
                    since = (step, Instant::now());
                }
            }
        }
        let started = losses.started;
        let last_loss = losses.finish(log)?;
        self.log_graph_replays(t, graphs_before, log);
        if step == 0 {
            return Err(Error::Msg(format!("task {t} has no training batch")));
        }
        self.freeze_task(t, state)?;
        let wall = started.elapsed().as_secs_f64();
        Ok(TaskStats {
            epochs: s.epochs.min(step.div_ceil(per_epoch.max(1))),
            wall_seconds: wall,
            train_samples_per_second: samples as f64 / wall,
            steps: step,
            final_loss: last_loss,
        })
    }

    /// Task `t`'s shuffled training loader, with its images placed in device memory when
    /// `--cache-images` asks for it and they fit (the placement is logged).
    fn train_batches(&self, t: usize, log: &mut dyn FnMut(Event)) -> Result<TrainBatches> {
        let loader = self.loader(t, Split::Train, true)?;
        let on_device = match self.settings().cache_images {
            true => {
                let placement = DeviceImages::for_loader(&self.device, &loader, &self.prep.images)?;
                log(Event::Line(&format!("task {t}: {}", placement.notice)));
                placement.images
            }
            false => None,
        };
        Ok(TrainBatches { loader, on_device })
    }

    /// One AdamW step of task `t` on `batch` at learning rate `lr` (docs/method.md#optimisation);
    /// returns the step's losses, still on the device.
    fn train_on_batch(
        &self,
        t: usize,
        state: &mut TaskState,
        batches: &TrainBatches,
        batch: &Batch<ViltInputs>,
        lr: f32,
    ) -> Result<StepLosses> {
        let s = self.settings();
        self.note_skipped(t, Split::Train, &batch.skipped);
        let missing: Vec<MissingType> = batch.samples.iter().map(|x| x.missing).collect();
        let labels: Vec<Label> = batch
            .samples
            .iter()
            .map(|x| x.local_label.clone())
            .collect();
        let targets = self.targets(t, &labels)?;
        let optim = StepOptim {
            lr,
            betas: s.betas,
            eps: s.eps,
            weight_decay: s.weight_decay,
        };
        let placed = batches
            .on_device
            .as_ref()
            .map(|d| d.place(&batches.loader, batch))
            .transpose()?;
        let batch_in = StepBatch {
            inputs: placed.as_ref().unwrap_or(&batch.data),
            missing: &missing,
            targets: &targets,
        };
        run_step(&self.vilt, &s.delo, state, &batch_in, optim, s.cuda_graph)
    }

    /// Logs how many of task `t`'s steps were replayed as CUDA graphs since `before` (nothing
    /// off CUDA graphs).
    fn log_graph_replays(
        &self,
        t: usize,
        before: Option<crate::backend::cuda::GraphStats>,
        log: &mut dyn FnMut(Event),
    ) {
        if let (Some(before), Some(after)) = (before, self.graph_stats()) {
            log(Event::Line(&format!(
                "task {t}: {} of {} steps replayed as CUDA graphs ({} kinds of step, {} graphs captured, {} kinds evicted)",
                after.replayed - before.replayed,
                after.steps - before.steps,
                after.kinds - before.kinds,
                after.captured - before.captured,
                after.evicted - before.evicted,
            )));
        }
    }

    /// Freezes trained task `t`: its running keys join the key tables (eq. 7,
    /// docs/method.md#task-key-memory) and its parameters join the finished tasks.
    fn freeze_task(&mut self, t: usize, state: TaskState) -> Result<()> {
        let (params, keys) = (state.params, state.keys);
        self.keys.resize_with(keys.len(), TaskKeys::default);
        for (table, key) in self.keys.iter_mut().zip(&keys) {
            table.push(
                key.as_ref()
                    .ok_or_else(|| Error::Msg(format!("task {t}: a key table got no query")))?,
            )?;
        }
        self.tasks.push(FrozenTask {
            params: params
                .to_host()?
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(&self.device)?)))
                .collect::<Result<_>>()?,
        });
        Ok(())
    }
}

/// A task's training batches: the loader, and the task's images in device memory when
/// `--cache-images` put them there (docs/engine.md#images-in-device-memory).
struct TrainBatches {
    loader: Loader<ViltPrep>,
    on_device: Option<DeviceImages>,
}

/// The current time, UTC, as RFC 3339 to the second (`2026-12-06T14:05:00Z`).
pub fn utc_now() -> String {
    utc_from_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// `secs` seconds after 1970-01-01T00:00:00Z, as RFC 3339.
fn utc_from_unix(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's days-to-civil algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// What a run stopped while training task `task` has kept, in words true for every `task`:
/// tasks train in order and each is checkpointed when it ends, so exactly tasks
/// `0..task` are saved (none for the first task), and `--resume` continues at `task`, from
/// its newest step checkpoint if it has one.
pub fn saved_tasks_note(task: usize, run_dir: &Path) -> String {
    let dir = run_dir.display();
    match task {
        0 => format!(
            "No task had finished, so {dir} holds no task checkpoint yet; \
             `delo train --resume {dir}` continues task 0 from its newest step checkpoint, if \
             any."
        ),
        1 => format!(
            "The checkpoint of task 0 in {dir} is intact; `delo train --resume {dir}` continues \
             at task 1 (from its newest step checkpoint, if any)."
        ),
        t => format!(
            "The checkpoints of tasks 0 to {} in {dir} are intact; `delo train --resume {dir}` \
             continues at task {t} (from its newest step checkpoint, if any).",
            t - 1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc_3339_utc() {
        // Python's datetime.fromtimestamp(s, UTC) gives the same strings.
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_780_000_000, "2026-05-28T20:26:40Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(utc_from_unix(secs), text);
        }
    }

    /// A run.json written before checkpoints inside a task and resume records existed still
    /// loads, with the default interval and no resumes.
    #[test]
    fn an_older_run_json_loads_with_defaults() {
        let mut old = serde_json::to_value(RunSpec {
            data: "data".into(),
            model: "model".into(),
            settings: TrainSettings::default(),
            resumes: Vec::new(),
        })
        .unwrap();
        old.as_object_mut().unwrap().remove("resumes");
        old["settings"]
            .as_object_mut()
            .unwrap()
            .remove("checkpoint_every");
        let spec: RunSpec = serde_json::from_value(old).unwrap();
        assert!(spec.resumes.is_empty());
        assert_eq!(spec.settings.checkpoint_every, CheckpointEvery::default());
    }

    #[test]
    fn the_nan_stop_says_what_is_saved() {
        let dir = Path::new("runs/x");
        let first = saved_tasks_note(0, dir);
        assert!(first.contains("no task checkpoint yet"), "{first}");
        assert!(!first.contains("intact"), "{first}");
        assert!(saved_tasks_note(1, dir).contains("checkpoint of task 0 in runs/x is intact"));
        let third = saved_tasks_note(3, dir);
        assert!(third.contains("tasks 0 to 2 in runs/x") && third.contains("at task 3"));
    }
}
