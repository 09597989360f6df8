//! Images in and out of the networks: decoding user images (files or bytes) for translation, and
//! encoding outputs quantised exactly as torchvision's `save_image` does, so our PNGs match the
//! reference's.

use crate::data::transform::{decode_image, from_chw_normalized, load_image, Pipeline};
use crate::error::{Error, Result};
use image::{ImageEncoder, RgbImage};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// An output encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    /// Baseline JPEG at quality 95.
    Jpeg,
}

impl ImageFormat {
    /// The format a file name asks for: `.png`, `.jpg`/`.jpeg` (any case); `None` for anything else.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "png" => Some(ImageFormat::Png),
            "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }
}

pub fn to_network_input(img: RgbImage, size: u32) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let pipeline = Pipeline::new(w.min(h), size)?;
    let mut buf = vec![0f32; pipeline.output_len()];
    pipeline.apply_into(img, false, &mut buf)?;
    Ok(Tensor::from_slice(&buf).view([1, 3, size as i64, size as i64]))
}

/// An image file as a `[1,3,size,size]` tensor in [-1, 1]. An image already `size`×`size` is used as
/// it is; any other is centre-cropped to a square and resized (PIL's bilinear with antialiasing).
pub fn load_input(path: &Path, size: u32) -> Result<Tensor> {
    to_network_input(load_image(path)?, size)
}

/// [`load_input`] for an image file held in memory; `name` appears in error messages.
pub fn decode_input(bytes: &[u8], name: &str, size: u32) -> Result<Tensor> {
    to_network_input(decode_image(bytes, name)?, size)
}

/// `[3,H,W]` in [-1, 1] → interleaved RGB bytes, as `save_image(denorm(x))` quantises.
pub fn to_rgb8(x: &Tensor) -> Result<(Vec<u8>, u32, u32)> {
    let (_, h, w) = x.size3()?;
    let chw = Vec::<f32>::try_from(x.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]))?;
    Ok((from_chw_normalized(&chw), w as u32, h as u32))
}

/// `[3,H,W]` in [-1, 1] → an RGB image, quantised as [`to_rgb8`].
pub fn to_rgb_image(x: &Tensor) -> Result<RgbImage> {
    let (rgb, w, h) = to_rgb8(x)?;
    RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| Error::Internal(format!("a {w}×{h} image of the wrong length")))
}

/// Rows of images side by side: `columns[j]` is `[N,3,H,W]`; row i of the grid shows image i of every
/// column left to right (the reference's `torch.cat(x_fake_list, dim=3)` saved with nrow=1, padding=0).
pub fn grid(columns: &[Tensor]) -> Tensor {
    let wide = Tensor::cat(columns, 3).to_device(Device::Cpu);
    let (n, c, h, w) = wide.size4().expect("grid columns are NCHW");
    wide.permute([1, 0, 2, 3]).reshape([c, n * h, w])
}

/// Encode interleaved RGB bytes.
pub fn encode_rgb8(rgb: &[u8], w: u32, h: u32, format: ImageFormat) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let res =
        match format {
            ImageFormat::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
                rgb,
                w,
                h,
                image::ExtendedColorType::Rgb8,
            ),
            ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
                .write_image(rgb, w, h, image::ExtendedColorType::Rgb8),
        };
    res.map_err(|e| Error::Internal(format!("cannot encode a {w}×{h} {format:?}: {e}")))?;
    Ok(out)
}

/// Encode a `[3,H,W]` image in [-1, 1].
pub fn encode(x: &Tensor, format: ImageFormat) -> Result<Vec<u8>> {
    let (rgb, w, h) = to_rgb8(x)?;
    encode_rgb8(&rgb, w, h, format)
}

/// Write a `[3,H,W]` image in [-1, 1] as PNG (atomically).
pub fn save_png(path: &Path, x: &Tensor) -> Result<()> {
    let png = encode(x, ImageFormat::Png)?;
    crate::files::write(path, &png)
}
