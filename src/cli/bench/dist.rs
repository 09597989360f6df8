//! `--what dist`: data-parallel training on this machine. N ranks with T/N threads each against one
//! process with T threads on the same global batch (the iteration of `--what iteration`), the
//! all-reduce's share of a rank's iteration, and the all-reduce's bandwidth on a buffer of G's and
//! D's parameters against a plain memory copy of the same buffer.
//!
//! Run without a group, it measures the single process, then starts its ranks through the local
//! launcher (the same command, `--dist-out` added) and reads back what rank 0 measured.

use super::{batch, median, model, time, BenchArgs};
use crate::dist::{launch, ProcessGroup, Rendezvous};
use crate::error::{Error, Result};
use crate::train::{AllReduce, GradientHook, Net, Ranks};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

static NEVER: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Serialize, Deserialize)]
struct RankTimes {
    world: usize,
    threads: usize,
    batch: i64,
    iteration_ms: f64,
    allreduce_in_iteration_ms: f64,
    flat_allreduce_ms: f64,
    floats: i64,
}

/// The gradient hook, timed.
struct Timed<'a> {
    inner: AllReduce<'a>,
    spent: Duration,
}

impl GradientHook for Timed<'_> {
    fn gradients(&mut self, net: Net, grads: &mut [Tensor]) -> Result<()> {
        let t = Instant::now();
        self.inner.gradients(net, grads)?;
        self.spent += t.elapsed();
        Ok(())
    }
}

fn per_iteration(
    args: &BenchArgs,
    m: &mut crate::train::StarGan,
    b: &crate::train::Batch,
    hook: &mut Timed,
) -> Result<Vec<f64>> {
    let n = args.n_critic;
    let mut failed = None;
    let ms = time(args.warmup, args.iters, n as usize, Device::Cpu, || {
        // After a failed collective, no more: each would wait out the timeout.
        for i in 0..n {
            if failed.is_none() {
                failed = m.iteration_with(b, i + 1 == n, args.step_mode, hook).err();
            }
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(ms),
    }
}

/// One rank's measurements (in a group started by the launcher).
fn as_rank(args: &BenchArgs, rv: &Rendezvous, out: &std::path::Path) -> Result<()> {
    let group = ProcessGroup::join(rv, "gloo", Duration::from_secs(120))?;
    let ranks = Ranks { group: Some(&group) };
    let world = group.world() as i64;
    if args.batch_size % world != 0 {
        return Err(Error::Input(format!(
            "--batch-size {} does not split over {world} ranks",
            args.batch_size
        )));
    }
    let per_rank = BenchArgs { batch_size: args.batch_size / world, ..args.clone() };
    let mut m = model(&per_rank, Device::Cpu);
    let b = batch(&per_rank, Device::Cpu);
    ranks.broadcast_model(&mut m)?;
    let mut hook = Timed { inner: ranks.hook(&NEVER), spent: Duration::ZERO };
    let iteration_ms = median(&per_iteration(&per_rank, &mut m, &b, &mut hook)?);
    // The hook's time over every iteration run, the warm-up's included (their all-reduces cost the same).
    let total_iters = (args.warmup + args.iters) as f64 * args.n_critic as f64;
    let allreduce_ms = hook.spent.as_secs_f64() * 1e3 / total_iters;
    let floats = m.g.weights.num_parameters() + m.d.weights.num_parameters();
    let mut flat = [Tensor::rand([floats], (Kind::Float, Device::Cpu))];
    group.all_reduce_mean(&mut flat)?;
    let mut samples = Vec::new();
    for _ in 0..args.iters.max(3) {
        let t = Instant::now();
        group.all_reduce_mean(&mut flat)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if group.rank() == 0 {
        let r = RankTimes {
            world: group.world(),
            threads: tch::get_num_threads() as usize,
            batch: per_rank.batch_size,
            iteration_ms,
            allreduce_in_iteration_ms: allreduce_ms,
            flat_allreduce_ms: median(&samples),
            floats,
        };
        let text = serde_json::to_string(&r).map_err(|e| Error::Internal(e.to_string()))?;
        crate::files::write(out, text.as_bytes())?;
    }
    group.barrier()?;
    Ok(())
}

/// The `--what dist` table: measured here, then by `nproc` ranks of this same command.
pub fn report(args: &BenchArgs, nproc: usize) -> Result<String> {
    if let (Some(rv), Some(out)) = (Rendezvous::from_env()?, args.dist_out.as_deref()) {
        as_rank(args, &rv, out)?;
        return Ok(String::new());
    }
    if nproc < 2 {
        return Err(Error::Input(format!(
            "--what dist compares ranks with one process: --nproc-per-node {nproc} must be 2 or more"
        )));
    }
    let threads = tch::get_num_threads() as usize;
    // One process, all threads.
    let mut m = model(args, Device::Cpu);
    let b = batch(args, Device::Cpu);
    let mut hook = Timed { inner: Ranks::SINGLE.hook(&NEVER), spent: Duration::ZERO };
    let single = median(&per_iteration(args, &mut m, &b, &mut hook)?);
    let floats = m.g.weights.num_parameters() + m.d.weights.num_parameters();
    drop(m);
    // A memory copy of the all-reduce's buffer, the same size.
    let src = Tensor::rand([floats], (Kind::Float, Device::Cpu));
    let mut dst = src.zeros_like();
    let copy_ms = median(&time(1, 5, 1, Device::Cpu, || {
        dst.copy_(&src);
    }));
    // The ranks.
    let out = std::env::temp_dir().join(format!("stargan-bench-dist-{}.json", std::process::id()));
    let exe = std::env::current_exe().map_err(|e| Error::Internal(e.to_string()))?;
    let mut rank_args: Vec<std::ffi::OsString> = Vec::new();
    let mut skip = false;
    for a in std::env::args_os().skip(1) {
        match a.to_str() {
            _ if skip => skip = false,
            Some("--threads") => skip = true,
            Some(t) if t.starts_with("--threads=") => {}
            _ => rank_args.push(a),
        }
    }
    rank_args.extend(["--dist-out".into(), out.clone().into_os_string()]);
    rank_args.extend(["--threads".into(), (threads / nproc).max(1).to_string().into()]);
    let signals = AtomicUsize::new(0);
    launch::run_local(nproc, &exe, &rank_args, Duration::from_secs(120), &signals)?;
    let text = std::fs::read_to_string(&out).map_err(|source| Error::Read { path: out.clone(), source })?;
    let _ = std::fs::remove_file(&out);
    let r: RankTimes = serde_json::from_str(&text).map_err(|e| Error::Internal(e.to_string()))?;

    let mb = floats as f64 * 4.0 / 1e6;
    let algbw = mb / r.flat_allreduce_ms; // MB/ms = GB/s
    let busbw = algbw * 2.0 * (r.world as f64 - 1.0) / r.world as f64;
    let mut s = String::new();
    s += &format!(
        "data parallel (Gloo, 127.0.0.1), global batch {}, n_critic {}:\n",
        args.batch_size, args.n_critic
    );
    s += &format!("  1 process x {threads} threads:          {single:9.1} ms per iteration\n");
    s += &format!(
        "  {} ranks x {} thread(s), batch {} each: {:9.1} ms per iteration ({:.2}x), of which all-reduce {:.1} ms ({:.0}%)\n",
        r.world,
        r.threads,
        r.batch,
        r.iteration_ms,
        single / r.iteration_ms,
        r.allreduce_in_iteration_ms,
        100.0 * r.allreduce_in_iteration_ms / r.iteration_ms
    );
    s += &format!(
        "  all-reduce of G+D's {:.2}M floats ({mb:.1} MB): {:.2} ms = {algbw:.2} GB/s algorithm, {busbw:.2} GB/s bus; \
         a memory copy of it: {copy_ms:.2} ms = {:.2} GB/s\n",
        floats as f64 / 1e6,
        r.flat_allreduce_ms,
        mb / copy_ms
    );
    Ok(s)
}
