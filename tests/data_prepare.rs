//! `delo prepare` on small raw trees in the exact raw layouts.

mod data_util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use data_util::{write, write_image, TempDir};
use delo::data::{
    prepare_food101, prepare_mmimdb, Benchmark, Food101Options, Label, LabelKind, MmImdbOptions,
    Split,
};

const FOOD: [&str; 5] = ["apple_pie", "baklava", "churros", "donuts", "pho"];

/// A Food101 raw tree: `n_train` + `n_test` rows per class, texts with CSV quoting, plus one
/// row whose image is missing.
fn food_tree(raw: &Path, classes: &[String], n_train: usize, n_test: usize) {
    for (split, n) in [("train", n_train), ("test", n_test)] {
        let mut csv = String::new();
        for (ci, c) in classes.iter().enumerate() {
            for k in 0..n {
                let file = format!("{c}_{k}.jpg");
                write_image(
                    &raw.join(format!("images/{split}/{c}/{file}")),
                    8,
                    6,
                    (ci * 100 + k) as u32,
                );
                // Quoted text with a comma and a doubled quote on some rows.
                if k.is_multiple_of(3) {
                    csv.push_str(&format!(
                        "{file},\"{c} recipe, the \"\"best\"\" {k}\",{c}\r\n"
                    ));
                } else {
                    csv.push_str(&format!("{file},simple {c} {k},{c}\n"));
                }
            }
        }
        csv.push_str(&format!("ghost.jpg,no image here,{}\n", classes[0]));
        write(&raw.join(format!("texts/{split}_titles.csv")), &csv);
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn small_food_opts(seed: u64) -> Food101Options {
    Food101Options {
        seed,
        tasks: 2,
        classes_per_task: 2,
    }
}

#[test]
fn food101_counts_classes_tasks_and_links() {
    let raw = TempDir::new("food-raw");
    food_tree(raw.path(), &names(&FOOD), 20, 3);
    let out = TempDir::new("food-out");
    let rep = prepare_food101(raw.path(), out.path(), &small_food_opts(3)).unwrap();
    // 4 kept classes: 20 train rows → 2 val (10%), 18 train; 3 test.
    assert_eq!(rep.split_counts, [4 * 18, 4 * 2, 4 * 3]);
    assert_eq!(rep.dropped_classes.len(), 1);
    assert_eq!(rep.skipped.len(), 2, "{:?}", rep.skipped);
    assert!(rep.skipped.iter().all(|s| s.contains("ghost.jpg")));
    assert_eq!(rep.images_linked + rep.images_copied, rep.num_items);

    let b = Benchmark::load(&rep.json_path).unwrap();
    assert_eq!(b.kind, LabelKind::Single);
    assert_eq!(b.num_classes, 4);
    assert_eq!(b.tasks[0].classes, vec![0, 1]);
    assert_eq!(b.tasks[1].classes, vec![2, 3]);
    let class_names = b.class_names.clone().unwrap();
    assert!(!class_names.contains(&rep.dropped_classes[0]));
    let mut kept: Vec<String> = class_names.clone();
    kept.push(rep.dropped_classes[0].clone());
    kept.sort();
    assert_eq!(kept, names(&FOOD));
    for it in &b.items {
        // Label ↔ class folder, task ↔ label block, and the linked image is the raw one.
        let Label::Single(c) = it.label else { panic!() };
        assert_eq!(it.task, c / 2);
        let folder = it.image.split('/').nth(1).unwrap();
        assert_eq!(folder, class_names[c]);
        let dir = if it.split == Split::Test {
            "test"
        } else {
            "train"
        };
        assert!(it.image.starts_with(dir), "{}", it.image);
        assert_eq!(
            std::fs::read(&it.image_path).unwrap(),
            std::fs::read(raw.join("images").join(&it.image)).unwrap()
        );
    }
    // CSV quoting survives.
    assert!(b
        .items
        .iter()
        .any(|it| it.text.contains("recipe, the \"best\"")));
    // Val and train of a class are disjoint.
    let files = |s: Split| -> BTreeSet<String> {
        b.items
            .iter()
            .filter(|i| i.split == s)
            .map(|i| i.image.clone())
            .collect()
    };
    assert!(files(Split::Train).is_disjoint(&files(Split::Val)));

    // Running again into the same folder works (links are replaced) and gives the same bytes.
    let json = std::fs::read(&rep.json_path).unwrap();
    let rep2 = prepare_food101(raw.path(), out.path(), &small_food_opts(3)).unwrap();
    assert_eq!(json, std::fs::read(rep2.json_path).unwrap());
}

#[test]
fn food101_is_deterministic_for_a_seed() {
    let raw = TempDir::new("food-det-raw");
    food_tree(raw.path(), &names(&FOOD), 20, 2);
    let run = |seed: u64| {
        let out = TempDir::new("food-det-out");
        let rep = prepare_food101(raw.path(), out.path(), &small_food_opts(seed)).unwrap();
        (
            std::fs::read(&rep.json_path).unwrap(),
            std::fs::read(out.join("meta.json")).unwrap(),
        )
    };
    let a = run(11);
    assert_eq!(a, run(11));
    let b = run(12);
    assert_ne!(a.0, b.0);
    assert_ne!(a.1, b.1);
}

#[test]
fn food101_full_size_101_classes_to_10_tasks_of_10() {
    let raw = TempDir::new("food-101-raw");
    let classes: Vec<String> = (0..101).map(|i| format!("dish_{i:03}")).collect();
    food_tree(raw.path(), &classes, 2, 1);
    let out = TempDir::new("food-101-out");
    let rep = prepare_food101(raw.path(), out.path(), &Food101Options::default()).unwrap();
    assert_eq!(rep.dropped_classes.len(), 1);
    let b = Benchmark::load(&rep.json_path).unwrap();
    assert_eq!(b.num_tasks(), 10);
    assert_eq!(b.num_classes, 100);
    for (t, task) in b.tasks.iter().enumerate() {
        assert_eq!(task.classes, (t * 10..t * 10 + 10).collect::<Vec<_>>());
    }
    // The class order is shuffled, not alphabetical.
    let n = b.class_names.unwrap();
    let mut sorted = n.clone();
    sorted.sort();
    assert_ne!(n, sorted);
}

#[test]
fn food101_split_json_sets_val() {
    let raw = TempDir::new("food-split-raw");
    food_tree(raw.path(), &names(&FOOD[..4]), 6, 2);
    let val: Vec<String> = names(&FOOD[..4])
        .iter()
        .map(|c| format!("{c}_5.jpg"))
        .collect();
    write(
        &raw.join("split.json"),
        &serde_json::json!({ "val": val }).to_string(),
    );
    let out = TempDir::new("food-split-out");
    let rep = prepare_food101(raw.path(), out.path(), &small_food_opts(0)).unwrap();
    assert_eq!(rep.split_counts, [4 * 5, 4, 4 * 2]);
    let b = Benchmark::load(&rep.json_path).unwrap();
    for it in b.items.iter().filter(|i| i.split == Split::Val) {
        assert!(it.image.ends_with("_5.jpg"), "{}", it.image);
    }
}

#[test]
fn food101_bad_inputs() {
    let raw = TempDir::new("food-bad-raw");
    food_tree(raw.path(), &names(&FOOD), 4, 1);
    let out = TempDir::new("food-bad-out");
    // Too few classes for the requested tasks.
    let e = prepare_food101(raw.path(), out.path(), &Food101Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 classes") && e.contains("10 tasks"), "{e}");
    // A row with two columns.
    let csv = raw.join("texts/test_titles.csv");
    let mut t = std::fs::read_to_string(&csv).unwrap();
    t.push_str("x.jpg,only two\n");
    write(&csv, &t);
    let e = prepare_food101(raw.path(), out.path(), &small_food_opts(0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_titles.csv") && e.contains("line 7") && e.contains("3 columns"),
        "{e}"
    );
    // A test class with no train rows.
    write_image(&raw.join("images/test/ramen/ramen_0.jpg"), 4, 4, 1);
    write(&csv, "ramen_0.jpg,noodles,ramen\n");
    let e = prepare_food101(raw.path(), out.path(), &small_food_opts(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ramen") && e.contains("no train rows"), "{e}");
    // Missing CSV.
    std::fs::remove_file(&csv).unwrap();
    let e = prepare_food101(raw.path(), out.path(), &small_food_opts(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("test_titles.csv"), "{e}");
    // --out equal to --raw is refused before anything is replaced.
    food_tree(raw.path(), &names(&FOOD), 4, 1);
    let e = prepare_food101(raw.path(), raw.path(), &small_food_opts(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("raw folder"), "{e}");
}

/// 27 genres with known frequencies: genre k is in `COUNTS[k]` movies; "Biography" (k = 19)
/// and "Western" (k = 20) tie at the boundary, so the tie-break by name keeps Biography.
const GENRES: [&str; 27] = [
    "Drama",
    "Comedy",
    "Romance",
    "Thriller",
    "Crime",
    "Action",
    "Adventure",
    "Horror",
    "Documentary",
    "Mystery",
    "Sci-Fi",
    "Fantasy",
    "Family",
    "Animation",
    "War",
    "History",
    "Music",
    "Musical",
    "Sport",
    "Biography",
    "Western",
    "Short",
    "Adult",
    "News",
    "Reality-TV",
    "Talk-Show",
    "Film-Noir",
];

fn count(k: usize) -> usize {
    match k {
        0..=18 => 30 - k,
        19 | 20 => 11,
        _ => 30 - k - 2,
    }
}

/// Movie m has every genre k with `count(k) > m`; split by m mod 5. Movie "0000099" has only a
/// dropped genre; "0000098" has no image; "0000097" has no JSON.
fn imdb_tree(raw: &Path, map_layout: bool) -> BTreeMap<String, Vec<&'static str>> {
    let (img_dir, lbl_dir) = if map_layout {
        (raw.join("images"), raw.join("labels"))
    } else {
        (raw.to_path_buf(), raw.to_path_buf())
    };
    let mut movies = BTreeMap::new();
    let mut split: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for m in 0..30usize {
        let id = format!("{m:07}");
        let genres: Vec<&str> = (0..27)
            .filter(|&k| count(k) > m)
            .map(|k| GENRES[k])
            .collect();
        movies.insert(id.clone(), genres);
        let s = match m % 5 {
            0..=2 => "train",
            3 => "dev",
            _ => "test",
        };
        split.entry(s).or_default().push(id);
    }
    movies.insert("0000099".into(), vec!["Film-Noir"]);
    split.get_mut("train").unwrap().push("0000099".into());
    for (i, (id, genres)) in movies.iter().enumerate() {
        write_image(&img_dir.join(format!("{id}.jpeg")), 6, 6, i as u32);
        let plot = vec![format!("plot of {id}"), "second plot".to_string()];
        write(
            &lbl_dir.join(format!("{id}.json")),
            &serde_json::json!({"plot": plot, "genres": genres, "title": "x"}).to_string(),
        );
    }
    write(
        &lbl_dir.join("0000098.json"),
        r#"{"plot":["p"],"genres":["Drama"]}"#,
    );
    split.get_mut("test").unwrap().push("0000098".into());
    split.get_mut("dev").unwrap().push("0000097".into());
    write(
        &raw.join("split.json"),
        &serde_json::to_string(&split).unwrap(),
    );
    movies
}

#[test]
fn mmimdb_genres_tasks_and_the_multi_label_rule() {
    for map_layout in [false, true] {
        let raw = TempDir::new("imdb-raw");
        let movies = imdb_tree(raw.path(), map_layout);
        let out = TempDir::new("imdb-out");
        let rep = prepare_mmimdb(raw.path(), out.path(), &MmImdbOptions::default()).unwrap();
        let mut dropped_expected: Vec<String> = names(&GENRES[20..]);
        dropped_expected.sort();
        assert_eq!(rep.dropped_classes, dropped_expected);
        assert!(rep.skipped.iter().any(|s| s.starts_with("0000099")));
        assert!(rep.skipped.iter().any(|s| s.starts_with("0000098")));
        assert!(rep.skipped.iter().any(|s| s.starts_with("0000097")));

        let b = Benchmark::load(&rep.json_path).unwrap();
        assert_eq!(b.kind, LabelKind::Multi);
        assert_eq!(b.num_classes, 20);
        assert_eq!(b.num_tasks(), 5);
        let genre_names = b.class_names.clone().unwrap();
        let mut kept = genre_names.clone();
        kept.sort();
        let mut expect = names(&GENRES[..20]);
        expect.sort();
        assert_eq!(kept, expect);
        for (t, task) in b.tasks.iter().enumerate() {
            assert_eq!(task.classes, (4 * t..4 * t + 4).collect::<Vec<_>>());
        }
        // Each movie is an item of exactly the tasks whose genres it has, labelled with those
        // genres only; the loaded text joins the plot list.
        let mut seen: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
        for it in &b.items {
            let id = it.image.trim_end_matches(".jpeg").to_string();
            let Label::Multi(v) = &it.label else { panic!() };
            assert_eq!(v.len(), 20);
            let pos = it.label.positives();
            assert!(pos.iter().all(|&g| g / 4 == it.task), "{id} {pos:?}");
            assert_eq!(it.text, format!("plot of {id}. second plot"));
            assert!(seen.insert((id, it.task), pos).is_none());
        }
        for (id, genres) in &movies {
            if id == "0000099" {
                assert!(!seen.keys().any(|(i, _)| i == id));
                continue;
            }
            for t in 0..5 {
                let expect: Vec<usize> = (4 * t..4 * t + 4)
                    .filter(|&g| genres.contains(&genre_names[g].as_str()))
                    .collect();
                match seen.get(&(id.clone(), t)) {
                    Some(p) => assert_eq!(p, &expect, "{id} task {t}"),
                    None => assert!(expect.is_empty(), "{id} task {t} missing"),
                }
            }
        }
        // dev → val (movie 3 is in "dev").
        let m3 = b.items.iter().find(|i| i.image == "0000003.jpeg").unwrap();
        assert_eq!(m3.split, Split::Val);
    }
}

#[test]
fn mmimdb_is_deterministic_for_a_seed() {
    let raw = TempDir::new("imdb-det-raw");
    imdb_tree(raw.path(), false);
    let run = |seed: u64| {
        let out = TempDir::new("imdb-det-out");
        let opts = MmImdbOptions {
            seed,
            ..Default::default()
        };
        let rep = prepare_mmimdb(raw.path(), out.path(), &opts).unwrap();
        std::fs::read(&rep.json_path).unwrap()
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(a, run(6));
}

#[test]
fn mmimdb_bad_inputs() {
    let raw = TempDir::new("imdb-bad-raw");
    let out = TempDir::new("imdb-bad-out");
    let e = prepare_mmimdb(raw.path(), out.path(), &MmImdbOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("split.json"), "{e}");
    imdb_tree(raw.path(), false);
    write(
        &raw.join("0000005.json"),
        r#"{"plot": ["p"], "genres": "Drama"}"#,
    );
    let e = prepare_mmimdb(raw.path(), out.path(), &MmImdbOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("0000005.json") && e.contains("\"genres\""),
        "{e}"
    );
    write(
        &raw.join("0000005.json"),
        "{\"plot\": [\"p\"],\n \"genres\": [\"Drama\"",
    );
    let e = prepare_mmimdb(raw.path(), out.path(), &MmImdbOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("0000005.json") && e.contains("line 2"), "{e}");
    write(&raw.join("split.json"), r#"{"train": [], "test": []}"#);
    let e = prepare_mmimdb(raw.path(), out.path(), &MmImdbOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"dev\""), "{e}");
}

#[test]
fn food101_unclosed_quote_names_its_line_and_drops_no_row() {
    // Issue case 5: a quote opened on line 2 and never closed on that line.
    let raw = TempDir::new("food-quote-raw");
    food_tree(raw.path(), &names(&FOOD), 4, 1);
    let out = TempDir::new("food-quote-out");
    let csv = raw.join("texts/train_titles.csv");
    let rows: Vec<String> = (0..4)
        .map(|k| format!("apple_pie_{k}.jpg,apple pie {k},apple_pie"))
        .chain((0..4).map(|k| format!("baklava_{k}.jpg,baklava {k},baklava")))
        .collect();
    let others: String = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("apple_pie") && !l.contains("baklava"))
        .map(|l| format!("{l}\n"))
        .collect();
    // Layout 1: the stray quote's field closes at the next quote, on line 5, before text.
    let mut bad = rows.clone();
    bad[1] = "apple_pie_1.jpg,\"apple pie 1,apple_pie".into();
    bad[4] = "baklava_0.jpg,\"baklava\" 0,baklava".into();
    write(&csv, &format!("{}\n{others}", bad.join("\n")));
    let e = prepare_food101(raw.path(), out.path(), &small_food_opts(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train_titles.csv: line 2: "), "{e}");
    // Layout 2: the field closes right before a comma, so three rows (the rest of the
    // apple_pie class) would vanish into one text without a word.
    let mut bad = rows.clone();
    bad[1] = "apple_pie_1.jpg,\"apple pie 1,apple_pie".into();
    bad[3] = "apple_pie_3.jpg,apple pie 3\",apple_pie".into();
    write(&csv, &format!("{}\n{others}", bad.join("\n")));
    let e = prepare_food101(raw.path(), out.path(), &small_food_opts(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train_titles.csv: line 2: "), "{e}");
    assert!(
        e.contains("line 3 (\"apple_pie_2.jpg,apple pie 2,apple_pie\")"),
        "{e}"
    );
    // Closed again, every row is there.
    write(&csv, &format!("{}\n{others}", rows.join("\n")));
    let rep = prepare_food101(raw.path(), out.path(), &small_food_opts(0)).unwrap();
    assert!(
        rep.skipped.iter().all(|s| s.contains("ghost.jpg")),
        "{:?}",
        rep.skipped
    );
}
