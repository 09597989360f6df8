//! The Fréchet distance between Gaussians fitted to two feature sets (the formula of FID):
//!
//! d² = |μ₁ − μ₂|² + Tr(Σ₁) + Tr(Σ₂) − 2·Tr((Σ₁Σ₂)^½).
//!
//! `stargan eval` applies it to the penultimate features of its own judge classifier, so it reports
//! a *classifier Fréchet distance* (CFD), which is not comparable with Inception FID.
//!
//! Numerics: everything is computed in f64 on the CPU. Σ₁Σ₂ is not symmetric, but it is similar to
//! the symmetric positive semi-definite M = Σ₁^½ Σ₂ Σ₁^½ (same eigenvalues), so
//! Tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(M). Σ₁^½ and the eigenvalues of M come from `linalg_eigh`, with the tiny
//! negative eigenvalues rounding produces clamped to zero. This needs no complex arithmetic (scipy's
//! `sqrtm`, which FID implementations use, can return complex values from rounding) and works when
//! the covariances are singular, as they are whenever there are fewer samples than dimensions.

use tch::{Device, Kind, Tensor};

/// Mean `[d]` and covariance `[d, d]` (divided by n − 1, or by 1 for a single sample) of `[n, d]`
/// features, in f64 on the CPU.
pub fn moments(features: &Tensor) -> (Tensor, Tensor) {
    let f = features.to_device(Device::Cpu).to_kind(Kind::Double);
    let n = f.size()[0];
    let mu = f.mean_dim(0, false, Kind::Double);
    let centred = &f - mu.unsqueeze(0);
    let cov = centred.transpose(0, 1).matmul(&centred) / ((n - 1).max(1) as f64);
    (mu, cov)
}

fn symmetric(m: &Tensor) -> Tensor {
    (m + m.transpose(0, 1)) / 2.0
}

/// The square root of a symmetric positive semi-definite matrix.
fn psd_sqrt(s: &Tensor) -> Tensor {
    let (w, v) = symmetric(s).linalg_eigh("L");
    let root = w.clamp_min(0.0).sqrt();
    (&v * root.unsqueeze(0)).matmul(&v.transpose(0, 1))
}

/// Fréchet distance between Gaussians with these moments.
pub fn frechet_from_moments(mu1: &Tensor, s1: &Tensor, mu2: &Tensor, s2: &Tensor) -> f64 {
    let mean_term = (mu1 - mu2).square().sum(Kind::Double).double_value(&[]);
    let r = psd_sqrt(s1);
    let m = symmetric(&r.matmul(s2).matmul(&r));
    let tr_sqrt = m.linalg_eigvalsh("L").clamp_min(0.0).sqrt().sum(Kind::Double).double_value(&[]);
    let d = mean_term + s1.trace().double_value(&[]) + s2.trace().double_value(&[]) - 2.0 * tr_sqrt;
    // Rounding can take an exact zero slightly below it.
    d.max(0.0)
}

/// Fréchet distance between the Gaussians fitted to `a` `[n, d]` and `b` `[m, d]`; `None` when either
/// set is empty.
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> Option<f64> {
    if a.size()[0] == 0 || b.size()[0] == 0 {
        return None;
    }
    let (mu1, s1) = moments(a);
    let (mu2, s2) = moments(b);
    Some(frechet_from_moments(&mu1, &s1, &mu2, &s2))
}
