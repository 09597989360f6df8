//! `stargan synth`: write the built-in faces in the real datasets' layouts, so the real loaders
//! (and other tools) can read them: CelebA's `list_attr_celeba.txt` + `images/*.jpg`, or RaFD's
//! one folder per expression.

use crate::data::source::render_into;
use crate::data::synthetic::{self, LabelSet};
use crate::data::transform::from_chw_normalized;
use crate::error::{Error, Result};
use crate::image_io::{self, ImageFormat};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Layout {
    /// `list_attr_celeba.txt` (count line, names line, ±1 rows) and `images/NNNNNN.jpg`.
    Celeba,
    /// `<expression>/NNNNNN.jpg`.
    Rafd,
}

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    #[arg(long, value_enum)]
    pub layout: Layout,
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    #[arg(long)]
    pub out: PathBuf,
    /// Side of the square images.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn to_jpeg(chw: &[f32], size: u32) -> Result<Vec<u8>> {
    image_io::encode_rgb8(&from_chw_normalized(chw), size, size, ImageFormat::Jpeg)
}

use crate::files::write;

/// Write `count` images and their labels; returns the files written (the attribute file last).
pub fn synth(args: &SynthArgs) -> Result<Vec<PathBuf>> {
    if args.count == 0 {
        return Err(Error::Input("--count must be at least 1".into()));
    }
    synthetic::Renderer::new(args.size).map_err(|e| Error::Input(format!("--size: {e}")))?;
    let split = match args.layout {
        Layout::Celeba => LabelSet::Celeba,
        Layout::Rafd => LabelSet::Rafd,
    };
    let plane = (args.size * args.size) as usize;
    let rows: Vec<(PathBuf, synthetic::Labels)> = (0..args.count)
        .into_par_iter()
        .map(|i| {
            let (content, labels) = synthetic::sample(split, args.seed, i as u64);
            let mut chw = vec![0f32; 3 * plane];
            render_into(args.size, &content, &labels, &mut chw)?;
            let rel = match args.layout {
                Layout::Celeba => Path::new("images").join(format!("{:06}.jpg", i + 1)),
                Layout::Rafd => Path::new(labels.expression.name()).join(format!("{:06}.jpg", i + 1)),
            };
            write(&args.out.join(&rel), &to_jpeg(&chw, args.size)?)?;
            Ok((rel, labels))
        })
        .collect::<Result<_>>()?;
    let mut written: Vec<PathBuf> = rows.iter().map(|(rel, _)| args.out.join(rel)).collect();
    if let Layout::Celeba = args.layout {
        let mut text = format!("{}\n{}\n", rows.len(), synthetic::CELEBA_ATTRIBUTES.join(" "));
        for (rel, labels) in &rows {
            let name = rel.file_name().expect("file name").to_string_lossy();
            let values: Vec<&str> =
                labels.celeba().to_vector().iter().map(|&v| if v > 0.5 { " 1" } else { "-1" }).collect();
            text.push_str(&format!("{name} {}\n", values.join(" ")));
        }
        let path = args.out.join("list_attr_celeba.txt");
        write(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
