//! What a user's long run depends on: surviving SIGKILL at any moment, falling back past a
//! damaged checkpoint, and refusing bad settings and environments before training starts.
//! (docs/reliability.md records what these tests showed.)
mod support;

use sadajem::store::checkpoint;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};
use support::{command, final_json, metric_lines, metrics_without_throughput, names_in, sadajem, text};

/// A softmax WRN-10-1 on 1,000 Fashion-MNIST images in batches of 32: 31 iterations an epoch,
/// each followed by a checkpoint, so that a random kill often lands inside a checkpoint write.
const SMALL: &[&str] = &[
    "--set",
    "model.depth=10",
    "--set",
    "model.widen=1",
    "--set",
    "optim.lr=0.05",
    "--set",
    "optim.warmup_iters=10",
    "--set",
    "data.max_train=1100",
    "--set",
    "data.max_test=200",
    "--set",
    "data.n_valid=100",
    "--set",
    "data.batch_size=32",
    "--set",
    "train.log_every=1",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "train.threads=1",
];

/// The [`support::train_args`] of a [`SMALL`] softmax run.
fn train_args<'a>(run_dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    support::train_args("softmax-fashion", SMALL, run_dir, extra)
}

/// xorshift64: the kill times are random but the same on every run of the test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let out = File::create(log).unwrap();
    command(args).stdout(out.try_clone().unwrap()).stderr(out).spawn().unwrap()
}

/// Waits until `child` has logged more than `lines` metrics lines; fails if it exits first.
fn wait_for_progress(child: &mut Child, run: &Path, lines: usize, log: &Path) {
    let start = Instant::now();
    while metric_lines(run) <= lines {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited ({status}) before it was killed:\n{}", std::fs::read_to_string(log).unwrap());
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress in a minute");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn twenty_kills_at_random_moments_never_leave_a_run_that_cannot_resume() {
    const TRIALS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    // 160 training images: 5 iterations an epoch, so that kills also meet epoch ends
    // (validation, best.safetensors); 100 iterations in all.
    let settings = ["--set", "data.max_train=260", "--set", "train.epochs=20"];

    let whole = dir.path().join("whole");
    let o = sadajem(&train_args(&whole, &settings));
    assert!(o.status.success(), "{}", text(&o));

    let run = dir.path().join("killed");
    let run_str = run.to_str().unwrap().to_string();
    let resume = ["train", "--resume", run_str.as_str()];
    let mut rng = Rng(0x5ADA_7E11_DEAD_BEEF);
    let (mut mid_write, mut before_training) = (0, 0);
    // How long the first run takes to its first iteration: loading libtorch and the data.
    let mut start_up = Duration::ZERO;
    for trial in 0..TRIALS {
        let log = dir.path().join(format!("trial-{trial}.log"));
        let lines = metric_lines(&run);
        let started = Instant::now();
        let mut child = if trial == 0 { spawn(&train_args(&run, &settings), &log) } else { spawn(&resume, &log) };
        if trial % 4 == 3 {
            // Any moment from the start to the first iterations: loading, restoring, training.
            let most = start_up.as_micros() as u64 * 6 / 5;
            std::thread::sleep(Duration::from_micros(rng.below(most)));
        } else {
            // Inside training, where most of the time goes into checkpoint writes.
            wait_for_progress(&mut child, &run, lines, &log);
            if trial == 0 {
                start_up = started.elapsed();
            }
            std::thread::sleep(Duration::from_micros(rng.below(40_000)));
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("trial {trial}: exited ({status}) before it was killed:\n{}", std::fs::read_to_string(&log).unwrap());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if metric_lines(&run) <= lines {
            before_training += 1;
        }

        // What the kill left: latest.safetensors intact (atomic writes), perhaps a temporary file.
        let ckpts = run.join("checkpoints");
        let names = names_in(&ckpts);
        if names.iter().any(|n| n.ends_with(".tmp")) {
            mid_write += 1;
        }
        assert!(run.join("config.toml").exists());
        if names.iter().any(|n| n == "latest.safetensors") {
            checkpoint::read(&ckpts.join("latest.safetensors")).unwrap_or_else(|e| panic!("trial {trial}: {e:#}"));
        }
        assert!(!names.iter().any(|n| n.ends_with(".bad")), "trial {trial}: {names:?}");
        assert!(
            names.iter().filter(|n| n.starts_with("iter_")).count() <= 3,
            "keep_checkpoints = 3 (one more between keeping and pruning): {names:?}"
        );
    }

    let o = sadajem(&resume);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming"), "{}", text(&o));
    let out = text(&o);
    let from = out.split("iteration ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("?");
    eprintln!(
        "{TRIALS} kills: {mid_write} left a temporary file (killed during a checkpoint write), \
         {before_training} came before any new iteration; the last resume started at iteration {from} of 100"
    );
    // Bitwise the uninterrupted run: every kill lost only work that was redone exactly.
    assert_eq!(metrics_without_throughput(&run), metrics_without_throughput(&whole));
    assert_eq!(final_json(&run)["test_accuracy"], final_json(&whole)["test_accuracy"]);
    let names = names_in(&run.join("checkpoints"));
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

/// Trains a short run whose checkpoints are then damaged by `damage`; returns the run, the
/// metrics of the undamaged run and the resume's output.
fn resume_after(dir: &Path, damage: impl Fn(&Path)) -> (PathBuf, Vec<serde_json::Value>, Output) {
    let run = dir.join("run");
    let o = sadajem(&train_args(&run, &["--set", "train.epochs=1", "--set", "train.checkpoint_every=4"]));
    assert!(o.status.success(), "{}", text(&o));
    let before = metrics_without_throughput(&run);
    damage(&run.join("checkpoints"));
    let o = sadajem(&["train", "--resume", run.to_str().unwrap()]);
    (run, before, o)
}

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    bytes[n - 1000] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

fn cut_in_half(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn three_checkpoints_are_kept_and_a_damaged_latest_falls_back_to_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    // 31 iterations, checkpoints at 4, 8, ..., 28 and 31 (the epoch end): 28 and 24 are kept.
    let (run, before, o) = resume_after(dir.path(), |ckpts| {
        assert_eq!(names_in(ckpts), ["best.safetensors", "iter_0000024.safetensors", "iter_0000028.safetensors", "latest.safetensors"]);
        flip_byte(&ckpts.join("latest.safetensors"));
    });
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("latest.safetensors: checksum mismatch") && out.contains("latest.safetensors.bad"), "{out}");
    assert!(out.contains("falling back to") && out.contains("iter_0000028.safetensors (iteration 28)"), "{out}");
    // The lines after iteration 28 were dropped and logged again, identically.
    assert_eq!(metrics_without_throughput(&run), before);
    assert!(run.join("checkpoints/latest.safetensors.bad").exists());
}

#[test]
fn a_truncated_latest_and_previous_fall_back_two_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (run, before, o) = resume_after(dir.path(), |ckpts| {
        cut_in_half(&ckpts.join("latest.safetensors"));
        flip_byte(&ckpts.join("iter_0000028.safetensors"));
    });
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("latest.safetensors: damaged or not a sadajem checkpoint: truncated"), "{out}");
    assert!(out.contains("iter_0000028.safetensors: checksum mismatch"), "{out}");
    assert!(out.contains("iter_0000024.safetensors (iteration 24)"), "{out}");
    assert_eq!(metrics_without_throughput(&run), before);
}

#[test]
fn with_every_checkpoint_damaged_resume_says_so_and_then_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _, o) = resume_after(dir.path(), |ckpts| {
        for name in ["latest.safetensors", "iter_0000028.safetensors", "iter_0000024.safetensors"] {
            cut_in_half(&ckpts.join(name));
        }
    });
    let out = text(&o);
    assert!(!o.status.success());
    assert!(out.contains("no intact checkpoint left") && out.contains("iter_0000024.safetensors.bad"), "{out}");
    assert!(out.contains("would start the run from the beginning"), "{out}");
    let o = sadajem(&["train", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("no checkpoint to resume from; starting from the beginning"), "{}", text(&o));
}

#[test]
fn an_intact_checkpoint_of_another_kind_stops_the_resume_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _, o) = resume_after(dir.path(), |ckpts| {
        // Checksum and all, but its state is not a training state (say, an imported model).
        let t = checkpoint::RawTensor { dtype: safetensors::Dtype::F32, shape: vec![1], data: vec![0; 4] };
        let bytes = checkpoint::encode(&[("model.w".into(), t)], r#"{"imported_from":"x.pt"}"#.into()).unwrap();
        std::fs::write(ckpts.join("latest.safetensors"), bytes).unwrap();
    });
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("latest.safetensors: not the kind of checkpoint expected here: its state is not a TrainState"), "{out}");
    assert!(run.join("checkpoints/latest.safetensors").exists() && !out.contains(".bad"), "{out}");
}

/// A failure before training must leave no run directory behind (so the same command can be
/// run again once the mistake is fixed) and print `expected`.
fn fails_cleanly(extra: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = sadajem(&train_args(&run, extra));
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    for e in expected {
        assert!(out.contains(e), "expected `{e}` in:\n{out}");
    }
    assert!(!run.exists(), "{out}");
}

#[test]
fn missing_or_broken_data_fails_before_the_run_directory_is_made() {
    fails_cleanly(&["--set", "data.dir=\"no/such/data\""], &["no/such/data", "no such directory"]);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy("data/mnist/train-images-idx3-ubyte.gz", data.join("train-images-idx3-ubyte.gz")).unwrap();
    let set = format!("data.dir=\"{}\"", data.display());
    fails_cleanly(&["--set", &set], &["no such file; expected", "train-labels-idx1-ubyte", "digits"]);

    std::fs::write(data.join("train-labels-idx1-ubyte"), b"\0\0\x08\x01\0\0\0\x05\x01").unwrap();
    fails_cleanly(&["--set", &set], &["train-labels-idx1-ubyte: truncated: header says 5 labels"]);
}

#[test]
fn an_absent_gpu_fails_before_the_run_directory_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = sadajem(&train_args(&run, &["--set", "train.device=\"cuda:99\"", "--set", "train.epochs=1"]));
    if o.status.success() {
        return; // a machine with 100 GPUs
    }
    let out = text(&o);
    assert!(out.contains("cuda") && (out.contains("CUDA library") || out.contains("CUDA device(s)")), "{out}");
    assert!(!run.exists(), "{out}");
    fails_cleanly(&["--set", "train.device=\"gpu\""], &["device `gpu`", "cuda:N"]);
}

#[test]
fn unknown_presets_and_settings_fail_before_the_run_directory_is_made() {
    fails_cleanly(&["--set", "train.keep_checkpoint=2"], &["unknown setting `train.keep_checkpoint`", "keep_checkpoints"]);
    fails_cleanly(&["--set", "train.keep_checkpoints=0"], &["train.keep_checkpoints", "expected ≥ 1"]);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = sadajem(&["train", "--preset", "softmax-fashoin", "--run-dir", run.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("unknown preset `softmax-fashoin`; available presets: softmax-fashion"), "{}", text(&o));
    assert!(!run.exists());
}

#[test]
fn an_unwritable_run_directory_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    // A path under a regular file cannot be created, whoever runs the test (root included).
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let o = sadajem(&train_args(&file.join("run"), &[]));
    let out = text(&o);
    assert!(!o.status.success() && out.contains("cannot create the run directory") && out.contains("Not a directory"), "{out}");

    // On resume: `checkpoints` is not a directory it can write into.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("config.toml"), "").unwrap();
    std::fs::write(run.join("checkpoints"), "").unwrap();
    let o = sadajem(&["train", "--resume", run.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success() && out.contains("checkpoints: cannot create"), "{out}");
    assert!(!run.join("metrics.jsonl").exists());
}

#[test]
fn a_full_disk_is_refused_before_training_and_the_run_resumes_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = command(&train_args(&run, &["--set", "train.epochs=1"])).env(sadajem::run::FREE_BYTES_ENV, "100000").output().unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("not enough free space for this run's checkpoints: 100.0 kB free, about"), "{out}");
    assert!(out.contains("train.keep_checkpoints") && out.contains("--resume"), "{out}");
    assert!(!run.join("metrics.jsonl").exists() && names_in(&run.join("checkpoints")).is_empty());

    let o = sadajem(&["train", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("no checkpoint to resume from; starting from the beginning"), "{}", text(&o));
}

#[test]
fn a_damaged_config_on_resume_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("config.toml"), "[model]\ndepth = \n").unwrap();
    let o = sadajem(&["train", "--resume", run.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success() && out.contains("config.toml: invalid TOML"), "{out}");
}
