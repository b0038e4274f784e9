//! The subcommands. Each is a thin layer: parse flags, load, call the library, write files.


use burn::prelude::*;
use clap::{Args, Parser, Subcommand};
use diffusion_playground::artifact::Dtype;
use diffusion_playground::device::{self, DeviceChoice, COMPUTE_DTYPES};
use diffusion_playground::mnist::flow::Solver;
use diffusion_playground::mnist::unet::Conditioning;
use diffusion_playground::{Error, Result};

use crate::args::{choice, choice_of, count, guidance};

mod eval;
mod figures;
mod package;
mod sample;
mod train;

#[derive(Parser)]
#[command(name = "dp", about = "Flow-matching MNIST models (and DeepFloyd IF) in burn: train, sample, evaluate, package")]
pub struct Cli {
    /// Compute backend.
    #[arg(long, global = true, default_value = "cpu", value_parser = choice::<DeviceChoice>())]
    pub device: DeviceChoice,
    /// Float type the device computes in (`if` and `bench-if` only; weights are cast on load).
    #[arg(long, global = true, default_value = "f32", value_parser = choice_of(&COMPUTE_DTYPES))]
    compute: Dtype,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether the command is a trainer (which checkpoints, and resumes with --resume).
    pub fn trains(&self) -> bool {
        matches!(self.command, Command::Train(_) | Command::TrainClassifier(_))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train one of the course's recipes (checkpointed, resumable, Ctrl-C saves).
    Train(train::TrainArgs),
    /// Train the digit classifier used by `eval` and the page.
    TrainClassifier(train::ClassifierArgs),
    /// Sample digits from a flow model: a grid PNG and optionally the trajectory as a GIF.
    Sample(sample::SampleArgs),
    /// Sample many digits per class and score them with the classifier (accuracy, confidence, FID).
    Eval(eval::EvalArgs),
    /// The denoiser deliverables: noising grid, out-of-distribution grid, pure-noise vs mean image.
    Figures(figures::FiguresArgs),
    /// Copy a trained model into pkg/ and record it in pkg/manifest.json.
    Package(package::PackageArgs),
    /// Training and sampling speed, side by side with PyTorch on this machine.
    Bench(crate::bench::BenchArgs),
    /// DeepFloyd IF stage 1 from your own diffusers download: the course's part A as PNGs.
    If(crate::deepfloyd::IfArgs),
    /// A diffusers IF `unet/` folder -> a sharded, hashed package for the page (f16, q8 or q4).
    Convert(crate::deepfloyd::ConvertArgs),
    /// One IF stage-1 UNet step at a real size (random weights), next to diffusers.
    BenchIf(crate::bench_if::BenchIfArgs),
}

#[derive(Args, Clone)]
struct SamplerArgs {
    /// Euler steps (or Heun steps: each costs two model calls).
    #[arg(long, default_value_t = 50, value_parser = count(MAX_STEPS))]
    steps: usize,
    #[arg(long, default_value = "euler", value_parser = choice::<Solver>())]
    solver: Solver,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 5.0, value_parser = guidance)]
    guidance: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The most steps a sampler flag accepts (the course uses 50-300).
pub const MAX_STEPS: usize = 10_000;

pub fn run(cli: Cli) -> Result<()> {
    if let Command::Train(a) = &cli.command {
        train::check_gpu_batch(a, cli.device)?;
    }
    if cli.compute != Dtype::F32 && !matches!(cli.command, Command::If(_) | Command::BenchIf(_)) {
        return Err(Error::Invalid(format!(
            "--compute {} is for `dp if` and `dp bench-if`; the MNIST models train and sample in f32 (their f16 files are widened on load)",
            cli.compute
        )));
    }
    let device = device::init_with(cli.device, cli.compute)?;
    // Every command that runs a model (not `convert`, which only streams weight files through).
    if !matches!(cli.command, Command::Convert(_)) {
        crate::heap::retain_freed_memory();
    }
    match cli.command {
        Command::Train(a) => train::cmd_train(a, &device),
        Command::If(a) => crate::deepfloyd::run(a, &device),
        Command::Convert(a) => crate::deepfloyd::convert(a),
        Command::BenchIf(a) => crate::bench_if::run(a, &device, &format!("{} ({})", cli.device, cli.compute)),
        Command::TrainClassifier(a) => train::cmd_train_classifier(a, &device),
        Command::Sample(a) => sample::cmd_sample(a, &device),
        Command::Eval(a) => eval::cmd_eval(a, &device),
        Command::Figures(a) => figures::cmd_figures(a, &device),
        Command::Package(a) => package::cmd_package(a, &device),
        Command::Bench(a) => crate::bench::run(a, &device, &cli.device.to_string()),
    }
}

pub(super) fn to_vec(t: Tensor<4>) -> Result<Vec<f32>> {
    t.into_data().try_to_vec().map_err(|e| Error::Device(format!("reading back a tensor: {e:?}")))
}

/// Guidance only exists for a class-conditioned model; say so rather than print a value unused.
pub(super) fn guidance_label(conditioning: Conditioning, guidance: f32) -> String {
    if conditioning == Conditioning::TimeClass { format!("guidance {guidance}") } else { "no guidance (no class)".into() }
}
