//! The judge: a small CNN that learns the data set's labels from real images only, then says
//! whether a translated image shows its target labels (the paper's RaFD protocol), and whose
//! penultimate features feed the classifier Fréchet distance.
//!
//! Architecture (independent of StarGAN's D, so that G cannot have learned to fool it): `L`
//! convolutions 4×4 stride 2 (channels 32, 64, 128, 128, …) each followed by batch norm and
//! LeakyReLU(0.01), global average pooling to a 128-d feature vector, and one linear head per data
//! set of the label layout. `L` halves the image down to 4×4 or less, between 4 and 6 layers (4 for
//! 16–64 px, 5 for 128 px, 6 for 256 px). Multi-label heads are trained with BCE and read as
//! sigmoid > 0.5; one-hot heads with cross-entropy and read by arg-max.
//!
//! Training: Adam (lr 1e-3, β 0.9/0.999), batches of up to 32 real training images per data set
//! per iteration with the training loader's random flips, the loss summed over the data sets; the
//! rate is constant for the first half of the iterations and falls linearly to zero over the second.
//! Initialisation and batches follow the seed, so a classifier is reproducible from its settings.

use crate::batch::labels_tensor;
use crate::checkpoint::{read_tensors, write_safetensors};
use crate::data::source::{Loader, Prefetcher};
use crate::error::{Error, Result};
use crate::labels::{LabelKind, LabelLayout};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Bumped whenever the architecture or the training recipe changes, so cached classifiers of an older
/// recipe are not reused.
pub const VERSION: u32 = 1;
/// Length of the penultimate feature vector.
pub const FEATURES: i64 = 128;
/// Largest training batch per data set.
pub const BATCH: usize = 32;
/// Adam's learning rate.
pub const LR: f64 = 1e-3;
/// The safetensors metadata entry that describes what a cached classifier was trained for.
const META_KEY: &str = "stargan-classifier";

/// Number of stride-2 layers for an image side.
pub fn depth(image_size: i64) -> usize {
    let (mut n, mut s) = (0, image_size);
    while s > 4 {
        s /= 2;
        n += 1;
    }
    n.clamp(4, 6)
}

pub struct Classifier {
    vs: nn::VarStore,
    blocks: Vec<(nn::Conv2D, nn::BatchNorm)>,
    heads: Vec<nn::Linear>,
    layout: LabelLayout,
}

/// How a training run of the classifier went.
#[derive(Debug, Clone)]
pub struct TrainStats {
    pub iterations: u64,
    pub seconds: f64,
    /// Mean loss over the last tenth of the iterations.
    pub final_loss: f64,
}

impl Classifier {
    /// A fresh classifier for `layout` on `image_size`² images, initialised from `seed`.
    pub fn new(layout: &LabelLayout, image_size: i64, seed: u64, device: Device) -> Self {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let widths = [32, 64, 128, FEATURES, FEATURES, FEATURES];
        let mut blocks = Vec::new();
        let mut in_c = 3;
        for (l, &out_c) in widths.iter().take(depth(image_size)).enumerate() {
            let conv = nn::conv2d(
                &root / format!("conv{l}"),
                in_c,
                out_c,
                4,
                nn::ConvConfig { stride: 2, padding: 1, bias: false, ..Default::default() },
            );
            let bn = nn::batch_norm2d(
                &root / format!("bn{l}"),
                out_c,
                nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() },
            );
            blocks.push((conv, bn));
            in_c = out_c;
        }
        let heads = layout
            .domains
            .iter()
            .enumerate()
            .map(|(k, d)| nn::linear(&root / format!("head{k}"), FEATURES, d.dim(), Default::default()))
            .collect();
        Self { vs, blocks, heads, layout: layout.clone() }
    }

    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Penultimate features `[N, 128]` of images `[N, 3, S, S]` in [-1, 1]; `train` selects batch
    /// statistics (and updates the running ones) instead of the running averages.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (conv, bn) in &self.blocks {
            h = bn.forward_t(&h.apply(conv), train).leaky_relu();
        }
        h.mean_dim(&[2i64, 3][..], false, Kind::Float)
    }

    /// Data set `k`'s logits from features.
    pub fn logits(&self, k: usize, features: &Tensor) -> Tensor {
        features.apply(&self.heads[k])
    }

    /// Dense 0/1 predictions `[N, dim]` of data set `k` from its logits.
    pub fn predict(&self, k: usize, logits: &Tensor) -> Tensor {
        let d = &self.layout.domains[k];
        match d.kind {
            LabelKind::MultiLabel => logits.gt(0.0).to_kind(Kind::Float),
            LabelKind::OneHot => logits.argmax(1, false).one_hot(d.dim()).to_kind(Kind::Float),
        }
    }

    fn loss(&self, k: usize, logits: &Tensor, label: &Tensor) -> Tensor {
        match self.layout.domains[k].kind {
            LabelKind::MultiLabel => logits.binary_cross_entropy_with_logits::<Tensor>(
                &label.to_kind(Kind::Float),
                None,
                None,
                tch::Reduction::Mean,
            ),
            LabelKind::OneHot => logits.cross_entropy_for_logits(&label.to_kind(Kind::Int64)),
        }
    }

    /// Train for `iterations` on the loader's batches (one per data set per iteration).
    pub fn train(&mut self, loader: Arc<Loader>, iterations: u64) -> Result<TrainStats> {
        let t0 = Instant::now();
        let device = self.vs.device();
        let mut opt = nn::Adam::default().build(&self.vs, LR)?;
        let prefetch = Prefetcher::spawn(loader, 0, iterations, 2);
        let half = iterations / 2;
        let tail_from = iterations - (iterations / 10).max(1).min(iterations);
        let (mut tail_sum, mut tail_n) = (0.0, 0u64);
        for it in 0..iterations {
            let lr = if it < half { LR } else { LR * (iterations - it) as f64 / (iterations - half) as f64 };
            opt.set_lr(lr);
            let host = prefetch.next().ok_or_else(|| Error::Internal("the data loader stopped".into()))??;
            let mut total = Tensor::zeros([], (Kind::Float, device));
            for hb in &host {
                let s = hb.size as i64;
                let x = Tensor::from_slice(&hb.images).view([-1, 3, s, s]).to_device(device);
                let label = labels_tensor(&hb.labels).to_device(device);
                let logits = self.logits(hb.source, &self.features(&x, true));
                total += self.loss(hb.source, &logits, &label);
            }
            opt.backward_step(&total);
            if it >= tail_from {
                tail_sum += total.double_value(&[]);
                tail_n += 1;
            }
        }
        Ok(TrainStats {
            iterations,
            seconds: t0.elapsed().as_secs_f64(),
            final_loss: if tail_n > 0 { tail_sum / tail_n as f64 } else { f64::NAN },
        })
    }

    /// Every tensor (parameters and batch-norm statistics) by name, sorted.
    fn named(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Write the classifier with `description` (what it was trained for) as metadata, atomically.
    pub fn save(&self, path: &Path, description: &str) -> Result<()> {
        let meta = HashMap::from([(META_KEY.to_string(), description.to_string())]);
        write_safetensors(path, &self.named(), Some(meta))?;
        Ok(())
    }

    /// Read a cached classifier; it must have been trained for exactly `description`.
    pub fn load(&mut self, path: &Path, description: &str) -> Result<()> {
        let file = read_tensors(path)?;
        match file.metadata.get(META_KEY) {
            Some(found) if found == description => {}
            Some(found) => {
                return Err(Error::Input(format!(
                    "the classifier {} was trained for other data or settings ({found}); this evaluation \
                     needs one for {description}: delete the file or give another `classifier` path",
                    path.display()
                )))
            }
            None => {
                return Err(Error::Input(format!(
                    "{} is not a classifier written by stargan eval",
                    path.display()
                )))
            }
        }
        let wanted = self.named();
        if file.tensors.len() != wanted.len() {
            return Err(Error::Input(format!(
                "{} holds {} tensors, the classifier has {}",
                path.display(),
                file.tensors.len(),
                wanted.len()
            )));
        }
        tch::no_grad(|| {
            for (name, mut dst) in wanted {
                let src = file.tensors.get(&name).filter(|s| s.size() == dst.size()).ok_or_else(|| {
                    Error::Input(format!("{} lacks `{name}` or has it in another shape", path.display()))
                })?;
                dst.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
            }
            Ok(())
        })
    }
}
