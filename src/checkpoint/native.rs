//! Our resumable training checkpoint: one safetensors file per saved iteration,
//! `{model_save_dir}/{iteration}.stargan.safetensors`.
//!
//! Tensors: `G.<key>` and `D.<key>` with the reference's state-dict keys (buffers included), and
//! `G_opt.exp_avg.<i>` / `G_opt.exp_avg_sq.<i>` (likewise `D_opt.`) for Adam's moments in
//! parameter order. The safetensors metadata entry `stargan` holds [`Meta`] as JSON: the full
//! configuration, the iteration, Adam's step counts and learning rates, and the label layout.
//! Randomness needs no saved state: every draw is a function of (seed, iteration), see `rng`.

use super::{read_tensors, strip_prefix, write_safetensors, CheckpointError, TensorFile};
use crate::config::TrainConfig;
use crate::labels::LabelLayout;
use crate::model::{Discriminator, DiscriminatorConfig, Generator, GeneratorConfig};
use crate::optim::Adam;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SUFFIX: &str = ".stargan.safetensors";
const META_KEY: &str = "stargan";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format_version: u32,
    /// Iterations completed.
    pub iteration: u64,
    pub g_adam_step: i64,
    pub d_adam_step: i64,
    pub g_lr: f64,
    pub d_lr: f64,
    pub layout: LabelLayout,
    pub g: GeneratorConfig,
    pub d: DiscriminatorConfig,
    pub config: TrainConfig,
    /// Ranks of the data-parallel run that wrote it (1 for a single process, and for checkpoints
    /// written before runs could have more).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

pub fn path_for(dir: &Path, iteration: u64) -> PathBuf {
    dir.join(format!("{iteration}{SUFFIX}"))
}

/// Every iteration with a checkpoint in `dir`, newest first.
pub fn all(dir: &Path) -> Vec<u64> {
    let mut its: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(SUFFIX)?.parse().ok())
        .collect();
    its.sort_unstable_by(|a, b| b.cmp(a));
    its
}

/// Checkpoints that did not read back, with why.
pub type Broken = Vec<(PathBuf, CheckpointError)>;

/// The newest checkpoint in `dir` that reads back whole, with the newer ones that did not (each
/// with its error, and named in a warning as it is skipped).
pub fn latest_valid(dir: &Path) -> (Option<(u64, Loaded)>, Broken) {
    let mut broken = Vec::new();
    for it in all(dir) {
        let path = path_for(dir, it);
        match load(&path) {
            Ok(l) => return (Some((it, l)), broken),
            Err(e) => {
                tracing::warn!("skipping {}: {e}", path.display());
                broken.push((path, e));
            }
        }
    }
    (None, broken)
}

/// What a training checkpoint holds of a run: both networks, their optimisers, the labels.
pub struct Nets<'a> {
    pub g: &'a Generator,
    /// The moving average of G, when the run keeps one (saved as `G_ema.*`).
    pub g_ema: Option<&'a Generator>,
    pub d: &'a Discriminator,
    pub g_opt: &'a Adam,
    pub d_opt: &'a Adam,
    pub layout: &'a LabelLayout,
}

pub fn save(
    path: &Path,
    model: Nets<'_>,
    iteration: u64,
    config: &TrainConfig,
    world_size: usize,
) -> Result<(), CheckpointError> {
    let meta = Meta {
        world_size,
        format_version: 1,
        iteration,
        g_adam_step: model.g_opt.step,
        d_adam_step: model.d_opt.step,
        g_lr: model.g_opt.lr,
        d_lr: model.d_opt.lr,
        layout: model.layout.clone(),
        g: model.g.config,
        d: model.d.config,
        config: config.clone(),
    };
    let mut tensors = Vec::new();
    for (prefix, entries) in [
        ("G.", model.g.weights.snapshot()),
        ("D.", model.d.weights.snapshot()),
        ("G_opt.", model.g_opt.state()),
        ("D_opt.", model.d_opt.state()),
        ("G_ema.", model.g_ema.map(|g| g.weights.snapshot()).unwrap_or_default()),
    ] {
        tensors.extend(entries.into_iter().map(|(k, t)| (format!("{prefix}{k}"), t)));
    }
    let json = serde_json::to_string(&meta).map_err(|e| CheckpointError::Invalid {
        path: path.to_path_buf(),
        reason: format!("cannot represent the training metadata: {e}"),
    })?;
    write_safetensors(path, &tensors, Some(HashMap::from([(META_KEY.to_string(), json)])))
}

/// A training checkpoint read back: its metadata and all tensors.
pub struct Loaded {
    pub meta: Meta,
    pub file: TensorFile,
}

impl Loaded {
    pub fn generator(&self) -> HashMap<String, tch::Tensor> {
        strip_prefix(&self.file.tensors, "G.")
    }
    pub fn discriminator(&self) -> HashMap<String, tch::Tensor> {
        strip_prefix(&self.file.tensors, "D.")
    }
    /// The moving average of G, when the run kept one.
    pub fn generator_ema(&self) -> Option<HashMap<String, tch::Tensor>> {
        let w = strip_prefix(&self.file.tensors, "G_ema.");
        (!w.is_empty()).then_some(w)
    }
}

/// The metadata of a file if it is one of our training checkpoints, checked against the tensors
/// the file holds.
pub fn meta_of(file: &TensorFile, path: &Path) -> Result<Option<Meta>, CheckpointError> {
    meta_from(file, path, false)
}

/// `header_only`: the file's tensors were not read, so only the values themselves are checked;
/// otherwise the file must also hold the weights its metadata describes (a file of metadata and
/// no tensors cannot make us allocate networks).
fn meta_from(file: &TensorFile, path: &Path, header_only: bool) -> Result<Option<Meta>, CheckpointError> {
    let Some(json) = file.metadata.get(META_KEY) else { return Ok(None) };
    let invalid = |reason: String| CheckpointError::Invalid { path: path.to_path_buf(), reason };
    let mut meta: Meta =
        serde_json::from_str(json).map_err(|e| invalid(format!("unreadable training metadata: {e}")))?;
    meta.config.data.forget_legacy_default();
    let (g, d) = (meta.g, meta.d);
    let tensors = (!header_only).then_some(&file.tensors);
    super::check_architecture("generator", g.check(), || g.weight_scalars(), tensors, "G.", path)?;
    super::check_architecture("discriminator", d.check(), || d.weight_scalars(), tensors, "D.", path)?;
    // A moving average, when the file has one, is a whole second G: `latest_valid` must skip a
    // file whose average is cut short as it skips one whose G is, rather than resume and fail.
    // Its configuration is G's, checked just above; only the values present are left to count.
    if tensors.is_some_and(|t| t.keys().any(|k| k.starts_with("G_ema."))) {
        let scalars = || g.weight_scalars();
        super::check_architecture("moving average of G", Ok(()), scalars, tensors, "G_ema.", path)?;
    }
    if meta.layout.g_dim() != g.c_dim || meta.layout.d_dim() != d.c_dim {
        return Err(invalid(format!(
            "its labels ({}) do not fit its networks (G takes {}, D predicts {})",
            meta.layout.describe(),
            g.c_dim,
            d.c_dim
        )));
    }
    Ok(Some(meta))
}

/// The metadata of a training checkpoint, read from its header only (no tensors); `None` for any
/// other checkpoint.
pub fn read_meta(path: &Path) -> Result<Option<Meta>, CheckpointError> {
    if super::sniff(path)? != super::Format::Safetensors {
        return Ok(None);
    }
    let file = TensorFile { tensors: Default::default(), metadata: super::read_safetensors_metadata(path)? };
    meta_from(&file, path, true)
}

pub fn load(path: &Path) -> Result<Loaded, CheckpointError> {
    let file = read_tensors(path)?;
    let meta = meta_of(&file, path)?.ok_or_else(|| CheckpointError::Invalid {
        path: path.to_path_buf(),
        reason: "not a stargan training checkpoint (no training metadata)".into(),
    })?;
    Ok(Loaded { meta, file })
}

/// Restore weights, optimiser moments and learning rates into a run's networks and optimisers.
pub fn restore(
    loaded: &Loaded,
    (g, d): (&Generator, &Discriminator),
    layout: &LabelLayout,
    g_opt: &mut Adam,
    d_opt: &mut Adam,
    path: &Path,
) -> Result<(), CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid { path: path.to_path_buf(), reason };
    if loaded.meta.layout != *layout {
        return Err(invalid(format!(
            "its labels ({}) differ from this run's ({})",
            loaded.meta.layout.describe(),
            layout.describe()
        )));
    }
    g.weights.load(&loaded.generator()).map_err(|e| invalid(e.to_string()))?;
    d.weights.load(&loaded.discriminator()).map_err(|e| invalid(e.to_string()))?;
    let t = &loaded.file.tensors;
    let get = |prefix: &'static str| move |k: &str| t.get(&format!("{prefix}{k}")).map(|t| t.shallow_clone());
    g_opt.load_state(loaded.meta.g_adam_step, get("G_opt.")).map_err(invalid)?;
    d_opt.load_state(loaded.meta.d_adam_step, get("D_opt.")).map_err(invalid)?;
    g_opt.lr = loaded.meta.g_lr;
    d_opt.lr = loaded.meta.d_lr;
    Ok(())
}
