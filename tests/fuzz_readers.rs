//! Fuzzing every reader of user files: CMML JSON and meta.json, the Food101 CSV and MM-IMDb
//! JSON files of `delo prepare`, images of
//! every format, safetensors (inputs, weights and task checkpoints), a model directory's
//! config.json and weights, vocab.txt and tokenizer.json, run.json, checkpoints inside a task
//! and results.json.
//!
//! Each reader gets arbitrary bytes and mutations of real files (bytes flipped, cut, inserted,
//! deleted, duplicated; JSON values swapped for odd ones) for a time budget, thousands of
//! cases in all. A reader must never panic (arbtest prints the seed that did, to replay with
//! `ARBTEST_SEED`), and each error must name the file and say what was wrong.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbtest::arbitrary::{self, Unstructured};
use delo::data::prepare::csv;
use delo::data::{decode::decode_rgb, Benchmark, Meta};
use delo::{Result, Tensor};

/// Time each reader is fuzzed for.
const BUDGET: Duration = Duration::from_millis(1500);
/// Largest entropy per case: inputs stay small, so that cases are many.
const SIZE_MAX: u32 = 4096;

/// Reads a file: its path, and its bytes as written there.
type ReadFn = dyn Fn(&Path, &[u8]) -> Result<()>;

/// A reader under test: its file name, real files to mutate, and how it reads `path` once
/// `bytes` are written there (readers of text get the file's text).
struct Reader {
    name: &'static str,
    file: &'static str,
    seeds: Vec<Vec<u8>>,
    read: Box<ReadFn>,
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delo-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Odd JSON values and tokens that mutations splice in.
const TOKENS: &[&[u8]] = &[
    b"null",
    b"-1",
    b"1e999",
    b"0.5",
    b"[]",
    b"{}",
    b"\"\"",
    b"\"x\"",
    b"true",
    b"18446744073709551616",
    b"\"\\ud800\"",
    b",",
    b"\"",
    b"\n",
    b"\xff\xfe",
    b"\x00",
];

/// One input: arbitrary bytes, or a real file mutated one to four times.
fn input(u: &mut Unstructured<'_>, seeds: &[Vec<u8>]) -> arbitrary::Result<Vec<u8>> {
    if seeds.is_empty() || u.ratio(1, 5)? {
        return u.arbitrary();
    }
    let mut b = u.choose(seeds)?.clone();
    for _ in 0..u.int_in_range(1..=4)? {
        let n = b.len();
        let at = u.int_in_range(0..=n)?;
        match u.int_in_range(0..=6)? {
            0 if at < n => b[at] ^= 1 << u.int_in_range(0..=7)?,
            1 if at < n => b[at] = *u.choose(&[0u8, 0xFF, 0x7F, 0x80, b'0', b'"'])?,
            2 => b.truncate(at),
            3 => {
                let extra: Vec<u8> = u.arbitrary()?;
                b.splice(at..at, extra.into_iter().take(64));
            }
            4 => {
                let end = u.int_in_range(at..=n.min(at + 64))?;
                b.drain(at..end);
            }
            5 => {
                let end = u.int_in_range(at..=n.min(at + 64))?;
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => {
                let end = u.int_in_range(at..=n.min(at + 8))?;
                b.splice(at..end, u.choose(TOKENS)?.iter().copied());
            }
        }
    }
    Ok(b)
}

/// Fuzzes one reader; returns the number of cases run.
fn fuzz(reader: &Reader, dir: &Path) -> usize {
    let path = dir.join(reader.file);
    let shown = path.display().to_string();
    let mut cases = 0usize;
    let mut errors = 0usize;
    arbtest::arbtest(|u| {
        let bytes = input(u, &reader.seeds)?;
        std::fs::write(&path, &bytes).unwrap();
        cases += 1;
        if let Err(e) = (reader.read)(&path, &bytes) {
            errors += 1;
            let msg = e.to_string();
            let at = msg.find(&shown).unwrap_or_else(|| {
                panic!("{}: the error does not name {shown}: {msg}", reader.name)
            });
            let rest = msg[at + shown.len()..].trim_start_matches([':', ' ']);
            assert!(
                rest.len() >= 12,
                "{}: the error does not say what was expected: {msg}",
                reader.name
            );
        }
        Ok(())
    })
    .budget(BUDGET)
    .size_max(SIZE_MAX)
    .run();
    eprintln!("{}: {cases} cases, {errors} errors", reader.name);
    assert!(errors > 0, "{}: no case was rejected", reader.name);
    cases
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A minimal WordPiece tokenizer.json.
const TOKENIZER_JSON: &[u8] =
    br###"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
 "normalizer": null, "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": null,
 "decoder": null, "model": {"type": "WordPiece", "unk_token": "[UNK]",
 "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
 "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4}}}"###;

/// A raw MM-IMDb tree of three movies (one per split, all dramas) under `dir/imdb`.
fn imdb_tree(dir: &Path) -> PathBuf {
    let raw = dir.join("imdb");
    std::fs::create_dir_all(&raw).unwrap();
    std::fs::write(
        raw.join("split.json"),
        br#"{"train": ["1"], "dev": ["2"], "test": [3]}"#,
    )
    .unwrap();
    for id in 1..=3 {
        std::fs::write(
            raw.join(format!("{id}.json")),
            format!(r#"{{"plot": ["a plot {id}", "more"], "genres": ["Drama"], "title": "x"}}"#),
        )
        .unwrap();
        image::RgbImage::new(8, 6)
            .save(raw.join(format!("{id}.jpeg")))
            .unwrap();
    }
    raw
}

/// `delo prepare mmimdb` on the tree holding `file`. An error about `file` goes to the
/// checks of [`fuzz`]; an error about the dataset as a whole (too few genres once a movie lost
/// its genre, say) is not a reading error, and must name the raw folder.
fn prepare_imdb(file: &Path) -> Result<()> {
    let raw = file.parent().unwrap();
    let out = raw.with_file_name("imdb-out");
    let opts = delo::data::MmImdbOptions {
        seed: 0,
        tasks: 1,
        genres_per_task: 1,
    };
    match delo::data::prepare_mmimdb(raw, &out, &opts) {
        Err(e) if !e.to_string().contains(&file.display().to_string()) => {
            let msg = e.to_string();
            assert!(msg.contains(&raw.display().to_string()), "{msg}");
            Ok(())
        }
        r => r.map(drop),
    }
}

/// A checkpoint inside a task, as the trainer writes it.
fn step_checkpoint_seed(dir: &Path) -> Vec<u8> {
    use delo::train::step_checkpoint::{save, StepCheckpoint, StepState};
    let run = dir.join("seed-run");
    let cp = StepCheckpoint {
        file: PathBuf::new(),
        state: StepState {
            step: 2,
            ..StepState::start(0)
        },
        params: delo::params::ParamSnapshot {
            values: vec![0.5, -1.0, 2.0],
            m: vec![0.1, 0.2, 0.3],
            v: vec![0.01, 0.02, 0.03],
            step: 2,
        },
        keys: vec![Some(Tensor::from_f32(vec![1.0, 0.0], &[2]).unwrap())],
    };
    let (path, _) = save(&run, &cp).unwrap();
    std::fs::read(path).unwrap()
}

fn small_safetensors(dir: &Path) -> Vec<u8> {
    let p = dir.join("seed.safetensors");
    delo::st::write_file(
        &p,
        &[
            (
                "input_ids".into(),
                Tensor::from_i32(vec![101, 2023, 102, 0], &[1, 4]).unwrap(),
            ),
            (
                "w".into(),
                Tensor::from_f32(vec![0.5, -1.0, 2.0], &[3]).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    std::fs::read(p).unwrap()
}

fn readers(dir: &Path) -> Vec<Reader> {
    let data = common::data_dir();
    let tiny = data.join("vilt-tiny");
    let formats: Vec<Vec<u8>> = std::fs::read_dir(data.join("formats"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".json"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let bench =
        br#"[{"task_id": 0, "split": "train", "image": "a.jpg", "text": "a cake", "label": 0},
 {"task_id": 0, "split": "val", "image": "b.jpg", "text": ["a", "pie"], "label": 1},
 {"task_id": 0, "split": "test", "image": "c.jpg", "text": "", "label": 1},
 {"task_id": 1, "split": "train", "image": "d.jpg", "text": "soup", "label": 2},
 {"task_id": 1, "split": "val", "image": "e.jpg", "text": "soup", "label": 2},
 {"task_id": 1, "split": "test", "image": "f.jpg", "text": "soup", "label": 3}]"#;
    let multi =
        br#"[{"task_id": 0, "split": "train", "image": "a.jpg", "text": "x", "label": [1, 0]},
 {"task_id": 0, "split": "val", "image": "a.jpg", "text": "x", "label": [0, 1]},
 {"task_id": 0, "split": "test", "image": "a.jpg", "text": "x", "label": [1, 1]}]"#;
    let meta =
        br#"{"name": "demo", "kind": "single", "class_names": ["cake", "pie", "soup", "tea"]}"#;
    let csv_seed = b"a.jpg,plain text,apple_pie\r\nb.jpg,\"with, comma \"\"q\"\"\",pho\nc.jpg,\"two\nlines\",x\n";
    let spec = delo::train::RunSpec {
        data: "data".into(),
        model: "model".into(),
        settings: delo::train::TrainSettings::default(),
        resumes: Vec::new(),
    };
    let mut results = delo::report::Results::new(
        delo::report::Metric::Accuracy,
        2,
        serde_json::json!({"seed": 1}),
    );
    results
        .set_entry(delo::data::Split::Test, 0, 0, 50.0, 100.0)
        .unwrap();
    results
        .set_no_samples(delo::data::Split::Val, 0, 0)
        .unwrap();
    let config = std::fs::read(tiny.join("config.json")).unwrap();
    let weights = std::fs::read(tiny.join("model.safetensors")).unwrap();
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), &config).unwrap();

    let imdb = imdb_tree(dir);
    let movie = std::fs::read(imdb.join("1.json")).unwrap();
    let split = std::fs::read(imdb.join("split.json")).unwrap();

    vec![
        Reader {
            name: "MM-IMDb movie JSON (delo prepare)",
            file: "imdb/1.json",
            seeds: vec![movie],
            read: Box::new(|p, _| prepare_imdb(p)),
        },
        Reader {
            name: "MM-IMDb split.json (delo prepare)",
            file: "imdb/split.json",
            seeds: vec![split],
            read: Box::new(|p, _| prepare_imdb(p)),
        },
        Reader {
            name: "CMML benchmark JSON",
            file: "bench.json",
            seeds: vec![bench.to_vec(), multi.to_vec()],
            read: Box::new(|p, b| Benchmark::parse(&text(b), p, None).map(drop)),
        },
        Reader {
            name: "CMML benchmark file (bytes, not only text)",
            file: "UPMC-Food101-CMML.json",
            seeds: vec![bench.to_vec()],
            read: Box::new(|p, _| Benchmark::load(p).map(drop)),
        },
        Reader {
            name: "meta.json",
            file: "meta.json",
            seeds: vec![meta.to_vec()],
            read: Box::new(|p, b| Meta::parse(&text(b), p).map(drop)),
        },
        Reader {
            name: "Food101 titles CSV",
            file: "train_titles.csv",
            seeds: vec![csv_seed.to_vec()],
            read: Box::new(|p, b| csv::parse(&text(b), p, Some(3)).map(drop)),
        },
        Reader {
            name: "image decoding",
            file: "t.jpg",
            seeds: formats,
            read: Box::new(|p, b| decode_rgb(b, p).map(drop)),
        },
        Reader {
            name: "safetensors file",
            file: "inputs.safetensors",
            seeds: vec![small_safetensors(dir)],
            read: Box::new(|p, _| delo::st::read_file(p).map(drop)),
        },
        Reader {
            name: "model directory weights",
            file: "model/model.safetensors",
            seeds: vec![weights],
            read: Box::new(|p, _| delo::vilt::load_model_dir(p.parent().unwrap()).map(drop)),
        },
        Reader {
            name: "config.json",
            file: "config.json",
            seeds: vec![config],
            read: Box::new(|p, _| delo::vilt::ViltConfig::from_file(p).map(drop)),
        },
        Reader {
            name: "vocab.txt",
            file: "vocab.txt",
            seeds: vec![std::fs::read(tiny.join("vocab.txt")).unwrap()],
            read: Box::new(|p, _| {
                delo::data::tokenizer::BertTokenizer::from_vocab_file(p).map(drop)
            }),
        },
        Reader {
            name: "tokenizer.json",
            file: "tokenizer.json",
            seeds: vec![TOKENIZER_JSON.to_vec()],
            read: Box::new(|p, _| {
                delo::data::tokenizer::BertTokenizer::from_tokenizer_json(p).map(drop)
            }),
        },
        Reader {
            name: "run.json (checkpoint)",
            file: "run/run.json",
            seeds: vec![serde_json::to_vec_pretty(&spec).unwrap()],
            read: Box::new(|p, _| delo::train::checkpoint::read_run(p.parent().unwrap()).map(drop)),
        },
        Reader {
            name: "task checkpoint",
            file: "run/task0.safetensors",
            seeds: vec![small_safetensors(dir)],
            read: Box::new(|p, _| delo::st::read_file(p).map(drop)),
        },
        Reader {
            name: "step checkpoint",
            file: "run/task0-step00000002.safetensors",
            seeds: vec![step_checkpoint_seed(dir)],
            read: Box::new(|p, _| delo::train::step_checkpoint::load(p).map(drop)),
        },
        Reader {
            name: "results.json",
            file: "results.json",
            seeds: vec![serde_json::to_vec_pretty(&results).unwrap()],
            read: Box::new(|p, _| delo::report::Results::load(p).map(drop)),
        },
    ]
}

#[test]
fn no_reader_panics_and_every_error_names_its_file() {
    let dir = scratch("readers");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let mut total = 0;
    for r in readers(&dir) {
        let cases = fuzz(&r, &dir);
        assert!(cases >= 100, "{}: only {cases} cases ran", r.name);
        total += cases;
    }
    eprintln!("{total} cases in all");
    assert!(total >= 5000, "only {total} cases ran");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tokenizer_json_that_panics_the_tokenizers_crate_is_an_error() {
    // Found by the fuzzing above: a syntax error inside `decoder` hits an `expect` in the
    // tokenizers crate's deserialiser; delo checks the JSON first and says where it breaks.
    let dir = scratch("tokenizer-panic");
    let path = dir.join("tokenizer.json");
    let text = String::from_utf8(TOKENIZER_JSON.to_vec()).unwrap();
    std::fs::write(&path, text.replace("\"decoder\": null", "\"decoder\": ]")).unwrap();
    let e = delo::data::tokenizer::BertTokenizer::from_tokenizer_json(&path)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}: invalid JSON at line 3", path.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
