//! `stargan eval` on tiny models: that every metric is computed and lands in range and in the files,
//! that the judge classifier is cached and reused, and the Fréchet distance itself.

mod common;

use stargan::config::{DatasetKind, SyntheticLabels, TrainConfig};
use stargan::data::source::{render_into, Source};
use stargan::data::synthetic::{CelebaLabels, Content, Labels};
use stargan::eval::{
    evaluate, evaluate_data, frechet_distance, EvalData, EvalOptions, EvalReport, Translator,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn scratch(name: &str) -> PathBuf {
    common::scratch("eval", name)
}

/// The shared tiny configuration, trained for 4 iterations (G updated twice), logging every 2.
fn tiny(dir: &Path) -> TrainConfig {
    let mut cfg = common::tiny_config(dir, 4);
    cfg.optim.num_iters_decay = 2;
    let out = &mut cfg.output;
    (out.log_step, out.sample_step, out.model_save_step, out.use_tensorboard) = (2, 4, 4, false);
    cfg
}

fn train(cfg: &TrainConfig) -> PathBuf {
    stargan::train::train(cfg).expect("tiny training run");
    let path = stargan::checkpoint::native::path_for(&cfg.output.model_save_dir, cfg.optim.num_iters);
    assert!(path.is_file(), "{} was not written", path.display());
    path
}

fn options(ckpt: &Path, cfg: &TrainConfig, out: &Path) -> EvalOptions {
    let mut o = EvalOptions::new(ckpt, cfg.clone()).unwrap();
    o.out = out.to_path_buf();
    o.max_images = 16;
    o.classifier_iters = 12;
    o.device = Device::Cpu;
    o.grid_rows = 4;
    o
}

fn unit(v: f64, what: &str) {
    assert!(v.is_finite() && (0.0..=1.0).contains(&v), "{what} = {v}");
}

/// Every metric present, finite and in range; the files written and readable.
fn check(r: &EvalReport, out: &Path, targets: usize, ground_truth: bool) {
    assert!(!r.classifier.held_out.is_empty());
    for h in &r.classifier.held_out {
        assert!(h.images > 0, "{h:?}");
        unit(h.accuracy, "held-out accuracy");
    }
    let images: usize = r.datasets.iter().map(|d| d.images).sum();
    assert_eq!(r.overall.pairs, images * targets);
    let totals = std::iter::once(&r.overall).chain(r.datasets.iter().map(|d| &d.summary));
    for s in totals.clone() {
        assert_eq!(s.ground_truth.is_some(), ground_truth, "{s:?}");
    }
    for s in totals.chain(r.datasets.iter().flat_map(|d| d.targets.iter().map(|t| &t.summary))) {
        unit(s.accuracy, "accuracy");
        if let Some(a) = s.all_correct {
            unit(a, "all-correct");
        }
        assert!(s.reconstruction_l1.is_finite() && (0.0..=2.0).contains(&s.reconstruction_l1));
        assert!(ground_truth || s.ground_truth.is_none(), "{s:?}");
        if let Some(g) = &s.ground_truth {
            assert!(g.pairs > 0);
            for v in [g.l1, g.identity_l1] {
                assert!(v.is_finite() && (0.0..=2.0).contains(&v), "{g:?}");
            }
            assert!((g.l1_levels - g.l1 * 127.5).abs() < 1e-9);
            for v in [g.psnr_db, g.identity_psnr_db] {
                assert!(v.is_finite() && v > 0.0, "{g:?}");
            }
        }
    }
    for d in &r.datasets {
        assert_eq!(d.targets.len(), targets);
        let cfd = d.summary.cfd.expect("a CFD per data set");
        assert!(cfd.is_finite() && cfd >= 0.0, "CFD {cfd}");
        let floor = d.cfd_real_floor.expect("a real-vs-real floor");
        assert!(floor.is_finite() && floor >= 0.0, "floor {floor}");
    }
    assert!(r.overall.cfd.is_some_and(|c| c.is_finite() && c >= 0.0));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap())
            .expect("eval.json parses");
    assert!(json["overall"]["accuracy"].is_number(), "{json}");
    assert!(json["overall"]["cfd"].is_number(), "{json}");
    assert!(json["classifier"]["held_out"][0]["accuracy"].is_number(), "{json}");
    assert_eq!(json["datasets"].as_array().unwrap().len(), r.datasets.len());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Classifier Fréchet distance") && md.contains("grid.png"), "{md}");
    let grid = image::open(out.join("grid.png")).expect("grid.png decodes");
    assert_eq!(grid.width(), 16 * (targets as u32 + 1));
    assert_eq!(grid.height() % 16, 0);
    assert_eq!(out.join("grid-truth.png").is_file(), ground_truth);
}

#[test]
fn frechet_distance_of_known_gaussians() {
    tch::manual_seed(7);
    let a = Tensor::randn([600, 6], (Kind::Double, Device::Cpu))
        * Tensor::from_slice(&[1.0, 2.0, 0.5, 1.0, 3.0, 0.1]);
    let a = a.to_kind(Kind::Float);
    let same = frechet_distance(&a, &a).unwrap();
    assert!(same.abs() < 1e-6, "identical sets: {same}");
    // A mean shift by d adds |d|².
    let d = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 0.25, 3.0]);
    let shifted = frechet_distance(&a, &(&a + &d)).unwrap();
    let want = 0.25 + 1.0 + 4.0 + 0.0625 + 9.0;
    assert!((shifted - want).abs() < 1e-4 * want, "shifted: {shifted} vs {want}");
    // Scaling by 2 doubles the mean and quadruples the covariance: |μ|² + Tr(Σ).
    let (mu, cov) = stargan::eval::frechet::moments(&a);
    let want = mu.square().sum(Kind::Double).double_value(&[]) + cov.trace().double_value(&[]);
    let scaled = frechet_distance(&a, &(&a * 2.0)).unwrap();
    assert!((scaled - want).abs() < 1e-4 * want, "scaled: {scaled} vs {want}");
    // Fewer samples than dimensions: singular covariances still give a finite distance.
    let few = frechet_distance(&a.narrow(0, 0, 3), &a.narrow(0, 3, 4)).unwrap();
    assert!(few.is_finite() && few >= 0.0);
    assert!(frechet_distance(&a.narrow(0, 0, 0), &a).is_none());
}

#[test]
fn synthetic_celeba_metrics_files_and_cache() {
    let dir = scratch("celeba");
    let cfg = tiny(&dir);
    let ckpt = train(&cfg);

    let first = evaluate(&options(&ckpt, &cfg, &dir.join("eval1"))).expect("first evaluation");
    assert!(!first.classifier.loaded, "nothing cached yet");
    assert_eq!(first.iteration, Some(4));
    assert!(Path::new(&first.classifier.path).is_file(), "the classifier is cached");
    assert!(first.classifier.path.starts_with(cfg.output.model_save_dir.to_str().unwrap()));
    check(&first, &dir.join("eval1"), 5, true);
    assert_eq!(first.datasets[0].images, 16);
    assert!(first.datasets[0].own_labels.is_none(), "one data set: every target is its own");

    let second = evaluate(&options(&ckpt, &cfg, &dir.join("eval2"))).expect("second evaluation");
    assert!(second.classifier.loaded, "the cached classifier is reused");
    assert_eq!(second.classifier.path, first.classifier.path);
    assert_eq!(second.classifier.held_out[0].accuracy, first.classifier.held_out[0].accuracy);
    assert_eq!(second.overall.accuracy, first.overall.accuracy, "evaluation is deterministic");
    check(&second, &dir.join("eval2"), 5, true);

    // The command line resolves the data from the checkpoint and finds the same cached classifier.
    let out = dir.join("eval-cli");
    let run = Command::new(env!("CARGO_BIN_EXE_stargan"))
        .args(["eval", "--checkpoint", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--max-images", "16", "--classifier-iters", "12", "--device", "cpu", "--threads", "1"])
        .env("STARGAN_LOG", "warn")
        .output()
        .expect("run stargan eval");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "stderr: {}\nstdout: {stdout}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("target accuracy") && stdout.contains("loaded"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(json["classifier"]["loaded"], true);
    assert_eq!(json["overall"]["accuracy"].as_f64(), Some(first.overall.accuracy));

    // A classifier cached for other settings is refused, not silently used.
    let mut other = options(&ckpt, &cfg, &dir.join("eval3"));
    other.classifier = Some(PathBuf::from(&first.classifier.path));
    other.classifier_iters = 13;
    let err = evaluate(&other).unwrap_err().to_string();
    assert!(err.contains("other data or settings"), "{err}");
}

#[test]
fn joint_synthetic_layout() {
    let dir = scratch("joint");
    let mut cfg = tiny(&dir);
    cfg.data.synthetic_split = SyntheticLabels::Both;
    let ckpt = train(&cfg);
    let out = dir.join("eval");
    let r = evaluate(&options(&ckpt, &cfg, &out)).expect("evaluation");
    assert_eq!(r.datasets.len(), 2);
    assert_eq!(r.classifier.held_out.len(), 2);
    // 5 CelebA-like targets and 8 expressions, for the images of both data sets.
    check(&r, &out, 13, true);
    // A RaFD-like image's CelebA attributes are unknown to G (all zero): a hair-colour target is then
    // a complete label (that colour, female, old), a flip of `Male` from nothing is not.
    let rafd_to_black = &r.datasets[1].targets[0];
    assert_eq!(rafd_to_black.label, "Black_Hair");
    assert_eq!(rafd_to_black.summary.ground_truth.as_ref().unwrap().pairs, 16);
    let rafd_to_male = &r.datasets[1].targets[3];
    assert_eq!(rafd_to_male.label, "Male");
    assert!(rafd_to_male.summary.ground_truth.is_none());
    let celeba_to_happy = r.datasets[0].targets.iter().find(|t| t.label == "happy").unwrap();
    assert_eq!(celeba_to_happy.summary.ground_truth.as_ref().unwrap().pairs, 16);
    // The RaFD-like faces on their own 8 expressions, apart (what a RaFD-only model is scored on).
    let own = r.datasets[1].own_labels.as_ref().expect("a joint evaluation splits out each set's own labels");
    let expressions: Vec<_> = r.datasets[1].targets.iter().filter(|t| t.domain == "RaFD").collect();
    assert_eq!(expressions.len(), 8);
    assert_eq!(own.pairs, expressions.iter().map(|t| t.summary.pairs).sum::<usize>());
    let weighted: f64 = expressions.iter().map(|t| t.summary.accuracy * t.summary.pairs as f64).sum();
    assert!((own.accuracy - weighted / own.pairs as f64).abs() < 1e-12);
    // A run that trained on few RaFD-like faces is judged by the same classifier as one on all.
    let mut scarce = cfg.clone();
    scarce.data.synthetic_rafd_faces = Some(3);
    let again = evaluate(&options(&ckpt, &scarce, &dir.join("eval-scarce"))).expect("evaluation");
    assert!(again.classifier.loaded, "the judge is shared, not retrained on 3 faces");
    assert_eq!(again.classifier.path, r.classifier.path);
}

#[test]
fn class_folders_without_a_test_split() {
    let dir = scratch("folder");
    let images = dir.join("images");
    for (c, name) in ["calm", "loud"].iter().enumerate() {
        std::fs::create_dir_all(images.join(name)).unwrap();
        for i in 0..10u32 {
            let img = image::RgbImage::from_fn(20, 20, |x, y| {
                let v = ((x * 7 + y * 3 + i * 11) % 64) as u8;
                if c == 0 {
                    image::Rgb([180 + v, 40, 40 + v])
                } else {
                    image::Rgb([40, 60 + v, 190])
                }
            });
            img.save(images.join(name).join(format!("{i:02}.png"))).unwrap();
        }
    }
    let mut cfg = tiny(&dir);
    (cfg.data.dataset, cfg.data.image_dir) = (DatasetKind::Folder, Some(images));
    let ckpt = train(&cfg);
    let out = dir.join("eval");
    let r = evaluate(&options(&ckpt, &cfg, &out)).expect("evaluation");
    check(&r, &out, 2, false);
    let h = &r.classifier.held_out[0];
    assert_eq!(h.images, 2, "a tenth of 20 images is held out of the judge's training");
    assert!(h.held_out_from.contains("no separate test split"), "{}", h.held_out_from);
}

/// G = identity: every translation is its input.
struct Identity;

impl Translator for Identity {
    fn translate(&self, x: &Tensor, _: &Tensor) -> Tensor {
        x.shallow_clone()
    }
}

/// The perfect generator of the built-in data: it recognises each image it is given (a test image,
/// or one it rendered) and renders the same face with the target labels.
struct Oracle {
    size: u32,
    known: RefCell<HashMap<Vec<u8>, (Content, Labels)>>,
}

fn key(x: &Tensor) -> Vec<u8> {
    let v: Vec<f32> = Vec::try_from(x.contiguous().view([-1])).unwrap();
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

impl Translator for Oracle {
    fn translate(&self, x: &Tensor, c: &Tensor) -> Tensor {
        let per = 3 * (self.size * self.size) as usize;
        let mut rows = Vec::new();
        for r in 0..x.size()[0] {
            let (content, labels) = self.known.borrow()[&key(&x.get(r))].clone();
            let v: Vec<f32> = Vec::try_from(c.get(r).contiguous()).unwrap();
            let labels = labels.with_celeba(CelebaLabels::from_vector(&v).expect("a complete target"));
            let mut out = vec![0f32; per];
            render_into(self.size, &content, &labels, &mut out).unwrap();
            let s = self.size as i64;
            let y = Tensor::from_slice(&out).view([3, s, s]);
            self.known.borrow_mut().insert(key(&y), (content.clone(), labels));
            rows.push(y);
        }
        Tensor::stack(&rows, 0)
    }
}

/// The metrics themselves, on generators whose answers are known: an oracle scores the judge's own
/// accuracy with a perfect (capped) PSNR and no reconstruction error; the identity scores the
/// untranslated baseline exactly and is "right" only where a target repeats the input's label.
#[test]
fn identity_and_oracle_generators_score_what_they_must() {
    let dir = scratch("oracle");
    let cfg = tiny(&dir);
    let data = EvalData::open(&cfg).unwrap();
    let mut opts = options(&dir.join("none"), &cfg, &dir.join("out"));
    // A judge good enough that its mistakes do not blur the comparison.
    opts.classifier_iters = 300;
    let test = data.test_source(0).as_synthetic().expect("built-in data");
    let size = test.image_size();
    let mut known = HashMap::new();
    let mut buf = vec![0f32; 3 * (size * size) as usize];
    for i in 0..opts.max_images {
        test.load(i, false, &mut buf).unwrap();
        known.insert(key(&Tensor::from_slice(&buf)), test.sample(i));
    }
    let oracle = Oracle { size, known: RefCell::new(known) };
    let o = evaluate_data(&opts, &data, &oracle, None).expect("oracle evaluation");
    let judge = o.classifier.held_out[0].accuracy;
    assert!(judge >= 0.9, "the judge learned the data: {judge}");
    let gt = o.overall.ground_truth.as_ref().expect("ground truth");
    assert_eq!(gt.pairs, o.overall.pairs, "every target of the built-in data has a ground truth");
    assert_eq!(gt.l1, 0.0, "{gt:?}");
    assert_eq!(gt.psnr_db, 100.0, "the PSNR cap: {gt:?}");
    assert_eq!(o.overall.reconstruction_l1, 0.0);
    assert!((o.overall.accuracy - judge).abs() <= 0.1, "oracle {} vs judge {judge}", o.overall.accuracy);

    let id = evaluate_data(&opts, &data, &Identity, None).expect("identity evaluation");
    let gt = id.overall.ground_truth.as_ref().expect("ground truth");
    assert_eq!(gt.l1, gt.identity_l1);
    assert_eq!(gt.psnr_db, gt.identity_psnr_db);
    assert_eq!(id.overall.reconstruction_l1, 0.0);
    // The fraction of (image, target) pairs whose target label is the image's own: one of the three
    // hair colours, never a flip.
    let layout = data.layout();
    let names = layout.test_target_names();
    let mut same = 0;
    for i in 0..opts.max_images {
        let v = test.sample(i).1.celeba().to_vector();
        for (t, name) in names.iter().enumerate() {
            same += usize::from(!name.starts_with("flip-") && v[t] == 1.0);
        }
    }
    let want = same as f64 / (opts.max_images * names.len()) as f64;
    assert!((id.overall.accuracy - want).abs() <= 0.1, "identity {} vs {want}", id.overall.accuracy);
    for t in id.datasets[0].targets.iter().filter(|t| t.target.starts_with("flip-")) {
        assert!(t.summary.accuracy <= 0.15, "an unflipped image passes as flipped: {t:?}");
    }
}
