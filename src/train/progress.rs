//! What a training run shows and records as it goes: the progress bar and epoch lines on the
//! console, the `metrics.jsonl` lines, and the TensorBoard events mirroring them. Only rank 0
//! of a data-parallel job does any of it; on the other workers every call does nothing.
use crate::records::{MetricsLine, TrainLine};
use crate::report::tensorboard::Board;
use crate::run::RunDir;
use crate::train::recipe::{PxStats, StepStats};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::time::Instant;

pub struct Progress<'a> {
    /// None on workers other than rank 0.
    out: Option<(&'a RunDir, Board)>,
    bar: ProgressBar,
    window: Window,
}

impl<'a> Progress<'a> {
    /// Rank 0's progress for `run`, whose TensorBoard file is rebuilt up to `iter` (the
    /// checkpoint the session starts from); a silent one elsewhere.
    pub fn new(run: &'a RunDir, primary: bool, iter: usize) -> Result<Self> {
        let out = if primary { Some((run, Board::open(run, iter)?)) } else { None };
        Ok(Progress { out, bar: ProgressBar::hidden(), window: Window::new() })
    }

    /// After a rollback to `iter`: the TensorBoard file rebuilt from the truncated log.
    pub fn rewind(&mut self, iter: usize) -> Result<()> {
        if let Some((run, board)) = &mut self.out {
            *board = Board::open(run, iter)?;
        }
        Ok(())
    }

    /// A new bar for `epoch` (0-based) of `epochs`, `done` of its `len` batches already taken.
    pub fn start_epoch(&mut self, epoch: usize, epochs: usize, done: usize, len: usize) {
        self.bar = match self.out {
            Some(_) => progress_bar(len, done, epoch, epochs),
            None => ProgressBar::hidden(),
        };
        self.window = Window::new();
    }

    /// One iteration done: its statistics join the window, which is logged when `flush`.
    pub fn step(&mut self, stats: &StepStats, images: usize, line: Option<(usize, usize, f64)>) -> Result<()> {
        self.window.add(stats, images);
        self.bar.inc(1);
        let Some((iter, epoch, lr)) = line else { return Ok(()) };
        let line = self.window.line(iter, epoch, lr);
        self.window = Window::new();
        self.bar.set_message(progress_message(&line));
        self.log(&MetricsLine::Train(line))
    }

    /// Writes a line to metrics.jsonl and TensorBoard.
    pub fn log(&mut self, line: &MetricsLine) -> Result<()> {
        if let Some((run, board)) = &mut self.out {
            run.log(line)?;
            board.log(&serde_json::to_value(line)?)?;
        }
        Ok(())
    }

    /// A sample grid just written to `png`, shown at `iter`.
    pub fn grid(&mut self, png: &Path, iter: usize) -> Result<()> {
        match &mut self.out {
            Some((_, board)) => board.grid(png, iter),
            None => Ok(()),
        }
    }

    pub fn end_epoch(&mut self) {
        self.bar.finish_and_clear();
    }
}

fn progress_message(l: &TrainLine) -> String {
    let mut m = format!("loss {:.3}  acc {:.1}%", l.loss, 100.0 * l.acc);
    if let (Some(d), Some(s)) = (l.lse_data, l.lse_sample) {
        m += &format!("  LSE data {d:.2} samples {s:.2}");
    }
    m + &format!("  lr {:.4}  {:.0} img/s", l.lr, l.img_per_s)
}

fn progress_bar(len: usize, pos: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})").expect("valid template").progress_chars("=> "));
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar.set_position(pos as u64);
    bar
}

/// Sums of the step statistics over a logging window, and its throughput.
struct Window {
    sum: StepStats,
    steps: usize,
    images: usize,
    started: Instant,
}

impl Window {
    fn new() -> Self {
        Window { sum: StepStats::default(), steps: 0, images: 0, started: Instant::now() }
    }

    fn add(&mut self, s: &StepStats, images: usize) {
        let sum = &mut self.sum;
        sum.loss += s.loss;
        sum.ce += s.ce;
        sum.acc += s.acc;
        if let Some(p) = s.px {
            let acc = sum.px.get_or_insert(PxStats::default());
            acc.l_px += p.l_px;
            acc.lse_data += p.lse_data;
            acc.lse_sample += p.lse_sample;
            if let Some(l2) = p.l2 {
                *acc.l2.get_or_insert(0.0) += l2;
            }
        }
        self.steps += 1;
        self.images += images;
    }

    /// The window's means as the metrics line of iteration `iter`.
    fn line(&self, iter: usize, epoch: usize, lr: f64) -> TrainLine {
        let n = self.steps as f64;
        let px = self.sum.px;
        TrainLine {
            iter,
            epoch,
            loss: self.sum.loss / n,
            ce: self.sum.ce / n,
            acc: self.sum.acc / n,
            l_px: px.map(|p| p.l_px / n),
            lse_data: px.map(|p| p.lse_data / n),
            lse_sample: px.map(|p| p.lse_sample / n),
            l2: px.and_then(|p| p.l2).map(|v| v / n),
            lr,
            img_per_s: self.images as f64 / self.started.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_logs_the_means_of_its_steps() {
        let mut w = Window::new();
        let px = |v: f64| Some(PxStats { l_px: v, lse_data: 2.0 * v, lse_sample: 3.0 * v, l2: None });
        w.add(&StepStats { loss: 1.0, ce: 0.5, acc: 0.25, px: px(1.0) }, 64);
        w.add(&StepStats { loss: 3.0, ce: 1.5, acc: 0.75, px: px(3.0) }, 64);
        let l = w.line(20, 1, 0.05);
        assert_eq!((l.iter, l.epoch, l.loss, l.ce, l.acc, l.lr), (20, 1, 2.0, 1.0, 0.5, 0.05));
        assert_eq!((l.l_px, l.lse_data, l.lse_sample, l.l2), (Some(2.0), Some(4.0), Some(6.0), None));
        assert!(l.img_per_s > 0.0);
        let mut softmax = Window::new();
        softmax.add(&StepStats { loss: 1.0, ce: 1.0, acc: 1.0, px: None }, 8);
        assert_eq!(softmax.line(1, 0, 0.1).l_px, None);
    }
}
