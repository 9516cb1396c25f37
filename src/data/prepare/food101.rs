//! UPMC-Food101 → CMML (single-label, 10 tasks × 10 classes by default).
//!
//! Raw layout (as in the MAP instructions): `images/{train,test}/<class>/<file>.jpg` and
//! `texts/{train,test}_titles.csv` (no header; columns: image file name, text, class name),
//! optionally `split.json` (`{"train": [files], "val" | "dev": [files], "test": [files]}`).
//!
//! - Rows whose image file does not exist, duplicate rows and (with `split.json`) rows it
//!   does not list are left out and reported.
//! - Val: the files `split.json` lists under `val`/`dev`; without it, a seeded 10% of each
//!   class's train rows (rounded, at least one when the class has two or more).
//! - Classes: the class names of the train rows, sorted; a seeded choice of them is dropped so
//!   that `tasks × classes_per_task` remain (101 → 100); the rest are put in a seeded order.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use super::{
    csv, finish, read_json, string_list, ClassOrder, Described, ImageLinker, OutItem, OutText,
    PrepareReport,
};
use crate::data::cmml::{Label, LabelKind, Split};
use crate::data::rng::{hash_str, DetRng};
use crate::error::{Error, Result};

/// The benchmark file name the RebQ code uses.
pub const FOOD101_JSON: &str = "UPMC-Food101-CMML.json";

/// Options of `delo prepare food101`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Food101Options {
    pub seed: u64,
    pub tasks: usize,
    pub classes_per_task: usize,
}

impl Default for Food101Options {
    fn default() -> Self {
        Food101Options {
            seed: 0,
            tasks: 10,
            classes_per_task: 10,
        }
    }
}

/// One usable CSV row.
struct Row {
    file: String,
    text: String,
    class: String,
}

/// The usable rows of `texts/train_titles.csv` and `texts/test_titles.csv`.
struct Rows {
    train: Vec<Row>,
    test: Vec<Row>,
}

/// Reads `texts/<split>_titles.csv`, keeping rows whose image exists (others go to `skipped`).
fn read_rows(raw: &Path, split_dir: &str, skipped: &mut Vec<String>) -> Result<Vec<Row>> {
    let path = raw.join("texts").join(format!("{split_dir}_titles.csv"));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let records = csv::parse(&text, &path, Some(3)).map_err(|e| match e {
        Error::Format { path, msg } => Error::Format {
            path,
            msg: format!("{msg} (columns: image file, text, class)"),
        },
        e => e,
    })?;
    for (line, fields) in records {
        let [file, text, class]: [String; 3] = fields.try_into().expect("three fields");
        let (file, class) = (file.trim().to_string(), class.trim().to_string());
        if file.is_empty() || class.is_empty() {
            return Err(Error::format(
                &path,
                format!("line {line}: the image file name and the class name must not be empty"),
            ));
        }
        if class.contains(['/', '\\']) || file.contains(['/', '\\']) || class == ".." {
            return Err(Error::format(
                &path,
                format!("line {line}: file and class names must not contain path separators"),
            ));
        }
        if !seen.insert(file.clone()) {
            skipped.push(format!("{split_dir}/{file}: duplicate row (line {line})"));
            continue;
        }
        let image = raw.join("images").join(split_dir).join(&class).join(&file);
        if !image.is_file() {
            skipped.push(format!("{split_dir}/{class}/{file}: image file not found"));
            continue;
        }
        rows.push(Row { file, text, class });
    }
    Ok(rows)
}

/// The file lists of an optional `split.json`.
struct SplitFile {
    train: Option<HashSet<String>>,
    val: HashSet<String>,
    test: Option<HashSet<String>>,
}

fn read_split_file(path: &Path) -> Result<SplitFile> {
    let v = read_json(path)?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::format(path, "expected an object of file lists"))?;
    let list = |k: &str| -> Result<Option<HashSet<String>>> {
        obj.get(k)
            .map(|x| {
                Ok(string_list(x, path, &format!("field \"{k}\""))?
                    .into_iter()
                    .collect())
            })
            .transpose()
    };
    let val = match (list("val")?, list("dev")?) {
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => {
            return Err(Error::format(
                path,
                "no \"val\" (or \"dev\") list: it is what split.json is read for",
            ))
        }
    };
    Ok(SplitFile {
        train: list("train")?,
        val,
        test: list("test")?,
    })
}

/// Prepares UPMC-Food101-CMML from `raw` into `out`. See the module doc for the rules.
pub fn prepare_food101(raw: &Path, out: &Path, opts: &Food101Options) -> Result<PrepareReport> {
    if opts.tasks == 0 || opts.classes_per_task == 0 {
        return Err(Error::Msg(
            "tasks and classes per task must be at least 1".into(),
        ));
    }
    let mut skipped = Vec::new();
    let rows = Rows {
        train: read_rows(raw, "train", &mut skipped)?,
        test: read_rows(raw, "test", &mut skipped)?,
    };
    let all_classes = train_classes(raw, &rows, opts)?;
    let classes = drop_and_order(&all_classes, opts);
    let groups = group_rows(raw, &rows, &classes, opts.seed, &mut skipped)?;
    let mut linker = ImageLinker::new(raw, out)?;
    let items = link_items(raw, groups, opts, &mut linker)?;
    let described = Described {
        name: "UPMC-Food101-CMML",
        file_name: FOOD101_JSON,
        kind: LabelKind::Single,
        source: "delo prepare food101",
        class_order: classes.order,
        tasks: opts.tasks,
        classes_per_task: opts.classes_per_task,
        seed: opts.seed,
        dropped: classes.dropped,
    };
    finish(out, described, &items, skipped, Some(&linker))
}

/// The class names of the train rows, sorted. Errors when they are fewer than the tasks need,
/// or when a test row's class has no train rows.
fn train_classes(raw: &Path, rows: &Rows, opts: &Food101Options) -> Result<Vec<String>> {
    let all_classes: Vec<String> = rows
        .train
        .iter()
        .map(|r| r.class.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let keep = opts.tasks * opts.classes_per_task;
    if all_classes.len() < keep {
        return Err(Error::Msg(format!(
            "{}: the train rows have {} classes, fewer than {} tasks × {} classes",
            raw.display(),
            all_classes.len(),
            opts.tasks,
            opts.classes_per_task
        )));
    }
    let known: HashSet<&str> = all_classes.iter().map(String::as_str).collect();
    if let Some(r) = rows.test.iter().find(|r| !known.contains(r.class.as_str())) {
        return Err(Error::format(
            raw.join("texts/test_titles.csv"),
            format!("row {}: class {:?} has no train rows", r.file, r.class),
        ));
    }
    Ok(all_classes)
}

/// Drops a seeded choice of `all_classes` (sorted) so that tasks × classes per task remain,
/// then puts the rest in a seeded order; each choice from its own seeded stream.
fn drop_and_order(all_classes: &[String], opts: &Food101Options) -> ClassOrder {
    let keep = opts.tasks * opts.classes_per_task;
    let mut shuffled = all_classes.to_vec();
    DetRng::derived("food101-drop", &[opts.seed]).shuffle(&mut shuffled);
    let mut dropped: Vec<String> = shuffled[..all_classes.len() - keep].to_vec();
    dropped.sort();
    let mut order: Vec<String> = all_classes
        .iter()
        .filter(|c| !dropped.contains(c))
        .cloned()
        .collect();
    DetRng::derived("food101-order", &[opts.seed]).shuffle(&mut order);
    ClassOrder::new(order, dropped)
}

/// Rows of the kept classes by (split, global class id).
type Groups<'r> = BTreeMap<(Split, usize), Vec<&'r Row>>;

/// Puts the rows of the kept classes in their splits: train rows in train or val (by
/// `split.json` when present, else a seeded share per class), test rows in test. Rows that
/// `split.json` does not list go to `skipped`.
fn group_rows<'r>(
    raw: &Path,
    rows: &'r Rows,
    classes: &ClassOrder,
    seed: u64,
    skipped: &mut Vec<String>,
) -> Result<Groups<'r>> {
    let split_file = raw.join("split.json");
    let split_lists = if split_file.is_file() {
        Some(read_split_file(&split_file)?)
    } else {
        None
    };
    let mut groups = match &split_lists {
        Some(sf) => listed_train_val(&rows.train, classes, sf, skipped),
        None => seeded_train_val(&rows.train, classes, seed),
    };
    let test_list = split_lists.and_then(|s| s.test);
    for r in &rows.test {
        let Some(c) = classes.id(&r.class) else {
            continue;
        };
        if test_list.as_ref().is_some_and(|t| !t.contains(&r.file)) {
            skipped.push(format!(
                "test/{}/{}: not listed in split.json",
                r.class, r.file
            ));
            continue;
        }
        groups.entry((Split::Test, c)).or_default().push(r);
    }
    Ok(groups)
}

/// Train rows in val when `split.json` lists them under `val`/`dev`, else in train; when it
/// has a `train` list, rows in neither list are left out.
fn listed_train_val<'r>(
    train_rows: &'r [Row],
    classes: &ClassOrder,
    sf: &SplitFile,
    skipped: &mut Vec<String>,
) -> Groups<'r> {
    let mut groups = Groups::new();
    for r in train_rows {
        let Some(c) = classes.id(&r.class) else {
            continue;
        };
        let split = if sf.val.contains(&r.file) {
            Split::Val
        } else if sf.train.as_ref().is_some_and(|t| !t.contains(&r.file)) {
            skipped.push(format!(
                "train/{}/{}: not listed in split.json",
                r.class, r.file
            ));
            continue;
        } else {
            Split::Train
        };
        groups.entry((split, c)).or_default().push(r);
    }
    groups
}

/// Without `split.json`: a seeded 10% of each class's train rows (rounded, at least one for a
/// class of two or more) in val, the rest in train.
fn seeded_train_val<'r>(train_rows: &'r [Row], classes: &ClassOrder, seed: u64) -> Groups<'r> {
    let mut by_class: BTreeMap<usize, Vec<&Row>> = BTreeMap::new();
    for r in train_rows {
        if let Some(c) = classes.id(&r.class) {
            by_class.entry(c).or_default().push(r);
        }
    }
    let mut groups = Groups::new();
    for (c, mut rows) in by_class {
        rows.sort_by(|a, b| a.file.cmp(&b.file));
        // Seeded per class (by its name, so the choice does not move when classes drop).
        DetRng::derived("food101-val", &[seed, hash_str(&classes.order[c])]).shuffle(&mut rows);
        let n = rows.len();
        let n_val = if n >= 2 {
            ((n as f64 * 0.1).round() as usize).max(1)
        } else {
            0
        };
        let (val, train) = rows.split_at(n_val);
        groups.entry((Split::Val, c)).or_default().extend(val);
        groups.entry((Split::Train, c)).or_default().extend(train);
    }
    groups
}

/// The items task by task, split by split, class by class, each class's rows by file name;
/// links every image into `out/images/<train|test>/<class>/<file>`.
fn link_items(
    raw: &Path,
    mut groups: Groups<'_>,
    opts: &Food101Options,
    linker: &mut ImageLinker,
) -> Result<Vec<OutItem>> {
    let mut items = Vec::new();
    for t in 0..opts.tasks {
        for split in Split::ALL {
            let dir = if split == Split::Test {
                "test"
            } else {
                "train"
            };
            for c in t * opts.classes_per_task..(t + 1) * opts.classes_per_task {
                let mut rows = groups.remove(&(split, c)).unwrap_or_default();
                rows.sort_by(|a, b| a.file.cmp(&b.file));
                for r in rows {
                    let rel = format!("{dir}/{}/{}", r.class, r.file);
                    let src: PathBuf = raw.join("images").join(&rel);
                    linker.link(&src, &rel)?;
                    items.push(OutItem::new(
                        t,
                        split,
                        rel,
                        OutText::One(r.text.clone()),
                        Label::Single(c),
                    ));
                }
            }
        }
    }
    Ok(items)
}
