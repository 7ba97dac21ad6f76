//! The training loop: epochs of the classification stream, logging, validation, checkpoints,
//! exact resume. It owns everything the user sees while training (progress bar, epoch lines).
use crate::config::Config;
use crate::data::{self, augment, augment::Augment, loader, loader::BatchStream, FolderOptions, ImageSet, Split};
use crate::eval::{self, accuracy};
use crate::model::Wrn;
use crate::optim::{schedule, Base};
use crate::run::RunDir;
use crate::train::checkpoint;
use crate::train::recipe::{self, Batch, Learner, StepStats};
use crate::engine;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{nn, Tensor};

/// The validation split is drawn with a fixed seed, so runs with different training seeds are
/// selected on the same held-out images.
const SPLIT_SEED: u64 = 0x5ADA_7E11;

/// Everything besides tensors that a resume needs; saved in each checkpoint's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Iterations done.
    pub iter: usize,
    /// Epochs completed.
    pub epoch: usize,
    pub stream: loader::StreamState,
    pub augment_rng: ChaCha8Rng,
    pub best_valid_acc: f64,
    pub best_epoch: Option<usize>,
    /// Training wall time so far, over all resumes.
    pub train_seconds: f64,
}

/// Independent seeds per purpose from the one `train.seed`.
fn derive_seed(seed: u64, purpose: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(purpose)
}

/// Reads one split of the configured dataset.
pub fn load_split(cfg: &Config, split: Split) -> Result<ImageSet> {
    let d = &cfg.data;
    let format = match d.format.as_str() {
        "auto" => data::detect_format(&d.dir)?,
        f => f.parse()?,
    };
    let opts = FolderOptions { channels: d.channels, size: d.image_size };
    let mut set = data::load(&d.dir, format, split, opts)
        .with_context(|| format!("reading the {split} split of data.dir = {}", d.dir.display()))?;
    let max = match split {
        Split::Train => d.max_train,
        Split::Test => d.max_test,
    };
    if max > 0 && max < set.n {
        set.images.truncate(max * set.image_len());
        set.labels.truncate(max);
        set.n = max;
    }
    Ok(set)
}

pub struct Summary {
    pub test_acc: f64,
    pub test_acc_best: f64,
    pub best_valid_acc: f64,
    pub train_seconds: f64,
}

fn named_params(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    checkpoint::model_tensors(vs, "").into_iter().filter(|(_, t)| t.requires_grad()).collect()
}

/// Trains the run in `run` (fresh, or resumed from its latest checkpoint).
pub fn train(cfg: &Config, run: &RunDir, resume: bool) -> Result<Summary> {
    let device = engine::parse_device(&cfg.train.device)?;
    // Until recipe.rs takes the SAM steps, refuse rather than silently train without them.
    if cfg.optim.sam_rho > 0.0 {
        bail!("optim.sam_rho = {}: SAM is not wired into the training step yet; set optim.sam_rho = 0", cfg.optim.sam_rho);
    }
    engine::seed_torch(cfg.train.seed);
    let train_set = load_split(cfg, Split::Train)?;
    let test_set = load_split(cfg, Split::Test)?;
    let d = &cfg.data;
    if d.n_valid + d.batch_size > train_set.n {
        bail!(
            "data.n_valid = {} and data.batch_size = {} leave no full training batch of the {} training images",
            d.n_valid, d.batch_size, train_set.n
        );
    }
    let (train_idx, valid_idx) = loader::split_valid(train_set.n, d.n_valid, SPLIT_SEED);

    let vs = nn::VarStore::new(device);
    let net = Wrn::new(&vs.root(), &cfg.model, train_set.channels as i64, train_set.num_classes as i64);
    let (names, params): (Vec<String>, Vec<Tensor>) = named_params(&vs).into_iter().unzip();
    let opt = Base::from_config(&cfg.optim, params.len());
    let mut learner = Learner { net, params, opt };

    let mut state = TrainState {
        iter: 0,
        epoch: 0,
        stream: BatchStream::new(train_idx.clone(), d.batch_size, derive_seed(cfg.train.seed, 1)).state().clone(),
        augment_rng: ChaCha8Rng::seed_from_u64(derive_seed(cfg.train.seed, 2)),
        best_valid_acc: f64::NEG_INFINITY,
        best_epoch: None,
        train_seconds: 0.0,
    };
    if resume {
        let (tensors, saved): (_, TrainState) = checkpoint::load(&run.latest())?;
        checkpoint::load_model(&vs, &tensors, "model.", &run.latest())?;
        learner.opt.load_state(&tensors, &names, device).with_context(|| format!("{}", run.latest().display()))?;
        state = saved;
        run.truncate_metrics_after(state.iter)?;
        println!("resuming {} at epoch {}, iteration {}", run.root.display(), state.epoch + 1, state.iter);
    }
    let mut stream = BatchStream::restore(train_idx, d.batch_size, state.stream.clone());
    let aug = Augment { pad_crop: d.pad_crop, flip: d.flip, noise: d.noise };
    let bpp = stream.batches_per_pass();

    let save = |path: &std::path::Path, learner: &Learner, state: &TrainState| -> Result<()> {
        let mut tensors = checkpoint::model_tensors(&vs, "model.");
        tensors.extend(learner.opt.state_tensors(&names));
        checkpoint::save(path, &tensors, state)
    };

    let started = Instant::now();
    let seconds_before = state.train_seconds;
    for epoch in state.epoch..cfg.train.epochs {
        let done = if stream.state().pass == epoch { stream.state().batch_in_pass } else { 0 };
        let bar = progress_bar(bpp, done, epoch, cfg.train.epochs);
        let mut window = Window::new();
        for b in done..bpp {
            let idx = stream.next_batch().to_vec();
            let (x, y) = augment::batch(&train_set, &idx, &aug, &mut state.augment_rng);
            let lr = schedule::lr(&cfg.optim, state.iter, epoch);
            let batch = Batch { x: x.to_device(device), y: y.to_device(device) };
            let stats = recipe::step(cfg.train.recipe, &mut learner, &batch, lr);
            if !stats["loss"].is_finite() {
                bail!(
                    "training diverged at iteration {} (loss = {}); lower optim.lr (now {}) or resume from the last checkpoint with other settings",
                    state.iter, stats["loss"], cfg.optim.lr
                );
            }
            state.iter += 1;
            window.add(&stats, idx.len());
            if state.iter % cfg.train.log_every == 0 || b + 1 == bpp {
                let mut rec = window.means();
                rec.insert("lr".into(), json!(lr));
                rec.insert("iter".into(), json!(state.iter));
                rec.insert("epoch".into(), json!(epoch));
                rec.insert("kind".into(), json!("train"));
                bar.set_message(format!(
                    "loss {:.3}  acc {:.1}%  lr {:.4}  {:.0} img/s",
                    rec["loss"].as_f64().unwrap_or(f64::NAN),
                    100.0 * rec["acc"].as_f64().unwrap_or(f64::NAN),
                    lr,
                    rec["img_per_s"].as_f64().unwrap_or(0.0)
                ));
                run.log(&serde_json::Value::Object(rec))?;
                window = Window::new();
            }
            bar.inc(1);
            let every = cfg.train.checkpoint_every;
            if every > 0 && state.iter % every == 0 && b + 1 < bpp {
                state.stream = stream.state().clone();
                state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
                save(&run.latest(), &learner, &state)?;
            }
        }
        bar.finish_and_clear();

        let valid_acc = if valid_idx.is_empty() {
            f64::NAN
        } else {
            let logits = eval::logits(&learner.net, &train_set, &valid_idx, d.eval_batch_size, device);
            let labels: Vec<i64> = valid_idx.iter().map(|&i| train_set.labels[i]).collect();
            accuracy::accuracy(&accuracy::argmax(&logits), &labels)
        };
        // Without a validation split the latest model is the best one.
        let improved = valid_idx.is_empty() || valid_acc > state.best_valid_acc;
        state.epoch = epoch + 1;
        state.stream = stream.state().clone();
        state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
        if improved {
            state.best_valid_acc = valid_acc;
            state.best_epoch = Some(epoch + 1);
        }
        run.log(&json!({"kind": "valid", "iter": state.iter, "epoch": epoch + 1, "valid_acc": valid_acc}))?;
        save(&run.latest(), &learner, &state)?;
        if improved {
            save(&run.best(), &learner, &state)?;
        }
        println!(
            "epoch {:>3}/{}  valid acc {:5.2}%{}  lr {:.4}  {:.0} s",
            epoch + 1,
            cfg.train.epochs,
            100.0 * valid_acc,
            if improved { " (best)" } else { "" },
            schedule::lr(&cfg.optim, state.iter.saturating_sub(1), epoch),
            state.train_seconds
        );
    }

    let test_idx: Vec<usize> = (0..test_set.n).collect();
    let test_accuracy = |net: &Wrn| {
        let logits = eval::logits(net, &test_set, &test_idx, d.eval_batch_size, device);
        accuracy::accuracy(&accuracy::argmax(&logits), &test_set.labels)
    };
    let test_acc = test_accuracy(&learner.net);
    let (tensors, best_state): (_, TrainState) = checkpoint::load(&run.best())?;
    checkpoint::load_model(&vs, &tensors, "model.", &run.best())?;
    let test_acc_best = test_accuracy(&learner.net);
    let summary = Summary {
        test_acc,
        test_acc_best,
        best_valid_acc: state.best_valid_acc,
        train_seconds: state.train_seconds,
    };
    run.write_json(
        &run.final_results(),
        &json!({
            "test_accuracy": test_acc,
            "test_accuracy_best_checkpoint": test_acc_best,
            "best_valid_accuracy": state.best_valid_acc,
            "best_epoch": best_state.best_epoch,
            "n_valid": valid_idx.len(),
            "n_test": test_set.n,
            "epochs": state.epoch,
            "iterations": state.iter,
            "train_seconds": state.train_seconds,
        }),
    )?;
    Ok(summary)
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
