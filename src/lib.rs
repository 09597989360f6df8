//! StarGAN on libtorch.
