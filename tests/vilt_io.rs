//! Model-directory I/O: init-model round trip, the HF fixture directory, broken directories,
//! and the position-table interpolation against PyTorch vectors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use delo::vilt::{
    expected_shapes, init_weights, load_model_dir, resize_image_positions, stretch_text_positions,
    write_model_dir, InitOptions, ViltConfig, ViltWeights,
};
use safetensors::{Dtype, SafeTensors};

use common::data_dir;

/// A fresh, empty scratch directory unique to this test and process.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("delo-vilt-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn f32s_of(st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let v = st.tensor(name).unwrap();
    assert_eq!(v.dtype(), Dtype::F32, "{name}");
    let data = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (v.shape().to_vec(), data)
}

fn tiny_random(seed: u64) -> (ViltConfig, ViltWeights) {
    let cfg = ViltConfig::tiny();
    let w = init_weights(
        &cfg,
        InitOptions {
            seed,
            randomize_all: true,
        },
    )
    .unwrap();
    (cfg, w)
}

fn assert_same(a: &ViltWeights, b: &ViltWeights) {
    let (na, nb) = (a.named_tensors(), b.named_tensors());
    assert_eq!(na.len(), nb.len());
    for ((n1, t1), (n2, t2)) in na.iter().zip(nb.iter()) {
        assert_eq!(n1, n2);
        assert_eq!(t1.shape(), t2.shape(), "{n1}");
        assert_eq!(t1.f32s().unwrap(), t2.f32s().unwrap(), "{n1}");
    }
}

#[test]
fn init_then_load_gives_the_same_tensors() {
    let dir = scratch("roundtrip");
    let (cfg, w) = tiny_random(11);
    write_model_dir(&dir, &cfg, &w).unwrap();
    let (cfg2, w2) = load_model_dir(&dir).unwrap();
    assert_eq!(cfg, cfg2);
    assert_same(&w, &w2);
    let names: Vec<String> = w.named_tensors().into_iter().map(|(n, _)| n).collect();
    let want: Vec<String> = expected_shapes(&cfg).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, want);
    let vocab = std::fs::read_to_string(dir.join("vocab.txt")).unwrap();
    assert_eq!(vocab.lines().count(), 30522);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_init_model_writes_a_loadable_directory() {
    let dir = scratch("cli");
    let out = dir.join("m");
    let run = |extra: &[&str]| {
        std::process::Command::new(common::delo_exe())
            .args(["init-model", "--preset", "tiny", "--seed", "5", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (cfg, w) = load_model_dir(&out).unwrap();
    assert_eq!(cfg, ViltConfig::tiny());
    let direct = init_weights(
        &cfg,
        InitOptions {
            seed: 5,
            randomize_all: false,
        },
    )
    .unwrap();
    assert_same(&w, &direct);
    let text = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(text.contains("\"model_type\": \"vilt\""), "{text}");
    // A second run refuses to overwrite, and says how to.
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert!(run(&["--force"]).status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loads_the_hf_fixture_directory() {
    // ViltForMaskedLM layout: `vilt.` prefix, mlm_score head, position_ids buffer, a BF16 and
    // an F16 tensor (see scripts/fixtures/make_vilt_fixture.py).
    let dir = data_dir().join("vilt-tiny");
    let (cfg, w) = load_model_dir(&dir).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.patch_size,
            cfg.max_position_embeddings
        ),
        (32, 2, 16, 12)
    );
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, q) = f32s_of(&st, "vilt.encoder.layer.1.attention.attention.query.weight");
    assert_eq!(w.layers[1].attention.query.weight.f32s().unwrap(), &q[..]);
    let bf = st.tensor("vilt.pooler.dense.weight").unwrap();
    assert_eq!(bf.dtype(), Dtype::BF16);
    let want: Vec<f32> = bf
        .data()
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(w.pooler.weight.f32s().unwrap(), &want[..]);
    let f16 = st.tensor("vilt.layernorm.weight").unwrap();
    assert_eq!(f16.dtype(), Dtype::F16);
    let want: Vec<f32> = f16
        .data()
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(w.layernorm.weight.f32s().unwrap(), &want[..]);
    assert_eq!(w.embeddings.patch.weight.shape(), &[32, 3, 16, 16]);
    assert_eq!(w.embeddings.position_embeddings.shape(), &[1, 17, 32]);
}

/// Writes `tensors` as a safetensors file.
fn write_st(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(
                    Dtype::F32,
                    s.clone(),
                    bytemuck::cast_slice(d),
                )
                .unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// The tiny model's tensors as (name, shape, data), with `vilt.` prefixes.
fn prefixed_tensors(w: &ViltWeights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    w.named_tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                format!("vilt.{n}"),
                t.shape().to_vec(),
                t.f32s().unwrap().to_vec(),
            )
        })
        .collect()
}

fn err_of(dir: &Path) -> String {
    load_model_dir(dir).unwrap_err().to_string()
}

#[test]
fn sharded_checkpoint_with_prefix_and_heads() {
    let dir = scratch("sharded");
    let (cfg, w) = tiny_random(3);
    std::fs::write(dir.join("config.json"), cfg.to_json_string()).unwrap();
    let mut all = prefixed_tensors(&w);
    all.push(("mlm_score.decoder.bias".into(), vec![4], vec![0.5; 4]));
    let (a, b) = all.split_at(all.len() / 2);
    write_st(&dir.join("model-00001-of-00002.safetensors"), a);
    write_st(&dir.join("model-00002-of-00002.safetensors"), b);
    let map: HashMap<&str, &str> = a
        .iter()
        .map(|t| (t.0.as_str(), "model-00001-of-00002.safetensors"))
        .chain(
            b.iter()
                .map(|t| (t.0.as_str(), "model-00002-of-00002.safetensors")),
        )
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let (_, w2) = load_model_dir(&dir).unwrap();
    assert_same(&w, &w2);
    // A shard that is gone is named.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_directories_say_what_is_wrong() {
    let (cfg, w) = tiny_random(4);
    let good = prefixed_tensors(&w);

    // No directory / no config.
    let dir = scratch("broken-empty");
    let e = err_of(&dir);
    assert!(e.contains("no config.json"), "{e}");
    // Config but no weights.
    std::fs::write(dir.join("config.json"), cfg.to_json_string()).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("no model.safetensors"), "{e}");
    // Only a PyTorch pickle: the conversion command.
    std::fs::write(dir.join("pytorch_model.bin"), b"not really").unwrap();
    let e = err_of(&dir);
    assert!(e.contains("python -c") && e.contains("save_file"), "{e}");
    assert!(
        e.contains(&format!("{}/pytorch_model.bin", dir.display())),
        "{e}"
    );
    std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();

    // Wrong shape: names the tensor, expected and found.
    let mut t = good.clone();
    let i = t
        .iter()
        .position(|x| x.0 == "vilt.encoder.layer.1.intermediate.dense.weight")
        .unwrap();
    t[i] = (t[i].0.clone(), vec![32, 64], vec![0.0; 32 * 64]);
    write_st(&dir.join("model.safetensors"), &t);
    let e = err_of(&dir);
    assert!(
        e.contains("encoder.layer.1.intermediate.dense.weight")
            && e.contains("[32, 64]")
            && e.contains("expected [64, 32]"),
        "{e}"
    );

    // Missing tensor names itself.
    let t: Vec<_> = good
        .iter()
        .filter(|x| x.0 != "vilt.embeddings.cls_token")
        .cloned()
        .collect();
    write_st(&dir.join("model.safetensors"), &t);
    let e = err_of(&dir);
    assert!(e.contains("missing tensor `embeddings.cls_token`"), "{e}");

    // A layer the config does not know.
    let mut t = good.clone();
    t.push((
        "vilt.encoder.layer.2.output.dense.bias".into(),
        vec![32],
        vec![0.0; 32],
    ));
    write_st(&dir.join("model.safetensors"), &t);
    let e = err_of(&dir);
    assert!(e.contains("encoder.layer.2.output.dense.bias"), "{e}");

    // Truncated file: names the file.
    write_st(&dir.join("model.safetensors"), &good);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
    // Garbage header.
    std::fs::write(dir.join("model.safetensors"), b"\x08\0\0\0\0\0\0\0{garbage").unwrap();
    let e = err_of(&dir);
    assert!(e.contains("model.safetensors"), "{e}");

    // Bad config names the field.
    std::fs::write(dir.join("config.json"), r#"{"hidden_size": 33}"#).unwrap();
    let e = err_of(&dir);
    assert!(
        e.contains("config.json") && e.contains("hidden_size 33"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interpolation_matches_pytorch() {
    let bytes = std::fs::read(data_dir().join("vilt-tiny/interp.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let close = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 + 1e-6 * b.abs(),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    };
    let (shape, table) = f32s_of(&st, "text_table");
    let (p, d) = (shape[0], shape[1]);
    for l in [20usize, 7, 40] {
        let (_, want) = f32s_of(&st, &format!("text_stretch_{l}"));
        close(
            &stretch_text_positions(&table, p, d, l).unwrap(),
            &want,
            &format!("text {l}"),
        );
    }
    let (shape, img) = f32s_of(&st, "image_table");
    let d = shape[1];
    let grid = &img[d..]; // row 0 is the image CLS position
    for (h, w) in [(6, 8), (3, 4), (1, 5), (4, 4), (12, 20)] {
        let (_, want) = f32s_of(&st, &format!("image_resize_{h}x{w}"));
        close(
            &resize_image_positions(grid, 4, 4, d, h, w).unwrap(),
            &want,
            &format!("image {h}x{w}"),
        );
    }
}
