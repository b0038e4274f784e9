//! The subcommands. Each is a thin layer: parse flags, load, call the library, write files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use clap::{Args, Parser, Subcommand};
use diffusion_playground::device::{self, Compute, DeviceChoice};
use diffusion_playground::image_ops::{gif_bytes, grid, save_png, write_atomic};
use diffusion_playground::mnist::classifier::{argmax_rows, FEATURES};
use diffusion_playground::mnist::data::{Dataset, DatasetKind, Split};
use diffusion_playground::mnist::flow::{noise, Conditions, FlowSampler, Solver};
use diffusion_playground::mnist::metrics::{background_grain, fid};
use diffusion_playground::mnist::package::{self, Entry, Manifest, ModelKind};
use diffusion_playground::mnist::train::{self, Recipe, RunOptions};
use diffusion_playground::mnist::unet::{Conditioning, UNet};
use diffusion_playground::mnist::{CLASSES, PIXELS};
use diffusion_playground::rng::Rng;
use diffusion_playground::{Error, Result};

use crate::args::{at_least_one, choice, count, guidance, non_negative, positive, positive_f32, probability};
use crate::models;
use crate::stop::stop_flag;

#[derive(Parser)]
#[command(name = "dp", about = "Flow-matching MNIST models (and DeepFloyd IF) in burn: train, sample, evaluate, package")]
pub struct Cli {
    /// Compute backend.
    #[arg(long, global = true, default_value = "cpu", value_parser = choice::<DeviceChoice>())]
    pub device: DeviceChoice,
    /// Float type the device computes in (`if` and `bench-if` only; weights are cast on load).
    #[arg(long, global = true, default_value = "f32", value_parser = choice::<Compute>())]
    compute: Compute,
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
    Train(TrainArgs),
    /// Train the digit classifier used by `eval` and the page.
    TrainClassifier(ClassifierArgs),
    /// Sample digits from a flow model: a grid PNG and optionally the trajectory as a GIF.
    Sample(SampleArgs),
    /// Sample many digits per class and score them with the classifier (accuracy, confidence, FID).
    Eval(EvalArgs),
    /// The denoiser deliverables: noising grid, out-of-distribution grid, pure-noise vs mean image.
    Figures(FiguresArgs),
    /// Copy a trained model into pkg/ and record it in pkg/manifest.json.
    Package(PackageArgs),
    /// Training and sampling speed, side by side with PyTorch on this machine.
    Bench(crate::bench::BenchArgs),
    /// DeepFloyd IF stage 1 from your own diffusers download: the course's part A as PNGs.
    If(crate::deepfloyd::IfArgs),
    /// A diffusers IF `unet/` folder -> a sharded, hashed package for the page (f16, q8 or q4).
    Convert(crate::deepfloyd::ConvertArgs),
    /// One IF stage-1 UNet step at a real size (random weights), next to diffusers.
    BenchIf(crate::bench_if::BenchIfArgs),
}

#[derive(Args)]
struct TrainArgs {
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
struct ClassifierArgs {
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

#[derive(Args)]
struct SampleArgs {
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

#[derive(Args)]
struct EvalArgs {
    #[arg(long, default_value = "pkg:class_flow")]
    model: String,
    #[arg(long)]
    epoch: Option<usize>,
    #[arg(long, default_value = "pkg:classifier")]
    classifier: String,
    #[arg(long, default_value_t = 1000, value_parser = count(100_000))]
    per_class: usize,
    #[arg(long, default_value_t = 250, value_parser = count(10_000))]
    batch: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct FiguresArgs {
    #[command(subcommand)]
    figure: Figure,
}

#[derive(Subcommand)]
enum Figure {
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

#[derive(Args)]
struct PackageArgs {
    /// Name in the manifest (class_flow, time_flow, class_flow_constant, denoiser, classifier).
    name: String,
    /// Run directory (or .bpk inside one); for the classifier its run directory.
    #[arg(long)]
    from: PathBuf,
    #[arg(long)]
    epoch: Option<usize>,
    #[arg(long, default_value = "pkg")]
    pkg: PathBuf,
    /// How float tensors are stored: f16 halves the download, the page computes in f32 either way.
    #[arg(long, default_value = "f16", value_parser = choice::<package::StoredFloat>())]
    dtype: package::StoredFloat,
    /// Facts to record, KEY=VALUE (training command, wall time, metrics).
    #[arg(long = "note")]
    notes: Vec<String>,
}

/// The most steps a sampler flag accepts (the course uses 50-300).
pub const MAX_STEPS: usize = 10_000;

/// The longest reduced dimension burn 0.22's GPU reductions were seen to get right.
const GPU_REDUCE_LIMIT: usize = 65_504;

const SIGMAS: [f32; 7] = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0];

/// burn 0.22's GPU reduction kernels return wrong sums when one reduced dimension exceeds
/// about 65,504 elements (seen on an H100 and on lavapipe: tests/wgpu_reduce.rs). Train-mode BatchNorm
/// reduces over batch x 28 x 28 values per channel, so a larger batch silently wrecks training
/// there (the denoiser's batch 256 diverged); refuse it before any work starts.
fn check_gpu_batch(a: &TrainArgs, choice: DeviceChoice) -> Result<()> {
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
fn largest_divisor_at_most(n: usize, most: usize) -> usize {
    (1..=most.min(n)).rev().find(|d| n % d == 0).unwrap_or(1)
}

pub fn run(cli: Cli) -> Result<()> {
    if let Command::Train(a) = &cli.command {
        check_gpu_batch(a, cli.device)?;
    }
    if cli.compute != Compute::F32 && !matches!(cli.command, Command::If(_) | Command::BenchIf(_)) {
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
        Command::Train(a) => cmd_train(a, &device),
        Command::If(a) => crate::deepfloyd::run(a, &device),
        Command::Convert(a) => crate::deepfloyd::convert(a),
        Command::BenchIf(a) => crate::bench_if::run(a, &device, &format!("{} ({})", cli.device, cli.compute)),
        Command::TrainClassifier(a) => {
            let stop = stop_flag();
            let acc = train::train_classifier(
                &train::ClassifierRun { out: a.out.clone(), data_dir: a.data, epochs: a.epochs, batch: a.batch, lr: a.lr, seed: a.seed, resume: a.resume },
                &device,
                &stop,
            )?;
            println!("test accuracy {:.2}% ({} written)", acc * 100.0, a.out.join("model.bpk").display());
            Ok(())
        }
        Command::Sample(a) => cmd_sample(a, &device),
        Command::Eval(a) => cmd_eval(a, &device),
        Command::Figures(a) => cmd_figures(a.figure, &device),
        Command::Package(a) => cmd_package(a, &device),
        Command::Bench(a) => crate::bench::run(a, &device, &cli.device.to_string()),
    }
}

fn cmd_train(a: TrainArgs, device: &Device) -> Result<()> {
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
        c.epochs = v;
        if c.gamma.is_some() {
            c.gamma = Some(0.1f64.powf(1.0 / v as f64));
        }
    }
    if let Some(g) = a.gamma {
        c.gamma = Some(g);
    }
    if a.no_scheduler {
        c.gamma = None;
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
    if let Some(v) = a.weight_decay {
        c.weight_decay = v;
    }
    if let Some(v) = a.adam_eps {
        c.adam_eps = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    c.limit = a.limit;
    c.micro_batch = a.micro_batch;
    let stop = stop_flag();
    let opts = RunOptions {
        dir: a.out.clone(),
        data_dir: a.data,
        resume: a.resume,
        figure_epochs: a.figure_epochs,
        checkpoint_minutes: a.checkpoint_minutes,
        stop: &stop,
        progress_bar: true,
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

fn to_vec(t: Tensor<4>) -> Result<Vec<f32>> {
    t.into_data().try_to_vec().map_err(|e| Error::Device(format!("reading back a tensor: {e:?}")))
}

fn labels_for(model: &UNet, digits: &[usize], per_digit: usize) -> Vec<usize> {
    match model.conditioning() {
        Conditioning::TimeClass => (0..per_digit).flat_map(|_| digits.iter().copied()).collect(),
        _ => vec![0; per_digit * digits.len()],
    }
}

fn cmd_sample(a: SampleArgs, device: &Device) -> Result<()> {
    let (model, from) = models::load_unet(&a.model, a.epoch, device)?;
    if model.conditioning() == Conditioning::None {
        return Err(Error::Invalid(format!("{from} is a denoiser, not a flow model: use `dp figures`")));
    }
    let digits = a.digits.unwrap_or_else(|| (0..10).collect());
    if let Some(d) = digits.iter().find(|&&d| d >= CLASSES) {
        return Err(Error::Invalid(format!("--digits: {d} is not a digit 0-9")));
    }
    let labels = labels_for(&model, &digits, a.per_digit);
    let n = labels.len();
    let x0 = noise(&mut Rng::new(a.sampler.seed), n, device);
    let sampler = FlowSampler::new(a.sampler.solver, a.sampler.steps);
    let cond = Conditions { labels, guidance: a.sampler.guidance };
    let mut frames = Vec::new();
    let (rows, cols) = (a.per_digit, digits.len());
    if a.gif.is_some() {
        frames.push(grid(&to_vec(x0.clone())?, 28, rows, cols, 2, 2));
    }
    let t = Instant::now();
    let every = (a.sampler.steps / 50).max(1);
    let stop = stop_flag();
    let out = sampler.sample(&model, x0, &cond, |i, x| {
        if a.gif.is_some() && ((i + 1) % every == 0 || i + 1 == a.sampler.steps)
            && let Ok(v) = to_vec(x.clone())
        {
            frames.push(grid(&v, 28, rows, cols, 2, 2));
        }
        !stop.load(std::sync::atomic::Ordering::SeqCst)
    });
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::Interrupted);
    }
    let v = to_vec(out)?;
    let secs = t.elapsed().as_secs_f64();
    save_png(&grid(&v, 28, rows, cols, 2, 2), &a.out)?;
    println!("{n} samples from {from} in {secs:.2} s ({} steps, {:?}, {}) -> {}", a.sampler.steps, a.sampler.solver, guidance_label(model.conditioning(), a.sampler.guidance), a.out.display());
    if let Some(g) = a.gif {
        write_atomic(&g, &gif_bytes(&frames, 60)?)?;
        println!("trajectory ({} frames) -> {}", frames.len(), g.display());
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs, device: &Device) -> Result<()> {
    let (model, from) = models::load_unet(&a.model, a.epoch, device)?;
    let classifier = models::load_classifier(&a.classifier, device)?.valid();
    let data_dir = a.data.unwrap_or_else(|| DatasetKind::Mnist.default_dir());
    let test = Dataset::load(&data_dir, Split::Test, DatasetKind::Mnist)?;
    let train_set = Dataset::load(&data_dir, Split::Train, DatasetKind::Mnist)?;
    // A covariance (FID) needs two images at the least.
    test.require(2, "the FID of `dp eval` (test set)")?;
    train_set.require(2, "the FID floor of `dp eval` (training set)")?;
    let sampler = FlowSampler::new(a.sampler.solver, a.sampler.steps);
    let class_model = model.conditioning() == Conditioning::TimeClass;
    let total = a.per_class * CLASSES;
    let mut correct = vec![0usize; CLASSES];
    // Which digit the classifier sees: for a model without a class this is the mode coverage.
    let mut predicted = vec![0usize; CLASSES];
    let mut conf_sum = 0f64;
    let mut samples_grain = Vec::new();
    let mut feats = Vec::with_capacity(total * FEATURES);
    let t = Instant::now();
    let bar = indicatif::ProgressBar::new(total as u64);
    let mut rng = Rng::new(a.sampler.seed);
    let mut done = 0;
    let stop = stop_flag();
    while done < total {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        let n = a.batch.min(total - done);
        let labels: Vec<usize> = (done..done + n).map(|i| i % CLASSES).collect();
        let x0 = noise(&mut rng, n, device);
        let x = sampler.sample(&model, x0, &Conditions { labels: labels.clone(), guidance: a.sampler.guidance }, |_, _| true);
        let x = x.clamp(0.0, 1.0);
        samples_grain.push(background_grain(&to_vec(x.clone())?) * n as f64);
        let (p, f) = classifier.probs_and_features(x);
        let p: Vec<f32> = p.into_data().try_to_vec().map_err(|e| Error::Device(format!("{e:?}")))?;
        feats.extend(f.into_data().try_to_vec::<f32>().map_err(|e| Error::Device(format!("{e:?}")))?);
        for ((k, conf), &l) in argmax_rows(&p, CLASSES).into_iter().zip(&labels) {
            if k == l {
                correct[l] += 1;
            }
            predicted[k] += 1;
            conf_sum += conf as f64;
        }
        done += n;
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    let sample_secs = t.elapsed().as_secs_f64();
    let feats_of = |ds: &Dataset, n: usize| -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for chunk in (0..n.min(ds.len())).collect::<Vec<_>>().chunks(1000) {
            let (x, _) = ds.batch(chunk, device);
            out.extend(classifier.features(x).into_data().try_to_vec::<f32>().map_err(|e| Error::Device(format!("{e:?}")))?);
        }
        Ok(out)
    };
    let test_feats = feats_of(&test, 10_000)?;
    let grain = samples_grain.iter().sum::<f64>() / total as f64;
    let real: Vec<f32> = test.images[..test.len().min(10_000) * PIXELS].iter().map(|&b| b as f32 / 255.0).collect();
    let real_grain = background_grain(&real);
    let train_feats = feats_of(&train_set, 10_000)?;
    let fid_samples = fid(&feats, &test_feats, FEATURES);
    let fid_floor = fid(&train_feats, &test_feats, FEATURES);
    let acc: f64 = correct.iter().sum::<usize>() as f64 / total as f64;
    println!("model {from}; {total} samples, {} steps {:?}, {}; sampling took {sample_secs:.1} s", a.sampler.steps, a.sampler.solver, guidance_label(model.conditioning(), a.sampler.guidance));
    if class_model {
        println!("recognised as the requested digit: {:.2}%", acc * 100.0);
        println!("  per digit: {}", digit_percentages(&correct, a.per_class));
    } else {
        println!("classified as (no class requested; 10% each is a uniform spread): {}", digit_percentages(&predicted, total));
    }
    println!("mean classifier confidence (top class): {:.4}", conf_sum / total as f64);
    println!("FID (classifier features) samples vs test: {fid_samples:.3}; floor train vs test: {fid_floor:.3}");
    println!("background grain (share of dark pixels that are faint grey): samples {:.1}%, real test digits {:.1}%", grain * 100.0, real_grain * 100.0);
    if let Some(j) = a.json {
        let v = serde_json::json!({
            "model": from, "per_class": a.per_class, "steps": a.sampler.steps, "solver": a.sampler.solver,
            "guidance": a.sampler.guidance, "seed": a.sampler.seed,
            "accuracy": if class_model { Some(acc) } else { None },
            "per_digit_accuracy": if class_model { Some(correct.iter().map(|c| *c as f64 / a.per_class as f64).collect::<Vec<_>>()) } else { None },
            "classified_share": predicted.iter().map(|c| *c as f64 / total as f64).collect::<Vec<_>>(),
            "mean_confidence": conf_sum / total as f64, "fid": fid_samples, "fid_floor_train_vs_test": fid_floor,
            "sampling_seconds": sample_secs, "background_grain": grain, "background_grain_test": real_grain,
            "model_evaluations_per_sample": a.sampler.solver.evaluations(a.sampler.steps),
        });
        write_atomic(&j, serde_json::to_string_pretty(&v).unwrap().as_bytes())?;
    }
    Ok(())
}

/// "0:9.8% 1:10.1% ...": each digit's count as a share of `of`.
fn digit_percentages(counts: &[usize], of: usize) -> String {
    counts.iter().enumerate().map(|(d, c)| format!("{d}:{:.1}%", 100.0 * *c as f64 / of as f64)).collect::<Vec<_>>().join(" ")
}

/// Guidance only exists for a class-conditioned model; say so rather than print a value unused.
fn guidance_label(conditioning: Conditioning, guidance: f32) -> String {
    if conditioning == Conditioning::TimeClass { format!("guidance {guidance}") } else { "no guidance (no class)".into() }
}

fn test_digits(data: &Option<PathBuf>, n: usize, device: &Device) -> Result<Tensor<4>> {
    let dir = data.clone().unwrap_or_else(|| DatasetKind::Mnist.default_dir());
    let test = Dataset::load(&dir, Split::Test, DatasetKind::Mnist)?;
    test.require(n, "this figure")?;
    Ok(test.batch(&(0..n).collect::<Vec<_>>(), device).0)
}

fn cmd_figures(f: Figure, device: &Device) -> Result<()> {
    match f {
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
            diffusion_playground::plot::loss_png(&losses, &out)?;
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
                let label = format!("{name} ({recipe}, lr {:.0e}{})", p.config.lr, if p.config.gamma.is_some() { ", decayed" } else { ", constant" });
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
            diffusion_playground::plot::loss_compare_png(&series, &out)?;
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

fn cmd_package(a: PackageArgs, device: &Device) -> Result<()> {
    let mut notes = std::collections::BTreeMap::new();
    for kv in &a.notes {
        let (k, v) = kv.split_once('=').ok_or_else(|| Error::Invalid(format!("--note {kv}: expected KEY=VALUE")))?;
        let val = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        notes.insert(k.to_string(), val);
    }
    let file = format!("{}.bpk", a.name);
    // The name becomes a file in --pkg and a URL of the page: one plain name, nothing else.
    if a.name.is_empty() || !a.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Error::Invalid(format!("{:?} is not a model name: use letters, digits, '_' or '-' (it becomes {}/<name>.bpk)", a.name, a.pkg.display())));
    }
    let (bytes, kind, hidden, conditioning) = if a.name.starts_with("classifier") {
        let c = models::load_classifier(&a.from.display().to_string(), device)?;
        (package::module_to_bytes_as(&c.valid(), a.dtype)?, ModelKind::Classifier, None, None)
    } else {
        let (m, _) = models::load_unet(&a.from.display().to_string(), a.epoch, device)?;
        let cfg_path = if a.from.is_dir() { a.from.join("config.json") } else { a.from.parent().unwrap_or(Path::new(".")).join("config.json") };
        let cfg: train::TrainConfig = serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?)
            .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        notes.entry("train_config".into()).or_insert(serde_json::to_value(&cfg).unwrap());
        let c = m.conditioning();
        (package::module_to_bytes_as(&m.valid(), a.dtype)?, ModelKind::Unet, Some(cfg.hidden), Some(c))
    };
    write_atomic(&a.pkg.join(&file), &bytes)?;
    let mpath = a.pkg.join("manifest.json");
    let mut manifest = if mpath.exists() { models::manifest(&a.pkg)? } else { Manifest::default() };
    manifest.upsert(Entry { name: a.name.clone(), kind, hidden, conditioning, dtype: a.dtype, file: file.clone(), bytes: bytes.len() as u64, sha256: diffusion_playground::artifact::sha256_hex(&bytes), notes });
    manifest.models.sort_by(|x, y| x.name.cmp(&y.name));
    write_atomic(&mpath, serde_json::to_string_pretty(&manifest).unwrap().as_bytes())?;
    println!("{} ({} bytes) recorded in {}", a.pkg.join(file).display(), bytes.len(), mpath.display());
    Ok(())
}
