//! Hostile `torch.save` files built byte by byte for the tests: pickles with any nesting and
//! sharing, zip archives whose records declare any size or are compressed, legacy streams.
//! Shared by the unit tests of `src/pickle/archive.rs` and by `tests/hostile.rs` (each includes
//! this file as a module). Nothing here runs code under `torch.load`: where a test needs a
//! global that would, it names one (`posix.system`) without arguments that do harm.
#![allow(dead_code)]

/// A pickle (protocol 2) written opcode by opcode.
pub struct Pickle(pub Vec<u8>);

impl Default for Pickle {
    fn default() -> Self {
        Pickle(b"\x80\x02".to_vec())
    }
}

impl Pickle {
    pub fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// LONG1 of 8 bytes: any i64.
    pub fn int(&mut self, i: i64) -> &mut Self {
        self.0.extend_from_slice(&[0x8a, 8]);
        self.0.extend_from_slice(&i.to_le_bytes());
        self
    }

    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }

    fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(b"(");
        for &i in v {
            self.int(i);
        }
        self.op(b"t")
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` of a float
    /// storage `key` of `numel` elements.
    pub fn tensor(&mut self, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
        self.str("storage").global("torch", "FloatStorage").str(key).str("cpu").int(numel).op(b"tQ");
        self.int(offset).ints(size).ints(stride).op(b"\x89");
        self.global("collections", "OrderedDict").op(b")R").op(b"tR")
    }

    /// MEMOIZE the top of the stack as entry `i` (LONG_BINPUT).
    pub fn put(&mut self, i: u32) -> &mut Self {
        self.0.push(b'r');
        self.0.extend_from_slice(&i.to_le_bytes());
        self
    }

    /// Push memo entry `i` (LONG_BINGET).
    pub fn get(&mut self, i: u32) -> &mut Self {
        self.0.push(b'j');
        self.0.extend_from_slice(&i.to_le_bytes());
        self
    }

    pub fn stop(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        std::mem::take(&mut self.0)
    }
}

/// A contiguous float tensor's strides.
pub fn contiguous(size: &[i64]) -> Vec<i64> {
    let mut stride = vec![1i64; size.len()];
    for d in (0..size.len().saturating_sub(1)).rev() {
        stride[d] = stride[d + 1] * size[d + 1];
    }
    stride
}

/// `{"model_state_dict": OrderedDict(state), "replay_buffer": buffer}` as torch.save pickles a
/// checkpoint, each tensor with its own storage named by its index; `buffer` is (size, stride,
/// storage numel); `more_state` is pickled (key, value) pairs put into the state dict after the
/// tensors. Returns the pickle and each storage's element count.
pub fn checkpoint_pickle(state: &[(&str, Vec<i64>)], buffer: Option<(Vec<i64>, Vec<i64>, i64)>, more_state: &[u8]) -> (Vec<u8>, Vec<i64>) {
    let mut p = Pickle::default();
    let mut numels = vec![];
    p.op(b"}(").str("model_state_dict").global("collections", "OrderedDict").op(b")R(");
    for (i, (name, size)) in state.iter().enumerate() {
        let numel: i64 = size.iter().product();
        p.str(name).tensor(&i.to_string(), numel, 0, size, &contiguous(size));
        numels.push(numel);
    }
    p.op(more_state).op(b"u");
    if let Some((size, stride, numel)) = buffer {
        p.str("replay_buffer").tensor(&numels.len().to_string(), numel, 0, &size, &stride);
        numels.push(numel);
    }
    (p.op(b"u").stop(), numels)
}

/// One record of a zip archive: its name, the bytes as stored (compressed or not), the
/// compression method (0 stored, 8 deflate), the CRC-32 and the size it declares uncompressed.
pub struct Record {
    pub name: String,
    pub stored: Vec<u8>,
    pub method: u16,
    pub crc: u32,
    pub declared: u64,
}

impl Record {
    /// A record stored as it is, declaring its true size.
    pub fn plain(name: &str, bytes: &[u8]) -> Record {
        Record { name: name.into(), stored: bytes.to_vec(), method: 0, crc: crc32fast::hash(bytes), declared: bytes.len() as u64 }
    }

    /// A record deflated, declaring `declared` bytes (its true size or a lie).
    pub fn deflated(name: &str, bytes: &[u8], declared: u64) -> Record {
        use std::io::Write;
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(bytes).unwrap();
        Record { name: name.into(), stored: enc.finish().unwrap(), method: 8, crc: crc32fast::hash(bytes), declared }
    }
}

/// A zip archive of `records`, every size in a zip64 extra field so any declared size fits.
pub fn zip(records: &[Record]) -> Vec<u8> {
    let mut out = vec![];
    let mut central = vec![];
    let zip64 = |r: &Record| {
        let mut e = vec![];
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(&16u16.to_le_bytes());
        e.extend_from_slice(&r.declared.to_le_bytes());
        e.extend_from_slice(&(r.stored.len() as u64).to_le_bytes());
        e
    };
    for r in records {
        let offset = out.len() as u32;
        let extra = zip64(r);
        let header = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend_from_slice(&45u16.to_le_bytes()); // version made by
            }
            h.extend_from_slice(&45u16.to_le_bytes()); // version needed (zip64)
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&r.method.to_le_bytes());
            h.extend_from_slice(&[0; 4]); // time, date
            h.extend_from_slice(&r.crc.to_le_bytes());
            h.extend_from_slice(&u32::MAX.to_le_bytes()); // compressed: see zip64
            h.extend_from_slice(&u32::MAX.to_le_bytes()); // uncompressed: see zip64
            h.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            if central {
                h.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
                h.extend_from_slice(&[0; 4]); // external attributes
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(r.name.as_bytes());
            h.extend_from_slice(&extra);
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(&r.stored);
        central.extend(header(0x0201_4b50, true));
    }
    let (cd_offset, cd_len) = (out.len() as u32, central.len() as u32);
    out.extend(central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(records.len() as u16).to_le_bytes());
    out.extend_from_slice(&(records.len() as u16).to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A torch.save zip archive: `archive/data.pkl`, `archive/byteorder`, and the storages as
/// records `archive/data/<i>` of float zeros (`numels[i]` of them), all stored plainly.
pub fn torch_zip(pickle: &[u8], numels: &[i64]) -> Vec<u8> {
    let mut records = vec![Record::plain("archive/data.pkl", pickle), Record::plain("archive/byteorder", b"little")];
    for (i, &n) in numels.iter().enumerate() {
        records.push(Record::plain(&format!("archive/data/{i}"), &vec![0u8; 4 * n as usize]));
    }
    zip(&records)
}

/// The first pickle of a legacy torch.save stream: the magic number.
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// A legacy torch.save stream: magic, protocol 1001, little-endian system info, `object`, then
/// the storage keys `0..numels.len()` and each storage as float zeros.
pub fn legacy(object: &[u8], numels: &[i64]) -> Vec<u8> {
    let mut b = LEGACY_MAGIC.to_vec();
    b.extend_from_slice(b"\x80\x02M\xe9\x03.");
    b.extend_from_slice(b"\x80\x02}q\x00X\x0d\x00\x00\x00little_endianq\x01\x88s.");
    b.extend_from_slice(object);
    let mut keys = Pickle::default();
    keys.op(b"(");
    for i in 0..numels.len() {
        keys.str(&i.to_string());
    }
    b.extend(keys.op(b"l").stop());
    for &n in numels {
        b.extend_from_slice(&(n as u64).to_le_bytes());
        b.extend(std::iter::repeat_n(0u8, 4 * n as usize));
    }
    b
}
