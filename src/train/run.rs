//! The training loop: one loop for one dataset or several (the mask vector is data, see `labels`).
//!
//! Per iteration and per dataset: a D step, and every n_critic iterations a G step, on batches the
//! prefetcher has ready. Losses stay on the device and are read only at log steps. Samples,
//! checkpoints and logs are written every sample/model-save/log step; Ctrl-C or SIGTERM saves a
//! checkpoint at the last completed iteration before exiting, and `--resume-iters` continues
//! exactly where a checkpoint left off.

use super::{Batch, DLosses, GLosses, Lambdas, StarGan};
use crate::checkpoint::{self, native};
use crate::config::TrainConfig;
use crate::data::build::{sources, Part};
use crate::data::source::{HostBatch, Label, Loader, Prefetcher};
use crate::error::{Error, Result};
use crate::image_io;
use crate::labels::LabelLayout;
use crate::model::{Discriminator, DiscriminatorConfig, Generator, GeneratorConfig};
use crate::rng::{Purpose, Stream};
use crate::tensorboard::EventWriter;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

/// Set by the signal handler; checked once per iteration.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished { iterations: u64 },
    Interrupted { iteration: u64, checkpoint: PathBuf },
}

/// Networks sized by the configuration for the given label layout, initialised from the seed.
pub fn build_model(cfg: &TrainConfig, layout: LabelLayout, device: Device) -> StarGan {
    tch::manual_seed(cfg.seed as i64);
    let g = Generator::new(
        GeneratorConfig { conv_dim: cfg.g_conv_dim, c_dim: layout.g_dim(), repeat_num: cfg.g_repeat_num },
        device,
    );
    let d = Discriminator::new(
        DiscriminatorConfig {
            image_size: cfg.image_size,
            conv_dim: cfg.d_conv_dim,
            c_dim: layout.d_dim(),
            repeat_num: cfg.d_repeat_num,
        },
        device,
    );
    let lambdas = Lambdas { cls: cfg.lambda_cls, rec: cfg.lambda_rec, gp: cfg.lambda_gp };
    let mut model = StarGan::new(g, d, layout, lambdas, (cfg.g_lr, cfg.d_lr), (cfg.beta1, cfg.beta2));
    model.precision = cfg.precision;
    model
}

/// Host batch → device tensors, with the iteration's target permutation and penalty weights.
pub fn to_batch(hb: &HostBatch, iteration: u64, seed: u64, device: Device) -> Batch {
    let n = hb.len() as i64;
    let s = hb.size as i64;
    let x = Tensor::from_slice(&hb.images).view([n, 3, s, s]).to_device(device);
    let label = labels_tensor(&hb.labels).to_device(device);
    let k = hb.source as u64;
    let perm: Vec<i64> = Stream::new(seed, Purpose::TargetPermutation, &[k, iteration])
        .permutation(hb.len())
        .into_iter()
        .map(|i| i as i64)
        .collect();
    let mut mix = Stream::new(seed, Purpose::PenaltyMix, &[k, iteration]);
    let alpha: Vec<f32> = (0..n).map(|_| mix.uniform_f32()).collect();
    Batch {
        x,
        domain: hb.source,
        label,
        rand_idx: Tensor::from_slice(&perm).to_device(device),
        alpha: Tensor::from_slice(&alpha).to_device(device),
    }
}

/// Labels as the step wants them: `[N, dim]` floats for attributes, `[N]` int64 for classes.
pub fn labels_tensor(labels: &[Label]) -> Tensor {
    match labels.first() {
        Some(Label::Attributes(first)) => {
            let flat: Vec<f32> = labels
                .iter()
                .flat_map(|l| match l {
                    Label::Attributes(v) => v.clone(),
                    Label::Class(_) => unreachable!("one source has one kind of label"),
                })
                .collect();
            Tensor::from_slice(&flat).view([labels.len() as i64, first.len() as i64])
        }
        _ => {
            let idx: Vec<i64> = labels.iter().map(|l| if let Label::Class(c) = l { *c } else { 0 }).collect();
            Tensor::from_slice(&idx)
        }
    }
}

struct Logs {
    metrics: std::fs::File,
    tb: Option<EventWriter>,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write { path: path.to_path_buf(), source }
}

fn create_dirs(cfg: &TrainConfig) -> Result<()> {
    for dir in [&cfg.log_dir, &cfg.model_save_dir, &cfg.sample_dir] {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    Ok(())
}

/// The effective configuration, written beside the checkpoints.
fn write_config(cfg: &TrainConfig) -> Result<()> {
    let text = toml::to_string(cfg)
        .map_err(|e| Error::Config(format!("cannot serialise the configuration: {e}")))?;
    checkpoint::write_atomic(&cfg.model_save_dir.join("config.toml"), text.as_bytes())?;
    Ok(())
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn loss_values(d: &DLosses, g: Option<&GLosses>) -> Vec<(&'static str, f64)> {
    let mut v = vec![
        ("D/loss_real", scalar(&d.real)),
        ("D/loss_fake", scalar(&d.fake)),
        ("D/loss_cls", scalar(&d.cls)),
        ("D/loss_gp", scalar(&d.gp)),
    ];
    if let Some(g) = g {
        v.extend([
            ("G/loss_fake", scalar(&g.fake)),
            ("G/loss_rec", scalar(&g.rec)),
            ("G/loss_cls", scalar(&g.cls)),
        ]);
    }
    v
}

/// The fixed images of the sample grids and their targets (the reference's `x_fixed`, `c_fixed_list`).
struct Fixed {
    x: Tensor,
    targets: Vec<Tensor>,
}

fn fixed_inputs(loader: &Loader, layout: &LabelLayout, device: Device) -> Result<Fixed> {
    // The first images of the first dataset in file order, never flipped: the same in every run
    // with this data, resumed or not.
    let hb = loader.sequential(0).next().expect("a non-empty dataset has a first batch")?;
    let n = hb.len().min(8) as i64;
    let s = hb.size as i64;
    let x = Tensor::from_slice(&hb.images).view([-1, 3, s, s]).narrow(0, 0, n).to_device(device);
    let label = labels_tensor(&hb.labels).narrow(0, 0, n).to_device(device);
    Ok(Fixed { x, targets: layout.test_targets(0, &label) })
}

fn save_samples(model: &StarGan, fixed: &Fixed, path: &Path) -> Result<Tensor> {
    let mut columns = vec![fixed.x.shallow_clone()];
    tch::no_grad(|| {
        for c in &fixed.targets {
            // Frozen statistics: sampling must not change the training state (the reference's
            // sampling does move the running averages, which only eval-mode inference would see).
            columns.push(model.g.forward_with(&fixed.x, c, crate::model::NormStats::PerImageFrozen));
        }
    });
    let grid = image_io::grid(&columns);
    image_io::save_png(path, &grid)?;
    Ok(grid)
}

fn save_checkpoint(model: &StarGan, cfg: &TrainConfig, iteration: u64) -> Result<PathBuf> {
    let path = native::path_for(&cfg.model_save_dir, iteration);
    native::save(&path, model, iteration, cfg)?;
    if cfg.save_reference_format {
        checkpoint::write_torch(
            &cfg.model_save_dir.join(format!("{iteration}-G.ckpt")),
            &model.g.weights.snapshot(),
        )?;
        checkpoint::write_torch(
            &cfg.model_save_dir.join(format!("{iteration}-D.ckpt")),
            &model.d.weights.snapshot(),
        )?;
    }
    Ok(path)
}

/// A log line above the progress bar, or on stdout when there is no terminal for the bar.
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn elapsed(start: Instant) -> String {
    let s = start.elapsed().as_secs();
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Train as configured. Returns how the run ended; errors are one-line, user-facing.
pub fn train(cfg: &TrainConfig) -> Result<Outcome> {
    cfg.validate().map_err(Error::Config)?;
    let device = cfg.device.resolve()?;
    let (srcs, layout) = sources(cfg, Part::Train)?;
    let loader = Arc::new(Loader::new(srcs, cfg.batch_size, cfg.seed, true)?);
    let mut model = build_model(cfg, layout.clone(), device);

    let start = match resume_point(cfg)? {
        Some(iteration) => {
            let path = native::path_for(&cfg.model_save_dir, iteration);
            let loaded = native::load(&path)?;
            native::restore(&loaded, &mut model, &path)?;
            tracing::info!("resumed from {} (iteration {iteration})", path.display());
            iteration
        }
        None => 0,
    };
    create_dirs(cfg)?;
    write_config(cfg)?;
    let metrics_path = cfg.log_dir.join("metrics.jsonl");
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(write_err(&metrics_path))?;
    let tb = if cfg.use_tensorboard { Some(EventWriter::create(&cfg.log_dir)?) } else { None };
    let mut logs = Logs { metrics, tb };
    let fixed = fixed_inputs(&loader, &layout, device)?;

    tracing::info!(
        "G: {} parameters, D: {} parameters, {} on {:?}",
        model.g.weights.num_parameters(),
        model.d.weights.num_parameters(),
        layout.domains.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(" + "),
        device
    );
    let bar = indicatif::ProgressBar::new(cfg.num_iters);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} it  {per_sec}  ETA {eta}  {msg}")
            .expect("valid template"),
    );
    bar.set_position(start);
    bar.reset_eta();

    let prefetch = Prefetcher::spawn(loader.clone(), start, cfg.num_iters, 2);
    let t0 = Instant::now();
    let mut done = start;
    for i in start..cfg.num_iters {
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        let (g_lr, d_lr) = cfg.learning_rates(i);
        model.set_lr(g_lr, d_lr);
        let host = prefetch.next().ok_or_else(|| Error::Config("the data loader stopped".into()))??;
        let mut logged = Vec::new();
        for hb in &host {
            let b = to_batch(hb, i, cfg.seed, device);
            let (d, g) = model.iteration(&b, (i + 1) % cfg.n_critic == 0, cfg.step_mode);
            if (i + 1) % cfg.log_step == 0 {
                logged.push((layout.domains[hb.source].name.clone(), loss_values(&d, g.as_ref())));
            }
        }
        done = i + 1;
        bar.set_position(done);

        if done % cfg.log_step == 0 {
            log_step(&bar, &mut logs, &logged, done, cfg, t0, loader.skipped())?;
        }
        if done % cfg.sample_step == 0 {
            let path = cfg.sample_dir.join(format!("{done}-images.png"));
            let grid = save_samples(&model, &fixed, &path)?;
            if let Some(tb) = logs.tb.as_mut() {
                let q = image_io::quantize(&grid);
                let (h, w, _) = q.size3().expect("HWC");
                tb.add_image("samples", &checkpoint::tensor_bytes(&q), w as u32, h as u32, done as i64)?;
            }
        }
        if done % cfg.model_save_step == 0 || done == cfg.num_iters {
            let path = save_checkpoint(&model, cfg, done)?;
            say(&bar, format!("Saved model checkpoints into {}...", path.display()));
        }
    }
    bar.finish_and_clear();
    if let Some(tb) = logs.tb.as_mut() {
        tb.flush()?;
    }
    if done < cfg.num_iters {
        let path = save_checkpoint(&model, cfg, done)?;
        return Ok(Outcome::Interrupted { iteration: done, checkpoint: path });
    }
    Ok(Outcome::Finished { iterations: done })
}

fn resume_point(cfg: &TrainConfig) -> Result<Option<u64>> {
    match cfg.resume_iters.as_deref() {
        None => Ok(None),
        Some("latest") => Ok(native::latest(&cfg.model_save_dir)),
        Some(n) => {
            let n: u64 = n.parse().map_err(|_| {
                Error::Config(format!("--resume-iters takes an iteration or `latest`, not `{n}`"))
            })?;
            let path = native::path_for(&cfg.model_save_dir, n);
            if !path.exists() {
                return Err(Error::Config(format!(
                    "no checkpoint for iteration {n}: {} does not exist",
                    path.display()
                )));
            }
            Ok(Some(n))
        }
    }
}

fn log_step(
    bar: &indicatif::ProgressBar,
    logs: &mut Logs,
    logged: &[(String, Vec<(&'static str, f64)>)],
    done: u64,
    cfg: &TrainConfig,
    t0: Instant,
    skipped: usize,
) -> Result<()> {
    let multi = logged.len() > 1;
    for (dataset, values) in logged {
        let mut line = format!("Elapsed [{}], Iteration [{done}/{}]", elapsed(t0), cfg.num_iters);
        if multi {
            line.push_str(&format!(", Dataset [{dataset}]"));
        }
        for (tag, v) in values {
            line.push_str(&format!(", {tag}: {v:.4}"));
        }
        say(bar, line);
        let mut record = serde_json::Map::new();
        record.insert("iteration".into(), done.into());
        record.insert("dataset".into(), dataset.clone().into());
        record.insert("elapsed_s".into(), t0.elapsed().as_secs_f64().into());
        record.insert("skipped_images".into(), skipped.into());
        for (tag, v) in values {
            record.insert(tag.to_string(), (*v).into());
        }
        let path = cfg.log_dir.join("metrics.jsonl");
        writeln!(logs.metrics, "{}", serde_json::Value::Object(record)).map_err(write_err(&path))?;
        if let Some(tb) = logs.tb.as_mut() {
            let prefix = if multi { format!("{dataset}/") } else { String::new() };
            let scalars: Vec<(String, f32)> =
                values.iter().map(|(t, v)| (format!("{prefix}{t}"), *v as f32)).collect();
            tb.add_scalars(&scalars, done as i64)?;
        }
    }
    if let Some((_, values)) = logged.first() {
        let short: Vec<String> =
            values.iter().map(|(t, v)| format!("{}={v:.3}", t.trim_start_matches("loss_"))).collect();
        bar.set_message(short.join(" "));
    }
    Ok(())
}
