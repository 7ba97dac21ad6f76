//! Adam exactly as `torch.optim.Adam` (no amsgrad, coupled L2 weight decay), written out so its
//! moments can be checkpointed and SAM can wrap it. With t counted per parameter:
//!   g ← ∇w + weight_decay·w;  m ← β₁·m + (1−β₁)·g;  v ← β₂·v + (1−β₂)·g²;
//!   w ← w − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + eps).
use tch::Tensor;

/// One parameter's moments and how many updates it has had. PyTorch counts steps per
/// parameter, so a parameter that sometimes has no gradient gets its own bias correction.
pub struct AdamState {
    pub step: u64,
    pub m: Tensor,
    pub v: Tensor,
}

pub struct Adam {
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// One entry per parameter, in the order of the `params` passed to `step`; created (zero
    /// moments) at a parameter's first gradient, as PyTorch does.
    pub state: Vec<Option<AdamState>>,
}

impl Adam {
    pub fn new(betas: [f64; 2], eps: f64, weight_decay: f64, n_params: usize) -> Self {
        Adam { betas, eps, weight_decay, state: (0..n_params).map(|_| None).collect() }
    }

    /// One update with the gradients currently stored in `params`. Parameters without a
    /// gradient are skipped (their step count does not advance).
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        let [b1, b2] = self.betas;
        tch::no_grad(|| {
            for (p, st) in params.iter().zip(self.state.iter_mut()) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 { &grad + p * self.weight_decay } else { grad };
                let s = st.get_or_insert_with(|| AdamState { step: 0, m: p.zeros_like(), v: p.zeros_like() });
                s.step += 1;
                // The same kernels and operand order as PyTorch's single-tensor Adam, so the
                // rounding matches too: lerp for m, addcmul for v, addcdiv for w.
                let _ = s.m.lerp_(&g, 1.0 - b1);
                let _ = s.v.g_mul_scalar_(b2).addcmul_(&(&g * (1.0 - b2)), &g);
                let t = s.step as f64;
                let bias1 = 1.0 - b1.powf(t);
                let bias2_sqrt = (1.0 - b2.powf(t)).powf(0.5);
                let mut denom = s.v.sqrt() / bias2_sqrt;
                let _ = denom.g_add_scalar_(self.eps);
                let mut p = p.shallow_clone();
                let _ = p.addcdiv_(&(&s.m * -(lr / bias1)), &denom);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::zero_grad;

    /// Two steps on f(w) = ½·w² (gradient w) from w = 1 with lr 0.1, betas (0.5, 0.75),
    /// eps 0.25, weight decay 0.25 (large values, so a misplaced eps or bias correction shows):
    /// step 1: g = 1 + 0.25 = 1.25; m = 0.5·1.25 = 0.625; v = 0.25·1.5625 = 0.390625;
    ///   1−β₁ = 0.5, 1−β₂ = 0.25: denom = √0.390625/√0.25 + 0.25 = 0.625/0.5 + 0.25 = 1.5;
    ///   w = 1 − (0.1/0.5)·0.625/1.5 = 11/12.
    /// step 2: g = 11/12·1.25 = 55/48; m = 0.5·0.625 + 0.5·55/48 = 85/96;
    ///   v = 0.75·0.390625 + 0.25·(55/48)² = 5725/9216;
    ///   1−β₁² = 0.75, 1−β₂² = 0.4375: denom = √(5725/9216 / 0.4375) + 0.25 = √(5725/4032) + 0.25
    ///   = 1.19159173923616683… + 0.25; w = 11/12 − (0.1/0.75)·(85/96)/1.44159173923616683…
    ///   = 0.83477416385716266….
    #[test]
    fn two_steps_match_hand_computation() {
        let w = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let params = vec![w.shallow_clone()];
        let mut opt = Adam::new([0.5, 0.75], 0.25, 0.25, 1);
        zero_grad(&params);
        (&w * &w * 0.5).sum(None).backward();
        opt.step(&params, 0.1);
        assert!((w.double_value(&[0]) - 11.0 / 12.0).abs() < 1e-12);
        zero_grad(&params);
        (&w * &w * 0.5).sum(None).backward();
        opt.step(&params, 0.1);
        assert!((w.double_value(&[0]) - 0.834_774_163_857_162_7).abs() < 1e-12, "{}", w.double_value(&[0]));
        let s = opt.state[0].as_ref().unwrap();
        assert_eq!(s.step, 2);
        assert!((s.m.double_value(&[0]) - 85.0 / 96.0).abs() < 1e-12);
        assert!((s.v.double_value(&[0]) - 5725.0 / 9216.0).abs() < 1e-12);
    }

    #[test]
    fn a_parameter_without_a_gradient_gets_no_state() {
        let w = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
        let unused = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
        let params = vec![w.shallow_clone(), unused.shallow_clone()];
        let mut opt = Adam::new([0.9, 0.999], 1e-8, 0.0, 2);
        w.sum(None).backward();
        opt.step(&params, 0.1);
        assert!(opt.state[0].is_some() && opt.state[1].is_none());
        assert_eq!(unused.double_value(&[0]), 3.0);
        // Adam's first step moves every coordinate by about lr, whatever the gradient's scale.
        assert!((w.double_value(&[0]) - 0.9).abs() < 1e-6);
    }
}
