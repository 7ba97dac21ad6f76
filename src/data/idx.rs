//! IDX files, the format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, an element-type code, the number of
//! dimensions), one big-endian u32 per dimension, then the elements. We only need unsigned bytes:
//! images are `[n, rows, cols]`, labels are `[n]`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::{check_fits, file_len, find_file, inflated_size_possible, read_at_most, DataError, ImageSet, Split, MAX_INFLATION};

const NUM_CLASSES: usize = 10;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What one IDX file must hold.
#[derive(Clone, Copy)]
struct Kind {
    magic: u32,
    ndims: usize,
    what: &'static str,
}

const IMAGES: Kind = Kind { magic: 0x0000_0803, ndims: 3, what: "IDX images, u8, 3 dims" };

const LABELS: Kind = Kind { magic: 0x0000_0801, ndims: 1, what: "IDX labels, u8, 1 dim" };

/// The file names of one split; the raw name first, so an unpacked copy wins over the archive.
fn file_names(split: Split) -> ([String; 2], [String; 2]) {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = format!("{prefix}-images-idx3-ubyte");
    let labels = format!("{prefix}-labels-idx1-ubyte");
    ([images.clone(), format!("{images}.gz")], [labels.clone(), format!("{labels}.gz")])
}

pub(crate) fn looks_like(dir: &Path) -> bool {
    [Split::Train, Split::Test].into_iter().any(|split| {
        let (images, _) = file_names(split);
        images.iter().any(|name| dir.join(name).is_file())
    })
}

/// Reads one split of an MNIST-style directory: 1 channel, 10 classes.
pub fn load(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    let (image_names, label_names) = file_names(split);
    let image_path = find_file(dir, &image_names.each_ref().map(String::as_str))?;
    let label_path = find_file(dir, &label_names.each_ref().map(String::as_str))?;

    let (dims, images) = read_idx(&image_path, IMAGES)?;
    let (n, height, width) = (dims[0], dims[1], dims[2]);
    if height == 0 || width == 0 {
        return Err(DataError::malformed(&image_path, format!("images of {height}x{width} pixels; both sides must be at least 1")));
    }
    if n == 0 {
        return Err(DataError::Empty { path: image_path, detail: "the header says 0 images".to_string() });
    }

    let (label_dims, raw_labels) = read_idx(&label_path, LABELS)?;
    if label_dims[0] != n {
        return Err(DataError::CountMismatch { images: image_path, n_images: n, labels: label_path, n_labels: label_dims[0] });
    }
    if let Some(index) = raw_labels.iter().position(|&l| l as usize >= NUM_CLASSES) {
        return Err(DataError::LabelOutOfRange { path: label_path, label: raw_labels[index] as i64, index, num_classes: NUM_CLASSES });
    }

    Ok(ImageSet { images, n, channels: 1, height, width, labels: raw_labels.into_iter().map(i64::from).collect(), num_classes: NUM_CLASSES })
}

/// Reads and checks one IDX file; returns its dimensions and its elements.
fn read_idx(path: &Path, kind: Kind) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let file_bytes = file_len(path)?;
    let mut file = BufReader::new(File::open(path).map_err(|e| DataError::io(path, e))?);

    // Gzip is recognised by its magic bytes, not the file name: people gunzip files and keep
    // the name, or store compressed files without the suffix.
    let gzip = file.fill_buf().map_err(|e| DataError::io(path, e))?.starts_with(&GZIP_MAGIC);
    let mut reader: Box<dyn Read> = if gzip { Box::new(MultiGzDecoder::new(file)) } else { Box::new(file) };
    let holds = if gzip { "decompresses to" } else { "holds" };

    let header_len = 4 + 4 * kind.ndims;
    let header = read_at_most(&mut reader, header_len as u64, path)?;
    if header.len() < 4 {
        return Err(DataError::truncated(path, format!("the file {holds} {} bytes, too short for an IDX header", header.len())));
    }
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != kind.magic {
        return Err(DataError::BadMagic { path: path.to_path_buf(), found: magic, expected: kind.magic, what: kind.what });
    }
    if header.len() < header_len {
        return Err(DataError::truncated(path, format!("the file {holds} {} bytes, too short for the {header_len}-byte header", header.len())));
    }
    let dims: Vec<usize> = header[4..].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();

    let data_len = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&len| usize::try_from(len).is_ok())
        .ok_or_else(|| DataError::implausible(path, format!("dimensions {dims:?} overflow the address space")))?;
    let claim = describe(&dims, data_len, header_len);

    if gzip {
        if !inflated_size_possible(data_len, file_bytes) {
            return Err(DataError::implausible(
                path,
                format!(
                    "{claim}, more than {MAX_INFLATION} times the gzip file's {file_bytes} bytes \
                     (no image data set compresses that well)"
                ),
            ));
        }
    } else if file_bytes.saturating_sub(header_len as u64) < data_len {
        return Err(DataError::truncated(path, format!("{claim} but the file holds {file_bytes} bytes")));
    }

    check_fits(path, data_len as f64, || claim.clone())?;
    // One byte more than promised tells "exactly right" from "trailing garbage".
    let data = read_at_most(&mut reader, data_len.saturating_add(1), path)?;
    let found = data.len() as u64;
    if found < data_len {
        return Err(DataError::truncated(path, format!("{claim} but the file {holds} {} bytes", header_len as u64 + found)));
    }
    if found > data_len {
        return Err(DataError::malformed(path, format!("{claim} but the file {holds} more; is this the right file?")));
    }
    Ok((dims, data))
}

fn describe(dims: &[usize], data_len: u64, header_len: usize) -> String {
    let what = match dims {
        [n, rows, cols] => format!("{n} images of {rows}x{cols}"),
        [n] => format!("{n} labels"),
        _ => format!("{dims:?} elements"),
    };
    format!("header says {what} ({data_len} bytes after the {header_len}-byte header)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stats;
    use crate::data::testdata::bundled;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::fs;
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Instant;

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// A tiny valid test split: 3 images of 2x2 and their labels.
    fn write_tiny(dir: &Path) -> (PathBuf, PathBuf) {
        let images = dir.join("t10k-images-idx3-ubyte");
        let labels = dir.join("t10k-labels-idx1-ubyte");
        fs::write(&images, idx_bytes(0x803, &[3, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])).unwrap();
        fs::write(&labels, idx_bytes(0x801, &[3], &[7, 0, 9])).unwrap();
        (images, labels)
    }

    fn err_of(dir: &Path) -> String {
        load(dir, Split::Test).unwrap_err().to_string()
    }

    #[test]
    fn mnist_train_has_canonical_statistics() {
        let set = load(&bundled("mnist"), Split::Train).unwrap();
        assert_eq!((set.n, set.channels, set.height, set.width), (60000, 1, 28, 28));
        assert_eq!(set.num_classes, 10);
        let (mean, std) = stats::pixel_mean_std(&set);
        assert!((mean - 0.13066).abs() < 1e-4, "mean {mean}");
        assert!((std - 0.30811).abs() < 1e-4, "std {std}");
        assert_eq!(stats::class_counts(&set), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    }

    #[test]
    fn fashion_mnist_train_has_canonical_statistics() {
        let set = load(&bundled("fashion-mnist"), Split::Train).unwrap();
        assert_eq!(set.n, 60000);
        let (mean, std) = stats::pixel_mean_std(&set);
        assert!((mean - 0.28604).abs() < 1e-4, "mean {mean}");
        assert!((std - 0.35302).abs() < 1e-4, "std {std}");
        assert_eq!(stats::class_counts(&set), vec![6000; 10]);
    }

    #[test]
    fn raw_and_gzip_read_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
            let gz = fs::read(bundled("mnist").join(format!("{name}.gz"))).unwrap();
            let mut raw = Vec::new();
            MultiGzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
            fs::write(tmp.path().join(name), raw).unwrap();
        }
        let from_raw = load(tmp.path(), Split::Test).unwrap();
        let from_gz = load(&bundled("mnist"), Split::Test).unwrap();
        assert_eq!(from_gz.n, 10000);
        assert_eq!(from_raw.n, 10000);
        assert!(from_raw == from_gz);
    }

    #[test]
    fn gzip_is_detected_by_content_not_name() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, labels) = write_tiny(tmp.path());
        let plain = load(tmp.path(), Split::Test).unwrap();
        // Compressed data under the raw name, and raw data under the .gz name.
        fs::write(&images, gzip(&fs::read(&images).unwrap())).unwrap();
        fs::rename(&labels, tmp.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let mixed = load(tmp.path(), Split::Test).unwrap();
        assert!(plain == mixed);
        assert_eq!(plain.labels, [7, 0, 9]);
        assert_eq!(plain.image(1), [4, 5, 6, 7]);
    }

    #[test]
    fn missing_file_names_what_was_expected() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("no such file"), "{msg}");
        assert!(msg.contains("t10k-images-idx3-ubyte.gz"), "{msg}");
        assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    }

    #[test]
    fn truncated_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, _) = write_tiny(tmp.path());
        let full = fs::read(&images).unwrap();

        fs::write(&images, &full[..full.len() - 3]).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("t10k-images-idx3-ubyte: truncated"), "{msg}");
        assert!(msg.contains("3 images of 2x2"), "{msg}");

        fs::write(&images, &full[..6]).unwrap();
        assert!(err_of(tmp.path()).contains("t10k-images-idx3-ubyte: truncated"));

        // A gzip stream cut in the middle.
        let big = idx_bytes(0x803, &[3, 100, 100], &[42; 30000]);
        let gz = gzip(&big);
        fs::write(&images, &gz[..gz.len() / 2]).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");

        fs::write(&images, b"").unwrap();
        assert!(err_of(tmp.path()).contains("t10k-images-idx3-ubyte: truncated"));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, labels) = write_tiny(tmp.path());
        fs::write(&labels, idx_bytes(0x801, &[3], &[1, 2, 3, 4])).unwrap();
        assert!(err_of(tmp.path()).contains("t10k-labels-idx1-ubyte: header says 3 labels"));
    }

    #[test]
    fn wrong_magic_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, labels) = write_tiny(tmp.path());
        // The labels file where the images should be.
        fs::copy(&labels, &images).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("t10k-images-idx3-ubyte: bad magic number 0x00000801, expected 0x00000803"), "{msg}");
    }

    #[test]
    fn label_out_of_range_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, labels) = write_tiny(tmp.path());
        fs::write(&images, idx_bytes(0x803, &[6, 1, 1], &[0; 6])).unwrap();
        fs::write(&labels, idx_bytes(0x801, &[6], &[0, 1, 2, 3, 4, 11])).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("t10k-labels-idx1-ubyte: label 11 at index 5 is out of range for 10 classes"), "{msg}");
    }

    #[test]
    fn count_mismatch_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, labels) = write_tiny(tmp.path());
        fs::write(&labels, idx_bytes(0x801, &[2], &[1, 2])).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("holds 3 images") && msg.contains("holds 2 labels"), "{msg}");
    }

    #[test]
    fn absurd_headers_fail_fast() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, _) = write_tiny(tmp.path());
        let start = Instant::now();

        // 2^31 images of 28x28 in a 100-byte file.
        fs::write(&images, idx_bytes(0x803, &[1 << 31, 28, 28], &[0; 84])).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("t10k-images-idx3-ubyte: truncated: header says 2147483648 images"), "{msg}");

        // The same claim, gzip-compressed.
        fs::write(&images, gzip(&idx_bytes(0x803, &[1 << 31, 28, 28], &[0; 84]))).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("t10k-images-idx3-ubyte: implausible header"), "{msg}");

        // Dimensions whose product overflows.
        fs::write(&images, idx_bytes(0x803, &[u32::MAX, u32::MAX, u32::MAX], &[])).unwrap();
        let msg = err_of(tmp.path());
        assert!(msg.contains("t10k-images-idx3-ubyte: implausible header"), "{msg}");

        assert!(start.elapsed().as_secs() < 2);
    }

    #[test]
    fn mutated_headers_never_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, labels) = write_tiny(tmp.path());
        let good = [fs::read(&images).unwrap(), fs::read(&labels).unwrap()];
        for (file, path) in [&images, &labels].into_iter().enumerate() {
            for at in 0..16.min(good[file].len()) {
                for value in [0x00, 0x01, 0x08, 0x80, 0xff] {
                    let mut bytes = good[file].clone();
                    bytes[at] = value;
                    fs::write(path, &bytes).unwrap();
                    let _ = load(tmp.path(), Split::Test);
                    fs::write(path, gzip(&bytes)).unwrap();
                    let _ = load(tmp.path(), Split::Test);
                }
            }
            fs::write(path, &good[file]).unwrap();
        }
    }

    #[test]
    fn zero_images_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, _) = write_tiny(tmp.path());
        fs::write(&images, idx_bytes(0x803, &[0, 28, 28], &[])).unwrap();
        assert!(err_of(tmp.path()).contains("no images found"));
        fs::write(&images, idx_bytes(0x803, &[3, 0, 28], &[])).unwrap();
        assert!(err_of(tmp.path()).contains("at least 1"));
    }

    /// A gzip of 200 MB of zeros is 200 kB; believing its header cost memory to match.
    #[test]
    fn gzip_expansion_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let (images, _) = write_tiny(tmp.path());
        let n = 200_000_000 / 784;
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        enc.write_all(&idx_bytes(0x803, &[n, 28, 28], &[])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(n as usize * 784) >> 20 {
            enc.write_all(&zeros).unwrap();
        }
        fs::write(&images, enc.finish().unwrap()).unwrap();
        let start = Instant::now();
        let msg = err_of(tmp.path());
        assert!(msg.contains("implausible header") && msg.contains("more than 100 times the gzip file's"), "{msg}");
        assert!(start.elapsed().as_secs() < 5);
    }
}
