//! From a run's configuration to its data sources and label layout.

use super::celeba::{self, AttributeTable};
use super::config::{DataConfig, DatasetKind};
use super::error::DataError;
use super::folder::ImageFolder;
use super::source::{user_split, AttributeSource, FolderSource, Source, SyntheticSource};
use super::synthetic::LabelSet;
use super::transform::Pipeline;
use crate::labels::{celeba_domain, LabelLayout};
use std::path::Path;
use std::sync::Arc;

/// Which part of the data: the training images or the held-out test images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

fn exists(path: &Path, what: &'static str) -> Result<(), DataError> {
    if path.exists() {
        Ok(())
    } else {
        Err(DataError::Missing { what, path: path.to_path_buf() })
    }
}

fn celeba_source(
    cfg: &DataConfig,
    attr_path: &Path,
    image_dir: &Path,
    crop: u32,
    part: Part,
    reference_split: bool,
) -> Result<Arc<dyn Source>, DataError> {
    exists(attr_path, "attribute file")?;
    exists(image_dir, "image folder")?;
    let table = AttributeTable::open(attr_path)?;
    let samples = table.samples(&cfg.selected_attrs)?;
    let split = if reference_split { celeba::reference_split(samples) } else { user_split(samples) };
    if part == Part::Train && split.train.is_empty() {
        return Err(DataError::Empty {
            path: attr_path.to_path_buf(),
            reason: format!(
                "it lists {} images, all of which the reference's split keeps for testing (the first \
                 1,999 after its shuffle); use `dataset` folder for a small data set",
                split.test.len()
            ),
        });
    }
    let samples = if part == Part::Train { split.train } else { split.test };
    let checked = celeba::check_images(samples, image_dir, cfg.skip_missing)?;
    if !checked.missing.is_empty() {
        tracing::warn!(
            "skipped {} images listed in {} but missing",
            checked.missing.len(),
            attr_path.display()
        );
    }
    let pipeline = Pipeline::new(crop, cfg.image_size as u32)?;
    let domain = celeba_domain(&cfg.selected_attrs);
    Ok(Arc::new(AttributeSource::new(domain, image_dir.to_path_buf(), checked.samples, pipeline)))
}

fn folder_source(name: &str, dir: &Path, crop: u32, cfg: &DataConfig) -> Result<Arc<dyn Source>, DataError> {
    exists(dir, "image folder")?;
    let folder = ImageFolder::open(dir)?;
    Ok(Arc::new(FolderSource::new(name, folder, Pipeline::new(crop, cfg.image_size as u32)?)))
}

/// The sources of a run, in the order the training loop visits them, and their label layout.
/// `seed` draws the built-in data.
pub fn sources(
    cfg: &DataConfig,
    seed: u64,
    part: Part,
) -> Result<(Vec<Arc<dyn Source>>, LabelLayout), DataError> {
    let size = cfg.image_size as u32;
    let rafd_dir = &cfg.rafd_image_dir;
    let celeba = || {
        celeba_source(cfg, cfg.celeba_attr_path(), &cfg.celeba_image_dir, cfg.celeba_crop_size, part, true)
    };
    let sources: Vec<Arc<dyn Source>> = match cfg.dataset {
        DatasetKind::Celeba => vec![celeba()?],
        // The reference reads RaFD's train and test images from separate folders (`--rafd-image-dir`).
        DatasetKind::Rafd => vec![folder_source("RaFD", rafd_dir, cfg.rafd_crop_size, cfg)?],
        DatasetKind::Both => vec![celeba()?, folder_source("RaFD", rafd_dir, cfg.rafd_crop_size, cfg)?],
        DatasetKind::Folder => {
            let dir = cfg.image_dir.as_deref().ok_or(DataError::Setting(
                "`dataset` folder needs `image_dir` (and `attr_path` for attribute labels)",
            ))?;
            let crop = cfg.crop_size.unwrap_or(0);
            // An attribute file makes the folder multi-label; without one, its class folders label it.
            match &cfg.attr_path {
                Some(attrs) => vec![celeba_source(cfg, attrs, dir, nonzero_crop(crop, dir)?, part, false)?],
                None => vec![folder_source("folder", dir, nonzero_crop(crop, dir)?, cfg)?],
            }
        }
        DatasetKind::Synthetic => {
            let test = part == Part::Test;
            cfg.synthetic_split
                .sets()
                .iter()
                .map(|&s| {
                    let faces = cfg.synthetic_rafd_faces.filter(|_| s == LabelSet::Rafd && !test);
                    let source = SyntheticSource::new(s, seed, test, size)?;
                    Ok(Arc::new(source.first_faces(faces)) as Arc<dyn Source>)
                })
                .collect::<Result<_, _>>()?
        }
    };
    let layout = LabelLayout { domains: sources.iter().map(|s| s.domain().clone()).collect() };
    Ok((sources, layout))
}

/// `--crop-size` for user folders: given, or (0) the shorter side of the first image that decodes
/// (a corrupt first file is skipped, as the loader skips it).
fn nonzero_crop(crop: u32, dir: &Path) -> Result<u32, DataError> {
    if crop > 0 {
        return Ok(crop);
    }
    let mut last = None;
    for path in images_under(dir, 64)? {
        match super::transform::load_image(&path) {
            Ok(img) => return Ok(img.width().min(img.height())),
            Err(e) => {
                tracing::warn!("skipping an unreadable image: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| DataError::Empty { path: dir.to_path_buf(), reason: "no images".into() }))
}

/// Up to `max` image files under `dir`, in sorted order, depth first.
fn images_under(dir: &Path, max: usize) -> Result<Vec<std::path::PathBuf>, DataError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut found = Vec::new();
    for p in entries {
        if found.len() >= max {
            break;
        }
        if p.is_dir() {
            found.extend(images_under(&p, max - found.len())?);
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(super::folder::has_image_extension) {
            found.push(p);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::config::SyntheticLabels;

    #[test]
    fn a_scarce_rafd_like_split_keeps_its_first_faces_and_all_held_out_ones() {
        let cfg = |faces| DataConfig {
            dataset: DatasetKind::Synthetic,
            image_size: 16,
            synthetic_split: SyntheticLabels::Both,
            synthetic_rafd_faces: faces,
            ..Default::default()
        };
        let lens = |faces, part| -> Vec<usize> {
            sources(&cfg(faces), 3, part).unwrap().0.iter().map(|s| s.len()).collect()
        };
        let (all, test) = (lens(None, Part::Train), lens(None, Part::Test));
        assert_eq!(lens(Some(7), Part::Train), [all[0], 7], "only the RaFD-like split shrinks");
        assert_eq!(lens(Some(7), Part::Test), test, "the held-out faces stay as they were");
        assert_eq!(lens(Some(u32::MAX), Part::Train), all, "more than there are: all of them");
        // The same faces as the first 7 of the whole split, labels included.
        let (few, _) = sources(&cfg(Some(7)), 3, Part::Train).unwrap();
        let (whole, _) = sources(&cfg(None), 3, Part::Train).unwrap();
        for i in 0..7 {
            assert_eq!(few[1].name(i), whole[1].name(i));
            assert_eq!(few[1].label(i), whole[1].label(i));
        }
    }
}
