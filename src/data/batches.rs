//! The batches of one training iteration, made in one place for the trainer and the benchmark
//! (docs/method.md §5): the augmented labelled batch of the classification stream, which
//! defines the epoch, and the likelihood term's own batch from its own stream (un-augmented for
//! SADA-JEM, augmented like the labelled one for JEM/JEM++), or the labelled batch itself
//! (`loss.px_data = "shared"`).
//!
//! Data parallel: every worker reads the same stream of GLOBAL batches (`workers` × the batch
//! size) and augments the whole of it with the shared augmentation stream, then keeps its own
//! slice — so N workers × b images train exactly what one process does on N·b.
use super::augment::{self, Augment};
use super::loader::{BatchStream, StreamState};
use super::ImageSet;
use crate::config::Config;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

/// A labelled batch, on the training device.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
}

/// What one iteration trains on.
pub struct Iteration {
    pub lab: Batch,
    /// The likelihood term's data batch (the labelled images when the recipe has none of its own).
    pub x_data: Tensor,
    /// Images of the global labelled batch: what the job's throughput counts.
    pub images: usize,
}

pub struct Batches {
    stream: BatchStream,
    /// The likelihood term's own stream and its augmentation (joint recipes, unless `shared`).
    px: Option<(BatchStream, Augment)>,
    aug: Augment,
    rank: usize,
    workers: usize,
    device: Device,
}

impl Batches {
    /// Streams over `pool` (training image indices) seeded by `seeds` = (classification,
    /// likelihood), for worker `rank` of `workers`; `joint` recipes get the likelihood stream.
    pub fn new(cfg: &Config, pool: Vec<usize>, seeds: (u64, u64), joint: bool, (rank, workers): (usize, usize), device: Device) -> Self {
        let px = Augment::likelihood(cfg)
            .filter(|_| joint)
            .map(|px_aug| (BatchStream::new(pool.clone(), cfg.loss.px_batch_size * workers, seeds.1), px_aug));
        let stream = BatchStream::new(pool, cfg.data.batch_size * workers, seeds.0);
        Batches { stream, px, aug: Augment::classification(cfg), rank, workers, device }
    }

    /// The next iteration's batches; `rng` is the augmentation stream (saved in checkpoints).
    pub fn next(&mut self, set: &ImageSet, rng: &mut ChaCha8Rng) -> Iteration {
        let (rank, workers, device) = (self.rank as i64, self.workers as i64, self.device);
        let mine = |t: Tensor| {
            let per = t.size()[0] / workers;
            t.narrow(0, rank * per, per).to_device(device)
        };
        let idx = self.stream.next_batch().to_vec();
        let (x, y) = augment::batch(set, &idx, &self.aug, rng);
        let lab = Batch { x: mine(x), y: mine(y) };
        let x_data = match &mut self.px {
            Some((px, px_aug)) => {
                let px_idx = px.next_batch().to_vec();
                mine(augment::batch(set, &px_idx, px_aug, rng).0)
            }
            None => lab.x.shallow_clone(),
        };
        Iteration { lab, x_data, images: idx.len() }
    }

    /// Where both streams are, for a checkpoint.
    pub fn state(&self) -> (StreamState, Option<StreamState>) {
        (self.stream.state().clone(), self.px.as_ref().map(|(s, _)| s.state().clone()))
    }

    /// Back to what [`Batches::state`] returned.
    pub fn set_state(&mut self, stream: StreamState, px: Option<StreamState>) {
        self.stream.set_state(stream);
        if let (Some((s, _)), Some(st)) = (&mut self.px, px) {
            s.set_state(st);
        }
    }

    /// Labelled batches per epoch.
    pub fn per_epoch(&self) -> usize {
        self.stream.batches_per_pass()
    }

    /// Batches of `epoch` already taken (a run resumed in the middle of one).
    pub fn done_in(&self, epoch: usize) -> usize {
        let st = self.stream.state();
        if st.pass == epoch {
            st.batch_in_pass
        } else {
            0
        }
    }
}
