//! `delo synth`: a small synthetic CMML benchmark for the demo and the tests.
//!
//! Both modalities carry the class on their own, and both tell tasks apart (the Task-Key
//! memory picks the task from the input):
//! - image: a task-specific background colour; per class, a shape (disk, square, triangle,
//!   cross, ring, bars, diamond) in a colour, unique within the task; position, size,
//!   brightness and per-pixel noise vary;
//! - text: each task has a theme (food, animals, city, ...) with three theme words shared by
//!   its classes; each class has three keywords of the theme. A text holds two keywords of its
//!   class, one theme word, sometimes a keyword of another class of the task as a distractor,
//!   and filler words shared by everything, in random order. Every word is a common lowercase
//!   English word that is a single token of the bert-base-uncased vocabulary.
//!
//! Every image and text has its own seeded stream, so generation runs in parallel and the
//! output depends only on the configuration.

use std::path::Path;

use rayon::prelude::*;

use super::cmml::{Label, LabelKind, Split};
use super::prepare::{finish, Described, OutItem, OutText, PrepareReport};
use super::rng::DetRng;
use crate::error::{Error, Result};

/// The benchmark file name `delo synth` writes.
pub const SYNTH_JSON: &str = "Synthetic-CMML.json";

/// What a synth run wrote.
pub type SynthReport = PrepareReport;

/// Settings of the synthetic benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthConfig {
    pub tasks: usize,
    pub classes_per_task: usize,
    /// Train items per class.
    pub per_class: usize,
    pub val_per_class: usize,
    pub test_per_class: usize,
    /// Side of the square PNG images.
    pub image_size: u32,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            tasks: 3,
            classes_per_task: 4,
            per_class: 24,
            val_per_class: 8,
            test_per_class: 8,
            image_size: 64,
            seed: 0,
        }
    }
}

/// Per theme: three theme words, then ten classes of three keywords each.
const THEMES: [[&str; 33]; 10] = [
    [
        "kitchen",
        "dinner",
        "taste",
        "apple",
        "bread",
        "cheese",
        "rice",
        "soup",
        "cake",
        "butter",
        "sugar",
        "honey",
        "pepper",
        "salt",
        "lemon",
        "orange",
        "banana",
        "cherry",
        "potato",
        "tomato",
        "onion",
        "garlic",
        "bean",
        "corn",
        "egg",
        "milk",
        "cream",
        "chocolate",
        "cookie",
        "pie",
        "pizza",
        "salad",
        "pasta",
    ],
    [
        "farm", "wild", "creature", "dog", "cat", "horse", "cow", "sheep", "pig", "goat", "rabbit",
        "mouse", "rat", "lion", "tiger", "bear", "wolf", "fox", "deer", "monkey", "elephant",
        "snake", "frog", "duck", "chicken", "eagle", "owl", "fish", "shark", "whale", "bird",
        "bee", "spider",
    ],
    [
        "street", "town", "building", "bank", "shop", "hotel", "church", "school", "hospital",
        "bridge", "tower", "station", "market", "library", "museum", "theater", "office",
        "factory", "prison", "castle", "palace", "temple", "garden", "park", "road", "train",
        "bus", "taxi", "car", "truck", "bicycle", "airport", "harbor",
    ],
    [
        "forest", "sky", "earth", "river", "lake", "ocean", "mountain", "hill", "valley", "desert",
        "island", "beach", "cave", "rock", "stone", "sand", "snow", "ice", "rain", "storm",
        "cloud", "wind", "thunder", "flower", "tree", "grass", "leaf", "seed", "root", "moon",
        "star", "sun", "fire",
    ],
    [
        "game", "team", "player", "football", "baseball", "soccer", "tennis", "golf", "hockey",
        "boxing", "racing", "swimming", "skiing", "ball", "goal", "bat", "net", "helmet", "glove",
        "coach", "referee", "score", "match", "medal", "trophy", "stadium", "court", "field",
        "track", "race", "jump", "throw", "kick",
    ],
    [
        "song",
        "sound",
        "band",
        "piano",
        "guitar",
        "violin",
        "drum",
        "trumpet",
        "flute",
        "organ",
        "harp",
        "bass",
        "voice",
        "singer",
        "choir",
        "dance",
        "opera",
        "jazz",
        "blues",
        "concert",
        "album",
        "radio",
        "record",
        "melody",
        "rhythm",
        "tune",
        "chord",
        "note",
        "lyrics",
        "stage",
        "microphone",
        "orchestra",
        "symphony",
    ],
    [
        "house", "room", "family", "chair", "table", "bed", "sofa", "lamp", "door", "window",
        "wall", "floor", "roof", "carpet", "mirror", "clock", "shelf", "desk", "pillow", "blanket",
        "towel", "bath", "shower", "sink", "stove", "oven", "cup", "plate", "bowl", "spoon",
        "fork", "knife", "bottle",
    ],
    [
        "fashion", "wear", "style", "shirt", "dress", "skirt", "coat", "jacket", "hat", "cap",
        "shoe", "boot", "sock", "scarf", "tie", "belt", "suit", "uniform", "sweater", "jeans",
        "pants", "collar", "sleeve", "pocket", "button", "ring", "necklace", "watch", "bag",
        "wallet", "umbrella", "silk", "cotton",
    ],
    [
        "study",
        "learning",
        "exam",
        "book",
        "paper",
        "pen",
        "pencil",
        "letter",
        "page",
        "map",
        "chart",
        "teacher",
        "student",
        "science",
        "history",
        "math",
        "english",
        "art",
        "language",
        "poem",
        "story",
        "novel",
        "dictionary",
        "computer",
        "phone",
        "camera",
        "printer",
        "screen",
        "keyboard",
        "email",
        "report",
        "notebook",
        "question",
    ],
    [
        "journey",
        "trip",
        "travel",
        "ship",
        "boat",
        "plane",
        "jet",
        "rocket",
        "engine",
        "wheel",
        "sail",
        "anchor",
        "captain",
        "pilot",
        "passenger",
        "ticket",
        "passport",
        "luggage",
        "suitcase",
        "tent",
        "camp",
        "compass",
        "tourist",
        "guide",
        "border",
        "coast",
        "port",
        "voyage",
        "flight",
        "cruise",
        "holiday",
        "vacation",
        "adventure",
    ],
];

/// Words shared by every class and task: no signal.
const FILLER: [&str; 40] = [
    "the", "a", "with", "and", "very", "some", "near", "small", "big", "old", "new", "good",
    "nice", "there", "is", "this", "that", "of", "on", "in", "at", "one", "two", "little", "great",
    "my", "our", "their", "next", "to", "from", "by", "for", "just", "really", "quite", "looks",
    "seen", "here", "today",
];

const MAX_CLASSES_PER_TASK: usize = 10;
const NUM_SHAPES: usize = 8;
const NUM_COLOURS: usize = 6;

fn theme_words(task: usize) -> &'static [&'static str] {
    &THEMES[task][..3]
}

fn class_keywords(task: usize, class: usize) -> &'static [&'static str] {
    &THEMES[task][3 + 3 * class..6 + 3 * class]
}

/// An HSV colour (all in [0, 1]) as RGB in [0, 255].
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let i = h6.floor() as i32;
    let f = h6 - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i.rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

/// Whether (u, v), in units of the shape's radius around its centre, is inside `shape`.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => au <= 0.8 && av <= 0.8,
        2 => (-0.9..=0.9).contains(&v) && au <= (v + 0.9) * 0.55,
        3 => (au <= 0.3 && av <= 1.0) || (av <= 0.3 && au <= 1.0),
        4 => (0.3..=1.0).contains(&(u * u + v * v)),
        5 => au <= 1.0 && av <= 1.0 && ((v + 1.0) * 2.5) as i32 % 2 == 0,
        6 => au <= 1.0 && av <= 1.0 && ((u + 1.0) * 2.5) as i32 % 2 == 0,
        _ => au + av <= 1.0,
    }
}

/// Draws one image of (task, local class) from its own random stream.
fn draw(task: usize, class: usize, size: u32, rng: &mut DetRng) -> image::RgbImage {
    let s = size as f32;
    let bright = 0.9 + 0.2 * rng.unit_f32();
    let bg = hsv(0.13 + task as f32 * 0.381_966, 0.45, 0.6 * bright);
    // (shape, colour) pairs are distinct for the first NUM_SHAPES × NUM_COLOURS classes.
    let shape = class % NUM_SHAPES;
    let colour = (class % NUM_SHAPES + class / NUM_SHAPES) % NUM_COLOURS;
    let fg = hsv(
        colour as f32 / NUM_COLOURS as f32 + 0.02 * (rng.unit_f32() - 0.5),
        0.9,
        0.95 * bright.min(1.0),
    );
    let cx = s * (0.5 + 0.25 * (rng.unit_f32() - 0.5));
    let cy = s * (0.5 + 0.25 * (rng.unit_f32() - 0.5));
    let r = s * (0.22 + 0.1 * rng.unit_f32());
    let mut img = image::RgbImage::new(size, size);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (u, v) = ((x as f32 + 0.5 - cx) / r, (y as f32 + 0.5 - cy) / r);
        let base = if inside(shape, u, v) { fg } else { bg };
        for c in 0..3 {
            let noise = 32.0 * (rng.unit_f32() - 0.5);
            px[c] = (base[c] + noise).clamp(0.0, 255.0) as u8;
        }
    }
    img
}

/// Writes one text of (task, local class) from its own random stream.
fn text(task: usize, class: usize, classes_per_task: usize, rng: &mut DetRng) -> String {
    let kw = class_keywords(task, class);
    let mut words: Vec<&str> = vec![*rng.pick(kw), *rng.pick(kw), *rng.pick(theme_words(task))];
    if classes_per_task > 1 && rng.chance(0.25) {
        let other = (class + 1 + rng.below(classes_per_task - 1)) % classes_per_task;
        words.push(*rng.pick(class_keywords(task, other)));
    }
    for _ in 0..4 + rng.below(4) {
        words.push(*rng.pick(&FILLER));
    }
    rng.shuffle(&mut words);
    words.join(" ")
}

/// Encodes a PNG quickly (fast compression: these files are small and written often).
fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let enc = PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        CompressionType::Fast,
        FilterType::Sub,
    );
    img.write_with_encoder(enc)
        .map_err(|e| Error::format(path, format!("cannot write the PNG: {e}")))
}

/// Writes the synthetic benchmark (`Synthetic-CMML.json`, `meta.json`, `images/`) into `out`
/// (docs/data.md#synthetic-benchmark). Errors name a setting out of its range.
pub fn synth(out: &Path, cfg: &SynthConfig) -> Result<SynthReport> {
    cfg.check()?;
    let images_dir = out.join("images");
    for split in Split::ALL {
        let d = images_dir.join(split.as_str());
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let items = cfg
        .item_specs()
        .par_iter()
        .map(|spec| write_item(spec, cfg, &images_dir))
        .collect::<Result<Vec<_>>>()?;
    let class_order = (0..cfg.tasks)
        .flat_map(|t| (0..cfg.classes_per_task).map(move |c| class_keywords(t, c)[0].to_string()))
        .collect();
    let described = Described {
        name: "Synthetic-CMML",
        file_name: SYNTH_JSON,
        kind: LabelKind::Single,
        source: "delo synth",
        class_order,
        tasks: cfg.tasks,
        classes_per_task: cfg.classes_per_task,
        seed: cfg.seed,
        dropped: Vec::new(),
    };
    finish(out, described, &items, Vec::new(), None)
}

impl SynthConfig {
    /// Errors unless there are 1 to 10 tasks (one text theme each), 1 to 10 classes per task,
    /// at least one item per class in every split and images of 8 to 1024 pixels a side.
    fn check(&self) -> Result<()> {
        if self.tasks == 0 || self.tasks > THEMES.len() {
            return Err(Error::Msg(format!(
                "synth: tasks must be between 1 and {} (one text theme each), got {}",
                THEMES.len(),
                self.tasks
            )));
        }
        if self.classes_per_task == 0 || self.classes_per_task > MAX_CLASSES_PER_TASK {
            return Err(Error::Msg(format!(
                "synth: classes per task must be between 1 and {MAX_CLASSES_PER_TASK}, got {}",
                self.classes_per_task
            )));
        }
        if self.per_class == 0 || self.val_per_class == 0 || self.test_per_class == 0 {
            return Err(Error::Msg(
                "synth: every split needs at least one item per class".into(),
            ));
        }
        if !(8..=1024).contains(&self.image_size) {
            return Err(Error::Msg(format!(
                "synth: the image size must be between 8 and 1024, got {}",
                self.image_size
            )));
        }
        Ok(())
    }

    /// Every item to write, in file order: task by task, split by split, class by class.
    fn item_specs(&self) -> Vec<ItemSpec> {
        let mut specs = Vec::new();
        for task in 0..self.tasks {
            for split in Split::ALL {
                let n = match split {
                    Split::Train => self.per_class,
                    Split::Val => self.val_per_class,
                    Split::Test => self.test_per_class,
                };
                for class in 0..self.classes_per_task {
                    specs.extend((0..n).map(|k| ItemSpec {
                        task,
                        split,
                        class,
                        k,
                    }));
                }
            }
        }
        specs
    }
}

/// One synthetic item: the `k`-th of local class `class` in one split of task `task`.
struct ItemSpec {
    task: usize,
    split: Split,
    class: usize,
    k: usize,
}

/// Draws and saves the item's image and writes its text, each from its own stream seeded by
/// the run's seed and the item's place, so that items can be made in any order.
fn write_item(spec: &ItemSpec, cfg: &SynthConfig, images_dir: &Path) -> Result<OutItem> {
    let &ItemSpec {
        task: t,
        split,
        class: c,
        k,
    } = spec;
    let parts = [cfg.seed, t as u64, split.index() as u64, c as u64, k as u64];
    let rel = format!("{split}/t{t}_c{c}_{k:04}.png");
    let img = draw(
        t,
        c,
        cfg.image_size,
        &mut DetRng::derived("synth-image", &parts),
    );
    save_png(&img, &images_dir.join(&rel))?;
    let txt = text(
        t,
        c,
        cfg.classes_per_task,
        &mut DetRng::derived("synth-text", &parts),
    );
    Ok(OutItem::new(
        t,
        split,
        rel,
        OutText::One(txt),
        Label::Single(t * cfg.classes_per_task + c),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn word_bank_is_distinct_and_shapes_colours_unique() {
        let mut seen = HashSet::new();
        for w in THEMES.iter().flatten().chain(FILLER.iter()) {
            assert!(seen.insert(*w), "duplicate word {w}");
            assert!(w.chars().all(|c| c.is_ascii_lowercase()), "{w}");
        }
        let pairs: HashSet<(usize, usize)> = (0..MAX_CLASSES_PER_TASK)
            .map(|c| {
                (
                    c % NUM_SHAPES,
                    (c % NUM_SHAPES + c / NUM_SHAPES) % NUM_COLOURS,
                )
            })
            .collect();
        assert_eq!(pairs.len(), MAX_CLASSES_PER_TASK);
    }

    #[test]
    fn shapes_differ_from_each_other() {
        // Each pair of shapes disagrees on a good share of a grid over [-1.2, 1.2]².
        let grid: Vec<(f32, f32)> = (0..40)
            .flat_map(|i| (0..40).map(move |j| (i as f32 / 16.5 - 1.2, j as f32 / 16.5 - 1.2)))
            .collect();
        for a in 0..NUM_SHAPES {
            for b in a + 1..NUM_SHAPES {
                let diff = grid
                    .iter()
                    .filter(|&&(u, v)| inside(a, u, v) != inside(b, u, v))
                    .count();
                assert!(diff > 100, "shapes {a} and {b} differ on {diff} points");
            }
        }
    }
}
