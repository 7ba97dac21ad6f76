//! Adversarial robustness: projected gradient descent (Madry et al. 2018) under L∞ and L2,
//! against any differentiable classifier — including one that purifies its input with SGLD
//! first, attacked end to end through the purification.
use crate::config::PgdNorm;
use tch::{Kind, Reduction, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct Pgd {
    pub norm: PgdNorm,
    /// Radius, in the [−1, 1] pixel units the network sees.
    pub eps: f64,
    pub steps: usize,
    pub step_size: f64,
    /// Start from a uniform point of the L∞ box, or for L2 a random direction at a uniform
    /// radius in [0, eps].
    pub random_start: bool,
}

/// Per-sample L2 norm over every dimension but the first, shaped to broadcast against `x`.
fn sample_norms(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    let shape: Vec<i64> = std::iter::once(n).chain(std::iter::repeat_n(1, x.dim() - 1)).collect();
    x.view([n, -1]).norm_scalaropt_dim(2.0, [1], false).view(shape.as_slice())
}

/// Projects the perturbation `delta` onto the eps-ball of the norm.
fn project(delta: &Tensor, norm: PgdNorm, eps: f64) -> Tensor {
    match norm {
        PgdNorm::Linf => delta.clamp(-eps, eps),
        PgdNorm::L2 => delta * (eps / (sample_norms(delta) + 1e-12)).clamp_max(1.0),
    }
}

/// What an attack on a batch leaves: the final iterate, and which images survived it.
pub struct Attacked {
    /// The last PGD iterate.
    pub adv: Tensor,
    /// Per image: classified right on the clean image, the random start and EVERY iterate —
    /// the reference's robust accuracy (SADAJEM `bpda_eot_attack.py` `attack_batch`, lines
    /// 228–279: `defended *= correct` after the clean image, the random start and each of the
    /// `adv_steps` updates).
    pub never_broken: Tensor,
    /// Per image: classified right on the last iterate alone (an upper bound of the above).
    pub final_correct: Tensor,
}

/// Adversarial inputs for `classify` (images → logits) around `x` with labels `y`: each step
/// ascends the cross-entropy (summed, so every sample follows its own gradient), moves by
/// `step_size` along sign(g) (L∞) or g/‖g‖ (L2), projects back onto the eps-ball around `x`
/// and clamps to the pixel range [−1, 1]. Random draws use libtorch's generator. Every point
/// the attack visits is classified on the way (the forward the gradient needs anyway), so both
/// robust accuracies come out of one attack.
pub fn pgd(classify: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, y: &Tensor, p: &Pgd) -> Attacked {
    let x = x.detach();
    let right = |logits: &Tensor| logits.detach().argmax(1, false).eq_tensor(y);
    let mut never_broken = right(&tch::no_grad(|| classify(&x)));
    let mut adv = if p.random_start && p.eps > 0.0 {
        let delta = match p.norm {
            PgdNorm::Linf => x.rand_like() * (2.0 * p.eps) - p.eps,
            PgdNorm::L2 => {
                let dir = x.randn_like();
                let radius = Tensor::rand([x.size()[0]], (Kind::Float, x.device())) * p.eps;
                let shape: Vec<i64> = std::iter::once(x.size()[0]).chain(std::iter::repeat_n(1, x.dim() - 1)).collect();
                &dir / (sample_norms(&dir) + 1e-12) * radius.view(shape.as_slice()).to_kind(x.kind())
            }
        };
        (&x + delta).clamp(-1.0, 1.0)
    } else {
        x.shallow_clone()
    };
    for _ in 0..p.steps {
        let a = adv.detach().set_requires_grad(true);
        let logits = classify(&a);
        never_broken = never_broken.logical_and(&right(&logits));
        let loss = logits.cross_entropy_loss::<Tensor>(y, None, Reduction::Sum, -100, 0.0);
        let g = Tensor::run_backward(&[loss], &[&a], false, false).pop().expect("one input gradient");
        let step = match p.norm {
            PgdNorm::Linf => g.sign() * p.step_size,
            PgdNorm::L2 => &g / (sample_norms(&g) + 1e-12) * p.step_size,
        };
        let moved = a.detach() + step;
        adv = (&x + project(&(moved - &x), p.norm, p.eps)).clamp(-1.0, 1.0);
    }
    let adv = adv.detach();
    let final_correct = right(&tch::no_grad(|| classify(&adv)));
    // With no steps the start itself is the last point visited.
    let never_broken = never_broken.logical_and(&final_correct);
    Attacked { adv, never_broken, final_correct }
}

/// Fraction of true values of a boolean per-image tensor.
pub fn fraction(mask: &Tensor) -> f64 {
    mask.to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// SGLD purification / refinement: `steps` of x ← x + α·∇x LSE(f(x)) + σ·ε, each sample with
/// its own gradient (the objective is summed over the batch; in eval mode samples don't
/// interact). With `differentiable`, the steps keep their graph, so an attacker's gradient flows
/// through the purification (second-order terms included).
pub fn purify(lse: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, steps: usize, step_size: f64, noise: f64, differentiable: bool) -> Tensor {
    // Gradients are needed even when the caller classifies under no_grad.
    tch::with_grad(|| purify_steps(lse, x, steps, step_size, noise, differentiable))
}

fn purify_steps(lse: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, steps: usize, step_size: f64, noise: f64, differentiable: bool) -> Tensor {
    let mut x = if differentiable { x.shallow_clone() } else { x.detach() };
    for _ in 0..steps {
        let input = if differentiable && x.requires_grad() { x.shallow_clone() } else { x.detach().set_requires_grad(true) };
        let energy = lse(&input).sum(Kind::Float);
        let g = Tensor::run_backward(&[energy], &[&input], differentiable, differentiable).pop().expect("one input gradient");
        let next = &input + g * step_size;
        let next = if noise > 0.0 { &next + next.randn_like() * noise } else { next };
        x = if differentiable { next } else { next.detach() };
    }
    x
}

/// Fraction of `x` that `classify` labels `y`.
pub fn accuracy(classify: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, y: &Tensor) -> f64 {
    let pred = tch::no_grad(|| classify(x)).argmax(1, false);
    pred.eq_tensor(y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two classes, f(x) = W·x + b on 4 pixels: the cross-entropy gradient of a sample of class
    /// y points along d = w_other − w_y everywhere, so the worst case in the eps-ball is closed
    /// form: x + eps·sign(d) (L∞) or x + eps·d/‖d‖ (L2), which lowers the margin by eps·‖d‖₁ or
    /// eps·‖d‖₂.
    fn linear() -> (Tensor, Tensor, impl Fn(&Tensor) -> Tensor) {
        let w = Tensor::from_slice(&[0.5f32, -1.0, 0.25, 2.0, -0.5, 1.0, 0.75, -1.5]).view([2, 4]);
        let b = Tensor::from_slice(&[0.1f32, -0.1]);
        let (w2, b2) = (w.shallow_clone(), b.shallow_clone());
        (w, b, move |x: &Tensor| x.view([-1, 4]).matmul(&w2.tr()) + &b2)
    }

    #[test]
    fn pgd_on_a_linear_model_reaches_the_closed_form_worst_case() {
        let (w, _, f) = linear();
        let x = Tensor::from_slice(&[0.1f32, -0.2, 0.05, 0.3, -0.1, 0.2, 0.0, -0.3]).view([2, 4]);
        let y = Tensor::from_slice(&[0i64, 1]);
        let d0 = w.get(1) - w.get(0); // ascent direction for class 0
        let d = Tensor::stack(&[d0.shallow_clone(), -&d0], 0);
        let eps = 0.2;
        for norm in [PgdNorm::Linf, PgdNorm::L2] {
            // L2's projection shrinks the random start's off-direction part by ~0.8 per step.
            let p = Pgd { norm, eps, steps: 100, step_size: 0.05, random_start: true };
            let adv = pgd(&f, &x, &y, &p).adv;
            let expected = match norm {
                PgdNorm::Linf => &x + d.sign() * eps,
                PgdNorm::L2 => &x + &d / sample_norms(&d) * eps,
            };
            let err = (&adv - &expected).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{norm}: max deviation from the closed form {err}");
        }
    }

    #[test]
    fn robust_accuracy_matches_the_closed_form_margins() {
        let (w, b, f) = linear();
        let n = 200;
        let x = (Tensor::rand([n, 4], (Kind::Float, Device::Cpu)) - 0.5) * 0.8;
        let logits = f(&x);
        let y = logits.argmax(1, false); // clean accuracy 1
        let d = w.get(1) - w.get(0);
        let margin = (logits.select(1, 0) - logits.select(1, 1)).abs();
        let _ = b;
        for (norm, dual) in [(PgdNorm::Linf, d.abs().sum(Kind::Float)), (PgdNorm::L2, d.norm())] {
            let eps = 0.1;
            let p = Pgd { norm, eps, steps: 10, step_size: 0.05, random_start: false };
            let attacked = pgd(&f, &x, &y, &p);
            let survive = margin.gt_tensor(&(dual * eps)).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
            let got = accuracy(&f, &attacked.adv, &y);
            assert!((got - survive).abs() < 1e-9, "{norm}: {got} vs closed form {survive}");
            assert!(got < 1.0 && got > 0.0, "{norm}: the test should attack some but not all");
            // On a linear model the ascent only ever lowers the margin: any-step = final.
            assert!((fraction(&attacked.never_broken) - survive).abs() < 1e-9, "{norm}: any-step");
            assert!((fraction(&attacked.final_correct) - survive).abs() < 1e-9, "{norm}: final iterate");
        }
        // An image misclassified before the attack counts as broken, whatever the iterates do.
        let wrong = (&y + 1).remainder(2);
        let attacked = pgd(&f, &x, &wrong, &Pgd { norm: PgdNorm::Linf, eps: 0.0, steps: 0, step_size: 0.0, random_start: false });
        assert_eq!(fraction(&attacked.never_broken), 0.0);
    }

    /// A classifier the attack breaks on the way and then loses again: f(x) = [0.8 − sin(12x), 0]
    /// on one pixel, class 0, sign steps of 0.1 from x = 0 with a ball too large to bind. The
    /// chain visits 12x = 1.2 (margin 0.8 − 0.93 < 0: broken), turns back at 2.4 (margin 0.8 −
    /// 0.68 > 0), and oscillates; the last of 4 steps lands at 2.4. Broken at a step, right at
    /// the end: the reference's any-step accuracy 0, the final-iterate accuracy 1.
    #[test]
    fn an_image_broken_at_any_step_counts_as_broken() {
        let f = |x: &Tensor| {
            let m = (x.view([-1, 1]) * 12.0).sin().neg() + 0.8;
            Tensor::cat(&[m.shallow_clone(), m.zeros_like()], 1)
        };
        let x = Tensor::zeros([1, 1, 1, 1], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64]);
        let attacked = pgd(&f, &x, &y, &Pgd { norm: PgdNorm::Linf, eps: 1.0, steps: 4, step_size: 0.1, random_start: false });
        assert!((attacked.adv.double_value(&[0, 0, 0, 0]) - 0.2).abs() < 1e-6, "{}", attacked.adv);
        assert_eq!(fraction(&attacked.final_correct), 1.0);
        assert_eq!(fraction(&attacked.never_broken), 0.0);
    }

    #[test]
    fn perturbations_stay_in_the_ball_and_the_pixel_range() {
        let (_, _, f) = linear();
        let x = Tensor::from_slice(&[0.95f32, -0.95, 1.0, -1.0]).view([1, 4]);
        let y = Tensor::from_slice(&[1i64]);
        for norm in [PgdNorm::Linf, PgdNorm::L2] {
            let adv = pgd(&f, &x, &y, &Pgd { norm, eps: 0.3, steps: 5, step_size: 0.2, random_start: true }).adv;
            assert!(adv.max().double_value(&[]) <= 1.0 && adv.min().double_value(&[]) >= -1.0);
            let delta = &adv - &x;
            let size = match norm {
                PgdNorm::Linf => delta.abs().max().double_value(&[]),
                PgdNorm::L2 => delta.norm().double_value(&[]),
            };
            assert!(size <= 0.3 + 1e-6, "{norm}: {size}");
        }
    }

    #[test]
    fn purification_ascends_the_energy_and_is_differentiable_end_to_end() {
        // LSE of a linear model: the gradient is softmax-weighted W rows.
        let (_, _, f) = linear();
        let lse = move |x: &Tensor| f(x).logsumexp([1], false);
        let x = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let before = lse(&x).sum(Kind::Float).double_value(&[]);
        let out = purify(&lse, &x, 3, 0.1, 0.0, true);
        assert!(lse(&out.detach()).sum(Kind::Float).double_value(&[]) > before);
        let g = Tensor::run_backward(&[out.sum(Kind::Float)], &[&x], false, false).pop().unwrap();
        // The gradient through the purification against central differences, pixel by pixel.
        let h = 1e-2;
        for j in 0..4 {
            let e = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[j]), h);
            let plus = purify(&lse, &(x.detach() + &e), 3, 0.1, 0.0, false).sum(Kind::Float).double_value(&[]);
            let minus = purify(&lse, &(x.detach() - &e), 3, 0.1, 0.0, false).sum(Kind::Float).double_value(&[]);
            let numeric = (plus - minus) / (2.0 * h);
            let analytic = g.select(1, j).sum(Kind::Float).double_value(&[]);
            assert!((numeric - analytic).abs() < 1e-2 * analytic.abs().max(1.0), "pixel {j}: {analytic} vs {numeric}");
        }
        let detached = purify(&lse, &x, 3, 0.1, 0.0, false);
        assert!(!detached.requires_grad());
        assert!((&detached - out.detach()).abs().max().double_value(&[]) < 1e-6);
    }
}
