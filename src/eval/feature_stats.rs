//! Inception statistics of image sets for FID and KID: the network's file found, features in
//! batches, and the statistics of real image sets cached on disk, keyed by the pixels
//! themselves, so each dataset split is passed through the (slow) network once.
use super::{fid, inception::Inception};
use crate::config::{Noise, Splits};
use crate::data::{augment, augment::Augment, ImageSet};
use crate::records::eval::FidComparison;
use crate::store::checkpoint;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The file names looked for when no network is named.
const INCEPTION_FILES: &[&str] = &["inception-2015-12-05-fid.torchscript.pt", "pt_inception-2015-12-05-6726825d.pth"];

/// `set` if given, else `SADAJEM_INCEPTION`, else the first known file in `weights/` or
/// `../shared/weights/`.
pub fn find_inception(set: &Path) -> Result<PathBuf> {
    if !set.as_os_str().is_empty() {
        return Ok(set.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SADAJEM_INCEPTION") {
        return Ok(PathBuf::from(p));
    }
    let mut tried = vec![];
    for dir in ["weights", "../shared/weights"] {
        for f in INCEPTION_FILES {
            let p = Path::new(dir).join(f);
            if p.exists() {
                return Ok(p);
            }
            tried.push(p.display().to_string());
        }
    }
    bail!(
        "no Inception network for FID: set eval.inception (or SADAJEM_INCEPTION) to the FID TorchScript file or \
         pytorch-fid's pt_inception-2015-12-05-6726825d.pth; looked for {}",
        tried.join(", ")
    )
}

/// A progress bar for `len` items (hidden when stderr is not a terminal).
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} ({eta})").expect("valid template").progress_chars("=> "));
    bar.set_prefix(what.to_string());
    bar
}

/// Pool3 features [N, 2048] (and logits, if the network has them) of images [N, C, H, W].
pub fn features(net: &Inception, x: &Tensor, what: &str) -> Result<(Tensor, Option<Tensor>)> {
    const BATCH: i64 = 50;
    let n = x.size()[0];
    anyhow::ensure!(n > 0, "{what}: no images to compute Inception features of");
    let progress = bar(n as usize, what);
    let (mut pools, mut logits) = (vec![], vec![]);
    for start in (0..n).step_by(BATCH as usize) {
        let f = net.features(&x.narrow(0, start, BATCH.min(n - start)))?;
        pools.push(f.pool);
        if let Some(l) = f.logits {
            logits.push(l);
        }
        progress.inc(BATCH.min(n - start) as u64);
    }
    progress.finish_and_clear();
    Ok((Tensor::cat(&pools, 0), (!logits.is_empty()).then(|| Tensor::cat(&logits, 0))))
}

/// What FID and KID need of one image set.
pub struct Stats {
    pub mu: Tensor,
    pub cov: Tensor,
    /// A fixed random share of the features (5 KID subsets' worth) to draw KID subsets from.
    pub kid_features: Tensor,
    pub n: usize,
}

impl Stats {
    /// The share kept for KID is drawn from a generator of its own: drawing it from libtorch's
    /// would move every later draw of an evaluation (the fresh chains' noise) by whether the
    /// reference statistics came from the cache.
    pub fn of(pool: &Tensor, kid_subset_size: usize) -> Stats {
        let n = pool.size()[0] as usize;
        let (mu, cov) = fid::stats(pool);
        let share = fid::random_rows(pool, (kid_subset_size * 5).min(n), &mut ChaCha8Rng::seed_from_u64(0));
        Stats { mu, cov, kid_features: share.to_kind(Kind::Float), n }
    }

    /// FID and KID (mean, std) of `self` against `reference`.
    pub fn compare(&self, reference: &Stats, kid_subsets: usize, kid_subset_size: usize, seed: u64) -> FidComparison {
        let d = fid::frechet_distance(&self.mu, &self.cov, &reference.mu, &reference.cov);
        let (kid, kid_std) = fid::kid(&self.kid_features, &reference.kid_features, kid_subsets, kid_subset_size, seed);
        FidComparison { fid: d, kid, kid_std, n: self.n, n_reference: reference.n }
    }
}

/// The first `n` images of `sets` (taken in order) as [N, C, H, W] in [−1, 1].
pub fn first_images(sets: &[&ImageSet], n: usize) -> Tensor {
    let mut parts = vec![];
    let mut left = n;
    for s in sets {
        let take = left.min(s.n);
        if take > 0 {
            let idx: Vec<usize> = (0..take).collect();
            parts.push(augment::batch(s, &idx, &Augment::NONE, &mut ChaCha8Rng::seed_from_u64(0)).0);
        }
        left -= take;
    }
    Tensor::cat(&parts, 0)
}

/// Statistics of the first `n` images of `sets`, from `cache_dir` when an earlier call saw the
/// same pixels with the same network and KID setting, else computed and cached.
pub fn dataset_stats(
    net: &Inception,
    network: &Path,
    sets: &[&ImageSet],
    n: usize,
    kid_subset_size: usize,
    cache_dir: &Path,
    what: &str,
) -> Result<(Stats, PathBuf)> {
    // FNV-1a over the settings and every pixel used: a changed file or setting is a new entry.
    let mut hash = Fnv::new();
    let name = network.file_name().map_or(String::new(), |f| f.to_string_lossy().into_owned());
    // bf16 features differ from fp32 ones: their statistics are another entry.
    let precision = match net.precision() {
        crate::config::Precision::Bf16 => "|bf16",
        _ => "",
    };
    hash.add(format!("{name}{precision}|{n}|{kid_subset_size}|").as_bytes());
    let mut left = n;
    for s in sets {
        let take = left.min(s.n);
        hash.add(format!("{}x{}x{}|", s.channels, s.height, s.width).as_bytes());
        hash.add(&s.images[..take * s.image_len()]);
        left -= take;
    }
    let file = cache_dir.join(format!("fid-reference-{:016x}.safetensors", hash.0));
    if file.exists() {
        let (t, _): (_, Value) = checkpoint::load(&file)?;
        if let (Some(mu), Some(cov), Some(kid)) = (t.get("mu"), t.get("cov"), t.get("kid_features")) {
            let stats = Stats { mu: mu.shallow_clone(), cov: cov.shallow_clone(), kid_features: kid.shallow_clone(), n };
            return Ok((stats, file));
        }
    }
    let (pool, _) = features(net, &first_images(sets, n), what)?;
    let stats = Stats::of(&pool, kid_subset_size);
    std::fs::create_dir_all(cache_dir).with_context(|| format!("{}: cannot create the cache directory", cache_dir.display()))?;
    let tensors = vec![
        ("mu".to_string(), stats.mu.shallow_clone()),
        ("cov".to_string(), stats.cov.shallow_clone()),
        ("kid_features".to_string(), stats.kid_features.shallow_clone()),
    ];
    checkpoint::save(&file, &tensors, &json!({"network": name, "precision": format!("{:?}", net.precision()), "n": n, "what": what}))?;
    Ok((stats, file))
}

/// `set` if given, else $XDG_CACHE_HOME/sadajem, else ~/.cache/sadajem.
pub fn cache_dir(set: &Path) -> Result<PathBuf> {
    if !set.as_os_str().is_empty() {
        return Ok(set.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(x).join("sadajem"));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("sadajem")),
        None => bail!("no cache directory: set eval.cache_dir (HOME and XDG_CACHE_HOME are unset)"),
    }
}

/// 64-bit FNV-1a: a stable content hash for cache keys (std's hasher may change between
/// releases).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One side of `sadajem fid`: `DIR[:SPLIT[:N]]` (SPLIT = train, test or train+test, default
/// test; N = the first N images, default all) or `uniform:N` / `gaussian:N` (noise shaped like
/// the other side).
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSpec {
    Data { dir: PathBuf, splits: Splits, n: usize },
    Noise { kind: Noise, n: usize },
}

impl std::str::FromStr for ImageSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let count =
            |t: &str| -> Result<usize> { t.parse().ok().filter(|&n| n >= 2).with_context(|| format!("`{s}`: `{t}` is not an image count ≥ 2")) };
        match parts.as_slice() {
            ["uniform", n] => Ok(ImageSpec::Noise { kind: Noise::Uniform, n: count(n)? }),
            ["gaussian", n] => Ok(ImageSpec::Noise { kind: Noise::Gaussian, n: count(n)? }),
            [dir, rest @ ..] if rest.len() <= 2 => {
                let splits = rest.first().copied().unwrap_or("test").parse::<Splits>().map_err(|e| anyhow::anyhow!("`{s}`: {e}"))?;
                let n = rest.get(1).map(|t| count(t)).transpose()?.unwrap_or(0);
                Ok(ImageSpec::Data { dir: PathBuf::from(dir), splits, n })
            }
            _ => bail!("`{s}`: expected DIR[:SPLIT[:N]], uniform:N or gaussian:N"),
        }
    }
}

/// FID and KID of `images` against `reference` (a dataset), each dataset's statistics cached.
#[allow(clippy::too_many_arguments)] // the `sadajem fid` options, one each
pub fn compare_specs(
    images: &ImageSpec,
    reference: &ImageSpec,
    network: &Path,
    precision: crate::config::Precision,
    cache: &Path,
    opts: crate::data::FolderOptions,
    kid: (usize, usize),
    seed: u64,
) -> Result<FidComparison> {
    let net = Inception::load(network, Device::Cpu, precision)?;
    crate::engine::seed_torch(seed);
    let stats_of = |spec: &ImageSpec, shape: Option<[i64; 3]>, what: &str| -> Result<(Stats, [i64; 3])> {
        match spec {
            ImageSpec::Data { dir, splits, n } => {
                let format = crate::data::detect_format(dir)?;
                let sets: Vec<ImageSet> =
                    crate::data::Split::all_of(*splits).iter().map(|&sp| crate::data::load(dir, format, sp, opts)).collect::<Result<_, _>>()?;
                let refs: Vec<&ImageSet> = sets.iter().collect();
                let total: usize = sets.iter().map(|s| s.n).sum();
                let n = if *n == 0 { total } else { (*n).min(total) };
                let (stats, _) = dataset_stats(&net, network, &refs, n, kid.1, cache, what)?;
                Ok((stats, [sets[0].channels as i64, sets[0].height as i64, sets[0].width as i64]))
            }
            ImageSpec::Noise { kind, n } => {
                let [c, h, w] = shape.context("noise needs a dataset on the other side for its image shape")?;
                let x = super::ood::noise(*kind, [*n as i64, c, h, w]);
                let (pool, _) = features(&net, &x, what)?;
                Ok((Stats::of(&pool, kid.1), [c, h, w]))
            }
        }
    };
    let (reference_stats, shape) = stats_of(reference, None, "reference")?;
    let (image_stats, _) = stats_of(images, Some(shape), "images")?;
    Ok(image_stats.compare(&reference_stats, kid.0, kid.1, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_leave_libtorchs_generator_alone_and_keep_a_fixed_kid_share() {
        let pool = Tensor::randn([40, 8], (Kind::Float, Device::Cpu));
        // Other tests draw from the same global generator in parallel threads and may slip a draw
        // in between; a Stats::of that draws from it never replays, so a few tries tell them apart.
        let replays = (0..20).any(|_| {
            tch::manual_seed(3);
            let undisturbed = Tensor::randn([4], (Kind::Float, Device::Cpu));
            tch::manual_seed(3);
            let _ = Stats::of(&pool, 4);
            Tensor::randn([4], (Kind::Float, Device::Cpu)).equal(&undisturbed)
        });
        assert!(replays, "Stats::of drew from libtorch's generator");
        let (a, b) = (Stats::of(&pool, 4), Stats::of(&pool, 4));
        assert_eq!(a.kid_features.size(), [20, 8]);
        assert!(a.kid_features.equal(&b.kid_features));
        // 20 distinct rows of the 40.
        let rows: std::collections::BTreeSet<i64> =
            Vec::<f32>::try_from(a.kid_features.select(1, 0)).unwrap().iter().map(|v| (v * 1e6) as i64).collect();
        assert_eq!(rows.len(), 20);
    }

    #[test]
    fn image_specs_parse_and_bad_ones_are_explained() {
        let s: ImageSpec = "data/fashion-mnist:train:10000".parse().unwrap();
        assert_eq!(s, ImageSpec::Data { dir: "data/fashion-mnist".into(), splits: Splits::Train, n: 10000 });
        let s: ImageSpec = "data/mnist".parse().unwrap();
        assert_eq!(s, ImageSpec::Data { dir: "data/mnist".into(), splits: Splits::Test, n: 0 });
        let s: ImageSpec = "d:train+test".parse().unwrap();
        assert_eq!(s, ImageSpec::Data { dir: "d".into(), splits: Splits::TrainTest, n: 0 });
        assert_eq!("uniform:500".parse::<ImageSpec>().unwrap(), ImageSpec::Noise { kind: Noise::Uniform, n: 500 });
        let e = "d:valid".parse::<ImageSpec>().unwrap_err().to_string();
        assert!(e.contains("unknown split `valid`"), "{e}");
        let e = "uniform:x".parse::<ImageSpec>().unwrap_err().to_string();
        assert!(e.contains("not an image count"), "{e}");
    }
}
