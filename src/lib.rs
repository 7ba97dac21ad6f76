//! sadajem: Joint Energy-based Models — one network that is a classifier p(y|x) and a
//! generative model p(x) ∝ exp(logsumexp f(x)) — trained with SADA-JEM, JEM, JEM++ or plain
//! softmax recipes on libtorch (tch).
//!
//! Where each idea lives:
//! - [`config`]: typed settings, presets (`configs/`), `--set key=value`, validation.
//! - [`engine`]: device, threads, seeding, bf16 autocast, channels_last: the only place that
//!   sets libtorch globals.
//! - [`shim`]: the Rust side of `csrc/shim.cpp` (what tch lacks, e.g. LeakyReLU's slope).
//! - [`data`]: readers (IDX, CIFAR, SVHN, image folders) → u8 images; augmentation; loaders;
//!   `sadajem data download` ([`data::download`]: the published datasets, checksummed).
//! - [`model`]: the Wide-ResNet ([`model::wrn`]) and its energy view ([`model::energy`]).
//! - [`sampler`]: SGLD — starting points ([`sampler::init`]), the replay buffer
//!   ([`sampler::buffer`]), the JEM / SADA-JEM / JEM++ step rules ([`sampler::sgld`]).
//! - [`report`]: sample grids and plots (PNG), the HTML report, TensorBoard event files
//!   ([`report::tensorboard`]).
//! - [`optim`]: SGD with momentum and coupled weight decay; the learning-rate schedule.
//! - [`train`]: one iteration per recipe ([`train::recipe`]), the loop ([`train::trainer`]),
//!   atomic checkpoints ([`train::checkpoint`]).
//! - [`eval`]: metrics as pure functions (accuracy, calibration, OOD, attack, FID/KID/IS), the
//!   Inception network ([`eval::inception`]), and the `sadajem eval` driver ([`eval::evaluate`]).
//! - [`bench`]: `sadajem bench`, the parts of a training iteration timed (and PyTorch's, with
//!   `bench/reference_step.py`).
//! - [`run`]: the run-directory layout every command reads and writes.
//! - [`pickle`]: the `torch.save` file format without Python: its tensors read (within a memory
//!   budget, whatever the file claims), nested dicts of tensors written.
//! - [`memory`]: what this machine's memory allows, checked before large allocations.
//! - [`interop`]: the authors' JEM / JEM++ / SADA-JEM checkpoints → runs (`sadajem import`) and
//!   runs → their layout (`sadajem export`).
//!
//! - [`text`]: what a file or a user gave, echoed in messages only so far.
//!
//! Everything that needs libtorch sits behind the default `torch` feature; without it the crate
//! is its file formats alone ([`config`], the [`data`] readers, checkpoint files, `torch.save`
//! files ([`pickle::archive`]), [`run`] directories), which is what the fuzz targets in `fuzz/`
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
#[cfg(feature = "torch")]
pub mod report;
pub mod records;
pub mod run;
#[cfg(feature = "torch")]
pub mod sampler;
#[cfg(feature = "torch")]
pub mod shim;
pub mod store;
pub mod text;
#[cfg(feature = "torch")]
pub mod train;
