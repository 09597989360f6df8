//! The data part of a run's configuration: which images, which labels, at what size. The field
//! names are the reference's flags; `TrainConfig` flattens this struct, so they are also top-level
//! keys of a `--config` file.

use super::synthetic::LabelSet;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CelebA: `list_attr_celeba.txt` and `img_align_celeba/`, multi-label attributes.
    Celeba,
    /// RaFD: one sub-folder of images per expression.
    Rafd,
    /// CelebA and RaFD jointly, with the mask vector.
    Both,
    /// Your own images: class sub-folders, or a folder plus an attribute file (CelebA format or CSV).
    Folder,
    /// The built-in procedural faces (no download); `synthetic_split` picks the label sets.
    Synthetic,
}

/// Which label sets of the built-in faces a run uses (the key `synthetic_split` of the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticLabels {
    /// Hair colour, male, young: multi-label, like CelebA.
    Celeba,
    /// Eight expressions: one-hot, like RaFD.
    Rafd,
    /// Both label sets jointly, with the mask vector.
    Both,
}

impl SyntheticLabels {
    /// The synthetic data sets, in the order the training loop visits them.
    pub fn sets(self) -> &'static [LabelSet] {
        match self {
            SyntheticLabels::Celeba => &[LabelSet::Celeba],
            SyntheticLabels::Rafd => &[LabelSet::Rafd],
            SyntheticLabels::Both => &[LabelSet::Celeba, LabelSet::Rafd],
        }
    }
}

/// The reference's default attribute file, used by `celeba` and `both` when none is given.
pub const DEFAULT_ATTR_PATH: &str = "data/celeba/list_attr_celeba.txt";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    pub dataset: DatasetKind,
    /// The side of the square images the networks see.
    pub image_size: i64,
    pub celeba_crop_size: u32,
    pub rafd_crop_size: u32,
    /// CelebA attributes to learn (or a folder's attribute columns).
    pub selected_attrs: Vec<String>,
    pub celeba_image_dir: PathBuf,
    /// The attribute file; unset: [`DEFAULT_ATTR_PATH`] for CelebA, none for a folder.
    pub attr_path: Option<PathBuf>,
    pub rafd_image_dir: PathBuf,
    /// `dataset = folder`: the images (class sub-folders, or flat with `attr_path`).
    pub image_dir: Option<PathBuf>,
    /// `dataset = folder`: centre-crop size before resizing (default: the shorter side).
    pub crop_size: Option<u32>,
    pub synthetic_split: SyntheticLabels,
    /// The built-in RaFD-like split's training faces (unset: all of them). Real RaFD has about
    /// 4,000 images beside CelebA's 200,000; a few hundred here make it as scarce beside the
    /// CelebA-like split, the setting in which the paper reports that joint training pays.
    pub synthetic_rafd_faces: Option<u32>,
    /// Drop images listed in the attribute file but missing on disk instead of failing.
    pub skip_missing: bool,
}

impl Default for DataConfig {
    /// The reference's defaults (its `main.py`).
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Celeba,
            image_size: 128,
            celeba_crop_size: 178,
            rafd_crop_size: 256,
            selected_attrs: crate::labels::DEFAULT_CELEBA_ATTRS.iter().map(|s| s.to_string()).collect(),
            celeba_image_dir: "data/celeba/images".into(),
            attr_path: None,
            rafd_image_dir: "data/RaFD/train".into(),
            image_dir: None,
            crop_size: None,
            synthetic_split: SyntheticLabels::Celeba,
            synthetic_rafd_faces: None,
            skip_missing: false,
        }
    }
}

impl DataConfig {
    /// Configurations written before `attr_path` became optional carry the reference's default
    /// path for every dataset; a folder dataset then meant class folders, and still does.
    pub fn forget_legacy_default(&mut self) {
        if self.dataset == DatasetKind::Folder
            && self.attr_path.as_deref() == Some(Path::new(DEFAULT_ATTR_PATH))
        {
            self.attr_path = None;
        }
    }

    /// CelebA's attribute file: the one given, else the reference's default path.
    pub fn celeba_attr_path(&self) -> &Path {
        self.attr_path.as_deref().unwrap_or(Path::new(DEFAULT_ATTR_PATH))
    }
}
