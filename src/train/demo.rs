//! `delo demo`: the synthetic benchmark, a tiny random ViLT, DeLo and the heads-only baseline
//! trained side by side on the CPU, and their AP/FG table.

use std::path::Path;

use crate::data::{synth, Split, SynthConfig};
use crate::delo::config::{DeloConfig, Variant};
use crate::error::{Error, Result};
use crate::report::{render_summary_table, SummaryRow};
use crate::train::{Event, TrainSettings, Trainer};
use crate::vilt::{init_model_dir, InitOptions, Preset};

/// The demo's training settings: the paper's missing setting (70% of samples lack a modality,
/// half of them the image, half the text) and optimiser, with a higher learning rate and the
/// tiny model's input sizes so that a CPU run takes seconds.
pub fn demo_settings(variant: Variant) -> TrainSettings {
    TrainSettings {
        epochs: 10,
        lr: 3e-3,
        missing: "both:0.7".into(),
        max_text_len: 40,
        image_size: Some(96),
        cache_images: true,
        delo: DeloConfig {
            variant,
            ..DeloConfig::default()
        },
        ..TrainSettings::default()
    }
}

/// Removes a previous demo run at `dir` (only a folder that holds a delo run).
fn clear_run(dir: &Path) -> Result<()> {
    if dir.join(crate::train::checkpoint::RUN_FILE).is_file() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    } else if dir.exists() {
        return Err(Error::Msg(format!(
            "{} exists and is not a delo run; choose another --out",
            dir.display()
        )));
    }
    Ok(())
}

/// Runs the demo under `out` and returns the summary table of both methods.
pub fn run_demo(out: &Path, log: &mut dyn FnMut(Event)) -> Result<String> {
    let data = out.join("data");
    let model = out.join("model");
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    log(Event::Line(
        &synth(&data, &SynthConfig::default())?.to_string(),
    ));
    init_model_dir(
        &model,
        Preset::parse("tiny")?,
        InitOptions {
            seed: 0,
            randomize_all: false,
        },
        true,
    )?;
    let mut rows = Vec::new();
    for (variant, name) in [(Variant::Delo, "delo"), (Variant::HeadsOnly, "heads-only")] {
        let dir = out.join(name);
        clear_run(&dir)?;
        log(Event::Line(&format!("training {name} → {}", dir.display())));
        let mut tr = Trainer::create(&data, &model, &dir, demo_settings(variant))?;
        let results = tr.run(log)?;
        let missing = crate::report::missing_label(&tr.missing);
        rows.push(SummaryRow::from_results(
            &crate::train::results::method_name(&tr),
            &missing,
            &results,
            Split::Test,
        )?);
    }
    Ok(render_summary_table(&rows))
}
