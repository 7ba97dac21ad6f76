//! The typed records of a run directory that more than one part of the program reads: the
//! lines of `metrics.jsonl` and `final.json`, and `eval/<metric>.json` ([`eval`]). The trainer
//! and `sadajem eval` write them, `report`, `compare`, TensorBoard and `--resume` read them back,
//! all through these types, so a renamed field is a compile error rather than a silently empty
//! plot.
use serde::{Deserialize, Serialize};

pub mod eval;

/// One line of `metrics.jsonl`, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MetricsLine {
    Train(TrainLine),
    Valid(ValidLine),
    Rollback(RollbackLine),
}

impl MetricsLine {
    /// The iteration the line was logged at (what a resume truncates by).
    pub fn iter(&self) -> usize {
        match self {
            MetricsLine::Train(l) => l.iter,
            MetricsLine::Valid(l) => l.iter,
            MetricsLine::Rollback(l) => l.iter,
        }
    }
}

/// The means of a logging window of training iterations (`train.log_every`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainLine {
    pub iter: usize,
    /// 0-based epoch the window belongs to.
    pub epoch: usize,
    /// Total loss, cross-entropy and batch accuracy of the labelled batch.
    pub loss: f64,
    pub ce: f64,
    pub acc: f64,
    /// The likelihood term and the mean LSE of data and samples (joint recipes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l_px: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lse_data: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lse_sample: Option<f64>,
    /// The optional energy penalty (`loss.l2 > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    pub lr: f64,
    /// Images of the global batch per second over the window: the job's throughput.
    pub img_per_s: f64,
}

/// Validation accuracy at the end of an epoch (only with a validation split).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidLine {
    pub iter: usize,
    /// Epochs completed.
    pub epoch: usize,
    pub valid_acc: f64,
}

/// A divergence rollback: back to the checkpoint at `iter` from `diverged_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackLine {
    pub iter: usize,
    pub diverged_at: usize,
    pub reason: String,
    pub lr_scale: f64,
    pub rollback: usize,
}

/// `final.json`: what a finished run scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalResults {
    pub test_accuracy: f64,
    /// The best-validation checkpoint's; None without a validation split.
    pub test_accuracy_best_checkpoint: Option<f64>,
    pub best_valid_accuracy: Option<f64>,
    pub best_epoch: Option<usize>,
    pub n_valid: usize,
    pub n_test: usize,
    pub epochs: usize,
    pub iterations: usize,
    pub rollbacks: usize,
    pub train_seconds: f64,
}

/// The lines of a `metrics.jsonl` text that parse; others (a line cut by a kill, one from a
/// newer version) are skipped.
pub fn parse_metrics(text: &str) -> Vec<MetricsLine> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_the_names_readers_and_older_runs_use() {
        let line = MetricsLine::Train(TrainLine {
            iter: 5,
            epoch: 0,
            loss: 2.0,
            ce: 1.5,
            acc: 0.25,
            l_px: Some(0.5),
            lse_data: Some(3.0),
            lse_sample: Some(2.5),
            l2: None,
            lr: 0.01,
            img_per_s: 100.0,
        });
        let text = serde_json::to_string(&line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "train");
        for key in ["iter", "epoch", "loss", "ce", "acc", "l_px", "lse_data", "lse_sample", "lr", "img_per_s"] {
            assert!(v.get(key).is_some(), "{key} missing from {text}");
        }
        assert!(v.get("l2").is_none(), "absent terms are left out: {text}");
        // A softmax line of an earlier version, and a validation line, read back.
        let old = r#"{"acc":0.5,"ce":1.0,"epoch":0,"img_per_s":10.0,"iter":5,"kind":"train","loss":1.0,"lr":0.1}"#;
        let valid = r#"{"kind":"valid","iter":39,"epoch":1,"valid_acc":0.7}"#;
        let parsed = parse_metrics(&format!("{old}\n{valid}\n{{\"kind\":\"tra"));
        assert_eq!(parsed.len(), 2, "the cut line is skipped");
        assert!(matches!(&parsed[0], MetricsLine::Train(t) if t.l_px.is_none() && t.iter == 5));
        assert!(matches!(&parsed[1], MetricsLine::Valid(v) if v.valid_acc == 0.7));
        assert_eq!(parsed[1].iter(), 39);
        assert_eq!(serde_json::from_str::<MetricsLine>(&text).unwrap(), line);
    }
}
