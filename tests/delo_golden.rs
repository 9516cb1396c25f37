//! Golden test: one DeLo training step against the PyTorch reference of DELO.md
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
