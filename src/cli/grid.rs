//! `delo grid` (the paper's tables as runs) and `delo table` (their results in the paper's
//! layout).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser};
use delo::data::MissingKind;
use delo::grid::{runner, slurm, Grid, Method};
use delo::DeviceName;

use super::{Cli, Command};

#[derive(Args)]
pub(super) struct GridArgs {
    /// The CMML benchmark JSON (or its folder).
    #[arg(long)]
    data: PathBuf,
    /// A Hugging Face ViLT model directory.
    #[arg(long)]
    model: PathBuf,
    /// The grid folder: one run directory per setting, logs, grid.json.
    #[arg(long)]
    out: PathBuf,
    /// Paper tables: 2 (UPMC-Food101), 3 (MM-IMDb), 4 (components), 5 (E × r), 6 (losses),
    /// comma-separated, or `all` (4–6 and the main table of the benchmark's label kind).
    #[arg(long)]
    table: String,
    /// Tables 2/3: η values in percent.
    #[arg(long, value_delimiter = ',', default_values_t = delo::grid::expand::MAIN_ETAS)]
    etas: Vec<u32>,
    /// Tables 2/3: missing types (text, image, both).
    #[arg(long, value_delimiter = ',', default_value = "text,image,both")]
    types: Vec<MissingKind>,
    /// Tables 2/3: methods, from delo, heads-only, seq-lora, delo-lora, delo-no-guide,
    /// unified-pool.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "delo,heads-only,seq-lora"
    )]
    methods: Vec<Method>,
    /// Devices, comma-separated: one run at a time on each (default cpu: runs in turn; with
    /// --slurm, cuda: one GPU per job).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<DeviceName>,
    /// Write a Slurm job array (grid.sbatch, one index per setting, and grid-index.tsv)
    /// instead of running; each job trains on --devices (default there: one GPU, `cuda`).
    #[arg(long)]
    slurm: bool,
    /// Run only setting N of the grid (0-based, the lines of grid-index.tsv): what each Slurm
    /// array job runs.
    #[arg(long, conflicts_with = "slurm")]
    index: Option<usize>,
    /// `delo train` flags for every run, after `--` (e.g. `-- --epochs 1 --image-size 96`).
    #[arg(last = true)]
    train_flags: Vec<String>,
}

impl GridArgs {
    fn grid(&self) -> Result<Grid> {
        let selection = delo::grid::Selection {
            etas: self.etas.clone(),
            types: self.types.clone(),
            methods: self.methods.clone(),
        };
        let grid = Grid::new(
            self.data.clone(),
            self.model.clone(),
            delo::grid::parse_tables(&self.table, &self.data)?,
            selection,
            self.train_flags.clone(),
        )?;
        // The extra flags as `delo train` itself reads them, so that a typo stops the grid
        // before its first run rather than failing every run.
        let mut probe: Vec<std::ffi::OsString> = vec!["delo".into()];
        probe.extend(grid.train_args(&self.out, &grid.settings()[0], "cpu"));
        let probe = Cli::try_parse_from(probe)
            .map_err(|e| anyhow::anyhow!("the delo train flags after `--`: {e}"))?;
        if let Command::Train(a) = probe.command {
            a.settings()?;
        }
        Ok(grid)
    }

    /// `--devices`, by default `cpu` (runs in turn), or with `--slurm` `cuda` (a GPU per job).
    fn devices(&self) -> Vec<String> {
        match (self.devices.is_empty(), self.slurm) {
            (false, _) => self.devices.iter().map(|d| d.to_string()).collect(),
            (true, false) => vec![DeviceName::Cpu.to_string()],
            (true, true) => vec![DeviceName::Cuda(None).to_string()],
        }
    }
}

/// `delo grid`: writes the Slurm array, or runs the grid's settings (or one, `--index`) as
/// child processes of this executable and fails when any run failed.
pub(super) fn grid(a: &GridArgs) -> Result<()> {
    let grid = a.grid()?;
    let devices = a.devices();
    grid.save(&a.out)?;
    let exe = std::env::current_exe().context("finding the delo executable")?;
    match a.slurm {
        true => write_slurm(a, &grid, &devices, &exe),
        false => run_settings(a, &grid, &devices, &exe),
    }
}

/// `delo grid --slurm`: the job array instead of the runs.
fn write_slurm(a: &GridArgs, grid: &Grid, devices: &[String], exe: &Path) -> Result<()> {
    let [device] = devices else {
        anyhow::bail!("--slurm: one device per job (--devices cuda, the default)");
    };
    let (script, index) = slurm::write_slurm(grid, &a.out, exe, device)?;
    println!(
        "wrote {} ({} array jobs) and {}; submit with: sbatch {}",
        script.display(),
        grid.settings().len(),
        index.display(),
        script.display()
    );
    Ok(())
}

/// The grid's runs (or `--index`'s one) on `devices`, with a count of each outcome.
fn run_settings(a: &GridArgs, grid: &Grid, devices: &[String], exe: &Path) -> Result<()> {
    let settings = grid.settings();
    let chosen = match a.index {
        Some(i) => vec![*settings.get(i).with_context(|| {
            format!(
                "--index {i}: the grid has {} settings (0..{})",
                settings.len(),
                settings.len()
            )
        })?],
        None => settings,
    };
    let report = |line: &str| eprintln!("{line}");
    let outcomes = runner::run(grid, &a.out, &chosen, devices, exe, &report);
    let count = |f: fn(&runner::Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    println!(
        "grid {}: {} trained, {} resumed, {} skipped (finished before), {} failed",
        a.out.display(),
        count(|o| *o == runner::Outcome::Trained),
        count(|o| *o == runner::Outcome::Resumed),
        count(|o| *o == runner::Outcome::Skipped),
        count(|o| matches!(o, runner::Outcome::Failed(_)))
    );
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(s, o)| match o {
            runner::Outcome::Failed(why) => Some(format!("{}: {why}", s.name())),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!("{} run(s) failed:\n{}", failed.len(), failed.join("\n"));
    }
    println!("tables: delo table {}", a.out.display());
    Ok(())
}

#[derive(Args)]
pub(super) struct TableArgs {
    /// The grid folder (`--out` of `delo grid`).
    dir: PathBuf,
}

/// `delo table`: prints the tables and writes them beside the runs.
pub(super) fn table(a: &TableArgs) -> Result<()> {
    use delo::grid::table;
    let c = table::collect(&a.dir)?;
    let md = table::render_markdown(&c);
    print!("{md}");
    let (md_path, csv_path) = (
        a.dir.join(table::MARKDOWN_FILE),
        a.dir.join(table::CSV_FILE),
    );
    delo::st::write_atomic(&md_path, md.as_bytes())?;
    table::write_csv(&c, &csv_path)?;
    println!("wrote {} and {}", md_path.display(), csv_path.display());
    Ok(())
}
