//! Data-parallel training's transport: torch.distributed's c10d process groups (Gloo for CPU
//! tensors, NCCL for CUDA ones when libtorch has CUDA), reached through `csrc/c10d.cpp`.
//!
//! This module knows nothing of training: it joins a group ([`Rendezvous`], [`ProcessGroup`]),
//! moves tensors (mean, broadcast, barrier) and launches local ranks ([`launch`]). Every failure
//! of a collective, a dead peer included, is a [`DistError`] line, never an abort, and is bounded
//! by the group's timeout.

pub mod env;
pub mod launch;

pub use env::{Rendezvous, Source};

use std::ffi::{c_char, c_void, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DistError(pub String);

/// Which c10d backend moves the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// NCCL for CUDA devices, Gloo for the CPU.
    #[default]
    Auto,
    Gloo,
    Nccl,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "gloo" => Ok(Self::Gloo),
            "nccl" => Ok(Self::Nccl),
            _ => Err(format!("unknown backend `{s}` (auto, gloo or nccl)")),
        }
    }
}

impl BackendChoice {
    /// The backend's c10d name for tensors on `device`; NCCL on the CPU is refused here, before
    /// anything connects.
    pub fn resolve(self, device: tch::Device) -> Result<&'static str, DistError> {
        match (self, device.is_cuda()) {
            (Self::Gloo, _) | (Self::Auto, false) => Ok("gloo"),
            // Gloo moves CUDA tensors through the host: slower, but it works.
            (Self::Auto, true) if !NCCL => Ok("gloo"),
            (Self::Nccl, true) if !NCCL => Err(DistError(
                "this build has no NCCL (built without NCCL's headers: scripts/setup.sh --cuda unpacks them); use gloo"
                    .into(),
            )),
            (Self::Nccl, false) => Err(DistError(
                "backend nccl moves CUDA tensors only; this run is on the CPU (use gloo)".into(),
            )),
            (Self::Nccl | Self::Auto, true) => Ok("nccl"),
        }
    }
}

/// Whether csrc/c10d.cpp was compiled with ProcessGroupNCCL (a CUDA libtorch and NCCL's headers).
pub const NCCL: bool = cfg!(stargan_nccl);

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn stargan_pg_new(
        backend: *const c_char,
        master: *const c_char,
        port: i32,
        host_store: bool,
        listen_fd: i32,
        prefix: *const c_char,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        err: *mut c_char,
        errlen: usize,
    ) -> *mut c_void;
    fn stargan_pg_allreduce_mean(group: *mut c_void, t: *mut c_void, err: *mut c_char, errlen: usize)
        -> bool;
    fn stargan_pg_broadcast(
        group: *mut c_void,
        t: *mut c_void,
        root: i32,
        err: *mut c_char,
        errlen: usize,
    ) -> bool;
    fn stargan_pg_barrier(group: *mut c_void, err: *mut c_char, errlen: usize) -> bool;
    fn stargan_pg_free(group: *mut c_void, clean: bool);
}

const ERR_LEN: usize = 1024;

fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> bool) -> Result<(), DistError> {
    let mut buf = vec![0u8; ERR_LEN];
    if f(buf.as_mut_ptr().cast(), ERR_LEN) {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Err(DistError(format!("{what}: {}", tidy(&String::from_utf8_lossy(&buf[..end])))))
}

/// Gloo's message without the build machine's source paths (`[/__w/pytorch/.../pair.cc:537] `)
/// and its closing advice, which names Python.
fn tidy(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg.trim();
    while let Some(open) = rest.find("[/") {
        let Some(close) = rest[open..].find("] ") else { break };
        out.push_str(&rest[..open]);
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    match out.find(" This is typically caused") {
        Some(cut) => out[..cut].to_string(),
        None => out,
    }
}

/// One process's membership of a c10d process group.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world: usize,
    local_rank: usize,
    backend: &'static str,
    /// Where the group's own small tensors live (NCCL moves CUDA tensors only).
    device: tch::Device,
    /// Set once a collective failed: the group is then aborted, not shut down, on drop (a clean
    /// shutdown would wait on the peer that is gone).
    failed: AtomicBool,
}

// The c10d backend is used from one thread at a time (the training loop's); moving it between
// threads is what c10d's own Python bindings do.
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessGroup({} rank {}/{})", self.backend, self.rank, self.world)
    }
}

impl ProcessGroup {
    /// Join the group: rendezvous through the TCPStore the rendezvous names, then connect every
    /// pair of ranks. Waits at most `timeout` for the others.
    pub fn join(rv: &Rendezvous, backend: &'static str, timeout: Duration) -> Result<Self, DistError> {
        let device = if backend == "nccl" { tch::Device::Cuda(rv.local_rank) } else { tch::Device::Cpu };
        let cstr = |s: &str| CString::new(s).map_err(|_| DistError(format!("`{s}` contains a NUL byte")));
        let (b, master, prefix) = (cstr(backend)?, cstr(&rv.master_addr)?, cstr(&rv.store_prefix)?);
        let mut raw = std::ptr::null_mut();
        let what = format!(
            "cannot join the {backend} process group as rank {} of {} through {}:{} ({})",
            rv.rank,
            rv.world,
            rv.master_addr,
            rv.master_port,
            rv.source.describe()
        );
        call(&what, |err, len| {
            raw = unsafe {
                stargan_pg_new(
                    b.as_ptr(),
                    master.as_ptr(),
                    rv.master_port as i32,
                    rv.hosts_store(),
                    rv.listen_fd.unwrap_or(-1),
                    prefix.as_ptr(),
                    rv.rank as i32,
                    rv.world as i32,
                    timeout.as_millis().min(i64::MAX as u128) as i64,
                    err,
                    len,
                )
            };
            !raw.is_null()
        })
        .map_err(|e| DistError(explain_join(e.0, timeout)))?;
        let raw = NonNull::new(raw).ok_or_else(|| DistError(format!("{what}: no group")))?;
        Ok(Self {
            raw,
            rank: rv.rank,
            world: rv.world,
            local_rank: rv.local_rank,
            backend,
            device,
            failed: AtomicBool::new(false),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world(&self) -> usize {
        self.world
    }
    /// The rank within its machine (the GPU it takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    pub fn backend(&self) -> &'static str {
        self.backend
    }
    /// The device of the tensors this group moves.
    pub fn device(&self) -> tch::Device {
        self.device
    }

    fn checked(&self, what: &str, f: impl FnOnce(*mut c_char, usize) -> bool) -> Result<(), DistError> {
        call(what, f).map_err(|e| {
            self.failed.store(true, Ordering::SeqCst);
            DistError(format!(
                "rank {}/{}: {} (another rank stopped, was killed or cannot be reached)",
                self.rank, self.world, e.0
            ))
        })
    }

    /// Replace every tensor by its mean over the group, in place. The tensors are flattened into
    /// one buffer per dtype, so a whole network's gradients cost one collective per dtype.
    pub fn all_reduce_mean(&self, tensors: &mut [Tensor]) -> Result<(), DistError> {
        self.per_dtype(tensors, |flat| {
            self.checked("all-reduce", |err, len| unsafe {
                stargan_pg_allreduce_mean(self.raw.as_ptr(), flat.as_mut_ptr().cast(), err, len)
            })
        })
    }

    /// Overwrite every tensor with `root`'s values, in place.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), DistError> {
        self.per_dtype(tensors, |flat| {
            self.checked("broadcast", |err, len| unsafe {
                stargan_pg_broadcast(self.raw.as_ptr(), flat.as_mut_ptr().cast(), root as i32, err, len)
            })
        })
    }

    /// The mean of one number per rank.
    pub fn mean_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        let mut t = [Tensor::from_slice(values).to_device(self.device)];
        self.all_reduce_mean(&mut t)?;
        values.copy_from_slice(
            &Vec::<f64>::try_from(&t[0].to_device(tch::Device::Cpu)).map_err(|e| DistError(e.to_string()))?,
        );
        Ok(())
    }

    /// Rank `root`'s integers, on every rank.
    pub fn broadcast_i64(&self, values: &mut [i64], root: usize) -> Result<(), DistError> {
        let mut t = [Tensor::from_slice(values).to_device(self.device)];
        self.broadcast(&mut t, root)?;
        values.copy_from_slice(
            &Vec::<i64>::try_from(&t[0].to_device(tch::Device::Cpu)).map_err(|e| DistError(e.to_string()))?,
        );
        Ok(())
    }

    pub fn barrier(&self) -> Result<(), DistError> {
        self.checked("barrier", |err, len| unsafe { stargan_pg_barrier(self.raw.as_ptr(), err, len) })
    }

    /// Flatten the defined tensors of each dtype into one contiguous buffer, run `f` on it, and copy
    /// the result back (a list of one contiguous tensor is used as it is).
    fn per_dtype(
        &self,
        tensors: &mut [Tensor],
        mut f: impl FnMut(&mut Tensor) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        if self.world == 1 {
            return Ok(());
        }
        tch::no_grad(|| {
            let mut kinds: Vec<Kind> = Vec::new();
            for t in tensors.iter().filter(|t| t.defined()) {
                if !kinds.contains(&t.kind()) {
                    kinds.push(t.kind());
                }
            }
            for kind in kinds {
                let idx: Vec<usize> = (0..tensors.len())
                    .filter(|&i| tensors[i].defined() && tensors[i].kind() == kind)
                    .collect();
                if let [i] = idx[..] {
                    if tensors[i].is_contiguous() {
                        // One contiguous tensor: in place, without the two copies.
                        let mut flat = tensors[i].view([-1]);
                        f(&mut flat)?;
                        continue;
                    }
                }
                let views: Vec<Tensor> = idx.iter().map(|&i| tensors[i].reshape([-1])).collect();
                let mut flat = Tensor::cat(&views, 0);
                f(&mut flat)?;
                let mut off = 0;
                for &i in &idx {
                    let n = tensors[i].numel() as i64;
                    let src = flat.narrow(0, off, n).view_as(&tensors[i]);
                    tensors[i].copy_(&src);
                    off += n;
                }
            }
            Ok(())
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let clean = !self.failed.load(Ordering::SeqCst) && !std::thread::panicking();
        unsafe { stargan_pg_free(self.raw.as_ptr(), clean) };
    }
}

/// The join error with what usually causes it.
fn explain_join(msg: String, timeout: Duration) -> String {
    let lower = msg.to_lowercase();
    if lower.contains("trying to connect") {
        format!(
            "{msg}: rank 0's store cannot be reached (is rank 0 started, and are MASTER_ADDR and MASTER_PORT \
             its address?)"
        )
    } else if lower.contains("address already in use") {
        format!("{msg}: the port is in use (set MASTER_PORT to a free one)")
    } else if lower.contains("timeout") || lower.contains("timed out") {
        format!(
            "{msg}: the other ranks did not all arrive within {}s (is every rank started, with the same \
             WORLD_SIZE and MASTER_ADDR:MASTER_PORT?)",
            timeout.as_secs()
        )
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gloo_messages_lose_build_paths_and_advice() {
        let m = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:10666: \
                 Connection reset by peer. This is typically caused by a remote worker hanging. GLHF!";
        assert_eq!(super::tidy(m), "Read error [127.0.0.1]:10666: Connection reset by peer.");
    }
}
