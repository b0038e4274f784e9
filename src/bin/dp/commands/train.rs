//! `dp train` and `dp train-classifier`: flags to a run's settings, progress drawn from the trainer's events.

use std::path::PathBuf;

use burn::prelude::*;
use clap::Args;
use diffusion_playground::device::DeviceChoice;
use diffusion_playground::mnist::PIXELS;
use diffusion_playground::mnist::data::DatasetKind;
use diffusion_playground::mnist::train::{self, LrSchedule, Optimizer, Recipe, RunOptions};
use diffusion_playground::{Error, Result};

use crate::args::{at_least_one, choice, count, non_negative, positive, positive_f32, probability};
use crate::progress::TrainBar;
use crate::stop::stop_flag;

#[derive(Args)]
pub(super) struct TrainArgs {
    #[arg(value_parser = choice::<Recipe>())]
    recipe: Recipe,
    /// Run directory (checkpoint, snapshots, curves, figures).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    resume: bool,
    #[arg(long, value_parser = choice::<DatasetKind>())]
    dataset: Option<DatasetKind>,
    /// Directory of the IDX files (default: data/mnist, or Debian's Fashion-MNIST folder).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_parser = count(diffusion_playground::mnist::unet::MAX_HIDDEN))]
    hidden: Option<usize>,
    #[arg(long, value_parser = count(train::MAX_BATCH))]
    batch: Option<usize>,
    /// Run each batch as passes of at most this many images, summing gradients before the one
    /// optimizer step (a GPU needs <= 83: burn 0.22's GPU reductions break beyond 65,504 values).
    #[arg(long, value_parser = count(train::MAX_BATCH))]
    micro_batch: Option<usize>,
    #[arg(long, value_parser = positive)]
    lr: Option<f64>,
    #[arg(long, value_parser = count(train::MAX_EPOCHS))]
    epochs: Option<usize>,
    /// Per-epoch LR decay factor (default 0.1^(1/epochs) for the flow recipes with a scheduler).
    #[arg(long, value_parser = positive)]
    gamma: Option<f64>,
    /// Turn the LR scheduler off.
    #[arg(long)]
    no_scheduler: bool,
    #[arg(long, value_parser = non_negative)]
    sigma: Option<f32>,
    #[arg(long, value_parser = probability)]
    p_uncond: Option<f32>,
    #[arg(long, value_parser = positive_f32)]
    grad_clip: Option<f32>,
    /// Adam or AdamW (default: the recipe's; class-flow-constant uses AdamW). Without it, a
    /// --weight-decay above 0 selects AdamW and 0 selects Adam, as before this flag existed.
    #[arg(long, value_parser = ["adam", "adamw"])]
    optimizer: Option<String>,
    /// AdamW's decoupled weight decay.
    #[arg(long, value_parser = non_negative)]
    weight_decay: Option<f32>,
    #[arg(long, value_parser = positive_f32)]
    adam_eps: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Use only the first N training images.
    #[arg(long, value_parser = at_least_one)]
    limit: Option<usize>,
    /// Epochs after which figures are written (the last always is).
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    figure_epochs: Vec<usize>,
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    checkpoint_minutes: f64,
    /// Stop after this many steps in this invocation (checkpointed; --resume continues).
    #[arg(long, value_parser = at_least_one)]
    max_steps: Option<usize>,
}

#[derive(Args)]
pub(super) struct ClassifierArgs {
    #[arg(long, default_value = "runs/classifier")]
    out: PathBuf,
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 3, value_parser = count(train::MAX_EPOCHS))]
    epochs: usize,
    #[arg(long, default_value_t = 128, value_parser = count(train::MAX_BATCH))]
    batch: usize,
    #[arg(long, default_value_t = 1e-3, value_parser = positive)]
    lr: f64,
    /// Continue a stopped run from its last finished epoch.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The longest reduced dimension burn 0.22's GPU reductions were seen to get right.
pub(super) const GPU_REDUCE_LIMIT: usize = 65_504;

/// burn 0.22's GPU reduction kernels return wrong sums when one reduced dimension exceeds
/// about 65,504 elements (seen on an H100 and on lavapipe: tests/wgpu_reduce.rs). Train-mode BatchNorm
/// reduces over batch x 28 x 28 values per channel, so a larger batch silently wrecks training
/// there (the denoiser's batch 256 diverged); refuse it before any work starts.
pub(super) fn check_gpu_batch(a: &TrainArgs, choice: DeviceChoice) -> Result<()> {
    let batch = a.batch.unwrap_or(a.recipe.defaults().batch);
    let pass = a.micro_batch.unwrap_or(batch).min(batch);
    if choice != DeviceChoice::Cpu && pass * PIXELS > GPU_REDUCE_LIMIT {
        let most = GPU_REDUCE_LIMIT / PIXELS;
        return Err(Error::Invalid(format!(
            "a pass of {pass} images is too large for --device {choice}: BatchNorm would reduce over {} values per channel, \
             and burn 0.22's GPU reductions are wrong beyond {GPU_REDUCE_LIMIT} (the loss diverges); \
             keep --batch {batch} and add --micro-batch {} (gradients of the passes are summed), or use --batch {most} or less, or --device cpu",
            pass * PIXELS,
            largest_divisor_at_most(batch, most),
        )));
    }
    Ok(())
}

/// The largest d <= most dividing n (equal passes), at least 1.
pub(super) fn largest_divisor_at_most(n: usize, most: usize) -> usize {
    (1..=most.min(n)).rev().find(|d| n % d == 0).unwrap_or(1)
}

pub(super) fn cmd_train(a: TrainArgs, device: &Device) -> Result<()> {
    let mut c = a.recipe.defaults();
    if let Some(v) = a.dataset {
        c.dataset = v;
    }
    if let Some(v) = a.hidden {
        c.hidden = v;
    }
    if let Some(v) = a.batch {
        c.batch = v;
    }
    if let Some(v) = a.lr {
        c.lr = v;
    }
    if let Some(v) = a.epochs {
        c = c.with_epochs(v);
    }
    if let Some(gamma) = a.gamma {
        c.schedule = LrSchedule::Exponential { gamma };
    }
    if a.no_scheduler {
        c.schedule = LrSchedule::Constant;
    }
    if let Some(v) = a.sigma {
        c.sigma = v;
    }
    if let Some(v) = a.p_uncond {
        c.p_uncond = v;
    }
    if let Some(v) = a.grad_clip {
        c.grad_clip = Some(v);
    }
    c.optimizer = match (a.optimizer.as_deref(), a.weight_decay) {
        (Some("adam"), Some(d)) if d > 0.0 => return Err(Error::Invalid(format!("--weight-decay {d} needs --optimizer adamw (Adam does not decay weights)"))),
        (Some("adam"), _) => Optimizer::Adam,
        (Some(_), d) => Optimizer::AdamW { weight_decay: d.unwrap_or(match c.optimizer { Optimizer::AdamW { weight_decay } => weight_decay, Optimizer::Adam => 1e-2 }) },
        (None, Some(d)) if d > 0.0 => Optimizer::AdamW { weight_decay: d },
        (None, Some(_)) => Optimizer::Adam,
        (None, None) => c.optimizer,
    };
    if let Some(v) = a.adam_eps {
        c.adam_eps = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    c.limit = a.limit;
    c.micro_batch = a.micro_batch;
    let stop = stop_flag();
    let bar = TrainBar::new(a.out.clone());
    let opts = RunOptions {
        dir: a.out.clone(),
        data_dir: a.data,
        resume: a.resume,
        figure_epochs: a.figure_epochs,
        checkpoint_minutes: a.checkpoint_minutes,
        stop: &stop,
        events: &|e| bar.draw(e),
        max_steps: a.max_steps,
    };
    let out = train::train(c, device, &opts)?;
    let p = &out.progress;
    let last: Vec<f32> = p.losses.iter().rev().take(100).copied().collect();
    println!(
        "{}; {:.0} s this run, {:.0} s in all; mean loss of the last {} steps {:.5}; files in {}",
        // Counters are 0-based "next to run"; print them 1-based, as the resume message and the bar do.
        if out.finished { format!("finished all {} epochs", p.config.epochs) } else { format!("paused before epoch {} batch {}", p.epoch + 1, p.batch + 1) },
        out.seconds_this_run,
        p.seconds,
        last.len(),
        last.iter().sum::<f32>() / last.len().max(1) as f32,
        a.out.display()
    );
    Ok(())
}

pub(super) fn cmd_train_classifier(a: ClassifierArgs, device: &Device) -> Result<()> {
    let stop = stop_flag();
    let bar = TrainBar::new(a.out.clone());
    let acc = train::train_classifier(
        &train::ClassifierRun { out: a.out.clone(), data_dir: a.data, epochs: a.epochs, batch: a.batch, lr: a.lr, seed: a.seed, resume: a.resume },
        device,
        &stop,
        &|e| bar.draw(e),
    )?;
    println!("test accuracy {:.2}% ({} written)", acc * 100.0, a.out.join("model.bpk").display());
    Ok(())
}
