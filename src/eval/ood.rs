//! Out-of-distribution detection: how well a score separates in-distribution inputs (the
//! positives, expected to score higher) from OOD ones. AUROC counts ties as one half, like
//! scikit-learn's `roc_auc_score`; FPR95 is the false-positive rate at the first threshold whose
//! true-positive rate reaches 95 %. Also `eval`'s OOD driver: the three scores of the test
//! images against each set of `eval.ood_sets`.
use super::evaluate::{to_vec, Evaluation};
use super::feature_stats::bar;
use crate::config::{Noise, OodSource};
use crate::data::{self, FolderOptions, Split};
use crate::model::{energy, Mode};
use crate::records::eval::{OodRecord, OodScore, OodScoreAbout, OodSet, OodSettings};
use crate::report::plots;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Every score with whether it is in-distribution.
fn labelled(scores_in: &[f64], scores_out: &[f64]) -> Vec<(f64, bool)> {
    scores_in.iter().map(|&s| (s, true)).chain(scores_out.iter().map(|&s| (s, false))).collect()
}

/// Area under the ROC curve = P(score_in > score_out) + ½·P(equal), by the rank-sum
/// (Mann–Whitney) identity with average ranks for ties. NaN if either set is empty.
pub fn auroc(scores_in: &[f64], scores_out: &[f64]) -> f64 {
    let (p, n) = (scores_in.len(), scores_out.len());
    if p == 0 || n == 0 {
        return f64::NAN;
    }
    let mut all = labelled(scores_in, scores_out);
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_in = 0.0;
    let mut start = 0;
    while start < all.len() {
        let mut end = start;
        while end + 1 < all.len() && all[end + 1].0 == all[start].0 {
            end += 1;
        }
        // Ranks start..=end (1-based: start+1..=end+1) share their average.
        let avg = (start + end) as f64 / 2.0 + 1.0;
        rank_sum_in += avg * all[start..=end].iter().filter(|x| x.1).count() as f64;
        start = end + 1;
    }
    (rank_sum_in - (p * (p + 1)) as f64 / 2.0) / (p as f64 * n as f64)
}

/// False-positive rate at 95 % true-positive rate: sweeping the threshold down over the distinct
/// scores, the FPR at the first point where TPR ≥ 0.95 (scikit-learn's `roc_curve` with
/// `drop_intermediate=False`, then the first index with tpr ≥ 0.95).
pub fn fpr_at_tpr(scores_in: &[f64], scores_out: &[f64], tpr_target: f64) -> f64 {
    let (p, n) = (scores_in.len(), scores_out.len());
    if p == 0 || n == 0 {
        return f64::NAN;
    }
    let mut all = labelled(scores_in, scores_out);
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < all.len() {
        // Everything with this score is accepted at once.
        let s = all[i].0;
        while i < all.len() && all[i].0 == s {
            if all[i].1 {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        if tp as f64 / p as f64 >= tpr_target {
            return fp as f64 / n as f64;
        }
    }
    1.0
}

/// The scores' keys in the record and what they are.
const SCORES: [(&str, &str); 3] = [("log_px", "log p(x) + log Z = LSE(f(x))"), ("max_softmax", "max p(y|x)"), ("grad_norm", "-||grad_x LSE(f(x))||")];

/// Per-sample L2 norm over all but the first dimension.
fn norms(x: &Tensor) -> Tensor {
    x.flatten(1, -1).norm_scalaropt_dim(2.0, [1], false)
}

/// `kind` noise of `shape`, in the network's [−1, 1] pixel range (OOD sets, `sadajem fid`'s
/// noise side).
pub fn noise(kind: Noise, shape: [i64; 4]) -> Tensor {
    let cpu = (Kind::Float, Device::Cpu);
    match kind {
        Noise::Uniform => Tensor::rand(shape, cpu) * 2.0 - 1.0,
        Noise::Gaussian => Tensor::randn(shape, cpu).clamp(-1.0, 1.0),
    }
}

impl Evaluation<'_> {
    /// The three OOD scores of every image of `x` (higher = more in-distribution):
    /// LSE(f(x)) = log p(x) + log Z, max p(y|x), and −‖∇x LSE(f(x))‖ of each sample.
    fn ood_scores(&self, x: &Tensor, what: &str) -> [Vec<f64>; 3] {
        let n = x.size()[0];
        let batch = self.cfg.data.eval_batch_size as i64;
        let progress = bar(((n + batch - 1) / batch) as usize, what);
        let mut out: [Vec<f64>; 3] = Default::default();
        for start in (0..n).step_by(batch as usize) {
            let xb = x.narrow(0, start, batch.min(n - start)).to_device(self.device).set_requires_grad(true);
            let logits = self.net.forward(&xb, Mode::Eval);
            let lse = energy::lse(&logits);
            let g = Tensor::run_backward(&[lse.sum(Kind::Float)], &[&xb], false, false).pop().expect("one gradient");
            out[0].extend(to_vec(&lse.detach()));
            out[1].extend(to_vec(&logits.detach().softmax(1, Kind::Float).max_dim(1, false).0));
            out[2].extend(to_vec(&-norms(&g)));
            progress.inc(1);
        }
        progress.finish_and_clear();
        out
    }

    /// An OOD set of `n` images shaped like the test images. Returns its name, its images and
    /// what it is.
    fn ood_set(&self, source: &OodSource, n: usize, rng: &mut ChaCha8Rng) -> Result<(String, Tensor, String)> {
        let t = &self.test;
        let shape = [n as i64, t.channels as i64, t.height as i64, t.width as i64];
        Ok(match source {
            OodSource::Interp => {
                let mut a = self.test_idx.clone();
                a.shuffle(rng);
                let mut b = a.clone();
                b.shuffle(rng);
                let (xa, _) = Self::images(t, &a[..n]);
                let (xb, _) = Self::images(t, &b[..n]);
                (source.to_string(), (xa + xb) / 2.0, "(x_i + x_j)/2 of random test-image pairs".into())
            }
            OodSource::Noise(kind) => {
                let about = match kind {
                    Noise::Uniform => "U[-1, 1] per pixel",
                    Noise::Gaussian => "N(0, 1) per pixel, clamped to [-1, 1]",
                };
                (source.to_string(), noise(*kind, shape), about.into())
            }
            OodSource::Dataset(dir) => self.ood_dataset(dir, n)?,
        })
    }

    /// The first `n` test images of the dataset in `dir`, converted to the test images'
    /// channels and size.
    fn ood_dataset(&self, path: &Path, n: usize) -> Result<(String, Tensor, String)> {
        let t = &self.test;
        let dir = path.display();
        let entry = || format!("eval.ood_sets entry `{dir}` (not interp, uniform or gaussian, so a dataset directory)");
        let format = data::detect_format(path).with_context(entry)?;
        let opts = FolderOptions { channels: t.channels, size: t.height };
        let set = data::load(path, format, Split::Test, opts).with_context(entry)?;
        let take = n.min(set.n);
        let (x, _) = Self::images(&set, &(0..take).collect::<Vec<_>>());
        let x = match (set.channels, t.channels) {
            (1, 3) => x.repeat([1, 3, 1, 1]),
            (3, 1) => x.mean_dim(1, true, Kind::Float),
            _ => x,
        };
        let x = if (set.height, set.width) != (t.height, t.width) {
            x.upsample_bilinear2d([t.height as i64, t.width as i64], false, None, None)
        } else {
            x
        };
        let name = path.file_name().map_or(dir.to_string(), |f| f.to_string_lossy().into_owned());
        Ok((name, x, format!("{format} test split of {dir}, converted to {} channel(s), {}×{}", t.channels, t.height, t.width)))
    }

    /// AUROC and FPR95 of every score of `eval.ood_sets` against the first test images, with a
    /// histogram per set and score.
    pub(super) fn ood(&self) -> Result<(OodRecord, String)> {
        let e = &self.cfg.eval;
        if e.ood_sets.is_empty() {
            bail!("eval.ood_sets is empty: name at least one of interp, uniform, gaussian or a dataset directory");
        }
        let n = match e.ood_n {
            0 => self.test.n,
            n => n.min(self.test.n),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(e.seed);
        let (x_in, _) = Self::images(&self.test, &self.test_idx[..n]);
        let scores_in = self.ood_scores(&x_in, "in-dist");
        let mut sets = BTreeMap::new();
        let mut plots_written = vec![];
        let mut summary = vec![];
        for source in &e.ood_sets {
            let (set_name, x_out, about) = self.ood_set(source, n, &mut rng)?;
            let scores_out = self.ood_scores(&x_out, &set_name);
            let mut per_score = BTreeMap::new();
            for (k, (key, label)) in SCORES.iter().enumerate() {
                let auroc = auroc(&scores_in[k], &scores_out[k]);
                let fpr95 = fpr_at_tpr(&scores_in[k], &scores_out[k], 0.95);
                let file = format!("ood_{set_name}_{key}.png");
                let title = format!("{label}: test vs {set_name} (AUROC {auroc:.3})");
                plots::histograms(
                    &[("test (in-distribution)", &scores_in[k]), (set_name.as_str(), &scores_out[k])],
                    label,
                    &title,
                    &self.out.join(&file),
                )?;
                plots_written.push(file);
                per_score.insert(key.to_string(), OodScore { auroc, fpr95 });
                if k == 0 {
                    summary.push(format!("{set_name} {auroc:.3}"));
                }
            }
            sets.insert(set_name, OodSet { n: x_out.size()[0] as usize, about, scores: per_score });
        }
        let record = OodRecord {
            sets,
            n_in: n,
            protocol:
                "in-distribution = test images (positives, scored higher); AUROC with ties counted 1/2; FPR at the first threshold with TPR >= 95%"
                    .into(),
            scores: SCORES.iter().map(|(k, l)| OodScoreAbout { key: k.to_string(), score: l.to_string() }).collect(),
            settings: OodSettings { ood_sets: e.ood_sets.clone(), ood_n: e.ood_n, seed: e.seed },
            plots: plots_written,
        };
        Ok((record, format!("AUROC log p(x): {}", summary.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_reversed_and_tied() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0, 1.0], &[1.0]), 0.5);
        // Pairs (in, out): (2,1) win, (2,2) tie, (0,1) loss, (0,2) loss → 1.5 / 4.
        assert_eq!(auroc(&[2.0, 0.0], &[1.0, 2.0]), 0.375);
        assert!(auroc(&[], &[1.0]).is_nan());
    }

    #[test]
    fn fpr95_hand_computed() {
        // 20 positives 1..=20, negatives at 15.5 and 0.5: TPR reaches 0.95 (19 of 20) at
        // threshold 2, where one negative (15.5) is accepted.
        let pos: Vec<f64> = (1..=20).map(|v| v as f64).collect();
        assert_eq!(fpr_at_tpr(&pos, &[15.5, 0.5], 0.95), 0.5);
        // Ties between the sets are accepted together.
        assert_eq!(fpr_at_tpr(&[1.0], &[1.0, 0.0], 0.95), 0.5);
    }

    #[test]
    fn matches_scikit_learn_with_ties() {
        use crate::eval::reference::{close, get, vec};
        let r = get("ood");
        let (s_in, s_out) = (vec(&r["scores_in"]), vec(&r["scores_out"]));
        let (a, f) = (auroc(&s_in, &s_out), fpr_at_tpr(&s_in, &s_out, 0.95));
        assert!(close(a, r["auroc"].as_f64().unwrap(), 1e-6), "AUROC {a} vs {}", r["auroc"]);
        assert!(close(f, r["fpr95"].as_f64().unwrap(), 1e-6), "FPR95 {f} vs {}", r["fpr95"]);
    }

    #[test]
    fn the_driver_scores_every_set_and_refuses_unknown_or_no_sets() {
        let mut cfg = crate::eval::evaluate::tiny::config();
        cfg.eval.ood_sets = vec![OodSource::Interp, OodSource::Noise(Noise::Uniform), OodSource::Noise(Noise::Gaussian)];
        cfg.eval.ood_n = 12;
        let dir = tempfile::tempdir().unwrap();
        let ev = crate::eval::evaluate::tiny::evaluation(&cfg, dir.path(), 20);
        let (r, summary) = ev.ood().unwrap();
        assert_eq!(r.sets.keys().collect::<Vec<_>>(), ["gaussian", "interp", "uniform"]);
        assert_eq!(r.n_in, 12);
        for (name, set) in &r.sets {
            assert_eq!(set.n, 12, "{name}");
            assert_eq!(set.scores.len(), 3, "{name}");
            for (key, s) in &set.scores {
                assert!((0.0..=1.0).contains(&s.auroc) && (0.0..=1.0).contains(&s.fpr95), "{name}/{key}: {s:?}");
            }
        }
        assert_eq!(r.plots.len(), 9);
        assert!(r.plots.iter().all(|p| ev.out.join(p).exists()));
        assert!(summary.starts_with("AUROC log p(x): "), "{summary}");

        cfg.eval.ood_sets = vec![OodSource::Dataset(dir.path().join("no-such-dataset"))];
        let ev = crate::eval::evaluate::tiny::evaluation(&cfg, dir.path(), 20);
        let e = format!("{:#}", ev.ood().unwrap_err());
        assert!(e.contains("eval.ood_sets entry") && e.contains("no-such-dataset"), "{e}");
        cfg.eval.ood_sets = vec![];
        let ev = crate::eval::evaluate::tiny::evaluation(&cfg, dir.path(), 20);
        assert!(ev.ood().unwrap_err().to_string().contains("eval.ood_sets is empty"));
    }
}
