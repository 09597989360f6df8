//! `stargan translate`, `stargan info` and `stargan export`: using a trained generator.

use crate::checkpoint::{self, infer_discriminator, infer_generator, native, read_tensors};
use crate::error::{Error, Result};
use crate::face;
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
    #[command(flatten)]
    pub faces: FaceArgs,
    /// Translate faces in photos: `auto` finds and aligns them unless the input is already framed
    /// (exactly the model's size, or CelebA's 178×218) or the model was trained on RaFD, and
    /// translates an image without a face whole (with a warning); `on` always aligns and refuses an
    /// image without a face; `off` translates the whole image, centre-cropped.
    #[arg(long, value_enum, default_value = "auto")]
    pub align: face::Align,
    /// Also write each face's aligned crop and its translation beside the output.
    #[arg(long)]
    pub save_crops: bool,
}

/// How faces are found: shared by `translate` and `align`.
#[derive(Debug, clap::Args)]
pub struct FaceArgs {
    /// Only the N-th largest face of each photo (from 1) [default: every face].
    #[arg(long, value_name = "N")]
    pub face: Option<usize>,
    /// The smallest face searched for, in pixels (smaller finds more, slower).
    #[arg(long, default_value_t = 20.0, value_name = "PX")]
    pub min_face_size: f64,
    /// A folder holding MTCNN's pnet.pt, rnet.pt and onet.pt [default: face-models/, which
    /// scripts/setup.sh fills from the facenet-pytorch wheel].
    #[arg(long, value_name = "DIR")]
    pub face_model: Option<PathBuf>,
}

impl FaceArgs {
    pub fn options(&self) -> face::DetectOptions {
        face::DetectOptions { min_face_size: self.min_face_size, ..Default::default() }
    }

    pub fn which(&self) -> Result<face::Which> {
        match self.face {
            None => Ok(face::Which::All),
            Some(0) => Err(Error::Input("--face counts from 1 (the largest face)".into())),
            Some(n) => Ok(face::Which::Nth(n)),
        }
    }

    pub fn detector(&self, device: Device) -> Result<face::Detector> {
        self.options().check()?;
        self.which()?;
        face::Detector::find(self.face_model.as_deref(), device)
    }
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
    // Which inputs are photos to find faces in, from their headers: a bad header fails here,
    // before any output is written.
    let photo: Vec<bool> = inputs
        .iter()
        .map(|p| args.align.detects(&model, || Ok(crate::data::transform::image_dimensions(p)?)))
        .collect::<Result<_>>()?;
    let detector = match photo.iter().any(|&p| p) {
        true => Some(args.faces.detector(device)?),
        false => None,
    };
    if args.save_crops {
        for ((out, _), _) in outputs.iter().zip(&photo).filter(|(_, &p)| p) {
            for k in 1..=2 {
                for what in ["aligned", "translated"] {
                    crate::files::destination(&crop_path(out, k, what))
                        .map_err(|e| Error::Input(format!("--output: {e}")))?;
                }
            }
        }
    }
    // The whole-image inputs are small: decode them all first, so a bad one fails before any
    // output is written. Photos are decoded one at a time below.
    let mut whole: Vec<Option<Tensor>> = inputs
        .iter()
        .zip(&photo)
        .map(|(p, &is_photo)| if is_photo { Ok(None) } else { image_io::load_input(p, size).map(Some) })
        .collect::<Result<_>>()?;
    let flagged = |e: Error| match e {
        Error::Input(m) => Error::Input(format!("{flag}: {m}")),
        e => e,
    };
    let mut written = Vec::new();
    let mut failed = Vec::new();
    // The whole image, translated and written.
    let translate_whole = |x: Tensor, out: &Path, format: ImageFormat| -> Result<()> {
        let y =
            model.translate_image(&x.to_device(device), &target, stats, args.precision).map_err(flagged)?;
        crate::files::write(out, &image_io::encode(&y, format)?)
    };
    for (i, ((out, format), input)) in outputs.into_iter().zip(&inputs).enumerate() {
        if let Some(x) = whole[i].take() {
            translate_whole(x, &out, format)?;
            written.push(out);
            continue;
        }
        let detector = detector.as_ref().expect("loaded when any input is a photo");
        let opts = args.faces.options();
        let img = match face::load_photo(input) {
            Ok(img) => img,
            // In a folder, one unreadable photo does not stop the others.
            Err(e) if inputs.len() > 1 && e.kind() != crate::error::ErrorKind::Internal => {
                failed.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        let found = detector.detect(&img, &opts)?;
        if found.is_empty() && args.align.whole_without_faces() {
            // Not a photo of a face, as far as the detector can tell: translate it whole.
            tracing::warn!(
                "{}: no face found; translating the whole image (--align on refuses instead)",
                input.display()
            );
            translate_whole(image_io::load_input(input, size)?, &out, format)?;
            written.push(out);
            continue;
        }
        let faces = face::choose(&img, found, &opts, args.faces.which()?).map(|f| (f, img));
        let (faces, img) = match faces {
            Ok(found) => found,
            // In a folder, one photo without a face does not stop the others.
            Err(e @ Error::Input(_)) if inputs.len() > 1 => {
                failed.push(format!("{}: {e}", input.display()));
                continue;
            }
            Err(e @ Error::Input(_)) => {
                return Err(Error::Input(format!(
                    "{}: {e}; `align` off translates the whole image",
                    input.display()
                )))
            }
            Err(e) => return Err(e),
        };
        for f in &faces {
            let width = f.face.width().min(f.face.height());
            if width < size as f32 / 2.0 {
                tracing::warn!(
                    "{}: a face is {width:.0} pixels wide, the model works at {size}; its translation is upscaled and soft",
                    input.display()
                );
            }
        }
        let done =
            face::translate_photo(&model, faces, &img, &target, stats, args.precision).map_err(flagged)?;
        let mut files = vec![(
            out.clone(),
            image_io::encode_rgb8(done.composite.as_raw(), img.width(), img.height(), format)?,
        )];
        if args.save_crops {
            for (k, f) in done.faces.iter().enumerate() {
                let (a, t) = (&f.aligned.image, &f.output);
                files.push((
                    crop_path(&out, k + 1, "aligned"),
                    image_io::encode_rgb8(a.as_raw(), a.width(), a.height(), ImageFormat::Png)?,
                ));
                files.push((
                    crop_path(&out, k + 1, "translated"),
                    image_io::encode_rgb8(t.as_raw(), t.width(), t.height(), ImageFormat::Png)?,
                ));
            }
        }
        tracing::info!("{}: {} face(s) translated", input.display(), done.faces.len());
        crate::files::write_all_or_none(&files)?;
        written.extend(files.into_iter().map(|(p, _)| p));
    }
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("{}", super::with_flag_names(f));
        }
        return Err(Error::Input(format!(
            "{} of {} inputs were not translated (above); the other outputs were written",
            failed.len(),
            inputs.len()
        )));
    }
    Ok(written)
}

/// `out.png` → `out.face1.aligned.png`: a face's crop beside the composite.
fn crop_path(out: &Path, k: usize, what: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{stem}.face{k}.{what}.png"))
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
    let mask = if g.attention { " attention mask" } else { "" };
    format!(
        "conv_dim {} c_dim {} repeat_num {}{mask} - {parameters} parameters",
        g.conv_dim, g.c_dim, g.repeat_num
    )
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
    let mut nets = vec![("G", g.weights.snapshot()), ("D", d.weights.snapshot())];
    if let Some(avg) = loaded.generator_ema() {
        // The moving average, which `translate` uses: a G like any other to PyTorch.
        let g_ema = Generator::new(loaded.meta.g, Device::Cpu);
        g_ema.weights.load(&avg).map_err(weights_err)?;
        nets.push(("G_ema", g_ema.weights.snapshot()));
    }
    let mut files = Vec::new();
    for (net, weights) in nets {
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
