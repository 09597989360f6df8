//! Reader and writer for PyTorch `torch.save` state-dict files, in pure Rust.
//!
//! The reference StarGAN saves its weights with `torch.save(model.state_dict(), path)`: a pickled
//! `collections.OrderedDict` mapping parameter names to tensors. Each tensor is pickled as a call
//! `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)`
//! whose `storage` is a *persistent id* `('storage', torch.FloatStorage, key, location, numel)`:
//! the pickle names the storage, and the container holds its raw little-endian bytes elsewhere.
//! libtorch's own loader cannot read these files (see `shared/notes/reference-checkpoints.md`),
//! so this module interprets the pickle itself, with a small stack machine that knows the opcodes
//! `torch.save` emits and treats every unknown global as an opaque value.
//!
//! Two containers exist, told apart by their first bytes (never by the file extension):
//!
//! * **zip** (PyTorch >= 1.6, the default since): an uncompressed zip archive whose entries share
//!   one folder prefix, the archive name (torch uses the file stem, e.g. `0-G/`, or `archive/`):
//!   `data.pkl` (the pickle), `data/<key>` (one record of raw bytes per storage), `version`, and in
//!   newer files `byteorder`, `.format_version`, `.storage_alignment`, `.data/serialization_id`.
//!   torch pads the local headers so that every record starts at a 64-byte aligned offset.
//! * **legacy** (PyTorch < 1.6, so the published 2018 pretrained StarGAN checkpoints): a plain
//!   byte stream of five pickles and a blob: the magic number, the protocol version (1001), a
//!   `sys_info` dict (endianness, type sizes), the main pickle, a list of storage keys, then for
//!   each key in that order the storage as an 8-byte little-endian element count followed by its
//!   raw bytes. Very old files may use `torch._utils._rebuild_tensor` (no `requires_grad`) and a
//!   sixth persistent-id field describing a view into a larger storage; both are understood.
//!
//! [`read_state_dict`] returns the tensors of the dict at the top level of the file, or of the
//! dict under its `state_dict` key (a common training-checkpoint layout), in file order, each
//! gathered into a C-contiguous buffer. [`write_state_dict`] writes the zip container the way
//! PyTorch 2.x `torch.save` writes an `OrderedDict` of contiguous CPU tensors (the pickle is
//! byte-identical to torch's apart from the `_metadata` attribute, which torch does not need).
//!
//! Robustness: the input is untrusted. Every length, offset and stride read from a file is
//! checked before use, allocations are bounded by the input size, and malformed input yields a
//! [`PickleError`], never a panic.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::rng::Fnv1a;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// Element type of a tensor, as named by the pickled storage class (`torch.FloatStorage`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The storage class torch pickles for this element type (in module `torch`).
    fn storage_class(self) -> &'static str {
        match self {
            DType::F64 => "DoubleStorage",
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    fn from_storage_class(name: &str) -> Option<DType> {
        const ALL: [DType; 10] = [
            DType::F64,
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U8,
            DType::Bool,
        ];
        // `UntypedStorage` (torch >= 2.0 saving a bare untyped storage) holds bytes.
        if name == "UntypedStorage" {
            return Some(DType::U8);
        }
        ALL.into_iter().find(|d| d.storage_class() == name)
    }
}

/// A tensor's raw contents: `data` holds `shape.iter().product()` elements of `dtype`,
/// C-contiguous (row-major), little-endian, already gathered from its storage.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (1 for a scalar, whose shape is empty).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a PyTorch checkpoint: {0}")]
    NotACheckpoint(String),
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    #[error("truncated checkpoint: {stream} ends at byte {pos} while reading {what}")]
    Truncated { stream: &'static str, pos: usize, what: &'static str },
    #[error(
        "unsupported pickle opcode 0x{opcode:02x} at byte {pos} of {stream} \
         (only the opcodes torch.save emits are understood)"
    )]
    UnsupportedOpcode { opcode: u8, pos: usize, stream: &'static str },
    #[error("malformed pickle at byte {pos} of {stream}: {msg}")]
    Malformed { pos: usize, stream: &'static str, msg: String },
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    #[error("no state dict in checkpoint: {0}")]
    NoStateDict(String),
    #[error("tensor {name:?}: {msg}")]
    InvalidTensor { name: String, msg: String },
}

type Result<T> = std::result::Result<T, PickleError>;

/// Reads the state dict saved by `torch.save` at `path` (zip or legacy container).
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, RawTensor)>> {
    let bytes = fs::read(path).map_err(|source| PickleError::Io { path: path.to_path_buf(), source })?;
    read_state_dict_bytes(&bytes)
}

/// Reads a state dict from the bytes of a `torch.save` file (zip or legacy container).
pub fn read_state_dict_bytes(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes)
    } else if bytes.first() == Some(&opcode::PROTO) {
        read_legacy(bytes)
    } else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(PickleError::NotACheckpoint(format!(
            "the file starts with bytes [{}], but torch.save writes a zip archive (PyTorch >= 1.6) \
             or a pickle stream (older PyTorch)",
            head.join(" ")
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------

/// Where the raw bytes of each storage key come from.
trait StorageSource {
    /// The whole storage `key` (all of its bytes, before any view or offset is applied).
    fn storage(&mut self, key: &str) -> Result<&[u8]>;
}

/// Storages of a zip container: records `<prefix>data/<key>`, read on first use.
struct ZipStorages<'a> {
    archive: ZipArchive<Cursor<&'a [u8]>>,
    prefix: String,
    loaded: HashMap<String, Vec<u8>>,
}

impl StorageSource for ZipStorages<'_> {
    fn storage(&mut self, key: &str) -> Result<&[u8]> {
        if !self.loaded.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let bytes = read_zip_entry(&mut self.archive, &name)?.ok_or_else(|| {
                PickleError::Corrupt(format!("the archive lacks the storage record {name:?}"))
            })?;
            self.loaded.insert(key.to_owned(), bytes);
        }
        Ok(self.loaded.get(key).map(Vec::as_slice).unwrap_or_default())
    }
}

/// Storages of a legacy container: slices of the input, located while parsing its tail.
struct LegacyStorages<'a> {
    storages: HashMap<String, &'a [u8]>,
}

impl StorageSource for LegacyStorages<'_> {
    fn storage(&mut self, key: &str) -> Result<&[u8]> {
        self.storages.get(key).copied().ok_or_else(|| {
            PickleError::Corrupt(format!(
                "storage {key:?} is used by the pickle but absent from the data section"
            ))
        })
    }
}

/// Reads a whole zip entry, or `None` when the archive has no entry of that name.
fn read_zip_entry(archive: &mut ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Option<Vec<u8>>> {
    let mut file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(PickleError::Corrupt(format!("zip entry {name:?}: {e}"))),
    };
    // No pre-allocation from the declared size: the buffer grows only with bytes actually
    // produced, so a lying header cannot make us allocate more than the entry really holds
    // (stored entries are bounded by the file; deflated ones by deflate's ~1:1032 ratio).
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| PickleError::Corrupt(format!("zip entry {name:?}: {e}")))?;
    Ok(Some(bytes))
}

fn read_zip(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| PickleError::Corrupt(format!("unreadable zip archive: {e}")))?;
    // torch looks for exactly one folder level: `<archive name>/data.pkl`.
    let pkl_name = archive
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_owned)
        .ok_or_else(|| {
            PickleError::NotACheckpoint(
                "a zip archive without `<name>/data.pkl` (a TorchScript archive, or not written \
                 by torch.save)"
                    .into(),
            )
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();

    if let Some(order) = read_zip_entry(&mut archive, &format!("{prefix}byteorder"))? {
        if order.trim_ascii() != b"little" {
            return Err(PickleError::Unsupported(format!(
                "storages are in {:?} byte order; only little-endian files are supported",
                String::from_utf8_lossy(&order)
            )));
        }
    }

    let pkl = read_zip_entry(&mut archive, &pkl_name)?.unwrap_or_default();
    let mut machine = Machine::new(&pkl, 0, "data.pkl");
    let root = machine.run()?;
    let entries = select_state_dict(&root, &machine.heap)?;
    let mut source = ZipStorages { archive, prefix, loaded: HashMap::new() };
    materialize(entries, &mut source)
}

/// The legacy container's first pickle: protocol 2, `LONG1` of 10 bytes holding the magic
/// number 0x1950a86a20f9469cfc6c, `STOP`.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The only legacy protocol version torch ever wrote.
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    let not_torch = || {
        PickleError::NotACheckpoint(
            "a pickle stream that does not start with torch.save's magic number".into(),
        )
    };
    // The magic number is an integer wider than 64 bits, kept as raw little-endian bytes.
    let mut magic = Machine::new(bytes, 0, "legacy header");
    match magic.run() {
        Ok(Value::BigInt(b)) if *b == LEGACY_MAGIC => {}
        Err(e @ PickleError::Truncated { .. }) => return Err(e),
        _ => return Err(not_torch()),
    }
    let mut version = Machine::new(bytes, magic.pos, "legacy header");
    match version.run()? {
        Value::Int(LEGACY_PROTOCOL_VERSION) => {}
        other => {
            return Err(PickleError::Unsupported(format!(
                "legacy protocol version {}, expected {LEGACY_PROTOCOL_VERSION}",
                other.describe()
            )))
        }
    }
    let mut sys_info = Machine::new(bytes, version.pos, "legacy header");
    if let Value::Dict(id) = sys_info.run()? {
        if let Some(Value::Bool(false)) = sys_info.heap.dict(id).get_str("little_endian") {
            return Err(PickleError::Unsupported("the file was written on a big-endian machine".into()));
        }
    }

    let mut main = Machine::new(bytes, sys_info.pos, "legacy pickle");
    let root = main.run()?;
    let entries = select_state_dict(&root, &main.heap)?;

    let mut keys = Machine::new(bytes, main.pos, "legacy storage list");
    let key_list = match keys.run()? {
        Value::List(id) => keys.heap.list(id).to_vec(),
        other => {
            return Err(PickleError::Corrupt(format!(
                "expected the list of storage keys after the main pickle, got {}",
                other.describe()
            )))
        }
    };

    // Each storage: u64 element count, then count * element size bytes. The element size
    // comes from the storage class the main pickle named for that key.
    let mut pos = keys.pos;
    let mut storages = HashMap::new();
    for key in key_list {
        let Value::Str(key) = key else {
            return Err(PickleError::Corrupt(format!("storage key {} is not a string", key.describe())));
        };
        let dtype = *main
            .storage_dtypes
            .get(&*key)
            .ok_or_else(|| PickleError::Corrupt(format!("storage {key:?} is listed but never used")))?;
        let count = bytes.get(pos..pos + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).ok_or(
            PickleError::Truncated {
                stream: "legacy data section",
                pos: bytes.len(),
                what: "a storage size",
            },
        )?;
        pos += 8;
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .filter(|&len| len <= bytes.len() - pos)
            .ok_or(PickleError::Truncated {
                stream: "legacy data section",
                pos: bytes.len(),
                what: "storage bytes",
            })?;
        storages.insert(key.to_string(), &bytes[pos..pos + len]);
        pos += len;
    }
    materialize(entries, &mut LegacyStorages { storages })
}

// ---------------------------------------------------------------------------------------------
// From pickled values to tensors
// ---------------------------------------------------------------------------------------------

/// Picks the name -> tensor entries: the top-level dict, or the dict under its `state_dict` key.
/// Entries whose value is not a tensor (e.g. `epoch`) are skipped.
fn select_state_dict(root: &Value, heap: &Heap) -> Result<Vec<(String, Rc<TensorRef>)>> {
    let Value::Dict(id) = root else {
        return Err(PickleError::NoStateDict(format!(
            "the saved object is {}, not a dict of tensors",
            root.describe()
        )));
    };
    let mut dict = heap.dict(*id);
    if let Some(Value::Dict(inner)) = dict.get_str("state_dict") {
        dict = heap.dict(*inner);
    }
    let tensors: Vec<_> = dict
        .items
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Some((k.to_string(), t.clone())),
            _ => None,
        })
        .collect();
    if tensors.is_empty() && !dict.items.is_empty() {
        let keys: Vec<String> = dict.items.iter().take(8).map(|(k, _)| k.describe()).collect();
        return Err(PickleError::NoStateDict(format!(
            "the saved dict holds no tensors (keys: {}{})",
            keys.join(", "),
            if dict.items.len() > 8 { ", ..." } else { "" }
        )));
    }
    Ok(tensors)
}

/// Gathered tensor data may exceed the stored bytes (shared storages, stride-0 expansions) but
/// only by this factor (plus [`EXPANSION_SLACK`]), so a crafted file cannot make us allocate
/// far more than it holds.
const MAX_EXPANSION: usize = 8;
const EXPANSION_SLACK: usize = 1 << 20;

fn materialize(
    entries: Vec<(String, Rc<TensorRef>)>,
    source: &mut dyn StorageSource,
) -> Result<Vec<(String, RawTensor)>> {
    let mut counted = std::collections::HashSet::new();
    let mut stored_bytes = 0usize;
    let mut out_bytes = 0usize;
    let mut out = Vec::with_capacity(entries.len());
    for (name, tensor) in entries {
        let storage = source.storage(&tensor.storage.key)?;
        if counted.insert(tensor.storage.key.clone()) {
            stored_bytes = stored_bytes.saturating_add(storage.len());
        }
        let budget = stored_bytes
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(EXPANSION_SLACK)
            .saturating_sub(out_bytes);
        let raw = gather(&name, &tensor, storage, budget)?;
        out_bytes += raw.data.len();
        out.push((name, raw));
    }
    Ok(out)
}

/// Copies the elements a (size, stride, offset) view selects from `storage` into a
/// C-contiguous buffer, checking first that every selected element lies inside the storage
/// and that the result fits in `max_bytes`.
fn gather(name: &str, t: &TensorRef, storage: &[u8], max_bytes: usize) -> Result<RawTensor> {
    let invalid = |msg: String| PickleError::InvalidTensor { name: name.to_owned(), msg };
    let s = &t.storage;
    let esize = s.dtype.size();
    if !storage.len().is_multiple_of(esize) || storage.len() / esize != s.numel {
        return Err(PickleError::Corrupt(format!(
            "storage {:?} holds {} bytes, but the pickle declares {} elements of {:?} ({} bytes each)",
            s.key,
            storage.len(),
            s.numel,
            s.dtype,
            esize
        )));
    }
    // A legacy view exposes only a window of its root storage.
    let storage = match s.view {
        None => storage,
        Some((offset, len)) => offset
            .checked_add(len)
            .and_then(|end| storage.get(offset.checked_mul(esize)?..end.checked_mul(esize)?))
            .ok_or_else(|| {
                invalid(format!(
                    "storage view [{offset}, +{len}) exceeds its storage of {} elements",
                    s.numel
                ))
            })?,
    };
    let avail = storage.len() / esize;

    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| n.checked_mul(esize).is_some())
        .ok_or_else(|| invalid(format!("shape {:?} is too large", t.shape)))?;
    if numel * esize > max_bytes {
        return Err(invalid(format!(
            "size {:?} with stride {:?} expands its storage more than {MAX_EXPANSION}-fold; \
             refusing to allocate {} bytes",
            t.shape,
            t.stride,
            numel * esize
        )));
    }
    if numel == 0 {
        return Ok(RawTensor { dtype: s.dtype, shape: t.shape.clone(), data: Vec::new() });
    }
    // The largest element index the view touches; strides are non-negative.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &st)| acc.checked_add((d - 1).checked_mul(st)?))
        .filter(|&last| last < avail)
        .ok_or_else(|| {
            invalid(format!(
                "offset {} with size {:?} and stride {:?} reaches past its storage of {avail} \
                 elements",
                t.offset, t.shape, t.stride
            ))
        })?;

    let out_of_range = || invalid(format!("element index out of storage (last {last})"));
    let data = if is_contiguous(&t.shape, &t.stride) {
        storage.get(t.offset * esize..(t.offset + numel) * esize).ok_or_else(out_of_range)?.to_vec()
    } else {
        // Walk the view in row-major order with an odometer over the indices. `src` only ever
        // moves between in-range element positions, so it cannot overflow.
        let mut data = Vec::with_capacity(numel * esize);
        let mut index = vec![0usize; t.shape.len()];
        let mut src = t.offset;
        for _ in 0..numel {
            data.extend_from_slice(storage.get(src * esize..(src + 1) * esize).ok_or_else(out_of_range)?);
            for d in (0..t.shape.len()).rev() {
                if index[d] + 1 < t.shape[d] {
                    index[d] += 1;
                    src += t.stride[d];
                    break;
                }
                src -= index[d] * t.stride[d];
                index[d] = 0;
            }
        }
        data
    };
    Ok(RawTensor { dtype: s.dtype, shape: t.shape.clone(), data })
}

/// Row-major contiguity; dimensions of size 1 may carry any stride.
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &st) in shape.iter().zip(stride).rev() {
        if d != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The pickle machine
// ---------------------------------------------------------------------------------------------

/// Pickle opcodes (see CPython's `Lib/pickletools.py`).
mod opcode {
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
enum Value {
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
struct Tuple {
    items: Vec<Value>,
    depth: u32,
}

#[derive(Debug)]
struct Global {
    module: String,
    name: String,
}

/// A storage named by a persistent id; its bytes live in the container.
#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: DType,
    /// Element count of the whole storage, as the pickle declares it.
    numel: usize,
    /// Legacy files only: the (element offset, element count) window of a storage view.
    view: Option<(usize, usize)>,
}

#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl Value {
    /// Short description for error messages.
    fn describe(&self) -> String {
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
struct DictObj {
    /// Insertion order is kept: it is the order of the state dict.
    items: Vec<(Value, Value)>,
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

    fn get_str(&self, key: &str) -> Option<&Value> {
        self.str_index.get(key).map(|&i| &self.items[i].1)
    }
}

/// Storage for the mutable containers of one pickle. Ids are only ever created by `new_*`, so
/// indexing with an id from the same machine cannot fail.
#[derive(Debug, Default)]
struct Heap {
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

    fn list(&self, id: usize) -> &[Value] {
        &self.lists[id]
    }

    fn dict(&self, id: usize) -> &DictObj {
        &self.dicts[id]
    }
}

/// Runs one pickle, from `pos` up to and including its `STOP`.
struct Machine<'a> {
    data: &'a [u8],
    /// Next byte to read; after [`Machine::run`], the first byte after `STOP`.
    pos: usize,
    /// Start of the opcode being executed, for error messages.
    op_pos: usize,
    stream: &'static str,
    stack: Vec<Value>,
    /// Stack heights at each open `MARK`. Like CPython, values below the innermost mark are
    /// out of reach until the mark is consumed.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Heap,
    /// Element type of every storage key seen, to size the legacy data section.
    storage_dtypes: HashMap<String, DType>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], pos: usize, stream: &'static str) -> Self {
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

    fn run(&mut self) -> Result<Value> {
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

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes `tensors` as `torch.save(OrderedDict(tensors), path)` of PyTorch 2.x would: the zip
/// container, uncompressed, each record 64-byte aligned. The archive folder is the file stem,
/// as torch names it. The file is written under a temporary name in the same folder, synced,
/// then renamed over `path`, so a crash never leaves a half-written checkpoint behind.
/// The bytes [`write_state_dict`] writes, for a file whose stem is `archive_name`.
pub fn state_dict_bytes(archive_name: &str, tensors: &[(String, RawTensor)]) -> Result<Vec<u8>> {
    validate_for_writing(tensors)?;
    let cursor = write_archive(Cursor::new(Vec::new()), archive_name, tensors)
        .map_err(|e| PickleError::Io { path: PathBuf::from(archive_name), source: io::Error::other(e) })?;
    Ok(cursor.into_inner())
}

pub fn write_state_dict(path: &Path, tensors: &[(String, RawTensor)]) -> Result<()> {
    validate_for_writing(tensors)?;
    let io_err = |source: io::Error| PickleError::Io { path: path.to_path_buf(), source };
    let file_name = path.file_name().ok_or_else(|| {
        io_err(io::Error::new(io::ErrorKind::InvalidInput, "the checkpoint path has no file name"))
    })?;
    let archive_name =
        path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).unwrap_or("archive");
    let tmp = path.with_file_name(format!(".{}.tmp{}", file_name.to_string_lossy(), std::process::id()));

    let result = (|| -> io::Result<()> {
        let file = fs::File::create(&tmp)?;
        let writer = write_archive(BufWriter::new(file), archive_name, tensors).map_err(|e| match e {
            zip::result::ZipError::Io(e) => e,
            other => io::Error::other(other),
        })?;
        let file = writer.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // Best effort: the temporary file is garbage either way.
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    Ok(())
}

fn validate_for_writing(tensors: &[(String, RawTensor)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (name, t) in tensors {
        let invalid = |msg: String| PickleError::InvalidTensor { name: name.clone(), msg };
        if !seen.insert(name.as_str()) {
            return Err(invalid("the name occurs twice".into()));
        }
        if u32::try_from(name.len()).is_err() {
            return Err(invalid("the name is longer than a pickle string can be".into()));
        }
        let expected = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| invalid(format!("shape {:?} is too large", t.shape)))?;
        if t.data.len() != expected {
            return Err(invalid(format!(
                "shape {:?} of {:?} needs {expected} bytes, but data holds {}",
                t.shape,
                t.dtype,
                t.data.len()
            )));
        }
    }
    Ok(())
}

/// Lays out the zip archive in torch's record order.
fn write_archive<W: Write + Seek>(
    w: W,
    archive_name: &str,
    tensors: &[(String, RawTensor)],
) -> zip::result::ZipResult<W> {
    let mut zip = ZipWriter::new(w);
    let options = |len: usize| {
        SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            // torch aligns every record so that storages can be memory-mapped.
            .with_alignment(64)
            .large_file(len >= u32::MAX as usize)
    };
    let add = |zip: &mut ZipWriter<W>, name: &str, data: &[u8]| {
        zip.start_file(format!("{archive_name}/{name}"), options(data.len()))?;
        zip.write_all(data)?;
        zip::result::ZipResult::Ok(())
    };

    let pickle = pickle_state_dict(tensors);
    add(&mut zip, "data.pkl", &pickle)?;
    add(&mut zip, ".format_version", b"1")?;
    add(&mut zip, ".storage_alignment", b"64")?;
    add(&mut zip, "byteorder", b"little")?;
    for (i, (_, t)) in tensors.iter().enumerate() {
        add(&mut zip, &format!("data/{i}"), &t.data)?;
    }
    add(&mut zip, "version", b"3\n")?;
    // torch derives a 40-digit id from the record names and contents; any stable id serves.
    let mut names = Fnv1a::default();
    let mut contents = Fnv1a::default();
    names.write(archive_name.as_bytes());
    contents.write(&pickle);
    for (name, t) in tensors {
        names.write(name.as_bytes());
        contents.write(&t.data);
    }
    let id = format!("{:020}{:020}", names.0, contents.0);
    add(&mut zip, ".data/serialization_id", id.as_bytes())?;
    zip.finish()
}

/// Emits protocol-2 pickle opcodes with the memo behaviour of CPython's `pickle.Pickler`, so
/// the output matches torch.save byte for byte.
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    next_memo: u32,
}

impl Pickler {
    fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    /// Stores the value just written under the next memo index; returns that index.
    fn memoize(&mut self) -> u32 {
        let i = self.next_memo;
        match u8::try_from(i) {
            Ok(small) => self.out.extend([opcode::BINPUT, small]),
            Err(_) => {
                self.op(opcode::LONG_BINPUT);
                self.out.extend(i.to_le_bytes());
            }
        }
        self.next_memo += 1;
        i
    }

    fn get(&mut self, i: u32) {
        match u8::try_from(i) {
            Ok(small) => self.out.extend([opcode::BINGET, small]),
            Err(_) => {
                self.op(opcode::LONG_BINGET);
                self.out.extend(i.to_le_bytes());
            }
        }
    }

    /// Writes a global the first time, a memo reference afterwards.
    fn global(&mut self, memo: &mut Option<u32>, module: &str, name: &str) {
        match *memo {
            Some(i) => self.get(i),
            None => {
                self.op(opcode::GLOBAL);
                self.out.extend(format!("{module}\n{name}\n").bytes());
                *memo = Some(self.memoize());
            }
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        self.op(opcode::BINUNICODE);
        // `validate_for_writing` rejected longer names, so this never saturates.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.out.extend(len.to_le_bytes());
        self.out.extend(s.as_bytes());
        self.memoize()
    }

    /// A string that CPython's pickler sees as one shared object (an interned constant).
    fn shared_str(&mut self, memo: &mut Option<u32>, s: &str) {
        match *memo {
            Some(i) => self.get(i),
            None => *memo = Some(self.str(s)),
        }
    }

    /// A non-negative int, in the smallest encoding CPython's `save_long` picks.
    fn uint(&mut self, v: usize) {
        let v = v as u64;
        if let Ok(b) = u8::try_from(v) {
            self.out.extend([opcode::BININT1, b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.op(opcode::BININT2);
            self.out.extend(w.to_le_bytes());
        } else if let Ok(i) = i32::try_from(v) {
            self.op(opcode::BININT);
            self.out.extend(i.to_le_bytes());
        } else {
            // Two's complement, little-endian, one byte more than the magnitude needs, so that
            // the sign bit is clear (CPython's `encode_long`).
            let nbytes = (64 - v.leading_zeros() as usize) / 8 + 1;
            self.out.extend([opcode::LONG1, nbytes as u8]);
            self.out.extend(&u128::from(v).to_le_bytes()[..nbytes]);
        }
    }

    fn uint_tuple(&mut self, items: &[usize]) {
        match items.len() {
            // CPython writes the empty tuple as a constant, without memoizing it.
            0 => return self.op(opcode::EMPTY_TUPLE),
            1..=3 => {
                items.iter().for_each(|&v| self.uint(v));
                self.op([opcode::TUPLE1, opcode::TUPLE2, opcode::TUPLE3][items.len() - 1]);
            }
            _ => {
                self.op(opcode::MARK);
                items.iter().for_each(|&v| self.uint(v));
                self.op(opcode::TUPLE);
            }
        }
        self.memoize();
    }
}

/// Row-major strides of a contiguous tensor of `shape`. Like torch, a size-0 dimension counts
/// as 1, so the strides of an empty tensor are still distinct and positive.
fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1].saturating_mul(shape[d + 1].max(1));
    }
    strides
}

/// The `data.pkl` of `torch.save(OrderedDict(tensors))`; tensor `i` uses storage key `i`.
fn pickle_state_dict(tensors: &[(String, RawTensor)]) -> Vec<u8> {
    // CPython's pickler sets items in batches of this size.
    const BATCH: usize = 1000;
    let mut p = Pickler::default();
    let (mut rebuild, mut storage_tag, mut cpu) = (None, None, None);
    let mut storage_classes: HashMap<&'static str, u32> = HashMap::new();

    p.out.extend([opcode::PROTO, 2]);
    let mut ordered_dict = None;
    p.global(&mut ordered_dict, "collections", "OrderedDict");
    p.op(opcode::EMPTY_TUPLE);
    p.op(opcode::REDUCE);
    p.memoize();

    for (b, batch) in tensors.chunks(BATCH).enumerate() {
        if batch.len() > 1 {
            p.op(opcode::MARK);
        }
        for (i, (name, t)) in batch.iter().enumerate() {
            p.str(name);
            p.global(&mut rebuild, "torch._utils", "_rebuild_tensor_v2");
            p.op(opcode::MARK);
            // The persistent id ('storage', torch.<T>Storage, key, 'cpu', numel).
            p.op(opcode::MARK);
            p.shared_str(&mut storage_tag, "storage");
            let class = t.dtype.storage_class();
            let mut memo = storage_classes.get(class).copied();
            p.global(&mut memo, "torch", class);
            if let Some(i) = memo {
                storage_classes.insert(class, i);
            }
            p.str(&(b * BATCH + i).to_string());
            p.shared_str(&mut cpu, "cpu");
            p.uint(t.numel());
            p.op(opcode::TUPLE);
            p.memoize();
            p.op(opcode::BINPERSID);
            p.uint(0);
            p.uint_tuple(&t.shape);
            p.uint_tuple(&contiguous_strides(&t.shape));
            p.op(opcode::NEWFALSE);
            // backward_hooks: a fresh `OrderedDict()`.
            p.global(&mut ordered_dict, "collections", "OrderedDict");
            p.op(opcode::EMPTY_TUPLE);
            p.op(opcode::REDUCE);
            p.memoize();
            p.op(opcode::TUPLE);
            p.memoize();
            p.op(opcode::REDUCE);
            p.memoize();
        }
        p.op(if batch.len() > 1 { opcode::SETITEMS } else { opcode::SETITEM });
    }
    p.op(opcode::STOP);
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's checkpoints (`shared/parity`), overridable with `STARGAN_PARITY_DIR`.
    fn parity_dir() -> PathBuf {
        std::env::var_os("STARGAN_PARITY_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/parity")).into())
    }

    /// Tiny files written by real torch 2.13 (see `mixed_fixture_values` for their contents).
    fn fixture(name: &str) -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ckpt")).join(name)
    }

    /// A fresh, empty scratch folder for one test.
    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("torch_pickle_{test}_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    fn get<'a>(tensors: &'a [(String, RawTensor)], name: &str) -> &'a RawTensor {
        &tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).1
    }

    fn f32s(t: &RawTensor) -> Vec<f32> {
        assert_eq!(t.dtype, DType::F32);
        t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn i64s(t: &RawTensor) -> Vec<i64> {
        assert_eq!(t.dtype, DType::I64);
        t.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn ints(values: &[i64], dtype: DType) -> Vec<u8> {
        values.iter().flat_map(|&v| v.to_le_bytes()[..dtype.size()].to_vec()).collect()
    }

    /// A zip checkpoint with the given `data.pkl` and storage records.
    fn zip_ckpt(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pkl).unwrap();
        for (key, data) in storages {
            zip.start_file(format!("archive/data/{key}"), opts).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// `{'t': _rebuild_tensor_v2(storage('0', numel), offset, shape, stride, False, {})}`.
    fn tensor_pickle(
        dtype: DType,
        numel: usize,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> Vec<u8> {
        let mut p = Pickler::default();
        p.out.extend([opcode::PROTO, 2, opcode::EMPTY_DICT]);
        p.str("t");
        p.global(&mut None, "torch._utils", "_rebuild_tensor_v2");
        p.op(opcode::MARK);
        p.op(opcode::MARK);
        p.str("storage");
        p.global(&mut None, "torch", dtype.storage_class());
        p.str("0");
        p.str("cpu");
        p.uint(numel);
        p.op(opcode::TUPLE);
        p.op(opcode::BINPERSID);
        p.uint(offset);
        p.uint_tuple(shape);
        p.uint_tuple(stride);
        p.op(opcode::NEWFALSE);
        p.op(opcode::EMPTY_DICT);
        p.op(opcode::TUPLE);
        p.op(opcode::REDUCE);
        p.op(opcode::SETITEM);
        p.op(opcode::STOP);
        p.out
    }

    fn legacy_pickle(body: &[u8]) -> Vec<u8> {
        [&[opcode::PROTO, 2][..], body, &[opcode::STOP]].concat()
    }

    /// A legacy container around `main` (a complete pickle) with the given storages.
    fn legacy_ckpt(main: &[u8], storages: &[(&str, u64, &[u8])]) -> Vec<u8> {
        let mut out = legacy_pickle(&[&[opcode::LONG1, 10][..], &LEGACY_MAGIC].concat());
        out.extend(legacy_pickle(&[opcode::BININT2, 0xe9, 0x03])); // 1001
        out.extend(legacy_pickle(&[opcode::EMPTY_DICT]));
        out.extend(main);
        let mut keys = Pickler::default();
        keys.out.extend([opcode::PROTO, 2, opcode::EMPTY_LIST, opcode::MARK]);
        storages.iter().for_each(|(k, _, _)| {
            keys.str(k);
        });
        keys.out.extend([opcode::APPENDS, opcode::STOP]);
        out.extend(keys.out);
        for (_, count, data) in storages {
            out.extend(count.to_le_bytes());
            out.extend(*data);
        }
        out
    }

    #[test]
    fn reads_the_reference_checkpoints() {
        let dir = parity_dir();
        // (scenario, label size): G sees 3 + c input channels, D predicts c classes.
        for (scenario, c) in [("celeba", 5), ("rafd", 8), ("both", 15)] {
            let g = read_state_dict(&dir.join(scenario).join("0-G.ckpt")).unwrap();
            assert_eq!(g.len(), 55, "{scenario} G");
            assert_eq!(g[0].0, "main.0.weight");
            assert_eq!(g[0].1.shape, [8, 3 + c, 7, 7]);
            assert_eq!(get(&g, "main.17.weight").shape, [3, 8, 7, 7]);
            assert_eq!(get(&g, "main.9.main.0.weight").shape, [32, 32, 3, 3]);
            let tracked = get(&g, "main.1.num_batches_tracked");
            assert_eq!((tracked.dtype, tracked.shape.len()), (DType::I64, 0));
            assert_eq!(i64s(tracked), [0]);
            assert!(f32s(get(&g, "main.1.weight")).iter().all(|&w| w == 1.0));
            for (name, t) in &g {
                assert_eq!(t.data.len(), t.numel() * t.dtype.size(), "{name}");
            }

            let legacy = read_state_dict(&dir.join(scenario).join("0-G.legacy.ckpt")).unwrap();
            assert_eq!(legacy, g, "{scenario}: legacy and zip G differ");

            let d = read_state_dict(&dir.join(scenario).join("0-D.ckpt")).unwrap();
            let d_classes = if scenario == "both" { 13 } else { c };
            assert_eq!(d.len(), 12);
            assert_eq!(get(&d, "main.0.weight").shape, [8, 3, 4, 4]);
            assert_eq!(get(&d, "conv1.weight").shape, [1, 128, 3, 3]);
            assert_eq!(get(&d, "conv2.weight").shape, [d_classes, 128, 1, 1]);
        }
    }

    #[test]
    fn pickle_matches_torch_byte_for_byte() {
        // torch's data.pkl for the same dict, minus the trailing `_metadata` BUILD.
        let path = parity_dir().join("celeba/0-G.ckpt");
        let bytes = fs::read(&path).unwrap();
        let mut archive = ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
        let torch_pkl = read_zip_entry(&mut archive, "0-G/data.pkl").unwrap().unwrap();
        let ours = pickle_state_dict(&read_state_dict_bytes(&bytes).unwrap());
        let (body, stop) = ours.split_at(ours.len() - 1);
        assert_eq!(stop, [opcode::STOP]);
        assert_eq!(&torch_pkl[..body.len()], body);
        assert_eq!(torch_pkl[body.len()], opcode::EMPTY_DICT, "torch's _metadata state follows");
    }

    #[test]
    fn mixed_fixture_values() {
        // Written by torch.save({'state_dict': od, 'epoch': 3, ...}) in both containers, with
        // strided, offset, shared, expanded, scalar, empty and Parameter tensors of all dtypes.
        let zip = read_state_dict(&fixture("mixed.ckpt")).unwrap();
        let legacy = read_state_dict(&fixture("mixed.legacy.ckpt")).unwrap();
        assert_eq!(zip, legacy);
        let names: Vec<&str> = zip.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "transposed",
                "offset",
                "shared_a",
                "shared_b",
                "bool",
                "f16",
                "bf16",
                "i32",
                "i16",
                "i8",
                "u8",
                "scalar",
                "empty",
                "expanded",
                "param"
            ]
        );
        let t = |n| get(&zip, n);
        // arange(12).reshape(3, 4).t()
        assert_eq!(t("transposed").shape, [4, 3]);
        assert_eq!(f32s(t("transposed")), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        // arange(10, float64)[3:7]
        assert_eq!(t("offset").dtype, DType::F64);
        assert_eq!(
            t("offset").data,
            [3f64, 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()
        );
        assert_eq!(i64s(t("shared_a")), [0, 1, 2, 3]);
        assert_eq!(i64s(t("shared_b")), [1, 4]);
        assert_eq!((t("bool").dtype, &t("bool").data[..]), (DType::Bool, &[1, 0, 1][..]));
        // 1.5, -2.0, 65504.0 as IEEE half; 1.5, -2.0 as bfloat16.
        assert_eq!(t("f16").data, [0x00, 0x3e, 0x00, 0xc0, 0xff, 0x7b]);
        assert_eq!(t("bf16").data, [0xc0, 0x3f, 0x00, 0xc0]);
        assert_eq!(t("i32").data, ints(&[-1, i32::MAX.into()], DType::I32));
        assert_eq!(t("i16").data, ints(&[-3, 300], DType::I16));
        assert_eq!(t("i8").data, ints(&[-4, 5], DType::I8));
        assert_eq!(t("u8").data, [250, 7]);
        assert_eq!((t("scalar").shape.len(), f32s(t("scalar"))), (0, vec![3.25]));
        assert_eq!((&t("empty").shape[..], t("empty").data.len()), (&[0, 3][..], 0));
        assert_eq!(f32s(t("expanded")), [0., 1., 2., 0., 1., 2.]);
        assert_eq!(f32s(t("param")), [1., 1.]);
    }

    #[test]
    fn writer_round_trip() {
        let dir = scratch_dir("round_trip");
        let mut tensors: Vec<(String, RawTensor)> = read_state_dict(&fixture("mixed.ckpt")).unwrap();
        tensors.push((
            "big.i64".into(),
            RawTensor {
                dtype: DType::I64,
                shape: vec![70_000],
                data: ints(&(0..70_000).collect::<Vec<_>>(), DType::I64),
            },
        ));
        let path = dir.join("5-G.ckpt");
        write_state_dict(&path, &tensors).unwrap();
        assert_eq!(read_state_dict(&path).unwrap(), tensors);
        // Overwriting goes through a temporary file that does not linger.
        write_state_dict(&path, &tensors[..2]).unwrap();
        assert_eq!(read_state_dict(&path).unwrap(), &tensors[..2]);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["5-G.ckpt"]);

        // torch's layout: archive folder named after the file stem, every record 64-byte aligned.
        write_state_dict(&path, &tensors).unwrap();
        let mut archive = ZipArchive::new(fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
        assert_eq!(
            &names[..5],
            ["5-G/data.pkl", "5-G/.format_version", "5-G/.storage_alignment", "5-G/byteorder", "5-G/data/0"]
        );
        assert_eq!(&names[names.len() - 2..], ["5-G/version", "5-G/.data/serialization_id"]);
        for i in 0..archive.len() {
            let file = archive.by_index(i).unwrap();
            assert_eq!(file.compression(), CompressionMethod::Stored);
            assert_eq!(file.data_start() % 64, 0, "{}", file.name());
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn writer_rejects_inconsistent_tensors() {
        let dir = scratch_dir("writer_rejects");
        let t = RawTensor { dtype: DType::F32, shape: vec![2, 3], data: vec![0; 20] };
        let err = write_state_dict(&dir.join("x.ckpt"), &[("w".into(), t.clone())]).unwrap_err();
        assert!(matches!(err, PickleError::InvalidTensor { .. }), "{err}");
        let ok = RawTensor { data: vec![0; 24], ..t };
        let twice = [("w".into(), ok.clone()), ("w".into(), ok)];
        assert!(write_state_dict(&dir.join("x.ckpt"), &twice).is_err());
        assert!(!dir.join("x.ckpt").exists());
        let missing_dir = dir.join("no/such/dir/x.ckpt");
        let err = write_state_dict(&missing_dir, &[]).unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn legacy_v1_tensors_and_storage_views() {
        // PyTorch 0.3 style: `_rebuild_tensor(storage, offset, size, stride)`, a Python 2 key
        // (BINSTRING), and a persistent id viewing elements [2, 5) of root storage "root".
        let mut p = Pickler::default();
        p.out.extend([opcode::PROTO, 2]);
        p.global(&mut None, "collections", "OrderedDict");
        p.out.extend([opcode::EMPTY_TUPLE, opcode::REDUCE]);
        p.out.extend([opcode::SHORT_BINSTRING, 1, b'w']);
        p.global(&mut None, "torch._utils", "_rebuild_tensor");
        p.op(opcode::MARK);
        p.op(opcode::MARK);
        p.str("storage");
        p.global(&mut None, "torch.cuda", "FloatStorage");
        p.str("root");
        p.str("cuda:0");
        p.uint(6);
        p.str("view");
        p.uint(2);
        p.uint(3);
        p.op(opcode::TUPLE3);
        p.op(opcode::TUPLE);
        p.op(opcode::BINPERSID);
        p.uint(1);
        p.uint_tuple(&[2]);
        p.uint_tuple(&[1]);
        p.op(opcode::TUPLE);
        p.op(opcode::REDUCE);
        p.op(opcode::SETITEM);
        p.op(opcode::STOP);
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let file = legacy_ckpt(&p.out, &[("root", 6, &data)]);
        let tensors = read_state_dict_bytes(&file).unwrap();
        assert_eq!(tensors.len(), 1);
        assert_eq!(tensors[0].0, "w");
        assert_eq!(f32s(&tensors[0].1), [3., 4.]);
    }

    #[test]
    fn rejects_what_is_not_a_checkpoint() {
        let not = |bytes: &[u8]| read_state_dict_bytes(bytes).unwrap_err();
        assert!(matches!(not(b""), PickleError::NotACheckpoint(_)));
        assert!(matches!(not(b"hello world"), PickleError::NotACheckpoint(_)));
        assert!(matches!(not(&legacy_pickle(&[opcode::BININT1, 1])), PickleError::NotACheckpoint(_)));
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("model/constants.pkl", SimpleFileOptions::default()).unwrap();
        let no_pickle = zip.finish().unwrap().into_inner();
        assert!(matches!(not(&no_pickle), PickleError::NotACheckpoint(_)));
        // A pickle of something other than a dict of tensors.
        let list = zip_ckpt(&legacy_pickle(&[opcode::EMPTY_LIST]), &[]);
        assert!(matches!(not(&list), PickleError::NoStateDict(_)));
        let err = read_state_dict(Path::new("/nonexistent/x.ckpt")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.ckpt"), "{err}");
    }

    #[test]
    fn unknown_opcode_names_byte_and_position() {
        // Protocol 0 `INT` is not something torch.save writes.
        let err = read_state_dict_bytes(&zip_ckpt(b"\x80\x02I1\n.", &[])).unwrap_err();
        assert!(matches!(err, PickleError::UnsupportedOpcode { opcode: b'I', pos: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("0x49 at byte 2"), "{err}");
    }

    #[test]
    fn rejects_views_outside_their_storage() {
        let f32s_data = vec![0u8; 6 * 4];
        let read = |numel, offset, shape: &[usize], stride: &[usize], data: &[u8]| {
            let pkl = tensor_pickle(DType::F32, numel, offset, shape, stride);
            read_state_dict_bytes(&zip_ckpt(&pkl, &[("0", data)]))
        };
        assert_eq!(read(6, 0, &[2, 3], &[3, 1], &f32s_data).unwrap()[0].1.numel(), 6);
        assert_eq!(read(6, 5, &[1], &[1], &f32s_data).unwrap()[0].1.numel(), 1);
        let invalid = |r: Result<Vec<(String, RawTensor)>>| {
            assert!(matches!(r, Err(PickleError::InvalidTensor { .. })), "{r:?}")
        };
        invalid(read(6, 1, &[2, 3], &[3, 1], &f32s_data)); // offset pushes the end out
        invalid(read(6, 0, &[2, 3], &[4, 1], &f32s_data)); // stride too large
        invalid(read(6, 6, &[1], &[1], &f32s_data)); // offset past the end
        invalid(read(6, 0, &[1 << 40, 1 << 30], &[0, 0], &f32s_data)); // numel overflows
        invalid(read(6, 0, &[1 << 20, 1 << 10], &[0, 1], &f32s_data)); // stride past the end
        invalid(read(6, 0, &[1 << 20, 1 << 10], &[0, 0], &f32s_data)); // huge stride-0 expansion
                                                                       // The storage record must hold exactly the declared elements.
        let short = read(6, 0, &[2], &[1], &f32s_data[..20]);
        assert!(matches!(short, Err(PickleError::Corrupt(_))), "{short:?}");
        let missing = read_state_dict_bytes(&zip_ckpt(&tensor_pickle(DType::F32, 6, 0, &[1], &[1]), &[]));
        assert!(matches!(missing, Err(PickleError::Corrupt(_))), "{missing:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut body = vec![opcode::EMPTY_TUPLE];
        body.extend(std::iter::repeat_n(opcode::TUPLE1, 1_000_000));
        let err = read_state_dict_bytes(&zip_ckpt(&legacy_pickle(&body), &[])).unwrap_err();
        assert!(matches!(err, PickleError::Malformed { .. }), "{err}");
    }

    #[test]
    fn truncated_files_fail_cleanly() {
        let mut files =
            vec![fs::read(fixture("mixed.ckpt")).unwrap(), fs::read(fixture("mixed.legacy.ckpt")).unwrap()];
        for name in ["celeba/0-G.ckpt", "celeba/0-G.legacy.ckpt"] {
            files.push(fs::read(parity_dir().join(name)).unwrap());
        }
        for bytes in &files {
            // Every cut of the small fixtures; ~500 spread over the big ones, pickle first.
            let step = (bytes.len() / 500).max(1);
            let cuts = (0..bytes.len()).step_by(step).chain(0..bytes.len().min(9000));
            for cut in cuts {
                assert!(read_state_dict_bytes(&bytes[..cut]).is_err(), "cut at {cut} of {}", bytes.len());
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let mut files =
            vec![fs::read(fixture("mixed.ckpt")).unwrap(), fs::read(fixture("mixed.legacy.ckpt")).unwrap()];
        let legacy_g = fs::read(parity_dir().join("celeba/0-G.legacy.ckpt")).unwrap();
        // The pickles of the big legacy file: everything before the first storage.
        files.push(legacy_g[..9000].to_vec());
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (f, bytes) in files.iter().enumerate() {
            for i in 0..bytes.len() {
                for flip in [0xff, 0x01, 0x80].into_iter().take(if f == 2 { 1 } else { 3 }) {
                    let mut bad = bytes.clone();
                    bad[i] ^= flip;
                    let _ = read_state_dict_bytes(&bad);
                }
            }
            // Several simultaneous random edits, splicing the big file's tail back on.
            for _ in 0..2000 {
                let mut bad = bytes.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % bad.len();
                    bad[i] = next() as u8;
                }
                if f == 2 {
                    bad.extend_from_slice(&legacy_g[9000..]);
                }
                let _ = read_state_dict_bytes(&bad);
            }
        }
    }
}
