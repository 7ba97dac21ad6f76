//! A `torch.save` file's tensors as libtorch tensors: each storage made once from its bytes,
//! every tensor a view of it, sharing memory as the views did when saved.
use super::archive::{self, Contents, FileKind, Limits};
use super::machine::{CodeUse, Dtype};
use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// A file read: its tensors, and what else it held.
pub struct Loaded {
    pub kind: FileKind,
    /// Named by their path through nested dicts, lists and tuples joined with dots —
    /// `model_state_dict.conv1.weight`, `optim.state.0.momentum_buffer` — in the file's order,
    /// on the CPU whatever device they were saved from.
    pub tensors: Vec<(String, Tensor)>,
    /// The other leaves (numbers, strings, objects this reader doesn't build), named the same way.
    pub leaves: Vec<(String, String)>,
    /// Globals that `torch.load(weights_only=False)` would have imported and run.
    pub code: Vec<CodeUse>,
    /// Whether the tensor bytes were checked against a checksum (zip: CRC-32 per record).
    pub checksummed: bool,
}

/// Reads a `torch.save`'d file (either format) within `limits`.
pub fn load(path: &Path, limits: &Limits) -> Result<Loaded> {
    let contents = archive::read(path, limits)?;
    make(contents).with_context(|| format!("reading the tensors of {}", path.display()))
}

/// Every tensor of a `torch.save`'d file, within the default [`Limits`]; numbers, strings and
/// other leaves are left out.
pub fn load_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(load(path, &Limits::default())?.tensors)
}

fn make(c: Contents) -> Result<Loaded> {
    let mut storages = HashMap::new();
    // Consumed one by one, so each storage's bytes are freed once its tensor is made.
    for (key, s) in c.storages {
        let numel = i64::try_from(s.numel).map_err(|_| anyhow!("storage {key}: {} elements", s.numel))?;
        storages.insert(key, Tensor::f_from_data_size(&s.bytes, &[numel], kind(s.dtype))?);
    }
    let mut tensors = Vec::with_capacity(c.tensors.len());
    for (name, t) in c.tensors {
        let key = &t.storage;
        let storage = storages.get(key).ok_or_else(|| anyhow!("tensor {name}: its storage {key} is missing"))?;
        let view = storage
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)
            .with_context(|| format!("tensor {name}: size {:?}, stride {:?}, offset {}", t.size, t.stride, t.offset))?;
        tensors.push((name, view));
    }
    Ok(Loaded { kind: c.kind, tensors, leaves: c.leaves, code: c.code, checksummed: c.checksummed })
}

fn kind(d: Dtype) -> Kind {
    match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::Bool => Kind::Bool,
        Dtype::C64 => Kind::ComplexFloat,
        Dtype::C128 => Kind::ComplexDouble,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pickle::file_kind;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickle").join(name)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// scripts/make-pickle-fixture.py writes the same checkpoint in both formats.
    #[test]
    fn reads_both_formats_of_the_fixture_checkpoint() {
        let files = [("checkpoint.pt", FileKind::TorchSaveZip), ("checkpoint-legacy.pt", FileKind::TorchSaveLegacy)];
        for (file, kind) in files {
            let path = fixture(file);
            assert_eq!(file_kind(&path).unwrap(), kind);
            let tensors = load_tensors(&path).unwrap();
            let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
            // In the file's order; epoch, note, optim.param_groups (numbers, strings) are left out.
            assert_eq!(
                names,
                [
                    "model_state_dict.weight",
                    "model_state_dict.bias",
                    "replay_buffer",
                    "views.0",
                    "views.1",
                    "optim.state.0.step",
                    "optim.state.0.momentum_buffer",
                    "mask",
                ],
                "{file}"
            );
            let t: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let w = t["model_state_dict.weight"];
            assert_eq!((w.size(), w.kind()), (vec![2, 3], Kind::Float));
            let expected: Vec<f64> = (0..6).map(|i| (i as f32 / 10.0) as f64).collect();
            assert_eq!(values(w), expected);
            assert_eq!(values(t["model_state_dict.bias"]), [-1.0, 1.0]);
            assert_eq!(t["replay_buffer"].size(), [2, 1, 2, 2]);
            assert_eq!(values(t["replay_buffer"]), (0..8).map(f64::from).collect::<Vec<_>>());
            // Two views of one storage: an offset slice and a transpose.
            assert_eq!(t["views.0"].kind(), Kind::Double);
            assert_eq!(values(t["views.0"]), [3.0, 4.0, 5.0, 6.0]);
            assert_eq!(t["views.1"].size(), [5, 2]);
            assert_eq!(values(t["views.1"]), [0.0, 5.0, 1.0, 6.0, 2.0, 7.0, 3.0, 8.0, 4.0, 9.0]);
            let step = t["optim.state.0.step"];
            assert_eq!((step.size(), step.kind(), step.int64_value(&[])), (vec![], Kind::Int64, 5));
            assert_eq!(t["optim.state.0.momentum_buffer"].kind(), Kind::Half);
            assert_eq!(values(t["optim.state.0.momentum_buffer"]), [0.5, 0.5]);
            assert_eq!(t["mask"].kind(), Kind::Bool);
            assert_eq!(values(t["mask"]), [1.0, 0.0]);
            // The other leaves, named; no code; only the zip format carries checksums.
            let loaded = load(&path, &Limits::default()).unwrap();
            let leaves: Vec<(&str, &str)> = loaded.leaves.iter().map(|(n, d)| (n.as_str(), d.as_str())).collect();
            assert!(leaves.contains(&("epoch", "7")) && leaves.contains(&("note", "\"text\"")), "{leaves:?}");
            assert!(leaves.contains(&("optim.param_groups.0.lr", "0.1")), "{leaves:?}");
            assert!(loaded.code.is_empty());
            assert_eq!(loaded.checksummed, kind == FileKind::TorchSaveZip);
        }
    }

    #[test]
    fn other_files_are_refused_with_their_name() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let err = format!("{:#}", load_tensors(&readme).unwrap_err());
        assert!(err.contains("README.md") && err.contains("not a PyTorch file"), "{err}");
        let missing = fixture("no-such-file.pt");
        let err = format!("{:#}", load_tensors(&missing).unwrap_err());
        assert!(err.contains("no-such-file.pt"), "{err}");
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_panic() {
        let bytes = std::fs::read(fixture("checkpoint-legacy.pt")).unwrap();
        let budget = archive::Budget::for_file(bytes.len() as u64, &Limits::default());
        for cut in [20, bytes.len() / 2, bytes.len() - 3] {
            assert!(archive::read_legacy(&bytes[..cut], budget).is_err(), "cut at {cut}");
        }
    }
}
