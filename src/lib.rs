//! StarGAN (Choi et al., CVPR 2018) on libtorch: one generator that translates images between
//! many domains, trained with one discriminator that also classifies domains.

pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod face;
pub mod files;
pub mod image_io;
pub mod inference;
pub mod labels;
pub mod loss;
pub mod model;
pub mod optim;
pub mod precision;
pub mod rng;
pub mod serve;
pub mod tensorboard;
pub mod train;
