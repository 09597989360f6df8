//! Data parallelism as hooks on the one training loop: what a rank does differently is here, as
//! calls that are no-ops for a single process.
//!
//! Semantics (DDP's, without its Reducer, which cannot take the penalty's double backward; see
//! ../shared/notes/distributed-c10d.md): every rank starts from rank 0's weights and optimiser
//! state; after each backward pass the gradients are averaged over the ranks before Adam's step, so
//! every rank takes the same step; running statistics are averaged before they are saved or used;
//! only rank 0 writes. A stop request (Ctrl-C, SIGTERM) rides on D's all-reduce, so every rank
//! stops after the same iteration and the collectives stay in step.

use super::step::{GradientHook, Net, StarGan};
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::model::Role;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

/// This process's place in the run: alone, or one rank of a group.
#[derive(Clone, Copy)]
pub struct Ranks<'a> {
    pub group: Option<&'a ProcessGroup>,
}

impl<'a> Ranks<'a> {
    pub const SINGLE: Ranks<'static> = Ranks { group: None };

    pub fn rank(&self) -> usize {
        self.group.map_or(0, |g| g.rank())
    }
    pub fn world(&self) -> usize {
        self.group.map_or(1, |g| g.world())
    }
    /// Whether this process writes checkpoints, samples and logs (rank 0).
    pub fn writes(&self) -> bool {
        self.rank() == 0
    }

    /// The gradient hook of this process, watching `stop` for stop requests.
    pub fn hook(&self, stop: &'a AtomicBool) -> AllReduce<'a> {
        AllReduce { group: self.group, stop, failed: false, agreed_stop: false, agreed_failure: false }
    }

    /// Rank 0's start-up outcome on every rank: `Ok(n)` (the iteration to start at) is passed on; an
    /// error stays rank 0's to report, and the others stop with a line pointing at it.
    pub fn agree_start(&self, outcome: Result<u64>) -> Result<u64> {
        self.agree(outcome.map(|n| n as i64), "could not start the run").map(|n| n as u64)
    }

    /// Rank 0's end of the run on every rank: an error stays rank 0's to report, the others stop
    /// with a line pointing at it. Also the last collective: no rank leaves while another needs it.
    pub fn agree_end(&self, outcome: Result<()>) -> Result<()> {
        self.agree(outcome.map(|()| 0), "stopped the run").map(|_| ())
    }

    /// Broadcast rank 0's non-negative result, or that it failed.
    fn agree(&self, outcome: Result<i64>, failed: &str) -> Result<i64> {
        let Some(g) = self.group else { return outcome };
        let mut code = [match &outcome {
            Ok(n) => *n,
            Err(_) => -1,
        }];
        let sent = g.broadcast_i64(&mut code, 0);
        if g.rank() == 0 {
            let n = outcome?;
            sent?;
            return Ok(n);
        }
        sent?;
        if code[0] < 0 {
            return Err(Error::Input(format!(
                "rank {}/{}: rank 0 {failed} (its error is above)",
                g.rank(),
                g.world()
            )));
        }
        Ok(code[0])
    }

    /// Every rank takes rank 0's configuration or none: a rank with other settings would issue other
    /// collectives (another n_critic, another length) and hang the rest.
    pub fn check_same(&self, fingerprint: u32, what: &str) -> Result<()> {
        let Some(g) = self.group else { return Ok(()) };
        let mut v = [fingerprint as i64, g.world() as i64];
        g.broadcast_i64(&mut v, 0)?;
        if v[1] != g.world() as i64 {
            return Err(Error::Input(format!(
                "rank {}/{}: rank 0 has WORLD_SIZE {}, this rank {}",
                g.rank(),
                g.world(),
                v[1],
                g.world()
            )));
        }
        if v[0] != fingerprint as i64 {
            return Err(Error::Input(format!(
                "rank {}/{}: its {what} differ from rank 0's; every rank must be started with the same flags and data",
                g.rank(),
                g.world()
            )));
        }
        Ok(())
    }

    /// Rank 0's weights, running statistics and optimiser state on every rank (after
    /// initialisation, and after rank 0 read a checkpoint).
    pub fn broadcast_model(&self, model: &mut StarGan) -> Result<()> {
        let Some(g) = self.group else { return Ok(()) };
        let mut ts: Vec<Tensor> = Vec::new();
        for w in [Some(&model.g.weights), Some(&model.d.weights), model.ema.as_ref().map(|e| &e.g.weights)]
            .into_iter()
            .flatten()
        {
            ts.extend(w.iter().map(|(_, t, _)| t.shallow_clone()));
        }
        for opt in [&model.g_opt, &model.d_opt] {
            ts.extend(opt.exp_avg.iter().chain(&opt.exp_avg_sq).map(Tensor::shallow_clone));
        }
        g.broadcast(&mut ts, 0)?;
        let mut steps = [model.g_opt.step, model.d_opt.step];
        g.broadcast_i64(&mut steps, 0)?;
        [model.g_opt.step, model.d_opt.step] = steps;
        Ok(())
    }

    /// Average the instance norms' running statistics over the ranks, in place. They are linear in
    /// each batch's statistics, so the average equals what one process with the ranks' batches put
    /// together would hold. (The counters agree already: every rank takes the same steps.)
    pub fn average_running_stats(&self, model: &StarGan) -> Result<()> {
        let Some(g) = self.group else { return Ok(()) };
        let mut ts: Vec<Tensor> =
            [Some(&model.g.weights), Some(&model.d.weights), model.ema.as_ref().map(|e| &e.g.weights)]
                .into_iter()
                .flatten()
                .flat_map(|w| w.iter())
                .filter(|(_, t, r)| *r == Role::Buffer && t.kind() == Kind::Float)
                .map(|(_, t, _)| t.shallow_clone())
                .collect();
        g.all_reduce_mean(&mut ts)?;
        Ok(())
    }

    /// The mean of each value over the ranks (the losses a log line reports: with equal batches,
    /// what one process with all the ranks' images would compute).
    pub fn mean(&self, values: &mut [f64]) -> Result<()> {
        match self.group {
            Some(g) => Ok(g.mean_f64(values)?),
            None => Ok(()),
        }
    }
}

/// Averages each network's gradients over the ranks between backward and the optimiser step, and
/// carries the ranks' stop requests and failures with D's.
pub struct AllReduce<'a> {
    group: Option<&'a ProcessGroup>,
    stop: &'a AtomicBool,
    /// This rank failed (rank 0's writing): the run must end.
    failed: bool,
    agreed_stop: bool,
    agreed_failure: bool,
}

impl AllReduce<'_> {
    /// Whether the run should stop now: this process's request or failure when alone; in a group,
    /// whether any rank had asked or failed by the last D update (the same answer on every rank).
    pub fn stop_requested(&self) -> bool {
        match self.group {
            None => self.stop.load(Ordering::Relaxed) || self.failed,
            Some(_) => self.agreed_stop || self.agreed_failure,
        }
    }

    /// Whether the run stops because a rank failed (then nothing more is saved).
    pub fn failure_agreed(&self) -> bool {
        match self.group {
            None => self.failed,
            Some(_) => self.agreed_failure,
        }
    }

    /// Report this rank's failure with the next D update.
    pub fn fail(&mut self) {
        self.failed = true;
    }
}

impl GradientHook for AllReduce<'_> {
    fn gradients(&mut self, net: Net, grads: &mut [Tensor]) -> Result<()> {
        let Some(g) = self.group else { return Ok(()) };
        if net == Net::G {
            return Ok(g.all_reduce_mean(grads)?);
        }
        // The flags travel in the same fp32 buffer as D's gradients: no extra collective. A flag's
        // mean is above zero exactly when some rank raised it.
        let device = grads.first().map_or(tch::Device::Cpu, Tensor::device);
        let raise = |b: bool| if b { 1.0f32 } else { 0.0 };
        let flags = [raise(self.stop.load(Ordering::Relaxed)), raise(self.failed)];
        let mut all: Vec<Tensor> = grads.iter().map(Tensor::shallow_clone).collect();
        all.push(Tensor::from_slice(&flags).to_device(device));
        g.all_reduce_mean(&mut all)?;
        let seen = Vec::<f32>::try_from(all.last().expect("the flags").to_device(tch::Device::Cpu))
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.agreed_stop |= seen[0] > 0.0;
        self.agreed_failure |= seen[1] > 0.0;
        Ok(())
    }
}
