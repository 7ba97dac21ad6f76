//! SGD exactly as `torch.optim.SGD` (dampening 0, no Nesterov), written out so its momentum
//! buffers can be checkpointed and SAM can wrap it:
//!   g ← ∇w + weight_decay·w;  b ← momentum·b + g;  w ← w − lr·b.
use tch::Tensor;

pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    /// One buffer per parameter, in the order of the `params` passed to `step`; created lazily
    /// as a copy of the first gradient (what PyTorch does).
    pub buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(momentum: f64, weight_decay: f64, n_params: usize) -> Self {
        Sgd { momentum, weight_decay, buffers: (0..n_params).map(|_| None).collect() }
    }

    /// One update with the gradients currently stored in `params`. Parameters without a
    /// gradient are skipped.
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        tch::no_grad(|| {
            for (p, buf) in params.iter().zip(self.buffers.iter_mut()) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 { &grad + p * self.weight_decay } else { grad };
                let b = match buf.take() {
                    None => g,
                    Some(mut b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&g);
                        b
                    }
                };
                let mut p = p.shallow_clone();
                let _ = p.g_sub_(&(&b * lr));
                *buf = Some(b);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::zero_grad;

    /// Two steps on f(w) = ½·w² (gradient w) from w = 1, lr 0.1, momentum 0.9, wd 0.01, by hand:
    /// step 1: g = 1 + 0.01 = 1.01, b = 1.01, w = 1 − 0.101 = 0.899.
    /// step 2: g = 0.899·1.01 = 0.90799, b = 0.9·1.01 + 0.90799 = 1.81699, w = 0.899 − 0.181699.
    #[test]
    fn two_steps_match_hand_computation() {
        let w = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let params = vec![w.shallow_clone()];
        let mut opt = Sgd::new(0.9, 0.01, 1);
        for _ in 0..2 {
            zero_grad(&params);
            (&w * &w * 0.5).sum(None).backward();
            opt.step(&params, 0.1);
        }
        assert!((w.double_value(&[0]) - (0.899 - 0.181699)).abs() < 1e-12);
        let b = opt.buffers[0].as_ref().unwrap().double_value(&[0]);
        assert!((b - 1.81699).abs() < 1e-12);
    }
}
