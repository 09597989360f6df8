//! The `stargan` command line.

pub mod args;
pub mod translate;

pub use args::RunArgs;
