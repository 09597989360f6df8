//! The data layer: attribute lists, image folders, decoding and transforms.
//!
//! Pure Rust (no tch): everything here produces plain `Vec<f32>` CHW buffers
//! and labels that the training code turns into tensors. Where the reference
//! implementation's behaviour is observable (which images are in the test
//! split, the order of an `ImageFolder`, the exact pixels fed to the network)
//! it is reproduced exactly; see each module's documentation.

pub mod build;
pub mod celeba;
pub mod config;
pub mod error;
pub mod folder;
pub mod pyrandom;
pub mod source;
pub mod synthetic;
pub mod transform;

pub use celeba::{AttributeTable, Sample, Split};
pub use error::DataError;
pub use folder::ImageFolder;
pub use pyrandom::Random;
pub use source::{HostBatch, Label, Loader, Source};
pub use transform::{load_image, Pipeline};
