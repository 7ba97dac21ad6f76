//! Summary statistics of an [`ImageSet`], for `sadajem data info` and for checking a reader
//! against the published numbers of a data set.

use std::fmt;

use super::ImageSet;

/// How many images each class has; labels outside `0..num_classes` are not counted.
pub fn class_counts(set: &ImageSet) -> Vec<usize> {
    let mut counts = vec![0; set.num_classes];
    for &label in &set.labels {
        if let Some(count) = usize::try_from(label).ok().and_then(|l| counts.get_mut(l)) {
            *count += 1;
        }
    }
    counts
}

/// Mean and (population) standard deviation over every pixel of every channel, in [0, 1]
/// units. `(0, 0)` for an empty set.
pub fn pixel_mean_std(set: &ImageSet) -> (f64, f64) {
    mean_std(&histogram(&set.images))
}

/// Mean and standard deviation per channel, in [0, 1] units: the numbers a normalisation
/// transform is usually given.
pub fn channel_mean_std(set: &ImageSet) -> Vec<(f64, f64)> {
    let plane = set.height * set.width;
    (0..set.channels)
        .map(|c| {
            let mut hist = [0u64; 256];
            if plane > 0 && set.channels > 0 {
                for image in set.images.chunks_exact(plane * set.channels) {
                    for &p in &image[c * plane..(c + 1) * plane] {
                        hist[p as usize] += 1;
                    }
                }
            }
            mean_std(&hist)
        })
        .collect()
}

// Counting values first keeps the sums exact (no float drift over 47 million pixels) and the
// pass over the pixels trivial.
fn histogram(pixels: &[u8]) -> [u64; 256] {
    let mut hist = [0u64; 256];
    for &p in pixels {
        hist[p as usize] += 1;
    }
    hist
}

fn mean_std(hist: &[u64; 256]) -> (f64, f64) {
    let count: u64 = hist.iter().sum();
    if count == 0 {
        return (0.0, 0.0);
    }
    let (mut sum, mut sum_sq) = (0u128, 0u128);
    for (value, &k) in hist.iter().enumerate() {
        sum += value as u128 * k as u128;
        sum_sq += (value * value) as u128 * k as u128;
    }
    let n = count as f64;
    let mean = sum as f64 / n;
    let var = (sum_sq as f64 / n - mean * mean).max(0.0);
    (mean / 255.0, var.sqrt() / 255.0)
}

/// Everything `data info` shows about a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    pub class_counts: Vec<usize>,
    pub mean: f64,
    pub std: f64,
    pub channel_mean_std: Vec<(f64, f64)>,
}

pub fn summary(set: &ImageSet) -> Summary {
    let (mean, std) = pixel_mean_std(set);
    Summary {
        n: set.n,
        channels: set.channels,
        height: set.height,
        width: set.width,
        num_classes: set.num_classes,
        class_counts: class_counts(set),
        mean,
        std,
        channel_mean_std: channel_mean_std(set),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} images of {}x{}x{} (CxHxW), {} classes", self.n, self.channels, self.height, self.width, self.num_classes)?;
        writeln!(f, "pixel mean {:.5}, std {:.5} (in [0, 1])", self.mean, self.std)?;
        if self.channel_mean_std.len() > 1 {
            let per_channel: Vec<String> = self.channel_mean_std.iter().map(|(m, s)| format!("{m:.5}/{s:.5}")).collect();
            writeln!(f, "per-channel mean/std: {}", per_channel.join(", "))?;
        }
        let counts: Vec<String> = self.class_counts.iter().map(|c| c.to_string()).collect();
        write!(f, "images per class: [{}]", counts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        // Two 2-channel 1x2 images: channel 0 holds 0 and 255, channel 1 always 51.
        ImageSet { images: vec![0, 255, 51, 51, 255, 0, 51, 51], n: 2, channels: 2, height: 1, width: 2, labels: vec![1, 1], num_classes: 3 }
    }

    #[test]
    fn hand_computed_values() {
        let set = tiny();
        assert_eq!(class_counts(&set), [0, 2, 0]);
        let (mean, std) = pixel_mean_std(&set);
        // Values 0, 255, 51 x4, 255, 0 over 8 pixels: mean (510 + 204) / 8 = 89.25.
        assert!((mean - 89.25 / 255.0).abs() < 1e-12);
        let var = (2.0 * 255.0f64.powi(2) + 4.0 * 51.0f64.powi(2)) / 8.0 - 89.25f64.powi(2);
        assert!((std - var.sqrt() / 255.0).abs() < 1e-12);
        let per = channel_mean_std(&set);
        assert!((per[0].0 - 0.5).abs() < 1e-12 && (per[0].1 - 0.5).abs() < 1e-12);
        assert!((per[1].0 - 0.2).abs() < 1e-12 && per[1].1.abs() < 1e-12);
    }

    #[test]
    fn odd_labels_and_empty_sets_do_not_panic() {
        let mut set = tiny();
        set.labels = vec![-1, 7];
        assert_eq!(class_counts(&set), [0, 0, 0]);
        set.images.clear();
        set.n = 0;
        assert_eq!(pixel_mean_std(&set), (0.0, 0.0));
        set.channels = 0;
        assert!(channel_mean_std(&set).is_empty());
    }

    #[test]
    fn summary_prints_shape_and_counts() {
        let text = summary(&tiny()).to_string();
        assert!(text.contains("2 images of 2x1x2 (CxHxW), 3 classes"), "{text}");
        assert!(text.contains("images per class: [0, 2, 0]"), "{text}");
    }
}
