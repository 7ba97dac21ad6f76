//! `sadajem compare`: several runs side by side, for reproductions such as scripts/reproduce.sh —
//! the headline numbers (one column per run, one row per number), robust accuracy against the
//! attack radius, and for runs with a study (their checkpoints evaluated as training went,
//! [`super::study`]) one table per run and the learning curves: one plot per number, one line
//! per run, against epochs and against training seconds. Written as OUT/comparison.md and as
//! the self-contained page OUT/compare.html, with the plots as PNGs in OUT/ and OUT/curves/.
use super::html::{self, Row};
use super::plots::{self, Series};
use super::study::{self, Point};
use crate::records::eval::RobustnessRecord;
use crate::run::{Metric, RunDir};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A run's column label: the name of its directory.
fn label(run: &RunDir) -> String {
    run.root.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned())
}

/// A table as a header row and body rows of cells, shown as Markdown or HTML.
struct Grid {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Grid {
    fn markdown(&self) -> String {
        let line = |cells: &[String]| {
            "|".to_string() + &cells.iter().map(|c| if c.is_empty() { " |".into() } else { format!(" {c} |") }).collect::<String>() + "\n"
        };
        let mut md = line(&self.head) + "|" + &"---|".repeat(self.head.len()) + "\n";
        for row in &self.rows {
            md += &line(row);
        }
        md
    }

    fn html(&self) -> String {
        let cells = |tag: &str, row: &[String]| row.iter().map(|c| format!("<{tag}>{}</{tag}>", html::escape(c))).collect::<String>();
        let mut h = format!("<table>\n<tr>{}</tr>\n", cells("th", &self.head));
        for row in &self.rows {
            h += &format!("<tr>{}</tr>\n", cells("td", row));
        }
        h + "</table>\n"
    }
}

/// Where a run's headline numbers come from: its study's last point if it has a study, else
/// its eval/.
fn headline_dir(points: &[Point]) -> String {
    points.last().map_or(RunDir::EVAL_INSIDE.to_string(), |p| p.dir.clone())
}

/// The headline numbers: every row any run has, in order of first appearance; a run without
/// that number shows "–".
fn headline(runs: &[(RunDir, Vec<Point>)]) -> Grid {
    let summaries: Vec<Vec<Row>> = runs.iter().map(|(run, points)| html::summary_of(run, &headline_dir(points))).collect();
    let names = study::first_appearances(summaries.iter().flatten().map(|(k, _)| k));
    let head = std::iter::once(String::new()).chain(runs.iter().map(|(r, _)| label(r))).collect();
    let rows = names
        .into_iter()
        .map(|name| {
            let cells = summaries.iter().map(|s| s.iter().find(|(k, _)| k == name).map_or("–".to_string(), |(_, v)| v.clone()));
            std::iter::once(name.clone()).chain(cells).collect()
        })
        .collect();
    Grid { head, rows }
}

/// One run's study as a table: a row per evaluated checkpoint.
fn study_table(points: &[Point]) -> Grid {
    let names = study::names(points);
    let head = ["epoch", "training s"].into_iter().map(String::from).chain(names.iter().map(|(n, _)| n.clone())).collect();
    let rows = points
        .iter()
        .map(|p| {
            let cells = names.iter().map(|(name, shown)| p.get(name).and_then(|v| shown.format(v)).unwrap_or_else(|| "–".into()));
            [p.epoch.to_string(), format!("{:.0}", p.train_seconds)].into_iter().chain(cells).collect()
        })
        .collect();
    Grid { head, rows }
}

/// Robust accuracy against the L∞ radius, one line per run (its headline evaluation).
fn robustness_plot(runs: &[(RunDir, Vec<Point>)], path: &Path) -> Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(run, points)| {
            let rob = html::read_record_in::<RobustnessRecord>(run, &headline_dir(points), Metric::Robustness).map(|r| r.values);
            let linf = rob.and_then(|mut r| r.norms.remove(crate::config::PgdNorm::Linf.key())).unwrap_or_default();
            let points = linf.iter().filter(|p| p.accuracy.is_finite()).map(|p| (p.eps, p.accuracy)).collect();
            (label(run), points)
        })
        .collect();
    let series: Vec<Series> = curves.iter().map(|(n, p)| Series { name: n, points: p }).collect();
    plots::line_chart(&series, "L∞ eps (×1/255 of the [0, 1] pixel range)", "robust accuracy", "PGD robustness", Some((0.0, 1.0)), path)
}

/// A file stem for a number's name: `OOD AUROC log p(x), mnist` → `ood-auroc-log-p-x-mnist`.
fn slug(name: &str) -> String {
    let dashed: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    dashed.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-")
}

/// A curve's x axis: file-name suffix, label, and a point's coordinate.
type Axis = (&'static str, &'static str, fn(&Point) -> f64);

/// The learning curves, two PNGs per number in OUT/curves/ (against epochs, against training
/// seconds); returns, per number, its name and the two files.
fn learning_curves(runs: &[(RunDir, Vec<Point>)], out: &Path) -> Result<Vec<(String, [PathBuf; 2])>> {
    let dir = out.join("curves");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut drawn = vec![];
    for (name, _) in study::names(runs.iter().flat_map(|(_, p)| p)) {
        let axes: [Axis; 2] = [("epochs", "epoch", |p| p.epoch as f64), ("seconds", "training seconds", |p| p.train_seconds)];
        let files = axes.map(|(stem, x_label, x)| {
            let lines: Vec<(String, Vec<(f64, f64)>)> =
                runs.iter().map(|(run, points)| (label(run), points.iter().filter_map(|p| Some((x(p), p.get(&name)?))).collect())).collect();
            let series: Vec<Series> = lines.iter().map(|(n, p)| Series { name: n, points: p }).collect();
            let file = dir.join(format!("{}-{stem}.png", slug(&name)));
            plots::line_chart(&series, x_label, &name, &format!("{name} during training"), None, &file).map(|()| file)
        });
        let [a, b] = files;
        drawn.push((name, [a?, b?]));
    }
    Ok(drawn)
}

fn with_points(runs: &[RunDir]) -> Vec<(RunDir, Vec<Point>)> {
    runs.iter().map(|r| (r.clone(), study::points(r))).collect()
}

/// Writes OUT/comparison.md, OUT/robustness.png, the learning curves in OUT/curves/ and
/// OUT/compare.html; returns the markdown.
pub fn write(runs: &[RunDir], out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let runs = with_points(runs);
    let headline = headline(&runs);
    let studies: Vec<(String, Grid)> = runs.iter().filter(|(_, p)| !p.is_empty()).map(|(r, p)| (label(r), study_table(p))).collect();
    let mut md = headline.markdown();
    for (name, grid) in &studies {
        md += &format!("\n### {name}\n\n{}", grid.markdown());
    }
    crate::store::atomic::write_atomic(&out.join("comparison.md"), md.as_bytes())?;
    let robustness = out.join("robustness.png");
    robustness_plot(&runs, &robustness)?;
    let curves = learning_curves(&runs, out)?;
    let page = page(&runs, &headline, &studies, &robustness, &curves)?;
    crate::store::atomic::write_atomic(&out.join("compare.html"), page.as_bytes())?;
    Ok(md)
}

/// compare.html: the headline table and the robustness plot, each study's table, the learning
/// curves (a row per number: against epochs, against seconds). The plots are ours, just written.
fn page(
    runs: &[(RunDir, Vec<Point>)],
    headline: &Grid,
    studies: &[(String, Grid)],
    robustness: &Path,
    curves: &[(String, [PathBuf; 2])],
) -> Result<String> {
    let figure = |path: &Path, caption: &str| -> Result<String> {
        let png = std::fs::read(path).with_context(|| format!("{}: cannot read the plot just written", path.display()))?;
        Ok(html::figure(&png, caption))
    };
    let names: Vec<String> = runs.iter().map(|(r, _)| html::escape(&label(r))).collect();
    let mut h = html::page_start("sadajem comparison", &format!("sadajem comparison: {}", names.join(", ")));
    h += "<section id=\"summary\"><h2>Summary</h2>\n<p>Each run's last evaluation: its study's last checkpoint, or its eval/.</p>\n";
    h += &headline.html();
    h += &figure(robustness, "robust accuracy against the L∞ radius")?;
    h += "</section>\n<section id=\"tables\"><h2>Each checkpoint</h2>\n";
    if studies.is_empty() {
        h += "<p class=\"missing\">no run has a study (RUN/study/iter_NNNNNNN/, scripts/reproduce.sh)</p>\n";
    }
    for (name, grid) in studies {
        h += &format!("<h3>{}</h3>\n{}", html::escape(name), grid.html());
    }
    h += "</section>\n<section id=\"curves\"><h2>Learning curves</h2>\n";
    for (name, [epochs, seconds]) in curves {
        h += &format!("<h3>{}</h3>\n<div class=\"row\">\n", html::escape(name));
        h += &figure(epochs, &format!("{name} against epochs"))?;
        h += &figure(seconds, &format!("{name} against training seconds"))?;
        h += "</div>\n";
    }
    h += "</section>\n";
    Ok(h + html::PAGE_END)
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

    /// A study point of `run`: accuracy and L∞ 8/255 records of a checkpoint at (epoch, seconds).
    fn point(run: &RunDir, iter: u64, epoch: u64, seconds: f64, acc: f64, eps8: f64) {
        let dir = run.study().join(format!("iter_{iter:07}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = examples::accuracy(acc);
        let mut r = examples::robustness(&[(0.0, acc), (8.0, eps8)]);
        for h in [&mut a.header, &mut r.header] {
            (h.iteration, h.epoch, h.train_seconds) = (Some(iter), Some(epoch), Some(seconds));
        }
        std::fs::write(dir.join("accuracy.json"), serde_json::to_string(&a).unwrap()).unwrap();
        std::fs::write(dir.join("robustness.json"), serde_json::to_string(&r).unwrap()).unwrap();
    }

    #[test]
    fn one_column_per_run_and_a_dash_for_missing_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let runs = [run(dir.path(), "softmax", 0.9, Some(0.1)), run(dir.path(), "sadajem", 0.8, None)];
        let md = write(&runs, &dir.path().join("out")).unwrap();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| | softmax | sadajem |");
        assert_eq!(lines[1], "|---|---|---|");
        assert_eq!(lines[2], "| test accuracy | 90.00 % | 80.00 % |");
        assert_eq!(lines[3], "| robust accuracy linf eps 8/255 | 10.00 % | – |");
        assert_eq!(lines.len(), 4, "no study, no per-run tables: {md}");
        assert!(image::open(dir.path().join("out/robustness.png")).is_ok());
        let page = std::fs::read_to_string(dir.path().join("out/compare.html")).unwrap();
        assert!(page.contains("no run has a study"));
    }

    #[test]
    fn a_study_gives_a_table_per_run_its_last_point_as_headline_and_two_curves_per_number() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (run(dir.path(), "softmax", 0.5, None), run(dir.path(), "sadajem", 0.5, None));
        point(&a, 430, 1, 30.0, 0.80, 0.05);
        point(&a, 860, 2, 61.0, 0.85, 0.02);
        point(&b, 430, 1, 170.0, 0.70, 0.60);
        point(&b, 860, 2, 341.0, 0.75, 0.65);
        let out = dir.path().join("out");
        let md = write(&[a, b], &out).unwrap();
        // The headline is each study's last point, not eval/ (0.5).
        assert!(md.contains("| test accuracy | 85.00 % | 75.00 % |"), "{md}");
        assert!(md.contains("| robust accuracy linf eps 8/255 | 2.00 % | 65.00 % |"), "{md}");
        let sadajem = md.split("### sadajem\n\n").nth(1).unwrap();
        let rows: Vec<&str> = sadajem.lines().collect();
        assert_eq!(rows[0], "| epoch | training s | test accuracy | robust accuracy linf eps 8/255 |");
        assert_eq!(rows[2], "| 1 | 170 | 70.00 % | 60.00 % |");
        assert_eq!(rows[3], "| 2 | 341 | 75.00 % | 65.00 % |");
        assert_eq!(rows.len(), 4, "{sadajem}");
        let mut curves: Vec<String> = std::fs::read_dir(out.join("curves")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        curves.sort();
        assert_eq!(
            curves,
            [
                "robust-accuracy-linf-eps-8-255-epochs.png",
                "robust-accuracy-linf-eps-8-255-seconds.png",
                "test-accuracy-epochs.png",
                "test-accuracy-seconds.png"
            ]
        );
        for c in &curves {
            let img = image::open(out.join("curves").join(c)).unwrap();
            assert!(img.width() > 100, "{c}");
        }
        let page = std::fs::read_to_string(out.join("compare.html")).unwrap();
        for section in ["summary", "tables", "curves"] {
            assert!(page.contains(&format!("<section id=\"{section}\">")), "{section}");
        }
        assert_eq!(page.matches("<img ").count(), 1 + 4);
        assert_eq!(page.matches("<table>").count(), 3);
        assert!(page.contains("<h3>test accuracy</h3>") && page.contains("<td>341</td>"));
    }

    #[test]
    fn names_become_plain_file_stems() {
        assert_eq!(slug("OOD AUROC log p(x), mnist"), "ood-auroc-log-p-x-mnist");
        assert_eq!(slug("FID (fresh)"), "fid-fresh");
        assert_eq!(slug("../x"), "x");
    }
}
