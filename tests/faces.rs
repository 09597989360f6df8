//! Faces in real photos: the detector against facenet-pytorch's own MTCNN, its equivariance under
//! known similarity transforms, alignment, paste-back, and the `translate`/`align` commands.
//!
//! The photos are scikit-image's public-domain astronaut and cameraman, which scripts/setup.sh
//! extracts from the scikit-image wheel into .cache/photos (with the detector's weights in
//! face-models/).

mod common;

use common::{photo_path, rgb, scratch, stargan};
use image::RgbImage;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stargan::face::{self, DetectOptions, Detector, Similarity, Which};
use std::path::Path;
use tch::Device;

fn photo(name: &str) -> RgbImage {
    face::load_photo(&photo_path(name))
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
    /// Content moved by this many pixels (not in the fixture's versions).
    shift: [f64; 2],
}

impl Default for Version {
    fn default() -> Self {
        Version { scale: 1.0, degrees: 0.0, mirror: false, shift: [0.0, 0.0] }
    }
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
        let mut tx = sx - (a * cx - b * cy);
        let mut ty = sy - (b * cx + a * cy);
        if self.shift != [0.0, 0.0] {
            tx -= a * self.shift[0] - b * self.shift[1];
            ty -= b * self.shift[0] + a * self.shift[1];
        }
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
        let v =
            Version { scale: case.scale, degrees: case.degrees, mirror: case.mirror, ..Default::default() };
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

/// Rotate, scale, shift and mirror a real photo by known similarity transforms: the landmarks found
/// follow the transform, and the aligned crops of all versions agree with the original's.
#[test]
fn landmarks_follow_similarity_transforms_and_crops_agree() {
    let detector = detector();
    let opts = DetectOptions::default();
    let src = photo("astronaut.png");
    let (w, h) = src.dimensions();
    let base = detector.detect(&src, &opts).unwrap();
    assert_eq!(base.len(), 1);
    let base_aligned = face::align(&src, &base[0]).unwrap();
    let base_crop = base_aligned.image.clone();
    let d = Version::default();
    let versions = [
        ("rotated +10°", Version { degrees: 10.0, ..d }),
        ("rotated -25°", Version { degrees: -25.0, ..d }),
        ("scaled 0.5", Version { scale: 0.5, ..d }),
        ("scaled 1.7", Version { scale: 1.7, ..d }),
        ("shifted", Version { shift: [37.3, -21.6], ..d }),
        ("mirrored", Version { mirror: true, ..d }),
        ("all at once", Version { scale: 0.8, degrees: 15.0, mirror: true, shift: [12.5, 30.25] }),
    ];
    let mut report = Vec::new();
    for (name, v) in versions {
        let img = v.apply(&src);
        let found = detector.detect(&img, &opts).unwrap();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        let f = &found[0];
        // A mirror swaps what is left and right in the image.
        let order = if v.mirror { [1, 0, 2, 4, 3] } else { [0, 1, 2, 3, 4] };
        let (mut worst, mut mean) = (0f64, 0f64);
        for (k, &j) in order.iter().enumerate() {
            let p = base[0].landmarks[j];
            let want = v.forward(w, h, [p[0] as f64, p[1] as f64]);
            let got = f.landmarks[k];
            let e = (got[0] as f64 - want[0]).hypot(got[1] as f64 - want[1]);
            worst = worst.max(e);
            mean += e / 5.0;
        }
        // The alignment itself: where the two crops put CelebA's landmark positions, compared in
        // the version's photo and expressed in frame pixels.
        let aligned = face::align(&img, f).unwrap();
        let mut shift = 0f64;
        for q in face::CELEBA_LANDMARKS {
            // A mirrored version's crop is the original's mirrored.
            let qb = if v.mirror { [177.0 - q[0], q[1]] } else { q };
            let want = v.forward(w, h, base_aligned.to_photo.apply(qb));
            let got = aligned.to_photo.apply(q);
            shift = shift.max((got[0] - want[0]).hypot(got[1] - want[1]) / aligned.to_photo.scale());
        }
        let mut crop = aligned.image;
        if v.mirror {
            image::imageops::flip_horizontal_in_place(&mut crop);
        }
        // Over the face (brows to chin, cheek to cheek): beyond it a rotated version has black
        // corners that the original has not.
        let (mut sum, mut n) = (0f64, 0usize);
        for y in 70..190 {
            for x in 34..144 {
                let (p, q) = (crop.get_pixel(x, y), base_crop.get_pixel(x, y));
                sum += (0..3).map(|c| p[c].abs_diff(q[c]) as f64).sum::<f64>();
                n += 3;
            }
        }
        let mad = sum / n as f64;
        report.push(format!(
            "{name}: landmarks {mean:.2} px off on average, {worst:.2} at worst; alignment {shift:.2} frame px; face MAD {mad:.2}/255"
        ));
        // MTCNN's own precision: O-Net places the points on a 48×48 view of a ~90 px face, so a
        // point moves by 2-4 px under rotation; facenet-pytorch's does the same (the parity test
        // matches it on rotated versions to 1e-4 px).
        assert!(
            mean <= 2.0 && worst <= 4.0,
            "{name}: landmarks {mean:.2} px off on average, {worst:.2} at worst"
        );
        assert!(shift <= 3.5, "{name}: the alignments differ by {shift:.2} frame pixels");
        assert!(
            mad <= 20.0,
            "{name}: the aligned crop differs from the original's by {mad:.2}/255 on average"
        );
    }
    println!("{}", report.join("\n"));
}

/// Two photos side by side: both faces found, where each photo alone has it; a flat image: none.
#[test]
fn a_composed_photo_with_two_faces_finds_both_and_a_blank_one_none() {
    let detector = detector();
    let opts = DetectOptions::default();
    let (a, c) = (photo("astronaut.png"), photo("camera.png"));
    let mut both = RgbImage::new(a.width() + c.width(), a.height().max(c.height()));
    image::imageops::replace(&mut both, &a, 0, 0);
    image::imageops::replace(&mut both, &c, a.width() as i64, 0);
    let found = detector.detect(&both, &opts).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    // The pyramid's image sizes differ from the photo alone, so the boxes move a little: each face
    // is found within a tenth of its width of where it is found alone.
    for (alone, dx) in
        [(detector.detect(&a, &opts).unwrap(), 0.0), (detector.detect(&c, &opts).unwrap(), a.width() as f32)]
    {
        let e = alone[0];
        let hit = found.iter().any(|f| {
            (0..4).all(|k| {
                let off = if k % 2 == 0 { dx } else { 0.0 };
                (f.bbox[k] - e.bbox[k] - off).abs() < 0.1 * e.width()
            })
        });
        assert!(hit, "the face at x≈{} alone is not among {found:?}", e.bbox[0] + dx);
    }
    let blank = RgbImage::from_fn(400, 300, |x, y| image::Rgb([(x / 2) as u8, (y / 2) as u8, 128]));
    assert!(detector.detect(&blank, &opts).unwrap().is_empty());
    let err = face::find_faces(&detector, &blank, &opts, Which::All).expect_err("no face in a gradient");
    assert!(err.to_string().contains("no face found"), "{err}");
    let err = face::find_faces(&detector, &a, &opts, Which::Nth(2)).expect_err("one face only");
    assert!(err.to_string().contains("one face was"), "{err}");
}

/// The faces of a photo translated and pasted back: the composite has the photo's size, and every
/// pixel outside the pasted squares is the photo's, bit for bit.
#[test]
fn paste_back_leaves_every_pixel_outside_the_mask_unchanged() {
    let ckpt = common::parity_root().join("celeba/0-G.ckpt");
    let model = stargan::inference::load(&ckpt, None, Device::Cpu).unwrap();
    let detector = detector();
    let (a, c) = (photo("astronaut.png"), photo("camera.png"));
    let mut both = RgbImage::new(a.width() + c.width(), a.height());
    image::imageops::replace(&mut both, &a, 0, 0);
    image::imageops::replace(&mut both, &c, a.width() as i64, 0);
    let faces = face::find_faces(&detector, &both, &DetectOptions::default(), Which::All).unwrap();
    let target = stargan::inference::Target::Vector(vec![0.0, 1.0, 0.0, 1.0, 0.0]);
    let done = face::translate_photo(
        &model,
        faces,
        &both,
        &target,
        stargan::model::NormStats::PerImageFrozen,
        stargan::precision::Precision::Fp32,
    )
    .unwrap();
    assert_eq!(done.composite.dimensions(), both.dimensions());
    assert_eq!(done.faces.len(), 2);
    let size = model.input_size();
    let squares: Vec<Similarity> =
        done.faces.iter().map(|f| f.aligned.network_to_photo(size).inverse()).collect();
    let (mut changed, mut outside_same) = (0usize, 0usize);
    for (x, y, p) in done.composite.enumerate_pixels() {
        let inside = squares.iter().any(|t| {
            let [u, v] = t.apply([x as f64, y as f64]);
            u > -0.5 && v > -0.5 && u < size as f64 - 0.5 && v < size as f64 - 0.5
        });
        if p != both.get_pixel(x, y) {
            assert!(inside, "({x}, {y}) changed outside the pasted faces");
            changed += 1;
        } else if !inside {
            outside_same += 1;
        }
    }
    assert!(changed > 1000, "only {changed} pixels changed");
    println!("paste-back: {changed} pixels changed, {outside_same} outside the masks all unchanged");
}

fn ok(res: &std::process::Output) -> String {
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    String::from_utf8_lossy(&res.stdout).into_owned()
}

/// `stargan translate` on photos: the composite at the photo's size with crops beside it; a
/// 178×218 input and `--align off` take the whole-image path as before; no face is one clear line.
#[test]
fn translate_finds_aligns_and_pastes_back_faces_in_a_photo() {
    let dir = scratch("faces", "translate");
    let ckpt = common::parity_root().join("celeba/0-G.ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let run = |input: &Path, out: &Path, extra: &[&str]| {
        let args = [
            "translate",
            "--checkpoint",
            ckpt,
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        stargan(&[&args[..], &["--set", "Blond_Hair=1", "--device", "cpu"], extra].concat())
    };
    let astronaut = photo_path("astronaut.png");
    let out = dir.join("astronaut.jpg");
    ok(&run(&astronaut, &out, &["--save-crops"]));
    assert_eq!(rgb(&out).dimensions(), (512, 512));
    assert_eq!(rgb(&dir.join("astronaut.face1.aligned.png")).dimensions(), (178, 218));
    assert_eq!(rgb(&dir.join("astronaut.face1.translated.png")).dimensions(), (32, 32));

    // An input already framed like img_align_celeba is translated whole, as before.
    let framed = dir.join("framed.png");
    rgb(&dir.join("astronaut.face1.aligned.png")).save(&framed).unwrap();
    let out = dir.join("framed-out.png");
    ok(&run(&framed, &out, &[]));
    assert_eq!(rgb(&out).dimensions(), (32, 32));
    let out = dir.join("whole.png");
    ok(&run(&astronaut, &out, &["--align", "off"]));
    assert_eq!(rgb(&out).dimensions(), (32, 32));

    // No face: by default a warning and the whole image; with --align on one line naming the
    // file and the way out, exit 1, nothing written.
    let blank = dir.join("blank.png");
    RgbImage::from_pixel(300, 200, image::Rgb([120, 140, 160])).save(&blank).unwrap();
    let out = dir.join("blank-out.png");
    let res = run(&blank, &out, &[]);
    assert!(String::from_utf8_lossy(&res.stderr).contains("no face found; translating the whole image"));
    assert_eq!(rgb(&out).dimensions(), (32, 32));
    std::fs::remove_file(&out).unwrap();
    let res = run(&blank, &out, &["--align", "on"]);
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("blank.png") && err.contains("no face found") && err.contains("--align off"),
        "{err}"
    );
    assert!(!out.exists());
    // A face number past the last.
    let res = run(&astronaut, &dir.join("third.png"), &["--face", "3"]);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("--face 3 asked for, but one face was found"));
    // A weights folder without the weights.
    let res = run(&astronaut, &dir.join("x.png"), &["--face-model", dir.to_str().unwrap()]);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("no pnet.pt"));
}

/// `stargan align`: one 178×218 crop per face with a CelebA landmarks file; class folders are
/// mirrored, so the output loads through the folder loader, and through the CelebA loader given an
/// attribute file; a second run resumes (skips what is done).
#[test]
fn align_writes_celeba_style_crops_that_the_loaders_read() {
    let dir = scratch("faces", "align");
    let input = dir.join("photos");
    for (class, name) in [("alice", "astronaut.png"), ("bob", "camera.png")] {
        std::fs::create_dir_all(input.join(class)).unwrap();
        std::fs::copy(photo_path(name), input.join(class).join(name)).unwrap();
    }
    RgbImage::from_pixel(64, 64, image::Rgb([9, 9, 9])).save(input.join("bob/blank.png")).unwrap();
    let output = dir.join("aligned");
    let args = [
        "align",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    let res = stargan(&args);
    let said = ok(&res);
    assert!(said.contains("2 photos aligned now (0 done before); 2 crops"), "{said}");
    assert!(said.contains("skipped 1 photos (reasons above): bob/blank.png"), "{said}");
    assert!(String::from_utf8_lossy(&res.stderr).contains("blank.png: no face found"));
    for crop in ["alice/astronaut_1.png", "bob/camera_1.png"] {
        assert_eq!(rgb(&output.join(crop)).dimensions(), face::CELEBA_FRAME);
    }
    let landmarks = std::fs::read_to_string(output.join("list_landmarks_align_celeba.txt")).unwrap();
    let lines: Vec<&str> = landmarks.lines().collect();
    assert_eq!(lines[0], "2");
    assert!(lines[1].starts_with("lefteye_x lefteye_y"));
    // The astronaut's eyes land on CelebA's mean eye positions, to a few pixels.
    let row: Vec<i64> = lines[2].split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    assert_eq!(lines[2].split_whitespace().next(), Some("alice/astronaut_1.png"));
    for (k, want) in face::CELEBA_LANDMARKS.iter().enumerate() {
        assert!(
            (row[2 * k] as f64 - want[0]).abs() <= 4.0 && (row[2 * k + 1] as f64 - want[1]).abs() <= 4.0,
            "{row:?}"
        );
    }

    let folder = stargan::data::folder::ImageFolder::open(&output).unwrap();
    assert_eq!(folder.classes, ["alice", "bob"]);
    assert_eq!(folder.samples.len(), 2);
    let attrs = "2\nSmiling\nalice/astronaut_1.png 1\nbob/camera_1.png -1\n";
    let table = stargan::data::celeba::AttributeTable::parse_celeba(attrs, "attrs.txt").unwrap();
    let samples = table.samples(&["Smiling"]).unwrap();
    let checked = stargan::data::celeba::check_images(samples, &output, false).unwrap();
    let pipeline = stargan::data::transform::Pipeline::new(178, 128).unwrap();
    for s in &checked.samples {
        assert_eq!(pipeline.load(output.join(&s.filename), false).unwrap().len(), 3 * 128 * 128);
    }

    // Again: nothing to do, the same landmarks file.
    let said = ok(&stargan(&args));
    assert!(said.contains("0 photos aligned now (2 done before); 2 crops"), "{said}");
    assert_eq!(std::fs::read_to_string(output.join("list_landmarks_align_celeba.txt")).unwrap(), landmarks);

    // Two photos that would write the same crop names are refused before any work.
    std::fs::copy(photo_path("camera.png"), input.join("bob/camera.jpg.png")).unwrap();
    std::fs::copy(photo_path("astronaut.png"), input.join("alice/astronaut.PNG")).unwrap();
    let res = stargan(&args);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("would both be written as alice/astronaut_1.png"));
}

/// Weights that are not MTCNN's are refused at load with the file and the reason.
#[test]
fn crafted_detector_weights_are_refused() {
    let dir = scratch("faces", "weights");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("face-models");
    for n in ["pnet.pt", "rnet.pt", "onet.pt"] {
        std::fs::copy(models.join(n), dir.join(n)).unwrap();
    }
    std::fs::copy(models.join("pnet.pt"), dir.join("onet.pt")).unwrap();
    let err = Detector::load(&dir, Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("onet.pt") && err.contains("`conv1.weight` has shape [10, 3, 3, 3]"), "{err}");
    std::fs::write(dir.join("onet.pt"), b"not a checkpoint").unwrap();
    let err = Detector::load(&dir, Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("onet.pt"), "{err}");
}
