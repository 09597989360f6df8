//! An exponential moving average of G's weights (StarGAN v2's `moving_average`): after every G
//! update, θ_ema ← lerp(θ, θ_ema, β) = β·θ_ema + (1−β)·θ, with libtorch's own lerp so the numbers
//! are PyTorch's. The running statistics are copied, not averaged: they are not trained.

use crate::model::{Generator, Role};

#[derive(Debug)]
pub struct Ema {
    pub g: Generator,
    pub beta: f64,
}

impl Ema {
    /// An average that starts at `g`'s weights.
    pub fn new(g: &Generator, beta: f64) -> Self {
        let ema = Generator::new(g.config, g.device());
        copy_all(&ema, g);
        Self { g: ema, beta }
    }

    /// Start again from `g` (a resumed run whose checkpoint has no average).
    pub fn reset(&self, g: &Generator) {
        copy_all(&self.g, g);
    }

    /// One step of the average toward `g`.
    pub fn update(&self, g: &Generator) {
        tch::no_grad(|| {
            for ((_, e, role), (_, p, _)) in self.g.weights.iter().zip(g.weights.iter()) {
                let mut e = e.shallow_clone();
                match role {
                    Role::Parameter => e.copy_(&p.lerp(&e, self.beta)),
                    Role::Buffer => e.copy_(p),
                }
            }
        });
    }
}

fn copy_all(dst: &Generator, src: &Generator) {
    tch::no_grad(|| {
        for ((_, d, _), (_, s, _)) in dst.weights.iter().zip(src.weights.iter()) {
            d.shallow_clone().copy_(s);
        }
    });
}
