//! Tensor <-> image helpers shared by both parts: grids of single-channel images, PNG and
//! animated GIF encoding, all on plain `f32` buffers so they work the same natively and in wasm.

use image::{GrayImage, ImageBuffer, Luma};

use crate::{Error, Result};

/// Grey value of a pixel in [0, 1] (clamped; NaN becomes black).
pub fn to_u8(v: f32) -> u8 {
    if v.is_nan() { 0 } else { (v.clamp(0.0, 1.0) * 255.0).round() as u8 }
}

/// Tiles `n` square single-channel images of side `side` (row-major, `n * side * side` values in
/// [0, 1]) into a `rows x cols` grid, each pixel drawn `scale x scale`, with `pad` pixels of
/// `pad_value` between tiles.
pub fn grid(images: &[f32], side: usize, rows: usize, cols: usize, scale: usize, pad: usize) -> GrayImage {
    let n = images.len() / (side * side);
    let tile = side * scale;
    let w = cols * tile + (cols + 1) * pad;
    let h = rows * tile + (rows + 1) * pad;
    let mut img: GrayImage = ImageBuffer::from_pixel(w as u32, h as u32, Luma([128]));
    for k in 0..n.min(rows * cols) {
        let (r, c) = (k / cols, k % cols);
        let (ox, oy) = (pad + c * (tile + pad), pad + r * (tile + pad));
        for y in 0..tile {
            for x in 0..tile {
                let v = images[k * side * side + (y / scale) * side + x / scale];
                img.put_pixel((ox + x) as u32, (oy + y) as u32, Luma([to_u8(v)]));
            }
        }
    }
    img
}

/// Saves a grid as PNG, atomically (temporary file, then rename).
pub fn save_png(img: &GrayImage, path: &std::path::Path) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| Error::io(path, e))?;
    write_atomic(path, buf.get_ref())
}

/// Encodes grey frames (all of one size) as a looping animated GIF with a global 256-level grey
/// palette, so pixel values are kept exactly; `delay_ms` per frame, the last held 15x longer.
pub fn gif_bytes(frames: &[GrayImage], delay_ms: u32) -> Result<Vec<u8>> {
    let first = frames.first().ok_or_else(|| Error::Invalid("an animation needs at least one frame".into()))?;
    let (w, h) = (first.width(), first.height());
    if w > u16::MAX as u32 || h > u16::MAX as u32 || frames.iter().any(|f| f.dimensions() != (w, h)) {
        return Err(Error::Invalid("GIF frames must share one size of at most 65535 pixels a side".into()));
    }
    let palette: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let err = |e: gif::EncodingError| Error::Invalid(format!("gif: {e}"));
    let mut out = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut out, w as u16, h as u16, &palette).map_err(err)?;
        enc.set_repeat(gif::Repeat::Infinite).map_err(err)?;
        for (i, f) in frames.iter().enumerate() {
            let mut frame = gif::Frame::from_indexed_pixels(w as u16, h as u16, f.as_raw().clone(), None);
            let ms = if i + 1 == frames.len() { delay_ms * 15 } else { delay_ms };
            frame.delay = (ms / 10).clamp(1, u16::MAX as u32) as u16; // GIF counts hundredths
            enc.write_frame(&frame).map_err(err)?;
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` so that `path` is always either the old file or the new one whole:
/// write a sibling temporary file, flush it to disk, rename over.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // One temporary name per process and call: two runs writing the same file never share one,
    // and the last rename wins whole.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, format!("{e} (is the disk full?); the previous file, if any, is unchanged")))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(target_arch = "wasm32")]
pub fn write_atomic(path: &std::path::Path, _bytes: &[u8]) -> Result<()> {
    Err(Error::io(path, "no file system in the browser"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_tiles() {
        let side = 2;
        let imgs = vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let g = grid(&imgs, side, 1, 2, 1, 1);
        assert_eq!((g.width(), g.height()), (7, 4));
        assert_eq!(g.get_pixel(1, 1)[0], 0);
        assert_eq!(g.get_pixel(4, 1)[0], 255);
        assert_eq!(g.get_pixel(0, 0)[0], 128);
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("dp-atomic-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("taken/inner")).unwrap();
        // Renaming a file over a non-empty folder fails after the data is written.
        assert!(write_atomic(&dir.join("taken"), b"data").is_err());
        write_atomic(&dir.join("ok.bin"), b"data").unwrap();
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert_eq!(std::fs::read(dir.join("ok.bin")).unwrap(), b"data");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn clamps_and_nan() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(2.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn gif_frames_keep_their_pixels() {
        use image::AnimationDecoder;
        let a = grid(&[0.0, 0.25, 0.5, 1.0], 2, 1, 1, 1, 0);
        let b = grid(&[1.0, 0.75, 0.5, 0.0], 2, 1, 1, 1, 0);
        let bytes = gif_bytes(&[a.clone(), b.clone()], 50).unwrap();
        assert!(bytes.starts_with(b"GIF89a"));
        let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes)).unwrap().into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 2);
        for (f, want) in frames.iter().zip([&a, &b]) {
            let got: Vec<u8> = f.buffer().pixels().map(|p| p[0]).collect();
            assert_eq!(&got, want.as_raw());
        }
        assert!(gif_bytes(&[], 50).is_err());
    }
}

/// The normalised 1-D Gaussian of `kernel` taps (odd) and `sigma`, as torchvision's
/// `gaussian_blur` builds it.
pub fn gaussian_kernel(kernel: usize, sigma: f32) -> Vec<f32> {
    let r = (kernel as f32 - 1.0) / 2.0;
    let k: Vec<f32> = (0..kernel).map(|i| (-0.5 * ((i as f32 - r) / sigma).powi(2)).exp()).collect();
    let s: f32 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// `n x n` matrix `A` with `(A x)[i] = sum_k g[k] x[reflect(i + k - r)]`: a 1-D blur with
/// torchvision's reflect padding, as one matmul (exact, and the same on every backend).
pub fn blur_matrix(n: usize, kernel: usize, sigma: f32) -> Vec<f32> {
    let g = gaussian_kernel(kernel, sigma);
    let r = (kernel / 2) as isize;
    let mut a = vec![0f32; n * n];
    let reflect = |mut j: isize| -> usize {
        let n = n as isize;
        while j < 0 || j >= n {
            j = if j < 0 { -j } else { 2 * (n - 1) - j };
        }
        j as usize
    };
    for i in 0..n {
        for (k, w) in g.iter().enumerate() {
            a[i * n + reflect(i as isize + k as isize - r)] += w;
        }
    }
    a
}

/// Separable Gaussian blur with reflect padding (torchvision `gaussian_blur`). The padding needs
/// `kernel / 2 < side`; callers check sizes first.
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, H, W]`
pub fn gaussian_blur(x: burn::tensor::Tensor<4>, kernel: usize, sigma: f32) -> burn::tensor::Tensor<4> {
    use burn::tensor::{Tensor, TensorData};
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let ah = Tensor::<2>::from_data(TensorData::new(blur_matrix(h, kernel, sigma), [h, h]), &device);
    let aw = Tensor::<2>::from_data(TensorData::new(blur_matrix(w, kernel, sigma), [w, w]), &device);
    // rows: x[.., i, :] = sum_j Ah[i, j] x[.., j, :]; columns: x @ Aw^T.
    let y = x.matmul(aw.transpose().reshape([1, 1, w, w]).expand([b, c, w, w]));
    ah.reshape([1, 1, h, h]).expand([b, c, h, h]).matmul(y)
}

/// How an arbitrary picture becomes the model's square input: the centred square of the
/// shorter side is cut out, then resized to `side` with a triangle (bilinear, area-aware when
/// shrinking) filter. Returns CHW values in [-1, 1] and the original (width, height).
pub fn decode_rgb_square(bytes: &[u8], side: usize, source: &str) -> Result<(Vec<f32>, (u32, u32))> {
    let img = image::load_from_memory(bytes).map_err(|e| Error::format(source, format!("cannot be decoded as an image ({e}); use PNG or JPEG")))?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(Error::format(source, "is an empty image"));
    }
    let s = w.min(h);
    let sq = img.crop_imm((w - s) / 2, (h - s) / 2, s, s).to_rgb8();
    let r = image::imageops::resize(&sq, side as u32, side as u32, image::imageops::FilterType::Triangle);
    let mut v = vec![0f32; 3 * side * side];
    for (x, y, p) in r.enumerate_pixels() {
        for c in 0..3 {
            v[c * side * side + y as usize * side + x as usize] = p[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok((v, (w, h)))
}

/// A mask picture (white = 1 = where new content goes) with the same crop rule as the image it
/// belongs to; it must have that image's size. Nearest resampling, threshold at half grey.
pub fn decode_mask_square(bytes: &[u8], side: usize, image_size: (u32, u32), source: &str) -> Result<Vec<f32>> {
    let img = image::load_from_memory(bytes).map_err(|e| Error::format(source, format!("cannot be decoded as an image ({e}); use PNG")))?;
    let (w, h) = (img.width(), img.height());
    if (w, h) != image_size {
        return Err(Error::format(source, format!("the mask is {w}x{h} but the image is {}x{}: draw the mask at the image's size", image_size.0, image_size.1)));
    }
    let s = w.min(h);
    let sq = img.crop_imm((w - s) / 2, (h - s) / 2, s, s).to_luma8();
    let r = image::imageops::resize(&sq, side as u32, side as u32, image::imageops::FilterType::Nearest);
    Ok(r.pixels().map(|p| if p[0] >= 128 { 1.0 } else { 0.0 }).collect())
}

/// CHW values in [-1, 1] (3 planes of `side x side`) as an RGB image, each pixel `scale x scale`.
pub fn rgb_image(chw: &[f32], side: usize, scale: usize) -> image::RgbImage {
    let n = side * side;
    image::RgbImage::from_fn((side * scale) as u32, (side * scale) as u32, |x, y| {
        let i = (y as usize / scale) * side + x as usize / scale;
        let px = |c: usize| to_u8((chw[c * n + i] + 1.0) / 2.0);
        image::Rgb([px(0), px(1), px(2)])
    })
}

/// Several RGB images side by side with a 2-pixel white gap.
pub fn rgb_row(images: &[image::RgbImage]) -> image::RgbImage {
    let h = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let w: u32 = images.iter().map(|i| i.width() + 2).sum::<u32>().saturating_sub(2);
    let mut out = image::RgbImage::from_pixel(w.max(1), h.max(1), image::Rgb([255, 255, 255]));
    let mut x0 = 0;
    for im in images {
        image::imageops::overlay(&mut out, im, x0 as i64, 0);
        x0 += im.width() + 2;
    }
    out
}

/// Writes an RGB PNG atomically.
pub fn save_rgb_png(img: &image::RgbImage, path: &std::path::Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| Error::io(path, e))?;
    write_atomic(path, &bytes)
}
