//! Seeded batch streams over a pool of image indices, and the seeded validation split.
//!
//! One type serves both streams of docs/method.md §5: the trainer reads `batches_per_pass()` batches
//! from the classification stream to make an epoch, and simply keeps reading the likelihood
//! stream, which reshuffles itself at each pass ("cycled forever"). Incomplete batches at the
//! end of a pass are dropped (drop_last).
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// What a checkpoint needs to put a stream back exactly where it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    /// The RNG as it was before shuffling the current pass.
    pub rng_at_shuffle: ChaCha8Rng,
    /// Batches already taken from the current pass.
    pub batch_in_pass: usize,
    pub pass: usize,
}

pub struct BatchStream {
    pool: Vec<usize>,
    batch: usize,
    order: Vec<usize>,
    state: StreamState,
    rng: ChaCha8Rng,
}

impl BatchStream {
    /// `pool` must hold at least one batch (checked by the caller, which knows the setting's name).
    pub fn new(pool: Vec<usize>, batch: usize, seed: u64) -> Self {
        let state = StreamState { rng_at_shuffle: ChaCha8Rng::seed_from_u64(seed), batch_in_pass: 0, pass: 0 };
        Self::restore(pool, batch, state)
    }

    pub fn restore(pool: Vec<usize>, batch: usize, state: StreamState) -> Self {
        assert!(batch >= 1 && pool.len() >= batch, "a stream needs at least one full batch");
        let mut rng = state.rng_at_shuffle.clone();
        let mut order = pool.clone();
        order.shuffle(&mut rng);
        BatchStream { pool, batch, order, state, rng }
    }

    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// Puts the stream back where `state` says (a resume, a rollback).
    pub fn set_state(&mut self, state: StreamState) {
        *self = Self::restore(std::mem::take(&mut self.pool), self.batch, state);
    }

    pub fn batches_per_pass(&self) -> usize {
        self.pool.len() / self.batch
    }

    /// The next batch of indices; starts a freshly shuffled pass when this one is used up.
    pub fn next_batch(&mut self) -> &[usize] {
        if self.state.batch_in_pass == self.batches_per_pass() {
            self.state = StreamState { rng_at_shuffle: self.rng.clone(), batch_in_pass: 0, pass: self.state.pass + 1 };
            self.order.copy_from_slice(&self.pool);
            self.order.shuffle(&mut self.rng);
        }
        let start = self.state.batch_in_pass * self.batch;
        self.state.batch_in_pass += 1;
        &self.order[start..start + self.batch]
    }
}

/// Splits `0..n` into (train, valid) with `n_valid` validation indices drawn by `seed`; both
/// returned sorted, so the split does not depend on anything but (n, n_valid, seed).
pub fn split_valid(n: usize, n_valid: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut all: Vec<usize> = (0..n).collect();
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let (mut valid, mut train) = (all[..n_valid.min(n)].to_vec(), all[n_valid.min(n)..].to_vec());
    valid.sort_unstable();
    train.sort_unstable();
    (train, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_visits_each_index_once_and_drops_the_incomplete_batch() {
        let mut s = BatchStream::new((0..10).collect(), 3, 1);
        assert_eq!(s.batches_per_pass(), 3);
        let mut seen: Vec<usize> = (0..3).flat_map(|_| s.next_batch().to_vec()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9);
        let first_pass_order: Vec<usize> = BatchStream::new((0..10).collect(), 3, 1).order.clone();
        s.next_batch();
        assert_eq!(s.state().pass, 1);
        assert_ne!(s.order, first_pass_order, "each pass reshuffles");
    }

    #[test]
    fn restoring_a_state_continues_the_same_stream() {
        let mut a = BatchStream::new((0..50).collect(), 7, 3);
        for _ in 0..9 {
            a.next_batch();
        }
        let mut b = BatchStream::restore((0..50).collect(), 7, a.state().clone());
        for _ in 0..20 {
            assert_eq!(a.next_batch(), b.next_batch());
        }
        let json = serde_json::to_string(a.state()).unwrap();
        let c: StreamState = serde_json::from_str(&json).unwrap();
        assert_eq!(&c, a.state());
    }

    #[test]
    fn validation_split_is_disjoint_seeded_and_complete() {
        let (t, v) = split_valid(100, 20, 5);
        assert_eq!((t.len(), v.len()), (80, 20));
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split_valid(100, 20, 5), (t, v.clone()));
        assert_ne!(split_valid(100, 20, 6).1, v);
    }
}
