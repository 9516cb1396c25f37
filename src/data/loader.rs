//! A threaded, prefetching batch loader whose output does not depend on the thread count.
//!
//! A [`Loader`] holds the items of one (task, split) with their missing types and local labels.
//! [`Loader::epoch`] fixes the batch order from (seed, epoch) alone, then worker threads prepare
//! whole batches ahead of the consumer: worker w builds batches w, w+W, w+2W, ... and sends each
//! through its own bounded channel; the consumer reads batch b from channel b mod W. The order
//! and content of batches is therefore the same for any number of workers, memory stays bounded
//! (each worker is at most `prefetch` batches ahead), and no reordering buffer is needed.
//!
//! The model's pre-processing plugs in through [`SamplePrep`]: per-sample image preparation
//! (decode, resize, normalise: cacheable), a stand-in for missing images, and a per-batch
//! `collate` that runs on the worker too, so the tokenizer can pad texts to the batch's longest
//! and images to the batch's largest size without holding up training.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use super::cmml::{Benchmark, Item, Label, Split};
use super::missing::{MissingSpec, MissingType};
use super::rng::DetRng;
use crate::error::{Error, Result};

/// The model-specific pre-processing the loader runs on its worker threads.
pub trait SamplePrep: Send + Sync + 'static {
    /// One prepared image (e.g. normalised pixels with their size). Cached per item when the
    /// loader's image cache is on.
    type Image: Send + Sync + 'static;
    /// The assembled tensors of one batch (e.g. padded pixels + pixel mask, token ids + mask).
    type Batch: Send + 'static;

    /// Reads and prepares the image of `item` (`item.image_path`). Errors must name the file
    /// (use [`Error::Io`] / [`Error::Format`] with the path): the loader reports them as is.
    fn image(&self, item: &Item) -> Result<Self::Image>;

    /// The stand-in for a missing image (ViLT: a white image of the forced size).
    fn missing_image(&self) -> Result<Self::Image>;

    /// Assembles one batch from its prepared images and texts (missing text is already the
    /// empty string). Both slices have one entry per sample, in batch order, never empty.
    fn collate(&self, images: &[&Self::Image], texts: &[&str]) -> Result<Self::Batch>;
}

/// One entry of a loader's list: the item, its label within its task and its missing type.
#[derive(Clone, Debug)]
pub struct LoaderItem {
    pub item: Item,
    pub local_label: Label,
    pub missing: MissingType,
}

/// Loader settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Shuffle the order each epoch (from `seed` and the epoch number); else file order.
    pub shuffle: bool,
    pub seed: u64,
    /// Worker threads; 0 prepares batches on the consumer's thread, without prefetching.
    pub threads: usize,
    /// Finished batches each worker may queue ahead of the consumer (at least 1 is used).
    pub prefetch: usize,
    /// Keep every prepared image in memory after its first use (small datasets: the synthetic
    /// benchmark, val/test sets evaluated after every task). Bad images are remembered too.
    pub cache_images: bool,
    /// Leave out samples whose image cannot be read, counting and reporting them in
    /// [`Batch::skipped`] and [`EpochIter::skipped`], instead of failing the epoch.
    pub skip_bad: bool,
    /// Drop a last, smaller batch.
    pub drop_last: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 4,
            shuffle: false,
            seed: 0,
            threads: 2,
            prefetch: 2,
            cache_images: false,
            skip_bad: false,
            drop_last: false,
        }
    }
}

/// What a batch says about each of its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleInfo {
    /// The item's index in the benchmark JSON.
    pub index: usize,
    /// The position in the loader's item list.
    pub position: usize,
    pub task: usize,
    /// The global label (class id or multi-hot over all classes).
    pub label: Label,
    /// The label within the task (local class id or multi-hot over the task's classes).
    pub local_label: Label,
    pub missing: MissingType,
    /// The text as given to `collate` (empty when the text is missing).
    pub text: String,
}

/// A sample left out because its image could not be prepared.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub index: usize,
    pub path: PathBuf,
    pub error: String,
}

/// One batch: per-sample information plus the collated tensors.
#[derive(Debug)]
pub struct Batch<B> {
    /// The batch number within the epoch (counting batches that were wholly skipped).
    pub number: usize,
    pub samples: Vec<SampleInfo>,
    pub data: B,
    /// Samples left out (with `skip_bad`) since the previous batch that was returned.
    pub skipped: Vec<Skipped>,
}

impl<B> Batch<B> {
    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
    /// Per-sample missing types, in batch order.
    pub fn missing(&self) -> Vec<MissingType> {
        self.samples.iter().map(|s| s.missing).collect()
    }
}

type CacheSlot<I> = OnceLock<std::result::Result<Arc<I>, String>>;

struct Inner<P: SamplePrep> {
    items: Vec<LoaderItem>,
    prep: Arc<P>,
    cfg: LoaderConfig,
    cache: Option<Vec<CacheSlot<P::Image>>>,
    blank: Option<Arc<P::Image>>,
}

/// What preparing one batch produced: the batch (None when every sample was skipped) and
/// the samples left out.
struct Prepared<B> {
    number: usize,
    batch: Option<(Vec<SampleInfo>, B)>,
    skipped: Vec<Skipped>,
}

impl<P: SamplePrep> Inner<P> {
    fn image(&self, position: usize) -> Result<Arc<P::Image>> {
        let item = &self.items[position].item;
        match &self.cache {
            None => self.prep.image(item).map(Arc::new),
            Some(cache) => cache[position]
                .get_or_init(|| {
                    self.prep
                        .image(item)
                        .map(Arc::new)
                        .map_err(|e| e.to_string())
                })
                .clone()
                .map_err(Error::Msg),
        }
    }

    fn prepare(&self, number: usize, positions: &[usize]) -> Result<Prepared<P::Batch>> {
        let mut infos = Vec::with_capacity(positions.len());
        let mut images = Vec::with_capacity(positions.len());
        let mut skipped = Vec::new();
        for &p in positions {
            let li = &self.items[p];
            let image = if li.missing == MissingType::Image {
                self.blank
                    .clone()
                    .expect("the blank image is made when an item lacks its image")
            } else {
                match self.image(p) {
                    Ok(im) => im,
                    Err(e) if self.cfg.skip_bad => {
                        skipped.push(Skipped {
                            index: li.item.index,
                            path: li.item.image_path.clone(),
                            error: e.to_string(),
                        });
                        continue;
                    }
                    Err(e) => {
                        return Err(Error::Msg(format!(
                            "item {} (task {}, {}): {e}",
                            li.item.index, li.item.task, li.item.split
                        )))
                    }
                }
            };
            let text = if li.missing == MissingType::Text {
                String::new()
            } else {
                li.item.text.clone()
            };
            infos.push(SampleInfo {
                index: li.item.index,
                position: p,
                task: li.item.task,
                label: li.item.label.clone(),
                local_label: li.local_label.clone(),
                missing: li.missing,
                text,
            });
            images.push(image);
        }
        if infos.is_empty() {
            return Ok(Prepared {
                number,
                batch: None,
                skipped,
            });
        }
        let refs: Vec<&P::Image> = images.iter().map(|a| a.as_ref()).collect();
        let texts: Vec<&str> = infos.iter().map(|s| s.text.as_str()).collect();
        let data = self.prep.collate(&refs, &texts)?;
        Ok(Prepared {
            number,
            batch: Some((infos, data)),
            skipped,
        })
    }
}

/// The loader of one (task, split). Cheap to iterate many times: [`Loader::epoch`].
pub struct Loader<P: SamplePrep> {
    inner: Arc<Inner<P>>,
}

impl<P: SamplePrep> Loader<P> {
    /// A loader over `items` (in the order the unshuffled epoch visits them).
    pub fn new(items: Vec<LoaderItem>, prep: Arc<P>, cfg: LoaderConfig) -> Result<Loader<P>> {
        if items.is_empty() {
            return Err(Error::Msg("the loader was given no items".into()));
        }
        if cfg.batch_size == 0 {
            return Err(Error::Msg("the batch size must be at least 1".into()));
        }
        let blank = if items.iter().any(|i| i.missing == MissingType::Image) {
            Some(Arc::new(prep.missing_image()?))
        } else {
            None
        };
        let cache = cfg
            .cache_images
            .then(|| (0..items.len()).map(|_| OnceLock::new()).collect());
        Ok(Loader {
            inner: Arc::new(Inner {
                items,
                prep,
                cfg,
                cache,
                blank,
            }),
        })
    }

    /// A loader over one task's split of a benchmark, with the missing table of
    /// (`spec`, `run_seed`, task, split).
    pub fn from_benchmark(
        bench: &Benchmark,
        task: usize,
        split: Split,
        spec: &MissingSpec,
        run_seed: u64,
        prep: Arc<P>,
        cfg: LoaderConfig,
    ) -> Result<Loader<P>> {
        if task >= bench.num_tasks() {
            return Err(Error::Msg(format!(
                "task {task} does not exist: {} has {} tasks",
                bench.name,
                bench.num_tasks()
            )));
        }
        let missing = bench.missing_table(task, split, spec, run_seed);
        let items = bench
            .split_items(task, split)
            .zip(missing)
            .map(|(it, m)| LoaderItem {
                item: it.clone(),
                local_label: bench.local_label(it),
                missing: m,
            })
            .collect();
        Loader::new(items, prep, cfg)
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.inner.items.len()
    }

    /// Never true: a loader has at least one item.
    pub fn is_empty(&self) -> bool {
        self.inner.items.is_empty()
    }

    pub fn items(&self) -> &[LoaderItem] {
        &self.inner.items
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.inner.cfg
    }

    /// The prepared image of item `position`: with the image cache on, the one a batch left
    /// there (prepared now if no batch used it yet); without it, prepared now.
    pub fn image(&self, position: usize) -> Result<Arc<P::Image>> {
        if position >= self.len() {
            return Err(Error::Msg(format!(
                "item position {position} of a loader of {} items",
                self.len()
            )));
        }
        self.inner.image(position)
    }

    /// The stand-in every item without its image gets; `None` when no item lacks its image.
    pub fn blank(&self) -> Option<Arc<P::Image>> {
        self.inner.blank.clone()
    }

    /// The number of batches in an epoch (before any are wholly skipped).
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.len(), self.inner.cfg.batch_size);
        if self.inner.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The positions (into [`Loader::items`]) of each batch of an epoch: a function of
    /// (seed, epoch) only.
    pub fn batch_positions(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if self.inner.cfg.shuffle {
            DetRng::derived("loader-order", &[self.inner.cfg.seed, epoch]).shuffle(&mut order);
        }
        order
            .chunks(self.inner.cfg.batch_size)
            .take(self.num_batches())
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Starts an epoch: spawns the workers, which begin preparing batches at once.
    pub fn epoch(&self, epoch: u64) -> EpochIter<P> {
        self.epoch_from(epoch, 0)
    }

    /// Starts an epoch at batch `first` (a resumed run): the batches before it are neither
    /// prepared nor returned, and the others are exactly those of [`Loader::epoch`], with the
    /// same numbers. A `first` past the end gives an empty epoch.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> EpochIter<P> {
        let batches = Arc::new(self.batch_positions(epoch));
        let first = first.min(batches.len());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = self.inner.cfg.threads.min(batches.len() - first);
        let mut receivers = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for w in 0..threads {
            let (tx, rx) = sync_channel(self.inner.cfg.prefetch.max(1));
            let inner = Arc::clone(&self.inner);
            let batches = Arc::clone(&batches);
            let worker_stop = Arc::clone(&stop);
            let spawned = std::thread::Builder::new()
                .name(format!("delo-loader-{w}"))
                .spawn(move || worker(inner, batches, first + w, threads, worker_stop, tx));
            match spawned {
                Ok(handle) => {
                    receivers.push(rx);
                    workers.push(Some(handle));
                }
                Err(_) => {
                    // No thread to be had (resource limits): prepare this epoch inline
                    // rather than fail; the batches are the same either way.
                    stop.store(true, Ordering::Relaxed);
                    receivers.clear();
                    for h in workers.drain(..).flatten() {
                        let _ = h.join();
                    }
                    stop.store(false, Ordering::Relaxed);
                    break;
                }
            }
        }
        EpochIter {
            inner: Arc::clone(&self.inner),
            batches,
            first,
            next: first,
            receivers,
            workers,
            stop,
            skipped: Vec::new(),
            failed: false,
        }
    }
}

fn worker<P: SamplePrep>(
    inner: Arc<Inner<P>>,
    batches: Arc<Vec<Vec<usize>>>,
    first: usize,
    stride: usize,
    stop: Arc<AtomicBool>,
    tx: SyncSender<Result<Prepared<P::Batch>>>,
) {
    for b in (first..batches.len()).step_by(stride) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let r = inner.prepare(b, &batches[b]);
        let failed = r.is_err();
        // A send error means the consumer dropped the epoch: stop quietly.
        if tx.send(r).is_err() || failed {
            return;
        }
    }
}

/// The batches of one epoch, in order. Dropping it stops its workers.
pub struct EpochIter<P: SamplePrep> {
    inner: Arc<Inner<P>>,
    batches: Arc<Vec<Vec<usize>>>,
    /// The epoch's first batch (0 but for a resumed epoch).
    first: usize,
    next: usize,
    receivers: Vec<Receiver<Result<Prepared<P::Batch>>>>,
    workers: Vec<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    skipped: Vec<Skipped>,
    failed: bool,
}

impl<P: SamplePrep> EpochIter<P> {
    /// Every sample left out so far this epoch.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The number of batches this epoch visits (including wholly skipped ones).
    pub fn num_batches(&self) -> usize {
        self.batches.len()
    }

    fn receive(&mut self, b: usize) -> Result<Prepared<P::Batch>> {
        if self.receivers.is_empty() {
            return self.inner.prepare(b, &self.batches[b]);
        }
        let w = (b - self.first) % self.receivers.len();
        match self.receivers[w].recv() {
            Ok(r) => r,
            Err(_) => {
                // A worker drops its sender without sending only when it panics: report the
                // panic message.
                let msg = match self.workers[w].take().map(JoinHandle::join) {
                    Some(Err(payload)) => payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into()),
                    _ => "it stopped unexpectedly".into(),
                };
                Err(Error::Msg(format!(
                    "loader worker {w} failed while preparing batch {b}: {msg}"
                )))
            }
        }
    }
}

impl<P: SamplePrep> Iterator for EpochIter<P> {
    type Item = Result<Batch<P::Batch>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut pending = Vec::new();
        while !self.failed && self.next < self.batches.len() {
            let b = self.next;
            self.next += 1;
            match self.receive(b) {
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Ok(p) => {
                    debug_assert_eq!(p.number, b);
                    self.skipped.extend(p.skipped.iter().cloned());
                    pending.extend(p.skipped);
                    if let Some((samples, data)) = p.batch {
                        return Some(Ok(Batch {
                            number: b,
                            samples,
                            data,
                            skipped: pending,
                        }));
                    }
                }
            }
        }
        None
    }
}

impl<P: SamplePrep> Drop for EpochIter<P> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes a worker blocked in `send` return at once.
        self.receivers.clear();
        for h in self.workers.drain(..).flatten() {
            let _ = h.join();
        }
    }
}

/// A simple reference [`SamplePrep`]: decodes any image Pillow reads, resizes it to a `size`×`size`
/// square (bilinear), scales to [-1, 1] (ViLT's mean = std = 0.5) in CHW order, and passes the
/// texts through untokenized. Used by the tests, the loader benchmark and CPU experiments; the
/// ViLT pipeline uses its own prep (aspect-preserving resize, tokenizer).
#[derive(Clone, Debug)]
pub struct BasicPrep {
    pub size: u32,
}

/// A [`BasicPrep`] batch: `pixels` is [batch, 3, size, size], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct BasicPrepBatch {
    pub size: u32,
    pub pixels: Vec<f32>,
    pub texts: Vec<String>,
}

impl BasicPrep {
    /// Decodes an image file to RGB8 as Pillow would ([`crate::data::decode`]); errors name
    /// the file.
    pub fn read_rgb(path: &Path) -> Result<image::RgbImage> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        crate::data::decode::decode_rgb(&bytes, path)
    }
}

impl SamplePrep for BasicPrep {
    type Image = Vec<f32>;
    type Batch = BasicPrepBatch;

    fn image(&self, item: &Item) -> Result<Vec<f32>> {
        let rgb = BasicPrep::read_rgb(&item.image_path)?;
        let rgb = if rgb.dimensions() == (self.size, self.size) {
            rgb
        } else {
            image::imageops::resize(
                &rgb,
                self.size,
                self.size,
                image::imageops::FilterType::Triangle,
            )
        };
        let plane = (self.size * self.size) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(px[c]) / 127.5 - 1.0;
            }
        }
        Ok(out)
    }

    fn missing_image(&self) -> Result<Vec<f32>> {
        Ok(vec![1.0; 3 * (self.size * self.size) as usize])
    }

    fn collate(&self, images: &[&Vec<f32>], texts: &[&str]) -> Result<BasicPrepBatch> {
        let mut pixels = Vec::with_capacity(images.iter().map(|i| i.len()).sum());
        for im in images {
            pixels.extend_from_slice(im);
        }
        Ok(BasicPrepBatch {
            size: self.size,
            pixels,
            texts: texts.iter().map(|t| t.to_string()).collect(),
        })
    }
}
