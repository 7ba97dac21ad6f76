//! `sadajem compare`: the headline numbers of several runs side by side — a markdown table
//! (one column per run, one row per number) and a plot of robust accuracy against the attack
//! radius — for reproductions such as scripts/reproduce.sh.
use super::html;
use super::plots::{self, Series};
use crate::records::eval::RobustnessRecord;
use crate::run::RunDir;
use anyhow::{Context, Result};
use std::path::Path;

/// A run's column label: the name of its directory.
fn label(run: &RunDir) -> String {
    run.root.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned())
}

/// The markdown table: every summary row any run has, in order of first appearance; a run
/// without that number shows "–".
pub fn table(runs: &[RunDir]) -> String {
    let summaries: Vec<Vec<html::Row>> = runs.iter().map(html::summary).collect();
    let mut names: Vec<String> = vec![];
    for s in &summaries {
        for (k, _) in s {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    let mut md = format!("| | {} |\n|---|{}\n", runs.iter().map(label).collect::<Vec<_>>().join(" | "), "---|".repeat(runs.len()));
    for name in names {
        let cells: Vec<String> = summaries.iter().map(|s| s.iter().find(|(k, _)| *k == name).map_or("–".to_string(), |(_, v)| v.clone())).collect();
        md += &format!("| {name} | {} |\n", cells.join(" | "));
    }
    md
}

/// Robust accuracy against the L∞ radius, one line per run.
pub fn robustness_plot(runs: &[RunDir], path: &Path) -> Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|run| {
            let rob = html::read_record::<RobustnessRecord>(run, crate::run::Metric::Robustness).map(|r| r.values);
            let linf = rob.and_then(|mut r| r.norms.remove(crate::config::PgdNorm::Linf.key())).unwrap_or_default();
            let points = linf.iter().filter(|p| p.accuracy.is_finite()).map(|p| (p.eps, p.accuracy)).collect();
            (label(run), points)
        })
        .collect();
    let series: Vec<Series> = curves.iter().map(|(n, p)| Series { name: n, points: p }).collect();
    plots::line_chart(&series, "L∞ eps (×1/255 of the [0, 1] pixel range)", "robust accuracy", "PGD robustness", Some((0.0, 1.0)), path)
}

/// Writes OUT/comparison.md and OUT/robustness.png; returns the table.
pub fn write(runs: &[RunDir], out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let md = table(runs);
    crate::store::atomic::write_atomic(&out.join("comparison.md"), md.as_bytes())?;
    robustness_plot(runs, &out.join("robustness.png"))?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::eval::examples;

    fn run(dir: &Path, name: &str, acc: f64, eps8: Option<f64>) -> RunDir {
        let run = RunDir::create(&dir.join(name)).unwrap();
        std::fs::write(run.config(), "").unwrap();
        examples::write(&run.root, &examples::accuracy(acc));
        if let Some(a) = eps8 {
            examples::write(&run.root, &examples::robustness(&[(0.0, acc), (8.0, a)]));
        }
        run
    }

    #[test]
    fn one_column_per_run_and_a_dash_for_missing_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let runs = [run(dir.path(), "softmax", 0.9, Some(0.1)), run(dir.path(), "sadajem", 0.8, None)];
        let md = table(&runs);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| | softmax | sadajem |");
        assert_eq!(lines[2], "| test accuracy | 90.00 % | 80.00 % |");
        assert_eq!(lines[3], "| robust accuracy linf eps 8/255 | 10.00 % | – |");
        write(&runs, &dir.path().join("out")).unwrap();
        assert!(image::open(dir.path().join("out/robustness.png")).is_ok());
    }
}
