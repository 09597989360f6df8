//! `stargan train`: alone, as one rank of a group that torchrun, SLURM or our launcher started
//! (found in the environment), or as the launcher of `--nproc-per-node N` local ranks.

use super::RunArgs;
use crate::dist::{launch, ProcessGroup, Rendezvous};
use crate::error::{Error, Result};
use crate::train::{Outcome, Ranks, STOP};
use std::ffi::OsString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What this process did.
pub enum Ran {
    /// Trained, as `rank` of `world`.
    Trained { outcome: Outcome, rank: usize, world: usize },
    /// Launched local ranks that all finished.
    Launched { nproc: usize },
}

/// Signals the launcher has received (each is passed on to its ranks).
static LAUNCHER_SIGNALS: AtomicUsize = AtomicUsize::new(0);

fn set_threads(threads: usize) {
    let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    tch::set_num_threads(n as i32);
}

fn install_trainer_handler() {
    // First Ctrl-C / SIGTERM: finish the iteration, save a checkpoint, exit. Second: exit at once.
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this iteration (Ctrl-C again to quit now)");
    });
}

/// The command line without `--nproc-per-node` (what each rank runs), with `--threads` set to
/// the rank's share of the cores unless given.
fn rank_args(raw: &[OsString], nproc: usize, threads_given: bool) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in raw {
        if skip {
            skip = false;
            continue;
        }
        match a.to_str() {
            Some("--nproc-per-node") => skip = true,
            Some(s) if s.starts_with("--nproc-per-node=") => {}
            _ => out.push(a.clone()),
        }
    }
    if !threads_given {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        out.push("--threads".into());
        out.push((cores / nproc).max(1).to_string().into());
    }
    out
}

/// Run `stargan train` with `args`; `raw` is the command line after the program name.
pub fn train(args: &RunArgs, raw: &[OsString]) -> Result<Ran> {
    let cfg = args.resolve()?;
    let rendezvous = Rendezvous::from_env()?;
    let timeout = Duration::from_secs(cfg.dist_timeout);
    if let Some(nproc) = args.nproc_per_node {
        if rendezvous.is_some() {
            return Err(Error::Input(
                "--nproc-per-node starts ranks itself, but this process already is one (RANK or SLURM_PROCID \
                 is set); drop one of the two"
                    .into(),
            ));
        }
        if !(1..=256).contains(&nproc) {
            return Err(Error::Input(format!("--nproc-per-node {nproc} is outside 1..=256")));
        }
        // Refused here once rather than by every rank.
        cfg.dist_backend.resolve(cfg.device.resolve()?)?;
        let exe =
            std::env::current_exe().map_err(|e| Error::Internal(format!("cannot find this program: {e}")))?;
        let _ = ctrlc::set_handler(|| {
            LAUNCHER_SIGNALS.fetch_add(1, Ordering::SeqCst);
        });
        let child_args = rank_args(raw, nproc, args.threads.is_some());
        launch::run_local(nproc, &exe, &child_args, timeout, &LAUNCHER_SIGNALS)?;
        return Ok(Ran::Launched { nproc });
    }
    set_threads(cfg.threads);
    install_trainer_handler();
    let Some(rv) = rendezvous else {
        let outcome = crate::train::train(&cfg)?;
        return Ok(Ran::Trained { outcome, rank: 0, world: 1 });
    };
    let (rank, world) = (rv.rank, rv.world);
    let in_rank = |e: Error| match e.to_string() {
        m if m.starts_with("rank ") => e,
        m => Error::Input(format!("rank {rank}/{world}: {m}")),
    };
    let backend = cfg.dist_backend.resolve(cfg.device.resolve()?).map_err(|e| in_rank(e.into()))?;
    let group = ProcessGroup::join(&rv, backend, timeout).map_err(|e| in_rank(e.into()))?;
    let outcome = crate::train::train_in(&cfg, Ranks { group: Some(&group) }).map_err(in_rank)?;
    Ok(Ran::Trained { outcome, rank, world })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranks_run_the_command_without_the_launcher_flag() {
        let raw: Vec<std::ffi::OsString> =
            ["train", "--nproc-per-node", "2", "--num-iters", "3", "--nproc-per-node=2"]
                .map(Into::into)
                .to_vec();
        let out = super::rank_args(&raw, 2, true);
        assert_eq!(out, ["train", "--num-iters", "3"].map(std::ffi::OsString::from).to_vec());
        let out = super::rank_args(&raw, 2, false);
        assert_eq!(out[3], "--threads");
    }
}
