//! `sadajem report`: one self-contained HTML page per run — config, training curves, sample
//! grids over training, every evaluation result with its plots, timing. Images are embedded as
//! data URIs, so the file opens anywhere without network access or the run directory.
//!
//! A run directory may be shared or downloaded, so everything is read as untrusted
//! ([`RunDir::read_inside`]): only files inside it, no symbolic links, regular files only, each
//! under a size cap. Only the images sadajem itself writes are embedded — eval's plots by their
//! names, `samples/*.png`, the curves drawn here — and only PNGs, at most [`MAX_IMAGE`] each and
//! [`MAX_PAGE_IMAGES`] in all; anything else is left out with a note on the page and a warning.
use super::plots::{self, Series};
use crate::records::eval::{AccuracyRecord, CalibrationRecord, EvalRecord, FidRecord, GenerationRecord, Header, OodRecord, RobustnessRecord};
use crate::records::{parse_metrics, FinalResults, MetricsLine, TrainLine, ValidLine};
use crate::run::{Metric, RunDir};
use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Write;
use std::path::PathBuf;

/// One line of the summary table: what, and its value as shown.
pub type Row = (String, String);

/// The most read of a JSON file of a run (ours are a few kB; metrics.jsonl of a long run a few MB).
const MAX_JSON: u64 = 16 << 20;
const MAX_METRICS: u64 = 256 << 20;
const MAX_CONFIG: u64 = 1 << 20;
/// The most embedded of one image (a plot is ~50 kB, a sample grid ~1 MB) ...
pub const MAX_IMAGE: u64 = 8 << 20;
/// ... and of all the page's images together.
pub const MAX_PAGE_IMAGES: u64 = 64 << 20;
/// Rows shown of one JSON file's table.
const MAX_ROWS: usize = 2000;

/// A JSON file of the run (`eval/accuracy.json`), if it is there and readable.
pub(super) fn read_json(run: &RunDir, rel: &str) -> Option<Value> {
    serde_json::from_slice(&run.read_inside(rel, MAX_JSON).ok()?).ok()
}

pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The metrics.jsonl lines that parse ([`parse_metrics`]: a line cut short, as the last one of
/// a run being written may be, is skipped).
fn metrics(run: &RunDir) -> Vec<MetricsLine> {
    let bytes = run.read_inside(RunDir::METRICS_INSIDE, MAX_METRICS).unwrap_or_default();
    parse_metrics(&String::from_utf8_lossy(&bytes))
}

/// final.json as its typed record, if it is there and parses.
fn read_final(run: &RunDir) -> Option<FinalResults> {
    serde_json::from_slice(&run.read_inside(RunDir::FINAL_RESULTS_INSIDE, MAX_JSON).ok()?).ok()
}

/// A metric's record in the run's directory `dir` (`eval`, or a study point's
/// `study/iter_NNNNNNN`) as its typed record, if it is there and parses.
pub(super) fn read_record_in<T: DeserializeOwned>(run: &RunDir, dir: &str, metric: Metric) -> Option<EvalRecord<T>> {
    serde_json::from_slice(&run.read_inside(&RunDir::record_inside(dir, metric), MAX_JSON).ok()?).ok()
}

/// A measured value, unless it could not be computed (NaN, `null` on disk).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// How a headline number is shown: as a percentage, or with this many decimals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shown {
    Percent,
    Decimals(usize),
}

impl Shown {
    /// `x` as shown, unless it could not be computed.
    pub fn format(self, x: f64) -> Option<String> {
        match self {
            Shown::Percent => finite(x).map(|x| format!("{:.2} %", 100.0 * x)),
            Shown::Decimals(digits) => finite(x).map(|x| format!("{x:.digits$}")),
        }
    }
}

/// One headline number of an evaluation: its name, value and how it is shown.
pub type Number = (String, f64, Shown);

/// The headline numbers of the evaluation records in the run's directory `dir` (`eval`, or a
/// study point's): accuracy, ECE, OOD AUROC of log p(x), robust accuracy, FID/KID/IS; those
/// that could not be computed are left out.
pub fn eval_numbers(run: &RunDir, dir: &str) -> Vec<Number> {
    let mut numbers: Vec<Number> = vec![];
    let mut push = |name: String, value: Option<f64>, shown: Shown| {
        if let Some(v) = value.and_then(finite) {
            numbers.push((name, v, shown));
        }
    };
    let acc = read_record_in::<AccuracyRecord>(run, dir, Metric::Accuracy).map(|r| r.values);
    push("test accuracy".into(), acc.as_ref().map(|a| a.accuracy), Shown::Percent);
    push("test accuracy after SGLD refinement".into(), acc.and_then(|a| a.accuracy_refined), Shown::Percent);
    let cal = read_record_in::<CalibrationRecord>(run, dir, Metric::Calibration).map(|r| r.values);
    push("ECE".into(), cal.map(|c| c.ece), Shown::Percent);
    for (name, set) in read_record_in::<OodRecord>(run, dir, Metric::Ood).map(|r| r.values.sets).unwrap_or_default() {
        push(format!("OOD AUROC log p(x), {name}"), set.scores.get("log_px").map(|s| s.auroc), Shown::Decimals(3));
    }
    for (norm, points) in read_record_in::<RobustnessRecord>(run, dir, Metric::Robustness).map(|r| r.values.norms).unwrap_or_default() {
        for p in points.iter().filter(|p| p.eps > 0.0) {
            push(format!("robust accuracy {norm} eps {}/255", p.eps), Some(p.accuracy), Shown::Percent);
        }
    }
    for (p, r) in read_record_in::<FidRecord>(run, dir, Metric::Fid).map(|r| r.values.protocols).unwrap_or_default() {
        push(format!("FID ({p})"), r.fid, Shown::Decimals(2));
        push(format!("KID ({p})"), r.kid, Shown::Decimals(4));
        push(format!("Inception Score ({p})"), r.inception_score, Shown::Decimals(2));
    }
    numbers
}

/// The headline numbers of a run: training and every evaluation JSON present. Shared by the
/// HTML page, `sadajem report`'s console table and run comparisons.
pub fn summary(run: &RunDir) -> Vec<Row> {
    summary_of(run, RunDir::EVAL_INSIDE)
}

/// The same with the evaluation in the run's directory `dir`.
pub fn summary_of(run: &RunDir, dir: &str) -> Vec<Row> {
    let numbers = eval_numbers(run, dir);
    let fin = read_final(run);
    let mut rows: Vec<Row> = vec![];
    if !numbers.iter().any(|(name, ..)| name == "test accuracy") {
        // Not evaluated: the test accuracy training measured on its best checkpoint.
        if let Some(acc) = fin.as_ref().and_then(|f| f.test_accuracy_best_checkpoint).and_then(|a| Shown::Percent.format(a)) {
            rows.push(("test accuracy".into(), acc));
        }
    }
    rows.extend(numbers.into_iter().filter_map(|(name, v, shown)| Some((name, shown.format(v)?))));
    let generation = read_record_in::<GenerationRecord>(run, dir, Metric::Generation).map(|r| r.values);
    if let Some(lse) =
        generation.and_then(|g| Some(format!("{} / {}", Shown::Decimals(2).format(g.mean_lse_samples)?, Shown::Decimals(2).format(g.mean_lse_test)?)))
    {
        rows.push(("mean LSE fresh samples / test".into(), lse));
    }
    if let Some(f) = fin {
        rows.push(("training time".into(), format!("{:.0} s", f.train_seconds)));
    }
    rows
}

/// The seconds each metric present took, from its record's header.
fn eval_seconds(run: &RunDir) -> Vec<(Metric, f64)> {
    let header =
        |metric: Metric| -> Option<Header> { serde_json::from_slice(&run.read_inside(&RunDir::eval_record_inside(metric), MAX_JSON).ok()?).ok() };
    Metric::ALL.into_iter().filter_map(|m| Some((m, header(m)?.seconds))).collect()
}

/// What the page may still embed, and what it left out.
struct Images {
    bytes_left: u64,
}

impl Images {
    /// A `<figure>` with the PNG `rel` of the run inlined, or a note saying why not: missing,
    /// not a file sadajem writes there, a link, not a PNG, too large.
    fn embed(&mut self, run: &RunDir, rel: &str, caption: &str) -> String {
        let refused = |why: String| {
            eprintln!("warning: {}: {rel}: not embedded in the report: {why}", run.root.display());
            format!("<p class=\"missing\">not embedded: {}: {}</p>\n", escape(&crate::text::shorten(rel, 200)), escape(&why))
        };
        let bytes = match run.read_inside(rel, MAX_IMAGE.min(self.bytes_left)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return format!("<p class=\"missing\">missing: {}</p>\n", escape(&run.root.join(rel).display().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData && self.bytes_left < MAX_IMAGE => {
                return refused(format!("the page already embeds its {} MiB of images ({e})", MAX_PAGE_IMAGES >> 20))
            }
            Err(e) => return refused(e.to_string()),
        };
        if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            return refused("not a PNG file".into());
        }
        self.bytes_left -= bytes.len() as u64;
        figure(&bytes, caption)
    }
}

/// A `<figure>` with the PNG `bytes` inlined as a data URI.
pub(super) fn figure(png: &[u8], caption: &str) -> String {
    format!(
        "<figure><img alt=\"{c}\" src=\"data:image/png;base64,{}\"><figcaption>{c}</figcaption></figure>\n",
        base64::engine::general_purpose::STANDARD.encode(png),
        c = escape(caption)
    )
}

/// Whether `name`, listed under `plots` in an eval JSON, is one of the plots `sadajem eval`
/// writes (src/eval/evaluate.rs): a file name in eval/, not a path.
fn is_eval_plot(name: &str) -> bool {
    let plain = !name.contains('/') && !name.starts_with('.') && name.ends_with(".png");
    let known = name == "reliability.png" || ["ood_", "robustness_", "samples_"].iter().any(|p| name.starts_with(p));
    plain && known
}

/// A file name in samples/ as the trainer writes them: `iter_NNNNNNN.png`, `final.png`.
fn is_sample_grid(name: &str) -> bool {
    name == "final.png"
        || name.strip_prefix("iter_").and_then(|n| n.strip_suffix(".png")).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    s + "</table>\n"
}

/// A training-curve chart: file stem, y-axis label, and its named series of (iteration, value).
type Chart<'a> = (&'a str, &'a str, Vec<(&'a str, Vec<(f64, f64)>)>);

/// Training curves from metrics.jsonl as PNGs in the run's report/; returns (path inside the
/// run, caption) pairs.
fn training_curves(run: &RunDir, lines: &[MetricsLine]) -> Result<Vec<(String, String)>> {
    let train: Vec<&TrainLine> = lines.iter().filter_map(|l| if let MetricsLine::Train(t) = l { Some(t) } else { None }).collect();
    let valid: Vec<&ValidLine> = lines.iter().filter_map(|l| if let MetricsLine::Valid(v) = l { Some(v) } else { None }).collect();
    let series =
        |value: fn(&TrainLine) -> Option<f64>| -> Vec<(f64, f64)> { train.iter().filter_map(|t| Some((t.iter as f64, value(t)?))).collect() };
    let validation: Vec<(f64, f64)> = valid.iter().map(|v| (v.iter as f64, v.valid_acc)).collect();
    let dir = run.report_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut out = vec![];
    let charts: [Chart; 4] = [
        ("loss", "loss", vec![("total", series(|t| Some(t.loss))), ("cross-entropy", series(|t| Some(t.ce))), ("L_px", series(|t| t.l_px))]),
        ("energy", "LSE f(x)", vec![("data", series(|t| t.lse_data)), ("samples", series(|t| t.lse_sample))]),
        ("accuracy", "accuracy", vec![("training batches", series(|t| Some(t.acc))), ("validation", validation)]),
        ("lr", "learning rate", vec![("lr", series(|t| Some(t.lr)))]),
    ];
    for (name, y_label, lines) in charts {
        let lines: Vec<(&str, Vec<(f64, f64)>)> = lines.into_iter().filter(|(_, p)| !p.is_empty()).collect();
        if lines.is_empty() {
            continue;
        }
        let s: Vec<Series> = lines.iter().map(|(n, p)| Series { name: n, points: p }).collect();
        let range = (name == "accuracy").then_some((0.0, 1.0));
        plots::line_chart(&s, "iteration", y_label, &format!("Training: {y_label}"), range, &run.report_curve(name))?;
        out.push((RunDir::report_curve_inside(name), format!("{y_label} over training")));
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
        other => rows.push((prefix.into(), crate::text::shorten(other.to_string().trim_matches('"'), 500))),
    }
}

/// [`flatten`], at most [`MAX_ROWS`] rows of it.
fn rows_of(v: &Value) -> Vec<Row> {
    let mut rows = vec![];
    flatten("", v, &mut rows);
    if rows.len() > MAX_ROWS {
        let more = rows.len() - MAX_ROWS;
        rows.truncate(MAX_ROWS);
        rows.push(("…".into(), format!("{more} more values not shown")));
    }
    rows
}

/// Writes RUN/report.html (and the training-curve PNGs it embeds, in RUN/report/); returns its
/// path.
pub fn write(run: &RunDir) -> Result<PathBuf> {
    // The curves are written into report/; a link there would have them written elsewhere.
    let curves_dir = run.report_dir();
    if std::fs::symlink_metadata(&curves_dir).is_ok_and(|m| !m.is_dir()) {
        bail!("{}: a symbolic link or a file; `sadajem report` writes its plots there: remove it", curves_dir.display());
    }
    let mut images = Images { bytes_left: MAX_PAGE_IMAGES };
    let mut h = page_head(run);
    h += &summary_section(run);
    h += &training_section(run, &mut images)?;
    h += &samples_section(run, &mut images);
    h += &evaluation_section(run, &mut images);
    h += &config_section(run);
    h += &timing_section(run);
    h += PAGE_END;
    let path = run.report_page();
    crate::store::atomic::write_atomic(&path, h.as_bytes())?;
    Ok(path)
}

/// The page up to its first section: the head with the style sheet, the run's name as title.
fn page_head(run: &RunDir) -> String {
    let name = escape(&run.root.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned()));
    page_start(&format!("sadajem run {name}"), &format!("sadajem run <code>{name}</code>"))
}

/// The start of a page up to its first section: the head with the style sheet, then the
/// heading; both given as HTML, already escaped.
pub(super) fn page_start(title: &str, heading: &str) -> String {
    format!("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>{STYLE}</style></head>\n<body>\n<h1>{heading}</h1>\n")
}

/// The headline numbers ([`summary`]).
fn summary_section(run: &RunDir) -> String {
    format!("<section id=\"summary\"><h2>Summary</h2>\n{}</section>\n", table(&summary(run)))
}

/// The training curves from metrics.jsonl, validation accuracy per epoch, and final.json's
/// every value.
fn training_section(run: &RunDir, images: &mut Images) -> Result<String> {
    let lines = metrics(run);
    let mut h = String::from("<section id=\"training\"><h2>Training</h2>\n");
    if lines.is_empty() {
        h += "<p class=\"missing\">no metrics.jsonl</p>\n";
    }
    for (rel, caption) in training_curves(run, &lines)? {
        h += &images.embed(run, &rel, &caption);
    }
    let epochs: Vec<Row> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Valid(v) => Some((format!("epoch {}", v.epoch), format!("{:.2} %", 100.0 * v.valid_acc))),
            _ => None,
        })
        .collect();
    if !epochs.is_empty() {
        h += "<h3>Validation accuracy per epoch</h3>\n";
        h += &table(&epochs);
    }
    if let Some(f) = read_json(run, RunDir::FINAL_RESULTS_INSIDE) {
        h += "<h3>final.json</h3>\n";
        h += &table(&rows_of(&f));
    }
    Ok(h + "</section>\n")
}

/// The sample grids in samples/ (if it is a directory of the run, not a link to one elsewhere),
/// iteration grids in order and the final one last.
fn sample_grids(run: &RunDir) -> Vec<String> {
    let samples = run.samples();
    let listed = std::fs::symlink_metadata(&samples).is_ok_and(|m| m.is_dir());
    let mut grids: Vec<String> = if listed { std::fs::read_dir(&samples).ok() } else { None }
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| is_sample_grid(n)).collect())
        .unwrap_or_default();
    grids.sort_by_key(|n| (n == "final.png", n.clone()));
    grids
}

/// The replay buffer over training: at most 8 grids, evenly spread from the first to the last,
/// so long runs stay readable. Nothing without grids.
fn samples_section(run: &RunDir, images: &mut Images) -> String {
    let grids = sample_grids(run);
    if grids.is_empty() {
        return String::new();
    }
    let mut h = String::from("<section id=\"samples\"><h2>Replay-buffer samples over training</h2>\n<div class=\"row\">\n");
    let shown = grids.len().min(8);
    let picks: Vec<usize> = (0..shown).map(|i| if shown == 1 { 0 } else { i * (grids.len() - 1) / (shown - 1) }).collect();
    for p in picks.iter().map(|&i| &grids[i]) {
        let stem = p.trim_end_matches(".png").replace("iter_", "iteration ");
        h += &images.embed(run, &RunDir::sample_grid_inside(p), &stem);
    }
    h + "</div></section>\n"
}

/// Every eval/<metric>.json present: its table of every value and its plots.
fn evaluation_section(run: &RunDir, images: &mut Images) -> String {
    let mut h = String::from("<section id=\"evaluation\"><h2>Evaluation</h2>\n");
    let mut any = false;
    for metric in Metric::ALL {
        let Some(v) = read_json(run, &RunDir::eval_record_inside(metric)) else { continue };
        any = true;
        let _ = writeln!(h, "<h3 id=\"eval-{metric}\">{metric}</h3>");
        h += &table(&rows_of(&v));
        h += &eval_plots(run, metric, &v, images);
    }
    if !any {
        h += "<p class=\"missing\">no evaluation yet: run <code>sadajem eval --run-dir RUN</code></p>\n";
    }
    h + "</section>\n"
}

/// The plots one eval record lists (a calibration record of an older version lists none: its
/// reliability diagram), each embedded if it is one `sadajem eval` writes.
fn eval_plots(run: &RunDir, metric: Metric, record: &Value, images: &mut Images) -> String {
    let mut pictures: Vec<String> = record["plots"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(String::from)).collect();
    if pictures.is_empty() && metric == Metric::Calibration {
        pictures.push("reliability.png".into());
    }
    let mut h = String::from("<div class=\"row\">\n");
    for p in pictures.iter().take(100) {
        if is_eval_plot(p) {
            h += &images.embed(run, &RunDir::eval_plot_inside(p), p);
        } else {
            eprintln!(
                "warning: {}: {} lists the plot {:?}: not a plot sadajem eval writes; not embedded",
                run.root.display(),
                RunDir::eval_record_inside(metric),
                crate::text::shorten(p, 200)
            );
            let _ = writeln!(h, "<p class=\"missing\">not embedded: {}: not a plot sadajem eval writes</p>", escape(&crate::text::shorten(p, 200)));
        }
    }
    h + "</div>\n"
}

/// config.toml as the run has it.
fn config_section(run: &RunDir) -> String {
    let config = String::from_utf8_lossy(&run.read_inside(RunDir::CONFIG_INSIDE, MAX_CONFIG).unwrap_or_default()).into_owned();
    format!("<section id=\"config\"><h2>Configuration</h2>\n<pre>{}</pre></section>\n", escape(&config))
}

/// The seconds training and each metric took.
fn timing_section(run: &RunDir) -> String {
    let mut timing: Vec<Row> = vec![];
    if let Some(f) = read_final(run) {
        timing.push(("training".into(), format!("{:.0} s", f.train_seconds)));
    }
    for (metric, s) in eval_seconds(run) {
        timing.push((format!("eval: {metric}"), format!("{s:.1} s")));
    }
    format!("<section id=\"timing\"><h2>Timing</h2>\n{}</section>\n", table(&timing))
}

/// The end of the page; its script lets a headless browser test tell that every image decoded.
pub(super) const PAGE_END: &str = "<script>window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.imagesOk=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>\n</body></html>\n";

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
h1 code{font-size:.9em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.9em}\
th{background:#f5f5f5;font-weight:500}figure{display:inline-block;margin:.5em;vertical-align:top}\
figure img{max-width:560px;image-rendering:pixelated}figcaption{font-size:.85em;color:#555;text-align:center}\
.row{display:flex;flex-wrap:wrap}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}.missing{color:#a33}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::eval::examples;

    fn run_with_results() -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        std::fs::write(run.config(), "[train]\nrecipe = \"sadajem\"\n").unwrap();
        for (iter, acc) in [(20, 0.5), (40, 0.7)] {
            let (l_px, lse_data, lse_sample) = (Some(0.1), Some(2.0), Some(2.1));
            let line = TrainLine { iter, epoch: 0, loss: 1.0, ce: 0.9, acc, l_px, lse_data, lse_sample, l2: None, lr: 0.1, img_per_s: 100.0 };
            run.log(&MetricsLine::Train(line)).unwrap();
        }
        run.log(&MetricsLine::Valid(ValidLine { iter: 40, epoch: 1, valid_acc: 0.65 })).unwrap();
        let fin = FinalResults {
            test_accuracy: 0.7,
            test_accuracy_best_checkpoint: Some(0.71),
            best_valid_accuracy: Some(0.65),
            best_epoch: Some(1),
            n_valid: 10,
            n_test: 10,
            epochs: 1,
            iterations: 40,
            rollbacks: 0,
            train_seconds: 12.0,
        };
        std::fs::write(run.final_results(), serde_json::to_string(&fin).unwrap()).unwrap();
        let eval = run.root.join("eval");
        std::fs::create_dir_all(&eval).unwrap();
        examples::write(&run.root, &examples::accuracy(0.72));
        examples::write(&run.root, &examples::ood("mnist", 0.9512, &["ood_mnist_log_px.png"]));
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

    /// A run being written: its last metrics.jsonl line cut short, a line of another kind and
    /// one that is not JSON. The page is written from the lines that parse.
    #[test]
    fn a_torn_metrics_line_is_skipped() {
        let (_d, run) = run_with_results();
        let mut text = std::fs::read_to_string(run.metrics()).unwrap();
        text.insert_str(0, "not json\n{\"kind\":\"other\",\"iter\":1}\n");
        text += "{\"kind\":\"train\",\"iter\":60,\"epo";
        std::fs::write(run.metrics(), text).unwrap();
        assert_eq!(metrics(&run).len(), 3, "two training lines and the validation line");
        let html = std::fs::read_to_string(write(&run).unwrap()).unwrap();
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 5);
        assert!(html.contains("<tr><th>epoch 1</th><td>65.00 %</td></tr>"), "the epoch table");
    }

    #[test]
    fn an_unevaluated_run_says_how_to_evaluate_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        std::fs::write(run.config(), "").unwrap();
        let html = std::fs::read_to_string(write(&run).unwrap()).unwrap();
        assert!(html.contains("sadajem eval --run-dir"), "{html}");
    }

    /// A run directory someone else wrote: plots listed by absolute and relative paths out of
    /// it, links in samples/ to a secret, to /dev/zero and a FIFO, a text file named like a
    /// plot. The page embeds none of them, says so, and is written at once.
    #[test]
    fn a_hostile_run_directory_embeds_nothing_from_outside() {
        let (dir, run) = run_with_results();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "root:x:0:0:TOP-SECRET").unwrap();
        let ood = r#"{"sets": {}, "plots": ["/etc/passwd", "../../secret.txt", "ood_mnist_log_px.png", "ood_text.png", "ood_link.png"]}"#;
        std::fs::write(run.root.join("eval/ood.json"), ood).unwrap();
        std::fs::write(run.root.join("eval/ood_text.png"), "TOP-SECRET as text").unwrap();
        std::os::unix::fs::symlink(&secret, run.root.join("eval/ood_link.png")).unwrap();
        let samples = run.samples();
        std::fs::create_dir(&samples).unwrap();
        std::os::unix::fs::symlink(&secret, samples.join("iter_0000001.png")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", samples.join("final.png")).unwrap();
        let fifo = std::ffi::CString::new(samples.join("iter_0000002.png").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::write(samples.join("notes.png"), "not a grid name").unwrap();
        let start = std::time::Instant::now();
        let html = std::fs::read_to_string(write(&run).unwrap()).unwrap();
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
        let b64 = base64::engine::general_purpose::STANDARD.encode("root:x:0:0:TOP-SECRET");
        assert!(!html.contains("TOP-SECRET") && !html.contains(&b64[..16]), "the secret is in the page");
        // The real plot is still there; each other one is named with why it was left out.
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 5);
        for why in [
            "/etc/passwd: not a plot sadajem eval writes",
            "../../secret.txt: not a plot sadajem eval writes",
            "eval/ood_text.png: not a PNG file",
            "eval/ood_link.png: a symbolic link, not followed",
            "samples/iter_0000001.png: a symbolic link",
            "samples/iter_0000002.png: not a regular file",
            "samples/final.png: a symbolic link",
        ] {
            assert!(html.contains(&format!("not embedded: {}", escape(why))), "{why}");
        }
        assert!(!html.contains("notes.png"));
        // eval/ itself a link to elsewhere: nothing read through it.
        std::fs::rename(run.root.join("eval"), dir.path().join("eval-elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("eval-elsewhere"), run.root.join("eval")).unwrap();
        let html = std::fs::read_to_string(write(&run).unwrap()).unwrap();
        assert!(html.contains("no evaluation yet"), "eval/ through a link is not read");
        // A report/ that is a link is refused: the curves would be written through it.
        std::fs::remove_dir_all(run.root.join("report")).unwrap();
        std::os::unix::fs::symlink(dir.path(), run.root.join("report")).unwrap();
        let e = write(&run).unwrap_err().to_string();
        assert!(e.contains("report: a symbolic link or a file"), "{e}");
    }
}
