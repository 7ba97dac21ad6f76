//! A training session: everything that changes while a run trains — the network and its
//! optimiser, the sampler's chains, the batch streams, the counters in [`TrainState`] — and how
//! it starts (fresh or resumed), is checkpointed, restored and rolled back. The loop that
//! advances it is in `trainer.rs`.
use crate::config::{Config, InitKind, Recipe};
use crate::data::batches::Batches;
use crate::data::{loader, split, ImageSet};
use crate::model::Wrn;
use crate::optim::{sam::Sam, Base};
use crate::records::{MetricsLine, RollbackLine};
use crate::run::RunDir;
use crate::sampler::{buffer::ReplayBuffer, init};
use crate::store::checkpoint;
use crate::train::distributed::World;
use crate::train::recipe::{Chains, Diverged, Learner};
use crate::{engine, shim};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{nn, Device, Tensor};

/// Everything besides tensors that a resume needs; saved in each checkpoint's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Iterations done.
    pub iter: usize,
    /// Epochs completed.
    pub epoch: usize,
    pub stream: loader::StreamState,
    /// The likelihood term's own stream (`loss.px_data = "clean"` or `"augmented"`).
    pub px_stream: Option<loader::StreamState>,
    pub augment_rng: ChaCha8Rng,
    /// None until the first validation (and always without a validation split).
    pub best_valid_acc: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Training wall time so far, over all resumes.
    pub train_seconds: f64,
    /// Divergence rollbacks so far, and the learning-rate factor they left.
    pub rollbacks: usize,
    pub lr_scale: f64,
    /// Workers of the job that wrote the checkpoint (1 before data-parallel training existed).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

/// Independent seeds per purpose from the one `train.seed`.
fn derive_seed(seed: u64, purpose: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(purpose)
}

/// Worker `rank`'s own seed from a job-wide one; rank 0 keeps `seed`, so a one-worker job
/// draws what a single process does.
fn worker_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        seed
    } else {
        derive_seed(seed, rank as u64)
    }
}

/// What a run trains on, read and checked before its directory is made, so that a bad device
/// or data setting leaves nothing behind: the device and both splits.
pub struct Inputs {
    pub device: Device,
    pub train_set: ImageSet,
    pub test_set: ImageSet,
}

impl Inputs {
    pub fn load(cfg: &Config) -> Result<Inputs> {
        let device = engine::parse_device(cfg.train.device)?;
        let train_set = split::load_split(cfg, crate::data::Split::Train)?;
        let test_set = split::load_split(cfg, crate::data::Split::Test)?;
        let d = &cfg.data;
        if d.n_valid + d.batch_size > train_set.n {
            bail!(
                "data.n_valid = {} and data.batch_size = {} leave no full training batch of the {} training images",
                d.n_valid,
                d.batch_size,
                train_set.n
            );
        }
        Ok(Inputs { device, train_set, test_set })
    }
}

/// A freshly initialised network for `set`'s images in `vs`, with its optimiser, and the
/// names of its trainable parameters in the optimiser's order.
pub fn new_learner(cfg: &Config, vs: &nn::VarStore, set: &ImageSet) -> (Vec<String>, Learner) {
    let mut net = Wrn::new(&vs.root(), &cfg.model, set.channels as i64, set.num_classes as i64);
    net.set_compute(vs, cfg.train.precision, cfg.train.channels_last);
    let (names, params): (Vec<String>, Vec<Tensor>) = named_params(vs).into_iter().unzip();
    let opt = Base::from_config(&cfg.optim, params.len());
    let sam = (cfg.optim.sam_rho > 0.0).then_some(Sam { rho: cfg.optim.sam_rho, adaptive: cfg.optim.sam_adaptive });
    (names, Learner { net, params, opt, sam, world: None })
}

fn named_params(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    checkpoint::model_tensors(vs, "").into_iter().filter(|(_, t)| t.requires_grad()).collect()
}

/// libtorch generators a checkpoint keeps: the CPU's always (weight init, CPU draws), and the
/// GPU's too when training on one.
fn generators(device: Device) -> Vec<(&'static str, Device)> {
    let mut g = vec![("rng.torch.cpu", Device::Cpu)];
    if device != Device::Cpu {
        g.push(("rng.torch.device", device));
    }
    g
}

pub struct Session<'a> {
    pub cfg: &'a Config,
    pub run: &'a RunDir,
    pub world: Rc<World>,
    pub device: Device,
    vs: nn::VarStore,
    /// Names of `learner.params`, in the same order.
    names: Vec<String>,
    pub learner: Learner,
    pub chains: Option<Chains>,
    pub batches: Batches,
    pub train_set: ImageSet,
    pub test_set: ImageSet,
    pub valid_idx: Vec<usize>,
    /// Batch-norm running statistics, which data-parallel workers take from rank 0.
    pub running_stats: Vec<Tensor>,
    pub state: TrainState,
    /// The iteration `latest.safetensors` holds, when this session wrote or restored it.
    latest_iter: Option<usize>,
}

impl<'a> Session<'a> {
    /// The session of `run`: fresh, or (with `resume`) restored from its newest intact
    /// checkpoint; a run that has none yet starts from the beginning. Always leaves a
    /// checkpoint to come back to.
    pub fn start(cfg: &'a Config, run: &'a RunDir, resume: bool, inputs: Inputs, world: Rc<World>) -> Result<Self> {
        let Inputs { device, train_set, test_set } = inputs;
        engine::seed_torch(cfg.train.seed);
        let (train_idx, valid_idx) = split::train_valid(cfg, train_set.n);
        check_workers(cfg, train_idx.len(), world.size)?;
        let vs = nn::VarStore::new(device);
        let (names, mut learner) = new_learner(cfg, &vs, &train_set);
        // Model tensors in name order: the same order on every worker.
        let model: Vec<(String, Tensor)> = checkpoint::model_tensors(&vs, "");
        let running_stats = model.iter().filter(|(_, t)| !t.requires_grad()).map(|(_, t)| t.shallow_clone()).collect();
        if !world.is_single() {
            world.broadcast_from_primary(&model.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>());
            learner.world = Some(world.clone());
            // Each worker's own sampler stream; rank 0 keeps the one a single process has.
            if world.rank > 0 {
                engine::seed_torch(worker_seed(derive_seed(cfg.train.seed, 4), world.rank));
            }
        }
        let joint = cfg.train.recipe != Recipe::Softmax;
        let chains = if joint { Some(new_chains(cfg, run, &train_set, &train_idx, &world, device)?) } else { None };
        let seeds = (derive_seed(cfg.train.seed, 1), derive_seed(cfg.train.seed, 3));
        let batches = Batches::new(cfg, train_idx, seeds, joint, (world.rank, world.size), device);
        let (stream, px_stream) = batches.state();
        let state = TrainState {
            iter: 0,
            epoch: 0,
            stream,
            px_stream,
            augment_rng: ChaCha8Rng::seed_from_u64(derive_seed(cfg.train.seed, 2)),
            best_valid_acc: None,
            best_epoch: None,
            train_seconds: 0.0,
            rollbacks: 0,
            lr_scale: 1.0,
            world_size: world.size,
        };
        let latest_iter = None;
        let mut s = Session {
            cfg,
            run,
            world,
            device,
            vs,
            names,
            learner,
            chains,
            batches,
            train_set,
            test_set,
            valid_idx,
            running_stats,
            state,
            latest_iter,
        };
        s.resume_or_begin(resume)?;
        Ok(s)
    }

    fn resume_or_begin(&mut self, resume: bool) -> Result<()> {
        let (run, primary) = (self.run, self.world.is_primary());
        if primary {
            run.remove_temporaries()?;
        }
        let resumed = if resume { self.restore_newest_together()? } else { None };
        if primary {
            run.truncate_metrics_after(self.state.iter)?;
            // A kill between keeping `latest` and pruning leaves one numbered checkpoint too
            // many, and the setting may have been lowered since.
            run.prune_numbered(self.cfg.train.keep_checkpoints - 1)?;
            run.check_space(self.checkpoint_bytes(), self.cfg.train.keep_checkpoints)?;
        }
        match resumed {
            Some(_) => println!("resuming {} at epoch {}, iteration {}", run.root.display(), self.state.epoch + 1, self.state.iter),
            None => {
                if resume {
                    println!("{}: no checkpoint to resume from; starting from the beginning", run.root.display());
                }
                // A checkpoint before the first step: a run killed early resumes, and an early
                // divergence has somewhere to roll back to.
                self.save_latest()?;
            }
        }
        Ok(())
    }

    /// Every worker calls it (the buffer shards and generator states are gathered); rank 0
    /// writes the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let w = &self.world;
        let buffer = self.chains.as_ref().map(|c| w.gather(&c.buffer.images).flatten(0, 1));
        let rngs: Vec<(&str, Tensor)> = generators(self.device).into_iter().map(|(key, device)| (key, w.gather(&shim::rng_state(device)))).collect();
        if !w.is_primary() {
            return Ok(());
        }
        let mut tensors = checkpoint::model_tensors(&self.vs, "model.");
        tensors.extend(self.learner.opt.state_tensors(&self.names));
        if let Some(buffer) = buffer {
            tensors.push(("sampler.buffer".into(), buffer));
        }
        for (key, states) in rngs {
            tensors.push((key.into(), states.get(0)));
            if !w.is_single() {
                tensors.push((format!("{key}.ranks"), states));
            }
        }
        let mut state = self.state.clone();
        state.world_size = w.size;
        (state.stream, state.px_stream) = self.batches.state();
        checkpoint::save(path, &tensors, &state)
    }

    /// Writes `latest.safetensors`, first keeping the one it replaces as a numbered checkpoint,
    /// then deletes numbered ones beyond `train.keep_checkpoints`.
    pub fn save_latest(&mut self) -> Result<()> {
        let (run, keep, primary) = (self.run, self.cfg.train.keep_checkpoints, self.world.is_primary());
        if let Some(prev) = self.latest_iter.filter(|&i| primary && keep > 1 && i != self.state.iter) {
            run.keep_latest_as(prev)?;
        }
        self.save(&run.latest())?;
        self.latest_iter = Some(self.state.iter);
        if primary {
            run.prune_numbered(keep - 1)?;
        }
        Ok(())
    }

    /// Restores the newest checkpoint that reads back intact: `latest`, else the numbered ones
    /// newest first. A damaged one is reported on the console and renamed `NAME.bad`. Returns
    /// the file used, or None when the run has no checkpoint at all.
    fn restore_newest(&mut self) -> Result<Option<PathBuf>> {
        let run = self.run;
        let mut damaged = vec![];
        for path in run.checkpoint_candidates()? {
            // Only a file that fails its checks is damaged; one that passes but does not restore
            // (another kind of checkpoint, settings changed since) stops the resume.
            match checkpoint::read(&path) {
                Ok(file) => {
                    let state: TrainState = file.state(&path)?;
                    self.restore(&path, &checkpoint::tensors(&file, &path)?, state)?;
                    self.latest_iter = (path == run.latest()).then_some(self.state.iter);
                    if !damaged.is_empty() {
                        println!("falling back to {} (iteration {})", path.display(), self.state.iter);
                    }
                    return Ok(Some(path));
                }
                // A file we could not read at all (permissions, I/O) is not known to be damaged.
                Err(e) if e.downcast_ref::<std::io::Error>().is_some() => return Err(e),
                // Rank 0 has looked first and set damaged files aside; the others only read.
                Err(e) if !self.world.is_primary() => return Err(e),
                Err(e) => {
                    let aside = run.set_aside(&path)?;
                    eprintln!("warning: {e:#}; renamed it {}", aside.display());
                    damaged.push(aside);
                }
            }
        }
        if damaged.is_empty() {
            return Ok(None);
        }
        bail!(
            "{}: no intact checkpoint left (damaged: {}); `sadajem train --resume {}` again would start the run from the beginning",
            run.checkpoints().display(),
            damaged.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            run.root.display()
        )
    }

    /// `restore_newest` on every worker: rank 0 first (it sets damaged files aside), then the
    /// others, who so find the same intact checkpoint.
    fn restore_newest_together(&mut self) -> Result<Option<PathBuf>> {
        let world = self.world.clone();
        if !world.is_primary() {
            world.barrier();
        }
        let restored = self.restore_newest();
        if world.is_primary() {
            world.barrier();
        }
        restored
    }

    /// Puts everything back as it was when `path` was saved.
    fn restore(&mut self, path: &Path, tensors: &HashMap<String, Tensor>, state: TrainState) -> Result<()> {
        let (rank, size) = (self.world.rank, self.world.size);
        if state.world_size != size {
            bail!(
                "{}: written by a job of {} worker(s), and this one has {size}; resume it with `--nproc {}` (the replay buffer and random streams are split by worker)",
                path.display(),
                state.world_size,
                state.world_size
            );
        }
        checkpoint::load_model(&self.vs, tensors, "model.", path)?;
        self.learner.opt.load_state(tensors, &self.names, self.device).with_context(|| format!("{}", path.display()))?;
        if let Some(chains) = &mut self.chains {
            let buffer = tensors.get("sampler.buffer").with_context(|| format!("{}: no replay buffer", path.display()))?;
            let mut whole = chains.buffer.images.size();
            whole[0] *= size as i64;
            if buffer.size() != whole {
                bail!("{}: the replay buffer has shape {:?}, this run's settings give {:?}", path.display(), buffer.size(), whole);
            }
            let shard = chains.buffer.len();
            chains.buffer.images = buffer.narrow(0, rank as i64 * shard, shard).to_device(self.device);
        }
        for (key, device) in generators(self.device) {
            let rng = if size == 1 {
                tensors.get(key).map(|t| t.shallow_clone())
            } else {
                tensors.get(&format!("{key}.ranks")).map(|t| t.get(rank as i64))
            };
            let rng = rng.with_context(|| format!("{}: no `{key}` generator state", path.display()))?;
            shim::set_rng_state(device, &rng).with_context(|| format!("{}: `{key}`", path.display()))?;
        }
        self.batches.set_state(state.stream.clone(), state.px_stream.clone());
        self.state = state;
        Ok(())
    }

    /// The weights of the best-validation checkpoint in place of the current ones, and the
    /// epoch it was written at.
    pub fn load_best(&mut self) -> Result<Option<usize>> {
        let best = self.run.best();
        let (tensors, state): (_, TrainState) = checkpoint::load(&best)?;
        checkpoint::load_model(&self.vs, &tensors, "model.", &best)?;
        Ok(state.best_epoch)
    }

    /// Divergence: back to the last checkpoint with a smaller learning rate and a fresh
    /// sampler stream, or a clear stop after `train.max_rollbacks` tries.
    pub fn rollback(&mut self, d: Diverged) -> Result<()> {
        let (cfg, run) = (self.cfg, self.run);
        let at = self.state.iter;
        if self.state.rollbacks >= cfg.train.max_rollbacks {
            bail!(
                "training diverged at iteration {at} ({}) after {} rollback(s) (train.max_rollbacks); \
                 the last good checkpoint is {} — lower optim.lr, add loss.l2, or change the sampler settings and resume a new run from it",
                d.what,
                self.state.rollbacks,
                run.latest().display()
            );
        }
        let (rollbacks, lr_scale) = (self.state.rollbacks + 1, self.state.lr_scale * cfg.train.rollback_lr_factor);
        if self.restore_newest_together()?.is_none() {
            bail!("training diverged at iteration {at} ({}) and {} holds no checkpoint to roll back to", d.what, run.checkpoints().display());
        }
        self.state.rollbacks = rollbacks;
        self.state.lr_scale = lr_scale;
        // A new sampler stream, so the chains do not walk into the same blow-up.
        engine::seed_torch(worker_seed(derive_seed(cfg.train.seed, 1000 + rollbacks as u64), self.world.rank));
        if !self.world.is_primary() {
            return Ok(());
        }
        run.truncate_metrics_after(self.state.iter)?;
        let line = RollbackLine { iter: self.state.iter, diverged_at: at, reason: d.what.clone(), lr_scale, rollback: rollbacks };
        run.log(&MetricsLine::Rollback(line))?;
        eprintln!(
            "diverged at iteration {at} ({}); rollback {rollbacks}/{}: back to iteration {} with the learning rate ×{lr_scale} and a new sampler seed",
            d.what, cfg.train.max_rollbacks, self.state.iter
        );
        Ok(())
    }

    /// Bytes of one checkpoint once every optimiser state exists (SGD's momentum and Adam's
    /// moments appear with a parameter's first gradient), with room for the header.
    fn checkpoint_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        let model: u64 = self.vs.variables().values().map(bytes).sum();
        let params: u64 = self.learner.params.iter().map(bytes).sum();
        let slots = match self.learner.opt {
            Base::Sgd(_) => 1,
            Base::Adam(_) => 2,
        };
        let buffer = self.chains.as_ref().map_or(0, |c| bytes(&c.buffer.images));
        model + slots * params + buffer + (1 << 20)
    }
}

/// A data-parallel job's settings must split: every worker a full batch, the buffer in equal
/// shards.
fn check_workers(cfg: &Config, train_images: usize, workers: usize) -> Result<()> {
    if workers == 1 {
        return Ok(());
    }
    let d = &cfg.data;
    if train_images < d.batch_size * workers {
        bail!("{workers} workers × data.batch_size = {} need at least that many training images; there are {train_images}", d.batch_size * workers);
    }
    if cfg.train.recipe != Recipe::Softmax && !cfg.sampler.buffer_size.is_multiple_of(workers) {
        bail!("sampler.buffer_size = {} must divide evenly among the {workers} workers (each keeps a shard)", cfg.sampler.buffer_size);
    }
    Ok(())
}

/// The replay buffer (this worker's shard) and what restarts its chains. With the informative
/// init, rank 0 fits and caches the class Gaussians in the run; the others then read them.
fn new_chains(cfg: &Config, run: &RunDir, set: &ImageSet, train_idx: &[usize], world: &World, device: Device) -> Result<Chains> {
    let s = &cfg.sampler;
    let shape = [set.channels as i64, set.height as i64, set.width as i64];
    let init = match s.init {
        InitKind::Uniform => init::Init::Uniform { shape },
        InitKind::Informative => {
            if !world.is_primary() {
                world.barrier();
            }
            let fitted = init::informative_cached(&run.init_cache(), set, train_idx, init::Covariance::from_config(s), device);
            if world.is_primary() {
                world.barrier();
            }
            init::Init::Informative(fitted?)
        }
    };
    let shard = (s.buffer_size / world.size) as i64;
    let buffer = ReplayBuffer::new(shard, &init, set.num_classes as i64, s.reinit_freq, device);
    Ok(Chains { buffer, init })
}
