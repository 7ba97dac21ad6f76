//! Helpers shared by the integration tests: each test binary includes this module (`mod
//! support;`) and uses only some of it. `forge.rs` beside it is included on its own (by
//! tests/hostile.rs and by the unit tests of src/store/pickle.rs).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// `sadajem ARGS` from the crate root without colour: the one way the tests start the binary.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sadajem"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1");
    c
}

/// Runs `sadajem ARGS` to the end, for the tests that only look at what it printed and wrote.
pub fn sadajem(args: &[&str]) -> Output {
    command(args).output().expect("the sadajem binary runs")
}

/// Stdout then stderr as one string, for the assertions and their failure messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `train --preset PRESET --run-dir RUN_DIR` with a test's small-run `settings`, then `extra`.
pub fn train_args<'a>(preset: &'a str, settings: &[&'a str], run_dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--preset", preset, "--run-dir", run_dir.to_str().unwrap()];
    args.extend_from_slice(settings);
    args.extend_from_slice(extra);
    args
}

/// The records of RUN_DIR/metrics.jsonl, which most tests check.
pub fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// [`metrics`] without the throughput, which differs between runs: for comparing two runs.
pub fn metrics_without_throughput(run_dir: &Path) -> Vec<serde_json::Value> {
    let mut records = metrics(run_dir);
    for r in &mut records {
        r.as_object_mut().unwrap().remove("img_per_s");
    }
    records
}

/// How many lines RUN_DIR/metrics.jsonl has (0 before it exists): how far a running run is.
pub fn metric_lines(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// RUN_DIR/final.json, the summary a finished run writes.
pub fn final_json(run_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("final.json")).unwrap()).unwrap()
}

/// The names in `dir`, sorted: for checking exactly what a directory holds.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}
