//! Writing files so that a failure never leaves a half-written or replaced file behind.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where a write to `path` lands: `path` itself, or the file a symlink there points to (so the
/// link stays and its target is replaced). Anything that exists and is not a regular file (a
/// device such as /dev/full, a FIFO, a socket, a folder) is refused: renaming over it would replace
/// it with our file.
pub fn destination(path: &Path) -> std::io::Result<PathBuf> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(e),
        Ok(m) => m,
    };
    let (target, meta) = if meta.file_type().is_symlink() {
        match std::fs::canonicalize(path) {
            Ok(t) => {
                let m = std::fs::metadata(&t)?;
                (t, m)
            }
            // A dangling link: write where it points, if its folder exists.
            Err(_) => {
                let link = std::fs::read_link(path)?;
                let t = if link.is_absolute() {
                    link
                } else {
                    path.parent().unwrap_or(Path::new(".")).join(link)
                };
                return Ok(t);
            }
        }
    } else {
        (path.to_path_buf(), meta)
    };
    if meta.is_file() {
        Ok(target)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} exists and is not a regular file; refusing to replace it", target.display()),
        ))
    }
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename: readers see
/// the old file or the new one, never a part of either, and a failed write (a full disk) removes
/// its temporary file. See [`destination`] for what may be replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, dest) = stage(path, bytes)?;
    std::fs::rename(&tmp, &dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The first half of an atomic write: `bytes` in a temporary file beside where `path` lands
/// ([`destination`]); returns (temporary, destination) for the rename. A failed write removes its
/// temporary file.
fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<(PathBuf, PathBuf)> {
    let dest = destination(path)?;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    match write_new(&tmp, bytes) {
        Ok(()) => Ok((tmp, dest)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Write `bytes` to the temporary name `tmp`, creating it anew: anything already there (a stale
/// temporary of a process with our pid, or a link planted at the predictable name) is removed
/// first, never written through.
fn write_new(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// [`write_atomic`] with the library's error, naming the file.
pub fn write(path: &Path, bytes: &[u8]) -> crate::error::Result<()> {
    write_atomic(path, bytes)
        .map_err(|source| crate::error::Error::Write { path: path.to_path_buf(), source })
}

/// Several files that land together or not at all: each is written to a temporary name first,
/// and only when all are written are they renamed into place (a failed rename takes back the
/// temporaries; files already renamed stay, the narrowest window the filesystem allows).
pub fn write_all_or_none(files: &[(PathBuf, Vec<u8>)]) -> crate::error::Result<()> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| crate::error::Error::Write { path, source }
    };
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for (path, bytes) in files {
        match stage(path, bytes) {
            Ok(s) => staged.push(s),
            Err(e) => {
                cleanup(&staged);
                return Err(err(path)(e));
            }
        }
    }
    for (i, (tmp, dest)) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, dest) {
            cleanup(&staged[i..]);
            return Err(err(dest)(e));
        }
    }
    Ok(())
}

/// Temporary files that [`write_atomic`] left in `dir` when its process was killed mid-write
/// (`.NAME.tmpPID` whose process no longer runs); returns what was removed.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp")).map(|(_, pid)| pid) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        // Without /proc, liveness cannot be told: keep the file.
        let alive = pid == std::process::id()
            || !Path::new("/proc/self").exists()
            || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && e.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// An exclusive lock on a run's folder, held while the value lives: a second process that asks
/// for it is refused with the first one's process id.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Lock `dir` (created if missing) through the file `dir/.lock`.
    pub fn acquire(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(format!(
                    "{} is in use by another stargan process{}; wait for it or choose another folder",
                    dir.display(),
                    if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
        // Who holds it, for the message above (the lock itself is what excludes).
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(Self { _file: file })
    }
}
