//! `stargan test`: translate the test split with a trained model, as the reference's test mode does
//! (one grid per batch: rows are inputs, columns the input then each target), plus one image per
//! (input, target) with a readable name, which the reference's users asked for.

use crate::batch::{images_tensor, labels_tensor};
use crate::checkpoint::native;
use crate::config::TrainConfig;
use crate::data::build::{sources, Part};
use crate::data::source::Loader;
use crate::error::{Error, Result};
use crate::image_io;
use crate::inference;
use crate::model::NormStats;
use std::path::PathBuf;

/// Write the test translations; returns the number of images translated.
pub fn test(cfg: &TrainConfig) -> Result<usize> {
    let device = cfg.device.resolve()?;
    let dir = &cfg.output.model_save_dir;
    let (g_path, model) = match cfg.test_iters {
        Some(iteration) => {
            let path = native::path_for(dir, iteration);
            let ref_path = dir.join(format!("{iteration}-G.ckpt"));
            let g_path = if path.exists() {
                path
            } else if ref_path.exists() {
                ref_path
            } else {
                return Err(Error::Input(format!(
                    "no checkpoint for iteration {iteration} in {}",
                    dir.display()
                )));
            };
            let model = inference::load(&g_path, None, device)?;
            (g_path, model)
        }
        // The newest checkpoint that reads back whole (read once); newer broken ones are named
        // and skipped.
        None => match native::latest_valid(dir) {
            (Some((it, loaded)), _) => {
                let path = native::path_for(dir, it);
                let model = inference::from_training(&loaded, &path, device)?;
                (path, model)
            }
            (None, broken) => match broken.first() {
                Some((_, e)) => return Err(Error::Input(format!("no readable checkpoint: {e}"))),
                None => {
                    return Err(Error::Input(format!(
                        "no checkpoint in {}; give --model-save-dir or --test-iters",
                        dir.display()
                    )))
                }
            },
        },
    };
    let (srcs, layout) = sources(&cfg.data, cfg.seed, Part::Test)?;
    model.check_fits(&layout, cfg.data.image_size, &g_path)?;
    let g = model.g;
    let loader = Loader::new(srcs, cfg.optim.batch_size, cfg.seed, false)?;
    let names = layout.test_target_names();
    let result_dir = &cfg.output.result_dir;
    let mut count = 0;
    let mut batch_no = 0;
    // The reference's test_multi translates CelebA images only; we translate every dataset's.
    for k in 0..loader.sources().len() {
        for hb in loader.sequential(k) {
            let hb = hb?;
            batch_no += 1;
            let x = images_tensor(&hb).to_device(device);
            let label = labels_tensor(&hb.labels).to_device(device);
            let targets = layout.test_targets(k, &label);
            let mut columns = vec![x.shallow_clone()];
            for (t, c) in targets.iter().enumerate() {
                let y = g.translate(&x, c, NormStats::PerImageFrozen, cfg.optim.precision);
                for (j, &i) in hb.indices.iter().enumerate() {
                    let stem = loader.sources()[k].name(i).replace(['/', '\\'], "_");
                    let stem = stem.rsplit_once('.').map_or(stem.as_str(), |(a, _)| a).to_string();
                    let file: PathBuf = result_dir.join("images").join(format!("{stem}_{}.png", names[t]));
                    image_io::save_png(&file, &y.get(j as i64))?;
                }
                columns.push(y);
            }
            image_io::save_png(
                &result_dir.join(format!("{batch_no}-images.png")),
                &image_io::grid(&columns),
            )?;
            count += hb.len();
        }
    }
    Ok(count)
}
