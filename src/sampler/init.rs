//! Where SGLD chains start (docs/method.md §3): uniform noise U[-1, 1], or JEM++'s "informative"
//! start, one Gaussian `N(μ_c, Σ_c + 1e-4·I)` per class fitted to the un-augmented training
//! images, sampled and clamped to [-1, 1].
//!
//! Every random number comes from libtorch's default generator of the device the draw runs on
//! (`Tensor::randn`, `randint`, `uniform_`), the generator a checkpoint saves for exact resume.
use crate::data::{augment, ImageSet};
use crate::store::checkpoint;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Added to every class covariance (JEM++): it keeps the Gaussian proper for pixels that never
/// vary in a class (Fashion-MNIST's borders), and so the Cholesky factor defined.
pub const JITTER: f64 = 1e-4;

/// How each class covariance is represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Covariance {
    /// `Σ_c + 1e-4·I` exactly, stored as its Cholesky factor: K·D² floats
    /// (CIFAR-10: 10·3072² ≈ 377 MB; CIFAR-100 would need ≈ 3.8 GB).
    Full,
    /// `Σ_c ≈ V_r diag(s²/N) V_rᵀ + diag(residual)`, plus `1e-4·I`: the top-`rank` right singular
    /// vectors `V_r` (singular values `s`) of the centred class data, and on the diagonal the part
    /// of each pixel's variance they leave out, so per-pixel variances are exact. K·rank·D floats.
    ///
    /// The centred data of a class with N_c images has rank at most min(N_c − 1, D), so with
    /// `rank ≥ min(N_c − 1, D)` nothing is left out: the residual is zero and this *equals* the
    /// full covariance (CIFAR-100, 500 images a class: rank 499). With a smaller rank it keeps
    /// the `rank` strongest pixel correlations (the best rank-r approximation of the empirical
    /// covariance) and treats what remains as independent per-pixel noise.
    LowRank { rank: usize },
}

impl Covariance {
    /// `sampler.covariance` (and `sampler.rank`).
    pub fn from_config(s: &crate::config::SamplerConfig) -> Covariance {
        match s.covariance {
            crate::config::CovarianceKind::Full => Covariance::Full,
            crate::config::CovarianceKind::Lowrank => Covariance::LowRank { rank: s.rank },
        }
    }
}

/// The per-class factors, all f32 on the Gaussians' device.
enum Factor {
    /// Cholesky factors L_c of Σ_c + 1e-4·I, lower-triangular: [K, D, D].
    Full { chol: Tensor },
    /// `basis` [K, r, D]: rows are the right singular vectors; `scale` [K, r]: s/√N_c (the
    /// standard deviation along each); `diag_std` [K, D]: sqrt(residual variance + 1e-4).
    /// A class with fewer than r directions has zero rows and scales in the tail.
    LowRank { basis: Tensor, scale: Tensor, diag_std: Tensor },
}

/// One Gaussian per class over flattened images (D = C·H·W), in the pixel scale of
/// [`augment::scale`].
pub struct ClassGaussians {
    /// [K, D] f32.
    mean: Tensor,
    factor: Factor,
    /// The representation asked for (a `LowRank` rank above what the data holds is kept as
    /// asked; the factor tensors hold the effective rank).
    covariance: Covariance,
    /// [C, H, W].
    shape: [i64; 3],
    /// Training images per class the fit saw.
    counts: Vec<usize>,
    device: Device,
}

/// What `save` writes next to the tensors.
#[derive(Serialize, Deserialize)]
struct Saved {
    covariance: Covariance,
    shape: [i64; 3],
    counts: Vec<usize>,
    jitter: f64,
}

impl fmt::Debug for ClassGaussians {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassGaussians")
            .field("covariance", &self.covariance)
            .field("shape", &self.shape)
            .field("counts", &self.counts)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The images of `idx` grouped by class; every class needs at least two.
fn members(set: &ImageSet, idx: &[usize]) -> Result<Vec<Vec<usize>>> {
    let k = set.num_classes;
    ensure!(k > 0, "informative init: the training set has no classes");
    let mut members = vec![vec![]; k];
    for &i in idx {
        ensure!(i < set.n, "informative init: image index {i} out of range ({} images)", set.n);
        let y = set.labels[i];
        ensure!((0..k as i64).contains(&y), "informative init: image {i} has label {y}, outside 0..{k}");
        members[y as usize].push(i);
    }
    for (c, m) in members.iter().enumerate() {
        if m.len() < 2 {
            bail!(
                "informative init: class {c} has {} training image(s), and a Gaussian with a covariance \
                 needs at least 2; use the uniform init or a split with more images of class {c}",
                m.len()
            );
        }
    }
    Ok(members)
}

impl ClassGaussians {
    /// Fits one Gaussian per class to images `idx` of `set`, un-augmented, scaled exactly as
    /// [`augment::scale`]: mean and BIASED (1/N) covariance, plus 1e-4·I. Computed one class
    /// at a time on `device` and kept there. A class with fewer than 2 images is an error naming it.
    ///
    /// The arithmetic is f64, storage f32. A class covariance has eigenvalues from O(10–100)
    /// down to ~0 (Fashion-MNIST: 6e-8 before the jitter), so only the 1e-4 jitter keeps the
    /// smallest directions positive. f32's rounding (1.2e-7 relative), accumulated over
    /// thousands of images in XᵀX, can be as large as that jitter, and an f32 Cholesky can then
    /// fail as "not positive-definite"; f64's 2.2e-16 leaves it intact. The same holds for the
    /// eigen/singular vectors and for `variance − explained`, a difference of nearly equal numbers.
    ///
    /// Memory: `Full` makes one D×D f64 matrix per class in turn (75 MB for CIFAR). `LowRank`
    /// makes none when N_c ≤ D (a thin SVD of the N_c×D data); with N_c > D it takes the
    /// eigenvectors of the D×D covariance, again one class at a time. Only K·r·D floats are kept.
    pub fn fit(set: &ImageSet, idx: &[usize], cov: Covariance, device: Device) -> Result<Self> {
        let members = members(set, idx)?;
        let (k, d) = (set.num_classes as i64, set.image_len() as i64);
        let shape = [set.channels as i64, set.height as i64, set.width as i64];
        let f32s = (Kind::Float, device);
        let f64s = (Kind::Double, device);
        let mean = Tensor::zeros([k, d], f32s);
        let factor = match cov {
            Covariance::Full => Factor::Full { chol: Tensor::zeros([k, d, d], f32s) },
            Covariance::LowRank { rank } => {
                ensure!(rank >= 1, "informative init: a low-rank covariance needs rank ≥ 1");
                let most = members.iter().map(Vec::len).max().unwrap_or(0) as i64;
                let r = (rank as i64).min(d).min(most);
                Factor::LowRank { basis: Tensor::zeros([k, r, d], f32s), scale: Tensor::zeros([k, r], f32s), diag_std: Tensor::zeros([k, d], f32s) }
            }
        };
        for (c, m) in members.iter().enumerate() {
            let n = m.len() as i64;
            let pixels: Vec<f32> = m.iter().flat_map(|&i| set.image(i).iter().map(|&v| augment::scale(v))).collect();
            let x = Tensor::from_slice(&pixels).view([n, d]).to_device(device).to_kind(Kind::Double);
            let mu = x.mean_dim(0, false, Kind::Double);
            let xc = &x - &mu;
            drop(x);
            mean.get(c as i64).copy_(&mu);
            match &factor {
                Factor::Full { chol } => {
                    let sigma = xc.tr().matmul(&xc) / n as f64 + Tensor::eye(d, f64s) * JITTER;
                    let l = sigma.f_linalg_cholesky(false).with_context(|| format!("informative init: Cholesky factor of class {c}'s covariance"))?;
                    chol.get(c as i64).copy_(&l);
                }
                Factor::LowRank { basis, scale, diag_std } => {
                    // The principal directions and their standard deviations s/√N, strongest first.
                    let r = basis.size()[1];
                    let (sd, vr) = if n > d {
                        // More images than pixels: the eigenvectors of the D×D covariance are the
                        // same directions, found with one matrix product and a D×D eigensolver
                        // instead of an SVD that also builds the N×D factor U.
                        let sigma = xc.tr().matmul(&xc) / n as f64;
                        let (w, v) = sigma.f_linalg_eigh("L").with_context(|| format!("informative init: eigenvectors of class {c}"))?;
                        let q = r.min(d);
                        (w.narrow(0, d - q, q).flip([0]).clamp_min(0.0).sqrt(), v.narrow(1, d - q, q).flip([1]).tr())
                    } else {
                        // Thin SVD: factors N×N and N×D, no D×D matrix. `svd` rather than
                        // `linalg_svd`: tch makes the latter's optional `driver` a required
                        // string, and libtorch takes a driver only for CUDA (cuSOLVER) inputs.
                        let (_, s, v) = xc.f_svd(true, true).with_context(|| format!("informative init: SVD of class {c}"))?;
                        let q = r.min(s.size()[0]);
                        (s.narrow(0, 0, q) / (n as f64).sqrt(), v.narrow(1, 0, q).tr())
                    };
                    let q = sd.size()[0]; // [q], and vr [q, D]
                    let var = xc.square().mean_dim(0, false, Kind::Double);
                    let explained = (vr.square() * sd.square().unsqueeze(1)).sum_dim_intlist(0, false, Kind::Double);
                    let resid = (var - explained).clamp_min(0.0); // round-off can dip below 0
                    basis.get(c as i64).narrow(0, 0, q).copy_(&vr);
                    scale.get(c as i64).narrow(0, 0, q).copy_(&sd);
                    diag_std.get(c as i64).copy_(&(resid + JITTER).sqrt());
                }
            }
        }
        Ok(ClassGaussians { mean, factor, covariance: cov, shape, counts: members.iter().map(Vec::len).collect(), device })
    }

    pub fn num_classes(&self) -> usize {
        self.counts.len()
    }

    /// [C, H, W].
    pub fn shape(&self) -> [i64; 3] {
        self.shape
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The same Gaussians on `device`.
    pub fn to_device(self, device: Device) -> Self {
        let factor = match self.factor {
            Factor::Full { chol } => Factor::Full { chol: chol.to_device(device) },
            Factor::LowRank { basis, scale, diag_std } => {
                Factor::LowRank { basis: basis.to_device(device), scale: scale.to_device(device), diag_std: diag_std.to_device(device) }
            }
        };
        ClassGaussians { mean: self.mean.to_device(device), factor, device, ..self }
    }

    fn dim(&self) -> i64 {
        self.shape.iter().product()
    }

    /// One draw per entry of `classes` ([n] integers in 0..K, any device): [n, C, H, W] f32 on
    /// the Gaussians' device, clamped to [-1, 1]. Panics on a class outside 0..K.
    ///
    /// The noise for all n rows is drawn first, in one fixed order, so the result does not
    /// depend on how the rows group by class; then each class present is one matmul.
    pub fn sample(&self, classes: &Tensor) -> Tensor {
        let classes = classes.to_device(self.device).to_kind(Kind::Int64);
        let n = classes.size1().expect("classes: a 1-d tensor");
        let (k, d) = (self.num_classes() as i64, self.dim());
        let f32s = (Kind::Float, self.device);
        let noise = match &self.factor {
            Factor::Full { .. } => vec![Tensor::randn([n, d], f32s)],
            Factor::LowRank { basis, .. } => vec![Tensor::randn([n, basis.size()[1]], f32s), Tensor::randn([n, d], f32s)],
        };
        let (present, _) = classes.internal_unique(true, false);
        let present = Vec::<i64>::try_from(&present).expect("class ids");
        if let Some(bad) = present.iter().find(|&&c| !(0..k).contains(&c)) {
            panic!("informative init: class {bad} asked for, the Gaussians cover classes 0..{k}");
        }
        let mut out = self.mean.index_select(0, &classes);
        for c in present {
            let rows = classes.eq(c).nonzero().squeeze_dim(1);
            let dev = match &self.factor {
                Factor::Full { chol } => noise[0].index_select(0, &rows).matmul(&chol.get(c).tr()),
                Factor::LowRank { basis, scale, diag_std } => {
                    (noise[0].index_select(0, &rows) * scale.get(c)).matmul(&basis.get(c)) + noise[1].index_select(0, &rows) * diag_std.get(c)
                }
            };
            let _ = out.index_add_(0, &rows, &dev);
        }
        let [ch, h, w] = self.shape;
        out.clamp(-1.0, 1.0).view([n, ch, h, w])
    }

    /// The covariance a class's draws have before clamping, [D, D] f64 on the CPU.
    #[cfg(test)]
    fn implied_covariance(&self, c: i64) -> Tensor {
        let f64cpu = |t: Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
        match &self.factor {
            Factor::Full { chol } => {
                let l = f64cpu(chol.get(c));
                l.matmul(&l.tr())
            }
            Factor::LowRank { basis, scale, diag_std } => {
                let b = f64cpu(basis.get(c)) * f64cpu(scale.get(c)).unsqueeze(1);
                b.tr().matmul(&b) + f64cpu(diag_std.get(c)).square().diag_embed(0, -2, -1)
            }
        }
    }

    /// Writes the Gaussians (safetensors, the settings as JSON metadata), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = vec![("mean".to_string(), self.mean.shallow_clone())];
        match &self.factor {
            Factor::Full { chol } => tensors.push(("chol".into(), chol.shallow_clone())),
            Factor::LowRank { basis, scale, diag_std } => tensors.extend([
                ("basis".into(), basis.shallow_clone()),
                ("scale".into(), scale.shallow_clone()),
                ("diag_std".into(), diag_std.shallow_clone()),
            ]),
        }
        let state = Saved { covariance: self.covariance, shape: self.shape, counts: self.counts.clone(), jitter: JITTER };
        checkpoint::save(path, &tensors, &state)
    }

    /// Reads what `save` wrote, onto the CPU ([`Self::to_device`] moves it); every tensor's
    /// shape is checked.
    pub fn load(path: &Path) -> Result<Self> {
        let (mut tensors, s): (_, Saved) = checkpoint::load(path)?;
        let bad = |what: String| anyhow!("{}: not an informative-init file: {what}", path.display());
        if s.jitter != JITTER {
            return Err(bad(format!("fitted with jitter {}, this build uses {JITTER}", s.jitter)));
        }
        let (k, d) = (s.counts.len() as i64, s.shape.iter().product::<i64>());
        let mut take = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = tensors.remove(name).ok_or_else(|| bad(format!("no `{name}` tensor")))?;
            if t.size() != shape || t.kind() != Kind::Float {
                return Err(bad(format!("`{name}` is {:?} {:?}, expected Float {shape:?}", t.kind(), t.size())));
            }
            Ok(t)
        };
        let mean = take("mean", &[k, d])?;
        let factor = match s.covariance {
            Covariance::Full => Factor::Full { chol: take("chol", &[k, d, d])? },
            Covariance::LowRank { rank } => {
                let most = s.counts.iter().copied().max().unwrap_or(0) as i64;
                let r = (rank as i64).min(d).min(most);
                Factor::LowRank { basis: take("basis", &[k, r, d])?, scale: take("scale", &[k, r])?, diag_std: take("diag_std", &[k, d])? }
            }
        };
        Ok(ClassGaussians { mean, factor, covariance: s.covariance, shape: s.shape, counts: s.counts, device: Device::Cpu })
    }
}

/// Where the SGLD chains start.
pub enum Init {
    /// U[-1, 1] over images of shape [C, H, W].
    Uniform { shape: [i64; 3] },
    /// JEM++: a draw from a class's Gaussian, clamped to [-1, 1].
    Informative(ClassGaussians),
}

impl Init {
    /// n starting points [n, C, H, W] on `device`; classes drawn uniformly for the informative
    /// init (on the Gaussians' device, with that device's generator).
    pub fn draw(&self, n: i64, device: Device) -> Tensor {
        match self {
            Init::Uniform { shape: [c, h, w] } => Tensor::empty([n, *c, *h, *w], (Kind::Float, device)).uniform_(-1.0, 1.0),
            Init::Informative(g) => {
                let classes = Tensor::randint(g.num_classes() as i64, [n], (Kind::Int64, g.device));
                g.sample(&classes).to_device(device)
            }
        }
    }

    /// n points of class `class` (the uniform init ignores the class).
    pub fn draw_class(&self, class: i64, n: i64, device: Device) -> Tensor {
        match self {
            Init::Uniform { .. } => self.draw(n, device),
            Init::Informative(g) => g.sample(&Tensor::full([n], class, (Kind::Int64, g.device))).to_device(device),
        }
    }
}

/// The informative init's Gaussians, fitted once per run: the first call fits them and writes
/// `cache` (e.g. RUN_DIR/init.safetensors), later calls load it. A cache fitted with another
/// covariance setting, image shape or class sizes is an error naming the file, not silently used.
pub fn informative_cached(cache: &Path, set: &ImageSet, idx: &[usize], cov: Covariance, device: Device) -> Result<ClassGaussians> {
    if !cache.exists() {
        let g = ClassGaussians::fit(set, idx, cov, device)?;
        g.save(cache)?;
        return Ok(g);
    }
    let g = ClassGaussians::load(cache)?;
    let counts: Vec<usize> = members(set, idx)?.iter().map(Vec::len).collect();
    let shape = [set.channels as i64, set.height as i64, set.width as i64];
    let mut differs = vec![];
    if g.covariance != cov {
        differs.push(format!("covariance {:?} (this run: {cov:?})", g.covariance));
    }
    if g.shape != shape {
        differs.push(format!("image shape {:?} (this run: {shape:?})", g.shape));
    }
    if g.counts != counts {
        differs.push(format!(
            "{} classes, {} images (this run: {} classes, {} images)",
            g.counts.len(),
            g.counts.iter().sum::<usize>(),
            counts.len(),
            counts.iter().sum::<usize>()
        ));
    }
    if !differs.is_empty() {
        bail!("{}: cached informative init was fitted with {}; delete it to refit", cache.display(), differs.join(", "));
    }
    Ok(g.to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const CPU: Device = Device::Cpu;

    fn set_of(images: Vec<u8>, labels: Vec<i64>, shape: [usize; 3], num_classes: usize) -> ImageSet {
        let [channels, height, width] = shape;
        ImageSet { n: labels.len(), images, channels, height, width, labels, num_classes }
    }

    /// 1×1×2 images with pixel values v = 25.5·(2k) so that v/127.5 − 1 is a round number:
    /// 0 → −1, 51 → −0.6, 102 → −0.2, 153 → 0.2, 204 → 0.6, 255 → 1.
    /// Image 3 (class 0) is left out of `idx`, so a fit that reads it is caught.
    fn hand() -> (ImageSet, Vec<usize>) {
        #[rustfmt::skip]
        let images = vec![
            51, 102,  // 0: class 0 (−0.6, −0.2)
            51, 102,  // 1: class 1 (−0.6, −0.2)
            153, 153, // 2: class 0 ( 0.2,  0.2)
            255, 0,   // 3: class 0 (  1,   −1), not in idx
            153, 0,   // 4: class 1 ( 0.2, −1.0)
            102, 204, // 5: class 0 (−0.2,  0.6)
            255, 51,  // 6: class 1 ( 1.0, −0.6)
        ];
        (set_of(images, vec![0, 1, 0, 0, 1, 0, 1], [1, 1, 2], 2), vec![0, 1, 2, 4, 5, 6])
    }

    fn approx(a: &Tensor, b: &[f64], tol: f64) -> bool {
        let a = Vec::<f64>::try_from(a.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < tol)
    }

    #[test]
    fn fit_matches_hand_computed_mean_and_covariance() {
        // Class 0: x1 = −0.6, 0.2, −0.2 → mean −0.2, deviations −0.4, 0.4, 0
        //          x2 = −0.2, 0.2, 0.6  → mean  0.2, deviations −0.4, 0, 0.4
        //   var1 = var2 = (0.16 + 0.16)/3 = 0.32/3; cov12 = (0.16 + 0 + 0)/3 = 0.16/3
        // Class 1: x1 = −0.6, 0.2, 1.0  → mean  0.2, deviations −0.8, 0, 0.8
        //          x2 = −0.2, −1.0, −0.6 → mean −0.6, deviations 0.4, −0.4, 0
        //   var1 = 1.28/3; var2 = 0.32/3; cov12 = (−0.32 + 0 + 0)/3 = −0.32/3
        // Biased (1/3, not 1/2), plus 1e-4 on the diagonal.
        let means = [[-0.2, 0.2], [0.2, -0.6]];
        let covs = [[0.10676667, 0.05333333, 0.05333333, 0.10676667], [0.42676667, -0.10666667, -0.10666667, 0.10676667]];
        let (set, idx) = hand();
        for cov in [Covariance::Full, Covariance::LowRank { rank: 2 }] {
            let g = ClassGaussians::fit(&set, &idx, cov, CPU).unwrap();
            assert_eq!((g.num_classes(), g.shape(), g.counts.clone()), (2, [1, 1, 2], vec![3, 3]));
            for c in 0..2 {
                assert!(approx(&g.mean.get(c), &means[c as usize], 1e-6), "{cov:?} class {c}: mean {}", g.mean.get(c));
                let s = g.implied_covariance(c);
                assert!(approx(&s, &covs[c as usize], 1e-6), "{cov:?} class {c}: covariance {s}");
            }
        }
    }

    /// Two classes of 1×2×2 images, `n` each, with correlated pixels (pixel 3 = 255 − pixel 0,
    /// so the covariance is singular without the jitter), all within [80, 175]: the Gaussians
    /// sit more than 5σ inside [-1, 1], so clamping does not bite.
    fn moderate(n: usize) -> ImageSet {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut images, mut labels) = (vec![], vec![]);
        for i in 0..2 * n {
            let c = (i % 2) as u8;
            let a: u8 = rng.gen_range(110..=145);
            let b: u8 = rng.gen_range(110..=145);
            images.extend([a - 30 * c, ((a as u16 + b as u16) / 2) as u8 + 30 * c, b, 255 - a]);
            labels.push(c as i64);
        }
        set_of(images, labels, [1, 2, 2], 2)
    }

    /// Empirical mean and biased covariance of the rows of x [n, D], f64.
    fn moments(x: &Tensor) -> (Tensor, Tensor) {
        let x = x.to_kind(Kind::Double).flatten(1, -1);
        let mu = x.mean_dim(0, false, Kind::Double);
        let xc = &x - &mu;
        (mu, xc.tr().matmul(&xc) / x.size()[0] as f64)
    }

    #[test]
    fn samples_have_the_fitted_mean_and_covariance() {
        let set = moderate(60);
        let idx: Vec<usize> = (0..set.n).collect();
        let draws = 20_000;
        // Rank 1 of 3 leaves a sizeable residual, so the diagonal term of the draws counts.
        for cov in [Covariance::Full, Covariance::LowRank { rank: 1 }] {
            let init = Init::Informative(ClassGaussians::fit(&set, &idx, cov, CPU).unwrap());
            let Init::Informative(g) = &init else { unreachable!() };
            for c in 0..2 {
                let x = init.draw_class(c, draws, CPU);
                assert_eq!(x.size(), [draws, 1, 2, 2]);
                let (mu, s) = moments(&x);
                let want_mu = g.mean.get(c).to_kind(Kind::Double);
                let want = g.implied_covariance(c);
                // Standard errors: σ_i/√n for a mean, √((Σii·Σjj + Σij²)/n) for a covariance.
                let var = want.diagonal(0, 0, 1);
                let se_mu = (&var / draws as f64).sqrt();
                let se = ((var.outer(&var) + want.square()) / draws as f64).sqrt();
                let worst_mu = ((&mu - &want_mu).abs() / se_mu).max().double_value(&[]);
                let worst = ((&s - &want).abs() / &se).max().double_value(&[]);
                assert!(worst_mu < 5.0 && worst < 5.0, "{cov:?} class {c}: {worst_mu:.1}, {worst:.1} standard errors off\n{s}\n{want}");
            }
            // `draw` picks classes uniformly: the mixture's mean is the average of the two means
            // (which differ by 0.24 in pixels 0 and 1; the standard error here is under 0.001).
            let (mu, _) = moments(&init.draw(2 * draws, CPU));
            let want = g.mean.to_kind(Kind::Double).mean_dim(0, false, Kind::Double);
            let off = (&mu - &want).abs().max().double_value(&[]);
            assert!(off < 0.01, "{cov:?}: mixture mean {mu} vs {want}");
        }
    }

    #[test]
    fn samples_are_clamped_to_the_pixel_range() {
        // Class 1 of the hand set: mean 0.2, std 0.65 in pixel 0, so many draws fall outside.
        let (set, idx) = hand();
        for cov in [Covariance::Full, Covariance::LowRank { rank: 1 }] {
            let g = ClassGaussians::fit(&set, &idx, cov, CPU).unwrap();
            let x = g.sample(&Tensor::ones([20_000], (Kind::Int64, CPU)));
            let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
            assert!(lo >= -1.0 && hi <= 1.0, "{cov:?}: {lo} .. {hi}");
            let at_edge = x.abs().eq(1.0).sum(Kind::Int64).int64_value(&[]);
            assert!(at_edge > 100, "{cov:?}: only {at_edge} draws clamped, the test is not exercising clamping");
        }
    }

    #[test]
    fn low_rank_with_enough_rank_is_the_full_covariance() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // 5 images a class in D = 12 (N < D, centred rank 4) and 20 a class in D = 4 (N > D).
        for (per_class, shape) in [(5usize, [1usize, 3, 4]), (20, [1, 2, 2])] {
            let d: usize = shape.iter().product();
            let images: Vec<u8> = (0..2 * per_class * d).map(|_| rng.gen()).collect();
            let set = set_of(images, (0..2 * per_class as i64).map(|i| i % 2).collect(), shape, 2);
            let idx: Vec<usize> = (0..set.n).collect();
            let full = ClassGaussians::fit(&set, &idx, Covariance::Full, CPU).unwrap();
            let exact = (per_class - 1).min(d);
            for rank in [exact, exact + 1, 1000] {
                let low = ClassGaussians::fit(&set, &idx, Covariance::LowRank { rank }, CPU).unwrap();
                for c in 0..2 {
                    let diff = (low.implied_covariance(c) - full.implied_covariance(c)).abs().max().double_value(&[]);
                    assert!(diff < 1e-5, "N={per_class} D={d} rank {rank} class {c}: differs by {diff}");
                }
            }
            // Below that rank: per-pixel variances still exact, correlations not.
            let low = ClassGaussians::fit(&set, &idx, Covariance::LowRank { rank: 2 }, CPU).unwrap();
            for c in 0..2 {
                let (a, b) = (low.implied_covariance(c), full.implied_covariance(c));
                let diag = (a.diagonal(0, 0, 1) - b.diagonal(0, 0, 1)).abs().max().double_value(&[]);
                let off = (a - b).abs().max().double_value(&[]);
                assert!(diag < 1e-5 && off > 1e-3, "N={per_class} D={d} rank 2 class {c}: {diag}, {off}");
            }
        }
    }

    #[test]
    fn save_and_load_replay_the_same_samples() {
        let dir = tempfile::tempdir().unwrap();
        let set = moderate(10);
        let idx: Vec<usize> = (0..set.n).collect();
        let classes = Tensor::from_slice(&[1i64, 0, 0, 1, 1, 0, 1]);
        for cov in [Covariance::Full, Covariance::LowRank { rank: 3 }] {
            let p = dir.path().join("init.safetensors");
            let g = ClassGaussians::fit(&set, &idx, cov, CPU).unwrap();
            g.save(&p).unwrap();
            let h = ClassGaussians::load(&p).unwrap();
            assert_eq!((h.covariance, h.shape, &h.counts), (cov, g.shape, &g.counts));
            // Other tests draw from the same global generator in parallel threads and may slip a
            // draw in between; a broken round trip never replays, so a few tries tell them apart.
            let replayed = (0..10).any(|seed| {
                tch::manual_seed(seed);
                let a = g.sample(&classes);
                tch::manual_seed(seed);
                a.equal(&h.sample(&classes))
            });
            assert!(replayed, "{cov:?}");
        }
        // A file lacking a tensor, or with one of the wrong shape, is named with the tensor.
        let p = dir.path().join("broken.safetensors");
        let state = Saved { covariance: Covariance::Full, shape: [1, 2, 2], counts: vec![3, 3], jitter: JITTER };
        checkpoint::save(&p, &[("mean".into(), Tensor::zeros([2, 4], (Kind::Float, CPU)))], &state).unwrap();
        let e = ClassGaussians::load(&p).unwrap_err().to_string();
        assert!(e.contains("broken.safetensors") && e.contains("no `chol`"), "{e}");
        checkpoint::save(&p, &[("mean".into(), Tensor::zeros([2, 3], (Kind::Float, CPU)))], &state).unwrap();
        let e = ClassGaussians::load(&p).unwrap_err().to_string();
        assert!(e.contains("`mean`") && e.contains("[2, 3]") && e.contains("[2, 4]"), "{e}");
    }

    #[test]
    fn the_cache_is_fitted_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init.safetensors");
        let set = moderate(10);
        let idx: Vec<usize> = (0..set.n).collect();
        let cov = Covariance::LowRank { rank: 2 };
        let g = informative_cached(&p, &set, &idx, cov, CPU).unwrap();
        assert!(p.exists());
        // Same shape and class sizes, other pixels: a refit would give other means.
        let mut other = set.clone();
        other.images.iter_mut().for_each(|v| *v = 255 - *v);
        let h = informative_cached(&p, &other, &idx, cov, CPU).unwrap();
        assert!(h.mean.equal(&g.mean));
        let e = informative_cached(&p, &set, &idx, Covariance::Full, CPU).unwrap_err().to_string();
        assert!(e.contains("init.safetensors") && e.contains("LowRank") && e.contains("delete"), "{e}");
        let e = informative_cached(&p, &set, &idx[..15], cov, CPU).unwrap_err().to_string();
        assert!(e.contains("20 images") && e.contains("15 images"), "{e}");
    }

    #[test]
    fn a_class_with_fewer_than_two_images_is_named() {
        let (mut set, idx) = hand();
        set.labels[4] = 2;
        set.labels[6] = 2;
        set.num_classes = 4;
        let e = ClassGaussians::fit(&set, &idx, Covariance::Full, CPU).unwrap_err().to_string();
        assert!(e.contains("class 1 has 1 training image"), "{e}");
        set.labels = vec![0, 1, 0, 0, 1, 0, 1];
        let e = ClassGaussians::fit(&set, &idx, Covariance::Full, CPU).unwrap_err().to_string();
        assert!(e.contains("class 2 has 0 training image"), "{e}");
        set.labels[5] = 9;
        let e = ClassGaussians::fit(&set, &idx, Covariance::Full, CPU).unwrap_err().to_string();
        assert!(e.contains("image 5 has label 9"), "{e}");
    }

    #[test]
    fn uniform_draws_fill_minus_one_to_one() {
        let init = Init::Uniform { shape: [3, 4, 5] };
        let x = init.draw(2_000, CPU);
        assert_eq!(x.size(), [2_000, 3, 4, 5]);
        let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
        assert!(lo >= -1.0 && hi <= 1.0 && lo < -0.999 && hi > 0.999, "{lo} .. {hi}");
        // 120k values of U[-1, 1]: mean 0 ± 0.0017, variance 1/3 ± 0.0009 (one standard error).
        let (mean, var) = (x.mean(Kind::Double).double_value(&[]), x.to_kind(Kind::Double).var(false).double_value(&[]));
        assert!(mean.abs() < 0.01 && (var - 1.0 / 3.0).abs() < 0.005, "mean {mean}, var {var}");
        assert_eq!(init.draw_class(7, 3, CPU).size(), [3, 3, 4, 5]);
    }
}
