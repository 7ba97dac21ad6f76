//! channels_last (the Fashion/MNIST presets' layout) changes the kernels, not the arithmetic: a
//! SADA-JEM iteration — the clipped sampler, both passes, SGD — ends at the weights the
//! contiguous layout reaches, up to float rounding (other summation orders in the convolutions).
//! Without SAM that is rounding itself (measured ≤ 2.6e-6 of each variable's size); ASAM at the
//! presets' ρ = 2 perturbs the weights by twice their own size (‖e/w‖ = ρ) before the second
//! gradient, which amplifies those differences (measured ≤ 2.2e-3). A wrong layout would be off
//! by the variables' size itself.
//!
//! A test binary of its own, so that nothing runs beside it in the process: tests sharing
//! libtorch's threads moved these sums by up to 3.5e-4 (ρ = 0) and 1.4e-2 (ρ = 2) of a variable,
//! more than the layout does. Both runs start from copies of one network, batch and chain start,
//! and nothing after that draws random numbers (SADA-JEM's sampler has no noise).
use sadajem::config::{Config, ModelConfig, Recipe, SamplerConfig};
use sadajem::sampler::sgld;
use sadajem::train::recipe::{gradient_pass, sam_pass, sampler_mode, Samples};
use sadajem::train::session::new_learner;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn a_channels_last_iteration_matches_the_contiguous_one_up_to_rounding() {
    for (rho, tolerance) in [(0.0, 1e-5), (2.0, 5e-3)] {
        let mut cfg = Config { model: ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() }, ..Config::default() };
        (cfg.train.recipe, cfg.optim.sam_rho, cfg.data.channels, cfg.data.image_size) = (Recipe::Sadajem, rho, 1, 28);
        cfg.sampler = SamplerConfig { batch_size: 8, steps: 2, ..SamplerConfig::default() };
        let set = sadajem::bench::synthetic_set(&cfg, 16);
        tch::manual_seed(3);
        let start = nn::VarStore::new(Device::Cpu);
        let _ = new_learner(&cfg, &start, &set);
        let uniform = |n: i64| Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let lab = sadajem::data::batches::Batch { x: uniform(16), y: Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10) };
        let (x_data, x0) = (uniform(8), uniform(8));
        let run = |channels_last: bool| {
            let cfg = Config { train: sadajem::config::TrainConfig { channels_last, ..cfg.train.clone() }, ..cfg.clone() };
            let mut vs = nn::VarStore::new(Device::Cpu);
            let (_, mut learner) = new_learner(&cfg, &vs, &set);
            vs.copy(&start).unwrap();
            let x = sgld::run(&learner.net, &x0, &cfg.sampler, sampler_mode(&cfg), None);
            let (stats, _) = gradient_pass(&cfg, &learner, &lab, Some((&x_data, Samples::Given(&x)))).unwrap();
            if learner.sam.is_some() {
                sam_pass(&cfg, &learner, &lab, Some((&x_data, &x))).unwrap();
            }
            learner.opt.step(&learner.params, 0.05);
            (stats, vs.variables(), x)
        };
        let (nchw, w_nchw, x_nchw) = run(false);
        let (nhwc, w_nhwc, x_nhwc) = run(true);
        assert!(!w_nhwc["layer1.0.conv1.weight"].is_contiguous(), "the second run is channels_last");
        let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        // Each variable (weights and running statistics) relative to its own size.
        let mut moved = 0f64;
        for (name, w0) in start.variables() {
            let scale = w_nchw[&name].abs().max().double_value(&[]).max(1e-3);
            let diff = gap(&w_nchw[&name], &w_nhwc[&name]) / scale;
            assert!(diff < tolerance, "ρ {rho}, {name}: apart by {diff:e} of its size");
            moved = moved.max(gap(&w_nchw[&name], &w0) / scale);
        }
        assert!(moved > 10.0 * tolerance, "ρ {rho}: the step moved the variables by only {moved:e}");
        assert!(gap(&x_nchw, &x_nhwc) < 1e-5, "ρ {rho}: the samples");
        assert!((nchw.loss - nhwc.loss).abs() < 1e-5 * nchw.loss.abs(), "ρ {rho}: loss {} vs {}", nchw.loss, nhwc.loss);
    }
}
