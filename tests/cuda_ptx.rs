//! Checks that need the embedded PTX but no GPU: every kernel the CUDA backend launches exists
//! in the PTX with exactly the parameter types its typed launcher passes, in order, and the
//! PTX is loadable by CUDA 13.0 drivers. Catches a wrong argument count, an int passed as a
//! long or a float, a renamed kernel, on machines that cannot run a kernel. A build without
//! nvcc has no PTX, and a machine without ptxas cannot assemble it: the tests that need them
//! are then reported as ignored, with the reason (`common::harness`, decided at run time).

mod common;

use std::collections::BTreeMap;

use common::harness::{self, embedded_ptx};
use delo::backend::cuda::{kernel_signatures, PTX};

fn main() {
    let no_ptxas = || {
        ptxas()
            .is_none()
            .then(|| "no ptxas found (set NVCC, CUDA_HOME or PATH)".to_string())
    };
    harness::main(vec![
        trial!(every_launcher_matches_its_ptx_entry).needs(embedded_ptx()),
        trial!(ptx_is_loadable_by_cuda_13_0_drivers).needs(embedded_ptx()),
        trial!(expert_and_route_kernels_are_declared),
        trial!(kernels_assemble_without_spills)
            .needs(embedded_ptx())
            .needs(no_ptxas()),
    ]);
}

/// The embedded PTX (the harness runs the tests that read it only where there is one).
fn ptx() -> &'static str {
    PTX.expect("built without nvcc, no PTX embedded")
}

/// `.entry name(.param .T name_param_0, ...)` of every kernel in the PTX.
fn entries(ptx: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut rest = ptx;
    while let Some(i) = rest.find(".entry ") {
        rest = &rest[i + ".entry ".len()..];
        let open = rest.find('(').expect("an .entry has a parameter list");
        let name = rest[..open].trim().to_string();
        let close = rest.find(')').expect("a parameter list ends");
        let params = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let toks: Vec<&str> = p.split_whitespace().collect();
                assert_eq!(toks[0], ".param", "{name}: unexpected parameter '{p}'");
                toks[1].to_string()
            })
            .collect();
        out.insert(name, params);
        rest = &rest[close..];
    }
    out
}

fn every_launcher_matches_its_ptx_entry() {
    let ptx = ptx();
    let found = entries(ptx);
    let declared = kernel_signatures();
    assert!(!declared.is_empty());
    for (name, params) in &declared {
        let got = found
            .get(*name)
            .unwrap_or_else(|| panic!("kernel {name} is declared but not in the PTX"));
        assert_eq!(
            got, params,
            "kernel {name}: PTX parameters {got:?}, launcher passes {params:?}"
        );
    }
    for name in found.keys() {
        assert!(
            declared.iter().any(|(n, _)| n == name),
            "kernel {name} is in the PTX but the backend has no launcher for it"
        );
    }
}

fn ptx_is_loadable_by_cuda_13_0_drivers() {
    let ptx = ptx();
    let version = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .expect("PTX has a .version line");
    let (major, minor) = version.trim().split_once('.').expect("major.minor");
    let v = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
    assert!(
        v <= (9, 0),
        "PTX ISA {version} needs a driver newer than CUDA 13.0"
    );
    let target = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".target "))
        .expect("PTX has a .target line");
    assert!(
        !target.trim().ends_with('a'),
        "arch-specific target {target}"
    );
}

/// The DeLo kernels (routing, the fused composition in its three register widths, the shared
/// deterministic reductions, the unfused path's helpers) are launched through typed launchers
/// (so `every_launcher_matches_its_ptx_entry` covers their parameter lists).
fn expert_and_route_kernels_are_declared() {
    let declared: Vec<&str> = kernel_signatures().iter().map(|(n, _)| *n).collect();
    for name in [
        "route_f32",
        "route_backward_f32",
        "route_dwc_f32",
        "expert_fwd_k4",
        "expert_fwd_k8",
        "expert_fwd_k16",
        "expert_bwd_k4",
        "expert_bwd_k8",
        "expert_bwd_k16",
        "expert_sum_tiles_f32",
        "expert_scatter_pool_f32",
        "expert_gather_f32",
        "expert_gate_scale_f32",
        "expert_dgates_f32",
    ] {
        assert!(declared.contains(&name), "no launcher for {name}");
    }
}

/// ptxas, next to the nvcc that built the PTX ($NVCC, $CUDA_HOME/bin or PATH), if any.
fn ptxas() -> Option<std::path::PathBuf> {
    let nvcc = std::env::var_os("NVCC")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("CUDA_HOME").map(|h| std::path::Path::new(&h).join("bin/nvcc"))
        })
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("nvcc"))
                    .find(|p| p.exists())
            })
        })?;
    let p = nvcc.parent()?.join("ptxas");
    p.exists().then_some(p)
}

/// Assembles the embedded PTX for sm_80 and sm_90 and checks that no kernel spills registers
/// or keeps a stack frame (local memory would turn the memory-bound kernels into
/// local-memory-bound ones), and that the fused kernels fit 256 threads a block.
fn kernels_assemble_without_spills() {
    let ptx = ptx();
    let ptxas = ptxas().expect("no ptxas found (set NVCC)");
    let dir = std::env::temp_dir().join(format!("delo-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("kernels.ptx");
    std::fs::write(&src, ptx).unwrap();
    for arch in ["sm_80", "sm_90"] {
        let out = std::process::Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-v")
            .arg(&src)
            .arg("-o")
            .arg(dir.join(format!("{arch}.cubin")))
            .output()
            .expect("running ptxas");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ptxas {arch} failed:\n{log}");
        // "Compiling entry function 'NAME' for 'sm_XX'" then "N bytes stack frame, N bytes
        // spill stores, N bytes spill loads" and "Used N registers".
        let mut current = String::new();
        let mut seen = 0;
        for line in log.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                current = rest.split('\'').next().unwrap_or_default().to_string();
                seen += 1;
            } else if line.contains("bytes stack frame") {
                let nums: Vec<u64> = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                assert_eq!(
                    nums,
                    [0, 0, 0],
                    "{arch} {current}: stack frame / spill stores / spill loads: {line}"
                );
            } else if let Some(rest) = line.split("Used ").nth(1) {
                let regs: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
                if current.starts_with("expert_") || current.starts_with("route_") {
                    // 65536 registers per SM: a 256-thread block needs at most 255 each
                    assert!(regs <= 255, "{arch} {current}: {regs} registers");
                    println!("{arch} {current}: {regs} registers");
                }
            }
        }
        assert_eq!(seen, kernel_signatures().len(), "{arch}: kernels assembled");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
