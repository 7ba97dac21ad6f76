//! The `sadajem` command line: a thin layer over the library.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sadajem::config::{self, Config, Sources};
use sadajem::data::{self, stats, FolderOptions, Split};
use sadajem::run::RunDir;
use sadajem::{engine, train::trainer};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sadajem", version, about = "Train and evaluate Joint Energy-based Models (SADA-JEM, JEM, JEM++, softmax)")]
struct Cli {
    /// libtorch CPU threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; writes a run directory (config.toml, metrics.jsonl, checkpoints/, final.json).
    Train {
        /// A preset from configs/ (see `sadajem presets`).
        #[arg(long)]
        preset: Option<String>,
        /// A TOML file over the preset (any subset of its keys).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override one setting, e.g. `--set optim.lr=0.05` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Where the run goes (default: runs/<preset>-<UTC time>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue the run in this directory from its latest checkpoint, with its own config.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "config", "overrides", "run_dir"])]
        resume: Option<PathBuf>,
    },
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// List the presets, or print one.
    Presets { name: Option<String> },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Counts, shape, per-class counts and pixel mean/std of a dataset directory.
    Info {
        path: PathBuf,
        /// idx, cifar10, cifar100, svhn or folder (default: detected from the files).
        #[arg(long)]
        format: Option<String>,
        /// Image folders only: channels (1 or 3) and square size to convert to.
        #[arg(long, default_value_t = 3)]
        channels: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train { preset, config, overrides, run_dir, resume } => {
            let (cfg, run, resuming) = match resume {
                Some(dir) => {
                    let run = RunDir::open(&dir)?;
                    (Config::load(&run.config())?, run, true)
                }
                None => {
                    let sources = Sources { preset: preset.as_deref(), file: config.as_deref(), overrides: &overrides };
                    let cfg = Config::from_sources(&sources)?;
                    let dir = run_dir.unwrap_or_else(|| default_run_dir(preset.as_deref()));
                    let run = RunDir::create(&dir)?;
                    sadajem::train::checkpoint::write_atomic(&run.config(), cfg.to_toml().as_bytes())?;
                    (cfg, run, false)
                }
            };
            let threads = engine::init(cli.threads.unwrap_or(cfg.train.threads));
            println!(
                "training {} (recipe {:?}, WRN-{}-{}) on {} with {threads} thread(s) → {}",
                cfg.data.dir.display(),
                cfg.train.recipe,
                cfg.model.depth,
                cfg.model.widen,
                cfg.train.device,
                run.root.display()
            );
            let s = trainer::train(&cfg, &run, resuming)?;
            println!(
                "done in {:.0} s: test accuracy {:.2}% (final), {:.2}% (best validation checkpoint, valid {:.2}%) → {}",
                s.train_seconds,
                100.0 * s.test_acc,
                100.0 * s.test_acc_best,
                100.0 * s.best_valid_acc,
                run.final_results().display()
            );
        }
        Command::Data { command: DataCommand::Info { path, format, channels, size } } => {
            engine::init(cli.threads.unwrap_or(0));
            let format = match format {
                Some(f) => f.parse()?,
                None => data::detect_format(&path)?,
            };
            println!("{}: format {format}", path.display());
            for split in [Split::Train, Split::Test] {
                let set = data::load(&path, format, split, FolderOptions { channels, size })
                    .with_context(|| format!("reading the {split} split"))?;
                println!("{split}: {}", stats::summary(&set));
            }
        }
        Command::Presets { name: None } => {
            for name in config::preset_names() {
                println!("{name}");
            }
        }
        Command::Presets { name: Some(name) } => {
            let text = config::PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).ok_or_else(|| {
                config::ConfigError::UnknownPreset(name.clone(), config::preset_names().join(", "))
            })?;
            print!("{text}");
        }
    }
    Ok(())
}

fn default_run_dir(preset: Option<&str>) -> PathBuf {
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = time.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect();
    PathBuf::from("runs").join(format!("{}-{}", preset.unwrap_or("custom"), stamp.replace('T', "-")))
}
