//! Mutated checkpoints (both `torch.save` containers and safetensors), fed to `info` and
//! `translate` under a memory limit: every run ends with exit 0 or one error line (exit 1), never
//! a panic, an abort, a signal or memory over the limit. Seeded and bounded: the same 72 runs
//! every time.

mod common;

use stargan::rng::{Purpose, Stream};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Virtual memory per run, in KiB (`ulimit -v`): libtorch's start-up and a reference-sized G fit
/// well inside; an allocation driven by a crafted size does not.
const MEMORY_KIB: u64 = 4 << 20;
/// Mutations per seed file.
const CASES: u64 = 12;

fn mutate(bytes: &[u8], case: u64) -> Vec<u8> {
    let mut rng = Stream::new(2026, Purpose::Replacement, &[case]);
    let mut b = bytes.to_vec();
    let at = |rng: &mut Stream, len: usize| rng.below(len.max(1) as u64) as usize;
    match case % 6 {
        // A few random bytes changed.
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = at(&mut rng, b.len());
                b[i] = rng.next_u64() as u8;
            }
        }
        // Cut short.
        1 => b.truncate(at(&mut rng, b.len())),
        // A run of 0xFF: lengths, counts and sizes become enormous.
        2 => {
            let i = at(&mut rng, b.len().saturating_sub(8));
            b[i..i + 8].fill(0xFF);
        }
        // A large little-endian number somewhere.
        3 => {
            let i = at(&mut rng, b.len().saturating_sub(8));
            let v = 1u64 << (20 + rng.below(40));
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        // A chunk copied over another place.
        4 => {
            let n = 1 + at(&mut rng, 256);
            let (from, to) =
                (at(&mut rng, b.len().saturating_sub(n)), at(&mut rng, b.len().saturating_sub(n)));
            let chunk = b[from..from + n].to_vec();
            b[to..to + n].copy_from_slice(&chunk);
        }
        // Random bytes inserted.
        _ => {
            let i = at(&mut rng, b.len());
            let junk: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next_u64() as u8).collect();
            b.splice(i..i, junk);
        }
    }
    b
}

fn run_limited(args: &[&str]) -> std::process::Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "ulimit -v {MEMORY_KIB}; exec timeout 60 '{}' {}",
        env!("CARGO_BIN_EXE_stargan"),
        quoted.join(" ")
    );
    Command::new("bash").args(["-c", &script]).env("STARGAN_LOG", "warn").output().expect("run stargan")
}

fn check(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(1) => {
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(
                lines.len() == 1 && lines[0].starts_with("error: "),
                "{what}: not one error line: {stderr}"
            );
        }
        other => panic!("{what}: exit {other:?} (a panic, an abort, a signal or the time limit): {stderr}"),
    }
    for bad in ["panicked", "terminate called", "Aborted", "memory allocation"] {
        assert!(!stderr.contains(bad), "{what}: {stderr}");
    }
}

fn seeds(dir: &Path) -> Vec<PathBuf> {
    let parity = common::parity_root().join("celeba");
    let st = dir.join("seed-G.safetensors");
    let file = stargan::checkpoint::read_tensors(&parity.join("0-G.ckpt")).unwrap();
    let mut named: Vec<(String, tch::Tensor)> =
        file.tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    stargan::checkpoint::write_safetensors(&st, &named, None).unwrap();
    vec![parity.join("0-G.ckpt"), parity.join("0-G.legacy.ckpt"), st]
}

#[test]
fn mutated_checkpoints_never_crash_info_or_translate() {
    let dir = common::scratch("fuzz", "ckpt");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate/square32.png");
    let mut refused = 0;
    for (k, seed) in seeds(&dir).iter().enumerate() {
        let bytes = std::fs::read(seed).unwrap();
        for case in 0..CASES {
            let path = dir.join(format!("{k}-{case}-G.ckpt"));
            std::fs::write(&path, mutate(&bytes, case + 100 * k as u64)).unwrap();
            let p = path.to_str().unwrap();
            let info = run_limited(&["info", "--checkpoint", p]);
            check(&info, &format!("info {}", path.display()));
            refused += usize::from(!info.status.success());
            let out = dir.join(format!("{k}-{case}.png"));
            let args = ["translate", "--checkpoint", p, "--input", input.to_str().unwrap()];
            let tr = run_limited(
                &[&args[..], &["--output", out.to_str().unwrap(), "--target", "0,1,0,0,0"]].concat(),
            );
            check(&tr, &format!("translate {}", path.display()));
            assert_eq!(tr.status.success(), out.is_file(), "an output exactly when translate succeeds");
        }
    }
    // The mutations do reach the readers' error paths (a fuzzer that changes nothing proves nothing).
    assert!(refused >= (CASES as usize), "only {refused} of {} mutated files were refused", 3 * CASES);
}
