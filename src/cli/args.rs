//! `stargan train` / `stargan test` flags: the reference's flags in kebab-case, every one optional,
//! layered over the dataset's defaults and a `--config` file.

use crate::config::{
    DatasetKind, DeviceChoice, LrDecay, PenaltyKind, Precision, StepMode, SyntheticLabels, TrainConfig,
};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

/// Flags given on the command line; `None` means "not given" (file or default applies).
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct RunArgs {
    /// A TOML file of settings (same names as the flags, snake_case); flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    // Model configuration.
    /// Number of CelebA attributes (must equal the number of --selected-attrs).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c_dim: Option<i64>,
    /// Number of RaFD expressions (joint training).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2_dim: Option<i64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub celeba_crop_size: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rafd_crop_size: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<i64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub g_conv_dim: Option<i64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_conv_dim: Option<i64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub g_repeat_num: Option<i64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_repeat_num: Option<i64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_cls: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_rec: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_gp: Option<f64>,
    /// The adversarial loss [default: wgan, the paper's].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adv_loss: Option<crate::config::AdvLoss>,
    /// D's penalty [default: gp, the paper's].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub penalty: Option<crate::config::PenaltyKind>,
    /// Weight of the R1 penalty [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_r1: Option<f64>,
    /// Lazy regularisation: the penalty on every k-th D update, weighted by k [default: 1].
    #[arg(long, value_name = "K")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_every: Option<u64>,
    /// Keep a moving average of G's weights with this decay, used to sample and translate (0: none) [default: 0].
    #[arg(long, value_name = "BETA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema_beta: Option<f64>,
    /// G also predicts a per-pixel mask A and outputs A·G's image + (1−A)·input, so what a target
    /// does not touch passes through (GANimation's attention; not the reference's architecture).
    /// On by default for the built-in data; `--attention-mask false` trains the reference's G.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<bool>,
    /// Weight of the attention mask's sparsity E[A] [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_mask: Option<f64>,

    // Training configuration.
    /// Which data to train on [default: synthetic when no data flags are given].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetKind>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_iters: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_iters_decay: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub g_lr: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d_lr: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_critic: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// Continue from the checkpoint of this iteration, or `latest`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_iters: Option<String>,
    /// CelebA attributes to learn (space- or comma-separated).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected_attrs: Option<Vec<String>>,
    /// Learning-rate decay over the last --num-iters-decay iterations.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<LrDecay>,
    /// How each iteration is computed: `fast` (shares G(x, c_trg) between the D and G updates) or
    /// `reference` (the authors' operation order, bit-identical results).
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_mode: Option<StepMode>,
    /// `fp32`, or `bf16` through autocast (convolutions in bf16 on bf16 copies of the weights;
    /// weights, gradients and Adam stay fp32), as torch.autocast does for the reference.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Seed of every random choice (initialisation, batches, flips, targets).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,

    // Test configuration.
    /// Checkpoint iteration to test (default: the latest).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_iters: Option<u64>,

    // Miscellaneous.
    /// Accepted for compatibility; decoding uses all cores.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_workers: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_tensorboard: Option<bool>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceChoice>,
    /// libtorch intra-op threads (0: one per core).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Data-parallel runs: the c10d backend.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dist_backend: Option<crate::dist::BackendChoice>,
    /// Data-parallel runs: seconds to wait for the other ranks before stopping with an error [default: 300].
    #[arg(long, value_name = "SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dist_timeout: Option<u64>,
    /// Train as N data-parallel ranks on this machine (torchrun's environment, Gloo on the CPU);
    /// --batch-size is then per rank.
    #[arg(long, value_name = "N")]
    #[serde(skip)]
    pub nproc_per_node: Option<usize>,

    // Directories.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub celeba_image_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attr_path: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rafd_image_dir: Option<PathBuf>,
    /// `--dataset folder`: class sub-folders, or images listed by --attr-path (CelebA format or CSV).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_dir: Option<PathBuf>,
    /// `--dataset folder`: centre-crop size before resizing (default: the shorter side).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_size: Option<u32>,
    /// `--dataset synthetic`: which label sets.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic_split: Option<SyntheticLabels>,
    /// `--dataset synthetic`: train on only the first N faces of the RaFD-like split (default:
    /// all 20,000), to make it as scarce beside the CelebA-like split as real RaFD is.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synthetic_rafd_faces: Option<u32>,
    /// Drop images listed in the attribute file but missing on disk instead of failing.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skip_missing: bool,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_save_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_dir: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_dir: Option<PathBuf>,

    // Step size.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_step: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_step: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_save_step: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_update_step: Option<u64>,
    /// Also write reference-format `{step}-G.ckpt` / `{step}-D.ckpt` checkpoints.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub save_reference_format: bool,
}

impl RunArgs {
    /// The settings given as flags, by their snake_case names.
    pub fn flags(&self) -> Result<toml::Table> {
        toml::Table::try_from(self).map_err(|e| Error::Internal(format!("cannot represent the flags: {e}")))
    }

    /// The `--config` file's settings, if one was given.
    pub fn file(&self) -> Result<Option<(&std::path::Path, toml::Table)>> {
        self.config.as_deref().map(|p| Ok((p, TrainConfig::read_table(p)?))).transpose()
    }

    /// Defaults for the chosen dataset, then the `--config` file, then the flags.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let file = self.file()?;
        let flags = self.flags()?;
        let dataset = flags
            .get("dataset")
            .or_else(|| file.as_ref().and_then(|(_, t)| t.get("dataset")))
            .and_then(|v| v.as_str());
        let base = match dataset {
            None | Some("synthetic") => TrainConfig::synthetic_default(),
            Some(_) => TrainConfig::default(),
        };
        let cfg = TrainConfig::layered(&base, file, flags).map_err(|e| match e {
            Error::Input(m) => Error::Input(super::with_flag_names(&m)),
            e => e,
        })?;
        self.refuse_ignored(&cfg)?;
        Ok(cfg)
    }

    /// Flags given for a dataset that has no use for them: an error, not silently dropped.
    fn refuse_ignored(&self, cfg: &TrainConfig) -> Result<()> {
        let d = cfg.data.dataset;
        let celeba = matches!(d, DatasetKind::Celeba | DatasetKind::Both);
        // The reference's --c-dim sizes CelebA's attributes or RaFD's classes.
        let labelled = celeba || d == DatasetKind::Rafd;
        let dataset = format!(
            "--dataset {}",
            toml::Value::try_from(d).map(|v| v.as_str().unwrap_or("?").to_string()).unwrap_or_default()
        );
        let (o, run) = (&cfg.optim, "this run");
        // (flag, given but unused, what it does not apply to, why)
        let given = [
            (
                "--lambda-r1",
                self.lambda_r1.is_some() && o.penalty != PenaltyKind::R1,
                run,
                "it weighs --penalty r1",
            ),
            (
                "--lambda-gp",
                self.lambda_gp.is_some() && o.penalty != PenaltyKind::Gp,
                run,
                "it weighs --penalty gp",
            ),
            (
                "--lambda-mask",
                self.lambda_mask.is_some() && !cfg.model.attention_mask,
                run,
                "it weighs --attention-mask's mask",
            ),
            (
                "--c-dim",
                self.c_dim.is_some() && !labelled,
                &dataset,
                "the labels of this data set come from its files",
            ),
            (
                "--c2-dim",
                self.c2_dim.is_some() && d != DatasetKind::Both,
                &dataset,
                "it sizes RaFD's part in joint training",
            ),
            (
                "--attr-path",
                self.attr_path.is_some() && !celeba && d != DatasetKind::Folder,
                &dataset,
                "this data set has no attribute file",
            ),
            (
                "--synthetic-split",
                self.synthetic_split.is_some() && d != DatasetKind::Synthetic,
                &dataset,
                "it picks the built-in data's labels",
            ),
            (
                "--synthetic-rafd-faces",
                self.synthetic_rafd_faces.is_some()
                    && (d != DatasetKind::Synthetic || cfg.data.synthetic_split == SyntheticLabels::Celeba),
                if d == DatasetKind::Synthetic { "--synthetic-split celeba" } else { &dataset },
                "it sizes the built-in data's RaFD-like split",
            ),
        ];
        match given.iter().find(|(_, bad, _, _)| *bad) {
            Some((flag, _, to, why)) => Err(Error::Input(format!("{flag} does not apply to {to}: {why}"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = std::env::temp_dir().join(format!("stargan-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        std::fs::write(&file, "dataset = \"rafd\"\nbatch_size = 7\nn_critic = 3\n").unwrap();
        let args = RunArgs { config: Some(file), batch_size: Some(9), ..Default::default() };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.data.dataset, DatasetKind::Rafd);
        assert_eq!(cfg.optim.batch_size, 9, "flag wins");
        assert_eq!(cfg.optim.n_critic, 3, "file wins over default");
        assert_eq!(cfg.data.image_size, 128, "reference default for real datasets");
        let cfg = RunArgs::default().resolve().unwrap();
        assert_eq!(cfg.data.dataset, DatasetKind::Synthetic);
        assert_eq!(cfg.data.image_size, TrainConfig::synthetic_default().data.image_size);
    }

    #[test]
    fn reference_flags_for_rafd_and_old_folder_configs_still_work() {
        // The reference's RaFD command line gives --c-dim (its class count).
        let args = RunArgs { dataset: Some(DatasetKind::Rafd), c_dim: Some(8), ..Default::default() };
        assert_eq!(args.resolve().unwrap().model.c_dim, 8);
        // A config.toml written before attr_path was optional names the default path for a folder
        // run, which meant class folders then and still does.
        let dir = std::env::temp_dir().join(format!("stargan-args-legacy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "dataset = \"folder\"\nattr_path = \"data/celeba/list_attr_celeba.txt\"\n")
            .unwrap();
        let cfg = RunArgs { config: Some(file), ..Default::default() }.resolve().unwrap();
        assert_eq!(cfg.data.attr_path, None);
    }

    #[test]
    fn bad_settings_are_one_clear_error() {
        let args = RunArgs {
            dataset: Some(DatasetKind::Celeba),
            selected_attrs: Some(vec!["Male".into()]),
            ..Default::default()
        };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("--c-dim 5") && err.contains("Male"), "{err}");
        let dir = std::env::temp_dir().join(format!("stargan-args-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        std::fs::write(&file, "batch_sise = 3\n").unwrap();
        let err = RunArgs { config: Some(file), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("batch_sise"), "{err}");
    }
}
