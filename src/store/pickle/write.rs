//! Writing nested dicts of tensors as `torch.save` (PyTorch ≥ 1.6) does, for `sadajem export`.
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// What [`save`] writes: nested dicts of tensors, pickled the way `torch.save` pickles them.
pub enum Object {
    Tensor(Tensor),
    /// A plain dict (what a checkpoint dict is).
    Dict(Vec<(String, Object)>),
    /// A `collections.OrderedDict` (what `state_dict()` returns).
    OrderedDict(Vec<(String, Object)>),
}

/// Writes `object` as `torch.save` (PyTorch ≥ 1.6) would: a zip archive of stored (uncompressed)
/// records `archive/data.pkl` (protocol 2), `archive/byteorder`, one `archive/data/<key>` per
/// tensor, aligned to 64 bytes as torch aligns them, and `archive/version`. The pickle names
/// only globals `torch.load(weights_only=True)` accepts. Written atomically.
pub fn save(path: &Path, object: &Object) -> Result<()> {
    let mut pickler = Pickler::default();
    pickler.out.extend_from_slice(b"\x80\x02");
    pickler.object(object)?;
    pickler.out.push(b'.');
    let zip = || -> zip::result::ZipResult<Vec<u8>> {
        use std::io::Write;
        let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("archive/data.pkl", stored)?;
        zip.write_all(&pickler.out)?;
        zip.start_file("archive/byteorder", stored)?;
        zip.write_all(b"little")?;
        for (key, bytes) in &pickler.storages {
            zip.start_file_aligned(format!("archive/data/{key}"), stored, 64)?;
            zip.write_all(bytes)?;
        }
        zip.start_file("archive/version", stored)?;
        zip.write_all(b"3\n")?;
        Ok(zip.finish()?.into_inner())
    };
    let bytes = zip().with_context(|| format!("{}: building the zip archive", path.display()))?;
    crate::store::atomic::write_atomic(path, &bytes)
}

/// Pickle protocol 2, the opcodes `torch.save` itself uses; nothing is memoised (no object
/// is shared).
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    /// Each tensor's bytes, under its storage key.
    storages: Vec<(String, Vec<u8>)>,
}

impl Pickler {
    fn object(&mut self, object: &Object) -> Result<()> {
        match object {
            Object::Tensor(t) => self.tensor(t)?,
            Object::Dict(items) => {
                self.out.push(b'}');
                self.set_items(items)?;
            }
            Object::OrderedDict(items) => {
                self.global("collections", "OrderedDict");
                self.out.extend_from_slice(b")R");
                self.set_items(items)?;
            }
        }
        Ok(())
    }

    fn set_items(&mut self, items: &[(String, Object)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.out.push(b'(');
        for (key, value) in items {
            self.str(key);
            self.object(value).with_context(|| format!("writing `{key}`"))?;
        }
        self.out.push(b'u');
        Ok(())
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, the
    /// storage a persistent id `('storage', torch.<Type>Storage, key, 'cpu', numel)`.
    fn tensor(&mut self, t: &Tensor) -> Result<()> {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let kind = t.kind();
        let storage = storage_name(kind)?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let key = self.storages.len().to_string();
        let size = t.size();
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'(');
        self.out.push(b'(');
        self.str("storage");
        self.global("torch", storage);
        self.str(&key);
        self.str("cpu");
        self.int(numel as i64);
        self.out.extend_from_slice(b"tQ");
        self.int(0);
        self.int_tuple(&size);
        self.int_tuple(&stride);
        self.out.push(0x89); // NEWFALSE: requires_grad
        self.global("collections", "OrderedDict"); // backward hooks
        self.out.extend_from_slice(b")R");
        self.out.extend_from_slice(b"tR");
        self.storages.push((key, bytes));
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, i: i64) {
        match i {
            0..=0xff => self.out.extend_from_slice(&[b'K', i as u8]),
            0x100..=0xffff => {
                self.out.push(b'M');
                self.out.extend_from_slice(&(i as u16).to_le_bytes());
            }
            _ if i32::try_from(i).is_ok() => {
                self.out.push(b'J');
                self.out.extend_from_slice(&(i as i32).to_le_bytes());
            }
            _ => {
                self.out.extend_from_slice(&[0x8a, 8]); // LONG1 of 8 bytes
                self.out.extend_from_slice(&i.to_le_bytes());
            }
        }
    }

    fn int_tuple(&mut self, items: &[i64]) {
        self.out.push(b'(');
        for &i in items {
            self.int(i);
        }
        self.out.push(b't');
    }
}

/// Float → `FloatStorage`, and so on: the inverse of [`storage_kind`].
fn storage_name(kind: Kind) -> Result<&'static str> {
    Ok(match kind {
        Kind::Float => "FloatStorage",
        Kind::Double => "DoubleStorage",
        Kind::Half => "HalfStorage",
        Kind::BFloat16 => "BFloat16Storage",
        Kind::Int64 => "LongStorage",
        Kind::Int => "IntStorage",
        Kind::Int16 => "ShortStorage",
        Kind::Int8 => "CharStorage",
        Kind::Uint8 => "ByteStorage",
        Kind::Bool => "BoolStorage",
        other => bail!("tensors of type {other:?} are not written"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pickle::{file_kind, load_tensors, FileKind};

    /// What `save` writes, the reader reads back: names, order, types, shapes, values.
    #[test]
    fn saved_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.pt");
        let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 3.0, 4.0, 5.0]).view([2, 3]);
        let count = Tensor::from(70_000i64);
        let big = Tensor::arange(300, (Kind::Double, tch::Device::Cpu)).view([3, 10, 10]).transpose(0, 2);
        let object = Object::Dict(vec![
            (
                "model_state_dict".into(),
                Object::OrderedDict(vec![("w".into(), Object::Tensor(w.shallow_clone())), ("n".into(), Object::Tensor(count.shallow_clone()))]),
            ),
            ("buffer".into(), Object::Tensor(big.shallow_clone())),
            ("empty".into(), Object::Dict(vec![])),
        ]);
        save(&path, &object).unwrap();
        assert_eq!(file_kind(&path).unwrap(), FileKind::TorchSaveZip);
        let back = load_tensors(&path).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model_state_dict.w", "model_state_dict.n", "buffer"]);
        assert!(back[0].1.equal(&w));
        assert_eq!((back[1].1.size(), back[1].1.kind(), back[1].1.int64_value(&[])), (vec![], Kind::Int64, 70_000));
        assert!(back[2].1.equal(&big), "a non-contiguous tensor is written in its logical order");
        // Every storage record starts on a 64-byte boundary, as torch writes them.
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        for i in 0..zip.len() {
            let entry = zip.by_index(i).unwrap();
            if entry.name().starts_with("archive/data/") {
                assert_eq!(entry.data_start() % 64, 0, "{}", entry.name());
            }
        }
    }
}
