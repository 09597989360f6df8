//! One StarGAN iteration: the D update and, every n_critic iterations, the G update.
//!
//! The step takes everything random as input (the target permutation and the gradient-penalty
//! mixing weights) so that the same step can replay the reference's fixtures or a resumed run.

pub use crate::config::StepMode;
use crate::config::{AdvLoss, PenaltyKind, TrainConfig};
use crate::data::source::HostBatch;
use crate::labels::LabelLayout;
use crate::loss;
use crate::model::{Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, NormStats};
use crate::optim::Adam;
use crate::precision::Precision;
use crate::rng::{Purpose, Stream};
use tch::{Device, Tensor};

/// Loss weights λ_cls, λ_rec, λ_gp, and λ_mask (an attention generator's only); the defaults are
/// `OptimConfig`'s.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lambdas {
    pub cls: f64,
    pub rec: f64,
    pub gp: f64,
    #[serde(default)]
    pub mask: f64,
}

impl Default for Lambdas {
    fn default() -> Self {
        Self { cls: 1.0, rec: 10.0, gp: 10.0, mask: 0.1 }
    }
}

/// The training recipe beyond the loss weights: the reference's by default (WGAN-GP every step),
/// or later work's (the non-saturating loss, R1, lazy regularisation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    pub adv: AdvLoss,
    pub penalty: PenaltyKind,
    /// R1's weight (the GP's is `Lambdas::gp`).
    pub lambda_r1: f64,
    /// The penalty on every k-th D update only (counted by D's Adam steps, so a resumed run
    /// regularises where an uninterrupted one would), weighted by k.
    pub reg_every: u64,
}

impl Default for Recipe {
    fn default() -> Self {
        Self { adv: AdvLoss::Wgan, penalty: PenaltyKind::Gp, lambda_r1: 1.0, reg_every: 1 }
    }
}

/// G(x, c) and, for an attention generator, its mask A (which L_G's sparsity term reads).
type Translation = (Tensor, Option<Tensor>);

/// One batch of one dataset, with the randomness of its iteration.
#[derive(Debug)]
pub struct Batch {
    /// Images `[N,3,H,W]` in [-1, 1].
    pub x: Tensor,
    /// Which dataset of the layout the batch comes from.
    pub domain: usize,
    /// Original labels: `[N, dim]` 0/1 for multi-label data, `[N]` class indices for one-hot data.
    pub label: Tensor,
    /// Targets are `label[rand_idx]`, a permutation of the batch's own labels.
    pub rand_idx: Tensor,
    /// Gradient-penalty mixing weights, `[N]` in [0, 1).
    pub alpha: Tensor,
}

impl Batch {
    /// A host batch on `device`, with its iteration's target permutation and penalty weights
    /// (functions of the seed, the data set, the iteration and the rank: rank 0 draws what a
    /// single process draws, so a world of one is a single-process run).
    pub fn from_host(hb: &HostBatch, iteration: u64, seed: u64, rank: usize, device: Device) -> Batch {
        let k = hb.source as u64;
        let key = [k, iteration, rank as u64];
        let key = if rank == 0 { &key[..2] } else { &key[..] };
        let perm: Vec<i64> = Stream::new(seed, Purpose::TargetPermutation, key)
            .permutation(hb.len())
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let mut mix = Stream::new(seed, Purpose::PenaltyMix, key);
        let alpha: Vec<f32> = (0..hb.len()).map(|_| mix.uniform_f32()).collect();
        Batch {
            x: crate::batch::images_tensor(hb).to_device(device),
            domain: hb.source,
            label: crate::batch::labels_tensor(&hb.labels).to_device(device),
            rand_idx: Tensor::from_slice(&perm).to_device(device),
            alpha: Tensor::from_slice(&alpha).to_device(device),
        }
    }

    pub fn label_trg(&self) -> Tensor {
        self.label.index_select(0, &self.rand_idx)
    }
}

/// D's losses of one iteration, as scalar tensors (read them only when logging: reading forces a
/// device synchronisation).
#[derive(Debug)]
pub struct DLosses {
    pub real: Tensor,
    pub fake: Tensor,
    pub cls: Tensor,
    pub gp: Tensor,
    pub total: Tensor,
    /// The penalty's weight in `total` when this update computed it; `None` when lazy
    /// regularisation skipped it.
    pub penalty_weight: Option<f64>,
}

#[derive(Debug)]
pub struct GLosses {
    pub fake: Tensor,
    pub rec: Tensor,
    pub cls: Tensor,
    /// An attention generator's mask sparsity, E[A] over the translation and the reconstruction.
    pub mask: Option<Tensor>,
    pub total: Tensor,
}

/// The two networks, their optimisers and the objective's weights.
#[derive(Debug)]
pub struct StarGan {
    pub g: Generator,
    pub d: Discriminator,
    pub layout: LabelLayout,
    pub lambdas: Lambdas,
    pub g_opt: Adam,
    pub d_opt: Adam,
    /// Forward passes and losses run under this precision's autocast; backward passes and the
    /// optimisers do not (the reference's bf16 recipe, bench/reference.py).
    pub precision: Precision,
    pub recipe: Recipe,
    /// The moving average of G's weights, when the run keeps one (updated after each G step).
    pub ema: Option<super::ema::Ema>,
}

fn gradients(loss: &Tensor, params: &[Tensor]) -> Vec<Tensor> {
    Tensor::run_backward(&[loss], params, false, false)
}

/// Which network a set of gradients belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    G,
    D,
}

/// Runs between a network's backward pass and its optimiser step, with its gradients in parameter
/// order: the place for an all-reduce across processes, clipping or accumulation.
pub trait GradientHook {
    fn gradients(&mut self, net: Net, grads: &mut [Tensor]) -> crate::error::Result<()>;
}

/// The hook of a single process: gradients go to the optimiser as they are.
pub struct NoHook;

impl GradientHook for NoHook {
    fn gradients(&mut self, _: Net, _: &mut [Tensor]) -> crate::error::Result<()> {
        Ok(())
    }
}

impl StarGan {
    pub fn new(
        g: Generator,
        d: Discriminator,
        layout: LabelLayout,
        lambdas: Lambdas,
        lr: (f64, f64),
        betas: (f64, f64),
    ) -> Self {
        let g_opt = Adam::new(&g.weights.parameters(), lr.0, betas.0, betas.1);
        let d_opt = Adam::new(&d.weights.parameters(), lr.1, betas.0, betas.1);
        Self {
            g,
            d,
            layout,
            lambdas,
            g_opt,
            d_opt,
            precision: Precision::Fp32,
            recipe: Recipe::default(),
            ema: None,
        }
    }

    /// Networks sized by the configuration for the given label layout, initialised from the seed.
    pub fn from_config(cfg: &TrainConfig, layout: LabelLayout, device: Device) -> StarGan {
        // The initialisation draws from libtorch's one global generator: two models built at once
        // on two threads (a server and a trainer, parallel tests) would interleave their draws and
        // neither would be its seed's. One construction at a time, process-wide.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tch::manual_seed(cfg.seed as i64);
        let (m, o) = (&cfg.model, &cfg.optim);
        let g = Generator::new(
            GeneratorConfig {
                conv_dim: m.g_conv_dim,
                c_dim: layout.g_dim(),
                repeat_num: m.g_repeat_num,
                attention: m.attention_mask,
            },
            device,
        );
        let d = Discriminator::new(
            DiscriminatorConfig {
                image_size: cfg.data.image_size,
                conv_dim: m.d_conv_dim,
                c_dim: layout.d_dim(),
                repeat_num: m.d_repeat_num,
            },
            device,
        );
        let lambdas = Lambdas { cls: o.lambda_cls, rec: o.lambda_rec, gp: o.lambda_gp, mask: o.lambda_mask };
        let mut model = StarGan::new(g, d, layout, lambdas, (o.g_lr, o.d_lr), (o.beta1, o.beta2));
        model.precision = o.precision;
        model.recipe =
            Recipe { adv: o.adv_loss, penalty: o.penalty, lambda_r1: o.lambda_r1, reg_every: o.reg_every };
        // Made after D, so the reference recipe's initialisation draws stay as they were.
        if o.ema_beta > 0.0 {
            model.ema = Some(super::ema::Ema::new(&model.g, o.ema_beta));
        }
        model
    }

    /// L_D = L_adv(real) + L_adv(fake) + λ_cls·L_cls(real, c_org) + λ_gp·GP.
    pub fn d_loss(&self, b: &Batch) -> DLosses {
        let c_trg = self.layout.condition(b.domain, &b.label_trg());
        // One autocast region per loss, as in the reference's `with torch.autocast(...)`: within
        // it each weight is cast to bf16 once, so its uses share one cast (and one bf16 gradient).
        self.autocast(b, || {
            let x_fake = self.g.forward(&b.x, &c_trg).detach();
            self.d_loss_on(b, &x_fake, false)
        })
    }

    /// Runs `f` under the precision's autocast on the batch's device.
    fn autocast<T>(&self, b: &Batch, f: impl FnOnce() -> T) -> T {
        self.precision.autocast(b.x.device(), f)
    }

    /// L_D with G(x, c_trg) already computed, inside the caller's autocast region.
    fn d_loss_on(&self, b: &Batch, x_fake: &Tensor, fused: bool) -> DLosses {
        let kind = self.layout.domains[b.domain].kind;
        let x_fake = x_fake.detach();
        let (real_src, real_cls, fake_src) = if fused {
            // D has no batch-dependent layer: one pass over [real; fake] computes both halves.
            let n = b.x.size()[0];
            let (src, cls) = self.d.forward(&Tensor::cat(&[&b.x, &x_fake], 0));
            (src.narrow(0, 0, n), cls.narrow(0, 0, n), src.narrow(0, n, n))
        } else {
            let (real_src, real_cls) = self.d.forward(&b.x);
            (real_src, real_cls, self.d.forward(&x_fake).0)
        };
        // The terms in the reference's order: real, cls, fake, then the penalty.
        let real = match self.recipe.adv {
            AdvLoss::Wgan => loss::adversarial_real(&real_src),
            AdvLoss::Ns => loss::non_saturating_real(&real_src),
        };
        let cls = loss::classification(&self.layout.slice_logits(b.domain, &real_cls), &b.label, kind);
        let fake = match self.recipe.adv {
            AdvLoss::Wgan => loss::adversarial_fake(&fake_src),
            AdvLoss::Ns => loss::non_saturating_fake(&fake_src),
        };

        let (gp, penalty_weight) = self.penalty(b, &x_fake);

        let total = &real + &fake + &cls * self.lambdas.cls + &gp * penalty_weight.unwrap_or(0.0);
        DLosses { real, fake, cls, gp, total, penalty_weight }
    }

    /// D's penalty of this update and its weight: the configured one on every `reg_every`-th
    /// iteration, weighted by `reg_every`; zero (and no weight) in between. Iterations are counted
    /// by D's Adam steps, one per data set and iteration, so a resumed run regularises where an
    /// uninterrupted one would, and every data set of joint training on the same iterations.
    fn penalty(&self, b: &Batch, x_fake: &Tensor) -> (Tensor, Option<f64>) {
        let k = self.recipe.reg_every.max(1);
        let iteration = self.d_opt.step as u64 / self.layout.domains.len().max(1) as u64;
        if !iteration.is_multiple_of(k) {
            return (Tensor::zeros([], (tch::Kind::Float, b.x.device())), None);
        }
        // k = 1 multiplies by exactly 1.0: the reference recipe's numbers are unchanged.
        let (value, weight) = match self.recipe.penalty {
            PenaltyKind::Gp => (loss::gradient_penalty(&self.d, &b.x, x_fake, &b.alpha), self.lambdas.gp),
            PenaltyKind::R1 => (loss::r1_penalty(&self.d, &b.x), self.recipe.lambda_r1),
        };
        (value, Some(weight * k as f64))
    }

    /// L_G = −L_adv(fake) + λ_rec·L_rec + λ_cls·L_cls(fake, c_trg) (+ λ_mask·L_mask for an
    /// attention generator).
    pub fn g_loss(&self, b: &Batch) -> GLosses {
        let c_trg = self.layout.condition(b.domain, &b.label_trg());
        self.autocast(b, || {
            let fake = self.g.forward_masked(&b.x, &c_trg, NormStats::PerImage);
            self.g_loss_on(b, &fake)
        })
    }

    /// L_G with G(x, c_trg) and its mask already computed (with their graph), inside the caller's
    /// autocast region.
    fn g_loss_on(&self, b: &Batch, (x_fake, fake_mask): &Translation) -> GLosses {
        let kind = self.layout.domains[b.domain].kind;
        let label_trg = b.label_trg();
        let c_org = self.layout.condition(b.domain, &b.label);
        let (out_src, out_cls) = self.d.forward(x_fake);
        let fake = match self.recipe.adv {
            AdvLoss::Wgan => -loss::adversarial_fake(&out_src),
            AdvLoss::Ns => loss::non_saturating_real(&out_src),
        };
        let cls = loss::classification(&self.layout.slice_logits(b.domain, &out_cls), &label_trg, kind);

        let (x_rec, rec_mask) = self.g.forward_masked(x_fake, &c_org, NormStats::PerImage);
        let rec = loss::reconstruction(&b.x, &x_rec);

        let total = &fake + &rec * self.lambdas.rec + &cls * self.lambdas.cls;
        let mask = fake_mask.as_ref().zip(rec_mask).map(|(a, a_rec)| loss::mask_sparsity(a, &a_rec));
        let total = match &mask {
            Some(m) => total + m * self.lambdas.mask,
            None => total,
        };
        GLosses { fake, rec, cls, mask, total }
    }

    /// D's gradients of L_D, in parameter order (the GP term's double backward included).
    pub fn d_gradients(&self, b: &Batch) -> (DLosses, Vec<Tensor>) {
        let losses = self.d_loss(b);
        let grads = gradients(&losses.total, &self.d.weights.parameters());
        (losses, grads)
    }

    /// G's gradients of L_G. Only G's parameters are differentiated: D's gradients, which the
    /// reference computes and throws away, are never formed.
    pub fn g_gradients(&self, b: &Batch) -> (GLosses, Vec<Tensor>) {
        let losses = self.g_loss(b);
        let grads = gradients(&losses.total, &self.g.weights.parameters());
        (losses, grads)
    }

    /// Adam's step on D with these gradients.
    pub fn apply_d(&mut self, grads: &[Tensor]) {
        self.d_opt.step(&self.d.weights.parameters(), grads);
    }

    /// Adam's step on G with these gradients, then the moving average's step.
    pub fn apply_g(&mut self, grads: &[Tensor]) {
        self.g_opt.step(&self.g.weights.parameters(), grads);
        if let Some(ema) = &self.ema {
            ema.update(&self.g);
        }
    }

    /// The generator to sample and translate with: the moving average when there is one.
    pub fn g_for_inference(&self) -> &Generator {
        self.ema.as_ref().map_or(&self.g, |e| &e.g)
    }

    pub fn d_step(&mut self, b: &Batch) -> DLosses {
        let (losses, grads) = self.d_gradients(b);
        self.apply_d(&grads);
        losses
    }

    pub fn g_step(&mut self, b: &Batch) -> GLosses {
        let (losses, grads) = self.g_gradients(b);
        self.apply_g(&grads);
        losses
    }

    /// One iteration on one batch: the D update, then the G update when `with_g`.
    pub fn iteration(&mut self, b: &Batch, with_g: bool, mode: StepMode) -> (DLosses, Option<GLosses>) {
        self.iteration_with(b, with_g, mode, &mut NoHook).expect("the identity hook cannot fail")
    }

    /// [`iteration`](Self::iteration) with `hook` run on each network's gradients before its
    /// optimiser step (in both modes: D's, then G's).
    pub fn iteration_with(
        &mut self,
        b: &Batch,
        with_g: bool,
        mode: StepMode,
        hook: &mut dyn GradientHook,
    ) -> crate::error::Result<(DLosses, Option<GLosses>)> {
        if mode == StepMode::Reference {
            let (d, mut grads) = self.d_gradients(b);
            hook.gradients(Net::D, &mut grads)?;
            self.apply_d(&grads);
            if !with_g {
                return Ok((d, None));
            }
            let (g, mut grads) = self.g_gradients(b);
            hook.gradients(Net::G, &mut grads)?;
            self.apply_g(&grads);
            return Ok((d, Some(g)));
        }
        let (fake, d, mut grads) = self.fast_d_gradients(b, with_g);
        hook.gradients(Net::D, &mut grads)?;
        self.apply_d(&grads);
        if !with_g {
            return Ok((d, None));
        }
        let (g, mut grads) = self.fast_g_gradients(b, &fake);
        hook.gradients(Net::G, &mut grads)?;
        self.apply_g(&grads);
        Ok((d, Some(g)))
    }

    /// The fast mode's D gradients, and G(x, c_trg) (with its graph when `with_g`, for the G loss).
    fn fast_d_gradients(&self, b: &Batch, with_g: bool) -> (Translation, DLosses, Vec<Tensor>) {
        let c_trg = self.layout.condition(b.domain, &b.label_trg());
        // The D update's region ends before its optimiser step: a cast weight cached across the
        // step would be stale. So the G loss gets a region (and casts of G's weights) of its own.
        let (fake, d) = self.autocast(b, || {
            let fake = if with_g {
                self.g.forward_masked(&b.x, &c_trg, NormStats::PerImageTwice)
            } else {
                (tch::no_grad(|| self.g.forward(&b.x, &c_trg)), None)
            };
            let d = self.d_loss_on(b, &fake.0, true);
            (fake, d)
        });
        let grads = gradients(&d.total, &self.d.weights.parameters());
        (fake, d, grads)
    }

    /// The fast mode's G gradients on the shared G(x, c_trg).
    fn fast_g_gradients(&self, b: &Batch, fake: &Translation) -> (GLosses, Vec<Tensor>) {
        let g = self.autocast(b, || self.g_loss_on(b, fake));
        let grads = gradients(&g.total, &self.g.weights.parameters());
        (g, grads)
    }

    /// The parts a training checkpoint saves.
    pub fn nets(&self) -> crate::checkpoint::native::Nets<'_> {
        crate::checkpoint::native::Nets {
            g: &self.g,
            g_ema: self.ema.as_ref().map(|e| &e.g),
            d: &self.d,
            g_opt: &self.g_opt,
            d_opt: &self.d_opt,
            layout: &self.layout,
        }
    }

    /// Restore a training checkpoint's weights, optimiser moments and learning rates.
    pub fn restore(
        &mut self,
        loaded: &crate::checkpoint::native::Loaded,
        path: &std::path::Path,
    ) -> Result<(), crate::checkpoint::CheckpointError> {
        let (g, d, layout) = (&self.g, &self.d, &self.layout);
        crate::checkpoint::native::restore(loaded, (g, d), layout, &mut self.g_opt, &mut self.d_opt, path)?;
        if let Some(ema) = &self.ema {
            match loaded.generator_ema() {
                Some(w) => {
                    ema.g.weights.load(&w).map_err(|e| crate::checkpoint::CheckpointError::Invalid {
                        path: path.to_path_buf(),
                        reason: format!("its G_ema: {e}"),
                    })?
                }
                None => {
                    tracing::warn!(
                        "{} has no moving average of G; it starts from G's weights",
                        path.display()
                    );
                    ema.reset(&self.g);
                }
            }
        }
        Ok(())
    }

    /// Set both learning rates (decay schedules).
    pub fn set_lr(&mut self, g_lr: f64, d_lr: f64) {
        self.g_opt.lr = g_lr;
        self.d_opt.lr = d_lr;
    }
}
