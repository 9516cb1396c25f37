//! The ViLT backbone's I/O: configuration, weights by Hugging Face name, random initialisation
//! and the position-table resizing the forward needs (docs/vilt.md).

pub mod config;
pub mod embed;
pub mod init;
pub mod interp;
pub mod model;
pub mod target;
pub mod weights;

pub use config::ViltConfig;
pub use embed::{Embedded, Pixels, ViltInputs};
pub use init::{init_model_dir, init_weights, write_model_dir, InitOptions, Preset};
pub use interp::{image_positions_padded, resize_image_positions, stretch_text_positions};
pub use model::{Adapter, Features, NoAdapter, Vilt, ViltOutput};
pub use target::Target;
pub use weights::{
    expected_shapes, load_model_dir, LayerNorm, Linear, PatchEmbeddings, TextEmbeddings,
    ViltAttention, ViltEmbeddings, ViltLayer, ViltWeights,
};
