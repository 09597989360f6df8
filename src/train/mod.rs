//! Training: the iteration ([`step`]) and the loop around it.

pub mod step;

pub use step::{Batch, DLosses, GLosses, Lambdas, StarGan};
