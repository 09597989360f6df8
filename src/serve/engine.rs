//! The inference worker: one thread owns the model and the face detector (tch tensors are `Send`
//! but not `Sync`), fed by a bounded queue. Jobs that arrive within `batch_wait` of each other run
//! as one G batch; a job whose client has gone (its reply channel closed) or whose deadline passed
//! is dropped before it costs anything. A full queue is refused at once, never buffered.

use super::metrics::Metrics;
use super::ApiError;
use crate::face::{self, Align, AlignedFace, DetectOptions, Detector, Face, Which};
use crate::inference::{Model, Target};
use crate::model::NormStats;
use crate::precision::Precision;
use image::RgbImage;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};
use tokio::sync::oneshot;

/// How the worker batches.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// The most images in one G batch.
    pub max_batch: usize,
    /// How long the first job of a batch waits for company.
    pub batch_wait: Duration,
    /// Jobs waiting beyond the one running; more are refused (503).
    pub queue: usize,
    pub precision: Precision,
    pub detect: DetectOptions,
}

pub enum Work {
    Detect { image: RgbImage },
    Translate { image: RgbImage, target: Target, which: Which, align: Align },
}

/// One face as `/v1/detect` reports it, with D's reading of its labels.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaceInfo {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub prob: f32,
    pub landmarks: [[f32; 2]; 5],
    /// Label name → 0 or 1 as D's classifier predicts it on the aligned face (empty without a D).
    pub labels: std::collections::BTreeMap<String, f32>,
}

pub enum Done {
    Detected(Vec<FaceInfo>),
    /// The photo with its faces translated, or the whole image translated (`size`²).
    Translated {
        image: RgbImage,
        faces: usize,
    },
}

type Reply = oneshot::Sender<Result<Done, ApiError>>;

struct Job {
    work: Work,
    deadline: Instant,
    reply: Reply,
}

/// The handle the HTTP side holds.
pub struct Engine {
    tx: Option<SyncSender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Engine {
    pub fn start(
        model: Model,
        detector: Option<Detector>,
        cfg: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let (tx, rx) = sync_channel::<Job>(cfg.queue);
        let m = metrics.clone();
        let worker = std::thread::Builder::new()
            .name("stargan-inference".into())
            .spawn(move || {
                let w = Worker { model, detector, cfg, metrics: m };
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let until = Instant::now() + cfg.batch_wait;
                    while batch.len() < cfg.max_batch {
                        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(j) => batch.push(j),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    w.metrics.queue_depth.fetch_sub(batch.len(), Ordering::SeqCst);
                    // A libtorch failure that panics (out of memory in a large batch) costs this
                    // batch (its clients get 500s), not the worker.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run(batch))).is_err() {
                        tracing::error!("the inference worker failed on a batch; its requests got 500");
                    }
                }
            })
            .expect("spawn the inference thread");
        Engine { tx: Some(tx), worker: Some(worker), metrics }
    }

    /// Queue `work`; `Err` (503) when the queue is full or the worker has stopped.
    pub fn submit(
        &self,
        work: Work,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<Done, ApiError>>, ApiError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(ApiError::shutting_down)?;
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Job { work, deadline, reply }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::busy(),
                    TrySendError::Disconnected(_) => ApiError::shutting_down(),
                })
            }
        }
    }

    /// Stop taking work, let the worker finish what is queued, and wait for it.
    pub fn shutdown(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    model: Model,
    detector: Option<Detector>,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
}

/// One network input of a job: a face (with where it goes back) or the whole image.
struct Unit {
    job: usize,
    x: Tensor,
    face: Option<AlignedFace>,
}

impl Worker {
    fn device(&self) -> Device {
        self.model.g.device()
    }

    fn run(&self, jobs: Vec<Job>) {
        let now = Instant::now();
        let mut live = Vec::new();
        for j in jobs {
            if j.reply.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            } else if j.deadline <= now {
                let _ = j.reply.send(Err(ApiError::deadline()));
            } else {
                live.push(j);
            }
        }
        let mut units = Vec::new();
        let mut translate = Vec::new();
        for (i, j) in live.into_iter().enumerate() {
            match &j.work {
                Work::Detect { image } => {
                    let r = self.detect(image);
                    let _ = j.reply.send(r.map(Done::Detected));
                }
                Work::Translate { image, target, which, align } => {
                    match self.prepare(i, image, target, *which, *align) {
                        Ok(u) => {
                            units.extend(u);
                            translate.push((i, j));
                        }
                        Err(e) => {
                            let _ = j.reply.send(Err(e));
                        }
                    }
                }
            }
        }
        if translate.is_empty() {
            return;
        }
        let targets: Vec<&Target> = units
            .iter()
            .map(|u| match &translate.iter().find(|(i, _)| *i == u.job).expect("a unit's job").1.work {
                Work::Translate { target, .. } => target,
                Work::Detect { .. } => unreachable!("detect jobs have no units"),
            })
            .collect();
        let outputs = self.generate(&units, &targets);
        for (i, j) in translate {
            let Work::Translate { image, .. } = j.work else { continue };
            let mine: Vec<(&Unit, &Result<RgbImage, ApiError>)> =
                units.iter().zip(&outputs).filter(|(u, _)| u.job == i).collect();
            let result = (|| {
                if mine.len() == 1 && mine[0].0.face.is_none() {
                    return Ok(Done::Translated { image: mine[0].1.clone()?, faces: 0 });
                }
                let size = self.model.input_size();
                let mut composite = image.clone();
                for (u, out) in &mine {
                    let f = u.face.as_ref().expect("face units carry their face");
                    face::paste(
                        &mut composite,
                        out.as_ref().map_err(Clone::clone)?,
                        &f.network_to_photo(size),
                    );
                }
                Ok(Done::Translated { image: composite, faces: mine.len() })
            })();
            let _ = j.reply.send(result);
        }
    }

    fn faces(&self, image: &RgbImage) -> Result<Vec<Face>, ApiError> {
        let d = self.detector.as_ref().ok_or_else(|| {
            ApiError::new(
                501,
                "no_detector",
                format!("this server has no face detector: {}", face::HOW_TO_GET_WEIGHTS),
            )
        })?;
        d.detect(image, &self.cfg.detect).map_err(ApiError::from)
    }

    fn detect(&self, image: &RgbImage) -> Result<Vec<FaceInfo>, ApiError> {
        let faces = self.faces(image)?;
        let mut out = Vec::new();
        for f in faces {
            let mut labels = std::collections::BTreeMap::new();
            if let Some(a) = face::align(image, &f) {
                let x = self.model.input_of(&a.image)?;
                for (k, domain) in self.model.layout.domains.iter().enumerate() {
                    if let Some(p) = self.model.predict_labels(k, &x) {
                        let p = Vec::<f32>::try_from(p.to_device(Device::Cpu).view([-1]))
                            .map_err(crate::error::Error::from)?;
                        labels.extend(domain.labels.iter().cloned().zip(p));
                    }
                }
            }
            out.push(FaceInfo { bbox: f.bbox, prob: f.prob, landmarks: f.landmarks, labels });
        }
        Ok(out)
    }

    /// The network inputs of one translate job.
    fn prepare(
        &self,
        job: usize,
        image: &RgbImage,
        target: &Target,
        which: Which,
        align: Align,
    ) -> Result<Vec<Unit>, ApiError> {
        // A target the model cannot take fails here, before any network runs.
        let _ = self.model.condition_given(target, self.device(), &|_| None).map_err(ApiError::target)?;
        let whole = |img: &RgbImage| -> Result<Vec<Unit>, ApiError> {
            let x = self.model.input_of(img)?;
            Ok(vec![Unit { job, x, face: None }])
        };
        // Without a detector (no weights found at start), `auto` translates photos whole, as
        // `serve` warned; `on` is refused (501).
        let undetectable = self.detector.is_none() && align.whole_without_faces();
        if undetectable || !align.detects(&self.model, || Ok(image.dimensions()))? {
            return whole(image);
        }
        let found = self.faces(image)?;
        if found.is_empty() && align.whole_without_faces() {
            return whole(image);
        }
        let aligned = face::choose(image, found, &self.cfg.detect, which).map_err(ApiError::faces)?;
        aligned
            .into_iter()
            .map(|a| {
                let x = self.model.input_of(&a.image)?;
                Ok(Unit { job, x, face: Some(a) })
            })
            .collect()
    }

    /// G on every unit, `max_batch` at a time, D once per chunk for the labels edits keep; per-image
    /// instance-norm statistics, so a batch gives each image what it would get alone.
    fn generate(&self, units: &[Unit], targets: &[&Target]) -> Vec<Result<RgbImage, ApiError>> {
        let mut out = Vec::with_capacity(units.len());
        let n_domains = self.model.layout.domains.len();
        let step = self.cfg.max_batch.max(1);
        for (chunk, targets) in units.chunks(step).zip(targets.chunks(step)) {
            let xs: Vec<&Tensor> = chunk.iter().map(|u| &u.x).collect();
            let x = Tensor::cat(&xs, 0);
            let edits = targets.iter().any(|t| matches!(t, Target::Edits(_)));
            let read: Vec<Option<Tensor>> =
                (0..n_domains).map(|k| if edits { self.model.predict_labels(k, &x) } else { None }).collect();
            let cs: Result<Vec<Tensor>, ApiError> = targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mine = |k: usize| read[k].as_ref().map(|p| p.get(i as i64).unsqueeze(0));
                    self.model.condition_given(t, self.device(), &mine).map_err(ApiError::target)
                })
                .collect();
            let cs = match cs {
                Ok(cs) => cs,
                Err(e) => {
                    out.extend(chunk.iter().map(|_| Err(e.clone())));
                    continue;
                }
            };
            self.metrics.observe_batch(chunk.len());
            let y =
                self.model.translate(&x, &Tensor::cat(&cs, 0), NormStats::PerImageFrozen, self.cfg.precision);
            for i in 0..chunk.len() {
                out.push(crate::image_io::to_rgb_image(&y.get(i as i64)).map_err(ApiError::from));
            }
        }
        out
    }
}
