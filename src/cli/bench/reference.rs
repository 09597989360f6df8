//! The PyTorch side of `stargan bench`: finding `bench/reference.py`, running it with the
//! benchmark's configuration, and reading the JSON lines it prints.

use super::BenchArgs;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tch::Device;

/// Where the script lives in a source checkout, relative to its root.
const DEFAULT_SCRIPT: &str = "bench/reference.py";

/// A Python with torch 2.13 and the reference script it runs.
pub(super) struct Reference {
    python: PathBuf,
    script: PathBuf,
}

impl Reference {
    /// `script` is `--reference-script`; without it, `bench/reference.py` of the current
    /// directory, else of the source tree this binary was built from, when that still exists.
    pub(super) fn new(python: &Path, script: Option<&Path>) -> Result<Self> {
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_SCRIPT);
        let script = locate_script(script, &[PathBuf::from(DEFAULT_SCRIPT), built])?;
        Ok(Reference { python: python.to_path_buf(), script })
    }

    /// Run the script with the model configuration and `extra` arguments; its JSON lines.
    fn json(&self, args: &BenchArgs, threads: usize, extra: &[&str]) -> Result<Vec<serde_json::Value>> {
        let python = &self.python;
        let device = if matches!(args.device.resolve()?, Device::Cuda(_)) { "cuda" } else { "cpu" };
        let out = std::process::Command::new(python)
            .arg(&self.script)
            .args([
                "--image-size",
                &args.image_size.to_string(),
                "--batch-size",
                &args.batch_size.to_string(),
            ])
            .args([
                "--g-conv-dim",
                &args.g_conv_dim.to_string(),
                "--d-conv-dim",
                &args.d_conv_dim.to_string(),
            ])
            .args([
                "--g-repeat-num",
                &args.g_repeat_num.to_string(),
                "--d-repeat-num",
                &args.d_repeat_num.to_string(),
            ])
            .args(["--c-dim", &args.c_dim.to_string(), "--n-critic", &args.n_critic.to_string()])
            .args(["--threads", &threads.to_string(), "--device", device])
            .args(["--precision", &args.precision.to_string()])
            .args(extra)
            .output()
            .map_err(|source| Error::Read { path: python.clone(), source })?;
        if !out.status.success() {
            return Err(Error::Input(format!(
                "reference benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// One measurement of `what`: the per-unit samples in milliseconds, and the peak RSS in MB.
    pub(super) fn run(
        &self,
        what: &str,
        args: &BenchArgs,
        threads: usize,
        image_dir: &Path,
    ) -> Result<(Vec<f64>, Option<f64>)> {
        let (warmup, iters) = (args.warmup.to_string(), args.iters.to_string());
        let dir = image_dir.to_string_lossy();
        let extra = ["--what", what, "--warmup", &warmup, "--iters", &iters, "--image-dir", &dir];
        let lines = self.json(args, threads, &extra)?;
        let v = lines
            .iter()
            .find(|v| v["what"] == what)
            .ok_or_else(|| Error::Input(format!("reference benchmark printed no `{what}` result")))?;
        let samples = v["samples"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        Ok((samples, v["peak_rss_mb"].as_f64()))
    }

    /// The FLOPs the reference executes per measured unit (its own count, backward passes
    /// included), and a measured fp32 matmul rate to calibrate the machine's practical peak.
    pub(super) fn flops_and_peak(
        &self,
        args: &BenchArgs,
        threads: usize,
    ) -> Result<(serde_json::Value, Option<f64>)> {
        let flops = self.json(args, threads, &["--flops", "--count-flops"])?;
        let executed = flops.first().map(|v| v["executed_flops"].clone()).unwrap_or_default();
        let sgemm = self.json(args, threads, &["--sgemm", "2048", "--warmup", "1", "--iters", "3"])?;
        Ok((executed, sgemm.first().and_then(|v| v["gflops_median"].as_f64())))
    }
}

/// The script to run: `explicit` when given (it must exist), else the first of `defaults` that
/// exists.
fn locate_script(explicit: Option<&Path>, defaults: &[PathBuf]) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::Input(format!("--reference-script {}: no such file", path.display())))
        };
    }
    defaults.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = defaults.iter().map(|p| p.display().to_string()).collect();
        Error::Input(format!(
            "cannot find the reference script (tried {}); pass --reference-script PATH",
            tried.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_the_flag_else_the_first_default_that_exists() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_SCRIPT);
        let missing = PathBuf::from("/nonexistent/reference.py");
        assert_eq!(locate_script(Some(&here), std::slice::from_ref(&missing)).unwrap(), here);
        assert_eq!(locate_script(None, &[missing.clone(), here.clone()]).unwrap(), here);
        let err = locate_script(Some(&missing), &[here]).unwrap_err().to_string();
        assert!(err.contains("--reference-script /nonexistent/reference.py"), "{err}");
        let err = locate_script(None, &[missing]).unwrap_err().to_string();
        assert!(
            err.contains("--reference-script PATH") && err.contains("/nonexistent/reference.py"),
            "{err}"
        );
    }
}
