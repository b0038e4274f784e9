//! `dp sample`: a grid of digits (and the trajectory as a GIF) from a flow model.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use clap::Args;
use diffusion_playground::image_ops::{gif_bytes, grid, save_png, write_atomic};
use diffusion_playground::mnist::CLASSES;
use diffusion_playground::mnist::flow::{FlowPipeline, FlowSampler};
use diffusion_playground::sampling::{RunContext, SeededNoise};
use diffusion_playground::mnist::unet::{Conditioning, UNet};
use diffusion_playground::rng::Rng;
use diffusion_playground::{Error, Result};

use crate::args::count;
use crate::models;
use crate::stop::stop_flag;
use super::{guidance_label, to_vec, SamplerArgs};

#[derive(Args)]
pub(super) struct SampleArgs {
    /// Run directory, a .bpk inside one, or pkg:NAME.
    #[arg(long, default_value = "pkg:class_flow")]
    model: String,
    /// Use the snapshot of this epoch of a run directory.
    #[arg(long)]
    epoch: Option<usize>,
    /// Digits to draw (default 0-9); ignored by a time-only model.
    #[arg(long, value_delimiter = ',')]
    digits: Option<Vec<usize>>,
    /// Samples per digit (rows of the grid).
    #[arg(long, default_value_t = 4, value_parser = count(100))]
    per_digit: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write the trajectory as an animated GIF.
    #[arg(long)]
    gif: Option<PathBuf>,
}

pub(super) fn labels_for(model: &UNet, digits: &[usize], per_digit: usize) -> Vec<usize> {
    match model.conditioning() {
        Conditioning::TimeClass => (0..per_digit).flat_map(|_| digits.iter().copied()).collect(),
        _ => vec![0; per_digit * digits.len()],
    }
}

pub(super) fn cmd_sample(a: SampleArgs, device: &Device) -> Result<()> {
    let (model, from) = models::load_unet(&a.model, a.epoch, device)?;
    if model.conditioning() == Conditioning::None {
        return Err(Error::Invalid(format!("{from} is a denoiser, not a flow model: use `dp figures`")));
    }
    let digits = a.digits.unwrap_or_else(|| (0..10).collect());
    if let Some(d) = digits.iter().find(|&&d| d >= CLASSES) {
        return Err(Error::Invalid(format!("--digits: {d} is not a digit 0-9")));
    }
    let labels = labels_for(&model, &digits, a.per_digit);
    let mut noise = SeededNoise(Rng::new(a.sampler.seed));
    let pipeline = FlowPipeline::new(&model, FlowSampler::new(a.sampler.solver, a.sampler.steps));
    let (rows, cols) = (a.per_digit, digits.len());
    let t = Instant::now();
    // The GIF keeps about 50 frames, the first (pure noise) and the last among them.
    let every = (a.sampler.steps / 50).max(1);
    let stop = stop_flag();
    let run = RunContext::new(&mut noise).with_frame_every(if a.gif.is_some() { every } else { 0 }).on_step(|_, _, _| !stop.load(std::sync::atomic::Ordering::SeqCst));
    let trajectory = pipeline.sample(&labels, a.sampler.guidance, &mut { run })?;
    let mut frames = Vec::new();
    if a.gif.is_some() {
        for x in &trajectory.frames {
            frames.push(grid(&to_vec(x.clone())?, 28, rows, cols, 2, 2));
        }
        if a.sampler.steps % every != 0 {
            frames.push(grid(&to_vec(trajectory.image.clone())?, 28, rows, cols, 2, 2));
        }
    }
    let v = to_vec(trajectory.image)?;
    let secs = t.elapsed().as_secs_f64();
    save_png(&grid(&v, 28, rows, cols, 2, 2), &a.out)?;
    let n = labels.len();
    println!("{n} samples from {from} in {secs:.2} s ({} steps, {:?}, {}) -> {}", a.sampler.steps, a.sampler.solver, guidance_label(model.conditioning(), a.sampler.guidance), a.out.display());
    if let Some(g) = a.gif {
        write_atomic(&g, &gif_bytes(&frames, 60)?)?;
        println!("trajectory ({} frames) -> {}", frames.len(), g.display());
    }
    Ok(())
}
