//! `eval`'s robustness driver: robust accuracy under L∞ and L2 PGD ([`super::attack`]) at each
//! radius of `eval.pgd_*_eps`, optionally through SGLD purification, with a curve per norm.
use super::attack::{self, Pgd};
use super::evaluate::Evaluation;
use super::feature_stats::bar;
use crate::config::PgdNorm;
use crate::model::Mode;
use crate::records::eval::{RobustnessPoint, RobustnessRecord, RobustnessSettings};
use crate::report::plots;
use anyhow::Result;
use std::collections::BTreeMap;
use tch::Tensor;

const PROTOCOL: &str = "PGD on the cross-entropy, steps of sign(g) (Linf) or g/||g|| (L2), projection onto the eps-ball and clamp to [-1, 1]; eps in 1/255 of the [0, 1] range (doubled for the network's [-1, 1] input). `accuracy`: the reference's robust accuracy, an image counts as broken if the clean image, the random start or any iterate is misclassified (SADAJEM bpda_eot_attack.py); `accuracy_final_iterate`: the last iterate alone (an upper bound)";

impl Evaluation<'_> {
    /// Robust accuracy of the first `eval.pgd_n` test images for every norm of `eval.pgd_norms`.
    pub(super) fn robustness(&self) -> Result<(RobustnessRecord, String)> {
        let e = &self.cfg.eval;
        let n = e.pgd_n.min(self.test.n);
        let purify = e.pgd_purify_steps;
        let mut norms = BTreeMap::new();
        let mut plots_written = vec![];
        let mut summary = vec![];
        for &norm in &e.pgd_norms {
            let (points, file) = self.robustness_norm(norm, n)?;
            let shown = points.iter().filter(|p| p.eps > 0.0).take(2);
            summary.extend(shown.map(|p| format!("{norm} {}/255 {:.1}%", p.eps, 100.0 * p.accuracy)));
            plots_written.push(file);
            norms.insert(norm.key().to_string(), points);
        }
        let record = RobustnessRecord {
            norms,
            n,
            protocol: PROTOCOL.into(),
            accuracy: "broken at any step (clean image, random start or any iterate misclassified)".into(),
            accuracy_final_iterate: "the last iterate alone".into(),
            settings: RobustnessSettings {
                pgd_steps: e.pgd_steps,
                pgd_step_size: e.pgd_step_size,
                pgd_random_start: e.pgd_random_start,
                pgd_purify_steps: purify,
                refine_step_size: e.refine_step_size,
                refine_noise: e.refine_noise,
                seed: e.seed,
            },
            plots: plots_written,
        };
        Ok((record, summary.join(", ")))
    }

    /// The points of `norm` at each of its radii, eps 0 added, on the first `n` test images,
    /// and the curve's plot file.
    fn robustness_norm(&self, norm: PgdNorm, n: usize) -> Result<(Vec<RobustnessPoint>, String)> {
        let e = &self.cfg.eval;
        let radii = match norm {
            PgdNorm::Linf => &e.pgd_linf_eps,
            PgdNorm::L2 => &e.pgd_l2_eps,
        };
        let mut radii: Vec<f64> = radii.clone();
        if !radii.contains(&0.0) {
            radii.insert(0, 0.0);
        }
        let batches = n.div_ceil(self.cfg.data.eval_batch_size);
        let progress = bar(radii.len() * batches, &format!("PGD {norm}"));
        let points: Vec<RobustnessPoint> = radii.iter().map(|&eps| self.robust_point(norm, eps, n, &|| progress.inc(1))).collect();
        progress.finish_and_clear();
        let file = format!("robustness_{}.png", norm.key());
        let any: Vec<(f64, f64)> = points.iter().map(|p| (p.eps, p.accuracy)).collect();
        let last: Vec<(f64, f64)> = points.iter().map(|p| (p.eps, p.accuracy_final_iterate)).collect();
        let series = [
            plots::Series { name: &format!("PGD-{} {norm}, broken at any step (reference)", e.pgd_steps), points: &any },
            plots::Series { name: "last iterate only", points: &last },
        ];
        let purify = e.pgd_purify_steps;
        let title = format!(
            "Robust accuracy under {norm} PGD ({n} test images{})",
            if purify > 0 { format!(", {purify} purification steps") } else { String::new() }
        );
        plots::line_chart(&series, "eps (×1/255 of the [0, 1] pixel range)", "accuracy", &title, Some((0.0, 1.0)), &self.out.join(&file))?;
        Ok((points, file))
    }

    /// Accuracy of the first `n` test images under PGD of radius `eps` (/255) in `norm`,
    /// calling `done` after each batch.
    fn robust_point(&self, norm: PgdNorm, eps: f64, n: usize, done: &dyn Fn()) -> RobustnessPoint {
        let e = &self.cfg.eval;
        // /255 of the [0, 1] range is 2/255 of the network's [−1, 1] range.
        let eps_net = eps / 255.0 * 2.0;
        let step = match norm {
            PgdNorm::Linf => e.pgd_step_size / 255.0 * 2.0,
            PgdNorm::L2 => 2.5 * eps_net / e.pgd_steps as f64,
        };
        let p = Pgd { norm, eps: eps_net, steps: if eps > 0.0 { e.pgd_steps } else { 0 }, step_size: step, random_start: e.pgd_random_start };
        let classify = |x: &Tensor| {
            if e.pgd_purify_steps > 0 {
                let lse = |x: &Tensor| self.lse(x);
                let x = attack::purify(&lse, x, e.pgd_purify_steps, e.refine_step_size, e.refine_noise, true);
                self.net.forward(&x, Mode::Eval)
            } else {
                self.net.forward(x, Mode::Eval)
            }
        };
        let (mut never_broken, mut final_correct) = (0.0, 0.0);
        for chunk in self.test_idx[..n].chunks(self.cfg.data.eval_batch_size) {
            let (x, y) = Self::images(&self.test, chunk);
            let (x, y) = (x.to_device(self.device), y.to_device(self.device));
            let attacked = attack::pgd(&classify, &x, &y, &p);
            never_broken += attack::fraction(&attacked.never_broken) * chunk.len() as f64;
            final_correct += attack::fraction(&attacked.final_correct) * chunk.len() as f64;
            done();
        }
        RobustnessPoint {
            eps,
            eps_network_units: eps_net,
            step_size_network_units: step,
            accuracy: never_broken / n as f64,
            accuracy_final_iterate: final_correct / n as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::PgdNorm;
    use crate::eval::evaluate::tiny;

    #[test]
    fn every_norm_gets_eps_zero_first_and_a_curve() {
        let mut cfg = tiny::config();
        (cfg.eval.pgd_n, cfg.eval.pgd_steps) = (10, 1);
        (cfg.eval.pgd_norms, cfg.eval.pgd_linf_eps, cfg.eval.pgd_l2_eps) = (vec![PgdNorm::Linf, PgdNorm::L2], vec![8.0], vec![0.0, 100.0]);
        let dir = tempfile::tempdir().unwrap();
        let ev = tiny::evaluation(&cfg, dir.path(), 20);
        let (r, summary) = ev.robustness().unwrap();
        assert_eq!(r.n, 10);
        let eps = |norm: PgdNorm| r.norms[norm.key()].iter().map(|p| p.eps).collect::<Vec<_>>();
        assert_eq!((eps(PgdNorm::Linf), eps(PgdNorm::L2)), (vec![0.0, 8.0], vec![0.0, 100.0]));
        for p in r.norms.values().flatten() {
            assert!(p.accuracy <= p.accuracy_final_iterate && (0.0..=1.0).contains(&p.accuracy_final_iterate), "{p:?}");
        }
        assert_eq!(r.plots, ["robustness_linf.png", "robustness_l2.png"]);
        assert!(r.plots.iter().all(|p| ev.out.join(p).exists()));
        assert!(summary.starts_with("Linf 8/255 "), "{summary}");
    }
}
