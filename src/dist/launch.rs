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

/// Rank 0's store address: `MASTER_PORT` when set (rank 0 binds it), else a port bound here and
/// kept, whose listening socket rank 0 inherits, so no other program can take the port between
/// choosing it and using it.
fn store_socket() -> Result<(u16, Option<std::net::TcpListener>), DistError> {
    if let Some(p) = std::env::var("MASTER_PORT").ok().and_then(|p| p.parse().ok()) {
        return Ok((p, None));
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| DistError(format!("cannot listen on a free port of 127.0.0.1: {e}")))?;
    Ok((l.local_addr().map_err(|e| DistError(e.to_string()))?.port(), Some(l)))
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
    let (port, listener) = store_socket()?;
    let store_fd = listener.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
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
        let inherit = if rank == 0 { store_fd } else { None };
        let launcher = std::process::id();
        if let Some(fd) = inherit {
            cmd.env("STARGAN_STORE_FD", fd.to_string());
        }
        // In the child, between fork and exec: only async-signal-safe calls. A rank outlives no
        // launcher (killed, or out of memory): it gets SIGTERM, and the ranks stop together.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != launcher {
                    // The launcher died before the line above took effect.
                    return Err(std::io::Error::other("the launcher is gone"));
                }
                if let Some(fd) = inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
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
    drop(listener);
    match first_failure {
        Some(what) => Err(DistError(what)),
        None => Ok(()),
    }
}
