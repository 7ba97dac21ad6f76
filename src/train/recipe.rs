//! One training iteration of each recipe. Recipes are settings (`train.recipe` and the
//! sections it reads), not code forks: this is the only place that branches on them.
use crate::config::Recipe;
use crate::model::{Mode, Wrn};
use crate::optim::{Base, Sgd};
use std::collections::BTreeMap;
use tch::Tensor;

/// A labelled batch, already on the training device.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
}

/// What an iteration reports: each loss term and accuracy on the batch, by name.
pub type StepStats = BTreeMap<&'static str, f64>;

/// The network and its optimiser: what every recipe updates.
pub struct Learner {
    pub net: Wrn,
    /// Trainable parameters, sorted by name (the optimiser's state follows this order).
    pub params: Vec<Tensor>,
    pub opt: Base,
}

pub fn step(recipe: Recipe, learner: &mut Learner, batch: &Batch, lr: f64) -> StepStats {
    match recipe {
        Recipe::Softmax => softmax_step(learner, batch, lr),
    }
}

/// L = CE(f(x), y) on the (augmented) labelled batch.
fn softmax_step(learner: &mut Learner, batch: &Batch, lr: f64) -> StepStats {
    Sgd::zero_grad(&learner.params);
    let logits = learner.net.forward(&batch.x, Mode::Train);
    let ce = logits.cross_entropy_for_logits(&batch.y);
    ce.backward();
    learner.opt.step(&learner.params, lr);
    let acc = logits.argmax(1, false).eq_tensor(&batch.y).to_kind(tch::Kind::Float).mean(None);
    BTreeMap::from([("loss", ce.double_value(&[])), ("ce", ce.double_value(&[])), ("acc", acc.double_value(&[]))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use tch::{nn, Device, Kind};

    #[test]
    fn softmax_steps_lower_the_loss_on_a_fixed_batch() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() };
        let net = Wrn::new(&vs.root(), &cfg, 1, 10);
        let params = vs.trainable_variables();
        let n = params.len();
        let mut learner = Learner { net, params, opt: Base::Sgd(Sgd::new(0.9, 0.0, n)) };
        let batch = Batch { x: Tensor::randn([16, 1, 28, 28], (Kind::Float, Device::Cpu)), y: Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10) };
        let first = step(Recipe::Softmax, &mut learner, &batch, 0.1)["loss"];
        let mut last = first;
        for _ in 0..30 {
            last = step(Recipe::Softmax, &mut learner, &batch, 0.1)["loss"];
        }
        assert!(first > 2.0 && last < 0.5 * first, "{first} → {last}");
    }
}
