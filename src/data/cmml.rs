//! The CMML benchmark format (the JSON files of the RebQ code) and its validation.
//!
//! A benchmark is one JSON list of items next to an `images/` folder:
//! `{"task_id": 0, "split": "train"|"val"|"test", "image": "<path under images/>",
//!   "text": "<string>" or ["<string>", ...], "label": <int> or [0/1 x C]}`.
//! An integer label is a global class id (single-label); a list is a multi-hot vector over all
//! C classes (multi-label). Task t owns the global classes that occur in its items (for
//! multi-label: the classes with a positive in its items). Unknown fields are ignored, so files
//! with extra bookkeeping keys still load. An optional sidecar `meta.json` (name, kind, class
//! names) is read when present and never required.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::error::{Error, Result};

/// The file name of the optional sidecar written beside a benchmark JSON.
pub const META_FILE: &str = "meta.json";

/// One of the three splits of every task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// All splits, in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The name used in the JSON (`train`, `val`, `test`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// 0, 1, 2 for train, val, test: used to index per-split tables and derive seeds.
    pub fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(Error::Msg(format!(
                "unknown split {s:?}: expected \"train\", \"val\" or \"test\""
            ))),
        }
    }
}

/// Whether a benchmark's labels are class ids or multi-hot vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelKind {
    /// One global class id per item; metric: top-1 accuracy.
    Single,
    /// A multi-hot vector over all classes; metric: F1-macro.
    Multi,
}

impl LabelKind {
    /// `single` or `multi`, as written in `meta.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::Single => "single",
            LabelKind::Multi => "multi",
        }
    }
}

impl fmt::Display for LabelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LabelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "single" | "single-label" | "single_label" => Ok(LabelKind::Single),
            "multi" | "multi-label" | "multi_label" => Ok(LabelKind::Multi),
            _ => Err(Error::Msg(format!(
                "unknown label kind {s:?}: expected \"single\" or \"multi\""
            ))),
        }
    }
}

/// A label, either global (over all C classes) or local (over one task's classes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    /// A class id.
    Single(usize),
    /// A multi-hot vector (entries 0 or 1).
    Multi(Vec<u8>),
}

impl Label {
    /// The positive classes: the class id, or the indices of the ones.
    pub fn positives(&self) -> Vec<usize> {
        match self {
            Label::Single(c) => vec![*c],
            Label::Multi(v) => v
                .iter()
                .enumerate()
                .filter(|(_, &x)| x != 0)
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// The label as the JSON value the CMML format uses.
    pub fn to_json(&self) -> Value {
        match self {
            Label::Single(c) => Value::from(*c),
            Label::Multi(v) => Value::from(v.iter().map(|&x| u64::from(x)).collect::<Vec<_>>()),
        }
    }
}

/// One item of the benchmark, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Position in the JSON list (what error messages and predictions refer to).
    pub index: usize,
    /// The task the item belongs to.
    pub task: usize,
    pub split: Split,
    /// The image path as written in the JSON (relative to `images/`).
    pub image: String,
    /// The resolved image path: `<dir of the JSON>/images/<image>`.
    pub image_path: PathBuf,
    /// The text; a list of strings in the JSON is joined with ". ".
    pub text: String,
    /// The global label.
    pub label: Label,
}

/// One task: the global classes it owns, ascending. Local class k of the task is `classes[k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: usize,
    pub classes: Vec<usize>,
}

impl Task {
    /// The local index of a global class, if the task owns it.
    pub fn local_of(&self, global: usize) -> Option<usize> {
        self.classes.binary_search(&global).ok()
    }
}

/// The optional sidecar `meta.json`: every field may be absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    pub name: Option<String>,
    pub kind: Option<LabelKind>,
    pub class_names: Option<Vec<String>>,
}

impl Meta {
    /// Parses a `meta.json` text; `path` names the file in errors. Unknown fields are ignored.
    pub fn parse(text: &str, path: &Path) -> Result<Meta> {
        let v: Value = serde_json::from_str(text).map_err(|e| json_error(path, &e))?;
        let obj = v.as_object().ok_or_else(|| {
            Error::format(
                path,
                format!("expected a JSON object, found {}", type_name(&v)),
            )
        })?;
        let at = FieldsOf { path, item: None };
        let name = obj.get("name").map(|n| at.string("name", n)).transpose()?;
        let kind = obj
            .get("kind")
            .map(|k| {
                at.string("kind", k)?
                    .parse()
                    .map_err(|e: Error| at.err("kind", e))
            })
            .transpose()?;
        let class_names = obj
            .get("class_names")
            .map(|c| match c {
                Value::Array(entries) => at.strings("class_names", entries),
                other => Err(at.expected("class_names", "a list of strings", other)),
            })
            .transpose()?;
        Ok(Meta {
            name: name.map(str::to_string),
            kind,
            class_names: class_names.map(|n| n.into_iter().map(str::to_string).collect()),
        })
    }
}

/// A validated CMML benchmark.
#[derive(Clone, Debug)]
pub struct Benchmark {
    /// From `meta.json`, else the JSON file's stem.
    pub name: String,
    /// The JSON file it was read from.
    pub json_path: PathBuf,
    /// The folder image paths are relative to (`images/` beside the JSON).
    pub image_dir: PathBuf,
    pub kind: LabelKind,
    /// C: the number of global classes.
    pub num_classes: usize,
    /// Tasks 0..T, each with the classes it owns.
    pub tasks: Vec<Task>,
    /// All items in file order.
    pub items: Vec<Item>,
    /// Class names from `meta.json`, when present.
    pub class_names: Option<Vec<String>>,
    /// `splits[task][split.index()]`: indices into `items`, in file order.
    splits: Vec<SplitLists>,
}

/// One task's items, per split (`[split.index()]`): indices into the list, in file order.
type SplitLists = [Vec<usize>; 3];

impl Benchmark {
    /// Loads a benchmark from its JSON file, or from a folder holding exactly one `*.json`
    /// besides `meta.json`. Reads `meta.json` beside the JSON when present.
    pub fn load(path: impl AsRef<Path>) -> Result<Benchmark> {
        let path = path.as_ref();
        let json_path = if path.is_dir() {
            find_benchmark_json(path)?
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
        let dir = json_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let meta_path = dir.join(META_FILE);
        let meta = if meta_path.is_file() {
            let m = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
            Some(Meta::parse(&m, &meta_path)?)
        } else {
            None
        };
        Benchmark::parse(&text, &json_path, meta)
    }

    /// Parses and validates the text of a benchmark JSON. `json_path` names the file in errors
    /// and locates `images/`; nothing is read from disk. The checks are those of
    /// docs/data.md#benchmark-format: items field by field, one label kind for the whole file,
    /// `meta.json` against the labels, task ids without gaps, every split in every task, and
    /// each class in one task.
    pub fn parse(text: &str, json_path: &Path, meta: Option<Meta>) -> Result<Benchmark> {
        let path = json_path;
        let root: Value = serde_json::from_str(text).map_err(|e| json_error(path, &e))?;
        let list = match &root {
            Value::Array(list) if list.is_empty() => {
                return Err(Error::format(path, "the list of items is empty"))
            }
            Value::Array(list) => list,
            other => {
                return Err(Error::format(
                    path,
                    format!(
                        "expected a JSON list of items at the top level, found {}",
                        type_name(other)
                    ),
                ))
            }
        };
        let image_dir = path
            .parent()
            .unwrap_or_else(|| Path::new(""))
            .join("images");
        let items = parse_items(path, list, &image_dir)?;
        let (kind, multi_len) = label_shape(&items[0].label);
        if let Some(mk) = meta.as_ref().and_then(|m| m.kind) {
            if mk != kind {
                return Err(Error::format(
                    path,
                    format!(
                        "{META_FILE} says the benchmark is {mk}-label but the labels are {kind}-label"
                    ),
                ));
            }
        }
        let class_names = meta.as_ref().and_then(|m| m.class_names.clone());
        let num_classes = count_classes(path, &items, (kind, multi_len), class_names.as_deref())?;
        let (splits, owned) = split_by_task(path, &items)?;
        let tasks = tasks_owning(path, owned, num_classes)?;
        let name = meta
            .as_ref()
            .and_then(|m| m.name.clone())
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "benchmark".into());
        Ok(Benchmark {
            name,
            json_path: path.to_path_buf(),
            image_dir,
            kind,
            num_classes,
            tasks,
            items,
            class_names,
            splits,
        })
    }

    /// T, the number of tasks.
    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Indices (into `items`) of one task's split, in file order. Panics if `task >= T`.
    pub fn split_indices(&self, task: usize, split: Split) -> &[usize] {
        &self.splits[task][split.index()]
    }

    /// The items of one task's split, in file order. Panics if `task >= T`.
    pub fn split_items(&self, task: usize, split: Split) -> impl Iterator<Item = &Item> + '_ {
        self.split_indices(task, split)
            .iter()
            .map(move |&i| &self.items[i])
    }

    /// The label of an item relative to its task: the local class index (single-label), or the
    /// multi-hot vector over the task's classes in ascending global order (multi-label).
    pub fn local_label(&self, item: &Item) -> Label {
        let task = &self.tasks[item.task];
        match &item.label {
            Label::Single(c) => Label::Single(
                task.local_of(*c)
                    .expect("validated: a task owns the classes of its items"),
            ),
            Label::Multi(v) => Label::Multi(task.classes.iter().map(|&c| v[c]).collect()),
        }
    }

    /// A class's name from `meta.json`, else `class <id>`.
    pub fn class_name(&self, class: usize) -> String {
        self.class_names
            .as_ref()
            .and_then(|n| n.get(class).cloned())
            .unwrap_or_else(|| format!("class {class}"))
    }
}

/// Parses the items in file order; every label must have the first item's kind and, for
/// multi-hot lists, its length. `list` is not empty.
fn parse_items(path: &Path, list: &[Value], image_dir: &Path) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let item = parse_item(path, i, v, image_dir)?;
        if let Some(first) = items.first() {
            check_label_like_first(path, first, &item)?;
        }
        items.push(item);
    }
    Ok(items)
}

/// A label's kind and its multi-hot length (0 for a class id).
fn label_shape(label: &Label) -> (LabelKind, usize) {
    match label {
        Label::Single(_) => (LabelKind::Single, 0),
        Label::Multi(m) => (LabelKind::Multi, m.len()),
    }
}

/// Errors when `item`'s label is of another kind than `first`'s, or a multi-hot list of
/// another length: a file uses one kind throughout, with one entry per class.
fn check_label_like_first(path: &Path, first: &Item, item: &Item) -> Result<()> {
    let ((k0, l0), (kind, len)) = (label_shape(&first.label), label_shape(&item.label));
    let (i, j) = (item.index, first.index);
    let at = FieldsOf {
        path,
        item: Some(i),
    };
    if k0 != kind {
        return Err(at.err(
            "label",
            format!(
                "{} label, but item {j} has {} label; all items must use one kind",
                describe_kind(kind),
                describe_kind(k0)
            ),
        ));
    }
    if len != l0 {
        return Err(at.err(
            "label",
            format!(
                "a multi-hot list of {len} entries, but item {j} has {l0}; \
                 every multi-hot label needs one entry per class"
            ),
        ));
    }
    Ok(())
}

/// A label kind as an error about a label names it.
fn describe_kind(k: LabelKind) -> &'static str {
    match k {
        LabelKind::Single => "an integer (single-label)",
        LabelKind::Multi => "a list (multi-label)",
    }
}

/// C, the number of global classes: the multi-hot length, or for class ids the number
/// `meta.json` names (it may name classes no item uses), else the largest id + 1. Errors when
/// `meta.json`'s `names` do not fit the labels.
fn count_classes(
    path: &Path,
    items: &[Item],
    (kind, multi_len): (LabelKind, usize),
    names: Option<&[String]>,
) -> Result<usize> {
    if kind == LabelKind::Multi {
        return match names {
            Some(n) if n.len() != multi_len => Err(Error::format(
                path,
                format!(
                    "{META_FILE} names {} classes but the multi-hot labels have {multi_len} entries",
                    n.len()
                ),
            )),
            _ => Ok(multi_len),
        };
    }
    let max_label = items
        .iter()
        .filter_map(|it| match it.label {
            Label::Single(c) => Some(c),
            Label::Multi(_) => None,
        })
        .max();
    let from_labels = max_label.map_or(0, |m| m + 1);
    match names {
        Some(n) if n.len() < from_labels => Err(Error::format(
            path,
            format!(
                "{META_FILE} names {} classes but a label is {}",
                n.len(),
                from_labels - 1
            ),
        )),
        Some(n) => Ok(n.len()),
        None => Ok(from_labels),
    }
}

/// Per task: the item indices of each split (`[split.index()]`, file order) and the classes
/// the task owns. Errors on a gap in the task ids, a task without train, val or test items,
/// or a task that owns no class.
fn split_by_task(path: &Path, items: &[Item]) -> Result<(Vec<SplitLists>, Vec<BTreeSet<usize>>)> {
    let num_tasks = items.iter().map(|it| it.task).max().unwrap_or(0) + 1;
    let mut splits: Vec<SplitLists> = vec![Default::default(); num_tasks];
    let mut owned: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); num_tasks];
    for it in items {
        splits[it.task][it.split.index()].push(it.index);
        owned[it.task].extend(it.label.positives());
    }
    for (t, s) in splits.iter().enumerate() {
        if s.iter().all(Vec::is_empty) {
            return Err(Error::format(
                path,
                format!(
                    "no item has task_id {t}, but the largest task_id is {}; \
                     task ids must run from 0 without gaps",
                    num_tasks - 1
                ),
            ));
        }
        if let Some(split) = Split::ALL.into_iter().find(|sp| s[sp.index()].is_empty()) {
            return Err(Error::format(
                path,
                format!(
                    "task {t} has no {split} items; every task needs train, val and test items"
                ),
            ));
        }
        if owned[t].is_empty() {
            return Err(Error::format(
                path,
                format!("task {t} owns no class: none of its multi-hot labels has a positive"),
            ));
        }
    }
    Ok((splits, owned))
}

/// The tasks with their classes, ascending. Errors when a class occurs in two tasks: in the
/// class-incremental protocol a class belongs to one task, otherwise the local label of a
/// class would depend on which head is asked.
fn tasks_owning(path: &Path, owned: Vec<BTreeSet<usize>>, num_classes: usize) -> Result<Vec<Task>> {
    let mut owner: Vec<Option<usize>> = vec![None; num_classes];
    for (t, cls) in owned.iter().enumerate() {
        for &c in cls {
            if let Some(t0) = owner[c] {
                return Err(Error::format(
                    path,
                    format!(
                        "class {c} occurs in tasks {t0} and {t}; each class must belong to one task"
                    ),
                ));
            }
            owner[c] = Some(t);
        }
    }
    Ok(owned
        .into_iter()
        .enumerate()
        .map(|(id, c)| Task {
            id,
            classes: c.into_iter().collect(),
        })
        .collect())
}

/// The single benchmark JSON in a folder (any `*.json` other than `meta.json`).
fn find_benchmark_json(dir: &Path) -> Result<PathBuf> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        let is_json = p.extension().is_some_and(|e| e == "json");
        if is_json && p.file_name().is_some_and(|n| n != META_FILE) && p.is_file() {
            found.push(p);
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.pop().expect("one element")),
        0 => Err(Error::format(
            dir,
            "no benchmark JSON in this folder (expected one *.json besides meta.json)",
        )),
        _ => Err(Error::format(
            dir,
            format!(
                "several JSON files ({}); pass the benchmark JSON itself",
                found
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// A JSON syntax error with its line and column.
pub(crate) fn json_error(path: &Path, e: &serde_json::Error) -> Error {
    Error::format(
        path,
        format!(
            "invalid JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            // serde_json's Display repeats the position; keep only the reason.
            e.to_string().split(" at line ").next().unwrap_or_default()
        ),
    )
}

/// A short name for a JSON value's type, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Where the JSON fields being read sit, for error messages: the file and, inside the list of
/// items, the item's position (None for the fields of `meta.json`).
#[derive(Clone, Copy)]
struct FieldsOf<'a> {
    path: &'a Path,
    item: Option<usize>,
}

impl FieldsOf<'_> {
    /// An error about `field`: `<file>: item <i>, field "<field>": <msg>`.
    fn err(&self, field: &str, msg: impl fmt::Display) -> Error {
        let item = self.item.map(|i| format!("item {i}, ")).unwrap_or_default();
        Error::format(self.path, format!("{item}field \"{field}\": {msg}"))
    }

    /// An error saying what `field` should have been and what type `found` is instead.
    fn expected(&self, field: &str, what: &str, found: &Value) -> Error {
        self.err(
            field,
            format!("expected {what}, found {}", type_name(found)),
        )
    }

    /// `v` as a string.
    fn string<'v>(&self, field: &str, v: &'v Value) -> Result<&'v str> {
        v.as_str()
            .ok_or_else(|| self.expected(field, "a string", v))
    }

    /// The entries of a list of strings; an error names the first entry that is not one.
    fn strings<'v>(&self, field: &str, entries: &'v [Value]) -> Result<Vec<&'v str>> {
        entries
            .iter()
            .enumerate()
            .map(|(k, e)| {
                e.as_str().ok_or_else(|| {
                    self.err(
                        field,
                        format!("entry {k}: expected a string, found {}", type_name(e)),
                    )
                })
            })
            .collect()
    }
}

/// Item `i` of the list, read field by field in the format's order
/// (docs/data.md#benchmark-format); `image_dir` resolves its image path.
fn parse_item(path: &Path, i: usize, v: &Value, image_dir: &Path) -> Result<Item> {
    let obj = v.as_object().ok_or_else(|| {
        Error::format(
            path,
            format!("item {i}: expected an object, found {}", type_name(v)),
        )
    })?;
    let field = |name: &str| {
        obj.get(name)
            .ok_or_else(|| Error::format(path, format!("item {i}: missing field \"{name}\"")))
    };
    let at = FieldsOf {
        path,
        item: Some(i),
    };
    let task = parse_task_id(at, field("task_id")?)?;
    let split = at
        .string("split", field("split")?)?
        .parse::<Split>()
        .map_err(|e| at.err("split", e))?;
    let image = parse_image(at, field("image")?)?;
    let text = parse_text(at, field("text")?)?;
    let label = parse_label(at, field("label")?)?;
    Ok(Item {
        index: i,
        task,
        split,
        image_path: image_dir.join(&image),
        image,
        text,
        label,
    })
}

/// `task_id`: a non-negative integer (a negative one is quoted in the error).
fn parse_task_id(at: FieldsOf, v: &Value) -> Result<usize> {
    if let Some(t) = v.as_u64() {
        return Ok(t as usize);
    }
    let found = match v.as_i64() {
        Some(n) => n.to_string(),
        None => type_name(v).to_string(),
    };
    Err(at.err(
        "task_id",
        format!("expected a non-negative integer, found {found}"),
    ))
}

/// `image`: a non-empty path under `images/`.
fn parse_image(at: FieldsOf, v: &Value) -> Result<String> {
    match v.as_str() {
        Some("") => Err(at.err("image", "the path is empty")),
        Some(p) => Ok(p.to_string()),
        None => Err(at.expected("image", "a path string", v)),
    }
}

/// `text`: a string, or a list of strings joined with ". ".
fn parse_text(at: FieldsOf, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => Ok(at.strings("text", parts)?.join(". ")),
        other => Err(at.expected("text", "a string or a list of strings", other)),
    }
}

/// `label`: a class id (single-label) or a non-empty multi-hot list (multi-label).
fn parse_label(at: FieldsOf, v: &Value) -> Result<Label> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(|c| Label::Single(c as usize))
            .ok_or_else(|| {
                at.err(
                    "label",
                    format!("expected a non-negative class id, found {n}"),
                )
            }),
        Value::Array(entries) if entries.is_empty() => {
            Err(at.err("label", "the multi-hot list is empty"))
        }
        Value::Array(entries) => entries
            .iter()
            .enumerate()
            .map(|(k, e)| {
                multi_hot_entry(e).ok_or_else(|| {
                    at.err("label", format!("entry {k}: expected 0 or 1, found {e}"))
                })
            })
            .collect::<Result<_>>()
            .map(Label::Multi),
        other => Err(at.expected("label", "a class id or a multi-hot list", other)),
    }
}

/// A multi-hot entry as 0 or 1. RebQ writes ints; floats 0.0/1.0 and booleans are accepted as
/// the same values.
fn multi_hot_entry(e: &Value) -> Option<u8> {
    match e {
        Value::Bool(b) => Some(u8::from(*b)),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Some(0),
            Some(1.0) => Some(1),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Benchmark> {
        Benchmark::parse(text, Path::new("/data/b.json"), None)
    }

    fn item(task: i64, split: &str, label: &str) -> String {
        format!(
            r#"{{"task_id": {task}, "split": "{split}", "image": "x.jpg", "text": "t", "label": {label}}}"#
        )
    }

    fn all_splits(task: i64, label: &str) -> Vec<String> {
        ["train", "val", "test"]
            .iter()
            .map(|s| item(task, s, label))
            .collect()
    }

    #[test]
    fn single_label_tasks_and_local_labels() {
        let mut v = all_splits(0, "3");
        v.extend(all_splits(0, "1"));
        v.extend(all_splits(1, "0"));
        v.extend(all_splits(1, "2"));
        let b = parse(&format!("[{}]", v.join(","))).unwrap();
        assert_eq!(b.kind, LabelKind::Single);
        assert_eq!(b.num_classes, 4);
        assert_eq!(b.tasks[0].classes, vec![1, 3]);
        assert_eq!(b.tasks[1].classes, vec![0, 2]);
        assert_eq!(b.split_indices(1, Split::Val), &[7, 10]);
        assert_eq!(b.local_label(&b.items[0]), Label::Single(1));
        assert_eq!(b.local_label(&b.items[3]), Label::Single(0));
        assert_eq!(b.items[0].image_path, Path::new("/data/images/x.jpg"));
        assert_eq!(b.name, "b");
    }

    #[test]
    fn multi_label_text_list_and_task_ownership() {
        let mut v = all_splits(0, "[1,0,0,0]");
        v.extend(all_splits(0, "[0,1,0,0]"));
        v.extend(all_splits(1, "[0,0,0,1.0]"));
        v.push(
            r#"{"task_id":1,"split":"train","image":"y.jpg","text":["a","b"],"label":[0,0,0,1],"extra":5}"#
                .into(),
        );
        let b = parse(&format!("[{}]", v.join(","))).unwrap();
        assert_eq!(b.kind, LabelKind::Multi);
        assert_eq!(b.num_classes, 4);
        assert_eq!(b.tasks[0].classes, vec![0, 1]);
        // Class 2 has no positive anywhere: owned by no task.
        assert_eq!(b.tasks[1].classes, vec![3]);
        assert_eq!(b.items[9].text, "a. b");
        assert_eq!(b.local_label(&b.items[3]), Label::Multi(vec![0, 1]));
        assert_eq!(b.local_label(&b.items[9]), Label::Multi(vec![1]));
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_items_name_index_and_field() {
        let ok = all_splits(0, "0").join(",");
        let e = err(&format!("[{ok},{}]", item(-1, "train", "0")));
        assert!(
            e.contains("item 3, field \"task_id\"") && e.contains("-1"),
            "{e}"
        );
        let e = err(&format!("[{ok},{}]", item(0, "dev", "0")));
        assert!(
            e.contains("item 3, field \"split\"") && e.contains("\"dev\""),
            "{e}"
        );
        let e = err(&format!("[{ok},{}]", item(0, "train", "\"a\"")));
        assert!(
            e.contains("item 3, field \"label\"") && e.contains("a string"),
            "{e}"
        );
        let e = err(&format!("[{ok},{}]", item(0, "train", "[0,1]")));
        assert!(
            e.contains("item 3, field \"label\"") && e.contains("item 0"),
            "{e}"
        );
        let e = err(&format!(
            "[{},{}]",
            all_splits(0, "[1,0,0]").join(","),
            item(0, "train", "[1,0]")
        ));
        assert!(
            e.contains("item 3") && e.contains("2 entries") && e.contains("3"),
            "{e}"
        );
        let e = err(&format!("[{ok},{}]", item(0, "train", "[0,2,0]")));
        assert!(e.contains("item 3") && e.contains("0 or 1"), "{e}");
        let e = err(&format!(
            "[{ok},{}]",
            r#"{"task_id":0,"split":"train","image":"x","label":0}"#
        ));
        assert!(e.contains("item 3: missing field \"text\""), "{e}");
        let e = err(&format!(
            "[{ok},{}]",
            r#"{"task_id":0,"split":"train","image":3,"text":"","label":0}"#
        ));
        assert!(e.contains("item 3, field \"image\""), "{e}");
        let e = err(&format!(
            "[{ok},{}]",
            r#"{"task_id":0,"split":"train","image":"x","text":null,"label":0}"#
        ));
        assert!(
            e.contains("item 3, field \"text\"") && e.contains("null"),
            "{e}"
        );
        let e = err(&format!("[{ok}, 7]"));
        assert!(e.contains("item 3: expected an object"), "{e}");
    }

    #[test]
    fn structural_errors() {
        let e = err("[\n {\"task_id\": 0,\n  \"split\" \"train\"}]");
        assert!(e.contains("line 3, column"), "{e}");
        assert!(e.starts_with("/data/b.json"), "{e}");
        assert!(err("{}").contains("top level"));
        assert!(err("[]").contains("empty"));
        // A gap in task ids.
        let v = [all_splits(0, "0"), all_splits(2, "1")].concat().join(",");
        assert!(err(&format!("[{v}]")).contains("no item has task_id 1"));
        // An empty split.
        let v = [item(0, "train", "0"), item(0, "test", "0")].join(",");
        let e = err(&format!("[{v}]"));
        assert!(e.contains("task 0 has no val items"), "{e}");
        // A class shared by two tasks.
        let v = [all_splits(0, "0"), all_splits(1, "0")].concat().join(",");
        assert!(err(&format!("[{v}]")).contains("class 0 occurs in tasks 0 and 1"));
        // A task whose multi-hot labels are all zero.
        let v = [all_splits(0, "[1,0]"), all_splits(1, "[0,0]")]
            .concat()
            .join(",");
        assert!(err(&format!("[{v}]")).contains("task 1 owns no class"));
    }

    #[test]
    fn meta_is_checked_against_labels() {
        let text = format!("[{}]", all_splits(0, "1").join(","));
        let meta = Meta::parse(
            r#"{"name":"Demo","kind":"single","class_names":["a","b","c"],"other":1}"#,
            Path::new("meta.json"),
        )
        .unwrap();
        let b = Benchmark::parse(&text, Path::new("b.json"), Some(meta)).unwrap();
        assert_eq!(b.name, "Demo");
        assert_eq!(b.num_classes, 3);
        assert_eq!(b.class_name(2), "c");
        let meta = Meta::parse(r#"{"kind":"multi"}"#, Path::new("meta.json")).unwrap();
        let e = Benchmark::parse(&text, Path::new("b.json"), Some(meta)).unwrap_err();
        assert!(e.to_string().contains("multi-label"), "{e}");
        let meta = Meta::parse(r#"{"class_names":["a"]}"#, Path::new("meta.json")).unwrap();
        assert!(Benchmark::parse(&text, Path::new("b.json"), Some(meta)).is_err());
        let e = Meta::parse(r#"{"class_names":["a", 2]}"#, Path::new("m.json")).unwrap_err();
        assert!(e.to_string().contains("entry 1"), "{e}");
    }
}
