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
