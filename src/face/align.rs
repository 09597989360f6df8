//! Framing a face as `img_align_celeba` frames them, and putting a translated face back.
//!
//! A least-squares similarity transform (Umeyama 1991, without reflection) takes the detector's
//! five landmarks onto CelebA's mean aligned landmarks; the photo is resampled through it into the
//! 178×218 frame; from there the model's own test transform (centre crop, resize) applies, as for
//! any CelebA image. Pasting back runs the same maps in reverse and blends through a feathered
//! square, touching no pixel outside it.

use super::mtcnn::Face;
use image::RgbImage;
use rayon::prelude::*;

/// `img_align_celeba`'s frame: width, height.
pub const CELEBA_FRAME: (u32, u32) = (178, 218);

/// Where CelebA's aligned images have their five landmarks on average (left eye, right eye, nose,
/// left and right mouth corners; x, y): the means of `list_landmarks_align_celeba.txt` to the
/// pixel, as published alignment scripts quote them.
pub const CELEBA_LANDMARKS: [[f64; 2]; 5] =
    [[69.0, 111.0], [108.0, 111.0], [88.0, 136.0], [72.0, 152.0], [105.0, 152.0]];

/// `p ↦ [a -b; b a] p + t`: rotation, uniform scale and shift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    pub const IDENTITY: Similarity = Similarity { a: 1.0, b: 0.0, tx: 0.0, ty: 0.0 };

    /// The least-squares similarity taking `src` onto `dst` (Umeyama's estimate; in 2-D it has the
    /// closed form below). `None` when the source points coincide.
    pub fn estimate(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Option<Similarity> {
        let n = src.len().min(dst.len());
        if n < 2 {
            return None;
        }
        let mean = |p: &[[f64; 2]]| {
            let s = p[..n].iter().fold([0.0, 0.0], |s, q| [s[0] + q[0], s[1] + q[1]]);
            [s[0] / n as f64, s[1] / n as f64]
        };
        let (ms, md) = (mean(src), mean(dst));
        let (mut num_a, mut num_b, mut den) = (0.0, 0.0, 0.0);
        for (p, q) in src[..n].iter().zip(&dst[..n]) {
            let (x, y) = (p[0] - ms[0], p[1] - ms[1]);
            let (u, v) = (q[0] - md[0], q[1] - md[1]);
            num_a += x * u + y * v;
            num_b += x * v - y * u;
            den += x * x + y * y;
        }
        if den.is_nan() || den <= 1e-12 || !den.is_finite() {
            return None;
        }
        let (a, b) = (num_a / den, num_b / den);
        Some(Similarity { a, b, tx: md[0] - (a * ms[0] - b * ms[1]), ty: md[1] - (b * ms[0] + a * ms[1]) })
    }

    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        [self.a * p[0] - self.b * p[1] + self.tx, self.b * p[0] + self.a * p[1] + self.ty]
    }

    /// The scale factor (lengths are multiplied by it).
    pub fn scale(&self) -> f64 {
        self.a.hypot(self.b)
    }

    /// The rotation, in degrees (counter-clockwise in image coordinates, y down).
    pub fn angle_degrees(&self) -> f64 {
        self.b.atan2(self.a).to_degrees()
    }

    pub fn inverse(&self) -> Similarity {
        let d = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / d, -self.b / d);
        Similarity { a, b, tx: -(a * self.tx - b * self.ty), ty: -(b * self.tx + a * self.ty) }
    }

    /// `self` after `first`: p ↦ self(first(p)).
    pub fn after(&self, first: &Similarity) -> Similarity {
        Similarity {
            a: self.a * first.a - self.b * first.b,
            b: self.b * first.a + self.a * first.b,
            tx: self.a * first.tx - self.b * first.ty + self.tx,
            ty: self.b * first.tx + self.a * first.ty + self.ty,
        }
    }
}

/// A face cut out of a photo in CelebA's frame, with the map back to the photo.
#[derive(Debug, Clone)]
pub struct AlignedFace {
    pub face: Face,
    /// 178×218, as `img_align_celeba`.
    pub image: RgbImage,
    /// Frame coordinates → photo coordinates.
    pub to_photo: Similarity,
}

impl AlignedFace {
    /// Network pixels (the model's `size`² input, cut from this crop by the test transform's
    /// centre crop and resize) → photo coordinates: where a translated face is pasted.
    pub fn network_to_photo(&self, size: u32) -> Similarity {
        let (fw, fh) = CELEBA_FRAME;
        self.to_photo.after(&network_to_frame(fw.min(fh), size))
    }

    /// The face's landmarks in the frame (CelebA's `list_landmarks_align_celeba` columns).
    pub fn frame_landmarks(&self) -> [[f64; 2]; 5] {
        let to_frame = self.to_photo.inverse();
        self.face.landmarks.map(|p| to_frame.apply([p[0] as f64, p[1] as f64]))
    }
}

/// The similarity taking a face's landmarks onto CelebA's mean ones, or `None` for a degenerate
/// set of points (all in one place).
pub fn to_celeba_frame(face: &Face) -> Option<Similarity> {
    let src = face.landmarks.map(|p| [p[0] as f64, p[1] as f64]);
    Similarity::estimate(&src, &CELEBA_LANDMARKS)
}

/// Cut `face` out of `photo` into CelebA's 178×218 frame.
pub fn align(photo: &RgbImage, face: &Face) -> Option<AlignedFace> {
    let to_frame = to_celeba_frame(face)?;
    let to_photo = to_frame.inverse();
    let (w, h) = CELEBA_FRAME;
    Some(AlignedFace { face: *face, image: warp(photo, &to_photo, w, h), to_photo })
}

/// A `w`×`h` image whose pixel (x, y) is `src` sampled bilinearly at `to_src(x, y)`, pixel centres
/// at integer coordinates, the border repeated beyond the edges (so a face at the photo's edge
/// gets no black wedge the generator never saw in training).
pub fn warp(src: &RgbImage, to_src: &Similarity, w: u32, h: u32) -> RgbImage {
    let mut out = vec![0u8; w as usize * h as usize * 3];
    out.par_chunks_mut(w as usize * 3).enumerate().for_each(|(y, row)| {
        for x in 0..w as usize {
            let [sx, sy] = to_src.apply([x as f64, y as f64]);
            let px = sample(src, sx, sy);
            row[x * 3..x * 3 + 3].copy_from_slice(&px.map(|v| v.round().clamp(0.0, 255.0) as u8));
        }
    });
    RgbImage::from_raw(w, h, out).expect("w*h*3 bytes")
}

/// Bilinear sample with clamped coordinates.
fn sample(src: &RgbImage, x: f64, y: f64) -> [f64; 3] {
    let (w, h) = (src.width() as i64, src.height() as i64);
    let x = x.clamp(0.0, (w - 1) as f64);
    let y = y.clamp(0.0, (h - 1) as f64);
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let raw = src.as_raw();
    let at = |xx: i64, yy: i64, c: usize| raw[((yy * w + xx) * 3) as usize + c] as f64;
    std::array::from_fn(|c| {
        let top = at(x0, y0, c) * (1.0 - fx) + at(x1, y0, c) * fx;
        let bottom = at(x0, y1, c) * (1.0 - fx) + at(x1, y1, c) * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

/// Where the network's `size`² input sits in the 178×218 frame: the reference's test transform
/// `CenterCrop(crop)` then `Resize(size)`, as a map from network pixels to frame pixels.
pub fn network_to_frame(crop: u32, size: u32) -> Similarity {
    let (fw, fh) = CELEBA_FRAME;
    let offset = |side: u32| ((side as f64 - crop as f64) / 2.0).round_ties_even();
    let s = crop as f64 / size as f64;
    // Pixel centres: network pixel p covers frame pixels [p s, (p + 1) s) of the crop.
    Similarity { a: s, b: 0.0, tx: offset(fw) + 0.5 * s - 0.5, ty: offset(fh) + 0.5 * s - 0.5 }
}

/// The share of a pasted image's width over which the blend fades out at its edges.
pub const FEATHER: f64 = 0.08;

/// Blend `patch` (a translated network output) into `photo` through `patch_to_photo`, fading it out
/// over the outer [`FEATHER`] of its side. Returns how many photo pixels were written; every other
/// pixel is left as it was, bit for bit.
pub fn paste(photo: &mut RgbImage, patch: &RgbImage, patch_to_photo: &Similarity) -> usize {
    let (pw, ph) = (patch.width() as f64, patch.height() as f64);
    let to_patch = patch_to_photo.inverse();
    // The photo rectangle that can receive anything: the patch's mapped corners.
    let corners = [[-0.5, -0.5], [pw - 0.5, -0.5], [-0.5, ph - 0.5], [pw - 0.5, ph - 0.5]]
        .map(|c| patch_to_photo.apply(c));
    let (w, h) = (photo.width() as i64, photo.height() as i64);
    let lo = |k: usize| corners.iter().map(|c| c[k]).fold(f64::INFINITY, f64::min).floor() as i64;
    let hi = |k: usize| corners.iter().map(|c| c[k]).fold(f64::NEG_INFINITY, f64::max).ceil() as i64;
    let (x0, x1) = (lo(0).clamp(0, w), (hi(0) + 1).clamp(0, w));
    let (y0, y1) = (lo(1).clamp(0, h), (hi(1) + 1).clamp(0, h));
    if x0 >= x1 || y0 >= y1 {
        return 0;
    }
    let feather = FEATHER * pw.min(ph);
    let stride = w as usize * 3;
    let rows = &mut photo.as_mut()[y0 as usize * stride..y1 as usize * stride];
    rows.par_chunks_mut(stride)
        .enumerate()
        .map(|(r, row)| {
            let y = y0 + r as i64;
            let mut written = 0;
            for x in x0..x1 {
                let [u, v] = to_patch.apply([x as f64, y as f64]);
                // Distance inside the patch's edge, in patch pixels.
                let inside = (u + 0.5).min(v + 0.5).min(pw - 0.5 - u).min(ph - 0.5 - v);
                if inside <= 0.0 {
                    continue;
                }
                let t = (inside / feather).min(1.0);
                let alpha = t * t * (3.0 - 2.0 * t);
                let src = sample(patch, u, v);
                let px = &mut row[x as usize * 3..x as usize * 3 + 3];
                for c in 0..3 {
                    let blended = alpha * src[c] + (1.0 - alpha) * px[c] as f64;
                    px[c] = blended.round().clamp(0.0, 255.0) as u8;
                }
                written += 1;
            }
            written
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 2], b: [f64; 2]) -> bool {
        (a[0] - b[0]).abs() < 1e-9 && (a[1] - b[1]).abs() < 1e-9
    }

    #[test]
    fn estimate_recovers_a_known_similarity_exactly() {
        let t = Similarity { a: 0.8, b: -0.3, tx: 12.5, ty: -4.0 };
        let src = [[10.0, 20.0], [50.0, 22.0], [30.0, 40.0], [15.0, 60.0], [45.0, 61.0]];
        let dst = src.map(|p| t.apply(p));
        let got = Similarity::estimate(&src, &dst).unwrap();
        for (p, q) in src.iter().zip(&dst) {
            assert!(close(got.apply(*p), *q));
        }
        let back = got.inverse().after(&got);
        assert!(close(back.apply([3.0, 7.0]), [3.0, 7.0]));
        assert!(Similarity::estimate(&[[1.0, 1.0]; 5], &dst).is_none());
    }

    #[test]
    fn estimate_never_reflects() {
        // A mirrored point set: the best similarity is a compromise, not a reflection, so the
        // mirrored landmarks of a face do not flip the crop.
        let src = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]];
        let dst = [[0.0, 0.0], [-10.0, 0.0], [0.0, 10.0]];
        let t = Similarity::estimate(&src, &dst).unwrap();
        let cross = |p: [f64; 2], q: [f64; 2], r: [f64; 2]| {
            (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        };
        let mapped = src.map(|p| t.apply(p));
        assert!(cross(mapped[0], mapped[1], mapped[2]) * cross(src[0], src[1], src[2]) >= 0.0);
    }

    #[test]
    fn network_pixels_map_onto_the_centre_crop() {
        // 128² network pixels cover the 178² centre crop of the 178×218 frame, rows 20..198.
        let t = network_to_frame(178, 128);
        let first = t.apply([-0.5, -0.5]);
        let last = t.apply([127.5, 127.5]);
        assert!(close(first, [-0.5, 19.5]), "{first:?}");
        assert!(close(last, [177.5, 197.5]), "{last:?}");
    }

    #[test]
    fn paste_writes_only_inside_the_patch() {
        let mut photo = RgbImage::from_fn(60, 50, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let before = photo.clone();
        let patch = RgbImage::from_pixel(16, 16, image::Rgb([255, 0, 255]));
        let t = Similarity { a: 1.0, b: 0.0, tx: 20.0, ty: 10.0 };
        let n = paste(&mut photo, &patch, &t);
        assert!(n > 0 && n <= 16 * 16, "{n}");
        for (x, y, p) in photo.enumerate_pixels() {
            let inside = (20..36).contains(&x) && (10..26).contains(&y);
            if !inside {
                assert_eq!(p, before.get_pixel(x, y), "({x}, {y}) changed");
            }
        }
        // The centre is the patch's colour; the feathered rim is in between.
        assert_eq!(photo.get_pixel(28, 18).0, [255, 0, 255]);
    }
}
