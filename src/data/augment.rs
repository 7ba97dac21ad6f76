//! Turns u8 images into a float batch in [−1, 1], with the classification branch's
//! augmentation: reflect-pad + random crop, horizontal flip, Gaussian noise (docs/method.md §5).
//!
//! Done on the u8 pixels in plain Rust with our own seeded RNG, so a checkpoint that stores the
//! RNG reproduces the exact same batches after a resume.
use super::ImageSet;
use crate::config::{Config, PxData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use tch::Tensor;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Augment {
    /// Reflect-pad by this many pixels, then crop back at a random offset (0 = off).
    pub pad_crop: usize,
    pub flip: bool,
    /// Std of Gaussian noise added after scaling (JEM's σ = 0.03); 0 = off.
    pub noise: f64,
}

impl Augment {
    /// No augmentation at all: the likelihood branch and evaluation.
    pub const NONE: Augment = Augment { pad_crop: 0, flip: false, noise: 0.0 };

    /// The classification batch's: `data.pad_crop`, `data.flip`, `data.noise`.
    pub fn classification(cfg: &Config) -> Augment {
        let d = &cfg.data;
        Augment { pad_crop: d.pad_crop, flip: d.flip, noise: d.noise }
    }

    /// The likelihood term's own batch (`loss.px_data`): none (`clean`), the classification
    /// batch's (`augmented`), or None when it reuses the classification batch (`shared`).
    pub fn likelihood(cfg: &Config) -> Option<Augment> {
        match cfg.loss.px_data {
            PxData::Clean => Some(Augment::NONE),
            PxData::Augmented => Some(Augment::classification(cfg)),
            PxData::Shared => None,
        }
    }
}

/// The pixel scaling of docs/method.md §1: x/255 → [0, 1] → (x − 0.5)/0.5.
pub fn scale(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// PyTorch's `reflect` padding: index −1 maps to 1, n to n−2 (the edge is not repeated).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    r as usize
}

/// Images `idx` of `set` as a [B, C, H, W] float tensor, and their labels as [B] i64.
pub fn batch(set: &ImageSet, idx: &[usize], aug: &Augment, rng: &mut ChaCha8Rng) -> (Tensor, Tensor) {
    let (c, h, w) = (set.channels, set.height, set.width);
    let p = aug.pad_crop as isize;
    let mut out = Vec::with_capacity(idx.len() * c * h * w);
    for &i in idx {
        let img = set.image(i);
        let (dy, dx) = if p > 0 { (rng.gen_range(0..=2 * p), rng.gen_range(0..=2 * p)) } else { (p, p) };
        let flip = aug.flip && rng.gen_bool(0.5);
        for ch in 0..c {
            let plane = &img[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let sy = reflect(y as isize + dy - p, h);
                for x in 0..w {
                    let x = if flip { w - 1 - x } else { x };
                    let sx = reflect(x as isize + dx - p, w);
                    out.push(scale(plane[sy * w + sx]));
                }
            }
        }
    }
    if aug.noise > 0.0 {
        for v in out.iter_mut() {
            let z: f32 = rng.sample(StandardNormal);
            *v += aug.noise as f32 * z;
        }
    }
    let x = Tensor::from_slice(&out).view([idx.len() as i64, c as i64, h as i64, w as i64]);
    let labels: Vec<i64> = idx.iter().map(|&i| set.labels[i]).collect();
    (x, Tensor::from_slice(&labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// One 1×4×4 image with pixel value = 16·y + x, so every output names its source pixel.
    fn grid() -> ImageSet {
        ImageSet { images: (0..16u8).map(|v| v * 16).collect(), n: 1, channels: 1, height: 4, width: 4, labels: vec![3], num_classes: 10 }
    }

    fn pixels(t: &Tensor) -> Vec<u8> {
        Vec::<f32>::try_from(t.view([-1])).unwrap().iter().map(|v| ((v + 1.0) * 127.5).round() as u8).collect()
    }

    #[test]
    fn plain_batch_is_scaled_to_minus_one_one() {
        let set = grid();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (x, y) = batch(&set, &[0], &Augment::NONE, &mut rng);
        assert_eq!(x.size(), vec![1, 1, 4, 4]);
        assert_eq!(pixels(&x), set.images);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![3]);
        assert_eq!(scale(0), -1.0);
        assert_eq!(scale(255), 1.0);
    }

    #[test]
    fn reflect_padding_matches_pytorch() {
        assert_eq!([-2, -1, 0, 3, 4, 5].map(|i| reflect(i, 4)), [2, 1, 0, 3, 2, 1]);
    }

    #[test]
    fn crops_are_shifted_windows_of_the_reflect_padded_image_and_flips_mirror_them() {
        let set = grid();
        let aug = Augment { pad_crop: 2, flip: true, noise: 0.0 };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen_flip = false;
        for _ in 0..50 {
            let got = pixels(&batch(&set, &[0], &aug, &mut rng).0);
            // Every row must be a window of a reflect-padded row (possibly mirrored), and all
            // rows must share one horizontal offset.
            let matches = |flip: bool| {
                (0..=4isize).any(|dx| {
                    (0..=4isize).any(|dy| {
                        (0..4).all(|y| {
                            (0..4).all(|x| {
                                let xx = if flip { 3 - x } else { x };
                                let sy = reflect(y as isize + dy - 2, 4);
                                let sx = reflect(xx as isize + dx - 2, 4);
                                got[y * 4 + x] == set.images[sy * 4 + sx]
                            })
                        })
                    })
                })
            };
            assert!(matches(false) || matches(true), "{got:?}");
            seen_flip |= !matches(false);
        }
        assert!(seen_flip);
    }

    #[test]
    fn noise_has_the_requested_std_and_the_same_seed_gives_the_same_batch() {
        let set = ImageSet { images: vec![128; 64 * 64], n: 1, channels: 1, height: 64, width: 64, labels: vec![0], num_classes: 1 };
        let aug = Augment { pad_crop: 0, flip: false, noise: 0.03 };
        let x = batch(&set, &[0], &aug, &mut ChaCha8Rng::seed_from_u64(1)).0;
        let std = x.std(true).double_value(&[]);
        assert!((std - 0.03).abs() < 0.002, "{std}");
        let again = batch(&set, &[0], &aug, &mut ChaCha8Rng::seed_from_u64(1)).0;
        assert!(x.equal(&again));
    }
}
