//! The error type of the data layer.
//!
//! Every variant renders as one line that names the file (and line, where
//! there is one) and the problem, because these messages end up in front of a
//! user who has just pointed the program at their own data set.

use std::path::PathBuf;

/// Anything that can go wrong while reading attribute lists, image folders or
/// images.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A line of an attribute file is malformed. `line` is 1-based.
    #[error("{}:{line}: {message}", path.display())]
    Parse { path: PathBuf, line: usize, message: String },

    /// A selected attribute does not exist in the attribute file.
    #[error("{}: unknown attribute {name:?}; valid attributes are: {}", path.display(), valid.join(", "))]
    UnknownAttribute { path: PathBuf, name: String, valid: Vec<String> },

    /// The attribute selection itself is unusable (empty, duplicated names).
    #[error("invalid attribute selection: {0}")]
    Selection(String),

    /// A file or folder the settings name does not exist.
    #[error("{what} {} does not exist", path.display())]
    Missing { what: &'static str, path: PathBuf },

    /// A setting the data needs is absent.
    #[error("{0}")]
    Setting(&'static str),

    /// A data set has fewer images than one batch takes.
    #[error("`batch_size` {batch} exceeds the {images} images of dataset {dataset}")]
    BatchTooLarge { batch: usize, images: usize, dataset: String },

    /// A data set that yielded no images at all.
    #[error("dataset {0} has no images")]
    NoImages(String),

    /// A data source yielded no samples at all.
    #[error("{}: no samples found ({reason})", path.display())]
    Empty { path: PathBuf, reason: String },

    /// Images listed in an attribute file are not present on disk.
    #[error(
        "{count} of {total} images listed are missing under {} (first: {}); \
         set `skip_missing` to train on the images that exist",
        dir.display(),
        first.join(", ")
    )]
    MissingImages { dir: PathBuf, count: usize, total: usize, first: Vec<String> },

    /// An image folder (torchvision `ImageFolder` layout) is unusable.
    #[error("{}: {message}", path.display())]
    Folder { path: PathBuf, message: String },

    /// An image file exists but cannot be decoded (corrupt, truncated, or a
    /// format this build does not support).
    #[error("cannot decode image {}: {message}", path.display())]
    Decode { path: PathBuf, message: String },

    /// Transform parameters are invalid (zero sizes, mismatched buffers).
    #[error("invalid transform: {0}")]
    Transform(String),
}

impl DataError {
    /// Wraps an I/O error together with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Result alias for the data layer.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
