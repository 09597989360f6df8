//! End-to-end training on small generated data sets in both real layouts, exact resume, interruption,
//! and the bad inputs a user can hand the trainer.

mod common;

use common::tiny_config;
use stargan::checkpoint::{native, read_tensors};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stargan")
}

fn scratch(name: &str) -> PathBuf {
    common::scratch("train", name)
}

fn run(args: &[&str]) -> Output {
    common::stargan(args)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flags of a tiny, fast run writing under `dir`.
fn tiny(dir: &Path, iters: u32) -> Vec<String> {
    common::tiny_flags(dir, iters)
}

fn args<'a>(base: &'a [String], extra: &'a [&'a str]) -> Vec<&'a str> {
    base.iter().map(String::as_str).chain(extra.iter().copied()).collect()
}

fn synth(layout: &str, count: usize, out: &Path) {
    ok(run(&[
        "synth",
        "--layout",
        layout,
        "--count",
        &count.to_string(),
        "--size",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]));
}

#[test]
fn trains_and_tests_on_every_layout() {
    let data = scratch("layouts");
    synth("celeba", 2003, &data.join("celeba"));
    synth("rafd", 24, &data.join("rafd"));
    let celeba = [
        "--attr-path",
        &data.join("celeba/list_attr_celeba.txt").to_string_lossy(),
        "--celeba-image-dir",
        &data.join("celeba/images").to_string_lossy(),
        "--celeba-crop-size",
        "16",
    ]
    .map(String::from);
    let rafd = ["--rafd-image-dir", &data.join("rafd").to_string_lossy(), "--rafd-crop-size", "16"]
        .map(String::from);
    // Users' own multi-label data as CSV over a flat folder.
    let csv = data.join("labels.csv");
    let mut text = String::from("filename,Smiling,Glasses\n");
    for i in 1..=20 {
        text += &format!("{i:06}.jpg,{},{}\n", i % 2, (i / 2) % 2);
    }
    std::fs::write(&csv, text).unwrap();
    let folder = [
        "--image-dir",
        &data.join("celeba/images").to_string_lossy(),
        "--attr-path",
        &csv.to_string_lossy(),
        "--selected-attrs",
        "Smiling,Glasses",
    ]
    .map(String::from);
    let class_folder = ["--image-dir", &data.join("rafd").to_string_lossy()].map(String::from);

    let runs: Vec<(&str, Vec<String>, usize)> = vec![
        ("celeba", celeba.to_vec(), 1),
        ("rafd", rafd.to_vec(), 1),
        ("both", [celeba.to_vec(), rafd.to_vec()].concat(), 2),
        ("folder", folder.to_vec(), 1),
        ("folder", class_folder.to_vec(), 1),
    ];
    for (i, (dataset, flags, n_datasets)) in runs.into_iter().enumerate() {
        let dir = data.join(format!("run{i}"));
        let base = tiny(&dir, 2);
        let ds = ["--dataset", dataset];
        let all: Vec<&str> = args(&base, &ds).into_iter().chain(flags.iter().map(String::as_str)).collect();
        let stdout = ok(run(&[&["train"][..], &all].concat()));
        assert!(stdout.contains("Iteration [2/2]") && stdout.contains("G/loss_rec"), "{dataset}: {stdout}");
        assert_eq!(
            stdout.matches("Iteration [2/2]").count(),
            n_datasets,
            "{dataset}: one log line per dataset"
        );
        assert!(dir.join("models/2.stargan.safetensors").is_file());
        assert!(dir.join("models/config.toml").is_file());
        assert!(dir.join("samples/2-images.png").is_file());
        // stargan test: reference grids plus one file per (input, target).
        let test_flags: Vec<&str> = all.iter().copied().filter(|a| *a != "train").collect();
        let out = ok(run(&[&["test"][..], &test_flags].concat()));
        assert!(out.contains("translated"), "{out}");
        assert!(dir.join("results/1-images.png").is_file(), "{dataset}: no result grid");
        let per_image = std::fs::read_dir(dir.join("results/images")).unwrap().count();
        assert!(per_image > 0, "{dataset}: no per-target images");
    }
}

#[test]
fn bf16_training_keeps_fp32_state_and_tests_in_bf16() {
    let dir = scratch("bf16");
    let base = tiny(&dir, 2);
    let stdout = ok(run(&[&["train"][..], &args(&base, &["--precision", "bf16"])].concat()));
    assert!(stdout.contains("Iteration [2/2]"), "{stdout}");
    let config = std::fs::read_to_string(dir.join("models/config.toml")).unwrap();
    assert!(config.contains("precision = \"bf16\""), "{config}");
    let ck = native::load(&native::path_for(&dir.join("models"), 2)).unwrap();
    assert_eq!(ck.meta.config.optim.precision, stargan::precision::Precision::Bf16);
    let file = read_tensors(&native::path_for(&dir.join("models"), 2)).unwrap();
    for (name, t) in &file.tensors {
        if t.kind() == tch::Kind::Int64 {
            continue; // num_batches_tracked, Adam's step
        }
        assert_eq!(t.kind(), tch::Kind::Float, "{name}: weights and Adam moments stay fp32");
        assert!(t.isfinite().all().int64_value(&[]) == 1, "{name} is not finite");
    }
    // `stargan test` translates in the training run's precision.
    let flags = args(&base, &["--precision", "bf16"]);
    ok(run(&[&["test"][..], &flags].concat()));
    assert!(dir.join("results/1-images.png").is_file());
}

/// Trains `config(dir, 2k)` straight through in `<name>-straight`, and `config(dir, k)` then a
/// resume to 2k in `<name>-split`; asserts the two final checkpoints are equal tensor for tensor
/// and returns them (straight, split) with the straight run's folder.
fn straight_and_resumed(
    name: &str,
    k: u64,
    config: impl Fn(&Path, u64) -> stargan::config::TrainConfig,
) -> (PathBuf, PathBuf, PathBuf) {
    tch::set_num_threads(1);
    let straight = scratch(&format!("{name}-straight"));
    stargan::train::train(&config(&straight, 2 * k)).unwrap();
    let split = scratch(&format!("{name}-split"));
    stargan::train::train(&config(&split, k)).unwrap();
    // The second half: a new configuration object, as a new process would have.
    let mut resumed = config(&split, 2 * k);
    resumed.optim.resume_iters = Some("latest".into());
    stargan::train::train(&resumed).unwrap();
    let (pa, pb) =
        (native::path_for(&straight.join("models"), 2 * k), native::path_for(&split.join("models"), 2 * k));
    let (a, b) = (read_tensors(&pa).unwrap(), read_tensors(&pb).unwrap());
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, ta) in &a.tensors {
        assert!(ta.equal(&b.tensors[name]), "{name} differs after resume");
    }
    (pa, pb, straight)
}

#[test]
fn resuming_is_bit_identical_to_training_straight_through() {
    // A constant learning rate: the decay schedule depends on --num-iters, which differs between
    // the legs here (the schedule itself is a pure function of the iteration, tested in `config`).
    let (a, b, _) = straight_and_resumed("resume", 3, |dir, iters| {
        let mut cfg = tiny_config(dir, iters);
        cfg.optim.num_iters_decay = 0;
        cfg
    });
    // The learning rate decayed identically too.
    assert_eq!(native::load(&a).unwrap().meta.g_lr, native::load(&b).unwrap().meta.g_lr);
}

#[test]
fn logs_are_readable_by_tensorboard_and_as_json_lines() {
    let dir = scratch("logs");
    let mut cfg = tiny_config(&dir, 2);
    (cfg.output.log_step, cfg.output.sample_step) = (1, 2);
    stargan::train::train(&cfg).unwrap();
    let events: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .collect();
    assert_eq!(events.len(), 1);
    let parsed = stargan::tensorboard::read_events(&events[0]).unwrap();
    let steps: Vec<i64> = parsed.iter().filter(|e| e.scalar("D/loss_gp").is_some()).map(|e| e.step).collect();
    assert_eq!(steps, vec![1, 2]);
    assert!(parsed.iter().any(|e| e.scalar("G/loss_rec").is_some()), "G losses at G steps");
    assert!(parsed.iter().any(|e| e.images().next().is_some()), "a sample image");
    let metrics = std::fs::read_to_string(dir.join("logs/metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["D/loss_real"].as_f64().is_some_and(f64::is_finite)));
}

#[test]
fn sigterm_saves_a_checkpoint_and_the_run_resumes() {
    let dir = scratch("sigterm");
    let base = tiny(&dir, 100_000);
    let mut child = Command::new(bin())
        .arg("train")
        .args(&base)
        .env("STARGAN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.find_map(|l| l.ok().filter(|l| l.contains("Iteration [3/"))).expect("training logged");
    assert!(first.contains("D/loss_real"));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let summary = rest.iter().find(|l| l.starts_with("stopped at iteration")).expect("a stop message");
    let it: u64 = summary.split_whitespace().nth(3).unwrap().trim_end_matches(';').parse().unwrap();
    assert!(native::path_for(&dir.join("models"), it).is_file());
    let more = tiny(&dir, it as u32 + 1);
    let out = ok(run(&args(&more, &["--resume-iters", "latest"])
        .iter()
        .rev()
        .chain(["train"].iter())
        .rev()
        .copied()
        .collect::<Vec<_>>()));
    assert!(out.contains(&format!("Iteration [{}/{}]", it + 1, it + 1)), "{out}");
}

/// Every image under the class folders of `root`, sorted.
fn images_of(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    files
}

fn assert_error(out: Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(mentions),
        "expected an error mentioning {mentions:?}, got: {stderr}"
    );
}

#[test]
fn bad_data_is_reported_clearly() {
    let data = scratch("bad");
    synth("rafd", 16, &data.join("rafd"));
    let base = tiny(&data.join("run"), 2);
    let train = |extra: &[&str]| run(&[&["train"][..], &args(&base, extra)].concat());
    assert_error(train(&["--dataset", "rafd", "--rafd-image-dir", "/nonexistent/rafd"]), "/nonexistent/rafd");
    assert_error(
        train(&["--dataset", "celeba", "--attr-path", "/nonexistent/list.txt"]),
        "/nonexistent/list.txt",
    );
    let rafd = data.join("rafd").to_string_lossy().into_owned();
    // `tiny` passes --batch-size 4; ask for more than the 16 images instead.
    let mut big = base.clone();
    let at = big.iter().position(|a| a == "--batch-size").unwrap();
    big[at + 1] = "64".into();
    let out =
        run(&[&["train", "--dataset", "rafd", "--rafd-image-dir", &rafd][..], &args(&big, &[])].concat());
    assert_error(out, "--batch-size 64");
    let empty = data.join("empty/class_a");
    std::fs::create_dir_all(&empty).unwrap();
    assert_error(
        train(&["--dataset", "rafd", "--rafd-image-dir", &data.join("empty").to_string_lossy()]),
        "empty",
    );
    // Attribute rows whose images are missing: an error with the count, or skipped on request.
    let csv = data.join("labels.csv");
    let mut text = String::from("filename,Smiling\n");
    for i in 0..12 {
        text += &format!("img{i}.jpg,{}\n", i % 2);
    }
    std::fs::write(&csv, text).unwrap();
    let flat = data.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    // img0 … img7 exist, img8 … img11 do not.
    for (i, src) in images_of(&data.join("rafd")).into_iter().take(8).enumerate() {
        std::fs::copy(src, flat.join(format!("img{i}.jpg"))).unwrap();
    }
    let folder = [
        "--dataset",
        "folder",
        "--image-dir",
        &flat.to_string_lossy(),
        "--attr-path",
        &csv.to_string_lossy(),
        "--selected-attrs",
        "Smiling",
    ]
    .map(String::from);
    let folder: Vec<&str> = folder.iter().map(String::as_str).collect();
    let out = train(&folder);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("images listed are missing") && stderr.contains("--skip-missing"), "{stderr}");
    assert!(["img8", "img9", "img10", "img11"].iter().any(|m| stderr.contains(m)), "{stderr}");
    ok(train(&[&folder[..], &["--skip-missing"]].concat()));
}

#[test]
fn a_corrupt_image_is_skipped_counted_and_training_goes_on() {
    let data = scratch("corrupt");
    synth("rafd", 12, &data.join("rafd"));
    let victim = images_of(&data.join("rafd")).remove(0);
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    let base = tiny(&data.join("run"), 6);
    let rafd = data.join("rafd").to_string_lossy().into_owned();
    let out = run(&[
        &["train"][..],
        &args(&base, &["--dataset", "rafd", "--rafd-image-dir", &rafd, "--rafd-crop-size", "16"]),
    ]
    .concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("skipping an unreadable image").count(),
        1,
        "warn once: {stderr} {}",
        victim.display()
    );
    let metrics = std::fs::read_to_string(data.join("run/logs/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(last["skipped_images"].as_u64().unwrap() >= 1, "{last}");
}

#[test]
fn a_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint() {
    let dir = scratch("full");
    let base = tiny(&dir, 2);
    ok(run(&[&["train"][..], &args(&base, &[])].concat()));
    let previous = native::path_for(&dir.join("models"), 2);
    let before = std::fs::read(&previous).unwrap();
    // A file-size limit makes the next checkpoint write fail as a full disk would (EFBIG);
    // SIGXFSZ is ignored so the write returns an error instead of killing the process.
    let more = tiny(&dir, 4);
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 200; exec \"{}\" train {} --resume-iters latest",
        bin(),
        more.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
    );
    let out = Command::new("sh").args(["-c", &cmd]).env("STARGAN_LOG", "warn").output().unwrap();
    assert_error(out, "cannot write");
    assert_eq!(std::fs::read(&previous).unwrap(), before, "the previous checkpoint changed");
    assert!(!native::path_for(&dir.join("models"), 4).exists(), "a partial checkpoint was left");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("models"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The recipes beyond the reference's (non-saturating loss, R1, lazy regularisation, a moving
/// average of G) train, resume bit for bit (the average and the lazy schedule included), and the
/// average is what translation uses.
#[test]
fn later_recipes_train_resume_exactly_and_translate_with_the_average() {
    use stargan::config::{AdvLoss, PenaltyKind};
    let (path, _, straight) = straight_and_resumed("recipe", 3, |dir, iters| {
        let mut cfg = tiny_config(dir, iters);
        cfg.optim.num_iters_decay = 0;
        cfg.optim.adv_loss = AdvLoss::Ns;
        cfg.optim.penalty = PenaltyKind::R1;
        cfg.optim.reg_every = 2;
        cfg.optim.ema_beta = 0.9;
        cfg.optim.n_critic = 1;
        cfg.output.log_step = 1;
        cfg
    });
    let a = read_tensors(&path).unwrap();
    // The average is saved, lags G, and is the generator inference loads.
    let avg = a.tensors.get("G_ema.main.0.weight").expect("the checkpoint keeps G's moving average");
    let g = &a.tensors["G.main.0.weight"];
    assert!(!avg.equal(g), "after 6 G steps with beta 0.9 the average differs from G");
    let model = stargan::inference::load(&path, None, tch::Device::Cpu).unwrap();
    assert!(model.g.weights.get("main.0.weight").unwrap().equal(avg));
    // A run's log names its penalty.
    let metrics = std::fs::read_to_string(straight.join("logs/metrics.jsonl")).unwrap();
    assert!(metrics.contains("D/loss_r1") && !metrics.contains("D/loss_gp"), "{metrics}");
}

/// The built-in data's default G has the attention mask: it trains (its sparsity logged), saves
/// `G.mask.weight`, and the checkpoint translates through the CLI as an attention generator.
/// `--attention-mask false` trains the reference's G, and `--lambda-mask` is then refused.
#[test]
fn attention_mask_trains_saves_its_mask_and_translates() {
    let dir = scratch("attention");
    let base = tiny(&dir, 2);
    ok(run(&[&["train"][..], &args(&base, &["--lambda-mask", "0.5"])].concat()));
    let path = native::path_for(&dir.join("models"), 2);
    let t = read_tensors(&path).unwrap();
    assert_eq!(t.tensors["G.mask.weight"].size()[0], 1, "the mask is one channel");
    let model = stargan::inference::load(&path, None, tch::Device::Cpu).unwrap();
    assert!(model.g.config.attention);
    let metrics = std::fs::read_to_string(dir.join("logs/metrics.jsonl")).unwrap();
    let mask: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("G/loss_mask")?.as_f64())
        .collect();
    assert!(!mask.is_empty() && mask.iter().all(|m| (0.0..=1.0).contains(m)), "{metrics}");

    let input = dir.join("face.png");
    image::RgbImage::from_pixel(16, 16, image::Rgb([90, 120, 150])).save(&input).unwrap();
    let out = dir.join("face.out.png");
    let (p, i, o) = (path.to_str().unwrap(), input.to_str().unwrap(), out.to_str().unwrap());
    ok(run(&[
        "translate",
        "--checkpoint",
        p,
        "--input",
        i,
        "--output",
        o,
        "--set",
        "Blond_Hair=1",
        "--align",
        "off",
    ]));
    assert_eq!(image::open(&out).unwrap().into_rgb8().dimensions(), (16, 16));

    let plain = scratch("attention-off");
    ok(run(&[&["train"][..], &args(&tiny(&plain, 1), &["--attention-mask", "false"])].concat()));
    let t = read_tensors(&native::path_for(&plain.join("models"), 1)).unwrap();
    assert!(t.tensors.contains_key("G.main.0.weight") && !t.tensors.contains_key("G.mask.weight"));
    let other = tiny(&scratch("attention-refused"), 1);
    let refused = run(&[
        &["train"][..],
        &args(&other, &["--attention-mask", "false", "--lambda-mask", "0.5"]),
    ]
    .concat());
    assert_error(refused, "--lambda-mask");
}
