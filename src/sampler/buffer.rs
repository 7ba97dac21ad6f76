//! The persistent replay buffer of PCD (docs/method.md §3): SGLD chains continue from where earlier
//! iterations left them, except that each drawn entry restarts from the init with probability
//! `reinit_freq`.
//!
//! Entries are drawn with replacement, as the reference draws them (wgrathwohl/JEM
//! train_wrn_ebm.py:207, `t.randint`), so one batch may hold an entry twice; the reference's write
//! back (`replay_buffer[buffer_inds] = ...`, line 236) then leaves whichever copy the kernel's
//! threads happened to write last. Ours gives every position of a repeated entry the chain of its
//! last position before writing, so the buffer, and the run, repeat bitwise (docs/performance.md).
use super::init::Init;
use tch::{Device, Kind, Tensor};

pub struct ReplayBuffer {
    /// [size, C, H, W] on the training device.
    pub images: Tensor,
    pub reinit_freq: f64,
}

/// Entries drawn for one iteration: where they came from and where the chains start.
pub struct Draw {
    pub index: Tensor,
    pub x0: Tensor,
}

impl ReplayBuffer {
    /// A buffer of `size` init draws; for the informative init, size/C of each class (the rest,
    /// if C does not divide size, from random classes).
    pub fn new(size: i64, init: &Init, num_classes: i64, reinit_freq: f64, device: Device) -> Self {
        let images = match init {
            Init::Uniform { .. } => init.draw(size, device),
            Init::Informative(_) => {
                let per_class = size / num_classes;
                let mut parts: Vec<Tensor> = (0..num_classes).map(|c| init.draw_class(c, per_class, device)).collect();
                if size > per_class * num_classes {
                    parts.push(init.draw(size - per_class * num_classes, device));
                }
                Tensor::cat(&parts, 0)
            }
        };
        ReplayBuffer { images, reinit_freq }
    }

    pub fn len(&self) -> i64 {
        self.images.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` entries drawn with replacement, each replaced by a fresh init draw with probability
    /// `reinit_freq`.
    pub fn draw(&self, n: i64, init: &Init) -> Draw {
        let device = self.images.device();
        let index = Tensor::randint(self.len(), [n], (Kind::Int64, device));
        let kept = self.images.index_select(0, &index);
        let fresh = init.draw(n, device);
        let reinit = Tensor::rand([n, 1, 1, 1], (Kind::Float, device)).lt(self.reinit_freq);
        Draw { x0: fresh.where_self(&reinit, &kept), index }
    }

    /// Writes the chains' end points back where they were drawn from; an entry drawn more than
    /// once keeps the chain of its last draw.
    pub fn write(&mut self, index: &Tensor, x: &Tensor) {
        let x = x.detach().to_kind(self.images.kind()).index_select(0, &last_of_each(index));
        let _ = self.images.index_copy_(0, index, &x);
    }
}

/// For each position of `index`, the last position holding the same value: with those rows, the
/// copies of a repeated entry are equal and `index_copy_` writes the same bytes whatever order its
/// threads take (without, the result is undefined). On the device, without a copy to the host.
fn last_of_each(index: &Tensor) -> Tensor {
    let n = index.size()[0];
    let same = index.unsqueeze(1).eq_tensor(&index.unsqueeze(0));
    let positions = Tensor::arange(n, (Kind::Int64, index.device())).unsqueeze(0).expand([n, n], false);
    positions.where_self(&same, &positions.full_like(-1)).amax([1], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform() -> Init {
        Init::Uniform { shape: [1, 2, 2] }
    }

    #[test]
    fn reinitialised_share_is_binomial() {
        // Mark the buffer with a value no init draw can take, then count fresh entries.
        let init = uniform();
        let mut buf = ReplayBuffer::new(100, &init, 10, 0.05, Device::Cpu);
        let _ = buf.images.fill_(5.0);
        let n = 20_000;
        let d = buf.draw(n, &init);
        let fresh = d.x0.view([n, -1]).select(1, 0).lt(2.0).sum(Kind::Int64).int64_value(&[]) as f64;
        // Binomial(20000, 0.05): mean 1000, sd √(20000·0.05·0.95) ≈ 30.8; 4 sd either side.
        assert!((fresh - 1000.0).abs() < 4.0 * 30.8, "{fresh} fresh of {n}");
    }

    #[test]
    fn a_repeated_entry_points_at_its_last_position() {
        let index = Tensor::from_slice(&[1i64, 1, 2, 1, 0, 2]);
        assert_eq!(Vec::<i64>::try_from(&last_of_each(&index)).unwrap(), vec![3, 3, 5, 3, 4, 5]);
    }

    #[test]
    fn an_entry_drawn_twice_keeps_its_last_chain_on_every_write() {
        // Rows large enough for index_copy_ to split the copy between two threads, entry 5 drawn
        // at the end of the first half and at the start of the second, with different chains:
        // without the fix the first half's thread usually writes it last.
        let init = Init::Uniform { shape: [3, 32, 32] };
        let n = 64;
        let mut index: Vec<i64> = (10..10 + n).collect();
        index[31] = 5;
        index[32] = 5;
        let index = Tensor::from_slice(&index);
        let x = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([n, 1, 1, 1]).expand([n, 3, 32, 32], false);
        for _ in 0..50 {
            let mut buf = ReplayBuffer::new(100, &init, 10, 0.0, Device::Cpu);
            buf.write(&index, &x);
            assert_eq!(buf.images.get(5).eq(32.0).all().int64_value(&[]), 1, "entry 5 holds its first chain, not its last");
            assert_eq!(buf.images.get(10 + 1).eq(1.0).all().int64_value(&[]), 1);
        }
    }

    #[test]
    fn written_chains_are_read_back() {
        let init = uniform();
        let mut buf = ReplayBuffer::new(8, &init, 10, 0.0, Device::Cpu);
        let d = buf.draw(3, &init);
        let x = d.x0.ones_like() * 0.25;
        buf.write(&d.index, &x);
        for i in Vec::<i64>::try_from(&d.index).unwrap() {
            assert!(buf.images.get(i).eq(0.25).all().int64_value(&[]) == 1);
        }
        assert_eq!(buf.len(), 8);
        assert!(buf.images.min().double_value(&[]) >= -1.0);
    }
}
