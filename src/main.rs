//! The `sadajem` command line: a thin layer over the library.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sadajem::config::{self, Config, Sources};
use sadajem::data::{self, stats, FolderOptions, Split};
use sadajem::eval::evaluate;
use sadajem::eval::feature_stats::{self, ImageSpec};
use sadajem::run::{Checkpoint, Metric, RunDir};
use sadajem::train::distributed;
use sadajem::{bench, engine, interop, train::trainer};
use std::path::PathBuf;
use std::rc::Rc;

/// `sadajem --version`: the version and what this build can do.
#[cfg(all(sadajem_distributed, sadajem_nccl))]
const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), "\ndata-parallel training (--nproc): yes (c10d Gloo)\nNCCL (train.backend = nccl): yes");
#[cfg(all(sadajem_distributed, not(sadajem_nccl)))]
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ndata-parallel training (--nproc): yes (c10d Gloo)\nNCCL (train.backend = nccl): no (not the CUDA build: make build-cuda)"
);
#[cfg(not(sadajem_distributed))]
const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), "\ndata-parallel training (--nproc): no (built without Gloo's headers)\nNCCL (train.backend = nccl): no");

#[derive(Parser)]
#[command(name = "sadajem", version, long_version = LONG_VERSION, about = "Train and evaluate Joint Energy-based Models (SADA-JEM, JEM, JEM++, softmax)")]
struct Cli {
    /// libtorch CPU threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// Where a command's settings come from, layered in this order over the defaults.
#[derive(clap::Args)]
struct Settings {
    /// A preset from configs/ (see `sadajem presets`).
    #[arg(long)]
    preset: Option<String>,
    /// A TOML file over the preset (any subset of its keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set optim.lr=0.05` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

impl Settings {
    fn load(&self) -> Result<Config> {
        let sources = Sources { preset: self.preset.as_deref(), file: self.config.as_deref(), overrides: &self.overrides };
        Ok(Config::from_sources(&sources)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; writes a run directory (config.toml, metrics.jsonl, checkpoints/, final.json).
    Train {
        #[command(flatten)]
        settings: Settings,
        /// Where the run goes (default: runs/<preset>-<UTC time>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue the run in this directory from its latest checkpoint, with its own config.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "config", "overrides", "run_dir"])]
        resume: Option<PathBuf>,
        /// Data-parallel: start N workers on this machine (each with `data.batch_size` images of
        /// every global batch; gradients averaged over c10d/Gloo). Several machines: the same
        /// command on each with NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT set (README).
        #[arg(long, value_name = "N")]
        nproc: Option<usize>,
    },
    /// Evaluate a trained run: writes RUN_DIR/eval/<metric>.json and PNG plots.
    Eval {
        #[arg(long)]
        run_dir: PathBuf,
        /// Comma-separated subset of: accuracy, calibration, ood, robustness, generation, fid
        /// (default: all; fid is skipped with a note when no Inception network is found).
        #[arg(long, value_delimiter = ',', value_enum)]
        only: Vec<Metric>,
        /// `best` (the best validation checkpoint), `latest`, or a checkpoint file.
        #[arg(long, default_value = "best")]
        checkpoint: Checkpoint,
        /// Write the records and plots into this directory instead of RUN_DIR/eval (a study's
        /// evaluation of each kept checkpoint, scripts/reproduce.sh); TensorBoard is left alone.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Override an evaluation (or any) setting, e.g. `--set eval.pgd_steps=20` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Draw fresh samples from a trained run's model with SGLD and save them as a PNG grid.
    Sample {
        #[arg(long)]
        run_dir: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Sample class C (class-conditional chains on f(x)[C]); default: unconditional.
        #[arg(long)]
        class: Option<i64>,
        #[arg(long)]
        out: PathBuf,
        /// `best`, `latest`, or a checkpoint file.
        #[arg(long, default_value = "best")]
        checkpoint: Checkpoint,
        /// Chain settings, e.g. `--set eval.gen_steps=200 --set eval.gen_init=uniform`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Import a checkpoint of the authors' PyTorch code (JEM, JEM++, SADA-JEM) as a run directory
    /// that `eval` and `sample` accept. The architecture comes from the tensor shapes.
    Import {
        /// A torch.save'd checkpoint ({"model_state_dict", "replay_buffer"}) or state dict, or a
        /// `sadajem export` file (either format).
        file: PathBuf,
        /// The run directory to create.
        #[arg(long)]
        out: PathBuf,
        /// The dataset the model was trained on (the file cannot say), e.g. data/fashion-mnist.
        #[arg(long)]
        data: Option<PathBuf>,
        /// The preset whose sampler and evaluation settings the run gets (default:
        /// sadajem-cifar10 for a batch-norm model, jem-cifar10 without norm).
        #[arg(long)]
        preset: Option<String>,
        /// Override a setting, including what the file says, e.g. `--set model.slope=0.1`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Refuse a file whose pickle would run code under torch.load (by default it is
        /// imported, the code ignored and named).
        #[arg(long)]
        strict: bool,
        /// The most the file's tensors may take in memory, e.g. 32G (default 8G; never more
        /// than about four times the file's size).
        #[arg(long, value_name = "SIZE")]
        max_tensor_bytes: Option<sadajem::memory::ByteSize>,
    },
    /// Export a run's weights (and replay buffer) in the authors' layout, for their code or
    /// any PyTorch user; writes FILE and FILE.json (the architecture).
    Export {
        run_dir: PathBuf,
        /// `pytorch` (a torch.save file) or `safetensors`.
        #[arg(long, value_enum, default_value = "pytorch")]
        format: interop::Format,
        /// Default: RUN_DIR/export/<checkpoint>.pt or .safetensors.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `best`, `latest`, or a checkpoint file.
        #[arg(long, default_value = "best")]
        checkpoint: Checkpoint,
        /// `sadajem` (the JEM++ and SADA-JEM code) or `jem` (wgrathwohl/JEM, which also expects
        /// its unused `f.linear`).
        #[arg(long, value_enum, default_value = "sadajem")]
        layout: interop::Layout,
    },
    /// FID and KID between two image sets, e.g. real vs real: `sadajem fid
    /// data/fashion-mnist:test:5000 data/fashion-mnist:train:10000`.
    Fid {
        /// DIR[:SPLIT[:N]] (SPLIT train, test or train+test; default test, all images), or
        /// uniform:N / gaussian:N.
        images: String,
        /// The reference set, DIR[:SPLIT[:N]]; its statistics are cached.
        reference: String,
        /// The Inception network (default: SADAJEM_INCEPTION, weights/, ../shared/weights/).
        #[arg(long)]
        inception: Option<PathBuf>,
        /// Where dataset statistics are cached (default: $XDG_CACHE_HOME/sadajem or ~/.cache/sadajem).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        kid_subsets: usize,
        #[arg(long, default_value_t = 1000)]
        kid_subset_size: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The Inception network's arithmetic: fp32 (the standard), bf16, or auto (bf16 where the
        /// CPU or GPU computes it natively; within 0.5 % of fp32's FID, docs/performance.md).
        #[arg(long, value_enum, default_value = "auto")]
        precision: config::Precision,
        /// Image folders only: channels and square size.
        #[arg(long, default_value_t = 3)]
        channels: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
    /// Write RUN_DIR/report.html: config, training curves, samples, evaluation results and plots
    /// in one self-contained page; prints the summary table.
    Report {
        #[arg(long)]
        run_dir: PathBuf,
    },
    /// Compare runs: OUT/comparison.md and OUT/compare.html (one column per run; for runs with a
    /// study, a table per run and learning curves in OUT/curves/) and OUT/robustness.png.
    Compare {
        #[arg(long)]
        out: PathBuf,
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
    },
    /// Time the parts of one training iteration (sampler step, update pass, SAM pass, data,
    /// whole iteration) after warm-up; appends the result to bench/results.jsonl.
    Bench {
        #[command(flatten)]
        settings: Settings,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Also time the same iteration in PyTorch (bench/reference_step.py; it sets up its own
        /// torch 2.11 in bench/.venv on first use) and print the ratio.
        #[arg(long)]
        reference: bool,
        /// Record the result even if other processes used the CPU meanwhile.
        #[arg(long)]
        allow_busy: bool,
        /// Time on N seeded random images of the data.channels × data.image_size² shape
        /// (CIFAR's by default) instead of reading data.dir: for a machine without the dataset.
        #[arg(long, value_name = "N")]
        synthetic: Option<usize>,
        #[arg(long, default_value = "bench/results.jsonl")]
        results: PathBuf,
        /// After the timing, profile --iters whole iterations with libtorch's operator profiler
        /// (and PyTorch's, with --reference) into DIR as Chrome traces; `python3
        /// bench/profile_table.py DIR` prints the top operators of both.
        #[arg(long, value_name = "DIR")]
        profile: Option<PathBuf>,
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
        #[arg(long, value_enum)]
        format: Option<data::Format>,
        /// Image folders only: channels (1 or 3) and square size to convert to.
        #[arg(long, default_value_t = 3)]
        channels: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
    /// Fetch a dataset from its published address, check its published MD5 sums and unpack it
    /// where `train` and `data info` read it. SADAJEM_DOWNLOAD_BASE=URL fetches the same file
    /// names from URL instead (a mirror; the tests' loopback server).
    Download {
        /// cifar10, cifar100, svhn, mnist or fashion-mnist.
        name: String,
        /// The dataset directory to create (default: data/NAME, where the presets look).
        #[arg(long)]
        to: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let workload = match cli.command {
        Command::Train { .. } | Command::Bench { .. } => engine::Workload::Training,
        Command::Eval { .. } => engine::Workload::Evaluation,
        Command::Sample { .. } => engine::Workload::Sampling,
        _ => engine::Workload::Other,
    };
    // libtorch's errors reach us as tch's panics as often as as errors: a CUDA out-of-memory
    // one, either way, becomes the message naming the batch settings to lower.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if engine::out_of_memory(&panic_text(info.payload()), workload).is_none() {
            default_hook(info);
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let causes: Vec<String> = e.chain().map(|c| without_backtrace(&c.to_string())).collect();
            let text = causes.join(": ");
            eprintln!("error: {}", engine::out_of_memory(&text, workload).unwrap_or(text));
            std::process::exit(1);
        }
        Err(payload) => match engine::out_of_memory(&panic_text(&*payload), workload) {
            Some(advice) => {
                eprintln!("error: {advice}");
                std::process::exit(1);
            }
            // The hook has said what happened; the status a panic exits with.
            None => std::process::exit(101),
        },
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// A libtorch error as its message: the C++ exception text carries the call site and a frame
/// list ("Exception raised from … (most recent call first): frame #0: …"), dozens of lines no
/// user can act on. Other messages pass unchanged.
fn without_backtrace(message: &str) -> String {
    let mut kept = vec![];
    for line in message.lines() {
        if line.starts_with("Exception raised from ") || line.trim_start().starts_with("frame #") {
            break;
        }
        kept.push(line);
    }
    kept.join("\n").trim_end().to_string()
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.threads;
    match cli.command {
        Command::Train { settings, run_dir, resume, nproc } => train(threads, settings, run_dir, resume, nproc),
        Command::Eval { run_dir, only, checkpoint, out, overrides } => eval(threads, run_dir, only, checkpoint, out, overrides),
        Command::Sample { run_dir, n, class, out, checkpoint, overrides } => sample(threads, run_dir, n, class, out, checkpoint, overrides),
        Command::Import { file, out, data, preset, overrides, strict, max_tensor_bytes } => {
            import(threads, file, out, data, preset, overrides, strict, max_tensor_bytes)
        }
        Command::Export { run_dir, format, out, checkpoint, layout } => export(threads, run_dir, format, out, checkpoint, layout),
        Command::Fid { images, reference, inception, cache_dir, kid_subsets, kid_subset_size, seed, precision, channels, size } => {
            fid(threads, images, reference, inception, cache_dir, kid_subsets, kid_subset_size, seed, precision, channels, size)
        }
        Command::Report { run_dir } => report(run_dir),
        Command::Compare { out, run_dirs } => compare(out, run_dirs),
        Command::Bench { settings, warmup, iters, reference, allow_busy, results, synthetic, profile } => {
            let opts = bench::Options { warmup, iters, reference, allow_busy, results, preset: settings.preset.clone(), synthetic, profile };
            bench_iteration(threads, settings, opts)
        }
        Command::Data { command: DataCommand::Info { path, format, channels, size } } => data_info(threads, path, format, channels, size),
        Command::Data { command: DataCommand::Download { name, to } } => data_download(name, to),
        Command::Presets { name } => presets(name),
    }
}

/// `sadajem train`: a new run, a resumed one, or (`--nproc`) the launcher of its workers.
fn train(threads: Option<usize>, settings: Settings, run_dir: Option<PathBuf>, resume: Option<PathBuf>, nproc: Option<usize>) -> Result<()> {
    let (cfg, root, resuming) = match resume {
        Some(dir) => (Config::load(&RunDir::open(&dir)?.config())?, dir, true),
        None => (settings.load()?, run_dir.clone().unwrap_or_else(|| default_run_dir(settings.preset.as_deref())), false),
    };
    if let Some(n) = nproc {
        if n == 0 {
            bail!("--nproc 0: expected at least one worker");
        }
        // The workers must agree on the run directory, so the launcher names it.
        let mut args = worker_args();
        if !resuming && run_dir.is_none() {
            args.extend(["--run-dir".to_string(), root.display().to_string()]);
        }
        return distributed::launch(n, &args);
    }
    let threads = engine::init(threads.unwrap_or(cfg.train.threads));
    if cfg.train.deterministic {
        engine::make_deterministic();
    }
    // The device and the data are checked before the run directory is touched, so a
    // mistake in either leaves nothing behind to clean up (and before the workers wait
    // for each other).
    let inputs = sadajem::train::session::Inputs::load(&cfg)?;
    let world = Rc::new(distributed::World::from_env(cfg.train.backend, inputs.device)?);
    let run = if resuming {
        let run = RunDir::open(&root)?;
        if world.is_primary() {
            run.check_writable()?;
        }
        run
    } else if world.is_primary() {
        let run = RunDir::create(&root)?;
        sadajem::store::atomic::write_atomic(&run.config(), cfg.to_toml().as_bytes())?;
        run
    } else {
        // Rank 0 makes the directory; the barrier below waits for it.
        RunDir { root: root.clone() }
    };
    world.barrier();
    if let Some(backend) = world.backend() {
        println!("worker {} of {} ({backend:?})", world.rank, world.size);
    }
    println!(
        "training {} (recipe {:?}, WRN-{}-{}, {:?}) on {} with {threads} thread(s) → {}",
        cfg.data.dir.display(),
        cfg.train.recipe,
        cfg.model.depth,
        cfg.model.widen,
        engine::resolve_precision(cfg.train.precision, inputs.device),
        cfg.train.device,
        run.root.display()
    );
    let s = trainer::train(&cfg, &run, resuming, inputs, world)?;
    let best = match (s.test_acc_best, s.best_valid_acc) {
        (Some(test), Some(valid)) => format!("{:.2}% (best validation checkpoint, valid {:.2}%)", 100.0 * test, 100.0 * valid),
        _ => "no validation split (data.n_valid = 0): the last checkpoint is the model".into(),
    };
    println!("done in {:.0} s: test accuracy {:.2}% (final), {best} → {}", s.train_seconds, 100.0 * s.test_acc, run.final_results().display());
    Ok(())
}

/// `sadajem eval`: the metrics of one checkpoint, each into RUN/eval/<metric>.json (or OUT/).
fn eval(
    threads: Option<usize>,
    run_dir: PathBuf,
    only: Vec<Metric>,
    checkpoint: Checkpoint,
    out: Option<PathBuf>,
    overrides: Vec<String>,
) -> Result<()> {
    let run = RunDir::open(&run_dir)?;
    let cfg = Config::load_with(&run.config(), &overrides)?;
    let threads = engine::init(threads.unwrap_or(cfg.train.threads));
    let mut metrics: Vec<Metric> = Metric::ALL.into_iter().filter(|m| only.is_empty() || only.contains(m)).collect();
    let ckpt = run.checkpoint(&checkpoint, cfg.data.n_valid > 0);
    let ev = evaluate::Evaluation::new(&cfg, &run, &ckpt, out.as_deref())?;
    if only.is_empty() {
        if let Err(e) = ev.inception_path() {
            println!("note: skipping fid: {e}");
            metrics.retain(|m| *m != Metric::Fid);
        }
    }
    let names: Vec<&str> = metrics.iter().map(|m| m.name()).collect();
    println!("evaluating {} ({}) with {threads} thread(s): {}", run.root.display(), ckpt.display(), names.join(", "));
    ev.run(&metrics, |o| println!("{:>12}  {}", o.metric, o.summary))?;
    println!("results → {}", out.unwrap_or(run.eval()).display());
    Ok(())
}

/// `sadajem sample`: fresh chains from a run's model, as one PNG grid.
fn sample(
    threads: Option<usize>,
    run_dir: PathBuf,
    n: usize,
    class: Option<i64>,
    out: PathBuf,
    checkpoint: Checkpoint,
    overrides: Vec<String>,
) -> Result<()> {
    let run = RunDir::open(&run_dir)?;
    let cfg = Config::load_with(&run.config(), &overrides)?;
    engine::init(threads.unwrap_or(cfg.train.threads));
    let ckpt = run.checkpoint(&checkpoint, cfg.data.n_valid > 0);
    let ev = evaluate::Evaluation::new(&cfg, &run, &ckpt, None)?;
    if let Some(c) = class {
        if c < 0 || c as usize >= ev.num_classes() {
            bail!("--class {c}: the model has classes 0..={}", ev.num_classes() - 1);
        }
    }
    if n == 0 {
        bail!("--n: expected at least one sample");
    }
    let init = ev.gen_init()?;
    let bar = indicatif::ProgressBar::new(n as u64);
    let x = ev.sample(&init, n, class, &bar);
    bar.finish_and_clear();
    sadajem::report::grid::save_grid(&x, &out)?;
    println!("{n} samples ({}) → {}", class.map_or("unconditional".into(), |c| format!("class {c}")), out.display());
    Ok(())
}

/// `sadajem import`: an authors' checkpoint as a run directory, and what was made of it.
#[allow(clippy::too_many_arguments)]
fn import(
    threads: Option<usize>,
    file: PathBuf,
    out: PathBuf,
    data: Option<PathBuf>,
    preset: Option<String>,
    overrides: Vec<String>,
    strict: bool,
    max_tensor_bytes: Option<sadajem::memory::ByteSize>,
) -> Result<()> {
    engine::init(threads.unwrap_or(0));
    let limits = sadajem::store::pickle::Limits { max_bytes: max_tensor_bytes.map_or(sadajem::store::pickle::DEFAULT_MAX_BYTES, |b| b.0) };
    let opts =
        interop::ImportOptions { file: &file, out: &out, data: data.as_deref(), preset: preset.as_deref(), overrides: &overrides, strict, limits };
    let s = interop::import(&opts)?;
    if !s.code.is_empty() {
        let shown: Vec<&str> = s.code.iter().take(12).map(String::as_str).collect();
        let more = if s.code.len() > 12 { format!(" and {} more", s.code.len() - 12) } else { String::new() };
        eprintln!(
            "warning: {}: ignored: would have run code under torch.load: {}{more}. Nothing of it ran here; \
                 torch.load(weights_only=False) of this file would run it (--strict refuses such files)",
            file.display(),
            shown.join(", ")
        );
    }
    println!("{} ({}): {}, from the tensor shapes", file.display(), s.format, s.arch.describe());
    // The batch-norm counters are many and never matter; imported.json lists them all.
    let counters = s.ignored.iter().filter(|k| k.ends_with(".num_batches_tracked")).count();
    let mut ignored: Vec<String> = s.ignored.iter().filter(|k| !k.ends_with(".num_batches_tracked")).cloned().collect();
    if counters > 0 {
        ignored.push(format!("{counters} num_batches_tracked"));
    }
    let shown = if ignored.len() > 12 { format!("{} and {} more", ignored[..12].join(", "), ignored.len() - 12) } else { ignored.join(", ") };
    println!("{} tensors mapped; ignored: {}", s.mapped, if ignored.is_empty() { "none".into() } else { shown });
    match &s.buffer {
        Some(shape) => println!("replay buffer {shape:?} kept as sampler.buffer"),
        None => println!("no replay buffer"),
    }
    for note in &s.notes {
        println!("note: {note}");
    }
    println!("settings of preset {} → {} (see imported.json)", s.preset, out.display());
    Ok(())
}

/// `sadajem export`: a run's weights in the authors' layout.
fn export(
    threads: Option<usize>,
    run_dir: PathBuf,
    format: interop::Format,
    out: Option<PathBuf>,
    checkpoint: Checkpoint,
    layout: interop::Layout,
) -> Result<()> {
    engine::init(threads.unwrap_or(0));
    let opts = interop::ExportOptions { run_dir: &run_dir, checkpoint: &checkpoint, format, out: out.as_deref(), layout };
    let (file, about) = interop::export(&opts)?;
    println!("{} ({format}, {layout} layout) and {}", file.display(), about.display());
    Ok(())
}

/// `sadajem fid`: FID and KID between two image sets.
#[allow(clippy::too_many_arguments)]
fn fid(
    threads: Option<usize>,
    images: String,
    reference: String,
    inception: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    kid_subsets: usize,
    kid_subset_size: usize,
    seed: u64,
    precision: config::Precision,
    channels: usize,
    size: usize,
) -> Result<()> {
    let threads = engine::init(threads.unwrap_or(0));
    let (images, reference): (ImageSpec, ImageSpec) = (images.parse()?, reference.parse()?);
    if matches!(reference, ImageSpec::Noise { .. }) {
        bail!("the reference must be a dataset (DIR[:SPLIT[:N]]); noise goes first");
    }
    let network = feature_stats::find_inception(&inception.unwrap_or_default())?;
    let cache = feature_stats::cache_dir(&cache_dir.unwrap_or_default())?;
    println!("FID with {} ({threads} thread(s)); dataset statistics cached in {}", network.display(), cache.display());
    let opts = FolderOptions { channels, size };
    let r = feature_stats::compare_specs(&images, &reference, &network, precision, &cache, opts, (kid_subsets, kid_subset_size), seed)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

/// `sadajem report`: the HTML page and the summary table.
fn report(run_dir: PathBuf) -> Result<()> {
    let run = RunDir::open(&run_dir)?;
    let path = sadajem::report::html::write(&run)?;
    print_summary(&sadajem::report::html::summary(&run));
    println!("report → {}", path.display());
    Ok(())
}

/// `sadajem compare`: several runs side by side.
fn compare(out: PathBuf, run_dirs: Vec<PathBuf>) -> Result<()> {
    let runs = run_dirs.iter().map(|d| RunDir::open(d)).collect::<Result<Vec<_>>>()?;
    print!("{}", sadajem::report::compare::write(&runs, &out)?);
    println!("comparison → {} and {}", out.join("comparison.md").display(), out.join("compare.html").display());
    Ok(())
}

/// `sadajem bench`: one training iteration timed by parts (and PyTorch's), recorded.
fn bench_iteration(threads: Option<usize>, settings: Settings, opts: bench::Options) -> Result<()> {
    let cfg = settings.load()?;
    let threads = engine::init(threads.unwrap_or(cfg.train.threads));
    if let Some(dir) = &opts.profile {
        std::fs::create_dir_all(dir).with_context(|| format!("--profile {}: cannot create the directory", dir.display()))?;
    }
    let idle = bench::others_load(1.0);
    if idle > bench::BUSY_CORES && !opts.allow_busy {
        bail!(
            "other processes are using {idle:.1} cores; a benchmark now would measure them too. Wait until the machine is idle, or pass --allow-busy"
        );
    }
    let ours = bench::measure(&cfg, &opts)?;
    println!(
        "{:?} WRN-{}-{} ({:?}, channels_last {}) on {} with {threads} thread(s): {} warm-up + {} timed repetitions per part",
        cfg.train.recipe, cfg.model.depth, cfg.model.widen, ours.precision, cfg.train.channels_last, cfg.train.device, opts.warmup, opts.iters
    );
    let theirs = if opts.reference {
        let args = bench::reference_args(&cfg, &ours, &opts, threads);
        println!("timing the same iteration in PyTorch (bench/reference_step.py)");
        Some(bench::run_reference(std::path::Path::new("bench/reference_step.py"), &args)?)
    } else {
        None
    };
    let rec = bench::record(&cfg, &opts, threads, &ours, theirs.as_ref());
    print!("{}", bench::table(&rec));
    if ours.others_cores > bench::BUSY_CORES {
        println!("warning: other processes used {:.2} cores during the measurement: these times are inflated", ours.others_cores);
        if !opts.allow_busy {
            bail!("not recorded in {} (rerun on an idle machine, or pass --allow-busy)", opts.results.display());
        }
    }
    bench::append(&opts.results, &rec)?;
    println!("recorded → {}", opts.results.display());
    if let Some(dir) = &opts.profile {
        println!("profiles → {}; the top operators: python3 bench/profile_table.py {} --iters {}", dir.display(), dir.display(), opts.iters);
    }
    Ok(())
}

/// `sadajem data info`: what a dataset directory holds.
fn data_info(threads: Option<usize>, path: PathBuf, format: Option<data::Format>, channels: usize, size: usize) -> Result<()> {
    engine::init(threads.unwrap_or(0));
    let format = match format {
        Some(f) => f,
        None => data::detect_format(&path)?,
    };
    println!("{}: format {format}", path.display());
    for split in [Split::Train, Split::Test] {
        let set = data::load(&path, format, split, FolderOptions { channels, size }).with_context(|| format!("reading the {split} split"))?;
        println!("{split}: {}", stats::summary(&set));
    }
    Ok(())
}

/// `sadajem data download`: a published dataset, checked and unpacked.
fn data_download(name: String, to: Option<PathBuf>) -> Result<()> {
    let d = data::download::find(&name)?;
    let to = to.unwrap_or_else(|| d.default_dir());
    match data::download::download(d, &to, &data::download::Source::from_env())? {
        data::download::Outcome::AlreadyThere => println!("{}: already holds {name}; nothing downloaded", to.display()),
        data::download::Outcome::Downloaded => {
            println!("{name} → {} (checked against the published MD5 sums; `sadajem data info {}` shows it)", to.display(), to.display())
        }
    }
    Ok(())
}

/// `sadajem presets [NAME]`: the preset names, or one preset's text.
fn presets(name: Option<String>) -> Result<()> {
    match name {
        None => {
            for name in config::preset_names() {
                println!("{name}");
            }
        }
        Some(name) => {
            let text = config::PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
                .ok_or_else(|| config::ConfigError::UnknownPreset(name.clone(), config::preset_names().join(", ")))?;
            print!("{text}");
        }
    }
    Ok(())
}

/// The summary rows as an aligned two-column table.
fn print_summary(rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
}

/// This command line without `--nproc N`: what each worker runs.
fn worker_args() -> Vec<String> {
    let mut out = vec![];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--nproc" {
            args.next();
        } else if !a.starts_with("--nproc=") {
            out.push(a);
        }
    }
    out
}

fn default_run_dir(preset: Option<&str>) -> PathBuf {
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = time.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect();
    PathBuf::from("runs").join(format!("{}-{}", preset.unwrap_or("custom"), stamp.replace('T', "-")))
}

#[cfg(test)]
mod tests {
    use super::without_backtrace;

    #[test]
    fn libtorch_backtraces_are_cut_from_messages() {
        let torch = "Internal torch error: shape '[2, 3]' is invalid for input of size 5\n\
                     Exception raised from infer_size_impl at /pytorch/aten/src/ATen/InferSize.h:99 (most recent call first):\n\
                     frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x9c (0x7f in libc10.so)\n\
                     frame #1: <unknown function> + 0x1ad (0x7f in libtorch_cpu.so)\n";
        assert_eq!(without_backtrace(torch), "Internal torch error: shape '[2, 3]' is invalid for input of size 5");
        let ours = "x.pt: `class_output.bias` has shape [9]\nsecond line";
        assert_eq!(without_backtrace(ours), ours);
    }
}
