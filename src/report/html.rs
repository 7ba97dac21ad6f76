//! `sadajem report`: one self-contained HTML page per run — config, training curves, sample
//! grids over training, every evaluation result with its plots, timing. Images are embedded as
//! data URIs, so the file opens anywhere without network access or the run directory.
use super::plots::{self, Series};
use crate::run::RunDir;
use anyhow::{Context, Result};
use base64::Engine;
use serde_json::Value;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One line of the summary table: what, and its value as shown.
pub type Row = (String, String);

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn pct(v: &Value) -> Option<String> {
    v.as_f64().map(|x| format!("{:.2} %", 100.0 * x))
}

fn num(v: &Value, digits: usize) -> Option<String> {
    v.as_f64().map(|x| format!("{x:.digits$}"))
}

/// The metrics.jsonl records.
fn metrics(run: &RunDir) -> Vec<Value> {
    std::fs::read_to_string(run.metrics())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The headline numbers of a run: training and every evaluation JSON present. Shared by the
/// HTML page, `sadajem report`'s console table and run comparisons.
pub fn summary(run: &RunDir) -> Vec<Row> {
    let mut rows: Vec<Row> = vec![];
    let mut push = |name: String, value: Option<String>| {
        if let Some(v) = value {
            rows.push((name, v));
        }
    };
    let eval = run.root.join("eval");
    let fin = read_json(&run.final_results()).unwrap_or(Value::Null);
    let acc = read_json(&eval.join("accuracy.json")).unwrap_or(Value::Null);
    push("test accuracy".into(), pct(&acc["accuracy"]).or_else(|| pct(&fin["test_accuracy_best_checkpoint"])));
    push("test accuracy after SGLD refinement".into(), pct(&acc["accuracy_refined"]));
    let cal = read_json(&eval.join("calibration.json")).unwrap_or(Value::Null);
    push("ECE".into(), pct(&cal["ece"]));
    let ood = read_json(&eval.join("ood.json")).unwrap_or(Value::Null);
    if let Some(sets) = ood["sets"].as_object() {
        for (name, set) in sets {
            push(format!("OOD AUROC log p(x), {name}"), num(&set["scores"]["log_px"]["auroc"], 3));
        }
    }
    let rob = read_json(&eval.join("robustness.json")).unwrap_or(Value::Null);
    if let Some(norms) = rob["norms"].as_object() {
        for (norm, rows_) in norms {
            for r in rows_.as_array().into_iter().flatten().filter(|r| r["eps"].as_f64().is_some_and(|e| e > 0.0)) {
                push(format!("robust accuracy {norm} eps {}/255", r["eps"].as_f64().unwrap_or(f64::NAN)), pct(&r["accuracy"]));
            }
        }
    }
    let fid = read_json(&eval.join("fid.json")).unwrap_or(Value::Null);
    if let Some(protocols) = fid["protocols"].as_object() {
        for (p, r) in protocols {
            push(format!("FID ({p})"), num(&r["fid"], 2));
            push(format!("KID ({p})"), num(&r["kid"], 4));
            push(format!("Inception Score ({p})"), num(&r["inception_score"], 2));
        }
    }
    let generation = read_json(&eval.join("generation.json")).unwrap_or(Value::Null);
    push("mean LSE fresh samples / test".into(), match (num(&generation["mean_lse_samples"], 2), num(&generation["mean_lse_test"], 2)) {
        (Some(a), Some(b)) => Some(format!("{a} / {b}")),
        _ => None,
    });
    push("training time".into(), fin["train_seconds"].as_f64().map(|s| format!("{s:.0} s")));
    rows
}

/// A `<img>` with the PNG at `path` inlined, or a note when it is missing.
fn image(path: &Path, caption: &str) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!(
            "<figure><img alt=\"{c}\" src=\"data:image/png;base64,{}\"><figcaption>{c}</figcaption></figure>\n",
            base64::engine::general_purpose::STANDARD.encode(bytes),
            c = escape(caption)
        ),
        Err(_) => format!("<p class=\"missing\">missing: {}</p>\n", escape(&path.display().to_string())),
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    s + "</table>\n"
}

/// Training curves from metrics.jsonl as PNGs in `dir`; returns (file, caption) pairs.
fn training_curves(records: &[Value], dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let train: Vec<&Value> = records.iter().filter(|r| r["kind"] == "train").collect();
    let valid: Vec<&Value> = records.iter().filter(|r| r["kind"] == "valid").collect();
    let series = |rs: &[&Value], key: &str| -> Vec<(f64, f64)> {
        rs.iter().filter_map(|r| Some((r["iter"].as_f64()?, r[key].as_f64()?))).collect()
    };
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut out = vec![];
    let charts: [(&str, &str, Vec<(&str, Vec<(f64, f64)>)>); 4] = [
        ("loss", "loss", vec![("total", series(&train, "loss")), ("cross-entropy", series(&train, "ce")), ("L_px", series(&train, "l_px"))]),
        ("energy", "LSE f(x)", vec![("data", series(&train, "lse_data")), ("samples", series(&train, "lse_sample"))]),
        ("accuracy", "accuracy", vec![("training batches", series(&train, "acc")), ("validation", series(&valid, "valid_acc"))]),
        ("lr", "learning rate", vec![("lr", series(&train, "lr"))]),
    ];
    for (name, y_label, lines) in charts {
        let lines: Vec<(&str, Vec<(f64, f64)>)> = lines.into_iter().filter(|(_, p)| !p.is_empty()).collect();
        if lines.is_empty() {
            continue;
        }
        let s: Vec<Series> = lines.iter().map(|(n, p)| Series { name: n, points: p }).collect();
        let file = dir.join(format!("curve_{name}.png"));
        let range = (name == "accuracy").then_some((0.0, 1.0));
        plots::line_chart(&s, "iteration", y_label, &format!("Training: {y_label}"), range, &file)?;
        out.push((file, format!("{y_label} over training")));
    }
    Ok(out)
}

/// The key numbers of one evaluation JSON, flattened for a table (lists of plots and the
/// bulky per-bin arrays left out).
fn flatten(prefix: &str, v: &Value, rows: &mut Vec<Row>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if ["plots", "bins", "metric"].contains(&k.as_str()) {
                    continue;
                }
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&p, x, rows);
            }
        }
        Value::Array(a) if a.iter().all(Value::is_object) && !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, rows);
            }
        }
        Value::Number(n) if n.is_f64() => rows.push((prefix.into(), format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)))),
        other => rows.push((prefix.into(), other.to_string().trim_matches('"').to_string())),
    }
}

/// Writes RUN/report.html (and the training-curve PNGs it embeds, in RUN/report/); returns its
/// path.
pub fn write(run: &RunDir) -> Result<PathBuf> {
    let name = run.root.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let config = std::fs::read_to_string(run.config()).unwrap_or_default();
    let records = metrics(run);
    let fin = read_json(&run.final_results());
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sadajem run {n}</title>\n<style>{STYLE}</style></head>\n<body>\n<h1>sadajem run <code>{n}</code></h1>\n",
        n = escape(&name)
    );
    h += "<section id=\"summary\"><h2>Summary</h2>\n";
    h += &table(&summary(run));
    h += "</section>\n";

    h += "<section id=\"training\"><h2>Training</h2>\n";
    if records.is_empty() {
        h += "<p class=\"missing\">no metrics.jsonl</p>\n";
    }
    for (file, caption) in training_curves(&records, &run.root.join("report"))? {
        h += &image(&file, &caption);
    }
    let epochs: Vec<Row> = records
        .iter()
        .filter(|r| r["kind"] == "valid")
        .map(|r| (format!("epoch {}", r["epoch"]), pct(&r["valid_acc"]).unwrap_or_else(|| "–".into())))
        .collect();
    if !epochs.is_empty() {
        h += "<h3>Validation accuracy per epoch</h3>\n";
        h += &table(&epochs);
    }
    if let Some(f) = &fin {
        let mut rows = vec![];
        flatten("", f, &mut rows);
        h += "<h3>final.json</h3>\n";
        h += &table(&rows);
    }
    h += "</section>\n";

    let samples = run.root.join("samples");
    let mut grids: Vec<PathBuf> = std::fs::read_dir(&samples)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "png")).collect())
        .unwrap_or_default();
    // Iteration grids in order, the final one last.
    grids.sort_by_key(|p| (p.file_stem().is_some_and(|s| s == "final"), p.clone()));
    if !grids.is_empty() {
        h += "<section id=\"samples\"><h2>Replay-buffer samples over training</h2>\n<div class=\"row\">\n";
        // At most 8 grids, evenly spread from the first to the last, so long runs stay readable.
        let shown = grids.len().min(8);
        let picks: Vec<usize> = (0..shown).map(|i| if shown == 1 { 0 } else { i * (grids.len() - 1) / (shown - 1) }).collect();
        for p in picks.iter().map(|&i| &grids[i]) {
            let stem = p.file_stem().map_or(String::new(), |s| s.to_string_lossy().replace("iter_", "iteration "));
            h += &image(p, &stem);
        }
        h += "</div></section>\n";
    }

    h += "<section id=\"evaluation\"><h2>Evaluation</h2>\n";
    let eval = run.root.join("eval");
    let mut any = false;
    for metric in crate::eval::evaluate::METRICS {
        let Some(v) = read_json(&eval.join(format!("{metric}.json"))) else { continue };
        any = true;
        let _ = writeln!(h, "<h3 id=\"eval-{metric}\">{metric}</h3>");
        let mut rows = vec![];
        flatten("", &v, &mut rows);
        h += &table(&rows);
        let mut pictures: Vec<String> = v["plots"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(String::from)).collect();
        if pictures.is_empty() && *metric == "calibration" {
            pictures.push("reliability.png".into());
        }
        h += "<div class=\"row\">\n";
        for p in pictures {
            h += &image(&eval.join(&p), &p);
        }
        h += "</div>\n";
    }
    if !any {
        h += "<p class=\"missing\">no evaluation yet: run <code>sadajem eval --run-dir RUN</code></p>\n";
    }
    h += "</section>\n";

    h += "<section id=\"config\"><h2>Configuration</h2>\n<pre>";
    h += &escape(&config);
    h += "</pre></section>\n";

    let mut timing: Vec<Row> = vec![];
    if let Some(s) = fin.as_ref().and_then(|f| f["train_seconds"].as_f64()) {
        timing.push(("training".into(), format!("{s:.0} s")));
    }
    for metric in crate::eval::evaluate::METRICS {
        if let Some(s) = read_json(&eval.join(format!("{metric}.json"))).and_then(|v| v["seconds"].as_f64()) {
            timing.push((format!("eval: {metric}"), format!("{s:.1} s")));
        }
    }
    h += "<section id=\"timing\"><h2>Timing</h2>\n";
    h += &table(&timing);
    h += "</section>\n";
    // Lets a headless browser test tell that every image decoded.
    h += "<script>window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.imagesOk=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>\n";
    h += "</body></html>\n";
    let path = run.root.join("report.html");
    crate::train::checkpoint::write_atomic(&path, h.as_bytes())?;
    Ok(path)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
h1 code{font-size:.9em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.9em}\
th{background:#f5f5f5;font-weight:500}figure{display:inline-block;margin:.5em;vertical-align:top}\
figure img{max-width:560px;image-rendering:pixelated}figcaption{font-size:.85em;color:#555;text-align:center}\
.row{display:flex;flex-wrap:wrap}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}.missing{color:#a33}";

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with_results() -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        std::fs::write(run.config(), "[train]\nrecipe = \"sadajem\"\n").unwrap();
        for (i, acc) in [(20, 0.5), (40, 0.7)] {
            run.log(&serde_json::json!({"kind": "train", "iter": i, "loss": 1.0, "ce": 0.9, "l_px": 0.1, "acc": acc, "lr": 0.1, "lse_data": 2.0, "lse_sample": 2.1})).unwrap();
        }
        run.log(&serde_json::json!({"kind": "valid", "iter": 40, "epoch": 1, "valid_acc": 0.65})).unwrap();
        std::fs::write(run.final_results(), r#"{"test_accuracy": 0.7, "test_accuracy_best_checkpoint": 0.71, "train_seconds": 12.0}"#).unwrap();
        let eval = run.root.join("eval");
        std::fs::create_dir_all(&eval).unwrap();
        std::fs::write(eval.join("accuracy.json"), r#"{"accuracy": 0.72, "seconds": 1.5}"#).unwrap();
        std::fs::write(eval.join("ood.json"), r#"{"sets": {"mnist": {"scores": {"log_px": {"auroc": 0.9512}}}}, "plots": ["ood_mnist_log_px.png"]}"#).unwrap();
        plots::histograms(&[("a", &[1.0, 2.0]), ("b", &[2.0, 3.0])], "x", "t", &eval.join("ood_mnist_log_px.png")).unwrap();
        (dir, run)
    }

    #[test]
    fn summary_reads_every_result_present() {
        let (_d, run) = run_with_results();
        let rows = summary(&run);
        assert!(rows.contains(&("test accuracy".into(), "72.00 %".into())), "{rows:?}");
        assert!(rows.contains(&("OOD AUROC log p(x), mnist".into(), "0.951".into())), "{rows:?}");
        assert!(rows.contains(&("training time".into(), "12 s".into())), "{rows:?}");
    }

    #[test]
    fn the_page_is_self_contained_and_has_every_section() {
        let (_d, run) = run_with_results();
        let path = write(&run).unwrap();
        let html = std::fs::read_to_string(path).unwrap();
        for id in ["summary", "training", "evaluation", "config", "timing"] {
            assert!(html.contains(&format!("<section id=\"{id}\">")), "no {id} section");
        }
        // Four training curves (loss, energy, accuracy, lr) and the OOD histogram, all inline.
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 5, "{}", html.len());
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "no network references");
        assert!(!html.contains("missing:"), "every referenced image exists");
        assert!(html.contains("recipe = &quot;sadajem&quot;"), "the config is escaped and shown");
    }

    #[test]
    fn an_unevaluated_run_says_how_to_evaluate_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        std::fs::write(run.config(), "").unwrap();
        let html = std::fs::read_to_string(write(&run).unwrap()).unwrap();
        assert!(html.contains("sadajem eval --run-dir"), "{html}");
    }
}
