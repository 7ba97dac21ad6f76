//! The pickle machine: runs the opcodes of one pickle (protocols 2–5) and builds the object
//! they describe, executing nothing — a global is only ever a name.
//!
//! Written by hand, not with a crate (serde-pickle and friends decode plain data but neither
//! persistent ids, which is how torch.save refers to its storages, nor REDUCE of the globals
//! a checkpoint holds), and for hostile input:
//! - Containers live in one arena (`Heap`) and refer to each other by index, so nothing about
//!   them recurses: dropping a million nested tuples is dropping a flat vector, a list that
//!   holds itself is no leak, and every traversal is a loop with its own stack.
//! - Nesting deeper than [`MAX_DEPTH`] is refused while the pickle runs, as each container is
//!   built or filled.
//! - Every item put into a container counts against a budget linear in the pickle's length, so
//!   copying through shared references (OrderedDict of one big list, called again and again)
//!   cannot make quadratic work.
//! - Every global that is not one of the data-building names `torch.load(weights_only=True)`
//!   accepts is recorded ([`CodeUse`]): under `torch.load` with `weights_only=False` (the
//!   default before PyTorch 2.6) importing and calling it would run code.
use super::archive::Budget;
pub use crate::text::shorten;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting of containers accepted. Checkpoints are a few levels deep (a state dict in a
/// checkpoint dict: 2; optimiser state: 4).
pub const MAX_DEPTH: u32 = 64;

/// Index of a container in the [`Heap`].
pub type Id = usize;

/// The element types a storage can hold (torch's `<Type>Storage` names), without tch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    C64,
    C128,
}

impl Dtype {
    pub fn size(self) -> u64 {
        match self {
            Dtype::F64 | Dtype::I64 | Dtype::C64 => 8,
            Dtype::C128 => 16,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// `torch.FloatStorage` → F32, and so on; `UntypedStorage` holds bytes.
    fn from_storage_name(global: &str) -> Result<Dtype> {
        let name = global.strip_prefix("torch.").and_then(|n| n.strip_suffix("Storage"));
        Ok(match name {
            Some("Float") => Dtype::F32,
            Some("Double") => Dtype::F64,
            Some("Half") => Dtype::F16,
            Some("BFloat16") => Dtype::BF16,
            Some("Long") => Dtype::I64,
            Some("Int") => Dtype::I32,
            Some("Short") => Dtype::I16,
            Some("Char") => Dtype::I8,
            Some("Byte") | Some("Untyped") => Dtype::U8,
            Some("Bool") => Dtype::Bool,
            Some("ComplexFloat") => Dtype::C64,
            Some("ComplexDouble") => Dtype::C128,
            _ => bail!("storage type {} is not read", shorten(global, 80)),
        })
    }
}

/// A storage as the pickle names it; its bytes live elsewhere in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    pub dtype: Dtype,
    pub numel: u64,
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`, checked to lie inside its storage.
#[derive(Debug)]
pub struct TensorRef {
    pub storage: Rc<str>,
    pub dtype: Dtype,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
    /// Elements of the view (the product of `size`), what materialising it costs.
    pub numel: u64,
}

/// What the pickle machine builds. Containers are indices into the [`Heap`]: cheap to copy and
/// to share, as the memo shares them.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (the legacy magic number); its value is never needed.
    BigInt,
    Float(f64),
    Str(Rc<str>),
    Bytes,
    Tuple(Id),
    List(Id),
    Dict(Id),
    /// `module.name`, before it is called.
    Global(Rc<str>),
    /// A storage reference (persistent id): its key.
    Storage(Rc<str>),
    Tensor(Rc<TensorRef>),
    /// Any object this reader doesn't build: the name of its class or function.
    Object(Rc<str>),
}

/// A container's items; a dict's as (key, value) pairs in insertion order.
#[derive(Debug)]
pub enum Node {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// Every container a pickle built, and how deep each one nests.
#[derive(Default, Debug)]
pub struct Heap {
    nodes: Vec<Node>,
    depth: Vec<u32>,
}

impl Heap {
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id]
    }

    /// How many containers deep `v` is (0 for anything else).
    fn depth_of(&self, v: &Value) -> u32 {
        match v {
            Value::Tuple(id) | Value::List(id) | Value::Dict(id) => self.depth[*id],
            _ => 0,
        }
    }

    fn deepest<'v>(&self, values: impl Iterator<Item = &'v Value>) -> u32 {
        values.map(|v| self.depth_of(v)).max().unwrap_or(0)
    }

    fn add(&mut self, node: Node) -> Result<Id> {
        let inner = match &node {
            Node::Tuple(items) | Node::List(items) => self.deepest(items.iter()),
            Node::Dict(pairs) => self.deepest(pairs.iter().flat_map(|(k, v)| [k, v])),
        };
        let depth = inner + 1;
        ensure!(depth <= MAX_DEPTH, "containers nested more than {MAX_DEPTH} levels deep");
        self.nodes.push(node);
        self.depth.push(depth);
        Ok(self.nodes.len() - 1)
    }

    /// Records that `id` now holds items as deep as `inner`. A container filled after it was
    /// put in another makes that one deeper too, which this does not follow; the traversal
    /// (`archive::walk`) counts depth itself, so such a file is still refused, just later.
    fn deepen(&mut self, id: Id, inner: u32) -> Result<()> {
        let depth = self.depth[id].max(inner + 1);
        ensure!(depth <= MAX_DEPTH, "containers nested more than {MAX_DEPTH} levels deep");
        self.depth[id] = depth;
        Ok(())
    }

    /// For error messages: what `v` is, without its contents beyond a few items.
    pub fn describe(&self, v: &Value) -> String {
        self.describe_at(v, 0)
    }

    fn describe_at(&self, v: &Value, level: usize) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::BigInt => "a big int".into(),
            Value::Float(x) => x.to_string(),
            Value::Str(s) => format!("{:?}", shorten(s, 40)),
            Value::Bytes => "bytes".into(),
            Value::Tuple(id) => {
                let Node::Tuple(items) = &self.nodes[*id] else { unreachable!("a tuple id names a tuple") };
                if level >= 2 {
                    return format!("a tuple of {}", items.len());
                }
                const SHOWN: usize = 6;
                let mut parts: Vec<String> = items.iter().take(SHOWN).map(|x| self.describe_at(x, level + 1)).collect();
                if items.len() > SHOWN {
                    parts.push(format!("… {} more", items.len() - SHOWN));
                }
                format!("({})", parts.join(", "))
            }
            Value::List(id) => format!("a list of {}", self.len(*id)),
            Value::Dict(id) => format!("a dict of {}", self.len(*id)),
            Value::Global(name) => shorten(name, 80),
            Value::Storage(key) => format!("storage {}", shorten(key, 40)),
            Value::Tensor(t) => format!("a tensor of size {:?}", t.size),
            Value::Object(name) => format!("a {} object", shorten(name, 80)),
        }
    }

    fn len(&self, id: Id) -> usize {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => items.len(),
            Node::Dict(pairs) => pairs.len(),
        }
    }
}

/// A global that `torch.load(weights_only=False)` would import (running its module's code) and
/// maybe call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeUse {
    pub name: Rc<str>,
    /// REDUCE, NEWOBJ or BUILD (`__setstate__`) applied to it or what it made.
    pub calls: u64,
}

/// The names a checkpoint of plain data uses: torch's own rebuild functions, storage types and
/// the containers, as `torch.load(weights_only=True)` accepts them (torch/_weights_only_unpickler.py,
/// `_get_allowed_globals`). Anything else runs code under `weights_only=False`.
fn is_data_global(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "collections.OrderedDict",
        "collections.Counter",
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.set",
        "builtins.frozenset",
        "builtins.bytearray",
        "builtins.int",
        "builtins.float",
        "builtins.complex",
        "builtins.bool",
        "builtins.str",
        "builtins.slice",
        "_codecs.encode",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch._tensor._rebuild_from_type_v2",
        "torch.serialization._get_layout",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_nested_tensor",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_wrapper_subclass",
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "torch.per_tensor_affine",
        "torch.per_channel_affine",
    ];
    const DTYPES: &[&str] = &[
        "float32",
        "float",
        "float64",
        "double",
        "float16",
        "half",
        "bfloat16",
        "int64",
        "long",
        "int32",
        "int",
        "int16",
        "short",
        "int8",
        "uint8",
        "bool",
        "complex64",
        "complex128",
        "cfloat",
        "cdouble",
    ];
    EXACT.contains(&name)
        || name.strip_prefix("torch.").is_some_and(|n| DTYPES.contains(&n))
        || name.strip_prefix("torch.").and_then(|n| n.strip_suffix("Storage")).is_some_and(|n| !n.contains('.'))
}

pub struct Machine<'a> {
    bytes: &'a [u8],
    /// Where the next opcode is; just past the STOP once [`Machine::run`] returns.
    pub pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub heap: Heap,
    /// Every storage the pickle names, in the order first named.
    pub storages: Vec<(Rc<str>, Storage)>,
    storage_index: HashMap<Rc<str>, usize>,
    /// Globals that would run code, in the order first met.
    pub code: Vec<CodeUse>,
    /// Items still allowed into containers (see the module docs).
    items_left: u64,
    /// Bytes the storages may take in all, across the whole file; checked as each is named.
    storage_bytes_left: u64,
    budget: Budget,
}

impl<'a> Machine<'a> {
    /// A machine over `bytes` whose storages may take `budget` in all.
    pub fn new(bytes: &'a [u8], budget: Budget) -> Self {
        Machine {
            bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            heap: Heap::default(),
            storages: Vec::new(),
            storage_index: HashMap::new(),
            code: Vec::new(),
            items_left: 8 * bytes.len() as u64 + 4096,
            storage_bytes_left: budget.bytes,
            budget,
        }
    }

    /// What the storages named so far take, in bytes.
    pub fn storage_bytes_left(&self) -> u64 {
        self.storage_bytes_left
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
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).into()))
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

    /// Everything pushed since the last MARK, as (key, value) pairs: taken off the stack
    /// directly, so a large SETITEMS is held twice at most, not three times.
    fn pop_mark_pairs(&mut self) -> Result<Vec<(Value, Value)>> {
        let mark = self.marks.pop().ok_or_else(|| anyhow!("no MARK to pop to"))?;
        ensure!(mark <= self.stack.len(), "a MARK above the stack");
        ensure!((self.stack.len() - mark).is_multiple_of(2), "an odd number of dict items");
        let mut items = self.stack.drain(mark..);
        let mut out = Vec::with_capacity(items.len() / 2);
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn top(&self) -> Result<&Value> {
        self.stack.last().ok_or_else(|| anyhow!("the stack is empty"))
    }

    /// Counts `n` items put into containers against the budget.
    fn spend(&mut self, n: usize) -> Result<()> {
        self.items_left = self.items_left.checked_sub(n as u64).ok_or_else(|| {
            anyhow!(
                "its containers hold more items than a pickle of {} bytes can describe without \
                 copying shared references over and over (a \"billion laughs\" file)",
                self.bytes.len()
            )
        })?;
        Ok(())
    }

    fn container(&mut self, node: Node) -> Result<Id> {
        let n = match &node {
            Node::Tuple(items) | Node::List(items) => items.len(),
            Node::Dict(pairs) => pairs.len(),
        };
        self.spend(n)?;
        self.heap.add(node)
    }

    /// Runs up to STOP and returns the object; `self.pos` is then just past the STOP.
    pub fn run(&mut self) -> Result<Value> {
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
            b')' => Value::Tuple(self.container(Node::Tuple(Vec::new()))?),
            b't' => {
                let items = self.pop_mark()?;
                Value::Tuple(self.container(Node::Tuple(items))?)
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                ensure!(self.stack.len() >= n, "TUPLE{n} on a stack of {}", self.stack.len());
                let items = self.stack.split_off(self.stack.len() - n);
                Value::Tuple(self.container(Node::Tuple(items))?)
            }
            b']' | 0x8f => Value::List(self.container(Node::List(Vec::new()))?),
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                Value::List(self.container(Node::List(items))?)
            }
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
            b'}' => Value::Dict(self.container(Node::Dict(Vec::new()))?),
            b'd' => {
                let items = self.pop_mark_pairs()?;
                Value::Dict(self.container(Node::Dict(items))?)
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])?;
                return Ok(false);
            }
            b'u' => {
                let items = self.pop_mark_pairs()?;
                self.set_items(items)?;
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
                self.global(format!("{module}.{name}"))
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.global(format!("{m}.{n}")),
                    (m, n) => bail!("STACK_GLOBAL of {}, {}", self.heap.describe(&m), self.heap.describe(&n)),
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
                // BUILD sets an object's state (e.g. a state dict's `_metadata`): not needed,
                // but on an object of a class it is that class's `__setstate__`.
                self.pop()?;
                if let Value::Object(name) = self.top()?.clone() {
                    self.record_call(&name);
                }
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

    /// GLOBAL: a name; noted if it is not one of the data-building ones.
    fn global(&mut self, name: String) -> Value {
        let name: Rc<str> = name.into();
        if !is_data_global(&name) && !self.code.iter().any(|c| c.name == name) {
            self.code.push(CodeUse { name: name.clone(), calls: 0 });
        }
        Value::Global(name)
    }

    fn record_call(&mut self, name: &str) {
        if let Some(c) = self.code.iter_mut().find(|c| &*c.name == name) {
            c.calls += 1;
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        self.spend(items.len())?;
        match self.top()?.clone() {
            Value::List(id) => {
                let inner = self.heap.deepest(items.iter());
                self.heap.deepen(id, inner)?;
                let Node::List(list) = &mut self.heap.nodes[id] else { unreachable!("a list id names a list") };
                if list.is_empty() {
                    *list = items; // no copy: the usual EMPTY_LIST, MARK, …, APPENDS
                } else {
                    list.extend(items);
                }
            }
            Value::Object(_) => {} // e.g. a set or deque of a class we don't build
            other => bail!("APPEND to {}", self.heap.describe(&other)),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> Result<()> {
        self.spend(items.len())?;
        match self.top()?.clone() {
            // A pickled dict never repeats a key, so there is nothing to overwrite.
            Value::Dict(id) => {
                let inner = self.heap.deepest(items.iter().flat_map(|(k, v)| [k, v]));
                self.heap.deepen(id, inner)?;
                let Node::Dict(dict) = &mut self.heap.nodes[id] else { unreachable!("a dict id names a dict") };
                if dict.is_empty() {
                    *dict = items;
                } else {
                    dict.extend(items);
                }
            }
            Value::Object(_) => {}
            other => bail!("SETITEM on {}", self.heap.describe(&other)),
        }
        Ok(())
    }

    /// `('storage', torch.<Type>Storage, key, location, numel[, view_metadata])`.
    fn persistent(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(id) = pid else { bail!("a persistent id that is not a tuple: {}", self.heap.describe(&pid)) };
        let Node::Tuple(items) = self.heap.node(id) else { unreachable!("a tuple id names a tuple") };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(ty), Value::Str(key), Value::Str(_location), Value::Int(numel), rest @ ..] if &**tag == "storage" => {
                let key = key.clone();
                let shown = shorten(&key, 40);
                ensure!(matches!(rest, [] | [Value::None]), "storage {shown} is a view of another storage (PyTorch < 0.4 files are not read)");
                let dtype = Dtype::from_storage_name(ty)?;
                let numel = u64::try_from(*numel).map_err(|_| anyhow!("storage {shown} has {numel} elements"))?;
                let storage = Storage { dtype, numel };
                if let Some(&i) = self.storage_index.get(&key) {
                    ensure!(self.storages[i].1 == storage, "storage {shown} is named twice, differently");
                } else {
                    let bytes = numel.checked_mul(dtype.size()).filter(|&b| b <= self.storage_bytes_left);
                    let bytes = bytes.ok_or_else(|| {
                        self.budget.exceeded(format!("storage {shown} holds {numel} elements of {dtype:?}, with the storages before it"))
                    })?;
                    self.storage_bytes_left -= bytes;
                    self.storage_index.insert(key.clone(), self.storages.len());
                    self.storages.push((key.clone(), storage));
                }
                Ok(Value::Storage(key))
            }
            _ => bail!("an unknown persistent id {}", self.heap.describe(&Value::Tuple(id))),
        }
    }

    /// REDUCE / NEWOBJ: builds what this reader knows; anything else is an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(name) = &callable else {
            return Ok(Value::Object("<call of a non-global>".into()));
        };
        self.record_call(name);
        // The first few arguments are all any known call uses; copying more would let one large
        // tuple, passed again and again, cost its length each time.
        let args: Vec<Value> = match &args {
            Value::Tuple(id) => match self.heap.node(*id) {
                Node::Tuple(items) => items.iter().take(6).cloned().collect(),
                _ => unreachable!("a tuple id names a tuple"),
            },
            _ => Vec::new(),
        };
        Ok(match &**name {
            "collections.OrderedDict" | "builtins.dict" => {
                // OrderedDict(list of pairs); torch.save passes () and fills it by SETITEMS.
                let mut items = Vec::new();
                if let Some(Value::List(list)) = args.first() {
                    let Node::List(list) = self.heap.node(*list) else { unreachable!("a list id names a list") };
                    for pair in list {
                        if let Value::Tuple(kv) = pair {
                            if let Node::Tuple(kv) = self.heap.node(*kv) {
                                if let [k, v] = kv.as_slice() {
                                    items.push((k.clone(), v.clone()));
                                }
                            }
                        }
                    }
                }
                Value::Dict(self.container(Node::Dict(items))?)
            }
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => match args.as_slice() {
                [Value::Storage(key), Value::Int(offset), size, stride, ..] => {
                    let size = self.int_tuple(size).context("tensor size")?;
                    let stride = self.int_tuple(stride).context("tensor stride")?;
                    let i = self.storage_index[key];
                    Value::Tensor(Rc::new(view(key.clone(), self.storages[i].1, *offset, size, stride)?))
                }
                _ => bail!("{name} with arguments {}", self.describe_all(&args)),
            },
            // A Parameter is its data.
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => args.first().cloned().unwrap_or(Value::None),
            // A tensor subclass or a tensor with Python attributes: (func, type, args, state).
            "torch._tensor._rebuild_from_type_v2" => match args.as_slice() {
                [func @ Value::Global(f), _ty, inner, ..] if &**f != "torch._tensor._rebuild_from_type_v2" => {
                    self.call(func.clone(), inner.clone())?
                }
                _ => bail!("{name} with arguments {}", self.describe_all(&args)),
            },
            "torch.Size" => args.first().cloned().unwrap_or(Value::None),
            _ => Value::Object(name.clone()),
        })
    }

    fn describe_all(&mut self, values: &[Value]) -> String {
        match self.heap.add(Node::Tuple(values.to_vec())) {
            Ok(id) => self.heap.describe(&Value::Tuple(id)),
            Err(_) => format!("a tuple of {}", values.len()),
        }
    }

    fn int_tuple(&self, v: &Value) -> Result<Vec<i64>> {
        let items = match v {
            Value::Tuple(id) => match self.heap.node(*id) {
                Node::Tuple(items) => items,
                _ => unreachable!("a tuple id names a tuple"),
            },
            _ => bail!("expected a tuple of ints, got {}", self.heap.describe(v)),
        };
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(anyhow!("expected an int, got {}", self.heap.describe(other))),
            })
            .collect()
    }
}

/// A tensor view, checked: sizes and strides ≥ 0, every element it reaches inside the storage.
fn view(storage: Rc<str>, s: Storage, offset: i64, size: Vec<i64>, stride: Vec<i64>) -> Result<TensorRef> {
    let shown = shorten(&storage, 40);
    let bad = || anyhow!("a tensor of size {size:?}, stride {stride:?}, offset {offset} overruns its storage {shown} of {} elements", s.numel);
    ensure!(size.len() == stride.len(), "a tensor of size {size:?} has strides {stride:?}");
    ensure!(size.iter().chain(&stride).all(|&x| x >= 0) && offset >= 0, "{}", bad());
    let numel = size.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).ok_or_else(bad)?;
    if numel > 0 {
        // The last element reached: offset + Σ (size_i − 1)·stride_i, checked so nothing wraps.
        let last = size
            .iter()
            .zip(&stride)
            .try_fold(offset as u128, |acc, (&d, &st)| ((d - 1) as u128).checked_mul(st as u128).and_then(|x| acc.checked_add(x)));
        ensure!(last.is_some_and(|last| last < s.numel as u128), "{}", bad());
    }
    Ok(TensorRef { storage, dtype: s.dtype, offset, size, stride, numel })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: u64) -> Budget {
        Budget { bytes, capped: true }
    }

    fn run(bytes: &[u8]) -> Result<(Value, Machine<'_>)> {
        let mut m = Machine::new(bytes, budget(1 << 20));
        let v = m.run()?;
        Ok((v, m))
    }

    /// `(((…)))`, `n` deep, protocol 2: MARK … TUPLE.
    fn nested_tuples(n: usize) -> Vec<u8> {
        let mut b = b"\x80\x02".to_vec();
        b.extend(std::iter::repeat_n(b'(', n));
        b.extend(std::iter::repeat_n(b't', n));
        b.push(b'.');
        b
    }

    #[test]
    fn pickle_machine_builds_nested_values() {
        // pickle.dumps({"a": [1, -2, (3.5, None)], 7: True}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x86q\x03eK\x07\x88u.";
        let mut m = Machine::new(bytes, budget(0));
        let v = m.run().unwrap();
        assert_eq!(m.pos, bytes.len());
        let Value::Dict(d) = v else { panic!("not a dict") };
        let Node::Dict(d) = m.heap.node(d) else { panic!("not a dict") };
        assert!(matches!(&d[0].0, Value::Str(s) if &**s == "a"));
        assert_eq!(m.heap.describe(&d[0].1), "a list of 3");
        let Value::List(l) = &d[0].1 else { panic!() };
        let Node::List(l) = m.heap.node(*l) else { panic!() };
        let l: Vec<String> = l.iter().map(|x| m.heap.describe(x)).collect();
        assert_eq!(l, ["1", "-2", "(3.5, None)"]);
        assert_eq!((m.heap.describe(&d[1].0), m.heap.describe(&d[1].1)), ("7".to_string(), "true".to_string()));
    }

    #[test]
    fn nesting_is_refused_while_parsing() {
        assert!(run(&nested_tuples(MAX_DEPTH as usize)).is_ok());
        let e = format!("{:#}", run(&nested_tuples(MAX_DEPTH as usize + 1)).err().unwrap());
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        // 300,000 levels: refused at level 65, long before anything deep exists.
        let e = format!("{:#}", run(&nested_tuples(300_000)).err().unwrap());
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        // Lists filled by APPEND, and dicts by SETITEM, count the same.
        let mut lists = b"\x80\x02".to_vec();
        lists.extend(b"]".repeat(100));
        lists.extend(b"a".repeat(99));
        lists.push(b'.');
        let e = format!("{:#}", run(&lists).err().unwrap());
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        let mut dicts = b"\x80\x02}".to_vec();
        dicts.extend(b"K\x01}".repeat(99));
        dicts.extend(b"s".repeat(99));
        dicts.push(b'.');
        let e = format!("{:#}", run(&dicts).err().unwrap());
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
    }

    /// 61 lists, each holding the previous one twice: 2^61 leaves, described in a few hundred
    /// bytes. Building it is cheap (shared, not copied); copying it through OrderedDict again and
    /// again runs out of the item budget.
    #[test]
    fn shared_references_are_not_copied_and_copies_are_counted() {
        let mut b = b"\x80\x02]q\x000".to_vec();
        for i in 1..=61u8 {
            b.extend([b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i, b'0']);
        }
        b.extend(b"h\x3d.");
        let (v, m) = run(&b).unwrap();
        assert!(matches!(v, Value::List(_)));
        assert!(m.heap.nodes.len() < 100);

        // OrderedDict(list of 1000 pairs), called 10,000 times on the same list.
        let mut b = b"\x80\x02(".to_vec();
        for _ in 0..1000 {
            b.extend(b"K\x01K\x02\x86");
        }
        b.extend(b"lq\x00(");
        for _ in 0..10_000 {
            b.extend(b"ccollections\nOrderedDict\nh\x00\x85R");
        }
        b.extend(b"l.");
        let e = format!("{:#}", run(&b).err().unwrap());
        assert!(e.contains("billion laughs"), "{e}");
    }

    #[test]
    fn a_list_holding_itself_is_fine() {
        // l = []; l.append(l)
        let (v, m) = run(b"\x80\x02]q\x00h\x00a.").unwrap();
        let Value::List(id) = v else { panic!() };
        let Node::List(items) = m.heap.node(id) else { panic!() };
        assert!(matches!(items[0], Value::List(i) if i == id));
    }

    #[test]
    fn globals_that_run_code_are_recorded_by_name() {
        // os.system("echo hi") under torch.load(weights_only=False); a popped result still ran.
        let b = b"\x80\x02cposix\nsystem\nX\x07\x00\x00\x00echo hi\x85R0ccollections\nOrderedDict\n)R.";
        let (v, m) = run(b).unwrap();
        assert!(matches!(v, Value::Dict(_)));
        assert_eq!(m.code, [CodeUse { name: "posix.system".into(), calls: 1 }]);
        // A class made by NEWOBJ, then given its state by BUILD (its __setstate__).
        let b = b"\x80\x02cevil\nThing\n)\x81}b.";
        let (v, m) = run(b).unwrap();
        assert!(matches!(v, Value::Object(ref n) if &**n == "evil.Thing"));
        assert_eq!(m.code, [CodeUse { name: "evil.Thing".into(), calls: 2 }]);
        assert!(is_data_global("torch.FloatStorage") && is_data_global("torch._utils._rebuild_tensor_v2"));
        assert!(!is_data_global("torch.load") && !is_data_global("builtins.eval") && !is_data_global("torch.hub.Storage"));
    }

    #[test]
    fn storages_count_against_the_budget_as_they_are_named() {
        // ('storage', torch.FloatStorage, '0', 'cpu', 1 << 40) as a persistent id.
        let b = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu\x8a\x06\x00\x00\x00\x00\x00\x01tQ.";
        let e = format!("{:#}", Machine::new(b, budget(1 << 30)).run().err().unwrap());
        assert!(e.contains("storage 0 holds 1099511627776 elements of F32") && e.contains("1.0 GiB allowed"), "{e}");
        let mut m = Machine::new(b, budget(u64::MAX));
        assert!(m.run().is_ok());
        assert_eq!(m.storage_bytes_left(), u64::MAX - (4 << 40));
    }

    #[test]
    fn views_must_lie_inside_their_storage() {
        let s = Storage { dtype: Dtype::F32, numel: 10 };
        assert_eq!(view("k".into(), s, 3, vec![4], vec![1]).unwrap().numel, 4);
        assert_eq!(view("k".into(), s, 0, vec![5, 2], vec![1, 5]).unwrap().numel, 10);
        // A stride-0 view of one element is fine: its cost is its numel, counted by the caller.
        assert_eq!(view("k".into(), s, 9, vec![1_000_000, 3], vec![0, 0]).unwrap().numel, 3_000_000);
        assert_eq!(view("k".into(), s, 0, vec![0, 3, 2], vec![6, 2, 1]).unwrap().numel, 0);
        for (offset, size, stride) in [(7, vec![4], vec![1]), (0, vec![11], vec![1]), (-1, vec![1], vec![1]), (0, vec![2], vec![-1])] {
            let e = view("k".into(), s, offset, size, stride).unwrap_err().to_string();
            assert!(e.contains("overruns its storage k of 10 elements"), "{e}");
        }
        assert!(view("k".into(), s, 0, vec![i64::MAX, i64::MAX], vec![0, 0]).is_err());
        assert!(view("k".into(), s, 0, vec![2, 2], vec![1]).is_err());
    }
}
