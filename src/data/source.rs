//! What the training loop consumes: labelled image sources and a deterministic batch loader.
//!
//! A [`Source`] is one labelled dataset (CelebA-style attributes, class folders, or the built-in
//! synthetic faces) that can decode its i-th image into a CHW buffer. The [`Loader`] turns sources
//! into batches: batch `b` of source `k` is a pure function of (seed, k, b), so a run is the same
//! whatever the thread count, and a resumed run continues with exactly the batches it would have
//! seen. Images are decoded in parallel (rayon) and the next batches are prepared on a background
//! thread while the model computes.

use super::celeba::{self, Sample};
use super::error::DataError;
use super::folder::ImageFolder;
use super::synthetic::{self, LabelSet, Renderer};
use super::transform::Pipeline;
use crate::labels::{Domain, LabelKind};
use crate::rng::{Purpose, Stream};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One image's label: the selected attributes as 0/1, or a class index.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    Attributes(Vec<f32>),
    Class(i64),
}

/// A labelled image dataset.
pub trait Source: Send + Sync {
    /// The dataset's name and label names.
    fn domain(&self) -> &Domain;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Side of the square images it produces.
    fn image_size(&self) -> u32;
    /// Decode image `i` (optionally mirrored) into `out` (3·size·size floats in [-1, 1]).
    fn load(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<(), DataError>;
    fn label(&self, i: usize) -> Label;
    /// A short name for image `i` (its file name), for result files and messages.
    fn name(&self, i: usize) -> String;
    /// The built-in synthetic data, whose ground truth evaluation can use.
    fn as_synthetic(&self) -> Option<&SyntheticSource> {
        None
    }
}

/// CelebA-style data: an attribute file (CelebA format or CSV) and a folder of images.
pub struct AttributeSource {
    domain: Domain,
    image_dir: PathBuf,
    samples: Vec<Sample>,
    pipeline: Pipeline,
}

impl AttributeSource {
    pub fn new(domain: Domain, image_dir: PathBuf, samples: Vec<Sample>, pipeline: Pipeline) -> Self {
        Self { domain, image_dir, samples, pipeline }
    }
}

impl Source for AttributeSource {
    fn domain(&self) -> &Domain {
        &self.domain
    }
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn image_size(&self) -> u32 {
        self.pipeline.size()
    }
    fn load(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<(), DataError> {
        self.pipeline.load_into(self.image_dir.join(&self.samples[i].filename), flip, out)
    }
    fn label(&self, i: usize) -> Label {
        Label::Attributes(self.samples[i].label.clone())
    }
    fn name(&self, i: usize) -> String {
        self.samples[i].filename.clone()
    }
}

/// RaFD-style data: one sub-folder of images per class.
pub struct FolderSource {
    domain: Domain,
    folder: ImageFolder,
    pipeline: Pipeline,
}

impl FolderSource {
    pub fn new(name: &str, folder: ImageFolder, pipeline: Pipeline) -> Self {
        let domain = Domain { name: name.into(), kind: LabelKind::OneHot, labels: folder.classes.clone() };
        Self { domain, folder, pipeline }
    }
}

impl Source for FolderSource {
    fn domain(&self) -> &Domain {
        &self.domain
    }
    fn len(&self) -> usize {
        self.folder.samples.len()
    }
    fn image_size(&self) -> u32 {
        self.pipeline.size()
    }
    fn load(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<(), DataError> {
        self.pipeline.load_into(&self.folder.samples[i].0, flip, out)
    }
    fn label(&self, i: usize) -> Label {
        Label::Class(self.folder.samples[i].1 as i64)
    }
    fn name(&self, i: usize) -> String {
        let path = &self.folder.samples[i].0;
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{}/{file}", self.domain.labels[self.folder.samples[i].1])
    }
}

/// The built-in procedural faces, rendered on the fly: `count` images starting at `first`.
pub struct SyntheticSource {
    domain: Domain,
    set: LabelSet,
    seed: u64,
    first: u64,
    count: usize,
    size: u32,
}

/// Images in the built-in training split (rendered on demand, so this costs nothing).
pub const SYNTHETIC_TRAIN: usize = 20_000;
/// Held-out images, drawn from indices after the training ones.
pub const SYNTHETIC_TEST: usize = 1_000;

impl SyntheticSource {
    pub fn new(set: LabelSet, seed: u64, test: bool, size: u32) -> Result<Self, DataError> {
        Renderer::new(size).map_err(|e| DataError::Transform(e.to_string()))?;
        let names = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let domain = match set {
            LabelSet::Celeba => Domain {
                name: "CelebA".into(),
                kind: LabelKind::MultiLabel,
                labels: names(&synthetic::CELEBA_ATTRIBUTES),
            },
            LabelSet::Rafd => Domain {
                name: "RaFD".into(),
                kind: LabelKind::OneHot,
                labels: names(&synthetic::RAFD_EXPRESSIONS),
            },
        };
        let (first, count) =
            if test { (SYNTHETIC_TRAIN as u64, SYNTHETIC_TEST) } else { (0, SYNTHETIC_TRAIN) };
        Ok(Self { domain, set, seed, first, count, size })
    }

    /// Only the first `n` images (all when `None` or more than there are): a smaller training
    /// split, the held-out part untouched.
    pub fn first_faces(mut self, n: Option<u32>) -> Self {
        if let Some(n) = n {
            self.count = self.count.min(n as usize);
        }
        self
    }

    /// The latent content and labels of image `i` (ground truth for evaluation).
    pub fn sample(&self, i: usize) -> (synthetic::Content, synthetic::Labels) {
        synthetic::sample(self.set, self.seed, self.first + i as u64)
    }

    pub fn label_set(&self) -> LabelSet {
        self.set
    }
}

thread_local! {
    // Renderers own a pixmap; one per thread and size avoids reallocating it for every image.
    static RENDERER: std::cell::RefCell<Option<Renderer>> = const { std::cell::RefCell::new(None) };
}

/// Render `content` with `labels` into `out` (CHW, [-1, 1]) on this thread's renderer.
pub fn render_into(
    size: u32,
    content: &synthetic::Content,
    labels: &synthetic::Labels,
    out: &mut [f32],
) -> Result<(), DataError> {
    RENDERER.with(|r| {
        let mut r = r.borrow_mut();
        if r.as_ref().map(Renderer::size) != Some(size) {
            *r = Some(Renderer::new(size).map_err(|e| DataError::Transform(e.to_string()))?);
        }
        let renderer = r.as_mut().expect("renderer was just created");
        renderer.render_chw_into(content, labels, out).map_err(|e| DataError::Transform(e.to_string()))
    })
}

impl Source for SyntheticSource {
    fn domain(&self) -> &Domain {
        &self.domain
    }
    fn len(&self) -> usize {
        self.count
    }
    fn image_size(&self) -> u32 {
        self.size
    }
    fn load(&self, i: usize, flip: bool, out: &mut [f32]) -> Result<(), DataError> {
        let (content, labels) = self.sample(i);
        render_into(self.size, &content, &labels, out)?;
        if flip {
            flip_chw(out, self.size as usize);
        }
        Ok(())
    }
    fn label(&self, i: usize) -> Label {
        let (_, labels) = self.sample(i);
        match self.set {
            LabelSet::Celeba => Label::Attributes(labels.celeba().to_vector().to_vec()),
            LabelSet::Rafd => Label::Class(labels.expression.index() as i64),
        }
    }
    fn name(&self, i: usize) -> String {
        format!("{:06}.png", self.first + i as u64)
    }
    fn as_synthetic(&self) -> Option<&SyntheticSource> {
        Some(self)
    }
}

/// Mirror a CHW buffer left to right.
fn flip_chw(buf: &mut [f32], size: usize) {
    for row in buf.chunks_exact_mut(size) {
        row.reverse();
    }
}

/// Split a list of attribute samples for user data: the reference's shuffle (seed 1234) with a test
/// set of 1,999 images when there are enough, else a tenth of the data.
pub fn user_split(samples: Vec<Sample>) -> celeba::Split {
    let test = celeba::REFERENCE_TEST_SIZE.min(samples.len() / 10);
    celeba::split(samples, celeba::REFERENCE_SPLIT_SEED, test)
}

/// A batch on the host, ready to become tensors.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// Which source of the loader it comes from.
    pub source: usize,
    /// `n·3·size·size` floats, CHW per image.
    pub images: Vec<f32>,
    pub labels: Vec<Label>,
    /// Source indices of the images (for names and ground truth).
    pub indices: Vec<usize>,
    pub size: u32,
}

impl HostBatch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Batches from one or more sources, shuffled per epoch like PyTorch's DataLoader(shuffle=True,
/// drop_last=False), with random horizontal flips when training.
///
/// A loader may read one shard of each epoch ([`Loader::shard`]): DistributedSampler's semantics,
/// the epoch's order padded by wrapping to a multiple of the world size and rank r taking every
/// world-th position from r, so the shards are disjoint, equal in size, and together the epoch.
pub struct Loader {
    sources: Vec<Arc<dyn Source>>,
    batch_size: usize,
    rank: usize,
    world: usize,
    seed: u64,
    shuffle: bool,
    flip: bool,
    skipped: Arc<AtomicUsize>,
    warned: Arc<std::sync::Once>,
}

impl Loader {
    pub fn new(
        sources: Vec<Arc<dyn Source>>,
        batch_size: usize,
        seed: u64,
        train: bool,
    ) -> Result<Self, DataError> {
        for s in &sources {
            if s.is_empty() {
                return Err(DataError::NoImages(s.domain().name.clone()));
            }
            if batch_size > s.len() && train {
                return Err(DataError::BatchTooLarge {
                    batch: batch_size,
                    images: s.len(),
                    dataset: s.domain().name.clone(),
                });
            }
        }
        Ok(Self {
            sources,
            batch_size,
            rank: 0,
            world: 1,
            seed,
            shuffle: train,
            flip: train,
            skipped: Arc::default(),
            warned: Arc::new(std::sync::Once::new()),
        })
    }

    /// This loader reading only rank `rank`'s shard of a world of `world` (`batch_size` is then per
    /// rank, and must fit in a shard).
    pub fn shard(mut self, rank: usize, world: usize) -> Result<Self, DataError> {
        assert!(rank < world, "rank {rank} of {world}");
        for s in &self.sources {
            let shard = s.len().div_ceil(world);
            if self.batch_size > shard && self.shuffle {
                return Err(DataError::BatchTooLarge {
                    batch: self.batch_size,
                    images: shard,
                    dataset: format!("{} (one of {world} shards)", s.domain().name),
                });
            }
        }
        self.rank = rank;
        self.world = world;
        Ok(self)
    }

    pub fn sources(&self) -> &[Arc<dyn Source>] {
        &self.sources
    }

    /// Images of source `k` in this loader's shard of an epoch.
    fn shard_len(&self, k: usize) -> usize {
        self.sources[k].len().div_ceil(self.world)
    }

    pub fn batches_per_epoch(&self, source: usize) -> u64 {
        self.shard_len(source).div_ceil(self.batch_size) as u64
    }

    /// Images that could not be decoded and were replaced so far.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The source indices of batch `b` of source `k`.
    pub fn indices(&self, k: usize, b: u64) -> (u64, Vec<usize>) {
        let n = self.sources[k].len();
        let per_epoch = self.batches_per_epoch(k);
        let (epoch, pos) = (b / per_epoch, (b % per_epoch) as usize);
        let order: Vec<usize> = if self.shuffle {
            Stream::new(self.seed, Purpose::EpochOrder, &[k as u64, epoch]).permutation(n)
        } else {
            (0..n).collect()
        };
        let shard: Vec<usize> = if self.world == 1 {
            order
        } else {
            // DistributedSampler: pad by wrapping to world·⌈n/world⌉, then every world-th from rank.
            let total = self.shard_len(k) * self.world;
            (self.rank..total).step_by(self.world).map(|p| order[p % n]).collect()
        };
        let end = ((pos + 1) * self.batch_size).min(shard.len());
        (epoch, shard[pos * self.batch_size..end].to_vec())
    }

    /// Batch `b` of source `k`, decoded in parallel. An image that cannot be decoded is replaced by
    /// the next decodable one (counted, warned about once): a corrupt file never stops training.
    pub fn batch(&self, k: usize, b: u64) -> Result<HostBatch, DataError> {
        let source = &self.sources[k];
        let (epoch, mut indices) = self.indices(k, b);
        let size = source.image_size();
        let per_image = 3 * (size as usize) * (size as usize);
        let mut images = vec![0f32; indices.len() * per_image];
        let results: Vec<Result<usize, DataError>> = images
            .par_chunks_mut(per_image)
            .zip(indices.par_iter())
            .map(|(out, &i)| {
                let n = source.len();
                let mut last_err = None;
                for attempt in 0..n.min(64) {
                    let j = (i + attempt) % n;
                    let flip = self.flip
                        && Stream::new(self.seed, Purpose::Flip, &[k as u64, epoch, j as u64]).coin();
                    match source.load(j, flip, out) {
                        Ok(()) => return Ok(j),
                        Err(e) => {
                            self.skipped.fetch_add(1, Ordering::Relaxed);
                            self.warned.call_once(|| {
                                tracing::warn!(
                                    "skipping an unreadable image (further ones are counted silently): {e}"
                                )
                            });
                            last_err = Some(e);
                        }
                    }
                }
                Err(last_err.expect("at least one attempt"))
            })
            .collect();
        for (slot, r) in indices.iter_mut().zip(results) {
            *slot = r?;
        }
        let labels = indices.iter().map(|&i| source.label(i)).collect();
        Ok(HostBatch { source: k, images, labels, indices, size })
    }

    /// Every batch of one pass over source `k`: in file order and unflipped for a test loader
    /// (`train` false), in epoch 0's shuffled order with its flips for a training loader.
    pub fn sequential(&self, k: usize) -> impl Iterator<Item = Result<HostBatch, DataError>> + '_ {
        (0..self.batches_per_epoch(k)).map(move |b| self.batch(k, b))
    }
}

/// Prepares the batches of iterations `start..end` (one per source and iteration) on a background
/// thread, `depth` iterations ahead of the consumer.
pub struct Prefetcher {
    rx: std::sync::mpsc::Receiver<Result<Vec<HostBatch>, DataError>>,
    _worker: std::thread::JoinHandle<()>,
}

impl Prefetcher {
    pub fn spawn(loader: Arc<Loader>, start: u64, end: u64, depth: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        let worker = std::thread::spawn(move || {
            for it in start..end {
                let batches: Result<Vec<HostBatch>, DataError> =
                    (0..loader.sources.len()).map(|k| loader.batch(k, it)).collect();
                let failed = batches.is_err();
                if tx.send(batches).is_err() || failed {
                    return;
                }
            }
        });
        Self { rx, _worker: worker }
    }

    /// The next iteration's batches (`None` once the range is exhausted).
    pub fn next(&self) -> Option<Result<Vec<HostBatch>, DataError>> {
        self.rx.recv().ok()
    }
}
