//! Writing the zip container the way PyTorch 2.x `torch.save` writes an `OrderedDict` of
//! contiguous CPU tensors.

use std::collections::HashMap;

use std::io::{self, Cursor, Seek, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::unpickler::opcode;
use super::{PickleError, RawTensor, Result};
use crate::rng::Fnv1a;

/// Writes `tensors` as `torch.save(OrderedDict(tensors), path)` of PyTorch 2.x would: the zip
/// container, uncompressed, each record 64-byte aligned. The archive folder is the file stem,
/// as torch names it. The file is written under a temporary name in the same folder, synced,
/// then renamed over `path`, so a crash never leaves a half-written checkpoint behind.
/// The bytes [`write_state_dict`] writes, for a file whose stem is `archive_name`.
pub fn state_dict_bytes(archive_name: &str, tensors: &[(String, RawTensor)]) -> Result<Vec<u8>> {
    validate_for_writing(tensors)?;
    let cursor = write_archive(Cursor::new(Vec::new()), archive_name, tensors).map_err(|e| {
        PickleError::Io { path: std::path::PathBuf::from(archive_name), source: io::Error::other(e) }
    })?;
    Ok(cursor.into_inner())
}

pub fn write_state_dict(path: &Path, tensors: &[(String, RawTensor)]) -> Result<()> {
    let io_err = |source: io::Error| PickleError::Io { path: path.to_path_buf(), source };
    // torch names the archive's folder after the file's stem.
    let archive_name =
        path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).unwrap_or("archive");
    if path.file_name().is_none() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the checkpoint path has no file name",
        )));
    }
    let bytes = state_dict_bytes(archive_name, tensors)?;
    // Like torch.save, into an existing folder only.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        return Err(io_err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist", dir.display()),
        )));
    }
    crate::files::write_atomic(path, &bytes).map_err(io_err)
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
pub(super) struct Pickler {
    pub(super) out: Vec<u8>,
    next_memo: u32,
}

impl Pickler {
    pub(super) fn op(&mut self, op: u8) {
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
    pub(super) fn global(&mut self, memo: &mut Option<u32>, module: &str, name: &str) {
        match *memo {
            Some(i) => self.get(i),
            None => {
                self.op(opcode::GLOBAL);
                self.out.extend(format!("{module}\n{name}\n").bytes());
                *memo = Some(self.memoize());
            }
        }
    }

    pub(super) fn str(&mut self, s: &str) -> u32 {
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
    pub(super) fn uint(&mut self, v: usize) {
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

    pub(super) fn uint_tuple(&mut self, items: &[usize]) {
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
pub(super) fn pickle_state_dict(tensors: &[(String, RawTensor)]) -> Vec<u8> {
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
