//! The optimisers: a base (SGD or Adam, written out so their state can be checkpointed), SAM /
//! ASAM around it, and the learning-rate schedule.
pub mod adam;
pub mod sam;
pub mod schedule;
pub mod sgd;

pub use adam::Adam;
pub use sam::Sam;
pub use sgd::Sgd;

use crate::config::{OptimConfig, Optimizer};
use anyhow::{bail, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Zeroes the stored gradients of `params` (those that have one).
pub fn zero_grad(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// The optimiser that turns gradients into updates (SAM, when on, only changes where the
/// gradients are taken).
pub enum Base {
    Sgd(Sgd),
    Adam(Adam),
}

impl Base {
    pub fn from_config(cfg: &OptimConfig, n_params: usize) -> Base {
        match cfg.optimizer {
            Optimizer::Sgd => Base::Sgd(Sgd::new(cfg.momentum, cfg.weight_decay, n_params)),
            Optimizer::Adam => Base::Adam(Adam::new(cfg.adam_betas, cfg.adam_eps, cfg.weight_decay, n_params)),
        }
    }

    /// One update with the gradients currently stored in `params`.
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        match self {
            Base::Sgd(o) => o.step(params, lr),
            Base::Adam(o) => o.step(params, lr),
        }
    }

    /// The state to checkpoint, named after `names` (the parameters' names, in the order of
    /// the `params` passed to `step`): `optim.momentum.<name>` for SGD; `optim.adam_m.<name>`,
    /// `optim.adam_v.<name>` and the int64 scalar `optim.adam_step.<name>` for Adam. A
    /// parameter that has had no gradient yet has no entries.
    pub fn state_tensors(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        match self {
            Base::Sgd(o) => {
                for (name, buf) in names.iter().zip(&o.buffers) {
                    if let Some(b) = buf {
                        out.push((format!("{MOMENTUM}{name}"), b.shallow_clone()));
                    }
                }
            }
            Base::Adam(o) => {
                for (name, st) in names.iter().zip(&o.state) {
                    if let Some(s) = st {
                        out.push((format!("{ADAM_M}{name}"), s.m.shallow_clone()));
                        out.push((format!("{ADAM_V}{name}"), s.v.shallow_clone()));
                        let step = Tensor::scalar_tensor(s.step as i64, (Kind::Int64, Device::Cpu));
                        out.push((format!("{ADAM_STEP}{name}"), step));
                    }
                }
            }
        }
        out
    }

    /// Restores what `state_tensors` saved, moving it to `device`. Fails on a checkpoint
    /// written by the other optimiser or holding only part of a parameter's Adam state, rather
    /// than resuming with silently reset moments.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, names: &[String], device: Device) -> Result<()> {
        let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
        match self {
            Base::Sgd(o) => {
                if has(ADAM_M) || has(ADAM_V) || has(ADAM_STEP) {
                    bail!("the checkpoint holds Adam state but optim.optimizer = \"sgd\"");
                }
                for (name, buf) in names.iter().zip(o.buffers.iter_mut()) {
                    *buf = tensors.get(&format!("{MOMENTUM}{name}")).map(|t| t.to_device(device));
                }
            }
            Base::Adam(o) => {
                if has(MOMENTUM) {
                    bail!("the checkpoint holds SGD momentum but optim.optimizer = \"adam\"");
                }
                for (name, st) in names.iter().zip(o.state.iter_mut()) {
                    let get = |prefix: &str| tensors.get(&format!("{prefix}{name}"));
                    *st = match (get(ADAM_M), get(ADAM_V), get(ADAM_STEP)) {
                        (None, None, None) => None,
                        (Some(m), Some(v), Some(step)) => {
                            Some(adam::AdamState { step: step.int64_value(&[]) as u64, m: m.to_device(device), v: v.to_device(device) })
                        }
                        _ => bail!("the checkpoint holds only part of the Adam state of `{name}`"),
                    };
                }
            }
        }
        Ok(())
    }
}

const MOMENTUM: &str = "optim.momentum.";
const ADAM_M: &str = "optim.adam_m.";
const ADAM_V: &str = "optim.adam_v.";
const ADAM_STEP: &str = "optim.adam_step.";

#[cfg(test)]
mod tests {
    use super::*;

    /// Two parameters, one of which never gets a gradient; loss Σ w³ so successive gradients
    /// differ and the state matters.
    fn run_steps(opt: &mut Base, params: &[Tensor], n: usize) {
        for _ in 0..n {
            zero_grad(params);
            params[0].pow_tensor_scalar(3).sum(None).backward();
            opt.step(params, 0.01);
        }
    }

    fn fresh_params() -> Vec<Tensor> {
        vec![Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true), Tensor::from_slice(&[7.0f32]).set_requires_grad(true)]
    }

    /// Saving after 3 steps, restoring into a fresh optimiser and stepping twice more gives
    /// bitwise the weights of 5 uninterrupted steps.
    #[test]
    fn saved_state_resumes_bitwise() {
        let names = vec!["a".to_string(), "b".to_string()];
        for optimizer in [Optimizer::Sgd, Optimizer::Adam] {
            let cfg = OptimConfig { optimizer, weight_decay: 0.1, ..OptimConfig::default() };
            let whole = fresh_params();
            let mut opt = Base::from_config(&cfg, 2);
            run_steps(&mut opt, &whole, 5);

            let resumed = fresh_params();
            let mut opt = Base::from_config(&cfg, 2);
            run_steps(&mut opt, &resumed, 3);
            // Through a checkpoint file, so the int64 scalar step count makes the trip too.
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("ck.safetensors");
            crate::store::checkpoint::save(&file, &opt.state_tensors(&names), &()).unwrap();
            let (saved, ()): (HashMap<String, Tensor>, ()) = crate::store::checkpoint::load(&file).unwrap();
            let expected: &[&str] = match optimizer {
                Optimizer::Sgd => &["optim.momentum.a"],
                Optimizer::Adam => &["optim.adam_m.a", "optim.adam_step.a", "optim.adam_v.a"],
            };
            let mut keys: Vec<&str> = saved.keys().map(|k| k.as_str()).collect();
            keys.sort();
            assert_eq!(keys, expected);
            let mut opt = Base::from_config(&cfg, 2);
            opt.load_state(&saved, &names, Device::Cpu).unwrap();
            run_steps(&mut opt, &resumed, 2);
            assert!(resumed[0].equal(&whole[0]), "{optimizer:?}");
            assert!(resumed[1].equal(&whole[1]));
        }
    }

    #[test]
    fn loading_the_other_optimisers_state_fails() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut sgd = Base::from_config(&OptimConfig::default(), 2);
        let mut adam = Base::from_config(&OptimConfig { optimizer: Optimizer::Adam, ..OptimConfig::default() }, 2);
        let params = fresh_params();
        run_steps(&mut sgd, &params, 1);
        run_steps(&mut adam, &params, 1);
        let of = |o: &Base| -> HashMap<String, Tensor> { o.state_tensors(&names).into_iter().collect() };
        let e = adam.load_state(&of(&sgd), &names, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("momentum") && e.contains("adam"), "{e}");
        let e = sgd.load_state(&of(&adam), &names, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("Adam") && e.contains("sgd"), "{e}");
        let mut partial = of(&adam);
        partial.remove("optim.adam_v.a");
        let e = adam.load_state(&partial, &names, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("`a`"), "{e}");
    }
}
