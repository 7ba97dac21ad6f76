//! The three step rules of docs/method.md §3, run from a batch of starting points:
//! - `sgld` (JEM):        x ← x + α·∇x + σ·ε
//! - `clipped` (SADA-JEM): x ← clamp(x + α·clamp(∇x, −1, 1) + σ·ε, −1, 1)
//! - `pyld` (JEM++):       M outer steps, each followed by N clipped inner steps of size α_inner
//!   with the gradient of the outer step held fixed.
//!
//! ∇x is the gradient of Σ LSE(f(x)) (unconditional) or Σ f(x)[y] (class-conditional).
//!
//! About PYLD: JEM++ backpropagates once to the first conv's output h and then takes the inner
//! steps through the first conv alone. The first conv is affine, so ∂(h(x)·∂E/∂h)/∂x is the full
//! input gradient and does not change over the inner steps; computing it once per outer step is
//! the same arithmetic without the bookkeeping.
use crate::config::{SamplerConfig, SamplerKind};
use crate::model::{Mode, Wrn};
use tch::Tensor;

/// Σ over the batch of what the chain climbs: LSE(f(x)), or f(x)[y] when `target` is given.
fn objective(net: &Wrn, x: &Tensor, mode: Mode, target: Option<&Tensor>) -> Tensor {
    let logits = net.forward(x, mode);
    match target {
        None => crate::model::energy::lse(&logits).sum(None),
        Some(y) => logits.gather(1, &y.unsqueeze(1), false).sum(None),
    }
}

/// ∇x of the objective; leaves the parameters' gradients untouched.
fn input_gradient(net: &Wrn, x: &Tensor, mode: Mode, target: Option<&Tensor>) -> Tensor {
    let x = x.detach().set_requires_grad(true);
    let obj = objective(net, &x, mode, target);
    Tensor::run_backward(&[obj], &[&x], false, false).pop().expect("one input, one gradient")
}

/// x + σ·ε; with σ = 0 (SADA-JEM, JEM++) nothing is drawn or added.
fn add_noise(x: Tensor, sigma: f64) -> Tensor {
    if sigma > 0.0 {
        &x + x.randn_like() * sigma
    } else {
        x
    }
}

fn clipped_step(x: &Tensor, grad: &Tensor, step: f64, sigma: f64) -> Tensor {
    add_noise(x + grad.clamp(-1.0, 1.0) * step, sigma).clamp(-1.0, 1.0)
}

/// Runs the configured chain from `x0` with the network in `mode`; returns the detached samples.
pub fn run(net: &Wrn, x0: &Tensor, cfg: &SamplerConfig, mode: Mode, target: Option<&Tensor>) -> Tensor {
    let mut x = x0.detach();
    match cfg.kind {
        SamplerKind::Sgld => {
            for _ in 0..cfg.steps {
                let g = input_gradient(net, &x, mode, target);
                x = add_noise(&x + g * cfg.step_size, cfg.noise);
            }
        }
        SamplerKind::Clipped => {
            for _ in 0..cfg.steps {
                let g = input_gradient(net, &x, mode, target);
                x = clipped_step(&x, &g, cfg.step_size, cfg.noise);
            }
        }
        SamplerKind::Pyld => {
            for _ in 0..cfg.steps {
                let g = input_gradient(net, &x, mode, target);
                for _ in 0..cfg.inner_steps {
                    x = clipped_step(&x, &g, cfg.inner_step_size, cfg.noise);
                }
            }
        }
    }
    x.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use tch::{nn, Device, Kind};

    fn net() -> (nn::VarStore, Wrn) {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() };
        let net = Wrn::new(&vs.root(), &cfg, 1, 10);
        // PyTorch's default init leaves f nearly flat in x (‖∇x LSE‖ ≈ 0.006 here); sharpen it
        // so that steps move the objective measurably in f32.
        tch::no_grad(|| {
            for mut p in vs.trainable_variables() {
                let _ = p.g_mul_scalar_(3.0);
            }
        });
        (vs, net)
    }

    fn cfg(kind: SamplerKind, steps: usize, step_size: f64, noise: f64) -> SamplerConfig {
        SamplerConfig { kind, steps, step_size, noise, ..SamplerConfig::default() }
    }

    fn x0() -> Tensor {
        Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
    }

    #[test]
    fn clipped_steps_stay_in_range_and_move_no_pixel_more_than_the_step() {
        let (_vs, net) = net();
        let x = x0();
        let c = cfg(SamplerKind::Clipped, 1, 0.05, 0.0);
        let mut prev = x.shallow_clone();
        for _ in 0..5 {
            let next = run(&net, &prev, &c, Mode::Eval, None);
            assert!(next.min().double_value(&[]) >= -1.0 && next.max().double_value(&[]) <= 1.0);
            let moved = (&next - &prev).abs().max().double_value(&[]);
            assert!(moved <= 0.05 + 1e-6 && moved > 0.0, "{moved}");
            prev = next;
        }
    }

    #[test]
    fn chains_raise_the_objective_and_leave_parameter_gradients_alone() {
        let (vs, net) = net();
        let x = x0();
        let lse = |x: &Tensor| crate::model::energy::lse(&net.forward(x, Mode::Eval)).mean(None).double_value(&[]);
        // Steps small enough that first-order ascent holds: the raw gradient for `sgld`, a
        // per-pixel move of 1e-3 for the clipped rules.
        for (kind, step) in [(SamplerKind::Sgld, 1e-3), (SamplerKind::Clipped, 1e-3), (SamplerKind::Pyld, 1e-3)] {
            let c = SamplerConfig { inner_steps: 2, inner_step_size: step, ..cfg(kind, 3, step, 0.0) };
            let out = run(&net, &x, &c, Mode::Eval, None);
            assert!(lse(&out) > lse(&x), "{kind:?} did not climb LSE: {} → {}", lse(&x), lse(&out));
        }
        let y = Tensor::from_slice(&[3i64, 3, 3, 3]);
        let f3 = |x: &Tensor| net.forward(x, Mode::Eval).select(1, 3).mean(None).double_value(&[]);
        let out = run(&net, &x, &cfg(SamplerKind::Clipped, 3, 0.01, 0.0), Mode::Eval, Some(&y));
        assert!(f3(&out) > f3(&x));
        assert!(vs.trainable_variables().iter().all(|p| !p.grad().defined()));
    }

    #[test]
    fn pyld_is_n_clipped_steps_with_the_outer_gradient_held_fixed() {
        let (_vs, net) = net();
        let x = x0();
        let c = SamplerConfig { inner_steps: 3, inner_step_size: 0.2, ..cfg(SamplerKind::Pyld, 1, 0.0, 0.0) };
        let out = run(&net, &x, &c, Mode::Eval, None);
        let g = input_gradient(&net, &x, Mode::Eval, None);
        let mut by_hand = x.shallow_clone();
        for _ in 0..3 {
            by_hand = (&by_hand + g.clamp(-1.0, 1.0) * 0.2).clamp(-1.0, 1.0);
        }
        assert!(out.allclose(&by_hand, 0.0, 1e-6, false));
        // ...which differs from three clipped steps that recompute the gradient.
        let fresh = run(&net, &x, &cfg(SamplerKind::Clipped, 3, 0.2, 0.0), Mode::Eval, None);
        assert!(!out.allclose(&fresh, 0.0, 1e-6, false));
    }

    #[test]
    fn jem_steps_add_the_gradient_and_noise_of_the_requested_size() {
        let (_vs, net) = net();
        let x = x0();
        let g = input_gradient(&net, &x, Mode::Eval, None);
        let plain = run(&net, &x, &cfg(SamplerKind::Sgld, 1, 1.0, 0.0), Mode::Eval, None);
        assert!(plain.allclose(&(&x + &g), 0.0, 1e-6, false));
        let noisy = run(&net, &x, &cfg(SamplerKind::Sgld, 1, 1.0, 0.01), Mode::Eval, None);
        let std = (&noisy - &plain).std(true).double_value(&[]);
        assert!((std - 0.01).abs() < 0.001, "{std}");
    }
}
