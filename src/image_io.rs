//! Images in and out of the networks: loading user images for translation, and writing PNGs
//! quantised exactly as torchvision's `save_image` does, so our files match the reference's.

use crate::checkpoint::write_atomic;
use crate::data::transform::{load_image, Pipeline};
use crate::error::{Error, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// An image file as a `[1,3,size,size]` tensor in [-1, 1]. An image already `size`×`size` is used as
/// it is; any other is centre-cropped to a square and resized (PIL's bilinear with antialiasing).
pub fn load_input(path: &Path, size: u32) -> Result<Tensor> {
    let img = load_image(path)?;
    let (w, h) = img.dimensions();
    let pipeline = Pipeline::new(w.min(h), size)?;
    let mut buf = vec![0f32; pipeline.output_len()];
    pipeline.apply_into(img, false, &mut buf)?;
    Ok(Tensor::from_slice(&buf).view([1, 3, size as i64, size as i64]))
}

/// `[3,H,W]` in [-1, 1] → `[H,W,3]` u8, as `save_image(denorm(x))`: clamp((x+1)/2, 0, 1)·255 + 0.5,
/// clamped and truncated.
pub fn quantize(x: &Tensor) -> Tensor {
    let y = ((x.to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0);
    (y * 255.0 + 0.5).clamp(0.0, 255.0).to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous()
}

/// Rows of images side by side: `columns[j]` is `[N,3,H,W]`; row i of the grid shows image i of every
/// column left to right (the reference's `torch.cat(x_fake_list, dim=3)` saved with nrow=1, padding=0).
pub fn grid(columns: &[Tensor]) -> Tensor {
    let wide = Tensor::cat(columns, 3).to_device(tch::Device::Cpu);
    let (n, c, h, w) = wide.size4().expect("grid columns are NCHW");
    wide.permute([1, 0, 2, 3]).reshape([c, n * h, w])
}

/// Write a `[3,H,W]` image in [-1, 1] as PNG (atomically).
pub fn save_png(path: &Path, x: &Tensor) -> Result<()> {
    let q = quantize(&x.to_device(tch::Device::Cpu));
    let (h, w, _) = q.size3().expect("quantize gives HWC");
    let bytes = crate::checkpoint::tensor_bytes(&q);
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&bytes, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Config(format!("cannot encode {}: {e}", path.display())))?;
    write_atomic(path, &png)?;
    Ok(())
}

use image::ImageEncoder;
