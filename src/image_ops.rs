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

/// Encodes grey frames as a looping animated GIF; `delay_ms` per frame, the last held longer.
pub fn gif_bytes(frames: &[GrayImage], delay_ms: u32) -> Result<Vec<u8>> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, RgbaImage};
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite).map_err(|e| Error::Invalid(format!("gif: {e}")))?;
        for (i, f) in frames.iter().enumerate() {
            let rgba: RgbaImage = ImageBuffer::from_fn(f.width(), f.height(), |x, y| {
                let v = f.get_pixel(x, y)[0];
                image::Rgba([v, v, v, 255])
            });
            let d = if i + 1 == frames.len() { delay_ms * 15 } else { delay_ms };
            enc.encode_frame(Frame::from_parts(rgba, 0, 0, Delay::from_numer_denom_ms(d, 1)))
                .map_err(|e| Error::Invalid(format!("gif: {e}")))?;
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
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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

    #[test]
    fn clamps_and_nan() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(2.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn gif_is_a_gif() {
        let f = grid(&[0.5; 4], 2, 1, 1, 2, 0);
        let b = gif_bytes(&[f.clone(), f], 50).unwrap();
        assert!(b.starts_with(b"GIF89a"));
    }
}
