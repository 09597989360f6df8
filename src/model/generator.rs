//! G(x, c): the target label is tiled over the image and concatenated as extra input channels;
//! Conv7 → two stride-2 downsamplings → residual blocks → two transposed-conv upsamplings →
//! Conv7 → tanh, with instance norm + ReLU after every convolution but the last. No biases.
//!
//! As an option (not the reference's), G also predicts a per-pixel attention mask A from the same
//! features (a second Conv7 → sigmoid, `mask.weight`) and outputs A·C + (1−A)·x, C being the tanh
//! image, as GANimation does: where A is 0 the input passes through untouched, so a translation that
//! changes the hair need not repaint the background.

use super::{conv_weight, InstanceNorm, NormStats, Weights};
use crate::precision::Precision;
use tch::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GeneratorConfig {
    /// Channels after the first convolution (64 in the paper).
    pub conv_dim: i64,
    /// Length of the label vector c (with the mask vector included in joint training).
    pub c_dim: i64,
    /// Residual blocks in the bottleneck (6 in the paper).
    pub repeat_num: i64,
    /// The attention-mask output (not the reference's architecture; see the module's note).
    #[serde(default)]
    pub attention: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self { conv_dim: 64, c_dim: 5, repeat_num: 6, attention: false }
    }
}

impl GeneratorConfig {
    /// Every value within [`super::bounds`], and the network not larger than its bound.
    pub fn check(&self) -> Result<(), String> {
        use super::{bounds, in_range};
        in_range("conv_dim", self.conv_dim, bounds::CONV_DIM)?;
        in_range("c_dim", self.c_dim, bounds::C_DIM)?;
        in_range("repeat_num", self.repeat_num, bounds::G_REPEAT)?;
        // In range, the count below cannot overflow.
        let n = self.weight_scalars();
        if n > bounds::SCALARS {
            return Err(format!("a generator of {n} weights is larger than the {} allowed", bounds::SCALARS));
        }
        Ok(())
    }

    /// Number of convolution weights (norm parameters and buffers aside); saturates at
    /// `i128::MAX` for absurd fields rather than overflowing.
    pub fn weight_scalars(&self) -> i128 {
        let (d, c, r) = (self.conv_dim as i128, self.c_dim as i128, self.repeat_num as i128);
        let terms = [
            d.saturating_mul(c.saturating_add(3)).saturating_mul(49),
            d.saturating_mul(d).saturating_mul(320),
            r.saturating_mul(d.saturating_mul(d)).saturating_mul(288),
            d.saturating_mul(147),
            // The mask's Conv7 to one channel.
            if self.attention { d.saturating_mul(49) } else { 0 },
        ];
        terms.iter().fold(0i128, |a, &t| a.saturating_add(t))
    }
}

#[derive(Debug)]
struct ConvNorm {
    weight: Tensor,
    norm: InstanceNorm,
    stride: i64,
    padding: i64,
    transposed: bool,
}

impl ConvNorm {
    fn forward(&self, x: &Tensor, stats: NormStats) -> Tensor {
        let y = if self.transposed {
            x.conv_transpose2d(&self.weight, None::<Tensor>, [self.stride], [self.padding], [0], 1, [1])
        } else {
            x.conv2d(&self.weight, None::<Tensor>, [self.stride], [self.padding], [1], 1)
        };
        self.norm.forward(&y, stats)
    }
}

#[derive(Debug)]
struct ResidualBlock {
    first: ConvNorm,
    second: ConvNorm,
}

impl ResidualBlock {
    fn forward(&self, x: &Tensor, stats: NormStats) -> Tensor {
        let h = self.first.forward(x, stats).relu();
        x + self.second.forward(&h, stats)
    }
}

#[derive(Debug)]
pub struct Generator {
    pub config: GeneratorConfig,
    pub weights: Weights,
    /// main.0 / main.1, then the two downsamplings (main.3/4, main.6/7).
    encoder: Vec<ConvNorm>,
    /// main.9 ... main.{8+repeat_num}.
    bottleneck: Vec<ResidualBlock>,
    /// The two transposed convolutions and their norms.
    decoder: Vec<ConvNorm>,
    /// The final Conv7 to RGB.
    to_rgb: Tensor,
    /// The attention mask's Conv7 to one channel, when G has one.
    to_mask: Option<Tensor>,
}

/// A convolution (or transposed convolution) of the given weight shape, followed by instance norm.
struct Spec {
    shape: [i64; 4],
    stride: i64,
    padding: i64,
    transposed: bool,
}

fn conv_norm(w: &mut Weights, conv: String, norm: String, spec: Spec, device: Device) -> ConvNorm {
    let Spec { shape, stride, padding, transposed } = spec;
    let weight = conv_weight(w, format!("{conv}.weight"), shape, device);
    let channels = if transposed { shape[1] } else { shape[0] };
    let norm = InstanceNorm::new(w, &norm, channels, device);
    ConvNorm { weight, norm, stride, padding, transposed }
}

impl Generator {
    /// The device G's weights live on.
    pub fn device(&self) -> Device {
        self.to_rgb.device()
    }

    /// A freshly initialised generator (PyTorch's default initialisation; seed with
    /// `tch::manual_seed` for reproducibility).
    pub fn new(config: GeneratorConfig, device: Device) -> Self {
        let GeneratorConfig { conv_dim, c_dim, repeat_num, attention } = config;
        let mut w = Weights::default();
        let conv = |shape, stride, padding| Spec { shape, stride, padding, transposed: false };
        // Layer indices follow the reference's nn.Sequential: conv, norm, ReLU per stage.
        let first = conv([conv_dim, 3 + c_dim, 7, 7], 1, 3);
        let mut encoder = vec![conv_norm(&mut w, "main.0".into(), "main.1".into(), first, device)];
        let mut dim = conv_dim;
        let mut index = 3;
        for _ in 0..2 {
            let (c, n) = (format!("main.{index}"), format!("main.{}", index + 1));
            encoder.push(conv_norm(&mut w, c, n, conv([dim * 2, dim, 4, 4], 2, 1), device));
            dim *= 2;
            index += 3;
        }
        let mut bottleneck = Vec::new();
        for _ in 0..repeat_num {
            let p = format!("main.{index}.main");
            let square = [dim, dim, 3, 3];
            let first = conv_norm(&mut w, format!("{p}.0"), format!("{p}.1"), conv(square, 1, 1), device);
            let second = conv_norm(&mut w, format!("{p}.3"), format!("{p}.4"), conv(square, 1, 1), device);
            bottleneck.push(ResidualBlock { first, second });
            index += 1;
        }
        let mut decoder = Vec::new();
        for _ in 0..2 {
            // ConvTranspose2d weights are [in, out, k, k].
            let spec = Spec { shape: [dim, dim / 2, 4, 4], stride: 2, padding: 1, transposed: true };
            let (c, n) = (format!("main.{index}"), format!("main.{}", index + 1));
            decoder.push(conv_norm(&mut w, c, n, spec, device));
            dim /= 2;
            index += 3;
        }
        let to_rgb = conv_weight(&mut w, format!("main.{index}.weight"), [3, dim, 7, 7], device);
        // Drawn after every reference weight, so the shared layers start where the reference's do.
        let to_mask = attention.then(|| conv_weight(&mut w, "mask.weight".into(), [1, dim, 7, 7], device));
        Self { config, weights: w, encoder, bottleneck, decoder, to_rgb, to_mask }
    }

    /// G(x, c) with per-image instance-norm statistics that update the running averages, as the
    /// reference computes it in training and in its test routine.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Tensor {
        self.forward_with(x, c, NormStats::PerImage)
    }

    /// G(x, c) for inference: no graph, in `precision`, returned as fp32.
    pub fn translate(&self, x: &Tensor, c: &Tensor, stats: NormStats, precision: Precision) -> Tensor {
        tch::no_grad(|| precision.autocast(x.device(), || self.forward_with(x, c, stats)))
            .to_kind(tch::Kind::Float)
    }

    pub fn forward_with(&self, x: &Tensor, c: &Tensor, stats: NormStats) -> Tensor {
        self.forward_masked(x, c, stats).0
    }

    /// G(x, c) and, for an attention generator, its mask A `[N,1,H,W]` in (0, 1) (what the
    /// mask's sparsity loss reads).
    pub fn forward_masked(&self, x: &Tensor, c: &Tensor, stats: NormStats) -> (Tensor, Option<Tensor>) {
        let (n, _, h, w) = x.size4().expect("G expects an NCHW batch");
        let c = c.view([n, -1, 1, 1]).repeat([1, 1, h, w]);
        let mut y = Tensor::cat(&[x, &c], 1);
        for layer in &self.encoder {
            y = layer.forward(&y, stats).relu();
        }
        for block in &self.bottleneck {
            y = block.forward(&y, stats);
        }
        for layer in &self.decoder {
            y = layer.forward(&y, stats).relu();
        }
        let colour = y.conv2d(&self.to_rgb, None::<Tensor>, [1], [3], [1], 1).tanh();
        let Some(to_mask) = &self.to_mask else { return (colour, None) };
        let a = y.conv2d(to_mask, None::<Tensor>, [1], [3], [1], 1).sigmoid();
        // A·C + (1−A)·x = x + A·(C − x).
        let out = x + &a * (colour - x);
        (out, Some(a))
    }
}
