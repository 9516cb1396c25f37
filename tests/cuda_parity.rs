//! CUDA vs CPU parity for every op of the `Backend` trait: random inputs, the CPU reference
//! result against the CUDA result, elementwise `|cuda − cpu| ≤ atol + rtol·|cpu|` with the
//! tolerances stated at each check. The GPU tests run where there is a CUDA device and the
//! embedded PTX, and are reported as ignored, with the reason, elsewhere (`common::harness`,
//! decided at run time); `device_parse_is_a_clear_result` runs everywhere.

mod common;

use std::sync::OnceLock;

use half::bf16;
use rand::rngs::StdRng;
use rand::Rng;

use common::harness::{self, cuda_device};
use common::{assert_close, randn, rng};
use delo::backend::cuda::{cuda_available, PTX};
use delo::backend::{AdamW, Backend, CpuBackend, Gemm, Saved, Unary};
use delo::{DType, Device, Tensor};

static CPU: CpuBackend = CpuBackend;

fn main() {
    let gpu_tests = [
        trial!(upload_download_views_and_empty),
        trial!(download_group_reads_every_dtype_with_one_wait),
        trial!(cast_is_bit_exact),
        trial!(matmul_f32_every_layout),
        trial!(matmul_bf16_every_layout),
        trial!(matmul_into_a_view_with_beta),
        trial!(elementwise_ops),
        trial!(sum_rows_is_deterministic_and_accurate),
        trial!(layernorm_forward_backward),
        trial!(fused_block_ops),
        trial!(softmax_forward_backward),
        trial!(attention_forward_backward),
        trial!(gather_scatter_concat_split),
        trial!(invalid_indices_fail_at_the_next_sync),
        trial!(masked_mean_and_cosine),
        trial!(losses_and_their_gradients),
        trial!(adamw_steps),
        trial!(bad_operands_get_one_message_on_both_devices),
        trial!(patches_from_cached_images_are_the_host_ones),
    ];
    let mut tests = vec![trial!(device_parse_is_a_clear_result)];
    tests.extend(gpu_tests.map(|t| t.needs(cuda_device())));
    harness::main(tests);
}

/// The CUDA device shared by every test (the harness runs these tests only where there is one).
fn gpu() -> Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| {
        let d = Device::parse("cuda").expect("a CUDA device is present but the backend failed");
        if let Device::Cuda(b) = &d {
            println!("CUDA device: {}", b.name().unwrap_or_default());
        }
        d
    })
    .clone()
}

fn up(d: &Device, t: &Tensor) -> Tensor {
    t.to_device(d).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// Compares a CUDA result with the CPU one (shape and values).
fn check(what: &str, cuda: &Tensor, cpu: &Tensor, atol: f32, rtol: f32) {
    assert!(cuda.device().is_cuda(), "{what}: result is not on the GPU");
    assert_eq!(cuda.shape(), cpu.shape(), "{what}: shapes differ");
    assert_close(what, &host(cuda), &host(cpu), atol, rtol);
}

fn uniform(r: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32((0..n).map(|_| r.random_range(lo..hi)).collect(), shape).unwrap()
}

/// A 0/1 mask `[b, t]` with at least one valid position per row unless `allow_empty`.
fn mask(r: &mut StdRng, b: usize, t: usize, allow_empty: bool) -> Tensor {
    let mut v: Vec<f32> = (0..b * t)
        .map(|_| if r.random_bool(0.7) { 1.0 } else { 0.0 })
        .collect();
    for i in 0..b {
        if !allow_empty || i % 2 == 0 {
            v[i * t] = 1.0;
        }
    }
    if allow_empty {
        v[t..2 * t].iter_mut().for_each(|x| *x = 0.0);
    }
    Tensor::from_f32(v, &[b, t]).unwrap()
}

fn labels(r: &mut StdRng, n: usize, c: usize) -> Tensor {
    Tensor::from_i32((0..n).map(|_| r.random_range(0..c as i32)).collect(), &[n]).unwrap()
}

// ---- everywhere ----------------------------------------------------------------------------

fn device_parse_is_a_clear_result() {
    let r = std::panic::catch_unwind(|| Device::parse("cuda").map(|d| d.name()));
    let r = r.expect("Device::parse(\"cuda\") must not panic");
    if PTX.is_some() && cuda_available() {
        assert_eq!(r.expect("a CUDA device is present"), "cuda:0");
        // one shared backend per device; a private one's tensors are refused by it
        let (Device::Cuda(a), Device::Cuda(b)) = (
            Device::parse("cuda").unwrap(),
            Device::parse("cuda:0").unwrap(),
        ) else {
            unreachable!()
        };
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let private = Device::Cuda(delo::backend::CudaBackend::new_private(0).unwrap());
        let t = Tensor::scalar(1.0).to_device(&private).unwrap();
        let e = a.scale(&t, 2.0).unwrap_err().to_string();
        assert!(e.contains("another CUDA backend"), "{e}");
    } else {
        let e = r
            .expect_err("no CUDA here, so parsing \"cuda\" must fail")
            .to_string();
        println!("Device::parse(\"cuda\") without CUDA: {e}");
        assert!(
            e.contains("CUDA") && (e.contains("nvcc") || e.contains("driver")),
            "unclear error: {e}"
        );
    }
    let bad = Device::parse("cuda:x").unwrap_err().to_string();
    assert!(bad.contains("cuda:N"), "{bad}");
    if !cuda_available() || PTX.is_none() {
        assert!(Device::parse("cuda:3").is_err());
    }
}

// ---- memory --------------------------------------------------------------------------------

fn upload_download_views_and_empty() {
    let d = gpu();
    let mut r = rng(1);
    let x = randn(&mut r, &[5, 7]);
    let g = up(&d, &x);
    assert_eq!(g.shape(), &[5, 7]);
    assert_eq!(host(&g), host(&x), "f32 round trip is exact");
    // a view uploads only its range; a device view downloads only its range
    let v = x.view(9, &[3, 4]).unwrap();
    assert_eq!(host(&up(&d, &v)), host(&v));
    assert_eq!(host(&g.view(9, &[3, 4]).unwrap()), host(&v));
    let i = Tensor::from_i32(vec![3, -1, 7, 0], &[2, 2]).unwrap();
    assert_eq!(up(&d, &i).to_vec_i32().unwrap(), vec![3, -1, 7, 0]);
    let h = Tensor::from_bf16([1.5f32, -2.25, 3.0].map(bf16::from_f32).to_vec(), &[3]).unwrap();
    let hg = up(&d, &h);
    assert_eq!(hg.dtype(), DType::BF16);
    assert_eq!(host(&hg), vec![1.5, -2.25, 3.0]);
    let e = Tensor::from_f32(vec![], &[0, 4]).unwrap();
    let eg = up(&d, &e);
    assert_eq!(eg.shape(), &[0, 4]);
    assert!(host(&eg).is_empty());
    let b = d.backend();
    for dt in [DType::F32, DType::BF16, DType::I32] {
        let z = b.zeros(&[3, 5], dt).unwrap();
        assert_eq!(z.dtype(), dt);
        match dt {
            DType::I32 => assert_eq!(z.to_vec_i32().unwrap(), vec![0; 15]),
            _ => assert_eq!(host(&z), vec![0.0; 15]),
        }
    }
    let c = b.copy(&g.view(9, &[3, 4]).unwrap()).unwrap();
    assert_eq!(c.offset(), 0);
    assert_eq!(host(&c), host(&v));
    b.synchronize().unwrap();
}

/// `download_group` gives what `download` gives each tensor (views, odd bf16 lengths that
/// share a word with the next tensor, i32, empty), with one host synchronisation in all, and
/// reports a kernel error set before it.
fn download_group_reads_every_dtype_with_one_wait() {
    let d = gpu();
    let Device::Cuda(be) = &d else { unreachable!() };
    let mut r = rng(3);
    let x = up(&d, &randn(&mut r, &[5, 7]));
    let v = x.view(9, &[3, 4]).unwrap();
    let h = up(
        &d,
        &Tensor::from_bf16([1.5f32, -2.25, 3.0].map(bf16::from_f32).to_vec(), &[3]).unwrap(),
    );
    let i = up(&d, &Tensor::from_i32(vec![3, -1, 7], &[3]).unwrap());
    let e = up(&d, &Tensor::from_f32(vec![], &[0, 4]).unwrap());
    let all = [&x, &h, &v, &e, &i];
    let b = d.backend();
    b.synchronize().unwrap();
    let before = be.counts();
    let got = b.download_group(&all).unwrap();
    assert_eq!(be.counts().since(&before).host_syncs, 1);
    for (t, g) in all.iter().zip(&got) {
        assert_eq!(g.shape(), t.shape());
        assert_eq!(g.dtype(), t.dtype());
        assert!(g.cpu().is_ok(), "a host tensor");
        match t.dtype() {
            DType::I32 => assert_eq!(g.to_vec_i32().unwrap(), t.to_vec_i32().unwrap()),
            _ => assert_eq!(host(g), host(t)),
        }
    }
    // An out-of-range gather sets the error word: the group read reports it, once.
    let table = up(&d, &randn(&mut r, &[2, 3]));
    let idx = up(&d, &Tensor::from_i32(vec![5], &[1]).unwrap());
    let _ = b.gather_rows(&table, &idx);
    let err = b.download_group(&[&x]).unwrap_err().to_string();
    assert!(err.contains("gather_rows"), "{err}");
    assert!(b.download_group(&[&x]).is_ok());
}

fn cast_is_bit_exact() {
    let d = gpu();
    let mut r = rng(2);
    let mut v: Vec<f32> = (0..4096).map(|_| r.random_range(-1e3f32..1e3)).collect();
    // ties in both directions, NaN, infinities, subnormals, the largest finite value
    v.extend([
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0x3f80_8001),
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -1e-40,
        f32::MAX,
        0.0,
        -0.0,
    ]);
    let n = v.len();
    let x = Tensor::from_f32(v, &[n]).unwrap();
    let want = CPU.cast(&x, DType::BF16).unwrap();
    let got = d.backend().cast(&up(&d, &x), DType::BF16).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let got_h = got.to_device(&Device::Cpu).unwrap();
    let (g, w) = (got_h.bf16s().unwrap(), want.bf16s().unwrap());
    for i in 0..n {
        assert_eq!(g[i].to_bits(), w[i].to_bits(), "f32→bf16 element {i}");
    }
    // and back: exact
    let back = d.backend().cast(&got, DType::F32).unwrap();
    let want_back = CPU.cast(&want, DType::F32).unwrap();
    let (bg, bw) = (host(&back), host(&want_back));
    for i in 0..n {
        assert_eq!(bg[i].to_bits(), bw[i].to_bits(), "bf16→f32 element {i}");
    }
    // same dtype: a copy, bit for bit; i32 casts are refused
    let same = host(&d.backend().cast(&up(&d, &x), DType::F32).unwrap());
    let orig = host(&x);
    assert!(same
        .iter()
        .zip(&orig)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let i = up(&d, &Tensor::from_i32(vec![1], &[1]).unwrap());
    assert!(d.backend().cast(&i, DType::F32).is_err());
}

// ---- GEMM ----------------------------------------------------------------------------------

/// `(trans_a, trans_b, batch dims, b batched)` of every GEMM layout the engine uses.
fn gemm_cases() -> Vec<(bool, bool, Vec<usize>, bool)> {
    let mut v = Vec::new();
    for ta in [false, true] {
        for tb in [false, true] {
            v.push((ta, tb, vec![], false));
            v.push((ta, tb, vec![3], true));
            v.push((ta, tb, vec![2, 2], false)); // shared 2-D b
        }
    }
    v
}

fn gemm_operands(
    r: &mut StdRng,
    (m, n, k): (usize, usize, usize),
    ta: bool,
    tb: bool,
    batch: &[usize],
    b_batched: bool,
) -> (Tensor, Tensor) {
    let mut sa = batch.to_vec();
    sa.extend(if ta { [k, m] } else { [m, k] });
    let mut sb = if b_batched { batch.to_vec() } else { vec![] };
    sb.extend(if tb { [n, k] } else { [k, n] });
    (randn(r, &sa), randn(r, &sb))
}

fn matmul_f32_every_layout() {
    let d = gpu();
    let mut r = rng(3);
    for (ta, tb, batch, bb) in gemm_cases() {
        let (a, b) = gemm_operands(&mut r, (37, 53, 129), ta, tb, &batch, bb);
        let g = Gemm {
            trans_a: ta,
            trans_b: tb,
            alpha: 0.75,
        };
        let want = CPU.matmul(&a, &b, g).unwrap();
        let got = d.backend().matmul(&up(&d, &a), &up(&d, &b), g).unwrap();
        // f32 inputs, f32 accumulation (no TF32): only the summation order differs.
        check(
            &format!("matmul f32 ta={ta} tb={tb} batch={batch:?} b_batched={bb}"),
            &got,
            &want,
            1e-4,
            1e-4,
        );
    }
}

fn matmul_bf16_every_layout() {
    let d = gpu();
    let mut r = rng(4);
    for (ta, tb, batch, bb) in gemm_cases() {
        let (a, b) = gemm_operands(&mut r, (40, 72, 256), ta, tb, &batch, bb);
        let (a, b) = (
            CPU.cast(&a, DType::BF16).unwrap(),
            CPU.cast(&b, DType::BF16).unwrap(),
        );
        let g = Gemm {
            trans_a: ta,
            trans_b: tb,
            alpha: 1.0,
        };
        let want = CPU.matmul(&a, &b, g).unwrap();
        let got = d.backend().matmul(&up(&d, &a), &up(&d, &b), g).unwrap();
        // bf16 products are exact in f32; tensor-core accumulation order and any internal
        // reduced-precision steps make it looser than f32.
        check(
            &format!("matmul bf16 ta={ta} tb={tb} batch={batch:?} b_batched={bb}"),
            &got,
            &want,
            2e-3,
            2e-3,
        );
    }
}

fn matmul_into_a_view_with_beta() {
    let d = gpu();
    let mut r = rng(5);
    for beta in [0.0f32, 0.5] {
        for (ta, tb, batch, bb) in [(false, true, vec![2], false), (true, false, vec![], false)] {
            let (a, b) = gemm_operands(&mut r, (9, 11, 17), ta, tb, &batch, bb);
            let g = Gemm {
                trans_a: ta,
                trans_b: tb,
                alpha: 1.25,
            };
            let mut oshape = batch.clone();
            oshape.extend([9, 11]);
            let n: usize = oshape.iter().product();
            // the output is a view 13 elements into a larger buffer; the rest must not change
            let big = randn(&mut r, &[n + 30]);
            let mut want = CPU.copy(&big).unwrap();
            want.with_view_mut(13, &oshape, |o| CPU.matmul_into(&a, &b, g, o, beta))
                .unwrap();
            let mut got = up(&d, &big);
            let (ga, gb) = (up(&d, &a), up(&d, &b));
            got.with_view_mut(13, &oshape, |o| {
                d.backend().matmul_into(&ga, &gb, g, o, beta)
            })
            .unwrap();
            check(
                &format!("matmul_into beta={beta} ta={ta} tb={tb}"),
                &got,
                &want,
                1e-4,
                1e-4,
            );
        }
    }
    // a shared output storage is refused, not silently written
    let o = d.backend().zeros(&[2, 2], DType::F32).unwrap();
    let mut o2 = o.clone();
    let a = up(&d, &randn(&mut r, &[2, 2]));
    assert!(d
        .backend()
        .matmul_into(&a, &a, Gemm::nn(), &mut o2, 0.0)
        .is_err());
}

// ---- elementwise ---------------------------------------------------------------------------

fn elementwise_ops() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(6);
    let shape = [7, 131];
    let x = uniform(&mut r, &shape, -4.0, 4.0);
    let y = uniform(&mut r, &shape, -4.0, 4.0);
    let (gx, gy) = (up(&d, &x), up(&d, &y));
    // exact ops
    check(
        "add",
        &b.add(&gx, &gy).unwrap(),
        &CPU.add(&x, &y).unwrap(),
        0.0,
        0.0,
    );
    check(
        "mul",
        &b.mul(&gx, &gy).unwrap(),
        &CPU.mul(&x, &y).unwrap(),
        0.0,
        0.0,
    );
    check(
        "scale",
        &b.scale(&gx, -0.3).unwrap(),
        &CPU.scale(&x, -0.3).unwrap(),
        0.0,
        0.0,
    );
    let bias = randn(&mut r, &[131]);
    check(
        "bias_add",
        &b.bias_add(&gx, &up(&d, &bias)).unwrap(),
        &CPU.bias_add(&x, &bias).unwrap(),
        0.0,
        0.0,
    );
    // Every activation, forward and backward (from the value it saves); libm vs CUDA math:
    // a few ulp.
    for &op in Unary::ALL {
        let fx = CPU.unary(op, &x).unwrap();
        check(op.name(), &b.unary(op, &gx).unwrap(), &fx, 1e-6, 1e-5);
        let saved = match op.saves() {
            Saved::Input => x.clone(),
            Saved::Output => fx,
        };
        check(
            &format!("{} backward", op.name()),
            &b.unary_backward(op, &gy, &up(&d, &saved)).unwrap(),
            &CPU.unary_backward(op, &y, &saved).unwrap(),
            1e-6,
            1e-5,
        );
    }
    // add_assign into a view of a larger buffer
    let big = randn(&mut r, &[1000]);
    let delta = randn(&mut r, &[10, 20]);
    let mut want = CPU.copy(&big).unwrap();
    want.with_view_mut(100, &[10, 20], |v| CPU.add_assign(v, &delta))
        .unwrap();
    let mut got = up(&d, &big);
    let gd = up(&d, &delta);
    got.with_view_mut(100, &[10, 20], |v| b.add_assign(v, &gd))
        .unwrap();
    check("add_assign (view)", &got, &want, 0.0, 0.0);
    // add_assign_parts: disjoint parts (one empty, one at the very end) in one launch
    let parts: Vec<(usize, Tensor)> = [(0, 5), (5, 0), (300, 64), (900, 100)]
        .into_iter()
        .map(|(o, n)| (o, randn(&mut r, &[n])))
        .collect();
    let refs = |ps: &[(usize, Tensor)]| -> Vec<(usize, Tensor)> {
        ps.iter().map(|(o, t)| (*o, up(&d, t))).collect()
    };
    let mut want = CPU.copy(&big).unwrap();
    let cpu_parts: Vec<(usize, &Tensor)> = parts.iter().map(|(o, t)| (*o, t)).collect();
    CPU.add_assign_parts(&mut want, &cpu_parts).unwrap();
    let gparts = refs(&parts);
    let gpu_parts: Vec<(usize, &Tensor)> = gparts.iter().map(|(o, t)| (*o, t)).collect();
    let mut got = up(&d, &big);
    b.add_assign_parts(&mut got, &gpu_parts).unwrap();
    check("add_assign_parts", &got, &want, 0.0, 0.0);
    // overlapping or out-of-range parts: an error on both backends, nothing written
    for bad in [
        vec![(0, &parts[0].1), (4, &parts[0].1)],
        vec![(990, &parts[2].1)],
    ] {
        assert!(CPU.add_assign_parts(&mut want, &bad).is_err());
    }
    for bad in [
        vec![(0, &gparts[0].1), (4, &gparts[0].1)],
        vec![(990, &gparts[2].1)],
    ] {
        assert!(b.add_assign_parts(&mut got, &bad).is_err());
    }
    check("add_assign_parts (refused)", &got, &want, 0.0, 0.0);
    // axpby and fill_zero in place, on views of the big buffer
    let x = randn(&mut r, &[10, 20]);
    let mut want = CPU.copy(&big).unwrap();
    want.with_view_mut(100, &[10, 20], |v| CPU.axpby(v, 0.9, &x, 0.05))
        .unwrap();
    want.with_view_mut(500, &[7], |v| CPU.fill_zero(v)).unwrap();
    let mut got = up(&d, &big);
    let gx2 = up(&d, &x);
    got.with_view_mut(100, &[10, 20], |v| b.axpby(v, 0.9, &gx2, 0.05))
        .unwrap();
    got.with_view_mut(500, &[7], |v| b.fill_zero(v)).unwrap();
    check("axpby and fill_zero (views)", &got, &want, 1e-7, 1e-6);
    // wrong dtype or device: an error, not a crash
    let xb = b.cast(&gx, DType::BF16).unwrap();
    assert!(b.unary(Unary::Gelu, &xb).is_err());
    assert!(b.add(&gx, &y).is_err());
    assert!(b.add(&gx, &up(&d, &randn(&mut r, &[7, 130]))).is_err());
}

fn sum_rows_is_deterministic_and_accurate() {
    let d = gpu();
    let mut r = rng(7);
    for shape in [
        vec![3000, 100],
        vec![7, 769],
        vec![2, 3, 5],
        vec![1, 1],
        vec![65, 33],
        // Either side of the one-pass limit for a few rows.
        vec![32, 40],
        vec![33, 40],
    ] {
        let x = randn(&mut r, &shape);
        let gx = up(&d, &x);
        let got = d.backend().sum_rows(&gx).unwrap();
        let rows = x.numel() / shape.last().unwrap();
        // CPU sums in f64; the GPU in f32 in two levels.
        let tol = 2e-6 * rows as f32;
        check(
            &format!("sum_rows {shape:?}"),
            &got,
            &CPU.sum_rows(&x).unwrap(),
            tol,
            1e-5,
        );
        let again = d.backend().sum_rows(&gx).unwrap();
        assert_eq!(
            host(&got),
            host(&again),
            "sum_rows {shape:?} is not deterministic"
        );
    }
}

// ---- normalisation and softmax ---------------------------------------------------------------

fn layernorm_forward_backward() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(8);
    for (rows, dim) in [(37, 768), (300, 33), (1, 1)] {
        let x = uniform(&mut r, &[rows, dim], -3.0, 5.0);
        let w = randn(&mut r, &[dim]);
        let bias = randn(&mut r, &[dim]);
        let want = CPU.layernorm(&x, &w, &bias, 1e-12).unwrap();
        let got = b
            .layernorm(&up(&d, &x), &up(&d, &w), &up(&d, &bias), 1e-12)
            .unwrap();
        let what = format!("layernorm [{rows}, {dim}]");
        // f32 statistics against the CPU's f64 ones
        check(&format!("{what} y"), &got.y, &want.y, 2e-5, 1e-4);
        check(&format!("{what} mean"), &got.mean, &want.mean, 1e-6, 1e-5);
        check(&format!("{what} rstd"), &got.rstd, &want.rstd, 1e-6, 1e-4);
        let dy = randn(&mut r, &[rows, dim]);
        for affine in [false, true] {
            let wg = CPU
                .layernorm_backward(&dy, &x, &w, &want.mean, &want.rstd, affine)
                .unwrap();
            let gg = b
                .layernorm_backward(
                    &up(&d, &dy),
                    &up(&d, &x),
                    &up(&d, &w),
                    &up(&d, &want.mean),
                    &up(&d, &want.rstd),
                    affine,
                )
                .unwrap();
            check(&format!("{what} dx"), &gg.dx, &wg.dx, 2e-5, 1e-4);
            assert_eq!(gg.dw.is_some(), affine);
            assert_eq!(gg.db.is_some(), affine);
            if affine {
                let tol = 2e-6 * rows as f32;
                check(
                    &format!("{what} dw"),
                    gg.dw.as_ref().unwrap(),
                    wg.dw.as_ref().unwrap(),
                    tol,
                    1e-4,
                );
                check(
                    &format!("{what} db"),
                    gg.db.as_ref().unwrap(),
                    wg.db.as_ref().unwrap(),
                    tol,
                    1e-4,
                );
            }
        }
    }
}

/// The fused ops of the ViLT block against the CPU's unfused sequences, with and without the
/// bias and with zero, one, two and three adapter parts; the residual sum and GELU's input are
/// the same f32 additions in the same order, so they must agree to the bit.
fn fused_block_ops() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(21);
    for (rows, dim) in [(37, 768), (300, 33), (1, 1)] {
        let what = format!("[{rows}, {dim}]");
        let y = randn(&mut r, &[rows, dim]);
        let x = randn(&mut r, &[rows, dim]);
        let bias = randn(&mut r, &[dim]);
        let parts: Vec<Tensor> = (0..3).map(|_| randn(&mut r, &[rows, dim])).collect();
        let (yd, xd, bd) = (up(&d, &y), up(&d, &x), up(&d, &bias));
        let parts_d: Vec<Tensor> = parts.iter().map(|p| up(&d, p)).collect();
        for with_bias in [false, true] {
            let (bc, bg) = (with_bias.then_some(&bias), with_bias.then_some(&bd));
            for n in 0..=3 {
                let pc: Vec<&Tensor> = parts[..n].iter().collect();
                let pg: Vec<&Tensor> = parts_d[..n].iter().collect();
                let want = CPU.bias_add_parts(&y, bc, &pc).unwrap();
                let got = b.bias_add_parts(&yd, bg, &pg).unwrap();
                check(
                    &format!("bias_add_parts {what} bias {with_bias} parts {n}"),
                    &got,
                    &want,
                    0.0,
                    0.0,
                );
            }
            let (pre_c, out_c) = CPU.bias_gelu(&y, bc).unwrap();
            let (pre_g, out_g) = b.bias_gelu(&yd, bg).unwrap();
            check(&format!("bias_gelu {what} pre"), &pre_g, &pre_c, 0.0, 0.0);
            // erff of the device library against the host's: a few ulps
            check(&format!("bias_gelu {what} out"), &out_g, &out_c, 1e-6, 1e-5);
            let w = randn(&mut r, &[dim]);
            let lb = randn(&mut r, &[dim]);
            let (s_c, ln_c) = CPU.add_layernorm(&x, &y, bc, &w, &lb, 1e-12).unwrap();
            let (s_g, ln_g) = b
                .add_layernorm(&xd, &yd, bg, &up(&d, &w), &up(&d, &lb), 1e-12)
                .unwrap();
            check(&format!("add_layernorm {what} s"), &s_g, &s_c, 0.0, 0.0);
            check(
                &format!("add_layernorm {what} y"),
                &ln_g.y,
                &ln_c.y,
                2e-5,
                1e-4,
            );
            check(
                &format!("add_layernorm {what} mean"),
                &ln_g.mean,
                &ln_c.mean,
                1e-6,
                1e-5,
            );
            check(
                &format!("add_layernorm {what} rstd"),
                &ln_g.rstd,
                &ln_c.rstd,
                1e-6,
                1e-4,
            );
        }
    }
    let y = randn(&mut r, &[4, 8]);
    let bad = randn(&mut r, &[7]);
    for err in [
        b.bias_add_parts(&up(&d, &y), Some(&up(&d, &bad)), &[])
            .err(),
        b.bias_add_parts(&up(&d, &y), None, &[&up(&d, &bad)]).err(),
        b.bias_gelu(&up(&d, &y), Some(&up(&d, &bad))).err(),
    ] {
        let msg = err.expect("a misfit bias or part is refused").to_string();
        assert!(
            msg.contains("does not fit") || msg.contains("shape"),
            "{msg}"
        );
    }
}

fn softmax_forward_backward() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(9);
    for shape in [vec![3, 5, 16], vec![10, 1000], vec![4, 1]] {
        let x = uniform(&mut r, &shape, -30.0, 30.0);
        let want = CPU.softmax(&x).unwrap();
        let got = b.softmax(&up(&d, &x)).unwrap();
        check(&format!("softmax {shape:?}"), &got, &want, 1e-7, 1e-5);
        let dy = randn(&mut r, &shape);
        check(
            &format!("softmax_backward {shape:?}"),
            &b.softmax_backward(&up(&d, &dy), &got).unwrap(),
            &CPU.softmax_backward(&dy, &want).unwrap(),
            1e-6,
            1e-4,
        );
    }
}

// ---- attention -----------------------------------------------------------------------------

fn attention_forward_backward() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(10);
    // (B, T, H, Dh): B ≤ H loops over samples, B > H loops over heads
    for (bsz, t, heads, dh) in [(2, 13, 3, 8), (5, 9, 2, 16), (1, 1, 1, 4), (3, 40, 12, 64)] {
        let dm = heads * dh;
        let q = randn(&mut r, &[bsz, t, dm]);
        let k = randn(&mut r, &[bsz, t, dm]);
        let v = randn(&mut r, &[bsz, t, dm]);
        let m = mask(&mut r, bsz, t, bsz > 1);
        let (wo, wp) = CPU.attention(&q, &k, &v, &m, heads).unwrap();
        let (gq, gk, gv) = (up(&d, &q), up(&d, &k), up(&d, &v));
        let (go, gp) = b.attention(&gq, &gk, &gv, &up(&d, &m), heads).unwrap();
        let what = format!("attention B={bsz} T={t} H={heads} Dh={dh}");
        check(&format!("{what} probs"), &gp, &wp, 1e-6, 1e-4);
        check(&format!("{what} out"), &go, &wo, 1e-5, 1e-4);
        let dout = randn(&mut r, &[bsz, t, dm]);
        let (wdq, wdk, wdv) = CPU
            .attention_backward(&dout, &q, &k, &v, &wp, heads)
            .unwrap();
        let (gdq, gdk, gdv) = b
            .attention_backward(&up(&d, &dout), &gq, &gk, &gv, &gp, heads)
            .unwrap();
        check(&format!("{what} dq"), &gdq, &wdq, 1e-5, 1e-3);
        check(&format!("{what} dk"), &gdk, &wdk, 1e-5, 1e-3);
        check(&format!("{what} dv"), &gdv, &wdv, 1e-5, 1e-4);
    }
}

// ---- indexing ------------------------------------------------------------------------------

fn gather_scatter_concat_split() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(11);
    let table = randn(&mut r, &[50, 3, 7]);
    let idx = Tensor::from_i32((0..24).map(|_| r.random_range(0..50)).collect(), &[4, 6]).unwrap();
    let gi = up(&d, &idx);
    check(
        "gather_rows",
        &b.gather_rows(&up(&d, &table), &gi).unwrap(),
        &CPU.gather_rows(&table, &idx).unwrap(),
        0.0,
        0.0,
    );
    // repeated indices: the atomic adds of one row may come in any order
    let dy = randn(&mut r, &[4, 6, 3, 7]);
    check(
        "scatter_add_rows",
        &b.scatter_add_rows(&up(&d, &dy), &gi, 50).unwrap(),
        &CPU.scatter_add_rows(&dy, &idx, 50).unwrap(),
        1e-6,
        1e-5,
    );
    let a1 = randn(&mut r, &[3, 5, 8]);
    let a2 = randn(&mut r, &[3, 2, 8]);
    let cat = CPU.concat_seq(&a1, &a2).unwrap();
    let gcat = b.concat_seq(&up(&d, &a1), &up(&d, &a2)).unwrap();
    check("concat_seq", &gcat, &cat, 0.0, 0.0);
    for t1 in [0, 3, 7] {
        let (wa, wb) = CPU.split_seq(&cat, t1).unwrap();
        let (ga, gb) = b.split_seq(&gcat, t1).unwrap();
        check(&format!("split_seq {t1} a"), &ga, &wa, 0.0, 0.0);
        check(&format!("split_seq {t1} b"), &gb, &wb, 0.0, 0.0);
    }
    // a per-row choice among three tensors: only the rows choosing k are copied
    let choice = Tensor::from_i32(vec![2, 0, 1, 1, 0, 2, 2], &[7]).unwrap();
    let srcs: Vec<Tensor> = (0..3).map(|_| randn(&mut r, &[7, 3, 5])).collect();
    let (mut want, mut got) = (randn(&mut r, &[7, 3, 5]), None);
    for (k, src) in srcs.iter().enumerate() {
        let mut g = got.unwrap_or_else(|| up(&d, &want));
        b.copy_rows_where(&mut g, &up(&d, src), &up(&d, &choice), k, 3)
            .unwrap();
        CPU.copy_rows_where(&mut want, src, &choice, k, 3).unwrap();
        check(&format!("copy_rows_where k = {k}"), &g, &want, 0.0, 0.0);
        got = Some(g);
    }
    // an input view at an offset
    let big = randn(&mut r, &[500]);
    let view = big.view(17, &[3, 5, 8]).unwrap();
    check(
        "concat_seq (view input)",
        &b.concat_seq(&up(&d, &big).view(17, &[3, 5, 8]).unwrap(), &up(&d, &a2))
            .unwrap(),
        &CPU.concat_seq(&view, &a2).unwrap(),
        0.0,
        0.0,
    );
}

fn invalid_indices_fail_at_the_next_sync() {
    gpu();
    // A backend of its own: its error word must not fail the tests running beside it.
    let d = Device::Cuda(delo::backend::CudaBackend::new_private(0).unwrap());
    let b = d.backend();
    let mut r = rng(12);
    let table = up(&d, &randn(&mut r, &[5, 4]));
    let bad = up(&d, &Tensor::from_i32(vec![1, 5], &[2]).unwrap());
    let g = b.gather_rows(&table, &bad).unwrap(); // queued; the check comes later
    let e = b.synchronize().unwrap_err().to_string();
    assert!(e.contains("gather_rows"), "{e}");
    // the error word was cleared
    b.synchronize().unwrap();
    drop(g);
    let logits = up(&d, &randn(&mut r, &[2, 3]));
    let lab = up(&d, &Tensor::from_i32(vec![0, 3], &[2]).unwrap());
    let loss = b.cross_entropy(&logits, &lab).unwrap();
    let e = loss.item().unwrap_err().to_string();
    assert!(e.contains("cross_entropy"), "{e}");
    let neg = up(&d, &Tensor::from_i32(vec![-1, 0], &[2]).unwrap());
    let dl = up(&d, &Tensor::scalar(1.0));
    let _ = b.cross_entropy_backward(&dl, &logits, &neg).unwrap();
    assert!(b.synchronize().is_err());
    let _ = b
        .scatter_add_rows(&up(&d, &randn(&mut r, &[2, 4])), &bad, 5)
        .unwrap();
    assert!(b
        .synchronize()
        .unwrap_err()
        .to_string()
        .contains("scatter_add_rows"));
    b.synchronize().unwrap();
    // A row choosing none of the n tensors (device-made choices are checked on the device).
    let mut dst = up(&d, &randn(&mut r, &[2, 4]));
    let src = up(&d, &randn(&mut r, &[2, 4]));
    let out_of_range = up(&d, &Tensor::from_i32(vec![0, 2], &[2]).unwrap());
    b.copy_rows_where(&mut dst, &src, &out_of_range, 0, 2)
        .unwrap();
    assert!(b
        .synchronize()
        .unwrap_err()
        .to_string()
        .contains("copy_rows_where"));
    b.synchronize().unwrap();
}

// ---- reductions ----------------------------------------------------------------------------

fn masked_mean_and_cosine() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(13);
    let (bsz, t, dim) = (4, 19, 300);
    let x = randn(&mut r, &[bsz, t, dim]);
    let m = mask(&mut r, bsz, t, true); // row 1 has no valid position
    let gm = up(&d, &m);
    check(
        "masked_mean",
        &b.masked_mean(&up(&d, &x), &gm).unwrap(),
        &CPU.masked_mean(&x, &m).unwrap(),
        1e-6,
        1e-5,
    );
    let dy = randn(&mut r, &[bsz, dim]);
    check(
        "masked_mean_backward",
        &b.masked_mean_backward(&up(&d, &dy), &gm).unwrap(),
        &CPU.masked_mean_backward(&dy, &m).unwrap(),
        0.0,
        1e-6,
    );
    let a = randn(&mut r, &[6, 257]);
    let mut bv = host(&randn(&mut r, &[6, 257]));
    bv[257..2 * 257].iter_mut().for_each(|v| *v = 0.0); // a zero row: the clamp
    bv[2 * 257..3 * 257].iter_mut().for_each(|v| *v *= 1e-10); // below the clamp
    let bb = Tensor::from_f32(bv, &[6, 257]).unwrap();
    let (ga, gb) = (up(&d, &a), up(&d, &bb));
    check(
        "cosine",
        &b.cosine(&ga, &gb).unwrap(),
        &CPU.cosine(&a, &bb).unwrap(),
        1e-6,
        1e-5,
    );
    let dc = randn(&mut r, &[6]);
    let (wda, wdb) = CPU.cosine_backward(&dc, &a, &bb).unwrap();
    let (gda, gdb) = b.cosine_backward(&up(&d, &dc), &ga, &gb).unwrap();
    check("cosine_backward da", &gda, &wda, 1e-6, 1e-4);
    check("cosine_backward db", &gdb, &wdb, 1e-6, 1e-4);
}

// ---- losses --------------------------------------------------------------------------------

fn losses_and_their_gradients() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(14);
    let dl_h = Tensor::scalar(0.7);
    let dl = up(&d, &dl_h);
    for (rows, c) in [(4, 101), (33, 23), (1, 1)] {
        let logits = uniform(&mut r, &[rows, c], -8.0, 8.0);
        let y = labels(&mut r, rows, c);
        let (gl, gy) = (up(&d, &logits), up(&d, &y));
        let what = format!("[{rows}, {c}]");
        let l = b.cross_entropy(&gl, &gy).unwrap();
        assert_eq!(l.shape(), &[1]);
        assert!(l.device().is_cuda());
        check(
            &format!("cross_entropy {what}"),
            &l,
            &CPU.cross_entropy(&logits, &y).unwrap(),
            1e-5,
            1e-5,
        );
        check(
            &format!("cross_entropy_backward {what}"),
            &b.cross_entropy_backward(&dl, &gl, &gy).unwrap(),
            &CPU.cross_entropy_backward(&dl_h, &logits, &y).unwrap(),
            1e-7,
            1e-5,
        );
        let tg = uniform(&mut r, &[rows, c], 0.0, 1.0);
        let gt = up(&d, &tg);
        check(
            &format!("bce {what}"),
            &b.bce_with_logits(&gl, &gt).unwrap(),
            &CPU.bce_with_logits(&logits, &tg).unwrap(),
            1e-5,
            1e-5,
        );
        check(
            &format!("bce_backward {what}"),
            &b.bce_with_logits_backward(&dl, &gl, &gt).unwrap(),
            &CPU.bce_with_logits_backward(&dl_h, &logits, &tg).unwrap(),
            1e-7,
            1e-5,
        );
        let target = uniform(&mut r, &[rows, c], -5.0, 5.0);
        let gtar = up(&d, &target);
        check(
            &format!("kl_categorical {what}"),
            &b.kl_categorical(&gtar, &gl).unwrap(),
            &CPU.kl_categorical(&target, &logits).unwrap(),
            1e-5,
            1e-4,
        );
        check(
            &format!("kl_categorical_backward {what}"),
            &b.kl_categorical_backward(&dl, &gtar, &gl).unwrap(),
            &CPU.kl_categorical_backward(&dl_h, &target, &logits)
                .unwrap(),
            1e-7,
            1e-5,
        );
        check(
            &format!("kl_bernoulli {what}"),
            &b.kl_bernoulli(&gtar, &gl).unwrap(),
            &CPU.kl_bernoulli(&target, &logits).unwrap(),
            1e-5,
            1e-4,
        );
        check(
            &format!("kl_bernoulli_backward {what}"),
            &b.kl_bernoulli_backward(&dl, &gtar, &gl).unwrap(),
            &CPU.kl_bernoulli_backward(&dl_h, &target, &logits).unwrap(),
            1e-7,
            1e-5,
        );
    }
    // the upstream gradient must be one element
    let two = up(&d, &Tensor::from_f32(vec![1.0, 1.0], &[2]).unwrap());
    let l = up(&d, &randn(&mut r, &[2, 3]));
    assert!(b.bce_with_logits_backward(&two, &l, &l).is_err());
}

// ---- optimiser -----------------------------------------------------------------------------

fn adamw_steps() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(15);
    let n = 10_007;
    let hp = |step| AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        step,
    };
    let mut p = randn(&mut r, &[n]);
    let mut m = CPU.zeros(&[n], DType::F32).unwrap();
    let mut v = CPU.zeros(&[n], DType::F32).unwrap();
    let (mut gp, mut gm, mut gv) = (up(&d, &p), up(&d, &m), up(&d, &v));
    for step in 1..=5 {
        let g = randn(&mut r, &[n]);
        CPU.adamw(&mut p, &g, &mut m, &mut v, hp(step)).unwrap();
        b.adamw(&mut gp, &up(&d, &g), &mut gm, &mut gv, hp(step))
            .unwrap();
    }
    // one formulation on both sides; only FMA contraction may differ
    check("adamw params", &gp, &p, 1e-6, 1e-5);
    check("adamw m", &gm, &m, 1e-7, 1e-5);
    check("adamw v", &gv, &v, 1e-8, 1e-5);
    let g = up(&d, &randn(&mut r, &[n]));
    assert!(b.adamw(&mut gp, &g, &mut gm, &mut gv, hp(0)).is_err());
}

/// The patch rows `patches_from_u8` gathers from 8-bit images in the device image cache equal
/// its CPU twin's bit for bit (which equal the collated host pixels': `backend::patches`),
/// for images of several sizes (padding rows and columns), the white stand-in and repeated
/// rows; a plan outside the cache is refused before any launch.
fn patches_from_cached_images_are_the_host_ones() {
    use delo::backend::cuda::DeviceImageCache;
    use delo::backend::patches::{patches_from_u8, PatchPlan, StoredImage};
    use delo::data::image::ImageProcessor;
    let Device::Cuda(be) = gpu() else {
        unreachable!()
    };
    let mut r = rng(31);
    let blank = ImageProcessor::square(16).missing();
    let sizes = [(16, 16), (9, 13), (16, 8)];
    let cache = DeviceImageCache::new(&be, 4096).unwrap();
    let mut store = vec![0u8; cache.capacity()];
    let mut samples = Vec::new();
    for (key, (h, w)) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..3 * h * w).map(|_| r.random_range(0..=255u8)).collect();
        samples.push(cache.store(key, *h, *w, &data).unwrap());
        let s = samples.last().unwrap();
        store[s.offset..s.offset + data.len()].copy_from_slice(&data);
    }
    let s = cache
        .store(99, blank.height, blank.width, &blank.data)
        .unwrap();
    store[s.offset..s.offset + blank.data.len()].copy_from_slice(&blank.data);
    // A key stored again keeps its first image.
    assert_eq!(cache.store(99, 1, 1, &[0, 0, 0]).unwrap(), s);
    samples.push(s);
    let (p, gw) = (4, 4);
    let rows: Vec<(usize, usize)> = (0..samples.len())
        .flat_map(|s| (0..16).map(move |c| (s, c)))
        .chain([(1, 15), (3, 0)])
        .collect();
    let plan = PatchPlan {
        samples: samples.clone(),
        rows,
        patch: p,
        grid_w: gw,
    };
    let got = cache.patches(&plan).unwrap();
    assert_eq!(got.shape(), [plan.rows.len(), 3 * p * p]);
    let want = patches_from_u8(&store, &plan).unwrap();
    let got = host(&got);
    let differ = got
        .iter()
        .zip(&want)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert_eq!(differ, None, "first differing value");
    assert!(want.contains(&1.0) && want.contains(&0.0));
    let outside = PatchPlan {
        samples: vec![StoredImage {
            offset: 4000,
            ..samples[0]
        }],
        rows: vec![(0, 0)],
        ..plan
    };
    let err = cache.patches(&outside).unwrap_err().to_string();
    assert!(err.contains("outside a store"), "{err}");
    let err = cache.store(7, 40, 40, &[1; 4800]).unwrap_err().to_string();
    assert!(err.contains("full"), "{err}");
}

/// An op called on one device with operands moved there by the second argument; its error.
type BadCall<'a> = Box<dyn Fn(&dyn Backend, &dyn Fn(&Tensor) -> Tensor) -> String + 'a>;

/// Operand checks live in one place (`backend::shapes`): a bad operand is refused with the same
/// message on the CPU and on CUDA, before anything is launched.
fn bad_operands_get_one_message_on_both_devices() {
    let d = gpu();
    let b = d.backend();
    let mut r = rng(21);
    let t = |r: &mut StdRng, shape: &[usize]| randn(r, shape);
    let (x, w3, w4, m3) = (
        t(&mut r, &[2, 3, 4]),
        t(&mut r, &[3]),
        t(&mut r, &[4]),
        t(&mut r, &[6]),
    );
    let cases: Vec<(&str, BadCall)> = vec![
        (
            "bias_add",
            Box::new(|be, on| be.bias_add(&on(&x), &on(&w3)).unwrap_err().to_string()),
        ),
        (
            "layernorm",
            Box::new(|be, on| {
                be.layernorm(&on(&x), &on(&w4), &on(&w3), 1e-5)
                    .err()
                    .unwrap()
                    .to_string()
            }),
        ),
        (
            "layernorm_backward",
            Box::new(|be, on| {
                be.layernorm_backward(&on(&x), &on(&x), &on(&w4), &on(&w3), &on(&m3), false)
                    .err()
                    .unwrap()
                    .to_string()
            }),
        ),
        (
            "attention_backward",
            Box::new(|be, on| {
                // k has another width than q: refused by the shared check on both devices
                be.attention_backward(&on(&x), &on(&x), &on(&w4), &on(&x), &on(&x), 2)
                    .err()
                    .unwrap()
                    .to_string()
            }),
        ),
        (
            "split_seq",
            Box::new(|be, on| be.split_seq(&on(&x), 4).err().unwrap().to_string()),
        ),
        (
            "masked_mean_backward",
            Box::new(|be, on| {
                be.masked_mean_backward(&on(&w4), &on(&x))
                    .unwrap_err()
                    .to_string()
            }),
        ),
    ];
    for (op, case) in &cases {
        let cpu = case(&CPU, &|t: &Tensor| t.clone());
        let cuda = case(b, &|t: &Tensor| up(&d, t));
        assert!(cpu.contains(op), "{op}: {cpu}");
        assert_eq!(cuda, cpu, "{op}");
    }
}
