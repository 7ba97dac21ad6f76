//! Files written whole or not at all: a temporary name beside the target, written and fsync'd,
//! then renamed over it and the directory fsync'd. Every file sadajem writes (checkpoints,
//! metrics, eval records, plots, reports, exports) goes through here, so a kill or a full disk
//! never leaves half a file under the real name.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Atomically writes `bytes` to `path` (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    let write = || -> std::io::Result<()> {
        // A fresh file, never one already there: a link planted at the temporary name (in a
        // shared run directory) would otherwise have the bytes written wherever it points.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("{}: cannot write", path.display())).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted at the temporary name is replaced, not written through.
    #[test]
    fn atomic_writes_do_not_follow_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "mine").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".report.html.tmp")).unwrap();
        write_atomic(&dir.path().join("report.html"), b"page").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "mine");
        assert_eq!(std::fs::read_to_string(dir.path().join("report.html")).unwrap(), "page");
    }
}
