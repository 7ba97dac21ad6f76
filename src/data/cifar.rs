//! CIFAR-10 and CIFAR-100, "binary version" files.
//!
//! Each file is a plain run of fixed-size records with no header: the label byte(s), then
//! 3072 pixel bytes as three 32x32 planes R, G, B, rows top to bottom. That is already the
//! CHW order of an [`ImageSet`], so a record's pixels are copied as they are.

use std::path::{Path, PathBuf};

use super::{file_len, find_file, read_file, DataError, ImageSet, Split};

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

/// What tells the two datasets apart.
struct Variant {
    /// The folder the official archive unpacks to; users may point at it or at its parent.
    sub_folder: &'static str,
    train: &'static [&'static str],
    test: &'static [&'static str],
    /// CIFAR-100 records start with a coarse (20-class) label before the fine one.
    has_coarse_label: bool,
    num_classes: usize,
}

const CIFAR10: Variant = Variant {
    sub_folder: "cifar-10-batches-bin",
    train: &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
    test: &["test_batch.bin"],
    has_coarse_label: false,
    num_classes: 10,
};

const CIFAR100: Variant =
    Variant { sub_folder: "cifar-100-binary", train: &["train.bin"], test: &["test.bin"], has_coarse_label: true, num_classes: 100 };

const COARSE_CLASSES: usize = 20;

impl Variant {
    fn label_bytes(&self) -> usize {
        if self.has_coarse_label {
            2
        } else {
            1
        }
    }

    fn record_len(&self) -> usize {
        self.label_bytes() + PIXELS
    }

    fn has_files(&self, dir: &Path) -> bool {
        self.train.iter().chain(self.test).any(|name| dir.join(name).is_file())
    }

    /// `dir` itself if it holds the files, else the official sub-folder if present.
    fn base_dir(&self, dir: &Path) -> PathBuf {
        let sub = dir.join(self.sub_folder);
        if !self.has_files(dir) && sub.is_dir() {
            sub
        } else {
            dir.to_path_buf()
        }
    }
}

pub(crate) fn looks_like_cifar10(dir: &Path) -> bool {
    CIFAR10.has_files(&CIFAR10.base_dir(dir))
}

pub(crate) fn looks_like_cifar100(dir: &Path) -> bool {
    CIFAR100.has_files(&CIFAR100.base_dir(dir))
}

/// Reads one split of CIFAR-10: 3x32x32, 10 classes. The train split needs all five batches.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    load(dir, split, &CIFAR10)
}

/// Reads one split of CIFAR-100 with its fine labels: 3x32x32, 100 classes.
pub fn load_cifar100(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    load(dir, split, &CIFAR100)
}

fn load(dir: &Path, split: Split, variant: &Variant) -> Result<ImageSet, DataError> {
    let base = variant.base_dir(dir);
    let names = match split {
        Split::Train => variant.train,
        Split::Test => variant.test,
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in names {
        let path = find_file(&base, &[name])?;
        read_records(&path, variant, &mut images, &mut labels)?;
    }
    Ok(ImageSet { images, n: labels.len(), channels: 3, height: SIDE, width: SIDE, labels, num_classes: variant.num_classes })
}

/// Appends the records of one file to `images` and `labels`.
fn read_records(path: &Path, variant: &Variant, images: &mut Vec<u8>, labels: &mut Vec<i64>) -> Result<(), DataError> {
    let record_len = variant.record_len();
    let len = file_len(path)?;
    if len == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), detail: "the file is empty".to_string() });
    }
    let tail = len % record_len as u64;
    if tail != 0 {
        return Err(DataError::truncated(
            path,
            format!(
                "{len} bytes is not a whole number of {record_len}-byte records \
                 ({} label byte(s) + {PIXELS} pixel bytes); the last record has only {tail} bytes",
                variant.label_bytes()
            ),
        ));
    }

    let bytes = read_file(path)?;
    // The file may have changed since we measured it; the records we take are whole anyway.
    images.reserve(bytes.len() / record_len * PIXELS);
    for (index, record) in bytes.chunks_exact(record_len).enumerate() {
        let (label_bytes, pixels) = record.split_at(variant.label_bytes());
        if variant.has_coarse_label && label_bytes[0] as usize >= COARSE_CLASSES {
            return Err(DataError::malformed(
                path,
                format!("coarse label {} at index {index} is out of range for {COARSE_CLASSES} classes", label_bytes[0]),
            ));
        }
        let label = label_bytes[label_bytes.len() - 1];
        if label as usize >= variant.num_classes {
            return Err(DataError::LabelOutOfRange { path: path.to_path_buf(), label: label as i64, index, num_classes: variant.num_classes });
        }
        labels.push(label as i64);
        images.extend_from_slice(pixels);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdata::fixture;
    use std::fs;

    /// `(index, label, path)` of each sample PNG the fixtures were made from, from names like
    /// `cifar10_07_6.png`. Empty where the shared samples are absent (a checkout elsewhere); the
    /// tests then rely on the checksums taken when the fixtures were made.
    fn sample_pngs(prefix: &str) -> Vec<(usize, i64, PathBuf)> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir("/work/shared/data/samples") else {
            return out;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().to_string();
            let parts: Vec<&str> = stem.split('_').collect();
            if parts.len() == 3 && parts[0] == prefix {
                out.push((parts[1].parse().unwrap(), parts[2].parse().unwrap(), path));
            }
        }
        out.sort();
        out
    }

    /// The PNG's pixels in CHW order.
    fn png_chw(path: &Path) -> Vec<u8> {
        let rgb = image::open(path).unwrap().to_rgb8();
        let mut out = vec![0u8; PIXELS];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * SIDE * SIDE + i] = px[c];
            }
        }
        out
    }

    fn pixel_sum(set: &ImageSet) -> u64 {
        set.images.iter().map(|&p| p as u64).sum()
    }

    #[test]
    fn cifar10_fixture_matches_the_samples() {
        let set = load_cifar10(&fixture("cifar10"), Split::Test).unwrap();
        assert_eq!((set.n, set.channels, set.height, set.width), (20, 3, 32, 32));
        assert_eq!(set.num_classes, 10);
        assert_eq!(set.labels, [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]);
        // R, G, B of the top-left pixel of the first test image, each from its own plane.
        let first = [set.image(0)[0], set.image(0)[1024], set.image(0)[2048]];
        assert_eq!(first, [158, 112, 49]);
        assert_eq!(pixel_sum(&set), 7_387_458);

        let pngs = sample_pngs("cifar10");
        for (index, label, png) in &pngs {
            assert_eq!(set.labels[*index], *label);
            assert!(set.image(*index) == &png_chw(png)[..], "image {index} differs from {png:?}");
        }
        if let Some((_, _, png)) = pngs.first() {
            let rgb = image::open(png).unwrap().to_rgb8();
            assert_eq!(first, rgb.get_pixel(0, 0).0);
        }
    }

    #[test]
    fn cifar100_fixture_has_the_fine_labels() {
        let set = load_cifar100(&fixture("cifar100"), Split::Test).unwrap();
        assert_eq!(set.n, 20);
        assert_eq!(set.num_classes, 100);
        assert_eq!(set.labels, [49, 33, 72, 51, 71, 92, 15, 14, 23, 0, 71, 75, 81, 69, 40, 43, 92, 97, 70, 53]);
        assert_eq!(pixel_sum(&set), 7_580_685);
        for (index, label, png) in sample_pngs("cifar100") {
            assert_eq!(set.labels[index], label);
            assert!(set.image(index) == &png_chw(&png)[..]);
        }
    }

    #[test]
    fn official_sub_folder_is_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("cifar-10-batches-bin");
        fs::create_dir(&sub).unwrap();
        fs::copy(fixture("cifar10/test_batch.bin"), sub.join("test_batch.bin")).unwrap();
        assert!(looks_like_cifar10(tmp.path()));
        assert!(!looks_like_cifar100(tmp.path()));
        assert_eq!(load_cifar10(tmp.path(), Split::Test).unwrap().n, 20);
    }

    #[test]
    fn train_split_reads_all_five_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let record = fs::read(fixture("cifar10/test_batch.bin")).unwrap();
        for (i, name) in CIFAR10.train.iter().enumerate() {
            // Batch i holds i+1 records, so order and count are both checked.
            fs::write(tmp.path().join(name), &record[..(i + 1) * 3073]).unwrap();
        }
        let set = load_cifar10(tmp.path(), Split::Train).unwrap();
        assert_eq!(set.n, 15);
        assert_eq!(set.labels[..3], [3, 3, 8]);

        fs::remove_file(tmp.path().join("data_batch_4.bin")).unwrap();
        let msg = load_cifar10(tmp.path(), Split::Train).unwrap_err().to_string();
        assert!(msg.contains("no such file; expected data_batch_4.bin in"), "{msg}");
    }

    #[test]
    fn truncated_file_names_file_and_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = fs::read(fixture("cifar10/test_batch.bin")).unwrap();
        let path = tmp.path().join("test_batch.bin");
        fs::write(&path, &bytes[..3073 * 2 + 100]).unwrap();
        let msg = load_cifar10(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(msg.contains(&format!("{}: truncated", path.display())), "{msg}");
        assert!(msg.contains("6246 bytes") && msg.contains("3073-byte records"), "{msg}");

        fs::write(&path, b"").unwrap();
        let msg = load_cifar10(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(msg.contains("test_batch.bin: no images found"), "{msg}");
    }

    #[test]
    fn wrong_format_is_an_error() {
        // A CIFAR-10 file read as CIFAR-100: the record sizes disagree.
        let tmp = tempfile::tempdir().unwrap();
        fs::copy(fixture("cifar10/test_batch.bin"), tmp.path().join("test.bin")).unwrap();
        let msg = load_cifar100(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(msg.contains("test.bin: truncated"), "{msg}");
    }

    #[test]
    fn label_out_of_range_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = fs::read(fixture("cifar10/test_batch.bin")).unwrap();
        bytes[3073 * 5] = 11;
        fs::write(tmp.path().join("test_batch.bin"), &bytes).unwrap();
        let msg = load_cifar10(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(msg.contains("test_batch.bin: label 11 at index 5 is out of range for 10 classes"), "{msg}");

        let mut bytes = fs::read(fixture("cifar100/test.bin")).unwrap();
        bytes[3074 * 2] = 25;
        fs::write(tmp.path().join("test.bin"), &bytes).unwrap();
        let msg = load_cifar100(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(msg.contains("test.bin: coarse label 25 at index 2"), "{msg}");
    }
}
