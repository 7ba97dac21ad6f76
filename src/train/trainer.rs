//! The training loop: epochs of the classification stream, logging, validation, sample grids,
//! checkpoints, exact resume and divergence rollback. It owns everything the user sees while
//! training (progress bar, epoch lines).
use crate::config::{Config, InitKind, Recipe};
use crate::data::{augment, augment::Augment, loader, loader::BatchStream, split, ImageSet, Split};
use crate::eval::{self, accuracy};
use crate::model::Wrn;
use crate::optim::{sam::Sam, schedule, Base};
use crate::report::{grid, tensorboard::Board};
use crate::run::RunDir;
use crate::sampler::{buffer::ReplayBuffer, init};
use crate::store::checkpoint;
use crate::train::recipe::{self, Batch, Chains, Diverged, Learner, StepStats};
use crate::{engine, shim};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use crate::train::distributed::World;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;
use std::path::{Path, PathBuf};
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
        let device = engine::parse_device(&cfg.train.device)?;
        let train_set = split::load_split(cfg, Split::Train)?;
        let test_set = split::load_split(cfg, Split::Test)?;
        let d = &cfg.data;
        if d.n_valid + d.batch_size > train_set.n {
            bail!(
                "data.n_valid = {} and data.batch_size = {} leave no full training batch of the {} training images",
                d.n_valid, d.batch_size, train_set.n
            );
        }
        Ok(Inputs { device, train_set, test_set })
    }
}

pub struct Summary {
    pub test_acc: f64,
    /// Test accuracy of the best-validation checkpoint, and that validation accuracy; None
    /// without a validation split (`data.n_valid = 0`), where the last checkpoint is the model.
    pub test_acc_best: Option<f64>,
    pub best_valid_acc: Option<f64>,
    pub train_seconds: f64,
}

/// Everything that changes while training, and how it is saved and restored.
struct Session<'a> {
    cfg: &'a Config,
    device: Device,
    vs: nn::VarStore,
    /// Names of `learner.params`, in the same order.
    names: Vec<String>,
    learner: Learner,
    chains: Option<Chains>,
    stream: BatchStream,
    px_stream: Option<BatchStream>,
    train_idx: Vec<usize>,
    state: TrainState,
    /// The iteration `latest.safetensors` holds, when this session wrote or restored it.
    latest_iter: Option<usize>,
    world: Rc<World>,
}

impl Session<'_> {
    /// Every worker calls it (the buffer shards and generator states are gathered); rank 0
    /// writes the file.
    fn save(&self, path: &Path) -> Result<()> {
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
        state.stream = self.stream.state().clone();
        state.px_stream = self.px_stream.as_ref().map(|s| s.state().clone());
        checkpoint::save(path, &tensors, &state)
    }

    /// Writes `latest.safetensors`, first keeping the one it replaces as a numbered checkpoint,
    /// then deletes numbered ones beyond `train.keep_checkpoints`.
    fn save_latest(&mut self, run: &RunDir) -> Result<()> {
        let keep = self.cfg.train.keep_checkpoints;
        let primary = self.world.is_primary();
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
    fn restore_newest(&mut self, run: &RunDir) -> Result<Option<PathBuf>> {
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
    fn restore_newest_together(&mut self, run: &RunDir) -> Result<Option<PathBuf>> {
        let world = self.world.clone();
        if !world.is_primary() {
            world.barrier();
        }
        let restored = self.restore_newest(run);
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
        let d = &self.cfg.data;
        self.stream = BatchStream::restore(self.train_idx.clone(), d.batch_size * size, state.stream.clone());
        if let (Some(px), Some(st)) = (&mut self.px_stream, &state.px_stream) {
            *px = BatchStream::restore(self.train_idx.clone(), self.cfg.loss.px_batch_size * size, st.clone());
        }
        self.state = state;
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

/// libtorch generators a checkpoint keeps: the CPU's always (weight init, CPU draws), and the
/// GPU's too when training on one.
fn generators(device: Device) -> Vec<(&'static str, Device)> {
    let mut g = vec![("rng.torch.cpu", Device::Cpu)];
    if device != Device::Cpu {
        g.push(("rng.torch.device", device));
    }
    g
}

fn named_params(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    checkpoint::model_tensors(vs, "").into_iter().filter(|(_, t)| t.requires_grad()).collect()
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

/// Trains the run in `run` (fresh, or resumed from its newest intact checkpoint; a run that
/// has none yet starts from the beginning) as worker `world.rank` of `world.size` (see
/// `distributed` for what a data-parallel job shares).
pub fn train(cfg: &Config, run: &RunDir, resume: bool, inputs: Inputs, world: Rc<World>) -> Result<Summary> {
    let Inputs { device, train_set, test_set } = inputs;
    engine::seed_torch(cfg.train.seed);
    let d = &cfg.data;
    let (train_idx, valid_idx) = split::train_valid(cfg, train_set.n);
    let joint = cfg.train.recipe != Recipe::Softmax;
    let (rank, workers, primary) = (world.rank, world.size, world.is_primary());
    if workers > 1 {
        if train_idx.len() < d.batch_size * workers {
            bail!("{workers} workers × data.batch_size = {} need at least that many training images; there are {}", d.batch_size * workers, train_idx.len());
        }
        if joint && cfg.sampler.buffer_size % workers != 0 {
            bail!("sampler.buffer_size = {} must divide evenly among the {workers} workers (each keeps a shard)", cfg.sampler.buffer_size);
        }
    }

    let vs = nn::VarStore::new(device);
    let (names, mut learner) = new_learner(cfg, &vs, &train_set);
    // Model tensors in name order: the same order on every worker.
    let model: Vec<(String, Tensor)> = checkpoint::model_tensors(&vs, "");
    let running_stats: Vec<Tensor> = model.iter().filter(|(_, t)| !t.requires_grad()).map(|(_, t)| t.shallow_clone()).collect();
    if !world.is_single() {
        world.broadcast_from_primary(&model.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>());
        learner.world = Some(world.clone());
        // Each worker's own sampler stream; rank 0 keeps the one a single process has.
        if rank > 0 {
            crate::engine::seed_torch(worker_seed(derive_seed(cfg.train.seed, 4), rank));
        }
    }

    let chains = if joint {
        let s = &cfg.sampler;
        let shape = [train_set.channels as i64, train_set.height as i64, train_set.width as i64];
        let init = match s.init {
            InitKind::Uniform => init::Init::Uniform { shape },
            InitKind::Informative => {
                let cache = run.init_cache();
                // Rank 0 fits and caches the class Gaussians; the others then read them.
                if !primary {
                    world.barrier();
                }
                let fitted = init::informative_cached(&cache, &train_set, &train_idx, init::Covariance::from_config(s), device);
                if primary {
                    world.barrier();
                }
                init::Init::Informative(fitted?)
            }
        };
        let shard = (s.buffer_size / workers) as i64;
        let buffer = ReplayBuffer::new(shard, &init, train_set.num_classes as i64, s.reinit_freq, device);
        Some(Chains { buffer, init })
    } else {
        None
    };
    // Every worker reads the same stream of global batches and trains on its slice of each.
    let px_stream = (joint && Augment::likelihood(cfg).is_some())
        .then(|| BatchStream::new(train_idx.clone(), cfg.loss.px_batch_size * workers, derive_seed(cfg.train.seed, 3)));
    let stream = BatchStream::new(train_idx.clone(), d.batch_size * workers, derive_seed(cfg.train.seed, 1));
    let state = TrainState {
        iter: 0,
        epoch: 0,
        stream: stream.state().clone(),
        px_stream: px_stream.as_ref().map(|s| s.state().clone()),
        augment_rng: ChaCha8Rng::seed_from_u64(derive_seed(cfg.train.seed, 2)),
        best_valid_acc: None,
        best_epoch: None,
        train_seconds: 0.0,
        rollbacks: 0,
        lr_scale: 1.0,
        world_size: workers,
    };
    let mut s = Session { cfg, device, vs, names, learner, chains, stream, px_stream, train_idx, state, latest_iter: None, world: world.clone() };
    if primary {
        run.remove_temporaries()?;
    }
    let resumed = if resume { s.restore_newest_together(run)? } else { None };
    if primary {
        run.truncate_metrics_after(s.state.iter)?;
        // A kill between keeping `latest` and pruning leaves one numbered checkpoint too many,
        // and the setting may have been lowered since.
        run.prune_numbered(cfg.train.keep_checkpoints - 1)?;
        run.check_space(s.checkpoint_bytes(), cfg.train.keep_checkpoints)?;
    }
    match resumed {
        Some(_) => println!("resuming {} at epoch {}, iteration {}", run.root.display(), s.state.epoch + 1, s.state.iter),
        None => {
            if resume {
                println!("{}: no checkpoint to resume from; starting from the beginning", run.root.display());
            }
            // A checkpoint before the first step: a run killed early resumes, and an early
            // divergence has somewhere to roll back to.
            s.save_latest(run)?;
        }
    }
    // RUN/tensorboard: rebuilt from the metrics and grids up to here, then appended to.
    let mut board = if primary { Board::open(run, s.state.iter)? } else { Board::none() };
    let aug = Augment::classification(cfg);
    let bpp = s.stream.batches_per_pass();
    let samples_dir = run.samples();
    if joint && primary {
        std::fs::create_dir_all(&samples_dir).with_context(|| format!("{}: cannot create", samples_dir.display()))?;
    }

    let started = Instant::now();
    let seconds_before = s.state.train_seconds;
    while s.state.epoch < cfg.train.epochs {
        let epoch = s.state.epoch;
        let done = if s.stream.state().pass == epoch { s.stream.state().batch_in_pass } else { 0 };
        let bar = if primary { progress_bar(bpp, done, epoch, cfg.train.epochs) } else { ProgressBar::hidden() };
        let mut window = Window::new();
        let mut diverged = None;
        for b in done..bpp {
            if !world.is_single() {
                // DistributedDataParallel's default: rank 0's running statistics for everyone.
                world.broadcast_from_primary(&running_stats);
            }
            // The whole global batch is augmented on every worker (one shared augmentation
            // stream), then each keeps its slice.
            let idx = s.stream.next_batch().to_vec();
            let (x, y) = augment::batch(&train_set, &idx, &aug, &mut s.state.augment_rng);
            let mine = |t: Tensor| {
                let per = t.size()[0] / workers as i64;
                t.narrow(0, rank as i64 * per, per).to_device(device)
            };
            let lab = Batch { x: mine(x), y: mine(y) };
            let x_data = match (&mut s.px_stream, Augment::likelihood(cfg)) {
                (Some(px), Some(px_aug)) => {
                    let idx = px.next_batch().to_vec();
                    mine(augment::batch(&train_set, &idx, &px_aug, &mut s.state.augment_rng).0)
                }
                _ => lab.x.shallow_clone(),
            };
            let lr = schedule::lr(&cfg.optim, s.state.iter, epoch) * s.state.lr_scale;
            let stats = match recipe::step(cfg, &mut s.learner, s.chains.as_mut(), &lab, &x_data, lr) {
                Ok(stats) => stats,
                Err(e) => {
                    diverged = Some(e);
                    break;
                }
            };
            s.state.iter += 1;
            // Images of the global batch: the job's throughput. The losses are rank 0's slice.
            window.add(&stats, idx.len());
            if primary && (s.state.iter % cfg.train.log_every == 0 || b + 1 == bpp) {
                let mut rec = window.means();
                rec.insert("lr".into(), json!(lr));
                rec.insert("iter".into(), json!(s.state.iter));
                rec.insert("epoch".into(), json!(epoch));
                rec.insert("kind".into(), json!("train"));
                bar.set_message(progress_message(&rec, lr));
                let rec = serde_json::Value::Object(rec);
                run.log(&rec)?;
                board.log(&rec)?;
                window = Window::new();
            }
            bar.inc(1);
            if let Some(chains) = s.chains.as_ref().filter(|_| primary) {
                let every = cfg.train.sample_every;
                if every > 0 && s.state.iter % every == 0 {
                    let png = run.sample_grid(s.state.iter);
                    save_buffer_grid(&chains.buffer, &png)?;
                    board.grid(&png, s.state.iter)?;
                }
            }
            let every = cfg.train.checkpoint_every;
            if every > 0 && s.state.iter % every == 0 && b + 1 < bpp {
                s.state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
                s.save_latest(run)?;
            }
        }
        bar.finish_and_clear();
        if let Some(d) = diverged {
            rollback(&mut s, run, d)?;
            if primary {
                board = Board::open(run, s.state.iter)?;
            }
            continue;
        }

        // Rank 0 validates; every worker takes its result, so their states stay the same.
        let valid_acc = (!valid_idx.is_empty()).then(|| {
            let acc = if primary {
                let logits = eval::logits(&s.learner.net, &train_set, &valid_idx, d.eval_batch_size, device);
                let labels: Vec<i64> = valid_idx.iter().map(|&i| train_set.labels[i]).collect();
                accuracy::accuracy(&accuracy::argmax(&logits), &labels)
            } else {
                f64::NAN
            };
            world.broadcast_f64(acc)
        });
        // Without a validation split there is no best checkpoint: the last one is the model.
        let improved = match (valid_acc, s.state.best_valid_acc) {
            (Some(acc), Some(best)) => acc > best,
            (Some(_), None) => true,
            (None, _) => false,
        };
        s.state.epoch = epoch + 1;
        s.state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
        if improved {
            s.state.best_valid_acc = valid_acc;
            s.state.best_epoch = Some(epoch + 1);
        }
        if let (true, Some(acc)) = (primary, valid_acc) {
            let rec = json!({"kind": "valid", "iter": s.state.iter, "epoch": epoch + 1, "valid_acc": acc});
            run.log(&rec)?;
            board.log(&rec)?;
        }
        // `best` first: killed in between, the resume redoes this epoch end and writes it again.
        if improved {
            s.save(&run.best())?;
        }
        s.save_latest(run)?;
        println!(
            "epoch {:>3}/{}  {}{}  lr {:.4}  {:.0} s",
            epoch + 1,
            cfg.train.epochs,
            valid_acc.map_or("no validation split".to_string(), |a| format!("valid acc {:5.2}%", 100.0 * a)),
            if improved { " (best)" } else { "" },
            schedule::lr(&cfg.optim, s.state.iter.saturating_sub(1), epoch) * s.state.lr_scale,
            s.state.train_seconds
        );
    }
    if !primary {
        return Ok(Summary { test_acc: f64::NAN, test_acc_best: None, best_valid_acc: None, train_seconds: s.state.train_seconds });
    }
    if let Some(chains) = &s.chains {
        let png = run.final_grid();
        save_buffer_grid(&chains.buffer, &png)?;
        board.grid(&png, s.state.iter)?;
    }

    let test_idx: Vec<usize> = (0..test_set.n).collect();
    let test_accuracy = |net: &Wrn| {
        let logits = eval::logits(net, &test_set, &test_idx, d.eval_batch_size, device);
        accuracy::accuracy(&accuracy::argmax(&logits), &test_set.labels)
    };
    let test_acc = test_accuracy(&s.learner.net);
    let best = if valid_idx.is_empty() {
        None
    } else {
        let (tensors, best_state): (_, TrainState) = checkpoint::load(&run.best())?;
        checkpoint::load_model(&s.vs, &tensors, "model.", &run.best())?;
        Some((test_accuracy(&s.learner.net), best_state.best_epoch))
    };
    let st = &s.state;
    run.write_json(
        &run.final_results(),
        &json!({
            "test_accuracy": test_acc,
            "test_accuracy_best_checkpoint": best.map(|b| b.0),
            "best_valid_accuracy": st.best_valid_acc,
            "best_epoch": best.and_then(|b| b.1),
            "n_valid": valid_idx.len(),
            "n_test": test_set.n,
            "epochs": st.epoch,
            "iterations": st.iter,
            "rollbacks": st.rollbacks,
            "train_seconds": st.train_seconds,
        }),
    )?;
    Ok(Summary { test_acc, test_acc_best: best.map(|b| b.0), best_valid_acc: st.best_valid_acc, train_seconds: st.train_seconds })
}

/// Divergence: back to the last checkpoint with a smaller learning rate and a fresh sampler
/// stream, or a clear stop after `train.max_rollbacks` tries.
fn rollback(s: &mut Session, run: &RunDir, d: Diverged) -> Result<()> {
    let cfg = s.cfg;
    let at = s.state.iter;
    if s.state.rollbacks >= cfg.train.max_rollbacks {
        bail!(
            "training diverged at iteration {at} ({}) after {} rollback(s) (train.max_rollbacks); \
             the last good checkpoint is {} — lower optim.lr, add loss.l2, or change the sampler settings and resume a new run from it",
            d.what,
            s.state.rollbacks,
            run.latest().display()
        );
    }
    let (rollbacks, lr_scale) = (s.state.rollbacks + 1, s.state.lr_scale * cfg.train.rollback_lr_factor);
    if s.restore_newest_together(run)?.is_none() {
        bail!("training diverged at iteration {at} ({}) and {} holds no checkpoint to roll back to", d.what, run.checkpoints().display());
    }
    s.state.rollbacks = rollbacks;
    s.state.lr_scale = lr_scale;
    // A new sampler stream, so the chains do not walk into the same blow-up.
    crate::engine::seed_torch(worker_seed(derive_seed(cfg.train.seed, 1000 + rollbacks as u64), s.world.rank));
    if !s.world.is_primary() {
        return Ok(());
    }
    run.truncate_metrics_after(s.state.iter)?;
    run.log(&json!({"kind": "rollback", "iter": s.state.iter, "diverged_at": at, "reason": d.what, "lr_scale": lr_scale, "rollback": rollbacks}))?;
    eprintln!(
        "diverged at iteration {at} ({}); rollback {rollbacks}/{}: back to iteration {} with the learning rate ×{lr_scale} and a new sampler seed",
        d.what, cfg.train.max_rollbacks, s.state.iter
    );
    Ok(())
}

/// 64 buffer entries spread evenly over it (the informative init fills it class by class).
fn save_buffer_grid(buffer: &ReplayBuffer, path: &Path) -> Result<()> {
    let n = buffer.len().min(64);
    let idx = Tensor::linspace(0.0, (buffer.len() - 1) as f64, n, (tch::Kind::Float, buffer.images.device()))
        .to_kind(tch::Kind::Int64);
    grid::save_grid(&buffer.images.index_select(0, &idx), path)
}

fn progress_message(rec: &serde_json::Map<String, serde_json::Value>, lr: f64) -> String {
    let get = |k: &str| rec.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut m = format!("loss {:.3}  acc {:.1}%", get("loss"), 100.0 * get("acc"));
    if rec.contains_key("lse_data") {
        m += &format!("  LSE data {:.2} samples {:.2}", get("lse_data"), get("lse_sample"));
    }
    m + &format!("  lr {lr:.4}  {:.0} img/s", get("img_per_s"))
}

fn progress_bar(len: usize, pos: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar.set_position(pos as u64);
    bar
}

/// Averages of the step statistics over a logging window, and its throughput.
struct Window {
    sums: BTreeMap<&'static str, f64>,
    steps: usize,
    images: usize,
    started: Instant,
}

impl Window {
    fn new() -> Self {
        Window { sums: BTreeMap::new(), steps: 0, images: 0, started: Instant::now() }
    }

    fn add(&mut self, stats: &StepStats, images: usize) {
        for (k, v) in stats {
            *self.sums.entry(k).or_default() += v;
        }
        self.steps += 1;
        self.images += images;
    }

    fn means(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m: serde_json::Map<_, _> =
            self.sums.iter().map(|(k, v)| (k.to_string(), json!(v / self.steps as f64))).collect();
        m.insert("img_per_s".into(), json!(self.images as f64 / self.started.elapsed().as_secs_f64()));
        m
    }
}
