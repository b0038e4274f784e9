//! `dp figures`: the denoiser deliverables and loss curves.

use std::path::PathBuf;

use burn::prelude::*;
use clap::{Args, Subcommand};
use diffusion_playground::image_ops::{grid, save_png, write_atomic};
use diffusion_playground::mnist::PIXELS;
use diffusion_playground::mnist::data::{Dataset, DatasetKind, Split};
use diffusion_playground::mnist::flow::noise;
use diffusion_playground::mnist::train;
use diffusion_playground::rng::Rng;
use diffusion_playground::{Error, Result};

use crate::models;
use super::to_vec;

#[derive(Args)]
pub(super) struct FiguresArgs {
    #[command(subcommand)]
    figure: Figure,
}

#[derive(Subcommand)]
pub(super) enum Figure {
    /// Test digits noised at sigma 0, .2, .4, .5, .6, .8, 1.
    Noising {
        #[arg(long, default_value = "figures/noising.png")]
        out: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// A denoiser trained at one sigma applied at every sigma (rows: noisy, denoised).
    Ood {
        #[arg(long, default_value = "runs/denoiser")]
        model: String,
        #[arg(long)]
        epoch: Option<usize>,
        #[arg(long, default_value = "figures/ood.png")]
        out: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Redraws a run's loss.png from its loss.csv (say, after training on a machine without fonts).
    Loss {
        /// Run directory holding loss.csv.
        run: PathBuf,
    },
    /// Several runs' loss curves on one chart (by epoch), with a CSV and a table of each epoch's
    /// mean loss: recipe 5 against recipe 4, say.
    Compare {
        /// Run directories (or checkpoint files) to compare.
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// The chart; the per-epoch means go beside it as .csv.
        #[arg(long, default_value = "figures/loss_compare.png")]
        out: PathBuf,
    },
    /// Pure-noise denoiser outputs beside the training-set mean image.
    Mean {
        #[arg(long, default_value = "runs/pure-noise")]
        model: String,
        #[arg(long)]
        epoch: Option<usize>,
        #[arg(long, default_value = "figures/pure_noise_vs_mean.png")]
        out: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

pub(super) const SIGMAS: [f32; 7] = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0];

pub(super) fn test_digits(data: &Option<PathBuf>, n: usize, device: &Device) -> Result<Tensor<4>> {
    let dir = data.clone().unwrap_or_else(|| DatasetKind::Mnist.default_dir());
    let test = Dataset::load(&dir, Split::Test, DatasetKind::Mnist)?;
    test.require(n, "this figure")?;
    Ok(test.batch(&(0..n).collect::<Vec<_>>(), device).0)
}

pub(super) fn cmd_figures(a: FiguresArgs, device: &Device) -> Result<()> {
    match a.figure {
        Figure::Noising { out, data } => {
            let x = test_digits(&data, 5, device)?;
            let mut rows = Vec::new();
            let eps = noise(&mut Rng::new(1), 5, device);
            for s in SIGMAS {
                rows.push(x.clone() + eps.clone() * s);
            }
            // Columns are sigmas: transpose [sigma, digit] into [digit, sigma].
            let v = to_vec(Tensor::stack::<5>(rows, 1).reshape([5 * SIGMAS.len(), 1, 28, 28]))?;
            save_png(&grid(&v, 28, 5, SIGMAS.len(), 3, 2), &out)?;
            println!("columns sigma = {SIGMAS:?} -> {}", out.display());
        }
        Figure::Loss { run } => {
            let csv = run.join("loss.csv");
            let text = std::fs::read_to_string(&csv).map_err(|e| Error::io(&csv, e))?;
            let mut losses = Vec::new();
            for (i, line) in text.lines().enumerate().skip(1) {
                let v = line.rsplit(',').next().and_then(|v| v.trim().parse::<f32>().ok());
                losses.push(v.ok_or_else(|| Error::format(&csv, format!("line {}: expected step,epoch,loss", i + 1)))?);
            }
            let out = run.join("loss.png");
            crate::plot::loss_png(&losses, &out)?;
            println!("{} losses -> {}", losses.len(), out.display());
        }
        Figure::Compare { runs, out } => {
            let mut series = Vec::new();
            let mut means = Vec::new();
            for r in &runs {
                let (p, spe) = train::run_losses(r)?;
                // A checkpoint file is named after its run folder.
                let named = if r.is_dir() { r.as_path() } else { r.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(r) };
                let name = named.file_name().map_or_else(|| r.display().to_string(), |n| n.to_string_lossy().to_string());
                let recipe = serde_json::to_value(p.config.recipe).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                let label = format!("{name} ({recipe}, lr {:.0e}{})", p.config.lr, if p.config.schedule.gamma().is_some() { ", decayed" } else { ", constant" });
                means.push((label.clone(), train::epoch_means(&p.losses, spe), p.losses.len() % spe != 0));
                series.push((label, p.losses, spe));
            }
            let epochs = means.iter().map(|m| m.1.len()).max().unwrap_or(0);
            // Each run gets its mean and the number of steps behind it, so a partial epoch stays visible in the CSV.
            let header: Vec<String> = means.iter().map(|m| format!("\"{0} mean\",\"{0} steps\"", m.0)).collect();
            let mut csv = format!("epoch,{}\n", header.join(","));
            println!("mean loss per epoch (* = epoch not finished):");
            for (i, m) in means.iter().enumerate() {
                println!("  [{}] {}", i + 1, m.0);
            }
            for e in 0..epochs {
                let cells: Vec<String> = means
                    .iter()
                    .zip(&series)
                    .map(|(m, (_, losses, spe))| m.1.get(e).map_or(",".to_string(), |v| format!("{v:.5},{}", (losses.len() - e * spe).min(*spe))))
                    .collect();
                csv.push_str(&format!("{},{}\n", e + 1, cells.join(",")));
                let shown: Vec<String> = means
                    .iter()
                    .map(|m| m.1.get(e).map_or("-".to_string(), |v| format!("{v:.5}{}", if m.2 && e + 1 == m.1.len() { "*" } else { " " })))
                    .collect();
                println!("  epoch {:>2}: {}", e + 1, shown.iter().enumerate().map(|(i, c)| format!("[{}] {c:<9}", i + 1)).collect::<Vec<_>>().join("  "));
            }
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            let csv_path = out.with_extension("csv");
            write_atomic(&csv_path, csv.as_bytes())?;
            crate::plot::loss_compare_png(&series, &out)?;
            println!("-> {} and {}", out.display(), csv_path.display());
        }
        Figure::Ood { model, epoch, out, data } => {
            let (m, from) = models::load_unet(&model, epoch, device)?;
            let x = test_digits(&data, 4, device)?;
            let eps = noise(&mut Rng::new(2), 4, device);
            let mut noisy = Vec::new();
            let mut clean = Vec::new();
            for s in SIGMAS {
                let z = x.clone() + eps.clone() * s;
                clean.push(m.forward(z.clone(), None, None));
                noisy.push(z);
            }
            // Per digit: a row of noisy inputs, then a row of outputs.
            let mut rows = Vec::new();
            for d in 0..4 {
                for set in [&noisy, &clean] {
                    for t in set.iter() {
                        rows.push(t.clone().slice([d..d + 1]));
                    }
                }
            }
            let v = to_vec(Tensor::cat(rows, 0))?;
            save_png(&grid(&v, 28, 8, SIGMAS.len(), 3, 2), &out)?;
            println!("{from}: rows alternate noisy / denoised, columns sigma = {SIGMAS:?} -> {}", out.display());
        }
        Figure::Mean { model, epoch, out, data } => {
            let (m, from) = models::load_unet(&model, epoch, device)?;
            let dir = data.unwrap_or_else(|| DatasetKind::Mnist.default_dir());
            let train_set = Dataset::load(&dir, Split::Train, DatasetKind::Mnist)?;
            train_set.require(1, "the training-set mean image")?;
            let mean = train_set.mean_image();
            let z = noise(&mut Rng::new(3), 7, device);
            let mut v = to_vec(m.forward(z, None, None))?;
            v.extend(&mean);
            let mse: Vec<f32> = v[..7 * PIXELS].chunks(PIXELS).map(|o| train::pixels_mse(o, &mean)).collect();
            save_png(&grid(&v, 28, 1, 8, 3, 2), &out)?;
            println!("{from}: 7 outputs on pure noise, then the training mean (last); MSE to the mean {mse:.5?} -> {}", out.display());
        }
    }
    Ok(())
}
