//! Faces in real photos: find them (MTCNN, with five landmarks), frame each as CelebA's aligned
//! images are framed, translate it, and paste it back into the photo at the photo's resolution.
//! `stargan translate`, `stargan align` and the server use [`find_faces`] and [`translate_photo`];
//! nothing here knows about command-line flags.

pub mod align;
pub mod mtcnn;
mod nms;

pub use align::{align, paste, AlignedFace, Similarity, CELEBA_FRAME, CELEBA_LANDMARKS};
pub use mtcnn::{DetectOptions, Detector, Face};

use crate::error::{Error, Result};
use crate::inference::{Model, Target};
use crate::model::NormStats;
use crate::precision::Precision;
use image::{DynamicImage, RgbImage};
use std::path::Path;

/// How to get the detector's weights, for error messages.
pub const HOW_TO_GET_WEIGHTS: &str = "scripts/setup.sh extracts pnet.pt, rnet.pt and onet.pt from \
     the facenet-pytorch 2.6.0 wheel on PyPI into face-models/; point `face_model` at a folder \
     holding them, or set STARGAN_FACE_MODELS";

/// A photo file decoded to RGB with its EXIF orientation applied (a phone's portrait shot stands
/// upright), unlike training images, which the reference reads as stored.
pub fn load_photo(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
    decode_photo(&bytes, &path.display().to_string())
}

/// [`load_photo`] for bytes in memory; `name` appears in errors.
pub fn decode_photo(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let img = crate::data::transform::decode_image(bytes, name)?;
    let orientation = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_decoder().ok())
        .and_then(|mut d| image::ImageDecoder::orientation(&mut d).ok());
    match orientation {
        Some(o) if o != image::metadata::Orientation::NoTransforms => {
            let mut d = DynamicImage::ImageRgb8(img);
            d.apply_orientation(o);
            Ok(d.into_rgb8())
        }
        _ => Ok(img),
    }
}

/// Whether an image of this size is already framed for the model: exactly the network's input, or
/// `img_align_celeba`'s 178×218.
pub fn looks_aligned(width: u32, height: u32, network_size: u32) -> bool {
    (width, height) == (network_size, network_size) || (width, height) == CELEBA_FRAME
}

/// Whether to find and align faces before translating (`translate --align`, the API's `align`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Align unless the image is already framed or the model was not trained in CelebA's frame;
    /// an image in which no face is found is translated whole.
    Auto,
    /// Always align; no face is an error.
    On,
    /// Translate the whole image.
    Off,
}

impl Align {
    /// Whether an image goes to the detector (else it is translated whole). `dimensions` is asked
    /// only when the answer depends on them.
    pub fn detects(self, model: &Model, dimensions: impl FnOnce() -> Result<(u32, u32)>) -> Result<bool> {
        Ok(match self {
            Align::Off => false,
            Align::On => true,
            Align::Auto => {
                let (w, h) = dimensions()?;
                !looks_aligned(w, h, model.input_size()) && wants_celeba_frame(model)
            }
        })
    }

    /// Whether an image in which no face was found is translated whole rather than refused.
    pub fn whole_without_faces(self) -> bool {
        self == Align::Auto
    }
}

impl std::str::FromStr for Align {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Align::Auto),
            "on" => Ok(Align::On),
            "off" => Ok(Align::Off),
            _ => Err(Error::Input(format!("`{s}` is not auto, on or off"))),
        }
    }
}

/// Detection failed to find what was asked for.
fn no_face(opts: &DetectOptions) -> Error {
    Error::Input(format!(
        "no face found (faces narrower than {} pixels are not searched for; lower `min_face_size` to \
         find smaller ones)",
        opts.min_face_size
    ))
}

/// Which faces of a photo to translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    All,
    /// The n-th largest, counting from 1.
    Nth(usize),
}

/// The faces of `photo`, largest first, each aligned; an error when there are none (or no n-th).
pub fn find_faces(
    detector: &Detector,
    photo: &RgbImage,
    opts: &DetectOptions,
    which: Which,
) -> Result<Vec<AlignedFace>> {
    choose(photo, detector.detect(photo, opts)?, opts, which)
}

/// Whether `model` was trained on faces in CelebA's frame, so that photos should be aligned for it:
/// any but a model trained on RaFD alone (whose photos are framed by a centre crop).
pub fn wants_celeba_frame(model: &Model) -> bool {
    !(model.labels_known && model.layout.domains.iter().all(|d| d.name == "RaFD"))
}

/// [`find_faces`] on faces already detected (largest first).
pub fn choose(
    photo: &RgbImage,
    faces: Vec<Face>,
    opts: &DetectOptions,
    which: Which,
) -> Result<Vec<AlignedFace>> {
    if faces.is_empty() {
        return Err(no_face(opts));
    }
    let chosen: Vec<Face> = match which {
        Which::All => faces,
        Which::Nth(n) if n >= 1 && n <= faces.len() => vec![faces[n - 1]],
        Which::Nth(n) => {
            return Err(Error::Input(format!(
                "`face` {n} asked for, but {} found (numbered from 1, largest first)",
                match faces.len() {
                    1 => "one face was".to_string(),
                    k => format!("{k} faces were"),
                }
            )))
        }
    };
    // Degenerate landmarks (all five in one spot) cannot be aligned; O-Net does not produce them
    // for a face it is sure of, so they are dropped rather than reported.
    let aligned: Vec<AlignedFace> = chosen.iter().filter_map(|f| align(photo, f)).collect();
    if aligned.is_empty() {
        return Err(no_face(opts));
    }
    Ok(aligned)
}

/// One face of a photo, translated.
pub struct TranslatedFace {
    pub aligned: AlignedFace,
    /// G's output, `size`² RGB.
    pub output: RgbImage,
}

/// A photo with its faces translated.
pub struct TranslatedPhoto {
    /// The photo at its own resolution, translated faces pasted in.
    pub composite: RgbImage,
    pub faces: Vec<TranslatedFace>,
}

/// Translate every chosen face of `photo` to `target` and paste each back.
pub fn translate_photo(
    model: &Model,
    faces: Vec<AlignedFace>,
    photo: &RgbImage,
    target: &Target,
    stats: NormStats,
    precision: Precision,
) -> Result<TranslatedPhoto> {
    let size = model.input_size();
    let mut composite = photo.clone();
    let mut out = Vec::with_capacity(faces.len());
    for aligned in faces {
        let x = model.input_of(&aligned.image)?;
        let y = model.translate_image(&x, target, stats, precision)?;
        let output = crate::image_io::to_rgb_image(&y)?;
        paste(&mut composite, &output, &aligned.network_to_photo(size));
        out.push(TranslatedFace { aligned, output });
    }
    Ok(TranslatedPhoto { composite, faces: out })
}

/// One line of a CelebA landmarks file (`list_landmarks_align_celeba.txt`): the name and the ten
/// coordinates, rounded to whole pixels as CelebA's are.
pub fn landmarks_line(name: &str, aligned: &AlignedFace) -> String {
    let mut line = name.to_string();
    for p in aligned.frame_landmarks() {
        line += &format!(" {} {}", p[0].round() as i64, p[1].round() as i64);
    }
    line
}

/// The header of a CelebA landmarks file for `count` entries.
pub fn landmarks_header(count: usize) -> String {
    format!(
        "{count}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y \
         rightmouth_x rightmouth_y\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    /// A JPEG whose EXIF says "rotate 90° clockwise to view" (orientation 6), as phones write
    /// portrait shots.
    fn rotated_jpeg(w: u32, h: u32) -> Vec<u8> {
        // TIFF header (little-endian), one IFD with Orientation (0x0112, SHORT) = 6.
        let mut exif = b"II*\0\x08\0\0\0\x01\0".to_vec();
        exif.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
        exif.extend_from_slice(&[0, 0, 0, 0]);
        let img = RgbImage::from_fn(w, h, |x, _| image::Rgb([if x < w / 2 { 255 } else { 0 }, 0, 0]));
        let mut out = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8).unwrap();
        out
    }

    #[test]
    fn photos_are_turned_upright_by_their_exif_orientation() {
        let bytes = rotated_jpeg(64, 32);
        let upright = decode_photo(&bytes, "portrait.jpg").unwrap();
        assert_eq!(upright.dimensions(), (32, 64));
        // Rotated clockwise, the red left half becomes the top half.
        assert!(upright.get_pixel(16, 8)[0] > 200 && upright.get_pixel(16, 56)[0] < 50);
        // Training images are read as stored, as PIL reads them.
        let stored = crate::data::transform::decode_image(&bytes, "portrait.jpg").unwrap();
        assert_eq!(stored.dimensions(), (64, 32));
    }

    #[test]
    fn aligned_sizes_are_recognised() {
        assert!(looks_aligned(128, 128, 128) && looks_aligned(178, 218, 128));
        assert!(!looks_aligned(512, 512, 128) && !looks_aligned(218, 178, 128));
    }
}
