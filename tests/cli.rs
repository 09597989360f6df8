//! The `stargan` binary as a user runs it: translation against the reference's own output, checkpoint
//! inspection, and one clear error line (exit 1, nothing written) for each kind of bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{rgb, stargan};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate").join(name)
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("cli", name)
}

/// One line on stderr, starting with `error:`, exit status 1.
fn assert_one_error_line(out: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(mentions), "{stderr}");
}

#[test]
fn translate_matches_the_reference_within_one_level() {
    let ckpt = common::parity_root().join("celeba/0-G.ckpt");
    let dir = scratch("translate");
    // A 32×32 input is used as it is; a 40×52 one goes through centre crop + PIL-style resize.
    for (name, target) in [("square32", "0,1,0,0,0"), ("portrait40x52", "1,0,0,1,0.5")] {
        let out = dir.join(format!("{name}.png"));
        let input = fixture(&format!("{name}.png"));
        let args = ["translate", "--checkpoint", ckpt.to_str().unwrap(), "--input", input.to_str().unwrap()];
        let res = stargan(
            &[&args[..], &["--target", target, "--output", out.to_str().unwrap(), "--device", "cpu"]]
                .concat(),
        );
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        let (ours, theirs) = (rgb(&out), rgb(&fixture(&format!("{name}.expected.png"))));
        assert_eq!(ours.dimensions(), theirs.dimensions());
        let worst = ours.as_raw().iter().zip(theirs.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 1, "{name}: differs from the reference by {worst} levels");
    }
}

/// bf16 inference writes the same image to within a few levels (bf16 keeps 8 significant bits).
/// `stargan translate` of the 32×32 fixture to Blond_Hair with the reference's celeba G, writing
/// `out`, with `extra` flags.
fn translate_square32(out: &Path, extra: &[&str]) -> Output {
    let ckpt = common::parity_root().join("celeba/0-G.ckpt");
    let input = fixture("square32.png");
    let args = [
        "translate",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--target",
        "0,1,0,0,0",
        "--output",
        out.to_str().unwrap(),
    ];
    stargan(&[&args[..], extra].concat())
}

#[test]
fn translate_in_bf16_is_close_to_fp32() {
    let dir = scratch("translate-bf16");
    let mut images = Vec::new();
    for precision in ["fp32", "bf16"] {
        let out = dir.join(format!("{precision}.png"));
        let res = translate_square32(&out, &["--device", "cpu", "--precision", precision]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        images.push(rgb(&out));
    }
    let diffs: Vec<u8> =
        images[0].as_raw().iter().zip(images[1].as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
    let worst = *diffs.iter().max().unwrap();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    println!("bf16 vs fp32 translation: max {worst} levels, mean {mean:.3}");
    assert!(worst <= 8 && mean < 1.5, "bf16 differs from fp32 by up to {worst} levels (mean {mean:.2})");
    assert!(worst > 0, "bf16 output equals fp32 bit for bit: autocast did not run");
}

#[test]
fn cuda_without_a_gpu_is_one_clear_error() {
    if tch::Cuda::is_available() {
        return; // a machine with a GPU has nothing to refuse
    }
    let out = scratch("no-cuda").join("out.png");
    assert_one_error_line(&translate_square32(&out, &["--device", "cuda"]), "no CUDA device");
    assert!(!out.exists());
}

#[test]
fn translate_a_folder_by_attribute_name() {
    let ckpt = common::parity_root().join("celeba/0-G.ckpt");
    let dir = scratch("folder");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for name in ["square32.png", "portrait40x52.png"] {
        std::fs::copy(fixture(name), input.join(name)).unwrap();
    }
    let out = dir.join("out");
    let res = stargan(&[
        "translate",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--set",
        "Blond_Hair=1",
        "--set",
        "Young=0",
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    for name in ["square32.png", "portrait40x52.png"] {
        assert_eq!(rgb(&out.join(name)).dimensions(), (32, 32));
    }
}

#[test]
fn bad_translate_inputs_fail_with_one_line_and_no_output() {
    let ckpt = common::parity_root().join("celeba/0-G.ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let dir = scratch("bad");
    let out = dir.join("out.png");
    let good = fixture("square32.png");
    let corrupt = dir.join("corrupt.png");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--input", "/nonexistent/face.png", "--target", "0,1,0,0,0"], "does not exist"),
        (vec!["--input", corrupt.to_str().unwrap(), "--target", "0,1,0,0,0"], "corrupt.png"),
        (vec!["--input", good.to_str().unwrap(), "--target", "0,1,0"], "takes 5"),
        (vec!["--input", good.to_str().unwrap(), "--set", "Purple_Hair=1"], "Purple_Hair"),
        (vec!["--input", good.to_str().unwrap(), "--target", "0,x,0,0,0"], "not a number"),
    ];
    for (extra, mentions) in cases {
        let res = stargan(&[&["translate", "--checkpoint", ckpt, "--output", o][..], &extra[..]].concat());
        assert_one_error_line(&res, mentions);
        assert!(!out.exists(), "an output was written for {extra:?}");
    }
    let res = stargan(&[
        "translate",
        "--checkpoint",
        "/nonexistent.ckpt",
        "--input",
        good.to_str().unwrap(),
        "--target",
        "0,1,0,0,0",
        "--output",
        o,
    ]);
    assert_one_error_line(&res, "nonexistent.ckpt");
    let res = stargan(&[
        "translate",
        "--checkpoint",
        good.to_str().unwrap(),
        "--input",
        good.to_str().unwrap(),
        "--target",
        "0,1,0,0,0",
        "--output",
        o,
    ]);
    assert_one_error_line(&res, "not a checkpoint");
}

#[test]
fn info_reports_the_inferred_architecture_and_counts() {
    let root = common::parity_root();
    let g = stargan(&["info", "--checkpoint", root.join("celeba/0-G.ckpt").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&g.stdout);
    assert!(g.status.success());
    assert!(text.contains("zip container") && text.contains("conv_dim 8 c_dim 5 repeat_num 2"), "{text}");
    let legacy = stargan(&["info", "--checkpoint", root.join("celeba/0-G.legacy.ckpt").to_str().unwrap()]);
    let ltext = String::from_utf8_lossy(&legacy.stdout);
    assert!(ltext.contains("legacy container"), "{ltext}");
    // The same weights, so the same count, whatever the container.
    let count = |t: &str| t.lines().find(|l| l.contains("parameters")).unwrap().to_string();
    assert_eq!(count(&text).split(" - ").last(), count(&ltext).split(" - ").last());
    let d = stargan(&["info", "--checkpoint", root.join("both/0-D.ckpt").to_str().unwrap()]);
    let dtext = String::from_utf8_lossy(&d.stdout);
    assert!(dtext.contains("image_size 32 conv_dim 8 c_dim 13 repeat_num 5"), "{dtext}");
}
