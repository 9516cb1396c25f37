//! Compiles every `kernels/*.cu` into one PTX module with nvcc, when nvcc can be found.
//!
//! nvcc is looked up as `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then on `PATH`. Without it the crate
//! builds CPU-only and warns; `REQUIRE_NVCC=1` turns that into an error (CI sets it so that every
//! kernel is compiled on every run). `$CUDA_ARCH` picks the virtual architecture (default
//! `sm_80`; `a`-suffixed architectures are refused because their PTX only loads on one chip).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|d| d.join("nvcc"))
            .find(|p| p.exists())
    })
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(delo_ptx)");
    for var in ["NVCC", "CUDA_HOME", "CUDA_ARCH", "REQUIRE_NVCC", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=kernels");
    let required = env::var("REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc() else {
        if required {
            panic!("REQUIRE_NVCC=1 but no nvcc was found (set NVCC, CUDA_HOME or PATH)");
        }
        println!("cargo:warning=nvcc not found: building without CUDA kernels (--device cuda will be refused)");
        return;
    };
    let arch = env::var("CUDA_ARCH").unwrap_or_else(|_| "sm_80".into());
    if arch.ends_with('a') {
        panic!("CUDA_ARCH={arch}: arch-specific ('a') targets are not portable; use e.g. sm_80 or sm_90");
    }
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // One translation unit: every kernel file is included into a single module.
    let unit = out.join("all_kernels.cu");
    let body: String = sources
        .iter()
        .map(|p| format!("#include \"{}\"\n", p.canonicalize().unwrap().display()))
        .collect();
    std::fs::write(&unit, body).unwrap();
    let ptx = out.join("kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch={}", arch.replace("sm_", "compute_")))
        .arg("-o")
        .arg(&ptx)
        .arg(&unit)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo:rustc-cfg=delo_ptx"),
        Ok(s) => panic!("nvcc failed ({s}) compiling kernels/*.cu"),
        Err(e) => panic!("could not run {}: {e}", nvcc.display()),
    }
}
