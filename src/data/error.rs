//! The one error type of the dataset readers.
//!
//! Every variant that comes from a file carries that file's path, so a message read on its own
//! (in a log, in a CI failure) says which file is wrong, what was expected and what was found.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    // The cause is part of the message, not a `source()`: a chain printed with `{:#}` (as
    // the CLI does) would otherwise say it twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },

    #[error("no such file; expected {} in {}", one_of(expected), dir.display())]
    MissingFile { dir: PathBuf, expected: Vec<String> },

    #[error("{}: bad magic number {found:#010x}, expected {expected:#010x} ({what})", path.display())]
    BadMagic { path: PathBuf, found: u32, expected: u32, what: &'static str },

    /// The file ends before the data its header (or record layout) promises.
    #[error("{}: truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },

    /// A header asks for more data than the file could hold, or sizes that overflow; caught
    /// before anything is allocated.
    #[error("{}: implausible header: {detail}", path.display())]
    ImplausibleHeader { path: PathBuf, detail: String },

    /// Anything else about a file's structure that is not what its format requires.
    #[error("{}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },

    #[error("{}: label {label} at index {index} is out of range for {num_classes} classes", path.display())]
    LabelOutOfRange { path: PathBuf, label: i64, index: usize, num_classes: usize },

    #[error(
        "{} holds {n_images} images but {} holds {n_labels} labels; the two files must agree",
        images.display(),
        labels.display()
    )]
    CountMismatch { images: PathBuf, n_images: usize, labels: PathBuf, n_labels: usize },

    #[error("{}: cannot decode image: {error}", path.display())]
    Image { path: PathBuf, error: image::ImageError },

    #[error("{}: no images found; {detail}", path.display())]
    Empty { path: PathBuf, detail: String },

    #[error("{}: cannot tell the dataset format from the files present; expected one of:\n{expected}", dir.display())]
    UnknownLayout { dir: PathBuf, expected: String },

    /// A name given on the command line or in a config that is not one we know.
    #[error("unknown {what} '{found}'; expected one of {expected}")]
    UnknownName { what: &'static str, found: String, expected: &'static str },

    #[error("invalid reader option: {0}")]
    BadOption(String),

    /// A split (or a file read whole) that would not fit in memory.
    #[error("{}: {detail}: more than this machine's {memory} of memory", path.display())]
    TooLarge { path: PathBuf, detail: String, memory: String },
}

fn one_of(names: &[String]) -> String {
    match names {
        [one] => one.clone(),
        _ => format!("one of {}", names.join(", ")),
    }
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: io::Error) -> Self {
        DataError::Io { path: path.into(), error }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::Malformed { path: path.into(), detail: detail.into() }
    }

    pub(crate) fn truncated(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::Truncated { path: path.into(), detail: detail.into() }
    }

    pub(crate) fn implausible(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::ImplausibleHeader { path: path.into(), detail: detail.into() }
    }
}
