//! The pickle stack machine: runs the opcodes `torch.save` emits, resolving storages (persistent
//! ids) and tensor rebuilds, and treating every unknown global as an opaque value.

use std::collections::HashMap;
use std::rc::Rc;

use super::{DType, PickleError, Result};

/// Pickle opcodes (see CPython's `Lib/pickletools.py`).
pub(super) mod opcode {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    // Protocol 2.
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    // Protocol 3 and 4, for files saved with a higher `pickle_protocol`.
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// Deepest tuple nesting accepted. torch's pickles nest three levels; the bound keeps the
/// recursive drop of nested `Rc` tuples from overflowing the thread stack on crafted input.
const MAX_NESTING: u32 = 100;

/// A pickled value. Cheap to clone (memo gets clone), so containers are shared: immutable
/// tuples via `Rc`, mutable lists and dicts as indices into the machine's [`Heap`] (which lets
/// a memoized dict be filled after it was memoized, as pickles do, without `RefCell` cycles).
#[derive(Debug, Clone)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Tuple>),
    List(usize),
    Dict(usize),
    Global(Rc<Global>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// Anything else (an object of an unknown class): kept only by description.
    Opaque(Rc<str>),
}

#[derive(Debug)]
pub(super) struct Tuple {
    items: Vec<Value>,
    depth: u32,
}

#[derive(Debug)]
pub(super) struct Global {
    module: String,
    name: String,
}

/// A storage named by a persistent id; its bytes live in the container.
#[derive(Debug)]
pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) dtype: DType,
    /// Element count of the whole storage, as the pickle declares it.
    pub(super) numel: usize,
    /// Legacy files only: the (element offset, element count) window of a storage view.
    pub(super) view: Option<(usize, usize)>,
}

#[derive(Debug)]
pub(super) struct TensorRef {
    pub(super) storage: Rc<StorageRef>,
    pub(super) offset: usize,
    pub(super) shape: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

impl Value {
    /// Short description for error messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(b) => format!("an integer of {} bytes", b.len()),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("{s:?}"),
            Value::Bytes(b) => format!("bytes of length {}", b.len()),
            Value::Tuple(t) => format!("a tuple of {}", t.items.len()),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("global {}.{}", g.module, g.name),
            Value::Storage(s) => format!("storage {:?}", s.key),
            Value::Tensor(_) => "a tensor".into(),
            Value::Opaque(what) => what.to_string(),
        }
    }

    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(t) => t.depth,
            _ => 0,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct DictObj {
    /// Insertion order is kept: it is the order of the state dict.
    pub(super) items: Vec<(Value, Value)>,
    /// Position of each string key in `items`, so a repeated key replaces (as in Python)
    /// without a quadratic scan.
    str_index: HashMap<Rc<str>, usize>,
}

impl DictObj {
    fn insert(&mut self, key: Value, value: Value) {
        if let Value::Str(k) = &key {
            if let Some(&i) = self.str_index.get(k) {
                self.items[i].1 = value;
                return;
            }
            self.str_index.insert(k.clone(), self.items.len());
        }
        self.items.push((key, value));
    }

    pub(super) fn get_str(&self, key: &str) -> Option<&Value> {
        self.str_index.get(key).map(|&i| &self.items[i].1)
    }
}

/// Storage for the mutable containers of one pickle. Ids are only ever created by `new_*`, so
/// indexing with an id from the same machine cannot fail.
#[derive(Debug, Default)]
pub(super) struct Heap {
    lists: Vec<Vec<Value>>,
    dicts: Vec<DictObj>,
}

impl Heap {
    fn new_list(&mut self, items: Vec<Value>) -> Value {
        self.lists.push(items);
        Value::List(self.lists.len() - 1)
    }

    fn new_dict(&mut self) -> Value {
        self.dicts.push(DictObj::default());
        Value::Dict(self.dicts.len() - 1)
    }

    pub(super) fn list(&self, id: usize) -> &[Value] {
        &self.lists[id]
    }

    pub(super) fn dict(&self, id: usize) -> &DictObj {
        &self.dicts[id]
    }
}

/// Runs one pickle, from `pos` up to and including its `STOP`.
pub(super) struct Machine<'a> {
    data: &'a [u8],
    /// Next byte to read; after [`Machine::run`], the first byte after `STOP`.
    pub(super) pos: usize,
    /// Start of the opcode being executed, for error messages.
    op_pos: usize,
    stream: &'static str,
    stack: Vec<Value>,
    /// Stack heights at each open `MARK`. Like CPython, values below the innermost mark are
    /// out of reach until the mark is consumed.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub(super) heap: Heap,
    /// Element type of every storage key seen, to size the legacy data section.
    pub(super) storage_dtypes: HashMap<String, DType>,
}

impl<'a> Machine<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize, stream: &'static str) -> Self {
        Machine {
            data,
            pos,
            op_pos: pos,
            stream,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            heap: Heap::default(),
            storage_dtypes: HashMap::new(),
        }
    }

    fn malformed(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Malformed { pos: self.op_pos, stream: self.stream, msg: msg.into() }
    }

    // --- reading operands -------------------------------------------------------------------

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or(PickleError::Truncated { stream: self.stream, pos: self.data.len(), what })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        // `take` returned exactly N bytes.
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A length operand of `N` little-endian bytes, as usize.
    fn len<const N: usize>(&mut self, what: &'static str) -> Result<usize> {
        let bytes = self.array::<N>(what)?;
        let mut wide = [0u8; 8];
        wide[..N].copy_from_slice(&bytes);
        usize::try_from(u64::from_le_bytes(wide)).map_err(|_| PickleError::Truncated {
            stream: self.stream,
            pos: self.data.len(),
            what,
        })
    }

    /// A newline-terminated ASCII line (the operands of `GLOBAL`).
    fn line(&mut self) -> Result<String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated {
            stream: self.stream,
            pos: self.data.len(),
            what: "a GLOBAL name",
        })?;
        let line = self.take(n + 1, "a GLOBAL name")?;
        std::str::from_utf8(&line[..n])
            .map(str::to_owned)
            .map_err(|_| self.malformed("GLOBAL name is not UTF-8"))
    }

    fn utf8(&self, bytes: &[u8]) -> Result<Value> {
        std::str::from_utf8(bytes)
            .map(|s| Value::Str(s.into()))
            .map_err(|_| self.malformed("string is not valid UTF-8"))
    }

    // --- the stack ----------------------------------------------------------------------------

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&self) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.malformed("stack underflow"))
    }

    /// Pops everything above the innermost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_NESTING {
            return Err(self.malformed(format!("tuples nested deeper than {MAX_NESTING}")));
        }
        Ok(Value::Tuple(Rc::new(Tuple { items, depth })))
    }

    fn push_tuple(&mut self, n: usize) -> Result<()> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop()?);
        }
        items.reverse();
        let t = self.tuple(items)?;
        self.stack.push(t);
        Ok(())
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<()> {
        let value = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo entry {index} is not defined")))?;
        self.stack.push(value);
        Ok(())
    }

    /// Adds key/value pairs to the dict on top of the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of values"));
        }
        match self.top()? {
            &Value::Dict(id) => {
                let dict = &mut self.heap.dicts[id];
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    dict.insert(k, v);
                }
                Ok(())
            }
            // An object of an unknown class that supports item assignment: nothing to keep.
            Value::Opaque(_) => Ok(()),
            other => Err(self.malformed(format!("cannot set items on {}", other.describe()))),
        }
    }

    fn append_items(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            &Value::List(id) => {
                self.heap.lists[id].extend(items);
                Ok(())
            }
            Value::Opaque(_) => Ok(()),
            other => Err(self.malformed(format!("cannot append to {}", other.describe()))),
        }
    }

    // --- execution ------------------------------------------------------------------------------

    pub(super) fn run(&mut self) -> Result<Value> {
        use opcode::*;
        loop {
            self.op_pos = self.pos;
            let op = self.u8("an opcode")?;
            match op {
                PROTO => {
                    self.u8("the protocol number")?;
                }
                // Framing only groups opcodes for buffered reading; the bytes follow inline.
                FRAME => {
                    self.len::<8>("a frame size")?;
                }
                STOP => return self.pop(),

                MARK => self.marks.push(self.stack.len()),
                POP => {
                    self.pop()?;
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }

                NONE => self.stack.push(Value::None),
                NEWTRUE => self.stack.push(Value::Bool(true)),
                NEWFALSE => self.stack.push(Value::Bool(false)),
                BININT => {
                    let v = i32::from_le_bytes(self.array("a BININT operand")?);
                    self.stack.push(Value::Int(v.into()));
                }
                BININT1 => {
                    let v = self.u8("a BININT1 operand")?;
                    self.stack.push(Value::Int(v.into()));
                }
                BININT2 => {
                    let v = u16::from_le_bytes(self.array("a BININT2 operand")?);
                    self.stack.push(Value::Int(v.into()));
                }
                LONG1 | LONG4 => {
                    let n = if op == LONG1 {
                        self.len::<1>("a LONG1 size")?
                    } else {
                        let n = i32::from_le_bytes(self.array("a LONG4 size")?);
                        usize::try_from(n).map_err(|_| self.malformed("negative LONG4 size"))?
                    };
                    let bytes = self.take(n, "integer bytes")?;
                    self.stack.push(long_value(bytes));
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.array("a BINFLOAT operand")?);
                    self.stack.push(Value::Float(v));
                }

                BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                    let n = match op {
                        SHORT_BINUNICODE => self.len::<1>("a string size")?,
                        BINUNICODE => self.len::<4>("a string size")?,
                        _ => self.len::<8>("a string size")?,
                    };
                    let bytes = self.take(n, "string bytes")?;
                    let v = self.utf8(bytes)?;
                    self.stack.push(v);
                }
                // Python 2 `str`: torch.load decodes it as UTF-8 and so do we; bytes that are
                // not UTF-8 stay bytes rather than failing the whole file.
                BINSTRING | SHORT_BINSTRING => {
                    let n = if op == SHORT_BINSTRING {
                        self.len::<1>("a string size")?
                    } else {
                        let n = i32::from_le_bytes(self.array("a string size")?);
                        usize::try_from(n).map_err(|_| self.malformed("negative string size"))?
                    };
                    let bytes = self.take(n, "string bytes")?;
                    let v = self.utf8(bytes).unwrap_or_else(|_| Value::Bytes(bytes.into()));
                    self.stack.push(v);
                }
                BINBYTES | SHORT_BINBYTES | BINBYTES8 => {
                    let n = match op {
                        SHORT_BINBYTES => self.len::<1>("a bytes size")?,
                        BINBYTES => self.len::<4>("a bytes size")?,
                        _ => self.len::<8>("a bytes size")?,
                    };
                    let bytes = self.take(n, "bytes")?;
                    self.stack.push(Value::Bytes(bytes.into()));
                }

                EMPTY_TUPLE => self.push_tuple(0)?,
                TUPLE1 => self.push_tuple(1)?,
                TUPLE2 => self.push_tuple(2)?,
                TUPLE3 => self.push_tuple(3)?,
                TUPLE => {
                    let items = self.pop_mark()?;
                    let t = self.tuple(items)?;
                    self.stack.push(t);
                }
                EMPTY_LIST => {
                    let v = self.heap.new_list(Vec::new());
                    self.stack.push(v);
                }
                LIST => {
                    let items = self.pop_mark()?;
                    let v = self.heap.new_list(items);
                    self.stack.push(v);
                }
                APPEND => {
                    let v = self.pop()?;
                    self.append_items(vec![v])?;
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?;
                }
                EMPTY_DICT => {
                    let v = self.heap.new_dict();
                    self.stack.push(v);
                }
                DICT => {
                    let items = self.pop_mark()?;
                    let v = self.heap.new_dict();
                    self.stack.push(v);
                    self.set_items(items)?;
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }

                BINPUT => {
                    let i = self.u8("a memo index")?;
                    self.memo_put(i.into())?;
                }
                LONG_BINPUT => {
                    let i = u32::from_le_bytes(self.array("a memo index")?);
                    self.memo_put(i)?;
                }
                MEMOIZE => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.malformed("memo overflow"))?;
                    self.memo_put(i)?;
                }
                BINGET => {
                    let i = self.u8("a memo index")?;
                    self.memo_get(i.into())?;
                }
                LONG_BINGET => {
                    let i = u32::from_le_bytes(self.array("a memo index")?);
                    self.memo_get(i)?;
                }

                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(Rc::new(Global { module, name })));
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed("STACK_GLOBAL needs two strings"));
                    };
                    self.stack.push(Value::Global(Rc::new(Global {
                        module: module.to_string(),
                        name: name.to_string(),
                    })));
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.stack.push(v);
                }
                REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(&callable, &args)?;
                    self.stack.push(v);
                }
                NEWOBJ => {
                    let _args = self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(Value::Opaque(format!("an instance of {}", class.describe()).into()));
                }
                // `__setstate__`: torch uses it to attach `_metadata` to the state dict and
                // state to tensor subclasses. Neither changes the tensor data, so the state is
                // dropped.
                BUILD => {
                    self.pop()?;
                    self.top()?;
                }

                _ => {
                    return Err(PickleError::UnsupportedOpcode {
                        opcode: op,
                        pos: self.op_pos,
                        stream: self.stream,
                    })
                }
            }
        }
    }

    /// Resolves a persistent id `('storage', torch.<T>Storage, key, location, numel[, view])`.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let Value::Tuple(pid) = pid else {
            return Err(self.malformed(format!("persistent id is {}, expected a tuple", pid.describe())));
        };
        match pid.items.as_slice() {
            // Whole-module saves record the module source; not a tensor, nothing to load.
            [Value::Str(tag), ..] if &**tag == "module" => Ok(Value::Opaque("module source".into())),
            [Value::Str(tag), Value::Global(class), key, _location, Value::Int(numel), rest @ ..]
                if &**tag == "storage" && rest.len() <= 1 =>
            {
                let dtype = (class.module == "torch" || class.module == "torch.cuda")
                    .then(|| DType::from_storage_class(&class.name))
                    .flatten()
                    .ok_or_else(|| {
                        self.malformed(format!("unsupported storage type {}.{}", class.module, class.name))
                    })?;
                let key = match key {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    other => {
                        return Err(
                            self.malformed(format!("storage key is {}, expected a string", other.describe()))
                        )
                    }
                };
                let numel = self.to_usize(&Value::Int(*numel), "storage size")?;
                let view = match rest.first() {
                    None | Some(Value::None) => None,
                    // Legacy storage views: (view key, element offset, element count).
                    Some(Value::Tuple(v)) => match v.items.as_slice() {
                        [_, offset, len] => Some((
                            self.to_usize(offset, "storage view offset")?,
                            self.to_usize(len, "storage view size")?,
                        )),
                        _ => return Err(self.malformed("storage view is not a 3-tuple")),
                    },
                    Some(other) => {
                        return Err(
                            self.malformed(format!("storage view is {}, expected a tuple", other.describe()))
                        )
                    }
                };
                match self.storage_dtypes.insert(key.clone(), dtype) {
                    Some(prev) if prev != dtype => {
                        return Err(self
                            .malformed(format!("storage {key:?} is used both as {prev:?} and as {dtype:?}")))
                    }
                    _ => {}
                }
                Ok(Value::Storage(Rc::new(StorageRef { key, dtype, numel, view })))
            }
            _ => Err(self.malformed(format!("unrecognized persistent id of {} fields", pid.items.len()))),
        }
    }

    /// `REDUCE`: calls the handful of globals torch.save uses; anything else becomes opaque.
    fn call(&mut self, callable: &Value, args: &Value) -> Result<Value> {
        let Value::Global(g) = callable else {
            return Ok(Value::Opaque(format!("the result of calling {}", callable.describe()).into()));
        };
        let Value::Tuple(args) = args else {
            return Err(self.malformed(format!(
                "arguments of {}.{} are {}, expected a tuple",
                g.module,
                g.name,
                args.describe()
            )));
        };
        let args = args.items.as_slice();
        match (g.module.as_str(), g.name.as_str()) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") if args.is_empty() => {
                Ok(self.heap.new_dict())
            }
            // v2 (PyTorch >= 0.4) appends requires_grad, backward hooks and, in newer versions,
            // metadata; v1 (PyTorch 0.3) has only the first four arguments.
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => self.rebuild_tensor(args),
            // An `nn.Parameter` wraps the tensor it rebuilds first.
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.malformed("_rebuild_parameter without a tensor")),
            },
            // Tensor subclasses: `_rebuild_from_type_v2(func, type, args, state)` calls func.
            // Recursion is bounded by the tuple nesting limit: each level unwraps one tuple.
            ("torch._tensor", "_rebuild_from_type_v2") => match args {
                [func, _type, inner, ..] => self.call(func, inner),
                _ => Err(self.malformed("_rebuild_from_type_v2 with too few arguments")),
            },
            (module, name) => Ok(Value::Opaque(format!("an object built by {module}.{name}").into())),
        }
    }

    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value> {
        let [Value::Storage(storage), offset, Value::Tuple(shape), Value::Tuple(stride), ..] = args else {
            return Err(
                self.malformed("tensor rebuild expects (storage, offset, size tuple, stride tuple, ...)")
            );
        };
        let offset = self.to_usize(offset, "storage offset")?;
        let shape = self.usizes(&shape.items, "tensor size")?;
        let stride = self.usizes(&stride.items, "tensor stride")?;
        if shape.len() != stride.len() {
            return Err(
                self.malformed(format!("tensor size {shape:?} and stride {stride:?} differ in length"))
            );
        }
        Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), offset, shape, stride })))
    }

    fn to_usize(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i)
                .map_err(|_| self.malformed(format!("{what} {i} is negative or too large"))),
            other => Err(self.malformed(format!("{what} is {}, expected an integer", other.describe()))),
        }
    }

    fn usizes(&self, items: &[Value], what: &str) -> Result<Vec<usize>> {
        items.iter().map(|v| self.to_usize(v, what)).collect()
    }
}

/// Decodes a `LONG1`/`LONG4` operand (little-endian two's complement).
fn long_value(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.into());
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut wide = if negative { [0xff; 8] } else { [0; 8] };
    wide[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(wide))
}
