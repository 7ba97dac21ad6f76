//! The `torch.save` file format without Python: reads the tensors of a file Python wrote — a
//! state dict, or a checkpoint dict of nested dicts, lists, tensors and numbers — and writes
//! nested dicts of tensors that `torch.load` reads ([`save`]).
//!
//! `torch.save` has written two formats, and files of both are in use (pytorch-fid's Inception
//! weights date from 2019):
//! - since PyTorch 1.6, a zip archive: `<name>/data.pkl` (the object) and one record
//!   `<name>/data/<key>` per storage;
//! - before, the "legacy" stream: five pickles back to back (magic number, protocol version,
//!   system info, the object, the list of storage keys), then each storage as its element
//!   count (u64) and raw bytes.
//!
//! libtorch's `torch::pickle_load` reads only the first, and turns every `OrderedDict` — what
//! `state_dict()` returns — into None, so this module carries its own small pickle machine. It
//! knows every opcode of pickle protocols 2–5 that builds data, and the globals a checkpoint
//! holds: tensors (`torch._utils._rebuild_tensor_v2`, parameters) and `OrderedDict`. Any other
//! object becomes an opaque leaf, so an unknown class in a checkpoint costs that leaf, not the
//! file. Nothing is executed: a global is only ever a name.
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

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
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";

/// Tells the three kinds of PyTorch file apart; anything else is an error saying so.
pub fn file_kind(path: &Path) -> Result<FileKind> {
    let mut head = Vec::with_capacity(LEGACY_MAGIC.len());
    File::open(path)
        .and_then(|f| f.take(LEGACY_MAGIC.len() as u64).read_to_end(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
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

/// Every tensor in a `torch.save`'d file (either format), named by its path through nested
/// dicts, lists and tuples joined with dots — `model_state_dict.conv1.weight`, `optim.state.0.
/// momentum_buffer` — in the file's order. Tensors come back on the CPU whatever device they
/// were saved from; views of one storage share its memory, as they did when saved. Non-tensor
/// leaves (numbers, strings, other objects) are left out.
pub fn load_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let read = || -> Result<Vec<(String, Tensor)>> {
        match file_kind(path)? {
            FileKind::TorchSaveZip => load_zip(path),
            FileKind::TorchSaveLegacy => load_legacy(&std::fs::read(path)?),
            FileKind::TorchScript => {
                bail!("this is a TorchScript module (torch.jit.save), not a torch.save file")
            }
        }
    };
    read().with_context(|| format!("reading the tensors of {}", path.display()))
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<File>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    zip::ZipArchive::new(file).with_context(|| format!("reading the zip directory of {}", path.display()))
}

/// The folder every record of a torch.save archive lives in (named after the file when saved).
fn data_pkl_prefix(zip: &zip::ZipArchive<File>) -> Result<String> {
    zip.file_names()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .find(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("a zip archive without data.pkl: not written by torch.save"))
}

fn read_record(zip: &mut zip::ZipArchive<File>, name: &str) -> Result<Vec<u8>> {
    let mut entry = zip.by_name(name).with_context(|| format!("no record {name} in the archive"))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).with_context(|| format!("reading record {name}"))?;
    Ok(bytes)
}

fn load_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut zip = open_zip(path)?;
    let prefix = data_pkl_prefix(&zip)?;
    if let Ok(order) = read_record(&mut zip, &format!("{prefix}byteorder")) {
        ensure!(order == b"little", "the tensors are stored big-endian; only little-endian files are read");
    }
    let pickle = read_record(&mut zip, &format!("{prefix}data.pkl"))?;
    let mut machine = Machine::new(&pickle);
    let value = machine.run().context("in data.pkl")?;
    let mut storages = HashMap::new();
    for (key, s) in &machine.storages {
        let bytes = read_record(&mut zip, &format!("{prefix}data/{key}"))?;
        storages.insert(key.clone(), storage_tensor(key, s, &bytes)?);
    }
    collect(&value, &storages)
}

fn load_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut pos = LEGACY_MAGIC.len();
    let (protocol, _) = run_pickle(bytes, &mut pos, "protocol version")?;
    let version = protocol.describe();
    ensure!(matches!(protocol, Value::Int(1001)), "unknown legacy protocol version {version} (expected 1001)");
    let (info, _) = run_pickle(bytes, &mut pos, "system info")?;
    ensure!(
        !matches!(dict_get(&info, "little_endian"), Some(Value::Bool(false))),
        "the tensors are stored big-endian; only little-endian files are read"
    );
    // The object's machine keeps the storage table: element types and counts.
    let (value, machine) = run_pickle(bytes, &mut pos, "object")?;
    let (keys, _) = run_pickle(bytes, &mut pos, "storage keys")?;
    let Value::List(keys) = keys else { bail!("the storage keys are not a list but {}", keys.describe()) };
    let mut storages = HashMap::new();
    for key in keys.borrow().iter() {
        let Value::Str(key) = key else { bail!("a storage key is not a string but {}", key.describe()) };
        let s = machine.storages.get(key).ok_or_else(|| anyhow!("storage {key} is listed but never used"))?;
        let numel = bytes.get(pos..pos + 8).ok_or_else(|| anyhow!("the file ends before storage {key}"))?;
        let numel = u64::from_le_bytes(numel.try_into().unwrap());
        ensure!(numel == s.numel as u64, "storage {key} holds {numel} elements, its tensors expect {}", s.numel);
        pos += 8;
        let len = s.numel as usize * s.kind.elt_size_in_bytes();
        let data = pos.checked_add(len).and_then(|end| bytes.get(pos..end));
        let data = data.ok_or_else(|| anyhow!("the file ends inside storage {key}"))?;
        pos += len;
        storages.insert(key.clone(), storage_tensor(key, s, data)?);
    }
    collect(&value, &storages)
}

/// Runs the pickle that starts at `*pos` and moves `*pos` past it.
fn run_pickle<'a>(bytes: &'a [u8], pos: &mut usize, what: &str) -> Result<(Value, Machine<'a>)> {
    let mut machine = Machine::new(&bytes[*pos..]);
    let value = machine.run().with_context(|| format!("in the {what} pickle"))?;
    *pos += machine.pos;
    Ok((value, machine))
}

/// One storage as a flat tensor of its element type.
fn storage_tensor(key: &str, s: &Storage, bytes: &[u8]) -> Result<Tensor> {
    let len = s.numel as usize * s.kind.elt_size_in_bytes();
    let (got, numel, kind) = (bytes.len(), s.numel, s.kind);
    ensure!(got == len, "storage {key} has {got} bytes, expected {len} ({numel} × {kind:?})");
    Ok(Tensor::f_from_data_size(bytes, &[s.numel], s.kind)?)
}

/// Flattens the object into named tensors, each a view of its storage.
fn collect(value: &Value, storages: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    walk(value, String::new(), 0, &mut |name, t| {
        let (key, size, stride, offset) = (&t.storage, &t.size, &t.stride, t.offset);
        let storage = storages.get(key).ok_or_else(|| anyhow!("tensor {name}: its storage {key} is missing"))?;
        let view = storage
            .f_as_strided(size.as_slice(), stride.as_slice(), offset)
            .with_context(|| format!("tensor {name}: size {size:?}, stride {stride:?}, offset {offset} overrun its storage"))?;
        out.push((name, view));
        Ok(())
    })?;
    Ok(out)
}

fn walk(value: &Value, name: String, depth: usize, f: &mut dyn FnMut(String, &TensorRef) -> Result<()>) -> Result<()> {
    // Pickles can be cyclic (a list holding itself); checkpoints are a few levels deep.
    ensure!(depth < 64, "{name}: nested more than 64 levels deep");
    let child = |key: &str| if name.is_empty() { key.to_owned() } else { format!("{name}.{key}") };
    match value {
        Value::Tensor(t) => f(name, t)?,
        Value::Dict(items) => {
            for (k, v) in items.borrow().iter() {
                walk(v, child(&key_name(k)), depth + 1, f)?;
            }
        }
        Value::List(items) => {
            for (i, v) in items.borrow().iter().enumerate() {
                walk(v, child(&i.to_string()), depth + 1, f)?;
            }
        }
        Value::Tuple(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, child(&i.to_string()), depth + 1, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn key_name(key: &Value) -> String {
    match key {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        Value::None => "None".to_owned(),
        Value::Float(x) => x.to_string(),
        other => other.describe(),
    }
}

fn dict_get(dict: &Value, key: &str) -> Option<Value> {
    let Value::Dict(items) = dict else { return None };
    let items = items.borrow();
    items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v.clone())
}

/// A storage as the pickle names it; its bytes live elsewhere in the file.
struct Storage {
    kind: Kind,
    numel: i64,
}

struct TensorRef {
    storage: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// What the pickle machine builds. Lists and dicts are shared and mutable (the memo hands out
/// the same one again, and APPENDS/SETITEMS fill it in place), hence the `Rc<RefCell<…>>`.
#[derive(Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (the legacy magic number); its value is never needed.
    BigInt,
    Float(f64),
    Str(String),
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// `module.name`, before it is called.
    Global(Rc<str>),
    /// A storage reference (persistent id): its key.
    Storage(String),
    Tensor(Rc<TensorRef>),
    /// Any object this reader doesn't build: the name of its class or function.
    Object(Rc<str>),
}

impl Value {
    /// For error messages: what the value is, without its contents.
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::BigInt => "a big int".into(),
            Value::Float(x) => x.to_string(),
            Value::Str(s) => format!("{s:?}"),
            Value::Bytes => "bytes".into(),
            Value::Tuple(items) => {
                let items: Vec<String> = items.iter().map(Value::describe).collect();
                format!("({})", items.join(", "))
            }
            Value::List(items) => format!("a list of {}", items.borrow().len()),
            Value::Dict(items) => format!("a dict of {}", items.borrow().len()),
            Value::Global(name) => name.to_string(),
            Value::Storage(key) => format!("storage {key}"),
            Value::Tensor(t) => format!("a tensor of size {:?}", t.size),
            Value::Object(name) => format!("a {name} object"),
        }
    }
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: HashMap<String, Storage>,
}

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Machine { bytes, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), storages: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| anyhow!("the pickle ends early (byte {})", self.bytes.len()))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn len_u64(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| anyhow!("a length beyond memory"))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("the pickle ends inside a line"))?;
        let line = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(line)
    }

    fn str(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).into_owned()))
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| anyhow!("pop from an empty stack"))
    }

    /// Everything pushed since the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| anyhow!("no MARK to pop to"))?;
        ensure!(mark <= self.stack.len(), "a MARK above the stack");
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| anyhow!("the stack is empty"))
    }

    /// Runs up to STOP and returns the object; `self.pos` is then just past the STOP.
    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            let done = self.step(op).with_context(|| format!("opcode {op:#04x} at byte {at}"))?;
            if done {
                ensure!(self.stack.len() == 1, "STOP with {} values on the stack", self.stack.len());
                return self.pop();
            }
        }
    }

    /// One instruction; true at STOP.
    fn step(&mut self, op: u8) -> Result<bool> {
        let value = match op {
            b'.' => return Ok(true),
            0x80 => {
                let protocol = self.u8()?;
                ensure!((2..=5).contains(&protocol), "pickle protocol {protocol} (2 to 5 are read)");
                return Ok(false);
            }
            0x95 => {
                self.u64()?; // FRAME: a read-ahead hint
                return Ok(false);
            }
            b'(' => {
                self.marks.push(self.stack.len());
                return Ok(false);
            }
            b'0' => {
                self.pop()?;
                return Ok(false);
            }
            b'1' => {
                self.pop_mark()?;
                return Ok(false);
            }
            b'2' => self.top()?.clone(),
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(self.u32()? as i32 as i64),
            b'K' => Value::Int(self.u8()? as i64),
            b'M' => Value::Int(self.u16()? as i64),
            0x8a => {
                let n = self.u8()? as usize;
                int(self.take(n)?)
            }
            0x8b => {
                let n = self.u32()? as usize;
                int(self.take(n)?)
            }
            b'G' => Value::Float(f64::from_be_bytes(self.take(8)?.try_into().unwrap())),
            b'X' | b'T' => {
                let n = self.u32()? as usize;
                self.str(n)?
            }
            0x8c | b'U' => {
                let n = self.u8()? as usize;
                self.str(n)?
            }
            0x8d => {
                let n = self.len_u64()?;
                self.str(n)?
            }
            b'B' => {
                let n = self.u32()? as usize;
                self.take(n)?;
                Value::Bytes
            }
            b'C' => {
                let n = self.u8()? as usize;
                self.take(n)?;
                Value::Bytes
            }
            0x8e | 0x96 => {
                let n = self.len_u64()?;
                self.take(n)?;
                Value::Bytes
            }
            b')' => Value::Tuple(Rc::new(Vec::new())),
            b't' => Value::Tuple(Rc::new(self.pop_mark()?)),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                ensure!(self.stack.len() >= n, "TUPLE{n} on a stack of {}", self.stack.len());
                let items = self.stack.split_off(self.stack.len() - n);
                Value::Tuple(Rc::new(items))
            }
            b']' | 0x8f => Value::List(Rc::new(RefCell::new(Vec::new()))),
            b'l' | 0x91 => Value::List(Rc::new(RefCell::new(self.pop_mark()?))),
            b'a' => {
                let item = self.pop()?;
                self.append(vec![item])?;
                return Ok(false);
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.append(items)?;
                return Ok(false);
            }
            b'}' => Value::Dict(Rc::new(RefCell::new(Vec::new()))),
            b'd' => {
                let items = self.pop_mark()?;
                Value::Dict(Rc::new(RefCell::new(pairs(items)?)))
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])?;
                return Ok(false);
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(pairs(items)?)?;
                return Ok(false);
            }
            b'h' => {
                let i = self.u8()? as u32;
                self.memo_get(i)?
            }
            b'j' => {
                let i = self.u32()?;
                self.memo_get(i)?
            }
            b'q' | b'r' | 0x94 => {
                let i = match op {
                    b'q' => self.u8()? as u32,
                    b'r' => self.u32()?,
                    _ => self.memo.len() as u32,
                };
                let top = self.top()?.clone();
                self.memo.insert(i, top);
                return Ok(false);
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                Value::Global(format!("{module}.{name}").into())
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => Value::Global(format!("{m}.{n}").into()),
                    (m, n) => bail!("STACK_GLOBAL of {}, {}", m.describe(), n.describe()),
                }
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)?
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)?
            }
            b'b' => {
                // BUILD sets an object's state (e.g. a state dict's `_metadata`): not needed.
                self.pop()?;
                return Ok(false);
            }
            b'Q' => {
                let pid = self.pop()?;
                self.persistent(pid)?
            }
            _ => bail!("an opcode this reader doesn't know"),
        };
        self.stack.push(value);
        Ok(false)
    }

    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo.get(&i).cloned().ok_or_else(|| anyhow!("memo entry {i} is unset"))
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(list) => list.borrow_mut().extend(items),
            Value::Object(_) => {} // e.g. a set or deque of a class we don't build
            other => bail!("APPEND to {}", other.describe()),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> Result<()> {
        match self.top()? {
            // A pickled dict never repeats a key, so there is nothing to overwrite.
            Value::Dict(dict) => dict.borrow_mut().extend(items),
            Value::Object(_) => {}
            other => bail!("SETITEM on {}", other.describe()),
        }
        Ok(())
    }

    /// `('storage', torch.<Type>Storage, key, location, numel[, view_metadata])`.
    fn persistent(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(pid) = &pid else { bail!("a persistent id that is not a tuple: {}", pid.describe()) };
        match pid.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), Value::Str(_location), Value::Int(numel), rest @ ..]
                if tag == "storage" =>
            {
                ensure!(
                    matches!(rest, [] | [Value::None]),
                    "storage {key} is a view of another storage (PyTorch < 0.4 files are not read)"
                );
                let kind = storage_kind(ty)?;
                ensure!(*numel >= 0, "storage {key} has {numel} elements");
                if let Some(old) = self.storages.get(key) {
                    ensure!(old.kind == kind && old.numel == *numel, "storage {key} is named twice, differently");
                }
                self.storages.insert(key.clone(), Storage { kind, numel: *numel });
                Ok(Value::Storage(key.clone()))
            }
            _ => bail!("an unknown persistent id {}", Value::Tuple(pid.clone()).describe()),
        }
    }

    /// REDUCE / NEWOBJ: builds what this reader knows; anything else is an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(name) = &callable else {
            return Ok(Value::Object("<call of a non-global>".into()));
        };
        let args: &[Value] = match &args {
            Value::Tuple(items) => items,
            _ => &[],
        };
        Ok(match &**name {
            "collections.OrderedDict" | "builtins.dict" => {
                // OrderedDict(list of pairs); torch.save passes () and fills it by SETITEMS.
                let mut items = Vec::new();
                if let Some(Value::List(pairs)) = args.first() {
                    for pair in pairs.borrow().iter() {
                        if let Value::Tuple(kv) = pair {
                            if let [k, v] = kv.as_slice() {
                                items.push((k.clone(), v.clone()));
                            }
                        }
                    }
                }
                Value::Dict(Rc::new(RefCell::new(items)))
            }
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => match args {
                [Value::Storage(key), Value::Int(offset), size, stride, ..] => Value::Tensor(Rc::new(TensorRef {
                    storage: key.clone(),
                    offset: *offset,
                    size: int_tuple(size).context("tensor size")?,
                    stride: int_tuple(stride).context("tensor stride")?,
                })),
                _ => bail!("{name} with arguments {}", describe_all(args)),
            },
            // A Parameter is its data.
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                args.first().cloned().unwrap_or(Value::None)
            }
            // A tensor subclass or a tensor with Python attributes: (func, type, args, state).
            "torch._tensor._rebuild_from_type_v2" => match args {
                [func, _ty, inner, ..] => self.call(func.clone(), inner.clone())?,
                _ => bail!("{name} with arguments {}", describe_all(args)),
            },
            "torch.Size" => args.first().cloned().unwrap_or(Value::None),
            _ => Value::Object(name.clone()),
        })
    }
}

/// LONG1/LONG4: a two's-complement little-endian integer of any width.
fn int(le_bytes: &[u8]) -> Value {
    if le_bytes.len() > 8 {
        return Value::BigInt;
    }
    let negative = le_bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 8];
    buf[..le_bytes.len()].copy_from_slice(le_bytes);
    Value::Int(i64::from_le_bytes(buf))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    ensure!(items.len().is_multiple_of(2), "an odd number of dict items");
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn describe_all(values: &[Value]) -> String {
    Value::Tuple(Rc::new(values.to_vec())).describe()
}

fn int_tuple(v: &Value) -> Result<Vec<i64>> {
    let Value::Tuple(items) = v else { bail!("expected a tuple of ints, got {}", v.describe()) };
    items
        .iter()
        .map(|x| match x {
            Value::Int(i) => Ok(*i),
            other => Err(anyhow!("expected an int, got {}", other.describe())),
        })
        .collect()
}

/// `torch.FloatStorage` → Float, and so on; `UntypedStorage` holds bytes.
fn storage_kind(global: &str) -> Result<Kind> {
    let name = global.strip_prefix("torch.").and_then(|n| n.strip_suffix("Storage"));
    Ok(match name {
        Some("Float") => Kind::Float,
        Some("Double") => Kind::Double,
        Some("Half") => Kind::Half,
        Some("BFloat16") => Kind::BFloat16,
        Some("Long") => Kind::Int64,
        Some("Int") => Kind::Int,
        Some("Short") => Kind::Int16,
        Some("Char") => Kind::Int8,
        Some("Byte") | Some("Untyped") => Kind::Uint8,
        Some("Bool") => Kind::Bool,
        Some("ComplexFloat") => Kind::ComplexFloat,
        Some("ComplexDouble") => Kind::ComplexDouble,
        _ => bail!("storage type {global} is not read"),
    })
}

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
    crate::train::checkpoint::write_atomic(path, &bytes)
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
        for cut in [20, bytes.len() / 2, bytes.len() - 3] {
            assert!(load_legacy(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

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
        let mut zip = open_zip(&path).unwrap();
        for i in 0..zip.len() {
            let entry = zip.by_index(i).unwrap();
            if entry.name().starts_with("archive/data/") {
                assert_eq!(entry.data_start() % 64, 0, "{}", entry.name());
            }
        }
    }

    #[test]
    fn pickle_machine_builds_nested_values() {
        // pickle.dumps({"a": [1, -2, (3.5, None)], 7: True}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x86q\x03eK\x07\x88u.";
        let mut m = Machine::new(bytes);
        let v = m.run().unwrap();
        assert_eq!(m.pos, bytes.len());
        let Value::Dict(d) = v else { panic!("not a dict") };
        let d = d.borrow();
        assert_eq!(key_name(&d[0].0), "a");
        assert_eq!(d[0].1.describe(), "a list of 3");
        let Value::List(l) = &d[0].1 else { panic!() };
        let l: Vec<String> = l.borrow().iter().map(Value::describe).collect();
        assert_eq!(l, ["1", "-2", "(3.5, None)"]);
        assert_eq!((key_name(&d[1].0), d[1].1.describe()), ("7".to_string(), "true".to_string()));
    }
}
