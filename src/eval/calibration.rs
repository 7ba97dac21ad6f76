//! Calibration: expected calibration error over equal-width confidence bins (Guo et al. 2017),
//! and the per-bin numbers a reliability diagram draws; `eval`'s calibration driver.
use super::evaluate::{to_vec, Evaluation};
use crate::records::eval::{CalibrationRecord, CalibrationSettings};
use crate::report::plots;
use anyhow::Result;
use tch::Kind;

/// One equal-width confidence bin `(lower, upper]`: the calibration record's type.
pub use crate::records::eval::Bin;

/// Splits predictions by confidence into `n_bins` bins `(i/n, (i+1)/n]`; a confidence of exactly
/// 0 goes to the first bin.
pub fn bins(confidence: &[f64], correct: &[bool], n_bins: usize) -> Vec<Bin> {
    assert_eq!(confidence.len(), correct.len(), "one confidence per prediction");
    assert!(n_bins > 0, "at least one bin");
    let mut sums = vec![(0usize, 0.0f64, 0usize); n_bins];
    for (&c, &ok) in confidence.iter().zip(correct) {
        // Bin i holds (i/n, (i+1)/n]: ceil(c·n) − 1, then checked against the edges as computed
        // (i/n), so a confidence on an edge lands where the comparison says.
        let edge = |i: usize| i as f64 / n_bins as f64;
        let mut i = ((c * n_bins as f64).ceil() as usize).clamp(1, n_bins) - 1;
        while i > 0 && c <= edge(i) {
            i -= 1;
        }
        while i + 1 < n_bins && c > edge(i + 1) {
            i += 1;
        }
        sums[i].0 += 1;
        sums[i].1 += c;
        sums[i].2 += ok as usize;
    }
    sums.iter()
        .enumerate()
        .map(|(i, &(count, conf, right))| {
            let n = count.max(1) as f64;
            Bin {
                lower: i as f64 / n_bins as f64,
                upper: (i + 1) as f64 / n_bins as f64,
                count,
                confidence: if count == 0 { 0.0 } else { conf / n },
                accuracy: if count == 0 { 0.0 } else { right as f64 / n },
            }
        })
        .collect()
}

/// ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|.
pub fn ece(bins: &[Bin]) -> f64 {
    let total: usize = bins.iter().map(|b| b.count).sum();
    if total == 0 {
        return 0.0;
    }
    bins.iter().map(|b| b.count as f64 / total as f64 * (b.accuracy - b.confidence).abs()).sum()
}

impl Evaluation<'_> {
    /// The ECE of the test predictions and their reliability diagram.
    pub(super) fn calibration(&self) -> Result<(CalibrationRecord, String)> {
        let probs = self.test_logits().softmax(1, Kind::Double);
        let (conf, pred) = probs.max_dim(1, false);
        let correct: Vec<bool> = Vec::<i64>::try_from(pred)?.iter().zip(&self.test.labels).map(|(p, l)| p == l).collect();
        let bins = bins(&to_vec(&conf), &correct, self.cfg.eval.ece_bins);
        let ece = ece(&bins);
        let plot = self.out.join("reliability.png");
        let title = format!("Reliability diagram, {} test images", self.test.n);
        plots::reliability_diagram(&bins, ece, &title, &plot)?;
        let record = CalibrationRecord {
            ece,
            protocol: format!("{} equal-width confidence bins (lower, upper], confidence = max softmax", bins.len()),
            bins,
            n: self.test.n,
            settings: CalibrationSettings { ece_bins: self.cfg.eval.ece_bins },
            plots: vec!["reliability.png".into()],
        };
        Ok((record, format!("ECE {:.2}%", 100.0 * ece)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_ece() {
        // Two bins: (0, .5] holds .3 (right) and .5 (wrong): conf .4, acc .5;
        // (.5, 1] holds .6 (right), .9 (right): conf .75, acc 1.
        let b = bins(&[0.3, 0.5, 0.6, 0.9], &[true, false, true, true], 2);
        assert_eq!(b[0].count, 2);
        assert_eq!(b[1].count, 2);
        let expected = 0.5 * (0.5f64 - 0.4).abs() + 0.5 * (1.0f64 - 0.75).abs();
        assert!((ece(&b) - expected).abs() < 1e-12, "{}", ece(&b));
    }

    #[test]
    fn a_bin_edge_belongs_to_the_lower_bin_and_zero_to_the_first() {
        let b = bins(&[0.05, 0.1, 0.0, 1.0], &[true, true, true, true], 20);
        assert_eq!(b[0].count, 2, "0 and .05 fall in (0, .05]");
        assert_eq!(b[1].count, 1, ".1 falls in (.05, .1]");
        assert_eq!(b[19].count, 1);
    }

    #[test]
    fn perfectly_calibrated_is_zero_and_empty_is_zero() {
        let b = bins(&[1.0, 1.0], &[true, true], 20);
        assert_eq!(ece(&b), 0.0);
        assert_eq!(ece(&bins(&[], &[], 20)), 0.0);
    }

    #[test]
    fn matches_numpy_on_stored_predictions() {
        use crate::eval::reference::{close, get, vec};
        let r = get("ece");
        let correct: Vec<bool> = r["correct"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
        let got = ece(&bins(&vec(&r["confidence"]), &correct, r["bins"].as_u64().unwrap() as usize));
        let want = r["ece"].as_f64().unwrap();
        assert!(close(got, want, 1e-6), "{got} vs {want}");
    }

    #[test]
    fn the_driver_writes_bins_and_the_diagram() {
        let cfg = crate::eval::evaluate::tiny::config();
        let dir = tempfile::tempdir().unwrap();
        let ev = crate::eval::evaluate::tiny::evaluation(&cfg, dir.path(), 20);
        let (r, _) = ev.calibration().unwrap();
        assert_eq!(r.bins.len(), cfg.eval.ece_bins);
        assert_eq!(r.bins.iter().map(|b| b.count).sum::<usize>(), 20);
        assert!((0.0..=1.0).contains(&r.ece), "{r:?}");
        assert!(image::open(ev.out.join("reliability.png")).is_ok());
    }
}
