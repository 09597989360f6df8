//! `stargan translate`, `stargan info` and `stargan export`: using a trained generator.

use crate::checkpoint::{self, infer_discriminator, infer_generator, native, read_tensors};
use crate::error::{Error, Result};
use crate::image_io;
use crate::image_io::ImageFormat;
use crate::inference::{self, Edit, Target};
use crate::model::{Discriminator, Generator, NormStats};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

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

/// `--target` or `--set` as the library's [`Target`], with errors naming the flag.
fn target_of(args: &TranslateArgs) -> Result<Target> {
    if let Some(t) = &args.target {
        return Target::parse_vector(t).map_err(|e| Error::Input(format!("--target: {e}")));
    }
    if args.set.is_empty() {
        return Err(Error::Input("give --target 0,1,... or one or more --set NAME=VALUE".into()));
    }
    let edits = args
        .set
        .iter()
        .map(|s| s.parse::<Edit>().map_err(|e| Error::Input(format!("--set: {e}"))))
        .collect::<Result<_>>()?;
    Ok(Target::Edits(edits))
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
            return Err(Error::Input(format!("{} holds no images", input.display())));
        }
        Ok(files)
    } else if input.exists() {
        Ok(vec![input.to_path_buf()])
    } else {
        Err(Error::Input(format!("input {} does not exist", input.display())))
    }
}

pub fn translate(args: &TranslateArgs) -> Result<Vec<PathBuf>> {
    let device = args.device.resolve()?;
    let model = inference::load(&args.checkpoint, args.attrs.as_deref(), device)?;
    let target = target_of(args)?;
    let flag = if args.target.is_some() { "--target" } else { "--set" };
    let size = model.input_size();
    let inputs = inputs_of(&args.input)?;
    let to_folder = args.input.is_dir() || args.output.is_dir() || inputs.len() > 1;
    let stats = match args.norm {
        NormChoice::PerImage => NormStats::PerImageFrozen,
        NormChoice::Running => NormStats::Running,
    };
    // Where each output goes, checked before anything is decoded or written.
    let outputs: Vec<(PathBuf, ImageFormat)> = if to_folder {
        inputs
            .iter()
            .map(|p| {
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (args.output.join(format!("{stem}.png")), ImageFormat::Png)
            })
            .collect()
    } else {
        let format = match args.output.extension() {
            None => ImageFormat::Png,
            Some(_) => ImageFormat::from_path(&args.output).ok_or_else(|| {
                Error::Input(format!("--output {}: write .png or .jpg", args.output.display()))
            })?,
        };
        vec![(args.output.clone(), format)]
    };
    let mut seen = std::collections::HashMap::new();
    for ((out, _), input) in outputs.iter().zip(&inputs) {
        if let Some(first) = seen.insert(out.clone(), input) {
            return Err(Error::Input(format!(
                "{} and {} would both be written to {}; put one of them elsewhere",
                first.display(),
                input.display(),
                out.display()
            )));
        }
        crate::files::destination(out).map_err(|e| Error::Input(format!("--output: {e}")))?;
    }
    // Decode everything first: a bad input fails before any output is written.
    let images: Vec<Tensor> = inputs.iter().map(|p| image_io::load_input(p, size)).collect::<Result<_>>()?;
    let mut written = Vec::new();
    for ((out, format), x) in outputs.into_iter().zip(images) {
        let x = x.to_device(device);
        let y = model.translate_image(&x, &target, stats, args.precision).map_err(|e| match e {
            Error::Input(m) => Error::Input(format!("{flag}: {m}")),
            e => e,
        })?;
        let bytes = image_io::encode(&y, format)?;
        crate::files::write(&out, &bytes)?;
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
            .map(|(_, v)| checkpoint::element_count(v) as i64)
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
    let path = &args.checkpoint;
    let loaded = native::load(path)?;
    let it = loaded.meta.iteration;
    let weights_err = |source| Error::Weights { path: path.clone(), source };
    // Both networks checked and encoded before either file is written.
    let g = Generator::new(loaded.meta.g, Device::Cpu);
    g.weights.load(&loaded.generator()).map_err(weights_err)?;
    let d = Discriminator::new(loaded.meta.d, Device::Cpu);
    d.weights.load(&loaded.discriminator()).map_err(weights_err)?;
    let mut files = Vec::new();
    for (net, weights) in [("G", g.weights.snapshot()), ("D", d.weights.snapshot())] {
        // snapshot() lists the reference's state-dict order.
        let (out, bytes) = match args.format {
            ExportFormat::Safetensors => {
                let out = args.out_dir.join(format!("{it}-{net}.safetensors"));
                let bytes = checkpoint::safetensors_bytes(&weights, None, &out)?;
                (out, bytes)
            }
            ExportFormat::Torch => {
                // torch names the archive's folder after the file written (`3000-G/`).
                let out = args.out_dir.join(format!("{it}-{net}.ckpt"));
                let bytes = checkpoint::torch_bytes(&weights, &out)?;
                (out, bytes)
            }
        };
        files.push((out, bytes));
    }
    crate::files::write_all_or_none(&files)?;
    Ok(files.into_iter().map(|(p, _)| p).collect())
}
