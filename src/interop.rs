//! The authors' PyTorch checkpoints in and out of sadajem runs. `sadajem import` maps a
//! checkpoint of the reference code (wgrathwohl/JEM, sndnyang/JEMPP, sndnyang/SADAJEM) onto our
//! Wide-ResNet and writes a run directory that `eval` and `sample` accept; `sadajem export`
//! writes a run's weights back in the reference's layout, as a `torch.save` file or safetensors.
//!
//! The reference layout, as their code builds and saves it:
//! - a checkpoint is `{"model_state_dict": state dict, "replay_buffer": [N, C, H, W]}`; their
//!   evaluation scripts also load a bare state dict;
//! - the state dict is that of the class-conditional wrapper `CCF`: the Wide-ResNet as `f.`, a
//!   head `class_output`, and a head `energy_output` only the unconditional model uses;
//! - inside `f`, our names, except that a projection shortcut is a `Sequential`
//!   (`layer2.0.shortcut.0.weight`), and wgrathwohl/JEM's Wide-ResNet also carries a `linear`
//!   layer of 10 classes its wrapper never calls;
//! - training on several GPUs wraps the model in `DataParallel`: every key then starts `module.`;
//! - batch norm's momentum (0.9, PyTorch's convention) and LeakyReLU's slope (0.2) are not in
//!   the file: they are the code's constants.
use crate::config::{Config, DataFormat, ModelConfig, NormKind, Sources};
use crate::data::Split;
use crate::model::Wrn;
use crate::run::{Checkpoint, RunDir};
use crate::store::checkpoint;
use crate::store::pickle;
use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::SafeTensors;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// What the tensor shapes say about the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Arch {
    pub depth: i64,
    pub widen: i64,
    pub norm: NormKind,
    pub channels: i64,
    pub classes: i64,
}

impl Arch {
    /// The network's settings: the shapes, and the constants the file does not hold (module doc).
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig { depth: self.depth, widen: self.widen, norm: self.norm, bn_momentum: 0.9, slope: 0.2, dropout: 0.0 }
    }

    /// `WRN-28-10 (batch norm, 3 input channel(s), 10 classes)`.
    pub fn describe(&self) -> String {
        let norm = match self.norm {
            NormKind::Batch => "batch norm",
            NormKind::None => "no norm",
        };
        format!("WRN-{}-{} ({norm}, {} input channel(s), {} classes)", self.depth, self.widen, self.channels, self.classes)
    }
}

/// Whose code an exported file is laid out for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// sndnyang/JEMPP and sndnyang/SADAJEM.
    #[value(alias = "jempp")]
    Sadajem,
    /// wgrathwohl/JEM: the same, plus its Wide-ResNet's unused `f.linear` (10 classes).
    Jem,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Sadajem => "sadajem",
            Layout::Jem => "jem",
        })
    }
}

/// The file format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `torch.save`'s zip format: `torch.load` reads it.
    #[value(alias = "pt")]
    Pytorch,
    Safetensors,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Pytorch => "pytorch",
            Format::Safetensors => "safetensors",
        })
    }
}

/// Where a reference entry comes from when we write one.
enum Source {
    /// Our variable of this name.
    Ours(String),
    /// A head we don't have: written as zeros of this shape so that a strict
    /// `load_state_dict` finds it.
    Zeros(Vec<i64>),
    /// Batch norm's `num_batches_tracked` (0-d int64).
    Counter,
}

/// Our variable name → the reference's.
fn reference_name(ours: &str) -> String {
    if ours.starts_with("class_output.") {
        ours.to_string()
    } else {
        format!("f.{}", ours.replacen(".shortcut.", ".shortcut.0.", 1))
    }
}

/// Every entry of the reference's state dict for `arch`, in its order (the order the modules
/// are registered in the reference's classes).
fn layout(arch: &Arch, flavour: Layout) -> Vec<(String, Source)> {
    fn ours(out: &mut Vec<(String, Source)>, module: &str, params: &[&str]) {
        for p in params {
            let name = format!("{module}.{p}");
            out.push((reference_name(&name), Source::Ours(name)));
        }
    }
    let norm = |out: &mut Vec<(String, Source)>, module: &str| {
        if arch.norm == NormKind::Batch {
            ours(out, module, &["weight", "bias", "running_mean", "running_var"]);
            out.push((reference_name(&format!("{module}.num_batches_tracked")), Source::Counter));
        }
    };
    let conv = ["weight", "bias"];
    let mut out = vec![];
    ours(&mut out, "conv1", &conv);
    let n = (arch.depth - 4) / 6;
    for g in 1..=3 {
        for b in 0..n {
            let p = format!("layer{g}.{b}");
            norm(&mut out, &format!("{p}.bn1"));
            ours(&mut out, &format!("{p}.conv1"), &conv);
            norm(&mut out, &format!("{p}.bn2"));
            ours(&mut out, &format!("{p}.conv2"), &conv);
            // A projection where the shape changes: stride 2 (groups 2, 3) or 16 → 16k channels.
            if b == 0 && (g > 1 || arch.widen != 1) {
                ours(&mut out, &format!("{p}.shortcut"), &conv);
            }
        }
    }
    norm(&mut out, "bn1");
    let last = 64 * arch.widen;
    if flavour == Layout::Jem {
        out.push(("f.linear.weight".into(), Source::Zeros(vec![10, last])));
        out.push(("f.linear.bias".into(), Source::Zeros(vec![10])));
    }
    out.push(("energy_output.weight".into(), Source::Zeros(vec![1, last])));
    out.push(("energy_output.bias".into(), Source::Zeros(vec![1])));
    ours(&mut out, "class_output", &conv);
    out
}

/// Why a reference entry has no counterpart in our model, if it is one we know.
fn ignored_reason(key: &str) -> Option<&'static str> {
    if key.starts_with("energy_output.") {
        Some("the energy head of the unconditional model F; the class-conditional model (CCF) never calls it")
    } else if key.starts_with("f.linear.") {
        Some("a classifier inside wgrathwohl/JEM's Wide_ResNet that its wrapper never calls (class_output is the head)")
    } else if key.ends_with(".num_batches_tracked") {
        Some("batch norm's update counter: unused when the momentum is set, as the reference sets it")
    } else {
        None
    }
}

/// A reference checkpoint as read: its model entries under the reference's full names, its
/// replay buffer, and the architecture the shapes say.
pub struct ReferenceFile {
    pub path: PathBuf,
    pub format: &'static str,
    /// Model entries named as in the reference's `CCF` (`f.` prefix, `module.` removed).
    pub state: Vec<(String, Tensor)>,
    pub buffer: Option<Tensor>,
    /// Other entries of the file, with why they are left out.
    pub ignored: Vec<(String, String)>,
    /// How the names were normalised.
    pub notes: Vec<String>,
    pub arch: Arch,
    /// Which tensor told each part of the architecture.
    pub evidence: Value,
    /// Entries of the state dict that are not tensors, with what they are: unknown keys.
    pub non_tensors: Vec<(String, String)>,
    /// Globals of the file's pickle that `torch.load(weights_only=False)` would have run.
    pub code: Vec<pickle::CodeUse>,
    /// Whether the tensor bytes were checked against a checksum (zip records: CRC-32).
    pub checksummed: bool,
}

/// What a file held besides its tensors: other leaves, code, and whether its bytes carry a
/// checksum.
struct Entries {
    tensors: Vec<(String, Tensor)>,
    format: &'static str,
    leaves: Vec<(String, String)>,
    code: Vec<pickle::CodeUse>,
    checksummed: bool,
}

/// Every tensor of a `torch.save` file (either format) or a safetensors file, within `limits`.
fn read_entries(path: &Path, limits: &pickle::Limits) -> Result<Entries> {
    let mut head = [0u8; 9];
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let meta = file.metadata().with_context(|| format!("{}: cannot read", path.display()))?;
    ensure!(meta.is_file(), "{}: not a regular file", path.display());
    let n = std::io::Read::read(&mut &file, &mut head).with_context(|| format!("{}: cannot read", path.display()))?;
    // safetensors: a little-endian header length, then the JSON header.
    if n == 9 && head[8] == b'{' {
        let budget = pickle::Budget::for_file(meta.len(), limits);
        ensure!(
            meta.len() <= budget.bytes,
            "{}: a safetensors file of {}, more than the {} allowed (--max-tensor-bytes raises it)",
            path.display(),
            crate::memory::human(meta.len() as f64),
            crate::memory::human(budget.bytes as f64)
        );
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, meta.len()), &mut bytes)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        bytes.splice(0..0, head);
        let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: not a readable safetensors file: {e:?}", path.display()))?;
        ensure!(
            st.len() <= pickle::archive::MAX_TENSORS,
            "{}: {} tensors, more than the {} a model file is allowed",
            path.display(),
            st.len(),
            pickle::archive::MAX_TENSORS
        );
        let mut out = vec![];
        for (name, view) in st.tensors() {
            let t = Tensor::try_from(view).with_context(|| format!("{}: tensor `{}`", path.display(), crate::text::shorten(&name, 200)))?;
            out.push((name, t));
        }
        // safetensors sorts nothing for us; the reference order is restored by the layout.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        // safetensors carries no checksum either, but holds nothing but tensors.
        return Ok(Entries { tensors: out, format: "safetensors", leaves: vec![], code: vec![], checksummed: false });
    }
    let format = match pickle::file_kind(path)? {
        pickle::FileKind::TorchSaveZip => "torch.save (zip, PyTorch >= 1.6)",
        pickle::FileKind::TorchSaveLegacy => "torch.save (legacy, PyTorch < 1.6)",
        pickle::FileKind::TorchScript => {
            bail!("{}: a TorchScript module (torch.jit.save); expected a torch.save'd checkpoint or state dict", path.display())
        }
    };
    let loaded = pickle::load(path, limits)?;
    Ok(Entries { tensors: loaded.tensors, format, leaves: loaded.leaves, code: loaded.code, checksummed: loaded.checksummed })
}

/// Reads a reference checkpoint (or bare state dict, or our own export) and tells its
/// architecture from the tensor shapes.
pub fn read_reference(path: &Path) -> Result<ReferenceFile> {
    read_reference_within(path, &pickle::Limits::default())
}

/// [`read_reference`] within `limits`.
pub fn read_reference_within(path: &Path, limits: &pickle::Limits) -> Result<ReferenceFile> {
    let Entries { tensors: entries, format, leaves, code, checksummed } = read_entries(path, limits)?;
    let in_model = |n: &str| n.starts_with("model_state_dict.");
    let wrapped = entries.iter().map(|(n, _)| n).chain(leaves.iter().map(|(n, _)| n)).any(|n| in_model(n));
    // A state dict holds tensors only; anything else in it is a key no model has.
    let non_tensors: Vec<(String, String)> = leaves
        .into_iter()
        .filter_map(|(n, what)| match n.strip_prefix("model_state_dict.") {
            Some(key) => Some((key.to_string(), what)),
            None if !wrapped && !n.is_empty() => Some((n, what)),
            None => None,
        })
        .collect();
    let (mut state, mut buffer, mut ignored, mut notes) = (vec![], None, vec![], vec![]);
    for (name, t) in entries {
        if name == "replay_buffer" {
            buffer = Some(t);
        } else if !wrapped {
            state.push((name, t));
        } else if let Some(key) = name.strip_prefix("model_state_dict.") {
            state.push((key.to_string(), t));
        } else {
            ignored.push((name, "not part of the model: only model_state_dict and replay_buffer are read".to_string()));
        }
    }
    if state.is_empty() {
        let seen: Vec<&str> = ignored.iter().map(|(n, _)| n.as_str()).chain(buffer.iter().map(|_| "replay_buffer")).collect();
        bail!("{}: holds no model weights (expected `model_state_dict` or a bare state dict; tensors found: {})", path.display(), list(&seen));
    }
    if wrapped {
        notes.push("the model is the checkpoint's `model_state_dict`".to_string());
    }
    if state.iter().all(|(n, _)| n.starts_with("module.")) {
        for (n, _) in &mut state {
            *n = n["module.".len()..].to_string();
        }
        notes.push("`module.` removed from every key (the model was saved wrapped in DataParallel)".to_string());
    }
    let bare: Vec<String> =
        state.iter().map(|(n, _)| n.clone()).filter(|n| !["f.", "class_output.", "energy_output."].iter().any(|p| n.starts_with(p))).collect();
    if !bare.is_empty() {
        for (n, _) in &mut state {
            if bare.contains(n) {
                *n = format!("f.{n}");
            }
        }
        notes.push(format!("{} key(s) without the `f.` prefix read as the backbone's (e.g. `{}`)", bare.len(), bare[0]));
    }
    let mut seen = BTreeSet::new();
    for (n, _) in &state {
        ensure!(seen.insert(n.as_str()), "{}: `{n}` appears twice (with and without a prefix?)", path.display());
    }
    let (arch, evidence) = infer_arch(&state, path)?;
    Ok(ReferenceFile { path: path.to_path_buf(), format, state, buffer, ignored, notes, arch, evidence, non_tensors, code, checksummed })
}

fn list(names: &[&str]) -> String {
    listed(names.iter().map(|n| format!("`{}`", crate::text::shorten(n, 200))).collect())
}

/// Items already written out, the first 12 of them joined.
fn listed(items: Vec<String>) -> String {
    const SHOWN: usize = 12;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s += &format!(" and {} more", items.len() - SHOWN);
    }
    if items.is_empty() {
        s = "none".into();
    }
    s
}

/// Depth, width, norm, input channels and classes from the shapes of a few tensors.
fn infer_arch(state: &[(String, Tensor)], path: &Path) -> Result<(Arch, Value)> {
    let shape = |key: &str, what: &str| -> Result<Vec<i64>> {
        state.iter().find(|(n, _)| n == key).map(|(_, t)| t.size()).ok_or_else(|| {
            let keys: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
            anyhow!(
                "{}: cannot tell the architecture: no `{key}` ({what}); expected the state dict of the reference's \
                 Wide-ResNet (keys f.conv1.weight, f.layer1.0.conv1.weight, ..., class_output.weight); its keys: {}",
                path.display(),
                list(&keys)
            )
        })
    };
    let conv1 = shape("f.conv1.weight", "the first conv")?;
    ensure!(
        conv1.len() == 4 && conv1[0] == 16 && conv1[2..] == [3, 3],
        "{}: `f.conv1.weight` has shape {conv1:?}; a Wide-ResNet's first conv is [16, channels, 3, 3]",
        path.display()
    );
    let block = shape("f.layer1.0.conv1.weight", "the first block's first conv")?;
    ensure!(
        block.len() == 4 && block[0] % 16 == 0 && block[0] > 0,
        "{}: `f.layer1.0.conv1.weight` has shape {block:?}; expected [16·widen, 16, 3, 3]",
        path.display()
    );
    let widen = block[0] / 16;
    let blocks: BTreeSet<&str> = state.iter().filter_map(|(n, _)| n.strip_prefix("f.layer1.").and_then(|r| r.split('.').next())).collect();
    let n = blocks.len() as i64;
    let norm = if state.iter().any(|(k, _)| k == "f.bn1.running_mean") {
        NormKind::Batch
    } else if state.iter().any(|(k, _)| k == "f.bn1.weight") {
        bail!(
            "{}: `f.bn1` has weights but no running statistics: a layer, instance or act norm, which sadajem \
             does not have (it has batch norm or none)",
            path.display()
        );
    } else {
        NormKind::None
    };
    let head = shape("class_output.weight", "the classifier head")?;
    ensure!(
        head.len() == 2 && head[0] >= 1 && head[1] == 64 * widen,
        "{}: `class_output.weight` has shape {head:?}; expected [classes, {}] (64·widen features)",
        path.display(),
        64 * widen
    );
    let arch = Arch { depth: 6 * n + 4, widen, norm, channels: conv1[1], classes: head[0] };
    let evidence = json!({
        "channels": format!("f.conv1.weight {conv1:?}: dimension 1"),
        "widen": format!("f.layer1.0.conv1.weight {block:?}: {} / 16", block[0]),
        "depth": format!("{n} block(s) per group (f.layer1.0 ... f.layer1.{}): 6·{n} + 4", n - 1),
        "norm": match norm {
            NormKind::Batch => "f.bn1.running_mean present: batch norm",
            NormKind::None => "no f.bn1: no normalisation",
        },
        "classes": format!("class_output.weight {head:?}: dimension 0"),
    });
    Ok((arch, evidence))
}

/// One mapped entry, for imported.json.
#[derive(Serialize)]
pub struct Mapped {
    pub from: String,
    pub to: String,
    pub shape: Vec<i64>,
}

/// A reference checkpoint's weights in our network.
pub struct OnOurs {
    /// Holds the network's variables (on the CPU).
    pub vs: nn::VarStore,
    pub net: Wrn,
    pub mapped: Vec<Mapped>,
    /// Entries left out, with why.
    pub ignored: Vec<(String, String)>,
}

/// Builds our network for `model` (depth, width and norm may differ from what the shapes
/// said, if the user overrode them) and copies the reference's weights into it. Unknown and
/// missing keys, and shape mismatches, are errors that name the keys.
pub fn map_onto(r: &ReferenceFile, model: &ModelConfig) -> Result<OnOurs> {
    let arch = Arch { depth: model.depth, widen: model.widen, norm: model.norm, ..r.arch };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Wrn::new(&vs.root(), model, arch.channels, arch.classes);
    let vars = vs.variables();
    let expected: HashMap<String, String> = layout(&arch, Layout::Sadajem)
        .into_iter()
        .filter_map(|(reference, s)| match s {
            Source::Ours(ours) => Some((reference, ours)),
            _ => None,
        })
        .collect();
    let path = r.path.display();
    let (mut mapped, mut ignored, mut unknown) = (vec![], vec![], vec![]);
    let mut unknown_leaves: Vec<String> =
        r.non_tensors.iter().map(|(k, what)| format!("`{}` (not a tensor but {what})", crate::text::shorten(k, 200))).collect();
    tch::no_grad(|| -> Result<()> {
        for (key, t) in &r.state {
            if let Some(why) = ignored_reason(key) {
                ignored.push((key.clone(), why.to_string()));
                continue;
            }
            let Some(ours) = expected.get(key) else {
                unknown.push(key.as_str());
                continue;
            };
            let mut var = vars[ours].shallow_clone();
            if t.size() != var.size() {
                bail!("{path}: `{key}` has shape {:?}, a {} expects {:?} (our `{ours}`)", t.size(), arch.describe(), var.size());
            }
            var.f_copy_(&t.f_to_kind(var.kind())?).with_context(|| format!("{path}: copying `{key}`"))?;
            mapped.push(Mapped { from: key.clone(), to: format!("model.{ours}"), shape: t.size() });
        }
        Ok(())
    })?;
    let found: BTreeSet<&str> = r.state.iter().map(|(n, _)| n.as_str()).collect();
    let mut missing: Vec<&str> = expected.keys().map(String::as_str).filter(|k| !found.contains(k)).collect();
    missing.sort();
    if !unknown.is_empty() || !missing.is_empty() || !unknown_leaves.is_empty() {
        let mut unknown: Vec<String> = unknown.iter().map(|k| format!("`{}`", crate::text::shorten(k, 200))).collect();
        unknown.append(&mut unknown_leaves);
        bail!("{path}: does not match a {}: unknown key(s) {}; missing key(s) {}", arch.describe(), listed(unknown), list(&missing));
    }
    ignored.extend(r.ignored.iter().cloned());
    Ok(OnOurs { vs, net, mapped, ignored })
}

/// What `sadajem import` is asked to do.
pub struct ImportOptions<'a> {
    pub file: &'a Path,
    pub out: &'a Path,
    /// The dataset the model was trained on (the file cannot say which).
    pub data: Option<&'a Path>,
    /// The preset whose sampler and evaluation settings the run gets (default: sadajem-cifar10
    /// for batch norm, jem-cifar10 without).
    pub preset: Option<&'a str>,
    /// `--set key=value`, applied last: over the preset and over what the file says.
    pub overrides: &'a [String],
    /// Refuse a file whose pickle would run code under `torch.load` (`--strict`).
    pub strict: bool,
    /// What the file's tensors may take (`--max-tensor-bytes`).
    pub limits: pickle::Limits,
}

/// What an import did, for the console.
pub struct ImportSummary {
    pub arch: Arch,
    pub format: &'static str,
    pub preset: String,
    pub mapped: usize,
    pub ignored: Vec<String>,
    pub buffer: Option<Vec<i64>>,
    pub notes: Vec<String>,
    /// The globals that `torch.load(weights_only=False)` would have run, as shown.
    pub code: Vec<String>,
}

/// The settings an export recorded next to its file (slope, momentum, dropout: not in the
/// weights), if there is such a file.
fn recorded_settings(file: &Path) -> Option<(PathBuf, Value)> {
    let sidecar = sidecar_path(file);
    let bytes = crate::run::read_untrusted(&sidecar, SMALL_JSON, true).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((sidecar, v.get("architecture")?.clone()))
}

/// The most read of a JSON file beside a checkpoint or in a run directory (ours are a few kB).
const SMALL_JSON: u64 = 16 << 20;

/// Entries listed one by one in imported.json before the rest are only counted.
const LISTED: usize = 100;

/// The first [`LISTED`] of `items`, and how many more there are.
fn bounded(items: Vec<Value>) -> Value {
    let n = items.len();
    if n <= LISTED {
        return Value::Array(items);
    }
    let mut items: Vec<Value> = items.into_iter().take(LISTED).collect();
    items.push(json!({"more": n - LISTED}));
    Value::Array(items)
}

/// Lowercase hex SHA-256 of a file's contents: how an earlier import of the same file is
/// recognised (imported.json's `source.sha256`), and what to compare with a published checksum.
fn sha256_hex(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses `out` unless it is absent or an empty directory; says which run it holds when it
/// holds one, and whether that is an earlier import of this very file.
fn check_out(out: &Path, file: &Path, sha256: &str) -> Result<()> {
    let shown = out.display();
    let meta = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("--out {shown}: cannot look at it")),
        Ok(m) => m,
    };
    ensure!(!meta.file_type().is_symlink(), "--out {shown}: a symbolic link; give the directory itself, or a new one");
    ensure!(meta.is_dir(), "--out {shown}: exists and is not a directory");
    let mut entries = std::fs::read_dir(out).with_context(|| format!("--out {shown}: cannot list"))?;
    if entries.next().is_none() {
        return Ok(());
    }
    let existing = RunDir { root: out.to_path_buf() };
    let earlier = crate::run::read_untrusted(&existing.imported(), SMALL_JSON, false)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["source"]["sha256"].as_str().map(str::to_owned));
    if earlier.as_deref() == Some(sha256) {
        bail!(
            "{shown}: already holds a run imported from this same file ({}, SHA-256 {sha256}); nothing to do: \
             evaluate it with `sadajem eval --run-dir {shown}`, or choose another --out",
            file.display()
        );
    }
    if existing.config().exists() {
        bail!("{shown}: already holds a run; continue it with `sadajem train --resume {shown}` or choose another --out");
    }
    bail!("--out {shown}: not empty, and not an earlier import of {}; nothing was written: choose a new or empty directory", file.display())
}

/// A directory beside `out` that the run is written into, then renamed to `out`: a failed or
/// killed import leaves no half-written run where the user asked for one.
fn staging_dir(out: &Path) -> Result<PathBuf> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let dir = parent.join(format!(".{name}.importing-{}", std::process::id()));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    std::fs::create_dir(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    Ok(dir)
}

fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// `sadajem import`: reads the file, maps it, checks it against the dataset, and writes
/// RUN/config.toml, RUN/checkpoints/{best,latest}.safetensors and RUN/imported.json. Nothing is
/// written unless all of that succeeds.
pub fn import(opts: &ImportOptions) -> Result<ImportSummary> {
    let sha256 = sha256_hex(opts.file)?;
    check_out(opts.out, opts.file, &sha256)?;
    let r = read_reference_within(opts.file, &opts.limits)?;
    let code: Vec<String> = r
        .code
        .iter()
        .map(|c| match c.calls {
            0 => format!("`{}` (imported)", crate::text::shorten(&c.name, 120)),
            n => format!("`{}` (called {n} time(s))", crate::text::shorten(&c.name, 120)),
        })
        .collect();
    if opts.strict && !code.is_empty() {
        bail!("{}: refused (--strict): its pickle would have run code under torch.load: {}; nothing was written", opts.file.display(), listed(code));
    }
    let a = r.arch;
    let (cfg, preset, settings_from) = imported_config(opts, &r)?;

    let OnOurs { vs, mapped, ignored, .. } = map_onto(&r, &cfg.model)?;
    let test = crate::data::split::load_split(&cfg, Split::Test)?;
    let data = cfg.data.dir.display();
    ensure!(
        test.channels as i64 == a.channels && test.num_classes as i64 == a.classes,
        "{}: the model takes {} channel(s) and has {} classes, but {data} has {} channel(s) and {} classes; \
         pass --data with the dataset it was trained on",
        opts.file.display(),
        a.channels,
        a.classes,
        test.channels,
        test.num_classes
    );
    let mut notes = r.notes.clone();
    if !r.checksummed {
        notes.push(format!(
            "the {} format carries no checksum of the tensor data: damage to the file would go unnoticed \
             (torch.save's zip format has a CRC-32 per tensor, checked on reading)",
            r.format
        ));
    }
    let (buffer, buffer_json) = imported_buffer(&r, opts.file, &test, &cfg.data.dir, &mut notes)?;
    let mut ignored = ignored;
    ignored.extend(r.code.iter().map(|c| (c.name.to_string(), "ignored: would have run code under torch.load".to_string())));

    let staging = staging_dir(opts.out)?;
    let written =
        write_import(&staging, opts, &r, &cfg, preset, &sha256, (vs, mapped, &ignored), buffer.as_ref(), buffer_json, &notes, &settings_from)
            .with_context(|| format!("{}: the import failed while writing; nothing was left behind", opts.out.display()))
            .and_then(|arch| {
                std::fs::rename(&staging, opts.out)
                    .with_context(|| format!("{}: cannot move the imported run there from {}", opts.out.display(), staging.display()))?;
                Ok(arch)
            });
    let (arch, mapped) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    Ok(ImportSummary {
        arch,
        format: r.format,
        preset: preset.to_string(),
        mapped,
        ignored: ignored.into_iter().map(|(k, _)| k).collect(),
        buffer: buffer.map(|b| b.size()),
        notes,
        code,
    })
}

/// The imported run's settings: the preset (named, or chosen by the norm), what the file's
/// shapes and sidecar say over it, the user's `--set` over both; and where each came from.
fn imported_config<'a>(opts: &ImportOptions<'a>, r: &ReferenceFile) -> Result<(Config, &'a str, String)> {
    let a = r.arch;
    let preset = opts.preset.unwrap_or(match a.norm {
        NormKind::Batch => "sadajem-cifar10",
        NormKind::None => "jem-cifar10",
    });
    if opts.data.is_none() && opts.preset.is_none() {
        bail!(
            "--data: which dataset was {} trained on? The file cannot say ({} input channel(s), {} classes); \
             pass --data DIR, e.g. --data data/fashion-mnist, or a --preset that names it",
            opts.file.display(),
            a.channels,
            a.classes
        );
    }
    // What the file says, over the preset; the user's --set over both.
    let mut cfg = Config::from_sources(&Sources { preset: Some(preset), ..Default::default() })?;
    cfg.model = a.model_config();
    cfg.data.channels = a.channels as usize;
    let mut settings_from = "depth, widen, norm, channels, classes: the tensor shapes; bn_momentum 0.9, slope 0.2, dropout 0: \
                             the reference code's constants (not in the file)"
        .to_string();
    if let Some((sidecar, recorded)) = recorded_settings(opts.file) {
        let value = |key: &str| recorded.get(key).and_then(Value::as_f64);
        let m = &mut cfg.model;
        for (key, slot) in [("bn_momentum", &mut m.bn_momentum), ("slope", &mut m.slope), ("dropout", &mut m.dropout)] {
            if let Some(v) = value(key) {
                *slot = v;
            }
        }
        settings_from = format!("depth, widen, norm, channels, classes: the tensor shapes; bn_momentum, slope, dropout: {}", sidecar.display());
    }
    if let Some(b) = &r.buffer {
        if b.dim() == 4 && (8..=512).contains(&b.size()[2]) {
            cfg.data.image_size = b.size()[2] as usize;
        }
    }
    if let Some(dir) = opts.data {
        (cfg.data.dir, cfg.data.format) = (dir.to_path_buf(), DataFormat::Auto);
    }
    if !opts.overrides.is_empty() {
        settings_from += "; then --set";
    }
    Ok((cfg.overridden(opts.overrides)?, preset, settings_from))
}

/// The file's replay buffer as float32, checked against the model and the dataset, and its
/// imported.json entry; what is odd about it goes into `notes`.
fn imported_buffer(
    r: &ReferenceFile,
    file: &Path,
    test: &crate::data::ImageSet,
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<(Option<Tensor>, Option<Value>)> {
    let (a, data) = (&r.arch, dir.display());
    let buffer = match &r.buffer {
        None => None,
        Some(b) => {
            let size = b.size();
            ensure!(
                size.len() == 4 && size[0] >= 1 && size[1] == a.channels,
                "{}: `replay_buffer` has shape {size:?}; expected [N, {}, H, W] with N ≥ 1",
                file.display(),
                a.channels
            );
            if (size[2], size[3]) != (test.height as i64, test.width as i64) {
                notes.push(format!("the replay buffer's images are {}×{}, {data}'s {}×{}", size[2], size[3], test.height, test.width));
            }
            Some(b.f_to_kind(Kind::Float)?.f_contiguous()?)
        }
    };
    let buffer_json = match &buffer {
        None => None,
        Some(b) => {
            let (lo, hi) = (b.f_min()?.f_double_value(&[])?, b.f_max()?.f_double_value(&[])?);
            if lo < -1.0 || hi > 1.0 {
                notes.push(format!("the replay buffer reaches [{lo:.3}, {hi:.3}], beyond [-1, 1] (JEM's sampler does not clamp)"));
            }
            Some(json!({"from": "replay_buffer", "to": "sampler.buffer", "shape": b.size(), "min": lo, "max": hi}))
        }
    };
    Ok((buffer, buffer_json))
}

/// Writes the imported run into `dir`: config.toml, checkpoints/{best,latest}.safetensors,
/// imported.json. Returns the architecture and the number of tensors mapped.
#[allow(clippy::too_many_arguments)]
fn write_import(
    dir: &Path,
    opts: &ImportOptions,
    r: &ReferenceFile,
    cfg: &Config,
    preset: &str,
    sha256: &str,
    (vs, mapped, ignored): (nn::VarStore, Vec<Mapped>, &[(String, String)]),
    buffer: Option<&Tensor>,
    buffer_json: Option<Value>,
    notes: &[String],
    settings_from: &str,
) -> Result<(Arch, usize)> {
    let a = r.arch;
    let run = RunDir::create(dir)?;
    crate::store::atomic::write_atomic(&run.config(), cfg.to_toml().as_bytes())?;
    let source = json!({
        "file": std::fs::canonicalize(opts.file).unwrap_or_else(|_| opts.file.to_path_buf()).display().to_string(),
        "format": r.format,
        "sha256": sha256,
    });
    let arch = Arch { depth: cfg.model.depth, widen: cfg.model.widen, norm: cfg.model.norm, ..a };
    let mut tensors = checkpoint::model_tensors(&vs, "model.");
    if let Some(b) = buffer {
        tensors.push(("sampler.buffer".into(), b.shallow_clone()));
    }
    let meta = json!({"imported": {"source": source, "architecture": arch, "by": format!("sadajem {} import", env!("CARGO_PKG_VERSION"))}});
    checkpoint::save(&run.best(), &tensors, &meta)?;
    checkpoint::save(&run.latest(), &tensors, &meta)?;
    let m = &cfg.model;
    let record = json!({
        "source": source,
        "architecture": {
            "depth": m.depth, "widen": m.widen, "norm": m.norm, "channels": a.channels, "classes": a.classes,
            "slope": m.slope, "bn_momentum": m.bn_momentum, "dropout": m.dropout,
        },
        "inferred_from": r.evidence,
        "settings_from": settings_from,
        "config": {"preset": preset, "data": cfg.data.dir.display().to_string(), "recipe": cfg.train.recipe},
        "mapping": mapped,
        "ignored": bounded(ignored.iter().map(|(k, why)| json!({"key": crate::text::shorten(k, 200), "why": why})).collect()),
        "replay_buffer": buffer_json,
        "notes": notes,
        "written": ["config.toml", "checkpoints/best.safetensors", "checkpoints/latest.safetensors"],
    });
    run.write_json(&run.imported(), &record)?;
    Ok((arch, mapped.len()))
}

/// What `sadajem export` is asked to do.
pub struct ExportOptions<'a> {
    pub run_dir: &'a Path,
    pub checkpoint: &'a Checkpoint,
    pub format: Format,
    /// Default: RUN/export/<checkpoint name>.{pt,safetensors}.
    pub out: Option<&'a Path>,
    pub layout: Layout,
}

/// `sadajem export`: the checkpoint's weights (and replay buffer) in the reference's layout,
/// and FILE.json describing the architecture. Returns the two paths.
/// `--out`, else `export/<checkpoint stem>.<ext>` in the run; its directory created.
fn export_destination(out: Option<&Path>, run: &RunDir, ckpt: &Path, ext: &str) -> Result<PathBuf> {
    let out = match out {
        Some(p) => p.to_path_buf(),
        None => {
            let stem = ckpt.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
            run.export_file(&stem, ext)
        }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    Ok(out)
}

pub fn export(opts: &ExportOptions) -> Result<(PathBuf, PathBuf)> {
    let run = RunDir::open(opts.run_dir)?;
    let cfg = Config::load(&run.config())?;
    let ckpt = run.checkpoint(opts.checkpoint, cfg.data.n_valid > 0);
    let (tensors, _): (_, Value) = checkpoint::load(&ckpt)?;
    let dim = |key: &str, d: usize| -> Result<i64> {
        let t = tensors.get(key).ok_or_else(|| anyhow!("{}: checkpoint lacks `{key}`", ckpt.display()))?;
        t.size().get(d).copied().ok_or_else(|| anyhow!("{}: `{key}` has shape {:?}", ckpt.display(), t.size()))
    };
    let m = &cfg.model;
    let arch =
        Arch { depth: m.depth, widen: m.widen, norm: m.norm, channels: dim("model.conv1.weight", 1)?, classes: dim("model.class_output.weight", 0)? };
    // Loading into a fresh network checks every name and shape against the run's config.
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = Wrn::new(&vs.root(), m, arch.channels, arch.classes);
    checkpoint::load_model(&vs, &tensors, "model.", &ckpt)?;
    let vars = vs.variables();
    let state: Vec<(String, Tensor)> = layout(&arch, opts.layout)
        .into_iter()
        .map(|(name, source)| {
            let t = match source {
                Source::Ours(ours) => vars[&ours].shallow_clone(),
                Source::Zeros(shape) => Tensor::zeros(shape, (Kind::Float, Device::Cpu)),
                Source::Counter => Tensor::from(0i64),
            };
            (name, t)
        })
        .collect();
    let buffer = tensors.get("sampler.buffer").map(|b| b.to_device(Device::Cpu));

    let (ext, format) = match opts.format {
        Format::Pytorch => ("pt", "pytorch"),
        Format::Safetensors => ("safetensors", "safetensors"),
    };
    let out = export_destination(opts.out, &run, &ckpt, ext)?;
    let file_name = out.file_name().map_or(String::new(), |f| f.to_string_lossy().into_owned());
    let about = json!({
        "architecture": {
            "depth": m.depth, "widen": m.widen, "norm": m.norm, "channels": arch.channels, "classes": arch.classes,
            "slope": m.slope, "bn_momentum": m.bn_momentum, "dropout": m.dropout,
        },
        "file": file_name,
        "format": format,
        "layout": opts.layout.to_string(),
        "keys": match opts.format {
            Format::Pytorch => "{'model_state_dict': the state dict of the reference's CCF, 'replay_buffer': [N, C, H, W] in [-1, 1] when the run has one}",
            Format::Safetensors => "the state dict of the reference's CCF, and 'replay_buffer' [N, C, H, W] in [-1, 1] when the run has one",
        },
        "not_ours": "energy_output (and f.linear in the jem layout) are zeros and num_batches_tracked 0: heads and counters the class-conditional model never uses, present so that a strict load_state_dict succeeds",
        "note": "the reference's Wide_ResNet pools with avg_pool2d(8), which equals our global average pool on 32x32 inputs only",
        "source": {"run": run.root.display().to_string(), "checkpoint": ckpt.display().to_string()},
        "by": format!("sadajem {} export", env!("CARGO_PKG_VERSION")),
    });
    match opts.format {
        Format::Pytorch => {
            let model = pickle::Object::OrderedDict(state.into_iter().map(|(n, t)| (n, pickle::Object::Tensor(t))).collect());
            let mut top = vec![("model_state_dict".to_string(), model)];
            if let Some(b) = buffer {
                top.push(("replay_buffer".to_string(), pickle::Object::Tensor(b)));
            }
            pickle::save(&out, &pickle::Object::Dict(top))?;
        }
        Format::Safetensors => {
            let mut all = state;
            if let Some(b) = buffer {
                all.push(("replay_buffer".to_string(), b));
            }
            checkpoint::save(&out, &all, &about)?;
        }
    }
    let sidecar = sidecar_path(&out);
    run.write_json(&sidecar, &about)?;
    Ok((out, sidecar))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mode;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference").join(name)
    }

    fn model_config(a: &Arch) -> ModelConfig {
        a.model_config()
    }

    /// The fixture's inputs and the logits PyTorch computed for them.
    fn reference_logits() -> (Tensor, Tensor) {
        let bytes = std::fs::read(fixture("logits.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let get = |n: &str| Tensor::try_from(st.tensor(n).unwrap()).unwrap();
        (get("inputs"), get("logits"))
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    fn logits_of(path: &Path) -> Tensor {
        let r = read_reference(path).unwrap();
        let OnOurs { net, .. } = map_onto(&r, &model_config(&r.arch)).unwrap();
        let (x, _) = reference_logits();
        tch::no_grad(|| net.forward(&x, Mode::Eval))
    }

    /// scripts/make-reference-fixture.py: a WRN-10-1 in the reference's layout with random
    /// batch-norm statistics; both torch.save formats give PyTorch's logits.
    #[test]
    fn the_reference_fixture_gives_pytorchs_logits() {
        let (_, expected) = reference_logits();
        for file in ["checkpoint.pt", "checkpoint-legacy.pt"] {
            let r = read_reference(&fixture(file)).unwrap();
            assert_eq!(r.arch, Arch { depth: 10, widen: 1, norm: NormKind::Batch, channels: 1, classes: 10 }, "{file}");
            assert_eq!(r.buffer.as_ref().unwrap().size(), [16, 1, 28, 28]);
            let OnOurs { mapped, ignored, .. } = map_onto(&r, &model_config(&r.arch)).unwrap();
            // 2 convs + 4 blocks (2 norms, 2 convs, shortcuts in groups 2 and 3) + norm + head.
            assert_eq!(mapped.len(), 2 + 3 * (2 * 4 + 2 * 2) + 2 * 2 + 4 + 2, "{file}");
            let ignored: Vec<&str> = ignored.iter().map(|(k, _)| k.as_str()).collect();
            assert!(ignored.contains(&"energy_output.weight") && ignored.contains(&"f.bn1.num_batches_tracked"), "{ignored:?}");
            let d = max_abs_diff(&logits_of(&fixture(file)), &expected);
            eprintln!("{file}: max |Δ logit| = {d:e}");
            assert!(d < 1e-5, "{file}: max |Δ logit| = {d:e}");
        }
        // The fixture tells the modes apart: its running statistics are far from batch statistics.
        let r = read_reference(&fixture("checkpoint.pt")).unwrap();
        let OnOurs { net, .. } = map_onto(&r, &model_config(&r.arch)).unwrap();
        let (x, _) = reference_logits();
        let d = max_abs_diff(&tch::no_grad(|| net.forward(&x, Mode::TrainFrozenStats)), &expected);
        assert!(d > 1e-2, "batch statistics give the same logits (max |Δ| = {d:e})");
    }

    /// Every name the layout gives ours is a variable of our network, and the other way round.
    #[test]
    fn the_layout_covers_our_network_exactly() {
        for (depth, widen, norm) in [(10, 1, NormKind::Batch), (16, 2, NormKind::None), (22, 1, NormKind::Batch)] {
            let arch = Arch { depth, widen, norm, channels: 3, classes: 7 };
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = Wrn::new(&vs.root(), &model_config(&arch), 3, 7);
            let ours: BTreeSet<String> = layout(&arch, Layout::Jem)
                .into_iter()
                .filter_map(|(_, s)| match s {
                    Source::Ours(n) => Some(n),
                    _ => None,
                })
                .collect();
            let vars: BTreeSet<String> = vs.variables().into_keys().collect();
            assert_eq!(ours, vars, "WRN-{depth}-{widen} {norm:?}");
        }
        assert_eq!(reference_name("layer2.0.shortcut.weight"), "f.layer2.0.shortcut.0.weight");
        assert_eq!(reference_name("class_output.bias"), "class_output.bias");
    }

    /// The memory check of the settings (config.rs) counts what our network really holds.
    #[test]
    fn the_parameter_estimate_is_our_networks_count() {
        for (depth, widen, norm, channels, classes) in
            [(10, 1, NormKind::Batch, 1, 10), (16, 2, NormKind::None, 3, 7), (22, 3, NormKind::Batch, 3, 100)]
        {
            let m = ModelConfig { depth, widen, norm, bn_momentum: 0.9, slope: 0.2, dropout: 0.0 };
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = Wrn::new(&vs.root(), &m, channels, classes);
            let n: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
            assert_eq!(m.parameters(channels as f64, classes as f64), n as f64, "WRN-{depth}-{widen} {norm:?}");
        }
    }

    /// Import → export (both formats) → import gives the same network, bit for bit, and the
    /// settings the weights don't hold come back from FILE.json.
    #[test]
    fn our_exports_import_again_to_the_same_logits() {
        let dir = tempfile::tempdir().unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
        let run = dir.path().join("run");
        let slope = ["model.slope=0.1".to_string()];
        let opts = ImportOptions {
            file: &fixture("checkpoint.pt"),
            out: &run,
            data: Some(&data),
            preset: None,
            overrides: &slope,
            strict: false,
            limits: Default::default(),
        };
        let s = import(&opts).unwrap();
        assert_eq!((s.mapped, s.buffer.clone(), s.preset.as_str()), (48, Some(vec![16, 1, 28, 28]), "sadajem-cifar10"));
        let e = import(&opts).err().unwrap().to_string();
        assert!(e.contains("already holds a run"), "{e}");
        let (x, _) = reference_logits();
        let with_slope = |path: &Path| {
            let r = read_reference(path).unwrap();
            let OnOurs { net, .. } = map_onto(&r, &ModelConfig { slope: 0.1, ..model_config(&r.arch) }).unwrap();
            (tch::no_grad(|| net.forward(&x, Mode::Eval)), r.buffer.unwrap())
        };
        let (original, buffer) = with_slope(&fixture("checkpoint.pt"));
        for format in [Format::Pytorch, Format::Safetensors] {
            let opts = ExportOptions { run_dir: &run, checkpoint: &Checkpoint::Best, format, out: None, layout: Layout::Sadajem };
            let (file, about) = export(&opts).unwrap();
            assert!(about.exists(), "{}", about.display());
            let (logits, b) = with_slope(&file);
            assert!(logits.equal(&original) && b.equal(&buffer), "{format:?}");
            let again = dir.path().join(format!("again-{format:?}"));
            let opts = ImportOptions {
                file: &file,
                out: &again,
                data: Some(&data),
                preset: None,
                overrides: &[],
                strict: false,
                limits: Default::default(),
            };
            import(&opts).unwrap();
            let cfg = Config::load(&again.join("config.toml")).unwrap();
            assert_eq!(cfg.model.slope, 0.1, "{format:?}: the slope comes back from {}", about.display());
            let (a, _): (HashMap<String, Tensor>, Value) = checkpoint::load(&run.join("checkpoints/best.safetensors")).unwrap();
            let (b, _): (HashMap<String, Tensor>, Value) = checkpoint::load(&again.join("checkpoints/best.safetensors")).unwrap();
            assert_eq!(a.len(), b.len());
            assert!(a.iter().all(|(k, t)| b[k].equal(t)), "{format:?}");
        }
    }

    /// A state dict in a temporary torch.save file.
    fn saved(dir: &Path, entries: Vec<(String, Tensor)>) -> PathBuf {
        let path = dir.join("x.pt");
        let items = entries.into_iter().map(|(n, t)| (n, pickle::Object::Tensor(t))).collect();
        pickle::save(&path, &pickle::Object::OrderedDict(items)).unwrap();
        path
    }

    fn fixture_state() -> Vec<(String, Tensor)> {
        read_reference(&fixture("checkpoint.pt")).unwrap().state
    }

    #[test]
    fn bare_state_dicts_without_f_or_with_module_prefixes_import() {
        let dir = tempfile::tempdir().unwrap();
        let (_, expected) = reference_logits();
        let renames: [fn(&str) -> String; 2] = [|n| n.strip_prefix("f.").unwrap_or(n).to_string(), |n| format!("module.{n}")];
        for rename in renames {
            let entries = fixture_state().into_iter().map(|(n, t)| (rename(&n), t)).collect();
            let d = max_abs_diff(&logits_of(&saved(dir.path(), entries)), &expected);
            assert!(d < 1e-5, "{d:e}");
        }
    }

    /// JEM's networks have no norm, and wgrathwohl/JEM's state dicts carry `f.linear`.
    #[test]
    fn a_jem_layout_without_norm_imports() {
        let dir = tempfile::tempdir().unwrap();
        let arch = Arch { depth: 10, widen: 2, norm: NormKind::None, channels: 3, classes: 4 };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Wrn::new(&vs.root(), &model_config(&arch), 3, 4);
        let vars = vs.variables();
        let entries = layout(&arch, Layout::Jem)
            .into_iter()
            .map(|(name, s)| match s {
                Source::Ours(ours) => (name, vars[&ours].shallow_clone()),
                Source::Zeros(shape) => (name, Tensor::zeros(shape, (Kind::Float, Device::Cpu))),
                Source::Counter => unreachable!("no norm, no counters"),
            })
            .collect();
        let r = read_reference(&saved(dir.path(), entries)).unwrap();
        assert_eq!(r.arch, arch);
        let on = map_onto(&r, &model_config(&r.arch)).unwrap();
        let ignored: Vec<&str> = on.ignored.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ignored, ["f.linear.weight", "f.linear.bias", "energy_output.weight", "energy_output.bias"]);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let (a, b) = tch::no_grad(|| (net.forward(&x, Mode::Eval), on.net.forward(&x, Mode::Eval)));
        assert!(a.equal(&b));
    }

    #[test]
    fn wrong_shapes_unknown_and_missing_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = fixture_state();
        let bias = state.iter_mut().find(|(n, _)| n == "class_output.bias").unwrap();
        bias.1 = Tensor::zeros([9], (Kind::Float, Device::Cpu));
        let path = saved(dir.path(), state);
        let r = read_reference(&path).unwrap();
        let e = format!("{:#}", map_onto(&r, &model_config(&r.arch)).err().unwrap());
        assert!(e.contains("x.pt") && e.contains("`class_output.bias`") && e.contains("[9]") && e.contains("[10]"), "{e}");

        let mut state = fixture_state();
        state.retain(|(n, _)| n != "f.layer3.0.conv2.bias");
        state.push(("f.layer4.0.conv1.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
        let r = read_reference(&saved(dir.path(), state)).unwrap();
        let e = format!("{:#}", map_onto(&r, &model_config(&r.arch)).err().unwrap());
        assert!(e.contains("unknown key(s) `f.layer4.0.conv1.weight`") && e.contains("missing key(s) `f.layer3.0.conv2.bias`"), "{e}");

        // A user-given width the weights don't have.
        let r = read_reference(&fixture("checkpoint.pt")).unwrap();
        let e = format!("{:#}", map_onto(&r, &ModelConfig { widen: 2, ..model_config(&r.arch) }).err().unwrap());
        assert!(e.contains("`f.layer1.0.conv1.weight`") && e.contains("[16, 16, 3, 3]") && e.contains("[32, 16, 3, 3]"), "{e}");

        let e =
            format!("{:#}", read_reference(&saved(dir.path(), vec![("w".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))])).err().unwrap());
        assert!(e.contains("cannot tell the architecture") && e.contains("`f.conv1.weight`"), "{e}");
    }

    /// The reference fixture's state dict (values zeroed) forged byte by byte, with
    /// `more_state` pickled into it, a replay buffer of `buffer`'s shape, and `before` run (and
    /// its result dropped) ahead of the checkpoint dict; both torch.save formats.
    fn forged(dir: &Path, buffer: Option<Vec<i64>>, more_state: &[u8], before: &[u8]) -> [PathBuf; 2] {
        use crate::store::pickle::forge;
        let shapes: Vec<(String, Vec<i64>)> = fixture_state().iter().map(|(n, t)| (n.clone(), t.size())).collect();
        let shapes: Vec<(&str, Vec<i64>)> = shapes.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
        let buffer = buffer.map(|b| (b.clone(), forge::contiguous(&b), b.iter().product()));
        let (pickle, numels) = forge::checkpoint_pickle(&shapes, buffer, more_state);
        let pickle = [&pickle[..2], before, &pickle[2..]].concat();
        let paths = [dir.join("forged.pt"), dir.join("forged-legacy.pt")];
        std::fs::write(&paths[0], forge::torch_zip(&pickle, &numels)).unwrap();
        std::fs::write(&paths[1], forge::legacy(&pickle, &numels)).unwrap();
        paths
    }

    fn import_to(file: &Path, out: &Path, strict: bool) -> Result<ImportSummary> {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
        import(&ImportOptions { file, out, data: Some(&data), preset: None, overrides: &[], strict, limits: Default::default() })
    }

    #[test]
    fn non_tensor_entries_of_the_state_dict_are_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = crate::store::pickle::forge::Pickle(vec![]);
        extra.str("f.extra").op(b"K\x05").str("f.hook").global("evil", "Hook").op(b")\x81");
        for path in forged(dir.path(), None, &extra.0, b"") {
            let r = read_reference(&path).unwrap();
            let e = format!("{:#}", map_onto(&r, &model_config(&r.arch)).err().unwrap());
            assert!(e.contains("unknown key(s) `f.extra` (not a tensor but 5), `f.hook` (not a tensor but a evil.Hook object)"), "{e}");
        }
        // Without them the forged file imports: the forgery is faithful.
        let ok = forged(dir.path(), Some(vec![4, 1, 28, 28]), b"", b"");
        assert_eq!(import_to(&ok[0], &dir.path().join("ok"), false).unwrap().mapped, 48);
    }

    /// What `torch.load(weights_only=False)` would run is named, kept out of the run, and
    /// refused with --strict.
    #[test]
    fn code_in_the_pickle_is_reported_and_refused_when_strict() {
        let dir = tempfile::tempdir().unwrap();
        let mut payload = crate::store::pickle::forge::Pickle(vec![]);
        payload.global("posix", "system").str("true").op(b"\x85R0");
        let [zip, legacy] = forged(dir.path(), Some(vec![4, 1, 28, 28]), b"", &payload.0);
        let out = dir.path().join("strict");
        let e = format!("{:#}", import_to(&zip, &out, true).err().unwrap());
        assert!(e.contains("refused (--strict)") && e.contains("`posix.system` (called 1 time(s))"), "{e}");
        assert!(!out.exists(), "nothing written");
        let out = dir.path().join("run");
        let s = import_to(&legacy, &out, false).unwrap();
        assert_eq!(s.code, ["`posix.system` (called 1 time(s))"]);
        let record: Value = serde_json::from_str(&std::fs::read_to_string(out.join("imported.json")).unwrap()).unwrap();
        let ignored = record["ignored"].as_array().unwrap();
        assert!(ignored.iter().any(|i| i["key"] == "posix.system" && i["why"] == "ignored: would have run code under torch.load"), "{record}");
        // The legacy format's missing checksum is said.
        assert!(s.notes.iter().any(|n| n.contains("no checksum")), "{:?}", s.notes);
    }

    /// An empty buffer panicked in min().
    #[test]
    fn an_empty_replay_buffer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for path in forged(dir.path(), Some(vec![0, 1, 28, 28]), b"", b"") {
            let out = dir.path().join("run");
            let e = format!("{:#}", import_to(&path, &out, false).err().unwrap());
            assert!(e.contains("`replay_buffer` has shape [0, 1, 28, 28]; expected [N, 1, H, W] with N ≥ 1"), "{e}");
            assert!(!out.exists());
        }
    }

    /// --out must be new or empty; what is there is left as it was.
    #[test]
    fn import_out_refuses_what_it_would_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let file = fixture("checkpoint.pt");
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
        let e = format!("{:#}", import_to(&file, &mine, false).err().unwrap());
        assert!(e.contains("not empty, and not an earlier import of") && e.contains("nothing was written"), "{e}");
        assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
        assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "my notes");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        let e = format!("{:#}", import_to(&file, &link, false).err().unwrap());
        assert!(e.contains("a symbolic link"), "{e}");

        // An empty directory is used; the same file again is recognised by its SHA-256.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        import_to(&file, &empty, false).unwrap();
        assert!(empty.join("imported.json").exists() && empty.join("checkpoints/best.safetensors").exists());
        let e = format!("{:#}", import_to(&file, &empty, false).err().unwrap());
        assert!(e.contains("already holds a run imported from this same file") && e.contains("SHA-256"), "{e}");
        let e = format!("{:#}", import_to(&fixture("checkpoint-legacy.pt"), &empty, false).err().unwrap());
        assert!(e.contains("already holds a run;"), "{e}");
        // No staging directory is left beside any of them.
        let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(left.iter().all(|n| !n.contains("importing")), "{left:?}");
    }
}
