//! `delo params` reproduces the paper's Table 5 (ρ = r, 10 tasks of 10 classes, ViLT-B/32 with
//! a 512-row text position table).

mod common;

use delo::delo::config::{count_params, DeloConfig};
use delo::vilt::ViltConfig;

fn millions(n: usize) -> String {
    format!("{:.1}M", n as f64 / 1e6)
}

#[test]
fn table_5_counts() {
    let rows = [
        (16, 2, "7.1M", "182.8M"),
        (16, 4, "12.4M", "235.9M"),
        (16, 8, "23.0M", "342.1M"),
        (32, 2, "14.2M", "253.6M"),
        (32, 4, "24.8M", "359.8M"),
        (32, 8, "46.0M", "572.1M"),
    ];
    for (e, r, trainable, total) in rows {
        let cfg = DeloConfig {
            experts: e,
            rank: r,
            factor_rank: r,
            ..DeloConfig::default()
        };
        let c = count_params(&cfg, &ViltConfig::base(), 10, 10, 512);
        assert_eq!(
            (
                millions(c.trainable_per_task).as_str(),
                millions(c.total).as_str()
            ),
            (trainable, total),
            "E={e}, r={r}"
        );
    }
}

#[test]
fn rank_one_factors_are_far_smaller() {
    // The paper's rank-one factors (ρ = 1) at E=16, r=4: 72 adapters of
    // 16·768 + 16·768 (pools) + 2·(16·768 + 16) (routers) + 4·768·16 (compatibility) scalars.
    let c = count_params(&DeloConfig::default(), &ViltConfig::base(), 10, 10, 512);
    let per_adapter = 16 * 768 + 16 * 768 + 2 * (16 * 768 + 16) + 4 * 768 * 16;
    assert_eq!(c.trainable_per_task, 72 * per_adapter + 768 * 10 + 10);
}

#[test]
fn params_command_prints_the_table_row() {
    let out = std::process::Command::new(common::delo_exe())
        .args([
            "params",
            "--experts",
            "16",
            "--rank",
            "4",
            "--factor-rank",
            "r",
        ])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && s.contains("12.4M") && s.contains("235.9M"),
        "{s}"
    );
}
