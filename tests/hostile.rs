//! Hostile and careless input: crafted checkpoints, out-of-range flags, outputs that must not be
//! replaced, runs that must not mix. Each is refused with one error line (exit 1) and leaves
//! nothing written or replaced.

mod common;

use stargan::checkpoint::{native, read_tensors, write_safetensors, write_torch};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Kind, Tensor};

use common::{stargan, with};

fn scratch(name: &str) -> PathBuf {
    common::scratch("hostile", name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit 1 with one line on stderr, `error: ...` mentioning `mentions`.
fn refused(out: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(mentions), "wanted {mentions:?}: {stderr}");
}

static INPUT: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate/square32.png")
});

fn input() -> PathBuf {
    INPUT.clone()
}

fn reference_g() -> PathBuf {
    common::parity_root().join("celeba/0-G.ckpt")
}

/// A tiny training checkpoint (2 iterations) under `dir/models`.
fn trained(dir: &Path) -> PathBuf {
    let cfg = common::tiny_config(dir, 2);
    stargan::train::train(&cfg).expect("tiny training run");
    native::path_for(&cfg.output.model_save_dir, 2)
}

/// A subprocess training run under `dir`: `common::tiny_flags` with checkpoints only at the end.
fn tiny_flags(dir: &Path, iters: u32) -> Vec<String> {
    let mut flags = vec!["train".to_string()];
    flags.extend(common::tiny_flags(dir, iters));
    with(&flags, &["--sample-step", "1000", "--model-save-step", "1000"])
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn flags_outside_their_range_are_refused_by_name() {
    let dir = scratch("flags");
    let base = tiny_flags(&dir, 2);
    let cases: &[(&[&str], &str)] = &[
        (&["--g-conv-dim", "0"], "--g-conv-dim 0 is outside 1..=1024"),
        (&["--d-conv-dim", "0"], "--d-conv-dim 0"),
        (&["--g-conv-dim", "1000000"], "--g-conv-dim 1000000"),
        (&["--threads", "100000"], "--threads 100000"),
        (&["--d-repeat-num", "64"], "--d-repeat-num 64"),
        (&["--crop-size", "100000", "--dataset", "folder", "--image-dir", "/tmp"], "--crop-size 100000"),
        (&["--g-lr", "NaN"], "--g-lr NaN"),
        (&["--lambda-gp", "inf"], "--lambda-gp inf"),
        (&["--beta1", "2"], "--beta1 2"),
        (&["--c-dim", "7"], "--c-dim does not apply to --dataset synthetic"),
        // Each value in range, the network not: D of 8.6e9 weights.
        (
            &["--d-conv-dim", "1024", "--d-repeat-num", "6", "--image-size", "128"],
            "too large a discriminator",
        ),
        (&["--attr-path", "x.txt"], "--attr-path does not apply"),
        (
            &["--synthetic-rafd-faces", "0", "--synthetic-split", "rafd"],
            "--synthetic-rafd-faces 0 is outside 1..=20000",
        ),
        (
            &["--synthetic-rafd-faces", "8"],
            "--synthetic-rafd-faces does not apply to --synthetic-split celeba",
        ),
    ];
    for (extra, mentions) in cases {
        let out = stargan(&strs(&with(&base, extra)));
        refused(&out, mentions);
        assert!(!dir.join("models").exists(), "{extra:?} started a run");
    }
}

/// A `-G.ckpt` in the reference's format with the given tensors.
fn crafted(path: &Path, tensors: &[(&str, Tensor)]) {
    let named: Vec<(String, Tensor)> =
        tensors.iter().map(|(k, t)| (k.to_string(), t.shallow_clone())).collect();
    write_torch(path, &named).unwrap();
}

fn empty(shape: &[i64]) -> Tensor {
    Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu))
}

#[test]
fn crafted_architectures_are_refused_before_anything_is_allocated() {
    let dir = scratch("crafted");
    let huge = dir.join("huge-G.ckpt");
    // conv_dim 2^40 and a zero trailing dimension: the file needs no data at all.
    crafted(&huge, &[("main.0.weight", empty(&[1 << 40, 8, 7, 0]))]);
    let blocks = dir.join("blocks-G.ckpt");
    let mut t: Vec<(String, Tensor)> = vec![("main.0.weight".into(), empty(&[256, 8, 7, 7]))];
    for i in 0..40 {
        t.push((format!("main.{}.main.0.weight", 9 + i), empty(&[0])));
    }
    let named: Vec<(&str, Tensor)> = t.iter().map(|(k, v)| (k.as_str(), v.shallow_clone())).collect();
    crafted(&blocks, &named);
    // Shapes whose weight count overflows 64-bit arithmetic must not panic the count.
    // (Our torch writer refuses such a shape; safetensors stores it.)
    let overflow = dir.join("overflow-G.safetensors");
    let named = [("main.0.weight", empty(&[1 << 59, 4, 7, 0])), ("main.9.main.0.weight", empty(&[0]))]
        .map(|(k, t)| (k.to_string(), t));
    write_safetensors(&overflow, &named, None).unwrap();
    for path in [&huge, &blocks, &overflow] {
        refused(&stargan(&["info", "--checkpoint", s(path)]), "implausible generator");
        let out = dir.join("out.png");
        let args = ["translate", "--checkpoint", s(path), "--input", s(&INPUT), "--output", s(&out)];
        refused(&stargan(&[&args[..], &["--target", "0,1,0,0,0"]].concat()), s(path));
        assert!(!out.exists());
    }
    // A sibling D beside a good G: 64 `main.N` layers, or a head kernel of 0 or 2^20.
    for (name, keys) in [
        (
            "deep",
            (0..64).map(|i| (format!("main.{}.weight", 2 * i), empty(&[1, 3, 4, 4]))).collect::<Vec<_>>(),
        ),
        (
            "wide",
            vec![
                ("main.0.weight".into(), empty(&[1, 3, 4, 4])),
                ("conv2.weight".into(), empty(&[0, 1, 1 << 20, 1 << 20])),
            ],
        ),
        (
            "zero",
            vec![
                ("main.0.weight".into(), empty(&[1, 3, 4, 4])),
                ("conv2.weight".into(), empty(&[5, 1, 0, 0])),
            ],
        ),
    ] {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(reference_g(), d.join("0-G.ckpt")).unwrap();
        let mut keys = keys;
        if !keys.iter().any(|(k, _)| k == "conv2.weight") {
            keys.push(("conv2.weight".into(), empty(&[5, 1, 1, 1])));
        }
        let named: Vec<(&str, Tensor)> = keys.iter().map(|(k, v)| (k.as_str(), v.shallow_clone())).collect();
        crafted(&d.join("0-D.ckpt"), &named);
        let out = d.join("out.png");
        let g = d.join("0-G.ckpt");
        let args = ["translate", "--checkpoint", s(&g), "--input", s(&INPUT), "--output", s(&out)];
        refused(&stargan(&[&args[..], &["--set", "Blond_Hair=1"]].concat()), "0-D.ckpt");
        assert!(!out.exists());
    }
}

/// A training checkpoint rewritten with its metadata edited by `edit`, or a tensor dropped.
fn tampered(src: &Path, dst: &Path, edit: impl Fn(&mut serde_json::Value), drop: Option<&str>) {
    let file = read_tensors(src).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&file.metadata["stargan"]).unwrap();
    edit(&mut meta);
    let tensors: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != drop)
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let md = HashMap::from([("stargan".to_string(), meta.to_string())]);
    write_safetensors(dst, &tensors, Some(md)).unwrap();
}

#[test]
fn crafted_training_metadata_and_incomplete_exports_are_refused() {
    let dir = scratch("meta");
    let ckpt = trained(&dir);
    let cases: [(&str, &str, &str, i64); 4] = [
        ("neg", "g", "conv_dim", -8),
        ("big", "g", "conv_dim", 1_000_000_000_000),
        ("small", "d", "image_size", 4),
        ("negsize", "d", "image_size", -16),
    ];
    for (name, net, key, value) in cases {
        let bad = dir.join(format!("{name}.stargan.safetensors"));
        tampered(&ckpt, &bad, |m| m[net][key] = value.into(), None);
        let out = dir.join(format!("{name}.png"));
        let args = ["translate", "--checkpoint", s(&bad), "--input", s(&INPUT), "--output", s(&out)];
        refused(&stargan(&[&args[..], &["--target", "0,1,0,0,0"]].concat()), "implausible");
        let exported = dir.join(format!("export-{name}"));
        refused(&stargan(&["export", "--checkpoint", s(&bad), "--out-dir", s(&exported)]), "implausible");
        assert!(!out.exists() && !exported.exists());
    }
    // The second file cannot be written (its name links into /proc): the first is taken back.
    let exported = dir.join("export-rollback");
    std::fs::create_dir_all(&exported).unwrap();
    std::os::unix::fs::symlink("/proc/stargan-nonexistent/x", exported.join("2-D.safetensors")).unwrap();
    let out = stargan(&["export", "--checkpoint", s(&ckpt), "--out-dir", s(&exported)]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!exported.join("2-G.safetensors").exists(), "half an export was left behind");
    // Metadata and no tensors at all: nothing is allocated from the metadata's claims.
    let bare = dir.join("bare.stargan.safetensors");
    let meta = read_tensors(&ckpt).unwrap().metadata;
    write_safetensors(&bare, &[], Some(meta)).unwrap();
    let out = dir.join("bare.png");
    let args = ["translate", "--checkpoint", s(&bare), "--input", s(&INPUT), "--output", s(&out)];
    refused(&stargan(&[&args[..], &["--target", "0,1,0,0,0"]].concat()), "holds only 0 values");
    // A moving average of G cut short (one tensor of it): refused as G would be, not half-loaded.
    let cut = dir.join("cut-ema.stargan.safetensors");
    let file = read_tensors(&ckpt).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        file.tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    tensors.push(("G_ema.main.0.weight".into(), file.tensors["G.main.0.weight"].shallow_clone()));
    write_safetensors(&cut, &tensors, Some(file.metadata.clone())).unwrap();
    let out = dir.join("cut-ema.png");
    let args = ["translate", "--checkpoint", s(&cut), "--input", s(&INPUT), "--output", s(&out)];
    refused(&stargan(&[&args[..], &["--target", "0,1,0,0,0"]].concat()), "implausible moving average of G");
    assert!(!out.exists());
    // A tensor missing: the export writes neither file.
    let holed = dir.join("holed.stargan.safetensors");
    tampered(&ckpt, &holed, |_| {}, Some("D.conv1.weight"));
    let exported = dir.join("export-holed");
    let out = stargan(&["export", "--checkpoint", s(&holed), "--out-dir", s(&exported)]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!exported.exists() || std::fs::read_dir(&exported).unwrap().next().is_none());
}

#[test]
fn outputs_that_are_not_regular_files_are_never_replaced() {
    let dir = scratch("outputs");
    let g = reference_g();
    let translate = |out: &Path, extra: &[&str]| {
        let args = ["translate", "--checkpoint", s(&g), "--input", s(&INPUT), "--output", s(out)];
        stargan(&[&args[..], &["--target", "0,1,0,0,0"], extra].concat())
    };
    // A character device (as root this used to turn /dev/full into a PNG), a FIFO.
    refused(&translate(Path::new("/dev/full"), &[]), "not a regular file");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/full").unwrap().file_type().is_char_device());
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    refused(&translate(&fifo, &[]), "not a regular file");
    assert!(!std::fs::metadata(&fifo).unwrap().is_file());
    // A symlink to a regular file: the file is written, the link stays a link.
    let target = dir.join("target.png");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.join("link.png");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(translate(&link, &[]).status.success());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(image::open(&target).is_ok(), "the link's target holds the PNG");
    // The extension decides the format; an unknown one is refused.
    let jpg = dir.join("out.jpg");
    assert!(translate(&jpg, &[]).status.success());
    assert_eq!(&std::fs::read(&jpg).unwrap()[..2], &[0xFF, 0xD8], "JPEG bytes under .jpg");
    refused(&translate(&dir.join("out.gif"), &[]), "write .png or .jpg");
    // Two inputs that would land on one output name.
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::copy(input(), inputs.join("face.png")).unwrap();
    let img = image::open(input()).unwrap().to_rgb8();
    img.save(inputs.join("face.jpg")).unwrap();
    let outs = dir.join("outs");
    let args = ["translate", "--checkpoint", s(&g), "--input", s(&inputs), "--output", s(&outs)];
    refused(&stargan(&[&args[..], &["--target", "0,1,0,0,0"]].concat()), "would both be written");
    assert!(!outs.join("face.png").exists());
}

#[test]
fn non_finite_and_absurd_targets_are_refused() {
    let dir = scratch("targets");
    let out = dir.join("out.png");
    let g = reference_g();
    let base = ["translate", "--checkpoint", s(&g), "--input", s(&INPUT), "--output", s(&out)];
    for (extra, mentions) in [
        (["--target", "NaN,0,0,0,0"], "not a finite number"),
        (["--target", "0,inf,0,0,0"], "not a finite number"),
        (["--target", "0,1e30,0,0,0"], "outside [-10, 10]"),
        (["--set", "Blond_Hair=nan"], "not a finite number"),
        (["--set", "Blond_Hair=-1e9"], "outside [-10, 10]"),
    ] {
        refused(&stargan(&[&base[..], &extra[..]].concat()), mentions);
        assert!(!out.exists());
    }
}

#[test]
fn a_second_trainer_on_one_folder_is_refused_with_the_first_ones_pid() {
    let dir = scratch("lock");
    let lock = stargan::files::DirLock::acquire(&dir.join("models")).unwrap();
    let out = stargan(&strs(&tiny_flags(&dir, 2)));
    refused(&out, &format!("pid {}", std::process::id()));
    assert!(native::all(&dir.join("models")).is_empty());
    drop(lock);
    assert!(stargan(&strs(&tiny_flags(&dir, 2))).status.success(), "free again once released");
}

#[test]
fn resuming_keeps_its_promises() {
    let dir = scratch("resume");
    let models = dir.join("models");
    let flags = tiny_flags(&dir, 2);
    assert!(stargan(&strs(&flags)).status.success());
    // A write killed mid-way left a temporary file: the next run removes it.
    let stale = models.join(".9.stargan.safetensors.tmp4194303");
    std::fs::write(&stale, b"partial").unwrap();
    // Another batch size or seed would not continue the run exactly.
    for extra in [["--batch-size", "3"], ["--seed", "5"]] {
        let args = with(&tiny_flags(&dir, 4), &[&["--resume-iters", "latest"][..], &extra[..]].concat());
        refused(&stargan(&strs(&args)), "would not continue that run exactly");
    }
    // Past --num-iters.
    let one = tiny_flags(&dir, 1);
    let args = [&strs(&one)[..], &["--resume-iters", "2"]].concat();
    refused(&stargan(&args), "past --num-iters 1");
    // A corrupt newer checkpoint is skipped by `latest`, with a warning naming it.
    std::fs::write(native::path_for(&models, 3), b"not a checkpoint").unwrap();
    let four = tiny_flags(&dir, 4);
    let args = [&strs(&four)[..], &["--resume-iters", "latest"]].concat();
    let out = stargan(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping") && stderr.contains("3.stargan.safetensors"), "{stderr}");
    assert!(!stale.exists(), "the stale temporary file was removed");
    // metrics.jsonl holds each iteration once.
    let text = std::fs::read_to_string(dir.join("logs/metrics.jsonl")).unwrap();
    let its: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(its, vec![1, 2, 3, 4], "{text}");
}

#[test]
fn a_non_finite_loss_stops_the_run_without_saving() {
    let dir = scratch("nan");
    let ckpt = trained(&dir);
    // Adam's moments poisoned: the first step makes every weight NaN.
    let file = read_tensors(&ckpt).unwrap();
    let tensors: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .map(|(k, t)| {
            let t = if k.starts_with("D_opt.exp_avg.") { t.full_like(f64::NAN) } else { t.shallow_clone() };
            (k.clone(), t)
        })
        .collect();
    write_safetensors(&ckpt, &tensors, Some(file.metadata.clone())).unwrap();
    let flags = with(&tiny_flags(&dir, 6), &["--model-save-step", "1", "--resume-iters", "2"]);
    let out = stargan(&strs(&flags));
    refused(&out, "became non-finite");
    let saved = native::all(&dir.join("models"));
    assert_eq!(saved, vec![2], "no checkpoint after the loss went bad: {saved:?}");
}

#[test]
fn a_corrupt_first_image_or_newest_checkpoint_is_skipped_not_fatal() {
    let dir = scratch("skip");
    let data = dir.join("rafd");
    let out = stargan(&["synth", "--layout", "rafd", "--count", "16", "--size", "16", "--out", s(&data)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The first image in sorted order is what --dataset folder reads for its crop size.
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().path()).collect();
    classes.sort();
    let mut first: Vec<PathBuf> =
        std::fs::read_dir(&classes[0]).unwrap().map(|e| e.unwrap().path()).collect();
    first.sort();
    std::fs::write(&first[0], b"\xff\xd8 not a jpeg").unwrap();
    let flags = with(&tiny_flags(&dir, 2), &["--dataset", "folder", "--image-dir", s(&data)]);
    let out = stargan(&strs(&flags));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping an unreadable image"), "{stderr}");
    // `test` with a corrupt newest checkpoint falls back to the newest good one, naming the other.
    let models = dir.join("models");
    std::fs::write(native::path_for(&models, 7), b"not a checkpoint").unwrap();
    let mut test_flags = tiny_flags(&dir, 2);
    test_flags[0] = "test".into();
    let test = with(&test_flags, &["--dataset", "folder", "--image-dir", s(&data)]);
    let out = stargan(&strs(&test));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping") && stderr.contains("7.stargan.safetensors"), "{stderr}");
    assert!(dir.join("results/1-images.png").is_file());
}

#[test]
fn latest_with_nothing_to_resume_says_so_and_a_reference_judge_stays_out_of_its_folder() {
    let dir = scratch("latest-none");
    let flags = with(&tiny_flags(&dir, 1), &["--resume-iters", "latest"]);
    let out = stargan(&strs(&flags));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no checkpoint in") && stderr.contains("starting from iteration 0"), "{stderr}");
    // The reference checkpoint's folder (shared/parity) is read-only: the judge goes with the results.
    let results = dir.join("eval-results");
    let g = reference_g();
    let out = stargan(&[
        "eval",
        "--checkpoint",
        s(&g),
        "--dataset",
        "synthetic",
        "--image-size",
        "32",
        "--max-images",
        "4",
        "--classifier-iters",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--result-dir",
        s(&results),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let judges: Vec<_> = std::fs::read_dir(results.join("judges")).unwrap().collect();
    assert_eq!(judges.len(), 1, "one cached judge under <result-dir>/judges");
    assert!(!std::fs::read_dir(g.parent().unwrap())
        .unwrap()
        .any(|e| { e.unwrap().file_name().to_string_lossy().starts_with("classifier-") }));
}
