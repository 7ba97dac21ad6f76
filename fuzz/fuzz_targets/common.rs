//! What every reader target shares: a scratch directory (the readers take paths) and the
//! invariants a successfully read split must hold.
#![allow(dead_code)]
use sadajem::data::ImageSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One directory per fuzzing process, reused by every input: creating one per input would
/// cost more than most parses. In memory (/dev/shm) where there is one: writing the input to
/// a disk costs more than parsing it.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("sadajem-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Writes `bytes` as `name` in the scratch directory and returns its path.
pub fn put(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A reader that says Ok must hand back a consistent split.
pub fn check(set: &ImageSet) {
    assert!(set.n > 0, "an empty split was accepted");
    assert_eq!(set.images.len(), set.n * set.image_len());
    assert_eq!(set.labels.len(), set.n);
    assert!(set
        .labels
        .iter()
        .all(|&l| l >= 0 && (l as usize) < set.num_classes));
}
