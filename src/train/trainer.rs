//! The training loop: epochs of the classification stream, each iteration one recipe step,
//! with logging, sample grids and checkpoints; at each epoch's end validation, the best
//! checkpoint and the epoch line; at the end the test accuracies in `final.json`. What a
//! session holds and how it starts, resumes and rolls back is in `session.rs`; what the user
//! sees is in `progress.rs`.
use crate::eval::{self, accuracy};
use crate::optim::schedule;
use crate::records::{FinalResults, MetricsLine, ValidLine};
use crate::report::grid;
use crate::run::RunDir;
use crate::sampler::buffer::ReplayBuffer;
use crate::train::distributed::World;
use crate::train::progress::Progress;
use crate::train::recipe::{self, Diverged};
use crate::train::session::{Inputs, Session};
use anyhow::{Context, Result};
use std::rc::Rc;
use std::time::Instant;
use tch::Tensor;

pub struct Summary {
    pub test_acc: f64,
    /// Test accuracy of the best-validation checkpoint, and that validation accuracy; None
    /// without a validation split (`data.n_valid = 0`), where the last checkpoint is the model.
    pub test_acc_best: Option<f64>,
    pub best_valid_acc: Option<f64>,
    pub train_seconds: f64,
}

/// Trains the run in `run` (fresh, or resumed from its newest intact checkpoint) as worker
/// `world.rank` of `world.size` (see `distributed` for what a data-parallel job shares).
pub fn train(cfg: &crate::config::Config, run: &RunDir, resume: bool, inputs: Inputs, world: Rc<World>) -> Result<Summary> {
    let mut s = Session::start(cfg, run, resume, inputs, world)?;
    let mut progress = Progress::new(run, s.world.is_primary(), s.state.iter)?;
    if s.chains.is_some() && s.world.is_primary() {
        std::fs::create_dir_all(run.samples()).with_context(|| format!("{}: cannot create", run.samples().display()))?;
    }
    let clock = Clock { started: Instant::now(), before: s.state.train_seconds };
    while s.state.epoch < cfg.train.epochs {
        match epoch(&mut s, &mut progress, &clock)? {
            Some(diverged) => {
                s.rollback(diverged)?;
                progress.rewind(s.state.iter)?;
            }
            None => end_epoch(&mut s, &mut progress, &clock)?,
        }
    }
    finish(&mut s, &mut progress)
}

/// Training wall time over all resumes.
struct Clock {
    started: Instant,
    before: f64,
}

impl Clock {
    fn seconds(&self) -> f64 {
        self.before + self.started.elapsed().as_secs_f64()
    }
}

/// The iterations of the current epoch (from where a resumed one stopped); a divergence ends
/// it early, unapplied.
fn epoch(s: &mut Session, progress: &mut Progress, clock: &Clock) -> Result<Option<Diverged>> {
    let cfg = s.cfg;
    let epoch = s.state.epoch;
    let per_epoch = s.batches.per_epoch();
    let done = s.batches.done_in(epoch);
    progress.start_epoch(epoch, cfg.train.epochs, done, per_epoch);
    for b in done..per_epoch {
        if !s.world.is_single() {
            // DistributedDataParallel's default: rank 0's running statistics for everyone.
            s.world.broadcast_from_primary(&s.running_stats);
        }
        let it = s.batches.next(&s.train_set, &mut s.state.augment_rng);
        let lr = schedule::lr(&cfg.optim, s.state.iter, epoch) * s.state.lr_scale;
        let stats = match recipe::step(cfg, &mut s.learner, s.chains.as_mut(), &it.lab, &it.x_data, lr) {
            Ok(stats) => stats,
            Err(diverged) => {
                progress.end_epoch();
                return Ok(Some(diverged));
            }
        };
        s.state.iter += 1;
        let iter = s.state.iter;
        let last = b + 1 == per_epoch;
        let log = (iter.is_multiple_of(cfg.train.log_every) || last).then_some((iter, epoch, lr));
        // Images of the global batch: the job's throughput. The losses are rank 0's slice.
        progress.step(&stats, it.images, log)?;
        let every = cfg.train.sample_every;
        if let Some(chains) = s.chains.as_ref().filter(|_| s.world.is_primary() && every > 0 && iter.is_multiple_of(every)) {
            let png = s.run.sample_grid(iter);
            save_buffer_grid(&chains.buffer, &png)?;
            progress.grid(&png, iter)?;
        }
        let every = cfg.train.checkpoint_every;
        if every > 0 && iter.is_multiple_of(every) && !last {
            s.state.train_seconds = clock.seconds();
            s.save_latest()?;
        }
    }
    progress.end_epoch();
    Ok(None)
}

/// Validation (rank 0's, taken by every worker so their states stay the same), the best
/// checkpoint, `latest`, and the epoch line.
fn end_epoch(s: &mut Session, progress: &mut Progress, clock: &Clock) -> Result<()> {
    let (cfg, epoch) = (s.cfg, s.state.epoch);
    let valid_acc = (!s.valid_idx.is_empty()).then(|| {
        let acc = if s.world.is_primary() { validation_accuracy(s) } else { f64::NAN };
        s.world.broadcast_f64(acc)
    });
    let improved = improves(valid_acc, s.state.best_valid_acc);
    s.state.epoch = epoch + 1;
    s.state.train_seconds = clock.seconds();
    if improved {
        s.state.best_valid_acc = valid_acc;
        s.state.best_epoch = Some(epoch + 1);
    }
    if let Some(valid_acc) = valid_acc {
        progress.log(&MetricsLine::Valid(ValidLine { iter: s.state.iter, epoch: epoch + 1, valid_acc }))?;
    }
    // `best` first: killed in between, the resume redoes this epoch end and writes it again.
    if improved {
        s.save(&s.run.best())?;
    }
    s.save_latest()?;
    println!(
        "epoch {:>3}/{}  {}{}  lr {:.4}  {:.0} s",
        epoch + 1,
        cfg.train.epochs,
        valid_acc.map_or("no validation split".to_string(), |a| format!("valid acc {:5.2}%", 100.0 * a)),
        if improved { " (best)" } else { "" },
        schedule::lr(&cfg.optim, s.state.iter.saturating_sub(1), epoch) * s.state.lr_scale,
        s.state.train_seconds
    );
    Ok(())
}

/// Whether an epoch's validation accuracy makes a new best checkpoint. Without a validation
/// split there is none: the last checkpoint is the model.
fn improves(valid_acc: Option<f64>, best: Option<f64>) -> bool {
    match (valid_acc, best) {
        (Some(acc), Some(best)) => acc > best,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn validation_accuracy(s: &Session) -> f64 {
    let logits = eval::logits(&s.learner.net, &s.train_set, &s.valid_idx, s.cfg.data.eval_batch_size, s.device);
    let labels: Vec<i64> = s.valid_idx.iter().map(|&i| s.train_set.labels[i]).collect();
    accuracy::accuracy(&accuracy::argmax(&logits), &labels)
}

/// The final sample grid, the test accuracy of the last and of the best checkpoint, final.json.
fn finish(s: &mut Session, progress: &mut Progress) -> Result<Summary> {
    if !s.world.is_primary() {
        return Ok(Summary { test_acc: f64::NAN, test_acc_best: None, best_valid_acc: None, train_seconds: s.state.train_seconds });
    }
    if let Some(chains) = &s.chains {
        let png = s.run.final_grid();
        save_buffer_grid(&chains.buffer, &png)?;
        progress.grid(&png, s.state.iter)?;
    }
    let test_acc = test_accuracy(s);
    let best = if s.valid_idx.is_empty() {
        None
    } else {
        let best_epoch = s.load_best()?;
        Some((test_accuracy(s), best_epoch))
    };
    let st = &s.state;
    let results = FinalResults {
        test_accuracy: test_acc,
        test_accuracy_best_checkpoint: best.map(|b| b.0),
        best_valid_accuracy: st.best_valid_acc,
        best_epoch: best.and_then(|b| b.1),
        n_valid: s.valid_idx.len(),
        n_test: s.test_set.n,
        epochs: st.epoch,
        iterations: st.iter,
        rollbacks: st.rollbacks,
        train_seconds: st.train_seconds,
    };
    s.run.write_json(&s.run.final_results(), &serde_json::to_value(&results)?)?;
    Ok(Summary { test_acc, test_acc_best: results.test_accuracy_best_checkpoint, best_valid_acc: st.best_valid_acc, train_seconds: st.train_seconds })
}

fn test_accuracy(s: &Session) -> f64 {
    let idx: Vec<usize> = (0..s.test_set.n).collect();
    let logits = eval::logits(&s.learner.net, &s.test_set, &idx, s.cfg.data.eval_batch_size, s.device);
    accuracy::accuracy(&accuracy::argmax(&logits), &s.test_set.labels)
}

/// 64 buffer entries spread evenly over it (the informative init fills it class by class).
fn save_buffer_grid(buffer: &ReplayBuffer, path: &std::path::Path) -> Result<()> {
    let n = buffer.len().min(64);
    let idx = Tensor::linspace(0.0, (buffer.len() - 1) as f64, n, (tch::Kind::Float, buffer.images.device())).to_kind(tch::Kind::Int64);
    grid::save_grid(&buffer.images.index_select(0, &idx), path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ModelConfig};
    use crate::records::parse_metrics;
    use crate::train::session::Inputs;
    use tch::Device;

    /// A softmax session on 60 random 1×8×8 images (10 for validation, batches of 10), in a
    /// fresh run directory.
    fn session<'a>(cfg: &'a Config, run: &'a RunDir) -> Session<'a> {
        let set = |n: usize, seed: u64| {
            crate::bench::synthetic_set(&Config { train: crate::config::TrainConfig { seed, ..cfg.train.clone() }, ..cfg.clone() }, n)
        };
        let inputs = Inputs { device: Device::Cpu, train_set: set(60, 1), test_set: set(20, 2) };
        Session::start(cfg, run, false, inputs, Rc::new(World::single())).unwrap()
    }

    fn tiny() -> Config {
        let mut cfg = Config { model: ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() }, ..Config::default() };
        (cfg.data.channels, cfg.data.image_size, cfg.data.n_valid, cfg.data.batch_size) = (1, 8, 10, 10);
        (cfg.data.eval_batch_size, cfg.optim.warmup_iters) = (10, 1);
        cfg
    }

    #[test]
    fn an_epoch_end_validates_keeps_the_best_and_moves_the_epoch_on() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("run")).unwrap();
        let cfg = tiny();
        let mut s = session(&cfg, &run);
        let mut progress = Progress::new(&run, true, 0).unwrap();
        let clock = Clock { started: Instant::now(), before: 0.0 };
        assert!(epoch(&mut s, &mut progress, &clock).unwrap().is_none());
        assert_eq!(s.state.iter, 5, "50 training images in batches of 10");
        end_epoch(&mut s, &mut progress, &clock).unwrap();
        assert_eq!((s.state.epoch, s.state.best_epoch), (1, Some(1)));
        let first = s.state.best_valid_acc.expect("validated");
        assert!(run.best().exists() && run.latest().exists());
        let lines = parse_metrics(&std::fs::read_to_string(run.metrics()).unwrap());
        assert!(matches!(lines.last(), Some(MetricsLine::Valid(v)) if v.valid_acc == first && v.epoch == 1 && v.iter == 5));
        // A later epoch that does not beat it leaves the best checkpoint alone.
        s.state.best_valid_acc = Some(2.0);
        let best_before = std::fs::read(run.best()).unwrap();
        epoch(&mut s, &mut progress, &clock).unwrap();
        end_epoch(&mut s, &mut progress, &clock).unwrap();
        assert_eq!((s.state.epoch, s.state.best_epoch, s.state.best_valid_acc), (2, Some(1), Some(2.0)));
        assert_eq!(std::fs::read(run.best()).unwrap(), best_before);
    }

    #[test]
    fn a_rollback_returns_to_the_last_checkpoint_with_a_smaller_rate_until_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("run")).unwrap();
        let mut cfg = tiny();
        (cfg.train.max_rollbacks, cfg.train.rollback_lr_factor) = (1, 0.5);
        let mut s = session(&cfg, &run);
        let mut progress = Progress::new(&run, true, 0).unwrap();
        let clock = Clock { started: Instant::now(), before: 0.0 };
        epoch(&mut s, &mut progress, &clock).unwrap();
        assert_eq!(s.state.iter, 5);
        s.rollback(Diverged { what: "test".into() }).unwrap();
        assert_eq!((s.state.iter, s.state.rollbacks, s.state.lr_scale), (0, 1, 0.5), "back to the checkpoint before the first step");
        let lines = parse_metrics(&std::fs::read_to_string(run.metrics()).unwrap());
        assert!(matches!(lines.as_slice(), [MetricsLine::Rollback(r)] if r.diverged_at == 5 && r.reason == "test"), "{lines:?}");
        let e = s.rollback(Diverged { what: "again".into() }).unwrap_err().to_string();
        assert!(e.contains("after 1 rollback(s)") && e.contains("train.max_rollbacks"), "{e}");
    }

    #[test]
    fn the_best_checkpoint_is_the_first_validation_and_then_each_strictly_better_one() {
        assert!(improves(Some(0.5), None), "the first validated epoch is the best so far");
        assert!(improves(Some(0.6), Some(0.5)));
        assert!(!improves(Some(0.5), Some(0.5)), "a tie keeps the earlier checkpoint");
        assert!(!improves(Some(0.4), Some(0.5)));
        assert!(!improves(None, None) && !improves(None, Some(0.5)), "no validation split, no best checkpoint");
    }
}
