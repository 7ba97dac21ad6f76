//! `sadajem eval`: loads a run's model once, runs each metric's driver (in the module named
//! after it, beside its pure functions: [`super::accuracy`], [`super::calibration`],
//! [`super::ood`], [`super::robustness`], [`super::generation`], [`super::fid`]), and writes
//! `RUN/eval/<metric>.json` (the typed records of [`crate::records::eval`]: values, settings,
//! dataset, checkpoint, protocol, seconds) with its PNG plots, or the same into another
//! directory (`sadajem eval --out`: a study's evaluation of each kept checkpoint). Like the
//! trainer, it owns the progress bars.
use crate::config::Config;
use crate::data::{augment, augment::Augment, split, ImageSet, Split};
use crate::model::{energy, Mode, Wrn};
use crate::records::eval::{DatasetAbout, EvalRecord, Header};
use crate::run::{Metric, RunDir};
use crate::store::checkpoint;
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::Value;
use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// What a finished metric reports on the console.
pub struct Outcome {
    pub metric: Metric,
    pub summary: String,
    pub file: PathBuf,
}

/// One evaluation of one checkpoint of one run.
pub struct Evaluation<'a> {
    pub(super) cfg: &'a Config,
    pub(super) device: Device,
    /// Keeps the network's variables alive.
    _vs: nn::VarStore,
    pub(super) net: Wrn,
    pub(super) checkpoint: PathBuf,
    /// The training iteration the checkpoint holds, its epochs done and training seconds
    /// (None for one without a training state).
    pub(super) iteration: Option<u64>,
    epoch: Option<u64>,
    train_seconds: Option<f64>,
    /// The checkpoint's replay buffer (joint recipes only), on the CPU.
    pub(super) buffer: Option<Tensor>,
    pub(super) run: RunDir,
    pub(super) out: PathBuf,
    pub(super) test: ImageSet,
    pub(super) test_idx: Vec<usize>,
    train: OnceCell<ImageSet>,
    test_logits: OnceCell<Tensor>,
}

pub(super) fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous().view([-1])).expect("a float tensor")
}

impl<'a> Evaluation<'a> {
    /// An evaluation of `checkpoint` writing into `out` (default: the run's eval/; elsewhere, the
    /// run's TensorBoard logs, which show eval/, are left alone).
    pub fn new(cfg: &'a Config, run: &RunDir, checkpoint: &Path, out: Option<&Path>) -> Result<Self> {
        let device = crate::engine::parse_device(cfg.train.device)?;
        let mut test = split::load_split(cfg, Split::Test)?;
        test.keep_first(cfg.eval.n_test);
        let vs = nn::VarStore::new(device);
        let mut net = Wrn::new(&vs.root(), &cfg.model, test.channels as i64, test.num_classes as i64);
        net.set_compute(&vs, cfg.train.precision, cfg.train.channels_last);
        let (tensors, state): (_, Value) = checkpoint::load(checkpoint)?;
        checkpoint::load_model(&vs, &tensors, "model.", checkpoint)?;
        let buffer = tensors.get("sampler.buffer").map(|b| b.to_device(Device::Cpu));
        let mut ev = Self::with_model(cfg, run, vs, net, test, out.map_or(run.eval(), Path::to_path_buf))?;
        (ev.checkpoint, ev.buffer) = (checkpoint.to_path_buf(), buffer);
        ev.iteration = state.get("iter").and_then(Value::as_u64);
        ev.epoch = state.get("epoch").and_then(Value::as_u64);
        ev.train_seconds = state.get("train_seconds").and_then(Value::as_f64);
        Ok(ev)
    }

    /// An evaluation of the network `net` (its variables in `vs`) on `test`, without a
    /// checkpoint: no iteration, no replay buffer. Creates `out`.
    pub(super) fn with_model(cfg: &'a Config, run: &RunDir, vs: nn::VarStore, net: Wrn, test: ImageSet, out: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
        Ok(Evaluation {
            cfg,
            device: vs.device(),
            _vs: vs,
            net,
            checkpoint: PathBuf::new(),
            iteration: None,
            epoch: None,
            train_seconds: None,
            buffer: None,
            run: run.clone(),
            out,
            test_idx: (0..test.n).collect(),
            test,
            train: OnceCell::new(),
            test_logits: OnceCell::new(),
        })
    }

    /// Runs the named metrics; each writes its JSON and plots as soon as it is done.
    pub fn run(&self, metrics: &[Metric], mut report: impl FnMut(&Outcome)) -> Result<Vec<Outcome>> {
        let mut done = vec![];
        for &m in metrics {
            // Each metric draws from its own seeded stream, whichever others run.
            crate::engine::seed_torch(self.cfg.eval.seed);
            let started = Instant::now();
            let (file, summary) = match m {
                Metric::Accuracy => self.write(m, started, self.accuracy()?)?,
                Metric::Calibration => self.write(m, started, self.calibration()?)?,
                Metric::Ood => self.write(m, started, self.ood()?)?,
                Metric::Robustness => self.write(m, started, self.robustness()?)?,
                Metric::Generation => self.write(m, started, self.generation()?)?,
                Metric::Fid => self.write(m, started, self.fid()?)?,
            };
            if self.out == self.run.eval() {
                crate::report::tensorboard::write_eval(&self.run)?;
            }
            let outcome = Outcome { metric: m, summary, file };
            report(&outcome);
            done.push(outcome);
        }
        Ok(done)
    }

    /// The common header of metric `metric`, begun at `started`.
    pub(super) fn header(&self, metric: Metric, started: Instant) -> Header {
        Header {
            metric: metric.name().into(),
            checkpoint: self.checkpoint.display().to_string(),
            iteration: self.iteration,
            epoch: self.epoch,
            train_seconds: self.train_seconds,
            dataset: DatasetAbout { dir: self.cfg.data.dir.display().to_string(), split: "test".into(), n_test: self.test.n },
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Writes `eval/<metric>.json`: a driver's values with the header; returns the file and the
    /// driver's summary.
    fn write<T: Serialize>(&self, metric: Metric, started: Instant, (values, summary): (T, String)) -> Result<(PathBuf, String)> {
        let record = EvalRecord { values, header: self.header(metric, started) };
        let file = self.out.join(RunDir::record_name(metric));
        crate::store::atomic::write_atomic(&file, serde_json::to_string_pretty(&record)?.as_bytes())?;
        Ok((file, summary))
    }

    pub(super) fn train_set(&self) -> Result<&ImageSet> {
        if let Some(t) = self.train.get() {
            return Ok(t);
        }
        let t = split::load_split(self.cfg, Split::Train)?;
        Ok(self.train.get_or_init(|| t))
    }

    /// Images `idx` of `set` as [N, C, H, W] in [−1, 1] and their labels, on the CPU.
    pub(super) fn images(set: &ImageSet, idx: &[usize]) -> (Tensor, Tensor) {
        augment::batch(set, idx, &Augment::NONE, &mut ChaCha8Rng::seed_from_u64(0))
    }

    pub(super) fn classify(&self, x: &Tensor) -> Tensor {
        self.net.forward(&x.to_device(self.device), Mode::Eval)
    }

    pub(super) fn lse(&self, x: &Tensor) -> Tensor {
        energy::lse(&self.net.forward(x, Mode::Eval))
    }

    /// The test logits in eval mode, without refinement (computed once).
    pub(super) fn test_logits(&self) -> &Tensor {
        self.test_logits.get_or_init(|| super::logits(&self.net, &self.test, &self.test_idx, self.cfg.data.eval_batch_size, self.device))
    }

    pub fn num_classes(&self) -> usize {
        self.test.num_classes
    }
}

/// A tiny untrained evaluation for the drivers' tests: a WRN-10-1 on `n` random 1×8×8 images
/// of 3 classes, on the CPU, writing into a temporary run directory.
#[cfg(test)]
pub(super) mod tiny {
    use super::*;
    use crate::config::ModelConfig;

    pub fn config() -> Config {
        let mut cfg = Config { model: ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() }, ..Config::default() };
        (cfg.data.channels, cfg.data.image_size, cfg.data.eval_batch_size) = (1, 8, 16);
        cfg.train.device = crate::config::DeviceSpec::Cpu;
        cfg
    }

    pub fn images(n: usize) -> ImageSet {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let images = (0..n * 64).map(|_| rand::Rng::gen::<u8>(&mut rng)).collect();
        ImageSet { images, n, channels: 1, height: 8, width: 8, labels: (0..n as i64).map(|i| i % 3).collect(), num_classes: 3 }
    }

    /// An evaluation writing into the run directory DIR/run.
    pub fn evaluation<'a>(cfg: &'a Config, dir: &Path, n: usize) -> Evaluation<'a> {
        tch::manual_seed(0);
        let run = RunDir::create(&dir.join("run")).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Wrn::new(&vs.root(), &cfg.model, 1, 3);
        Evaluation::with_model(cfg, &run, vs, net, images(n), run.eval()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::eval::AccuracyRecord;

    #[test]
    fn run_writes_the_record_with_its_header() {
        let cfg = tiny::config();
        let dir = tempfile::tempdir().unwrap();
        let ev = tiny::evaluation(&cfg, dir.path(), 20);
        let done = ev.run(&[Metric::Accuracy], |_| {}).unwrap();
        let text = std::fs::read_to_string(&done[0].file).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        for key in ["accuracy", "n", "protocol", "settings", "metric", "checkpoint", "iteration", "dataset", "seconds"] {
            assert!(v.get(key).is_some(), "{key} missing from {text}");
        }
        assert_eq!(v["metric"], "accuracy");
        assert!(v["iteration"].is_null() && v.get("accuracy_refined").is_none(), "{text}");
        assert_eq!(v["dataset"]["n_test"], 20);
        let r: EvalRecord<AccuracyRecord> = serde_json::from_str(&text).unwrap();
        assert!((0.0..=1.0).contains(&r.values.accuracy));
    }
}
