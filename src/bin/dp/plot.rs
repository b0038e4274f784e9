//! Loss curves as PNG (desktop only), drawn with plotters into a buffer and saved atomically.

use std::path::Path;

use plotters::prelude::*;

use diffusion_playground::image_ops::write_atomic;
use diffusion_playground::{Error, Result};

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

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws a 900x500 chart on white with `draw` and saves it as a PNG at `path`. Without a font it
/// warns and writes nothing (callers keep the numbers in a CSV beside it).
fn save_chart(path: &Path, draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    if !ensure_font() {
        eprintln!("warning: no DejaVuSans.ttf found (apt-get install fonts-dejavu-core); {} not drawn, the CSV has the data", path.display());
        return Ok(());
    }
    let (w, h) = (900u32, 500u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let drawn: DrawResult = (|| {
            root.fill(&WHITE)?;
            draw(&root)?;
            root.present()?;
            Ok(())
        })();
        drawn.map_err(|e| Error::io(path, format!("plot: {e}")))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::io(path, "plot buffer"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| Error::io(path, e))?;
    write_atomic(path, out.get_ref())
}

/// Plots every step's loss (thin) and a moving average (thick) on a log scale.
/// Only finite positive losses can go on a log axis; a chart of none is not drawn (an infinite
/// axis range makes plotters' tick search run forever).
fn plottable(v: f32) -> bool {
    v > 0.0 && v.is_finite()
}

/// The log axis' range over the plottable values, or None when there are none.
fn log_range(values: impl Iterator<Item = f32>) -> Option<(f32, f32)> {
    let (lo, hi) = values.filter(|v| plottable(*v)).fold((f32::INFINITY, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (hi > 0.0).then(|| (lo.max(1e-6), hi.max(lo.max(1e-6) * 1.01)))
}

pub fn loss_png(losses: &[f32], path: &Path) -> Result<()> {
    let Some((lo, hi)) = log_range(losses.iter().copied()) else {
        eprintln!("warning: no finite positive loss to plot; {} not drawn", path.display());
        return Ok(());
    };
    let losses: Vec<f32> = losses.iter().map(|&v| if plottable(v) { v } else { lo }).collect();
    let losses = &losses[..];
    save_chart(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("training loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            // log10 on a linear axis: plotters' log scale labels only whole decades.
            .build_cartesian_2d(1usize..losses.len().max(2), lo.log10()..hi.log10())?;
        chart.configure_mesh().x_desc("step").y_desc("loss (log)").y_labels(10).y_label_formatter(&|v| format!("{:.3}", 10f32.powf(*v))).draw()?;
        chart.draw_series(LineSeries::new(losses.iter().enumerate().map(|(i, &v)| (i + 1, v.max(lo).log10())), RGBColor(150, 180, 230)))?;
        let k = (losses.len() / 100).max(1);
        let smooth: Vec<(usize, f32)> = losses
            .chunks(k)
            .enumerate()
            .map(|(i, c)| (i * k + c.len() / 2 + 1, (c.iter().sum::<f32>() / c.len() as f32).max(lo).log10()))
            .collect();
        chart.draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))?;
        Ok(())
    })
}

/// Several runs' losses on one chart against epochs (runs of different batch sizes line up):
/// each a moving average over a twentieth of an epoch, on a log scale, with a legend.
/// `series`: (label, every step's loss, steps per epoch).
pub fn loss_compare_png(series: &[(String, Vec<f32>, usize)], path: &Path) -> Result<()> {
    if series.iter().all(|s| s.1.is_empty()) {
        return Ok(());
    }
    let curves: Vec<(&str, Vec<(f32, f32)>)> = series
        .iter()
        .map(|(label, losses, spe)| {
            let k = (spe / 20).max(1);
            let pts = losses
                .chunks(k)
                .enumerate()
                .map(|(i, c)| (((i * k) as f32 + c.len() as f32 / 2.0) / *spe as f32, c.iter().sum::<f32>() / c.len() as f32))
                .filter(|(_, v)| plottable(*v))
                .collect();
            (label.as_str(), pts)
        })
        .collect();
    let all = || curves.iter().flat_map(|c| c.1.iter());
    let Some((lo, hi)) = log_range(all().map(|p| p.1)) else {
        eprintln!("warning: no finite positive loss to plot; {} not drawn", path.display());
        return Ok(());
    };
    let x_max = all().map(|p| p.0).fold(0.0f32, f32::max).max(0.05);
    save_chart(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("training loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            // A little room below and above, so the lowest curve does not run along the axis.
            .build_cartesian_2d(0f32..x_max * 1.02, (lo * 0.95).log10()..(hi * 1.05).log10())?;
        chart.configure_mesh().x_desc("epoch").y_desc("loss (log)").y_labels(10).y_label_formatter(&|v| format!("{:.3}", 10f32.powf(*v))).draw()?;
        const COLORS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
        for (i, (label, pts)) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().map(|&(x, y)| (x, y.log10())), color.stroke_width(2)))?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_that_cannot_be_plotted_end_quickly() {
        let dir = std::env::temp_dir().join(format!("dp-plot-{}", std::process::id()));
        for losses in [vec![f32::INFINITY, 1.0], vec![f32::NAN, 0.5], vec![0.0, -1.0], vec![f32::INFINITY], vec![]] {
            loss_png(&losses, &dir.join("loss.png")).unwrap();
            loss_compare_png(&[("a".into(), losses.clone(), 1)], &dir.join("cmp.png")).unwrap();
        }
        assert_eq!(log_range([f32::INFINITY, f32::NAN, -2.0].into_iter()), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
