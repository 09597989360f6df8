//! `stargan bench`: time the training step, translation and the data loader, and, with
//! `--reference PYTHON`, the PyTorch reference (`bench/reference.py`) on the same work, interleaved
//! round by round (ours, theirs, ours, theirs ...) so that drift in the machine's speed hits both.
//! This module is the harness (timing, models, report); `reference` drives the PyTorch side.

mod dist;
mod reference;
mod serve_load;

use crate::config::{ModelConfig, TrainConfig};
use crate::data::source::Source;
use crate::data::transform::from_chw_normalized;
use crate::data::transform::Pipeline;
use crate::error::{Error, Result};
use crate::labels::{celeba_domain, LabelLayout, DEFAULT_CELEBA_ATTRS};
use crate::model::NormStats;
use crate::precision::Precision;
use crate::train::{Batch, StarGan, StepMode};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 128)]
    pub image_size: i64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: i64,
    #[arg(long, default_value_t = 64)]
    pub g_conv_dim: i64,
    #[arg(long, default_value_t = 64)]
    pub d_conv_dim: i64,
    #[arg(long, default_value_t = 6)]
    pub g_repeat_num: i64,
    #[arg(long, default_value_t = 6)]
    pub d_repeat_num: i64,
    #[arg(long, default_value_t = 5)]
    pub c_dim: i64,
    #[arg(long, default_value_t = 5)]
    pub n_critic: u64,
    /// libtorch intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: crate::config::DeviceChoice,
    #[arg(long, value_enum, default_value = "fast")]
    pub step_mode: StepMode,
    /// fp32, or bf16 autocast on both sides.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Interleaved rounds of (ours, reference).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Comma-separated: d_step, g_step, iteration, translate, loader, serve (the server under load;
    /// its own table), dist (--nproc-per-node ranks against one process; its own table), faces (face detection and
    /// alignment on a 1024×768 photo made from the test photos; reference: facenet-pytorch's MTCNN).
    #[arg(long, default_value = "d_step,g_step,iteration,translate,loader", value_delimiter = ',')]
    pub what: Vec<String>,
    /// A Python with torch 2.13 to run bench/reference.py (e.g. `$(bench/setup-reference.sh)`).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// The reference script (default: `bench/reference.py` of the current directory, else of the
    /// source tree stargan was built from).
    #[arg(long, value_name = "PATH")]
    pub reference_script: Option<PathBuf>,
    /// JPEGs for the loader benchmark (default: 256 generated 178×218 faces in a temp folder).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Write every measurement as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `--what dist`: ranks to start on this machine.
    #[arg(long, default_value_t = 2)]
    pub nproc_per_node: usize,
    /// `--what dist`, set by the launcher for its ranks: where rank 0 writes its measurements.
    #[arg(long, hide = true)]
    pub dist_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub implementation: &'static str,
    pub what: String,
    pub round: usize,
    pub median_ms: f64,
    pub samples_ms: Vec<f64>,
    pub peak_rss_mb: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

/// Reset the kernel's peak-RSS mark so the next reading is this measurement's peak. The reset
/// starts from the current RSS, so first hand the memory an earlier measurement freed back to the
/// OS (glibc keeps it otherwise): the reference runs each measurement in a fresh process.
fn reset_peak_rss() {
    // SAFETY: glibc's malloc_trim only releases free heap pages.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn model(args: &BenchArgs, device: Device) -> StarGan {
    let attrs: Vec<String> = (0..args.c_dim)
        .map(|i| DEFAULT_CELEBA_ATTRS.get(i as usize).map_or(format!("attr{i}"), |s| s.to_string()))
        .collect();
    let mut cfg = TrainConfig { seed: 1234, ..TrainConfig::default() };
    cfg.data.image_size = args.image_size;
    cfg.model = ModelConfig {
        g_conv_dim: args.g_conv_dim,
        d_conv_dim: args.d_conv_dim,
        g_repeat_num: args.g_repeat_num,
        d_repeat_num: args.d_repeat_num,
        ..ModelConfig::default()
    };
    cfg.optim.precision = args.precision;
    StarGan::from_config(&cfg, LabelLayout::single(celeba_domain(&attrs)), device)
}

fn batch(args: &BenchArgs, device: Device) -> Batch {
    let n = args.batch_size;
    let s = args.image_size;
    Batch {
        x: (Tensor::rand([n, 3, s, s], (Kind::Float, device)) * 2.0 - 1.0),
        domain: 0,
        label: Tensor::rand([n, args.c_dim], (Kind::Float, device)).ge(0.5).to_kind(Kind::Float),
        rand_idx: Tensor::randperm(n, (Kind::Int64, device)),
        alpha: Tensor::rand([n], (Kind::Float, device)),
    }
}

/// Time `f` (`per` units per call) after `warmup` calls; milliseconds per unit.
fn time(warmup: usize, iters: usize, per: usize, device: Device, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    sync(device);
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            sync(device);
            t.elapsed().as_secs_f64() * 1e3 / per as f64
        })
        .collect()
}

fn ours(what: &str, args: &BenchArgs, device: Device, images: &[PathBuf]) -> Result<Vec<f64>> {
    if what == "loader" {
        return loader_times(args, images);
    }
    if what == "faces" {
        return face_times(args, device);
    }
    let mut m = model(args, device);
    let b = batch(args, device);
    let mode = args.step_mode;
    if what == "translate" {
        // Translation holds what `stargan test` holds: G (and D's weights, which the reference's
        // solver also builds), not the optimisers' moments.
        m.g_opt.exp_avg.clear();
        m.g_opt.exp_avg_sq.clear();
        m.d_opt.exp_avg.clear();
        m.d_opt.exp_avg_sq.clear();
    }
    Ok(match what {
        "d_step" => time(args.warmup, args.iters, 1, device, || {
            let _ = m.iteration(&b, false, mode);
        }),
        "g_step" => time(args.warmup, args.iters, 1, device, || {
            let _ = m.g_step(&b);
        }),
        "iteration" => {
            let n = args.n_critic;
            time(args.warmup, args.iters, n as usize, device, || {
                for i in 0..n {
                    let _ = m.iteration(&b, i + 1 == n, mode);
                }
            })
        }
        "translate" => {
            let targets = m.layout.test_targets(0, &b.label);
            time(args.warmup, args.iters, 1, device, || {
                let mut cols = vec![b.x.shallow_clone()];
                for c in &targets {
                    cols.push(m.g.translate(&b.x, c, NormStats::PerImageFrozen, args.precision));
                }
                let grid = crate::image_io::grid(&cols);
                let _ = crate::image_io::to_rgb8(&grid);
            })
        }
        other => return Err(Error::Input(format!("--what: unknown measurement `{other}`"))),
    })
}

/// One of the photos scripts/setup.sh extracts from scikit-image's wheel into `.cache/photos`.
fn test_photo(name: &str) -> Result<image::RgbImage> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/photos").join(name);
    crate::face::load_photo(&path)
        .map_err(|e| Error::Input(format!("{e} (scripts/setup.sh extracts the test photos)")))
}

/// Where the faces benchmark's photo is written (both sides read it).
fn photo_dir() -> PathBuf {
    std::env::temp_dir().join("stargan-bench-photo")
}

/// A 1024×768 photo with two faces at different sizes: the astronaut enlarged to 768² on the left,
/// the cameraman at 256² on the right, from the photos scripts/setup.sh extracts.
fn bench_photo() -> Result<image::RgbImage> {
    let (a, c) = (test_photo("astronaut.png")?, test_photo("camera.png")?);
    let mut photo = image::RgbImage::from_pixel(1024, 768, image::Rgb([96, 96, 96]));
    image::imageops::replace(&mut photo, &crate::data::transform::resize(&a, 768, 768)?, 0, 0);
    image::imageops::replace(&mut photo, &crate::data::transform::resize(&c, 256, 256)?, 768, 256);
    let png = crate::image_io::encode_rgb8(photo.as_raw(), 1024, 768, crate::image_io::ImageFormat::Png)?;
    crate::files::write(&photo_dir().join("photo-1024x768.png"), &png)?;
    Ok(photo)
}

/// MTCNN with facenet-pytorch's defaults, then every face aligned into CelebA's frame.
fn face_times(args: &BenchArgs, device: Device) -> Result<Vec<f64>> {
    let photo = bench_photo()?;
    let detector = crate::face::Detector::find(None, device)?;
    let opts = crate::face::DetectOptions::default();
    let mut found = 0;
    let samples = time(args.warmup, args.iters, 1, device, || {
        let faces = detector.detect(&photo, &opts).unwrap_or_default();
        found = faces.iter().filter_map(|f| crate::face::align(&photo, f)).count();
    });
    if found == 0 {
        return Err(Error::Internal("the benchmark photo's faces were not found".into()));
    }
    Ok(samples)
}

/// Decode + centre crop 178 + resize to image_size + normalise, over every image, on rayon's threads.
fn loader_times(args: &BenchArgs, images: &[PathBuf]) -> Result<Vec<f64>> {
    let pipeline = Pipeline::new(178, args.image_size as u32)?;
    let per = pipeline.output_len();
    let mut out = vec![0f32; per * images.len()];
    let mut run = || -> Result<()> {
        out.par_chunks_mut(per)
            .zip(images.par_iter())
            .try_for_each(|(o, p)| pipeline.load_into(p, false, o))
            .map_err(Error::from)
    };
    for _ in 0..args.warmup {
        run()?;
    }
    let mut samples = Vec::new();
    for _ in 0..args.iters {
        let t = Instant::now();
        run()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3 / images.len() as f64);
    }
    Ok(samples)
}

/// 178×218 JPEGs like CelebA's aligned crops: synthetic faces rendered at 218 px, cut to 178 wide.
fn loader_images(dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            let d = std::env::temp_dir().join("stargan-bench-jpegs");
            if !d.join("000256.jpg").exists() {
                let src = crate::data::source::SyntheticSource::new(
                    crate::data::synthetic::LabelSet::Celeba,
                    0,
                    false,
                    218,
                )?;
                let mut buf = vec![0f32; 3 * 218 * 218];
                for i in 0..256 {
                    src.load(i, false, &mut buf)?;
                    let full = from_chw_normalized(&buf);
                    let rgb: Vec<u8> =
                        full.chunks_exact(218 * 3).flat_map(|row| &row[20 * 3..198 * 3]).copied().collect();
                    let jpg =
                        crate::image_io::encode_rgb8(&rgb, 178, 218, crate::image_io::ImageFormat::Jpeg)?;
                    crate::files::write(&d.join(format!("{:06}.jpg", i + 1)), &jpg)?;
                }
            }
            d
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| Error::Read { path: dir.clone(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    Ok(files)
}

/// Theoretical fp32 peak: cores × GHz × 32 FLOP/cycle (an AVX-512 FMA: 16 lanes × 2, one per cycle
/// sustained on this class of core; a rough bound, which is why an sgemm is measured too).
fn theoretical_peak_gflops(threads: usize) -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    let lanes = if info.contains("avx512f") {
        16.0
    } else if info.contains("avx2") {
        8.0
    } else {
        4.0
    };
    Some(threads as f64 * mhz / 1000.0 * lanes * 2.0)
}

/// Run the benchmark; returns the printed report.
pub fn bench(args: &BenchArgs) -> Result<String> {
    if args.dist_out.is_some() {
        // A rank of `--what dist`: that measurement alone.
        tch::set_num_threads(args.threads.max(1) as i32);
        return dist::report(args, args.nproc_per_node);
    }
    let device = args.device.resolve()?;
    let reference = args
        .reference
        .as_deref()
        .map(|py| reference::Reference::new(py, args.reference_script.as_deref()))
        .transpose()?;
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    tch::set_num_threads(threads as i32);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the decoding threads: {e}")))?;
    let images = if args.what.iter().any(|w| w == "loader") {
        loader_images(args.image_dir.as_deref())?
    } else {
        Vec::new()
    };
    let image_dir = images.first().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
    let mut all = Vec::new();
    let mut report = format!(
        "config: {} px, batch {}, G conv {} x{} res, D conv {} x{}, c_dim {}, n_critic {}, {} threads, {:?}, step {:?}, {}\n",
        args.image_size, args.batch_size, args.g_conv_dim, args.g_repeat_num, args.d_conv_dim, args.d_repeat_num,
        args.c_dim, args.n_critic, threads, device, args.step_mode, args.precision
    );
    let (flops, sgemm) = match &reference {
        Some(r) if device == Device::Cpu => r.flops_and_peak(args, threads)?,
        _ => (serde_json::Value::Null, None),
    };
    report += "what        ours ms (median)   reference ms   speed-up (median of rounds, min-max)   peak RSS MB ours/ref   GFLOP/s ours/ref\n";
    for what in args.what.iter().filter(|w| *w != "serve" && *w != "dist") {
        let (mut ours_m, mut theirs_m, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rss_o, mut rss_t) = (None, None);
        for round in 0..args.rounds {
            reset_peak_rss();
            let s = pool.install(|| ours(what, args, device, &images))?;
            rss_o = peak_rss_mb();
            let mo = median(&s);
            all.push(Measurement {
                implementation: "stargan",
                what: what.clone(),
                round,
                median_ms: mo,
                samples_ms: s,
                peak_rss_mb: rss_o,
            });
            ours_m.push(mo);
            if let Some(r) = &reference {
                let dir = if what == "faces" { photo_dir() } else { image_dir.clone() };
                let (s, rss) = r.run(what, args, threads, &dir)?;
                let mt = median(&s);
                rss_t = rss;
                all.push(Measurement {
                    implementation: "pytorch",
                    what: what.clone(),
                    round,
                    median_ms: mt,
                    samples_ms: s,
                    peak_rss_mb: rss,
                });
                theirs_m.push(mt);
                ratios.push(mt / mo);
            }
        }
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
        let (rmin, rmax) = ratios.iter().fold((f64::INFINITY, 0f64), |(a, b), &r| (a.min(r), b.max(r)));
        // The reference's executed FLOPs over each side's time: for us an effective rate (the fast
        // step skips part of that work).
        let gflops = flops[what.as_str()].as_f64().map_or("-".to_string(), |f| {
            format!("{:.1}/{:.1}", f / median(&ours_m) / 1e6, f / median(&theirs_m) / 1e6)
        });
        let speedup = if ratios.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}x ({rmin:.2}-{rmax:.2})", median(&ratios))
        };
        let theirs = if theirs_m.is_empty() { "-".to_string() } else { format!("{:.2}", median(&theirs_m)) };
        let rss = format!("{}/{}", fmt(rss_o), fmt(rss_t));
        report += &format!(
            "{what:<11} {:>16.2}   {theirs:>12}   {speedup:>36}   {rss:>20}   {gflops:>16}\n",
            median(&ours_m)
        );
    }
    if what_per_image(&args.what) {
        report += "(loader: ms per image, decode + crop 178 + resize + normalise, all threads; ratio = images/s ours / reference)\n";
    }
    if args.what.iter().any(|w| w == "faces") {
        report += "(faces: ms per 1024×768 photo, MTCNN + every face cut out: ours aligned to CelebA's frame, the reference's extract_face)\n";
    }
    if args.what.iter().any(|w| w == "serve") {
        report += &serve_load::report(args.iters.max(1))?;
    }
    if args.what.iter().any(|w| w == "dist") {
        report += &dist::report(args, args.nproc_per_node)?;
    }
    if let Some(peak) = theoretical_peak_gflops(threads) {
        report += &format!("fp32 peak of {threads} core(s): {peak:.0} GFLOP/s theoretical");
        report += &sgemm.map_or(String::new(), |g| {
            format!(", {g:.0} GFLOP/s measured (2048² {} matmul)", args.precision)
        });
        report += "\n";
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&all).map_err(|e| Error::Internal(e.to_string()))?;
        crate::files::write(path, text.as_bytes())?;
    }
    Ok(report)
}

fn what_per_image(what: &[String]) -> bool {
    what.iter().any(|w| w == "loader")
}
