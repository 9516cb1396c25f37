//! Data: tokenizer and image pre-processing.

pub mod image;
pub mod tokenizer;
