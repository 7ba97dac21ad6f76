//! Sample-quality scores over Inception features: Fréchet Inception Distance (Heusel et al.
//! 2017), Kernel Inception Distance (Bińkowski et al. 2018) and Inception Score (Salimans et al.
//! 2016). Everything here is float64 on the CPU.
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

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
    let off_diagonal_mean = |k: Tensor, len: f64| {
        (k.sum(Kind::Double).double_value(&[]) - k.trace().double_value(&[])) / (len * (len - 1.0))
    };
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
    let mut pick = |t: &Tensor, n: usize| {
        let idx: Vec<i64> = sample(&mut rng, n, size).into_iter().map(|i| i as i64).collect();
        t.index_select(0, &Tensor::from_slice(&idx))
    };
    let values: Vec<f64> = (0..subsets).map(|_| mmd2_unbiased(&pick(x, nx), &pick(y, ny))).collect();
    mean_std(&values)
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

}
