//! A `torch.save` file as bytes: which of the formats it is, its object flattened into named
//! tensor views and other leaves, and every storage's bytes — all within a [`Budget`], and
//! without libtorch (the fuzz target `pickle` drives this module).
//!
//! What a hostile file can ask for, and what bounds it:
//! - storages: their sizes come from the pickle; they are summed as they are named and refused
//!   past the budget before anything is read; a storage's zip record must hold exactly its
//!   bytes (its declared size is compared, then it is read through a reader that stops one byte
//!   past that, so a record that inflates further costs nothing);
//! - tensors: every occurrence of every tensor, shared or not, costs its elements × element
//!   size, because whoever uses the tensors may copy each one (a stride-0 view of one element
//!   claiming a trillion elements, or one tensor referenced a million times, is refused);
//! - the object: its traversal is a loop with its own stack, counts depth ([`MAX_DEPTH`]), the
//!   nodes it visits and the bytes of the names it makes, each linear in the pickle's length.
use super::machine::{self, CodeUse, Dtype, Machine, Node, Storage, TensorRef, Value, MAX_DEPTH};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

/// What a PyTorch file holds, told from its contents: the suffix says nothing (`.pt` and `.pth`
/// are used for all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `torch.save`, zip archive (PyTorch ≥ 1.6).
    TorchSaveZip,
    /// `torch.save`, the format before PyTorch 1.6.
    TorchSaveLegacy,
    /// `torch.jit.save`: a TorchScript module, also a zip archive, but with code.
    TorchScript,
}

/// The first pickle of a legacy file: protocol 2, the int 0x1950a86a20f9469cfc6c, stop.
pub const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// The default cap on what one file's tensors may take ([`Budget`]); `sadajem import
/// --max-tensor-bytes` raises it. The largest checkpoint of the papers (WRN-28-10 with a
/// 10,000-image replay buffer) takes 0.3 GB.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// A `data.pkl` larger than this is refused: WRN-28-10's checkpoint pickles to 30 kB, a state
/// dict of 50,000 tensors to ~5 MB. (What the machine builds from a pickle is linear in its
/// length, some tens of bytes per byte at worst: this bounds that too.)
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;

/// More tensors than this in one file is refused: WRN-28-10 has 300, the largest models a few
/// thousand.
pub const MAX_TENSORS: usize = 100_000;

/// What reading one file may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of storages plus bytes of every tensor occurrence, whatever the file's size.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// The bytes one file may take: `max_bytes`, and no more than four times the file's length
/// plus 64 MiB. A file's storages are stored whole in it (zip records are not compressed by
/// torch.save), and its tensors are views of them, so an honest file costs about twice its
/// length; a file claiming much more than it holds is lying.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub bytes: u64,
    /// Whether the absolute cap (rather than the file's length) set `bytes`.
    pub capped: bool,
}

impl Budget {
    pub fn for_file(file_len: u64, limits: &Limits) -> Budget {
        let relative = file_len.saturating_mul(4).saturating_add(64 << 20);
        Budget { bytes: relative.min(limits.max_bytes), capped: limits.max_bytes < relative }
    }

    pub(super) fn exceeded(&self, what: String) -> anyhow::Error {
        let how = if self.capped {
            format!("the {} allowed (sadajem import --max-tensor-bytes raises it)", crate::memory::human(self.bytes as f64))
        } else {
            format!("the {} a file of this length can honestly hold", crate::memory::human(self.bytes as f64))
        };
        anyhow!("{what}: more than {how}")
    }
}

/// One tensor of the file: a view of one of its storages.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub storage: String,
    pub dtype: Dtype,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// The bytes of one storage, little-endian, `numel × dtype.size()` of them.
#[derive(Debug)]
pub struct StorageData {
    pub dtype: Dtype,
    pub numel: u64,
    pub bytes: Vec<u8>,
}

/// Everything a file holds, read and checked.
#[derive(Debug)]
pub struct Contents {
    pub kind: FileKind,
    /// Every tensor, named by its path through nested dicts, lists and tuples joined with dots
    /// (`model_state_dict.conv1.weight`), in the file's order.
    pub tensors: Vec<(String, TensorSpec)>,
    /// Every other leaf (numbers, strings, objects), named the same way, with what it is.
    pub leaves: Vec<(String, String)>,
    pub storages: HashMap<String, StorageData>,
    /// Globals that `torch.load(weights_only=False)` would import and run.
    pub code: Vec<CodeUse>,
    /// Whether the storages' bytes were checked against a checksum: the zip format has a CRC-32
    /// per record, the legacy format none.
    pub checksummed: bool,
}

/// Tells the three kinds of PyTorch file apart; anything else is an error saying so.
pub fn file_kind(path: &Path) -> Result<FileKind> {
    let mut head = Vec::with_capacity(LEGACY_MAGIC.len());
    open_regular(path)?.take(LEGACY_MAGIC.len() as u64).read_to_end(&mut head).with_context(|| format!("reading {}", path.display()))?;
    if head.starts_with(b"PK\x03\x04") {
        let zip = open_zip(path)?;
        // A TorchScript archive also has a data.pkl (the module's attributes); its code and
        // constants tell it apart.
        if zip.file_names().any(|n| n.ends_with("/constants.pkl") || n.contains("/code/")) {
            return Ok(FileKind::TorchScript);
        }
        data_pkl_prefix(&zip).with_context(|| format!("reading {}", path.display()))?;
        return Ok(FileKind::TorchSaveZip);
    }
    if head == LEGACY_MAGIC {
        return Ok(FileKind::TorchSaveLegacy);
    }
    bail!(
        "{} is not a PyTorch file: expected a zip archive (torch.save since PyTorch 1.6, or torch.jit.save) \
         or an older torch.save file",
        path.display()
    )
}

/// Opens `path` for reading if it is a regular file: a FIFO would block, a device never end.
fn open_regular(path: &Path) -> Result<File> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
    ensure!(meta.is_file(), "{}: not a regular file", path.display());
    Ok(file)
}

/// Reads a `torch.save`'d file of either format.
pub fn read(path: &Path, limits: &Limits) -> Result<Contents> {
    let read = || -> Result<Contents> {
        let kind = file_kind(path)?;
        let len = open_regular(path)?.metadata()?.len();
        let budget = Budget::for_file(len, limits);
        match kind {
            FileKind::TorchSaveZip => read_zip(path, budget),
            FileKind::TorchSaveLegacy => {
                ensure!(len <= budget.bytes, "{}", budget.exceeded(format!("the file is {}", crate::memory::human(len as f64))));
                let mut bytes = Vec::with_capacity(len as usize);
                open_regular(path)?.take(len).read_to_end(&mut bytes)?;
                read_legacy(&bytes, budget)
            }
            FileKind::TorchScript => bail!("this is a TorchScript module (torch.jit.save), not a torch.save file"),
        }
    };
    read().with_context(|| format!("reading the tensors of {}", path.display()))
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<File>> {
    zip::ZipArchive::new(open_regular(path)?).with_context(|| format!("reading the zip directory of {}", path.display()))
}

/// The folder every record of a torch.save archive lives in (named after the file when saved).
fn data_pkl_prefix(zip: &zip::ZipArchive<File>) -> Result<String> {
    zip.file_names()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .find(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("a zip archive without data.pkl: not written by torch.save"))
}

/// A record's bytes, at most `limit` of them (more is an error), or exactly `exact`. The size
/// the archive declares is checked, never trusted for an allocation, and the read stops one
/// byte past what is allowed, however far the record would inflate.
fn read_record(zip: &mut zip::ZipArchive<File>, name: &str, size: RecordSize) -> Result<Vec<u8>> {
    let shown = machine::shorten(name, 60);
    let entry = zip.by_name(name).with_context(|| format!("no record {shown} in the archive"))?;
    let declared = entry.size();
    let limit = match size {
        RecordSize::Exact(n) => {
            ensure!(declared == n, "record {shown} declares {declared} bytes; its storage needs {n}");
            n
        }
        RecordSize::AtMost(n) => {
            ensure!(declared <= n, "record {shown} declares {declared} bytes, more than the {n} read");
            declared
        }
    };
    // A storage's size comes from the pickle, already within the budget: allocated once. Others
    // (data.pkl, byteorder) grow as their bytes really arrive.
    let mut bytes = match size {
        RecordSize::Exact(n) => Vec::with_capacity(n as usize),
        RecordSize::AtMost(_) => Vec::new(),
    };
    entry.take(limit.saturating_add(1)).read_to_end(&mut bytes).with_context(|| format!("reading record {shown}"))?;
    let got = bytes.len() as u64;
    ensure!(got <= limit, "record {shown} holds more than the {limit} bytes it declares");
    ensure!(got == limit, "record {shown} holds {got} bytes, not the {limit} it declares");
    Ok(bytes)
}

#[derive(Clone, Copy)]
enum RecordSize {
    Exact(u64),
    AtMost(u64),
}

fn read_zip(path: &Path, budget: Budget) -> Result<Contents> {
    let mut zip = open_zip(path)?;
    let prefix = data_pkl_prefix(&zip)?;
    if let Ok(order) = read_record(&mut zip, &format!("{prefix}byteorder"), RecordSize::AtMost(16)) {
        ensure!(order == b"little", "the tensors are stored big-endian; only little-endian files are read");
    }
    let pickle = read_record(&mut zip, &format!("{prefix}data.pkl"), RecordSize::AtMost(MAX_PICKLE_BYTES.min(budget.bytes))).context("data.pkl")?;
    let mut machine = Machine::new(&pickle, budget);
    let value = machine.run().context("in data.pkl")?;
    let spent = budget.bytes - machine.storage_bytes_left();
    let mut storages = HashMap::new();
    for (key, s) in &machine.storages {
        let bytes = read_record(&mut zip, &format!("{prefix}data/{key}"), RecordSize::Exact(s.numel * s.dtype.size()))?;
        storages.insert(key.to_string(), StorageData { dtype: s.dtype, numel: s.numel, bytes });
    }
    let walked = walk(&machine, &value, pickle.len(), budget, spent)?;
    Ok(Contents { kind: FileKind::TorchSaveZip, tensors: walked.tensors, leaves: walked.leaves, storages, code: machine.code, checksummed: true })
}

/// The legacy stream: five pickles back to back (magic number, protocol version, system info,
/// the object, the list of storage keys), then each storage as its element count (u64) and raw
/// bytes.
pub fn read_legacy(bytes: &[u8], budget: Budget) -> Result<Contents> {
    ensure!(bytes.starts_with(LEGACY_MAGIC), "not a legacy torch.save stream");
    let mut pos = LEGACY_MAGIC.len();
    let none = Budget { bytes: 0, ..budget };
    let (protocol, m) = run_pickle(bytes, &mut pos, "protocol version", none)?;
    ensure!(matches!(protocol, Value::Int(1001)), "unknown legacy protocol version {} (expected 1001)", m.heap.describe(&protocol));
    let (info, m) = run_pickle(bytes, &mut pos, "system info", none)?;
    ensure!(
        !matches!(dict_get(&m, &info, "little_endian"), Some(Value::Bool(false))),
        "the tensors are stored big-endian; only little-endian files are read"
    );
    // The object's machine keeps the storage table: element types and counts.
    let object_start = pos;
    let (value, machine) = run_pickle(bytes, &mut pos, "object", budget)?;
    let object_len = pos - object_start;
    let spent = budget.bytes - machine.storage_bytes_left();
    let (keys, km) = run_pickle(bytes, &mut pos, "storage keys", none)?;
    let Value::List(keys) = keys else { bail!("the storage keys are not a list but {}", km.heap.describe(&keys)) };
    let Node::List(keys) = km.heap.node(keys) else { unreachable!("a list id names a list") };
    let table: HashMap<&str, Storage> = machine.storages.iter().map(|(k, s)| (&**k, *s)).collect();
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else { bail!("a storage key is not a string but {}", km.heap.describe(key)) };
        let shown = machine::shorten(key, 40);
        let s = table.get(&**key).ok_or_else(|| anyhow!("storage {shown} is listed but never used"))?;
        ensure!(!storages.contains_key(&**key), "storage {shown} is listed twice");
        let numel = bytes.get(pos..pos + 8).ok_or_else(|| anyhow!("the file ends before storage {shown}"))?;
        let numel = u64::from_le_bytes(numel.try_into().unwrap());
        ensure!(numel == s.numel, "storage {shown} holds {numel} elements, its tensors expect {}", s.numel);
        pos += 8;
        // Within the budget (checked when the pickle named it), so this fits a usize.
        let len = (s.numel * s.dtype.size()) as usize;
        let data = pos.checked_add(len).and_then(|end| bytes.get(pos..end));
        let data = data.ok_or_else(|| anyhow!("the file ends inside storage {shown}"))?;
        pos += len;
        storages.insert(key.to_string(), StorageData { dtype: s.dtype, numel: s.numel, bytes: data.to_vec() });
    }
    if let Some((key, _)) = machine.storages.iter().find(|(k, _)| !storages.contains_key(&**k)) {
        bail!("storage {} is used by the object but not stored in the file", machine::shorten(key, 40));
    }
    let walked = walk(&machine, &value, object_len, budget, spent)?;
    Ok(Contents { kind: FileKind::TorchSaveLegacy, tensors: walked.tensors, leaves: walked.leaves, storages, code: machine.code, checksummed: false })
}

/// Runs the pickle that starts at `*pos` and moves `*pos` past it.
/// Only the first [`MAX_PICKLE_BYTES`] are given to the machine, as for a zip's data.pkl.
fn run_pickle<'a>(bytes: &'a [u8], pos: &mut usize, what: &str, budget: Budget) -> Result<(Value, Machine<'a>)> {
    let rest = &bytes[*pos..];
    let window = &rest[..rest.len().min(MAX_PICKLE_BYTES as usize)];
    let mut machine = Machine::new(window, budget);
    let value = machine.run().with_context(|| {
        let cut = if window.len() < rest.len() { format!(" (of which only the first {MAX_PICKLE_BYTES} bytes are read)") } else { String::new() };
        format!("in the {what} pickle{cut}")
    })?;
    *pos += machine.pos;
    Ok((value, machine))
}

fn dict_get(m: &Machine, dict: &Value, key: &str) -> Option<Value> {
    let Value::Dict(id) = dict else { return None };
    let Node::Dict(items) = m.heap.node(*id) else { return None };
    items.iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v.clone())
}

struct Walked {
    tensors: Vec<(String, TensorSpec)>,
    leaves: Vec<(String, String)>,
}

/// Flattens the object into named tensors and leaves, depth first in the file's order. A loop
/// over a stack of open containers (each with the index of its next item): no recursion, and no
/// more held at once than the names on one path, however the containers refer to each other.
fn walk(m: &Machine, root: &Value, pickle_len: usize, budget: Budget, spent: u64) -> Result<Walked> {
    struct Open {
        id: machine::Id,
        next: usize,
        name: String,
        depth: u32,
    }
    let mut w = Walk {
        m,
        budget,
        spent,
        pickle_len,
        // Each container is visited once in an honest file; a few times where tensors are
        // shared (tied weights).
        visits_left: 4 * pickle_len as u64 + 1024,
        name_bytes_left: 4 * pickle_len as u64 + (1 << 20),
        out: Walked { tensors: Vec::new(), leaves: Vec::new() },
    };
    let mut open: Vec<Open> = vec![];
    if let Some(id) = w.visit(root, String::new())? {
        open.push(Open { id, next: 0, name: String::new(), depth: 0 });
    }
    while let Some(top) = open.last_mut() {
        let child = match m.heap.node(top.id) {
            Node::Tuple(items) | Node::List(items) => items.get(top.next).map(|v| (top.next.to_string(), v)),
            Node::Dict(items) => items.get(top.next).map(|(k, v)| (key_name(m, k), v)),
        };
        top.next += 1;
        let Some((key, value)) = child else {
            open.pop();
            continue;
        };
        let name = if top.name.is_empty() { key } else { format!("{}.{key}", top.name) };
        let depth = top.depth + 1;
        w.name_bytes_left = w
            .name_bytes_left
            .checked_sub(name.len() as u64)
            .ok_or_else(|| anyhow!("the names of its entries take more bytes than a pickle of {pickle_len} bytes can honestly make"))?;
        // Cycles, and containers filled after they were nested, end here.
        ensure!(depth <= MAX_DEPTH, "{}: nested more than {MAX_DEPTH} levels deep", machine::shorten(&name, 200));
        if let Some(id) = w.visit(value, name.clone())? {
            open.push(Open { id, next: 0, name, depth });
        }
    }
    Ok(w.out)
}

/// What the walk has found and may still spend.
struct Walk<'m, 'a> {
    m: &'m Machine<'a>,
    budget: Budget,
    spent: u64,
    pickle_len: usize,
    visits_left: u64,
    name_bytes_left: u64,
    out: Walked,
}

impl Walk<'_, '_> {
    /// Records a tensor or a leaf; returns a container's id, for the walk to open.
    fn visit(&mut self, value: &Value, name: String) -> Result<Option<machine::Id>> {
        self.visits_left = self.visits_left.checked_sub(1).ok_or_else(|| {
            anyhow!(
                "its objects refer to each other more often than a pickle of {} bytes can honestly \
                 describe (shared references multiplying: a \"billion laughs\" file)",
                self.pickle_len
            )
        })?;
        match value {
            Value::Tensor(t) => {
                ensure!(self.out.tensors.len() < MAX_TENSORS, "more than {MAX_TENSORS} tensors (shared references multiplying?)");
                self.spent = charge(self.spent, t, &name, self.budget)?;
                self.out.tensors.push((name, spec(t)));
                Ok(None)
            }
            Value::Tuple(id) | Value::List(id) | Value::Dict(id) => Ok(Some(*id)),
            other => {
                self.out.leaves.push((name, self.m.heap.describe(other)));
                Ok(None)
            }
        }
    }
}

/// Adds a tensor occurrence's bytes to what the file has spent; refuses past the budget.
fn charge(spent: u64, t: &TensorRef, name: &str, budget: Budget) -> Result<u64> {
    let bytes = t.numel.checked_mul(t.dtype.size());
    bytes.and_then(|b| spent.checked_add(b)).filter(|&total| total <= budget.bytes).ok_or_else(|| {
        budget.exceeded(format!(
            "tensor {} of size {:?} ({} elements of {:?}), with the storages and the tensors before it",
            machine::shorten(name, 200),
            t.size,
            t.numel,
            t.dtype
        ))
    })
}

fn spec(t: &Rc<TensorRef>) -> TensorSpec {
    TensorSpec { storage: t.storage.to_string(), dtype: t.dtype, offset: t.offset, size: t.size.clone(), stride: t.stride.clone() }
}

/// A dict key as a name: strings as they are (cut at 200 characters), numbers printed.
fn key_name(m: &Machine, key: &Value) -> String {
    match key {
        Value::Str(s) => machine::shorten(s, 200),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        Value::None => "None".to_owned(),
        Value::Float(x) => x.to_string(),
        other => m.heap.describe(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pickle::forge::{self, Pickle, Record};

    /// A legacy stream around `object`, no storages.
    fn legacy(object: &[u8]) -> Vec<u8> {
        forge::legacy(object, &[])
    }

    fn read_bytes(bytes: &[u8], limits: &Limits) -> Result<Contents> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pt");
        std::fs::write(&path, bytes).unwrap();
        read(&path, limits)
    }

    fn err(bytes: &[u8], limits: &Limits) -> String {
        format!("{:#}", read_bytes(bytes, limits).unwrap_err())
    }

    /// A WRN-like state dict of two small tensors and a [N, 1, 28, 28] buffer.
    fn state() -> Vec<(&'static str, Vec<i64>)> {
        vec![("f.conv1.weight", vec![16, 1, 3, 3]), ("class_output.bias", vec![10])]
    }

    fn budget(bytes: u64) -> Budget {
        Budget { bytes, capped: true }
    }

    #[test]
    fn the_budget_is_relative_to_the_file_and_capped() {
        let b = Budget::for_file(1000, &Limits::default());
        assert_eq!((b.bytes, b.capped), (4000 + (64 << 20), false));
        let b = Budget::for_file(10 << 30, &Limits::default());
        assert_eq!((b.bytes, b.capped), (DEFAULT_MAX_BYTES, true));
        let e = b.exceeded("x".into()).to_string();
        assert!(e.contains("8.0 GiB allowed") && e.contains("--max-tensor-bytes"), "{e}");
    }

    /// Cycles and containers nested after they were filled are caught by the walk.
    #[test]
    fn the_walk_bounds_depth_and_visits() {
        // l = []; l.append(l)
        let e = format!("{:#}", read_legacy(&legacy(b"\x80\x02]q\x00h\x00a."), budget(1 << 20)).unwrap_err());
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        // 100 lists, each put into the next before it is itself filled: the machine sees depth 2.
        let mut b = b"\x80\x02".to_vec();
        for i in 0..100u8 {
            b.extend([b']', b'q', i, b'0']);
        }
        for i in (0..99u8).rev() {
            b.extend([b'h', i + 1, b'h', i, b'a', b'0']);
        }
        b.extend(b"h\x63.");
        let e = format!("{:#}", read_legacy(&legacy(&b), budget(1 << 20)).unwrap_err());
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        // 2^61 leaves in 500 bytes.
        let mut b = b"\x80\x02]q\x000".to_vec();
        for i in 1..=61u8 {
            b.extend([b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i, b'0']);
        }
        b.extend(b"h\x3d.");
        let start = std::time::Instant::now();
        let e = format!("{:#}", read_legacy(&legacy(&b), budget(1 << 20)).unwrap_err());
        assert!(e.contains("billion laughs"), "{e}");
        assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn long_keys_are_cut_in_names() {
        // {"x" * 10000: 1}
        let mut b = b"\x80\x02}X\x10\x27\x00\x00".to_vec();
        b.extend(b"x".repeat(10_000));
        b.extend(b"K\x01s.");
        let c = read_legacy(&legacy(&b), budget(1 << 20)).unwrap();
        assert_eq!(c.leaves.len(), 1);
        assert!(c.leaves[0].0.len() < 300 && c.leaves[0].0.ends_with("(10000 bytes)"), "{}", c.leaves[0].0);
        assert_eq!(c.leaves[0].1, "1");
    }

    #[test]
    fn honest_archives_read_in_both_formats_and_deflated() {
        let (pickle, numels) = forge::checkpoint_pickle(&state(), Some((vec![4, 1, 28, 28], forge::contiguous(&[4, 1, 28, 28]), 4 * 784)), b"");
        let zipped = forge::torch_zip(&pickle, &numels);
        for bytes in [zipped, forge::legacy(&pickle, &numels)] {
            let c = read_bytes(&bytes, &Limits::default()).unwrap();
            let names: Vec<&str> = c.tensors.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["model_state_dict.f.conv1.weight", "model_state_dict.class_output.bias", "replay_buffer"]);
            assert_eq!(c.storages["2"].bytes.len(), 4 * 4 * 784);
        }
        // A re-packed archive (records deflated, sizes true) reads the same.
        let mut records = vec![Record::deflated("archive/data.pkl", &pickle, pickle.len() as u64)];
        for (i, &n) in numels.iter().enumerate() {
            records.push(Record::deflated(&format!("archive/data/{i}"), &vec![0u8; 4 * n as usize], 4 * n as u64));
        }
        let c = read_bytes(&forge::zip(&records), &Limits::default()).unwrap();
        assert_eq!((c.tensors.len(), c.checksummed), (3, true));
    }

    /// Declared sizes are compared, never allocated: 2^62 and 2^63 + 1 were an abort and a
    /// "capacity overflow" panic.
    #[test]
    fn declared_record_sizes_are_checked_not_trusted() {
        let (pickle, numels) = forge::checkpoint_pickle(&state(), None, b"");
        assert_eq!(numels, [144, 10]);
        for declared in [1u64 << 62, (1 << 63) + 1] {
            let mut records = vec![Record { declared, ..Record::plain("archive/data.pkl", &pickle) }];
            records.extend(numels.iter().enumerate().map(|(i, &n)| Record::plain(&format!("archive/data/{i}"), &vec![0; 4 * n as usize])));
            let e = err(&forge::zip(&records), &Limits::default());
            assert!(e.contains(&format!("record archive/data.pkl declares {declared} bytes, more than the")), "{e}");

            let mut records = vec![Record::plain("archive/data.pkl", &pickle)];
            records.push(Record { declared, ..Record::plain("archive/data/0", &vec![0; 4 * 144]) });
            records.push(Record::plain("archive/data/1", &[0; 40]));
            let e = err(&forge::zip(&records), &Limits::default());
            assert!(e.contains(&format!("record archive/data/0 declares {declared} bytes; its storage needs 576")), "{e}");
        }
        // A record shorter than its storage.
        let records =
            [Record::plain("archive/data.pkl", &pickle), Record::plain("archive/data/0", &[0; 100]), Record::plain("archive/data/1", &[0; 40])];
        let e = err(&forge::zip(&records), &Limits::default());
        assert!(e.contains("record archive/data/0 declares 100 bytes; its storage needs 576"), "{e}");
    }

    /// A few kB that inflate to as much as the archive likes (3 KB → 2.2 GB was imported): the
    /// read stops one byte past the declared size.
    #[test]
    fn compressed_records_inflate_no_further_than_declared() {
        let (pickle, _) = forge::checkpoint_pickle(&state(), None, b"");
        let bomb = vec![0u8; 64 << 20];
        let mut records = vec![Record::plain("archive/data.pkl", &pickle)];
        records.push(Record::deflated("archive/data/0", &bomb, 576));
        records.push(Record::plain("archive/data/1", &[0; 40]));
        let bytes = forge::zip(&records);
        assert!(bytes.len() < 200_000, "{}", bytes.len());
        let start = std::time::Instant::now();
        let e = err(&bytes, &Limits::default());
        assert!(e.contains("record archive/data/0 holds more than the 576 bytes it declares"), "{e}");
        assert!(start.elapsed().as_secs() < 2, "{:?}", start.elapsed());
        // data.pkl likewise.
        let mut lying = vec![Record::deflated("archive/data.pkl", &bomb, 1000)];
        lying.extend(records.drain(1..));
        let e = err(&forge::zip(&lying), &Limits::default());
        assert!(e.contains("record archive/data.pkl holds more than the 1000 bytes it declares"), "{e}");
        // A storage claiming what the file cannot hold is refused before anything is read.
        let (pickle, _) = forge::checkpoint_pickle(&[("w", vec![1 << 20, 1 << 10])], None, b"");
        let records = [Record::plain("archive/data.pkl", &pickle), Record::deflated("archive/data/0", &[0; 1000], 4 << 30)];
        let e = err(&forge::zip(&records), &Limits::default());
        assert!(e.contains("storage 0 holds 1073741824 elements of F32") && e.contains("a file of this length can honestly hold"), "{e}");
    }

    /// A replay buffer as a stride-0 view of one element: every view costs its elements.
    #[test]
    fn views_cost_their_elements_within_the_budget() {
        for (n, expect) in
            [(1_000_000_000_000i64, "replay_buffer of size [1000000000000, 3, 32, 32]"), (10_000, "replay_buffer of size [10000, 3, 32, 32]")]
        {
            let size = vec![n, 3, 32, 32];
            let (pickle, numels) = forge::checkpoint_pickle(&state(), Some((size, vec![0, 0, 0, 0], 1)), b"");
            for bytes in [forge::torch_zip(&pickle, &numels), forge::legacy(&pickle, &numels)] {
                let e = err(&bytes, &Limits::default());
                assert!(e.contains(expect) && e.contains("a file of this length can honestly hold"), "{e}");
            }
        }
        // Within the budget it reads; with the cap set lower, the message says how to raise it.
        let size = vec![100, 1, 28, 28];
        let (pickle, numels) = forge::checkpoint_pickle(&state(), Some((size, vec![0, 0, 0, 0], 1)), b"");
        let bytes = forge::torch_zip(&pickle, &numels);
        assert!(read_bytes(&bytes, &Limits::default()).is_ok());
        let e = err(&bytes, &Limits { max_bytes: 100_000 });
        assert!(e.contains("the 97.7 KiB allowed (sadajem import --max-tensor-bytes raises it)"), "{e}");
    }

    /// One tensor referenced 200,000 times (a million cost 2 GB and a 129 MB imported.json).
    #[test]
    fn shared_tensor_references_are_counted() {
        let mut p = Pickle::default();
        p.op(b"}").tensor("0", 1, 0, &[1], &[1]).put(0).op(b"0").str("k").put(1).op(b"0(");
        for _ in 0..200_000 {
            p.get(1).get(0);
        }
        let pickle = p.op(b"u").stop();
        let e = err(&forge::legacy(&pickle, &[1]), &Limits::default());
        assert!(e.contains("more than 100000 tensors"), "{e}");
    }

    /// 300,000 nested tuples in a 600-byte file overflowed the stack.
    #[test]
    fn deep_nesting_is_an_error_in_both_formats() {
        let mut p = Pickle::default();
        p.op(&vec![b'('; 300_000]).op(&vec![b't'; 300_000]);
        let pickle = p.stop();
        for bytes in [forge::torch_zip(&pickle, &[]), forge::legacy(&pickle, &[])] {
            let e = err(&bytes, &Limits::default());
            assert!(e.contains("nested more than 64 levels deep"), "{e}");
        }
    }
}
