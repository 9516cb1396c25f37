//! `delo bench forward` without its PyTorch reference: the engine's row must still come out.

use delo::bench::{forward_cpu_vs_torch, forward_table, ForwardSetup, PyScript};
use delo::vilt::Preset;

#[test]
fn engine_row_prints_when_the_reference_cannot_run() {
    let script = PyScript::write("bench-test.py", "raise SystemExit(3)\n").unwrap();
    let setup = ForwardSetup {
        preset: Preset::Tiny,
        batch: 2,
        text_len: 8,
        image_size: None,
    };
    let (row, info) = forward_cpu_vs_torch(setup, &script, "/nonexistent/python3", 1, 2).unwrap();
    assert_eq!(row.delo_rounds.len(), 2);
    assert!(row.delo_s().is_finite() && row.delo_s() > 0.0);
    assert_eq!(row.torch_s(), None);
    assert_eq!((row.text_tokens, row.image_tokens), (8, 10));
    assert!(info.contains("not run"), "{info}");
    let table = forward_table(&row, &info);
    assert!(
        table.contains(
            "| Tiny (d 32, 2 layers, 2 heads), random init | 2 | 8 text + 10 image (96×96) |"
        ),
        "{table}"
    );
    assert!(table.contains("— (not measured) | — |"), "{table}");
}

#[test]
fn a_text_longer_than_the_position_table_is_refused() {
    let script = PyScript::write("bench-test-2.py", "").unwrap();
    let setup = ForwardSetup {
        preset: Preset::Tiny,
        batch: 1,
        text_len: 41,
        image_size: None,
    };
    let err = forward_cpu_vs_torch(setup, &script, "python3", 1, 1)
        .err()
        .expect("text_len 41 > 40 rows");
    assert!(err.to_string().contains("--text-len"), "{err}");
}
