//! `--nproc-per-node N` on one machine: start N copies of a command with torchrun's environment
//! (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and watch them, so a
//! single machine needs neither torchrun nor SLURM.
//!
//! The ranks run in their own process group: a Ctrl-C at the terminal reaches the launcher only,
//! which passes exactly one SIGTERM per signal to every rank (the ranks agree on the iteration to
//! stop at, and rank 0 saves once; a second signal makes them quit at once). When a rank fails, the
//! others end on their own (their next collective fails, or times out); any still running after
//! `timeout` and a grace period are killed, so the launcher always returns.

use super::DistError;
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How a rank ended, in words.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(9)) => "was killed (SIGKILL)".into(),
        (None, Some(s)) => format!("was killed by signal {s}"),
        (None, None) => "ended".into(),
    }
}

/// A free port on the loopback for rank 0's store (`MASTER_PORT` wins when set). Another program
/// could take it before rank 0 binds it; rank 0 then says the port is in use.
fn pick_port() -> Result<u16, DistError> {
    if let Some(p) = std::env::var("MASTER_PORT").ok().and_then(|p| p.parse().ok()) {
        return Ok(p);
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| DistError(format!("cannot find a free port on 127.0.0.1: {e}")))?;
    Ok(l.local_addr().map_err(|e| DistError(e.to_string()))?.port())
}

fn signal(child: &Child, sig: i32) {
    // The pid is our own child, not yet reaped (we only signal running ones).
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Run `exe args` as `nproc` ranks on this machine and wait for all of them. `signals` counts the
/// launcher's own SIGINT/SIGTERMs (its caller's handler increments it); each is passed on.
pub fn run_local(
    nproc: usize,
    exe: &Path,
    args: &[OsString],
    timeout: Duration,
    signals: &AtomicUsize,
) -> Result<(), DistError> {
    if nproc == 0 {
        return Err(DistError("a local launch needs at least one rank".into()));
    }
    let port = pick_port()?;
    let mut children: Vec<Child> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("GROUP_RANK", "0")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .stdin(Stdio::null())
            .process_group(0);
        if rank > 0 {
            // Only rank 0 prints progress and results; every rank's errors reach stderr.
            cmd.stdout(Stdio::null());
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(DistError(format!("cannot start rank {rank} ({}): {e}", exe.display())));
            }
        }
    }
    let mut status: Vec<Option<ExitStatus>> = vec![None; nproc];
    let mut first_failure: Option<String> = None;
    let mut deadline: Option<Instant> = None;
    let mut forwarded = 0;
    loop {
        let received = signals.load(Ordering::SeqCst);
        while forwarded < received {
            for (c, s) in children.iter().zip(&status) {
                if s.is_none() {
                    signal(c, libc::SIGTERM);
                }
            }
            forwarded += 1;
        }
        for (rank, c) in children.iter_mut().enumerate() {
            if status[rank].is_some() {
                continue;
            }
            if let Ok(Some(st)) = c.try_wait() {
                status[rank] = Some(st);
                if !st.success() && first_failure.is_none() {
                    let what = format!("rank {rank} of {nproc} {}", describe(st));
                    eprintln!("launcher: {what}; waiting up to {}s for the other ranks", timeout.as_secs());
                    first_failure = Some(what);
                    deadline = Some(Instant::now() + timeout + Duration::from_secs(5));
                }
            }
        }
        if status.iter().all(Option::is_some) {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            for (rank, c) in children.iter_mut().enumerate() {
                if status[rank].is_none() {
                    eprintln!("launcher: rank {rank} still running after the timeout; killing it");
                    let _ = c.kill();
                    status[rank] = c.wait().ok();
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match first_failure {
        Some(what) => Err(DistError(what)),
        None => Ok(()),
    }
}
