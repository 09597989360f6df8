//! The training loop: one loop for one dataset or several (the mask vector is data, see `labels`).
//!
//! Per iteration and per dataset: a D step, and every n_critic iterations a G step, on batches the
//! prefetcher has ready. Losses stay on the device and are read only at log steps. Samples,
//! checkpoints and logs are written every sample/model-save/log step; Ctrl-C or SIGTERM saves a
//! checkpoint at the last completed iteration before exiting, and `--resume-iters` continues
//! exactly where a checkpoint left off.

use super::parallel::Ranks;
use super::{Batch, DLosses, GLosses, StarGan};
use crate::batch::{images_tensor, labels_tensor};
use crate::checkpoint::{self, native};
use crate::config::TrainConfig;
use crate::data::build::{sources, Part};
use crate::data::source::{Loader, Prefetcher};
use crate::error::{Error, Result};
use crate::image_io;
use crate::labels::LabelLayout;
use crate::tensorboard::EventWriter;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
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

struct Logs {
    metrics: std::fs::File,
    tb: Option<EventWriter>,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write { path: path.to_path_buf(), source }
}

fn create_dirs(cfg: &TrainConfig) -> Result<()> {
    for dir in [&cfg.output.log_dir, &cfg.output.model_save_dir, &cfg.output.sample_dir] {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    Ok(())
}

/// The effective configuration, written beside the checkpoints.
fn write_config(cfg: &TrainConfig) -> Result<()> {
    let text = toml::to_string(cfg)
        .map_err(|e| Error::Internal(format!("cannot serialise the configuration: {e}")))?;
    let path = cfg.output.model_save_dir.join("config.toml");
    crate::files::write(&path, text.as_bytes())?;
    Ok(())
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// The log's values: D's and G's losses, with `penalty_value`, the latest computed penalty.
fn loss_values(
    d: &DLosses,
    penalty_value: &Tensor,
    g: Option<&GLosses>,
    penalty: crate::config::PenaltyKind,
) -> Vec<(&'static str, f64)> {
    let penalty_tag = match penalty {
        crate::config::PenaltyKind::Gp => "D/loss_gp",
        crate::config::PenaltyKind::R1 => "D/loss_r1",
    };
    let mut v = vec![
        ("D/loss_real", scalar(&d.real)),
        ("D/loss_fake", scalar(&d.fake)),
        ("D/loss_cls", scalar(&d.cls)),
        (penalty_tag, scalar(penalty_value)),
    ];
    if let Some(g) = g {
        v.extend([
            ("G/loss_fake", scalar(&g.fake)),
            ("G/loss_rec", scalar(&g.rec)),
            ("G/loss_cls", scalar(&g.cls)),
        ]);
        if let Some(m) = &g.mask {
            v.push(("G/loss_mask", scalar(m)));
        }
    }
    v
}

/// The fixed images of the sample grids and their targets (the reference's `x_fixed`, `c_fixed_list`).
struct Fixed {
    x: Tensor,
    targets: Vec<Tensor>,
}

fn fixed_inputs(loader: &Loader, layout: &LabelLayout, device: Device) -> Result<Fixed> {
    // The first batch of the first dataset in the training order (shuffled and flipped, as the
    // reference's x_fixed comes from its shuffling loader): a function of the seed, so the same in
    // every run with this data, resumed or not.
    let hb = loader.sequential(0).next().expect("a non-empty dataset has a first batch")?;
    let n = hb.len().min(8) as i64;
    let x = images_tensor(&hb).narrow(0, 0, n).to_device(device);
    let label = labels_tensor(&hb.labels).narrow(0, 0, n).to_device(device);
    Ok(Fixed { x, targets: layout.test_targets(0, &label) })
}

fn save_samples(model: &StarGan, fixed: &Fixed, path: &Path) -> Result<Tensor> {
    let mut columns = vec![fixed.x.shallow_clone()];
    tch::no_grad(|| {
        for c in &fixed.targets {
            // Frozen statistics: sampling must not change the training state (the reference's
            // sampling does move the running averages, which only eval-mode inference would see).
            columns.push(model.g_for_inference().forward_with(
                &fixed.x,
                c,
                crate::model::NormStats::PerImageFrozen,
            ));
        }
    });
    let grid = image_io::grid(&columns);
    image_io::save_png(path, &grid)?;
    Ok(grid)
}

fn save_checkpoint(model: &StarGan, cfg: &TrainConfig, iteration: u64, world: usize) -> Result<PathBuf> {
    // No checkpoint of non-finite weights is ever written: it would replace the last good one as
    // `latest` and poison every run resumed from it.
    if !(model.g.weights.all_finite() && model.d.weights.all_finite()) {
        return Err(not_finite(cfg, iteration, "the weights"));
    }
    let path = native::path_for(&cfg.output.model_save_dir, iteration);
    native::save(&path, model.nets(), iteration, cfg, world)?;
    if cfg.output.save_reference_format {
        checkpoint::write_torch(
            &cfg.output.model_save_dir.join(format!("{iteration}-G.ckpt")),
            &model.g.weights.snapshot(),
        )?;
        checkpoint::write_torch(
            &cfg.output.model_save_dir.join(format!("{iteration}-D.ckpt")),
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

/// Train as configured, as a single process. Returns how the run ended; errors are one-line,
/// user-facing.
pub fn train(cfg: &TrainConfig) -> Result<Outcome> {
    train_in(cfg, Ranks::SINGLE)
}

/// What rank 0 alone holds while it writes: the run's lock, the logs, the sample grid's inputs.
struct Writer {
    _lock: crate::files::DirLock,
    logs: Logs,
    fixed: Fixed,
}

/// What rank 0 alone sets up before the first iteration (everything that can fail on it alone, so
/// the other ranks hear of a failure before the first collective of training): the run's lock, the
/// resumed checkpoint, the folders, the effective configuration, the logs and the sample inputs.
/// Returns them and the iteration to start at.
fn set_up_writer(
    cfg: &TrainConfig,
    model: &mut StarGan,
    world: usize,
    sources: &[Arc<dyn crate::data::source::Source>],
) -> Result<(Writer, u64)> {
    // One run per folder, taken before anything else: a second trainer would interleave the logs
    // and overwrite checkpoints.
    let lock = crate::files::DirLock::acquire(&cfg.output.model_save_dir).map_err(Error::Input)?;
    let start = match resume_point(cfg)? {
        Some((iteration, path, loaded)) => {
            check_resumable(cfg, &loaded.meta, iteration, &path, world)?;
            model.restore(&loaded, &path)?;
            tracing::info!("resumed from {} (iteration {iteration})", path.display());
            iteration
        }
        None => 0,
    };
    for dir in [&cfg.output.model_save_dir, &cfg.output.sample_dir, &cfg.output.log_dir] {
        for p in crate::files::remove_stale_temporaries(dir) {
            tracing::info!("removed {}, left by an interrupted write", p.display());
        }
    }
    create_dirs(cfg)?;
    write_config(cfg)?;
    let logs = open_logs(cfg, start)?;
    // The sample grid's inputs come from the unsharded order: the same images whatever the world.
    let grid_loader = Loader::new(sources.to_vec(), cfg.optim.batch_size, cfg.seed, true)?;
    let fixed = fixed_inputs(&grid_loader, &model.layout, model.g.device())?;
    Ok((Writer { _lock: lock, logs, fixed }, start))
}

fn open_logs(cfg: &TrainConfig, start: u64) -> Result<Logs> {
    let metrics_path = cfg.output.log_dir.join("metrics.jsonl");
    if start > 0 {
        truncate_metrics(&metrics_path, start)?;
    }
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(write_err(&metrics_path))?;
    let tb = if cfg.output.use_tensorboard { Some(EventWriter::create(&cfg.output.log_dir)?) } else { None };
    Ok(Logs { metrics, tb })
}

/// The settings every rank must share, as one number (rank 0's is compared with the others').
fn fingerprint(cfg: &TrainConfig) -> u32 {
    crc32c::crc32c(toml::to_string(cfg).unwrap_or_default().as_bytes())
}

/// The data every rank must see alike (labels and each data set's size: the shards and the last
/// batches depend on them), as one number.
fn data_fingerprint(layout: &LabelLayout, loader: &Loader) -> u32 {
    let sizes: Vec<String> = loader.sources().iter().map(|s| s.len().to_string()).collect();
    crc32c::crc32c(format!("{:?} {}", layout, sizes.join(",")).as_bytes())
}

/// Train as one rank of `ranks` (or alone): the same loop, with the group's hooks. Only rank 0
/// writes; every rank returns the same outcome.
///
/// Which collectives run depends only on the iteration and the configuration. A failure of rank 0's
/// writing (a full disk) does not return at once: its writes stop, a failure flag rides on the next
/// D all-reduce so that every rank stops after the same iteration, and the run's end is agreed.
pub fn train_in(cfg: &TrainConfig, ranks: Ranks<'_>) -> Result<Outcome> {
    cfg.validate()?;
    let (rank, world, writes) = (ranks.rank(), ranks.world(), ranks.writes());
    let device = match (cfg.device.resolve()?, ranks.group) {
        // Each rank takes the GPU of its LOCAL_RANK.
        (Device::Cuda(_), Some(g)) => Device::Cuda(g.local_rank()),
        (d, _) => d,
    };
    ranks.check_same(fingerprint(cfg), "settings")?;
    let (srcs, layout) = sources(&cfg.data, cfg.seed, Part::Train)?;
    let loader =
        Arc::new(Loader::new(srcs.clone(), cfg.optim.batch_size, cfg.seed, true)?.shard(rank, world)?);
    ranks.check_same(data_fingerprint(&layout, &loader), "data (labels or number of images)")?;
    let mut model = StarGan::from_config(cfg, layout.clone(), device);

    let (mut writer, start) = if writes {
        match set_up_writer(cfg, &mut model, world, &srcs) {
            Ok((w, start)) => (Some(w), Ok(start)),
            Err(e) => (None, Err(e)),
        }
    } else {
        (None, Ok(0))
    };
    let start = ranks.agree_start(start)?;
    ranks.broadcast_model(&mut model)?;

    if writes {
        tracing::info!(
            "G: {} parameters, D: {} parameters, {} on {:?}{}",
            model.g.weights.num_parameters(),
            model.d.weights.num_parameters(),
            layout.domains.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(" + "),
            device,
            ranks.group.map(|g| format!(", {world} ranks on {}", g.backend())).unwrap_or_default()
        );
    }
    let bar = if writes {
        indicatif::ProgressBar::new(cfg.optim.num_iters)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} it  {per_sec}  ETA {eta}  {msg}")
            .expect("valid template"),
    );
    bar.set_position(start);
    bar.reset_eta();

    let prefetch = Prefetcher::spawn(loader.clone(), start, cfg.optim.num_iters, 2);
    let mut hook = ranks.hook(&STOP);
    let mut last_penalty: Vec<Option<Tensor>> = (0..loader.sources().len()).map(|_| None).collect();
    // Rank 0's first write failure; once set, it writes nothing more.
    let mut write_failed: Option<Error> = None;
    let t0 = Instant::now();
    let mut done = start;
    for i in start..cfg.optim.num_iters {
        if hook.stop_requested() {
            break;
        }
        let (g_lr, d_lr) = cfg.learning_rates(i);
        model.set_lr(g_lr, d_lr);
        let host = prefetch.next().ok_or_else(|| Error::Internal("the data loader stopped".into()))??;
        let mut logged = Vec::new();
        for hb in &host {
            let b = Batch::from_host(hb, i, cfg.seed, rank, device);
            let with_g = (i + 1) % cfg.optim.n_critic == 0;
            let (d, g) = model.iteration_with(&b, with_g, cfg.optim.step_mode, &mut hook)?;
            if d.penalty_weight.is_some() {
                // Logged until the next update that computes it (lazy regularisation).
                last_penalty[hb.source] = Some(d.gp.detach());
            }
            if (i + 1) % cfg.output.log_step == 0 {
                // Checked when the losses are read anyway (reading syncs the device); the weights
                // are checked before every save, so no checkpoint of non-finite weights is written.
                // In a group the values are the ranks' mean, so every rank decides alike.
                let penalty = last_penalty[hb.source].as_ref().unwrap_or(&d.gp);
                let mut values = loss_values(&d, penalty, g.as_ref(), model.recipe.penalty);
                let totals = [scalar(&d.total), g.as_ref().map_or(0.0, |g| scalar(&g.total))];
                let mut all: Vec<f64> = values.iter().map(|(_, v)| *v).chain(totals).collect();
                ranks.mean(&mut all)?;
                if !all.iter().all(|v| v.is_finite()) {
                    bar.finish_and_clear();
                    return Err(not_finite(cfg, i + 1, "a loss"));
                }
                for ((_, v), m) in values.iter_mut().zip(&all) {
                    *v = *m;
                }
                logged.push((layout.domains[hb.source].name.clone(), values));
            }
        }
        done = i + 1;
        bar.set_position(done);

        // The collectives first, on every rank; then rank 0's writes, while they succeed.
        let sample = done % cfg.output.sample_step == 0;
        let save = done % cfg.output.model_save_step == 0 || done == cfg.optim.num_iters;
        if sample || save {
            ranks.average_running_stats(&model)?;
        }
        if let Some(w) = writer.as_mut().filter(|_| write_failed.is_none()) {
            let wrote = (|| -> Result<()> {
                if done % cfg.output.log_step == 0 {
                    log_step(&bar, &mut w.logs, &logged, done, cfg, t0, loader.skipped())?;
                }
                if sample {
                    let path = cfg.output.sample_dir.join(format!("{done}-images.png"));
                    let grid = save_samples(&model, &w.fixed, &path)?;
                    if let Some(tb) = w.logs.tb.as_mut() {
                        let (rgb, w, h) = image_io::to_rgb8(&grid)?;
                        tb.add_image("samples", &rgb, w, h, done as i64)?;
                    }
                }
                if save {
                    let path = save_checkpoint(&model, cfg, done, world)?;
                    say(&bar, format!("Saved model checkpoints into {}...", path.display()));
                }
                Ok(())
            })();
            if let Err(e) = wrote {
                hook.fail();
                write_failed = Some(e);
            }
        }
    }
    bar.finish_and_clear();
    let interrupted = done < cfg.optim.num_iters && !hook.failure_agreed();
    if interrupted {
        ranks.average_running_stats(&model)?;
    }
    if let Some(w) = writer.as_mut().filter(|_| write_failed.is_none()) {
        let end = (|| -> Result<()> {
            if let Some(tb) = w.logs.tb.as_mut() {
                tb.flush()?;
            }
            if interrupted {
                save_checkpoint(&model, cfg, done, world)?;
            }
            Ok(())
        })();
        write_failed = end.err();
    }
    // Every rank learns how rank 0's writing ended (and no rank leaves before the others are done).
    ranks.agree_end(write_failed.map_or(Ok(()), Err))?;
    if interrupted {
        let path = native::path_for(&cfg.output.model_save_dir, done);
        return Ok(Outcome::Interrupted { iteration: done, checkpoint: path });
    }
    Ok(Outcome::Finished { iterations: done })
}

/// The checkpoint to continue from, read: `--resume-iters N`, or the newest one that reads back
/// whole for `latest` (saying which newer ones were skipped, or that there is none).
fn resume_point(cfg: &TrainConfig) -> Result<Option<(u64, PathBuf, native::Loaded)>> {
    let dir = &cfg.output.model_save_dir;
    match cfg.optim.resume_iters.as_deref() {
        None => Ok(None),
        Some("latest") => {
            let (found, _) = native::latest_valid(dir);
            match found {
                Some((it, loaded)) => Ok(Some((it, native::path_for(dir, it), loaded))),
                None => {
                    tracing::warn!(
                        "resuming from the latest checkpoint: no checkpoint in {}; starting from iteration 0",
                        dir.display()
                    );
                    Ok(None)
                }
            }
        }
        Some(n) => {
            let n: u64 = n.parse().map_err(|_| {
                Error::Input(format!("`resume_iters` takes an iteration or `latest`, not `{n}`"))
            })?;
            let path = native::path_for(dir, n);
            if !path.exists() {
                return Err(Error::Input(format!(
                    "no checkpoint for iteration {n}: {} does not exist",
                    path.display()
                )));
            }
            let loaded = native::load(&path)?;
            Ok(Some((n, path, loaded)))
        }
    }
}

/// A resumed run continues bit for bit only with the settings that shape its batches and its
/// randomness; anything else (the number of iterations, the output folders) may change.
fn check_resumable(
    cfg: &TrainConfig,
    meta: &native::Meta,
    iteration: u64,
    path: &Path,
    world: usize,
) -> Result<()> {
    let was = &meta.config;
    let mut differ = Vec::new();
    // Another world size reads other shards and draws other targets: the run goes on from the
    // same weights and optimiser state, but not as it would have. Any batch size is then fine.
    if meta.world_size != world {
        tracing::warn!(
            "{} was written by {} rank(s), this run has {world}: training continues from its weights and \
             optimiser state, with this run's data order and batch size ({} per rank)",
            path.display(),
            meta.world_size,
            cfg.optim.batch_size
        );
    } else if was.optim.batch_size != cfg.optim.batch_size {
        differ.push(format!("`batch_size` {} (now {})", was.optim.batch_size, cfg.optim.batch_size));
    }
    if was.seed != cfg.seed {
        differ.push(format!("`seed` {} (now {})", was.seed, cfg.seed));
    }
    if was.optim.n_critic != cfg.optim.n_critic {
        differ.push(format!("`n_critic` {} (now {})", was.optim.n_critic, cfg.optim.n_critic));
    }
    // A recipe may change on resume (a deliberate fine-tune), but not unnoticed.
    let (o, n) = (&was.optim, &cfg.optim);
    if o.ema_beta > 0.0 && n.ema_beta == 0.0 {
        tracing::warn!(
            "{} keeps a moving average of G (`ema_beta` {}); this run keeps none, so its checkpoints drop \
             it and translation will use G itself",
            path.display(),
            o.ema_beta
        );
    }
    if (o.adv_loss, o.penalty, o.reg_every) != (n.adv_loss, n.penalty, n.reg_every) {
        tracing::warn!(
            "{} was trained with `adv_loss` {:?}, `penalty` {:?}, `reg_every` {}; this run uses {:?}, {:?}, {}",
            path.display(),
            o.adv_loss,
            o.penalty,
            o.reg_every,
            n.adv_loss,
            n.penalty,
            n.reg_every
        );
    }
    if !differ.is_empty() {
        return Err(Error::Input(format!(
            "{} was trained with {}; resuming with other values would not continue that run exactly",
            path.display(),
            differ.join(", ")
        )));
    }
    if iteration > cfg.optim.num_iters {
        return Err(Error::Input(format!(
            "{} is at iteration {iteration}, past `num_iters` {}; give a larger `num_iters`",
            path.display(),
            cfg.optim.num_iters
        )));
    }
    Ok(())
}

/// Keep the records of iterations up to `start` (a resumed run logs the rest again).
fn truncate_metrics(path: &Path, start: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["iteration"].as_u64())
                .is_some_and(|it| it <= start)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        crate::files::write(path, kept.as_bytes())?;
    }
    Ok(())
}

/// The run's end when `what` turned non-finite at `iteration`: nothing is saved.
fn not_finite(cfg: &TrainConfig, iteration: u64, what: &str) -> Error {
    let kept = native::all(&cfg.output.model_save_dir).first().copied();
    Error::Input(format!(
        "iteration {iteration}: {what} became non-finite; the run stopped without saving{}; lower the \
         learning rates or check the data",
        kept.map(|k| format!(" (checkpoint {k} is the last good one)")).unwrap_or_default()
    ))
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
        let mut line = format!("Elapsed [{}], Iteration [{done}/{}]", elapsed(t0), cfg.optim.num_iters);
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
        let path = cfg.output.log_dir.join("metrics.jsonl");
        writeln!(logs.metrics, "{}", serde_json::Value::Object(record)).map_err(write_err(&path))?;
        if let Some(tb) = logs.tb.as_mut() {
            let prefix = if multi { format!("{dataset}/") } else { String::new() };
            let scalars: Vec<(String, f32)> =
                values.iter().map(|(t, v)| (format!("{prefix}{t}"), *v as f32)).collect();
            tb.add_scalars(&scalars, done as i64)?;
        }
    }
    if let Some((_, values)) = logged.first() {
        bar.set_message(bar_message(values));
    }
    Ok(())
}

/// The progress bar's summary of the latest losses: `D/real=-0.123 D/fake=...`.
fn bar_message(values: &[(&str, f64)]) -> String {
    let short: Vec<String> =
        values.iter().map(|(t, v)| format!("{}={v:.3}", t.replacen("loss_", "", 1))).collect();
    short.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_shows_short_loss_names() {
        let m = super::bar_message(&[("D/loss_real", -1.5), ("G/loss_rec", 0.25)]);
        assert_eq!(m, "D/real=-1.500 G/rec=0.250");
    }
}
