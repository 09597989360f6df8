//! The configuration of a run: the reference's flags with its defaults, plus our own, grouped by
//! concern (data, model, optimisation, output). Each part is flattened, so a `--config` file and
//! `config.toml` keep one flat namespace: the reference's flag names.
//!
//! Values come from three layers, later ones winning: the defaults for the chosen dataset, a
//! `--config run.toml` file, and the command line ([`TrainConfig::layered`]). The effective
//! configuration is written next to the run's checkpoints (`config.toml`) so a run can always be
//! reproduced.

pub use crate::data::config::{DataConfig, DatasetKind, SyntheticLabels, DEFAULT_ATTR_PATH};
pub use crate::precision::Precision;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    /// Linear to zero over the last `num_iters_decay` iterations (the paper), updated every
    /// `lr_update_step` iterations.
    Linear,
    /// The reference code's schedule, reproduced exactly: it subtracts lr/num_iters_decay every
    /// `lr_update_step` iterations, so lr only falls to about 0.999·lr by the end.
    Reference,
}

/// The adversarial loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdvLoss {
    /// The paper's WGAN form: D minimises −E[D(x)] + E[D(G(x,c))], G minimises −E[D(G(x,c))].
    #[default]
    Wgan,
    /// The non-saturating logistic loss (StarGAN v2's): softplus(−D(x)) + softplus(D(G)) for D,
    /// softplus(−D(G)) for G.
    Ns,
}

/// D's regulariser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PenaltyKind {
    /// WGAN-GP on interpolates of real and fake images, weight `lambda_gp` (the paper's).
    #[default]
    Gp,
    /// R1 on real images, (1/2)·E[‖∇ₓ D(x)‖²], weight `lambda_r1` (Mescheder et al. 2018; StarGAN v2).
    R1,
}

/// How an iteration is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepMode {
    /// Operation for operation as the reference (bit-identical results).
    Reference,
    /// The same objective with less work: in iterations with a G step, G(x, c_trg) is computed once
    /// (with its graph) and shared by the D and G updates, where the reference computes it twice
    /// with the same weights (otherwise it is computed without a graph); D judges the real and the
    /// generated images in one pass. Losses and gradients equal the reference's up to rounding (the
    /// parity tests hold it to the same bounds); the instance-norm running averages move as the
    /// reference moves them (see `NormStats::PerImageTwice`).
    #[default]
    Fast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
                return Err(crate::error::Error::Input(
                    "`device` cuda: no CUDA device is available (no GPU, or a CPU-only libtorch: \
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

/// The networks' sizes. G's and D's label sizes come from the data's label layout; `c_dim` and
/// `c2_dim` are the reference's flags for them, checked against the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Number of CelebA attributes (must equal the number of `selected_attrs`).
    pub c_dim: i64,
    /// Number of RaFD expressions (joint training).
    pub c2_dim: i64,
    pub g_conv_dim: i64,
    pub d_conv_dim: i64,
    pub g_repeat_num: i64,
    pub d_repeat_num: i64,
    /// G also predicts a per-pixel mask A and outputs A·G's image + (1−A)·x (GANimation's
    /// attention; not the reference's architecture).
    pub attention_mask: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            c_dim: 5,
            c2_dim: 8,
            g_conv_dim: 64,
            d_conv_dim: 64,
            g_repeat_num: 6,
            d_repeat_num: 6,
            attention_mask: false,
        }
    }
}

/// The objective and how it is optimised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimConfig {
    pub lambda_cls: f64,
    pub lambda_rec: f64,
    pub lambda_gp: f64,
    pub batch_size: usize,
    pub num_iters: u64,
    pub num_iters_decay: u64,
    pub g_lr: f64,
    pub d_lr: f64,
    pub n_critic: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub lr_decay: LrDecay,
    pub lr_update_step: u64,
    /// `fast` (default) or `reference` (the authors' operation order, bit-identical).
    pub step_mode: StepMode,
    /// `fp32` (default) or `bf16` (autocast: convolutions in bf16, weights and optimiser in fp32).
    pub precision: Precision,
    /// Continue from the checkpoint of this iteration, or `latest`.
    pub resume_iters: Option<String>,
    /// `wgan` (the paper's, default) or `ns` (non-saturating).
    pub adv_loss: AdvLoss,
    /// `gp` (the paper's, default) or `r1`.
    pub penalty: PenaltyKind,
    /// Weight of the R1 penalty (StarGAN v2 uses 1).
    pub lambda_r1: f64,
    /// Lazy regularisation (StyleGAN2): the penalty on every k-th D update only, weighted by k.
    pub reg_every: u64,
    /// Keep an exponential moving average of G's weights with this decay (0: none; StarGAN v2:
    /// 0.999). Saved in checkpoints; `test`, `translate`, `eval` and the server use it.
    pub ema_beta: f64,
    /// Weight of an attention generator's mask sparsity E[A] (GANimation's λ_A: 0.1).
    pub lambda_mask: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lambda_cls: 1.0,
            lambda_rec: 10.0,
            lambda_gp: 10.0,
            batch_size: 16,
            num_iters: 200_000,
            num_iters_decay: 100_000,
            g_lr: 1e-4,
            d_lr: 1e-4,
            n_critic: 5,
            beta1: 0.5,
            beta2: 0.999,
            lr_decay: LrDecay::Linear,
            lr_update_step: 1000,
            step_mode: StepMode::Fast,
            precision: Precision::Fp32,
            resume_iters: None,
            adv_loss: AdvLoss::Wgan,
            penalty: PenaltyKind::Gp,
            lambda_r1: 1.0,
            reg_every: 1,
            ema_beta: 0.0,
            lambda_mask: 0.1,
        }
    }
}

/// Where a run writes, and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputConfig {
    pub log_dir: PathBuf,
    pub model_save_dir: PathBuf,
    pub sample_dir: PathBuf,
    pub result_dir: PathBuf,
    pub log_step: u64,
    pub sample_step: u64,
    pub model_save_step: u64,
    pub use_tensorboard: bool,
    /// Also write reference-format `{step}-G.ckpt` / `{step}-D.ckpt` for PyTorch users.
    pub save_reference_format: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            log_dir: "stargan/logs".into(),
            model_save_dir: "stargan/models".into(),
            sample_dir: "stargan/samples".into(),
            result_dir: "stargan/results".into(),
            log_step: 10,
            sample_step: 1000,
            model_save_step: 10_000,
            use_tensorboard: true,
            save_reference_format: false,
        }
    }
}

/// Every setting of a training (or test) run. Field names are the reference's flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    #[serde(flatten)]
    pub data: DataConfig,
    #[serde(flatten)]
    pub model: ModelConfig,
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[serde(flatten)]
    pub output: OutputConfig,
    /// Seed of every random choice (initialisation, batches, flips, targets, the built-in data).
    pub seed: u64,
    /// Checkpoint iteration to test (default: the latest).
    pub test_iters: Option<u64>,
    /// Accepted for compatibility; decoding uses all cores.
    pub num_workers: usize,
    pub device: DeviceChoice,
    /// Intra-op threads for libtorch (0: one per core).
    pub threads: usize,
    /// Data-parallel runs: the c10d backend (auto: NCCL on CUDA, Gloo on the CPU).
    pub dist_backend: crate::dist::BackendChoice,
    /// Data-parallel runs: seconds a rank waits for the others (rendezvous, each collective) before
    /// the run stops with an error.
    pub dist_timeout: u64,
}

impl Default for TrainConfig {
    /// The reference's defaults (its `main.py`).
    fn default() -> Self {
        Self {
            data: DataConfig::default(),
            model: ModelConfig::default(),
            optim: OptimConfig::default(),
            output: OutputConfig::default(),
            seed: 0,
            test_iters: None,
            num_workers: 1,
            device: DeviceChoice::Auto,
            threads: 0,
            dist_backend: crate::dist::BackendChoice::Auto,
            dist_timeout: 300,
        }
    }
}

impl TrainConfig {
    /// The CPU-friendly run that `stargan train` does with no dataset flags: the built-in faces at
    /// 32 px with narrower networks, sized to learn the attributes on a 2-core machine in minutes.
    pub fn synthetic_default() -> Self {
        Self {
            data: DataConfig { dataset: DatasetKind::Synthetic, image_size: 32, ..DataConfig::default() },
            model: ModelConfig {
                g_conv_dim: 32,
                d_conv_dim: 32,
                g_repeat_num: 3,
                d_repeat_num: 5,
                // G blends its image with the input through a mask: at 5000 iterations, 98.2% and
                // 98.7% target accuracy at 29.6 and 29.7 dB ground-truth PSNR (seeds 0, 1), where
                // the reference's G repaints the face (99.9% and 99.5% at 16.0 and 16.3 dB).
                attention_mask: true,
                ..ModelConfig::default()
            },
            optim: OptimConfig {
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
                lr_update_step: 100,
                ..OptimConfig::default()
            },
            output: OutputConfig {
                log_step: 250,
                sample_step: 500,
                model_save_step: 1000,
                log_dir: "runs/synthetic/logs".into(),
                model_save_dir: "runs/synthetic/models".into(),
                sample_dir: "runs/synthetic/samples".into(),
                result_dir: "runs/synthetic/results".into(),
                ..OutputConfig::default()
            },
            ..Self::default()
        }
    }

    /// Learning rates at iteration `i` (0-based, before that iteration's update is applied),
    /// given the schedule. Both schedules change the rate only every `lr_update_step` iterations,
    /// after iteration i+1 is a multiple of it, as the reference does.
    pub fn learning_rates(&self, i: u64) -> (f64, f64) {
        let o = &self.optim;
        let start = o.num_iters.saturating_sub(o.num_iters_decay);
        let step = o.lr_update_step.max(1);
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
        let decay = o.num_iters_decay.max(1) as f64;
        match o.lr_decay {
            LrDecay::Reference => {
                // Repeated subtraction in floating point, exactly as the reference does.
                let (mut g, mut d) = (o.g_lr, o.d_lr);
                for _ in 0..n {
                    g -= o.g_lr / decay;
                    d -= o.d_lr / decay;
                }
                (g, d)
            }
            LrDecay::Linear => {
                // A decay window longer than the run covers the whole run.
                let window = o.num_iters_decay.min(o.num_iters).max(1);
                let done = (n * step).min(window) as f64;
                let f = (1.0 - done / window as f64).max(0.0);
                (o.g_lr * f, o.d_lr * f)
            }
        }
    }

    /// Every check a configuration must pass before anything runs; the message names the setting
    /// by its flag.
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |m: String| Err(crate::error::Error::Input(m));
        let (o, out, m, d) = (&self.optim, &self.output, &self.model, &self.data);
        let positive = [
            ("batch_size", o.batch_size as u64),
            ("n_critic", o.n_critic),
            ("log_step", out.log_step),
            ("sample_step", out.sample_step),
            ("model_save_step", out.model_save_step),
            ("lr_update_step", o.lr_update_step),
        ];
        for (name, v) in positive {
            if v == 0 {
                return bad(format!("`{name}` must be at least 1"));
            }
        }
        let range = |name: &str, v: i64, r: std::ops::RangeInclusive<i64>| -> crate::error::Result<()> {
            if r.contains(&v) {
                Ok(())
            } else {
                bad(format!("`{name}` {v} is outside {}..={}", r.start(), r.end()))
            }
        };
        use crate::model::bounds;
        range("g_conv_dim", m.g_conv_dim, bounds::CONV_DIM)?;
        range("d_conv_dim", m.d_conv_dim, bounds::CONV_DIM)?;
        range("g_repeat_num", m.g_repeat_num, bounds::G_REPEAT)?;
        range("d_repeat_num", m.d_repeat_num, bounds::D_REPEAT)?;
        range("c_dim", m.c_dim, bounds::C_DIM)?;
        range("c2_dim", m.c2_dim, bounds::C_DIM)?;
        range("image_size", d.image_size, 8..=bounds::IMAGE_SIZE.end().to_owned())?;
        // A crop larger than this would zero-pad every image to gigabytes.
        for (name, v) in [
            ("celeba_crop_size", Some(d.celeba_crop_size)),
            ("rafd_crop_size", Some(d.rafd_crop_size)),
            ("crop_size", d.crop_size),
        ] {
            if let Some(v) = v {
                range(name, v as i64, 1..=8192)?;
            }
        }
        if let Some(n) = d.synthetic_rafd_faces {
            range("synthetic_rafd_faces", n as i64, 1..=crate::data::source::SYNTHETIC_TRAIN as i64)?;
        }
        range("batch_size", o.batch_size as i64, 1..=4096)?;
        range("threads", self.threads as i64, 0..=1024)?;
        range("dist_timeout", self.dist_timeout as i64, 1..=86_400)?;
        range("reg_every", o.reg_every as i64, 1..=1_000_000)?;
        for (name, v, lo, hi) in [
            ("g_lr", o.g_lr, f64::MIN_POSITIVE, 1.0),
            ("d_lr", o.d_lr, f64::MIN_POSITIVE, 1.0),
            ("beta1", o.beta1, 0.0, 1.0 - f64::EPSILON),
            ("beta2", o.beta2, 0.0, 1.0 - f64::EPSILON),
            ("lambda_cls", o.lambda_cls, 0.0, 1e6),
            ("lambda_rec", o.lambda_rec, 0.0, 1e6),
            ("lambda_gp", o.lambda_gp, 0.0, 1e6),
            ("lambda_r1", o.lambda_r1, 0.0, 1e6),
            ("ema_beta", o.ema_beta, 0.0, 1.0 - f64::EPSILON),
            ("lambda_mask", o.lambda_mask, 0.0, 1e6),
        ] {
            if !(v.is_finite() && (lo..=hi).contains(&v)) {
                let what = if hi < 1.0 {
                    "[0, 1)".to_string()
                } else if lo > 0.0 {
                    format!("(0, {hi}]")
                } else {
                    format!("[0, {hi:e}]")
                };
                return bad(format!("`{name}` {v} must be a finite number in {what}"));
            }
        }
        if m.attention_mask && out.save_reference_format {
            return bad(
                "`save_reference_format` cannot hold `attention_mask`'s generator: the reference's G has no mask (give `attention_mask` false for the reference's architecture)"
                    .into(),
            );
        }
        if d.image_size % (1 << m.d_repeat_num) != 0 || d.image_size >> m.d_repeat_num == 0 {
            return bad(format!(
                "`image_size` {} must be a multiple of 2^`d_repeat_num` = 2^{} (D halves it {} times)",
                d.image_size, m.d_repeat_num, m.d_repeat_num
            ));
        }
        // The networks these settings build, at their largest label sizes, within the same bounds
        // as a checkpoint's.
        let labels = m.c_dim + m.c2_dim;
        let g = crate::model::GeneratorConfig {
            conv_dim: m.g_conv_dim,
            c_dim: labels + 2,
            repeat_num: m.g_repeat_num,
            attention: m.attention_mask,
        };
        let dn = crate::model::DiscriminatorConfig {
            image_size: d.image_size,
            conv_dim: m.d_conv_dim,
            c_dim: labels,
            repeat_num: m.d_repeat_num,
        };
        for (net, check) in [("generator", g.check()), ("discriminator", dn.check())] {
            if let Err(e) = check {
                return bad(format!("these settings make too large a {net}: {e}"));
            }
        }
        if d.image_size % 4 != 0 {
            return bad(format!(
                "`image_size` {} must be a multiple of 4 (G downsamples twice)",
                d.image_size
            ));
        }
        let uses_celeba = matches!(d.dataset, DatasetKind::Celeba | DatasetKind::Both);
        if uses_celeba && m.c_dim != d.selected_attrs.len() as i64 {
            return bad(format!(
                "`c_dim` {} does not match the {} `selected_attrs` ({})",
                m.c_dim,
                d.selected_attrs.len(),
                d.selected_attrs.join(" ")
            ));
        }
        Ok(())
    }

    /// The one way every command builds a configuration: `base`, then the TOML `file` (if any),
    /// then `flags` (the settings given on the command line, by their snake_case names), each
    /// layer winning over the one before; unknown keys and invalid values are errors naming the
    /// key (and the file), and the result is [`validate`](Self::validate)d.
    pub fn layered(
        base: &TrainConfig,
        file: Option<(&std::path::Path, toml::Table)>,
        flags: toml::Table,
    ) -> crate::error::Result<Self> {
        use crate::error::Error;
        let internal =
            |e: toml::ser::Error| Error::Internal(format!("cannot represent the configuration: {e}"));
        let mut table = toml::Table::try_from(base).map_err(internal)?;
        let known = Self::keys();
        let check = |t: &toml::Table, src: &str| -> crate::error::Result<()> {
            match t.keys().find(|k| !known.contains(k.as_str())) {
                Some(k) => Err(Error::Input(format!("{src}unknown setting `{k}`"))),
                None => Ok(()),
            }
        };
        let mut src = String::new();
        if let Some((path, over)) = file {
            src = format!("{}: ", path.display());
            check(&over, &src)?;
            table.extend(over);
        }
        check(&flags, "")?;
        table.extend(flags);
        let mut cfg: TrainConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| Error::Input(format!("{src}{}", e.message().trim())))?;
        cfg.data.forget_legacy_default();
        cfg.validate()?;
        Ok(cfg)
    }

    /// A `--config` file's settings.
    pub fn read_table(path: &std::path::Path) -> crate::error::Result<toml::Table> {
        use crate::error::Error;
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| Error::Input(format!("{}: {}", path.display(), e.message())))
    }

    /// Every setting's name (the keys of a `--config` file).
    pub fn keys() -> std::collections::BTreeSet<String> {
        // JSON keeps unset options as `null`, so every key appears.
        match serde_json::to_value(TrainConfig::default()) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
            _ => Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_schedule_subtracts_every_update_step() {
        let mut cfg = TrainConfig::default();
        cfg.optim.lr_decay = LrDecay::Reference;
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
        let bogus: toml::Table = toml::from_str("bogus_key = 1").unwrap();
        let err = TrainConfig::layered(&cfg, None, bogus).unwrap_err().to_string();
        assert!(err.contains("bogus_key"), "{err}");
        // The flattened parts keep the reference's flat names.
        for key in ["dataset", "attr_path", "g_conv_dim", "n_critic", "model_save_dir", "seed", "test_iters"]
        {
            assert!(TrainConfig::keys().contains(key), "{key}");
        }
    }
}
