//! Draws docs/faces.jpg, the README's picture of the face pipeline on scikit-image's astronaut:
//! detection (box, five landmarks), the aligned CelebA-frame crop, and the region pasted back.
//! No trained CelebA generator ships with the project, so the pasted patch is the network input
//! warmed in colour (a stand-in for G's output) to make the blend visible.
//!
//!     cargo run --release --example face_figure

use image::{Rgb, RgbImage};
use stargan::face::{self, DetectOptions, Detector, Similarity, CELEBA_LANDMARKS};
use std::path::Path;

fn dot(img: &mut RgbImage, x: f64, y: f64, r: i64, c: [u8; 3]) {
    for dy in -r..=r {
        for dx in -r..=r {
            if dx * dx + dy * dy <= r * r {
                let (px, py) = (x.round() as i64 + dx, y.round() as i64 + dy);
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    img.put_pixel(px as u32, py as u32, Rgb(c));
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, a: [f64; 2], b: [f64; 2], c: [u8; 3]) {
    let n = ((b[0] - a[0]).hypot(b[1] - a[1]) * 2.0).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        dot(img, a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, 1, c);
    }
}

fn quad(img: &mut RgbImage, t: &Similarity, w: f64, h: f64, c: [u8; 3]) {
    let p = [[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]].map(|q| t.apply(q));
    for k in 0..4 {
        line(img, p[k], p[(k + 1) % 4], c);
    }
}

fn main() -> stargan::error::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let photo = face::load_photo(&root.join(".cache/photos/astronaut.png"))?;
    let detector = Detector::find(None, tch::Device::Cpu)?;
    let faces = face::find_faces(&detector, &photo, &DetectOptions::default(), face::Which::All)?;
    let f = &faces[0];
    let size = 128;
    let net_to_photo = f.network_to_photo(size);

    // 1: the detection.
    let mut detected = photo.clone();
    let b = f.face.bbox.map(|v| v as f64);
    let box_t = Similarity { a: 1.0, b: 0.0, tx: b[0] + 0.5, ty: b[1] + 0.5 };
    quad(&mut detected, &box_t, b[2] - b[0], b[3] - b[1], [40, 220, 40]);
    for p in f.face.landmarks {
        dot(&mut detected, p[0] as f64, p[1] as f64, 4, [230, 30, 30]);
    }
    quad(&mut detected, &net_to_photo, size as f64, size as f64, [250, 220, 0]);

    // 2: the aligned crop, CelebA's mean landmarks marked, the network's centre crop outlined.
    let mut crop = RgbImage::new(178 * 2, 218 * 2);
    image::imageops::replace(
        &mut crop,
        &image::imageops::resize(&f.image, 356, 436, image::imageops::Triangle),
        0,
        0,
    );
    for q in CELEBA_LANDMARKS {
        dot(&mut crop, q[0] * 2.0 + 0.5, q[1] * 2.0 + 0.5, 4, [40, 120, 255]);
    }
    let crop_t = Similarity { a: 2.0, b: 0.0, tx: 0.5, ty: 40.5 };
    quad(&mut crop, &crop_t, 178.0, 178.0, [250, 220, 0]);

    // 3: pasted back: the network input, warmed, blended in through the feathered square.
    let x = stargan::image_io::to_network_input(f.image.clone(), size)?;
    let mut patch = stargan::image_io::to_rgb_image(&x.get(0))?;
    for p in patch.pixels_mut() {
        p.0 = [p[0].saturating_add(60), p[1].saturating_add(35), p[2] / 2];
    }
    let mut pasted = photo.clone();
    face::paste(&mut pasted, &patch, &net_to_photo);

    let (pw, ph) = photo.dimensions();
    let scale = 436.0 / ph as f64;
    let small = |img: &RgbImage| {
        image::imageops::resize(img, (pw as f64 * scale) as u32, 436, image::imageops::Triangle)
    };
    let (d, p) = (small(&detected), small(&pasted));
    let gap = 12;
    let mut out = RgbImage::from_pixel(d.width() * 2 + crop.width() + 2 * gap, 436, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &d, 0, 0);
    image::imageops::replace(&mut out, &crop, (d.width() + gap) as i64, 0);
    image::imageops::replace(&mut out, &p, (d.width() + crop.width() + 2 * gap) as i64, 0);
    let bytes = stargan::image_io::encode_rgb8(
        out.as_raw(),
        out.width(),
        out.height(),
        stargan::image_io::ImageFormat::Jpeg,
    )?;
    stargan::files::write(&root.join("docs/faces.jpg"), &bytes)?;
    println!("wrote docs/faces.jpg ({}×{})", out.width(), out.height());
    Ok(())
}
