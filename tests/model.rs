//! The networks' shapes, names and initialisation against the reference's.

use stargan::model::{Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, Role};
use tch::{Device, Kind, Tensor};

#[test]
fn default_configs_have_the_reference_parameter_counts() {
    let cases = [(5, 8_430_528, 44_762_048), (8, 8_439_936, 44_786_624)];
    for (c_dim, g_count, d_count) in cases {
        let g = Generator::new(GeneratorConfig { c_dim, ..Default::default() }, Device::Cpu);
        let d = Discriminator::new(DiscriminatorConfig { c_dim, ..Default::default() }, Device::Cpu);
        assert_eq!(g.weights.num_parameters(), g_count, "G with c_dim {c_dim}");
        assert_eq!(d.weights.num_parameters(), d_count, "D with c_dim {c_dim}");
    }
}

#[test]
fn parameter_paths_are_the_reference_state_dict_keys() {
    let g = Generator::new(
        GeneratorConfig { conv_dim: 8, c_dim: 5, repeat_num: 2, attention: false },
        Device::Cpu,
    );
    let keys: Vec<&str> = g.weights.iter().map(|(k, _, _)| k).collect();
    for k in [
        "main.0.weight",
        "main.1.running_mean",
        "main.1.num_batches_tracked",
        "main.9.main.0.weight",
        "main.9.main.4.running_var",
        "main.10.main.3.weight",
        "main.11.weight",
        "main.15.bias",
        "main.17.weight",
    ] {
        assert!(keys.contains(&k), "G lacks {k}");
    }
    // State-dict order: a module's parameters, then its buffers, layer by layer.
    assert_eq!(
        &keys[..6],
        [
            "main.0.weight",
            "main.1.weight",
            "main.1.bias",
            "main.1.running_mean",
            "main.1.running_var",
            "main.1.num_batches_tracked"
        ]
    );
    let d = Discriminator::new(
        DiscriminatorConfig { image_size: 32, conv_dim: 8, c_dim: 5, repeat_num: 5 },
        Device::Cpu,
    );
    let keys: Vec<&str> = d.weights.iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys.first(), Some(&"main.0.weight"));
    assert_eq!(&keys[keys.len() - 2..], ["conv1.weight", "conv2.weight"]);
    assert_eq!(d.weights.get("conv2.weight").unwrap().size(), [5, 128, 1, 1]);
}

#[test]
fn initialisation_follows_pytorch_defaults() {
    tch::manual_seed(0);
    let d = Discriminator::new(
        DiscriminatorConfig { image_size: 32, conv_dim: 8, c_dim: 5, repeat_num: 5 },
        Device::Cpu,
    );
    // Conv biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zero as tch's defaults would have it.
    let bias = d.weights.get("main.0.bias").unwrap();
    let bound = 1.0 / (3.0f64 * 16.0).sqrt();
    let max = bias.abs().max().double_value(&[]);
    assert!(max > 0.3 * bound && max <= bound, "bias magnitude {max} vs bound {bound}");
    let w = d.weights.get("main.2.weight").unwrap();
    let bound = 1.0 / (8.0f64 * 16.0).sqrt();
    let (lo, hi) = (w.min().double_value(&[]), w.max().double_value(&[]));
    assert!(
        lo >= -bound && hi <= bound && hi > 0.9 * bound && lo < -0.9 * bound,
        "weights in [{lo}, {hi}], bound {bound}"
    );
    let g = Generator::new(
        GeneratorConfig { conv_dim: 8, c_dim: 5, repeat_num: 2, attention: false },
        Device::Cpu,
    );
    assert_eq!(g.weights.get("main.1.weight").unwrap().sum(Kind::Float).double_value(&[]), 8.0);
    assert_eq!(g.weights.get("main.1.running_var").unwrap().sum(Kind::Float).double_value(&[]), 8.0);
    assert!(g.weights.iter().filter(|(_, _, r)| *r == Role::Buffer).all(|(_, t, _)| !t.requires_grad()));
}

#[test]
fn forward_shapes_and_running_statistics() {
    let g = Generator::new(
        GeneratorConfig { conv_dim: 8, c_dim: 5, repeat_num: 2, attention: false },
        Device::Cpu,
    );
    let d = Discriminator::new(
        DiscriminatorConfig { image_size: 32, conv_dim: 8, c_dim: 5, repeat_num: 5 },
        Device::Cpu,
    );
    let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let c = Tensor::ones([2, 5], (Kind::Float, Device::Cpu));
    let before = g.weights.get("main.1.running_mean").unwrap().copy();
    let y = tch::no_grad(|| g.forward_with(&x, &c, stargan::model::NormStats::PerImageFrozen));
    assert_eq!(y.size(), [2, 3, 32, 32]);
    assert!(y.abs().max().double_value(&[]) <= 1.0, "tanh output");
    assert_eq!(g.weights.get("main.1.running_mean").unwrap(), &before, "frozen statistics moved");
    let _ = tch::no_grad(|| g.forward(&x, &c));
    assert_ne!(g.weights.get("main.1.running_mean").unwrap(), &before, "train-mode statistics did not move");
    let (src, cls) = d.forward(&x);
    assert_eq!(src.size(), [2, 1, 1, 1]);
    assert_eq!(cls.size(), [2, 5]);
}

#[test]
fn bf16_autocast_runs_convolutions_in_bf16_and_restores_the_state() {
    use stargan::model::NormStats;
    use stargan::precision::{is_active, suspended, Precision};
    let g = Generator::new(
        GeneratorConfig { conv_dim: 8, c_dim: 5, repeat_num: 1, attention: false },
        Device::Cpu,
    );
    let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
    let c = Tensor::ones([2, 5], (Kind::Float, Device::Cpu));
    let w = g.weights.get("main.0.weight").unwrap();
    let xc = Tensor::rand([2, 8, 16, 16], (Kind::Float, Device::Cpu)); // image + label channels

    assert!(!is_active(Device::Cpu));
    let (inside, during_backward) = Precision::Bf16.autocast(Device::Cpu, || {
        let y = xc.conv2d(w, None::<Tensor>, [1], [3], [1], 1);
        (
            y.kind(),
            suspended(|| (is_active(Device::Cpu), xc.conv2d(w, None::<Tensor>, [1], [3], [1], 1).kind())),
        )
    });
    assert_eq!(inside, Kind::BFloat16, "a convolution under bf16 autocast runs in bf16");
    assert_eq!(during_backward, (false, Kind::Float), "suspended() turns autocast off");
    assert!(!is_active(Device::Cpu), "leaving the region restores the state");
    assert_eq!(
        Precision::Fp32.autocast(Device::Cpu, || xc.conv2d(w, None::<Tensor>, [1], [3], [1], 1).kind()),
        Kind::Float
    );

    // Inference in bf16: fp32 out, close to fp32 inference, not equal to it.
    let f32_out = g.translate(&x, &c, NormStats::PerImageFrozen, Precision::Fp32);
    let bf16_out = g.translate(&x, &c, NormStats::PerImageFrozen, Precision::Bf16);
    assert_eq!(bf16_out.kind(), Kind::Float);
    let diff = (&f32_out - &bf16_out).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.1, "bf16 translation differs from fp32 by {diff}");
    assert_eq!(w.kind(), Kind::Float, "weights stay fp32");
}

/// The attention option adds one Conv7 (`mask.weight`, after every reference key) and outputs
/// A·C + (1−A)·x: with the mask's weights at zero A is exactly ½, so the output is the mean of the
/// input and the colour image that the same weights without the mask produce.
#[test]
fn attention_generator_blends_its_colour_image_with_the_input() {
    tch::manual_seed(3);
    let cfg = GeneratorConfig { conv_dim: 8, c_dim: 5, repeat_num: 1, attention: true };
    let g = Generator::new(cfg, Device::Cpu);
    let plain = Generator::new(GeneratorConfig { attention: false, ..cfg }, Device::Cpu);
    let (names, plain_names): (Vec<_>, Vec<_>) = (
        g.weights.iter().map(|(k, _, _)| k.to_string()).collect(),
        plain.weights.iter().map(|(k, _, _)| k.to_string()).collect(),
    );
    assert_eq!(names.last().map(String::as_str), Some("mask.weight"));
    assert_eq!(names[..names.len() - 1], plain_names[..]);
    assert_eq!(g.weights.num_parameters() - plain.weights.num_parameters(), 8 * 49);

    let mut shared: std::collections::HashMap<String, Tensor> = g.weights.snapshot().into_iter().collect();
    let inferred = stargan::checkpoint::infer_generator(&shared, std::path::Path::new("g")).unwrap();
    assert_eq!(inferred, cfg, "a checkpoint with `mask.weight` is read as an attention generator");
    let _ = shared.remove("mask.weight");
    plain.weights.load(&shared).unwrap();
    let _ = tch::no_grad(|| g.weights.get("mask.weight").unwrap().shallow_clone().zero_());

    let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let c = Tensor::from_slice(&[1.0f32, 0., 0., 1., 0., 0., 1., 0., 1., 1.]).view([2, 5]);
    let stats = stargan::model::NormStats::PerImageFrozen;
    let (out, mask) = g.forward_masked(&x, &c, stats);
    let mask = mask.expect("an attention generator returns its mask");
    assert_eq!(mask.size(), [2, 1, 16, 16]);
    assert!(mask.allclose(&Tensor::full_like(&mask, 0.5), 0.0, 0.0, false));
    let colour = plain.forward_with(&x, &c, stats);
    let expected = (&x + &colour) * 0.5;
    let err = (&out - &expected).abs().max().double_value(&[]);
    assert!(err < 1e-6, "A·C + (1−A)·x is off by {err}");
    assert!(plain.forward_masked(&x, &c, stats).1.is_none());
}
