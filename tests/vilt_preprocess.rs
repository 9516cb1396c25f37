//! Tokenizer and image pre-processing against transformers / Pillow fixtures
//! (scripts/fixtures/make_preprocess_fixture.py).

mod common;

use std::path::PathBuf;

use delo::data::image::{collate_images, resize_bicubic_pil, ImageProcessor, PixelImage};
use delo::data::tokenizer::{BertTokenizer, BERT_UNCASED_VOCAB};
use image::RgbImage;
use safetensors::{Dtype, SafeTensors};

use common::data_dir;

fn pre(name: &str) -> PathBuf {
    data_dir().join("preprocess").join(name)
}

#[test]
fn embedded_vocab_is_bert_base_uncased() {
    assert_eq!(BERT_UNCASED_VOCAB.lines().count(), 30522);
    let lines: Vec<&str> = BERT_UNCASED_VOCAB.lines().collect();
    assert_eq!(
        (lines[0], lines[100], lines[101], lines[102], lines[103]),
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    );
}

#[test]
fn the_spec_example() {
    let tok =
        BertTokenizer::from_vocab_file(&data_dir().join("bert-base-uncased-vocab.txt")).unwrap();
    assert_eq!(tok.vocab_size(), 30522);
    assert_eq!(
        tok.encode("a bunch of [MASK] laying on a [MASK].", 512)
            .unwrap(),
        vec![101, 1037, 9129, 1997, 103, 10201, 2006, 1037, 103, 1012, 102]
    );
    assert_eq!(tok.encode("", 40).unwrap(), vec![101, 102]);
    assert!(tok.encode("x", 1).is_err());
}

#[test]
fn matches_transformers_on_tricky_texts() {
    let text = std::fs::read_to_string(pre("tokenizer_cases.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 10);
    let tok = BertTokenizer::bert_base_uncased();
    let ids = |v: &serde_json::Value| -> Vec<i32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect()
    };
    for c in &cases {
        let t = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(t, 512).unwrap(), ids(&c["ids"]), "{t:?}");
        assert_eq!(
            tok.encode(t, 12).unwrap(),
            ids(&c["ids_max12"]),
            "{t:?} truncated"
        );
    }
}

#[test]
fn batch_pads_with_zero_and_truncates() {
    let tok = BertTokenizer::bert_base_uncased();
    let b = tok
        .encode_batch(
            &["a bunch of [MASK] laying on a [MASK].", "", "hello world"],
            8,
        )
        .unwrap();
    assert_eq!(b.input_ids.shape(), &[3, 8]);
    assert_eq!(b.lengths, vec![8, 2, 4]);
    let ids = b.input_ids.i32s().unwrap();
    assert_eq!(&ids[0..8], &[101, 1037, 9129, 1997, 103, 10201, 2006, 102]);
    assert_eq!(&ids[8..16], &[101, 102, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&ids[16..24], &[101, 7592, 2088, 102, 0, 0, 0, 0]);
    let m = b.attention_mask.i32s().unwrap();
    assert_eq!(&m[8..16], &[1, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(m.iter().sum::<i32>(), 14);
}

#[test]
fn bucketed_batches_round_their_length_up_within_the_limit() {
    let tok = BertTokenizer::bert_base_uncased();
    let texts = ["hello world", ""];
    // Longest 4 tokens: a multiple of 32 above it, then the limit caps it.
    let b = tok.encode_batch_bucketed(&texts, 40, 32).unwrap();
    assert_eq!(b.input_ids.shape(), &[2, 32]);
    assert_eq!(b.lengths, vec![4, 2]);
    let m = b.attention_mask.i32s().unwrap();
    assert_eq!(m.iter().sum::<i32>(), 6, "padding stays masked");
    assert_eq!(
        &b.input_ids.i32s().unwrap()[..5],
        &[101, 7592, 2088, 102, 0]
    );
    assert_eq!(
        tok.encode_batch_bucketed(&texts, 20, 32)
            .unwrap()
            .input_ids
            .shape(),
        &[2, 20]
    );
    // Bucket 1 is the plain batch.
    let plain = tok.encode_batch(&texts, 40).unwrap();
    let one = tok.encode_batch_bucketed(&texts, 40, 1).unwrap();
    assert_eq!(one.input_ids.shape(), plain.input_ids.shape());
    assert_eq!(
        one.input_ids.i32s().unwrap(),
        plain.input_ids.i32s().unwrap()
    );
}

#[test]
fn model_dir_tokenizer_prefers_tokenizer_json() {
    let dir = std::env::temp_dir().join(format!("delo-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = BertTokenizer::from_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("no tokenizer.json or vocab.txt"), "{e}");
    std::fs::write(dir.join("vocab.txt"), BERT_UNCASED_VOCAB).unwrap();
    let from_vocab = BertTokenizer::from_model_dir(&dir).unwrap();
    // A broken tokenizer.json is used (it takes precedence) and its error names the file.
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    let e = BertTokenizer::from_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let t = "Héllo, WORLD! [MASK]";
    assert_eq!(
        from_vocab.encode(t, 64).unwrap(),
        vec![101, 7592, 1010, 2088, 999, 103, 102]
    );
}

fn u8_tensor(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<u8>) {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), Dtype::U8, "{name}");
    (v.shape().to_vec(), v.data().to_vec())
}

#[test]
fn bicubic_resize_is_bit_exact_with_pillow() {
    let img = image::open(pre("pattern.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (53, 37));
    let bytes = std::fs::read(pre("pil_resize.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert!(names.len() >= 6);
    for name in names {
        let (shape, want) = u8_tensor(&st, name);
        let got = resize_bicubic_pil(&img, shape[1] as u32, shape[0] as u32);
        let diff = got
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} of {} values differ from Pillow",
            want.len()
        );
    }
}

#[test]
fn processor_matches_vilt_image_processor() {
    // ViltImageProcessor(size={"shortest_edge": 64}) on [pattern, its top 53×20 crop].
    let bytes = std::fs::read(pre("vilt_processor.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let proc = ImageProcessor {
        mode: delo::data::image::ResizeMode::ShortestEdge {
            shortest: 64,
            divisor: 32,
        },
    };
    let img = image::open(pre("pattern.png")).unwrap().to_rgb8();
    let crop = image::imageops::crop_imm(&img, 0, 0, 53, 20).to_image();
    let a = proc.load(&pre("pattern.png")).unwrap();
    let b = proc.process(&crop).unwrap();
    assert_eq!((a.height, a.width, b.height, b.width), (64, 64, 32, 96));
    let batch = collate_images(&[&a, &b]).unwrap();
    let pv = st.tensor("pixel_values").unwrap();
    assert_eq!(batch.pixel_values.shape(), pv.shape());
    let want: Vec<f32> = pv
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(batch.pixel_values.f32s().unwrap(), &want[..]);
    let pm = st.tensor("pixel_mask").unwrap();
    let want: Vec<i32> = pm
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(batch.pixel_mask.i32s().unwrap(), &want[..]);
}

#[test]
fn jpeg_decodes_close_to_pillow() {
    let ours = image::open(pre("pattern.jpg")).unwrap().to_rgb8();
    let bytes = std::fs::read(pre("pil_jpeg.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, pil) = u8_tensor(&st, "rgb");
    assert_eq!(shape, vec![37, 53, 3]);
    let max = ours
        .as_raw()
        .iter()
        .zip(&pil)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    eprintln!("JPEG: max difference {max} from Pillow's decoding");
    // Decoders differ in IDCT and chroma up-sampling rounding, not in content.
    assert!(max <= 8, "max difference {max} from Pillow's JPEG decoding");
}

#[test]
fn vilt_sizes_of_common_photos() {
    let p = ImageProcessor::vilt();
    let out = p.process(&RgbImage::new(1920, 1080)).unwrap();
    assert_eq!((out.height, out.width), (352, 608));
    let out = p.process(&RgbImage::new(640, 480)).unwrap();
    assert_eq!((out.height, out.width), (384, 512));
    assert_eq!(out.data.len(), 3 * 384 * 512);
    // Black → −1 after x/255 and (x − 0.5)/0.5.
    assert!(out.data.iter().all(|&x| x == 0));
    assert!(out.normalized().iter().all(|&x| x == -1.0));
    assert!(p.process(&RgbImage::new(4000, 3)).is_err());
}

#[test]
fn batch_padding_and_mask() {
    let a = PixelImage {
        height: 2,
        width: 3,
        data: (0..18).map(|x| x * 10 + 1).collect(),
    };
    let b = PixelImage {
        height: 3,
        width: 1,
        data: vec![0; 9],
    };
    let batch = collate_images(&[&a, &b]).unwrap();
    assert_eq!(batch.pixel_values.shape(), &[2, 3, 3, 3]);
    assert_eq!(batch.pixel_mask.shape(), &[2, 3, 3]);
    let pv = batch.pixel_values.f32s().unwrap();
    // Image 0, channel 1: rows [61 71 81], [91 101 111] normalised, then a zero row.
    let n = delo::data::image::normalized;
    assert_eq!(
        &pv[9..18],
        &[n(61), n(71), n(81), n(91), n(101), n(111), 0.0, 0.0, 0.0]
    );
    // Image 1, channel 0: one real column, zeros to the right.
    assert_eq!(
        &pv[27..36],
        &[-1.0, 0.0, 0.0, -1.0, 0.0, 0.0, -1.0, 0.0, 0.0]
    );
    let m = batch.pixel_mask.i32s().unwrap();
    assert_eq!(&m[0..9], &[1, 1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(&m[9..18], &[1, 0, 0, 1, 0, 0, 1, 0, 0]);
}

#[test]
fn square_mode_missing_image_and_decode_errors() {
    let p = ImageProcessor::square(96);
    let out = p.load(&pre("pattern.jpg")).unwrap();
    assert_eq!((out.height, out.width), (96, 96));
    let white = p.missing();
    assert_eq!((white.height, white.width), (96, 96));
    assert!(white.normalized().iter().all(|&x| x == 1.0));
    // A white image processed for real gives the same values.
    let real = p
        .process(&RgbImage::from_pixel(10, 20, image::Rgb([255; 3])))
        .unwrap();
    assert_eq!(real, white);
    let e = p
        .load(&pre("tokenizer_cases.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer_cases.json") && e.contains("not an image file delo reads"),
        "{e}"
    );
    let e = p.load(&pre("no-such.png")).unwrap_err().to_string();
    assert!(e.contains("no-such.png"), "{e}");
}
