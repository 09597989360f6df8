//! Faces in real photos: the detector against facenet-pytorch's own MTCNN, its equivariance under
//! known similarity transforms, alignment, paste-back, and the `translate`/`align` commands.
//!
//! The photos are scikit-image's public-domain astronaut and cameraman, which scripts/setup.sh
//! extracts from the scikit-image wheel into .cache/photos (with the detector's weights in
//! face-models/).

mod common;

use common::{scratch, stargan, tiny_flags, with};
use image::RgbImage;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stargan::face::{self, DetectOptions, Detector, Face, Similarity, Which};
use std::path::{Path, PathBuf};
use tch::Device;

fn photo(name: &str) -> RgbImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/photos").join(name);
    face::load_photo(&path)
        .unwrap_or_else(|e| panic!("{e} (scripts/setup.sh extracts the test photos into .cache/photos)"))
}

fn detector() -> Detector {
    Detector::find(None, Device::Cpu).expect("scripts/setup.sh puts MTCNN's weights in face-models/")
}

/// A version of a photo: scaled, rotated about its centre (degrees counter-clockwise as seen) or
/// mirrored. `version_map` and `warp` repeat tests/fixtures/faces/make_fixture.py operation for
/// operation, so both sides get the same pixels.
#[derive(Debug, Clone, Copy)]
struct Version {
    scale: f64,
    degrees: f64,
    mirror: bool,
}

impl Version {
    /// Output size and the map from output pixels to source pixels (before the mirror).
    fn map(&self, w: u32, h: u32) -> (u32, u32, Similarity) {
        let ow = (w as f64 * self.scale + 0.5).floor() as u32;
        let oh = (h as f64 * self.scale + 0.5).floor() as u32;
        let th = self.degrees.to_radians();
        let a = th.cos() / self.scale;
        let b = th.sin() / self.scale;
        let (cx, cy) = ((ow - 1) as f64 / 2.0, (oh - 1) as f64 / 2.0);
        let (sx, sy) = ((w - 1) as f64 / 2.0, (h - 1) as f64 / 2.0);
        let tx = sx - (a * cx - b * cy);
        let ty = sy - (b * cx + a * cy);
        (ow, oh, Similarity { a, b, tx, ty })
    }

    fn apply(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let (ow, oh, m) = self.map(w, h);
        let src = img.as_raw();
        let px = |x: i64, y: i64, c: usize| -> f64 {
            if x >= 0 && x < w as i64 && y >= 0 && y < h as i64 {
                src[((y * w as i64 + x) * 3) as usize + c] as f64
            } else {
                0.0
            }
        };
        RgbImage::from_fn(ow, oh, |x, y| {
            let xs = if self.mirror { (ow - 1 - x) as f64 } else { x as f64 };
            let ys = y as f64;
            let sx = m.a * xs - m.b * ys + m.tx;
            let sy = m.b * xs + m.a * ys + m.ty;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let w00 = (1.0 - fx) * (1.0 - fy);
            let w10 = fx * (1.0 - fy);
            let w01 = (1.0 - fx) * fy;
            let w11 = fx * fy;
            image::Rgb(std::array::from_fn(|c| {
                let v = px(x0, y0, c) * w00
                    + px(x0 + 1, y0, c) * w10
                    + px(x0, y0 + 1, c) * w01
                    + px(x0 + 1, y0 + 1, c) * w11;
                (v + 0.5).floor().clamp(0.0, 255.0) as u8
            }))
        })
    }

    /// Where a source point lands in the version.
    fn forward(&self, w: u32, h: u32, p: [f64; 2]) -> [f64; 2] {
        let (ow, _, m) = self.map(w, h);
        let q = m.inverse().apply(p);
        if self.mirror {
            [(ow - 1) as f64 - q[0], q[1]]
        } else {
            q
        }
    }
}

#[derive(Deserialize)]
struct Fixture {
    photos: Vec<FixturePhoto>,
}

#[derive(Deserialize)]
struct FixturePhoto {
    photo: String,
    version: String,
    scale: f64,
    degrees: f64,
    mirror: bool,
    width: u32,
    height: u32,
    sha256: String,
    faces: Vec<FixtureFace>,
}

#[derive(Deserialize)]
struct FixtureFace {
    #[serde(rename = "box")]
    bbox: [f64; 4],
    prob: f64,
    landmarks: [[f64; 2]; 5],
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Our detector on the pixels facenet-pytorch 2.6.0's MTCNN saw: boxes and landmarks within 1 px,
/// probabilities within 1e-3 (both run libtorch 2.13's float32 kernels, so the differences left
/// are summation order in the area resampling and the rare float rounding at a pixel boundary).
#[test]
fn detector_matches_facenet_pytorch_on_real_photos() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faces/mtcnn.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(fixture.photos.len() >= 12, "the fixture covers two photos in six versions each");
    let (mut worst_px, mut worst_prob) = (0f64, 0f64);
    let detector = detector();
    for case in &fixture.photos {
        let src = photo(&case.photo);
        let v = Version { scale: case.scale, degrees: case.degrees, mirror: case.mirror };
        let img = if case.version == "orig" { src.clone() } else { v.apply(&src) };
        assert_eq!(img.dimensions(), (case.width, case.height), "{} {}", case.photo, case.version);
        assert_eq!(
            hex_sha256(img.as_raw()),
            case.sha256,
            "{} {}: not the pixels the fixture saw",
            case.photo,
            case.version
        );
        let ours = detector.detect(&img, &DetectOptions::default()).unwrap();
        assert_eq!(ours.len(), case.faces.len(), "{} {}: {ours:?}", case.photo, case.version);
        for (f, e) in ours.iter().zip(&case.faces) {
            let mut d = 0f64;
            for k in 0..4 {
                d = d.max((f.bbox[k] as f64 - e.bbox[k]).abs());
            }
            for (p, q) in f.landmarks.iter().zip(&e.landmarks) {
                d = d.max((p[0] as f64 - q[0]).abs()).max((p[1] as f64 - q[1]).abs());
            }
            let dp = (f.prob as f64 - e.prob).abs();
            assert!(d <= 1.0 && dp <= 1e-3, "{} {}: {d} px, {dp} in probability", case.photo, case.version);
            worst_px = worst_px.max(d);
            worst_prob = worst_prob.max(dp);
        }
    }
    println!("MTCNN vs facenet-pytorch: worst {worst_px:.2e} px, {worst_prob:.2e} in probability");
}
