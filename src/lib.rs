//! sadajem: Joint Energy-based Models — one network that is a classifier p(y|x) and a
//! generative model p(x) ∝ exp(logsumexp f(x)) — trained with SADA-JEM, JEM, JEM++ or plain
//! softmax recipes on libtorch (tch).
//!
//! Where each idea lives, bottom layer first (docs/architecture.md draws the layers; each uses
//! only those above it in this list):
//! - [`text`], [`memory`]: how untrusted text is echoed in messages; what this machine's memory
//!   allows, checked before large allocations.
//! - [`store`]: atomic writes, the checkpoint file format, and `torch.save` files without Python
//!   ([`store::pickle`]: their tensors read within a memory budget whatever the file claims,
//!   nested dicts of tensors written).
//! - [`run`]: the run directory — every path in it, checkpoint resolution, the metric names.
//! - [`config`]: typed settings, presets (`configs/`), `--set key=value`, validation per section.
//! - [`records`]: the typed lines of `metrics.jsonl`, `final.json` and the `eval/*.json` records
//!   that the writers and every reader share.
//! - [`engine`], [`shim`]: device, threads, seeding, bf16 autocast, channels_last — the only
//!   places that set libtorch globals — and the Rust side of `csrc/` (what tch lacks).
//! - [`data`]: readers (IDX, CIFAR, SVHN, image folders) → u8 images; the seeded validation
//!   split ([`data::split`]); augmentation; the batches of an iteration ([`data::batches`]);
//!   `sadajem data download` ([`data::download`]).
//! - [`model`]: the Wide-ResNet ([`model::wrn`]) and its energy view ([`model::energy`]).
//! - [`optim`]: SGD and Adam with coupled weight decay, SAM/ASAM, the learning-rate schedule.
//! - [`sampler`]: SGLD — starting points ([`sampler::init`]), the replay buffer
//!   ([`sampler::buffer`]), the JEM / SADA-JEM / JEM++ step rules ([`sampler::sgld`]).
//! - [`report`]: sample grids and plots (PNG), the HTML report, a study's points
//!   ([`report::study`]) and `compare`'s tables and learning curves, TensorBoard event files
//!   ([`report::tensorboard`]).
//! - [`eval`]: each metric's pure functions beside its driver (accuracy, calibration, OOD,
//!   robustness, generation, FID/KID/IS), the Inception network ([`eval::inception`]), and
//!   [`eval::evaluate`], which loads a checkpoint once and runs the metrics asked for.
//! - [`train`]: one iteration per recipe ([`train::recipe`]), the loop ([`train::trainer`]), a
//!   run's start, resume, save and rollback ([`train::session`]), data parallel
//!   ([`train::distributed`]).
//! - [`bench`], [`interop`]: `sadajem bench`, the parts of a training iteration timed (and
//!   PyTorch's, with `bench/reference_step.py`); the authors' JEM / JEM++ / SADA-JEM
//!   checkpoints → runs (`sadajem import`) and runs → their layout (`sadajem export`).
//!
//! Everything that needs libtorch sits behind the default `torch` feature; without it the crate
//! is its file formats alone ([`config`], the [`data`] readers, checkpoint files, `torch.save`
//! files ([`store::pickle::archive`]), [`run`] directories), which is what the fuzz targets in `fuzz/`
//! build against.
#[cfg(feature = "torch")]
pub mod bench;
pub mod config;
pub mod data;
#[cfg(feature = "torch")]
pub mod engine;
#[cfg(feature = "torch")]
pub mod eval;
#[cfg(feature = "torch")]
pub mod interop;
pub mod memory;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod optim;
pub mod records;
#[cfg(feature = "torch")]
pub mod report;
pub mod run;
#[cfg(feature = "torch")]
pub mod sampler;
#[cfg(feature = "torch")]
pub mod shim;
pub mod store;
pub mod text;
#[cfg(feature = "torch")]
pub mod train;
