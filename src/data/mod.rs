//! Dataset readers: a file format on disk → one split in memory as `u8` pixels and labels.
//!
//! Readers know nothing about tensors or devices; the loader turns an [`ImageSet`] into batches.
//! Each reader checks sizes against the real file before allocating, so a corrupt or hostile
//! file gives a [`DataError`] naming it, never a panic or a huge allocation.

#[cfg(feature = "torch")]
pub mod augment;
#[cfg(feature = "torch")]
pub mod batches;
pub mod cifar;
#[cfg(feature = "torch")]
pub mod download;
mod error;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod split;
pub mod stats;
pub mod svhn;

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::DataError;
pub use folder::FolderOptions;

/// A whole split in memory: u8 pixels, row-major [n, channels, height, width].
#[derive(Clone, PartialEq, Eq)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub labels: Vec<i64>,
    pub num_classes: usize,
}

impl ImageSet {
    /// Bytes per image: channels × height × width.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`, CHW. Panics if `i >= n`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// Keeps the first `n` images (0 or more than there are: all of them).
    pub fn keep_first(&mut self, n: usize) {
        if n > 0 && n < self.n {
            self.images.truncate(n * self.image_len());
            self.labels.truncate(n);
            self.n = n;
        }
    }
}

// Deriving Debug would print every pixel; the shape is what a reader of a log wants.
impl fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageSet")
            .field("n", &self.n)
            .field("channels", &self.channels)
            .field("height", &self.height)
            .field("width", &self.width)
            .field("num_classes", &self.num_classes)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The splits `splits` names, in the order they are read.
    pub fn all_of(splits: crate::config::Splits) -> &'static [Split] {
        match splits {
            crate::config::Splits::Train => &[Split::Train],
            crate::config::Splits::Test => &[Split::Test],
            crate::config::Splits::TrainTest => &[Split::Train, Split::Test],
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(DataError::UnknownName { what: "split", found: s.to_string(), expected: "train, test" }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "torch", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Idx,
    Cifar10,
    Cifar100,
    Svhn,
    Folder,
}

impl Format {
    pub const ALL: [Format; 5] = [Format::Idx, Format::Cifar10, Format::Cifar100, Format::Svhn, Format::Folder];

    pub fn name(self) -> &'static str {
        match self {
            Format::Idx => "idx",
            Format::Cifar10 => "cifar10",
            Format::Cifar100 => "cifar100",
            Format::Svhn => "svhn",
            Format::Folder => "folder",
        }
    }

    /// The files this format looks for, as told to a user whose directory matched nothing.
    fn expected_layout(self) -> &'static str {
        match self {
            Format::Idx => {
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], \
                            t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
            }
            Format::Cifar10 => {
                "data_batch_1.bin .. data_batch_5.bin, test_batch.bin \
                                (here or in cifar-10-batches-bin/)"
            }
            Format::Cifar100 => "train.bin, test.bin (here or in cifar-100-binary/)",
            Format::Svhn => "train_32x32.mat, test_32x32.mat",
            Format::Folder => {
                "PNG/JPEG images, one sub-folder per class or a flat folder, \
                               optionally under train/ and test/"
            }
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| DataError::UnknownName {
            what: "dataset format",
            found: s.to_string(),
            expected: "idx, cifar10, cifar100, svhn, folder",
        })
    }
}

/// Guesses the format of `dir` from the files present.
///
/// The specific binary formats are tried before the image folder, because a CIFAR or SVHN
/// directory may also hold stray sub-folders that would look like classes.
pub fn detect_format(dir: &Path) -> Result<Format, DataError> {
    if !dir.is_dir() {
        let source = io::Error::new(io::ErrorKind::NotFound, "no such directory");
        return Err(DataError::io(dir, source));
    }
    if idx::looks_like(dir) {
        return Ok(Format::Idx);
    }
    if cifar::looks_like_cifar10(dir) {
        return Ok(Format::Cifar10);
    }
    if cifar::looks_like_cifar100(dir) {
        return Ok(Format::Cifar100);
    }
    if svhn::looks_like(dir) {
        return Ok(Format::Svhn);
    }
    if folder::looks_like(dir) {
        return Ok(Format::Folder);
    }
    let expected = Format::ALL.iter().map(|f| format!("  {}: {}", f.name(), f.expected_layout())).collect::<Vec<_>>().join("\n");
    Err(DataError::UnknownLayout { dir: dir.to_path_buf(), expected })
}

/// Reads one split of the dataset in `dir`. `folder_opts` only matters for [`Format::Folder`]:
/// the other formats have a fixed size and channel count.
pub fn load(dir: &Path, format: Format, split: Split, folder_opts: FolderOptions) -> Result<ImageSet, DataError> {
    match format {
        Format::Idx => idx::load(dir, split),
        Format::Cifar10 => cifar::load_cifar10(dir, split),
        Format::Cifar100 => cifar::load_cifar100(dir, split),
        Format::Svhn => svhn::load(dir, split),
        Format::Folder => folder::load(dir, split, folder_opts),
    }
}

// ---- helpers shared by the readers ----

/// How far a compressed dataset file may claim to expand. Deflate can reach 1032:1 on constant
/// bytes, but image data sets come nowhere near it (MNIST's images 4.7:1, Fashion-MNIST's 1.8:1,
/// SVHN's MAT-files 1.2:1), so a file claiming more is refused before it is inflated: a 4 MB file
/// of compressed zeros had cost 2.2 GB. The 1 MiB allowance keeps tiny files (a few labels of
/// one class) readable.
const MAX_INFLATION: u64 = 100;

/// Whether `claimed` decompressed bytes are believable from `compressed_len` compressed bytes.
fn inflated_size_possible(claimed: u64, compressed_len: u64) -> bool {
    claimed <= compressed_len.saturating_mul(MAX_INFLATION).saturating_add(1 << 20)
}

/// Fails, naming the file, when a split of `bytes` would not fit in this machine's memory:
/// the error an allocation would otherwise end in is an abort.
fn check_fits(path: &Path, bytes: f64, what: impl FnOnce() -> String) -> Result<(), DataError> {
    if crate::memory::fits(bytes) {
        return Ok(());
    }
    Err(DataError::TooLarge {
        path: path.to_path_buf(),
        detail: format!("{} ({})", what(), crate::memory::human(bytes)),
        memory: crate::memory::human(crate::memory::physical_bytes() as f64),
    })
}

/// Reads at most `limit` bytes, growing the buffer only as data really arrives, so a header
/// that promises gigabytes costs nothing unless the gigabytes are there.
fn read_at_most(reader: impl Read, limit: u64, path: &Path) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    match reader.take(limit).read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(DataError::truncated(path, format!("the compressed stream ends early, after {} bytes ({e})", out.len())))
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => {
            Err(DataError::malformed(path, format!("corrupt compressed data: {e}")))
        }
        Err(e) => Err(DataError::io(path, e)),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let len = file_len(path)?;
    check_fits(path, len as f64, || format!("a file of {len} bytes, read whole"))?;
    fs::read(path).map_err(|e| DataError::io(path, e))
}

fn file_len(path: &Path) -> Result<u64, DataError> {
    fs::metadata(path).map(|m| m.len()).map_err(|e| DataError::io(path, e))
}

/// The first of `names` that exists in `dir`.
fn find_file(dir: &Path, names: &[&str]) -> Result<PathBuf, DataError> {
    names
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| DataError::MissingFile { dir: dir.to_path_buf(), expected: names.iter().map(|s| s.to_string()).collect() })
}

/// Where the readers' tests find the bundled data sets and the committed fixtures.
#[cfg(test)]
pub(crate) mod testdata {
    use std::path::{Path, PathBuf};

    /// A data set bundled in `data/` (e.g. `mnist`).
    pub fn bundled(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(name)
    }

    /// A file or folder under `tests/fixtures/`.
    pub fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::{bundled, fixture};
    use super::*;

    #[test]
    fn detects_each_format() {
        assert_eq!(detect_format(&bundled("mnist")).unwrap(), Format::Idx);
        assert_eq!(detect_format(&fixture("cifar10")).unwrap(), Format::Cifar10);
        assert_eq!(detect_format(&fixture("cifar100")).unwrap(), Format::Cifar100);

        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("test_32x32.mat"), b"").unwrap();
        assert_eq!(detect_format(tmp.path()).unwrap(), Format::Svhn);

        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("cats")).unwrap();
        image::RgbImage::new(4, 4).save(tmp.path().join("cats/a.png")).unwrap();
        assert_eq!(detect_format(tmp.path()).unwrap(), Format::Folder);
    }

    #[test]
    fn cifar_sub_folder_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("cifar-100-binary");
        fs::create_dir(&sub).unwrap();
        fs::copy(fixture("cifar100/test.bin"), sub.join("test.bin")).unwrap();
        assert_eq!(detect_format(tmp.path()).unwrap(), Format::Cifar100);
    }

    #[test]
    fn unknown_layout_lists_every_format() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), b"hello").unwrap();
        let msg = detect_format(tmp.path()).unwrap_err().to_string();
        assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
        for f in Format::ALL {
            assert!(msg.contains(f.name()), "{msg}");
        }
        assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");

        let missing = tmp.path().join("nope");
        let msg = detect_format(&missing).unwrap_err().to_string();
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn format_and_split_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
        let msg = "cifar".parse::<Format>().unwrap_err().to_string();
        assert!(msg.contains("'cifar'") && msg.contains("cifar100"), "{msg}");
    }

    #[test]
    fn load_dispatches() {
        let set = load(&fixture("cifar10"), Format::Cifar10, Split::Test, FolderOptions::default()).unwrap();
        assert_eq!((set.n, set.channels, set.height, set.width), (20, 3, 32, 32));
        assert_eq!(set.image(19).len(), set.image_len());
    }

    #[test]
    fn implausible_compressed_size_is_rejected() {
        assert!(inflated_size_possible(1_000_000, 1000));
        assert!(!inflated_size_possible(1 << 40, 1000));
    }
}
