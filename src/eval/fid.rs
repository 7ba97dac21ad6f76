//! Sample-quality scores over Inception features: Fréchet Inception Distance (Heusel et al.
//! 2017), Kernel Inception Distance (Bińkowski et al. 2018) and Inception Score (Salimans et al.
//! 2016). Everything here is float64 on the CPU. Also `eval`'s FID driver: the scores of the
//! replay buffer's and of fresh chains' samples against the dataset's reference statistics.
use super::evaluate::{to_vec, Evaluation};
use super::feature_stats::{self, bar, Stats};
use super::inception::Inception;
use crate::config::FidSamples;
use crate::data::{split, ImageSet, Split};
use crate::records::eval::{FidNetwork, FidProtocol, FidRecord, FidReference, FidSettings};
use anyhow::Result;
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Mean [D] and unbiased covariance [D, D] (divisor N − 1, as `numpy.cov`) of features [N, D].
pub fn stats(features: &Tensor) -> (Tensor, Tensor) {
    let f = features.to_kind(Kind::Double);
    let n = f.size()[0];
    assert!(n >= 2, "statistics need at least two feature vectors, got {n}");
    let mu = f.mean_dim(0, false, Kind::Double);
    let centred = &f - &mu;
    let cov = centred.tr().matmul(&centred) / (n - 1) as f64;
    (mu, cov)
}

/// The symmetric square root of a symmetric positive semi-definite matrix, through its
/// eigendecomposition (round-off negative eigenvalues are clamped to 0).
fn sqrt_psd(a: &Tensor) -> Tensor {
    let sym = (a + a.tr()) / 2.0;
    let (values, vectors) = sym.linalg_eigh("L");
    (&vectors * values.clamp_min(0.0).sqrt().unsqueeze(0)).matmul(&vectors.tr())
}

/// ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½.
///
/// tr (Σ₁Σ₂)^½ is computed as the sum of the square roots of the eigenvalues of the symmetric
/// PSD matrix Σ₁^½ Σ₂ Σ₁^½, which has the same spectrum as Σ₁Σ₂: unlike a general matrix square
/// root (scipy's `sqrtm`, used by pytorch-fid) it stays real and stable when the covariances are
/// singular, as they are whenever there are fewer samples than feature dimensions.
pub fn frechet_distance(mu1: &Tensor, cov1: &Tensor, mu2: &Tensor, cov2: &Tensor) -> f64 {
    let (mu1, mu2) = (mu1.to_kind(Kind::Double), mu2.to_kind(Kind::Double));
    let (cov1, cov2) = (cov1.to_kind(Kind::Double), cov2.to_kind(Kind::Double));
    let root1 = sqrt_psd(&cov1);
    let m = root1.matmul(&cov2).matmul(&root1);
    let m = (&m + m.tr()) / 2.0;
    let tr_covmean = m.linalg_eigvalsh("L").clamp_min(0.0).sqrt().sum(Kind::Double).double_value(&[]);
    let diff = &mu1 - &mu2;
    let mean_term = diff.dot(&diff).double_value(&[]);
    mean_term + cov1.trace().double_value(&[]) + cov2.trace().double_value(&[]) - 2.0 * tr_covmean
}

/// The cubic polynomial kernel of KID: k(x, y) = (x·y / D + 1)³.
fn kernel(a: &Tensor, b: &Tensor) -> Tensor {
    let d = a.size()[1] as f64;
    (a.matmul(&b.tr()) / d + 1.0).pow_tensor_scalar(3)
}

/// Unbiased estimate of MMD² between the distributions of the rows of `x` [m, D] and `y` [n, D]
/// under the KID kernel: within-set sums leave out the diagonal.
pub fn mmd2_unbiased(x: &Tensor, y: &Tensor) -> f64 {
    let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
    let (m, n) = (x.size()[0] as f64, y.size()[0] as f64);
    let off_diagonal_mean = |k: Tensor, len: f64| (k.sum(Kind::Double).double_value(&[]) - k.trace().double_value(&[])) / (len * (len - 1.0));
    let kxx = off_diagonal_mean(kernel(&x, &x), m);
    let kyy = off_diagonal_mean(kernel(&y, &y), n);
    let kxy = kernel(&x, &y).sum(Kind::Double).double_value(&[]) / (m * n);
    kxx + kyy - 2.0 * kxy
}

/// KID: mean and standard deviation of the unbiased MMD² over `subsets` random subsets of
/// `subset_size` rows drawn without replacement from each set (the size is capped by the
/// smaller set), seeded.
pub fn kid(x: &Tensor, y: &Tensor, subsets: usize, subset_size: usize, seed: u64) -> (f64, f64) {
    let (nx, ny) = (x.size()[0] as usize, y.size()[0] as usize);
    let size = subset_size.min(nx).min(ny);
    assert!(size >= 2 && subsets >= 1, "KID needs at least one subset of at least two rows");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f64> = (0..subsets).map(|_| mmd2_unbiased(&random_rows(x, size, &mut rng), &random_rows(y, size, &mut rng))).collect();
    mean_std(&values)
}

/// `size` distinct rows of `t`, chosen by `rng`.
pub fn random_rows(t: &Tensor, size: usize, rng: &mut ChaCha8Rng) -> Tensor {
    let idx: Vec<i64> = sample(rng, t.size()[0] as usize, size).into_iter().map(|i| i as i64).collect();
    t.index_select(0, &Tensor::from_slice(&idx).to_device(t.device()))
}

/// Inception Score: exp(E_x KL(p(y|x) ‖ p(y))) from logits [N, K], computed on `splits` equal
/// consecutive parts; their mean and (population) standard deviation, as in the original code.
pub fn inception_score(logits: &Tensor, splits: usize) -> (f64, f64) {
    let n = logits.size()[0] as usize;
    assert!(splits >= 1 && n >= splits, "{n} samples cannot make {splits} splits");
    let log_p = logits.to_kind(Kind::Double).log_softmax(1, Kind::Double);
    let scores: Vec<f64> = (0..splits)
        .map(|k| {
            let (a, b) = (k * n / splits, (k + 1) * n / splits);
            let part = log_p.narrow(0, a as i64, (b - a) as i64);
            let log_marginal = part.logsumexp([0], true) - ((b - a) as f64).ln();
            let kl = (part.exp() * (&part - log_marginal)).sum_dim_intlist(1, false, Kind::Double);
            kl.mean(Kind::Double).exp().double_value(&[])
        })
        .collect();
    mean_std(&scores)
}

/// The splits the reference scores the Inception Score in: max(1, n // 5000) (SADAJEM
/// `Task/eval_buffer.py` line 144), so the 10 % of a 10,000-image buffer is ONE split. More
/// splits of few images bias IS low (each split's marginal p(y) is estimated from fewer images).
pub fn reference_is_splits(n: usize) -> usize {
    (n / 5000).max(1)
}

/// Mean and population standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

const PROTOCOL: &str = "FID = ||mu1-mu2||^2 + tr S1 + tr S2 - 2 tr (S1 S2)^1/2 on 2048-d pool3 features; KID = unbiased MMD^2, cubic kernel, mean over subsets; IS = exp E KL(p(y|x) || p(y)) over is_splits splits (eval.is_splits = 0: the reference's max(1, n / 5000)) of softmax(pool3 W) without the classifier's bias unless eval.is_bias (only with pytorch-fid's weights, which have the classifier)";

/// The samples a protocol scores: named parts (`all`; or `fid` and `is`) and what they are.
type Samples = (Vec<(&'static str, Tensor)>, String);

impl Evaluation<'_> {
    /// The Inception network's file (`eval.inception` or the usual places).
    pub fn inception_path(&self) -> Result<PathBuf> {
        feature_stats::find_inception(&self.cfg.eval.inception)
    }

    /// FID, KID and (with pytorch-fid's weights) IS of every protocol of `eval.fid_protocols`.
    pub(super) fn fid(&self) -> Result<(FidRecord, String)> {
        let e = &self.cfg.eval;
        let path = self.inception_path()?;
        let net = Inception::load(&path, self.device, e.fid_precision)?;
        let (reference, reference_about) = self.fid_reference(&net, &path)?;
        let mut protocols = BTreeMap::new();
        let mut summary = vec![];
        for &protocol in &e.fid_protocols {
            let result = match self.fid_samples(protocol)? {
                Some(samples) => self.fid_protocol(protocol.key(), samples, &net, &reference, &mut summary)?,
                None => FidProtocol::skipped("the checkpoint has no replay buffer (a softmax run)"),
            };
            protocols.insert(protocol.key().to_string(), result);
        }
        let record = FidRecord {
            protocols,
            reference: reference_about,
            network: FidNetwork {
                file: path.display().to_string(),
                source: format!("{:?}", net.source()),
                inception_score: net.has_logits(),
                precision: Some(net.precision()),
            },
            protocol: PROTOCOL.into(),
            settings: FidSettings {
                fid_protocols: e.fid_protocols.clone(),
                fid_n: e.fid_n,
                fid_buffer_n: e.fid_buffer_n,
                fid_reference: e.fid_reference,
                fid_reference_n: e.fid_reference_n,
                kid_subsets: e.kid_subsets,
                kid_subset_size: e.kid_subset_size,
                is_splits: e.is_splits,
                is_bias: e.is_bias,
                chains: self.chain_settings(),
                seed: e.seed,
            },
        };
        Ok((record, summary.join(", ")))
    }

    /// The reference images' statistics (cached) and what they are.
    fn fid_reference(&self, net: &Inception, path: &Path) -> Result<(Stats, FidReference)> {
        let e = &self.cfg.eval;
        let reference_sets = self.reference_sets()?;
        let refs: Vec<&ImageSet> = reference_sets.iter().collect();
        let total: usize = refs.iter().map(|s| s.n).sum();
        let n_ref = match e.fid_reference_n {
            0 => total,
            n => n.min(total),
        };
        let cache = feature_stats::cache_dir(&e.cache_dir)?;
        let (reference, cache_file) = feature_stats::dataset_stats(net, path, &refs, n_ref, e.kid_subset_size, &cache, "reference")?;
        let about = FidReference {
            dataset: self.cfg.data.dir.display().to_string(),
            split: e.fid_reference,
            n: n_ref,
            cache: cache_file.display().to_string(),
        };
        Ok((reference, about))
    }

    /// The samples of `protocol`: fresh chains, or the replay buffer's most confident; None for
    /// the buffer of a checkpoint without one.
    fn fid_samples(&self, protocol: FidSamples) -> Result<Option<Samples>> {
        let e = &self.cfg.eval;
        if protocol == FidSamples::Fresh {
            let init = self.gen_init()?;
            let progress = bar(e.fid_n, "chains");
            let x = self.sample(&init, e.fid_n, None, &progress);
            progress.finish_and_clear();
            return Ok(Some((vec![("all", x)], format!("{} fresh chains, unfiltered", e.fid_n))));
        }
        let Some(buffer) = &self.buffer else { return Ok(None) };
        let buffer = match e.fid_buffer_n {
            0 => buffer.shallow_clone(),
            n => buffer.narrow(0, 0, (n as i64).min(buffer.size()[0])),
        };
        let (fid_part, is_part) = self.most_confident(&buffer);
        let about = format!(
            "replay buffer of {}: per predicted class the most confident 90% ({}) for FID/KID and 10% ({}) for IS",
            buffer.size()[0],
            fid_part.size()[0],
            is_part.size()[0]
        );
        Ok(Some((vec![("fid", fid_part), ("is", is_part)], about)))
    }

    /// Scores the parts of one protocol's samples: FID and KID of every part but `is`, IS of
    /// every part but `fid`; an empty part is skipped with its reason.
    fn fid_protocol(
        &self,
        protocol: &str,
        (parts, about): Samples,
        net: &Inception,
        reference: &Stats,
        summary: &mut Vec<String>,
    ) -> Result<FidProtocol> {
        let e = &self.cfg.eval;
        let mut result = FidProtocol { about: Some(about), ..FidProtocol::default() };
        for (part, x) in parts {
            if x.size()[0] == 0 {
                // A small buffer can leave no image in some class's top 10 % (int() rounds down).
                result.skip_part(part, format!("no images to score: the buffer's {part} share is empty (raise eval.fid_buffer_n)"));
                summary.push(format!("{protocol} {part}: skipped"));
                continue;
            }
            let (pool, _) = feature_stats::features(net, &x, &format!("{protocol} {part}"))?;
            if part != "is" {
                // KID on all sample features against the reference's fixed share.
                let (mu, cov) = stats(&pool);
                let d = frechet_distance(&mu, &cov, &reference.mu, &reference.cov);
                let (k, k_std) = kid(&pool, &reference.kid_features, e.kid_subsets, e.kid_subset_size, e.seed);
                (result.n, result.fid, result.kid, result.kid_std) = (Some(x.size()[0] as usize), Some(d), Some(k), Some(k_std));
                summary.push(format!("FID {d:.1} ({protocol})"));
            }
            if part != "fid" {
                if let Some(l) = net.classifier_logits(&pool, e.is_bias) {
                    let n = x.size()[0] as usize;
                    let splits = match e.is_splits {
                        0 => reference_is_splits(n),
                        s => s.min(n),
                    };
                    let (is, is_std) = inception_score(&l, splits);
                    (result.inception_score, result.inception_score_std, result.n_is, result.is_splits) =
                        (Some(is), Some(is_std), Some(n), Some(splits));
                    let logits = if e.is_bias { "with the classifier's bias" } else { "without the classifier's bias (the reference's)" };
                    result.is_logits = Some(logits.into());
                }
            }
        }
        Ok(result)
    }

    /// The buffer's most confident 90 % and 10 % per predicted class (the reference's protocol).
    fn most_confident(&self, buffer: &Tensor) -> (Tensor, Tensor) {
        let batch = self.cfg.data.eval_batch_size as i64;
        let n = buffer.size()[0];
        let probs: Vec<Tensor> = (0..n)
            .step_by(batch as usize)
            .map(|s| tch::no_grad(|| self.classify(&buffer.narrow(0, s, batch.min(n - s)))).softmax(1, Kind::Float).to_device(Device::Cpu))
            .collect();
        let (conf, pred) = Tensor::cat(&probs, 0).max_dim(1, false);
        let (conf, pred) = (to_vec(&conf), Vec::<i64>::try_from(pred).expect("labels"));
        let (mut top90, mut top10) = (vec![], vec![]);
        for c in 0..self.test.num_classes as i64 {
            let mut members: Vec<usize> = (0..n as usize).filter(|&i| pred[i] == c).collect();
            members.sort_by(|&a, &b| conf[b].total_cmp(&conf[a]));
            // int(len · ratio), rounded down, as the reference (Task/eval_buffer.py line 41).
            let keep = |share: f64| ((members.len() as f64 * share) as usize).min(members.len());
            top90.extend(members[..keep(0.9)].iter().map(|&i| i as i64));
            top10.extend(members[..keep(0.1)].iter().map(|&i| i as i64));
        }
        let pick = |idx: &[i64]| buffer.index_select(0, &Tensor::from_slice(idx));
        (pick(&top90), pick(&top10))
    }

    /// The whole splits `eval.fid_reference` names (ignoring `data.max_*`).
    fn reference_sets(&self) -> Result<Vec<ImageSet>> {
        let mut cfg = self.cfg.clone();
        (cfg.data.max_train, cfg.data.max_test) = (0, 0);
        Split::all_of(self.cfg.eval.fid_reference).iter().map(|&split| split::load_split(&cfg, split)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_statistics_are_at_distance_zero_and_a_shift_adds_its_square() {
        let f = Tensor::randn([50, 8], (Kind::Double, tch::Device::Cpu));
        let (mu, cov) = stats(&f);
        assert!(frechet_distance(&mu, &cov, &mu, &cov).abs() < 1e-9);
        let shifted = &mu + 0.5;
        let d = frechet_distance(&mu, &cov, &shifted, &cov);
        assert!((d - 8.0 * 0.25).abs() < 1e-9, "{d}");
    }

    #[test]
    fn one_dimensional_gaussians() {
        // FID of N(0, 4) and N(1, 9) is 1 + 4 + 9 − 2·√36 = 2.
        let mu1 = Tensor::from_slice(&[0.0f64]);
        let mu2 = Tensor::from_slice(&[1.0f64]);
        let c1 = Tensor::from_slice(&[4.0f64]).view([1, 1]);
        let c2 = Tensor::from_slice(&[9.0f64]).view([1, 1]);
        assert!((frechet_distance(&mu1, &c1, &mu2, &c2) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn singular_covariances_stay_finite() {
        // 5 samples in 32 dimensions: rank-4 covariances.
        let a = Tensor::randn([5, 32], (Kind::Double, tch::Device::Cpu));
        let b = Tensor::randn([5, 32], (Kind::Double, tch::Device::Cpu));
        let ((m1, c1), (m2, c2)) = (stats(&a), stats(&b));
        let d = frechet_distance(&m1, &c1, &m2, &c2);
        assert!(d.is_finite() && d > 0.0, "{d}");
    }

    #[test]
    fn uniform_predictions_score_one_and_confident_distinct_ones_score_k() {
        let flat = Tensor::zeros([10, 5], (Kind::Double, tch::Device::Cpu));
        assert!((inception_score(&flat, 1).0 - 1.0).abs() < 1e-12);
        // Each sample certain of its own class, classes balanced: IS = K.
        let sharp = Tensor::eye(5, (Kind::Double, tch::Device::Cpu)) * 100.0;
        assert!((inception_score(&sharp, 1).0 - 5.0).abs() < 1e-6);
    }

    /// The reference's IS: the classifier without its bias, one split for fewer than 10,000
    /// images; against NumPy written as the improved-GAN code (scripts/make-metric-fixtures.py).
    #[test]
    fn the_reference_inception_score_drops_the_bias_and_uses_one_split() {
        use crate::eval::inception::classifier_logits;
        use crate::eval::reference::{close, get, matrix, vec};
        let r = get("inception_score_reference");
        let (pool, weight, bias) = (matrix(&r["pool"]), matrix(&r["weight"]), Tensor::from_slice(&vec(&r["bias"])));
        let splits = reference_is_splits(pool.size()[0] as usize);
        assert_eq!(splits, r["splits"].as_u64().unwrap() as usize);
        let (unbiased, std) = inception_score(&classifier_logits(&pool, &weight, None), splits);
        assert!(close(unbiased, r["unbiased"].as_f64().unwrap(), 1e-9), "IS {unbiased} vs {}", r["unbiased"]);
        assert!(close(std, r["unbiased_std"].as_f64().unwrap(), 1e-9) || r["unbiased_std"].as_f64().unwrap() == 0.0);
        let (biased, _) = inception_score(&classifier_logits(&pool, &weight, Some(&bias)), splits);
        assert!(close(biased, r["biased"].as_f64().unwrap(), 1e-9), "biased IS {biased} vs {}", r["biased"]);
        assert!((biased - unbiased).abs() > 0.1, "the fixture must tell the two apart");
        assert_eq!((reference_is_splits(1000), reference_is_splits(9999), reference_is_splits(10_000), reference_is_splits(50_000)), (1, 1, 2, 10));
    }

    #[test]
    fn kid_of_a_set_with_itself_is_near_zero_and_a_shift_is_positive() {
        let x = Tensor::randn([200, 16], (Kind::Double, tch::Device::Cpu));
        let y = Tensor::randn([200, 16], (Kind::Double, tch::Device::Cpu));
        let (same, _) = kid(&x, &y, 10, 100, 1);
        let (shifted, _) = kid(&x, &(&y + 1.0), 10, 100, 1);
        assert!(same.abs() < 0.05, "{same}");
        assert!(shifted > 0.5, "{shifted}");
    }

    #[test]
    fn fid_kid_and_is_match_scipy_and_scikit_learn() {
        use crate::eval::reference::{close, get, matrix};
        let r = get("fid");
        let ((m1, c1), (m2, c2)) = (stats(&matrix(&r["a"])), stats(&matrix(&r["b"])));
        let got = frechet_distance(&m1, &c1, &m2, &c2);
        assert!(close(got, r["fid"].as_f64().unwrap(), 1e-6), "FID {got} vs {}", r["fid"]);

        let r = get("kid");
        let got = mmd2_unbiased(&matrix(&r["x"]), &matrix(&r["y"]));
        assert!(close(got, r["mmd2"].as_f64().unwrap(), 1e-6), "MMD² {got} vs {}", r["mmd2"]);

        let r = get("inception_score");
        let (mean, std) = inception_score(&matrix(&r["logits"]), r["splits"].as_u64().unwrap() as usize);
        assert!(close(mean, r["mean"].as_f64().unwrap(), 1e-6), "IS {mean} vs {}", r["mean"]);
        assert!(close(std, r["std"].as_f64().unwrap(), 1e-6), "IS std {std} vs {}", r["std"]);
    }

    #[test]
    fn most_confident_keeps_the_top_90_and_10_percent_of_each_predicted_class() {
        let cfg = crate::eval::evaluate::tiny::config();
        let dir = tempfile::tempdir().unwrap();
        let mut ev = crate::eval::evaluate::tiny::evaluation(&cfg, dir.path(), 20);
        let buffer = Tensor::rand([40, 1, 8, 8], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let pred = Vec::<i64>::try_from(ev.classify(&buffer).argmax(1, false)).unwrap();
        let per_class: Vec<usize> = (0..3).map(|c| pred.iter().filter(|&&p| p == c).count()).collect();
        let (top90, top10) = ev.most_confident(&buffer);
        assert_eq!(top90.size()[0] as usize, per_class.iter().map(|&k| (k as f64 * 0.9) as usize).sum::<usize>());
        assert_eq!(top10.size()[0] as usize, per_class.iter().map(|&k| (k as f64 * 0.1) as usize).sum::<usize>());
        // No buffer: the buffer protocol has no samples (and is skipped), without touching FID.
        assert!(ev.fid_samples(FidSamples::Buffer).unwrap().is_none());
        ev.buffer = Some(buffer);
        let (parts, about) = ev.fid_samples(FidSamples::Buffer).unwrap().unwrap();
        assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), ["fid", "is"]);
        assert!(about.starts_with("replay buffer of 40: "), "{about}");
    }
}
