//! "What Pillow reads, delo reads": every image format against Pillow's
//! `Image.open(f).convert("RGB")`, whole and cut short (fixtures and Pillow's answers from
//! scripts/fixtures/make_format_fixture.py, in tests/data/formats/cases.json).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use delo::data::decode::decode_rgb;
use delo::data::image::ImageProcessor;

use common::data_dir;

fn formats_dir() -> PathBuf {
    data_dir().join("formats")
}

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    expected: String,
    width: u32,
    height: u32,
    bytes: usize,
    truncated: BTreeMap<String, String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(formats_dir().join("cases.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 19, "cases.json lists {} files", cases.len());
    cases
}

/// Largest difference per channel value allowed from Pillow's pixels. Every other format
/// (lossy WebP included: VP8 decoding is exact integer arithmetic) must match exactly; JPEG
/// decoders differ in IDCT and chroma up-sampling rounding (libjpeg-turbo against zune-jpeg),
/// never in content: 9 levels at most on these noisy 24×20 patterns.
fn tolerance(file: &str) -> i32 {
    if file.ends_with(".jpg") && !file.starts_with("gif") {
        10
    } else {
        0
    }
}

#[test]
fn every_format_gives_pillows_pixels() {
    let (mut report, mut failed) = (Vec::new(), Vec::new());
    for c in cases() {
        let path = formats_dir().join(&c.file);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), c.bytes, "{}", c.file);
        let ours = match decode_rgb(&bytes, &path) {
            Ok(img) => img,
            Err(e) => {
                failed.push(format!("{}: {e}", c.file));
                continue;
            }
        };
        let want = image::open(formats_dir().join(&c.expected))
            .unwrap()
            .into_rgb8();
        assert_eq!(want.dimensions(), (c.width, c.height), "{}", c.file);
        assert_eq!(ours.dimensions(), want.dimensions(), "{}", c.file);
        let max = ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        report.push(format!("{}: max difference {max}", c.file));
        if max > tolerance(&c.file) {
            failed.push(format!(
                "{}: pixels differ from Pillow's by up to {max}",
                c.file
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_gif_named_jpg_is_read_as_its_first_frame() {
    // Issue case 1: a 96×96 GIF saved as `t.jpg`, read through the model's processor.
    let path = formats_dir().join("gif_named.jpg");
    let img = decode_rgb(&std::fs::read(&path).unwrap(), &path).unwrap();
    assert_eq!(img.dimensions(), (96, 96));
    let want = image::open(formats_dir().join("gif_named.jpg.pillow.png"))
        .unwrap()
        .into_rgb8();
    assert_eq!(img, want);
    let p = ImageProcessor::square(32).load(&path).unwrap();
    assert_eq!((p.height, p.width), (32, 32));
}

#[test]
fn truncated_files_fail_exactly_where_pillow_fails() {
    let (mut checked, mut failed) = (0, Vec::new());
    for c in cases() {
        let path = formats_dir().join(&c.file);
        let bytes = std::fs::read(&path).unwrap();
        for (keep, pillow) in &c.truncated {
            let keep: usize = keep.parse().unwrap();
            let cut = Path::new("images").join(format!("cut-{keep}-{}", c.file));
            let r = decode_rgb(&bytes[..keep], &cut);
            match (pillow.as_str(), r) {
                ("ok", Ok(img)) => assert_eq!(img.dimensions(), (c.width, c.height)),
                ("error", Err(e)) => {
                    let e = e.to_string();
                    assert!(e.starts_with(&cut.display().to_string()), "{e}");
                }
                (p, r) => failed.push(format!(
                    "{} cut to {keep} of {} bytes: Pillow says {p}, delo says {:?}",
                    c.file,
                    bytes.len(),
                    r.map(|i| i.dimensions())
                )),
            }
            checked += 1;
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(checked >= 76);
}

#[test]
fn a_jpeg_cut_to_60_percent_is_an_error_naming_the_file() {
    // Issue case 2: the decoder would fill the missing rows with grey; Pillow raises.
    let bytes = std::fs::read(formats_dir().join("rgb.jpg")).unwrap();
    let cut = &bytes[..bytes.len() * 6 / 10];
    let e = decode_rgb(cut, Path::new("images/t.jpg"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("images/t.jpg: ") && e.contains("truncated"),
        "{e}"
    );
    let e = ImageProcessor::square(32)
        .decode(cut, Path::new("images/t.jpg"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
}

/// A baseline JPEG header (SOI, DQT, SOF0, DHT, SOS) claiming `w × h`, without scan data.
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let bytes = std::fs::read(formats_dir().join("rgb.jpg")).unwrap();
    // Patch the frame header's height and width (SOF0: FF C0, length, precision, H, W).
    let sof = bytes.windows(2).position(|x| x == [0xFF, 0xC0]).unwrap();
    let mut out = bytes.clone();
    out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    out
}

#[test]
fn a_13500_square_jpeg_gets_its_size_and_the_way_out() {
    // Issue case 4: Pillow refuses it too (DecompressionBombError above 178 956 970 pixels);
    // the size is checked from the header, before any pixel memory is taken.
    let e = decode_rgb(&jpeg_header(13_500, 13_500), Path::new("big.jpg"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("big.jpg: the image is 13500×13500"), "{e}");
    assert!(e.contains("178956970") && e.contains("shrink"), "{e}");
}
