//! MM-IMDb → CMML (multi-label, 5 tasks × 4 genres by default).
//!
//! Raw layout: `split.json` (`{"train": [ids], "dev": [ids], "test": [ids]}`) and, per movie,
//! `<id>.jpeg` + `<id>.json` (`plot`: list of strings or a string, `genres`: list of strings),
//! either beside `split.json`, in `dataset/`, or as `images/<id>.jpeg` + `labels/<id>.json`
//! (the MAP layout). Movies whose files are missing are left out and reported.
//!
//! Genres: counted over all movies of `split.json`; the `tasks × genres_per_task` most frequent
//! are kept (ties broken by name, ascending), i.e. 20 of 27, and put in a seeded order; global
//! id k = the k-th genre of that order; task t owns ids [t·n, (t+1)·n).
//!
//! Incremental multi-label protocol: a movie is an item of every task whose genres it has,
//! labelled with that task's genres only. Its label is a multi-hot vector over all C kept
//! genres with ones only inside the task's block, so each task owns exactly its block. Movies
//! with no kept genre appear in no task. The plot list is written as a list (readers join it
//! with ". "); `dev` becomes `val`.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{
    finish, read_json, string_list, ClassOrder, Described, ImageLinker, OutItem, OutText,
    PrepareReport,
};
use crate::data::cmml::{type_name, Label, LabelKind, Split};
use crate::data::rng::DetRng;
use crate::error::{Error, Result};

/// The benchmark file name the RebQ code uses.
pub const MMIMDB_JSON: &str = "MM-IMDB-CMML.json";

/// Options of `delo prepare mmimdb`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmImdbOptions {
    pub seed: u64,
    pub tasks: usize,
    pub genres_per_task: usize,
}

impl Default for MmImdbOptions {
    fn default() -> Self {
        MmImdbOptions {
            seed: 0,
            tasks: 5,
            genres_per_task: 4,
        }
    }
}

struct Movie {
    id: String,
    split: Split,
    image: PathBuf,
    plot: Vec<String>,
    genres: Vec<String>,
}

/// Where the files of movie `id` are: (image, label JSON), or None when absent.
fn locate(raw: &Path, id: &str) -> Option<(PathBuf, PathBuf)> {
    let candidates = [
        (raw.to_path_buf(), raw.to_path_buf()),
        (raw.join("dataset"), raw.join("dataset")),
        (raw.join("images"), raw.join("labels")),
    ];
    candidates.into_iter().find_map(|(img_dir, lbl_dir)| {
        let lbl = lbl_dir.join(format!("{id}.json"));
        lbl.is_file()
            .then(|| (img_dir.join(format!("{id}.jpeg")), lbl))
    })
}

fn read_movie(id: &str, split: Split, image: PathBuf, label_path: &Path) -> Result<Movie> {
    let v = read_json(label_path)?;
    let obj = v.as_object().ok_or_else(|| {
        Error::format(
            label_path,
            format!("expected an object, found {}", type_name(&v)),
        )
    })?;
    let genres = obj.get("genres").ok_or_else(|| {
        Error::format(
            label_path,
            "missing field \"genres\" (a list of genre names)",
        )
    })?;
    let genres = string_list(genres, label_path, "field \"genres\"")?;
    let plot = match obj.get("plot") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(p @ serde_json::Value::Array(_)) => string_list(p, label_path, "field \"plot\"")?,
        Some(other) => {
            return Err(Error::format(
                label_path,
                format!(
                    "field \"plot\": expected a list of strings, found {}",
                    type_name(other)
                ),
            ))
        }
        None => {
            return Err(Error::format(
                label_path,
                "missing field \"plot\" (a list of plot texts)",
            ))
        }
    };
    Ok(Movie {
        id: id.to_string(),
        split,
        image,
        plot,
        genres,
    })
}

/// Prepares MM-IMDB-CMML from `raw` into `out`. See the module doc for the rules.
pub fn prepare_mmimdb(raw: &Path, out: &Path, opts: &MmImdbOptions) -> Result<PrepareReport> {
    if opts.tasks == 0 || opts.genres_per_task == 0 {
        return Err(Error::Msg(
            "tasks and genres per task must be at least 1".into(),
        ));
    }
    let mut skipped = Vec::new();
    let movies = read_movies(raw, &mut skipped)?;
    let genres = keep_genres(raw, &movies, opts)?;
    let mut linker = ImageLinker::new(raw, out)?;
    let items = link_items(&movies, &genres, opts, &mut linker, &mut skipped)?;
    let described = Described {
        name: "MM-IMDB-CMML",
        file_name: MMIMDB_JSON,
        kind: LabelKind::Multi,
        source: "delo prepare mmimdb",
        class_order: genres.order,
        tasks: opts.tasks,
        classes_per_task: opts.genres_per_task,
        seed: opts.seed,
        dropped: genres.dropped,
    };
    finish(out, described, &items, skipped, Some(&linker))
}

/// The movies `split.json` lists, split by split (`dev`, or `val`, becomes val); movies whose
/// label JSON or image is missing go to `skipped`.
fn read_movies(raw: &Path, skipped: &mut Vec<String>) -> Result<Vec<Movie>> {
    let split_path = raw.join("split.json");
    let sv = read_json(&split_path)?;
    let sobj = sv.as_object().ok_or_else(|| {
        Error::format(
            &split_path,
            format!(
                "expected an object with \"train\", \"dev\" and \"test\" id lists, found {}",
                type_name(&sv)
            ),
        )
    })?;
    let mut movies = Vec::new();
    for (key, split) in [
        ("train", Split::Train),
        ("dev", Split::Val),
        ("test", Split::Test),
    ] {
        let list = sobj
            .get(key)
            .or_else(|| (key == "dev").then(|| sobj.get("val")).flatten())
            .ok_or_else(|| {
                Error::format(
                    &split_path,
                    format!("missing the \"{key}\" list of movie ids"),
                )
            })?;
        for id in string_list(list, &split_path, &format!("field \"{key}\""))? {
            let Some((image, label)) = locate(raw, &id) else {
                skipped.push(format!("{id}: {id}.json not found"));
                continue;
            };
            if !image.is_file() {
                skipped.push(format!("{id}: {} not found", image.display()));
                continue;
            }
            movies.push(read_movie(&id, split, image, &label)?);
        }
    }
    Ok(movies)
}

/// The `tasks × genres_per_task` most frequent genres over all movies (ties by name), in a
/// seeded order; errors when the movies have fewer genres.
fn keep_genres(raw: &Path, movies: &[Movie], opts: &MmImdbOptions) -> Result<ClassOrder> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in movies {
        for g in &m.genres {
            *counts.entry(g.as_str()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let keep = opts.tasks * opts.genres_per_task;
    if ranked.len() < keep {
        return Err(Error::Msg(format!(
            "{}: the movies have {} genres, fewer than {} tasks × {} genres",
            raw.display(),
            ranked.len(),
            opts.tasks,
            opts.genres_per_task
        )));
    }
    let mut dropped: Vec<String> = ranked[keep..].iter().map(|g| g.0.to_string()).collect();
    dropped.sort();
    let mut order: Vec<String> = ranked[..keep].iter().map(|g| g.0.to_string()).collect();
    order.sort();
    DetRng::derived("mmimdb-order", &[opts.seed]).shuffle(&mut order);
    Ok(ClassOrder::new(order, dropped))
}

/// The items task by task, split by split, movies in `split.json` order: a movie is an item
/// of every task whose genres it has; links each image into `out/images/<id>.jpeg`. Movies
/// with no kept genre go to `skipped`.
fn link_items(
    movies: &[Movie],
    genres: &ClassOrder,
    opts: &MmImdbOptions,
    linker: &mut ImageLinker,
    skipped: &mut Vec<String>,
) -> Result<Vec<OutItem>> {
    let mut items = Vec::new();
    let mut in_some_task = vec![false; movies.len()];
    for t in 0..opts.tasks {
        let block = t * opts.genres_per_task..(t + 1) * opts.genres_per_task;
        for split in Split::ALL {
            for (mi, m) in movies.iter().enumerate().filter(|(_, m)| m.split == split) {
                let Some(hot) = task_label(m, genres, &block) else {
                    continue;
                };
                in_some_task[mi] = true;
                let rel = format!("{}.jpeg", m.id);
                linker.link(&m.image, &rel)?;
                items.push(OutItem::new(
                    t,
                    split,
                    rel,
                    OutText::Many(m.plot.clone()),
                    Label::Multi(hot),
                ));
            }
        }
    }
    for (m, used) in movies.iter().zip(in_some_task) {
        if !used {
            skipped.push(format!("{}: none of its genres is kept", m.id));
        }
    }
    Ok(items)
}

/// A movie's label in the task that owns the genre ids `block`: a multi-hot vector over all
/// kept genres with ones only for its genres inside the block; None when it has none there.
fn task_label(m: &Movie, genres: &ClassOrder, block: &Range<usize>) -> Option<Vec<u8>> {
    let mut hot = vec![0u8; genres.order.len()];
    for g in &m.genres {
        if let Some(k) = genres.id(g) {
            if block.contains(&k) {
                hot[k] = 1;
            }
        }
    }
    hot.contains(&1).then_some(hot)
}
