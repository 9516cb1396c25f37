//! Golden test: the ViLT forward against Hugging Face `ViltModel` (fixtures made by
//! `scripts/fixtures/make_vilt_fixture.py`): padded images of different sizes with padded
//! text, text longer than the position table (stretched first), and a bigger image grid.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::assert_close;
use delo::autograd::Tape;
use delo::vilt::{load_model_dir, NoAdapter, Vilt, ViltInputs};
use delo::{DType, Device, Tensor};

/// HF computes in f32 too; 1e-4 absolute plus relative bounds the difference of two f32
/// summation orders over a 2-layer model.
const TOL: f32 = 1e-4;

/// The tiny model, the fixture's inputs and the whole fixture of one case.
fn load_case(name: &str) -> (Vilt, ViltInputs, BTreeMap<String, Tensor>) {
    let dir = common::data_dir().join("vilt-tiny");
    let case = delo::st::read_file(&dir.join(format!("case_{name}.safetensors"))).unwrap();
    let max_text_len = case
        .get("max_text_len")
        .map(|t| t.to_vec_i32().unwrap()[0] as usize)
        .unwrap_or(0);
    let (cfg, weights) = load_model_dir(&dir).unwrap();
    let model = Vilt::new(cfg, weights, &Device::Cpu, max_text_len, DType::F32).unwrap();
    let inputs = ViltInputs {
        input_ids: case["input_ids"].clone(),
        attention_mask: case["attention_mask"].clone(),
        token_type_ids: case.get("token_type_ids").cloned(),
        pixel_values: case["pixel_values"].clone().into(),
        pixel_mask: case["pixel_mask"].clone(),
    };
    (model, inputs, case)
}

fn run_case(name: &str) {
    let (model, inputs, case) = load_case(name);
    let mut tape = Tape::new(Device::Cpu);
    let out = model.forward(&mut tape, &inputs, &mut NoAdapter).unwrap();
    assert_eq!(tape.recorded(), 0, "a frozen forward records nothing");
    let last = tape.value(out.last_hidden_state);
    assert_eq!(
        last.shape(),
        case["last_hidden_state"].shape(),
        "{name}: last_hidden_state shape"
    );
    assert_close(
        &format!("{name} last_hidden_state"),
        &last.to_vec_f32().unwrap(),
        &case["last_hidden_state"].to_vec_f32().unwrap(),
        TOL,
        TOL,
    );
    assert_close(
        &format!("{name} pooler_output"),
        &tape.value(out.pooled).to_vec_f32().unwrap(),
        &case["pooler_output"].to_vec_f32().unwrap(),
        TOL,
        TOL,
    );
}

#[test]
fn padded_images_and_padded_text() {
    run_case("a_padded");
}

#[test]
fn text_longer_than_the_position_table() {
    run_case("b_longtext");
}

#[test]
fn bigger_image_grid_with_partial_patches() {
    run_case("c_bigimage");
}

/// `infer` shares the samples out among threads. Its outputs must be the ordinary forward's
/// for texts and images padded differently from sample to sample (the sequence length is the
/// whole batch's) and for batches the number of chunks does not divide.
#[test]
fn sample_parallel_inference_matches_the_ordinary_forward() {
    for name in ["a_padded", "b_longtext", "c_bigimage"] {
        let (model, inputs, _) = load_case(name);
        let inputs = inputs.select(&[0, 1, 1, 0, 1]).unwrap();
        let mut tape = Tape::new(Device::Cpu);
        let out = model.forward(&mut tape, &inputs, &mut NoAdapter).unwrap();
        let last = tape.value(out.last_hidden_state);
        let pooled = tape.value(out.pooled);
        for chunks in [1, 2, 3, 4, 5, 8] {
            let f = model.infer_in_chunks(&inputs, chunks).unwrap();
            let what = format!("{name} in {chunks} chunks");
            assert_eq!(f.last_hidden_state.shape(), last.shape(), "{what}");
            assert_eq!(f.pooled.shape(), pooled.shape(), "{what}");
            assert_close(
                &format!("{what}: last_hidden_state"),
                &f.last_hidden_state.to_vec_f32().unwrap(),
                &last.to_vec_f32().unwrap(),
                1e-6,
                1e-6,
            );
            assert_close(
                &format!("{what}: pooler_output"),
                &f.pooled.to_vec_f32().unwrap(),
                &pooled.to_vec_f32().unwrap(),
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn forward_command_writes_hf_named_outputs() {
    let dir = common::data_dir().join("vilt-tiny");
    let out = std::env::temp_dir().join(format!("delo-forward-{}.safetensors", std::process::id()));
    let run = |inputs: &Path| {
        std::process::Command::new(common::delo_exe())
            .args(["forward", "--model"])
            .arg(&dir)
            .arg("--inputs")
            .arg(inputs)
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap()
    };
    let ok = run(&dir.join("case_a_padded.safetensors"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let got = delo::st::read_file(&out).unwrap();
    let want = delo::st::read_file(&dir.join("case_a_padded.safetensors")).unwrap();
    for name in ["last_hidden_state", "pooler_output"] {
        assert_close(
            name,
            &got[name].to_vec_f32().unwrap(),
            &want[name].to_vec_f32().unwrap(),
            TOL,
            TOL,
        );
    }
    // A file without the model inputs is refused with the missing tensor's name.
    let bad = run(&dir.join("interp.safetensors"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("missing tensor `input_ids`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let _ = std::fs::remove_file(&out);
}
