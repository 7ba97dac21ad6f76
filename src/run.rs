//! A run is a directory (design.md): `config.toml`, `metrics.jsonl`, `checkpoints/`,
//! `final.json`. Every command reads and writes runs through this one layout.
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// Creates a new run directory; refuses one that already holds a run.
    pub fn create(root: &Path) -> Result<RunDir> {
        let run = RunDir { root: root.to_path_buf() };
        if run.config().exists() {
            bail!(
                "{}: already holds a run; continue it with `sadajem train --resume {}` or choose another --run-dir",
                root.display(),
                root.display()
            );
        }
        std::fs::create_dir_all(run.checkpoints())
            .with_context(|| format!("{}: cannot create the run directory", root.display()))?;
        // Fail now, not after an hour of training, if the directory is not writable.
        let probe = root.join(".write-test");
        std::fs::write(&probe, b"ok").with_context(|| format!("{}: run directory is not writable", root.display()))?;
        std::fs::remove_file(probe)?;
        Ok(run)
    }

    /// Opens an existing run directory.
    pub fn open(root: &Path) -> Result<RunDir> {
        let run = RunDir { root: root.to_path_buf() };
        if !run.config().exists() {
            bail!("{}: not a run directory (no config.toml)", root.display());
        }
        Ok(run)
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn latest(&self) -> PathBuf {
        self.checkpoints().join("latest.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.checkpoints().join("best.safetensors")
    }
    pub fn final_results(&self) -> PathBuf {
        self.root.join("final.json")
    }

    /// Appends one JSON object as a line of metrics.jsonl.
    pub fn log(&self, record: &serde_json::Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.metrics())
            .with_context(|| format!("{}: cannot append", self.metrics().display()))?;
        writeln!(f, "{record}")?;
        Ok(())
    }

    /// After a resume from iteration `iter`, drops the lines logged after that checkpoint (the
    /// interrupted run got further than its last checkpoint), so the log reads as one run.
    pub fn truncate_metrics_after(&self, iter: usize) -> Result<()> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["iter"].as_u64())
                    .is_some_and(|i| i as usize <= iter)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::train::checkpoint::write_atomic(&path, kept.as_bytes())
    }

    /// Writes a JSON document atomically.
    pub fn write_json(&self, path: &Path, value: &serde_json::Value) -> Result<()> {
        crate::train::checkpoint::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_lines_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        for i in [10, 20, 30] {
            run.log(&serde_json::json!({ "iter": i })).unwrap();
        }
        run.truncate_metrics_after(20).unwrap();
        let text = std::fs::read_to_string(run.metrics()).unwrap();
        assert_eq!(text, "{\"iter\":10}\n{\"iter\":20}\n");
    }

    #[test]
    fn an_existing_run_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        std::fs::write(run.config(), "").unwrap();
        let e = RunDir::create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("--resume"), "{e}");
    }
}
