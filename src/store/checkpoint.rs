//! Checkpoints: one safetensors file holding the tensors (model parameters and buffers,
//! optimiser state) and, in its metadata, the JSON of everything else a resume needs
//! (iteration, loader position, RNG streams, best score) and a CRC-32 of both.
//!
//! Written to a temporary file in the same directory, fsync'd, then renamed over the old one,
//! so a crash at any moment leaves either the old or the new checkpoint, never half of one. The
//! checksum catches what atomic writes cannot: a file damaged afterwards (a failing disk, a cut
//! copy, a stray edit) is reported by name instead of being resumed from.
//!
//! Reading and checking a file ([`read`]) needs no libtorch; turning it into tensors ([`load`])
//! does.
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

const STATE_KEY: &str = "sadajem.state";
/// CRC-32 (8 hex digits) of every tensor (name, dtype, shape, bytes; in name order) and of the
/// state JSON. CRC-32 rather than a cryptographic hash: it guards against damage, not forgery,
/// and runs at memory speed on checkpoints of hundreds of megabytes.
const CHECKSUM_KEY: &str = "sadajem.crc32";

/// One tensor as stored: its dtype, shape and little-endian bytes.
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl View for &RawTensor {
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

/// The checksum of tensors (in any order) and the state JSON, as stored under [`CHECKSUM_KEY`].
fn checksum<'a>(tensors: impl IntoIterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>, state: &str) -> String {
    let mut tensors: Vec<_> = tensors.into_iter().collect();
    tensors.sort_by_key(|t| t.0);
    let mut h = crc32fast::Hasher::new();
    // Lengths go in before variable-length fields, so no two different contents hash the same
    // stream of bytes.
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for (name, dtype, shape, data) in tensors {
        field(name.as_bytes());
        field(format!("{dtype:?}").as_bytes());
        field(&shape.iter().flat_map(|&d| (d as u64).to_le_bytes()).collect::<Vec<u8>>());
        field(data);
    }
    field(state.as_bytes());
    format!("{:08x}", h.finalize())
}

/// The bytes of a checkpoint file: tensors and the state JSON, with their checksum.
pub fn encode(tensors: &[(String, RawTensor)], state_json: String) -> Result<Vec<u8>> {
    let sum = checksum(tensors.iter().map(|(n, r)| (n.as_str(), r.dtype, &r.shape[..], &r.data[..])), &state_json);
    let meta = HashMap::from([(STATE_KEY.to_string(), state_json), (CHECKSUM_KEY.to_string(), sum)]);
    Ok(safetensors::serialize(tensors.iter().map(|(n, r)| (n.as_str(), r)), &Some(meta))?)
}

/// A checkpoint file read into memory whose structure and checksum have been verified.
pub struct Verified {
    bytes: Vec<u8>,
    state: String,
}

impl Verified {
    /// The state JSON.
    pub fn state_json(&self) -> &str {
        &self.state
    }

    /// The tensors (`.tensors()` gives views into the file's bytes).
    pub fn safetensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("verified when read")
    }

    /// The state, deserialised. The file is intact (its checksum held), so a state that does
    /// not parse means another kind of checkpoint, not damage.
    pub fn state<S: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<S> {
        serde_json::from_str(&self.state).map_err(|e| {
            let kind = std::any::type_name::<S>().rsplit("::").next().unwrap_or("?");
            anyhow!("{}: not the kind of checkpoint expected here: its state is not a {kind}: {e}", path.display())
        })
    }
}

fn damaged(path: &Path, what: String) -> anyhow::Error {
    anyhow!("{}: damaged or not a sadajem checkpoint: {what}", path.display())
}

/// What a safetensors error means for a file of `len` bytes, in words.
fn describe(e: &SafeTensorError, len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => format!("truncated: {len} bytes, too short for a header"),
        SafeTensorError::InvalidHeaderLength => format!("truncated: the header is longer than the {len}-byte file"),
        SafeTensorError::MetadataIncompleteBuffer => {
            format!("truncated or extended: its {len} bytes are not the length its header gives")
        }
        SafeTensorError::HeaderTooLarge => "the header length is implausible".to_string(),
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderStart | SafeTensorError::InvalidHeaderDeserialization => {
            "the header is not the JSON table of a safetensors file".to_string()
        }
        SafeTensorError::InvalidOffset(name) => format!("tensor `{name}` has inconsistent data offsets"),
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow => "a tensor's shape does not match its data".to_string(),
        other => format!("{other:?}"),
    }
}

/// Reads a checkpoint file and checks it: its safetensors structure, its training state and
/// its checksum. Any failure names the file and what is wrong with it.
pub fn read(path: &Path) -> Result<Verified> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    verify(path, bytes)
}

/// [`read`] on bytes already in memory; `path` is only for messages.
pub fn verify(path: &Path, bytes: Vec<u8>) -> Result<Verified> {
    let st = SafeTensors::deserialize(&bytes).map_err(|e| damaged(path, describe(&e, bytes.len())))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| damaged(path, describe(&e, bytes.len())))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let Some(state) = meta.get(STATE_KEY) else {
        return Err(damaged(path, format!("no training state (`{STATE_KEY}`) in its header")));
    };
    let Some(stored) = meta.get(CHECKSUM_KEY) else {
        return Err(damaged(
            path,
            format!("no checksum (`{CHECKSUM_KEY}`) in its header; it was written by an older sadajem, or its header is damaged"),
        ));
    };
    let views = st.tensors();
    let computed = checksum(views.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())), state);
    // Fuzzing goes past the checksum (as image decoders skip their CRCs), to reach the code after it.
    if *stored != computed && !cfg!(fuzzing) {
        bail!("{}: checksum mismatch: the header says {stored}, the contents give {computed}; the file is damaged", path.display());
    }
    let state = state.clone();
    Ok(Verified { bytes, state })
}

#[cfg(feature = "torch")]
pub use with_torch::{load, load_model, model_tensors, save, tensors};

/// Tensors in and out of checkpoint files.
#[cfg(feature = "torch")]
mod with_torch {
    use super::*;
    use tch::{nn::VarStore, Tensor};

    fn raw(t: &Tensor) -> Result<RawTensor> {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let dtype = Dtype::try_from(t.kind())?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut data, numel);
        Ok(RawTensor { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
    }

    /// Saves named tensors and a serialisable state, atomically.
    pub fn save<S: serde::Serialize>(path: &Path, tensors: &[(String, Tensor)], state: &S) -> Result<()> {
        let raws: Vec<(String, RawTensor)> = tensors.iter().map(|(n, t)| Ok((n.clone(), raw(t)?))).collect::<Result<_>>()?;
        crate::store::atomic::write_atomic(path, &encode(&raws, serde_json::to_string(state)?)?)
    }

    /// Loads what `save` wrote, after [`read`]'s checks.
    pub fn load<S: serde::de::DeserializeOwned>(path: &Path) -> Result<(HashMap<String, Tensor>, S)> {
        let file = read(path)?;
        let state = file.state(path)?;
        Ok((tensors(&file, path)?, state))
    }

    /// The tensors of a file [`read`] has checked; `path` is only for messages.
    pub fn tensors(file: &Verified, path: &Path) -> Result<HashMap<String, Tensor>> {
        let mut tensors = HashMap::new();
        for (name, view) in file.safetensors().tensors() {
            let t = Tensor::try_from(view).map_err(|e| anyhow!("{}: tensor `{name}`: {e}", path.display()))?;
            tensors.insert(name, t);
        }
        Ok(tensors)
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
                var.f_copy_(&t.f_to_kind(var.kind())?).with_context(|| format!("{}: `{key}`", source.display()))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Vec<u8> {
        let t = RawTensor { dtype: Dtype::F32, shape: vec![2], data: [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect() };
        encode(&[("w".into(), t)], r#"{"iter":7}"#.into()).unwrap()
    }

    #[test]
    fn encoded_bytes_verify_and_keep_the_state() {
        let v = verify(Path::new("ck"), tiny()).unwrap();
        assert_eq!(v.state_json(), r#"{"iter":7}"#);
        assert_eq!(v.safetensors().tensor("w").unwrap().shape(), [2]);
    }

    #[test]
    fn any_flipped_byte_or_cut_is_reported_naming_the_file() {
        let good = tiny();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            match verify(Path::new("dir/latest.safetensors"), bad) {
                Err(e) => assert!(e.to_string().starts_with("dir/latest.safetensors: "), "{e}"),
                Ok(v) => panic!("flip at byte {at} accepted: state {}", v.state_json()),
            }
        }
        for len in [0, 7, 8, 30, good.len() - 1] {
            let e = verify(Path::new("ck"), good[..len].to_vec()).err().unwrap().to_string();
            assert!(e.contains("ck: damaged") && e.contains("truncated"), "cut at {len}: {e}");
        }
    }

    #[test]
    fn a_wrong_checksum_says_so() {
        let good = tiny();
        // The last byte is tensor data: the structure stays valid, only the checksum can tell.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        let e = verify(Path::new("ck"), bad).err().unwrap().to_string();
        assert!(e.contains("ck: checksum mismatch") && e.contains("damaged"), "{e}");
    }

    #[test]
    fn a_file_without_checksum_is_refused() {
        let t = RawTensor { dtype: Dtype::U8, shape: vec![1], data: vec![3] };
        let meta = HashMap::from([(STATE_KEY.to_string(), "{}".to_string())]);
        let bytes = safetensors::serialize([("t", &t)], &Some(meta)).unwrap();
        let e = verify(Path::new("ck"), bytes).err().unwrap().to_string();
        assert!(e.contains("no checksum"), "{e}");
    }

    #[cfg(feature = "torch")]
    mod with_torch {
        use super::super::*;
        use tch::{nn::VarStore, Kind, Tensor};

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
        fn a_damaged_tensor_is_caught_by_the_checksum() {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("latest.safetensors");
            save(&p, &[("w".into(), Tensor::ones([64], (Kind::Float, tch::Device::Cpu)))], &St { iter: 1, note: String::new() }).unwrap();
            let mut bytes = std::fs::read(&p).unwrap();
            let n = bytes.len();
            bytes[n - 100] ^= 0x01;
            std::fs::write(&p, bytes).unwrap();
            let e = load::<St>(&p).unwrap_err().to_string();
            assert!(e.contains("latest.safetensors: checksum mismatch"), "{e}");
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
}
