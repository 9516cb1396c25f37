//! `--task-key layer` (one key table per layer, per-layer task choice, head by majority) and
//! the `seq-lora` variant (one shared LoRA, one growing head) on the synthetic benchmark.

mod common;

use std::collections::HashMap;

use delo::autograd::Tape;
use delo::data::{MissingType, Split};
use delo::delo::adapter::{BoundTask, DeloAdapter, Proxy, TaskChoice};
use delo::delo::config::{TaskKeySource, Variant};
use delo::delo::keys::{majority, TaskKeys};
use delo::delo::params::{init_params, task_specs};
use delo::train::demo::demo_settings;
use delo::train::{TrainSettings, Trainer};
use delo::Tensor;

fn quick(variant: Variant, key: TaskKeySource) -> TrainSettings {
    let mut s = demo_settings(variant);
    s.epochs = 3;
    s.delo.task_key = key;
    s
}

#[test]
fn majority_takes_the_most_picked_task_and_the_lower_one_on_ties() {
    let picks = vec![vec![0, 1, 2, 1], vec![1, 1, 0, 2], vec![1, 0, 2, 2]];
    assert_eq!(majority(&picks, 3), vec![1, 1, 2, 2]);
    let tie = vec![vec![2, 0], vec![1, 1]];
    assert_eq!(majority(&tie, 3), vec![1, 0]);
}

#[test]
fn ema_key_starts_from_the_batch_mean_then_decays() {
    let be = delo::Device::Cpu.backend();
    let q1 = Tensor::from_f32(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let mut k = None;
    delo::delo::keys::ema_key(be, &mut k, &q1, 0.9).unwrap();
    assert_eq!(k.as_ref().unwrap().to_vec_f32().unwrap(), vec![2.0, 3.0]);
    let q2 = Tensor::from_f32(vec![12.0, 13.0], &[1, 2]).unwrap();
    delo::delo::keys::ema_key(be, &mut k, &q2, 0.9).unwrap();
    let k = k.unwrap().to_vec_f32().unwrap();
    common::assert_close("ema", &k, &[3.0, 4.0], 1e-6, 1e-6);
    let empty = Tensor::from_f32(vec![], &[0, 2]).unwrap();
    assert!(delo::delo::keys::ema_key(be, &mut None, &empty, 0.9).is_err());
}

/// Random tasks with non-zero B pools, so that each task changes the stream differently.
fn random_tasks(tr: &Trainer, tape: &mut Tape, n: usize) -> Vec<BoundTask> {
    let s = tr.settings();
    (0..n)
        .map(|k| {
            let specs = task_specs(&s.delo, &tr.vilt.cfg, 4);
            let mut params = init_params(&specs, 7 + k as u64).unwrap();
            for (name, t) in params.iter_mut() {
                if name.ends_with("b_pool") {
                    let v: Vec<f32> = (0..t.numel())
                        .map(|i| ((i * 37 + k * 11) % 17) as f32 * 0.02 - 0.16)
                        .collect();
                    *t = Tensor::from_f32(v, t.shape()).unwrap();
                }
            }
            BoundTask::constants(tape, &params)
        })
        .collect()
}

#[test]
fn per_layer_task_choice_routes_each_sample_like_it_ran_alone() {
    let (root, data, model) = common::synthetic_setup("keys-perlayer");
    let settings = quick(Variant::Delo, TaskKeySource::Layer);
    let tr = Trainer::create(&data, &model, &root.join("run"), settings).unwrap();
    let layers = tr.vilt.cfg.num_hidden_layers;
    let d = tr.vilt.cfg.hidden_size;
    let cfg = tr.settings().delo.clone();
    let batch = tr
        .loader(0, Split::Train, false)
        .unwrap()
        .epoch(0)
        .next()
        .unwrap()
        .unwrap();
    let missing: Vec<MissingType> = batch.samples.iter().map(|x| x.missing).collect();
    let n = missing.len();
    assert!(n >= 4, "batch of {n}");
    let run = |data: &delo::vilt::ViltInputs, miss: &[MissingType], tables: &[TaskKeys]| {
        let mut tape = Tape::new(delo::Device::Cpu);
        let tasks = random_tasks(&tr, &mut tape, 2);
        let choice = TaskChoice::PerLayer {
            tasks: &tasks,
            tables,
        };
        let mut ad = DeloAdapter::new(&cfg, choice, miss, layers, Proxy::None);
        let out = tr.vilt.forward(&mut tape, data, &mut ad).unwrap();
        let hidden = tape.value(out.last_hidden_state).to_vec_f32().unwrap();
        (hidden, ad.picks)
    };
    // Keys ±e_j make a sample pick task 0 where its query's coordinate j is positive: find a
    // j for which one batch mixes both tasks in some layer.
    let (tables, hidden, picks) = (0..d)
        .find_map(|j| {
            let mut e = vec![0f32; d];
            e[j] = 1.0;
            let minus: Vec<f32> = e.iter().map(|x| -x).collect();
            let table = TaskKeys {
                keys: vec![e, minus],
            };
            let tables = vec![table; layers];
            let (hidden, picks) = run(&batch.data, &missing, &tables);
            let mixed = picks.iter().any(|p| p.contains(&0) && p.contains(&1));
            mixed.then_some((tables, hidden, picks))
        })
        .expect("some coordinate splits the batch");
    assert_eq!(picks.len(), layers);
    let per_sample = hidden.len() / n;
    for i in 0..n {
        let alone = batch.data.select(&[i]).unwrap();
        let (h, p) = run(&alone, &missing[i..=i], &tables);
        let layer_picks: Vec<usize> = picks.iter().map(|l| l[i]).collect();
        assert_eq!(p.iter().map(|l| l[0]).collect::<Vec<_>>(), layer_picks);
        common::assert_close(
            &format!("sample {i} in the batch vs alone"),
            &hidden[i * per_sample..(i + 1) * per_sample],
            &h,
            1e-4,
            1e-4,
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn layer_task_keys_train_evaluate_and_resume() {
    let (root, data, model) = common::synthetic_setup("keys-layer");
    let run = root.join("run");
    let mut tr = Trainer::create(
        &data,
        &model,
        &run,
        quick(Variant::Delo, TaskKeySource::Layer),
    )
    .unwrap();
    let results = tr.run(&mut |_| {}).unwrap();
    let layers = tr.vilt.cfg.num_hidden_layers;
    assert_eq!(tr.keys.len(), layers, "one key table per layer");
    assert!(tr.keys.iter().all(|t| t.keys.len() == 3));
    // Each layer's keys differ: they are read at different depths.
    assert_ne!(tr.keys[0].keys[0], tr.keys[layers - 1].keys[0]);
    let test = results.split(Split::Test).unwrap();
    let ap = test.ap.unwrap();
    assert!(
        ap > 35.0,
        "AP {ap} with per-layer keys is not above chance (25)"
    );
    let ids: Vec<f64> = test
        .task_id_matrix
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(
        ids.iter().sum::<f64>() / 6.0 > 40.0,
        "task-id accuracy {ids:?}"
    );
    let on_disk = delo::st::read_file(&run.join("task2.safetensors")).unwrap();
    assert!(on_disk.contains_key(&format!("key.layer{}", layers - 1)));
    // A resumed run restores every table and evaluates to the same cells.
    let again = Trainer::resume(&run).unwrap();
    assert_eq!(again.keys.len(), layers);
    for j in 0..3 {
        let (cell, _) = delo::train::eval::evaluate(&again, j, Split::Test, 2, None).unwrap();
        assert_eq!(cell, tr.evals[2].test[j], "task {j} after resume");
    }
    let _ = std::fs::remove_dir_all(&root);
}

fn host(tr: &Trainer, t: usize) -> HashMap<String, Vec<f32>> {
    tr.tasks[t]
        .params
        .iter()
        .map(|(n, v)| (n.clone(), v.to_vec_f32().unwrap()))
        .collect()
}

#[test]
fn seq_lora_shares_one_lora_and_grows_one_head() {
    let (root, data, model) = common::synthetic_setup("keys-seq");
    let mut tr = Trainer::create(
        &data,
        &model,
        &root.join("run"),
        quick(Variant::SeqLora, TaskKeySource::Input),
    )
    .unwrap();
    let results = tr.run(&mut |_| {}).unwrap();
    let d = tr.vilt.cfg.hidden_size;
    for t in 0..3 {
        let p = host(&tr, t);
        assert_eq!(
            p["head.weight"].len(),
            4 * (t + 1) * d,
            "head after task {t}"
        );
        assert_eq!(p["head.bias"].len(), 4 * (t + 1));
    }
    let (p0, p1) = (host(&tr, 0), host(&tr, 1));
    // No partition: task 1 went on training task 0's LoRA.
    assert_ne!(p0["layer0.q.lora_b"], p1["layer0.q.lora_b"]);
    assert_eq!(
        tr.head_span(1, 2),
        4..8,
        "task 1's classes sit after task 0's in the grown head"
    );
    let test = results.split(Split::Test).unwrap();
    assert!(test.ap.is_some() && test.fg.is_some());
    // The task just trained is learnt: its cell on the diagonal is above chance.
    for t in 0..3 {
        let diag = test.matrix[t][t].unwrap();
        assert!(diag > 40.0, "task {t} right after training: {diag}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn eval_refuses_keys_of_another_source() {
    let (root, data, model) = common::synthetic_setup("keys-evalkey");
    let run = root.join("run");
    let mut s = quick(Variant::HeadsOnly, TaskKeySource::Input);
    s.max_steps_per_task = Some(2);
    let mut tr = Trainer::create(&data, &model, &run, s).unwrap();
    tr.run_until(1, &mut |_| {}).unwrap();
    let out = std::process::Command::new(common::delo_exe())
        .args(["eval", "--task-key", "frozen", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built from `input`"), "{err}");
    let ok = std::process::Command::new(common::delo_exe())
        .args(["eval", "--task-key", "oracle", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
}
