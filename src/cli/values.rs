//! How the library's choice types read as flag values. The types live in the library without clap
//! (ARCHITECTURE.md: nothing below `cli/` knows the command line); their names here are the ones
//! their serde form uses in `--config` files.

use crate::config::{
    AdvLoss, DatasetKind, DeviceChoice, LrDecay, PenaltyKind, Precision, StepMode, SyntheticLabels,
};
use crate::dist::BackendChoice;
use crate::face::Align;
use clap::builder::PossibleValue;

macro_rules! value_enum {
    ($ty:ident { $($variant:ident => $name:literal $([$($alias:literal),*])? : $help:literal),* $(,)? }) => {
        impl clap::ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($ty::$variant),*]
            }
            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($ty::$variant => PossibleValue::new($name)$($(.alias($alias))*)?.help($help)),*
                })
            }
        }
    };
}

value_enum!(DatasetKind {
    Celeba => "celeba" ["CelebA"]: "CelebA: list_attr_celeba.txt and img_align_celeba/, multi-label attributes",
    Rafd => "rafd" ["RaFD"]: "RaFD: one sub-folder of images per expression",
    Both => "both" ["Both"]: "CelebA and RaFD jointly, with the mask vector",
    Folder => "folder": "Your own images: class sub-folders, or a folder plus an attribute file (CelebA format or CSV)",
    Synthetic => "synthetic": "The built-in procedural faces (no download); --synthetic-split picks the label sets",
});

value_enum!(SyntheticLabels {
    Celeba => "celeba": "Hair colour, male, young: multi-label, like CelebA",
    Rafd => "rafd": "Eight expressions: one-hot, like RaFD",
    Both => "both": "Both label sets jointly, with the mask vector",
});

value_enum!(LrDecay {
    Linear => "linear": "Linear to zero over the last num_iters_decay iterations (the paper)",
    Reference => "reference": "The reference code's schedule: lr only falls to about 0.999·lr",
});

value_enum!(DeviceChoice {
    Auto => "auto": "CUDA when libtorch has it and a GPU is present, else the CPU",
    Cpu => "cpu": "The CPU",
    Cuda => "cuda": "The first CUDA device",
});

value_enum!(Align {
    Auto => "auto": "Find and align faces unless the input is already framed (or the model is RaFD's); a faceless image is translated whole",
    On => "on": "Always find and align faces; an image without one is an error",
    Off => "off": "Translate the whole image, centre-cropped",
});

value_enum!(StepMode {
    Reference => "reference": "Operation for operation as the reference (bit-identical results)",
    Fast => "fast": "The same objective with less work (one shared G(x, c_trg), one D pass)",
});

value_enum!(Precision {
    Fp32 => "fp32": "fp32 throughout",
    Bf16 => "bf16": "Autocast: convolutions in bf16, weights, gradients and Adam in fp32",
});

value_enum!(BackendChoice {
    Auto => "auto": "NCCL for CUDA devices, Gloo on the CPU",
    Gloo => "gloo": "Gloo (CPU tensors; CUDA tensors through the host)",
    Nccl => "nccl": "NCCL (CUDA tensors; needs a CUDA libtorch)",
});

value_enum!(AdvLoss {
    Wgan => "wgan": "The paper's WGAN form (with the GP: WGAN-GP)",
    Ns => "ns": "The non-saturating logistic loss (StarGAN v2's)",
});

value_enum!(PenaltyKind {
    Gp => "gp": "WGAN-GP on interpolated images, weight --lambda-gp (the paper's)",
    R1 => "r1": "R1 on real images, weight --lambda-r1 (StarGAN v2's)",
});
