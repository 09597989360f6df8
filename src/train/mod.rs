//! Training: the iteration ([`step`]) and the loop around it.

pub mod ema;
pub mod parallel;
pub mod run;
pub mod step;

pub use parallel::{AllReduce, Ranks};
pub use run::{train, train_in, Outcome, STOP};
pub use step::{Batch, DLosses, GLosses, GradientHook, Lambdas, Net, NoHook, Recipe, StarGan, StepMode};
