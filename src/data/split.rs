//! Which images of the configured dataset a run sees: one split read with the `data.*`
//! settings, and the training images left after the seeded validation split. Training,
//! evaluation, the benchmark and import all take their images from here.
#[cfg(feature = "torch")]
use super::download;
use super::{loader, FolderOptions, Format, ImageSet, Split};
use crate::config::{Config, DataFormat};
use anyhow::{Context, Result};

/// The validation split is drawn with a fixed seed, so runs with different training seeds are
/// selected on the same held-out images.
pub const SPLIT_SEED: u64 = 0x5ADA_7E11;

/// Reads one split of the configured dataset.
pub fn load_split(cfg: &Config, split: Split) -> Result<ImageSet> {
    let d = &cfg.data;
    #[cfg(feature = "torch")]
    if !d.dir.exists() {
        if let Some(fetch) = download::fetch_command(&d.dir, named_format(d.format)) {
            anyhow::bail!("data.dir = {}: no such directory; `{fetch}` fetches it", d.dir.display());
        }
    }
    let format = match named_format(d.format) {
        Some(f) => f,
        None => super::detect_format(&d.dir)?,
    };
    let opts = FolderOptions { channels: d.channels, size: d.image_size };
    let mut set = super::load(&d.dir, format, split, opts).with_context(|| format!("reading the {split} split of data.dir = {}", d.dir.display()))?;
    set.keep_first(match split {
        Split::Train => d.max_train,
        Split::Test => d.max_test,
    });
    Ok(set)
}

/// The reader `data.format` names (None: `auto`, detected from the files).
pub fn named_format(format: DataFormat) -> Option<Format> {
    match format {
        DataFormat::Auto => None,
        DataFormat::Idx => Some(Format::Idx),
        DataFormat::Cifar10 => Some(Format::Cifar10),
        DataFormat::Cifar100 => Some(Format::Cifar100),
        DataFormat::Svhn => Some(Format::Svhn),
        DataFormat::Folder => Some(Format::Folder),
    }
}

/// The training and validation images of a set of `n`: the seeded validation split of
/// `data.n_valid` images, the same for every training seed.
pub fn train_valid(cfg: &Config, n: usize) -> (Vec<usize>, Vec<usize>) {
    loader::split_valid(n, cfg.data.n_valid, SPLIT_SEED)
}
