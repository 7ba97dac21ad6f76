//! The typed run configuration: built-in defaults, then a preset (`configs/NAME.toml`, compiled
//! into the binary), then a user file, then `--set key=value` overrides — each layer a partial
//! TOML document over the previous one. Unknown keys and bad values fail naming the key.
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown preset `{0}`; available presets: {1}")]
    UnknownPreset(String, String),
    #[error("{0}: cannot read config file: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{source_name}: invalid TOML: {message}")]
    Syntax { source_name: String, message: String },
    #[error("unknown setting `{key}`; allowed {where_}: {allowed}")]
    UnknownKey { key: String, where_: String, allowed: String },
    #[error("`--set {0}`: expected key=value, e.g. `--set optim.lr=0.05`")]
    BadOverride(String),
    #[error("{source_name}: {message}")]
    Invalid { source_name: String, message: String },
    #[error("setting `{key}` = {value}: {expected}")]
    OutOfRange { key: &'static str, value: String, expected: &'static str },
    #[error("setting `{key}` = {value}: expected a finite number")]
    NotFinite { key: String, value: f64 },
    #[error("{0}")]
    TooLarge(String),
    #[error("unknown setting `{key}`: settings are SECTION.KEY, not {parts} dotted parts (sections: {sections})")]
    DottedKey { key: String, parts: usize, sections: String },
}

/// The longest `--set` accepted: any real setting (a list of OOD sets, a path) is far shorter.
const MAX_OVERRIDE: usize = 64 << 10;
/// The largest config file read: a full `config.toml` is 3 kB.
const MAX_CONFIG_FILE: u64 = 1 << 20;
/// Characters of a key, a value or a parser's message echoed in an error.
const ECHOED: usize = 200;

fn echo(s: &str) -> String {
    crate::text::shorten(s, ECHOED)
}

/// A parser's message, each line cut: TOML's quote the offending line, serde's the value.
fn echo_lines(message: &str) -> String {
    let lines: Vec<String> = message.lines().take(20).map(echo).collect();
    lines.join("\n")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    None,
    Batch,
}

/// The paper's method a run reproduces. Only `softmax` changes the step (no likelihood term);
/// `jem`, `jempp` and `sadajem` run the same joint step, and differ by the `[sampler]`,
/// `[loss]` and `optim.sam_*` settings their presets give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// Plain cross-entropy classifier, the baseline of every table.
    Softmax,
    Jem,
    Jempp,
    Sadajem,
}

/// The arithmetic of the network's forward and backward passes. Weights, optimiser state, the
/// SGLD chains and every loss/energy reduction stay fp32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "torch", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// bf16 autocast around each forward (convolutions and the linear layer in bf16, logits
    /// returned as fp32): 1.7× faster on a CPU with AVX512-BF16 (more with AMX) and on GPUs.
    Bf16,
    /// bf16 where the hardware computes it natively (a CPU with AVX512-BF16 or AMX-BF16, or a
    /// CUDA device), fp32 elsewhere — where bf16 would be emulated and slower.
    Auto,
}

/// The c10d backend data-parallel workers (`train --nproc`) exchange gradients over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NCCL for CUDA workers in a build that has it, Gloo otherwise; a lone worker joins no
    /// process group.
    Auto,
    /// Through host memory; CPU or GPU workers (several may share one GPU).
    Gloo,
    /// In GPU memory; CUDA workers only, each on its own GPU (NCCL refuses two ranks on one).
    Nccl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// JEM: x ← x + α·∇ + σ·ε, unclipped.
    Sgld,
    /// SADA-JEM: x ← clamp(x + α·clamp(∇, −1, 1) + σ·ε, −1, 1).
    Clipped,
    /// JEM++: `steps` outer gradients, each followed by `inner_steps` clipped steps of
    /// `inner_step_size`.
    Pyld,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitKind {
    Uniform,
    /// Per-class Gaussians fitted to the un-augmented training images (JEM++).
    Informative,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CovarianceKind {
    Full,
    /// Top-`rank` directions + per-pixel variance: for many classes (CIFAR-100).
    Lowrank,
}

/// The network's mode while SGLD runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Batch statistics, and the running statistics are updated by every SGLD forward: what
    /// the SADA-JEM / JEM++ reference code does.
    Train,
    /// Running statistics (JEM's reference).
    Eval,
}

/// Where the likelihood term's data batch comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PxData {
    /// Its own un-augmented, noise-free stream of `loss.px_batch_size` (SADA-JEM).
    Clean,
    /// Its own independently shuffled stream of `loss.px_batch_size`, augmented and σ-noised
    /// like the classification batch (JEM, JEM++: their `dload_train` and
    /// `dload_train_labeled` are two loaders over the same `transform_train` — wgrathwohl/JEM
    /// `train_wrn_ebm.py` lines 185–195, sndnyang/JEMPP `utils.py` lines 128–133).
    Augmented,
    /// The classification batch itself, augmented and noised: one forward fewer, but not what
    /// any of the authors' code does.
    Shared,
}

/// The reader of `data.dir`: detected from the files present, or named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Auto,
    Idx,
    Cifar10,
    Cifar100,
    Svhn,
    Folder,
}

/// A PGD threat model (`eval.pgd_norms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgdNorm {
    Linf,
    L2,
}

impl PgdNorm {
    /// The name in settings, records and file names: `linf`, `l2`.
    pub fn key(self) -> &'static str {
        match self {
            PgdNorm::Linf => "linf",
            PgdNorm::L2 => "l2",
        }
    }
}

impl std::fmt::Display for PgdNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PgdNorm::Linf => "Linf",
            PgdNorm::L2 => "L2",
        })
    }
}

/// The samples an FID protocol scores (`eval.fid_protocols`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FidSamples {
    /// The reference's: the replay buffer, the most confident 90 % / 10 % per predicted class
    /// for FID / IS.
    Buffer,
    /// Fresh chains, unfiltered.
    Fresh,
}

impl FidSamples {
    /// The name in settings and records: `buffer`, `fresh`.
    pub fn key(self) -> &'static str {
        match self {
            FidSamples::Buffer => "buffer",
            FidSamples::Fresh => "fresh",
        }
    }
}

/// Which splits of a dataset are the FID reference (`eval.fid_reference`, `sadajem fid`'s
/// `DIR:SPLIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Splits {
    Train,
    Test,
    TrainTest,
}

impl std::str::FromStr for Splits {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Splits::Train),
            "test" => Ok(Splits::Test),
            "train+test" => Ok(Splits::TrainTest),
            _ => Err(format!("unknown split `{}`; expected train, test or train+test", echo(s))),
        }
    }
}

impl std::fmt::Display for Splits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Splits::Train => "train",
            Splits::Test => "test",
            Splits::TrainTest => "train+test",
        })
    }
}

/// Pixel noise of a whole image set, shaped like the images it stands beside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Noise {
    /// U[−1, 1] per pixel.
    Uniform,
    /// N(0, 1) per pixel, clamped to [−1, 1].
    Gaussian,
}

/// One set of `eval.ood_sets`: a named synthetic set, or a dataset directory. A name that is
/// not `interp`, `uniform` or `gaussian` is a directory, and fails when evaluated if it is not one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum OodSource {
    /// (x_i + x_j)/2 of random test-image pairs.
    Interp,
    Noise(Noise),
    /// The test split of a dataset any reader supports.
    Dataset(PathBuf),
}

impl std::str::FromStr for OodSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("an empty OOD set: expected interp, uniform, gaussian or a dataset directory".into()),
            "interp" => Ok(OodSource::Interp),
            "uniform" => Ok(OodSource::Noise(Noise::Uniform)),
            "gaussian" => Ok(OodSource::Noise(Noise::Gaussian)),
            dir => Ok(OodSource::Dataset(PathBuf::from(dir))),
        }
    }
}

impl std::fmt::Display for OodSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OodSource::Interp => f.write_str("interp"),
            OodSource::Noise(Noise::Uniform) => f.write_str("uniform"),
            OodSource::Noise(Noise::Gaussian) => f.write_str("gaussian"),
            OodSource::Dataset(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// `serde(try_from = "String", into = "String")` for the settings parsed by `FromStr`.
macro_rules! string_serde {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    )*};
}
string_serde!(DeviceSpec, Splits, OodSource);

/// Where the network runs: parsed once from `cpu`, `cuda` or `cuda:N`; `engine::parse_device`
/// then checks that the GPU is really there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    Cpu,
    /// A data-parallel worker's own GPU (`cuda:LOCAL_RANK`), else the first.
    Cuda,
    CudaIndex(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::CudaIndex(i)),
                Some(Err(_)) => Err(format!("device `{}`: expected `cpu`, `cuda` or `cuda:N` with N a GPU index", echo(s))),
                None => Err(format!("device `{}`: expected `cpu`, `cuda` or `cuda:N`", echo(s))),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda => f.write_str("cuda"),
            DeviceSpec::CudaIndex(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Wide-ResNet depth, 6n + 4 (10, 16, 22, 28, ...).
    pub depth: i64,
    /// Widen factor k: group widths 16k, 32k, 64k.
    pub widen: i64,
    pub norm: NormKind,
    /// Batch-norm momentum in PyTorch's convention: running ← (1−m)·running + m·batch.
    /// The reference code passes 0.9.
    pub bn_momentum: f64,
    /// Negative slope of every LeakyReLU.
    pub slope: f64,
    pub dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { depth: 28, widen: 10, norm: NormKind::Batch, bn_momentum: 0.9, slope: 0.2, dropout: 0.0 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Directory of the dataset (relative paths are relative to the working directory).
    pub dir: PathBuf,
    /// `auto` (detected from the files), `idx`, `cifar10`, `cifar100`, `svhn` or `folder`.
    pub format: DataFormat,
    /// Image folders only: images are converted to this many channels (1 or 3) ...
    pub channels: usize,
    /// ... and resized to this square size.
    pub image_size: usize,
    /// Training images held out (seeded) for validation and best-checkpoint selection.
    pub n_valid: usize,
    /// Use only the first N training / test images (0 = all): for quick tries and tests.
    pub max_train: usize,
    pub max_test: usize,
    /// Classification batch size; this loader defines the epoch.
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Reflect-pad by this many pixels, then random-crop back (0 = off).
    pub pad_crop: usize,
    /// Random horizontal flips (off for digits).
    pub flip: bool,
    /// Std of Gaussian noise added after scaling to [−1, 1].
    pub noise: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("data/fashion-mnist"),
            format: DataFormat::Auto,
            channels: 3,
            image_size: 32,
            n_valid: 5000,
            max_train: 0,
            max_test: 0,
            batch_size: 128,
            eval_batch_size: 500,
            pad_crop: 4,
            flip: true,
            noise: 0.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// torch.optim.SGD: momentum, coupled weight decay.
    Sgd,
    /// torch.optim.Adam (no amsgrad): adam_betas, adam_eps, coupled weight decay.
    Adam,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// The base optimiser, `sgd` or `adam`; SAM (`sam_rho` > 0) wraps either.
    pub optimizer: Optimizer,
    pub lr: f64,
    /// SGD only.
    pub momentum: f64,
    /// Coupled L2 (added to the gradient), as torch.optim.SGD and torch.optim.Adam do.
    pub weight_decay: f64,
    /// Adam only: decay rates of the first and second moment estimates.
    pub adam_betas: [f64; 2],
    /// Adam only: added to the bias-corrected √v in the denominator.
    pub adam_eps: f64,
    /// SAM neighbourhood radius ρ (docs/method.md §4); 0 = SAM off. Each iteration then costs two
    /// forward/backward passes.
    pub sam_rho: f64,
    /// ASAM: scale the perturbation by |w| (set explicitly; not inferred from ρ as the
    /// reference code does for ρ ≥ 0.5).
    pub sam_adaptive: bool,
    /// Linear warm-up from 0 over this many iterations.
    pub warmup_iters: usize,
    /// The learning rate is multiplied by `decay_rate` at each of these epochs.
    pub decay_epochs: Vec<usize>,
    pub decay_rate: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            optimizer: Optimizer::Sgd,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            adam_betas: [0.9, 0.999],
            adam_eps: 1e-8,
            sam_rho: 0.0,
            sam_adaptive: false,
            warmup_iters: 1000,
            decay_epochs: vec![60, 120, 180],
            decay_rate: 0.2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub recipe: Recipe,
    pub epochs: usize,
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// libtorch intra-op threads; 0 = one per core.
    pub threads: usize,
    /// `fp32`, `bf16` (autocast) or `auto` (see [`Precision`]).
    pub precision: Precision,
    /// `auto`, `gloo` or `nccl` (see [`Backend`]); an explicit one forms a process group even
    /// for a single worker.
    pub backend: Backend,
    /// Deterministic GPU kernels (cuDNN's deterministic algorithms, libtorch's deterministic
    /// mode): a GPU run and its resumption repeat bitwise, somewhat slower. CPU runs repeat
    /// bitwise either way.
    pub deterministic: bool,
    /// Convolution weights and inputs in the channels_last (NHWC) layout: same values, faster
    /// kernels with bf16 on CPU.
    pub channels_last: bool,
    /// Iterations between metrics.jsonl lines.
    pub log_every: usize,
    /// Iterations between mid-epoch checkpoints (0 = only at epoch ends).
    pub checkpoint_every: usize,
    /// Checkpoints kept: `latest.safetensors` and the newest `keep_checkpoints - 1` before it
    /// as `iter_NNNNNNN.safetensors`, for `--resume` to fall back on when `latest` is damaged.
    pub keep_checkpoints: usize,
    /// Iterations between sample grids of the replay buffer (0 = only at the end).
    pub sample_every: usize,
    /// On divergence: how many times to roll back to the last checkpoint before giving up ...
    pub max_rollbacks: usize,
    /// ... and the factor applied to the learning rate at each rollback (the sampler's random
    /// stream also moves on, so the chains differ).
    pub rollback_lr_factor: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            recipe: Recipe::Softmax,
            epochs: 200,
            seed: 1,
            device: DeviceSpec::Cpu,
            threads: 0,
            precision: Precision::Fp32,
            backend: Backend::Auto,
            deterministic: false,
            channels_last: false,
            log_every: 50,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            sample_every: 0,
            max_rollbacks: 3,
            rollback_lr_factor: 0.5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// SGLD steps per iteration (PYLD: outer steps M).
    pub steps: usize,
    pub step_size: f64,
    /// σ of the Gaussian noise added at every step.
    pub noise: f64,
    /// PYLD only: inner steps N per outer step, and their size.
    pub inner_steps: usize,
    pub inner_step_size: f64,
    pub net_mode: NetMode,
    /// Chains run per iteration.
    pub batch_size: usize,
    pub buffer_size: usize,
    /// Probability that a drawn buffer entry restarts from the init.
    pub reinit_freq: f64,
    pub init: InitKind,
    pub covariance: CovarianceKind,
    /// Low-rank covariance only: directions kept per class.
    pub rank: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            kind: SamplerKind::Clipped,
            steps: 5,
            step_size: 1.0,
            noise: 0.0,
            inner_steps: 5,
            inner_step_size: 0.2,
            net_mode: NetMode::Train,
            batch_size: 64,
            buffer_size: 10_000,
            reinit_freq: 0.05,
            init: InitKind::Informative,
            covariance: CovarianceKind::Full,
            rank: 500,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// L = w_px·L_px + w_ce·L_ce (docs/method.md §2).
    pub w_ce: f64,
    pub w_px: f64,
    /// Weight of the optional l2·(LSE(x_data)² + LSE(x_sample)²) penalty.
    pub l2: f64,
    pub px_data: PxData,
    /// Batch of the likelihood term's own stream (`px_data = "clean"` or `"augmented"`).
    pub px_batch_size: usize,
    /// |L_px| above this means the model has diverged (reference: 1e5 SADA-JEM, 1e8 JEM/JEM++).
    pub diverge_at: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { w_ce: 1.0, w_px: 1.0, l2: 0.0, px_data: PxData::Clean, px_batch_size: 64, diverge_at: 1e5 }
    }
}

/// How `sadajem eval` measures a trained model (docs/method.md §6). Pixel distances (`pgd_*_eps`,
/// `pgd_step_size`) are in units of 1/255 of the [0, 1] pixel range, as papers quote them; the
/// network sees [−1, 1], so they are doubled internally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Seed of every random draw of the evaluation (noise sets, PGD starts, chains, KID subsets).
    pub seed: u64,
    /// Use the first N test images for accuracy, calibration and OOD (0 = all).
    pub n_test: usize,
    /// SGLD refinement of the inputs before classifying (0 = off): steps of
    /// x ← x + α·∇x LSE(f(x)) + σ·ε, each sample with its own gradient.
    pub refine_steps: usize,
    pub refine_step_size: f64,
    pub refine_noise: f64,
    /// Equal-width confidence bins of the ECE.
    pub ece_bins: usize,
    /// OOD sets: `interp` ((x_i + x_j)/2 of test images), `uniform`, `gaussian`, or a dataset
    /// directory any reader supports (its test split; converted to the model's channels and size).
    pub ood_sets: Vec<OodSource>,
    /// Images per OOD set, and in-distribution images they are compared with (0 = as many as
    /// the test images used).
    pub ood_n: usize,
    /// PGD: norms (`linf`, `l2`), radii per norm (/255), steps, L∞ step size (/255; L2 steps are
    /// 2.5·eps/steps), random start, test images attacked.
    pub pgd_norms: Vec<PgdNorm>,
    pub pgd_linf_eps: Vec<f64>,
    pub pgd_l2_eps: Vec<f64>,
    pub pgd_steps: usize,
    pub pgd_step_size: f64,
    pub pgd_random_start: bool,
    pub pgd_n: usize,
    /// SGLD purification before classifying under attack (0 = off), attacked end to end; it
    /// uses `refine_step_size` and `refine_noise`.
    pub pgd_purify_steps: usize,
    /// Fresh chains for samples and the `fresh` FID protocol: start (`informative` or `uniform`),
    /// steps, step size and noise; the step rule is the run's `sampler.kind`.
    pub gen_init: InitKind,
    pub gen_steps: usize,
    pub gen_step_size: f64,
    pub gen_noise: f64,
    /// Samples in the unconditional grid, and per class in the class-conditional grid.
    pub gen_n: usize,
    pub gen_per_class: usize,
    /// The Inception network: the FID TorchScript file or pytorch-fid's
    /// `pt_inception-2015-12-05-6726825d.pth` (which adds the Inception Score). Empty: the
    /// `SADAJEM_INCEPTION` environment variable, then `weights/`, then `../shared/weights/`.
    pub inception: PathBuf,
    /// The Inception network's arithmetic: `fp32` (the standard), `bf16` (bf16 convolutions on
    /// channels_last inputs), or `auto` (the default: bf16 where the hardware has it natively,
    /// fp32 elsewhere). bf16 moved FID by 0.16 % and 0.48 % of its fp32 value on the same
    /// images, at twice the speed (docs/performance.md, "FID in bf16"); eval/fid.json records
    /// which one ran.
    pub fid_precision: Precision,
    /// `buffer` (the reference's: replay buffer, the most confident 90 % / 10 % per predicted
    /// class for FID / IS) and/or `fresh` (unfiltered fresh chains).
    pub fid_protocols: Vec<FidSamples>,
    /// Fresh-chain samples scored.
    pub fid_n: usize,
    /// Replay-buffer entries the `buffer` protocol starts from (0 = the whole buffer, as the
    /// reference does).
    pub fid_buffer_n: usize,
    /// Reference images: `train`, `test` or `train+test` of the run's dataset, the first N
    /// of them (0 = all).
    pub fid_reference: Splits,
    pub fid_reference_n: usize,
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
    /// Inception Score splits; 0 = the reference's max(1, n / 5000) (one split for the 10 %
    /// of a 10,000-image buffer).
    pub is_splits: usize,
    /// Inception Score from the classifier's logits WITH its bias (torch-fidelity's default);
    /// false = without, as the reference and the improved-GAN code compute it.
    pub is_bias: bool,
    /// Where reference statistics are cached (empty: $XDG_CACHE_HOME/sadajem, else
    /// ~/.cache/sadajem).
    pub cache_dir: PathBuf,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            seed: 1,
            n_test: 0,
            refine_steps: 0,
            refine_step_size: 1.0,
            refine_noise: 0.01,
            ece_bins: 20,
            ood_sets: vec![OodSource::Interp, OodSource::Noise(Noise::Uniform), OodSource::Noise(Noise::Gaussian)],
            ood_n: 0,
            pgd_norms: vec![PgdNorm::Linf, PgdNorm::L2],
            pgd_linf_eps: vec![1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 22.0, 30.0],
            pgd_l2_eps: vec![50.0, 100.0, 150.0, 200.0, 250.0, 300.0],
            pgd_steps: 50,
            pgd_step_size: 2.0,
            pgd_random_start: true,
            pgd_n: 1000,
            pgd_purify_steps: 0,
            gen_init: InitKind::Informative,
            gen_steps: 100,
            gen_step_size: 1.0,
            gen_noise: 0.0,
            gen_n: 100,
            gen_per_class: 10,
            inception: PathBuf::new(),
            fid_precision: Precision::Auto,
            fid_protocols: vec![FidSamples::Buffer, FidSamples::Fresh],
            fid_n: 10_000,
            fid_buffer_n: 0,
            fid_reference: Splits::TrainTest,
            fid_reference_n: 0,
            kid_subsets: 100,
            kid_subset_size: 1000,
            is_splits: 0,
            is_bias: false,
            cache_dir: PathBuf::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    pub sampler: SamplerConfig,
    pub loss: LossConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

/// The presets shipped in `configs/`, compiled in so `--preset` works from any directory.
pub const PRESETS: &[(&str, &str)] = &[
    ("softmax-fashion", include_str!("../configs/softmax-fashion.toml")),
    ("softmax-mnist", include_str!("../configs/softmax-mnist.toml")),
    ("softmax-cifar10", include_str!("../configs/softmax-cifar10.toml")),
    ("sadajem-fashion", include_str!("../configs/sadajem-fashion.toml")),
    ("jem-fashion", include_str!("../configs/jem-fashion.toml")),
    ("jempp-fashion", include_str!("../configs/jempp-fashion.toml")),
    ("sadajem-cifar10", include_str!("../configs/sadajem-cifar10.toml")),
    ("sadajem-cifar100", include_str!("../configs/sadajem-cifar100.toml")),
    ("sadajem-svhn", include_str!("../configs/sadajem-svhn.toml")),
    ("jem-cifar10", include_str!("../configs/jem-cifar10.toml")),
    ("jempp-cifar10", include_str!("../configs/jempp-cifar10.toml")),
];

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// What a run is built from, in order of precedence (last wins).
#[derive(Debug, Default)]
pub struct Sources<'a> {
    pub preset: Option<&'a str>,
    pub file: Option<&'a Path>,
    pub overrides: &'a [String],
}

impl Config {
    pub fn from_sources(src: &Sources) -> Result<Config, ConfigError> {
        let mut doc = toml::Value::try_from(Config::default()).expect("defaults serialise");
        if let Some(name) = src.preset {
            let text = PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| *t)
                .ok_or_else(|| ConfigError::UnknownPreset(name.into(), preset_names().join(", ")))?;
            merge_layer(&mut doc, parse(text, &format!("preset {name}"))?, "")?;
        }
        if let Some(path) = src.file {
            // A run directory's config.toml may come from anyone: a regular file, of a bounded size.
            let bytes = crate::run::read_untrusted(path, MAX_CONFIG_FILE, true).map_err(|e| ConfigError::Read(path.into(), e))?;
            let text = String::from_utf8(bytes)
                .map_err(|e| ConfigError::Read(path.into(), std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error())))?;
            merge_layer(&mut doc, parse(&text, &path.display().to_string())?, "")?;
        }
        with_overrides(doc, src.overrides)
    }

    /// These settings with `--set` overrides on top, validated: how a command that fills in
    /// settings itself (`import`, from the file's tensor shapes) still lets the user have the
    /// last word.
    pub fn overridden(&self, overrides: &[String]) -> Result<Config, ConfigError> {
        with_overrides(toml::Value::try_from(self).expect("config serialises"), overrides)
    }

    /// Reads a run's saved `config.toml` (complete, as written by `to_toml`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_sources(&Sources { file: Some(path), ..Default::default() })
    }

    /// A run's `config.toml` with `--set` overrides on top (e.g. evaluation settings).
    pub fn load_with(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        Config::from_sources(&Sources { file: Some(path), overrides, ..Default::default() })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Every section's own checks, then what the sections allow together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_finite(&toml::Value::try_from(self).expect("config serialises"), "")?;
        self.model.validate()?;
        self.data.validate()?;
        self.optim.validate()?;
        self.train.validate()?;
        self.sampler.validate()?;
        self.loss.validate()?;
        self.eval.validate()?;
        self.check_memory()
    }

    /// What the settings make the process allocate, estimated — the network's weights (float32),
    /// the replay buffer and one batch of images at the largest batch size — against the
    /// physical memory, so that `model.widen = 100000` (a panic inside libtorch) or
    /// `model.depth = 6000000004` (a segfault) is an error naming the settings before anything is
    /// built. Activations and optimiser state come on top; this refuses only what cannot work.
    fn check_memory(&self) -> Result<(), ConfigError> {
        let (m, d, s, l) = (&self.model, &self.data, &self.sampler, &self.loss);
        let params = m.parameters(d.channels as f64, 10.0);
        let image = (d.channels * d.image_size * d.image_size) as f64 * 4.0;
        let batch = [d.batch_size, d.eval_batch_size, s.batch_size, l.px_batch_size].into_iter().max().unwrap_or(1) as f64;
        let (weights, buffer, inputs) = (4.0 * params, s.buffer_size as f64 * image, batch * image);
        if crate::memory::fits(weights + buffer + inputs) {
            return Ok(());
        }
        let human = crate::memory::human;
        Err(ConfigError::TooLarge(format!(
            "model.depth = {}, model.widen = {}, sampler.buffer_size = {}, largest batch {batch}: a WRN-{}-{} of about \
             {params:.2e} parameters ({} of weights), a replay buffer of {} and batches of {} — more than this \
             machine's {} of memory",
            m.depth,
            m.widen,
            s.buffer_size,
            m.depth,
            m.widen,
            human(weights),
            human(buffer),
            human(inputs),
            human(crate::memory::physical_bytes() as f64)
        )))
    }
}

impl ModelConfig {
    /// Parameters and batch-norm statistics of the Wide-ResNet these settings build
    /// (src/model/wrn.rs), for `channels` inputs and `classes` outputs; a float, since absurd
    /// settings overflow any integer.
    pub fn parameters(&self, channels: f64, classes: f64) -> f64 {
        let k = self.widen as f64;
        let widths = [16.0, 16.0 * k, 32.0 * k, 64.0 * k];
        let n = ((self.depth - 4) / 6).max(0) as f64;
        let norm = |c: f64| if self.norm == NormKind::Batch { 4.0 * c } else { 0.0 };
        let conv = |cin: f64, cout: f64, side: f64| side * side * cin * cout + cout;
        let mut total = conv(channels, 16.0, 3.0);
        for g in 1..=3 {
            let (cin, cout) = (widths[g - 1], widths[g]);
            let first = norm(cin) + conv(cin, cout, 3.0) + norm(cout) + conv(cout, cout, 3.0);
            let shortcut = if g > 1 || self.widen != 1 { conv(cin, cout, 1.0) } else { 0.0 };
            let rest = norm(cout) + conv(cout, cout, 3.0) + norm(cout) + conv(cout, cout, 3.0);
            total += first + shortcut + (n - 1.0).max(0.0) * rest;
        }
        total + norm(widths[3]) + widths[3] * classes + classes
    }
}

/// `overrides` applied to `doc`, then typed and validated.
fn with_overrides(mut doc: toml::Value, overrides: &[String]) -> Result<Config, ConfigError> {
    for o in overrides {
        if o.len() > MAX_OVERRIDE {
            return Err(ConfigError::TooLarge(format!("`--set {}`: {} bytes, more than the {MAX_OVERRIDE} a setting may take", echo(o), o.len())));
        }
        let (key, value) = o.split_once('=').ok_or_else(|| ConfigError::BadOverride(echo(o)))?;
        set_key(&mut doc, key.trim(), parse_value(value.trim()))?;
    }
    let source_name = "configuration".to_string();
    let cfg: Config = doc.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid { source_name, message: echo_lines(e.to_string().trim()) })?;
    cfg.validate()?;
    Ok(cfg)
}

/// A setting's range check: the key, the value given and what was expected.
fn check(ok: bool, key: &'static str, value: impl ToString, expected: &'static str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { key, value: echo(&value.to_string()), expected })
    }
}

impl ModelConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let m = self;
        check(m.depth >= 10 && (m.depth - 4) % 6 == 0, "model.depth", m.depth, "expected 6n+4 with n ≥ 1 (10, 16, 22, 28, ...)")?;
        check(m.widen >= 1, "model.widen", m.widen, "expected an integer ≥ 1")?;
        check((0.0..=1.0).contains(&m.bn_momentum), "model.bn_momentum", m.bn_momentum, "expected a value in [0, 1] (PyTorch convention)")?;
        check((0.0..1.0).contains(&m.slope), "model.slope", m.slope, "expected a LeakyReLU slope in [0, 1)")?;
        check((0.0..1.0).contains(&m.dropout), "model.dropout", m.dropout, "expected a rate in [0, 1)")?;
        Ok(())
    }
}

impl DataConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let d = self;
        check(d.channels == 1 || d.channels == 3, "data.channels", d.channels, "expected 1 or 3")?;
        check((8..=512).contains(&d.image_size), "data.image_size", d.image_size, "expected a size in 8..=512 pixels")?;
        check(d.batch_size >= 1, "data.batch_size", d.batch_size, "expected ≥ 1")?;
        check(d.eval_batch_size >= 1, "data.eval_batch_size", d.eval_batch_size, "expected ≥ 1")?;
        check(d.pad_crop <= 16, "data.pad_crop", d.pad_crop, "expected 0..=16 pixels")?;
        check(d.noise >= 0.0, "data.noise", d.noise, "expected a standard deviation ≥ 0")?;
        Ok(())
    }
}

impl OptimConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let o = self;
        check(o.lr > 0.0, "optim.lr", o.lr, "expected > 0")?;
        check((0.0..1.0).contains(&o.momentum), "optim.momentum", o.momentum, "expected a value in [0, 1)")?;
        check(o.weight_decay >= 0.0, "optim.weight_decay", o.weight_decay, "expected ≥ 0")?;
        check(
            o.adam_betas.iter().all(|b| (0.0..1.0).contains(b)),
            "optim.adam_betas",
            format!("{:?}", o.adam_betas),
            "expected two values in [0, 1)",
        )?;
        check(o.adam_eps > 0.0 && o.adam_eps.is_finite(), "optim.adam_eps", o.adam_eps, "expected > 0")?;
        check(o.sam_rho >= 0.0 && o.sam_rho.is_finite(), "optim.sam_rho", o.sam_rho, "expected ≥ 0 (0 = SAM off)")?;
        check(o.decay_rate > 0.0, "optim.decay_rate", o.decay_rate, "expected > 0")?;
        check(o.decay_epochs.windows(2).all(|w| w[0] < w[1]), "optim.decay_epochs", format!("{:?}", o.decay_epochs), "expected increasing epochs")?;
        Ok(())
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let t = self;
        check(t.epochs >= 1, "train.epochs", t.epochs, "expected ≥ 1")?;
        check(
            !(t.backend == Backend::Nccl && t.device == DeviceSpec::Cpu),
            "train.backend",
            "nccl",
            "expected gloo or auto with train.device = cpu (NCCL runs on GPUs only)",
        )?;
        check(t.log_every >= 1, "train.log_every", t.log_every, "expected ≥ 1")?;
        check(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "expected ≥ 1 (1 = latest.safetensors alone)")?;
        check(
            t.rollback_lr_factor > 0.0 && t.rollback_lr_factor <= 1.0,
            "train.rollback_lr_factor",
            t.rollback_lr_factor,
            "expected a factor in (0, 1]",
        )?;
        Ok(())
    }
}

impl SamplerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let sm = self;
        check(sm.steps >= 1, "sampler.steps", sm.steps, "expected ≥ 1")?;
        check(sm.step_size >= 0.0, "sampler.step_size", sm.step_size, "expected ≥ 0")?;
        check(sm.noise >= 0.0, "sampler.noise", sm.noise, "expected ≥ 0")?;
        check(sm.batch_size >= 1, "sampler.batch_size", sm.batch_size, "expected ≥ 1")?;
        check(sm.buffer_size >= sm.batch_size, "sampler.buffer_size", sm.buffer_size, "expected ≥ sampler.batch_size")?;
        check((0.0..=1.0).contains(&sm.reinit_freq), "sampler.reinit_freq", sm.reinit_freq, "expected a probability in [0, 1]")?;
        check(sm.rank >= 1, "sampler.rank", sm.rank, "expected ≥ 1")?;
        Ok(())
    }
}

impl LossConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        check(l.w_ce >= 0.0 && l.w_px >= 0.0, "loss.w_ce / loss.w_px", format!("{} / {}", l.w_ce, l.w_px), "expected weights ≥ 0")?;
        check(l.l2 >= 0.0, "loss.l2", l.l2, "expected ≥ 0")?;
        check(l.px_batch_size >= 1, "loss.px_batch_size", l.px_batch_size, "expected ≥ 1")?;
        check(l.diverge_at > 0.0, "loss.diverge_at", l.diverge_at, "expected > 0")?;
        Ok(())
    }
}

impl EvalConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let e = self;
        check(e.ece_bins >= 1, "eval.ece_bins", e.ece_bins, "expected ≥ 1")?;
        for (key, v) in [
            ("eval.refine_step_size", e.refine_step_size),
            ("eval.refine_noise", e.refine_noise),
            ("eval.gen_step_size", e.gen_step_size),
            ("eval.gen_noise", e.gen_noise),
            ("eval.pgd_step_size", e.pgd_step_size),
        ] {
            check(v >= 0.0, key, v, "expected ≥ 0")?;
        }
        check(
            e.pgd_linf_eps.iter().chain(&e.pgd_l2_eps).all(|v| *v >= 0.0 && v.is_finite()),
            "eval.pgd_linf_eps / eval.pgd_l2_eps",
            format!("{:?} / {:?}", e.pgd_linf_eps, e.pgd_l2_eps),
            "expected radii ≥ 0 (in 1/255 units)",
        )?;
        check(e.pgd_steps >= 1, "eval.pgd_steps", e.pgd_steps, "expected ≥ 1")?;
        check(e.pgd_n >= 1, "eval.pgd_n", e.pgd_n, "expected ≥ 1")?;
        check(e.gen_n >= 1 && e.gen_per_class >= 1, "eval.gen_n / eval.gen_per_class", format!("{} / {}", e.gen_n, e.gen_per_class), "expected ≥ 1")?;
        check(e.fid_n >= 2, "eval.fid_n", e.fid_n, "expected ≥ 2")?;
        check(
            e.kid_subsets >= 1 && e.kid_subset_size >= 2,
            "eval.kid_subsets / eval.kid_subset_size",
            format!("{} / {}", e.kid_subsets, e.kid_subset_size),
            "expected ≥ 1 subset of ≥ 2",
        )?;
        Ok(())
    }
}

/// NaN or an infinity in any setting is a typo or an overflow, never a choice; the range checks
/// in `validate` would let some through (NaN fails every comparison, so `!(x < 0)` passes it).
fn check_finite(value: &toml::Value, key: &str) -> Result<(), ConfigError> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Err(ConfigError::NotFinite { key: key.to_string(), value: *f }),
        toml::Value::Table(t) => t.iter().try_for_each(|(k, v)| check_finite(v, &if key.is_empty() { k.clone() } else { format!("{key}.{k}") })),
        toml::Value::Array(a) => a.iter().try_for_each(|v| check_finite(v, key)),
        _ => Ok(()),
    }
}

fn parse(text: &str, source_name: &str) -> Result<toml::Value, ConfigError> {
    text.parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| ConfigError::Syntax { source_name: source_name.into(), message: echo_lines(&e.to_string()) })
}

/// A `--set` value: any TOML value (`0.05`, `true`, `[30, 60]`, `"x"`), else a bare string.
fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(text.into()))
}

fn allowed_keys(table: &toml::Table) -> String {
    table.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Copies `layer` into `doc`, refusing keys `doc` (which starts as the full defaults) lacks.
fn merge_layer(doc: &mut toml::Value, layer: toml::Value, prefix: &str) -> Result<(), ConfigError> {
    let (toml::Value::Table(dst), toml::Value::Table(src)) = (doc, layer) else { unreachable!() };
    for (k, v) in src {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match dst.get_mut(&k) {
            None => {
                let where_ = if prefix.is_empty() { "sections".to_string() } else { format!("keys in [{}]", echo(prefix)) };
                return Err(ConfigError::UnknownKey { key: echo(&key), where_, allowed: allowed_keys(dst) });
            }
            Some(slot @ toml::Value::Table(_)) if v.is_table() => merge_layer(slot, v, &key)?,
            Some(slot) => *slot = v,
        }
    }
    Ok(())
}

fn set_key(doc: &mut toml::Value, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    // Every setting is SECTION.KEY; a longer path names none, and nesting it would recurse
    // (60,000 dotted parts overflowed the stack).
    let parts = key.split('.').count();
    if parts > 2 {
        let sections = allowed_keys(doc.as_table().expect("the defaults are a table"));
        return Err(ConfigError::DottedKey { key: echo(key), parts, sections });
    }
    let mut layer = value;
    for part in key.rsplit('.') {
        let mut t = toml::Table::new();
        t.insert(part.to_string(), layer);
        layer = toml::Value::Table(t);
    }
    merge_layer(doc, layer, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(overrides: &[&str]) -> Result<Config, ConfigError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::from_sources(&Sources { preset: Some("softmax-fashion"), overrides: &o, ..Default::default() })
    }

    #[test]
    fn every_preset_parses_and_validates() {
        for name in preset_names() {
            let c = Config::from_sources(&Sources { preset: Some(name), ..Default::default() });
            assert!(c.is_ok(), "{name}: {:?}", c.err());
        }
    }

    /// The paper presets carry docs/method.md's reference values, including the odd ones.
    #[test]
    fn paper_presets_match_the_method() {
        let get = |n: &str| Config::from_sources(&Sources { preset: Some(n), ..Default::default() }).unwrap();
        for name in ["sadajem-cifar10", "sadajem-cifar100", "sadajem-svhn"] {
            let c = get(name);
            assert_eq!((c.model.depth, c.model.widen, c.model.norm, c.model.bn_momentum), (28, 10, NormKind::Batch, 0.9), "{name}");
            assert_eq!((c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.optim.warmup_iters), (0.1, 0.9, 5e-4, 1000));
            assert_eq!((c.optim.decay_epochs.clone(), c.optim.decay_rate, c.train.epochs), (vec![60, 120, 180], 0.2, 200));
            assert_eq!((c.optim.sam_rho, c.optim.sam_adaptive), (2.0, true), "{name}: ASAM ρ = 2");
            let s = &c.sampler;
            assert_eq!((s.kind, s.steps, s.step_size, s.noise), (SamplerKind::Clipped, 5, 1.0, 0.0), "{name}");
            assert_eq!((s.net_mode, s.init, s.batch_size, s.buffer_size, s.reinit_freq), (NetMode::Train, InitKind::Informative, 64, 10_000, 0.05));
            assert_eq!((c.loss.px_data, c.loss.px_batch_size, c.loss.diverge_at), (PxData::Clean, 64, 1e5));
            assert_eq!((c.data.batch_size, c.data.pad_crop, c.data.noise), (128, 4, 0.0));
        }
        assert!(!get("sadajem-svhn").data.flip, "no flips for digits");
        assert_eq!(get("sadajem-cifar100").sampler.covariance, CovarianceKind::Lowrank);
        let jem = get("jem-cifar10");
        assert_eq!((jem.model.norm, jem.sampler.kind, jem.sampler.steps, jem.sampler.noise), (NormKind::None, SamplerKind::Sgld, 20, 0.01));
        assert_eq!((jem.sampler.net_mode, jem.sampler.init, jem.loss.px_data), (NetMode::Eval, InitKind::Uniform, PxData::Augmented));
        assert_eq!((jem.data.batch_size, jem.loss.px_batch_size, jem.data.noise, jem.loss.diverge_at), (64, 64, 0.03, 1e8));
        // wgrathwohl/JEM train_wrn_ebm.py defaults: 200 epochs, ×0.3 at 160 and 180 (the decays happen).
        assert_eq!((jem.train.epochs, jem.optim.decay_epochs.clone(), jem.optim.decay_rate), (200, vec![160, 180], 0.3));
        assert_eq!((jem.optim.optimizer, jem.optim.lr, jem.optim.weight_decay, jem.optim.warmup_iters), (Optimizer::Adam, 1e-4, 0.0, 1000));
        let pp = get("jempp-cifar10");
        assert_eq!((pp.sampler.kind, pp.sampler.steps, pp.sampler.inner_steps, pp.sampler.inner_step_size), (SamplerKind::Pyld, 10, 5, 0.2));
        assert_eq!(
            (pp.model.norm, pp.sampler.init, pp.loss.px_data, pp.data.noise),
            (NormKind::Batch, InitKind::Informative, PxData::Augmented, 0.03)
        );
        // sndnyang/JEMPP scripts/jempp_cifar10.sh over train_jempp.py's defaults.
        assert_eq!(
            (pp.train.epochs, pp.optim.decay_epochs.clone(), pp.optim.decay_rate, pp.optim.weight_decay),
            (150, vec![50, 100, 125], 0.2, 4e-4)
        );
        for c in [&jem, &pp] {
            assert!(c.optim.decay_epochs.iter().all(|&e| e < c.train.epochs), "every decay happens");
        }
    }

    #[test]
    fn overrides_take_typed_values() {
        let c = with(&["optim.lr=0.05", "data.flip=false", "optim.decay_epochs=[1, 2]", "train.device=cpu"]).unwrap();
        assert_eq!(c.optim.lr, 0.05);
        assert!(!c.data.flip);
        assert_eq!(c.optim.decay_epochs, vec![1, 2]);
        assert_eq!(c.train.device, DeviceSpec::Cpu);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_allowed_ones() {
        let e = with(&["optim.lrr=0.05"]).unwrap_err().to_string();
        assert!(e.contains("optim.lrr") && e.contains("weight_decay"), "{e}");
        let e = with(&["optimizer.lr=1"]).unwrap_err().to_string();
        assert!(e.contains("optimizer") && e.contains("optim") && e.contains("train"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_what_was_expected() {
        let e = with(&["model.depth=12"]).unwrap_err().to_string();
        assert!(e.contains("model.depth") && e.contains("6n+4"), "{e}");
        let e = with(&["model.norm=group"]).unwrap_err().to_string();
        assert!(e.contains("group") && e.contains("batch"), "{e}");
        let e = with(&["train.recipe=jam"]).unwrap_err().to_string();
        assert!(e.contains("jam") && e.contains("softmax"), "{e}");
        let e = with(&["optim.lr=fast"]).unwrap_err().to_string();
        assert!(e.contains("optim.lr") && e.contains("fast"), "{e}");
        assert!(with(&["nokey"]).unwrap_err().to_string().contains("key=value"));
    }

    #[test]
    fn eval_choices_are_typed_and_a_typo_names_the_values() {
        let c = with(&[
            "eval.pgd_norms=[\"l2\"]",
            "eval.fid_protocols=[\"fresh\"]",
            "eval.fid_reference=\"train+test\"",
            "eval.ood_sets=[\"interp\", \"gaussian\", \"data/mnist\"]",
        ])
        .unwrap();
        assert_eq!((c.eval.pgd_norms, c.eval.fid_protocols, c.eval.fid_reference), (vec![PgdNorm::L2], vec![FidSamples::Fresh], Splits::TrainTest));
        assert_eq!(c.eval.ood_sets, [OodSource::Interp, OodSource::Noise(Noise::Gaussian), OodSource::Dataset("data/mnist".into())]);
        let e = with(&["eval.pgd_norms=[\"linfinity\"]"]).unwrap_err().to_string();
        assert!(e.contains("eval.pgd_norms") && e.contains("linfinity") && e.contains("l2"), "{e}");
        let e = with(&["eval.fid_protocols=[\"buffers\"]"]).unwrap_err().to_string();
        assert!(e.contains("eval.fid_protocols") && e.contains("fresh"), "{e}");
        let e = with(&["eval.fid_reference=\"valid\""]).unwrap_err().to_string();
        assert!(e.contains("eval.fid_reference") && e.contains("train+test"), "{e}");
        let e = with(&["eval.ood_sets=[\"\"]"]).unwrap_err().to_string();
        assert!(e.contains("eval.ood_sets") && e.contains("interp, uniform, gaussian"), "{e}");
        // Written as the same strings, and read back.
        let c = with(&["eval.ood_sets=[\"uniform\", \"d/x\"]", "eval.fid_reference=\"train+test\""]).unwrap();
        let toml = c.to_toml();
        assert!(toml.contains("\"uniform\",\n    \"d/x\",") && toml.contains(r#"fid_reference = "train+test""#), "{toml}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), toml).unwrap();
        assert_eq!(Config::load(&dir.path().join("config.toml")).unwrap(), c);
    }

    #[test]
    fn the_backend_is_typed_and_nccl_needs_a_gpu() {
        assert_eq!(with(&[]).unwrap().train.backend, Backend::Auto);
        assert_eq!(with(&["train.backend=gloo"]).unwrap().train.backend, Backend::Gloo);
        assert_eq!(with(&["train.backend=nccl", "train.device=cuda:1"]).unwrap().train.backend, Backend::Nccl);
        let e = with(&["train.backend=mpi"]).unwrap_err().to_string();
        assert!(e.contains("mpi") && e.contains("nccl"), "{e}");
        let e = with(&["train.backend=nccl", "train.device=cpu"]).unwrap_err().to_string();
        assert!(e.contains("train.backend") && e.contains("GPUs only"), "{e}");
    }

    #[test]
    fn nan_and_infinities_are_refused_everywhere() {
        for kv in ["eval.refine_step_size=nan", "optim.lr=inf", "data.noise=inf", "eval.pgd_linf_eps=[1.0, nan]", "loss.diverge_at=-inf"] {
            let e = with(&[kv]).unwrap_err().to_string();
            let key = kv.split('=').next().unwrap();
            assert!(e.contains(&format!("`{key}`")) && e.contains("expected a finite number"), "{kv}: {e}");
        }
        let e = with(&["eval.gen_noise=-0.1"]).unwrap_err().to_string();
        assert!(e.contains("eval.gen_noise") && e.contains("≥ 0"), "{e}");
    }

    #[test]
    fn optimiser_settings_parse_and_are_checked() {
        let c = with(&["optim.optimizer=adam", "optim.adam_betas=[0.5, 0.99]", "optim.sam_rho=2", "optim.sam_adaptive=true"]).unwrap();
        assert_eq!(c.optim.optimizer, Optimizer::Adam);
        assert_eq!(c.optim.adam_betas, [0.5, 0.99]);
        assert_eq!((c.optim.sam_rho, c.optim.sam_adaptive), (2.0, true));
        let d = with(&[]).unwrap().optim;
        assert_eq!((d.optimizer, d.adam_betas, d.adam_eps, d.sam_rho, d.sam_adaptive), (Optimizer::Sgd, [0.9, 0.999], 1e-8, 0.0, false));
        let e = with(&["optim.optimizer=rmsprop"]).unwrap_err().to_string();
        assert!(e.contains("rmsprop") && e.contains("sgd") && e.contains("adam"), "{e}");
        let e = with(&["optim.adam_betas=[0.9, 1.0]"]).unwrap_err().to_string();
        assert!(e.contains("optim.adam_betas") && e.contains("[0, 1)"), "{e}");
        let e = with(&["optim.adam_betas=[0.9]"]).unwrap_err().to_string();
        assert!(e.contains("adam_betas"), "{e}");
        let e = with(&["optim.adam_eps=0"]).unwrap_err().to_string();
        assert!(e.contains("optim.adam_eps"), "{e}");
        let e = with(&["optim.sam_rho=-0.1"]).unwrap_err().to_string();
        assert!(e.contains("optim.sam_rho") && e.contains("≥ 0"), "{e}");
        // Turning SAM off on an ASAM setting stays valid.
        assert!(with(&["optim.sam_rho=0", "optim.sam_adaptive=true"]).is_ok());
    }

    #[test]
    fn unknown_preset_lists_the_presets() {
        let e = Config::from_sources(&Sources { preset: Some("nope"), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("softmax-fashion"), "{e}");
    }

    #[test]
    fn saved_config_round_trips() {
        let c = with(&["optim.lr=0.01"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, c.to_toml()).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
    }

    /// Hostile settings and files end in a named error of a bounded length: no stack overflow,
    /// no panic, no megabytes of stderr.
    #[test]
    fn absurd_keys_values_and_files_are_named_errors_of_bounded_length() {
        let key = vec!["a"; 30_000].join(".");
        let e = with(&[&format!("{key}=1")]).unwrap_err().to_string();
        assert!(e.contains("settings are SECTION.KEY, not 30000 dotted parts") && e.len() < 1000, "{}", &e[..e.len().min(2000)]);
        let key = vec!["a"; 60_000].join(".");
        let e = with(&[&format!("{key}=1")]).unwrap_err().to_string();
        assert!(e.contains("120001 bytes, more than the 65536 a setting may take") && e.len() < 1000, "{}", &e[..e.len().min(2000)]);
        let e = with(&["model.depth.x=1"]).unwrap_err().to_string();
        assert!(e.contains("not 3 dotted parts"), "{e}");
        let huge = format!("optim.lr={}", "9".repeat(10 << 20));
        let e = with(&[&huge]).unwrap_err().to_string();
        assert!(e.contains("more than the 65536 a setting may take") && e.len() < 1000, "{}", e.len());
        // Within the length, a value that is not what the key takes is echoed only so far.
        let long = format!("optim.lr=\"{}\"", "x".repeat(60_000));
        let e = with(&[&long]).unwrap_err().to_string();
        assert!(e.contains("optim.lr") && e.len() < 2000, "{}", e.len());
        let nested = format!("optim.decay_epochs={}{}", "[".repeat(30_000), "]".repeat(30_000));
        assert!(with(&[&nested]).unwrap_err().to_string().len() < 2000);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::from_sources(&Sources { file: Some(&file), ..Default::default() }).unwrap_err().to_string()
        };
        let e = load(&format!("[optim]\nlr = {}x\n", "1".repeat(900_000)));
        assert!(e.contains("invalid TOML") && e.len() < 5000, "{}", e.len());
        // The TOML parser itself limits dotted keys and nested arrays.
        let e = load(&format!("{} = 1\n", vec!["a"; 60_000].join(".")));
        assert!(e.contains("c.toml: invalid TOML") && e.contains("recursion limit") && e.len() < 5000, "{}", &e[..e.len().min(2000)]);
        let e = load(&format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)));
        assert!(e.contains("invalid TOML") && e.len() < 5000, "{}", e.len());
        let e = load(&"#".repeat(2 << 20));
        assert!(e.contains("more than the 1048576 read"), "{e}");
        let e = Config::load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
    }

    /// model.widen = 100000 panicked inside libtorch, model.depth = 6000000004 segfaulted.
    #[test]
    fn models_that_cannot_fit_in_memory_are_refused_by_name() {
        for kv in ["model.widen=100000", "model.depth=6000000004", "sampler.buffer_size=1000000000000", "data.batch_size=100000000000000"] {
            let e = with(&[kv]).unwrap_err().to_string();
            assert!(e.contains("more than this machine's") && e.contains("model.widen = "), "{kv}: {e}");
        }
        let e = with(&["model.widen=100000"]).unwrap_err().to_string();
        assert!(e.contains("model.depth = 16, model.widen = 100000") && e.contains("WRN-16-100000 of about 1.71e15 parameters"), "{e}");
        // WRN-28-10 with batch norm, as in the papers: 36.5 million parameters (with BN statistics).
        let m = ModelConfig::default();
        assert!((m.parameters(3.0, 10.0) - 36.5e6).abs() < 0.1e6, "{}", m.parameters(3.0, 10.0));
    }
}
