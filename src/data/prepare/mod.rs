//! `delo prepare`: writes CMML benchmarks (JSON + `meta.json` + `images/`) from the raw
//! datasets, deterministically for a seed.
//!
//! Class layout, for both datasets: the kept classes are put in a seeded order and global class
//! id k is the k-th class of that order; task t owns ids [t·n, (t+1)·n) (n classes per task),
//! as in the official CMML files. For MM-IMDb the multi-hot label is a vector over all C kept
//! genres (global ids) whose ones lie only inside the item's task's block, so "a task owns the
//! classes with a positive in its items" gives exactly that block.
//!
//! Items are written task by task, then split by split (train, val, test), then class by
//! class, so the file is stable for a seed and easy to diff. Images are symlinked into
//! `out/images/` (copied where links cannot be made).

pub mod csv;
pub mod food101;
pub mod mmimdb;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cmml::{Label, LabelKind, Split, META_FILE};
use crate::error::{Error, Result};

pub use food101::{prepare_food101, Food101Options};
pub use mmimdb::{prepare_mmimdb, MmImdbOptions};

/// An item to be written, in the CMML format's field order.
#[derive(Clone, Debug, Serialize)]
pub struct OutItem {
    pub task_id: usize,
    pub split: &'static str,
    pub image: String,
    pub text: OutText,
    #[serde(serialize_with = "ser_label")]
    pub label: Label,
}

/// A text as the CMML format allows it: one string or a list joined with ". " by readers.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum OutText {
    One(String),
    Many(Vec<String>),
}

fn ser_label<S: serde::Serializer>(l: &Label, s: S) -> std::result::Result<S::Ok, S::Error> {
    l.to_json().serialize(s)
}

impl OutItem {
    pub fn new(task: usize, split: Split, image: String, text: OutText, label: Label) -> Self {
        OutItem {
            task_id: task,
            split: split.as_str(),
            image,
            text,
            label,
        }
    }
}

/// The sidecar written beside a prepared benchmark (readers use name, kind, class_names).
#[derive(Clone, Debug, Serialize)]
pub struct OutMeta {
    pub name: String,
    pub kind: &'static str,
    pub class_names: Vec<String>,
    pub tasks: usize,
    pub classes_per_task: usize,
    pub seed: u64,
    /// What wrote it (`delo prepare food101`, `delo synth`, ...).
    pub source: String,
    /// Classes of the raw data that were left out.
    pub dropped_classes: Vec<String>,
}

impl OutMeta {
    pub fn new(name: &str, kind: LabelKind, class_names: Vec<String>, source: &str) -> Self {
        OutMeta {
            name: name.into(),
            kind: kind.as_str(),
            class_names,
            tasks: 0,
            classes_per_task: 0,
            seed: 0,
            source: source.into(),
            dropped_classes: Vec::new(),
        }
    }
}

/// The kept classes of a raw dataset in their seeded order (see the module doc): global class
/// id k is `order[k]`; `dropped` holds the classes left out, sorted.
pub(crate) struct ClassOrder {
    pub order: Vec<String>,
    pub dropped: Vec<String>,
    ids: BTreeMap<String, usize>,
}

impl ClassOrder {
    pub fn new(order: Vec<String>, dropped: Vec<String>) -> ClassOrder {
        let ids = order
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        ClassOrder {
            order,
            dropped,
            ids,
        }
    }

    /// The global id of a kept class; None for a class left out.
    pub fn id(&self, class: &str) -> Option<usize> {
        self.ids.get(class).copied()
    }
}

/// How a prepared benchmark describes itself, in meta.json and in its report.
pub struct Described<'a> {
    pub name: &'a str,
    pub file_name: &'a str,
    pub kind: LabelKind,
    /// The command that wrote it.
    pub source: &'a str,
    /// Class names by global id.
    pub class_order: Vec<String>,
    pub tasks: usize,
    pub classes_per_task: usize,
    pub seed: u64,
    pub dropped: Vec<String>,
}

/// Writes the benchmark JSON and meta.json under `out` and reports what was written, with the
/// images `linker` put in place (None where the images were written, not linked).
pub fn finish(
    out: &Path,
    d: Described<'_>,
    items: &[OutItem],
    skipped: Vec<String>,
    linker: Option<&ImageLinker>,
) -> Result<PrepareReport> {
    let num_classes = d.class_order.len();
    let mut meta = OutMeta::new(d.name, d.kind, d.class_order, d.source);
    meta.tasks = d.tasks;
    meta.classes_per_task = d.classes_per_task;
    meta.seed = d.seed;
    meta.dropped_classes = d.dropped.clone();
    let (json_path, split_counts) = write_benchmark(out, d.file_name, items, &meta)?;
    Ok(PrepareReport {
        json_path,
        num_items: items.len(),
        split_counts,
        num_classes,
        num_tasks: d.tasks,
        dropped_classes: d.dropped,
        skipped,
        images_linked: linker.map_or(0, |l| l.linked),
        images_copied: linker.map_or(0, |l| l.copied),
    })
}

/// What a `prepare` (or `synth`) run wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrepareReport {
    pub json_path: PathBuf,
    pub num_items: usize,
    /// Items per split (train, val, test), summed over tasks.
    pub split_counts: [usize; 3],
    pub num_classes: usize,
    pub num_tasks: usize,
    pub dropped_classes: Vec<String>,
    /// Raw entries left out, with the reason (missing image, no text, not in split.json, ...).
    pub skipped: Vec<String>,
    pub images_linked: usize,
    pub images_copied: usize,
}

impl std::fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} ({} items: {} train, {} val, {} test; {} classes in {} tasks)",
            self.json_path.display(),
            self.num_items,
            self.split_counts[0],
            self.split_counts[1],
            self.split_counts[2],
            self.num_classes,
            self.num_tasks
        )?;
        if !self.dropped_classes.is_empty() {
            write!(f, "\ndropped classes: {}", self.dropped_classes.join(", "))?;
        }
        if self.images_linked + self.images_copied > 0 {
            write!(
                f,
                "\nimages: {} linked, {} copied",
                self.images_linked, self.images_copied
            )?;
        }
        if !self.skipped.is_empty() {
            write!(f, "\nskipped {} raw entries:", self.skipped.len())?;
            for s in self.skipped.iter().take(10) {
                write!(f, "\n  {s}")?;
            }
            if self.skipped.len() > 10 {
                write!(f, "\n  ... and {} more", self.skipped.len() - 10)?;
            }
        }
        Ok(())
    }
}

/// Serialises items one per line inside a JSON list: valid JSON, stable bytes, easy to diff.
pub fn items_json(items: &[OutItem]) -> String {
    let mut s = String::from("[\n");
    for (i, it) in items.iter().enumerate() {
        s.push_str(&serde_json::to_string(it).expect("items serialise"));
        s.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
    }
    s.push_str("]\n");
    s
}

/// Writes `<out>/<file_name>` and `<out>/meta.json`; returns the JSON path and split counts.
pub fn write_benchmark(
    out: &Path,
    file_name: &str,
    items: &[OutItem],
    meta: &OutMeta,
) -> Result<(PathBuf, [usize; 3])> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let json_path = out.join(file_name);
    crate::st::write_atomic(&json_path, items_json(items).as_bytes())?;
    let meta_json = serde_json::to_string_pretty(meta).expect("meta serialises") + "\n";
    crate::st::write_atomic(&out.join(META_FILE), meta_json.as_bytes())?;
    let mut counts = [0; 3];
    for it in items {
        let s: Split = it.split.parse().expect("written from a Split");
        counts[s.index()] += 1;
    }
    Ok((json_path, counts))
}

/// Puts raw images under `out/images/`, by symlink where possible, else by copy.
pub struct ImageLinker {
    images_dir: PathBuf,
    made_dirs: HashSet<PathBuf>,
    done: HashSet<String>,
    pub linked: usize,
    pub copied: usize,
}

impl ImageLinker {
    /// Refuses an `out` that is `raw` itself: re-linking would replace the raw images.
    pub fn new(raw: &Path, out: &Path) -> Result<ImageLinker> {
        fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let raw_c = raw.canonicalize().map_err(|e| Error::io(raw, e))?;
        let out_c = out.canonicalize().map_err(|e| Error::io(out, e))?;
        if raw_c == out_c {
            return Err(Error::Msg(format!(
                "the output folder {} is the raw folder; choose another --out",
                out.display()
            )));
        }
        Ok(ImageLinker {
            images_dir: out_c.join("images"),
            made_dirs: HashSet::new(),
            done: HashSet::new(),
            linked: 0,
            copied: 0,
        })
    }

    /// Makes `out/images/<rel>` point at `src` (once per `rel`).
    pub fn link(&mut self, src: &Path, rel: &str) -> Result<()> {
        if !self.done.insert(rel.to_string()) {
            return Ok(());
        }
        let dst = self.images_dir.join(rel);
        if let Some(parent) = dst.parent() {
            if self.made_dirs.insert(parent.to_path_buf()) {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let src = src.canonicalize().map_err(|e| Error::io(src, e))?;
        if fs::symlink_metadata(&dst).is_ok() {
            // A previous run's link or copy. Never remove the source itself.
            if dst.canonicalize().ok().as_deref() == Some(src.as_path())
                && fs::symlink_metadata(&dst).is_ok_and(|m| m.file_type().is_symlink())
            {
                self.linked += 1;
                return Ok(());
            }
            if dst.canonicalize().ok().as_deref() == Some(src.as_path()) {
                return Err(Error::Msg(format!(
                    "{} is the raw image {} itself; choose another --out",
                    dst.display(),
                    src.display()
                )));
            }
            fs::remove_file(&dst).map_err(|e| Error::io(&dst, e))?;
        }
        #[cfg(unix)]
        if std::os::unix::fs::symlink(&src, &dst).is_ok() {
            self.linked += 1;
            return Ok(());
        }
        fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        self.copied += 1;
        Ok(())
    }
}

/// Reads and parses a JSON file, with line and column on syntax errors.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| super::cmml::json_error(path, &e))
}

/// The value of `v` as a list of strings (numbers are written as their decimal form, since
/// ids in split files are sometimes numbers). `what` names the field in errors.
pub(crate) fn string_list(v: &serde_json::Value, path: &Path, what: &str) -> Result<Vec<String>> {
    let arr = v.as_array().ok_or_else(|| {
        Error::format(
            path,
            format!(
                "{what}: expected a list of strings, found {}",
                super::cmml::type_name(v)
            ),
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| match x {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(Error::format(
                path,
                format!(
                    "{what}, entry {i}: expected a string, found {}",
                    super::cmml::type_name(other)
                ),
            )),
        })
        .collect()
}
