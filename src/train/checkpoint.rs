//! Checkpoints: one safetensors file holding the tensors (model parameters and buffers,
//! optimiser state) and, in its metadata, the JSON of everything else a resume needs
//! (iteration, loader position, RNG streams, best score).
//!
//! Written to a temporary file in the same directory, fsync'd, then renamed over the old one,
//! so a crash at any moment leaves either the old or the new checkpoint, never half of one.
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{nn::VarStore, Tensor};

const STATE_KEY: &str = "sadajem.state";

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn raw(t: &Tensor) -> Result<Raw> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let dtype = Dtype::try_from(t.kind())?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut data, numel);
    Ok(Raw { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
}

/// Atomically writes `bytes` to `path` (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("{}: cannot write", path.display())).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Saves named tensors and a serialisable state.
pub fn save<S: serde::Serialize>(path: &Path, tensors: &[(String, Tensor)], state: &S) -> Result<()> {
    let raws: Vec<(String, Raw)> = tensors.iter().map(|(n, t)| Ok((n.clone(), raw(t)?))).collect::<Result<_>>()?;
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    let bytes = safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), &Some(meta))?;
    write_atomic(path, &bytes)
}

/// Loads what `save` wrote.
pub fn load<S: serde::de::DeserializeOwned>(path: &Path) -> Result<(HashMap<String, Tensor>, S)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    let bad = |what: String| anyhow::anyhow!("{}: not a sadajem checkpoint: {what}", path.display());
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e:?}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e:?}")))?;
    let state_json = meta.metadata().as_ref().and_then(|m| m.get(STATE_KEY)).ok_or_else(|| bad("no training state".into()))?;
    let state = serde_json::from_str(state_json).map_err(|e| bad(format!("training state: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        tensors.insert(name, Tensor::try_from(view)?);
    }
    Ok((tensors, state))
}

/// The model's variables (parameters and batch-norm buffers) under `prefix`, sorted by name.
pub fn model_tensors(vs: &VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies `tensors[prefix + name]` into every variable of `vs`; a missing or mis-shaped
/// entry is an error naming the variable.
pub fn load_model(vs: &VarStore, tensors: &HashMap<String, Tensor>, prefix: &str, source: &Path) -> Result<()> {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let key = format!("{prefix}{name}");
            let Some(t) = tensors.get(&key) else {
                bail!("{}: checkpoint lacks `{key}`", source.display());
            };
            if t.size() != var.size() {
                bail!("{}: `{key}` has shape {:?}, the model expects {:?}", source.display(), t.size(), var.size());
            }
            var.copy_(&t.to_kind(var.kind()));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct St {
        iter: usize,
        note: String,
    }

    #[test]
    fn tensors_and_state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("latest.safetensors");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0]).view([2, 2]);
        let b = Tensor::from_slice(&[7i64, 8, 9]);
        save(&p, &[("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], &St { iter: 42, note: "x".into() }).unwrap();
        let (t, s): (_, St) = load(&p).unwrap();
        assert_eq!(s, St { iter: 42, note: "x".into() });
        assert!(t["a"].equal(&a) && t["b"].equal(&b));
        // no temporary file is left behind
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_garbage_file_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("latest.safetensors");
        std::fs::write(&p, b"not a checkpoint at all").unwrap();
        let e = load::<St>(&p).unwrap_err().to_string();
        assert!(e.contains("latest.safetensors") && e.contains("not a sadajem checkpoint"), "{e}");
    }

    #[test]
    fn shape_mismatch_names_the_variable_and_both_shapes() {
        let vs = VarStore::new(tch::Device::Cpu);
        let _w = vs.root().zeros("w", &[2, 3]);
        let t = HashMap::from([("model.w".to_string(), Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu)))]);
        let e = load_model(&vs, &t, "model.", Path::new("ck")).unwrap_err().to_string();
        assert!(e.contains("model.w") && e.contains("[3, 2]") && e.contains("[2, 3]"), "{e}");
    }
}
