//! The prefetching loader: order independent of threads, missing modalities, labels, cache,
//! bad images.

mod data_util;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use data_util::TempDir;
use delo::data::{
    synth, BasicPrep, BasicPrepBatch, Batch, Benchmark, Item, Loader, LoaderConfig, LoaderItem,
    MissingSpec, MissingType, SamplePrep, Split, SynthConfig,
};
use delo::Result;

fn bench(dir: &TempDir) -> Benchmark {
    let cfg = SynthConfig {
        tasks: 2,
        classes_per_task: 3,
        per_class: 7,
        val_per_class: 2,
        test_per_class: 2,
        image_size: 16,
        seed: 4,
    };
    let rep = synth(dir.path(), &cfg).unwrap();
    Benchmark::load(rep.json_path).unwrap()
}

fn cfg(threads: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        shuffle: true,
        seed: 17,
        threads,
        prefetch: 2,
        ..Default::default()
    }
}

fn prep() -> Arc<BasicPrep> {
    Arc::new(BasicPrep { size: 8 })
}

fn collect(loader: &Loader<BasicPrep>, epoch: u64) -> Vec<Batch<BasicPrepBatch>> {
    loader.epoch(epoch).map(|b| b.unwrap()).collect()
}

/// Everything about a batch that must match between runs.
fn key(b: &Batch<BasicPrepBatch>) -> (usize, Vec<usize>, Vec<MissingType>, BasicPrepBatch) {
    (
        b.number,
        b.samples.iter().map(|s| s.index).collect(),
        b.missing(),
        b.data.clone(),
    )
}

#[test]
fn an_epoch_started_at_a_batch_is_the_rest_of_the_whole_epoch() {
    let dir = TempDir::new("loader-from");
    let b = bench(&dir);
    let spec: MissingSpec = "both:0.5".parse().unwrap();
    for threads in [0, 1, 3] {
        let l =
            Loader::from_benchmark(&b, 1, Split::Train, &spec, 3, prep(), cfg(threads)).unwrap();
        let whole: Vec<_> = collect(&l, 2).iter().map(key).collect();
        for first in [0, 1, 4, whole.len(), whole.len() + 3] {
            let rest: Vec<_> = l.epoch_from(2, first).map(|b| key(&b.unwrap())).collect();
            assert_eq!(
                rest,
                whole[first.min(whole.len())..],
                "{threads} threads, from batch {first}"
            );
        }
    }
}

#[test]
fn batches_do_not_depend_on_the_thread_count() {
    let dir = TempDir::new("loader-threads");
    let b = bench(&dir);
    let spec: MissingSpec = "both:0.5".parse().unwrap();
    let make = |threads| {
        Loader::from_benchmark(&b, 1, Split::Train, &spec, 3, prep(), cfg(threads)).unwrap()
    };
    let (l0, l1, l3) = (make(0), make(1), make(3));
    for epoch in 0..3 {
        let a: Vec<_> = collect(&l1, epoch).iter().map(key).collect();
        let c: Vec<_> = collect(&l3, epoch).iter().map(key).collect();
        let z: Vec<_> = collect(&l0, epoch).iter().map(key).collect();
        assert_eq!(a.len(), 21usize.div_ceil(4));
        assert_eq!(a, c, "epoch {epoch}: 1 vs 3 threads");
        assert_eq!(a, z, "epoch {epoch}: 1 thread vs inline");
    }
    // Epochs differ, and every item appears exactly once per epoch.
    let e0: Vec<usize> = collect(&l3, 0)
        .iter()
        .flat_map(|b| b.samples.iter().map(|s| s.index))
        .collect();
    let e1: Vec<usize> = collect(&l3, 1)
        .iter()
        .flat_map(|b| b.samples.iter().map(|s| s.index))
        .collect();
    assert_ne!(e0, e1);
    let all: BTreeSet<usize> = b.split_indices(1, Split::Train).iter().copied().collect();
    assert_eq!(e0.len(), all.len());
    assert_eq!(e0.iter().copied().collect::<BTreeSet<_>>(), all);
    // Another seed gives another order.
    let other = Loader::from_benchmark(
        &b,
        1,
        Split::Train,
        &spec,
        3,
        prep(),
        LoaderConfig { seed: 18, ..cfg(2) },
    )
    .unwrap();
    assert_ne!(other.batch_positions(0), l3.batch_positions(0));
}

#[test]
fn unshuffled_order_drop_last_and_labels() {
    let dir = TempDir::new("loader-order");
    let b = bench(&dir);
    let c = LoaderConfig {
        shuffle: false,
        drop_last: true,
        batch_size: 5,
        ..cfg(2)
    };
    let l = Loader::from_benchmark(&b, 1, Split::Train, &MissingSpec::NONE, 0, prep(), c).unwrap();
    assert_eq!(l.num_batches(), 4);
    let batches = collect(&l, 0);
    assert_eq!(batches.len(), 4);
    let idx: Vec<usize> = batches
        .iter()
        .flat_map(|x| x.samples.iter().map(|s| s.index))
        .collect();
    assert_eq!(idx, b.split_indices(1, Split::Train)[..20].to_vec());
    for batch in &batches {
        assert_eq!(batch.data.pixels.len(), batch.len() * 3 * 64);
        for s in &batch.samples {
            let it = &b.items[s.index];
            assert_eq!(s.label, it.label);
            assert_eq!(s.local_label, b.local_label(it));
            assert_eq!(s.task, 1);
            assert_eq!(s.text, it.text);
            assert_eq!(s.missing, MissingType::None);
        }
    }
    // Local labels of task 1 run over 0..3 although the global ones are 3..6.
    let locals: BTreeSet<String> = batches
        .iter()
        .flat_map(|x| x.samples.iter().map(|s| format!("{:?}", s.local_label)))
        .collect();
    assert_eq!(locals.len(), 3);
    assert!(locals.contains("Single(0)") && locals.contains("Single(2)"));
}

#[test]
fn missing_modalities_reach_the_samples() {
    let dir = TempDir::new("loader-missing");
    let b = bench(&dir);
    let spec: MissingSpec = "both:1.0".parse().unwrap();
    let l = Loader::from_benchmark(&b, 0, Split::Train, &spec, 8, prep(), cfg(2)).unwrap();
    let table = b.missing_table(0, Split::Train, &spec, 8);
    let (mut n_img, mut n_txt) = (0, 0);
    for batch in collect(&l, 0) {
        let plane = 3 * 64;
        for (k, s) in batch.samples.iter().enumerate() {
            assert_eq!(s.missing, table[s.position]);
            let px = &batch.data.pixels[k * plane..(k + 1) * plane];
            match s.missing {
                MissingType::Image => {
                    n_img += 1;
                    assert!(px.iter().all(|&v| v == 1.0));
                    assert_eq!(s.text, b.items[s.index].text);
                    assert!(!s.text.is_empty());
                }
                MissingType::Text => {
                    n_txt += 1;
                    assert_eq!(s.text, "");
                    assert_eq!(batch.data.texts[k], "");
                    assert!(px.iter().any(|&v| v < 0.9));
                }
                MissingType::None => panic!("η = 1 leaves no complete sample"),
            }
        }
    }
    assert_eq!((n_img, n_txt), (10, 11));
}

/// Writes a two-split benchmark of `n` images into `dir`, returning its items.
fn jpeg_items(dir: &TempDir, n: usize) -> Vec<LoaderItem> {
    let b = bench(dir);
    b.split_items(0, Split::Train)
        .take(n)
        .map(|it| LoaderItem {
            item: it.clone(),
            local_label: b.local_label(it),
            missing: MissingType::None,
        })
        .collect()
}

#[test]
fn bad_images_fail_clearly_or_are_skipped() {
    let dir = TempDir::new("loader-bad");
    let items = jpeg_items(&dir, 10);
    let corrupt = items[3].item.image_path.clone();
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
    // A JPEG (by its magic bytes) whose data is garbage.
    let bad_jpeg = items[5].item.image_path.clone();
    let mut bytes = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00".to_vec();
    bytes.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    std::fs::write(&bad_jpeg, bytes).unwrap();
    let gone = items[7].item.image_path.clone();
    std::fs::remove_file(&gone).unwrap();
    let c = LoaderConfig {
        shuffle: false,
        batch_size: 3,
        ..cfg(2)
    };

    let l = Loader::new(items.clone(), prep(), c.clone()).unwrap();
    let mut it = l.epoch(0);
    assert!(it.next().unwrap().is_ok());
    let e = it.next().unwrap().unwrap_err().to_string();
    assert!(e.contains(&corrupt.display().to_string()), "{e}");
    assert!(e.contains(&format!("item {}", items[3].item.index)), "{e}");
    assert!(it.next().is_none(), "the epoch stops at the first error");

    let l = Loader::new(
        items.clone(),
        prep(),
        LoaderConfig {
            skip_bad: true,
            ..c.clone()
        },
    )
    .unwrap();
    let mut it = l.epoch(0);
    let batches: Vec<_> = it.by_ref().map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 7);
    let skipped: Vec<_> = it.skipped().to_vec();
    assert_eq!(skipped.len(), 3);
    assert_eq!(skipped[0].path, corrupt);
    assert_eq!(skipped[1].path, bad_jpeg);
    assert_eq!(skipped[2].path, gone);
    for s in &skipped {
        assert!(
            s.error.contains(&s.path.display().to_string()),
            "{}",
            s.error
        );
    }
    // Garbage after the JPEG magic never reaches an end-of-image marker: what Pillow calls
    // a truncated file.
    assert!(
        skipped[1].error.contains("truncated"),
        "{}",
        skipped[1].error
    );
    assert_eq!(batches[1].skipped.len(), 2);
    assert_eq!(batches[2].skipped.len(), 1);

    // A missing file that is marked image-missing is never read.
    let mut items2 = items.clone();
    for k in [3, 5, 7] {
        items2[k].missing = MissingType::Image;
    }
    let l = Loader::new(items2, prep(), c).unwrap();
    assert_eq!(collect(&l, 0).iter().map(|b| b.len()).sum::<usize>(), 10);
}

#[test]
fn a_wholly_skipped_batch_passes_its_report_on() {
    let dir = TempDir::new("loader-allbad");
    let items = jpeg_items(&dir, 4);
    for it in &items[..2] {
        std::fs::remove_file(&it.item.image_path).unwrap();
    }
    let c = LoaderConfig {
        shuffle: false,
        batch_size: 2,
        skip_bad: true,
        ..cfg(3)
    };
    let l = Loader::new(items, prep(), c).unwrap();
    let batches = collect(&l, 0);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].number, 1);
    assert_eq!(batches[0].skipped.len(), 2);
}

#[test]
fn image_cache_serves_later_epochs() {
    let dir = TempDir::new("loader-cache");
    let items = jpeg_items(&dir, 9);
    let c = LoaderConfig {
        cache_images: true,
        ..cfg(2)
    };
    let l = Loader::new(items.clone(), prep(), c.clone()).unwrap();
    let first: Vec<_> = collect(&l, 0).iter().map(key).collect();
    for it in &items {
        std::fs::remove_file(&it.item.image_path).unwrap();
    }
    let again: Vec<_> = collect(&l, 0).iter().map(key).collect();
    assert_eq!(first, again);
    assert_eq!(collect(&l, 1).len(), 3);
    // Without the cache the deleted files are an error.
    let l = Loader::new(
        items,
        prep(),
        LoaderConfig {
            cache_images: false,
            ..c
        },
    )
    .unwrap();
    assert!(l.epoch(0).next().unwrap().is_err());
}

#[test]
fn empty_input_and_zero_batch_are_errors() {
    let e = Loader::new(Vec::new(), prep(), cfg(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no items"), "{e}");
    let dir = TempDir::new("loader-empty");
    let items = jpeg_items(&dir, 2);
    let e = Loader::new(
        items,
        prep(),
        LoaderConfig {
            batch_size: 0,
            ..cfg(1)
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("batch size"), "{e}");
}

/// A prep that panics on one item, and sleeps to keep workers busy.
struct Flaky;

impl SamplePrep for Flaky {
    type Image = usize;
    type Batch = Vec<usize>;
    fn image(&self, item: &Item) -> Result<usize> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        if item.index == 5 {
            panic!("flaky prep cannot handle item 5");
        }
        Ok(item.index)
    }
    fn missing_image(&self) -> Result<usize> {
        Ok(usize::MAX)
    }
    fn collate(&self, images: &[&usize], _texts: &[&str]) -> Result<Vec<usize>> {
        Ok(images.iter().map(|&&i| i).collect())
    }
}

#[test]
fn a_panicking_prep_is_reported_and_early_drop_stops_workers() {
    let dir = TempDir::new("loader-panic");
    let b = bench(&dir);
    let items: Vec<LoaderItem> = b
        .items
        .iter()
        .map(|it| LoaderItem {
            item: it.clone(),
            local_label: b.local_label(it),
            missing: MissingType::None,
        })
        .collect();
    let c = LoaderConfig {
        shuffle: false,
        batch_size: 2,
        prefetch: 1,
        ..cfg(3)
    };
    let l = Loader::new(items, Arc::new(Flaky), c).unwrap();
    let results: Vec<_> = l.epoch(0).collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().data, vec![0, 1]);
    let e = results[2].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("batch 2") && e.contains("flaky prep cannot handle item 5"),
        "{e}"
    );
    // Taking one batch of a long epoch and dropping the rest returns promptly.
    let mut it = l.epoch(1);
    assert!(it.next().unwrap().is_ok());
    drop(it);
}

#[test]
fn basic_prep_resizes_and_normalises() {
    let dir = TempDir::new("loader-basic");
    let p = dir.join("im.png");
    image::RgbImage::from_pixel(5, 3, image::Rgb([255, 0, 51]))
        .save(&p)
        .unwrap();
    let item = Item {
        index: 0,
        task: 0,
        split: Split::Train,
        image: "im.png".into(),
        image_path: p,
        text: String::new(),
        label: delo::data::Label::Single(0),
    };
    let px = BasicPrep { size: 4 }.image(&item).unwrap();
    assert_eq!(px.len(), 48);
    assert!(px[..16].iter().all(|&v| (v - 1.0).abs() < 1e-6));
    assert!(px[16..32].iter().all(|&v| (v + 1.0).abs() < 1e-6));
    assert!(px[32..]
        .iter()
        .all(|&v| (v - (51.0 / 127.5 - 1.0)).abs() < 1e-6));
    let e = BasicPrep { size: 4 }
        .image(&Item {
            image_path: Path::new("/nonexistent/x.jpg").into(),
            ..item
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.jpg"), "{e}");
}
