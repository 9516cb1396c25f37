//! DeLo: per-task pools of low-rank factors, chosen per sample by routers, added to the frozen
//! linears of ViLT (docs/method.md).

pub mod adapter;
pub mod config;
pub mod experts;
pub mod keys;
pub mod losses;
pub mod names;
pub mod params;
pub mod variant;
