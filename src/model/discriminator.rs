//! D(x) → (D_src, D_cls): a PatchGAN of stride-2 4×4 convolutions with bias and LeakyReLU(0.01),
//! no normalisation, and two heads: a 3×3 convolution to a one-channel real/fake score map and a
//! convolution with kernel image_size/2^repeat_num to one logit per label.

use super::{conv_bias, conv_weight, Weights};
use tch::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiscriminatorConfig {
    pub image_size: i64,
    pub conv_dim: i64,
    /// Number of class logits (all datasets' labels, without the mask vector).
    pub c_dim: i64,
    pub repeat_num: i64,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        Self { image_size: 128, conv_dim: 64, c_dim: 5, repeat_num: 6 }
    }
}

impl DiscriminatorConfig {
    /// Every value within [`super::bounds`], the image a multiple of 2^repeat_num, and the
    /// network not larger than its bound.
    pub fn check(&self) -> Result<(), String> {
        use super::{bounds, in_range};
        in_range("image_size", self.image_size, bounds::IMAGE_SIZE)?;
        in_range("conv_dim", self.conv_dim, bounds::CONV_DIM)?;
        in_range("c_dim", self.c_dim, bounds::C_DIM)?;
        in_range("repeat_num", self.repeat_num, bounds::D_REPEAT)?;
        if self.image_size % (1 << self.repeat_num) != 0 {
            return Err(format!(
                "image_size {} is not a multiple of 2^repeat_num = {}",
                self.image_size,
                1i64 << self.repeat_num
            ));
        }
        let n = self.weight_scalars();
        if n > bounds::SCALARS {
            return Err(format!(
                "a discriminator of {n} weights is larger than the {} allowed",
                bounds::SCALARS
            ));
        }
        Ok(())
    }

    /// Number of weights and biases; saturates at `i128::MAX` for absurd fields rather than
    /// overflowing.
    pub fn weight_scalars(&self) -> i128 {
        let (mut n, mut dim_in, mut dim) = (0i128, 3i128, self.conv_dim as i128);
        for _ in 0..self.repeat_num.clamp(0, 64) {
            n = n.saturating_add(dim.saturating_mul(dim_in).saturating_mul(16).saturating_add(dim));
            dim_in = dim;
            dim = dim.saturating_mul(2);
        }
        let k = (self.image_size >> self.repeat_num.clamp(0, 63)) as i128;
        let head = (self.c_dim as i128).saturating_mul(dim_in).saturating_mul(k.saturating_mul(k));
        n.saturating_add(dim_in.saturating_mul(9)).saturating_add(head)
    }

    /// Kernel of the classification head: the feature map's side after `repeat_num` halvings.
    pub fn cls_kernel(&self) -> i64 {
        self.image_size >> self.repeat_num
    }
}

#[derive(Debug)]
pub struct Discriminator {
    pub config: DiscriminatorConfig,
    pub weights: Weights,
    main: Vec<(Tensor, Tensor)>,
    conv1: Tensor,
    conv2: Tensor,
}

impl Discriminator {
    pub fn new(config: DiscriminatorConfig, device: Device) -> Self {
        let DiscriminatorConfig { conv_dim, c_dim, repeat_num, .. } = config;
        let mut w = Weights::default();
        let mut main = Vec::new();
        let (mut dim_in, mut dim) = (3, conv_dim);
        for i in 0..repeat_num {
            let name = format!("main.{}", 2 * i);
            let weight = conv_weight(&mut w, format!("{name}.weight"), [dim, dim_in, 4, 4], device);
            let bias = conv_bias(&mut w, format!("{name}.bias"), dim, dim_in * 16, device);
            main.push((weight, bias));
            dim_in = dim;
            dim *= 2;
        }
        let k = config.cls_kernel();
        let conv1 = conv_weight(&mut w, "conv1.weight".into(), [1, dim_in, 3, 3], device);
        let conv2 = conv_weight(&mut w, "conv2.weight".into(), [c_dim, dim_in, k, k], device);
        Self { config, weights: w, main, conv1, conv2 }
    }

    /// Returns (D_src score map `[N,1,h,w]`, D_cls logits `[N,c_dim]`).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        for (weight, bias) in &self.main {
            h = h.conv2d(weight, Some(bias), [2], [1], [1], 1).leaky_relu();
        }
        let out_src = h.conv2d(&self.conv1, None::<Tensor>, [1], [1], [1], 1);
        let out_cls = h.conv2d(&self.conv2, None::<Tensor>, [1], [0], [1], 1);
        let n = out_cls.size()[0];
        (out_src, out_cls.view([n, -1]))
    }
}
