//! The training configuration: the reference's flags with its defaults, plus our own.
//!
//! Values come from three layers, later ones winning: the defaults for the chosen dataset, a
//! `--config run.toml` file, and the command line. The effective configuration is written next to
//! the run's checkpoints (`config.toml`) so a run can always be reproduced.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CelebA: `list_attr_celeba.txt` and `img_align_celeba/`, multi-label attributes.
    #[value(alias = "CelebA")]
    Celeba,
    /// RaFD: one sub-folder of images per expression.
    #[value(alias = "RaFD")]
    Rafd,
    /// CelebA and RaFD jointly, with the mask vector.
    #[value(alias = "Both")]
    Both,
    /// Your own images: class sub-folders, or a folder plus an attribute file (CelebA format or CSV).
    Folder,
    /// The built-in procedural faces (no download); `--synthetic-split` picks the label sets.
    Synthetic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticSplit {
    /// Hair colour, male, young: multi-label, like CelebA.
    Celeba,
    /// Eight expressions: one-hot, like RaFD.
    Rafd,
    /// Both label sets jointly, with the mask vector.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    /// Linear to zero over the last `num_iters_decay` iterations (the paper), updated every
    /// `lr_update_step` iterations.
    Linear,
    /// The reference code's schedule, reproduced exactly: it subtracts lr/num_iters_decay every
    /// `lr_update_step` iterations, so lr only falls to about 0.999·lr by the end.
    Reference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch has it and a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// The device to run on. On CUDA, cuDNN autotuning is turned on, as the reference's `main.py`
    /// does (`cudnn.benchmark = True`): StarGAN's shapes are fixed, so the search pays once.
    pub fn resolve(self) -> crate::error::Result<tch::Device> {
        let device = match self {
            DeviceChoice::Cpu => tch::Device::Cpu,
            DeviceChoice::Cuda if !tch::Cuda::is_available() => {
                return Err(crate::error::Error::Config(
                    "--device cuda: no CUDA device is available (no GPU, or a CPU-only libtorch: \
                     scripts/setup.sh --cuda assembles a CUDA one)"
                        .into(),
                ))
            }
            DeviceChoice::Cuda => tch::Device::Cuda(0),
            DeviceChoice::Auto => tch::Device::cuda_if_available(),
        };
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(device)
    }
}

/// Every setting of a training (or test) run. Field names are the reference's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    // Model configuration.
    pub c_dim: i64,
    pub c2_dim: i64,
    pub celeba_crop_size: u32,
    pub rafd_crop_size: u32,
    pub image_size: i64,
    pub g_conv_dim: i64,
    pub d_conv_dim: i64,
    pub g_repeat_num: i64,
    pub d_repeat_num: i64,
    pub lambda_cls: f64,
    pub lambda_rec: f64,
    pub lambda_gp: f64,

    // Training configuration.
    pub dataset: DatasetKind,
    pub batch_size: usize,
    pub num_iters: u64,
    pub num_iters_decay: u64,
    pub g_lr: f64,
    pub d_lr: f64,
    pub n_critic: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub selected_attrs: Vec<String>,
    pub lr_decay: LrDecay,
    pub seed: u64,
    /// `fast` (default) or `reference` (the authors' operation order, bit-identical).
    pub step_mode: crate::train::StepMode,
    /// `fp32` (default) or `bf16` (autocast: convolutions in bf16, weights and optimiser in fp32).
    pub precision: crate::precision::Precision,

    // Test configuration.
    pub test_iters: Option<u64>,
    /// Continue from the checkpoint of this iteration, or `latest`.
    pub resume_iters: Option<String>,

    // Miscellaneous.
    pub num_workers: usize,
    pub use_tensorboard: bool,
    pub device: DeviceChoice,
    /// Intra-op threads for libtorch (0: one per core).
    pub threads: usize,

    // Directories.
    pub celeba_image_dir: PathBuf,
    pub attr_path: PathBuf,
    pub rafd_image_dir: PathBuf,
    /// `--dataset folder`: the images (class sub-folders, or flat with `attr_path`).
    pub image_dir: Option<PathBuf>,
    /// `--dataset folder`: centre-crop size before resizing (default: the shorter side).
    pub crop_size: Option<u32>,
    pub synthetic_split: SyntheticSplit,
    pub skip_missing: bool,
    pub log_dir: PathBuf,
    pub model_save_dir: PathBuf,
    pub sample_dir: PathBuf,
    pub result_dir: PathBuf,

    // Step size.
    pub log_step: u64,
    pub sample_step: u64,
    pub model_save_step: u64,
    pub lr_update_step: u64,
    /// Also write reference-format `{step}-G.ckpt` / `{step}-D.ckpt` for PyTorch users.
    pub save_reference_format: bool,
}

impl Default for TrainConfig {
    /// The reference's defaults (its `main.py`).
    fn default() -> Self {
        Self {
            c_dim: 5,
            c2_dim: 8,
            celeba_crop_size: 178,
            rafd_crop_size: 256,
            image_size: 128,
            g_conv_dim: 64,
            d_conv_dim: 64,
            g_repeat_num: 6,
            d_repeat_num: 6,
            lambda_cls: 1.0,
            lambda_rec: 10.0,
            lambda_gp: 10.0,
            dataset: DatasetKind::Celeba,
            batch_size: 16,
            num_iters: 200_000,
            num_iters_decay: 100_000,
            g_lr: 1e-4,
            d_lr: 1e-4,
            n_critic: 5,
            beta1: 0.5,
            beta2: 0.999,
            selected_attrs: crate::labels::DEFAULT_CELEBA_ATTRS.iter().map(|s| s.to_string()).collect(),
            lr_decay: LrDecay::Linear,
            seed: 0,
            step_mode: crate::train::StepMode::Fast,
            precision: crate::precision::Precision::Fp32,
            test_iters: None,
            resume_iters: None,
            num_workers: 1,
            use_tensorboard: true,
            device: DeviceChoice::Auto,
            threads: 0,
            celeba_image_dir: "data/celeba/images".into(),
            attr_path: "data/celeba/list_attr_celeba.txt".into(),
            rafd_image_dir: "data/RaFD/train".into(),
            image_dir: None,
            crop_size: None,
            synthetic_split: SyntheticSplit::Celeba,
            skip_missing: false,
            log_dir: "stargan/logs".into(),
            model_save_dir: "stargan/models".into(),
            sample_dir: "stargan/samples".into(),
            result_dir: "stargan/results".into(),
            log_step: 10,
            sample_step: 1000,
            model_save_step: 10_000,
            lr_update_step: 1000,
            save_reference_format: false,
        }
    }
}

impl TrainConfig {
    /// The CPU-friendly run that `stargan train` does with no dataset flags: the built-in faces at
    /// 32 px with narrower networks, sized to learn the attributes on a 2-core machine in minutes.
    pub fn synthetic_default() -> Self {
        Self {
            dataset: DatasetKind::Synthetic,
            image_size: 32,
            g_conv_dim: 32,
            d_conv_dim: 32,
            g_repeat_num: 3,
            d_repeat_num: 5,
            batch_size: 16,
            // ~0.14 s per iteration on 2 cores: about 12 minutes.
            num_iters: 5000,
            // Twice the reference's weight: at this short budget it keeps the content (measured
            // with `stargan eval` at 5000 iterations: PSNR 16.2 vs 15.1 dB, target accuracy 99.2%
            // vs 92.2%).
            lambda_rec: 20.0,
            num_iters_decay: 1500,
            n_critic: 5,
            g_lr: 2e-4,
            d_lr: 2e-4,
            log_step: 250,
            sample_step: 500,
            model_save_step: 1000,
            lr_update_step: 100,
            log_dir: "runs/synthetic/logs".into(),
            model_save_dir: "runs/synthetic/models".into(),
            sample_dir: "runs/synthetic/samples".into(),
            result_dir: "runs/synthetic/results".into(),
            ..Self::default()
        }
    }

    /// Learning rates at iteration `i` (0-based, before that iteration's update is applied),
    /// given the schedule. Both schedules change the rate only every `lr_update_step` iterations,
    /// after iteration i+1 is a multiple of it, as the reference does.
    pub fn learning_rates(&self, i: u64) -> (f64, f64) {
        let start = self.num_iters.saturating_sub(self.num_iters_decay);
        let step = self.lr_update_step.max(1);
        // Number of decay updates applied before iteration i: iterations j < i with (j+1) % step == 0
        // and (j+1) > start.
        let updates = |upto: u64| -> u64 {
            // count of m in (start, upto] with m % step == 0
            if upto <= start {
                0
            } else {
                upto / step - start / step
            }
        };
        let n = updates(i);
        let decay = self.num_iters_decay.max(1) as f64;
        match self.lr_decay {
            LrDecay::Reference => {
                // Repeated subtraction in floating point, exactly as the reference does.
                let (mut g, mut d) = (self.g_lr, self.d_lr);
                for _ in 0..n {
                    g -= self.g_lr / decay;
                    d -= self.d_lr / decay;
                }
                (g, d)
            }
            LrDecay::Linear => {
                // A decay window longer than the run covers the whole run.
                let window = self.num_iters_decay.min(self.num_iters).max(1);
                let done = (n * step).min(window) as f64;
                let f = (1.0 - done / window as f64).max(0.0);
                (self.g_lr * f, self.d_lr * f)
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("batch-size", self.batch_size as u64),
            ("n-critic", self.n_critic),
            ("log-step", self.log_step),
            ("sample-step", self.sample_step),
            ("model-save-step", self.model_save_step),
            ("lr-update-step", self.lr_update_step),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("--{name} must be at least 1"));
            }
        }
        if self.image_size % (1 << self.d_repeat_num) != 0 || self.image_size >> self.d_repeat_num == 0 {
            return Err(format!(
                "--image-size {} must be a multiple of 2^d-repeat-num = {} (D halves it {} times)",
                self.image_size,
                1i64 << self.d_repeat_num,
                self.d_repeat_num
            ));
        }
        if self.image_size % 4 != 0 {
            return Err(format!(
                "--image-size {} must be a multiple of 4 (G downsamples twice)",
                self.image_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_schedule_subtracts_every_update_step() {
        let cfg = TrainConfig { lr_decay: LrDecay::Reference, ..TrainConfig::default() };
        assert_eq!(cfg.learning_rates(0), (1e-4, 1e-4));
        assert_eq!(cfg.learning_rates(100_000).0, 1e-4);
        // After iteration 101000 (i.e. before i = 101000) one update has happened.
        let (g, _) = cfg.learning_rates(101_000);
        assert_eq!(g, 1e-4 - 1e-4 / 100_000.0);
        // At the end the reference has only lowered lr by 100 · lr/100000.
        let (g, _) = cfg.learning_rates(200_000);
        assert!((g - 0.999e-4).abs() < 1e-12, "{g}");
    }

    #[test]
    fn linear_schedule_reaches_zero() {
        let cfg = TrainConfig::default();
        assert_eq!(cfg.learning_rates(50_000).0, 1e-4);
        let (g, _) = cfg.learning_rates(150_000);
        assert!((g - 0.5e-4).abs() < 1e-12, "{g}");
        assert_eq!(cfg.learning_rates(200_000).0, 0.0);
    }

    #[test]
    fn toml_round_trip_keeps_every_field() {
        let cfg = TrainConfig::synthetic_default();
        let text = toml::to_string(&cfg).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg, back);
        assert!(toml::from_str::<TrainConfig>("bogus_key = 1").is_err());
    }
}
