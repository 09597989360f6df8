//! Using a trained generator: load it from any checkpoint kind, say what to translate to, translate
//! images held in memory, encode the result. `stargan translate`, `test`, `eval` and the server are
//! built on this module; nothing here knows about command-line flags.

use crate::checkpoint::{infer_discriminator, infer_generator, native, read_tensors};
use crate::error::{Error, Result};
use crate::labels::{celeba_domain, Domain, LabelKind, LabelLayout};
use crate::model::{Discriminator, Generator, NormStats};
use crate::precision::Precision;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub use crate::image_io::{decode_input, encode, ImageFormat};

/// A generator read from any checkpoint kind, with what is known about its labels.
pub struct Model {
    pub g: Generator,
    pub layout: LabelLayout,
    /// Whether `layout` comes from the checkpoint (training checkpoints) or was assumed (reference files).
    pub labels_known: bool,
    pub image_size: Option<i64>,
    /// D, when the checkpoint has it or a `{step}-D.ckpt` sits beside a reference G.
    pub d: Option<Discriminator>,
    /// The training metadata, for a training checkpoint.
    pub meta: Option<native::Meta>,
}

fn weights_err(path: &Path) -> impl FnOnce(crate::model::WeightsError) -> Error + '_ {
    move |source| Error::Weights { path: path.to_path_buf(), source }
}

/// Load G (and D if available) from `path`. `names` names a reference checkpoint's labels
/// (default: the reference's five CelebA attributes when their number fits, else generic names).
pub fn load(path: &Path, names: Option<&[String]>, device: Device) -> Result<Model> {
    let file = read_tensors(path)?;
    if let Some(meta) = native::meta_of(&file, path)? {
        return from_training(&native::Loaded { meta, file }, path, device);
    }
    let cfg = infer_generator(&file.tensors, path)?;
    let g = Generator::new(cfg, device);
    g.weights.load(&file.tensors).map_err(weights_err(path))?;
    let layout = reference_layout(cfg.c_dim, names, path)?;
    let d = match sibling_d(path) {
        Some(dp) => {
            let df = read_tensors(&dp)?;
            let dcfg = infer_discriminator(&df.tensors, &dp)?;
            if dcfg.c_dim != layout.d_dim() {
                return Err(Error::Input(format!(
                    "{} predicts {} labels but {} takes {}",
                    dp.display(),
                    dcfg.c_dim,
                    path.display(),
                    layout.d_dim()
                )));
            }
            let d = Discriminator::new(dcfg, device);
            d.weights.load(&df.tensors).map_err(weights_err(&dp))?;
            Some(d)
        }
        None => None,
    };
    let image_size = d.as_ref().map(|d| d.config.image_size);
    Ok(Model { g, layout, labels_known: false, image_size, d, meta: None })
}

/// G and D of a training checkpoint already read (`path` names it in errors).
pub fn from_training(loaded: &native::Loaded, path: &Path, device: Device) -> Result<Model> {
    let meta = &loaded.meta;
    let g = Generator::new(meta.g, device);
    // A run that kept a moving average of G translates with it (as StarGAN v2 does).
    let weights = loaded.generator_ema().unwrap_or_else(|| loaded.generator());
    g.weights.load(&weights).map_err(weights_err(path))?;
    let d = Discriminator::new(meta.d, device);
    d.weights.load(&loaded.discriminator()).map_err(weights_err(path))?;
    Ok(Model {
        g,
        layout: meta.layout.clone(),
        labels_known: true,
        image_size: Some(meta.d.image_size),
        d: Some(d),
        meta: Some(meta.clone()),
    })
}

/// `200000-G.ckpt` → `200000-D.ckpt` in the same folder, if it exists.
fn sibling_d(g_path: &Path) -> Option<PathBuf> {
    let name = g_path.file_name()?.to_str()?;
    // `{it}-G.ckpt`, or the moving average `export` writes beside it, `{it}-G_ema.ckpt`.
    let d_name = name.replacen("-G_ema.", "-D.", 1).replacen("-G.", "-D.", 1);
    (d_name != name).then(|| g_path.with_file_name(d_name)).filter(|p| p.exists())
}

/// A reference checkpoint carries no label names: the reference's CelebA attributes (or `names`)
/// when their number fits, else generic names.
fn reference_layout(c_dim: i64, names: Option<&[String]>, path: &Path) -> Result<LabelLayout> {
    let default: Vec<String> = crate::labels::DEFAULT_CELEBA_ATTRS.iter().map(|s| s.to_string()).collect();
    match names {
        Some(a) if a.len() as i64 != c_dim => {
            Err(Error::Input(format!("{} label names given but {} takes {c_dim}", a.len(), path.display())))
        }
        Some(a) => Ok(LabelLayout::single(celeba_domain(a))),
        None if c_dim == default.len() as i64 => Ok(LabelLayout::single(celeba_domain(&default))),
        None => Ok(LabelLayout::single(Domain {
            name: "labels".into(),
            kind: LabelKind::MultiLabel,
            labels: (0..c_dim).map(|i| format!("label{i}")).collect(),
        })),
    }
}

/// The largest label magnitude accepted: 0 and 1 are the trained values, a little beyond them
/// exaggerates; far beyond them G's output saturates to flat colour.
pub const MAX_LABEL_MAGNITUDE: f32 = 10.0;

fn check_value(what: &str, v: f32) -> Result<f32> {
    if !v.is_finite() {
        Err(Error::Input(format!("{what}: `{v}` is not a finite number")))
    } else if v.abs() > MAX_LABEL_MAGNITUDE {
        Err(Error::Input(format!("{what}: {v} is outside [-{MAX_LABEL_MAGNITUDE}, {MAX_LABEL_MAGNITUDE}]")))
    } else {
        Ok(v)
    }
}

/// One `NAME=VALUE` edit of a label.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub name: String,
    pub value: f32,
}

impl std::str::FromStr for Edit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| Error::Input(format!("a label edit is NAME=VALUE, not `{s}`")))?;
        let value: f32 =
            value.trim().parse().map_err(|_| Error::Input(format!("{name}: `{value}` is not a number")))?;
        Ok(Edit { name: name.trim().to_string(), value: check_value(name, value)? })
    }
}

/// What to translate an image to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// G's whole label vector (continuous values set intensity).
    Vector(Vec<f32>),
    /// The input's own labels (predicted by D when the model has it, else all zero) with these
    /// labels changed; all of one data set.
    Edits(Vec<Edit>),
}

impl Target {
    /// A comma-separated label vector, `0,1,0,0.5,1`.
    pub fn parse_vector(text: &str) -> Result<Self> {
        let values = text
            .split(',')
            .map(|v| match v.trim().parse::<f32>() {
                Ok(x) => check_value("the target", x),
                Err(_) => Err(Error::Input(format!("`{v}` is not a number"))),
            })
            .collect::<Result<_>>()?;
        Ok(Target::Vector(values))
    }
}

impl Model {
    /// The side of the square images G was trained on (128, the reference's, when unknown).
    pub fn input_size(&self) -> u32 {
        self.image_size.unwrap_or(128) as u32
    }

    /// An image as G's input: centre-cropped and resized to `input_size()`², normalised, `[1,3,S,S]`
    /// on G's device.
    pub fn input_of(&self, img: &image::RgbImage) -> Result<Tensor> {
        Ok(crate::image_io::to_network_input(img.clone(), self.input_size())?.to_device(self.g.device()))
    }

    /// Where label `name` sits: (data set, index within it).
    fn find_label(&self, name: &str) -> Result<(usize, usize)> {
        let found = self
            .layout
            .domains
            .iter()
            .enumerate()
            .find_map(|(k, d)| d.labels.iter().position(|l| l == name).map(|i| (k, i)));
        found.ok_or_else(|| {
            let all: Vec<&str> =
                self.layout.domains.iter().flat_map(|d| d.labels.iter().map(String::as_str)).collect();
            Error::Input(format!(
                "unknown attribute `{name}`; the checkpoint's labels are: {}",
                all.join(", ")
            ))
        })
    }

    /// D's reading of data set `k`'s labels for a batch `x` `[N,3,S,S]`, as 0/1 vectors `[N, dim]`
    /// (a one-hot data set's most likely class); `None` without a D.
    pub fn predict_labels(&self, k: usize, x: &Tensor) -> Option<Tensor> {
        let d = self.d.as_ref()?;
        let (_, logits) = tch::no_grad(|| d.forward(x));
        let logits = self.layout.slice_logits(k, &logits);
        let domain = &self.layout.domains[k];
        Some(match domain.kind {
            LabelKind::MultiLabel => logits.sigmoid().ge(0.5).to_kind(Kind::Float),
            LabelKind::OneHot => logits.argmax(1, false).one_hot(domain.dim()).to_kind(Kind::Float),
        })
    }

    /// G's label input `[1, g_dim]` for one input image `x` `[1,3,S,S]` and a target.
    pub fn condition(&self, target: &Target, x: &Tensor) -> Result<Tensor> {
        self.condition_given(target, x.device(), &|k| self.predict_labels(k, x))
    }

    /// [`Self::condition`] with D's reading of data set `k`'s labels for the image (`[1, dim]`)
    /// given by `predicted`, so a batch can have D run once for all its images.
    pub fn condition_given(
        &self,
        target: &Target,
        device: Device,
        predicted: &dyn Fn(usize) -> Option<Tensor>,
    ) -> Result<Tensor> {
        let g_dim = self.layout.g_dim();
        let edits = match target {
            Target::Vector(v) if v.len() as i64 != g_dim => {
                return Err(Error::Input(format!(
                    "the target has {} values but the checkpoint's generator takes {g_dim}",
                    v.len()
                )))
            }
            Target::Vector(v) => {
                for &x in v {
                    check_value("the target", x)?;
                }
                return Ok(Tensor::from_slice(v).view([1, g_dim]).to_device(device));
            }
            Target::Edits(e) if e.is_empty() => {
                return Err(Error::Input("no target: give a label vector or label edits".into()))
            }
            Target::Edits(e) => e,
        };
        let placed: Vec<(usize, usize, f32)> = edits
            .iter()
            .map(|e| Ok((self.find_label(&e.name)?, check_value(&e.name, e.value)?)))
            .map(|r: Result<_>| r.map(|((k, i), v)| (k, i, v)))
            .collect::<Result<_>>()?;
        let k = placed[0].0;
        if placed.iter().any(|e| e.0 != k) {
            return Err(Error::Input(
                "the edits name labels of different datasets; edit one at a time".into(),
            ));
        }
        let domain = &self.layout.domains[k];
        let mut dense: Vec<f32> = match predicted(k) {
            Some(p) => Vec::<f32>::try_from(p.to_device(Device::Cpu).view([-1]))?,
            None => vec![0.0; domain.dim() as usize],
        };
        for &(_, i, v) in &placed {
            if domain.kind == LabelKind::OneHot && v != 0.0 {
                dense.iter_mut().for_each(|x| *x = 0.0);
            }
            dense[i] = v;
        }
        let dense = Tensor::from_slice(&dense).view([1, domain.dim()]).to_device(device);
        Ok(self.layout.place(k, &dense))
    }

    /// G(x, c) for a batch, without gradients.
    pub fn translate(&self, x: &Tensor, c: &Tensor, stats: NormStats, precision: Precision) -> Tensor {
        self.g.translate(x, c, stats, precision)
    }

    /// Translate one image `[1,3,S,S]` (on G's device) to `target`: `[3,S,S]` in [-1, 1].
    pub fn translate_image(
        &self,
        x: &Tensor,
        target: &Target,
        stats: NormStats,
        precision: Precision,
    ) -> Result<Tensor> {
        let c = self.condition(target, x)?;
        Ok(self.translate(x, &c, stats, precision).get(0))
    }

    /// Whether this model can translate data with `layout` at `image_size`; the error says why not.
    /// A training checkpoint must have been trained on exactly these labels; a reference G only
    /// needs their number.
    pub fn check_fits(&self, layout: &LabelLayout, image_size: i64, path: &Path) -> Result<()> {
        if self.labels_known && self.layout != *layout {
            return Err(Error::Input(format!(
                "{} was trained on {}, but the data has {}",
                path.display(),
                self.layout.describe(),
                layout.describe()
            )));
        }
        if self.g.config.c_dim != layout.g_dim() {
            return Err(Error::Input(format!(
                "{} takes {} labels but the data ({}) has {}; give the data settings it was trained with",
                path.display(),
                self.g.config.c_dim,
                layout.describe(),
                layout.g_dim()
            )));
        }
        if let Some(s) = self.image_size.filter(|&s| s != image_size) {
            return Err(Error::Input(format!(
                "{} works on {s}×{s} images, not {image_size}×{image_size}",
                path.display()
            )));
        }
        Ok(())
    }
}
