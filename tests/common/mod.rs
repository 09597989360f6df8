//! Helpers shared by the integration tests: the reference's parity fixtures.
#![allow(dead_code)]

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Root of the fixture sets: `STARGAN_PARITY_DIR`, else `../shared/parity` beside the repo.
pub fn parity_root() -> PathBuf {
    match std::env::var_os("STARGAN_PARITY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity"),
    }
}

/// Every scenario folder (one holding an `expected.json`), sorted.
pub fn scenarios() -> Vec<PathBuf> {
    scenarios_in(&parity_root())
}

/// The scenario folders of the fixture set at `root`.
pub fn scenarios_in(root: &Path) -> Vec<PathBuf> {
    let root = root.to_path_buf();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list parity fixtures in {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no parity scenarios under {}", root.display());
    dirs
}

#[derive(Debug, Deserialize)]
pub struct Expected {
    pub dataset: String,
    pub image_size: i64,
    pub g_conv_dim: i64,
    pub g_repeat_num: i64,
    pub d_conv_dim: i64,
    pub d_repeat_num: i64,
    pub c_dim: i64,
    pub c2_dim: Option<i64>,
    pub selected_attrs: Option<Vec<String>>,
    pub batch_size: i64,
    pub iterations: usize,
    pub n_critic: usize,
    pub g_lr: f64,
    pub d_lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub lambda_cls: f64,
    pub lambda_rec: f64,
    pub lambda_gp: f64,
    pub losses: Vec<HashMap<String, serde_json::Value>>,
}

pub fn load_expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("read expected.json");
    serde_json::from_str(&text).expect("parse expected.json")
}

pub fn load_tensors(dir: &Path) -> HashMap<String, Tensor> {
    stargan::checkpoint::read_tensors(&dir.join("tensors.safetensors"))
        .expect("read tensors.safetensors")
        .tensors
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    (a - b).abs().max().double_value(&[])
}

/// Asserts max|a − e| ≤ tol · max(max|e|, 1e-12), i.e. relative to the tensor's scale; returns the
/// achieved relative error.
pub fn assert_close_rel(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) -> f64 {
    let scale = expected.to_kind(tch::Kind::Double).abs().max().double_value(&[]).max(1e-12);
    let err = max_abs_diff(actual, expected) / scale;
    assert!(err <= tol, "{what}: relative error {err:.3e} exceeds {tol:.0e}");
    err
}

pub fn assert_close_abs(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) -> f64 {
    let err = max_abs_diff(actual, expected);
    assert!(err <= tol, "{what}: absolute error {err:.3e} exceeds {tol:.0e}");
    err
}

/// A 16-px model with 8-channel networks on the built-in data, writing under `dir`: seconds per run.
pub fn tiny_config(dir: &Path, iters: u64) -> stargan::config::TrainConfig {
    use stargan::config::{DataConfig, ModelConfig, OptimConfig, OutputConfig, TrainConfig};
    let base = TrainConfig::synthetic_default();
    TrainConfig {
        data: DataConfig { image_size: 16, ..base.data },
        model: ModelConfig { g_conv_dim: 8, d_conv_dim: 8, g_repeat_num: 1, d_repeat_num: 4, ..base.model },
        optim: OptimConfig {
            batch_size: 4,
            n_critic: 2,
            num_iters: iters,
            num_iters_decay: iters,
            lr_update_step: 1,
            ..base.optim
        },
        output: OutputConfig {
            log_step: 1000,
            sample_step: 1000,
            model_save_step: 1000,
            log_dir: dir.join("logs"),
            model_save_dir: dir.join("models"),
            sample_dir: dir.join("samples"),
            result_dir: dir.join("results"),
            ..base.output
        },
        device: stargan::config::DeviceChoice::Cpu,
        threads: 1,
        ..base
    }
}

/// A fresh scratch folder for one test.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stargan-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `stargan` binary run with `args`, logging warnings only.
pub fn stargan(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stargan"))
        .args(args)
        .env("STARGAN_LOG", "warn")
        .output()
        .expect("run stargan")
}

/// Flags of a tiny, fast training run writing under `dir` (`tiny_config` as the CLI spells it).
pub fn tiny_flags(dir: &Path, iters: u32) -> Vec<String> {
    let d = |s: &str| dir.join(s).to_string_lossy().into_owned();
    [
        "--image-size",
        "16",
        "--g-conv-dim",
        "8",
        "--d-conv-dim",
        "8",
        "--g-repeat-num",
        "1",
        "--d-repeat-num",
        "4",
        "--batch-size",
        "4",
        "--n-critic",
        "2",
        "--log-step",
        "1",
        "--sample-step",
        "2",
        "--model-save-step",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--num-iters".into(), iters.to_string()])
    .chain(["--log-dir".into(), d("logs"), "--model-save-dir".into(), d("models")])
    .chain(["--sample-dir".into(), d("samples"), "--result-dir".into(), d("results")])
    .collect()
}

/// `flags` with each `--name value` of `extra` replacing that flag's value, or appended.
pub fn with(flags: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = flags.to_vec();
    let mut i = 0;
    while i < extra.len() {
        let value = extra.get(i + 1).filter(|x| !x.starts_with("--"));
        match (v.iter().position(|f| f == extra[i]), value) {
            (Some(at), Some(x)) => v[at + 1] = x.to_string(),
            (None, Some(x)) => v.extend([extra[i].to_string(), x.to_string()]),
            (_, None) => v.push(extra[i].to_string()),
        }
        i += if value.is_some() { 2 } else { 1 };
    }
    v
}

/// A test photo that scripts/setup.sh extracts from scikit-image's wheel into `.cache/photos`.
pub fn photo_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/photos").join(name)
}

/// An image file as RGB, or a panic naming it.
pub fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}
