//! The continual trainer (CMML.md "Training protocol", DELO.md "Optimisation"): tasks in
//! sequence, AdamW over the current task's parameters only, EMA task keys, evaluation of every
//! seen task after each task, atomic checkpoints and resume.

pub mod checkpoint;
pub mod demo;
pub mod eval;
pub mod keys;
pub mod prep;
pub mod results;
pub mod schedule;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::autograd::Tape;
use crate::backend::Device;
use crate::data::image::ImageProcessor;
use crate::data::tokenizer::BertTokenizer;
use crate::data::{
    Benchmark, Label, LabelKind, Loader, LoaderConfig, MissingSpec, MissingType, Split,
};
use crate::delo::adapter::BoundTask;
use crate::delo::config::{DeloConfig, TaskKeySource, Variant};
use crate::delo::losses::{batch_losses, Targets};
use crate::delo::params::{init_params, task_specs};
use crate::error::{Error, Result};
use crate::params::ParamSet;
use crate::tensor::{DType, Tensor};
use crate::vilt::{load_model_dir, Vilt, ViltInputs};

pub use keys::TaskKeys;
use prep::ViltPrep;

/// Everything a run needs besides the data and the model, with DELO.md's defaults.
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
    /// `type:η`, e.g. `both:0.7` (CMML.md "Missing modality").
    pub missing: String,
    pub max_text_len: usize,
    /// Forced square image size (`None`: ViLT's shortest-edge resize).
    pub image_size: Option<u32>,
    pub loader_threads: usize,
    pub cache_images: bool,
    pub skip_bad: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Stop each task after this many steps (quick runs and tests); `None`: all epochs.
    pub max_steps_per_task: Option<usize>,
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
            image_size: Some(384),
            loader_threads: 2,
            cache_images: false,
            skip_bad: false,
            device: "cpu".into(),
            max_steps_per_task: None,
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
    pub keys: TaskKeys,
    pub stats: Vec<TaskStats>,
    /// Evaluation rows so far: `evals[t]` = per split, per seen task j, (metric, task-id %).
    pub evals: Vec<eval::TaskRow>,
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
        let spec = RunSpec {
            data: data.to_path_buf(),
            model: model.to_path_buf(),
            settings,
        };
        let t = Trainer::open(spec, run_dir)?;
        checkpoint::write_run(run_dir, &t.spec)?;
        Ok(t)
    }

    /// Reopens a run from its directory, with every finished task restored.
    pub fn resume(run_dir: &Path) -> Result<Trainer> {
        let spec = checkpoint::read_run(run_dir)?;
        let mut t = Trainer::open(spec, run_dir)?;
        checkpoint::restore(&mut t)?;
        Ok(t)
    }

    fn open(spec: RunSpec, run_dir: &Path) -> Result<Trainer> {
        let s = &spec.settings;
        if matches!(s.delo.variant, Variant::SeqLora) {
            return Err(Error::Msg("variant seq-lora (one LoRA shared by all tasks) is not supported by this trainer yet".into()));
        }
        if s.delo.task_key == TaskKeySource::Layer {
            return Err(Error::Msg("--task-key layer (one key table per layer) is not supported by this trainer yet; use input, frozen or oracle".into()));
        }
        let device = Device::parse(&s.device)?;
        let bench = Benchmark::load(&spec.data)?;
        let (vcfg, weights) = load_model_dir(&spec.model)?;
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let vilt = Vilt::new(vcfg, weights, &device, s.max_text_len, dtype)?;
        let tokenizer = Arc::new(BertTokenizer::from_model_dir(&spec.model)?);
        let images = ImageProcessor::with_image_size(s.image_size);
        let prep = Arc::new(ViltPrep {
            tokenizer,
            images,
            max_text_len: s.max_text_len,
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
            keys: TaskKeys::default(),
            stats: Vec::new(),
            evals: Vec::new(),
            spec,
        })
    }

    pub fn settings(&self) -> &TrainSettings {
        &self.spec.settings
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

    /// Local labels of a batch as the loss wants them.
    pub fn targets(&self, task: usize, labels: &[Label]) -> Result<Targets> {
        let n = self.bench.tasks[task].classes.len();
        match self.bench.kind {
            LabelKind::Single => {
                let v: Vec<i32> = labels
                    .iter()
                    .map(|l| match l {
                        Label::Single(c) => Ok(*c as i32),
                        Label::Multi(_) => Err(Error::Msg(
                            "a multi-hot label in a single-label benchmark".into(),
                        )),
                    })
                    .collect::<Result<_>>()?;
                Ok(Targets::Single(Tensor::from_i32(v, &[labels.len()])?))
            }
            LabelKind::Multi => {
                let mut v = Vec::with_capacity(labels.len() * n);
                for l in labels {
                    match l {
                        Label::Multi(h) if h.len() == n => v.extend(h.iter().map(|&x| x as f32)),
                        _ => {
                            return Err(Error::Msg(format!(
                                "a label that is not a {n}-class multi-hot vector"
                            )))
                        }
                    }
                }
                Ok(Targets::Multi(Tensor::from_f32(v, &[labels.len(), n])?))
            }
        }
    }

    /// The task-key query of a batch at the configured source (`oracle` needs none).
    pub fn task_query(
        &self,
        tape: &mut Tape,
        inputs: &ViltInputs,
        missing: &[MissingType],
    ) -> Result<Vec<f32>> {
        match self.settings().delo.task_key {
            TaskKeySource::Frozen => self.vilt.infer(inputs)?.pooled.to_vec_f32(),
            _ => {
                let emb = self.vilt.embed(inputs)?;
                crate::delo::losses::task_query(
                    tape,
                    &emb,
                    missing,
                    self.settings().delo.cross_modal_guide,
                )?
                .to_vec_f32()
            }
        }
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
        let mut probes = eval::Probes::default();
        for t in self.tasks.len()..until.min(total) {
            let stats = self.train_task(t, log)?;
            self.stats.push(stats);
            // The final evaluation also feeds the report's selection and cos(q_v, q_t) plots.
            let last = t + 1 == total;
            let row = eval::evaluate_after(self, t, last.then_some(&mut probes))?;
            log(Event::Line(&eval::row_summary(t, &row)));
            self.evals.push(row);
            checkpoint::save_task(self, t)?;
            if !last {
                results::write(self, None)?;
            }
        }
        let done = self.evals.len() == total;
        results::write(self, done.then_some(&probes))
    }

    fn train_task(&mut self, t: usize, log: &mut dyn FnMut(Event)) -> Result<TaskStats> {
        let s = self.settings().clone();
        let classes = self.bench.tasks[t].classes.len();
        let specs = task_specs(&s.delo, &self.vilt.cfg, classes);
        let mut params = ParamSet::new(
            &self.device,
            init_params(&specs, s.seed.wrapping_add(1000 * t as u64 + 1))?,
        )?;
        let loader = self.loader(t, Split::Train, true)?;
        let per_epoch = loader.num_batches();
        let mut total = per_epoch * s.epochs;
        if let Some(m) = s.max_steps_per_task {
            total = total.min(m);
        }
        let started = Instant::now();
        let (mut step, mut samples, mut last_loss) = (0usize, 0usize, f32::NAN);
        let names: Vec<String> = params.slots().iter().map(|p| p.name.clone()).collect();
        'epochs: for epoch in 0..s.epochs {
            for batch in loader.epoch(epoch as u64) {
                if step >= total {
                    break 'epochs;
                }
                let batch = batch?;
                let missing: Vec<MissingType> = batch.samples.iter().map(|x| x.missing).collect();
                let labels: Vec<Label> = batch
                    .samples
                    .iter()
                    .map(|x| x.local_label.clone())
                    .collect();
                let targets = self.targets(t, &labels)?;
                let mut tape = Tape::new(self.device.clone());
                let q = self.task_query(&mut tape, &batch.data, &missing)?;
                let vars: HashMap<String, _> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        Ok((
                            n.clone(),
                            params.bind(&mut tape, crate::autograd::ParamId(i))?,
                        ))
                    })
                    .collect::<Result<_>>()?;
                let bound = BoundTask::new(vars);
                let losses = batch_losses(
                    &self.vilt,
                    &s.delo,
                    &mut tape,
                    &bound,
                    &batch.data,
                    &missing,
                    &targets,
                )?;
                let loss = tape.value(losses.total).item()?;
                if !loss.is_finite() {
                    return Err(Error::Numeric(format!(
                        "the loss of task {t} became {loss} at step {step} (epoch {epoch}); stopping. The checkpoints of tasks 0..{t} in {} are intact; lower --lr or check the data",
                        self.run_dir.display()
                    )));
                }
                let grads = tape.backward(losses.total)?;
                params.accumulate(&grads)?;
                let lr = schedule::cosine_with_warmup(s.lr, step, total, s.warmup);
                params.adamw_step(lr, s.betas, s.eps, s.weight_decay)?;
                params.zero_grads()?;
                self.keys
                    .ema_update(t, &q, self.vilt.cfg.hidden_size, s.delo.ema_beta)?;
                step += 1;
                samples += batch.samples.len();
                last_loss = loss;
                log(Event::Step {
                    task: t,
                    step,
                    total,
                    loss,
                    lr,
                    samples_per_second: samples as f64 / started.elapsed().as_secs_f64(),
                });
            }
        }
        if step == 0 {
            return Err(Error::Msg(format!("task {t} has no training batch")));
        }
        self.tasks.push(FrozenTask {
            params: params
                .to_host()?
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(&self.device)?)))
                .collect::<Result<_>>()?,
        });
        let wall = started.elapsed().as_secs_f64();
        Ok(TaskStats {
            epochs: s.epochs.min(step.div_ceil(per_epoch.max(1))),
            wall_seconds: wall,
            train_samples_per_second: samples as f64 / wall,
            steps: step,
            final_loss: last_loss,
        })
    }
}
