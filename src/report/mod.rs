//! Run reports: metrics, results.json, report.md and plots.

pub mod metrics;
