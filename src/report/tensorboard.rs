//! TensorBoard event files in every run, so that `tensorboard --logdir runs/` shows a run while
//! it trains and compares runs:
//!
//! - `RUN/tensorboard/`: training. Every number of each metrics.jsonl line as a scalar tagged
//!   `KIND/KEY` (`train/loss`, `train/lse_data`, `train/acc`, `train/lr`, `train/img_per_s`, …,
//!   `valid/valid_acc`, `rollback/lr_scale`) at step `iter`, and the sample grids as images
//!   (`samples/buffer` at their iteration, `samples/final`).
//! - `RUN/tensorboard/eval/`: every number of `RUN/eval/*.json` (outside `settings` and the
//!   calibration `bins`) tagged `eval/METRIC/PATH` (`eval/fid/protocols/fresh/fid`, …), at the
//!   iteration of the checkpoint evaluated. A separate directory, because TensorBoard follows
//!   one file per directory at a time and training may still be writing its own.
//!
//! **Resume without duplicates.** metrics.jsonl and `samples/` are the run's record, and the
//! trainer truncates metrics.jsonl to the checkpoint it resumes from. [`Board::open`] therefore
//! rebuilds the training file from them — the lines and the grids up to the checkpoint's
//! iteration — under a temporary name, renames it into place, deletes the older files, and then
//! appends. What a killed run logged after its checkpoint is so never in the file twice (the
//! resumed run logs those steps again); the trainer does the same after a divergence rollback.
//! The eval file is rebuilt from `eval/*.json` after every metric, so each (tag, step) is in it
//! once however often `eval` runs.
//!
//! Written by hand: the one Rust crate for it (tensorboard-rs) is unmaintained since 2022, and
//! the part needed is small — TFRecord framing (the length as u64, the masked CRC-32C of those 8
//! bytes, the data, its masked CRC-32C) around protobuf `Event`s. The messages below are the
//! subset of TensorFlow's `event.proto` and `summary.proto` used, with their field numbers.
use crate::run::RunDir;
use anyhow::{bail, Context, Result};
use image::ImageDecoder;
use prost::Message;
use serde_json::Value as Json;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first event of every file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "Data", tags = "2, 4")]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
}

/// `tensorflow.Summary.Image`: an encoded PNG and its shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// Channels: 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// What TensorBoard recognises an event file by (it reads every file whose name holds
/// "tfevents", so temporary files are named otherwise).
const FILE_PREFIX: &str = "events.out.tfevents.";

/// TFRecord's CRC mask, so that a CRC of data holding CRCs is not trivially related to them.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One event as a TFRecord.
fn frame(event: &Event) -> Vec<u8> {
    let data = event.encode_to_vec();
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&masked_crc(&data).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Reads an event file back, checking the framing and both CRCs of every record.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = vec![];
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        if rest.len() < 12 {
            bail!("{}: the record at byte {pos} is cut short", path.display());
        }
        if u32_at(8) != masked_crc(&rest[..8]) {
            bail!("{}: the length CRC of the record at byte {pos} does not match", path.display());
        }
        let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let Some(len) = usize::try_from(len).ok().filter(|&l| l <= rest.len() - 16) else {
            bail!("{}: the record at byte {pos} claims {len} bytes; {} are left", path.display(), rest.len() - 12);
        };
        let data = &rest[12..12 + len];
        if u32_at(12 + len) != masked_crc(data) {
            bail!("{}: the data CRC of the record at byte {pos} does not match", path.display());
        }
        out.push(Event::decode(data).with_context(|| format!("{}: the record at byte {pos} is not an Event", path.display()))?);
        pos += 16 + len;
    }
    Ok(out)
}

/// An event file open for appending. Every event is one `write` of its whole record, straight
/// to the file (no buffer to flush), so a live TensorBoard sees it at once.
struct EventFile {
    file: File,
    path: PathBuf,
}

impl EventFile {
    fn create(path: &Path) -> Result<EventFile> {
        let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
        let mut f = EventFile { file, path: path.to_path_buf() };
        f.write(&Event { wall_time: now(), step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        Ok(f)
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        self.file.write_all(&frame(event)).with_context(|| format!("{}: cannot write", self.path.display()))
    }

    fn summary(&mut self, step: i64, value: Vec<Value>) -> Result<()> {
        if value.is_empty() {
            return Ok(());
        }
        self.write(&Event { wall_time: now(), step, what: Some(What::Summary(Summary { value })) })
    }
}

/// Replaces the event files in `dir` by one holding `events` (sorted by step): written under a
/// temporary name, renamed into place, then the older files deleted. Returns it, open.
fn replace_events(dir: &Path, mut events: Vec<(i64, Vec<Value>)>) -> Result<EventFile> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let secs = now() as u64;
    let name = format!("{FILE_PREFIX}{secs:010}.sadajem.{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let tmp = dir.join(format!(".rebuild.{}.tmp", std::process::id()));
    let mut f = EventFile::create(&tmp)?;
    events.sort_by_key(|(step, _)| *step);
    for (step, values) in events {
        f.summary(step, values)?;
    }
    f.file.sync_all().with_context(|| format!("{}: cannot write", tmp.display()))?;
    let path = dir.join(&name);
    fs::rename(&tmp, &path).with_context(|| format!("{}: cannot rename {} to it", path.display(), tmp.display()))?;
    f.path = path;
    for entry in fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        let stale = (other.starts_with(FILE_PREFIX) && other != name) || (other.starts_with(".rebuild.") && other.ends_with(".tmp"));
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(entry.path()).with_context(|| format!("{}: cannot delete", entry.path().display()))?;
        }
    }
    Ok(f)
}

fn scalar(tag: String, v: f64) -> Value {
    Value { tag, data: Some(Data::SimpleValue(v as f32)) }
}

/// The step and scalars of one metrics.jsonl line: every number but `iter` and `epoch`.
fn record_scalars(record: &Json) -> Option<(i64, Vec<Value>)> {
    let step = record.get("iter")?.as_i64()?;
    let kind = record.get("kind").and_then(Json::as_str).unwrap_or("train");
    let values = record
        .as_object()?
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "iter" | "epoch"))
        .filter_map(|(k, v)| Some(scalar(format!("{kind}/{k}"), v.as_f64()?)))
        .collect();
    Some((step, values))
}

/// A sample grid PNG as an image value: `samples/final` for `final.png`, else `samples/buffer`.
fn grid_value(png: &Path) -> Result<Value> {
    let bytes = fs::read(png).with_context(|| format!("{}: cannot read", png.display()))?;
    let decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(&bytes)).with_context(|| format!("{}: not a PNG", png.display()))?;
    let (width, height) = decoder.dimensions();
    let colorspace = decoder.color_type().channel_count() as i32;
    let tag = if png.file_stem().is_some_and(|s| s == "final") { "samples/final" } else { "samples/buffer" };
    let image = Image { height: height as i32, width: width as i32, colorspace, encoded_image_string: bytes };
    Ok(Value { tag: tag.into(), data: Some(Data::Image(image)) })
}

/// The grids `samples/iter_NNNNNNN.png` and their iterations.
fn kept_grids(samples: &Path) -> Vec<(i64, PathBuf)> {
    let Ok(entries) = fs::read_dir(samples) else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let iter = name.strip_prefix("iter_")?.strip_suffix(".png")?.parse().ok()?;
            Some((iter, e.path()))
        })
        .collect()
}

/// The training run's TensorBoard file: what the trainer logs also goes here (see the module
/// doc). [`Board::none`] for workers that do not write (data-parallel ranks other than 0).
pub struct Board {
    file: Option<EventFile>,
}

impl Board {
    pub fn none() -> Board {
        Board { file: None }
    }

    /// Rebuilds `RUN/tensorboard/`'s event file from metrics.jsonl and the sample grids up to
    /// iteration `iter` (the run's state now: 0 for a fresh run, the checkpoint's on a resume or
    /// a rollback), then keeps it open to append.
    pub fn open(run: &RunDir, iter: usize) -> Result<Board> {
        let iter = iter as i64;
        let mut events = vec![];
        if let Ok(f) = File::open(run.metrics()) {
            for line in BufReader::new(f).lines() {
                let line = line.with_context(|| format!("{}: cannot read", run.metrics().display()))?;
                // A line cut short by a kill is not the run's record.
                let Ok(record) = serde_json::from_str::<Json>(&line) else { continue };
                events.extend(record_scalars(&record).filter(|(step, _)| *step <= iter));
            }
        }
        for (step, png) in kept_grids(&run.samples()) {
            if step <= iter {
                events.push((step, vec![grid_value(&png)?]));
            }
        }
        Ok(Board { file: Some(replace_events(&run.tensorboard(), events)?) })
    }

    /// The scalars of one metrics.jsonl line (as [`RunDir::log`] writes it).
    pub fn log(&mut self, record: &Json) -> Result<()> {
        match (&mut self.file, record_scalars(record)) {
            (Some(f), Some((step, values))) => f.summary(step, values),
            _ => Ok(()),
        }
    }

    /// A sample grid the trainer has just written, at iteration `step`.
    pub fn grid(&mut self, png: &Path, step: usize) -> Result<()> {
        match &mut self.file {
            Some(f) => f.summary(step as i64, vec![grid_value(png)?]),
            None => Ok(()),
        }
    }
}

/// Every number in `v` under `path/…`, but none from `settings` (inputs, not results), the
/// per-bin calibration rows, or the step itself.
fn json_numbers(v: &Json, path: &str, out: &mut Vec<Value>) {
    match v {
        Json::Number(n) => out.extend(n.as_f64().map(|x| scalar(path.to_string(), x))),
        Json::Object(m) => {
            for (k, x) in m.iter().filter(|(k, _)| !matches!(k.as_str(), "settings" | "bins" | "iteration")) {
                json_numbers(x, &format!("{path}/{k}"), out);
            }
        }
        Json::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                json_numbers(x, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// An eval result file bigger than this is not one `eval` wrote.
const MAX_EVAL_JSON: u64 = 16 << 20;

/// Rebuilds `RUN/tensorboard/eval/` from the results in `RUN/eval/*.json`, each at the
/// iteration its `iteration` field names (0 where it has none).
pub fn write_eval(run: &RunDir) -> Result<()> {
    let dir = run.eval();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.metadata().is_ok_and(|m| m.is_file() && m.len() <= MAX_EVAL_JSON))
        .collect();
    files.sort();
    let mut events = vec![];
    for path in files {
        let text = fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let Ok(record) = serde_json::from_str::<Json>(&text) else { continue };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let metric = record.get("metric").and_then(Json::as_str).unwrap_or(&stem).to_string();
        let step = record.get("iteration").and_then(Json::as_i64).unwrap_or(0);
        let mut values = vec![];
        json_numbers(&record, &format!("eval/{metric}"), &mut values);
        events.push((step, values));
    }
    replace_events(&run.tensorboard_eval(), events).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (tag, step, value) of every scalar in `events`.
    fn scalars(events: &[Event]) -> Vec<(String, i64, f32)> {
        let mut out = vec![];
        for e in events {
            if let Some(What::Summary(s)) = &e.what {
                for v in &s.value {
                    if let Some(Data::SimpleValue(x)) = v.data {
                        out.push((v.tag.clone(), e.step, x));
                    }
                }
            }
        }
        out
    }

    fn event_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        v.sort();
        v
    }

    #[test]
    fn records_are_framed_with_masked_crc32c_and_read_back() {
        // (TensorBoard's own reader checks the mask too: tests/tensorboard.rs.)
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283, "the Castagnoli polynomial's check value");
        let e = Event { wall_time: 1.5, step: 7, what: Some(What::Summary(Summary { value: vec![scalar("a/b".into(), 0.25)] })) };
        let rec = frame(&e);
        let len = u64::from_le_bytes(rec[..8].try_into().unwrap()) as usize;
        assert_eq!(rec.len(), len + 16);
        assert_eq!(u32::from_le_bytes(rec[len + 12..].try_into().unwrap()), masked_crc(&rec[12..12 + len]));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = EventFile::create(&path).unwrap();
        f.write(&e).unwrap();
        let back = read_events(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].what, Some(What::FileVersion("brain.Event:2".into())));
        assert_eq!(back[1], e);

        // A flipped byte in the data, a cut-short record: named errors, never a panic.
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(read_events(&path).unwrap_err().to_string().contains("data CRC"));
        fs::write(&path, &bytes[..n - 3]).unwrap();
        assert!(read_events(&path).unwrap_err().to_string().contains("claims"));
        fs::write(&path, &bytes[..5]).unwrap();
        assert!(read_events(&path).unwrap_err().to_string().contains("cut short"));
    }

    #[test]
    fn every_number_of_a_metrics_line_is_a_scalar_under_kind_and_key() {
        let rec = json!({"kind": "train", "iter": 40, "epoch": 1, "loss": 1.5, "lse_data": -2.0, "acc": 0.5, "lr": 0.1, "img_per_s": 300.0});
        let (step, values) = record_scalars(&rec).unwrap();
        assert_eq!(step, 40);
        let mut tags: Vec<String> = values.iter().map(|v| v.tag.clone()).collect();
        tags.sort();
        assert_eq!(tags, ["train/acc", "train/img_per_s", "train/loss", "train/lr", "train/lse_data"]);
        let (_, values) = record_scalars(&json!({"kind": "valid", "iter": 40, "epoch": 1, "valid_acc": null})).unwrap();
        assert!(values.is_empty(), "no validation split: nothing to show");
        assert!(record_scalars(&json!({"loss": 1.0})).is_none());
    }

    /// A run directory with metrics lines at iterations 10..=60 and grids at 20, 40 and 60.
    fn run_with_history(root: &Path) -> RunDir {
        let run = RunDir::create(root).unwrap();
        for i in (10..=60).step_by(10) {
            run.log(&json!({"kind": "train", "iter": i, "epoch": 0, "loss": i as f64})).unwrap();
        }
        run.log(&json!({"kind": "valid", "iter": 60, "epoch": 1, "valid_acc": 0.5})).unwrap();
        fs::create_dir_all(root.join("samples")).unwrap();
        for i in [20, 40, 60] {
            image::GrayImage::new(6, 4).save(root.join(format!("samples/iter_{i:07}.png"))).unwrap();
        }
        run
    }

    #[test]
    fn a_resume_rebuilds_the_file_up_to_the_checkpoint_then_appends() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_with_history(dir.path());
        let tb = dir.path().join("tensorboard");
        // An earlier file (the killed run's) and a temporary a crash left.
        fs::create_dir_all(&tb).unwrap();
        fs::write(tb.join("events.out.tfevents.0000000001.sadajem.1.0"), b"old").unwrap();
        fs::write(tb.join(".rebuild.1.tmp"), b"half").unwrap();
        fs::create_dir_all(tb.join("eval")).unwrap();

        // As the trainer does: metrics truncated to the checkpoint (iteration 40), then open.
        run.truncate_metrics_after(40).unwrap();
        let mut board = Board::open(&run, 40).unwrap();
        board.log(&json!({"kind": "train", "iter": 50, "epoch": 0, "loss": 5.0})).unwrap();
        image::GrayImage::new(6, 4).save(dir.path().join("samples/final.png")).unwrap();
        board.grid(&dir.path().join("samples/final.png"), 50).unwrap();

        let files = event_files(&tb);
        assert_eq!(files.len(), 1, "only the rebuilt file is left: {files:?}");
        assert!(files[0].file_name().unwrap().to_string_lossy().starts_with(FILE_PREFIX));
        assert!(tb.join("eval").is_dir(), "the eval directory is not touched");
        let events = read_events(&files[0]).unwrap();
        let s = scalars(&events);
        assert_eq!(
            s.iter().map(|(t, st, _)| (t.as_str(), *st)).collect::<Vec<_>>(),
            [("train/loss", 10), ("train/loss", 20), ("train/loss", 30), ("train/loss", 40), ("train/loss", 50)]
        );
        assert_eq!(s[4].2, 5.0);
        let images: Vec<(String, i64, i32, i32, i32)> = events
            .iter()
            .flat_map(|e| match &e.what {
                Some(What::Summary(s)) => s
                    .value
                    .iter()
                    .filter_map(|v| match &v.data {
                        Some(Data::Image(i)) => Some((v.tag.clone(), e.step, i.width, i.height, i.colorspace)),
                        _ => None,
                    })
                    .collect(),
                _ => vec![],
            })
            .collect();
        // The grid at 60 came after the checkpoint: the resumed run writes it again.
        assert_eq!(images, [("samples/buffer".into(), 20, 6, 4, 1), ("samples/buffer".into(), 40, 6, 4, 1), ("samples/final".into(), 50, 6, 4, 1)]);
    }

    #[test]
    fn eval_results_become_scalars_at_the_checkpoint_iteration_once_however_often_eval_runs() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("eval")).unwrap();
        let fid = json!({"metric": "fid", "iteration": 300, "protocols": {"fresh": {"fid": 151.5, "kid": 0.1, "about": "x"}}, "settings": {"fid_n": 200}, "seconds": 3.0});
        let cal = json!({"metric": "calibration", "iteration": 300, "ece": 0.05, "bins": [{"lower": 0.0, "count": 3}]});
        fs::write(dir.path().join("eval/fid.json"), fid.to_string()).unwrap();
        fs::write(dir.path().join("eval/calibration.json"), cal.to_string()).unwrap();
        fs::write(dir.path().join("eval/reliability.png"), b"not json").unwrap();
        write_eval(&RunDir { root: dir.path().to_path_buf() }).unwrap();
        write_eval(&RunDir { root: dir.path().to_path_buf() }).unwrap();
        let files = event_files(&dir.path().join("tensorboard/eval"));
        assert_eq!(files.len(), 1);
        let mut s = scalars(&read_events(&files[0]).unwrap());
        s.sort_by(|a, b| a.0.cmp(&b.0));
        let tags: Vec<(&str, i64)> = s.iter().map(|(t, st, _)| (t.as_str(), *st)).collect();
        assert_eq!(
            tags,
            [("eval/calibration/ece", 300), ("eval/fid/protocols/fresh/fid", 300), ("eval/fid/protocols/fresh/kid", 300), ("eval/fid/seconds", 300)]
        );
        assert_eq!(s[1].2, 151.5);
    }
}
