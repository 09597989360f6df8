//! The `stargan` command line: one module per subcommand (train's flags live in `args`).

pub mod args;
pub mod bench;
pub mod eval;
pub mod synth;
pub mod test;
pub mod translate;
mod values;

pub use args::RunArgs;
