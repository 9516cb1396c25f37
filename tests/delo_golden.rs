//! Golden test: one DeLo training step against the PyTorch reference of docs/method.md
//! (`scripts/fixtures/delo_reference.py`, fixtures by `make_delo_fixture.py`): logits, every
//! loss term, every trainable gradient, the factor selections, 5 AdamW steps and the task key,
//! on a batch with complete, text-missing and image-missing samples.

mod common;

use common::assert_close;
use common::fixture::{bind, load, param_set, Fixture};
use delo::autograd::{ParamId, Tape};
use delo::delo::losses::batch_losses;
use delo::{Device, Tensor};

/// Relative 1e-4 in f32 (the bound), with an absolute floor for values near zero.
const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

fn close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_close(
        what,
        &got.to_vec_f32().unwrap(),
        &want.to_vec_f32().unwrap(),
        ATOL,
        RTOL,
    );
}

fn one_step(f: &Fixture, check_selections: bool) {
    let p = param_set(f);
    let mut tape = Tape::new(Device::Cpu);
    let bound = bind(&mut tape, &p);
    let l = batch_losses(
        &f.vilt, &f.cfg, &mut tape, &bound, &f.inputs, &f.missing, &f.targets,
    )
    .unwrap();
    close("logits", tape.value(l.logits), &f.expected["logits"]);
    close(
        "proxy_logits",
        tape.value(l.proxy_logits[0]),
        &f.expected["proxy_logits"],
    );
    close("loss_c", tape.value(l.c), &f.expected["loss_c"]);
    close(
        "loss_align",
        tape.value(l.align.unwrap()),
        &f.expected["loss_align"],
    );
    close(
        "loss_con",
        tape.value(l.con.unwrap()),
        &f.expected["loss_con"],
    );
    close("loss", tape.value(l.total), &f.expected["loss"]);
    if check_selections {
        // Selections of the main forward, re-run with the recording adapter.
        let mut t2 = Tape::new(Device::Cpu);
        let b2 = bind(&mut t2, &p);
        let mut ad = delo::delo::adapter::DeloAdapter::new(
            &f.cfg,
            delo::delo::adapter::TaskChoice::One(&b2),
            &f.missing,
            f.vilt.cfg.num_hidden_layers,
            delo::delo::adapter::Proxy::None,
        )
        .record_selections();
        f.vilt.forward(&mut t2, &f.inputs, &mut ad).unwrap();
        let sels = ad.selections.unwrap();
        assert_eq!(sels.len(), 12, "2 layers × 3 targets × 2 modalities");
        for (name, sa, sb) in sels {
            assert_eq!(
                sa.to_vec_i32().unwrap(),
                f.expected[&format!("sel.{name}.a")].to_vec_i32().unwrap(),
                "{name} A selection"
            );
            assert_eq!(
                sb.to_vec_i32().unwrap(),
                f.expected[&format!("sel.{name}.b")].to_vec_i32().unwrap(),
                "{name} B selection"
            );
        }
    }
    let grads = tape.backward(l.total).unwrap();
    for (i, s) in p.slots().iter().enumerate() {
        let g = grads
            .get(ParamId(i))
            .unwrap_or_else(|| panic!("no gradient for {}", s.name));
        close(
            &format!("grad.{}", s.name),
            g,
            &f.expected[&format!("grad.{}", s.name)],
        );
    }
}

#[test]
fn one_training_step_matches_pytorch_rank_one() {
    one_step(&load("delo-tiny", 1), true);
}

#[test]
fn one_training_step_matches_pytorch_rank_two_factors() {
    one_step(&load("delo-tiny-rho2", 2), false);
}

#[test]
fn five_adamw_steps_and_task_key_match_pytorch() {
    let f = load("delo-tiny", 1);
    let mut p = param_set(&f);
    let mut key: Option<delo::Tensor> = None;
    let mut losses = Vec::new();
    for _ in 0..5 {
        let mut tape = Tape::new(Device::Cpu);
        let bound = bind(&mut tape, &p);
        let l = batch_losses(
            &f.vilt, &f.cfg, &mut tape, &bound, &f.inputs, &f.missing, &f.targets,
        )
        .unwrap();
        losses.push(tape.value(l.total).item().unwrap());
        delo::delo::keys::ema_key(Device::Cpu.backend(), &mut key, &l.task_query, 0.99).unwrap();
        let g = tape.backward(l.total).unwrap();
        p.accumulate(&g).unwrap();
        p.adamw_step(1e-3, (0.9, 0.98), 1e-8, 0.01).unwrap();
        p.zero_grads().unwrap();
    }
    assert_close(
        "losses of 5 steps",
        &losses,
        &f.expected["losses_5_steps"].to_vec_f32().unwrap(),
        ATOL,
        RTOL,
    );
    for (name, t) in p.to_host().unwrap() {
        close(
            &format!("params_after_5.{name}"),
            &t,
            &f.expected[&format!("params_after_5.{name}")],
        );
    }
    assert_close(
        "task key",
        &key.unwrap().to_vec_f32().unwrap(),
        &f.expected["task_key"].to_vec_f32().unwrap(),
        ATOL,
        RTOL,
    );
}

/// The L_con proxy forwards run in the main forward's batch (one encoder pass): with both
/// directions, each proxy's logits equal those of its own forward over the complete samples,
/// and the main logits those of the plain forward, up to f32 summation order (the GEMMs block
/// more rows differently).
#[test]
fn batched_proxy_forwards_equal_their_own_forwards() {
    use delo::delo::adapter::{DeloAdapter, Proxy, TaskChoice};
    use delo::delo::config::ConProxy;
    use delo::delo::losses::head_logits;
    let mut f = load("delo-tiny", 1);
    f.cfg.con_proxy = ConProxy::Both;
    f.cfg.task_key = delo::delo::config::TaskKeySource::Layer;
    let p = param_set(&f);
    let mut tape = Tape::new(Device::Cpu);
    let bound = bind(&mut tape, &p);
    let l = batch_losses(
        &f.vilt, &f.cfg, &mut tape, &bound, &f.inputs, &f.missing, &f.targets,
    )
    .unwrap();
    assert_eq!(l.proxy_logits.len(), 2);
    let layers = f.vilt.cfg.num_hidden_layers;
    let complete: Vec<usize> = (0..f.missing.len())
        .filter(|&i| f.missing[i] == delo::data::MissingType::None)
        .collect();
    assert!(!complete.is_empty() && complete.len() < f.missing.len());
    let sub = f.inputs.select(&complete).unwrap();
    let sub_missing = vec![delo::data::MissingType::None; complete.len()];
    let own = |proxy: Proxy, inputs: &delo::vilt::ViltInputs, missing: &[_]| {
        let mut t = Tape::new(Device::Cpu);
        let b = bind(&mut t, &p);
        let mut ad = DeloAdapter::new(&f.cfg, TaskChoice::One(&b), missing, layers, proxy);
        let out = f.vilt.forward(&mut t, inputs, &mut ad).unwrap();
        let logits = head_logits(&mut t, &b, out.pooled).unwrap();
        t.value(logits).to_vec_f32().unwrap()
    };
    let value = |v| tape.value(v).to_vec_f32().unwrap();
    let same = |what: &str, got: Vec<f32>, want: Vec<f32>| {
        assert_eq!(got.len(), want.len(), "{what}");
        assert_close(what, &got, &want, 1e-6, 1e-5);
    };
    same(
        "main",
        value(l.logits),
        own(Proxy::None, &f.inputs, &f.missing),
    );
    same(
        "text proxy",
        value(l.proxy_logits[0]),
        own(Proxy::Text, &sub, &sub_missing),
    );
    same(
        "image proxy",
        value(l.proxy_logits[1]),
        own(Proxy::Image, &sub, &sub_missing),
    );
    // The per-layer task queries are the batch's own rows, as its plain forward records them.
    let mut t = Tape::new(Device::Cpu);
    let b = bind(&mut t, &p);
    let mut ad = DeloAdapter::new(&f.cfg, TaskChoice::One(&b), &f.missing, layers, Proxy::None)
        .record_layer_queries();
    f.vilt.forward(&mut t, &f.inputs, &mut ad).unwrap();
    let plain = ad.layer_queries.unwrap();
    assert_eq!(l.layer_queries.len(), layers);
    for (i, (got, want)) in l.layer_queries.iter().zip(&plain).enumerate() {
        assert_eq!(got.shape(), [f.missing.len(), f.vilt.cfg.hidden_size]);
        same(
            &format!("layer {i} query"),
            got.to_vec_f32().unwrap(),
            want.to_vec_f32().unwrap(),
        );
    }
    // Swapped proxies differ: the test can tell which forward a row came from.
    let swapped = own(Proxy::Image, &sub, &sub_missing);
    assert!(value(l.proxy_logits[0])
        .iter()
        .zip(&swapped)
        .any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn per_sample_task_choice_gives_each_sample_its_own_tasks_forward() {
    common::fixture::per_sample_choice_matches_each_tasks_forward(&delo::Device::Cpu);
}
