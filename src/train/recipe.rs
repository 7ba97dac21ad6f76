//! One training iteration. Recipes are settings (docs/method.md): `softmax` trains on the
//! classification term alone; `jem`, `jempp` and `sadajem` add the likelihood term, and differ
//! only by the sampler, likelihood-data and SAM settings their presets give.
//!
//! The joint iteration:
//! 1. forward the likelihood term's data batch; draw chain starts from the replay buffer, run
//!    the sampler, write the chains back; forward the samples; forward the labelled batch last;
//! 2. L = w_ce·CE(f(x_lab), y) + w_px·(−(mean LSE f(x_data) − mean LSE f(x_sample)))
//!    [+ l2·mean(LSE(x_data)² + LSE(x_sample)²)];
//! 3. with SAM: gradient at w, step to w + e, gradient again at w + e on the same batches and
//!    samples with batch-norm statistics frozen, back to w; then the base optimiser step.
//!
//! The order of step 1 is the reference's (SADAJEM `train_sadajem.py` lines 203–225: `f(x_p_d)`,
//! `sample_q`, `f(x_q)`, then `f.classify(x_lab)`; JEMPP `train_jempp.py`, same order with
//! `--plc alltrain1`, its default). It matters: batch norm with the reference's momentum 0.9
//! keeps running statistics that are ≈ 90 % those of the LAST batch forwarded in train mode,
//! and those are what evaluation uses. Forwarding the samples last instead cost 3.2 points of
//! test accuracy on Fashion-MNIST (issue 14).
use crate::config::{Config, NetMode, Recipe};
use crate::data::batches::Batch;
use crate::model::{energy, Mode, Wrn};
use crate::optim::{sam::Sam, zero_grad, Base};
use crate::sampler::{buffer::ReplayBuffer, init::Init, sgld};
use crate::train::distributed::World;
use std::rc::Rc;
use tch::Tensor;

/// What an iteration reports: the total loss, the classification term and batch accuracy, and
/// for the joint recipes the likelihood term's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    pub ce: f64,
    pub acc: f64,
    pub px: Option<PxStats>,
}

/// The likelihood term of an iteration: L_px, the mean LSE of the data batch and of the
/// samples, and the optional energy penalty (`loss.l2 > 0`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PxStats {
    pub l_px: f64,
    pub lse_data: f64,
    pub lse_sample: f64,
    pub l2: Option<f64>,
}

/// The network and its optimiser: what every recipe updates.
pub struct Learner {
    pub net: Wrn,
    /// Trainable parameters, sorted by name (the optimiser's state follows this order).
    pub params: Vec<Tensor>,
    pub opt: Base,
    pub sam: Option<Sam>,
    /// The other workers of a data-parallel job, whose gradients each pass averages with ours.
    pub world: Option<Rc<World>>,
}

impl Learner {
    /// Averages the gradients over the workers (nothing in a single process).
    fn reduce_gradients(&self) {
        if let Some(w) = &self.world {
            w.average_gradients(&self.params);
        }
    }

    /// The loss outcome every worker agrees on: a divergence on any worker stops all of them at
    /// the same iteration (their collective calls must stay in step).
    fn agree<T>(&self, result: Result<T, Diverged>) -> Result<T, Diverged> {
        match &self.world {
            Some(w) if w.any(result.is_err()) => Err(result.err().unwrap_or_else(|| Diverged { what: "another worker's loss diverged".into() })),
            _ => result,
        }
    }
}

/// The sampler's persistent state: the replay buffer and what restarts its chains.
pub struct Chains {
    pub buffer: ReplayBuffer,
    pub init: Init,
}

/// The iteration was not applied: the likelihood term blew up (docs/method.md §2) or a loss is not
/// finite. The model is as it was before the iteration.
#[derive(Debug)]
pub struct Diverged {
    pub what: String,
}

/// Where a pass's samples come from: run the sampler between the data and sample forwards
/// (an iteration's first pass), or samples already drawn (SAM's second pass; the benchmark).
pub enum Samples<'a> {
    Draw(&'a mut Chains),
    Given(&'a Tensor),
}

/// One iteration. `x_data` is the likelihood term's data batch (ignored by `softmax`);
/// `chains` must be present for the joint recipes.
pub fn step(cfg: &Config, learner: &mut Learner, chains: Option<&mut Chains>, lab: &Batch, x_data: &Tensor, lr: f64) -> Result<StepStats, Diverged> {
    let px = match (cfg.train.recipe, chains) {
        (Recipe::Softmax, _) => None,
        (_, None) => panic!("the joint recipes need the sampler's chains"),
        (_, Some(chains)) => Some((x_data, Samples::Draw(chains))),
    };
    let (stats, x_sample) = gradient_pass(cfg, learner, lab, px)?;
    if learner.sam.is_some() {
        sam_pass(cfg, learner, lab, x_sample.as_ref().map(|s| (x_data, s)))?;
    }
    learner.opt.step(&learner.params, lr);
    Ok(stats)
}

/// Chains drawn from the replay buffer, run by the sampler and written back; returns the
/// (detached) samples.
pub fn sample(cfg: &Config, net: &Wrn, chains: &mut Chains) -> Tensor {
    let draw = chains.buffer.draw(cfg.sampler.batch_size as i64, &chains.init);
    let x = sgld::run(net, &draw.x0, &cfg.sampler, sampler_mode(cfg), None);
    chains.buffer.write(&draw.index, &x);
    x
}

/// How the network runs while training chains sample from it (`sampler.net_mode`).
pub fn sampler_mode(cfg: &Config) -> Mode {
    match cfg.sampler.net_mode {
        NetMode::Train => Mode::Train,
        NetMode::Eval => Mode::Eval,
    }
}

/// Steps 1–2: the forwards in the reference's order, the loss's gradient at the current
/// weights left in the parameters' `.grad`. `px` = (data batch, samples) for the joint recipes;
/// returns the statistics and the samples used.
pub fn gradient_pass(cfg: &Config, learner: &Learner, lab: &Batch, px: Option<(&Tensor, Samples)>) -> Result<(StepStats, Option<Tensor>), Diverged> {
    zero_grad(&learner.params);
    let net = &learner.net;
    let px = px.map(|(x_data, samples)| {
        let data = net.forward(x_data, Mode::Train);
        let x_sample = match samples {
            Samples::Draw(chains) => sample(cfg, net, chains),
            Samples::Given(x) => x.shallow_clone(),
        };
        let sample = net.forward(&x_sample, Mode::Train);
        (data, sample, x_sample)
    });
    let lab_logits = net.forward(&lab.x, Mode::Train);
    let (loss, stats) = learner.agree(joint_loss(cfg, &lab_logits, &lab.y, px.as_ref().map(|(d, s, _)| (d, s))))?;
    loss.backward();
    learner.reduce_gradients();
    Ok((stats, px.map(|(_, _, x)| x)))
}

/// Step 3 (SAM): from the gradient in `.grad`, up to w + e, the gradient there (batch-norm
/// statistics frozen, so the order of the forwards does not matter) replaces it, back to w.
pub fn sam_pass(cfg: &Config, learner: &Learner, lab: &Batch, px: Option<(&Tensor, &Tensor)>) -> Result<(), Diverged> {
    let sam = learner.sam.as_ref().expect("sam_pass needs optim.sam_rho > 0");
    let net = &learner.net;
    let e = sam.ascend(&learner.params);
    zero_grad(&learner.params);
    let mode = Mode::TrainFrozenStats;
    let px_logits = px.map(|(x_data, x_sample)| (net.forward(x_data, mode), net.forward(x_sample, mode)));
    let lab_logits = net.forward(&lab.x, mode);
    let (loss_at_e, _) = learner
        .agree(joint_loss(cfg, &lab_logits, &lab.y, px_logits.as_ref().map(|(d, s)| (d, s))))
        .inspect_err(|_| Sam::descend(&learner.params, &e))?;
    loss_at_e.backward();
    learner.reduce_gradients();
    Sam::descend(&learner.params, &e);
    Ok(())
}

/// The total loss and its reported terms from the logits of the labelled batch and, for the
/// joint recipes, of (data batch, detached samples).
fn joint_loss(cfg: &Config, logits: &Tensor, y: &Tensor, px: Option<(&Tensor, &Tensor)>) -> Result<(Tensor, StepStats), Diverged> {
    let w = &cfg.loss;
    let ce = logits.cross_entropy_for_logits(y);
    let acc = logits.argmax(1, false).eq_tensor(y).to_kind(tch::Kind::Float).mean(None);
    let mut stats = StepStats { ce: ce.double_value(&[]), acc: acc.double_value(&[]), ..StepStats::default() };
    let mut loss = &ce * w.w_ce;
    if let Some((data_logits, sample_logits)) = px {
        let lse_data = energy::lse(data_logits);
        let lse_sample = energy::lse(sample_logits);
        let l_px = -(lse_data.mean(None) - lse_sample.mean(None));
        let l_px_value = l_px.double_value(&[]);
        let mut px_stats = PxStats {
            l_px: l_px_value,
            lse_data: lse_data.mean(None).double_value(&[]),
            lse_sample: lse_sample.mean(None).double_value(&[]),
            l2: None,
        };
        if !l_px_value.is_finite() || l_px_value.abs() > w.diverge_at {
            return Err(Diverged { what: format!("|L_px| = {l_px_value:.4e} exceeds loss.diverge_at = {:e}", w.diverge_at) });
        }
        loss += l_px * w.w_px;
        if w.l2 > 0.0 {
            let penalty = (lse_data.square() + lse_sample.square()).mean(None) * w.l2;
            px_stats.l2 = Some(penalty.double_value(&[]));
            loss += penalty;
        }
        stats.px = Some(px_stats);
    }
    let total = loss.double_value(&[]);
    if !total.is_finite() {
        return Err(Diverged { what: format!("the loss is {total}") });
    }
    stats.loss = total;
    Ok((loss, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, SamplerConfig};
    use tch::{nn, Device, Kind};

    fn tiny(recipe: Recipe, sam_rho: f64) -> (Config, nn::VarStore, Learner, Chains) {
        let mut cfg = Config { model: ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() }, ..Config::default() };
        cfg.train.recipe = recipe;
        cfg.sampler = SamplerConfig { batch_size: 8, steps: 2, ..SamplerConfig::default() };
        let (vs, learner, chains) = build(&cfg, sam_rho);
        (cfg, vs, learner, chains)
    }

    fn build(cfg: &Config, sam_rho: f64) -> (nn::VarStore, Learner, Chains) {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Wrn::new(&vs.root(), &cfg.model, 1, 10);
        let params = vs.trainable_variables();
        let n = params.len();
        let sam = (sam_rho > 0.0).then_some(Sam { rho: sam_rho, adaptive: true });
        let learner = Learner { net, params, opt: Base::Sgd(crate::optim::Sgd::new(0.9, 5e-4, n)), sam, world: None };
        let init = Init::Uniform { shape: [1, 28, 28] };
        let buffer = ReplayBuffer::new(32, &init, 10, 0.05, Device::Cpu);
        (vs, learner, Chains { buffer, init })
    }

    fn batch() -> (Batch, Tensor) {
        let x = Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let y = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10);
        let x_data = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        (Batch { x, y }, x_data)
    }

    #[test]
    fn softmax_steps_lower_the_loss_on_a_fixed_batch() {
        let (cfg, _vs, mut learner, _) = tiny(Recipe::Softmax, 0.0);
        let (lab, x_data) = batch();
        let first = step(&cfg, &mut learner, None, &lab, &x_data, 0.1).unwrap().loss;
        let mut last = first;
        for _ in 0..30 {
            last = step(&cfg, &mut learner, None, &lab, &x_data, 0.1).unwrap().loss;
        }
        assert!(first > 2.0 && last < 0.5 * first, "{first} → {last}");
    }

    #[test]
    fn every_joint_recipe_runs_an_iteration_and_reports_its_terms() {
        for (recipe, rho) in [(Recipe::Jem, 0.0), (Recipe::Jempp, 0.0), (Recipe::Sadajem, 2.0)] {
            let (cfg, vs, mut learner, mut chains) = tiny(recipe, rho);
            let (lab, x_data) = batch();
            let before = chains.buffer.images.copy();
            let w_before: Vec<Tensor> = vs.trainable_variables().iter().map(|t| t.copy()).collect();
            let stats = step(&cfg, &mut learner, Some(&mut chains), &lab, &x_data, 0.01).unwrap();
            let px = stats.px.expect("the likelihood term's statistics");
            for (key, v) in [
                ("loss", stats.loss),
                ("ce", stats.ce),
                ("acc", stats.acc),
                ("l_px", px.l_px),
                ("lse_data", px.lse_data),
                ("lse_sample", px.lse_sample),
            ] {
                assert!(v.is_finite(), "{recipe:?}: {key}");
            }
            let expected = stats.ce + px.l_px;
            assert!((stats.loss - expected).abs() < 1e-4, "{recipe:?}: loss is w_ce·ce + w_px·l_px");
            assert!(!chains.buffer.images.equal(&before), "{recipe:?}: chains written back");
            let moved = vs.trainable_variables().iter().zip(&w_before).any(|(a, b)| !a.equal(b));
            assert!(moved, "{recipe:?}: parameters updated");
        }
    }

    /// With momentum 1 the running statistics are those of the last batch forwarded in train
    /// mode: in the reference's order that is the labelled batch, not the samples (issue 14).
    #[test]
    fn running_statistics_come_from_the_labelled_batch() {
        for (recipe, rho) in [(Recipe::Sadajem, 2.0), (Recipe::Jempp, 0.0)] {
            let (mut cfg, ..) = tiny(recipe, rho);
            cfg.model.bn_momentum = 1.0;
            let (vs, mut learner, mut chains) = build(&cfg, rho);
            let (lab, x_data) = batch();
            let stats = |x: &Tensor| {
                let h = tch::no_grad(|| learner.net.stem(x));
                (h.mean_dim(&[0i64, 2, 3][..], false, Kind::Float), h.var_dim(&[0i64, 2, 3][..], true, false))
            };
            let (lab_mean, lab_var) = stats(&lab.x);
            let (data_mean, _) = stats(&x_data);
            step(&cfg, &mut learner, Some(&mut chains), &lab, &x_data, 0.01).unwrap();
            let vars = vs.variables();
            let (mean, var) = (&vars["layer1.0.bn1.running_mean"], &vars["layer1.0.bn1.running_var"]);
            let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
            assert!(gap(mean, &lab_mean) < 1e-5 && gap(var, &lab_var) < 1e-4, "{recipe:?}: running stats ≠ labelled batch's");
            assert!(gap(mean, &data_mean) > 1e-3, "{recipe:?}: the data batch was forwarded last");
        }
    }

    #[test]
    fn a_blown_up_likelihood_term_is_reported_and_not_applied() {
        let (mut cfg, vs, mut learner, mut chains) = tiny(Recipe::Sadajem, 0.0);
        cfg.loss.diverge_at = 1e-9;
        let (lab, x_data) = batch();
        let w_before: Vec<Tensor> = vs.trainable_variables().iter().map(|t| t.copy()).collect();
        let err = step(&cfg, &mut learner, Some(&mut chains), &lab, &x_data, 0.1).unwrap_err();
        assert!(err.what.contains("diverge_at"), "{}", err.what);
        assert!(vs.trainable_variables().iter().zip(&w_before).all(|(a, b)| a.equal(b)));
    }
}
