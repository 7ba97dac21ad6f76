//! A run is a directory (docs/architecture.md): `config.toml`, `metrics.jsonl`, `checkpoints/`,
//! `final.json`. Every command reads and writes runs through this one layout.
//!
//! `checkpoints/` holds `latest.safetensors`, the older ones kept beside it as
//! `iter_NNNNNNN.safetensors` (hard links, so keeping one costs no copy), and
//! `best.safetensors`. A damaged checkpoint found on resume is renamed `NAME.bad`.
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tests set this to play out a full disk without filling one (see [`free_bytes`]).
pub const FREE_BYTES_ENV: &str = "SADAJEM_TEST_FREE_BYTES";

/// One metric of `sadajem eval`, in the order `eval` runs them; each writes `eval/<name>.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "torch", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Accuracy,
    Calibration,
    Ood,
    Robustness,
    Generation,
    Fid,
}

impl Metric {
    pub const ALL: [Metric; 6] = [Metric::Accuracy, Metric::Calibration, Metric::Ood, Metric::Robustness, Metric::Generation, Metric::Fid];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Calibration => "calibration",
            Metric::Ood => "ood",
            Metric::Robustness => "robustness",
            Metric::Generation => "generation",
            Metric::Fid => "fid",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which of a run's checkpoints a command reads: `best`, `latest`, or a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// The best validation accuracy's (`checkpoints/best.safetensors`).
    Best,
    Latest,
    File(PathBuf),
}

impl std::str::FromStr for Checkpoint {
    type Err = std::convert::Infallible;

    /// `best`, `latest`, anything else a path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "best" => Checkpoint::Best,
            "latest" => Checkpoint::Latest,
            path => Checkpoint::File(PathBuf::from(path)),
        })
    }
}

#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

/// The directories of a run, by name: the methods below build every path from them.
const SAMPLES_DIR: &str = "samples";
const EVAL_DIR: &str = "eval";
const REPORT_DIR: &str = "report";
const STUDY_DIR: &str = "study";
/// The most checkpoints of one run a comparison reads (a study of 200 epochs evaluates ≤ 200).
pub const MAX_STUDY_POINTS: usize = 1000;

impl RunDir {
    /// `config.toml`, `metrics.jsonl` and `final.json` relative to the run: what
    /// [`RunDir::read_inside`] takes ([`RunDir::config`] and the others are these in the run).
    pub const CONFIG_INSIDE: &'static str = "config.toml";
    pub const METRICS_INSIDE: &'static str = "metrics.jsonl";
    pub const FINAL_RESULTS_INSIDE: &'static str = "final.json";
    pub const EVAL_INSIDE: &'static str = EVAL_DIR;

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
        std::fs::create_dir_all(run.checkpoints()).with_context(|| format!("{}: cannot create the run directory", root.display()))?;
        run.check_writable()?;
        Ok(run)
    }

    /// Fails now, not after an hour of training, if the run directory or its `checkpoints/`
    /// cannot be written (creating `checkpoints/` if it went missing).
    pub fn check_writable(&self) -> Result<()> {
        std::fs::create_dir_all(self.checkpoints()).with_context(|| format!("{}: cannot create", self.checkpoints().display()))?;
        for dir in [&self.root, &self.checkpoints()] {
            let probe = dir.join(format!(".write-test-{}", std::process::id()));
            std::fs::write(&probe, b"ok").with_context(|| format!("{}: run directory is not writable", dir.display()))?;
            std::fs::remove_file(&probe).with_context(|| format!("{}: cannot remove", probe.display()))?;
        }
        Ok(())
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
        self.root.join(Self::CONFIG_INSIDE)
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join(Self::METRICS_INSIDE)
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
    /// An older checkpoint kept beside `latest`, by the iteration it holds.
    pub fn numbered(&self, iter: usize) -> PathBuf {
        self.checkpoints().join(format!("iter_{iter:07}.safetensors"))
    }

    /// The numbered checkpoints and their iterations, newest first.
    fn numbered_checkpoints(&self) -> Result<Vec<(usize, PathBuf)>> {
        let dir = self.checkpoints();
        let mut out = vec![];
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot list", dir.display())),
        };
        for entry in entries {
            let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let iter = name.strip_prefix("iter_").and_then(|n| n.strip_suffix(".safetensors")).and_then(|n| n.parse().ok());
            if let Some(iter) = iter {
                out.push((iter, path));
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(out)
    }

    /// The checkpoints a resume may start from, newest first: `latest`, then the numbered ones.
    pub fn checkpoint_candidates(&self) -> Result<Vec<PathBuf>> {
        let latest = self.latest();
        let mut out: Vec<PathBuf> = latest.exists().then_some(latest).into_iter().collect();
        out.extend(self.numbered_checkpoints()?.into_iter().map(|(_, p)| p));
        Ok(out)
    }

    /// Keeps the current `latest` (holding iteration `iter`) as a numbered checkpoint before it
    /// is replaced: a hard link, or a copy where the file system has none; atomic either way.
    pub fn keep_latest_as(&self, iter: usize) -> Result<()> {
        let (src, dst) = (self.latest(), self.numbered(iter));
        // Already kept by a run killed before it replaced `latest`. (Renaming a link onto
        // another link of the same file succeeds and does nothing, which would leave the
        // temporary link behind, holding the file's space after both names are gone.)
        if same_file(&src, &dst) {
            return Ok(());
        }
        let tmp = self.checkpoints().join(format!(".iter_{iter:07}.safetensors.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let keep = || -> std::io::Result<()> {
            if std::fs::hard_link(&src, &tmp).is_err() {
                std::fs::copy(&src, &tmp)?;
                std::fs::File::open(&tmp)?.sync_all()?;
            }
            std::fs::rename(&tmp, &dst)
        };
        keep().with_context(|| format!("{}: cannot keep {} as it", dst.display(), src.display()))
    }

    /// Deletes numbered checkpoints beyond the newest `keep`.
    pub fn prune_numbered(&self, keep: usize) -> Result<()> {
        for (_, path) in self.numbered_checkpoints()?.into_iter().skip(keep) {
            std::fs::remove_file(&path).with_context(|| format!("{}: cannot delete", path.display()))?;
        }
        Ok(())
    }

    /// Renames a damaged checkpoint to `NAME.bad`, out of the way of later resumes and pruning
    /// but still there to look at; returns the new name.
    pub fn set_aside(&self, path: &Path) -> Result<PathBuf> {
        let mut bad = path.as_os_str().to_owned();
        bad.push(".bad");
        let bad = PathBuf::from(bad);
        std::fs::rename(path, &bad).with_context(|| format!("{}: cannot rename to {}", path.display(), bad.display()))?;
        Ok(bad)
    }

    /// Removes the temporary files of writes a crash interrupted (`.NAME.tmp`).
    pub fn remove_temporaries(&self) -> Result<()> {
        let dir = self.checkpoints();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(entry.path()).with_context(|| format!("{}: cannot delete", entry.path().display()))?;
            }
        }
        Ok(())
    }

    /// Bytes the checkpoint files take now, each file once however many names it has.
    pub fn checkpoint_bytes_on_disk(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else { return 0 };
        let mut seen = std::collections::HashSet::new();
        entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file() && seen.insert(m.ino())).map(|m| m.len()).sum()
    }

    /// Fails unless the run's file system has room for `keep` checkpoints of `bytes` each (at
    /// least until pruning catches up), `best.safetensors` and one being written, counting what
    /// the checkpoints already take.
    pub fn check_space(&self, bytes: u64, keep: usize) -> Result<()> {
        let need = ((keep as u64 + 2) * bytes).saturating_sub(self.checkpoint_bytes_on_disk()).max(bytes);
        let free = free_bytes(&self.checkpoints())?;
        if free < need {
            bail!(
                "{}: not enough free space for this run's checkpoints: {} free, about {} needed \
                 ({keep} kept of {} each (train.keep_checkpoints), best.safetensors and one being written); \
                 free some space or lower train.keep_checkpoints in {}, then `sadajem train --resume {}`",
                self.checkpoints().display(),
                human_bytes(free),
                human_bytes(need),
                human_bytes(bytes),
                self.config().display(),
                self.root.display()
            );
        }
        Ok(())
    }

    /// `samples/`: the replay buffer's grids written while training.
    pub fn samples(&self) -> PathBuf {
        self.root.join(SAMPLES_DIR)
    }
    /// The grid of iteration `iter`, `samples/iter_NNNNNNN.png`.
    pub fn sample_grid(&self, iter: usize) -> PathBuf {
        self.samples().join(format!("iter_{iter:07}.png"))
    }
    /// The grid at the end of training, `samples/final.png`.
    pub fn final_grid(&self) -> PathBuf {
        self.samples().join("final.png")
    }
    /// A grid in `samples/` by its file name, relative to the run: what [`RunDir::read_inside`]
    /// takes.
    pub fn sample_grid_inside(name: &str) -> String {
        format!("{SAMPLES_DIR}/{name}")
    }
    /// `init.safetensors`: the informative init's class Gaussians, fitted once per run.
    pub fn init_cache(&self) -> PathBuf {
        self.root.join("init.safetensors")
    }
    /// `eval/`: `sadajem eval`'s records and plots.
    pub fn eval(&self) -> PathBuf {
        self.root.join(EVAL_DIR)
    }
    /// `eval/<metric>.json`, the record one metric of `sadajem eval` writes, relative to the
    /// run: what [`RunDir::read_inside`] takes.
    pub fn eval_record_inside(metric: Metric) -> String {
        Self::record_inside(EVAL_DIR, metric)
    }

    /// A metric's record in the run's directory `dir` (`eval`, or a study point's), relative to
    /// the run.
    pub fn record_inside(dir: &str, metric: Metric) -> String {
        format!("{dir}/{}", Self::record_name(metric))
    }

    /// The file name of a metric's record, `<metric>.json`, in eval/ or a study point's directory.
    pub fn record_name(metric: Metric) -> String {
        format!("{}.json", metric.name())
    }

    /// A plot in `eval/` by its file name (as a record's `plots` lists it), relative to the run.
    pub fn eval_plot_inside(name: &str) -> String {
        format!("{EVAL_DIR}/{name}")
    }

    /// `study/`: one directory per evaluated checkpoint, `study/iter_NNNNNNN/` with the records
    /// `sadajem eval --out` writes (scripts/reproduce.sh).
    pub fn study(&self) -> PathBuf {
        self.root.join(STUDY_DIR)
    }

    /// The study's points as paths relative to the run (`study/iter_0000429`), sorted: only
    /// directories named `iter_` and digits, not links, at most [`MAX_STUDY_POINTS`] (a run
    /// directory may come from anyone; anything else there is ignored).
    pub fn study_points(&self) -> Vec<String> {
        let study = self.study();
        if !std::fs::symlink_metadata(&study).is_ok_and(|m| m.is_dir()) {
            return vec![];
        }
        let Ok(entries) = std::fs::read_dir(&study) else { return vec![] };
        let mut names: Vec<String> = entries
            .take(MAX_STUDY_POINTS * 4)
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let digits = name.strip_prefix("iter_")?;
                let plain = !digits.is_empty() && digits.len() <= 12 && digits.bytes().all(|b| b.is_ascii_digit());
                (plain && e.file_type().ok()?.is_dir()).then_some(name)
            })
            .collect();
        names.sort();
        names.truncate(MAX_STUDY_POINTS);
        names.into_iter().map(|n| format!("{STUDY_DIR}/{n}")).collect()
    }

    /// The checkpoint `which` names. A run without a validation split (`data.n_valid = 0`) has
    /// no best checkpoint: there `best` is the last one.
    pub fn checkpoint(&self, which: &Checkpoint, has_validation: bool) -> PathBuf {
        match which {
            Checkpoint::Best if !has_validation && !self.best().exists() => self.latest(),
            Checkpoint::Best => self.best(),
            Checkpoint::Latest => self.latest(),
            Checkpoint::File(path) => path.clone(),
        }
    }

    /// `tensorboard/`: the training event file; `tensorboard/eval/`: eval's.
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join("tensorboard")
    }
    pub fn tensorboard_eval(&self) -> PathBuf {
        self.tensorboard().join("eval")
    }
    /// `report.html` and the curve PNGs it embeds, in `report/`.
    pub fn report_page(&self) -> PathBuf {
        self.root.join("report.html")
    }
    pub fn report_dir(&self) -> PathBuf {
        self.root.join(REPORT_DIR)
    }
    /// The report's training curve `name` (`loss`, `accuracy`), `report/curve_<name>.png`.
    pub fn report_curve(&self, name: &str) -> PathBuf {
        self.root.join(Self::report_curve_inside(name))
    }
    /// The same, relative to the run.
    pub fn report_curve_inside(name: &str) -> String {
        format!("{REPORT_DIR}/curve_{name}.png")
    }
    /// `imported.json`: what `sadajem import` made this run from.
    pub fn imported(&self) -> PathBuf {
        self.root.join("imported.json")
    }
    /// `export/`: where `sadajem export` writes by default.
    pub fn export_dir(&self) -> PathBuf {
        self.root.join("export")
    }
    /// The default file `sadajem export` writes a checkpoint named `stem` to.
    pub fn export_file(&self, stem: &str, ext: &str) -> PathBuf {
        self.export_dir().join(format!("{stem}.{ext}"))
    }
    /// `final.json`: the test accuracies and training time of a finished run.
    pub fn final_results(&self) -> PathBuf {
        self.root.join(Self::FINAL_RESULTS_INSIDE)
    }

    /// Appends one record (a [`crate::records::MetricsLine`]) as a line of metrics.jsonl.
    pub fn log<T: serde::Serialize>(&self, record: &T) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.metrics())
            .with_context(|| format!("{}: cannot append", self.metrics().display()))?;
        writeln!(f, "{}", serde_json::to_string(record)?)?;
        Ok(())
    }

    /// After a resume from iteration `iter`, drops the lines logged after that checkpoint (the
    /// interrupted run got further than its last checkpoint), so the log reads as one run.
    pub fn truncate_metrics_after(&self, iter: usize) -> Result<()> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["iter"].as_u64()).is_some_and(|i| i as usize <= iter))
            .map(|l| format!("{l}\n"))
            .collect();
        crate::store::atomic::write_atomic(&path, kept.as_bytes())
    }

    /// Writes a JSON document atomically.
    pub fn write_json(&self, path: &Path, value: &serde_json::Value) -> Result<()> {
        crate::store::atomic::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
    }
}

/// Reads a file that someone other than the user may have put there (a run directory shared
/// or downloaded, the JSON beside a downloaded checkpoint): only a regular file — a FIFO would
/// block, `/dev/zero` never end — of at most `max` bytes, and, unless `follow_links`, not
/// through a symbolic link (as its last component; [`RunDir::read_inside`] checks every one).
pub fn read_untrusted(path: &Path, max: u64, follow_links: bool) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; it is then
    // refused as not a regular file. (It changes nothing for a regular file.)
    let flags = libc::O_NONBLOCK | if follow_links { 0 } else { libc::O_NOFOLLOW };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(not_followed)?;
    read_capped(file, max)
}

/// ELOOP from O_NOFOLLOW, said plainly.
fn not_followed(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "a symbolic link, not followed")
    } else {
        e
    }
}

/// An opened file's bytes if it is a regular file of at most `max` bytes.
fn read_capped(file: std::fs::File, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::new(ErrorKind::InvalidData, format!("{} bytes, more than the {max} read", meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(ErrorKind::InvalidData, format!("grew past the {max} bytes read")));
    }
    Ok(bytes)
}

impl RunDir {
    /// Reads `rel` (`eval/ood.json`, `samples/final.png`), a file this run directory holds, as
    /// untrusted: a relative path of plain names (no `..`), no symbolic link anywhere below the
    /// run directory — each directory is opened from the one above with O_NOFOLLOW, so nothing
    /// swapped in meanwhile leads out — and then as [`read_untrusted`].
    pub fn read_inside(&self, rel: &str, max: u64) -> std::io::Result<Vec<u8>> {
        use std::io::{Error, ErrorKind};
        use std::os::fd::{AsRawFd, FromRawFd};
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0')) {
            return Err(Error::new(ErrorKind::InvalidInput, "not a plain path inside the run directory"));
        }
        let mut dir = std::fs::File::open(&self.root)?;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | if last { libc::O_NONBLOCK } else { libc::O_DIRECTORY };
            let name = std::ffi::CString::new(*part).expect("no NUL, checked above");
            // SAFETY: openat with a directory fd we hold open and a valid C string; the fd
            // returned is owned by the File made from it.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
            if fd < 0 {
                let e = Error::last_os_error();
                return Err(if !last && e.raw_os_error() == Some(libc::ENOTDIR) {
                    Error::new(ErrorKind::InvalidInput, format!("{part}/ is a symbolic link or not a directory"))
                } else {
                    not_followed(e)
                });
            }
            // SAFETY: fd is a freshly opened descriptor nobody else owns.
            dir = unsafe { std::fs::File::from_raw_fd(fd) };
        }
        read_capped(dir, max)
    }
}

/// Whether both paths exist and name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Bytes an unprivileged user may still write on the file system holding `path`, or the value
/// of [`FREE_BYTES_ENV`] when it is set.
pub fn free_bytes(path: &Path) -> Result<u64> {
    if let Some(v) = std::env::var_os(FREE_BYTES_ENV) {
        return v.to_string_lossy().parse().with_context(|| format!("{FREE_BYTES_ENV}={v:?}: expected a number of bytes"));
    }
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    // SAFETY: statvfs writes only into the struct it is given; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("{}: cannot tell the free space", path.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// `1.5 GB`, `320 MB`, `12 kB`: for messages.
pub fn human_bytes(n: u64) -> String {
    let units = [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    units.iter().find(|(size, _)| n as f64 >= *size).map_or(format!("{n} bytes"), |(size, unit)| format!("{:.1} {unit}", n as f64 / size))
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
    fn numbered_checkpoints_are_kept_newest_first_and_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        assert!(run.checkpoint_candidates().unwrap().is_empty());
        // As training does: keep the current latest, then replace it by renaming over it.
        let write_latest = |text: &str| crate::store::atomic::write_atomic(&run.latest(), text.as_bytes()).unwrap();
        for iter in [0, 400, 800] {
            write_latest(&format!("{iter}"));
            run.keep_latest_as(iter).unwrap();
        }
        write_latest("1200");
        std::fs::write(run.checkpoints().join("notes.txt"), "x").unwrap();
        let names = |run: &RunDir| -> Vec<String> {
            run.checkpoint_candidates().unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names(&run), ["latest.safetensors", "iter_0000800.safetensors", "iter_0000400.safetensors", "iter_0000000.safetensors"]);
        assert_eq!(std::fs::read_to_string(run.numbered(400)).unwrap(), "400");
        // Kept again (a resume after a kill between keeping and replacing): no temporary left.
        write_latest("1600");
        run.keep_latest_as(1600).unwrap();
        run.keep_latest_as(1600).unwrap();
        assert!(!std::fs::read_dir(run.checkpoints()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
        std::fs::remove_file(run.numbered(1600)).unwrap();
        write_latest("1200");
        run.prune_numbered(2).unwrap();
        assert_eq!(names(&run), ["latest.safetensors", "iter_0000800.safetensors", "iter_0000400.safetensors"]);

        let bad = run.set_aside(&run.latest()).unwrap();
        assert!(bad.ends_with("latest.safetensors.bad") && bad.exists());
        assert_eq!(names(&run), ["iter_0000800.safetensors", "iter_0000400.safetensors"]);
        // Hard links count once.
        assert_eq!(run.checkpoint_bytes_on_disk(), ["800", "400", "1200", "x"].iter().map(|s| s.len() as u64).sum::<u64>());
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        std::fs::write(run.checkpoints().join(".latest.safetensors.tmp"), "half").unwrap();
        run.remove_temporaries().unwrap();
        assert_eq!(std::fs::read_dir(run.checkpoints()).unwrap().count(), 0);
    }

    #[test]
    fn too_little_space_is_refused_before_training() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        assert!(run.check_space(1000, 3).is_ok(), "a real disk has room for 5 kB");
        let free = free_bytes(dir.path()).unwrap();
        let e = run.check_space(free, 3).unwrap_err().to_string();
        assert!(e.contains("not enough free space") && e.contains("train.keep_checkpoints") && e.contains("--resume"), "{e}");
        assert_eq!(human_bytes(1_500_000_000), "1.5 GB");
        assert_eq!(human_bytes(999), "999 bytes");
    }

    #[test]
    fn an_existing_run_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        std::fs::write(run.config(), "").unwrap();
        let e = RunDir::create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("--resume"), "{e}");
    }

    #[test]
    fn untrusted_reads_take_regular_files_only_and_only_so_much() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.json");
        std::fs::write(&file, "12345").unwrap();
        assert_eq!(read_untrusted(&file, 5, false).unwrap(), b"12345");
        let e = read_untrusted(&file, 4, false).unwrap_err().to_string();
        assert!(e.contains("more than the 4 read"), "{e}");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_untrusted(&link, 5, false).unwrap_err().to_string().contains("symbolic link"));
        assert_eq!(read_untrusted(&link, 5, true).unwrap(), b"12345");
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_untrusted(&fifo, 5, true).unwrap_err().to_string().contains("not a regular file"));
        for dev in ["/dev/zero", "/dev/null"] {
            assert!(read_untrusted(Path::new(dev), 5, true).unwrap_err().to_string().contains("not a regular file"));
        }
    }

    /// Each path relative to the run names the same file as the full path beside it.
    #[test]
    fn paths_inside_the_run_match_the_full_paths() {
        let run = RunDir { root: PathBuf::from("/runs/r") };
        let inside = |rel: String| run.root.join(rel);
        assert_eq!(inside(RunDir::CONFIG_INSIDE.into()), run.config());
        assert_eq!(inside(RunDir::METRICS_INSIDE.into()), run.metrics());
        assert_eq!(inside(RunDir::FINAL_RESULTS_INSIDE.into()), run.final_results());
        assert_eq!(inside(RunDir::sample_grid_inside("iter_0000040.png")), run.sample_grid(40));
        assert_eq!(inside(RunDir::sample_grid_inside("final.png")), run.final_grid());
        assert_eq!(inside(RunDir::eval_record_inside(Metric::Ood)), run.eval().join("ood.json"));
        assert_eq!(inside(RunDir::eval_plot_inside("reliability.png")), run.eval().join("reliability.png"));
        assert_eq!(run.report_curve("loss"), run.report_dir().join("curve_loss.png"));
        assert_eq!(inside(RunDir::report_curve_inside("loss")), run.report_curve("loss"));
        assert_eq!(run.tensorboard_eval(), PathBuf::from("/runs/r/tensorboard/eval"));
        assert_eq!(RunDir::report_curve_inside("lr"), "report/curve_lr.png");
        assert_eq!(run.study(), PathBuf::from("/runs/r/study"));
    }

    #[test]
    fn study_points_are_the_iteration_directories_and_no_link_or_stray_name() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        assert!(run.study_points().is_empty());
        for d in ["iter_0000010", "iter_0000005", "junk", "iter_12x", "iter_"] {
            std::fs::create_dir_all(run.study().join(d)).unwrap();
        }
        std::fs::write(run.study().join("iter_0000007"), "a file").unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), run.study().join("iter_0000008")).unwrap();
        assert_eq!(run.study_points(), ["study/iter_0000005", "study/iter_0000010"]);
        // A study/ that is itself a link leads out of the run: no points.
        let other = RunDir::create(&dir.path().join("o")).unwrap();
        std::os::unix::fs::symlink(run.study(), other.study()).unwrap();
        assert!(other.study_points().is_empty());
    }

    #[test]
    fn reads_inside_a_run_follow_no_link_and_leave_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        std::fs::create_dir(run.root.join("eval")).unwrap();
        std::fs::write(run.root.join("eval/a.json"), "{}").unwrap();
        assert_eq!(run.read_inside("eval/a.json", 10).unwrap(), b"{}");
        let outside = dir.path().join("secret.txt");
        std::fs::write(&outside, "secret").unwrap();
        std::os::unix::fs::symlink(&outside, run.root.join("eval/link.json")).unwrap();
        let e = run.read_inside("eval/link.json", 10).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // A directory that is a link to elsewhere.
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::fs::write(dir.path().join("elsewhere/a.json"), "{}").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), run.root.join("samples")).unwrap();
        let e = run.read_inside("samples/a.json", 10).unwrap_err().to_string();
        assert!(e.contains("samples/ is a symbolic link"), "{e}");
        for bad in ["../secret.txt", "/etc/passwd", "eval/../../secret.txt", "eval//a.json", "./config.toml"] {
            let e = run.read_inside(bad, 10).unwrap_err().to_string();
            assert!(e.contains("not a plain path"), "{bad}: {e}");
        }
        assert!(run.read_inside("eval/a.json", 1).unwrap_err().to_string().contains("more than the 1 read"));
    }
}
