//! Model-level CUDA vs CPU parity: the ViLT forward (f32, and bf16 frozen linears) and a whole
//! DeLo training step (every loss and every trainable gradient) on the golden fixture. Each
//! test needs a CUDA device and the embedded PTX: without them it is reported as ignored, with
//! the reason (`common::harness`, decided at run time).

mod common;

use common::assert_close;
use common::fixture::{bind, load_on, param_set_on};
use common::harness::{self, cuda_device};
use delo::autograd::{ParamId, Tape};
use delo::delo::losses::batch_losses;
use delo::vilt::{load_model_dir, NoAdapter, Vilt, ViltInputs};
use delo::{DType, Device};

fn main() {
    let tests = [
        trial!(vilt_forward_cuda_matches_cpu),
        trial!(delo_training_step_cuda_matches_cpu),
        trial!(gradients_accumulated_by_the_gemm_match_cpu),
        trial!(per_sample_task_choice_cuda_matches_cpu),
    ];
    harness::main(tests.map(|t| t.needs(cuda_device())).into());
}

/// The CUDA device (the harness runs these tests only where there is one).
fn gpu() -> Device {
    Device::parse("cuda").expect("a CUDA device is present but the backend failed")
}

fn forward(device: &Device, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let dir = common::data_dir().join("vilt-tiny");
    let case = delo::st::read_file(&dir.join("case_a_padded.safetensors")).unwrap();
    let (cfg, w) = load_model_dir(&dir).unwrap();
    let model = Vilt::new(cfg, w, device, 0, dtype).unwrap();
    let inputs = ViltInputs {
        input_ids: case["input_ids"].clone(),
        attention_mask: case["attention_mask"].clone(),
        token_type_ids: case.get("token_type_ids").cloned(),
        pixel_values: case["pixel_values"].clone().into(),
        pixel_mask: case["pixel_mask"].clone(),
    };
    let mut tape = Tape::new(device.clone());
    let out = model.forward(&mut tape, &inputs, &mut NoAdapter).unwrap();
    (
        tape.value(out.last_hidden_state).to_vec_f32().unwrap(),
        tape.value(out.pooled).to_vec_f32().unwrap(),
    )
}

fn vilt_forward_cuda_matches_cpu() {
    let gpu = gpu();
    let (h_cpu, p_cpu) = forward(&Device::Cpu, DType::F32);
    // f32 everywhere: only summation order differs.
    let (h, p) = forward(&gpu, DType::F32);
    assert_close("last_hidden_state f32", &h, &h_cpu, 1e-4, 1e-4);
    assert_close("pooled f32", &p, &p_cpu, 1e-4, 1e-4);
    // bf16 frozen linears keep 8 mantissa bits per operand; through 2 layers of LayerNorm'd
    // activations of unit scale that bounds the drift to a few 1e-2.
    let (h, p) = forward(&gpu, DType::BF16);
    assert_close("last_hidden_state bf16", &h, &h_cpu, 5e-2, 5e-2);
    assert_close("pooled bf16", &p, &p_cpu, 5e-2, 5e-2);
}

fn delo_training_step_cuda_matches_cpu() {
    let gpu = gpu();
    let run = |device: &Device| {
        let f = load_on("delo-tiny", 1, device, DType::F32);
        let p = param_set_on(&f, device);
        let mut tape = Tape::new(device.clone());
        let bound = bind(&mut tape, &p);
        let l = batch_losses(
            &f.vilt, &f.cfg, &mut tape, &bound, &f.inputs, &f.missing, &f.targets,
        )
        .unwrap();
        let losses: Vec<f32> = [l.c, l.align.unwrap(), l.con.unwrap(), l.total]
            .iter()
            .map(|&v| tape.value(v).item().unwrap())
            .collect();
        let names: Vec<String> = p.slots().iter().map(|s| s.name.clone()).collect();
        let g = tape.backward(l.total).unwrap();
        let grads: Vec<(String, Vec<f32>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), g.get(ParamId(i)).unwrap().to_vec_f32().unwrap()))
            .collect();
        (losses, grads)
    };
    let (lc, gc) = run(&Device::Cpu);
    let (lg, gg) = run(&gpu);
    assert_close("losses (c, align, con, total)", &lg, &lc, 1e-5, 1e-4);
    for ((name, a), (_, b)) in gg.iter().zip(&gc) {
        assert_close(&format!("grad {name}"), a, b, 1e-5, 1e-3);
    }
}

/// On CUDA a linear's input gradient is added into the gradient the input already has by the
/// GEMM itself (β = 1), or computed apart where that gradient's storage is shared (here: the
/// one an `add` passes to both its inputs). Both branches, with f32 and bf16 frozen weights,
/// against the CPU, which always sums apart.
fn gradients_accumulated_by_the_gemm_match_cpu() {
    let mut r = common::rng(5);
    let (n, d) = (6, 8);
    let u = common::randn(&mut r, &[n, d]);
    let wp = common::randn(&mut r, &[d, d]);
    let w1 = common::randn(&mut r, &[d, d]);
    let w2 = common::randn(&mut r, &[d, d]);
    let weights = common::randn(&mut r, &[n, d]);
    let grad = |device: &Device, dtype: DType| -> Vec<f32> {
        let up = |t: &delo::Tensor| t.to_device(device).unwrap();
        let frozen = |t: &delo::Tensor| device.backend().cast(&up(t), dtype).unwrap();
        let (w1, w2) = (frozen(&w1), frozen(&w2));
        let mut tape = Tape::new(device.clone());
        let uv = tape.constant(up(&u));
        let p = tape.param(ParamId(0), up(&wp));
        let x = tape.linear_param(uv, p, None).unwrap();
        // Backward meets the add first, which gives x the gradient it gives y1 (shared), so
        // W1's product is computed apart; W2's is then added by the GEMM into the private sum.
        let y2 = tape.linear(x, &w2, None).unwrap();
        let y1 = tape.linear(x, &w1, None).unwrap();
        let s = tape.add(y1, x).unwrap();
        let z = tape.add(s, y2).unwrap();
        let loss = common::scalar_loss(&mut tape, z, &up(&weights));
        let g = tape.backward(loss).unwrap();
        g.get(ParamId(0)).unwrap().to_vec_f32().unwrap()
    };
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
        let (cuda, cpu) = (grad(&gpu(), dtype), grad(&Device::Cpu, dtype));
        assert_close(
            &format!("dW ({dtype:?} frozen weights)"),
            &cuda,
            &cpu,
            tol,
            tol,
        );
    }
}

/// Evaluation's mixed-task forward on CUDA (each task's grouped pools over the whole batch,
/// then a per-row choice by `copy_rows_where`): every sample's row equals its own task's
/// forward bit for bit, and the whole matches the CPU's.
fn per_sample_task_choice_cuda_matches_cpu() {
    use common::fixture::per_sample_choice_matches_each_tasks_forward as mixed;
    let cpu = mixed(&Device::Cpu);
    let cuda = mixed(&gpu());
    assert_close("mixed-task last_hidden_state", &cuda, &cpu, 1e-4, 1e-4);
}
