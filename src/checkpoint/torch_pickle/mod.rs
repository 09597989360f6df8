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
//!
//! Layout: `container` reads the two containers and turns the pickled tensors into
//! [`RawTensor`]s, `unpickler` is the pickle stack machine, `writer` writes the zip container.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

mod container;
#[cfg(test)]
mod tests;
mod unpickler;
mod writer;

use container::{read_legacy, read_zip};
use unpickler::opcode;
pub use writer::{state_dict_bytes, write_state_dict};

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
    /// Number of elements (1 for a scalar, whose shape is empty); 0 when any dimension is, however
    /// large the others (a shape like `[2^59, 4, 7, 0]` must not overflow), else saturating.
    pub fn numel(&self) -> usize {
        if self.shape.contains(&0) {
            return 0;
        }
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
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
