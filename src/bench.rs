//! `sadajem bench`: the cost of one training iteration of a configured run, part by part, on
//! this machine — with the same iteration in PyTorch (`bench/reference_step.py`) timed in the
//! same invocation when asked, so the two numbers always come from the same conditions.
//!
//! Parts (each timed separately after warm-up; median and minimum over the repetitions):
//! - `data`: the labelled batch and the likelihood batch read, augmented and moved to the device;
//! - `sgld_step`: one sampler step on a buffer draw (forward + input gradient);
//! - `update_pass`: the loss's gradient at w (forwards of the three batches + backward);
//! - `sam_pass`: SAM's ascent, the gradient at w + e, the descent;
//! - `iteration`: all of it — data, K sampler steps, both passes, the optimiser step.
//!
//! Achieved GFLOP/s divide an analytic count (`model::wrn::forward_flops`, F per image) by the
//! median time: a forward is F, a backward 2F (input and weight gradients), the sampler's
//! input-only backward F. Peak memory over the timed work (reset before warm-up): on CPU the
//! process's resident high-water mark, on CUDA the caching allocator's peak of bytes allocated
//! to tensors (what PyTorch's torch.cuda.max_memory_allocated reads; the CUDA build only).
use crate::config::{Config, DataFormat, Precision, Recipe};
use crate::data::batches::{Batch, Batches};
use crate::data::{ImageSet, Split};
use crate::model::wrn::forward_flops;
use crate::sampler::{buffer::ReplayBuffer, init::Init, sgld};
use crate::train::recipe::{self, Chains, Learner, Samples};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// The parts, in the order of an iteration (the table's rows).
pub const PARTS: [&str; 5] = ["data", "sgld_step", "update_pass", "sam_pass", "iteration"];

pub struct Options {
    pub warmup: usize,
    pub iters: usize,
    /// Also time `bench/reference_step.py` (PyTorch) on the same settings.
    pub reference: bool,
    /// Record even when other processes used the CPU during the measurement.
    pub allow_busy: bool,
    /// Where results are appended (JSON lines).
    pub results: PathBuf,
    /// The preset name, for the record.
    pub preset: Option<String>,
    /// Time on this many seeded random images (see [`synthetic_set`]) instead of data.dir.
    pub synthetic: Option<usize>,
    /// Also profile `iters` whole iterations into this directory (libtorch's operator profiler:
    /// [`PROFILE_OURS`], and with `reference` PyTorch's [`PROFILE_PYTORCH`]), after the timing.
    pub profile: Option<PathBuf>,
}

/// The Chrome traces `--profile` writes; `bench/profile_table.py` tabulates them.
pub const PROFILE_OURS: &str = "sadajem.trace.json";
pub const PROFILE_PYTORCH: &str = "pytorch.trace.json";

/// `n` seeded random images of `data.channels` × `data.image_size`² (3 × 32² by default: CIFAR's
/// shape) with labels cycling over 100 classes for `data.format = cifar100`, 10 otherwise: for a
/// machine without the dataset (a lent GPU). Reading, augmenting and the network cost the same as
/// on real images of that shape, so the parts time the same work.
pub fn synthetic_set(cfg: &Config, n: usize) -> ImageSet {
    use rand::RngCore;
    let d = &cfg.data;
    let classes = if d.format == DataFormat::Cifar100 { 100 } else { 10 };
    let mut images = vec![0u8; n * d.channels * d.image_size * d.image_size];
    ChaCha8Rng::seed_from_u64(cfg.train.seed).fill_bytes(&mut images);
    let labels = (0..n).map(|i| (i % classes) as i64).collect();
    ImageSet { images, n, channels: d.channels, height: d.image_size, width: d.image_size, labels, num_classes: classes }
}

/// Median and minimum seconds of one part.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
}

impl Timing {
    fn of(mut seconds: Vec<f64>) -> Timing {
        seconds.sort_by(f64::total_cmp);
        Timing { median: seconds[seconds.len() / 2], min: seconds[0] }
    }
}

/// What one measurement found.
pub struct Measured {
    pub parts: BTreeMap<&'static str, Timing>,
    /// Floating-point operations of each part (analytic).
    pub flops: BTreeMap<&'static str, f64>,
    pub peak_rss_mib: Option<f64>,
    /// The GPU allocator's peak (CUDA devices in the CUDA build).
    pub peak_cuda_mib: Option<f64>,
    /// CPU cores' worth of work other processes did while we measured.
    pub others_cores: f64,
    /// The precision the passes ran in (`auto` resolved).
    pub precision: Precision,
    /// The images' channels, side and number of classes (what the PyTorch reference builds).
    pub image: (usize, usize, usize),
}

/// Other processes using more than this many cores make a measurement unreliable: libtorch's
/// threads then wait for each other (one busy process slows 2 threads 4–6×).
pub const BUSY_CORES: f64 = 0.25;

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `f` `warmup + iters` times and keeps the last `iters`.
fn time(device: Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> Timing {
    let mut seconds = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        sync(device);
        let t = Instant::now();
        f();
        sync(device);
        if i >= warmup {
            seconds.push(t.elapsed().as_secs_f64());
        }
    }
    Timing::of(seconds)
}

/// Runs the parts on the configured model and data.
pub fn measure(cfg: &Config, opts: &Options) -> Result<Measured> {
    if opts.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let device = crate::engine::parse_device(cfg.train.device)?;
    let set = match opts.synthetic {
        Some(0) => bail!("--synthetic 0: expected a number of images ≥ 1"),
        Some(n) => synthetic_set(cfg, n),
        None => crate::data::split::load_split(cfg, Split::Train)?,
    };
    let joint = cfg.train.recipe != Recipe::Softmax;
    crate::engine::seed_torch(cfg.train.seed);
    let vs = nn::VarStore::new(device);
    let (_, mut learner) = crate::train::session::new_learner(cfg, &vs, &set);
    // Where chains start does not change what a step costs; the uniform init spares the
    // informative init's covariance of the whole training set.
    let mut chains = joint.then(|| {
        let init = Init::Uniform { shape: [set.channels as i64, set.height as i64, set.width as i64] };
        let buffer = ReplayBuffer::new(cfg.sampler.buffer_size as i64, &init, set.num_classes as i64, cfg.sampler.reinit_freq, device);
        Chains { buffer, init }
    });

    // The trainer's own batch assembly, over every image of the set.
    let largest = cfg.data.batch_size.max(if joint { cfg.loss.px_batch_size } else { 0 });
    if set.n < largest {
        bail!("{} images cannot make a batch of {largest} (data.batch_size, loss.px_batch_size)", set.n);
    }
    let seeds = (cfg.train.seed, cfg.train.seed.wrapping_add(1));
    let mut batches = Batches::new(cfg, (0..set.n).collect(), seeds, joint, (0, 1), device);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
    let mut next_batches = |rng: &mut ChaCha8Rng| -> (Batch, Tensor) {
        let it = batches.next(&set, rng);
        (it.lab, it.x_data)
    };
    let (w, n) = (opts.warmup, opts.iters);
    // A fixed small lr: the parts are timed, not trained, and a diverged step would skip work.
    let lr = 1e-3;

    let before = CpuUse::now();
    reset_peak_rss();
    if let Device::Cuda(i) = device {
        crate::shim::cuda_reset_peak(i);
    }
    let mut parts = BTreeMap::new();
    parts.insert("data", time(device, w, n, || drop(next_batches(&mut rng))));
    let (lab, x_data) = next_batches(&mut rng);
    let mut x_sample = None;
    if let Some(chains) = chains.as_mut() {
        let one_step = crate::config::SamplerConfig { steps: 1, ..cfg.sampler.clone() };
        let mode = recipe::sampler_mode(cfg);
        let draw = chains.buffer.draw(cfg.sampler.batch_size as i64, &chains.init);
        parts.insert("sgld_step", time(device, w, n, || drop(sgld::run(&learner.net, &draw.x0, &one_step, mode, None))));
        x_sample = Some(recipe::sample(cfg, &learner.net, chains));
    }
    let px = x_sample.as_ref().map(|s| (&x_data, s));
    let pass = |learner: &Learner| recipe::gradient_pass(cfg, learner, &lab, px.map(|(d, s)| (d, Samples::Given(s)))).map(drop);
    parts.insert("update_pass", time(device, w, n, || pass(&learner).expect("a finite loss")));
    if learner.sam.is_some() {
        parts.insert("sam_pass", time(device, w, n, || recipe::sam_pass(cfg, &learner, &lab, px).expect("a finite loss")));
    }
    let mut iteration = || {
        let (lab, x_data) = next_batches(&mut rng);
        recipe::step(cfg, &mut learner, chains.as_mut(), &lab, &x_data, lr).expect("a finite loss");
    };
    parts.insert("iteration", time(device, w, n, &mut iteration));
    let peak_rss_mib = if device == Device::Cpu { peak_rss_mib() } else { None };
    let peak_cuda_mib = match device {
        Device::Cuda(i) => crate::shim::cuda_peak_allocated(i).map(|b| b as f64 / (1 << 20) as f64),
        _ => None,
    };
    let others_cores = CpuUse::now().others_since(&before);
    // After the timing, so the profiler's own cost is in no timed part.
    if let Some(dir) = &opts.profile {
        let path = dir.join(PROFILE_OURS);
        crate::shim::profiler_start()?;
        (0..n).for_each(|_| iteration());
        sync(device);
        crate::shim::profiler_stop(&path).with_context(|| format!("{}: writing the profile", path.display()))?;
    }
    let precision = learner.net.precision();
    let image = (set.channels, set.height, set.num_classes);
    Ok(Measured { parts, flops: flops(cfg, &set), peak_rss_mib, peak_cuda_mib, others_cores, precision, image })
}

/// The analytic FLOP count of each part (see the module docs).
fn flops(cfg: &Config, set: &ImageSet) -> BTreeMap<&'static str, f64> {
    let f = forward_flops(&cfg.model, set.channels as i64, set.height as i64, set.width as i64, set.num_classes as i64);
    let joint = cfg.train.recipe != Recipe::Softmax;
    let sampler = cfg.sampler.batch_size as f64;
    let images = cfg.data.batch_size as f64 + if joint { cfg.loss.px_batch_size as f64 + sampler } else { 0.0 };
    let sgld_step = 2.0 * f * sampler;
    let pass = 3.0 * f * images;
    let sam = cfg.optim.sam_rho > 0.0;
    // PYLD's inner steps reuse their outer step's gradient: only `steps` gradients are taken.
    let sgld_steps = cfg.sampler.steps as f64;
    let mut out = BTreeMap::from([("update_pass", pass), ("data", 0.0)]);
    if joint {
        out.insert("sgld_step", sgld_step);
    }
    if sam {
        out.insert("sam_pass", pass);
    }
    let iteration = pass * if sam { 2.0 } else { 1.0 } + if joint { sgld_steps * sgld_step } else { 0.0 };
    out.insert("iteration", iteration);
    out
}

/// Jiffies of the whole machine's busy time and of this process, to tell whether anything else
/// ran while we measured.
struct CpuUse {
    at: Instant,
    machine_busy: f64,
    ours: f64,
}

impl CpuUse {
    fn now() -> CpuUse {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu  user nice system idle iowait irq softirq steal ...
        let fields: Vec<f64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let busy = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).take(8).map(|(_, v)| v).sum();
        let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are the 14th and 15th overall.
        let after = me.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<f64> = after.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        let ours = f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0);
        CpuUse { at: Instant::now(), machine_busy: busy, ours }
    }

    /// Cores' worth of CPU time used by other processes since `earlier`.
    fn others_since(&self, earlier: &CpuUse) -> f64 {
        // SAFETY: sysconf only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let seconds = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let others = (self.machine_busy - earlier.machine_busy) - (self.ours - earlier.ours);
        (others / hz / seconds).max(0.0)
    }
}

/// Cores' worth of CPU that other processes use over the next `seconds`.
pub fn others_load(seconds: f64) -> f64 {
    let before = CpuUse::now();
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    CpuUse::now().others_since(&before)
}

/// Resets the kernel's resident high-water mark of this process (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The PyTorch reference's command line for the same settings.
pub fn reference_args(cfg: &Config, ours: &Measured, opts: &Options, threads: usize) -> Vec<String> {
    let set = ours.image;
    let m = &cfg.model;
    let norm = match m.norm {
        crate::config::NormKind::None => "none",
        crate::config::NormKind::Batch => "batch",
    };
    let precision = if ours.precision == Precision::Bf16 { "bf16" } else { "fp32" };
    let mut args: Vec<String> = vec![
        "--depth".into(),
        m.depth.to_string(),
        "--widen".into(),
        m.widen.to_string(),
        "--norm".into(),
        norm.into(),
        "--slope".into(),
        m.slope.to_string(),
        "--bn-momentum".into(),
        m.bn_momentum.to_string(),
        "--channels".into(),
        set.0.to_string(),
        "--size".into(),
        set.1.to_string(),
        "--classes".into(),
        set.2.to_string(),
        "--batch".into(),
        cfg.data.batch_size.to_string(),
        "--px-batch".into(),
        cfg.loss.px_batch_size.to_string(),
        "--sampler-batch".into(),
        cfg.sampler.batch_size.to_string(),
        "--steps".into(),
        cfg.sampler.steps.to_string(),
        "--rho".into(),
        cfg.optim.sam_rho.to_string(),
        "--precision".into(),
        precision.into(),
        "--device".into(),
        cfg.train.device.to_string(),
        "--threads".into(),
        threads.to_string(),
        "--warmup".into(),
        opts.warmup.to_string(),
        "--iters".into(),
        opts.iters.to_string(),
        "--seed".into(),
        cfg.train.seed.to_string(),
        "--json".into(),
    ];
    if cfg.train.channels_last {
        args.push("--channels-last".into());
    }
    if let Some(dir) = &opts.profile {
        args.push("--profile".into());
        args.push(dir.join(PROFILE_PYTORCH).display().to_string());
    }
    args
}

/// Runs `bench/reference_step.py` (which sets up its own PyTorch on first use) and returns the
/// JSON object it prints last.
pub fn run_reference(script: &Path, args: &[String]) -> Result<Value> {
    if !script.exists() {
        bail!("{}: not found; run `sadajem bench --reference` from the repository root", script.display());
    }
    // SADAJEM_BENCH_PYTHON: an interpreter that already has torch 2.11 (else the script sets
    // one up in bench/.venv).
    let python = std::env::var_os("SADAJEM_BENCH_PYTHON").unwrap_or_else(|| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {}", python.to_string_lossy(), script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({}); its messages are above", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("{}: expected a JSON object on its last line, got `{last}`", script.display()))
}

/// This machine, for the record: CPU model, core count, and which of the instruction sets that
/// decide bf16's and fp32's speed it has (the VM's CPU varies, and its model name alone, "AMD
/// EPYC", does not say).
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string());
    let flags: Vec<&str> = cpuinfo.lines().find(|l| l.starts_with("flags")).map_or(vec![], |l| l.split_whitespace().collect());
    let isa: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"].into_iter().filter(|f| flags.contains(f)).collect();
    json!({"cpu": model, "cores": crate::engine::available_cores(), "isa": isa})
}

/// The record appended to the results file.
pub fn record(cfg: &Config, opts: &Options, threads: usize, ours: &Measured, reference: Option<&Value>) -> Value {
    let parts: BTreeMap<&str, Value> = ours
        .parts
        .iter()
        .map(|(name, t)| {
            let flops = ours.flops.get(name).copied().unwrap_or(0.0);
            let gflops = (flops > 0.0).then(|| flops / t.median / 1e9);
            (*name, json!({"median_s": t.median, "min_s": t.min, "gflop_per_s": gflops}))
        })
        .collect();
    let iteration = ours.parts["iteration"].median;
    let mut rec = json!({
        "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "impl": "sadajem",
        "preset": opts.preset,
        "machine": machine(),
        "threads": threads,
        "device": cfg.train.device,
        "precision": ours.precision,
        "channels_last": cfg.train.channels_last,
        "settings": {
            "recipe": cfg.train.recipe, "depth": cfg.model.depth, "widen": cfg.model.widen, "norm": cfg.model.norm,
            "batch": cfg.data.batch_size, "px_batch": cfg.loss.px_batch_size, "sampler_batch": cfg.sampler.batch_size,
            "steps": cfg.sampler.steps, "sam_rho": cfg.optim.sam_rho, "warmup": opts.warmup, "iters": opts.iters,
            "data": opts.synthetic.map_or_else(|| cfg.data.dir.display().to_string(), |n| format!("synthetic:{n}")),
        },
        "parts": parts,
        "images_per_s": cfg.data.batch_size as f64 / iteration,
        "peak_rss_mib": ours.peak_rss_mib,
        "peak_cuda_mib": ours.peak_cuda_mib,
        "others_cores": ours.others_cores,
    });
    if let Some(r) = reference {
        rec["reference"] = r.clone();
        let theirs = r.pointer("/parts/iteration/median_s").and_then(Value::as_f64);
        rec["ratio_iteration"] = json!(theirs.map(|t| iteration / t));
        let their_memory = r["peak_cuda_mib"].as_f64();
        rec["ratio_peak_cuda"] = json!(ours.peak_cuda_mib.zip(their_memory).map(|(a, b)| a / b));
    }
    rec
}

/// Appends one JSON line to `path` (creating it and its directory).
pub fn append(path: &Path, rec: &Value) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{}: cannot open for appending", path.display()))?;
    writeln!(f, "{rec}").with_context(|| format!("{}: cannot write", path.display()))
}

/// The table printed after a measurement.
pub fn table(rec: &Value) -> String {
    let mut out = format!("{:<12} {:>10} {:>10} {:>9}", "part", "median s", "min s", "GFLOP/s");
    let reference = rec.get("reference");
    if reference.is_some() {
        out += &format!(" {:>12} {:>7}", "PyTorch med", "ratio");
    }
    out.push('\n');
    for name in PARTS {
        let Some(p) = rec["parts"].get(name) else { continue };
        let med = p["median_s"].as_f64().unwrap_or(f64::NAN);
        out += &format!(
            "{:<12} {:>10.4} {:>10.4} {:>9}",
            name,
            med,
            p["min_s"].as_f64().unwrap_or(f64::NAN),
            p["gflop_per_s"].as_f64().map_or("–".into(), |g| format!("{g:.1}"))
        );
        if let Some(r) = reference {
            match r.pointer(&format!("/parts/{name}/median_s")).and_then(Value::as_f64) {
                Some(t) => out += &format!(" {:>12.4} {:>7.2}", t, med / t),
                None => out += &format!(" {:>12} {:>7}", "–", "–"),
            }
        }
        out.push('\n');
    }
    out += &format!("images/s (labelled batch / iteration): {:.1}\n", rec["images_per_s"].as_f64().unwrap_or(f64::NAN));
    match rec["peak_rss_mib"].as_f64() {
        Some(m) => out += &format!("peak resident memory: {m:.0} MiB"),
        None => out += "peak resident memory: not measured on this device",
    }
    if let Some(m) = reference.and_then(|r| r["peak_rss_mib"].as_f64()) {
        out += &format!(" (PyTorch {m:.0} MiB)");
    }
    out.push('\n');
    if let Some(m) = rec["peak_cuda_mib"].as_f64() {
        out += &format!("peak GPU memory (allocated to tensors): {m:.0} MiB");
        if let Some(t) = reference.and_then(|r| r["peak_cuda_mib"].as_f64()) {
            out += &format!(" (PyTorch {t:.0} MiB, ratio {:.2})", m / t);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn timing_takes_the_median_and_minimum() {
        let t = Timing::of(vec![3.0, 1.0, 2.0, 10.0, 2.5]);
        assert_eq!((t.median, t.min), (2.5, 1.0));
    }

    #[test]
    fn flops_of_a_sada_jem_iteration() {
        let mut cfg = Config { model: ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() }, ..Config::default() };
        cfg.train.recipe = Recipe::Sadajem;
        cfg.optim.sam_rho = 2.0;
        cfg.data.batch_size = 128;
        cfg.loss.px_batch_size = 64;
        cfg.sampler.batch_size = 64;
        cfg.sampler.steps = 5;
        let set = ImageSet { images: vec![], n: 0, channels: 1, height: 28, width: 28, labels: vec![], num_classes: 10 };
        let f = forward_flops(&cfg.model, 1, 28, 28, 10);
        let got = flops(&cfg, &set);
        // 2 passes × 3F × 256 images + 5 steps × 2F × 64 samples.
        assert!((got["iteration"] - (2.0 * 3.0 * f * 256.0 + 5.0 * 2.0 * f * 64.0)).abs() < 1.0);
        assert_eq!(got["sgld_step"], 2.0 * f * 64.0);
        cfg.train.recipe = Recipe::Softmax;
        cfg.optim.sam_rho = 0.0;
        let got = flops(&cfg, &set);
        assert_eq!(got["iteration"], 3.0 * f * 128.0);
        assert!(!got.contains_key("sgld_step") && !got.contains_key("sam_pass"));
    }

    #[test]
    fn cpu_use_of_others_is_small_when_we_alone_spin() {
        // This test spins one core itself; the machine's other load is whatever runs beside the
        // test suite, so only the sign and the bound by the core count can be asserted.
        let load = others_load(0.2);
        assert!(load >= 0.0 && load <= crate::engine::available_cores() as f64 + 0.5, "{load}");
    }

    #[test]
    fn synthetic_images_have_the_configured_shape_and_are_seeded() {
        let mut cfg = Config::default();
        let a = synthetic_set(&cfg, 20);
        assert_eq!((a.n, a.channels, a.height, a.width, a.num_classes), (20, 3, 32, 32, 10));
        assert_eq!(a.images.len(), 20 * a.image_len());
        assert_eq!(&a.labels[8..12], &[8, 9, 0, 1]);
        assert_eq!(a.images, synthetic_set(&cfg, 20).images, "the same seed, the same images");
        let mean = a.images.iter().map(|&v| v as f64).sum::<f64>() / a.images.len() as f64;
        assert!((mean - 127.5).abs() < 5.0, "uniform bytes, mean {mean}");
        cfg.data.format = DataFormat::Cifar100;
        cfg.data.channels = 1;
        cfg.train.seed = 2;
        let b = synthetic_set(&cfg, 150);
        assert_eq!((b.channels, b.num_classes, b.labels[149]), (1, 100, 49));
        assert_ne!(b.images[..100], a.images[..100]);
    }

    #[test]
    fn peak_memory_is_read_after_a_reset() {
        reset_peak_rss();
        let before = peak_rss_mib().expect("Linux /proc");
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let after = peak_rss_mib().unwrap();
        assert!(after >= before + 60.0, "{before} → {after} MiB");
    }
}
