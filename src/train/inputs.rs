//! New image–text items, for `delo predict` and `delo forward` on raw inputs: read from a JSON
//! list in the CMML item shape, a CSV with `image,text` columns, or lists with one image path or
//! one text per line, and handed to the training [`Loader`] so that they get exactly the
//! training pre-processing, missing modalities included (a white image, an empty text).
//!
//! Image paths are relative to the folder of the file that names them; when no file is there,
//! `images/<path>` beside it is tried, the layout of a CMML benchmark, so a benchmark JSON (or a
//! list cut from one) can be given as it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::data::{Item, Label, Loader, LoaderConfig, LoaderItem, MissingType, SamplePrep, Split};
use crate::error::{Error, Result};

/// One new item. At least one of image and text is present; an absent one is missing, as in
/// training.
#[derive(Clone, Debug, PartialEq)]
pub struct NewItem {
    /// The image path as written in the input, if any.
    pub image: Option<String>,
    /// The resolved image file, when `image` is present.
    pub image_path: Option<PathBuf>,
    /// The text, if any (a JSON list of strings is joined with ". ", as in CMML files).
    pub text: Option<String>,
}

impl NewItem {
    /// Which modality the item lacks.
    pub fn missing(&self) -> MissingType {
        match (&self.image_path, &self.text) {
            (None, _) => MissingType::Image,
            (_, None) => MissingType::Text,
            _ => MissingType::None,
        }
    }
}

/// Reads `path`: a JSON list of objects with optional `image` and `text` fields (the CMML item
/// shape; other fields are ignored) when it ends in `.json` or starts with `[`, else a CSV
/// with a header row naming an `image` column, a `text` column or both. An empty or absent
/// field is a missing modality; an item with neither is an error, as is an image path with no
/// file. Errors name the file, the item (0-based, as in the predictions) and the field.
pub fn read_items(path: &Path) -> Result<Vec<NewItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('[');
    let raw = if json {
        json_items(&text, path)?
    } else {
        csv_items(&text, path)?
    };
    resolve(raw, path)
}

/// Reads a list of image paths and/or a list of texts, one per line (an empty line is a
/// missing modality; a trailing newline adds no item). With both lists, line i of each is item
/// i and the lists must be equally long; with one, the other modality is missing throughout.
pub fn read_line_lists(images: Option<&Path>, texts: Option<&Path>) -> Result<Vec<NewItem>> {
    let lines = |p: &Path| -> Result<Vec<Option<String>>> {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        Ok(text.lines().map(present).collect())
    };
    let (im, tx) = (
        images.map(lines).transpose()?,
        texts.map(lines).transpose()?,
    );
    let n = match (&im, &tx) {
        (Some(a), Some(b)) if a.len() != b.len() => {
            return Err(Error::format(
                texts.expect("given"),
                format!(
                    "{} texts for {} images in {}; expected one text per image line",
                    b.len(),
                    a.len(),
                    images.expect("given").display()
                ),
            ))
        }
        (Some(a), _) => a.len(),
        (_, Some(b)) => b.len(),
        (None, None) => {
            return Err(Error::Msg(
                "give a list of images, of texts, or both".into(),
            ))
        }
    };
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let image = im.as_ref().and_then(|v| v[i].clone());
        let image_path = match (&image, images) {
            (Some(p), Some(list)) => Some(resolve_image(p, list, i)?),
            _ => None,
        };
        let item = NewItem {
            image,
            image_path,
            text: tx.as_ref().and_then(|v| v[i].clone()),
        };
        check_present(&item, images.or(texts).expect("one list"), i)?;
        items.push(item);
    }
    if items.is_empty() {
        return Err(Error::format(
            images.or(texts).expect("one list"),
            "no item: the list is empty",
        ));
    }
    Ok(items)
}

/// The items as the loader takes them, in input order, with the item's position as its index.
/// The task, split and labels are placeholders: nothing downstream reads them.
pub fn loader_items(items: &[NewItem]) -> Vec<LoaderItem> {
    items
        .iter()
        .enumerate()
        .map(|(index, it)| LoaderItem {
            item: Item {
                index,
                task: 0,
                split: Split::Test,
                image: it.image.clone().unwrap_or_default(),
                image_path: it.image_path.clone().unwrap_or_default(),
                text: it.text.clone().unwrap_or_default(),
                label: Label::Single(0),
            },
            local_label: Label::Single(0),
            missing: it.missing(),
        })
        .collect()
}

/// A loader over `items` in input order, in batches of `batch_size`, through `prep`.
pub fn loader<P: SamplePrep>(
    items: &[NewItem],
    prep: Arc<P>,
    batch_size: usize,
    threads: usize,
) -> Result<Loader<P>> {
    let cfg = LoaderConfig {
        batch_size,
        shuffle: false,
        threads,
        ..LoaderConfig::default()
    };
    Loader::new(loader_items(items), prep, cfg)
}

/// A field's value, or `None` when empty or blank (a missing modality).
fn present(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.to_string())
}

/// An item as read, before its image path is resolved.
struct RawItem {
    image: Option<String>,
    text: Option<String>,
}

fn json_items(text: &str, path: &Path) -> Result<Vec<RawItem>> {
    let root: Value = serde_json::from_str(text).map_err(|e| {
        Error::format(
            path,
            format!(
                "invalid JSON at line {}, column {}: expected a list of items",
                e.line(),
                e.column()
            ),
        )
    })?;
    let list = root.as_array().ok_or_else(|| {
        Error::format(
            path,
            "expected a JSON list of items ({\"image\": ..., \"text\": ...})",
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let obj = v
                .as_object()
                .ok_or_else(|| Error::format(path, format!("item {i}: expected an object")))?;
            let field_err = |name: &str, want: &str| {
                Error::format(path, format!("item {i}, field \"{name}\": expected {want}"))
            };
            let image = match obj.get("image") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => present(s),
                Some(_) => return Err(field_err("image", "a path string, null or nothing")),
            };
            let text = match obj.get("text") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => present(s),
                Some(Value::Array(parts)) => {
                    let parts: Option<Vec<&str>> = parts.iter().map(Value::as_str).collect();
                    let parts =
                        parts.ok_or_else(|| field_err("text", "a string or a list of strings"))?;
                    present(&parts.join(". "))
                }
                Some(_) => return Err(field_err("text", "a string, a list of strings or null")),
            };
            Ok(RawItem { image, text })
        })
        .collect()
}

fn csv_items(text: &str, path: &Path) -> Result<Vec<RawItem>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| Error::format(path, format!("unreadable CSV header: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (image_col, text_col) = (column("image"), column("text"));
    if image_col.is_none() && text_col.is_none() {
        return Err(Error::format(
            path,
            format!(
                "the CSV header has no `image` or `text` column (found {:?}); expected a header row such as `image,text`",
                headers.iter().collect::<Vec<_>>()
            ),
        ));
    }
    reader
        .records()
        .enumerate()
        .map(|(i, r)| {
            let r = r.map_err(|e| Error::format(path, format!("item {i}: {e}")))?;
            let get = |c: Option<usize>| c.and_then(|c| r.get(c)).and_then(present);
            Ok(RawItem {
                image: get(image_col),
                text: get(text_col),
            })
        })
        .collect()
}

fn resolve(raw: Vec<RawItem>, path: &Path) -> Result<Vec<NewItem>> {
    if raw.is_empty() {
        return Err(Error::format(path, "no item: the list is empty"));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let image_path = r
                .image
                .as_deref()
                .map(|p| resolve_image(p, path, i))
                .transpose()?;
            let item = NewItem {
                image: r.image,
                image_path,
                text: r.text,
            };
            check_present(&item, path, i)?;
            Ok(item)
        })
        .collect()
}

fn check_present(item: &NewItem, path: &Path, i: usize) -> Result<()> {
    if item.image.is_none() && item.text.is_none() {
        return Err(Error::format(
            path,
            format!("item {i}: neither an image nor a text; an item needs at least one"),
        ));
    }
    Ok(())
}

/// `image` relative to the folder of `list` (or `images/` in it, as in a benchmark), or as
/// it is when absolute.
fn resolve_image(image: &str, list: &Path, i: usize) -> Result<PathBuf> {
    let dir = list.parent().unwrap_or_else(|| Path::new(""));
    let candidates = [dir.join(image), dir.join("images").join(image)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::format(
                list,
                format!(
                    "item {i}, field \"image\": no file {} (image paths are relative to this file's folder, or its images/ folder)",
                    candidates[0].display()
                ),
            )
        })
}
