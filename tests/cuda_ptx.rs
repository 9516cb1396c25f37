//! Checks that need the embedded PTX but no GPU: every kernel the CUDA backend launches exists
//! in the PTX with exactly the parameter types its typed launcher passes, in order, and the
//! PTX is loadable by CUDA 13.0 drivers. Catches a wrong argument count, an int passed as a
//! long or a float, a renamed kernel, on machines that cannot run a kernel.

use std::collections::BTreeMap;

use delo::backend::cuda::{kernel_signatures, PTX};

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

#[test]
fn every_launcher_matches_its_ptx_entry() {
    let Some(ptx) = PTX else {
        println!("SKIP: built without nvcc, no PTX embedded");
        return;
    };
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

#[test]
fn ptx_is_loadable_by_cuda_13_0_drivers() {
    let Some(ptx) = PTX else {
        println!("SKIP: built without nvcc, no PTX embedded");
        return;
    };
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
