//! What a run draws: the per-epoch sample or denoising grid and the loss history (loss.csv; the
//! CLI draws loss.png from the `Losses` event).

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::{Recipe, TrainConfig};
use crate::image_ops::{grid, save_png, write_atomic};
use crate::mnist::data::{Dataset, Split};
use crate::mnist::flow::{noise, FlowPipeline, FlowSampler, Solver};
use crate::mnist::unet::UNet;
use crate::rng::Rng;
use crate::sampling::{RunContext, SeededNoise};
use crate::{Error, Result};

/// The figure an epoch writes (a recipe's samples or denoising grid).
pub(super) fn figure_path(config: &TrainConfig, dir: &Path, epoch: usize) -> PathBuf {
    match config.recipe {
        Recipe::Denoiser | Recipe::PureNoise => dir.join(format!("denoise_epoch{epoch}.png")),
        _ => dir.join(format!("samples_epoch{epoch}.png")),
    }
}

/// Euler steps of the per-epoch sample grids (the course used 300; 50 is within its noise).
pub const FIGURE_STEPS: usize = 50;

/// The figures a recipe owes after an epoch: 4 samples per digit (class flow), 40 samples
/// (time flow), or test-set denoising (denoisers).
pub(super) fn epoch_figures(config: &TrainConfig, model: &UNet, device: &Device, dir: &Path, epoch: usize, data_dir: Option<&Path>) -> Result<()> {
    let model = model.clone().to_device(device);
    match config.recipe {
        Recipe::Denoiser | Recipe::PureNoise => {
            let ddir = data_dir.map(Path::to_path_buf).unwrap_or_else(|| config.dataset.default_dir());
            let test = Dataset::load(&ddir, Split::Test, config.dataset)?;
            test.require(1, "the denoising figure")?;
            let img = denoise_grid(&model, &test, config.sigma, config.recipe == Recipe::PureNoise, 8.min(test.len()), config.seed, device);
            save_png(&img, &figure_path(config, dir, epoch))
        }
        _ => {
            let labels: Vec<usize> = (0..4).flat_map(|_| 0..10).collect();
            let mut noise = SeededNoise(Rng::new(config.seed ^ 0x5eed));
            let pipeline = FlowPipeline::new(&model, FlowSampler::new(Solver::Euler, FIGURE_STEPS));
            let out = pipeline.sample(&labels, 5.0, &mut RunContext::new(&mut noise).with_frame_every(0))?.image;
            let v: Vec<f32> = out.into_data().try_to_vec().map_err(|e| Error::Device(format!("{e:?}")))?;
            save_png(&grid(&v, 28, 4, 10, 2, 2), &figure_path(config, dir, epoch))
        }
    }
}

/// Rows: clean test digits, their noisy versions, the model's outputs (`n` columns).
pub fn denoise_grid(model: &UNet, test: &Dataset, sigma: f32, pure_noise: bool, n: usize, seed: u64, device: &Device) -> image::GrayImage {
    let idx: Vec<usize> = (0..n).collect();
    let (x, _) = test.batch(&idx, device);
    let eps = noise(&mut Rng::new(seed ^ 0xd0e5), n, device);
    let z = if pure_noise { eps } else { x.clone() + eps * sigma };
    let y = model.forward(z.clone(), None, None);
    let all = Tensor::cat(vec![x, z, y], 0);
    let v: Vec<f32> = all.into_data().try_to_vec().unwrap_or_default();
    grid(&v, 28, 3, n, 3, 2)
}

/// Writes `loss.csv` (step, epoch, loss).
pub(super) fn write_loss_csv(dir: &Path, losses: &[f32], steps_per_epoch: usize) -> Result<()> {
    let mut csv = String::from("step,epoch,loss\n");
    for (i, l) in losses.iter().enumerate() {
        csv.push_str(&format!("{},{},{}\n", i + 1, i / steps_per_epoch + 1, l));
    }
    write_atomic(&dir.join("loss.csv"), csv.as_bytes())
}

/// Mean pixel-space MSE on a few test images (used by tests and reports).
pub fn pixels_mse(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len().max(1) as f32
}
