//! Adam with its state in the open, so that checkpoints can save and restore it.
//!
//! tch's optimiser keeps Adam's moments inside libtorch where they cannot be read back. This is
//! the update of `torch.optim.Adam` (the single-tensor path PyTorch takes for CPU tensors), written
//! with the same libtorch operations in the same order, so the weights after a step agree with the
//! reference's to the last bit or nearly.

use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken so far (PyTorch's per-parameter `state['step']`; the same for all here).
    pub step: i64,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

impl Adam {
    pub fn new(params: &[Tensor], lr: f64, beta1: f64, beta2: f64) -> Self {
        let zeros = || params.iter().map(|p| p.zeros_like().detach()).collect::<Vec<_>>();
        Self { lr, beta1, beta2, eps: 1e-8, step: 0, exp_avg: zeros(), exp_avg_sq: zeros() }
    }

    /// One update of `params` with `grads` (same order).
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor]) {
        assert_eq!(params.len(), grads.len());
        self.step += 1;
        let step = self.step as f64;
        let bias_correction1 = 1.0 - self.beta1.powf(step);
        let bias_correction2 = 1.0 - self.beta2.powf(step);
        let step_size = self.lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        tch::no_grad(|| {
            for (i, (param, grad)) in params.iter().zip(grads).enumerate() {
                if !grad.defined() {
                    continue;
                }
                let exp_avg = &mut self.exp_avg[i];
                let exp_avg_sq = &mut self.exp_avg_sq[i];
                let _ = exp_avg.lerp_(grad, 1.0 - self.beta1);
                // exp_avg_sq.mul_(β2).addcmul_(g, g, value=1−β2). addcmul computes self + (v·t1)·t2
                // in one kernel (which the compiler may fuse into an FMA); calling the same kernel
                // with t1 = v·g and value 1 reproduces it bit for bit.
                let _ = exp_avg_sq.g_mul_scalar_(self.beta2);
                let _ = exp_avg_sq.addcmul_(&(grad * (1.0 - self.beta2)), grad);
                let denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + self.eps;
                // param.addcdiv_(exp_avg, denom, value=−step_size): self + (v·t1)/t2, likewise.
                let mut param = param.shallow_clone();
                let _ = param.addcdiv_(&(&*exp_avg * -step_size), &denom);
            }
        });
    }

    /// The moment tensors, named as `exp_avg.<i>` / `exp_avg_sq.<i>` for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            out.push((format!("exp_avg.{i}"), m.shallow_clone()));
            out.push((format!("exp_avg_sq.{i}"), v.shallow_clone()));
        }
        out
    }

    /// Restore moments written by [`Adam::state`].
    pub fn load_state(&mut self, step: i64, get: impl Fn(&str) -> Option<Tensor>) -> Result<(), String> {
        for i in 0..self.exp_avg.len() {
            for (name, dst) in [("exp_avg", &mut self.exp_avg[i]), ("exp_avg_sq", &mut self.exp_avg_sq[i])] {
                let key = format!("{name}.{i}");
                let src = get(&key).ok_or_else(|| format!("optimiser state lacks `{key}`"))?;
                if src.size() != dst.size() {
                    return Err(format!(
                        "optimiser state `{key}` has shape {:?}, expected {:?}",
                        src.size(),
                        dst.size()
                    ));
                }
                tch::no_grad(|| dst.copy_(&src.to_kind(Kind::Float)));
            }
        }
        self.step = step;
        Ok(())
    }
}
