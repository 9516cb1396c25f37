//! The frozen backbone on its own: `delo forward`, `delo params` and `delo init-model`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use delo::vilt::Preset;
use delo::DeviceName;

use super::delo_args::DeloArgs;

#[derive(Args)]
pub(super) struct ForwardArgs {
    /// A Hugging Face ViLT model directory (config.json, model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Input safetensors file (pre-processed tensors).
    #[arg(long, required_unless_present_any = ["images", "texts", "items"], conflicts_with_all = ["images", "texts", "items"])]
    inputs: Option<PathBuf>,
    /// Image paths, one per line (relative to this file's folder; an empty line: no image).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Texts, one per line (an empty line: no text); line i goes with image line i.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Items as a CMML JSON list (`image`, `text`) or a CSV with `image,text` columns.
    #[arg(long, conflicts_with_all = ["images", "texts"])]
    items: Option<PathBuf>,
    /// With raw inputs: also write the pre-processed pixel_values, pixel_mask, input_ids,
    /// attention_mask and token_type_ids (safetensors, HF names) to this file.
    #[arg(long, conflicts_with = "inputs")]
    dump_inputs: Option<PathBuf>,
    /// With raw inputs: square image size (0: ViLT's shortest-edge resize, ViltProcessor's
    /// default).
    #[arg(long, default_value_t = 0)]
    image_size: u32,
    /// Output safetensors file.
    #[arg(long)]
    output: PathBuf,
    /// Stretch the text position table to this many rows when longer (MAP/RebQ use 512).
    #[arg(long, default_value_t = 0)]
    max_text_len: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
    /// Keep the frozen linear weights in bf16 (GPU mixed precision).
    #[arg(long)]
    bf16: bool,
}

/// `delo forward`: from pre-processed tensors (`--inputs`) or raw items.
pub(super) fn forward(a: &ForwardArgs) -> Result<()> {
    let device = a.device.open()?;
    let dtype = match a.bf16 {
        true => delo::DType::BF16,
        false => delo::DType::F32,
    };
    if let Some(inputs) = &a.inputs {
        delo::vilt::model::forward_file(
            &a.model,
            inputs,
            &a.output,
            a.max_text_len,
            &device,
            dtype,
        )?;
    } else {
        use delo::train::{forward, inputs};
        let items = match &a.items {
            Some(file) => inputs::read_items(file)?,
            None => inputs::read_line_lists(a.images.as_deref(), a.texts.as_deref())?,
        };
        let prep = forward::RawPrep {
            image_size: (a.image_size > 0).then_some(a.image_size),
            max_text_len: a.max_text_len,
        };
        let dump = a.dump_inputs.as_deref();
        forward::forward_raw(&a.model, &items, &prep, &a.output, dump, &device, dtype)?;
        if let Some(d) = dump {
            println!("wrote {}", d.display());
        }
    }
    println!("wrote {}", a.output.display());
    Ok(())
}

#[derive(Args)]
pub(super) struct ParamsArgs {
    /// A model directory (its config.json); default: the ViLT-B/32 dimensions.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    #[arg(long, default_value_t = 10)]
    classes_per_task: usize,
    /// Rows of the stretched text position table (512 as in the CMML code).
    #[arg(long, default_value_t = 512)]
    text_positions: usize,
    #[command(flatten)]
    delo: DeloArgs,
}

/// `delo params`: one row shaped like the paper's Table 5.
pub(super) fn params(a: &ParamsArgs) -> Result<()> {
    let cfg = a.delo.config()?;
    let vcfg = match &a.model {
        Some(dir) => delo::vilt::ViltConfig::from_file(&dir.join("config.json"))?,
        None => delo::vilt::ViltConfig::base(),
    };
    let c = delo::delo::config::count_params(
        &cfg,
        &vcfg,
        a.tasks,
        a.classes_per_task,
        a.text_positions,
    );
    let m = |n: usize| format!("{:.1}M", n as f64 / 1e6);
    println!(
        "| variant | E | r | ρ | trainable per task | backbone | total ({} tasks) |",
        a.tasks
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {:?} | {} | {} | {} | {} ({}) | {} | {} ({}) |",
        cfg.variant,
        cfg.experts,
        cfg.rank,
        cfg.factor_rank,
        m(c.trainable_per_task),
        c.trainable_per_task,
        m(c.backbone),
        m(c.total),
        c.total
    );
    Ok(())
}

#[derive(Args)]
pub(super) struct InitModelArgs {
    /// Model size: `tiny` (hidden 32, 2 layers, 96×96 images) or `base` (ViLT-B/32).
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// Output directory (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also randomise biases, LayerNorms, the CLS token and the position tables
    /// (Hugging Face leaves them constant); for test fixtures.
    #[arg(long)]
    randomize_all: bool,
    /// Overwrite an existing model.safetensors.
    #[arg(long)]
    force: bool,
}

/// `delo init-model`.
pub(super) fn init_model(a: &InitModelArgs) -> Result<()> {
    let opts = delo::vilt::InitOptions {
        seed: a.seed,
        randomize_all: a.randomize_all,
    };
    delo::vilt::init_model_dir(&a.out, a.preset, opts, a.force)?;
    println!("wrote a {:?} ViLT model to {}", a.preset, a.out.display());
    Ok(())
}
