//! MTCNN (Zhang et al. 2016), the variant `facenet-pytorch` 2.6.0 ships: P-Net over an image
//! pyramid, R-Net and O-Net on the survivors, each stage followed by box regression and
//! non-maximum suppression. Every step follows `facenet_pytorch/models/utils/detect_face.py`
//! operation for operation (same float32 arithmetic, same order, same crops), so that boxes,
//! landmarks and probabilities agree with it on the same pixels (tests/faces.rs holds us to that).

use super::nms::{nms_iou, nms_min};
use crate::checkpoint::read_tensors;
use crate::error::{Error, Result};
use image::RgbImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// One detected face, in the photo's pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// x1, y1, x2, y2.
    pub bbox: [f32; 4],
    /// O-Net's face probability.
    pub prob: f32,
    /// Left eye, right eye, nose, left and right mouth corners (as seen in the image), (x, y).
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }
}

/// The detector's knobs, with facenet-pytorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectOptions {
    /// The smallest face searched for, in pixels (the pyramid's largest scale is 12 / this).
    pub min_face_size: f64,
    /// Face-probability thresholds of P-, R- and O-Net.
    pub thresholds: [f32; 3],
    /// The pyramid's scale step.
    pub factor: f64,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions { min_face_size: 20.0, thresholds: [0.6, 0.7, 0.7], factor: 0.709 }
    }
}

impl DetectOptions {
    pub fn check(&self) -> Result<()> {
        if !(self.min_face_size.is_finite() && self.min_face_size >= 12.0) {
            return Err(Error::Input(format!(
                "`min_face_size` is {}; the detector's smallest window is 12 pixels",
                self.min_face_size
            )));
        }
        if !(self.factor > 0.1 && self.factor < 0.95) {
            return Err(Error::Input(format!("the pyramid factor {} is outside (0.1, 0.95)", self.factor)));
        }
        if self.thresholds.iter().any(|t| !(0.0..1.0).contains(t)) {
            return Err(Error::Input(format!("thresholds {:?} must lie in [0, 1)", self.thresholds)));
        }
        Ok(())
    }
}

/// The three weight files, named as in the facenet-pytorch wheel.
pub const WEIGHT_FILES: [&str; 3] = ["pnet.pt", "rnet.pt", "onet.pt"];

type Shapes = &'static [(&'static str, &'static [i64])];

const PNET: Shapes = &[
    ("conv1.weight", &[10, 3, 3, 3]),
    ("conv1.bias", &[10]),
    ("prelu1.weight", &[10]),
    ("conv2.weight", &[16, 10, 3, 3]),
    ("conv2.bias", &[16]),
    ("prelu2.weight", &[16]),
    ("conv3.weight", &[32, 16, 3, 3]),
    ("conv3.bias", &[32]),
    ("prelu3.weight", &[32]),
    ("conv4_1.weight", &[2, 32, 1, 1]),
    ("conv4_1.bias", &[2]),
    ("conv4_2.weight", &[4, 32, 1, 1]),
    ("conv4_2.bias", &[4]),
];

const RNET: Shapes = &[
    ("conv1.weight", &[28, 3, 3, 3]),
    ("conv1.bias", &[28]),
    ("prelu1.weight", &[28]),
    ("conv2.weight", &[48, 28, 3, 3]),
    ("conv2.bias", &[48]),
    ("prelu2.weight", &[48]),
    ("conv3.weight", &[64, 48, 2, 2]),
    ("conv3.bias", &[64]),
    ("prelu3.weight", &[64]),
    ("dense4.weight", &[128, 576]),
    ("dense4.bias", &[128]),
    ("prelu4.weight", &[128]),
    ("dense5_1.weight", &[2, 128]),
    ("dense5_1.bias", &[2]),
    ("dense5_2.weight", &[4, 128]),
    ("dense5_2.bias", &[4]),
];

const ONET: Shapes = &[
    ("conv1.weight", &[32, 3, 3, 3]),
    ("conv1.bias", &[32]),
    ("prelu1.weight", &[32]),
    ("conv2.weight", &[64, 32, 3, 3]),
    ("conv2.bias", &[64]),
    ("prelu2.weight", &[64]),
    ("conv3.weight", &[64, 64, 3, 3]),
    ("conv3.bias", &[64]),
    ("prelu3.weight", &[64]),
    ("conv4.weight", &[128, 64, 2, 2]),
    ("conv4.bias", &[128]),
    ("prelu4.weight", &[128]),
    ("dense5.weight", &[256, 1152]),
    ("dense5.bias", &[256]),
    ("prelu5.weight", &[256]),
    ("dense6_1.weight", &[2, 256]),
    ("dense6_1.bias", &[2]),
    ("dense6_2.weight", &[4, 256]),
    ("dense6_2.bias", &[4]),
    ("dense6_3.weight", &[10, 256]),
    ("dense6_3.bias", &[10]),
];

/// One of the three networks: its tensors by state-dict key, shapes checked at load.
struct Net {
    t: HashMap<String, Tensor>,
}

impl Net {
    fn load(path: &Path, shapes: Shapes, device: Device) -> Result<Self> {
        let mut file = read_tensors(path)?;
        let mut t = HashMap::new();
        for &(key, shape) in shapes {
            let v = file.tensors.remove(key).ok_or_else(|| {
                Error::Input(format!(
                    "{}: no `{key}` tensor; is this facenet-pytorch's MTCNN file?",
                    path.display()
                ))
            })?;
            if v.size() != shape {
                return Err(Error::Input(format!(
                    "{}: `{key}` has shape {:?}, MTCNN's is {shape:?}",
                    path.display(),
                    v.size()
                )));
            }
            let v = v.to_kind(Kind::Float);
            if !bool::try_from(v.isfinite().all())? {
                return Err(Error::Input(format!("{}: `{key}` holds non-finite values", path.display())));
            }
            t.insert(key.to_string(), v.to_device(device));
        }
        if let Some(extra) = file.tensors.keys().next() {
            return Err(Error::Input(format!("{}: unexpected tensor `{extra}`", path.display())));
        }
        Ok(Net { t })
    }

    fn w(&self, key: &str) -> &Tensor {
        &self.t[key]
    }

    fn conv(&self, x: &Tensor, name: &str) -> Tensor {
        let (w, b) = (self.w(&format!("{name}.weight")), self.w(&format!("{name}.bias")));
        x.conv2d(w, Some(b), [1, 1], [0, 0], [1, 1], 1)
    }

    fn prelu(&self, x: &Tensor, name: &str) -> Tensor {
        x.prelu(self.w(&format!("{name}.weight")))
    }

    fn dense(&self, x: &Tensor, name: &str) -> Tensor {
        x.linear(self.w(&format!("{name}.weight")), Some(self.w(&format!("{name}.bias"))))
    }
}

fn pool(x: &Tensor, k: i64, s: i64) -> Tensor {
    x.max_pool2d([k, k], [s, s], [0, 0], [1, 1], true)
}

/// The three networks of the cascade.
pub struct Detector {
    pnet: Net,
    rnet: Net,
    onet: Net,
    device: Device,
}

/// A candidate box: x1, y1, x2, y2, score and four regression offsets (P-Net's until R-Net
/// replaces them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cand {
    pub b: [f32; 4],
    pub score: f32,
    pub reg: [f32; 4],
}

impl Detector {
    /// Read `pnet.pt`, `rnet.pt` and `onet.pt` from `dir`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let file = |n: &str| dir.join(n);
        for n in WEIGHT_FILES {
            if !file(n).is_file() {
                return Err(Error::Input(format!(
                    "the face detector's weights are not in {} (no {n}); {}",
                    dir.display(),
                    super::HOW_TO_GET_WEIGHTS
                )));
            }
        }
        Ok(Detector {
            pnet: Net::load(&file("pnet.pt"), PNET, device)?,
            rnet: Net::load(&file("rnet.pt"), RNET, device)?,
            onet: Net::load(&file("onet.pt"), ONET, device)?,
            device,
        })
    }

    /// Where the weights are looked for, in order: `explicit`, `$STARGAN_FACE_MODELS`, the
    /// `face-models` folder `scripts/setup.sh` fills (beside libtorch in this checkout).
    pub fn find(explicit: Option<&Path>, device: Device) -> Result<Self> {
        if let Some(dir) = explicit {
            return Self::load(dir, device);
        }
        let candidates = default_dirs();
        match candidates.iter().find(|d| WEIGHT_FILES.iter().all(|n| d.join(n).is_file())) {
            Some(dir) => Self::load(dir, device),
            None => Err(Error::Input(format!(
                "the face detector's weights were not found (looked in {}); {}",
                candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
                super::HOW_TO_GET_WEIGHTS
            ))),
        }
    }

    fn pnet(&self, x: &Tensor) -> (Tensor, Tensor) {
        let n = &self.pnet;
        let x = pool(&n.prelu(&n.conv(x, "conv1"), "prelu1"), 2, 2);
        let x = n.prelu(&n.conv(&x, "conv2"), "prelu2");
        let x = n.prelu(&n.conv(&x, "conv3"), "prelu3");
        let a = n.conv(&x, "conv4_1").softmax(1, Kind::Float);
        let b = n.conv(&x, "conv4_2");
        (b, a)
    }

    fn rnet(&self, x: &Tensor) -> (Tensor, Tensor) {
        let n = &self.rnet;
        let x = pool(&n.prelu(&n.conv(x, "conv1"), "prelu1"), 3, 2);
        let x = pool(&n.prelu(&n.conv(&x, "conv2"), "prelu2"), 3, 2);
        let x = n.prelu(&n.conv(&x, "conv3"), "prelu3");
        let x = x.permute([0, 3, 2, 1]).contiguous();
        let x = n.prelu(&n.dense(&x.view([x.size()[0], -1]), "dense4"), "prelu4");
        let a = n.dense(&x, "dense5_1").softmax(1, Kind::Float);
        let b = n.dense(&x, "dense5_2");
        (b, a)
    }

    fn onet(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let n = &self.onet;
        let x = pool(&n.prelu(&n.conv(x, "conv1"), "prelu1"), 3, 2);
        let x = pool(&n.prelu(&n.conv(&x, "conv2"), "prelu2"), 3, 2);
        let x = pool(&n.prelu(&n.conv(&x, "conv3"), "prelu3"), 2, 2);
        let x = n.prelu(&n.conv(&x, "conv4"), "prelu4");
        let x = x.permute([0, 3, 2, 1]).contiguous();
        let x = n.prelu(&n.dense(&x.view([x.size()[0], -1]), "dense5"), "prelu5");
        let a = n.dense(&x, "dense6_1").softmax(1, Kind::Float);
        let b = n.dense(&x, "dense6_2");
        let c = n.dense(&x, "dense6_3");
        (b, c, a)
    }

    /// All faces in `img`, largest box first (facenet-pytorch's `select_largest` order).
    pub fn detect(&self, img: &RgbImage, opts: &DetectOptions) -> Result<Vec<Face>> {
        opts.check()?;
        tch::no_grad(|| self.detect_inner(img, opts))
    }

    fn detect_inner(&self, img: &RgbImage, opts: &DetectOptions) -> Result<Vec<Face>> {
        let (w, h) = (img.width() as i64, img.height() as i64);
        if w == 0 || h == 0 {
            return Ok(Vec::new());
        }
        // [1, 3, H, W] as a view of the HWC bytes, as facenet-pytorch's `permute(0, 3, 1, 2)` makes
        // it: the same (channels-last) strides, so libtorch takes the same kernels.
        let imgs = Tensor::from_slice(img.as_raw())
            .view([1, h, w, 3])
            .to_device(self.device)
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);

        // First stage: P-Net on every scale of the pyramid.
        let mut boxes: Vec<Cand> = Vec::new();
        for scale in pyramid(w, h, opts) {
            let size = [(h as f64 * scale + 1.0) as i64, (w as f64 * scale + 1.0) as i64];
            let im = normalise(&imgs.adaptive_avg_pool2d(size));
            let (reg, probs) = self.pnet(&im);
            let found = generate_boxes(&reg, &probs, scale as f32, opts.thresholds[0])?;
            let pick = nms_iou(&found, 0.5);
            boxes.extend(pick.into_iter().map(|i| found[i]));
        }
        let pick = nms_iou(&boxes, 0.7);
        let mut boxes: Vec<Cand> = pick
            .into_iter()
            .map(|i| {
                let c = boxes[i];
                let (rw, rh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b = [
                    c.b[0] + c.reg[0] * rw,
                    c.b[1] + c.reg[1] * rh,
                    c.b[2] + c.reg[2] * rw,
                    c.b[3] + c.reg[3] * rh,
                ];
                Cand { b: rerec(b), score: c.score, reg: [0.0; 4] }
            })
            .collect();

        // Second stage: R-Net on 24×24 crops.
        if !boxes.is_empty() {
            let (kept, crops) = self.crops(&imgs, &boxes, 24, w, h)?;
            boxes = kept;
            if !boxes.is_empty() {
                let mut reg = Vec::new();
                let mut prob = Vec::new();
                for chunk in crops.split(512, 0) {
                    let (r, p) = self.rnet(&chunk);
                    reg.push(r);
                    prob.push(p);
                }
                let reg = rows(&Tensor::cat(&reg, 0))?;
                let prob = rows(&Tensor::cat(&prob, 0))?;
                let passed: Vec<Cand> = boxes
                    .iter()
                    .zip(reg.iter().zip(&prob))
                    .filter(|(_, (_, p))| p[1] > opts.thresholds[1])
                    .map(|(c, (r, p))| Cand { b: c.b, score: p[1], reg: [r[0], r[1], r[2], r[3]] })
                    .collect();
                boxes = nms_iou(&passed, 0.7)
                    .into_iter()
                    .map(|i| {
                        let c = passed[i];
                        Cand { b: rerec(bbreg(c.b, c.reg)), score: c.score, reg: [0.0; 4] }
                    })
                    .collect();
            }
        }

        // Third stage: O-Net on 48×48 crops, with the five landmarks.
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let (kept, crops) = self.crops(&imgs, &boxes, 48, w, h)?;
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let (mut reg, mut pts, mut prob) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in crops.split(512, 0) {
            let (r, l, p) = self.onet(&chunk);
            reg.push(r);
            pts.push(l);
            prob.push(p);
        }
        let reg = rows(&Tensor::cat(&reg, 0))?;
        let pts = rows(&Tensor::cat(&pts, 0))?;
        let prob = rows(&Tensor::cat(&prob, 0))?;
        let mut faces = Vec::new();
        let mut cands = Vec::new();
        for (k, c) in kept.iter().enumerate() {
            let score = prob[k][1];
            if score <= opts.thresholds[2] {
                continue;
            }
            let (wi, hi) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let p = &pts[k];
            let landmarks = std::array::from_fn(|j| [wi * p[j] + c.b[0] - 1.0, hi * p[5 + j] + c.b[1] - 1.0]);
            let r = [reg[k][0], reg[k][1], reg[k][2], reg[k][3]];
            let b = bbreg(c.b, r);
            cands.push(Cand { b, score, reg: [0.0; 4] });
            faces.push(Face { bbox: b, prob: score, landmarks });
        }
        let mut faces: Vec<Face> = nms_min(&cands, 0.7).into_iter().map(|i| faces[i]).collect();
        // Largest first; a stable sort keeps equal areas in NMS order.
        faces.sort_by(|a, b| (b.width() * b.height()).total_cmp(&(a.width() * a.height())));
        Ok(faces)
    }

    /// The boxes' windows cut out of the image (clipped to it) and resampled to `side`², with the
    /// boxes whose windows are not empty.
    fn crops(&self, imgs: &Tensor, boxes: &[Cand], side: i64, w: i64, h: i64) -> Result<(Vec<Cand>, Tensor)> {
        let mut kept = Vec::new();
        let mut crops = Vec::new();
        for c in boxes {
            let [x, y, ex, ey] = pad(c.b, w, h);
            if ey > y - 1 && ex > x - 1 {
                let win = imgs.narrow(2, y - 1, ey - y + 1).narrow(3, x - 1, ex - x + 1);
                crops.push(win.adaptive_avg_pool2d([side, side]));
                kept.push(*c);
            }
        }
        if crops.is_empty() {
            return Ok((kept, Tensor::zeros([0, 3, side, side], (Kind::Float, self.device))));
        }
        Ok((kept, normalise(&Tensor::cat(&crops, 0))))
    }
}

/// `(x - 127.5) * 0.0078125`: pixels to about [-1, 1], as the nets were trained.
fn normalise(x: &Tensor) -> Tensor {
    (x - 127.5) * 0.0078125
}

/// The scales P-Net runs at: from 12 / min_face_size down by `factor` while the shorter side
/// stays at least 12 pixels.
pub(super) fn pyramid(w: i64, h: i64, opts: &DetectOptions) -> Vec<f64> {
    let m = 12.0 / opts.min_face_size;
    let mut minl = w.min(h) as f64 * m;
    let mut scale = m;
    let mut scales = Vec::new();
    while minl >= 12.0 {
        scales.push(scale);
        scale *= opts.factor;
        minl *= opts.factor;
    }
    scales
}

/// A 2-D float tensor as rows.
fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let (n, k) = t.size2()?;
    let flat = Vec::<f32>::try_from(t.view([-1]))?;
    Ok((0..n as usize).map(|i| flat[i * k as usize..(i + 1) * k as usize].to_vec()).collect())
}

/// P-Net's face map → candidate boxes: each cell at or above `thresh` is a 12×12 window at
/// stride 2 of the scaled image, mapped back by `1 / scale`.
fn generate_boxes(reg: &Tensor, probs: &Tensor, scale: f32, thresh: f32) -> Result<Vec<Cand>> {
    let (_, _, fh, fw) = probs.size4()?;
    let p = Vec::<f32>::try_from(probs.get(0).get(1).to_device(Device::Cpu).contiguous().view([-1]))?;
    let r = Vec::<f32>::try_from(reg.get(0).to_device(Device::Cpu).contiguous().view([-1]))?;
    let plane = (fh * fw) as usize;
    let mut out = Vec::new();
    for y in 0..fh as usize {
        for x in 0..fw as usize {
            let i = y * fw as usize + x;
            if p[i] >= thresh {
                let (bx, by) = (x as f32, y as f32);
                out.push(Cand {
                    b: [
                        ((2.0 * bx + 1.0) / scale).floor(),
                        ((2.0 * by + 1.0) / scale).floor(),
                        ((2.0 * bx + 12.0) / scale).floor(),
                        ((2.0 * by + 12.0) / scale).floor(),
                    ],
                    score: p[i],
                    reg: [r[i], r[plane + i], r[2 * plane + i], r[3 * plane + i]],
                });
            }
        }
    }
    Ok(out)
}

/// A box made square about its centre, on its longer side.
fn rerec(b: [f32; 4]) -> [f32; 4] {
    let (h, w) = (b[3] - b[1], b[2] - b[0]);
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// A box moved by a network's regression offsets (in units of its inclusive size).
fn bbreg(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + r[0] * w, b[1] + r[1] * h, b[2] + r[2] * w, b[3] + r[3] * h]
}

/// A box as 1-based inclusive pixel bounds clipped to the image: x, y, ex, ey.
fn pad(b: [f32; 4], w: i64, h: i64) -> [i64; 4] {
    // `trunc().int()`: toward zero, then to i32 (saturating here, where Python would wrap).
    let t = |v: f32| v.trunc().clamp(i32::MIN as f32, i32::MAX as f32) as i64;
    [t(b[0]).max(1), t(b[1]).max(1), t(b[2]).min(w), t(b[3]).min(h)]
}

/// The folders searched for the weights when none is given.
pub fn default_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("STARGAN_FACE_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from(env!("STARGAN_FACE_MODELS_DEFAULT")));
    dirs
}
