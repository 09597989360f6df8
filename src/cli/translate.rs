//! `stargan translate`, `stargan info` and `stargan export`: using a trained generator.

use crate::checkpoint::{self, infer_discriminator, infer_generator, native, read_tensors};
use crate::error::{Error, Result};
use crate::image_io;
use crate::labels::{celeba_domain, Domain, LabelKind, LabelLayout};
use crate::model::{Discriminator, Generator, NormStats};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct TranslateArgs {
    /// A reference `{step}-G.ckpt`, an exported G (safetensors) or a training checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image file or a folder of images.
    #[arg(long)]
    pub input: PathBuf,
    /// A file (for one input image) or a folder.
    #[arg(long)]
    pub output: PathBuf,
    /// The target label vector, comma-separated (continuous values set intensity).
    #[arg(long, allow_hyphen_values = true, conflicts_with = "set")]
    pub target: Option<String>,
    /// Attribute names of a reference checkpoint's labels [default: the reference's five].
    #[arg(long, value_delimiter = ',')]
    pub attrs: Option<Vec<String>>,
    /// Set one label by name, e.g. `--set Blond_Hair=1` (repeatable); the others keep the input's
    /// labels as D's classifier predicts them when a D checkpoint is beside G, else 0.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: crate::config::DeviceChoice,
    /// Instance-norm statistics: per image (the reference's test mode) or the tracked running averages.
    #[arg(long, value_enum, default_value = "per-image")]
    pub norm: NormChoice,
    /// `bf16` runs G's convolutions in bf16 (autocast); the output is written from fp32 either way.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: crate::precision::Precision,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NormChoice {
    PerImage,
    Running,
}

/// A generator read from any checkpoint kind, with what is known about its labels.
pub struct LoadedG {
    pub g: Generator,
    pub layout: LabelLayout,
    /// Whether `layout` comes from the checkpoint (training checkpoints) or was assumed (reference files).
    pub labels_known: bool,
    pub image_size: Option<i64>,
    /// D, when the checkpoint has it or a `{step}-D.ckpt` sits beside a reference G.
    pub d: Option<Discriminator>,
}

fn weights_err(path: &Path) -> impl FnOnce(crate::model::WeightsError) -> Error + '_ {
    move |source| Error::Weights { path: path.to_path_buf(), source }
}

/// Load G (and D if available) from `path`. `attrs` names a reference checkpoint's labels.
pub fn load_generator(path: &Path, attrs: Option<&[String]>, device: Device) -> Result<LoadedG> {
    let file = read_tensors(path)?;
    if let Some(meta) = native::meta_of(&file, path)? {
        let g = Generator::new(meta.g, device);
        g.weights.load(&checkpoint::strip_prefix(&file.tensors, "G.")).map_err(weights_err(path))?;
        let d = Discriminator::new(meta.d, device);
        d.weights.load(&checkpoint::strip_prefix(&file.tensors, "D.")).map_err(weights_err(path))?;
        return Ok(LoadedG {
            g,
            layout: meta.layout,
            labels_known: true,
            image_size: Some(meta.d.image_size),
            d: Some(d),
        });
    }
    let cfg = infer_generator(&file.tensors, path)?;
    let g = Generator::new(cfg, device);
    g.weights.load(&file.tensors).map_err(weights_err(path))?;
    let layout = reference_layout(cfg.c_dim, attrs, path)?;
    let d = match sibling_d(path) {
        Some(dp) => {
            let df = read_tensors(&dp)?;
            let dcfg = infer_discriminator(&df.tensors, &dp)?;
            if dcfg.c_dim != layout.d_dim() {
                return Err(Error::Config(format!(
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
    Ok(LoadedG { g, layout, labels_known: false, image_size, d })
}

/// `200000-G.ckpt` → `200000-D.ckpt` in the same folder, if it exists.
fn sibling_d(g_path: &Path) -> Option<PathBuf> {
    let name = g_path.file_name()?.to_str()?;
    let d_name = name.replacen("-G.", "-D.", 1);
    (d_name != name).then(|| g_path.with_file_name(d_name)).filter(|p| p.exists())
}

/// A reference checkpoint carries no label names: the reference's CelebA attributes (or `--attrs`)
/// when their number fits, else generic names.
fn reference_layout(c_dim: i64, attrs: Option<&[String]>, path: &Path) -> Result<LabelLayout> {
    let default: Vec<String> = crate::labels::DEFAULT_CELEBA_ATTRS.iter().map(|s| s.to_string()).collect();
    match attrs {
        Some(a) if a.len() as i64 != c_dim => Err(Error::Config(format!(
            "--attrs names {} labels but {} takes {c_dim}",
            a.len(),
            path.display()
        ))),
        Some(a) => Ok(LabelLayout::single(celeba_domain(a))),
        None if c_dim == default.len() as i64 => Ok(LabelLayout::single(celeba_domain(&default))),
        None => Ok(LabelLayout::single(Domain {
            name: "labels".into(),
            kind: LabelKind::MultiLabel,
            labels: (0..c_dim).map(|i| format!("label{i}")).collect(),
        })),
    }
}

fn parse_vector(text: &str, want: i64) -> Result<Vec<f32>> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| {
            v.trim().parse::<f32>().map_err(|_| Error::Config(format!("--target: `{v}` is not a number")))
        })
        .collect::<Result<_>>()?;
    if values.len() as i64 != want {
        return Err(Error::Config(format!(
            "--target has {} values but the checkpoint's generator takes {want}",
            values.len()
        )));
    }
    Ok(values)
}

/// The target vector for one input: `--target` as given, or the input's own labels (predicted by D
/// when available) with the `--set` edits applied.
fn target_for(loaded: &LoadedG, args: &TranslateArgs, x: &Tensor) -> Result<Tensor> {
    let g_dim = loaded.layout.g_dim();
    if let Some(t) = &args.target {
        let v = parse_vector(t, g_dim)?;
        return Ok(Tensor::from_slice(&v).view([1, g_dim]));
    }
    if args.set.is_empty() {
        return Err(Error::Config("give --target 0,1,... or one or more --set NAME=VALUE".into()));
    }
    // Which domain each name belongs to.
    let mut edits = Vec::new();
    for s in &args.set {
        let (name, value) =
            s.split_once('=').ok_or_else(|| Error::Config(format!("--set takes NAME=VALUE, not `{s}`")))?;
        let value: f32 = value
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("--set {name}: `{value}` is not a number")))?;
        let found = loaded
            .layout
            .domains
            .iter()
            .enumerate()
            .find_map(|(k, d)| d.labels.iter().position(|l| l == name.trim()).map(|i| (k, i)));
        let (k, i) = found.ok_or_else(|| {
            let all: Vec<&str> =
                loaded.layout.domains.iter().flat_map(|d| d.labels.iter().map(String::as_str)).collect();
            Error::Config(format!(
                "unknown attribute `{name}`; the checkpoint's labels are: {}",
                all.join(", ")
            ))
        })?;
        edits.push((k, i, value));
    }
    let k = edits[0].0;
    if edits.iter().any(|e| e.0 != k) {
        return Err(Error::Config(
            "--set names labels of different datasets; edit one dataset at a time".into(),
        ));
    }
    let domain = &loaded.layout.domains[k];
    let mut dense: Vec<f32> = match &loaded.d {
        Some(d) => {
            let (_, logits) = tch::no_grad(|| d.forward(x));
            let logits = loaded.layout.slice_logits(k, &logits).to_device(Device::Cpu);
            let probs = match domain.kind {
                LabelKind::MultiLabel => logits.sigmoid().ge(0.5).to_kind(Kind::Float),
                LabelKind::OneHot => logits.argmax(1, false).one_hot(domain.dim()).to_kind(Kind::Float),
            };
            Vec::<f32>::try_from(probs.view([-1])).map_err(Error::Torch)?
        }
        None => vec![0.0; domain.dim() as usize],
    };
    for &(_, i, v) in &edits {
        if domain.kind == LabelKind::OneHot && v != 0.0 {
            dense.iter_mut().for_each(|x| *x = 0.0);
        }
        dense[i] = v;
    }
    let dense = Tensor::from_slice(&dense).view([1, domain.dim()]);
    Ok(loaded.layout.place(k, &dense))
}

fn inputs_of(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(|source| Error::Read { path: input.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(crate::data::folder::has_image_extension)
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Config(format!("{} holds no images", input.display())));
        }
        Ok(files)
    } else if input.exists() {
        Ok(vec![input.to_path_buf()])
    } else {
        Err(Error::Config(format!("input {} does not exist", input.display())))
    }
}

pub fn translate(args: &TranslateArgs) -> Result<Vec<PathBuf>> {
    let device = args.device.resolve()?;
    let loaded = load_generator(&args.checkpoint, args.attrs.as_deref(), device)?;
    let size = loaded.image_size.unwrap_or(128) as u32;
    let inputs = inputs_of(&args.input)?;
    let to_folder = args.input.is_dir() || args.output.is_dir() || inputs.len() > 1;
    let stats = match args.norm {
        NormChoice::PerImage => NormStats::PerImageFrozen,
        NormChoice::Running => NormStats::Running,
    };
    // Decode everything first: a bad input fails before any output is written.
    let images: Vec<Tensor> = inputs.iter().map(|p| image_io::load_input(p, size)).collect::<Result<_>>()?;
    let mut written = Vec::new();
    for (path, x) in inputs.iter().zip(images) {
        let x = x.to_device(device);
        let c = target_for(&loaded, args, &x)?.to_device(device);
        let y = loaded.g.translate(&x, &c, stats, args.precision);
        let out = if to_folder {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            args.output.join(format!("{stem}.png"))
        } else {
            args.output.clone()
        };
        image_io::save_png(&out, &y.get(0))?;
        written.push(out);
    }
    Ok(written)
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Any checkpoint: reference `.ckpt` (zip or legacy), exported safetensors, training checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
}

/// A human-readable description of a checkpoint: what it is, the inferred architecture and counts.
pub fn info(args: &InfoArgs) -> Result<String> {
    let path = &args.checkpoint;
    let format = checkpoint::sniff(path)?;
    let file = read_tensors(path)?;
    let mut out = format!(
        "{}: {}\n",
        path.display(),
        match format {
            checkpoint::Format::TorchZip => "torch.save zip container (PyTorch >= 1.6)",
            checkpoint::Format::TorchLegacy => "torch.save legacy container (PyTorch < 1.6)",
            checkpoint::Format::Safetensors => "safetensors",
        }
    );
    let count = |t: &std::collections::HashMap<String, Tensor>, buffers: bool| -> i64 {
        t.iter()
            .filter(|(k, _)| buffers || !(k.contains("running_") || k.ends_with("num_batches_tracked")))
            .map(|(_, v)| v.numel() as i64)
            .sum()
    };
    if let Some(meta) = native::meta_of(&file, path)? {
        let g = checkpoint::strip_prefix(&file.tensors, "G.");
        let d = checkpoint::strip_prefix(&file.tensors, "D.");
        out += &format!(
            "training checkpoint at iteration {} (lr G {:.3e}, D {:.3e})\n",
            meta.iteration, meta.g_lr, meta.d_lr
        );
        out += &format!("G: {}\n", describe_g(&meta.g, count(&g, false)));
        out += &format!("D: {}\n", describe_d(&meta.d, count(&d, false)));
        for dom in &meta.layout.domains {
            out += &format!("labels ({}, {:?}): {}\n", dom.name, dom.kind, dom.labels.join(", "));
        }
        return Ok(out);
    }
    if file.tensors.contains_key("conv2.weight") {
        let d = infer_discriminator(&file.tensors, path)?;
        out += &format!("discriminator: {}\n", describe_d(&d, count(&file.tensors, false)));
    } else {
        let g = infer_generator(&file.tensors, path)?;
        out += &format!("generator: {}\n", describe_g(&g, count(&file.tensors, false)));
        if !file.tensors.keys().any(|k| k.ends_with("num_batches_tracked")) {
            out += "(no num_batches_tracked buffers: written by PyTorch 0.3/0.4)\n";
        }
    }
    Ok(out)
}

fn describe_g(g: &crate::model::GeneratorConfig, parameters: i64) -> String {
    format!("conv_dim {} c_dim {} repeat_num {} - {parameters} parameters", g.conv_dim, g.c_dim, g.repeat_num)
}

fn describe_d(d: &crate::model::DiscriminatorConfig, parameters: i64) -> String {
    format!(
        "image_size {} conv_dim {} c_dim {} repeat_num {} - {parameters} parameters",
        d.image_size, d.conv_dim, d.c_dim, d.repeat_num
    )
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A training checkpoint (`{iteration}.stargan.safetensors`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder for `{iteration}-G` and `{iteration}-D` files.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// `safetensors` (load with safetensors.torch.load_file) or `torch` (the reference's .ckpt).
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Safetensors,
    Torch,
}

pub fn export(args: &ExportArgs) -> Result<Vec<PathBuf>> {
    let loaded = native::load(&args.checkpoint)?;
    let it = loaded.meta.iteration;
    let mut written = Vec::new();
    for (net, tensors) in [("G", loaded.generator()), ("D", loaded.discriminator())] {
        // Reference state-dict order is the order our networks list their weights in.
        let order: Vec<String> = match net {
            "G" => Generator::new(loaded.meta.g, Device::Cpu)
                .weights
                .iter()
                .map(|(k, _, _)| k.to_string())
                .collect(),
            _ => Discriminator::new(loaded.meta.d, Device::Cpu)
                .weights
                .iter()
                .map(|(k, _, _)| k.to_string())
                .collect(),
        };
        let named: Vec<(String, Tensor)> =
            order.iter().map(|k| (k.clone(), tensors[k].shallow_clone())).collect();
        let path = match args.format {
            ExportFormat::Safetensors => {
                let p = args.out_dir.join(format!("{it}-{net}.safetensors"));
                checkpoint::write_safetensors(&p, &named, None)?;
                p
            }
            ExportFormat::Torch => {
                let p = args.out_dir.join(format!("{it}-{net}.ckpt"));
                checkpoint::write_torch(&p, &named)?;
                p
            }
        };
        written.push(path);
    }
    Ok(written)
}
