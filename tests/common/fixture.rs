//! The DeLo golden fixture (`tests/data/delo-tiny*`, made by
//! `scripts/fixtures/make_delo_fixture.py`) loaded for a device.

use std::collections::{BTreeMap, HashMap};

use delo::autograd::{ParamId, Tape};
use delo::data::MissingType;
use delo::delo::adapter::BoundTask;
use delo::delo::config::DeloConfig;
use delo::delo::losses::Targets;
use delo::params::ParamSet;
use delo::vilt::{load_model_dir, Vilt, ViltInputs};
use delo::{DType, Device, Tensor};

pub struct Fixture {
    pub vilt: Vilt,
    pub cfg: DeloConfig,
    pub inputs: ViltInputs,
    pub missing: Vec<MissingType>,
    pub targets: Targets,
    pub params: BTreeMap<String, Tensor>,
    pub expected: BTreeMap<String, Tensor>,
}

/// The fixture in `tests/data/{dir}` with factor rank `rho`, the model on `device` with its
/// linears in `dtype`.
pub fn load_on(dir: &str, rho: usize, device: &Device, dtype: DType) -> Fixture {
    let data = super::data_dir();
    let d = data.join(dir);
    let (vcfg, w) = load_model_dir(&data.join("vilt-tiny")).unwrap();
    let vilt = Vilt::new(vcfg, w, device, 0, dtype).unwrap();
    let cfg = DeloConfig {
        experts: 4,
        rank: 2,
        factor_rank: rho,
        ..DeloConfig::default()
    };
    // Both fixtures share the ρ = 1 case's inputs; the ρ = 2 case has parameters of its own.
    let inp = delo::st::read_file(&data.join("delo-tiny/inputs.safetensors")).unwrap();
    let missing = inp["missing"]
        .to_vec_i32()
        .unwrap()
        .iter()
        .map(|&m| [MissingType::None, MissingType::Text, MissingType::Image][m as usize])
        .collect();
    let inputs = ViltInputs {
        input_ids: inp["input_ids"].clone(),
        attention_mask: inp["attention_mask"].clone(),
        token_type_ids: inp.get("token_type_ids").cloned(),
        pixel_values: inp["pixel_values"].clone().into(),
        pixel_mask: inp["pixel_mask"].clone(),
    };
    let targets = Targets::Single(inp["labels"].clone());
    let params = delo::st::read_file(&d.join("params.safetensors")).unwrap();
    Fixture {
        vilt,
        cfg,
        inputs,
        missing,
        targets,
        params,
        expected: delo::st::read_file(&d.join("expected.safetensors")).unwrap(),
    }
}

pub fn param_set_on(f: &Fixture, device: &Device) -> ParamSet {
    ParamSet::new(
        device,
        f.params
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect(),
    )
    .unwrap()
}

pub fn bind(tape: &mut Tape, p: &ParamSet) -> BoundTask {
    BoundTask::new(
        p.slots()
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), p.bind(tape, ParamId(i)).unwrap()))
            .collect::<HashMap<_, _>>(),
    )
}

pub fn load(dir: &str, rho: usize) -> Fixture {
    load_on(dir, rho, &Device::Cpu, DType::F32)
}

pub fn param_set(f: &Fixture) -> ParamSet {
    param_set_on(f, &Device::Cpu)
}

/// A forward of the fixture's batch in which sample i takes task `i % 3` of three tasks (the
/// fixture's parameters and two perturbations of them that route and compose differently),
/// under [`delo::delo::adapter::TaskChoice::PerSample`], against each task's own forward of the
/// whole batch: every row must be bit-identical to its task's row (same shapes, same ops; the
/// choice only copies rows). Returns the mixed forward's `last_hidden_state` for comparisons
/// across devices.
pub fn per_sample_choice_matches_each_tasks_forward(device: &Device) -> Vec<f32> {
    use delo::delo::adapter::{row_index, DeloAdapter, Proxy, TaskChoice};
    let f = load_on("delo-tiny", 1, device, DType::F32);
    let layers = f.vilt.cfg.num_hidden_layers;
    let perturbed = |k: usize| -> Vec<(String, Tensor)> {
        f.params
            .iter()
            .map(|(n, t)| {
                let v = t.to_vec_f32().unwrap();
                let v = match n.contains("pool") || n.contains("router") {
                    true => v
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x * (1.0 - 0.7 * k as f32) + ((i * 13 + k) % 7) as f32 * 0.01)
                        .collect(),
                    false => v,
                };
                let t = Tensor::from_f32(v, t.shape()).unwrap();
                (n.clone(), t.to_device(device).unwrap())
            })
            .collect()
    };
    let tasks: Vec<Vec<(String, Tensor)>> = (0..3).map(perturbed).collect();
    let n = f.missing.len();
    let hidden = |tape: &mut Tape, choice: TaskChoice| -> Vec<f32> {
        let mut ad = DeloAdapter::new(&f.cfg, choice, &f.missing, layers, Proxy::None);
        let out = f.vilt.forward(tape, &f.inputs, &mut ad).unwrap();
        tape.value(out.last_hidden_state).to_vec_f32().unwrap()
    };
    let mut tape = Tape::new(device.clone());
    let bound: Vec<BoundTask> = tasks
        .iter()
        .map(|p| BoundTask::constants(&mut tape, p))
        .collect();
    assert!(n >= 3, "a batch of {n} cannot mix three tasks");
    let picks: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let choice = row_index(&tape, &picks).unwrap();
    let mixed = hidden(
        &mut tape,
        TaskChoice::PerSample {
            tasks: &bound,
            choice: &choice,
        },
    );
    let row = mixed.len() / n;
    let own: Vec<Vec<f32>> = bound
        .iter()
        .map(|b| hidden(&mut tape, TaskChoice::One(b)))
        .collect();
    assert_ne!(own[0], own[1], "the perturbed task must change the forward");
    for (i, &k) in picks.iter().enumerate() {
        assert!(
            mixed[i * row..(i + 1) * row] == own[k][i * row..(i + 1) * row],
            "sample {i} (task {k}) differs from its task's own forward"
        );
    }
    mixed
}
