//! Fresh SGLD chains from a trained model ([`Evaluation::gen_init`], [`Evaluation::sample`], also
//! behind `sadajem sample` and the FID's `fresh` protocol), and `eval`'s generation driver:
//! sample grids and how the samples' energies and classes compare with the test images'.
use super::evaluate::{to_vec, Evaluation};
use super::feature_stats::bar;
use crate::config::{InitKind, NetMode};
use crate::data::split;
use crate::model::Mode;
use crate::records::eval::{ChainSettings, GenerationRecord};
use crate::report::grid;
use crate::sampler::{init, sgld};
use anyhow::Result;
use indicatif::ProgressBar;
use tch::{Device, Kind, Tensor};

impl Evaluation<'_> {
    /// The starting points of fresh chains.
    pub fn gen_init(&self) -> Result<init::Init> {
        let t = &self.test;
        let shape = [t.channels as i64, t.height as i64, t.width as i64];
        Ok(match self.cfg.eval.gen_init {
            InitKind::Uniform => init::Init::Uniform { shape },
            InitKind::Informative => {
                let train = self.train_set()?;
                let idx = split::train_valid(self.cfg, train.n).0;
                let cov = init::Covariance::from_config(&self.cfg.sampler);
                let cache = self.run.init_cache();
                init::Init::Informative(init::informative_cached(&cache, train, &idx, cov, self.device)?)
            }
        })
    }

    /// Fresh chains from `init`: `n` samples, of class `class` if given, run with the run's step
    /// rule and the `eval.gen_*` settings, in batches.
    pub fn sample(&self, init: &init::Init, n: usize, class: Option<i64>, progress: &ProgressBar) -> Tensor {
        let e = &self.cfg.eval;
        let mut s = self.cfg.sampler.clone();
        (s.steps, s.step_size, s.noise) = (e.gen_steps, e.gen_step_size, e.gen_noise);
        // Batch statistics as in training, without touching the saved running statistics.
        let mode = match s.net_mode {
            NetMode::Train => Mode::TrainFrozenStats,
            NetMode::Eval => Mode::Eval,
        };
        let batch = s.batch_size.max(1);
        let mut parts = vec![];
        let mut left = n;
        while left > 0 {
            let b = batch.min(left) as i64;
            let (x0, target) = match class {
                Some(c) => (init.draw_class(c, b, self.device), Some(Tensor::full([b], c, (Kind::Int64, self.device)))),
                None => (init.draw(b, self.device), None),
            };
            parts.push(sgld::run(&self.net, &x0, &s, mode, target.as_ref()).to_device(Device::Cpu));
            left -= b as usize;
            progress.inc(b as u64);
        }
        Tensor::cat(&parts, 0)
    }

    /// The chain settings a record lists.
    pub(super) fn chain_settings(&self) -> ChainSettings {
        let e = &self.cfg.eval;
        ChainSettings { gen_init: e.gen_init, gen_steps: e.gen_steps, gen_step_size: e.gen_step_size, gen_noise: e.gen_noise }
    }

    /// Grids of fresh unconditional and class-conditional samples (and of the replay buffer),
    /// their mean LSE against the test images', and how many conditional ones hit their class.
    pub(super) fn generation(&self) -> Result<(GenerationRecord, String)> {
        let e = &self.cfg.eval;
        let init = self.gen_init()?;
        let classes = self.test.num_classes;
        let progress = bar(e.gen_n + classes * e.gen_per_class, "sampling");
        let free = self.sample(&init, e.gen_n, None, &progress);
        let per_class: Vec<Tensor> = (0..classes as i64).map(|c| self.sample(&init, e.gen_per_class, Some(c), &progress)).collect();
        progress.finish_and_clear();
        let per_class = Tensor::cat(&per_class, 0);
        grid::save_grid(&free, &self.out.join("samples_fresh.png"))?;
        grid::save_grid_columns(&per_class, e.gen_per_class, &self.out.join("samples_per_class.png"))?;
        let mut files = vec!["samples_fresh.png".to_string(), "samples_per_class.png".to_string()];
        if let Some(buffer) = &self.buffer {
            let take = buffer.size()[0].min(100);
            grid::save_grid(&buffer.narrow(0, 0, take), &self.out.join("samples_buffer.png"))?;
            files.push("samples_buffer.png".into());
        }
        let mean_lse = |x: &Tensor| tch::no_grad(|| to_vec(&self.lse(&x.to_device(self.device)))).iter().sum::<f64>() / x.size()[0] as f64;
        let (x_test, _) = Self::images(&self.test, &self.test_idx[..self.test.n.min(500)]);
        let targets = Tensor::arange(classes as i64, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(e.gen_per_class as i64, None, None);
        let hit = tch::no_grad(|| self.classify(&per_class)).argmax(1, false).to_device(Device::Cpu).eq_tensor(&targets);
        let class_match = hit.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        let (lse_samples, lse_data) = (mean_lse(&free), mean_lse(&x_test));
        let record = GenerationRecord {
            n: e.gen_n,
            per_class: e.gen_per_class,
            mean_lse_samples: lse_samples,
            mean_lse_test: lse_data,
            class_conditional_match: class_match,
            protocol: format!("fresh chains from the {:?} init, the run's {:?} step rule", e.gen_init, self.cfg.sampler.kind).to_lowercase(),
            settings: self.chain_settings(),
            plots: files,
        };
        let summary = format!(
            "mean LSE samples {lse_samples:.2} vs test {lse_data:.2}; {:.0}% of class-conditional samples classified as their class",
            100.0 * class_match
        );
        Ok((record, summary))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::InitKind;
    use crate::eval::evaluate::tiny;

    #[test]
    fn uniform_chains_give_grids_and_a_record() {
        let mut cfg = tiny::config();
        (cfg.eval.gen_init, cfg.eval.gen_steps, cfg.eval.gen_n, cfg.eval.gen_per_class) = (InitKind::Uniform, 2, 4, 2);
        let dir = tempfile::tempdir().unwrap();
        let ev = tiny::evaluation(&cfg, dir.path(), 20);
        let (r, _) = ev.generation().unwrap();
        assert_eq!((r.n, r.per_class), (4, 2));
        assert!(r.mean_lse_samples.is_finite() && r.mean_lse_test.is_finite(), "{r:?}");
        assert!((0.0..=1.0).contains(&r.class_conditional_match), "{r:?}");
        assert_eq!(r.plots, ["samples_fresh.png", "samples_per_class.png"], "no buffer, no buffer grid");
        assert_eq!(r.settings.gen_init, InitKind::Uniform);
        assert!(r.protocol.starts_with("fresh chains from the uniform init"), "{}", r.protocol);
        assert!(r.plots.iter().all(|p| ev.out.join(p).exists()));
    }
}
