//! Hostile files and settings against the binary (issue 16): crafted checkpoints, run
//! directories, datasets and settings, each built here. Every one must end in a named error
//! (exit 1) — or, for `report` and a checkpoint carrying code, a warning — with no panic, no
//! signal, no hang (each run has a deadline) and bounded memory (the child's peak RSS, from
//! wait4). docs/reliability.md lists the messages.
#[path = "support/forge.rs"]
mod forge;
mod support;

use forge::{Pickle, Record};
use sadajem::run::RunDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of the binary did.
struct Ran {
    /// The exit status; None if a signal ended it.
    code: Option<i32>,
    out: String,
    peak_rss_mb: f64,
}

/// Runs `sadajem ARGS` with `env`, killing it after `deadline` (which fails the test).
// Reaped by wait4 (for its rusage), which clippy does not see.
#[allow(clippy::zombie_processes)]
fn sadajem_env(args: &[&str], env: &[(&str, &str)], deadline: Duration) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut c = support::command(args);
    c.env("RUST_BACKTRACE", "0").envs(env.iter().copied());
    c.stdout(Stdio::from(std::fs::File::create(&out_path).unwrap())).stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()));
    let child = c.spawn().expect("the sadajem binary runs");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    loop {
        // SAFETY: wait4 on our own child, writing into locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4 failed");
        if start.elapsed() > deadline {
            // SAFETY: our child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!("sadajem {args:?} ran past {deadline:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let out = std::fs::read_to_string(&out_path).unwrap() + &std::fs::read_to_string(&err_path).unwrap();
    Ran { code, out, peak_rss_mb: usage.ru_maxrss as f64 / 1024.0 }
}

fn sadajem(args: &[&str]) -> Ran {
    sadajem_env(args, &[], Duration::from_secs(120))
}

/// Peak memory a crafted input may cost: libtorch's start-up (about 250 MB here) plus the
/// budget's 64 MiB allowance and room for the honest part of the file.
const RSS_LIMIT_MB: f64 = 800.0;

/// A named error: exit 1, the message there, no panic, memory bounded.
fn refused(r: &Ran, message: &str) {
    assert_eq!(r.code, Some(1), "exit status (a signal if None): {}", r.out);
    assert!(r.out.contains(message), "expected {message:?} in: {}", &r.out[..r.out.len().min(4000)]);
    assert!(!r.out.contains("panicked"), "{}", r.out);
    assert!(r.out.len() < 20_000, "{} bytes of output", r.out.len());
    assert!(r.peak_rss_mb < RSS_LIMIT_MB, "peak RSS {:.0} MB: {}", r.peak_rss_mb, r.out);
    let error = r.out.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    eprintln!("exit 1, peak RSS {:.0} MB: {error}", r.peak_rss_mb);
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference").join(name)
}

/// The reference fixture's state dict: names and shapes (its values are not needed).
fn reference_shapes() -> Vec<(String, Vec<i64>)> {
    let c = sadajem::store::pickle::archive::read(&fixture("checkpoint.pt"), &Default::default()).unwrap();
    c.tensors.into_iter().filter_map(|(n, t)| Some((n.strip_prefix("model_state_dict.")?.to_string(), t.size))).collect()
}

/// The reference checkpoint forged: `before` runs first (its result dropped), `more_state` goes
/// into the state dict, the buffer is (size, stride, storage numel). Written in both formats.
fn forged(dir: &Path, name: &str, buffer: Option<(Vec<i64>, Vec<i64>, i64)>, more_state: &[u8], before: &[u8]) -> [PathBuf; 2] {
    let shapes = reference_shapes();
    let shapes: Vec<(&str, Vec<i64>)> = shapes.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    let (pickle, numels) = forge::checkpoint_pickle(&shapes, buffer, more_state);
    let pickle = [&pickle[..2], before, &pickle[2..]].concat();
    let paths = [dir.join(format!("{name}.pt")), dir.join(format!("{name}-legacy.pt"))];
    std::fs::write(&paths[0], forge::torch_zip(&pickle, &numels)).unwrap();
    std::fs::write(&paths[1], forge::legacy(&pickle, &numels)).unwrap();
    paths
}

fn import(file: &Path, out: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["import", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--data", "data/fashion-mnist"];
    args.extend_from_slice(extra);
    sadajem(&args)
}

/// Writes `pickle` as both formats (no storages) and expects `message` from each import.
fn both_formats_refused(dir: &Path, name: &str, pickle: &[u8], message: &str) {
    for (ext, bytes) in [("pt", forge::torch_zip(pickle, &[])), ("legacy.pt", forge::legacy(pickle, &[]))] {
        let file = dir.join(format!("{name}.{ext}"));
        std::fs::write(&file, bytes).unwrap();
        let out = dir.join(format!("run-{name}-{ext}"));
        refused(&import(&file, &out, &[]), message);
        assert!(!out.exists(), "nothing written");
    }
}

/// Class 1: 300,000 nested tuples (also lists and dicts) in a few hundred bytes.
#[test]
fn deeply_nested_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pickle::default();
    p.op(&vec![b'('; 300_000]).op(&vec![b't'; 300_000]);
    both_formats_refused(dir.path(), "tuples", &p.stop(), "nested more than 64 levels deep");
    let mut p = Pickle::default();
    p.op(&vec![b']'; 200_000]).op(&vec![b'a'; 199_999]);
    both_formats_refused(dir.path(), "lists", &p.stop(), "nested more than 64 levels deep");
    let mut p = Pickle::default();
    p.op(b"}").op(&b"K\x01}".repeat(499_999)).op(&vec![b's'; 499_999]);
    both_formats_refused(dir.path(), "dicts", &p.stop(), "nested more than 64 levels deep");
}

/// Class 2: 61 lists each holding the previous twice (hung forever), with tensors at the leaves
/// (filled memory), and a million references to one tensor (2 GB, a 129 MB imported.json).
#[test]
fn shared_references_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let laughs = |leaf: &mut Pickle| {
        leaf.put(0).op(b"0");
        for i in 1..=61u32 {
            leaf.op(b"(").get(i - 1).get(i - 1).op(b"l").put(i).op(b"0");
        }
        leaf.get(61).stop()
    };
    let mut p = Pickle::default();
    p.op(b"]");
    both_formats_refused(dir.path(), "laughs", &laughs(&mut p), "billion laughs");
    let mut p = Pickle::default();
    p.tensor("0", 1000, 0, &[1000], &[1]);
    let pickle = laughs(&mut p);
    for (ext, bytes) in [("pt", forge::torch_zip(&pickle, &[1000])), ("legacy.pt", forge::legacy(&pickle, &[1000]))] {
        let file = dir.path().join(format!("tensor-laughs.{ext}"));
        std::fs::write(&file, bytes).unwrap();
        let r = import(&file, &dir.path().join("run"), &[]);
        refused(&r, "reading the tensors of");
        assert!(r.out.contains("billion laughs") || r.out.contains("can honestly hold"), "{}", r.out);
    }
    let mut p = Pickle::default();
    p.op(b"}").tensor("0", 1, 0, &[1], &[1]).put(0).op(b"0").str("k").put(1).op(b"0(");
    for _ in 0..1_000_000 {
        p.get(1).get(0);
    }
    let pickle = p.op(b"u").stop();
    std::fs::write(dir.path().join("million.pt"), forge::torch_zip(&pickle, &[1])).unwrap();
    refused(&import(&dir.path().join("million.pt"), &dir.path().join("run"), &[]), "more than 100000 tensors");
}

/// Class 3: declared sizes of 2^62 (aborted) and 2^63 + 1 (panicked), and deflate bombs.
#[test]
fn zip_sizes_are_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let shapes = reference_shapes();
    let shapes: Vec<(&str, Vec<i64>)> = shapes.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    let (pickle, numels) = forge::checkpoint_pickle(&shapes, None, b"");
    let storages = |skip: usize| -> Vec<Record> {
        numels.iter().enumerate().skip(skip).map(|(i, &n)| Record::plain(&format!("archive/data/{i}"), &vec![0; 4 * n as usize])).collect()
    };
    for declared in [1u64 << 62, (1 << 63) + 1] {
        let mut records = vec![Record { declared, ..Record::plain("archive/data.pkl", &pickle) }];
        records.extend(storages(0));
        std::fs::write(dir.path().join("pkl.pt"), forge::zip(&records)).unwrap();
        refused(&import(&dir.path().join("pkl.pt"), &dir.path().join("run"), &[]), &format!("record archive/data.pkl declares {declared} bytes"));
        let mut records = vec![
            Record::plain("archive/data.pkl", &pickle),
            Record { declared, ..Record::plain("archive/data/0", &vec![0; 4 * numels[0] as usize]) },
        ];
        records.extend(storages(1));
        std::fs::write(dir.path().join("storage.pt"), forge::zip(&records)).unwrap();
        refused(&import(&dir.path().join("storage.pt"), &dir.path().join("run"), &[]), &format!("record archive/data/0 declares {declared} bytes"));
    }
    // A storage record of a few kB that inflates to 1 GB.
    let bomb = vec![0u8; 1 << 30];
    let mut records = vec![Record::plain("archive/data.pkl", &pickle), Record::deflated("archive/data/0", &bomb, 4 * numels[0] as u64)];
    drop(bomb);
    records.extend(storages(1));
    let file = dir.path().join("bomb.pt");
    std::fs::write(&file, forge::zip(&records)).unwrap();
    assert!(std::fs::metadata(&file).unwrap().len() < 3 << 20);
    refused(&import(&file, &dir.path().join("run"), &[]), &format!("record archive/data/0 holds more than the {} bytes it declares", 4 * numels[0]));
}

/// Class 4: a replay buffer as a stride-0 view of one element (1e12 elements panicked; 30,000
/// turned a small file into two checkpoints of 94 MB), and an empty one (panicked in min()).
#[test]
fn replay_buffer_views_are_budgeted_and_an_empty_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (n, message) in
        [(1_000_000_000_000i64, "replay_buffer of size [1000000000000, 1, 28, 28]"), (30_000, "replay_buffer of size [30000, 1, 28, 28]")]
    {
        for file in forged(dir.path(), "view", Some((vec![n, 1, 28, 28], vec![0; 4], 1)), b"", b"") {
            let out = dir.path().join("run");
            refused(&import(&file, &out, &[]), message);
            assert!(!out.exists());
        }
    }
    let shape = vec![0, 1, 28, 28];
    for file in forged(dir.path(), "empty", Some((shape.clone(), forge::contiguous(&shape), 0)), b"", b"") {
        refused(&import(&file, &dir.path().join("run"), &[]), "`replay_buffer` has shape [0, 1, 28, 28]; expected [N, 1, H, W] with N ≥ 1");
    }
    // --max-tensor-bytes lowers (or raises) the cap, and the message says so.
    let shape = vec![16, 1, 28, 28];
    let [file, _] = forged(dir.path(), "honest", Some((shape.clone(), forge::contiguous(&shape), 16 * 784)), b"", b"");
    refused(
        &import(&file, &dir.path().join("run"), &["--max-tensor-bytes", "64K"]),
        "the 64.0 KiB allowed (sadajem import --max-tensor-bytes raises it)",
    );
    let r = import(&file, &dir.path().join("run"), &["--max-tensor-bytes", "1G"]);
    assert_eq!(r.code, Some(0), "{}", r.out);
    let r = import(&file, &dir.path().join("run2"), &["--max-tensor-bytes", "lots"]);
    assert_eq!(r.code, Some(2), "a bad size is a usage error: {}", r.out);
}

/// Class 5: a payload that runs under torch.load is named (and refused with --strict); a
/// non-tensor entry in model_state_dict is an unknown key.
#[test]
fn code_carrying_checkpoints_are_named_and_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let shape = vec![16, 1, 28, 28];
    let buffer = Some((shape.clone(), forge::contiguous(&shape), 16 * 784));
    // posix.system("true") — harmless even where it would run; here nothing runs.
    let mut payload = Pickle(vec![]);
    payload.global("posix", "system").str("true").op(b"\x85R0");
    for (i, file) in forged(dir.path(), "payload-runs-code-under-torch-load", buffer.clone(), b"", &payload.0).iter().enumerate() {
        let out = dir.path().join(format!("run{i}"));
        let r = import(file, &out, &["--strict"]);
        refused(&r, "refused (--strict): its pickle would have run code under torch.load: `posix.system` (called 1 time(s))");
        assert!(!out.exists());
        let r = import(file, &out, &[]);
        assert_eq!(r.code, Some(0), "{}", r.out);
        assert!(r.out.contains("warning:") && r.out.contains("ignored: would have run code under torch.load: `posix.system`"), "{}", r.out);
    }
    let mut extra = Pickle(vec![]);
    extra.str("f.extra").op(b"K\x05");
    for file in forged(dir.path(), "extra", buffer, &extra.0, b"") {
        refused(&import(&file, &dir.path().join("run"), &[]), "unknown key(s) `f.extra` (not a tensor but 5)");
    }
}

/// Class 6 and 7: a run directory whose eval JSON lists /etc/passwd, whose samples/ links to
/// /dev/zero and holds a FIFO, and whose metrics span ±1e308 (report and compare hung).
#[test]
fn report_and_compare_read_only_their_own_files_and_never_hang() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("eval")).unwrap();
    std::fs::create_dir_all(run.join("samples")).unwrap();
    std::fs::write(run.join("config.toml"), "").unwrap();
    let mut metrics = String::new();
    for (i, v) in [(0, -1e308), (1, 1e308), (2, 5e-324), (3, f64::MAX)] {
        // Whole training lines (the report skips a line missing a field), every number extreme.
        metrics += &format!(
            "{{\"kind\": \"train\", \"iter\": {i}, \"epoch\": 0, \"loss\": {v:e}, \"ce\": {v:e}, \"acc\": {v:e}, \"lr\": {v:e}, \"img_per_s\": {v:e}}}\n"
        );
    }
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    std::fs::write(run.join("eval/ood.json"), r#"{"sets": {}, "plots": ["/etc/passwd", "../../../../etc/passwd"]}"#).unwrap();
    std::fs::write(
        run.join("eval/robustness.json"),
        r#"{"norms": {"linf": [{"eps": -1e308, "accuracy": 1e308}, {"eps": 1e308, "accuracy": -1e308}]}}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", run.join("samples/iter_0000001.png")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", run.join("samples/iter_0000002.png")).unwrap();
    let fifo = std::ffi::CString::new(run.join("samples/final.png").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let r = sadajem_env(&["report", "--run-dir", run.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert!(r.peak_rss_mb < RSS_LIMIT_MB, "{}", r.peak_rss_mb);
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(!html.contains("root:x:0"), "/etc/passwd is in the page");
    assert!(html.len() < 5 << 20, "{} bytes", html.len());
    for note in [
        "not embedded: /etc/passwd",
        "not embedded: samples/iter_0000002.png: a symbolic link",
        "not embedded: samples/final.png: not a regular file",
    ] {
        assert!(html.contains(note), "{note}");
    }
    assert!(r.out.contains("warning:") && r.out.contains("not embedded"), "{}", r.out);
    // The extreme values were plotted, not skipped: the curves exist.
    for curve in ["loss", "lr"] {
        assert!(run.join(RunDir::report_curve_inside(curve)).is_file(), "curve {curve} not drawn");
    }
    let out = dir.path().join("cmp");
    let r = sadajem_env(&["compare", "--out", out.to_str().unwrap(), run.to_str().unwrap()], &[], Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert!(out.join("robustness.png").exists());
    eprintln!("report and compare: exit 0, peak RSS {:.0} MB", r.peak_rss_mb);
}

/// Class 8: --out over a user's files is refused and leaves them; a failed import (a file-size
/// limit standing in for a full disk) leaves nothing, and the retry works.
#[test]
fn import_out_never_overwrites_and_never_half_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture("checkpoint.pt");
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), "years of work").unwrap();
    refused(&import(&file, &mine, &[]), "not empty, and not an earlier import of");
    assert_eq!(std::fs::read_to_string(mine.join("thesis.tex")).unwrap(), "years of work");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);

    let out = dir.path().join("run");
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 64; exec {} import {} --out {} --data data/fashion-mnist",
        env!("CARGO_BIN_EXE_sadajem"),
        file.display(),
        out.display()
    );
    let r = sadajem_sh(&cmd);
    refused(&r, "File too large");
    assert!(!out.exists(), "a failed import leaves no run behind");
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["mine"], "no staging directory left");
    let r = import(&file, &out, &[]);
    assert_eq!(r.code, Some(0), "the retry: {}", r.out);
    refused(&import(&file, &out, &[]), "already holds a run imported from this same file");
}

/// `sh -c CMD` under the same deadline and accounting as [`sadajem_env`].
fn sadajem_sh(cmd: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("err");
    let c = format!("{cmd} 2>{}", err.display());
    let o = Command::new("sh").args(["-c", &c]).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &std::fs::read_to_string(&err).unwrap_or_default();
    Ran { code: o.status.code(), out, peak_rss_mb: 0.0 }
}

/// Class 9 and 10: settings that overflowed the stack, panicked or segfaulted, a huge value,
/// an image folder that does not fit, a gzip claiming 1000-fold expansion.
#[test]
fn settings_and_readers_fail_with_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    let run_s = run.to_str().unwrap();
    let key = format!("{}=1", vec!["a"; 60_000].join("."));
    // 100 kB: one argument can be at most 128 KiB (Linux's MAX_ARG_STRLEN).
    let huge = format!("optim.lr={}", "9".repeat(100_000));
    let cases: [(&str, &str); 5] = [
        (&key, "120001 bytes, more than the 65536 a setting may take"),
        ("a.b.c.d=1", "settings are SECTION.KEY, not 4 dotted parts"),
        ("model.widen=100000", "a WRN-16-100000 of about 1.71e15 parameters"),
        ("model.depth=6000000004", "a WRN-6000000004-1 of about"),
        (&huge, "more than the 65536 a setting may take"),
    ];
    for (set, message) in cases {
        let r = sadajem(&["train", "--preset", "softmax-fashion", "--run-dir", run_s, "--set", "model.widen=1", "--set", set]);
        refused(&r, message);
        assert!(!run.exists());
    }
    // An image folder that fits the disk but not (a pretended 1 MB of) memory.
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    for i in 0..3 {
        image::RgbImage::new(8, 8).save(folder.join(format!("{i}.png"))).unwrap();
    }
    let r = sadajem_env(
        &["data", "info", folder.to_str().unwrap(), "--size", "512"],
        &[("SADAJEM_TEST_MEMORY_BYTES", "1000000")],
        Duration::from_secs(60),
    );
    refused(&r, "3 images at 512x512 with 3 channel(s) take 2359296 bytes (2.2 MiB): more than this machine's 976.6 KiB of memory");
    // Half a gigabyte of zeros gzip'd to half a megabyte, its header telling the truth.
    let idx = dir.path().join("idx");
    std::fs::create_dir(&idx).unwrap();
    let n: u32 = 512_000_000 / 784;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    use std::io::Write;
    enc.write_all(&[0, 0, 8, 3]).unwrap();
    for d in [n, 28, 28] {
        enc.write_all(&d.to_be_bytes()).unwrap();
    }
    let zeros = vec![0u8; 784];
    for _ in 0..n {
        enc.write_all(&zeros).unwrap();
    }
    std::fs::write(idx.join("train-images-idx3-ubyte.gz"), enc.finish().unwrap()).unwrap();
    std::fs::write(idx.join("train-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    let r = sadajem(&["data", "info", idx.to_str().unwrap()]);
    refused(
        &r,
        &format!("implausible header: header says {n} images of 28x28 ({} bytes after the 16-byte header), more than 100 times", n as u64 * 784),
    );
}
