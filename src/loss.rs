//! The StarGAN objective, one function per term (paper eq. 1–4, WGAN-GP form of eq. 1).

use crate::labels::LabelKind;
use crate::model::Discriminator;
use tch::{Kind, Reduction, Tensor};

/// L_adv for real images, as D minimises it: −E[D_src(x)].
pub fn adversarial_real(out_src: &Tensor) -> Tensor {
    -out_src.mean(Kind::Float)
}

/// L_adv for generated images, as D minimises it: +E[D_src(G(x, c))]. G minimises its negation.
pub fn adversarial_fake(out_src: &Tensor) -> Tensor {
    out_src.mean(Kind::Float)
}

/// WGAN-GP: E[(‖∇_x̂ D_src(x̂)‖₂ − 1)²] on x̂ = α·x + (1−α)·x̃, α ~ U(0,1) per image.
/// The inner gradient keeps its graph (create_graph) so that D's update differentiates it again.
pub fn gradient_penalty(d: &Discriminator, x_real: &Tensor, x_fake: &Tensor, alpha: &Tensor) -> Tensor {
    let n = x_real.size()[0];
    let alpha = alpha.view([n, 1, 1, 1]);
    let x_hat = (&alpha * x_real.detach() + (-&alpha + 1.0) * x_fake.detach()).set_requires_grad(true);
    let (out_src, _) = d.forward(&x_hat);
    // The engine seeds a non-scalar root with ones, like the reference's grad_outputs=ones. A
    // backward pass runs outside autocast (torch.amp's advice; the reference's bf16 recipe too):
    // its ops replay the forward's dtypes from the saved tensors.
    let grad =
        crate::precision::suspended(|| Tensor::run_backward(&[&out_src], &[&x_hat], true, true)).remove(0);
    let norm = grad.view([n, -1]).pow_tensor_scalar(2).sum_dim_intlist(1, false, Kind::Float).sqrt();
    (norm - 1.0).pow_tensor_scalar(2).mean(Kind::Float)
}

/// L_cls: BCE-with-logits summed over attributes and divided by the batch size for multi-label
/// data, mean cross-entropy for one class out of many (`target` holds class indices).
pub fn classification(logits: &Tensor, target: &Tensor, kind: LabelKind) -> Tensor {
    match kind {
        LabelKind::MultiLabel => {
            let n = logits.size()[0] as f64;
            logits.binary_cross_entropy_with_logits(
                &target.to_kind(Kind::Float),
                None::<Tensor>,
                None::<Tensor>,
                Reduction::Sum,
            ) / n
        }
        LabelKind::OneHot => logits.cross_entropy_loss(
            &target.to_kind(Kind::Int64),
            None::<Tensor>,
            Reduction::Mean,
            -100,
            0.0,
        ),
    }
}

/// L_rec = E[‖x − G(G(x, c), c′)‖₁].
pub fn reconstruction(x_real: &Tensor, x_rec: &Tensor) -> Tensor {
    (x_real - x_rec).abs().mean(Kind::Float)
}

/// The non-saturating loss on logits that should read "real": E[softplus(−D)] (D on real images;
/// G on its own images). BCE-with-logits against ones, as StarGAN v2's `adv_loss(out, 1)`.
pub fn non_saturating_real(out_src: &Tensor) -> Tensor {
    (-out_src).softplus().mean(Kind::Float)
}

/// The non-saturating loss on logits that should read "fake": E[softplus(D)] (D on G's images).
pub fn non_saturating_fake(out_src: &Tensor) -> Tensor {
    out_src.softplus().mean(Kind::Float)
}

/// R1 (Mescheder et al. 2018), as StarGAN v2's `r1_reg`: (1/2)·E_x[‖∇ₓ Σ D_src(x)‖²] on real
/// images, the sum over D's patch outputs of each image. Double backward, like the GP.
pub fn r1_penalty(d: &Discriminator, x_real: &Tensor) -> Tensor {
    let n = x_real.size()[0];
    let x = x_real.detach().set_requires_grad(true);
    let (out_src, _) = d.forward(&x);
    let total = out_src.sum(Kind::Float);
    let grad = crate::precision::suspended(|| Tensor::run_backward(&[&total], &[&x], true, true)).remove(0);
    grad.pow_tensor_scalar(2).view([n, -1]).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float) * 0.5
}

/// An attention generator's mask sparsity (GANimation's ‖A‖, as a mean): E[A] over the translation's
/// mask and the reconstruction's, averaged. A = 0 passes the input through, so this asks G to
/// change only what the target labels need.
pub fn mask_sparsity(a_fake: &Tensor, a_rec: &Tensor) -> Tensor {
    (a_fake.mean(Kind::Float) + a_rec.mean(Kind::Float)) * 0.5
}
