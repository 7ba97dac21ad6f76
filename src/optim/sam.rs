//! SAM and its adaptive variant ASAM (docs/method.md §4), around any base optimiser. One iteration:
//!   1. with the gradients g at w: n = ‖ s ⊙ g ‖₂ over all parameters together, where s = |w|
//!      for ASAM and 1 for SAM;
//!   2. e = ρ · s² ⊙ g / (n + 1e-12); w ← w + e            (`Sam::ascend`)
//!   3. the caller zeroes the gradients and backpropagates the loss of the same batches at
//!      w + e, with batch-norm running statistics frozen;
//!   4. w ← w − e (`Sam::descend`), then the base optimiser steps with the new gradients.
//!
//! Whether the variant is adaptive is a setting of its own: the reference switches to ASAM when
//! ρ ≥ 0.5, which we do not infer.
use tch::Tensor;

pub struct Sam {
    pub rho: f64,
    pub adaptive: bool,
}

impl Sam {
    /// Steps 1–2: moves every parameter that has a gradient to w + e and returns e (one entry
    /// per parameter, None where it had no gradient and was left alone).
    pub fn ascend(&self, params: &[Tensor]) -> Vec<Option<Tensor>> {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
            // One norm per parameter, then the norm of those: the reference's order of
            // summation, and no concatenated copy of all gradients.
            let norms: Vec<Tensor> = params
                .iter()
                .zip(&grads)
                .filter(|(_, g)| g.defined())
                .map(|(p, g)| if self.adaptive { (p.abs() * g).norm() } else { g.norm() })
                .collect();
            if norms.is_empty() {
                return params.iter().map(|_| None).collect();
            }
            // Kept as a tensor so the step does not wait for the device; the reciprocal times ρ
            // is how PyTorch evaluates the reference's `rho / (grad_norm + 1e-12)`.
            let scale = (Tensor::stack(&norms, 0).norm() + 1e-12).reciprocal() * self.rho;
            params
                .iter()
                .zip(grads)
                .map(|(p, g)| {
                    if !g.defined() {
                        return None;
                    }
                    let e = if self.adaptive { p.square() * &g * &scale } else { &g * &scale };
                    let _ = p.shallow_clone().g_add_(&e);
                    Some(e)
                })
                .collect()
        })
    }

    /// Step 4's first half: w ← w − e, as docs/method.md states it. In floating point this can differ
    /// from the w before `ascend` by a rounding of w + e (the reference restores a saved copy).
    pub fn descend(params: &[Tensor], e: &[Option<Tensor>]) {
        tch::no_grad(|| {
            for (p, e) in params.iter().zip(e) {
                if let Some(e) = e {
                    let _ = p.shallow_clone().g_sub_(e);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{zero_grad, Sgd};

    /// Parameters a (a scalar), b (a 2-vector) and c (a 1-vector the loss does not use, so it
    /// never has a gradient); loss L = a² + ½·b₁² + 2·b₂², gradient (2a, b₁, 4b₂).
    fn model(a: f64, b: [f64; 2]) -> Vec<Tensor> {
        vec![
            Tensor::from(a).set_requires_grad(true),
            Tensor::from_slice(&b).set_requires_grad(true),
            Tensor::from_slice(&[5.0f64]).set_requires_grad(true),
        ]
    }

    fn backward(params: &[Tensor]) {
        zero_grad(params);
        let (a, b) = (&params[0], &params[1]);
        let l = a.square() + (b.square() * Tensor::from_slice(&[0.5f64, 2.0])).sum(None);
        l.backward();
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.detach().reshape([-1])).unwrap()
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-10, "got {got:?}, want {want:?}");
        }
    }

    /// Runs one full SAM iteration with SGD (lr 0.1, momentum 0.9, weight decay 0.01) whose
    /// momentum buffers start at a = 1, b = (−1, 0.5), so momentum and decay both enter the
    /// update. Returns e, the perturbed weights, and the params after the update.
    fn iteration(sam: &Sam, params: &[Tensor]) -> (Vec<Option<Tensor>>, Vec<Vec<f64>>) {
        let mut sgd = Sgd::new(0.9, 0.01, 3);
        sgd.buffers[0] = Some(Tensor::from(1.0f64));
        sgd.buffers[1] = Some(Tensor::from_slice(&[-1.0f64, 0.5]));
        backward(params);
        let e = sam.ascend(params);
        let perturbed = params.iter().map(values).collect();
        backward(params);
        Sam::descend(params, &e);
        sgd.step(params, 0.1);
        assert!(sgd.buffers[2].is_none());
        (e, perturbed)
    }

    /// SAM, ρ = 0.3, at a = 1, b = (2, −0.25):
    ///   g = (2, 2, −1); n = √(4 + 4 + 1) = 3; e = 0.3·g/3 = (0.2, 0.2, −0.1);
    ///   w + e = (1.2, 2.2, −0.35); g' = (2.4, 2.2, −1.4);
    ///   SGD on w: buf = 0.9·(1, −1, 0.5) + g' + 0.01·(1, 2, −0.25) = (3.31, 1.32, −0.9525);
    ///   w ← w − 0.1·buf = (0.669, 1.868, −0.15475).
    #[test]
    fn sam_step_matches_hand_computation() {
        let params = model(1.0, [2.0, -0.25]);
        let sam = Sam { rho: 0.3, adaptive: false };
        let (e, perturbed) = iteration(&sam, &params);
        assert_close(&values(e[0].as_ref().unwrap()), &[0.2]);
        assert_close(&values(e[1].as_ref().unwrap()), &[0.2, -0.1]);
        assert_close(&perturbed[0], &[1.2]);
        assert_close(&perturbed[1], &[2.2, -0.35]);
        assert_close(&values(&params[0]), &[0.669]);
        assert_close(&values(&params[1]), &[1.868, -0.15475]);
        // c had no gradient: no e, not moved, and it did not enter n (or e would be smaller).
        assert!(e[2].is_none());
        assert_eq!(perturbed[2], [5.0]);
        assert_eq!(values(&params[2]), [5.0]);
    }

    /// ASAM, ρ = 0.6, at a = 1, b = (2, −1):
    ///   g = (2, 2, −4); |w| ⊙ g = (2, 4, −4), n = √(4 + 16 + 16) = 6;
    ///   e = 0.6·w² ⊙ g/6 = 0.1·(1·2, 4·2, 1·(−4)) = (0.2, 0.8, −0.4);
    ///   w + e = (1.2, 2.8, −1.4); g' = (2.4, 2.8, −5.6);
    ///   SGD on w: buf = 0.9·(1, −1, 0.5) + g' + 0.01·(1, 2, −1) = (3.31, 1.92, −5.16);
    ///   w ← w − 0.1·buf = (0.669, 1.808, −0.484).
    #[test]
    fn asam_step_matches_hand_computation() {
        let params = model(1.0, [2.0, -1.0]);
        let sam = Sam { rho: 0.6, adaptive: true };
        let (e, perturbed) = iteration(&sam, &params);
        assert_close(&values(e[0].as_ref().unwrap()), &[0.2]);
        assert_close(&values(e[1].as_ref().unwrap()), &[0.8, -0.4]);
        assert_close(&perturbed[0], &[1.2]);
        assert_close(&perturbed[1], &[2.8, -1.4]);
        assert_close(&values(&params[0]), &[0.669]);
        assert_close(&values(&params[1]), &[1.808, -0.484]);
        assert!(e[2].is_none());
        assert_eq!(values(&params[2]), [5.0]);
    }

    #[test]
    fn without_any_gradient_nothing_moves() {
        let params = model(1.0, [2.0, -1.0]);
        let e = Sam { rho: 0.6, adaptive: true }.ascend(&params);
        assert!(e.iter().all(|e| e.is_none()));
        Sam::descend(&params, &e);
        assert_eq!(values(&params[1]), [2.0, -1.0]);
    }
}
