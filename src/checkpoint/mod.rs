//! Checkpoints: the reference's `torch.save` files, our own resumable format, and exports.
//!
//! Three kinds of file are read, told apart by their first bytes, not their names:
//! - the reference's `{step}-G.ckpt` / `{step}-D.ckpt` (`torch.save(state_dict)`, zip container or
//!   the legacy pickle container of PyTorch < 1.6), read by [`torch_pickle`];
//! - safetensors with the reference's keys (what `stargan export` writes, and what a PyTorch user
//!   can `load_state_dict(safetensors.torch.load_file(...))`);
//! - our training checkpoint: one safetensors file holding G (`G.` keys), D (`D.` keys), both
//!   optimisers' moments (`G_opt.` / `D_opt.` keys) and, in its metadata, the run's configuration,
//!   iteration, learning rates and RNG state as JSON.
//!
//! Every write goes to a temporary name in the destination folder and is renamed into place, so an
//! interrupted or failed write (a full disk) never leaves a half-written checkpoint behind.

pub mod native;
pub mod torch_pickle;

use crate::model::{DiscriminatorConfig, GeneratorConfig};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use torch_pickle::{DType, RawTensor};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Pickle { path: PathBuf, source: torch_pickle::PickleError },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Which container a file is, judged by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip container (PyTorch >= 1.6).
    TorchZip,
    /// `torch.save` legacy pickle container (PyTorch < 1.6, the 2018 pretrained models).
    TorchLegacy,
    Safetensors,
}

pub fn sniff(path: &Path) -> Result<Format, CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).map_err(io)?;
    let n = std::io::Read::read(&mut f, &mut head).map_err(io)?;
    let head = &head[..n];
    // safetensors first: its 8-byte header length can start with any byte, 0x80 and 'P' included.
    if head.len() == 9 && head[8] == b'{' {
        Ok(Format::Safetensors)
    } else if head.starts_with(b"PK") {
        Ok(Format::TorchZip)
    } else if head.first() == Some(&0x80) {
        Ok(Format::TorchLegacy)
    } else {
        Err(CheckpointError::Invalid {
            path: path.to_path_buf(),
            reason: "not a checkpoint (neither a torch.save file nor safetensors)".into(),
        })
    }
}

/// A loaded file: its tensors by name, and the safetensors metadata if any.
#[derive(Debug, Default)]
pub struct TensorFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::F64 => Kind::Double,
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn raw_to_tensor(raw: &RawTensor) -> Tensor {
    let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
    Tensor::from_data_size(&raw.data, &shape, kind_of(raw.dtype))
}

/// Read every tensor of a checkpoint file, whatever its container.
pub fn read_tensors(path: &Path) -> Result<TensorFile, CheckpointError> {
    match sniff(path)? {
        Format::TorchZip | Format::TorchLegacy => {
            let entries = torch_pickle::read_state_dict(path)
                .map_err(|source| CheckpointError::Pickle { path: path.to_path_buf(), source })?;
            let tensors = entries.iter().map(|(k, raw)| (k.clone(), raw_to_tensor(raw))).collect();
            Ok(TensorFile { tensors, metadata: HashMap::new() })
        }
        Format::Safetensors => read_safetensors(path),
    }
}

fn st_kind(dtype: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F64 => Kind::Double,
        D::F32 => Kind::Float,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::I64 => Kind::Int64,
        D::I32 => Kind::Int,
        D::I16 => Kind::Int16,
        D::I8 => Kind::Int8,
        D::U8 => Kind::Uint8,
        D::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn read_safetensors(path: &Path) -> Result<TensorFile, CheckpointError> {
    let bytes =
        std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    let bad = |reason: String| CheckpointError::Safetensors { path: path.to_path_buf(), reason };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = st_kind(view.dtype())
            .ok_or_else(|| bad(format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("tensor `{name}` has a dimension beyond 2^63")))?;
        tensors.insert(name, Tensor::from_data_size(view.data(), &shape, kind));
    }
    Ok(TensorFile { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
}

/// The string metadata of a safetensors file, reading only its header (not its tensors).
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, CheckpointError> {
    use std::io::Read;
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let bad = |reason: String| CheckpointError::Safetensors { path: path.to_path_buf(), reason };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    // safetensors itself refuses headers over 100 MB.
    if n > 100_000_000 {
        return Err(bad(format!("implausible header length {n}")));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head).map_err(io)?;
    // The crate's own header type (its `read_metadata` also wants the tensor bytes, to check them).
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&head).map_err(|e| bad(e.to_string()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

fn kind_to_st(kind: Kind) -> safetensors::Dtype {
    use safetensors::Dtype as D;
    match kind {
        Kind::Double => D::F64,
        Kind::Half => D::F16,
        Kind::BFloat16 => D::BF16,
        Kind::Int64 => D::I64,
        Kind::Int => D::I32,
        Kind::Int16 => D::I16,
        Kind::Int8 => D::I8,
        Kind::Uint8 => D::U8,
        Kind::Bool => D::BOOL,
        _ => D::F32,
    }
}

/// A tensor's element count, safe for any shape a file can declare: `tch`'s own `numel` multiplies
/// in `usize` and overflows (a panic in debug builds) on `[2^59, 4, 7, 0]`, which holds nothing.
pub fn element_count(t: &Tensor) -> i128 {
    let size = t.size();
    if size.contains(&0) {
        return 0;
    }
    size.iter().fold(1i128, |n, &d| n.saturating_mul(d as i128))
}

/// A tensor's bytes, C-contiguous, little-endian, on the CPU.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let numel = element_count(&t) as usize;
    let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut buf, numel);
    buf
}

struct Owned {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Owned {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// [`crate::files::write_atomic`] with the checkpoint's error.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    crate::files::write_atomic(path, bytes)
        .map_err(|source| CheckpointError::Write { path: path.to_path_buf(), source })
}

/// Named tensors (and string metadata) as the bytes of one safetensors file (`path` names it in
/// errors).
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    let owned: Vec<(String, Owned)> = tensors
        .iter()
        .map(|(n, t)| {
            let o = Owned {
                dtype: kind_to_st(t.kind()),
                shape: t.size().iter().map(|&d| d as usize).collect(),
                data: tensor_bytes(t),
            };
            (n.clone(), o)
        })
        .collect();
    let views: Vec<(&str, &Owned)> = owned.iter().map(|(n, o)| (n.as_str(), o)).collect();
    safetensors::serialize(views, &metadata)
        .map_err(|e| CheckpointError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })
}

/// Write named tensors (and string metadata) as one safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    write_atomic(path, &safetensors_bytes(tensors, metadata, path)?)
}

/// Named tensors as the bytes of a reference-format `torch.save` zip file named `path`.
pub fn torch_bytes(tensors: &[(String, Tensor)], path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let raw: Vec<(String, RawTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let dtype = match t.kind() {
                Kind::Int64 => DType::I64,
                Kind::Double => DType::F64,
                _ => DType::F32,
            };
            let t = if dtype == DType::F32 { t.to_kind(Kind::Float) } else { t.shallow_clone() };
            let shape = t.size().iter().map(|&d| d as usize).collect();
            (n.clone(), RawTensor { dtype, shape, data: tensor_bytes(&t) })
        })
        .collect();
    // torch names the archive's folder after the file's stem.
    let stem = path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).unwrap_or("archive");
    torch_pickle::state_dict_bytes(stem, &raw)
        .map_err(|source| CheckpointError::Pickle { path: path.to_path_buf(), source })
}

/// Write named tensors as a reference-format `torch.save` zip file (`{step}-G.ckpt`), atomically.
pub fn write_torch(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    write_atomic(path, &torch_bytes(tensors, path)?)
}

/// Tensors whose names start with `prefix`, with the prefix removed (`G.main.0.weight` → `main.0.weight`).
pub fn strip_prefix(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.shallow_clone())))
        .collect()
}

fn shape_of(tensors: &HashMap<String, Tensor>, key: &str, path: &Path) -> Result<Vec<i64>, CheckpointError> {
    tensors.get(key).map(Tensor::size).ok_or_else(|| CheckpointError::Invalid {
        path: path.to_path_buf(),
        reason: format!("no `{key}`: this is not a StarGAN network"),
    })
}

/// An architecture read from a file, accepted only within the model's bounds and when the file
/// holds at least as many values (under `prefix`) as that network has weights: building it can
/// then allocate no more than about the file's own size (4× for a file of bytes), whatever its
/// header claims. `scalars` is only asked once `check` has passed; `tensors` is `None` when only
/// the file's header was read, and then the values alone are checked.
pub(crate) fn check_architecture(
    net: &str,
    check: Result<(), String>,
    scalars: impl FnOnce() -> i128,
    tensors: Option<&HashMap<String, Tensor>>,
    prefix: &str,
    path: &Path,
) -> Result<(), CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid { path: path.to_path_buf(), reason };
    check.map_err(|e| invalid(format!("implausible {net}: {e}")))?;
    let Some(tensors) = tensors else { return Ok(()) };
    let scalars = scalars();
    let present: i128 = tensors
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, t)| element_count(t))
        .fold(0, i128::saturating_add);
    if present < scalars {
        return Err(invalid(format!(
            "implausible {net}: it would have {scalars} weights but the file holds only {present} values"
        )));
    }
    Ok(())
}

/// The generator's architecture, read off its weights: conv_dim and c_dim from `main.0.weight`
/// (`[conv_dim, 3 + c_dim, 7, 7]`), repeat_num from the residual blocks present, the attention
/// output from `mask.weight`.
pub fn infer_generator(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<GeneratorConfig, CheckpointError> {
    let s = shape_of(tensors, "main.0.weight", path)?;
    if s.len() != 4 || s[1] < 4 || s[2] != 7 {
        return Err(CheckpointError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "`main.0.weight` has shape {s:?}, not a StarGAN generator's [conv_dim, 3+c_dim, 7, 7]"
            ),
        });
    }
    let blocks: BTreeSet<&str> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("main.")?.split_once(".main.").map(|(i, _)| i))
        .collect();
    let cfg = GeneratorConfig {
        conv_dim: s[0],
        c_dim: s[1] - 3,
        repeat_num: blocks.len() as i64,
        attention: tensors.contains_key("mask.weight"),
    };
    check_architecture("generator", cfg.check(), || cfg.weight_scalars(), Some(tensors), "", path)?;
    Ok(cfg)
}

/// The discriminator's architecture: repeat_num from its `main.{2i}` convolutions, conv_dim from
/// the first, c_dim and image_size from the classification head's kernel.
pub fn infer_discriminator(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<DiscriminatorConfig, CheckpointError> {
    let first = shape_of(tensors, "main.0.weight", path)?;
    let head = shape_of(tensors, "conv2.weight", path)?;
    let repeat_num =
        (0..).take_while(|i| tensors.contains_key(&format!("main.{}.weight", 2 * i))).count() as i64;
    if first.len() != 4 || head.len() != 4 || first[1] != 3 || head[2] != head[3] || head[2] < 1 {
        return Err(CheckpointError::Invalid {
            path: path.to_path_buf(),
            reason: format!("weights of shapes {first:?} and {head:?} are not a StarGAN discriminator"),
        });
    }
    let invalid = |reason: String| CheckpointError::Invalid { path: path.to_path_buf(), reason };
    crate::model::in_range(
        "implausible discriminator: repeat_num",
        repeat_num,
        crate::model::bounds::D_REPEAT,
    )
    .map_err(invalid)?;
    crate::model::in_range(
        "implausible discriminator: head kernel",
        head[2],
        crate::model::bounds::IMAGE_SIZE,
    )
    .map_err(invalid)?;
    let cfg = DiscriminatorConfig {
        image_size: head[2] << repeat_num,
        conv_dim: first[0],
        c_dim: head[0],
        repeat_num,
    };
    check_architecture("discriminator", cfg.check(), || cfg.weight_scalars(), Some(tensors), "", path)?;
    Ok(cfg)
}
