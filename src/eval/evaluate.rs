//! `sadajem eval`: loads a run's model once, computes each metric with the pure functions of
//! the sibling modules, and writes `RUN/eval/<metric>.json` (values, settings, dataset,
//! checkpoint, protocol, seconds) with its PNG plots. Like the trainer, it owns the progress bars.
use super::feature_stats::{self, bar};
use super::{attack, calibration, fid, inception, ood};
use crate::config::{Config, InitKind, NetMode};
use crate::data::{self, augment, augment::Augment, split, FolderOptions, ImageSet, Split};
use crate::model::{energy, Mode, Wrn};
use crate::report::{grid, plots};
use crate::run::{Metric, RunDir};
use crate::sampler::{init, sgld};
use crate::store::checkpoint;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// What a finished metric reports on the console.
pub struct Outcome {
    pub metric: Metric,
    pub summary: String,
    pub file: PathBuf,
}

/// One evaluation of one checkpoint of one run.
pub struct Evaluation<'a> {
    cfg: &'a Config,
    device: Device,
    /// Keeps the network's variables alive.
    _vs: nn::VarStore,
    net: Wrn,
    checkpoint: PathBuf,
    /// The training iteration the checkpoint holds (None for one without a training state).
    iteration: Option<u64>,
    /// The checkpoint's replay buffer (joint recipes only), on the CPU.
    buffer: Option<Tensor>,
    run: RunDir,
    out: PathBuf,
    test: ImageSet,
    test_idx: Vec<usize>,
    train: OnceCell<ImageSet>,
    test_logits: OnceCell<Tensor>,
}

/// Per-sample L2 norm over all but the first dimension.
fn norms(x: &Tensor) -> Tensor {
    x.flatten(1, -1).norm_scalaropt_dim(2.0, [1], false)
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous().view([-1])).expect("a float tensor")
}

impl<'a> Evaluation<'a> {
    pub fn new(cfg: &'a Config, run: &RunDir, checkpoint: &Path) -> Result<Self> {
        let device = crate::engine::parse_device(cfg.train.device)?;
        let mut test = split::load_split(cfg, Split::Test)?;
        test.keep_first(cfg.eval.n_test);
        let vs = nn::VarStore::new(device);
        let mut net = Wrn::new(&vs.root(), &cfg.model, test.channels as i64, test.num_classes as i64);
        net.set_compute(&vs, cfg.train.precision, cfg.train.channels_last);
        let (tensors, state): (_, Value) = checkpoint::load(checkpoint)?;
        checkpoint::load_model(&vs, &tensors, "model.", checkpoint)?;
        let buffer = tensors.get("sampler.buffer").map(|b| b.to_device(Device::Cpu));
        let out = run.eval();
        std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create", out.display()))?;
        Ok(Evaluation {
            cfg,
            device,
            _vs: vs,
            net,
            checkpoint: checkpoint.to_path_buf(),
            iteration: state.get("iter").and_then(Value::as_u64),
            buffer,
            run: run.clone(),
            out,
            test_idx: (0..test.n).collect(),
            test,
            train: OnceCell::new(),
            test_logits: OnceCell::new(),
        })
    }

    /// Runs the named metrics; each writes its JSON and plots as soon as it is done.
    pub fn run(&self, metrics: &[Metric], mut report: impl FnMut(&Outcome)) -> Result<Vec<Outcome>> {
        let mut done = vec![];
        for &m in metrics {
            // Each metric draws from its own seeded stream, whichever others run.
            crate::engine::seed_torch(self.cfg.eval.seed);
            let started = Instant::now();
            let (mut record, summary) = match m {
                Metric::Accuracy => self.accuracy()?,
                Metric::Calibration => self.calibration()?,
                Metric::Ood => self.ood()?,
                Metric::Robustness => self.robustness()?,
                Metric::Generation => self.generation()?,
                Metric::Fid => self.fid()?,
            };
            record["metric"] = json!(m);
            record["checkpoint"] = json!(self.checkpoint.display().to_string());
            record["iteration"] = json!(self.iteration);
            record["dataset"] = json!({
                "dir": self.cfg.data.dir.display().to_string(),
                "split": "test",
                "n_test": self.test.n,
            });
            record["seconds"] = json!(started.elapsed().as_secs_f64());
            let file = self.run.eval_record(m);
            crate::store::atomic::write_atomic(&file, serde_json::to_string_pretty(&record)?.as_bytes())?;
            crate::report::tensorboard::write_eval(&self.run)?;
            let outcome = Outcome { metric: m, summary, file };
            report(&outcome);
            done.push(outcome);
        }
        Ok(done)
    }

    fn train_set(&self) -> Result<&ImageSet> {
        if let Some(t) = self.train.get() {
            return Ok(t);
        }
        let t = split::load_split(self.cfg, Split::Train)?;
        Ok(self.train.get_or_init(|| t))
    }

    /// Images `idx` of `set` as [N, C, H, W] in [−1, 1] and their labels, on the CPU.
    fn images(set: &ImageSet, idx: &[usize]) -> (Tensor, Tensor) {
        augment::batch(set, idx, &Augment::NONE, &mut ChaCha8Rng::seed_from_u64(0))
    }

    fn classify(&self, x: &Tensor) -> Tensor {
        self.net.forward(&x.to_device(self.device), Mode::Eval)
    }

    fn lse(&self, x: &Tensor) -> Tensor {
        energy::lse(&self.net.forward(x, Mode::Eval))
    }

    /// The test logits in eval mode, without refinement (computed once).
    fn test_logits(&self) -> &Tensor {
        self.test_logits.get_or_init(|| {
            super::logits(&self.net, &self.test, &self.test_idx, self.cfg.data.eval_batch_size, self.device)
        })
    }

    fn accuracy(&self) -> Result<(Value, String)> {
        let e = &self.cfg.eval;
        let labels = Tensor::from_slice(&self.test.labels);
        let plain = self.test_logits().argmax(1, false).eq_tensor(&labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        let mut record = json!({
            "accuracy": plain,
            "n": self.test.n,
            "protocol": "test set, network in eval mode",
            "settings": {"refine_steps": e.refine_steps},
        });
        let mut summary = format!("{:.2}%", 100.0 * plain);
        if e.refine_steps > 0 {
            let chunks: Vec<&[usize]> = self.test_idx.chunks(self.cfg.data.eval_batch_size).collect();
            let progress = bar(chunks.len(), "refining");
            let mut right = 0i64;
            for chunk in chunks {
                let (x, y) = Self::images(&self.test, chunk);
                let lse = |x: &Tensor| self.lse(x);
                let refined = attack::purify(&lse, &x.to_device(self.device), e.refine_steps, e.refine_step_size, e.refine_noise, false);
                let pred = tch::no_grad(|| self.classify(&refined)).argmax(1, false).to_device(Device::Cpu);
                right += pred.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
                progress.inc(1);
            }
            progress.finish_and_clear();
            let refined = right as f64 / self.test.n as f64;
            record["accuracy_refined"] = json!(refined);
            record["settings"] = json!({
                "refine_steps": e.refine_steps, "refine_step_size": e.refine_step_size, "refine_noise": e.refine_noise,
            });
            summary += &format!(" ({:.2}% after {} SGLD refinement steps)", 100.0 * refined, e.refine_steps);
        }
        Ok((record, summary))
    }

    fn calibration(&self) -> Result<(Value, String)> {
        let probs = self.test_logits().softmax(1, Kind::Double);
        let (conf, pred) = probs.max_dim(1, false);
        let correct: Vec<bool> = Vec::<i64>::try_from(pred)?.iter().zip(&self.test.labels).map(|(p, l)| p == l).collect();
        let bins = calibration::bins(&to_vec(&conf), &correct, self.cfg.eval.ece_bins);
        let ece = calibration::ece(&bins);
        let plot = self.out.join("reliability.png");
        let title = format!("Reliability diagram, {} test images", self.test.n);
        plots::reliability_diagram(&bins, ece, &title, &plot)?;
        let record = json!({
            "ece": ece,
            "bins": bins,
            "n": self.test.n,
            "protocol": format!("{} equal-width confidence bins (lower, upper], confidence = max softmax", bins.len()),
            "settings": {"ece_bins": self.cfg.eval.ece_bins},
            "plots": ["reliability.png"],
        });
        Ok((record, format!("ECE {:.2}%", 100.0 * ece)))
    }

    /// The three OOD scores of every image of `x` (higher = more in-distribution):
    /// LSE(f(x)) = log p(x) + log Z, max p(y|x), and −‖∇x LSE(f(x))‖ of each sample.
    fn ood_scores(&self, x: &Tensor, what: &str) -> [Vec<f64>; 3] {
        let n = x.size()[0];
        let batch = self.cfg.data.eval_batch_size as i64;
        let progress = bar(((n + batch - 1) / batch) as usize, what);
        let mut out: [Vec<f64>; 3] = Default::default();
        for start in (0..n).step_by(batch as usize) {
            let xb = x.narrow(0, start, batch.min(n - start)).to_device(self.device).set_requires_grad(true);
            let logits = self.net.forward(&xb, Mode::Eval);
            let lse = energy::lse(&logits);
            let g = Tensor::run_backward(&[lse.sum(Kind::Float)], &[&xb], false, false).pop().expect("one gradient");
            out[0].extend(to_vec(&lse.detach()));
            out[1].extend(to_vec(&logits.detach().softmax(1, Kind::Float).max_dim(1, false).0));
            out[2].extend(to_vec(&-norms(&g)));
            progress.inc(1);
        }
        progress.finish_and_clear();
        out
    }

    /// An OOD set of `n` images shaped like the test images: `interp`, `uniform`, `gaussian`
    /// or a dataset directory.
    fn ood_set(&self, name: &str, n: usize, rng: &mut ChaCha8Rng) -> Result<(String, Tensor, String)> {
        let t = &self.test;
        let shape = [n as i64, t.channels as i64, t.height as i64, t.width as i64];
        let cpu = (Kind::Float, Device::Cpu);
        Ok(match name {
            "interp" => {
                let mut a = self.test_idx.clone();
                a.shuffle(rng);
                let mut b = a.clone();
                b.shuffle(rng);
                let (xa, _) = Self::images(t, &a[..n]);
                let (xb, _) = Self::images(t, &b[..n]);
                ("interp".into(), (xa + xb) / 2.0, "(x_i + x_j)/2 of random test-image pairs".into())
            }
            "uniform" => ("uniform".into(), Tensor::rand(shape, cpu) * 2.0 - 1.0, "U[-1, 1] per pixel".into()),
            "gaussian" => ("gaussian".into(), Tensor::randn(shape, cpu).clamp(-1.0, 1.0), "N(0, 1) per pixel, clamped to [-1, 1]".into()),
            dir => {
                let path = Path::new(dir);
                let format = data::detect_format(path).with_context(|| format!("eval.ood_sets entry `{dir}`"))?;
                let opts = FolderOptions { channels: t.channels, size: t.height };
                let set = data::load(path, format, Split::Test, opts).with_context(|| format!("eval.ood_sets entry `{dir}`"))?;
                let take = n.min(set.n);
                let (x, _) = Self::images(&set, &(0..take).collect::<Vec<_>>());
                let x = match (set.channels, t.channels) {
                    (1, 3) => x.repeat([1, 3, 1, 1]),
                    (3, 1) => x.mean_dim(1, true, Kind::Float),
                    _ => x,
                };
                let x = if (set.height, set.width) != (t.height, t.width) {
                    x.upsample_bilinear2d([t.height as i64, t.width as i64], false, None, None)
                } else {
                    x
                };
                let name = path.file_name().map_or(dir.to_string(), |f| f.to_string_lossy().into_owned());
                (name, x, format!("{format} test split of {dir}, converted to {} channel(s), {}×{}", t.channels, t.height, t.width))
            }
        })
    }

    fn ood(&self) -> Result<(Value, String)> {
        let e = &self.cfg.eval;
        if e.ood_sets.is_empty() {
            bail!("eval.ood_sets is empty: name at least one of interp, uniform, gaussian or a dataset directory");
        }
        let n = match e.ood_n {
            0 => self.test.n,
            n => n.min(self.test.n),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(e.seed);
        let (x_in, _) = Self::images(&self.test, &self.test_idx[..n]);
        let scores_in = self.ood_scores(&x_in, "in-dist");
        const SCORES: [(&str, &str); 3] =
            [("log_px", "log p(x) + log Z = LSE(f(x))"), ("max_softmax", "max p(y|x)"), ("grad_norm", "-||grad_x LSE(f(x))||")];
        let mut sets = serde_json::Map::new();
        let mut plots_written = vec![];
        let mut summary = vec![];
        for name in &e.ood_sets {
            let (set_name, x_out, about) = self.ood_set(name, n, &mut rng)?;
            let scores_out = self.ood_scores(&x_out, &set_name);
            let mut per_score = serde_json::Map::new();
            for (k, (key, label)) in SCORES.iter().enumerate() {
                let auroc = ood::auroc(&scores_in[k], &scores_out[k]);
                let fpr95 = ood::fpr_at_tpr(&scores_in[k], &scores_out[k], 0.95);
                let file = format!("ood_{set_name}_{key}.png");
                let title = format!("{label}: test vs {set_name} (AUROC {auroc:.3})");
                plots::histograms(&[("test (in-distribution)", &scores_in[k]), (set_name.as_str(), &scores_out[k])], label, &title, &self.out.join(&file))?;
                plots_written.push(file);
                per_score.insert(key.to_string(), json!({"auroc": auroc, "fpr95": fpr95}));
                if k == 0 {
                    summary.push(format!("{set_name} {auroc:.3}"));
                }
            }
            sets.insert(set_name, json!({"n": x_out.size()[0], "about": about, "scores": per_score}));
        }
        let record = json!({
            "sets": sets,
            "n_in": n,
            "protocol": "in-distribution = test images (positives, scored higher); AUROC with ties counted 1/2; FPR at the first threshold with TPR >= 95%",
            "scores": SCORES.iter().map(|(k, l)| json!({"key": k, "score": l})).collect::<Vec<_>>(),
            "settings": {"ood_sets": e.ood_sets, "ood_n": e.ood_n, "seed": e.seed},
            "plots": plots_written,
        });
        Ok((record, format!("AUROC log p(x): {}", summary.join(", "))))
    }

    fn robustness(&self) -> Result<(Value, String)> {
        let e = &self.cfg.eval;
        let n = e.pgd_n.min(self.test.n);
        let chunks: Vec<&[usize]> = self.test_idx[..n].chunks(self.cfg.data.eval_batch_size).collect();
        let purify = e.pgd_purify_steps;
        let classify = |x: &Tensor| {
            if purify > 0 {
                let lse = |x: &Tensor| self.lse(x);
                let x = attack::purify(&lse, x, purify, e.refine_step_size, e.refine_noise, true);
                self.net.forward(&x, Mode::Eval)
            } else {
                self.net.forward(x, Mode::Eval)
            }
        };
        let mut per_norm = serde_json::Map::new();
        let mut plots_written = vec![];
        let mut summary = vec![];
        for norm_name in &e.pgd_norms {
            let (norm, radii) = match norm_name.as_str() {
                "linf" => (attack::Norm::Linf, &e.pgd_linf_eps),
                _ => (attack::Norm::L2, &e.pgd_l2_eps),
            };
            let mut radii: Vec<f64> = radii.clone();
            if !radii.contains(&0.0) {
                radii.insert(0, 0.0);
            }
            let progress = bar(radii.len() * chunks.len(), &format!("PGD {norm}"));
            let (mut points, mut final_points) = (vec![], vec![]);
            let mut rows = vec![];
            for &eps in &radii {
                // /255 of the [0, 1] range is 2/255 of the network's [−1, 1] range.
                let eps_net = eps / 255.0 * 2.0;
                let step = match norm {
                    attack::Norm::Linf => e.pgd_step_size / 255.0 * 2.0,
                    attack::Norm::L2 => 2.5 * eps_net / e.pgd_steps as f64,
                };
                let p = attack::Pgd { norm, eps: eps_net, steps: if eps > 0.0 { e.pgd_steps } else { 0 }, step_size: step, random_start: e.pgd_random_start };
                let (mut never_broken, mut final_correct) = (0.0, 0.0);
                for chunk in &chunks {
                    let (x, y) = Self::images(&self.test, chunk);
                    let (x, y) = (x.to_device(self.device), y.to_device(self.device));
                    let attacked = attack::pgd(&classify, &x, &y, &p);
                    never_broken += attack::fraction(&attacked.never_broken) * chunk.len() as f64;
                    final_correct += attack::fraction(&attacked.final_correct) * chunk.len() as f64;
                    progress.inc(1);
                }
                let (acc, acc_final) = (never_broken / n as f64, final_correct / n as f64);
                points.push((eps, acc));
                final_points.push((eps, acc_final));
                rows.push(json!({
                    "eps": eps, "eps_network_units": eps_net, "step_size_network_units": step,
                    "accuracy": acc, "accuracy_final_iterate": acc_final,
                }));
            }
            progress.finish_and_clear();
            let file = format!("robustness_{norm_name}.png");
            let series = [
                plots::Series { name: &format!("PGD-{} {norm}, broken at any step (reference)", e.pgd_steps), points: &points },
                plots::Series { name: "last iterate only", points: &final_points },
            ];
            let title = format!("Robust accuracy under {norm} PGD ({n} test images{})", if purify > 0 { format!(", {purify} purification steps") } else { String::new() });
            plots::line_chart(&series, "eps (×1/255 of the [0, 1] pixel range)", "accuracy", &title, Some((0.0, 1.0)), &self.out.join(&file))?;
            plots_written.push(file);
            let shown: Vec<String> = points.iter().filter(|(eps, _)| *eps > 0.0).take(2).map(|(eps, a)| format!("{norm} {eps}/255 {:.1}%", 100.0 * a)).collect();
            summary.extend(shown);
            per_norm.insert(norm_name.clone(), json!(rows));
        }
        let record = json!({
            "norms": per_norm,
            "n": n,
            "protocol": "PGD on the cross-entropy, steps of sign(g) (Linf) or g/||g|| (L2), projection onto the eps-ball and clamp to [-1, 1]; eps in 1/255 of the [0, 1] range (doubled for the network's [-1, 1] input). `accuracy`: the reference's robust accuracy, an image counts as broken if the clean image, the random start or any iterate is misclassified (SADAJEM bpda_eot_attack.py); `accuracy_final_iterate`: the last iterate alone (an upper bound)",
            "accuracy": "broken at any step (clean image, random start or any iterate misclassified)",
            "accuracy_final_iterate": "the last iterate alone",
            "settings": {
                "pgd_steps": e.pgd_steps, "pgd_step_size": e.pgd_step_size, "pgd_random_start": e.pgd_random_start,
                "pgd_purify_steps": purify, "refine_step_size": e.refine_step_size, "refine_noise": e.refine_noise, "seed": e.seed,
            },
            "plots": plots_written,
        });
        Ok((record, summary.join(", ")))
    }

    /// The starting points of fresh chains.
    pub fn gen_init(&self) -> Result<init::Init> {
        let t = &self.test;
        let shape = [t.channels as i64, t.height as i64, t.width as i64];
        Ok(match self.cfg.eval.gen_init {
            InitKind::Uniform => init::Init::Uniform { shape },
            InitKind::Informative => {
                let train = self.train_set()?;
                let idx = split::train_valid(self.cfg, train.n).0;
                let cov = init::Covariance::from_config(&self.cfg.sampler);
                let cache = self.run.init_cache();
                init::Init::Informative(init::informative_cached(&cache, train, &idx, cov, self.device)?)
            }
        })
    }

    /// Fresh chains from `init`: `n` samples, of class `class` if given, run with the run's step
    /// rule and the `eval.gen_*` settings, in batches.
    pub fn sample(&self, init: &init::Init, n: usize, class: Option<i64>, progress: &ProgressBar) -> Tensor {
        let e = &self.cfg.eval;
        let mut s = self.cfg.sampler.clone();
        (s.steps, s.step_size, s.noise) = (e.gen_steps, e.gen_step_size, e.gen_noise);
        // Batch statistics as in training, without touching the saved running statistics.
        let mode = match s.net_mode {
            NetMode::Train => Mode::TrainFrozenStats,
            NetMode::Eval => Mode::Eval,
        };
        let batch = s.batch_size.max(1);
        let mut parts = vec![];
        let mut left = n;
        while left > 0 {
            let b = batch.min(left) as i64;
            let (x0, target) = match class {
                Some(c) => (init.draw_class(c, b, self.device), Some(Tensor::full([b], c, (Kind::Int64, self.device)))),
                None => (init.draw(b, self.device), None),
            };
            parts.push(sgld::run(&self.net, &x0, &s, mode, target.as_ref()).to_device(Device::Cpu));
            left -= b as usize;
            progress.inc(b as u64);
        }
        Tensor::cat(&parts, 0)
    }

    pub fn num_classes(&self) -> usize {
        self.test.num_classes
    }

    fn generation(&self) -> Result<(Value, String)> {
        let e = &self.cfg.eval;
        let init = self.gen_init()?;
        let classes = self.test.num_classes;
        let progress = bar(e.gen_n + classes * e.gen_per_class, "sampling");
        let free = self.sample(&init, e.gen_n, None, &progress);
        let per_class: Vec<Tensor> = (0..classes as i64).map(|c| self.sample(&init, e.gen_per_class, Some(c), &progress)).collect();
        progress.finish_and_clear();
        let per_class = Tensor::cat(&per_class, 0);
        grid::save_grid(&free, &self.out.join("samples_fresh.png"))?;
        grid::save_grid_columns(&per_class, e.gen_per_class, &self.out.join("samples_per_class.png"))?;
        let mut files = vec!["samples_fresh.png", "samples_per_class.png"];
        if let Some(buffer) = &self.buffer {
            let take = buffer.size()[0].min(100);
            grid::save_grid(&buffer.narrow(0, 0, take), &self.out.join("samples_buffer.png"))?;
            files.push("samples_buffer.png");
        }
        let mean_lse = |x: &Tensor| tch::no_grad(|| to_vec(&self.lse(&x.to_device(self.device)))).iter().sum::<f64>() / x.size()[0] as f64;
        let (x_test, _) = Self::images(&self.test, &self.test_idx[..self.test.n.min(500)]);
        let targets = Tensor::arange(classes as i64, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(e.gen_per_class as i64, None, None);
        let hit = tch::no_grad(|| self.classify(&per_class)).argmax(1, false).to_device(Device::Cpu).eq_tensor(&targets);
        let class_match = hit.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        let (lse_samples, lse_data) = (mean_lse(&free), mean_lse(&x_test));
        let record = json!({
            "n": e.gen_n,
            "per_class": e.gen_per_class,
            "mean_lse_samples": lse_samples,
            "mean_lse_test": lse_data,
            "class_conditional_match": class_match,
            "protocol": format!("fresh chains from the {:?} init, the run's {:?} step rule", e.gen_init, self.cfg.sampler.kind).to_lowercase(),
            "settings": {"gen_init": e.gen_init, "gen_steps": e.gen_steps, "gen_step_size": e.gen_step_size, "gen_noise": e.gen_noise},
            "plots": files,
        });
        let summary = format!(
            "mean LSE samples {lse_samples:.2} vs test {lse_data:.2}; {:.0}% of class-conditional samples classified as their class",
            100.0 * class_match
        );
        Ok((record, summary))
    }

    /// The Inception network's file (`eval.inception` or the usual places).
    pub fn inception_path(&self) -> Result<PathBuf> {
        feature_stats::find_inception(&self.cfg.eval.inception)
    }

    fn fid(&self) -> Result<(Value, String)> {
        let e = &self.cfg.eval;
        let path = self.inception_path()?;
        let net = inception::Inception::load(&path, self.device, e.fid_precision)?;
        let reference_sets = self.reference_sets()?;
        let refs: Vec<&ImageSet> = reference_sets.iter().collect();
        let total: usize = refs.iter().map(|s| s.n).sum();
        let n_ref = match e.fid_reference_n {
            0 => total,
            n => n.min(total),
        };
        let cache = feature_stats::cache_dir(&e.cache_dir)?;
        let (reference, cache_file) = feature_stats::dataset_stats(&net, &path, &refs, n_ref, e.kid_subset_size, &cache, "reference")?;
        let reference_about = json!({
            "dataset": self.cfg.data.dir.display().to_string(), "split": e.fid_reference, "n": n_ref, "cache": cache_file.display().to_string(),
        });
        let mut protocols = serde_json::Map::new();
        let mut summary = vec![];
        for protocol in &e.fid_protocols {
            let (samples, about) = match protocol.as_str() {
                "fresh" => {
                    let init = self.gen_init()?;
                    let progress = bar(e.fid_n, "chains");
                    let x = self.sample(&init, e.fid_n, None, &progress);
                    progress.finish_and_clear();
                    (vec![("all", x)], format!("{} fresh chains, unfiltered", e.fid_n))
                }
                _ => {
                    let Some(buffer) = &self.buffer else {
                        protocols.insert(protocol.clone(), json!({"skipped": "the checkpoint has no replay buffer (a softmax run)"}));
                        continue;
                    };
                    let buffer = match e.fid_buffer_n {
                        0 => buffer.shallow_clone(),
                        n => buffer.narrow(0, 0, (n as i64).min(buffer.size()[0])),
                    };
                    let (fid_part, is_part) = self.most_confident(&buffer);
                    let about = format!(
                        "replay buffer of {}: per predicted class the most confident 90% ({}) for FID/KID and 10% ({}) for IS",
                        buffer.size()[0],
                        fid_part.size()[0],
                        is_part.size()[0]
                    );
                    (vec![("fid", fid_part), ("is", is_part)], about)
                }
            };
            let mut result = serde_json::Map::new();
            result.insert("about".into(), json!(about));
            for (part, x) in samples {
                if x.size()[0] == 0 {
                    // A small buffer can leave no image in some class's top 10 % (int() rounds down).
                    let why = format!("no images to score: the buffer's {part} share is empty (raise eval.fid_buffer_n)");
                    result.insert(format!("{part}_skipped"), json!(why));
                    summary.push(format!("{protocol} {part}: skipped"));
                    continue;
                }
                let (pool, _) = feature_stats::features(&net, &x, &format!("{protocol} {part}"))?;
                if part != "is" {
                    // KID on all sample features against the reference's fixed share.
                    let (mu, cov) = fid::stats(&pool);
                    let d = fid::frechet_distance(&mu, &cov, &reference.mu, &reference.cov);
                    let (kid, kid_std) = fid::kid(&pool, &reference.kid_features, e.kid_subsets, e.kid_subset_size, e.seed);
                    result.insert("n".into(), json!(x.size()[0]));
                    result.insert("fid".into(), json!(d));
                    result.insert("kid".into(), json!(kid));
                    result.insert("kid_std".into(), json!(kid_std));
                    summary.push(format!("FID {d:.1} ({protocol})"));
                }
                if part != "fid" {
                    if let Some(l) = net.classifier_logits(&pool, e.is_bias) {
                        let n = x.size()[0] as usize;
                        let splits = match e.is_splits {
                            0 => fid::reference_is_splits(n),
                            s => s.min(n),
                        };
                        let (is, is_std) = fid::inception_score(&l, splits);
                        result.insert("inception_score".into(), json!(is));
                        result.insert("inception_score_std".into(), json!(is_std));
                        result.insert("n_is".into(), json!(n));
                        result.insert("is_splits".into(), json!(splits));
                        result.insert("is_logits".into(), json!(if e.is_bias { "with the classifier's bias" } else { "without the classifier's bias (the reference's)" }));
                    }
                }
            }
            protocols.insert(protocol.clone(), Value::Object(result));
        }
        let record = json!({
            "protocols": protocols,
            "reference": reference_about,
            "network": {"file": path.display().to_string(), "source": format!("{:?}", net.source()), "inception_score": net.has_logits(), "precision": format!("{:?}", net.precision()).to_lowercase()},
            "protocol": "FID = ||mu1-mu2||^2 + tr S1 + tr S2 - 2 tr (S1 S2)^1/2 on 2048-d pool3 features; KID = unbiased MMD^2, cubic kernel, mean over subsets; IS = exp E KL(p(y|x) || p(y)) over is_splits splits (eval.is_splits = 0: the reference's max(1, n / 5000)) of softmax(pool3 W) without the classifier's bias unless eval.is_bias (only with pytorch-fid's weights, which have the classifier)",
            "settings": {
                "fid_protocols": e.fid_protocols, "fid_n": e.fid_n, "fid_buffer_n": e.fid_buffer_n, "fid_reference": e.fid_reference, "fid_reference_n": e.fid_reference_n,
                "kid_subsets": e.kid_subsets, "kid_subset_size": e.kid_subset_size, "is_splits": e.is_splits, "is_bias": e.is_bias,
                "gen_init": e.gen_init, "gen_steps": e.gen_steps, "gen_step_size": e.gen_step_size, "gen_noise": e.gen_noise, "seed": e.seed,
            },
        });
        Ok((record, summary.join(", ")))
    }

    /// The buffer's most confident 90 % and 10 % per predicted class (the reference's protocol).
    fn most_confident(&self, buffer: &Tensor) -> (Tensor, Tensor) {
        let batch = self.cfg.data.eval_batch_size as i64;
        let n = buffer.size()[0];
        let probs: Vec<Tensor> = (0..n)
            .step_by(batch as usize)
            .map(|s| tch::no_grad(|| self.classify(&buffer.narrow(0, s, batch.min(n - s)))).softmax(1, Kind::Float).to_device(Device::Cpu))
            .collect();
        let (conf, pred) = Tensor::cat(&probs, 0).max_dim(1, false);
        let (conf, pred) = (to_vec(&conf), Vec::<i64>::try_from(pred).expect("labels"));
        let (mut top90, mut top10) = (vec![], vec![]);
        for c in 0..self.test.num_classes as i64 {
            let mut members: Vec<usize> = (0..n as usize).filter(|&i| pred[i] == c).collect();
            members.sort_by(|&a, &b| conf[b].total_cmp(&conf[a]));
            // int(len · ratio), rounded down, as the reference (Task/eval_buffer.py line 41).
            let keep = |share: f64| ((members.len() as f64 * share) as usize).min(members.len());
            top90.extend(members[..keep(0.9)].iter().map(|&i| i as i64));
            top10.extend(members[..keep(0.1)].iter().map(|&i| i as i64));
        }
        let pick = |idx: &[i64]| buffer.index_select(0, &Tensor::from_slice(idx));
        (pick(&top90), pick(&top10))
    }
}

impl Evaluation<'_> {
    /// The whole splits `eval.fid_reference` names (ignoring `data.max_*`).
    fn reference_sets(&self) -> Result<Vec<ImageSet>> {
        let splits: &[Split] = match self.cfg.eval.fid_reference.as_str() {
            "train" => &[Split::Train],
            "test" => &[Split::Test],
            _ => &[Split::Train, Split::Test],
        };
        let mut cfg = self.cfg.clone();
        (cfg.data.max_train, cfg.data.max_test) = (0, 0);
        splits.iter().map(|&split| split::load_split(&cfg, split)).collect()
    }
}
