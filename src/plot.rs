//! Loss curves as PNG (desktop only), drawn with plotters into a buffer and saved atomically.

use std::path::Path;

use plotters::prelude::*;

use crate::image_ops::write_atomic;
use crate::{Error, Result};

const FONT_PATHS: [&str; 2] = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

/// plotters needs a registered font for axis labels; DejaVu is installed by the set-up command.
fn ensure_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Plots every step's loss (thin) and a moving average (thick) on a log scale.
pub fn loss_png(losses: &[f32], path: &Path) -> Result<()> {
    if losses.is_empty() {
        return Ok(());
    }
    if !ensure_font() {
        eprintln!("warning: no DejaVuSans.ttf found (apt-get install fonts-dejavu-core); {} not drawn, the CSV has the data", path.display());
        return Ok(());
    }
    let (w, h) = (900u32, 500u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let err = |e: &dyn std::fmt::Display| Error::io(path, format!("plot: {e}"));
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let lo = losses.iter().copied().filter(|v| *v > 0.0).fold(f32::INFINITY, f32::min).max(1e-6);
        let hi = losses.iter().copied().fold(0.0f32, f32::max).max(lo * 1.01);
        let mut chart = ChartBuilder::on(&root)
            .caption("training loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            // log10 on a linear axis: plotters' log scale labels only whole decades.
            .build_cartesian_2d(1usize..losses.len().max(2), lo.log10()..hi.log10())
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc("step").y_desc("loss (log)").y_labels(10).y_label_formatter(&|v| format!("{:.3}", 10f32.powf(*v))).draw().map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(losses.iter().enumerate().map(|(i, &v)| (i + 1, v.max(lo).log10())), RGBColor(150, 180, 230)))
            .map_err(|e| err(&e))?;
        let k = (losses.len() / 100).max(1);
        let smooth: Vec<(usize, f32)> = losses
            .chunks(k)
            .enumerate()
            .map(|(i, c)| (i * k + c.len() / 2 + 1, (c.iter().sum::<f32>() / c.len() as f32).max(lo).log10()))
            .collect();
        chart.draw_series(LineSeries::new(smooth, BLUE.stroke_width(2))).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::io(path, "plot buffer"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| Error::io(path, e))?;
    write_atomic(path, out.get_ref())
}
