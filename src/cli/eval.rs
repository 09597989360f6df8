//! `stargan eval`: measure a trained generator (see [`crate::eval`] for the metrics).
//!
//! The data options are `stargan train`'s. A training checkpoint knows the data it was trained on:
//! its configuration is the base, then the `--config` file, then the flags given (so
//! `--max-images`-only invocations evaluate on the training data's test split, and e.g.
//! `--celeba-image-dir` points at a moved copy). Device and thread settings are not inherited: they
//! describe the machine that trained. A reference `.ckpt` or exported G carries no data settings:
//! give the data flags as for `stargan train`.
//!
//! Where the judge classifier is cached: `--classifier`, else `--model-save-dir` when given, else
//! a training checkpoint's own folder (a training configuration's relative `model_save_dir` names
//! the folder as seen from where training ran, which need not be the current directory), else
//! (reference checkpoints, whose folder may be read-only or shared) `<result-dir>/judges`.

use crate::config::{DeviceChoice, TrainConfig};
use crate::error::Result;
use crate::eval::{evaluate, training_meta, EvalOptions, EvalReport};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// The generator: a training checkpoint (`{iteration}.stargan.safetensors`, which knows its
    /// data and labels), or a reference `{step}-G.ckpt` / exported G (give the data flags).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Folder for eval.json, report.md, grid.png [default: <result-dir>/eval].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Test images per data set (the first ones, in file order).
    #[arg(long, default_value_t = 512)]
    pub max_images: usize,
    /// Training iterations of the judge classifier, when it is not cached yet.
    #[arg(long, default_value_t = 1500)]
    pub classifier_iters: u64,
    /// The judge classifier's cache file, reused when present [default:
    /// <model-save-dir or the checkpoint's folder>/classifier-<hash of the data settings>.safetensors].
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Data options, as for `stargan train` [default: the training checkpoint's].
    #[command(flatten)]
    pub run: crate::cli::RunArgs,
}

/// The data configuration of an evaluation (see the module docs); `meta` is the checkpoint's
/// training metadata, if it is a training checkpoint.
pub fn data_config(args: &EvalArgs, meta: Option<crate::checkpoint::native::Meta>) -> Result<TrainConfig> {
    let Some(meta) = meta else {
        return args.run.resolve();
    };
    let base = TrainConfig { device: DeviceChoice::Auto, threads: 0, ..meta.config };
    TrainConfig::layered(&base, args.run.file()?, args.run.flags()?)
}

/// The library options for these flags.
pub fn options(args: &EvalArgs) -> Result<EvalOptions> {
    let meta = training_meta(&args.checkpoint)?;
    let is_training = meta.is_some();
    let mut data = data_config(args, meta)?;
    if args.run.model_save_dir.is_none() && !is_training {
        // A reference checkpoint's folder may be read-only or shared: the judge goes with the
        // results instead.
        data.output.model_save_dir = data.output.result_dir.join("judges");
    } else if args.run.model_save_dir.is_none() {
        if let Some(dir) = args.checkpoint.parent() {
            data.output.model_save_dir =
                if dir.as_os_str().is_empty() { ".".into() } else { dir.to_path_buf() };
        }
    }
    let mut opts = EvalOptions::new(&args.checkpoint, data)?;
    if let Some(out) = &args.out {
        opts.out = out.clone();
    }
    opts.max_images = args.max_images;
    opts.classifier_iters = args.classifier_iters;
    opts.classifier = args.classifier.clone();
    Ok(opts)
}

/// `stargan eval`: evaluate, write the files and print a summary.
pub fn eval(args: &EvalArgs) -> Result<EvalReport> {
    let opts = options(args)?;
    if opts.data.threads > 0 {
        tch::set_num_threads(opts.data.threads as i32);
    }
    let report = evaluate(&opts)?;
    print!("{}", crate::eval::summary(&report));
    Ok(report)
}
