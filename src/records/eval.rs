//! The records `sadajem eval` writes, one `RUN/eval/<metric>.json` each: the metric's own
//! values ([`AccuracyRecord`] … [`FidRecord`]) and the [`Header`] every one of them has, side by
//! side in one JSON object ([`EvalRecord`]). The drivers in `eval` build them, `report` and
//! `compare` read them back; TensorBoard and the report's table of every value read the same
//! files as plain JSON.
//!
//! A value the metric could not compute (NaN: an empty set, a failed square root) is written as
//! `null`, as JSON has no NaN, and reads back as NaN.
use crate::config::{FidSamples, InitKind, OodSource, Precision, Splits};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// A float that may be `null` on disk (a NaN when written), read back as NaN.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The fields every eval record has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The metric's name, as `--only` takes it.
    pub metric: String,
    pub checkpoint: String,
    /// The training iteration the checkpoint holds (null for one without a training state).
    pub iteration: Option<u64>,
    /// The epochs it had finished and its training seconds, for learning curves (absent for a
    /// checkpoint without a training state, and in records written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    pub dataset: DatasetAbout,
    /// Wall-clock time of the metric.
    pub seconds: f64,
}

/// The images a metric was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetAbout {
    pub dir: String,
    /// Always `test`.
    pub split: String,
    /// Test images used (`eval.n_test`).
    pub n_test: usize,
}

/// One `eval/<metric>.json`: the metric's values and the common header in one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord<T> {
    #[serde(flatten)]
    pub values: T,
    #[serde(flatten)]
    pub header: Header,
}

/// `eval/accuracy.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracyRecord {
    #[serde(deserialize_with = "number")]
    pub accuracy: f64,
    /// After `eval.refine_steps` SGLD refinement steps (only when there are any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_refined: Option<f64>,
    pub n: usize,
    pub protocol: String,
    pub settings: AccuracySettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccuracySettings {
    pub refine_steps: usize,
    /// The refinement's step and noise (only with refinement steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine_step_size: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine_noise: Option<f64>,
}

/// One equal-width confidence bin `(lower, upper]` of the calibration record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean confidence of the predictions in the bin (0 when empty).
    pub confidence: f64,
    /// Their accuracy (0 when empty).
    pub accuracy: f64,
}

/// `eval/calibration.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    #[serde(deserialize_with = "number")]
    pub ece: f64,
    pub bins: Vec<Bin>,
    pub n: usize,
    pub protocol: String,
    pub settings: CalibrationSettings,
    pub plots: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSettings {
    pub ece_bins: usize,
}

/// `eval/ood.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodRecord {
    /// Per OOD set, by its name (`interp`, `uniform`, `gaussian` or a dataset directory's name).
    pub sets: BTreeMap<String, OodSet>,
    /// In-distribution (test) images the sets are compared with.
    pub n_in: usize,
    pub protocol: String,
    /// What each score key means.
    pub scores: Vec<OodScoreAbout>,
    pub settings: OodSettings,
    pub plots: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodSet {
    pub n: usize,
    pub about: String,
    /// Per score key (`log_px`, `max_softmax`, `grad_norm`).
    pub scores: BTreeMap<String, OodScore>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodScore {
    #[serde(deserialize_with = "number")]
    pub auroc: f64,
    #[serde(deserialize_with = "number")]
    pub fpr95: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodScoreAbout {
    pub key: String,
    pub score: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodSettings {
    pub ood_sets: Vec<OodSource>,
    pub ood_n: usize,
    pub seed: u64,
}

/// `eval/robustness.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustnessRecord {
    /// Per norm (`PgdNorm::key`: `linf`, `l2`), one point per radius, eps 0 first.
    pub norms: BTreeMap<String, Vec<RobustnessPoint>>,
    pub n: usize,
    pub protocol: String,
    /// What the points' two accuracies mean.
    pub accuracy: String,
    #[serde(default)]
    pub accuracy_final_iterate: String,
    pub settings: RobustnessSettings,
    pub plots: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustnessPoint {
    /// In 1/255 of the [0, 1] pixel range.
    pub eps: f64,
    pub eps_network_units: f64,
    pub step_size_network_units: f64,
    /// Robust accuracy: broken at any step counts.
    #[serde(deserialize_with = "number")]
    pub accuracy: f64,
    /// The last iterate alone (records before it was added read as NaN).
    #[serde(default = "nan", deserialize_with = "number")]
    pub accuracy_final_iterate: f64,
}

fn nan() -> f64 {
    f64::NAN
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustnessSettings {
    pub pgd_steps: usize,
    pub pgd_step_size: f64,
    pub pgd_random_start: bool,
    pub pgd_purify_steps: usize,
    pub refine_step_size: f64,
    pub refine_noise: f64,
    pub seed: u64,
}

/// `eval/generation.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Fresh unconditional samples, and class-conditional ones per class.
    pub n: usize,
    pub per_class: usize,
    #[serde(deserialize_with = "number")]
    pub mean_lse_samples: f64,
    #[serde(deserialize_with = "number")]
    pub mean_lse_test: f64,
    /// Fraction of class-conditional samples classified as their class.
    #[serde(deserialize_with = "number")]
    pub class_conditional_match: f64,
    pub protocol: String,
    pub settings: ChainSettings,
    pub plots: Vec<String>,
}

/// The fresh chains' settings (`eval.gen_*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainSettings {
    pub gen_init: InitKind,
    pub gen_steps: usize,
    pub gen_step_size: f64,
    pub gen_noise: f64,
}

/// `eval/fid.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidRecord {
    /// Per protocol (`FidSamples::key`: `buffer`, `fresh`).
    pub protocols: BTreeMap<String, FidProtocol>,
    pub reference: FidReference,
    pub network: FidNetwork,
    pub protocol: String,
    pub settings: FidSettings,
}

/// One FID protocol's result: `skipped` alone (with its reason), or what was scored. A part
/// with no images to score (`all`, `fid` or `is`) has `<part>_skipped` instead of its numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FidProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
    /// Samples scored for FID and KID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid_std: Option<f64>,
    /// The Inception Score (only with a network that has the classifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception_score_std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_is: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_splits: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_logits: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_skipped: Option<String>,
}

impl FidProtocol {
    /// A protocol that could not run, and why.
    pub fn skipped(why: &str) -> Self {
        FidProtocol { skipped: Some(why.into()), ..FidProtocol::default() }
    }

    /// Marks part `part` (`all`, `fid` or `is`) as having no images to score.
    pub fn skip_part(&mut self, part: &str, why: String) {
        match part {
            "all" => self.all_skipped = Some(why),
            "fid" => self.fid_skipped = Some(why),
            _ => self.is_skipped = Some(why),
        }
    }
}

/// The reference images' statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidReference {
    pub dataset: String,
    pub split: Splits,
    pub n: usize,
    /// The cached statistics' file.
    pub cache: String,
}

/// The Inception network scored with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidNetwork {
    pub file: String,
    pub source: String,
    /// Whether it has the classifier the Inception Score needs.
    pub inception_score: bool,
    /// The arithmetic it ran in (absent in records from before it was recorded).
    #[serde(default)]
    pub precision: Option<Precision>,
}

/// What `sadajem fid` prints: one image set against a reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidComparison {
    #[serde(deserialize_with = "number")]
    pub fid: f64,
    #[serde(deserialize_with = "number")]
    pub kid: f64,
    #[serde(deserialize_with = "number")]
    pub kid_std: f64,
    pub n: usize,
    pub n_reference: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidSettings {
    pub fid_protocols: Vec<FidSamples>,
    pub fid_n: usize,
    pub fid_buffer_n: usize,
    pub fid_reference: Splits,
    pub fid_reference_n: usize,
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
    pub is_splits: usize,
    pub is_bias: bool,
    #[serde(flatten)]
    pub chains: ChainSettings,
    pub seed: u64,
}

/// Complete records with made-up values, for tests that need eval files in a run directory.
#[cfg(test)]
pub mod examples {
    use super::*;

    pub fn header(metric: &str) -> Header {
        let dataset = DatasetAbout { dir: "data/mnist".into(), split: "test".into(), n_test: 200 };
        Header {
            metric: metric.into(),
            checkpoint: "run/checkpoints/latest.safetensors".into(),
            iteration: Some(31),
            epoch: None,
            train_seconds: None,
            dataset,
            seconds: 1.5,
        }
    }

    pub fn accuracy(accuracy: f64) -> EvalRecord<AccuracyRecord> {
        let settings = AccuracySettings { refine_steps: 0, refine_step_size: None, refine_noise: None };
        let values = AccuracyRecord { accuracy, accuracy_refined: None, n: 200, protocol: "test set".into(), settings };
        EvalRecord { values, header: header("accuracy") }
    }

    /// An OOD record with one set, `name`, and its log p(x) AUROC.
    pub fn ood(name: &str, auroc: f64, plots: &[&str]) -> EvalRecord<OodRecord> {
        let scores = BTreeMap::from([("log_px".to_string(), OodScore { auroc, fpr95: 0.5 })]);
        let set = OodSet { n: 100, about: "a dataset".into(), scores };
        let values = OodRecord {
            sets: BTreeMap::from([(name.to_string(), set)]),
            n_in: 100,
            protocol: "test vs OOD".into(),
            scores: vec![OodScoreAbout { key: "log_px".into(), score: "LSE".into() }],
            settings: OodSettings { ood_sets: vec![OodSource::Dataset(name.into())], ood_n: 100, seed: 0 },
            plots: plots.iter().map(|p| p.to_string()).collect(),
        };
        EvalRecord { values, header: header("ood") }
    }

    /// A robustness record with L∞ points (eps, accuracy).
    pub fn robustness(linf: &[(f64, f64)]) -> EvalRecord<RobustnessRecord> {
        let point = |&(eps, accuracy): &(f64, f64)| RobustnessPoint {
            eps,
            eps_network_units: eps / 127.5,
            step_size_network_units: 2.0 / 255.0,
            accuracy,
            accuracy_final_iterate: accuracy,
        };
        let settings = RobustnessSettings {
            pgd_steps: 3,
            pgd_step_size: 2.0,
            pgd_random_start: true,
            pgd_purify_steps: 0,
            refine_step_size: 1.0,
            refine_noise: 0.01,
            seed: 0,
        };
        let values = RobustnessRecord {
            norms: BTreeMap::from([("linf".to_string(), linf.iter().map(point).collect())]),
            n: 40,
            protocol: "PGD".into(),
            accuracy: "broken at any step".into(),
            accuracy_final_iterate: "the last iterate alone".into(),
            settings,
            plots: vec!["robustness_linf.png".into()],
        };
        EvalRecord { values, header: header("robustness") }
    }

    /// Writes `record` as `RUN/eval/<metric>.json`.
    pub fn write<T: Serialize>(run_root: &std::path::Path, record: &EvalRecord<T>) {
        let dir = run_root.join("eval");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}.json", record.header.metric)), serde_json::to_string_pretty(record).unwrap()).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    /// `record` written and read back is equal, and its JSON has exactly `keys` at the top.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(record: &EvalRecord<T>, keys: &[&str]) -> Value {
        let text = serde_json::to_string_pretty(record).unwrap();
        assert_eq!(&serde_json::from_str::<EvalRecord<T>>(&text).unwrap(), record, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let mut got: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want: Vec<&str> = keys.iter().copied().chain(["metric", "checkpoint", "iteration", "dataset", "seconds"]).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{text}");
        v
    }

    /// The header fields, as `Evaluation::run` wrote them with `json!`.
    fn old_header(metric: &str, v: Value) -> Value {
        let mut v = v;
        v["metric"] = json!(metric);
        v["checkpoint"] = json!("run/checkpoints/latest.safetensors");
        v["iteration"] = json!(31);
        v["dataset"] = json!({"dir": "data/mnist", "split": "test", "n_test": 200});
        v["seconds"] = json!(1.5);
        v
    }

    #[test]
    fn accuracy_and_calibration_round_trip_and_read_the_old_shape() {
        let mut r = examples::accuracy(0.9);
        let v = round_trip(&r, &["accuracy", "n", "protocol", "settings"]);
        assert_eq!(v["settings"], json!({"refine_steps": 0}), "absent settings are left out");
        assert_eq!(v["iteration"], 31);
        (r.values.accuracy_refined, r.values.settings.refine_steps, r.values.settings.refine_step_size, r.values.settings.refine_noise) =
            (Some(0.8), 2, Some(1.0), Some(0.01));
        r.header.iteration = None;
        let v = round_trip(&r, &["accuracy", "accuracy_refined", "n", "protocol", "settings"]);
        assert!(v["iteration"].is_null(), "no training state: iteration null, as before");
        let old = old_header(
            "accuracy",
            json!({"accuracy": 0.5, "accuracy_refined": 0.75, "n": 200, "protocol": "test set, network in eval mode",
            "settings": {"refine_steps": 2, "refine_step_size": 1.0, "refine_noise": 0.01}}),
        );
        let r: EvalRecord<AccuracyRecord> = serde_json::from_value(old).unwrap();
        assert_eq!((r.values.accuracy, r.values.accuracy_refined, r.header.dataset.n_test), (0.5, Some(0.75), 200));

        let bin = Bin { lower: 0.0, upper: 0.5, count: 3, confidence: 0.4, accuracy: 1.0 / 3.0 };
        let cal = EvalRecord {
            values: CalibrationRecord {
                ece: 0.1,
                bins: vec![bin.clone(), Bin { lower: 0.5, upper: 1.0, ..bin }],
                n: 6,
                protocol: "2 bins".into(),
                settings: CalibrationSettings { ece_bins: 2 },
                plots: vec!["reliability.png".into()],
            },
            header: examples::header("calibration"),
        };
        round_trip(&cal, &["ece", "bins", "n", "protocol", "settings", "plots"]);
        let old = old_header(
            "calibration",
            json!({"ece": 0.02, "bins": [{"lower": 0.0, "upper": 1.0, "count": 2, "confidence": 0.7, "accuracy": 0.5}],
            "n": 2, "protocol": "1 equal-width confidence bins", "settings": {"ece_bins": 1}, "plots": ["reliability.png"]}),
        );
        let r: EvalRecord<CalibrationRecord> = serde_json::from_value(old).unwrap();
        assert_eq!((r.values.ece, r.values.bins[0].count, r.header.metric.as_str()), (0.02, 2, "calibration"));
    }

    #[test]
    fn ood_and_robustness_round_trip_and_read_the_old_shape() {
        round_trip(&examples::ood("mnist", 0.95, &["ood_mnist_log_px.png"]), &["sets", "n_in", "protocol", "scores", "settings", "plots"]);
        let old = old_header(
            "ood",
            json!({
                "sets": {"mnist": {"n": 100, "about": "mnist test split", "scores": {
                    "log_px": {"auroc": 0.9, "fpr95": 0.3}, "max_softmax": {"auroc": 0.8, "fpr95": 0.4}, "grad_norm": {"auroc": null, "fpr95": null}}}},
                "n_in": 100, "protocol": "in-distribution = test images",
                "scores": [{"key": "log_px", "score": "log p(x) + log Z = LSE(f(x))"}],
                "settings": {"ood_sets": ["data/mnist"], "ood_n": 100, "seed": 1}, "plots": ["ood_mnist_log_px.png"],
            }),
        );
        let r: EvalRecord<OodRecord> = serde_json::from_value(old).unwrap();
        let scores = &r.values.sets["mnist"].scores;
        assert_eq!(scores["log_px"], OodScore { auroc: 0.9, fpr95: 0.3 });
        assert!(scores["grad_norm"].auroc.is_nan(), "a NaN written as null reads back as NaN");

        round_trip(
            &examples::robustness(&[(0.0, 0.9), (8.0, 0.2)]),
            &["norms", "n", "protocol", "accuracy", "accuracy_final_iterate", "settings", "plots"],
        );
        let old = old_header(
            "robustness",
            json!({
                "norms": {"linf": [{"eps": 0.0, "eps_network_units": 0.0, "step_size_network_units": 0.0157, "accuracy": 0.9, "accuracy_final_iterate": 0.9},
                                   {"eps": 8, "eps_network_units": 0.0627, "step_size_network_units": 0.0157, "accuracy": 0.1, "accuracy_final_iterate": 0.2}]},
                "n": 40, "protocol": "PGD", "accuracy": "broken at any step", "accuracy_final_iterate": "the last iterate alone",
                "settings": {"pgd_steps": 3, "pgd_step_size": 2.0, "pgd_random_start": true, "pgd_purify_steps": 0, "refine_step_size": 1.0, "refine_noise": 0.01, "seed": 0},
                "plots": ["robustness_linf.png"],
            }),
        );
        let r: EvalRecord<RobustnessRecord> = serde_json::from_value(old).unwrap();
        let linf = &r.values.norms["linf"];
        assert_eq!((linf[1].eps, linf[1].accuracy, linf[1].accuracy_final_iterate), (8.0, 0.1, 0.2));
    }

    #[test]
    fn generation_round_trips_and_reads_the_old_shape() {
        let chains = ChainSettings { gen_init: InitKind::Informative, gen_steps: 3, gen_step_size: 1.0, gen_noise: 0.0 };
        let generation = EvalRecord {
            values: GenerationRecord {
                n: 16,
                per_class: 2,
                mean_lse_samples: 3.0,
                mean_lse_test: 2.5,
                class_conditional_match: 0.5,
                protocol: "fresh chains".into(),
                settings: chains.clone(),
                plots: vec!["samples_fresh.png".into(), "samples_per_class.png".into()],
            },
            header: examples::header("generation"),
        };
        let v = round_trip(
            &generation,
            &["n", "per_class", "mean_lse_samples", "mean_lse_test", "class_conditional_match", "protocol", "settings", "plots"],
        );
        assert_eq!(v["settings"]["gen_init"], "informative");
        let old = old_header(
            "generation",
            json!({"n": 16, "per_class": 2, "mean_lse_samples": 3.5, "mean_lse_test": 2.0, "class_conditional_match": 0.25,
            "protocol": "fresh chains from the uniform init, the run's clipped step rule",
            "settings": {"gen_init": "uniform", "gen_steps": 3, "gen_step_size": 1.0, "gen_noise": 0.0}, "plots": ["samples_fresh.png"]}),
        );
        let r: EvalRecord<GenerationRecord> = serde_json::from_value(old).unwrap();
        assert_eq!((r.values.mean_lse_samples, r.values.settings.gen_init), (3.5, InitKind::Uniform));
    }

    /// An FID record with a fresh protocol (IS included), a buffer one whose IS part was
    /// skipped, and a protocol skipped whole.
    fn fid_example() -> EvalRecord<FidRecord> {
        let chains = ChainSettings { gen_init: InitKind::Informative, gen_steps: 3, gen_step_size: 1.0, gen_noise: 0.0 };
        let mut fresh = FidProtocol {
            about: Some("20 fresh chains".into()),
            n: Some(20),
            fid: Some(150.0),
            kid: Some(0.1),
            kid_std: Some(0.01),
            ..FidProtocol::default()
        };
        (fresh.inception_score, fresh.inception_score_std, fresh.n_is, fresh.is_splits, fresh.is_logits) =
            (Some(2.0), Some(0.1), Some(20), Some(1), Some("without".into()));
        let mut buffer = FidProtocol {
            about: Some("replay buffer of 40".into()),
            n: Some(36),
            fid: Some(120.0),
            kid: Some(0.05),
            kid_std: Some(0.0),
            ..FidProtocol::default()
        };
        buffer.skip_part("is", "no images to score".into());
        EvalRecord {
            values: FidRecord {
                protocols: BTreeMap::from([
                    ("fresh".into(), fresh),
                    ("buffer".into(), buffer),
                    ("other".into(), FidProtocol::skipped("no replay buffer")),
                ]),
                reference: FidReference { dataset: "data/mnist".into(), split: Splits::Test, n: 60, cache: "cache/x.safetensors".into() },
                network: FidNetwork {
                    file: "weights/pt_inception.pth".into(),
                    source: "PytorchFid".into(),
                    inception_score: true,
                    precision: Some(Precision::Fp32),
                },
                protocol: "FID".into(),
                settings: FidSettings {
                    fid_protocols: vec![FidSamples::Buffer, FidSamples::Fresh],
                    fid_n: 20,
                    fid_buffer_n: 40,
                    fid_reference: Splits::Test,
                    fid_reference_n: 60,
                    kid_subsets: 4,
                    kid_subset_size: 10,
                    is_splits: 0,
                    is_bias: false,
                    chains,
                    seed: 0,
                },
            },
            header: examples::header("fid"),
        }
    }

    #[test]
    fn fid_round_trips_and_reads_the_old_shape() {
        let fid = fid_example();
        let v = round_trip(&fid, &["protocols", "reference", "network", "protocol", "settings"]);
        assert_eq!(v["protocols"]["other"], json!({"skipped": "no replay buffer"}), "a skipped protocol has its reason alone");
        assert_eq!(v["protocols"]["buffer"]["is_skipped"], "no images to score");
        assert!(v["protocols"]["buffer"].get("inception_score").is_none() && v["protocols"]["buffer"].get("fid_skipped").is_none());
        assert_eq!(v["settings"]["gen_steps"], 3, "the chain settings sit among the others");
        let old = old_header(
            "fid",
            json!({
                "protocols": {
                    "buffer": {"skipped": "the checkpoint has no replay buffer (a softmax run)"},
                    "fresh": {"about": "20 fresh chains, unfiltered", "n": 20, "fid": 151.5, "kid": 0.12, "kid_std": null, "fid_skipped": "x"},
                },
                "reference": {"dataset": "data/mnist", "split": "test", "n": 60, "cache": "c"},
                "network": {"file": "f", "source": "TorchScript", "inception_score": false, "precision": "fp32"},
                "protocol": "FID = ...",
                "settings": {"fid_protocols": ["buffer", "fresh"], "fid_n": 20, "fid_buffer_n": 40, "fid_reference": "test", "fid_reference_n": 60,
                    "kid_subsets": 4, "kid_subset_size": 10, "is_splits": 0, "is_bias": false,
                    "gen_init": "informative", "gen_steps": 3, "gen_step_size": 1.0, "gen_noise": 0.0, "seed": 0},
            }),
        );
        let r: EvalRecord<FidRecord> = serde_json::from_value(old).unwrap();
        let p = &r.values.protocols;
        assert_eq!(p["buffer"], FidProtocol::skipped("the checkpoint has no replay buffer (a softmax run)"));
        assert_eq!((p["fresh"].fid, p["fresh"].kid_std, p["fresh"].fid_skipped.as_deref()), (Some(151.5), None, Some("x")));
        assert_eq!(r.values.settings.chains.gen_steps, 3);
    }

    #[test]
    fn a_record_missing_a_field_or_of_another_metric_does_not_parse() {
        let text = serde_json::to_string(&examples::accuracy(0.9)).unwrap();
        assert!(serde_json::from_str::<EvalRecord<OodRecord>>(&text).is_err());
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("seconds");
        assert!(serde_json::from_value::<EvalRecord<AccuracyRecord>>(v).is_err());
    }
}
