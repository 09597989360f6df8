//! Training: the iteration ([`step`]) and the loop around it.

pub mod run;
pub mod step;

pub use run::{train, Outcome, STOP};
pub use step::{Batch, DLosses, GLosses, GradientHook, Lambdas, Net, NoHook, StarGan, StepMode};
