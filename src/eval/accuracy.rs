//! Classification accuracy, and `eval`'s accuracy driver (plain and after SGLD refinement).
use super::attack;
use super::evaluate::Evaluation;
use super::feature_stats::bar;
use crate::records::eval::{AccuracyRecord, AccuracySettings};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// Fraction of `predicted` equal to `labels`.
pub fn accuracy(predicted: &[i64], labels: &[i64]) -> f64 {
    assert_eq!(predicted.len(), labels.len(), "one prediction per label");
    if labels.is_empty() {
        return 0.0;
    }
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len() as f64
}

/// The arg-max class of each row of logits [N, C].
pub fn argmax(logits: &tch::Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(logits.argmax(1, false)).expect("logits are [N, C]")
}

impl Evaluation<'_> {
    /// Test accuracy, and with `eval.refine_steps` also after refining each input.
    pub(super) fn accuracy(&self) -> Result<(AccuracyRecord, String)> {
        let e = &self.cfg.eval;
        let labels = Tensor::from_slice(&self.test.labels);
        let plain = self.test_logits().argmax(1, false).eq_tensor(&labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        let mut record = AccuracyRecord {
            accuracy: plain,
            accuracy_refined: None,
            n: self.test.n,
            protocol: "test set, network in eval mode".into(),
            settings: AccuracySettings { refine_steps: e.refine_steps, refine_step_size: None, refine_noise: None },
        };
        let mut summary = format!("{:.2}%", 100.0 * plain);
        if e.refine_steps > 0 {
            let refined = self.refined_accuracy();
            record.accuracy_refined = Some(refined);
            (record.settings.refine_step_size, record.settings.refine_noise) = (Some(e.refine_step_size), Some(e.refine_noise));
            summary += &format!(" ({:.2}% after {} SGLD refinement steps)", 100.0 * refined, e.refine_steps);
        }
        Ok((record, summary))
    }

    /// Accuracy on the test images after `eval.refine_steps` SGLD steps each.
    fn refined_accuracy(&self) -> f64 {
        let e = &self.cfg.eval;
        let chunks: Vec<&[usize]> = self.test_idx.chunks(self.cfg.data.eval_batch_size).collect();
        let progress = bar(chunks.len(), "refining");
        let mut right = 0i64;
        for chunk in chunks {
            let (x, y) = Self::images(&self.test, chunk);
            let lse = |x: &Tensor| self.lse(x);
            let refined = attack::purify(&lse, &x.to_device(self.device), e.refine_steps, e.refine_step_size, e.refine_noise, false);
            let pred = tch::no_grad(|| self.classify(&refined)).argmax(1, false).to_device(Device::Cpu);
            right += pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            progress.inc(1);
        }
        progress.finish_and_clear();
        right as f64 / self.test.n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_matches() {
        assert_eq!(accuracy(&[1, 2, 3, 4], &[1, 0, 3, 0]), 0.5);
        let l = tch::Tensor::from_slice(&[0.1f32, 0.9, 0.8, 0.2]).view([2, 2]);
        assert_eq!(argmax(&l), vec![1, 0]);
    }

    #[test]
    fn the_driver_reports_plain_and_refined_accuracy() {
        let mut cfg = crate::eval::evaluate::tiny::config();
        let dir = tempfile::tempdir().unwrap();
        let ev = crate::eval::evaluate::tiny::evaluation(&cfg, dir.path(), 20);
        let (r, _) = ev.accuracy().unwrap();
        assert!((0.0..=1.0).contains(&r.accuracy) && r.n == 20, "{r:?}");
        assert!(r.accuracy_refined.is_none() && r.settings.refine_step_size.is_none(), "no refinement by default: {r:?}");
        cfg.eval.refine_steps = 1;
        let ev = crate::eval::evaluate::tiny::evaluation(&cfg, dir.path(), 20);
        let (r, summary) = ev.accuracy().unwrap();
        assert!(r.accuracy_refined.is_some_and(|a| (0.0..=1.0).contains(&a)), "{r:?}");
        assert_eq!(r.settings.refine_noise, Some(cfg.eval.refine_noise));
        assert!(summary.contains("after 1 SGLD refinement steps"), "{summary}");
    }
}
