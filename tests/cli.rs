//! End-to-end tests of the `sadajem` command line on the bundled data.
mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::{command, final_json, metric_lines, metrics, metrics_without_throughput, sadajem, text, train_args};

/// A small but real softmax run: WRN-10-1 on 5,500 Fashion-MNIST images (39 batches an epoch).
const TINY: &[&str] = &[
    "--set",
    "model.depth=10",
    "--set",
    "model.widen=1",
    "--set",
    "optim.lr=0.05",
    "--set",
    "data.max_train=5500",
    "--set",
    "data.max_test=1000",
    "--set",
    "data.n_valid=500",
    "--set",
    "optim.warmup_iters=10",
    "--set",
    "optim.decay_epochs=[2]",
    "--set",
    "train.log_every=5",
    "--set",
    "train.threads=1",
];

fn train(run_dir: &Path, extra: &[&str]) -> Output {
    sadajem(&train_args("softmax-fashion", TINY, run_dir, extra))
}

/// A small SADA-JEM run: WRN-10-1, 1,000 training images in batches of 32 (31 an epoch),
/// 16 chains of 2 clipped steps from the informative init, ASAM.
const TINY_JEM: &[&str] = &[
    "--set",
    "model.depth=10",
    "--set",
    "model.widen=1",
    "--set",
    "data.max_train=1100",
    "--set",
    "data.max_test=300",
    "--set",
    "data.n_valid=100",
    "--set",
    "data.batch_size=32",
    "--set",
    "loss.px_batch_size=16",
    "--set",
    "sampler.batch_size=16",
    "--set",
    "sampler.steps=2",
    "--set",
    "sampler.buffer_size=200",
    "--set",
    "optim.warmup_iters=10",
    "--set",
    "optim.lr=0.05",
    "--set",
    "train.threads=1",
];

fn train_jem(run_dir: &Path, extra: &[&str]) -> Output {
    sadajem(&train_args("sadajem-fashion", TINY_JEM, run_dir, extra))
}

#[test]
fn data_info_prints_the_canonical_fashion_mnist_statistics() {
    let o = sadajem(&["data", "info", "data/fashion-mnist"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("60000") && out.contains("10000"), "{out}");
    assert!(out.contains("0.28604") && out.contains("0.35302"), "{out}");
    assert!(out.contains("6000"), "{out}");
}

#[test]
fn data_info_on_a_missing_directory_says_so() {
    let o = sadajem(&["data", "info", "no/such/dir"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no/such/dir"), "{}", text(&o));
}

#[test]
fn softmax_training_writes_a_complete_run_directory_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = train(&run, &["--set", "train.epochs=3"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["config.toml", "metrics.jsonl", "checkpoints/latest.safetensors", "checkpoints/best.safetensors", "final.json"] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let fin = final_json(&run);
    let acc = fin["test_accuracy"].as_f64().unwrap();
    // 3 epochs on 5,000 images (measured: 69 %): far above chance (10 %), short of the demo's 91 %.
    assert!(acc > 0.5, "test accuracy {acc}");
    assert_eq!(fin["iterations"], 3 * (5000 / 128));
    let m = metrics(&run);
    let train_lines: Vec<_> = m.iter().filter(|r| r["kind"] == "train").collect();
    for key in ["loss", "ce", "acc", "lr", "img_per_s", "iter", "epoch"] {
        assert!(train_lines[0].get(key).is_some(), "metrics lack {key}");
    }
    assert_eq!(m.iter().filter(|r| r["kind"] == "valid").count(), 3);
    // The saved config is complete: it names every section.
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("[model]") && cfg.contains("widen = 1") && cfg.contains("max_train = 5500"));
    // A second run into the same directory is refused.
    let again = train(&run, &[]);
    assert!(!again.status.success() && text(&again).contains("--resume"));
}

/// `data.n_valid = 0` (all training images, as the authors' code trains): the console says
/// there is no validation split, no NaN is written anywhere, no best checkpoint is invented, and
/// `eval` takes the last checkpoint.
#[test]
fn a_run_without_a_validation_split_says_so_and_writes_no_nan() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = train(&run, &["--set", "data.n_valid=0", "--set", "data.max_train=2000", "--set", "train.epochs=2"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("no validation split"), "{out}");
    assert!(!out.contains("(best)") && !out.to_lowercase().contains("nan"), "{out}");
    let fin = std::fs::read_to_string(run.join("final.json")).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for (name, body) in [("final.json", &fin), ("metrics.jsonl", &metrics)] {
        assert!(!body.to_lowercase().contains("nan"), "{name}: {body}");
    }
    let fin: serde_json::Value = serde_json::from_str(&fin).unwrap();
    assert!(fin["test_accuracy"].as_f64().unwrap() > 0.3, "{fin}");
    assert!(fin["best_valid_accuracy"].is_null() && fin["test_accuracy_best_checkpoint"].is_null(), "{fin}");
    assert!(!run.join("checkpoints/best.safetensors").exists());
    assert_eq!(metrics.lines().filter(|l| l.contains("\"valid\"")).count(), 0);
    let e = sadajem(&["eval", "--run-dir", run.to_str().unwrap(), "--only", "accuracy"]);
    assert!(e.status.success() && text(&e).contains("latest.safetensors"), "{}", text(&e));
}

/// Runs `sadajem args` and kills it (SIGKILL) once `run_dir/metrics.jsonl` has `lines` lines.
fn train_until_killed(args: &[&str], run_dir: &Path, lines: usize) {
    let mut child = command(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if metric_lines(run_dir) >= lines {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be killed");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run_dir.join("final.json").exists());
}

/// Trains into `dir/whole` uninterrupted and into `dir/killed` with a SIGKILL once `kill_at`
/// metrics lines exist, then resumes the killed run and checks both logs agree bitwise.
fn kill_and_resume_matches(dir: &Path, preset: &str, tiny: &[&str], settings: &[&str], kill_at: usize) {
    let whole = dir.join("whole");
    let o = sadajem(&train_args(preset, tiny, &whole, settings));
    assert!(o.status.success(), "{}", text(&o));

    let killed = dir.join("killed");
    train_until_killed(&train_args(preset, tiny, &killed, settings), &killed, kill_at);

    let o = sadajem(&["train", "--resume", killed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Bitwise: same thread count, same CPU kernels, every random stream restored.
    assert_eq!(metrics_without_throughput(&killed), metrics_without_throughput(&whole));
    assert_eq!(final_json(&killed)["test_accuracy"], final_json(&whole)["test_accuracy"]);
}

#[test]
fn a_killed_softmax_run_resumes_to_the_same_metrics_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ["--set", "train.epochs=2", "--set", "train.checkpoint_every=7", "--set", "train.log_every=1"];
    // Killed in the second epoch (39 batches each), after the checkpoint at iteration 42, so the
    // resume starts mid-epoch and the lines logged since are replayed.
    kill_and_resume_matches(dir.path(), "softmax-fashion", TINY, &settings, 45);
}

#[test]
fn a_killed_sadajem_run_resumes_to_the_same_metrics_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ["--set", "train.epochs=2", "--set", "train.checkpoint_every=5", "--set", "train.log_every=1"];
    // The replay buffer, libtorch's generator (reinit draws, init samples) and the clean
    // likelihood stream must all come back for the chains to replay: killed after the
    // checkpoint at iteration 15, before the first validation (31 batches an epoch).
    kill_and_resume_matches(dir.path(), "sadajem-fashion", TINY_JEM, &settings, 18);
}

#[test]
fn sadajem_training_logs_the_energy_terms_and_writes_sample_grids() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = train_jem(&run, &["--set", "train.epochs=1", "--set", "train.sample_every=10", "--set", "train.log_every=5"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["init.safetensors", "samples/iter_0000010.png", "samples/final.png", "final.json"] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let grid = image::open(run.join("samples/final.png")).unwrap();
    assert_eq!(grid.width(), 8 * 30 + 2, "8 columns of 28-pixel images with 2-pixel borders");
    let m = metrics(&run);
    let line = m.iter().find(|r| r["kind"] == "train").unwrap();
    for key in ["loss", "ce", "l_px", "lse_data", "lse_sample", "acc", "lr", "img_per_s"] {
        assert!(line[key].as_f64().is_some_and(f64::is_finite), "metrics lack a finite {key}: {line}");
    }
    let expected = line["ce"].as_f64().unwrap() + line["l_px"].as_f64().unwrap();
    assert!((line["loss"].as_f64().unwrap() - expected).abs() < 1e-4);
    tensorboard_shows_the_run(&run);
}

#[test]
fn divergence_rolls_back_then_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Any |L_px| above 1e-12 counts as divergence, so every attempt diverges.
    let o = train_jem(&run, &["--set", "loss.diverge_at=1e-12", "--set", "train.max_rollbacks=2"]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("rollback 1/2") && out.contains("rollback 2/2"), "{out}");
    assert!(out.contains("train.max_rollbacks") && out.contains("diverge_at"), "{out}");
    let rollbacks: Vec<_> = metrics(&run).into_iter().filter(|r| r["kind"] == "rollback").collect();
    assert_eq!(rollbacks.len(), 2);
    assert_eq!(rollbacks[1]["lr_scale"], 0.25);
    assert!(run.join("checkpoints/latest.safetensors").exists(), "the last good checkpoint stays");
}

#[test]
fn bad_settings_fail_before_training_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(&dir.path().join("r"), &["--set", "optim.lrr=0.1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("optim.lrr") && text(&o).contains("weight_decay"), "{}", text(&o));
    let o = sadajem(&["train", "--preset", "nope"]);
    assert!(!o.status.success() && text(&o).contains("softmax-fashion"), "{}", text(&o));
    let o = train(&dir.path().join("r2"), &["--set", "data.dir=\"no/such/data\""]);
    assert!(!o.status.success() && text(&o).contains("no/such/data"), "{}", text(&o));
}

#[test]
fn presets_are_listed_and_printed() {
    let o = sadajem(&["presets"]);
    assert!(o.status.success() && text(&o).contains("softmax-cifar10"));
    let o = sadajem(&["presets", "softmax-fashion"]);
    assert!(text(&o).contains("[model]"));
}

/// The FID network: SADAJEM_INCEPTION, else the one `make setup` puts in weights/, else
/// ../shared's, when this machine has one.
fn inception_file() -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let known = [root.join(INSTALLED_INCEPTION), root.join("../shared/weights/inception-2015-12-05-fid.torchscript.pt")];
    let p = std::env::var_os("SADAJEM_INCEPTION").map(std::path::PathBuf::from).or_else(|| known.into_iter().find(|p| p.exists()))?;
    p.exists().then_some(p)
}

#[test]
fn eval_writes_every_metric_and_plot_and_report_and_sample_draws_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    // Kept after the test: scripts/browser-test.sh opens its report.html.
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/eval-run");
    let _ = std::fs::remove_dir_all(&run);
    let o = train_jem(&run, &["--set", "train.epochs=1"]);
    assert!(o.status.success(), "{}", text(&o));
    let cache = dir.path().join("cache");
    let cache_set = format!("eval.cache_dir=\"{}\"", cache.display());
    // The network `make setup` installs must be found in weights/ without being named.
    let installed = std::env::var_os("SADAJEM_INCEPTION").is_none().then(installed_inception).flatten();
    let inception = installed.clone().or_else(inception_file);
    let inception_set = format!("eval.inception=\"{}\"", inception.as_ref().map_or(String::new(), |p| p.display().to_string()));
    let mut args = vec![
        "eval",
        "--run-dir",
        run.to_str().unwrap(),
        "--checkpoint",
        "latest",
        "--set",
        "eval.n_test=200",
        "--set",
        "eval.refine_steps=2",
        "--set",
        "eval.ood_sets=[\"data/mnist\", \"interp\", \"uniform\", \"gaussian\"]",
        "--set",
        "eval.ood_n=100",
        "--set",
        "eval.pgd_n=40",
        "--set",
        "eval.pgd_steps=3",
        "--set",
        "eval.pgd_linf_eps=[2, 8]",
        "--set",
        "eval.pgd_l2_eps=[100]",
        "--set",
        "eval.gen_steps=3",
        "--set",
        "eval.gen_n=16",
        "--set",
        "eval.gen_per_class=2",
        "--set",
        "eval.fid_n=20",
        "--set",
        "eval.fid_buffer_n=40",
        "--set",
        "eval.fid_reference=\"test\"",
        "--set",
        "eval.fid_reference_n=60",
        "--set",
        "eval.kid_subsets=4",
        "--set",
        "eval.kid_subset_size=10",
        "--set",
        &cache_set,
    ];
    if inception.is_some() && installed.is_none() {
        args.extend(["--set", &inception_set]);
    } else if inception.is_none() {
        eprintln!("FID part skipped: no Inception network in weights/ or ../shared/weights (set SADAJEM_INCEPTION)");
    }
    let o = sadajem(&args);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let eval = run.join("eval");
    let read = |m: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(eval.join(format!("{m}.json"))).unwrap()).unwrap() };
    let acc = read("accuracy");
    assert!(acc["accuracy"].as_f64().is_some_and(|a| a > 0.2 && a <= 1.0), "{acc}");
    assert!(acc["accuracy_refined"].as_f64().is_some(), "{acc}");
    assert_eq!(acc["n"], 200);
    let cal = read("calibration");
    assert!(cal["ece"].as_f64().is_some_and(|e| (0.0..=1.0).contains(&e)), "{cal}");
    assert_eq!(cal["bins"].as_array().unwrap().len(), 20);
    let ood = read("ood");
    for set in ["mnist", "interp", "uniform", "gaussian"] {
        for score in ["log_px", "max_softmax", "grad_norm"] {
            let a = &ood["sets"][set]["scores"][score]["auroc"];
            assert!(a.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{set}/{score}: {ood}");
            assert!(eval.join(format!("ood_{set}_{score}.png")).exists());
        }
    }
    let rob = read("robustness");
    let linf = rob["norms"]["linf"].as_array().unwrap();
    assert_eq!(linf.len(), 3, "eps 0 is added: {rob}");
    let accs: Vec<f64> = linf.iter().map(|r| r["accuracy"].as_f64().unwrap()).collect();
    assert!(accs[2] <= accs[0], "a larger eps cannot help: {accs:?}");
    for f in ["reliability.png", "robustness_linf.png", "robustness_l2.png", "samples_fresh.png", "samples_per_class.png", "samples_buffer.png"] {
        let img = image::open(eval.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() > 20 && img.height() > 20, "{f}");
    }
    let per_class = image::open(eval.join("samples_per_class.png")).unwrap();
    assert_eq!(per_class.width(), 2 * 30 + 2, "one row per class, gen_per_class columns");
    assert_eq!(per_class.height(), 10 * 30 + 2);
    if inception.is_some() {
        let fid = read("fid");
        if installed.is_some() {
            // weights/, not ../shared/weights (which the lookup tries next).
            assert_eq!(fid["network"]["file"], INSTALLED_INCEPTION, "{fid}");
        }
        for protocol in ["buffer", "fresh"] {
            let p = &fid["protocols"][protocol];
            assert!(p["fid"].as_f64().is_some_and(|v| v.is_finite() && v > 0.0), "{protocol}: {fid}");
            assert!(p["kid"].as_f64().is_some_and(f64::is_finite), "{protocol}: {fid}");
        }
        // The most confident 90% per predicted class of 40 entries, rounded per class.
        let n = fid["protocols"]["buffer"]["n"].as_u64().unwrap();
        assert!((30..=40).contains(&n), "{fid}");
        assert!(std::fs::read_dir(&cache).unwrap().count() == 1, "one cached reference");
    } else {
        assert!(out.contains("skipping fid"), "{out}");
    }

    // Every result at the evaluated checkpoint's iteration (1 epoch of 31), in TensorBoard.
    assert_eq!(acc["iteration"], 31);
    let events = tensorboard_events(&run.join("tensorboard/eval"));
    for tag in ["eval/accuracy/accuracy", "eval/calibration/ece", "eval/ood/sets/mnist/scores/log_px/auroc"] {
        assert_eq!(steps_of(&events, tag), [31], "{tag}");
    }
    if inception.is_some() {
        for protocol in ["buffer", "fresh"] {
            assert_eq!(steps_of(&events, &format!("eval/fid/protocols/{protocol}/fid")), [31]);
        }
    }

    let o = sadajem(&["report", "--run-dir", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("test accuracy"), "the summary table is printed: {}", text(&o));
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    let images = html.matches("src=\"data:image/png;base64,").count();
    assert!(images >= 20, "curves, samples, reliability, 12 OOD histograms, robustness: {images}");
    assert!(!html.contains("missing:"), "every image the results name exists");

    let png = dir.path().join("class3.png");
    let o = sadajem(&[
        "sample",
        "--run-dir",
        run.to_str().unwrap(),
        "--n",
        "6",
        "--class",
        "3",
        "--out",
        png.to_str().unwrap(),
        "--set",
        "eval.gen_steps=2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(image::open(&png).unwrap().width(), 3 * 30 + 2);
    let o = sadajem(&["sample", "--run-dir", run.to_str().unwrap(), "--n", "2", "--class", "10", "--out", png.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--class 10"), "{}", text(&o));
    let o = sadajem(&["eval", "--run-dir", run.to_str().unwrap(), "--only", "accuracy,bogus"]);
    assert!(!o.status.success() && text(&o).contains("bogus"), "{}", text(&o));

    if inception.is_some() {
        // 8 buffer entries leave every class's most confident 10 % empty: IS is skipped, FID is not.
        let mut small: Vec<&str> = args
            .iter()
            .map(|a| match *a {
                "eval.fid_buffer_n=40" => "eval.fid_buffer_n=8",
                a => a,
            })
            .collect();
        small.extend(["--only", "fid", "--set", "eval.fid_protocols=[\"buffer\"]"]);
        let o = sadajem(&small);
        assert!(o.status.success(), "{}", text(&o));
        let buffer = &read("fid")["protocols"]["buffer"];
        assert!(buffer["is_skipped"].as_str().is_some_and(|s| s.contains("eval.fid_buffer_n")), "{buffer}");
        assert!(buffer["fid"].as_f64().is_some_and(f64::is_finite), "{buffer}");
    }
}

/// scripts/reproduce.sh's steps on two tiny runs: two epochs each with every epoch's checkpoint
/// kept, each checkpoint evaluated into the run's study/, then compared. The page is kept in
/// target/test-artifacts/compare/ for scripts/browser-test.sh.
#[test]
fn a_study_of_two_runs_is_compared_in_tables_and_learning_curves() {
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/compare");
    let _ = std::fs::remove_dir_all(&artifacts);
    let keep = ["--set", "train.epochs=2", "--set", "train.checkpoint_every=0", "--set", "train.keep_checkpoints=3"];
    let (softmax, sadajem_run) = (artifacts.join("runs/softmax"), artifacts.join("runs/sadajem"));
    assert!(train(&softmax, &keep).status.success());
    let o = train_jem(&sadajem_run, &keep);
    assert!(o.status.success(), "{}", text(&o));
    let evaluation = ["--only", "accuracy,calibration,robustness", "--set", "eval.n_test=200", "--set", "eval.pgd_n=20", "--set", "eval.pgd_steps=2"];
    let more = ["--set", "eval.pgd_linf_eps=[8]", "--set", "eval.pgd_l2_eps=[]", "--set", "train.threads=1"];
    for run in [&softmax, &sadajem_run] {
        let numbered: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("iter_") && !p.ends_with("iter_0000000.safetensors"))
            .collect();
        assert_eq!(numbered.len(), 1, "epoch 1's checkpoint kept beside latest (and the untrained start): {numbered:?}");
        let iterations = final_json(run)["iterations"].as_u64().unwrap();
        for (ckpt, name) in [
            (numbered[0].clone(), numbered[0].file_stem().unwrap().to_str().unwrap().to_string()),
            (run.join("checkpoints/latest.safetensors"), format!("iter_{iterations:07}")),
        ] {
            let out = run.join("study").join(name);
            let mut args = vec!["eval", "--run-dir", run.to_str().unwrap(), "--checkpoint", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap()];
            args.extend(evaluation.iter().chain(&more));
            let o = sadajem(&args);
            assert!(o.status.success(), "{}", text(&o));
        }
        assert!(!run.join("eval").exists() && !run.join("tensorboard/eval").exists(), "--out leaves the run's eval/ and TensorBoard alone");
    }
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sadajem_run.join("study/iter_0000031/accuracy.json")).unwrap()).unwrap();
    assert_eq!((first["iteration"].as_u64(), first["epoch"].as_u64()), (Some(31), Some(1)), "{first}");
    let seconds = first["train_seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < final_json(&sadajem_run)["train_seconds"].as_f64().unwrap(), "{first}");

    let o = sadajem(&["compare", "--out", artifacts.to_str().unwrap(), softmax.to_str().unwrap(), sadajem_run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(artifacts.join("comparison.md")).unwrap();
    for run in ["softmax", "sadajem"] {
        let table = md.split(&format!("### {run}\n\n")).nth(1).unwrap_or_else(|| panic!("no table for {run}: {md}"));
        let rows: Vec<&str> = table.lines().take_while(|l| l.starts_with('|')).collect();
        assert!(rows[0].starts_with("| epoch | training s | test accuracy | ECE | robust accuracy linf eps 8/255 |"), "{md}");
        assert_eq!(rows.len(), 4, "a row per evaluated epoch: {md}");
        assert!(rows[2].starts_with("| 1 |") && rows[3].starts_with("| 2 |"), "{md}");
    }
    for number in ["test-accuracy", "ece", "robust-accuracy-linf-eps-8-255"] {
        for axis in ["epochs", "seconds"] {
            let png = artifacts.join(format!("curves/{number}-{axis}.png"));
            assert!(image::open(&png).is_ok_and(|i| i.width() > 100), "{}", png.display());
        }
    }
    let page = std::fs::read_to_string(artifacts.join("compare.html")).unwrap();
    assert_eq!(page.matches("src=\"data:image/png;base64,").count(), 1 + 3 * 2, "robustness and two curves per number");
}

/// The authors' checkpoint layout in (scripts/make-reference-fixture.py: a WRN-10-1 on
/// Fashion-MNIST's shape), evaluated and sampled, exported in both formats and imported again.
#[test]
fn import_eval_export_and_reimport_a_reference_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let fixture = "tests/fixtures/reference/checkpoint.pt";
    let o = sadajem(&["import", fixture, "--out", run_s, "--data", "data/fashion-mnist"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("WRN-10-1") && out.contains("energy_output.weight") && out.contains("[16, 1, 28, 28]"), "{out}");
    let imported: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("imported.json")).unwrap()).unwrap();
    assert_eq!(imported["architecture"]["depth"], 10);
    assert_eq!(imported["mapping"].as_array().unwrap().len(), 48);
    let shortcut = imported["mapping"].as_array().unwrap().iter().find(|m| m["from"] == "f.layer2.0.shortcut.0.weight").unwrap();
    assert_eq!(shortcut["to"], "model.layer2.0.shortcut.weight");

    let o = sadajem(&[
        "eval",
        "--run-dir",
        run_s,
        "--only",
        "accuracy,calibration,generation",
        "--set",
        "eval.n_test=100",
        "--set",
        "eval.gen_n=4",
        "--set",
        "eval.gen_per_class=1",
        "--set",
        "eval.gen_steps=2",
        "--set",
        "eval.gen_init=uniform",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["accuracy.json", "calibration.json", "generation.json", "samples_buffer.png"] {
        assert!(run.join("eval").join(f).exists(), "missing eval/{f}");
    }
    let png = dir.path().join("s.png");
    let o = sadajem(&[
        "sample",
        "--run-dir",
        run_s,
        "--n",
        "4",
        "--out",
        png.to_str().unwrap(),
        "--set",
        "eval.gen_steps=2",
        "--set",
        "eval.gen_init=uniform",
    ]);
    assert!(o.status.success() && png.exists(), "{}", text(&o));

    let model = |run: &Path| {
        let (t, _): (std::collections::HashMap<String, tch::Tensor>, serde_json::Value) =
            sadajem::store::checkpoint::load(&run.join("checkpoints/best.safetensors")).unwrap();
        t
    };
    let original = model(&run);
    for (format, file) in [("pytorch", "w.pt"), ("safetensors", "w.safetensors")] {
        let file = dir.path().join(file);
        let o = sadajem(&["export", run_s, "--format", format, "--out", file.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(sidecar(&file).exists());
        let again = dir.path().join(format!("again-{format}"));
        let o = sadajem(&["import", file.to_str().unwrap(), "--out", again.to_str().unwrap(), "--data", "data/fashion-mnist"]);
        assert!(o.status.success(), "{}", text(&o));
        let back = model(&again);
        assert_eq!(back.len(), original.len(), "{format}");
        assert!(original.iter().all(|(k, t)| back[k].equal(t)), "{format}: the weights and buffer come back bit for bit");
    }

    // Bad input: not a PyTorch file; weights of another width; a dataset of another shape.
    let o = sadajem(&["import", "README.md", "--out", dir.path().join("bad").to_str().unwrap(), "--data", "data/fashion-mnist"]);
    assert!(!o.status.success() && text(&o).contains("README.md") && text(&o).contains("not a PyTorch file"), "{}", text(&o));
    let bad = dir.path().join("bad2");
    let o = sadajem(&["import", fixture, "--out", bad.to_str().unwrap(), "--data", "data/fashion-mnist", "--set", "model.widen=2"]);
    let out = text(&o);
    assert!(
        !o.status.success() && out.contains("`f.layer1.0.conv1.weight`") && out.contains("[16, 16, 3, 3]") && out.contains("[32, 16, 3, 3]"),
        "{out}"
    );
    assert!(!bad.exists(), "a failed import writes nothing");
    let o = sadajem(&["import", fixture, "--out", bad.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--data"), "{}", text(&o));
    let o = sadajem(&["export", run_s, "--format", "onnx"]);
    assert!(!o.status.success() && text(&o).contains("pytorch"), "{}", text(&o));
}

fn sidecar(file: &Path) -> std::path::PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".json");
    s.into()
}

/// `bench` settings small enough for a test: WRN-10-1 on 1,100 images, batches 32/16/16.
const TINY_BENCH: &[&str] = &[
    "bench",
    "--preset",
    "sadajem-fashion",
    "--set",
    "data.max_train=1100",
    "--set",
    "data.n_valid=100",
    "--set",
    "data.batch_size=32",
    "--set",
    "loss.px_batch_size=16",
    "--set",
    "sampler.batch_size=16",
    "--set",
    "sampler.buffer_size=200",
    "--warmup",
    "1",
    "--iters",
    "2",
    // Tests run side by side: the machine is busy by design here.
    "--allow-busy",
];

fn bench_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn bench_times_every_part_of_a_sadajem_iteration_and_appends_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("bench/results.jsonl");
    let mut args = TINY_BENCH.to_vec();
    args.extend(["--results", results.to_str().unwrap(), "--set", "train.precision=bf16", "--set", "train.channels_last=true", "--threads", "1"]);
    for _ in 0..2 {
        let o = sadajem(&args);
        assert!(o.status.success(), "{}", text(&o));
        let out = text(&o);
        for part in ["data", "sgld_step", "update_pass", "sam_pass", "iteration"] {
            assert!(out.lines().any(|l| l.starts_with(part)), "no {part} row:\n{out}");
        }
        assert!(out.contains("Bf16, channels_last true"), "{out}");
    }
    let recs = bench_records(&results);
    assert_eq!(recs.len(), 2, "one line per run, appended");
    let r = &recs[1];
    assert_eq!(r["precision"], "bf16");
    assert_eq!(r["threads"], 1);
    let iteration = r["parts"]["iteration"]["median_s"].as_f64().unwrap();
    let step = r["parts"]["sgld_step"]["median_s"].as_f64().unwrap();
    let pass = r["parts"]["update_pass"]["median_s"].as_f64().unwrap();
    // An iteration holds 5 sampler steps and two passes: it cannot be quicker than its parts'
    // minimum share (timings vary, so only a loose floor).
    assert!(iteration > 0.5 * (5.0 * step + pass), "{iteration} vs step {step}, pass {pass}");
    assert!(r["parts"]["iteration"]["gflop_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["parts"]["data"]["gflop_per_s"].is_null());
    assert!(r["peak_rss_mib"].as_f64().unwrap() > 50.0);
    let images_per_s = r["images_per_s"].as_f64().unwrap();
    assert!((images_per_s - 32.0 / iteration).abs() < 1e-6 * images_per_s);
}

/// A Python with torch 2.11 for the PyTorch reference: SADAJEM_BENCH_PYTHON, or the venv
/// `bench/reference_step.py` makes on first use (a 3 GB install, so CI does not make one).
fn reference_python() -> Option<std::path::PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/.venv/bin/python");
    std::env::var_os("SADAJEM_BENCH_PYTHON").map(Into::into).or_else(|| venv.exists().then_some(venv))
}

#[test]
fn bench_against_pytorch_prints_both_times_and_the_ratio() {
    let Some(python) = reference_python() else {
        eprintln!("skipped: no Python with torch 2.11 (set SADAJEM_BENCH_PYTHON or run bench/reference_step.py once)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl");
    let mut args = TINY_BENCH.to_vec();
    let profile = dir.path().join("profile");
    args.extend(["--results", results.to_str().unwrap(), "--reference", "--threads", "1", "--profile", profile.to_str().unwrap()]);
    let o = command(&args).env("SADAJEM_BENCH_PYTHON", python).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("PyTorch med"), "{}", text(&o));
    // Both sides call the same ATen convolutions the same number of times.
    let conv = profile_row(&profile_table(&profile, 2), "aten::convolution");
    assert_eq!((conv[1], conv[3]), (99.0, 99.0), "{conv:?}");
    let r = &bench_records(&results)[0];
    let theirs = &r["reference"];
    assert_eq!(theirs["impl"], "pytorch");
    assert!(theirs["torch"].as_str().unwrap().starts_with("2.11.0"), "{theirs}");
    assert_eq!(theirs["threads"], 1);
    assert_eq!(theirs["settings"]["batch"], 32);
    assert_eq!(theirs["settings"]["sampler_batch"], 16);
    let ours = r["parts"]["iteration"]["median_s"].as_f64().unwrap();
    let pytorch = theirs["parts"]["iteration"]["median_s"].as_f64().unwrap();
    assert!((r["ratio_iteration"].as_f64().unwrap() - ours / pytorch).abs() < 1e-9);
}

/// Runs `bench/profile_table.py` on a `bench --profile` directory and returns its table.
fn profile_table(dir: &Path, iters: usize) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/profile_table.py");
    let o = std::process::Command::new("python3").arg(script).arg(dir).args(["--iters", &iters.to_string(), "--top", "200"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

/// The cells of `operator`'s row of a profile table.
fn profile_row(table: &str, operator: &str) -> Vec<f64> {
    let row = table.lines().find(|l| l.starts_with(&format!("| `{operator}` |"))).unwrap_or_else(|| panic!("no {operator} row:\n{table}"));
    row.split('|').skip(2).filter_map(|c| c.trim().parse().ok()).collect()
}

#[test]
fn bench_profile_records_every_convolution_of_an_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let mut args = TINY_BENCH.to_vec();
    let results = dir.path().join("r.jsonl");
    args.extend(["--results", results.to_str().unwrap(), "--profile", profile.to_str().unwrap(), "--threads", "1"]);
    let o = sadajem(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(profile.join("sadajem.trace.json").exists() && !profile.join("pytorch.trace.json").exists());
    let table = profile_table(&profile, 2);
    // WRN-10-1 runs 9 convolutions a forward (the stem, 2 + 3 + 3 in the blocks: the first
    // block keeps its width and has no shortcut). An iteration of the preset's K = 5 sampler
    // steps and two passes of three forwards: 11 forwards, 5 input-only backwards and 2
    // backwards through three forwards each.
    assert_eq!(profile_row(&table, "aten::convolution")[1], 11.0 * 9.0, "{table}");
    assert_eq!(profile_row(&table, "aten::convolution_backward")[1], (5.0 + 6.0) * 9.0, "{table}");
    let summary = table.lines().find(|l| l.starts_with("sadajem: operators")).expect("the summary line");
    let ms: Vec<f64> = summary.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(ms[0] > 0.0 && ms[0] <= ms[1] * 1.001, "self times cannot sum past the wall time: {summary}");
}

#[test]
fn bench_refuses_zero_repetitions_and_unknown_settings() {
    let o = sadajem(&["bench", "--preset", "sadajem-fashion", "--iters", "0", "--allow-busy"]);
    assert!(!o.status.success() && text(&o).contains("--iters"), "{}", text(&o));
    let o = sadajem(&["bench", "--preset", "sadajem-fashion", "--set", "train.precision=fp8", "--allow-busy"]);
    assert!(!o.status.success() && text(&o).contains("train.precision"), "{}", text(&o));
}

/// Where scripts/setup-inception.sh puts the FID network, relative to the repository.
const INSTALLED_INCEPTION: &str = "weights/inception-2015-12-05-fid.torchscript.pt";

/// Runs the set-up step for the FID network (idempotent, silent once done) and returns the file
/// it leaves, or None with the reason printed where it could not download it.
fn installed_inception() -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(root.join("scripts/setup-inception.sh")).output().expect("the set-up script runs");
    assert!(o.status.success(), "{}", text(&o));
    let file = root.join(INSTALLED_INCEPTION);
    if !file.exists() {
        eprintln!("scripts/setup-inception.sh could not install the FID network: {}", text(&o));
        return None;
    }
    use sha1::Digest;
    let sum: String = sha1::Sha1::digest(std::fs::read(&file).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sum, "a16e4d89c0ecbc17a915dd76ea9e41211aa82562", "the published SHA-1 of the FID network");
    Some(file)
}

/// What TensorBoard's own reader (tests/read_tensorboard.py, in a venv it makes on first use)
/// finds in `dir`; None, with the reason printed, where it cannot be set up.
fn tensorboard_read(dir: &Path) -> Option<serde_json::Value> {
    let o =
        Command::new("python3").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_tensorboard.py")).arg(dir).output().expect("python3 runs");
    if o.status.code() == Some(77) {
        eprintln!("TensorBoard reader part skipped: {}", String::from_utf8_lossy(&o.stderr).trim());
        return None;
    }
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    Some(serde_json::from_str(out.lines().last().expect("a JSON line")).unwrap())
}

/// (tag, step) of every value in the event files of `dir` (not its sub-directories), read with
/// the crate's own reader (which checks every record's framing and CRCs).
fn tensorboard_events(dir: &Path) -> Vec<(String, i64)> {
    use sadajem::report::tensorboard::{read_events, What};
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        assert!(path.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."), "{}", path.display());
        for e in read_events(&path).unwrap() {
            if let Some(What::Summary(s)) = e.what {
                out.extend(s.value.into_iter().map(|v| (v.tag, e.step)));
            }
        }
    }
    out
}

/// The steps of `tag` in `events`, in order.
fn steps_of(events: &[(String, i64)], tag: &str) -> Vec<i64> {
    events.iter().filter(|(t, _)| t == tag).map(|(_, s)| *s).collect()
}

/// The iterations of a run's metrics lines of `kind`.
fn metric_iters(run_dir: &Path, kind: &str) -> Vec<i64> {
    metrics(run_dir).iter().filter(|r| r["kind"] == kind).map(|r| r["iter"].as_i64().unwrap()).collect()
}

/// The iterations of the grids in `samples/`.
fn grid_iters(run_dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(run_dir.join("samples"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_string_lossy().strip_prefix("iter_")?.strip_suffix(".png")?.parse().ok())
        .collect();
    v.sort();
    v
}

/// The curves and grids of the run `sadajem_training_logs_…` trains (1 epoch of 31 iterations,
/// logged every 5, grids every 10), as the crate's reader and TensorBoard's own read them.
fn tensorboard_shows_the_run(run: &Path) {
    let tb = run.join("tensorboard");
    let train_iters = metric_iters(run, "train");
    assert_eq!(train_iters, [5, 10, 15, 20, 25, 30, 31]);
    let events = tensorboard_events(&tb);
    for key in ["loss", "ce", "l_px", "lse_data", "lse_sample", "acc", "lr", "img_per_s"] {
        assert_eq!(steps_of(&events, &format!("train/{key}")), train_iters, "train/{key}");
    }
    assert_eq!(steps_of(&events, "valid/valid_acc"), [31]);
    assert_eq!(steps_of(&events, "samples/buffer"), [10, 20, 30]);
    assert_eq!(steps_of(&events, "samples/final"), [31]);

    let Some(read) = tensorboard_read(&tb) else { return };
    let m = metrics(run);
    for key in ["loss", "lse_data", "lse_sample", "acc"] {
        let curve = read["scalars"][format!("train/{key}")].as_array().unwrap_or_else(|| panic!("no train/{key}: {read}"));
        let want: Vec<(i64, f64)> =
            m.iter().filter(|r| r["kind"] == "train").map(|r| (r["iter"].as_i64().unwrap(), r[key].as_f64().unwrap())).collect();
        assert_eq!(curve.len(), want.len(), "train/{key}");
        for (point, (step, v)) in curve.iter().zip(want) {
            assert_eq!(point[0].as_i64().unwrap(), step);
            assert!((point[1].as_f64().unwrap() - v).abs() <= 1e-6 * v.abs().max(1.0), "train/{key} at {step}: {point} vs {v}");
        }
    }
    let valid = m.iter().find(|r| r["kind"] == "valid").unwrap()["valid_acc"].as_f64().unwrap();
    assert_eq!(read["scalars"]["valid/valid_acc"][0][1].as_f64().unwrap() as f32, valid as f32);
    let grids = read["images"]["samples/buffer"].as_array().unwrap();
    assert_eq!(grids.len(), 3);
    let png = std::fs::metadata(run.join("samples/iter_0000010.png")).unwrap().len();
    assert_eq!(
        (grids[0][0].as_i64(), grids[0][1].as_i64(), grids[0][3].as_u64(), grids[0][4].as_bool()),
        (Some(10), Some(8 * 30 + 2), Some(png), Some(true))
    );
    assert_eq!(read["images"]["samples/final"][0][0], 31);
}

#[test]
fn a_killed_and_resumed_run_has_each_tensorboard_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let settings = ["--set", "train.epochs=2", "--set", "train.checkpoint_every=5", "--set", "train.log_every=1", "--set", "train.sample_every=4"];
    // Killed after the checkpoint at iteration 15, with some iterations logged after it.
    train_until_killed(&train_args("sadajem-fashion", TINY_JEM, &run, &settings), &run, 18);
    let tb = run.join("tensorboard");
    let before = tensorboard_events(&tb);
    assert!(steps_of(&before, "train/loss").last().is_some_and(|&s| s >= 18), "the killed run logged past its checkpoint");

    let o = sadajem(&["train", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let events = tensorboard_events(&tb);
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        assert!(seen.insert(e.clone()), "{e:?} is in the event files twice");
    }
    let train_iters = metric_iters(&run, "train");
    assert_eq!(train_iters, (1..=62).collect::<Vec<_>>(), "the resumed run's log reads as one run");
    for key in ["loss", "lse_data", "lse_sample", "acc", "lr"] {
        assert_eq!(steps_of(&events, &format!("train/{key}")), train_iters, "train/{key}");
    }
    assert_eq!(steps_of(&events, "valid/valid_acc"), metric_iters(&run, "valid"));
    assert_eq!(steps_of(&events, "samples/buffer"), grid_iters(&run));
    assert_eq!(grid_iters(&run), (4..=62).step_by(4).collect::<Vec<_>>());
    if let Some(read) = tensorboard_read(&tb) {
        let steps = |tag: &str| -> Vec<i64> { read["scalars"][tag].as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap()).collect() };
        assert_eq!(steps("train/loss"), train_iters, "TensorBoard's reader: each step once");
        let grids: Vec<i64> = read["images"]["samples/buffer"].as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap()).collect();
        assert_eq!(grids, grid_iters(&run));
    }
}
