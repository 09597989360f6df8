//! The two StarGAN networks and the bookkeeping they share.
//!
//! Every network owns its tensors in a [`Weights`] table, in the order and under the names of the
//! reference PyTorch `state_dict` (`main.0.weight`, `main.9.main.1.running_mean`, `conv1.weight`),
//! so checkpoints map one to one and the optimiser walks parameters in the reference's order.

pub mod discriminator;
pub mod generator;

pub use discriminator::{Discriminator, DiscriminatorConfig};
pub use generator::{Generator, GeneratorConfig};

use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Bounds on architectures read from files and flags: far above anything StarGAN is trained with
/// (the paper: conv_dim 64, 6 blocks, 128 or 256 px, 5 to 13 labels), and low enough that no value
/// asks for more memory than a machine has before anything is checked against real weights.
pub mod bounds {
    pub const CONV_DIM: std::ops::RangeInclusive<i64> = 1..=1024;
    pub const G_REPEAT: std::ops::RangeInclusive<i64> = 0..=64;
    pub const D_REPEAT: std::ops::RangeInclusive<i64> = 1..=12;
    pub const C_DIM: std::ops::RangeInclusive<i64> = 1..=1024;
    pub const IMAGE_SIZE: std::ops::RangeInclusive<i64> = 1..=4096;
    /// Weight scalars of one network (4 GiB in fp32).
    pub const SCALARS: i128 = 1 << 30;
}

/// `name value` inside `range`, else a message naming both.
pub(crate) fn in_range(name: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!("{name} {value} is outside {}..={}", range.start(), range.end()))
    }
}

/// Whether a named tensor is trained by the optimiser or only carried along (running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Parameter,
    Buffer,
}

/// An ordered table of named tensors: a network's `state_dict`.
///
/// The networks hold shallow clones of these tensors, so copying new values in (a checkpoint, an
/// optimiser step) is seen by the forward pass without rebuilding anything.
#[derive(Debug, Default)]
pub struct Weights {
    entries: Vec<(String, Tensor, Role)>,
}

impl Weights {
    fn push(&mut self, name: String, tensor: Tensor, role: Role) -> Tensor {
        let handle = tensor.shallow_clone();
        self.entries.push((name, tensor, role));
        handle
    }

    /// A trainable parameter drawn from U(-bound, bound), PyTorch's default for convolutions.
    fn uniform(&mut self, name: String, shape: &[i64], bound: f64, device: Device) -> Tensor {
        let t = Tensor::empty(shape, (Kind::Float, device)).uniform_(-bound, bound);
        self.push(name, t.set_requires_grad(true), Role::Parameter)
    }

    fn constant(&mut self, name: String, shape: &[i64], value: f64, role: Role, device: Device) -> Tensor {
        let t = Tensor::full(shape, value, (Kind::Float, device));
        let t = if role == Role::Parameter { t.set_requires_grad(true) } else { t };
        self.push(name, t, role)
    }

    fn counter(&mut self, name: String, device: Device) -> Tensor {
        self.push(name, Tensor::zeros([], (Kind::Int64, device)), Role::Buffer)
    }

    /// All entries in state-dict order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor, Role)> {
        self.entries.iter().map(|(n, t, r)| (n.as_str(), t, *r))
    }

    /// The trainable tensors in state-dict order (the order of `model.parameters()`).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.entries
            .iter()
            .filter(|(_, _, r)| *r == Role::Parameter)
            .map(|(_, t, _)| t.shallow_clone())
            .collect()
    }

    /// Names of the trainable tensors, matching [`Weights::parameters`].
    pub fn parameter_names(&self) -> Vec<String> {
        self.entries.iter().filter(|(_, _, r)| *r == Role::Parameter).map(|(n, _, _)| n.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _, _)| n == name).map(|(_, t, _)| t)
    }

    /// Number of trainable scalars, as the reference's `print_network` counts them.
    pub fn num_parameters(&self) -> i64 {
        self.entries.iter().filter(|(_, _, r)| *r == Role::Parameter).map(|(_, t, _)| t.numel() as i64).sum()
    }

    /// Copy values in by name. Every parameter and running statistic must be present with the same
    /// shape; `num_batches_tracked` may be missing (checkpoints written by PyTorch 0.3/0.4 lack it).
    pub fn load(&self, source: &HashMap<String, Tensor>) -> Result<(), WeightsError> {
        for (name, dst, _) in &self.entries {
            let Some(src) = source.get(name) else {
                if name.ends_with("num_batches_tracked") {
                    continue;
                }
                return Err(WeightsError::Missing(name.clone()));
            };
            if src.size() != dst.size() {
                return Err(WeightsError::Shape {
                    name: name.clone(),
                    expected: dst.size(),
                    found: src.size(),
                });
            }
            tch::no_grad(|| {
                let mut dst = dst.shallow_clone();
                dst.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
            });
        }
        let known: std::collections::HashSet<&str> =
            self.entries.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut unexpected: Vec<&String> = source.keys().filter(|k| !known.contains(k.as_str())).collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(WeightsError::Unexpected(unexpected[0].clone(), unexpected.len()));
        }
        Ok(())
    }

    /// Whether every entry holds finite numbers only.
    pub fn all_finite(&self) -> bool {
        tch::no_grad(|| self.entries.iter().all(|(_, t, _)| t.isfinite().all().int64_value(&[]) == 1))
    }

    /// Detached copies of every entry, in state-dict order (what `state_dict()` returns).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.entries.iter().map(|(n, t, _)| (n.clone(), t.detach().copy())).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("checkpoint lacks `{0}`")]
    Missing(String),
    #[error("`{name}` has shape {found:?} in the checkpoint but the model expects {expected:?}")]
    Shape { name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("checkpoint has `{0}` (and {1} unexpected key(s) in all) that this model does not")]
    Unexpected(String, usize),
}

/// How instance norm normalises. The reference's test routine never calls `G.eval()`, so its
/// translations use per-image statistics; that is our default too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NormStats {
    /// Per-image statistics; the running averages are updated (PyTorch train mode).
    #[default]
    PerImage,
    /// As `PerImage`, but the running averages move as if this forward had run twice on the same
    /// input (momentum 1 − 0.9² instead of 0.1): the fast training step reuses one G(x, c_trg) where
    /// the reference computes it twice, and keeps the statistics the reference would have.
    PerImageTwice,
    /// Per-image statistics without touching the running averages (inference that leaves the
    /// checkpoint's buffers as they were).
    PerImageFrozen,
    /// The tracked running averages (PyTorch eval mode).
    Running,
}

/// PyTorch's default momentum of the running averages.
const MOMENTUM: f64 = 0.1;

/// `nn.InstanceNorm2d(c, affine=True, track_running_stats=True)`.
#[derive(Debug)]
pub(crate) struct InstanceNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl InstanceNorm {
    pub(crate) fn new(w: &mut Weights, prefix: &str, channels: i64, device: Device) -> Self {
        let c = [channels];
        let weight = w.constant(format!("{prefix}.weight"), &c, 1.0, Role::Parameter, device);
        let bias = w.constant(format!("{prefix}.bias"), &c, 0.0, Role::Parameter, device);
        let running_mean = w.constant(format!("{prefix}.running_mean"), &c, 0.0, Role::Buffer, device);
        let running_var = w.constant(format!("{prefix}.running_var"), &c, 1.0, Role::Buffer, device);
        // PyTorch's _InstanceNorm never increments it, but it is part of the state dict.
        let _ = w.counter(format!("{prefix}.num_batches_tracked"), device);
        Self { weight, bias, running_mean, running_var }
    }

    pub(crate) fn forward(&self, x: &Tensor, stats: NormStats) -> Tensor {
        match stats {
            NormStats::PerImage | NormStats::PerImageTwice => {
                let momentum =
                    if stats == NormStats::PerImageTwice { 1.0 - (1.0 - MOMENTUM).powi(2) } else { MOMENTUM };
                x.instance_norm(
                    Some(&self.weight),
                    Some(&self.bias),
                    Some(&self.running_mean),
                    Some(&self.running_var),
                    true,
                    momentum,
                    1e-5,
                    true,
                )
            }
            NormStats::PerImageFrozen => {
                x.instance_norm(Some(&self.weight), Some(&self.bias), None, None, true, 0.1, 1e-5, true)
            }
            NormStats::Running => x.instance_norm(
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                false,
                0.1,
                1e-5,
                true,
            ),
        }
    }
}

/// A convolution weight initialised like PyTorch's `reset_parameters` (kaiming-uniform with
/// a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))). `fan_in` is dim 1 times the kernel area,
/// which for a transposed convolution (weight `[in, out, k, k]`) is out·k·k, as in PyTorch.
pub(crate) fn conv_weight(w: &mut Weights, name: String, shape: [i64; 4], device: Device) -> Tensor {
    let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
    w.uniform(name, &shape, 1.0 / fan_in.sqrt(), device)
}

/// A convolution bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan_in.
pub(crate) fn conv_bias(w: &mut Weights, name: String, channels: i64, fan_in: i64, device: Device) -> Tensor {
    w.uniform(name, &[channels], 1.0 / (fan_in as f64).sqrt(), device)
}
