//! Data: the CMML benchmark format, `delo prepare` for the raw datasets, the synthetic
//! benchmark, missing-modality tables, the threaded prefetching loader, and the model's input
//! pre-processing (BERT tokenizer, ViLT image processor).
//!
//! The pieces fit together like this:
//! - [`Benchmark::load`] reads a CMML JSON (RebQ's format, docs/data.md#benchmark-format) and
//!   validates it;
//! - [`missing_table`] marks which items of one (task, split) lack a modality;
//! - [`Loader`] turns the items of one (task, split) into batches, preparing samples on worker
//!   threads through a [`SamplePrep`] (the model's image/text pre-processing plugs in there);
//! - [`prepare`] and [`synth`] write benchmarks in the same format.
//!
//! Every random choice here uses [`rng::DetRng`], a small generator defined in this crate, so
//! that prepared benchmarks, missing tables and batch orders stay identical across versions of
//! the `rand` crate and across platforms.

pub mod cmml;
pub mod decode;
pub mod image;
pub mod loader;
pub mod missing;
pub mod prepare;
pub mod rng;
pub mod synth;
pub mod tokenizer;

pub use cmml::{Benchmark, Item, Label, LabelKind, Meta, Split, Task};
pub use loader::{
    BasicPrep, BasicPrepBatch, Batch, EpochIter, Loader, LoaderConfig, LoaderItem, SampleInfo,
    SamplePrep, Skipped,
};
pub use missing::{missing_count, missing_table, MissingKind, MissingSpec, MissingType};
pub use prepare::{prepare_food101, prepare_mmimdb, Food101Options, MmImdbOptions, PrepareReport};
pub use synth::{synth, SynthConfig, SynthReport};
