//! `stargan eval`: how good is a trained generator? The yardstick the paper uses, and more where the
//! built-in data knows the answer.
//!
//! 1. **Target-domain accuracy.** A judge classifier ([`classifier`]) learns the data set's labels
//!    from real training images only; every test image is translated to every target of the
//!    reference's `create_labels` ([`LabelLayout::test_targets`]) and the judge says whether the
//!    result shows the target. For a one-hot target (RaFD) that is its class; for a multi-label
//!    target it is the attribute the target was made for (the hair colour it sets, the attribute it
//!    flips), and separately whether every attribute matches the target vector. All targets count,
//!    including an input's own class, as in the paper (each class is a target for every input).
//!    The judge's accuracy on held-out real images is reported beside it (the paper: 0.45% error on
//!    real RaFD images, 2.12% on StarGAN's translations).
//! 2. **Ground truth** (built-in synthetic data only): the true translation re-renders the test
//!    image's latent content with the target labels; mean L1 (in [-1, 1] units and in 0–255 levels)
//!    and PSNR (images mapped to [0, 1]), next to the same numbers for the untranslated input (the
//!    "identity" baseline a generator must beat). A pair has a ground truth only when its target is a
//!    complete label of the synthetic data: joint layouts also ask G to set another data set's
//!    attributes from all-zero ones (no hair colour), which no picture shows, and such pairs are left
//!    out of the ground-truth means (counted in `ground_truth.pairs`).
//! 3. **Reconstruction**: mean |x − G(G(x, c_trg), c_org)| over the same pairs, in [-1, 1] units.
//! 4. **Classifier Fréchet distance (CFD)**: the Fréchet distance ([`frechet`]) between the judge's
//!    128-d penultimate features of the real test images and of all their translations, per data set.
//!    It is *not* Inception FID (whose weights are not available here) and is only comparable
//!    between evaluations that share a judge. `cfd_real_floor` is the CFD between the same number of
//!    real training and real test images: what two real samples of that size score.
//!
//! Protocol details: the first `max_images` test images of each data set, in file order and never
//! flipped; G with per-image instance-norm statistics that leave its buffers untouched (the
//! reference's test mode), under `no_grad`; batches of 32 (instance norm makes the batch size
//! irrelevant). When a data set has no separate test split (class folders such as RaFD's are read
//! whole for both parts), the judge holds out a tenth of the images, chosen by a hash of their names,
//! and is trained on the rest; its held-out accuracy is measured on those.
//!
//! The judge is cached (safetensors, its settings in the metadata) under a name that hashes the data
//! settings, the label layout, the seed, the training iterations and the recipe version, and reused
//! when present: every evaluation of models trained on the same data is judged by the same classifier.

pub mod classifier;
pub mod frechet;
mod report;

pub use classifier::Classifier;
pub use frechet::frechet_distance;

use crate::batch::labels_tensor;
use crate::checkpoint::native;
use crate::config::{DatasetKind, TrainConfig};
use crate::data::build::{sources, Part};
use crate::data::error::DataError;
use crate::data::source::{render_into, Label, Loader, Source};
use crate::data::synthetic::{CelebaLabels, Content, LabelSet, Labels, RafdLabels};
use crate::error::{Error, Result};
use crate::image_io;
use crate::labels::{Domain, LabelKind, LabelLayout};
use crate::model::NormStats;
use crate::rng::Fnv1a;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Test images per batch.
const EVAL_BATCH: usize = 32;

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Anything [`crate::inference::load`] reads: a training checkpoint, a reference `{step}-G.ckpt`, an
    /// exported G.
    pub checkpoint: PathBuf,
    /// The data: its test part is translated, its training part teaches the judge.
    pub data: TrainConfig,
    /// Folder for `eval.json`, `report.md` and the grids.
    pub out: PathBuf,
    /// Test images per data set.
    pub max_images: usize,
    /// Training iterations of the judge when it is not cached.
    pub classifier_iters: u64,
    /// The judge's cache file; `None`: `<data.model_save_dir>/classifier-<hash>.safetensors`.
    pub classifier: Option<PathBuf>,
    pub device: Device,
    /// Rows of the sample grids (split between the data sets of a joint layout).
    pub grid_rows: usize,
}

impl EvalOptions {
    /// The defaults: 512 images, a 1,500-iteration judge cached beside the checkpoints, results in
    /// `<result_dir>/eval`.
    pub fn new(checkpoint: impl Into<PathBuf>, data: TrainConfig) -> Result<Self> {
        Ok(Self {
            checkpoint: checkpoint.into(),
            out: data.output.result_dir.join("eval"),
            device: data.device.resolve()?,
            data,
            max_images: 512,
            classifier_iters: 1500,
            classifier: None,
            grid_rows: 8,
        })
    }
}

/// Everything `stargan eval` measured; written as `eval.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    /// Training iterations of the checkpoint, when it is a training checkpoint.
    pub iteration: Option<u64>,
    pub data: DataSummary,
    pub device: String,
    pub max_images: usize,
    pub classifier: ClassifierReport,
    /// Per translated data set.
    pub datasets: Vec<DatasetReport>,
    /// Over every (image, target) pair of every data set.
    pub overall: Summary,
    pub files: Files,
    pub seconds: Timings,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataSummary {
    pub dataset: DatasetKind,
    /// `dataset = synthetic`: which label sets.
    pub synthetic_split: Option<crate::config::SyntheticLabels>,
    pub image_size: i64,
    pub seed: u64,
    pub layout: LabelLayout,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifierReport {
    pub path: String,
    /// Read from the cache (true) or trained by this evaluation.
    pub loaded: bool,
    pub iterations: u64,
    /// Training time, when trained now.
    pub train_seconds: Option<f64>,
    /// Mean training loss over the last tenth of the iterations, when trained now.
    pub final_loss: Option<f64>,
    pub layers: usize,
    pub feature_dim: i64,
    /// Accuracy on held-out real images, per data set.
    pub held_out: Vec<RealAccuracy>,
}

/// The judge on real images it did not learn from.
#[derive(Debug, Clone, Serialize)]
pub struct RealAccuracy {
    pub dataset: String,
    pub kind: LabelKind,
    pub images: usize,
    /// Where the held-out images come from.
    pub held_out_from: String,
    /// Multi-label: mean over attributes; one-hot: fraction of images classified right.
    pub accuracy: f64,
    /// Multi-label: fraction of images with every attribute right.
    pub all_correct: Option<f64>,
    pub labels: Vec<LabelAccuracy>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelAccuracy {
    pub label: String,
    /// Multi-label: every image; one-hot: the images of this class.
    pub images: usize,
    /// `None` for a class without images.
    pub accuracy: Option<f64>,
}

/// Means over a set of (image, target) pairs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pairs: usize,
    /// Fraction of translations the judge sees in their target domain (see the module docs).
    pub accuracy: f64,
    /// 1 − accuracy, the paper's classification error.
    pub error: f64,
    /// Multi-label targets: fraction with every attribute as the target vector says.
    pub all_correct: Option<f64>,
    /// Mean |x − G(G(x, c_trg), c_org)| in [-1, 1] units.
    pub reconstruction_l1: f64,
    /// Built-in data only, and only where some pair has a ground truth.
    pub ground_truth: Option<GroundTruth>,
    /// Classifier Fréchet distance between the real test images and their translations.
    pub cfd: Option<f64>,
}

/// Error of translations against the true translations (built-in data).
#[derive(Debug, Clone, Serialize)]
pub struct GroundTruth {
    /// Pairs with a ground truth (the others' targets are not complete labels).
    pub pairs: usize,
    /// Mean absolute error in [-1, 1] units.
    pub l1: f64,
    /// The same in 0–255 levels.
    pub l1_levels: f64,
    /// Mean per-image PSNR in dB, images mapped to [0, 1] (capped at 100 dB for identical images).
    pub psnr_db: f64,
    /// The untranslated input against the ground truth: the error of doing nothing.
    pub identity_l1: f64,
    pub identity_psnr_db: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// The target's name (as `stargan test` names its files).
    pub target: String,
    /// The data set and label it was made for.
    pub domain: String,
    pub label: String,
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    pub dataset: String,
    pub kind: LabelKind,
    /// Test images translated.
    pub images: usize,
    #[serde(flatten)]
    pub summary: Summary,
    /// CFD between real training and real test images of this data set (same count): the floor.
    pub cfd_real_floor: Option<f64>,
    /// With several data sets (joint training), the pairs whose target is one of this data set's
    /// own labels: what a model of this data set alone is measured on (the summary above also
    /// counts translations into the other data sets' labels).
    pub own_labels: Option<Summary>,
    pub targets: Vec<TargetReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Files {
    pub json: String,
    pub report: String,
    pub grid: String,
    /// Built-in data: the ground-truth translations in the grid's layout.
    pub grid_truth: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Training (or loading) the judge.
    pub classifier: f64,
    /// Translating and measuring.
    pub translate: f64,
    pub total: f64,
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// A view of some images of a source.
struct Subset {
    inner: Arc<dyn Source>,
    indices: Vec<usize>,
}

impl Source for Subset {
    fn domain(&self) -> &Domain {
        self.inner.domain()
    }
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn image_size(&self) -> u32 {
        self.inner.image_size()
    }
    fn load(&self, i: usize, flip: bool, out: &mut [f32]) -> std::result::Result<(), DataError> {
        self.inner.load(self.indices[i], flip, out)
    }
    fn label(&self, i: usize) -> Label {
        self.inner.label(self.indices[i])
    }
    fn name(&self, i: usize) -> String {
        self.inner.name(self.indices[i])
    }
}

/// The three views of the data an evaluation needs.
struct Parts {
    /// The judge learns from these.
    train: Vec<Arc<dyn Source>>,
    /// Its accuracy is measured on these.
    held_out: Vec<Arc<dyn Source>>,
    held_out_from: Vec<String>,
    /// G translates these.
    test: Vec<Arc<dyn Source>>,
    layout: LabelLayout,
}

fn same_images(a: &dyn Source, b: &dyn Source) -> bool {
    a.len() == b.len() && (0..a.len()).all(|i| a.name(i) == b.name(i))
}

fn data_parts(cfg: &TrainConfig) -> Result<Parts> {
    // The judge of the built-in data learns from every face of each split, however few the run
    // trained on (`synthetic_rafd_faces`), so that runs on scarce and whole splits share one judge
    // (and its cache key leaves the setting out).
    let data = crate::data::config::DataConfig { synthetic_rafd_faces: None, ..cfg.data.clone() };
    let (train, layout) = sources(&data, cfg.seed, Part::Train)?;
    let (test, test_layout) = sources(&cfg.data, cfg.seed, Part::Test)?;
    if layout != test_layout {
        return Err(Error::Input("the training and test images have different labels".into()));
    }
    let (mut judge_train, mut held_out, mut from) = (Vec::new(), Vec::new(), Vec::new());
    for (tr, te) in train.iter().zip(&test) {
        if !same_images(tr.as_ref(), te.as_ref()) {
            judge_train.push(tr.clone());
            held_out.push(te.clone());
            from.push("the test split".to_string());
            continue;
        }
        let n = tr.len();
        if n < 2 {
            judge_train.push(tr.clone());
            held_out.push(tr.clone());
            from.push("the judge's own training images (too few images to hold any out)".to_string());
            continue;
        }
        // No separate test split: hold out a tenth, chosen by name so that it does not depend on
        // the file order or the seed.
        let mut by_hash: Vec<usize> = (0..n).collect();
        by_hash.sort_by_key(|&i| (Fnv1a::of(&tr.name(i)), i));
        let k = (n / 10).max(1);
        let mut held: Vec<usize> = by_hash[..k].to_vec();
        let mut rest: Vec<usize> = by_hash[k..].to_vec();
        held.sort_unstable();
        rest.sort_unstable();
        judge_train.push(Arc::new(Subset { inner: tr.clone(), indices: rest }));
        held_out.push(Arc::new(Subset { inner: tr.clone(), indices: held }));
        from.push(format!(
            "{k} of the {n} images, held out of the judge's training (the data set has no separate test split)"
        ));
    }
    Ok(Parts { train: judge_train, held_out, held_out_from: from, test, layout })
}

/// The first `max` images of source `k` as `(x [n,3,S,S], labels, source indices)` batches (the
/// loader must batch by [`EVAL_BATCH`]; only the batches needed are decoded).
fn first_images<'a>(
    loader: &'a Loader,
    k: usize,
    max: usize,
    device: Device,
) -> impl Iterator<Item = Result<(Tensor, Vec<Label>, Vec<usize>)>> + 'a {
    loader.sequential(k).take(max.div_ceil(EVAL_BATCH)).enumerate().map(move |(b, hb)| {
        let hb = hb?;
        let take = (max - b * EVAL_BATCH).min(hb.len());
        let s = hb.size as i64;
        let x =
            Tensor::from_slice(&hb.images).view([-1, 3, s, s]).narrow(0, 0, take as i64).to_device(device);
        Ok((x, hb.labels[..take].to_vec(), hb.indices[..take].to_vec()))
    })
}

// ---------------------------------------------------------------------------------------------
// The judge
// ---------------------------------------------------------------------------------------------

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).to_string_lossy().into_owned()
}

/// What a judge was trained for: the settings that change its training images or labels.
fn classifier_description(cfg: &TrainConfig, layout: &LabelLayout, iterations: u64) -> String {
    use serde_json::json;
    let celeba = || {
        json!({
            "attr_path": canonical(cfg.data.celeba_attr_path()),
            "celeba_image_dir": canonical(&cfg.data.celeba_image_dir),
            "celeba_crop_size": cfg.data.celeba_crop_size,
            "skip_missing": cfg.data.skip_missing,
        })
    };
    let rafd = || json!({ "rafd_image_dir": canonical(&cfg.data.rafd_image_dir), "rafd_crop_size": cfg.data.rafd_crop_size });
    let data = match cfg.data.dataset {
        DatasetKind::Synthetic => json!({ "synthetic_split": cfg.data.synthetic_split }),
        DatasetKind::Celeba => celeba(),
        DatasetKind::Rafd => rafd(),
        DatasetKind::Both => json!([celeba(), rafd()]),
        DatasetKind::Folder => json!({
            "image_dir": cfg.data.image_dir.as_deref().map(canonical),
            "attr_path": canonical(cfg.data.celeba_attr_path()),
            "crop_size": cfg.data.crop_size,
            "skip_missing": cfg.data.skip_missing,
        }),
    };
    json!({
        "version": classifier::VERSION,
        "dataset": cfg.data.dataset,
        "data": data,
        "image_size": cfg.data.image_size,
        "seed": cfg.seed,
        "iterations": iterations,
        "labels": layout.domains.iter().map(|d| json!([d.name, d.labels])).collect::<Vec<_>>(),
    })
    .to_string()
}

/// The default cache file of the judge for this data.
pub fn default_classifier_path(cfg: &TrainConfig, layout: &LabelLayout, iterations: u64) -> PathBuf {
    let hash = Fnv1a::of(&classifier_description(cfg, layout, iterations));
    cfg.output.model_save_dir.join(format!("classifier-{hash:016x}.safetensors"))
}

fn held_out_accuracy(
    clf: &Classifier,
    parts: &Parts,
    max: usize,
    seed: u64,
    device: Device,
) -> Result<Vec<RealAccuracy>> {
    let loader = Loader::new(parts.held_out.clone(), EVAL_BATCH, seed, false)?;
    let mut out = Vec::new();
    for (k, d) in parts.layout.domains.iter().enumerate() {
        let dim = d.dim() as usize;
        // Per label: (images, correct); and images with everything right.
        let mut per = vec![(0usize, 0usize); dim];
        let (mut images, mut all_right) = (0usize, 0usize);
        for batch in first_images(&loader, k, max, device) {
            let (x, labels, _) = batch?;
            let truth = parts.layout.dense(k, &labels_tensor(&labels));
            let pred = tch::no_grad(|| clf.predict(k, &clf.logits(k, &clf.features(&x, false))));
            let truth: Vec<f32> = Vec::try_from(truth.to_device(Device::Cpu).view([-1]))?;
            let pred: Vec<f32> = Vec::try_from(pred.to_device(Device::Cpu).view([-1]))?;
            for (t, p) in truth.chunks(dim).zip(pred.chunks(dim)) {
                images += 1;
                all_right += usize::from(t == p);
                match d.kind {
                    LabelKind::MultiLabel => {
                        for i in 0..dim {
                            per[i].0 += 1;
                            per[i].1 += usize::from(t[i] == p[i]);
                        }
                    }
                    LabelKind::OneHot => {
                        let c = t.iter().position(|&v| v == 1.0).unwrap_or(0);
                        per[c].0 += 1;
                        per[c].1 += usize::from(t == p);
                    }
                }
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
        let labels: Vec<LabelAccuracy> = d
            .labels
            .iter()
            .zip(&per)
            .map(|(l, &(n, c))| LabelAccuracy {
                label: l.clone(),
                images: n,
                accuracy: (n > 0).then(|| ratio(c, n)),
            })
            .collect();
        let (accuracy, all_correct) = match d.kind {
            LabelKind::MultiLabel => {
                let c: usize = per.iter().map(|p| p.1).sum();
                (ratio(c, images * dim), Some(ratio(all_right, images)))
            }
            LabelKind::OneHot => (ratio(all_right, images), None),
        };
        out.push(RealAccuracy {
            dataset: d.name.clone(),
            kind: d.kind,
            images,
            held_out_from: parts.held_out_from[k].clone(),
            accuracy,
            all_correct,
            labels,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Accumulating metrics
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Acc {
    pairs: usize,
    correct: f64,
    all_pairs: usize,
    all_correct: f64,
    rec: f64,
    gt_pairs: usize,
    gt_l1: f64,
    gt_psnr: f64,
    id_l1: f64,
    id_psnr: f64,
}

impl Acc {
    fn add(&mut self, o: &Acc) {
        self.pairs += o.pairs;
        self.correct += o.correct;
        self.all_pairs += o.all_pairs;
        self.all_correct += o.all_correct;
        self.rec += o.rec;
        self.gt_pairs += o.gt_pairs;
        self.gt_l1 += o.gt_l1;
        self.gt_psnr += o.gt_psnr;
        self.id_l1 += o.id_l1;
        self.id_psnr += o.id_psnr;
    }

    fn summary(&self, has_truth: bool, cfd: Option<f64>) -> Summary {
        let n = self.pairs.max(1) as f64;
        let g = self.gt_pairs.max(1) as f64;
        let accuracy = self.correct / n;
        Summary {
            pairs: self.pairs,
            accuracy,
            error: 1.0 - accuracy,
            all_correct: (self.all_pairs > 0).then(|| self.all_correct / self.all_pairs as f64),
            reconstruction_l1: self.rec / n,
            ground_truth: (has_truth && self.gt_pairs > 0).then(|| GroundTruth {
                pairs: self.gt_pairs,
                l1: self.gt_l1 / g,
                l1_levels: self.gt_l1 / g * 127.5,
                psnr_db: self.gt_psnr / g,
                identity_l1: self.id_l1 / g,
                identity_psnr_db: self.id_psnr / g,
            }),
            cfd,
        }
    }
}

fn per_image(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).view([-1]))?)
}

/// Per-image mean absolute error (in [-1, 1] units) and PSNR (dB on [0, 1], capped at 100).
fn errors(a: &Tensor, b: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let diff = a - b;
    let l1 = per_image(&diff.abs().mean_dim(&[1i64, 2, 3][..], false, Kind::Float))?;
    let mse = per_image(&(diff / 2.0).square().mean_dim(&[1i64, 2, 3][..], false, Kind::Float))?;
    let psnr = mse.iter().map(|&m| (10.0 * (1.0 / m.max(1e-10)).log10()).min(100.0)).collect();
    Ok((l1, psnr))
}

/// Which synthetic labels a target vector of a synthetic data set sets, if it is a complete label.
fn target_labels(split: LabelSet, base: Labels, v: &[f32]) -> Option<Labels> {
    let binary = v.iter().all(|&x| x == 0.0 || x == 1.0);
    match split {
        LabelSet::Celeba => {
            let hair: f32 = v.get(..3)?.iter().sum();
            (binary && hair == 1.0).then(|| CelebaLabels::from_vector(v).ok().map(|c| base.with_celeba(c)))?
        }
        LabelSet::Rafd => {
            let ones = v.iter().filter(|&&x| x == 1.0).count();
            (binary && ones == 1).then(|| RafdLabels::from_vector(v).ok().map(|r| base.with_rafd(r)))?
        }
    }
}

/// The true translations of a batch to one target: `[n,3,S,S]` (zeros where there is none) and
/// which rows have one.
fn render_truth(
    size: u32,
    samples: &[(Content, Labels)],
    split: LabelSet,
    target: &[f32],
    dim: usize,
) -> Result<(Tensor, Vec<bool>)> {
    let per = 3 * (size as usize) * (size as usize);
    let wanted: Vec<Option<Labels>> =
        samples.iter().zip(target.chunks(dim)).map(|((_, l), v)| target_labels(split, *l, v)).collect();
    let mut buf = vec![0f32; samples.len() * per];
    buf.par_chunks_mut(per).zip(samples.par_iter().zip(wanted.par_iter())).try_for_each(
        |(out, ((content, _), labels))| match labels {
            Some(l) => render_into(size, content, l, out),
            None => Ok(()),
        },
    )?;
    let s = size as i64;
    let valid = wanted.iter().map(Option::is_some).collect();
    Ok((Tensor::from_slice(&buf).view([-1, 3, s, s]), valid))
}

// ---------------------------------------------------------------------------------------------
// The evaluation
// ---------------------------------------------------------------------------------------------

/// The metadata of a training checkpoint (header only); `None` for any other checkpoint.
pub fn training_meta(path: &Path) -> Result<Option<native::Meta>> {
    Ok(native::read_meta(path)?)
}

/// What an evaluation translates with: G, or a stand-in with known answers (an identity, an
/// oracle that renders the ground truth) to check the metrics themselves.
pub trait Translator {
    /// G(x, c) for a batch `x` `[N,3,S,S]` and targets `c` `[N, g_dim]`, without gradients.
    fn translate(&self, x: &Tensor, c: &Tensor) -> Tensor;
}

/// A generator as the reference's test mode runs it: per-image instance-norm statistics that
/// leave its buffers untouched, at the given precision.
pub struct TestMode<'a> {
    pub g: &'a crate::model::Generator,
    pub precision: crate::precision::Precision,
}

impl Translator for TestMode<'_> {
    fn translate(&self, x: &Tensor, c: &Tensor) -> Tensor {
        self.g.translate(x, c, NormStats::PerImageFrozen, self.precision)
    }
}

/// Evaluate the generator of `opts.checkpoint`; writes `eval.json`, `report.md` and the grids into
/// `opts.out`.
pub fn evaluate(opts: &EvalOptions) -> Result<EvalReport> {
    check_options(opts)?;
    let parts = data_parts(&opts.data)?;
    let model = crate::inference::load(&opts.checkpoint, None, opts.device)?;
    model.check_fits(&parts.layout, opts.data.data.image_size, &opts.checkpoint)?;
    let iteration = model.meta.as_ref().map(|m| m.iteration);
    let g = TestMode { g: &model.g, precision: opts.data.optim.precision };
    evaluate_with(opts, &parts, &g, iteration)
}

fn check_options(opts: &EvalOptions) -> Result<()> {
    if opts.max_images == 0 {
        return Err(Error::Input("`max_images` must be at least 1".into()));
    }
    if opts.classifier_iters == 0 {
        return Err(Error::Input("`classifier_iters` must be at least 1".into()));
    }
    Ok(())
}

/// The data an evaluation reads: the judge's training and held-out images, the test images.
pub struct EvalData(Parts);

impl EvalData {
    pub fn open(cfg: &TrainConfig) -> Result<Self> {
        Ok(Self(data_parts(cfg)?))
    }
    pub fn layout(&self) -> &LabelLayout {
        &self.0.layout
    }
    /// The test images of data set `k`.
    pub fn test_source(&self, k: usize) -> &Arc<dyn Source> {
        &self.0.test[k]
    }
}

/// [`evaluate`] with any translator on already opened data (`opts.checkpoint` only names it in the
/// report; `iteration` is the training iteration it reports).
pub fn evaluate_data(
    opts: &EvalOptions,
    data: &EvalData,
    g: &dyn Translator,
    iteration: Option<u64>,
) -> Result<EvalReport> {
    check_options(opts)?;
    evaluate_with(opts, &data.0, g, iteration)
}

fn evaluate_with(
    opts: &EvalOptions,
    parts: &Parts,
    g: &dyn Translator,
    iteration: Option<u64>,
) -> Result<EvalReport> {
    let t0 = Instant::now();
    let t_clf = Instant::now();
    let (clf, classifier) = judge(opts, parts)?;
    let classifier_seconds = t_clf.elapsed().as_secs_f64();
    let t_tr = Instant::now();
    let measured = measure(opts, parts, &clf, g)?;
    let translate_seconds = t_tr.elapsed().as_secs_f64();
    let mut report = write_report(opts, parts, classifier, measured, iteration)?;
    report.seconds = Timings {
        classifier: classifier_seconds,
        translate: translate_seconds,
        total: t0.elapsed().as_secs_f64(),
    };
    // Written last so the timings are in it.
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::Internal(format!("cannot represent the report: {e}")))?;
    crate::files::write(Path::new(&report.files.json), json.as_bytes())?;
    crate::files::write(Path::new(&report.files.report), report::markdown(&report).as_bytes())?;
    Ok(report)
}

/// The judge classifier, from its cache or trained now (and cached), with its held-out accuracy.
fn judge(opts: &EvalOptions, parts: &Parts) -> Result<(Classifier, ClassifierReport)> {
    let cfg = &opts.data;
    let layout = &parts.layout;
    let description = classifier_description(cfg, layout, opts.classifier_iters);
    let clf_path = opts
        .classifier
        .clone()
        .unwrap_or_else(|| default_classifier_path(cfg, layout, opts.classifier_iters));
    let mut clf = Classifier::new(layout, cfg.data.image_size, cfg.seed, opts.device);
    let (loaded, stats) = if clf_path.exists() {
        clf.load(&clf_path, &description)?;
        tracing::info!("judge classifier loaded from {}", clf_path.display());
        (true, None)
    } else {
        let batch = parts.train.iter().map(|s| s.len()).min().unwrap_or(1).min(classifier::BATCH);
        let loader = Arc::new(Loader::new(parts.train.clone(), batch, cfg.seed, true)?);
        tracing::info!(
            "training the judge classifier on real images ({} iterations; cached as {})",
            opts.classifier_iters,
            clf_path.display()
        );
        let stats = clf.train(loader, opts.classifier_iters)?;
        clf.save(&clf_path, &description)?;
        tracing::info!("judge trained in {:.1}s (final loss {:.4})", stats.seconds, stats.final_loss);
        (false, Some(stats))
    };
    let held_out = held_out_accuracy(&clf, parts, opts.max_images, cfg.seed, opts.device)?;
    let report = ClassifierReport {
        path: clf_path.display().to_string(),
        loaded,
        iterations: opts.classifier_iters,
        train_seconds: stats.as_ref().map(|s| s.seconds),
        final_loss: stats.as_ref().map(|s| s.final_loss),
        layers: clf.layers(),
        feature_dim: classifier::FEATURES,
        held_out,
    };
    Ok((clf, report))
}

/// What the translations scored, and the columns of the sample grids.
struct Measured {
    datasets: Vec<DatasetReport>,
    overall: Summary,
    any_truth: bool,
    grid_cols: Vec<Vec<Tensor>>,
    truth_cols: Vec<Vec<Tensor>>,
}

/// For each target of the layout: (data set, label index).
fn target_labels_of(layout: &LabelLayout) -> Vec<(usize, usize)> {
    layout.domains.iter().enumerate().flat_map(|(j, d)| (0..d.labels.len()).map(move |i| (j, i))).collect()
}

/// Translate the first test images of every data set to every target and score them.
fn measure(opts: &EvalOptions, parts: &Parts, clf: &Classifier, g: &dyn Translator) -> Result<Measured> {
    let (cfg, device, layout) = (&opts.data, opts.device, &parts.layout);
    let names = layout.test_target_names();
    let target_of = target_labels_of(layout);
    let splits: Vec<Option<LabelSet>> =
        parts.test.iter().map(|s| s.as_synthetic().map(|s| s.label_set())).collect();
    let test_loader = Loader::new(parts.test.clone(), EVAL_BATCH, cfg.seed, false)?;
    let floor_loader = Loader::new(parts.train.clone(), EVAL_BATCH, cfg.seed, false)?;
    let rows_per = opts.grid_rows.div_ceil(layout.domains.len()).max(1);
    let mut grid_cols: Vec<Vec<Tensor>> = (0..=names.len()).map(|_| Vec::new()).collect();
    let mut truth_cols: Vec<Vec<Tensor>> = (0..=names.len()).map(|_| Vec::new()).collect();
    let mut datasets = Vec::new();
    let (mut all_real, mut all_fake) = (Vec::new(), Vec::new());
    let mut total = Acc::default();
    let mut any_truth = false;

    for (k, domain) in layout.domains.iter().enumerate() {
        let syn = parts.test[k].as_synthetic();
        let mut accs = vec![Acc::default(); names.len()];
        let has_truth: Vec<bool> =
            target_of.iter().map(|&(j, _)| syn.is_some() && splits[j].is_some()).collect();
        let (mut real, mut fake) = (Vec::new(), Vec::new());
        let mut images = 0;
        for (b, batch) in first_images(&test_loader, k, opts.max_images, device).enumerate() {
            let (x, labels, indices) = batch?;
            let n = x.size()[0];
            images += n as usize;
            let label = labels_tensor(&labels).to_device(device);
            let samples: Option<Vec<(Content, Labels)>> =
                syn.map(|s| indices.iter().map(|&i| s.sample(i)).collect());
            let rows = rows_per.min(n as usize) as i64;
            if b == 0 {
                grid_cols[0].push(x.narrow(0, 0, rows).to_device(Device::Cpu));
                truth_cols[0].push(x.narrow(0, 0, rows).to_device(Device::Cpu));
            }
            let batch = EvalBatch { k, x: &x, label: &label, samples: samples.as_deref() };
            tch::no_grad(|| -> Result<()> {
                real.push(clf.features(&x, false).to_device(Device::Cpu));
                for (t, c) in layout.test_targets(k, &label).iter().enumerate() {
                    let (y, truth) = score(
                        &batch,
                        layout,
                        clf,
                        g,
                        c,
                        target_of[t],
                        splits[target_of[t].0],
                        &mut accs[t],
                        &mut fake,
                    )?;
                    if b == 0 {
                        grid_cols[t + 1].push(y.narrow(0, 0, rows).to_device(Device::Cpu));
                        let tcol = truth.unwrap_or_else(|| y.zeros_like());
                        truth_cols[t + 1].push(tcol.narrow(0, 0, rows).to_device(Device::Cpu));
                    }
                }
                Ok(())
            })?;
        }
        let real = Tensor::cat(&real, 0);
        let fake = Tensor::cat(&fake, 0);
        let cfd = frechet_distance(&real, &fake);
        let floor_feats: Vec<Tensor> = first_images(&floor_loader, k, images, device)
            .map(|b| b.map(|(x, _, _)| tch::no_grad(|| clf.features(&x, false).to_device(Device::Cpu))))
            .collect::<Result<_>>()?;
        let cfd_real_floor = frechet_distance(&real, &Tensor::cat(&floor_feats, 0));
        all_real.push(real);
        all_fake.push(fake);

        let (mut ds_acc, mut own) = (Acc::default(), Acc::default());
        let mut targets = Vec::new();
        for (t, a) in accs.iter().enumerate() {
            ds_acc.add(a);
            let (j, i) = target_of[t];
            if j == k {
                own.add(a);
            }
            targets.push(TargetReport {
                target: names[t].clone(),
                domain: layout.domains[j].name.clone(),
                label: layout.domains[j].labels[i].clone(),
                summary: a.summary(has_truth[t], None),
            });
        }
        let ds_truth = has_truth.iter().any(|&h| h);
        any_truth |= ds_truth;
        total.add(&ds_acc);
        datasets.push(DatasetReport {
            dataset: domain.name.clone(),
            kind: domain.kind,
            images,
            summary: ds_acc.summary(ds_truth, cfd),
            cfd_real_floor,
            own_labels: (layout.domains.len() > 1).then(|| own.summary(ds_truth, None)),
            targets,
        });
    }
    let overall_cfd = frechet_distance(&Tensor::cat(&all_real, 0), &Tensor::cat(&all_fake, 0));
    let overall = total.summary(any_truth, overall_cfd);
    Ok(Measured { datasets, overall, any_truth, grid_cols, truth_cols })
}

/// One batch of test images of data set `k`, with the built-in data's latent samples if any.
struct EvalBatch<'a> {
    k: usize,
    x: &'a Tensor,
    label: &'a Tensor,
    samples: Option<&'a [(Content, Labels)]>,
}

/// Translate a batch to one target `c` (label `i` of data set `j`) and add its scores to `acc`:
/// the judge's verdict, the reconstruction error, the ground-truth error where the built-in data
/// has one. Returns the translations and the ground truth.
#[allow(clippy::too_many_arguments)]
fn score(
    b: &EvalBatch<'_>,
    layout: &LabelLayout,
    clf: &Classifier,
    g: &dyn Translator,
    c: &Tensor,
    (j, i): (usize, usize),
    split: Option<LabelSet>,
    acc: &mut Acc,
    fake: &mut Vec<Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (x, n) = (b.x, b.x.size()[0] as usize);
    let dj = &layout.domains[j];
    let c_org = layout.condition(b.k, b.label);
    let y = g.translate(x, c);
    let rec = g.translate(&y, &c_org);
    let f = clf.features(&y, false);
    let pred = clf.predict(j, &clf.logits(j, &f));
    fake.push(f.to_device(Device::Cpu));
    let offset: i64 = layout.domains[..j].iter().map(|d| d.dim()).sum();
    let trg = c.narrow(1, offset, dj.dim());
    acc.pairs += n;
    let hit = pred.select(1, i as i64).eq_tensor(&trg.select(1, i as i64));
    acc.correct += hit.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
    if dj.kind == LabelKind::MultiLabel {
        acc.all_pairs += n;
        let all = pred.eq_tensor(&trg).all_dim(1, false);
        acc.all_correct += all.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
    }
    acc.rec +=
        per_image(&(x - &rec).abs().mean_dim(&[1i64, 2, 3][..], false, Kind::Float))?.iter().sum::<f64>();
    let (Some(samples), Some(split)) = (b.samples, split) else {
        return Ok((y, None));
    };
    let v: Vec<f32> = Vec::try_from(trg.to_device(Device::Cpu).contiguous().view([-1]))?;
    let (truth, valid) = render_truth(hb_size(x), samples, split, &v, dj.dim() as usize)?;
    let truth = truth.to_device(x.device());
    let (l1, psnr) = errors(&y, &truth)?;
    let (id_l1, id_psnr) = errors(x, &truth)?;
    for r in (0..valid.len()).filter(|&r| valid[r]) {
        acc.gt_pairs += 1;
        acc.gt_l1 += l1[r];
        acc.gt_psnr += psnr[r];
        acc.id_l1 += id_l1[r];
        acc.id_psnr += id_psnr[r];
    }
    Ok((y, Some(truth)))
}

/// The grids and the report (its JSON and Markdown are written by the caller).
fn write_report(
    opts: &EvalOptions,
    parts: &Parts,
    classifier: ClassifierReport,
    m: Measured,
    iteration: Option<u64>,
) -> Result<EvalReport> {
    let cfg = &opts.data;
    let out = &opts.out;
    let grid_path = out.join("grid.png");
    let stack = |cols: &[Vec<Tensor>]| -> Vec<Tensor> { cols.iter().map(|c| Tensor::cat(c, 0)).collect() };
    image_io::save_png(&grid_path, &image_io::grid(&stack(&m.grid_cols)))?;
    let truth_path = out.join("grid-truth.png");
    let grid_truth = if m.any_truth {
        image_io::save_png(&truth_path, &image_io::grid(&stack(&m.truth_cols)))?;
        Some(truth_path.display().to_string())
    } else {
        None
    };
    Ok(EvalReport {
        checkpoint: opts.checkpoint.display().to_string(),
        iteration,
        data: DataSummary {
            dataset: cfg.data.dataset,
            synthetic_split: (cfg.data.dataset == DatasetKind::Synthetic).then_some(cfg.data.synthetic_split),
            image_size: cfg.data.image_size,
            seed: cfg.seed,
            layout: parts.layout.clone(),
        },
        device: format!("{:?}", opts.device),
        max_images: opts.max_images,
        classifier,
        datasets: m.datasets,
        overall: m.overall,
        files: Files {
            json: out.join("eval.json").display().to_string(),
            report: out.join("report.md").display().to_string(),
            grid: grid_path.display().to_string(),
            grid_truth,
        },
        seconds: Timings { classifier: 0.0, translate: 0.0, total: 0.0 },
    })
}

fn hb_size(x: &Tensor) -> u32 {
    x.size()[3] as u32
}

/// A few lines for the terminal.
pub fn summary(r: &EvalReport) -> String {
    report::terminal(r)
}
