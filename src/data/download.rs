//! `sadajem data download NAME [--to DIR]`: the official archives of CIFAR-10, CIFAR-100, SVHN,
//! MNIST and Fashion-MNIST from their published addresses, checked against their published MD5
//! sums and unpacked into the layout the readers of this module's parent read.
//!
//! Nothing half-done is ever where the dataset goes: the files are downloaded into a staging
//! directory beside the destination (`.NAME.download`), each to a temporary name, verified, then
//! unpacked into the staging directory's `dataset/`, which is renamed into place when everything
//! is there. A failure removes the staging directory; an interrupted call (killed, power cut)
//! leaves it, and the next call removes it and starts again (restartable, not resumable: the
//! servers are not all known to answer range requests).
//!
//! [`DATASETS`] is the one table of what is fetched from where. `SADAJEM_DOWNLOAD_BASE`
//! replaces every dataset's addresses by one base URL holding the same file names: a mirror, or
//! the loopback server of the tests.
use super::{detect_format, Format};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Replaces the published addresses by one base URL (for mirrors and tests).
pub const BASE_ENV: &str = "SADAJEM_DOWNLOAD_BASE";

/// A dataset as published: where, which files, and what they unpack to.
#[derive(Clone, Debug)]
pub struct Dataset<'a> {
    pub name: &'a str,
    /// Base URLs holding [`Remote::file`], tried in order.
    pub bases: &'a [&'a str],
    pub files: &'a [Remote<'a>],
    /// What [`detect_format`] must find in the unpacked directory.
    pub format: Format,
}

/// One published file.
#[derive(Clone, Debug)]
pub struct Remote<'a> {
    /// The name under the base URL.
    pub file: &'a str,
    /// The published MD5 sum, lower-case hex.
    pub md5: &'a str,
    /// More than this many bytes is not the published file: the download stops there.
    pub max_bytes: u64,
    pub unpack: Unpack<'a>,
}

#[derive(Clone, Debug)]
pub enum Unpack<'a> {
    /// The file is a dataset file as it is (SVHN's .mat, the IDX .gz files the reader reads).
    Keep,
    /// A gzip-compressed tar archive: the `members` under `prefix` are taken out (under their
    /// own names, without the prefix); everything else in it is ignored.
    TarGz { prefix: &'a str, members: &'a [&'a str] },
}

const MB: u64 = 1 << 20;

// The addresses and MD5 sums are those the datasets' authors publish: CIFAR on its page
// (www.cs.toronto.edu/~kriz/cifar.html, "binary version"), SVHN on its page
// (ufldl.stanford.edu/housenumbers), Fashion-MNIST in its README (github.com/zalandoresearch/
// fashion-mnist). MNIST's original site now often refuses scripts; torchvision
// (torchvision/datasets/mnist.py, `mirrors` and `resources`) lists a mirror first and the same
// four MD5 sums, as do its SVHN and FashionMNIST classes (torchvision/datasets/svhn.py,
// `split_list`). The byte bounds are the published sizes rounded up.
const MNIST_FILES: [&str; 4] = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];

pub const DATASETS: &[Dataset<'static>] = &[
    Dataset {
        name: "cifar10",
        bases: &["https://www.cs.toronto.edu/~kriz"],
        files: &[Remote {
            file: "cifar-10-binary.tar.gz",
            md5: "c32a1d4ab5d03f1284b67883e8d87530",
            max_bytes: 175 * MB,
            unpack: Unpack::TarGz {
                prefix: "cifar-10-batches-bin/",
                members: &[
                    "data_batch_1.bin",
                    "data_batch_2.bin",
                    "data_batch_3.bin",
                    "data_batch_4.bin",
                    "data_batch_5.bin",
                    "test_batch.bin",
                    "batches.meta.txt",
                ],
            },
        }],
        format: Format::Cifar10,
    },
    Dataset {
        name: "cifar100",
        bases: &["https://www.cs.toronto.edu/~kriz"],
        files: &[Remote {
            file: "cifar-100-binary.tar.gz",
            md5: "03b5dce01913d631647c71ecec9e9cb8",
            max_bytes: 175 * MB,
            unpack: Unpack::TarGz {
                prefix: "cifar-100-binary/",
                members: &["train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt"],
            },
        }],
        format: Format::Cifar100,
    },
    Dataset {
        name: "svhn",
        bases: &["http://ufldl.stanford.edu/housenumbers"],
        files: &[
            Remote { file: "train_32x32.mat", md5: "e26dedcc434d2e4c54c9b2d4a06d8373", max_bytes: 180 * MB, unpack: Unpack::Keep },
            Remote { file: "test_32x32.mat", md5: "eb5a983be6a315427106f1b164d9cef3", max_bytes: 65 * MB, unpack: Unpack::Keep },
        ],
        format: Format::Svhn,
    },
    Dataset {
        name: "mnist",
        bases: &["https://ossci-datasets.s3.amazonaws.com/mnist", "http://yann.lecun.com/exdb/mnist"],
        files: &[
            Remote { file: MNIST_FILES[0], md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873", max_bytes: 10 * MB, unpack: Unpack::Keep },
            Remote { file: MNIST_FILES[1], md5: "d53e105ee54ea40749a09fcbcd1e9432", max_bytes: MB, unpack: Unpack::Keep },
            Remote { file: MNIST_FILES[2], md5: "9fb629c4189551a2d022fa330f9573f3", max_bytes: 2 * MB, unpack: Unpack::Keep },
            Remote { file: MNIST_FILES[3], md5: "ec29112dd5afa0611ce80d1b7f02629c", max_bytes: MB, unpack: Unpack::Keep },
        ],
        format: Format::Idx,
    },
    Dataset {
        name: "fashion-mnist",
        bases: &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"],
        files: &[
            Remote { file: MNIST_FILES[0], md5: "8d4fb7e6c68d591d4c3dfef9ec88bf0d", max_bytes: 26 * MB, unpack: Unpack::Keep },
            Remote { file: MNIST_FILES[1], md5: "25c81989df183df01b3e8a0aad5dffbe", max_bytes: MB, unpack: Unpack::Keep },
            Remote { file: MNIST_FILES[2], md5: "bef4ecab320f06d8554ea6380940ec79", max_bytes: 5 * MB, unpack: Unpack::Keep },
            Remote { file: MNIST_FILES[3], md5: "bb300cfdad3c16e7a12a480ee83cd310", max_bytes: MB, unpack: Unpack::Keep },
        ],
        format: Format::Idx,
    },
];

/// The dataset called `name`, or an error listing the names.
pub fn find(name: &str) -> Result<&'static Dataset<'static>> {
    DATASETS
        .iter()
        .find(|d| d.name == name)
        .with_context(|| format!("unknown dataset `{name}`; expected one of {}", DATASETS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")))
}

impl Dataset<'_> {
    /// Where it goes without `--to`, and where the presets look for it: `data/NAME`.
    pub fn default_dir(&self) -> PathBuf {
        Path::new("data").join(self.name)
    }

    /// The names of the files the dataset directory holds once unpacked.
    fn outputs(&self) -> Vec<&str> {
        self.files
            .iter()
            .flat_map(|r| match &r.unpack {
                Unpack::Keep => vec![r.file],
                Unpack::TarGz { members, .. } => members.to_vec(),
            })
            .collect()
    }

    /// Whether `dir` already holds every file of the dataset.
    fn is_in(&self, dir: &Path) -> bool {
        detect_format(dir).is_ok_and(|f| f == self.format) && self.outputs().iter().all(|f| dir.join(f).is_file())
    }
}

/// The command that fetches the dataset a missing `data.dir` names, for the error message: the
/// dataset whose name is the directory's, else the one of `format` when only one has it.
pub fn fetch_command(dir: &Path, format: Option<Format>) -> Option<String> {
    let by_name = dir.file_name().and_then(|n| n.to_str()).and_then(|n| DATASETS.iter().find(|d| d.name == n));
    let by_format = || {
        let mut of_format = DATASETS.iter().filter(|d| Some(d.format) == format);
        of_format.next().filter(|_| of_format.next().is_none())
    };
    let d = by_name.or_else(by_format)?;
    Some(if dir == d.default_dir() {
        format!("sadajem data download {}", d.name)
    } else {
        format!("sadajem data download {} --to {}", d.name, dir.display())
    })
}

/// Where the files come from: the published addresses, or one base URL for all.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub base: Option<String>,
}

impl Source {
    /// [`BASE_ENV`] if set.
    pub fn from_env() -> Source {
        Source { base: std::env::var(BASE_ENV).ok().filter(|b| !b.is_empty()) }
    }

    fn urls(&self, d: &Dataset, file: &str) -> Vec<String> {
        match &self.base {
            Some(base) => vec![format!("{}/{file}", base.trim_end_matches('/'))],
            None => d.bases.iter().map(|b| format!("{b}/{file}")).collect(),
        }
    }
}

/// What [`download`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Downloaded,
    /// `to` already held the dataset: nothing fetched.
    AlreadyThere,
}

/// Fetches `d` into `to` (see the module doc for how nothing half-done is left there).
pub fn download(d: &Dataset, to: &Path, source: &Source) -> Result<Outcome> {
    if d.is_in(to) {
        return Ok(Outcome::AlreadyThere);
    }
    if to.exists() && !to.is_dir() {
        bail!("{}: exists and is not a directory; choose another --to", to.display());
    }
    if fs::read_dir(to).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!("{}: exists and does not hold {} (expected {}); remove it or choose another --to", to.display(), d.name, d.outputs().join(", "));
    }
    let name = to.file_name().with_context(|| format!("{}: not a directory name", to.display()))?;
    let parent = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let created = first_missing(parent);
    fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let staging = parent.join(format!(".{}.download", name.to_string_lossy()));
    let result = fetch_into(d, &staging, to, source);
    // Whatever happened, nothing but the finished dataset stays.
    let _ = fs::remove_dir_all(&staging);
    if result.is_err() {
        if let Some(created) = created {
            let _ = fs::remove_dir_all(created);
        }
    }
    result.map(|()| Outcome::Downloaded)
}

/// The outermost ancestor of `dir` (or `dir`) that does not exist yet.
fn first_missing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().map(Path::to_path_buf)
}

fn fetch_into(d: &Dataset, staging: &Path, to: &Path, source: &Source) -> Result<()> {
    // What an interrupted earlier call left.
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("{}: cannot remove what an interrupted download left", staging.display()))?;
    }
    let unpacked = staging.join("dataset");
    fs::create_dir_all(&unpacked).with_context(|| format!("{}: cannot create", unpacked.display()))?;
    let agent = agent();
    for remote in d.files {
        let file = staging.join(remote.file);
        fetch_any(&agent, &source.urls(d, remote.file), remote, &file)?;
        match &remote.unpack {
            Unpack::Keep => fs::rename(&file, unpacked.join(remote.file)).with_context(|| format!("{}: cannot move", file.display()))?,
            Unpack::TarGz { prefix, members } => {
                untar(&file, prefix, members, &unpacked)?;
                fs::remove_file(&file).with_context(|| format!("{}: cannot remove", file.display()))?;
            }
        }
    }
    match detect_format(&unpacked) {
        Ok(f) if f == d.format => {}
        other => bail!("{}: the unpacked files are not read as {} ({other:?})", unpacked.display(), d.format),
    }
    // An empty directory at `to` (checked above) is replaced by the rename.
    fs::rename(&unpacked, to).with_context(|| format!("{}: cannot rename {} to it", to.display(), unpacked.display()))
}

fn agent() -> ureq::Agent {
    // A stalled server is an error after a minute without data, not a hang; a slow one is fine.
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build();
    ureq::Agent::new_with_config(config)
}

/// Fetches `remote` from the first of `urls` that delivers it intact.
fn fetch_any(agent: &ureq::Agent, urls: &[String], remote: &Remote, dest: &Path) -> Result<()> {
    let mut failures = vec![];
    for url in urls {
        match fetch(agent, url, remote, dest) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = fs::remove_file(dest);
                failures.push(format!("{e:#}"));
            }
        }
    }
    bail!("{}: could not be downloaded: {}", remote.file, failures.join("; "))
}

/// One download of `url` into `dest`, verified against `remote.md5`.
fn fetch(agent: &ureq::Agent, url: &str, remote: &Remote, dest: &Path) -> Result<()> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => anyhow::anyhow!("{url}: the server answered HTTP {code}"),
        e => anyhow::anyhow!("{url}: {e}"),
    })?;
    let length = response.body().content_length();
    if let Some(n) = length.filter(|&n| n > remote.max_bytes) {
        bail!("{url}: the server offers {n} bytes, more than the published file's {} at most", remote.max_bytes);
    }
    let mut body = response.into_body().into_reader().take(remote.max_bytes + 1);
    let mut out = File::create(dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    let bar = progress(remote.file, length);
    let mut md5 = Md5::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                bar.abandon();
                let of = length.map_or(String::new(), |n| format!(" of {n}"));
                bail!("{url}: the transfer broke off after {got}{of} bytes ({e})");
            }
        };
        md5.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| format!("{}: cannot write", dest.display()))?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    if got > remote.max_bytes {
        bail!("{url}: more than {} bytes, more than the published file has", remote.max_bytes);
    }
    if let Some(n) = length.filter(|&n| n != got) {
        bail!("{url}: the transfer ended after {got} of {n} bytes");
    }
    let sum = hex(&md5.finalize());
    if sum != remote.md5 {
        bail!("{url}: checksum mismatch: MD5 {sum}, expected the published {} ({got} bytes received); not kept", remote.md5);
    }
    out.sync_all().with_context(|| format!("{}: cannot write", dest.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn progress(file: &str, length: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::new(length.unwrap_or(0));
    let template =
        if length.is_some() { "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})" } else { "{prefix} {bytes} {bytes_per_sec}" };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    bar.set_prefix(file.to_string());
    bar
}

/// Takes `members` (under `prefix`) out of the gzip'd tar `archive` into `dir`. Only regular
/// files of those names are written, each under its bare name, so no entry of the archive can
/// write anywhere else.
fn untar(archive: &Path, prefix: &str, members: &[&str], dir: &Path) -> Result<()> {
    let file = File::open(archive).with_context(|| format!("{}: cannot open", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut found = vec![];
    let bad = |e: std::io::Error| anyhow::anyhow!("{}: not a readable .tar.gz ({e})", archive.display());
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(name) = path.trim_start_matches("./").strip_prefix(prefix).filter(|n| members.contains(n)) else { continue };
        let dest = dir.join(name);
        let mut out = File::create(&dest).with_context(|| format!("{}: cannot create", dest.display()))?;
        std::io::copy(&mut entry, &mut out).map_err(bad)?;
        out.sync_all().with_context(|| format!("{}: cannot write", dest.display()))?;
        found.push(name.to_string());
    }
    let missing: Vec<&str> = members.iter().copied().filter(|m| !found.iter().any(|f| f == m)).collect();
    if !missing.is_empty() {
        bail!("{}: the archive lacks {}", archive.display(), missing.iter().map(|m| format!("{prefix}{m}")).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        for d in DATASETS {
            assert!(find(d.name).is_ok());
            assert!(!d.bases.is_empty() && d.bases.iter().all(|b| b.starts_with("http") && !b.ends_with('/')), "{}", d.name);
            for r in d.files {
                assert!(r.md5.len() == 32 && r.md5.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{}", r.file);
            }
        }
        let e = find("imagenet").unwrap_err().to_string();
        assert!(e.contains("imagenet") && e.contains("cifar100") && e.contains("fashion-mnist"), "{e}");
        // What the readers look for is what is unpacked.
        assert_eq!(find("cifar10").unwrap().outputs().len(), 7);
        assert_eq!(find("svhn").unwrap().outputs(), ["train_32x32.mat", "test_32x32.mat"]);
    }

    #[test]
    fn a_missing_data_dir_names_the_command_that_fetches_it() {
        let cmd = |dir: &str, f| fetch_command(Path::new(dir), f);
        assert_eq!(cmd("data/cifar10", Some(Format::Cifar10)).unwrap(), "sadajem data download cifar10");
        assert_eq!(cmd("/big/cifar100", None).unwrap(), "sadajem data download cifar100 --to /big/cifar100");
        assert_eq!(cmd("/d/house-numbers", Some(Format::Svhn)).unwrap(), "sadajem data download svhn --to /d/house-numbers");
        assert_eq!(cmd("data/fashion-mnist", None).unwrap(), "sadajem data download fashion-mnist");
        // IDX is the format of two datasets: only the name can tell.
        assert!(cmd("/d/digits", Some(Format::Idx)).is_none());
        assert!(cmd("/d/photos", Some(Format::Folder)).is_none());
    }

    #[test]
    fn the_base_override_replaces_every_address() {
        let d = find("mnist").unwrap();
        assert_eq!(Source::default().urls(d, "x.gz").len(), 2);
        let s = Source { base: Some("http://127.0.0.1:9/m/".into()) };
        assert_eq!(s.urls(d, "x.gz"), ["http://127.0.0.1:9/m/x.gz"]);
    }

    #[test]
    fn only_the_named_members_come_out_of_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        let gz = flate2::write::GzEncoder::new(File::create(&archive).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in [("top/a.bin", &b"aa"[..]), ("top/other.txt", b"no"), ("./top/b.bin", b"bbb")] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        untar(&archive, "top/", &["a.bin", "b.bin"], &out).unwrap();
        let mut names: Vec<String> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a.bin", "b.bin"]);
        assert_eq!(fs::read(out.join("b.bin")).unwrap(), b"bbb");
        let e = untar(&archive, "top/", &["a.bin", "c.bin"], &out).unwrap_err().to_string();
        assert!(e.contains("lacks top/c.bin"), "{e}");
        fs::write(&archive, b"not gzip").unwrap();
        let e = untar(&archive, "top/", &["a.bin"], &out).unwrap_err().to_string();
        assert!(e.contains("not a readable .tar.gz"), "{e}");
    }
}
