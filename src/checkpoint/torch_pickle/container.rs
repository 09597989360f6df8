//! The two `torch.save` containers (zip and legacy), and the step from the pickled tensors they
//! name to gathered [`RawTensor`]s.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::rc::Rc;

use zip::ZipArchive;

use super::unpickler::{Heap, Machine, TensorRef, Value};
use super::{PickleError, RawTensor, Result};

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
    /// What deflated entries may still inflate to ([`inflation_budget`]).
    budget: u64,
}

impl StorageSource for ZipStorages<'_> {
    fn storage(&mut self, key: &str) -> Result<&[u8]> {
        if !self.loaded.contains_key(key) {
            let name = format!("{}data/{key}", self.prefix);
            let bytes =
                read_zip_entry_within(&mut self.archive, &name, &mut self.budget)?.ok_or_else(|| {
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
#[cfg(test)]
pub(super) fn read_zip_entry(archive: &mut ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Option<Vec<u8>>> {
    let len = archive.clone().into_inner().into_inner().len() as u64;
    read_zip_entry_within(archive, name, &mut inflation_budget(len))
}

/// How many bytes the entries of an archive of `len` bytes may inflate to in all. torch.save
/// stores its records uncompressed (their bytes are the file's); a deflated entry (a re-zipped
/// checkpoint) may expand at most 16-fold overall, so a small file cannot ask for gigabytes.
pub(super) fn inflation_budget(len: u64) -> u64 {
    len.saturating_mul(16).max(64 << 20)
}

/// An entry's bytes, refused before inflating when its declared size is over what `budget` has
/// left, and cut off (as corrupt) where it produces more than it declared.
pub(super) fn read_zip_entry_within(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    name: &str,
    budget: &mut u64,
) -> Result<Option<Vec<u8>>> {
    let file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(PickleError::Corrupt(format!("zip entry {name:?}: {e}"))),
    };
    let declared = file.size();
    if file.compression() != zip::CompressionMethod::Stored {
        if declared > *budget {
            return Err(PickleError::Unsupported(format!(
                "zip entry {name:?} inflates to {declared} bytes, past what the file may expand to \
                 (16 times its size, at least 64 MiB; torch.save does not compress its records)"
            )));
        }
        *budget -= declared;
    }
    // No pre-allocation from the declared size: the buffer grows only with bytes actually
    // produced, and never past what the entry declares.
    let mut bytes = Vec::new();
    file.take(declared.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| PickleError::Corrupt(format!("zip entry {name:?}: {e}")))?;
    if bytes.len() as u64 > declared {
        return Err(PickleError::Corrupt(format!(
            "zip entry {name:?} holds more than its declared {declared} bytes"
        )));
    }
    Ok(Some(bytes))
}

pub(super) fn read_zip(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    let mut budget = inflation_budget(bytes.len() as u64);
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

    if let Some(order) = read_zip_entry_within(&mut archive, &format!("{prefix}byteorder"), &mut budget)? {
        if order.trim_ascii() != b"little" {
            return Err(PickleError::Unsupported(format!(
                "storages are in {:?} byte order; only little-endian files are supported",
                String::from_utf8_lossy(&order)
            )));
        }
    }

    let pkl = read_zip_entry_within(&mut archive, &pkl_name, &mut budget)?.unwrap_or_default();
    let mut machine = Machine::new(&pkl, 0, "data.pkl");
    let root = machine.run()?;
    let entries = select_state_dict(&root, &machine.heap)?;
    let mut source = ZipStorages { archive, prefix, loaded: HashMap::new(), budget };
    materialize(entries, &mut source)
}

/// The legacy container's first pickle: protocol 2, `LONG1` of 10 bytes holding the magic
/// number 0x1950a86a20f9469cfc6c, `STOP`.
pub(super) const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The only legacy protocol version torch ever wrote.
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

pub(super) fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
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
