//! `delo forward` on raw images and texts: the pre-processed inputs it dumps are the training
//! pre-processing's (a white image for a missing image, `[CLS] [SEP]` for a missing text), and
//! `delo forward --inputs` on them gives the same outputs, bit for bit.

mod common;

use std::path::Path;

use delo::data::Benchmark;

use common::run_delo as delo;

fn ok(out: std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bits(path: &Path) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    delo::st::read_file(path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let v = t
                .to_vec_f32()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (n, t.shape().to_vec(), v)
        })
        .collect()
}

#[test]
fn raw_forward_equals_forward_on_the_dumped_inputs() {
    let (root, data, model) = common::synthetic_setup("forward-raw");
    let bench = Benchmark::load(&data).unwrap();
    let its = &bench.items[..4];
    // Item 1 lacks its image, item 2 its text.
    let images: Vec<String> = its
        .iter()
        .enumerate()
        .map(|(i, it)| {
            if i == 1 {
                String::new()
            } else {
                format!("data/images/{}", it.image)
            }
        })
        .collect();
    let texts: Vec<&str> = its
        .iter()
        .enumerate()
        .map(|(i, it)| if i == 2 { "" } else { it.text.as_str() })
        .collect();
    let (im_list, tx_list) = (root.join("images.txt"), root.join("texts.txt"));
    std::fs::write(&im_list, images.join("\n") + "\n").unwrap();
    std::fs::write(&tx_list, texts.join("\n") + "\n").unwrap();
    let (dump, raw_out, st_out) = (root.join("in.st"), root.join("raw.st"), root.join("st.st"));
    ok(delo(
        &["forward", "--image-size", "96"],
        &[
            ("--model", &model),
            ("--images", &im_list),
            ("--texts", &tx_list),
            ("--dump-inputs", &dump),
            ("--output", &raw_out),
        ],
    ));
    ok(delo(
        &["forward"],
        &[
            ("--model", &model),
            ("--inputs", &dump),
            ("--output", &st_out),
        ],
    ));
    let raw = bits(&raw_out);
    assert_eq!(raw, bits(&st_out), "raw and dumped-input forwards differ");
    let names: Vec<&str> = raw.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, ["last_hidden_state", "pooler_output"]);
    assert_eq!(raw[1].1[0], 4);

    // The dumped inputs: HF names and dtypes, training's stand-ins for missing modalities.
    let inputs = delo::st::read_file(&dump).unwrap();
    let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "attention_mask",
            "input_ids",
            "pixel_mask",
            "pixel_values",
            "token_type_ids"
        ]
    );
    for n in [
        "attention_mask",
        "input_ids",
        "pixel_mask",
        "token_type_ids",
    ] {
        assert_eq!(inputs[n].dtype(), delo::DType::I32, "{n}");
    }
    let px = &inputs["pixel_values"];
    assert_eq!(px.shape(), [4, 3, 96, 96]);
    let px = px.to_vec_f32().unwrap();
    let plane = 3 * 96 * 96;
    assert!(
        px[plane..2 * plane].iter().all(|&v| v == 1.0),
        "white stand-in image"
    );
    assert!(px[..plane].iter().any(|&v| v != 1.0));
    let ids = inputs["input_ids"].to_vec_i32().unwrap();
    let t = inputs["input_ids"].shape()[1];
    assert_eq!(
        &ids[2 * t..2 * t + 3],
        [101, 102, 0],
        "[CLS] [SEP] [PAD] for a missing text"
    );
    assert!(ids[..t].iter().filter(|&&i| i != 0).count() > 3);
    assert!(inputs["token_type_ids"]
        .to_vec_i32()
        .unwrap()
        .iter()
        .all(|&v| v == 0));
    let mask = inputs["attention_mask"].to_vec_i32().unwrap();
    assert_eq!(&mask[2 * t..2 * t + 3], [1, 1, 0]);

    // The same items as a CMML JSON (--items) give the same outputs.
    let json = root.join("items.json");
    let list: Vec<serde_json::Value> = images
        .iter()
        .zip(&texts)
        .map(|(i, t)| serde_json::json!({"image": i, "text": t}))
        .collect();
    std::fs::write(&json, serde_json::to_string(&list).unwrap()).unwrap();
    let json_out = root.join("json.st");
    ok(delo(
        &["forward", "--image-size", "96"],
        &[
            ("--model", &model),
            ("--items", &json),
            ("--output", &json_out),
        ],
    ));
    assert_eq!(bits(&json_out), raw);

    // Text only (no image list): every image is the white stand-in; an empty line there
    // would be an item with nothing.
    let err = String::from_utf8_lossy(
        &delo(
            &["forward"],
            &[
                ("--model", &model),
                ("--texts", &tx_list),
                ("--output", &json_out),
            ],
        )
        .stderr,
    )
    .into_owned();
    assert!(
        err.contains("texts.txt: item 2: neither an image nor a text"),
        "{err}"
    );
    let tx_list = root.join("texts-all.txt");
    std::fs::write(&tx_list, "first\nsecond\n").unwrap();
    let text_only = root.join("text-only.st");
    let dump2 = root.join("in2.st");
    ok(delo(
        &["forward", "--image-size", "96"],
        &[
            ("--model", &model),
            ("--texts", &tx_list),
            ("--dump-inputs", &dump2),
            ("--output", &text_only),
        ],
    ));
    let px = delo::st::read_file(&dump2).unwrap()["pixel_values"]
        .to_vec_f32()
        .unwrap();
    assert!(px.iter().all(|&v| v == 1.0));

    // Lists of different lengths, and no input at all, are refused with a reason.
    let short = root.join("short.txt");
    std::fs::write(&short, "one text\n").unwrap();
    let out = delo(
        &["forward"],
        &[
            ("--model", &model),
            ("--images", &im_list),
            ("--texts", &short),
            ("--output", &json_out),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("1 texts for 4 images"),
        "{err}"
    );
    let out = delo(
        &["forward"],
        &[("--model", &model), ("--output", &json_out)],
    );
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&root);
}
