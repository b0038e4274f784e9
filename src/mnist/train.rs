//! The trainer for the course's five recipes (docs/course.md) (desktop only: it needs autodiff and a file
//! system). One loop serves all of them; a recipe only decides the objective and the defaults.
//!
//! Resumable by construction: all randomness of batch `b` of epoch `e` comes from
//! `Rng::derive(seed, [e, b])` and the learning rate is a function of the epoch, so a checkpoint
//! needs only the weights (with BatchNorm statistics), the optimizer moments and two counters.
//! Checkpoints are single files written atomically, at every epoch end, every
//! `checkpoint_minutes`, and when the stop flag (Ctrl-C) is raised.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
use burn::optim::ModuleOptimizer;
use burn::grad_clipping::GradientClippingConfig;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::data::{Dataset, DatasetKind, Split};
use super::denoise::{denoise_loss, draw_eps};
use super::flow::{flow_loss, noise, Conditions, FlowBatch, FlowSampler, Solver};
use super::unet::{Conditioning, UNet, UNetConfig};
use super::PIXELS;
use super::package;
use crate::image_ops::{grid, save_png, write_atomic};
use crate::rng::Rng;
use crate::{Error, Result};

/// The course's five training recipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// 1. Single-step denoiser on z = x + sigma eps.
    Denoiser,
    /// 2. The same network trained on z = eps (learns the mean image).
    PureNoise,
    /// 3. Time-conditioned flow matching.
    TimeFlow,
    /// 4. Class-conditioned flow matching with class dropout for guidance.
    ClassFlow,
    /// 5. As 4 without the LR scheduler: constant LR, AdamW and gradient clipping.
    ClassFlowConstant,
}

crate::named!(Recipe {
    Denoiser => "denoiser",
    PureNoise => "pure-noise",
    TimeFlow => "time-flow",
    ClassFlow => "class-flow",
    ClassFlowConstant => "class-flow-constant",
});

impl Recipe {
    pub fn conditioning(self) -> Conditioning {
        match self {
            Recipe::Denoiser | Recipe::PureNoise => Conditioning::None,
            Recipe::TimeFlow => Conditioning::Time,
            Recipe::ClassFlow | Recipe::ClassFlowConstant => Conditioning::TimeClass,
        }
    }

    pub fn is_flow(self) -> bool {
        self.conditioning() != Conditioning::None
    }

    /// The course's defaults for this recipe.
    pub fn defaults(self) -> TrainConfig {
        let base = TrainConfig {
            recipe: self,
            dataset: DatasetKind::Mnist,
            hidden: 64,
            batch: 64,
            lr: 1e-2,
            epochs: 10,
            gamma: None,
            sigma: 0.5,
            p_uncond: 0.0,
            grad_clip: None,
            weight_decay: 0.0,
            adam_eps: 1e-8,
            seed: 0,
            limit: None,
            micro_batch: None,
        };
        match self {
            Recipe::Denoiser | Recipe::PureNoise => TrainConfig { hidden: 128, batch: 256, lr: 1e-4, epochs: 5, ..base },
            Recipe::TimeFlow => TrainConfig { gamma: Some(0.1f64.powf(1.0 / 10.0)), ..base },
            Recipe::ClassFlow => TrainConfig { gamma: Some(0.1f64.powf(1.0 / 10.0)), p_uncond: 0.1, ..base },
            Recipe::ClassFlowConstant => TrainConfig { lr: 1e-3, p_uncond: 0.1, grad_clip: Some(1.0), weight_decay: 1e-2, ..base },
        }
    }
}

/// The largest batch and epoch count a run accepts (the recipes use 64-256 and 5-20).
pub const MAX_BATCH: usize = 60_000;
pub const MAX_EPOCHS: usize = 10_000;

/// Every value of a training run (all of them CLI flags).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub recipe: Recipe,
    pub dataset: DatasetKind,
    /// UNet width D.
    pub hidden: usize,
    pub batch: usize,
    pub lr: f64,
    pub epochs: usize,
    /// Exponential LR decay applied once per epoch (`lr_e = lr * gamma^e`); `None`: constant.
    pub gamma: Option<f64>,
    /// Noise level of the single-step denoiser.
    pub sigma: f32,
    /// Probability of dropping the class (classifier-free guidance training).
    pub p_uncond: f32,
    /// Clip each parameter's gradient to this L2 norm.
    pub grad_clip: Option<f32>,
    /// > 0 selects AdamW with this decoupled weight decay; 0 is Adam.
    pub weight_decay: f32,
    /// Adam epsilon; PyTorch's 1e-8 (burn's default is 1e-5).
    pub adam_eps: f32,
    pub seed: u64,
    /// Train on the first N images only (quick runs, tests).
    pub limit: Option<usize>,
    /// Split each batch into forward/backward passes of at most this many images and sum their
    /// gradients before the one optimizer step (`None`: the whole batch at once). The step then
    /// sees the same data, noise and gradient weighting; only BatchNorm's batch statistics
    /// come from the smaller chunks. Keeps GPU reductions short (see `dp train --help`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
}

impl TrainConfig {
    pub fn unet(&self) -> UNetConfig {
        UNetConfig::new(self.hidden).with_conditioning(self.recipe.conditioning())
    }

    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * self.gamma.map_or(1.0, |g| g.powi(epoch as i32))
    }

    /// Every value checked before anything is allocated or trained: a wrong value is a clear
    /// error naming it, never a panic, an abort on a huge allocation or a NaN run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !(1..=super::unet::MAX_HIDDEN).contains(&self.hidden) {
            return bad(format!("--hidden {} must be 1..={}", self.hidden, super::unet::MAX_HIDDEN));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return bad(format!("--batch {} must be 1..={MAX_BATCH}", self.batch));
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad(format!("--epochs {} must be 1..={MAX_EPOCHS}", self.epochs));
        }
        if self.micro_batch == Some(0) {
            return bad("--micro-batch must be at least 1".into());
        }
        if !(positive(self.lr) && self.lr <= 10.0) {
            return bad(format!("--lr {} must be a positive number no larger than 10", self.lr));
        }
        if !(0.0..=1.0).contains(&self.p_uncond) {
            return bad(format!("--p-uncond {} must be in [0, 1]", self.p_uncond));
        }
        if let Some(g) = self.gamma
            && !(g > 0.0 && g <= 1.0)
        {
            return bad(format!("--gamma {g} must be in (0, 1]"));
        }
        if !(self.sigma.is_finite() && (0.0..=100.0).contains(&self.sigma)) {
            return bad(format!("--sigma {} must be a number in [0, 100]", self.sigma));
        }
        if let Some(c) = self.grad_clip
            && !positive(c as f64)
        {
            return bad(format!("--grad-clip {c} must be a positive number"));
        }
        if !(self.weight_decay.is_finite() && (0.0..=1.0).contains(&self.weight_decay)) {
            return bad(format!("--weight-decay {} must be in [0, 1]", self.weight_decay));
        }
        if !(positive(self.adam_eps as f64) && self.adam_eps <= 1.0) {
            return bad(format!("--adam-eps {} must be a positive number no larger than 1", self.adam_eps));
        }
        Ok(())
    }

    fn optimizer(&self) -> ModuleOptimizer {
        let clip = self.grad_clip.map(GradientClippingConfig::Norm);
        if self.weight_decay > 0.0 {
            AdamWConfig::new().with_epsilon(self.adam_eps).with_weight_decay(self.weight_decay).with_grad_clipping(clip).init()
        } else {
            AdamConfig::new().with_epsilon(self.adam_eps).with_grad_clipping(clip).init()
        }
    }
}

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.ckpt")
    }
    pub fn snapshot(&self, epoch: usize) -> PathBuf {
        self.0.join(format!("epoch_{epoch}.bpk"))
    }
    pub fn model(&self) -> PathBuf {
        self.0.join("model.bpk")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
}

/// Counters and history saved with a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    pub config: TrainConfig,
    /// Next epoch to run (0-based) and next batch within it.
    pub epoch: usize,
    pub batch: usize,
    /// Loss of every optimisation step so far.
    pub losses: Vec<f32>,
    /// Wall-clock seconds spent training so far, across resumes.
    pub seconds: f64,
    /// [`Dataset::fingerprint`] of the training data (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
}

const MAGIC_V1: &[u8; 8] = b"DPCKPT01";
/// Version 2 ends with the sha256 of everything before it.
const MAGIC: &[u8; 8] = b"DPCKPT02";

/// Serialises a checkpoint: magic, three length-prefixed parts (progress JSON, model burnpack,
/// optimizer burnpack), then a sha256 of all of it, so a flipped bit is found on resume.
fn encode_checkpoint(progress: &Progress, model: &[u8], optim: &[u8]) -> Vec<u8> {
    encode_parts(&serde_json::to_vec(progress).expect("progress serialises"), model, optim)
}

fn encode_parts(json: &[u8], model: &[u8], optim: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::with_capacity(8 + 24 + json.len() + model.len() + optim.len() + 32);
    out.extend_from_slice(MAGIC);
    for part in [json, model, optim] {
        out.extend((part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The three parts of a checkpoint, after checking its checksum (version 1 files, written
/// before checksums, are read as they are).
fn decode_parts(bytes: &[u8], path: &Path) -> Result<[Vec<u8>; 3]> {
    use sha2::Digest;
    let body = match bytes.get(..8) {
        Some(m) if m == MAGIC => {
            let Some(split) = bytes.len().checked_sub(32).filter(|&s| s >= 8) else {
                return Err(Error::format(path, "truncated checkpoint (delete it and start again, or use an epoch_N.bpk)"));
            };
            let (body, sum) = bytes.split_at(split);
            if sha2::Sha256::digest(body).as_slice() != sum {
                return Err(Error::format(path, "checkpoint checksum mismatch: the file is corrupt (a disk or copy error); delete it and start again, or use an epoch_N.bpk"));
            }
            body
        }
        Some(m) if m == MAGIC_V1 => bytes,
        _ => return Err(Error::format(path, "not a checkpoint of this tool")),
    };
    let mut parts: [Vec<u8>; 3] = Default::default();
    let mut pos = 8;
    for part in parts.iter_mut() {
        let len = body.get(pos..pos + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        let range = len.and_then(|l| usize::try_from(l).ok()).and_then(|l| Some(pos + 8..(pos + 8).checked_add(l)?));
        let data = range.and_then(|r| body.get(r));
        let data = data.ok_or_else(|| Error::format(path, "truncated checkpoint (delete it and start again, or use an epoch_N.bpk)"))?;
        pos += 8 + data.len();
        *part = data.to_vec();
    }
    if pos != body.len() {
        return Err(Error::format(path, "checkpoint has trailing bytes: corrupt"));
    }
    Ok(parts)
}

fn decode_checkpoint(bytes: &[u8], path: &Path) -> Result<(Progress, Vec<u8>, Vec<u8>)> {
    let [json, model, optim] = decode_parts(bytes, path)?;
    let progress: Progress = serde_json::from_slice(&json).map_err(|e| Error::format(path, format!("checkpoint header: {e}")))?;
    Ok((progress, model, optim))
}

/// Reads a checkpoint's progress (for `--resume` and for reporting).
pub fn read_checkpoint(path: &Path) -> Result<(Progress, Vec<u8>, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_checkpoint(&bytes, path)
}

/// Images in the MNIST and Fashion-MNIST training sets.
const TRAIN_IMAGES: usize = 60_000;

/// A run's loss history as its checkpoint holds it, for comparing runs: `path` is a run
/// directory or a checkpoint file. Returns the progress and the steps in one epoch.
pub fn run_losses(path: &Path) -> Result<(Progress, usize)> {
    let ckpt = if path.is_dir() { RunDir(path.to_path_buf()).checkpoint() } else { path.to_path_buf() };
    let (p, _, _) = read_checkpoint(&ckpt)?;
    let steps = if p.epoch > 0 {
        // Finished epochs are whole, so this also holds for --limit runs.
        p.losses.len().checked_sub(p.batch).map(|n| n / p.epoch)
    } else {
        Some(p.config.limit.map_or(TRAIN_IMAGES, |l| l.min(TRAIN_IMAGES)).div_ceil(p.config.batch.max(1)))
    };
    match steps {
        Some(s) if s > 0 && p.epoch.checked_mul(s).is_some_and(|done| done <= p.losses.len()) => Ok((p, s)),
        _ => Err(Error::format(&ckpt, "its loss history does not match its epoch and batch counters")),
    }
}

/// Mean loss of each epoch (the last one may be partial).
pub fn epoch_means(losses: &[f32], steps_per_epoch: usize) -> Vec<f32> {
    losses.chunks(steps_per_epoch.max(1)).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect()
}

/// Options of a run that do not change its result.
pub struct RunOptions<'a> {
    pub dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub resume: bool,
    /// Epochs (1-based) after which sample / denoising grids are written.
    pub figure_epochs: Vec<usize>,
    pub checkpoint_minutes: f64,
    pub stop: &'a AtomicBool,
    pub progress_bar: bool,
    /// Stop (with a checkpoint) after this many optimisation steps in this invocation.
    pub max_steps: Option<usize>,
}

/// What a finished (or stopped) run reports.
pub struct Outcome {
    /// `progress.seconds` counts every run's time, this one's up to its return included.
    pub progress: Progress,
    pub finished: bool,
    /// Seconds this call spent from its first step to its return (steps, checkpoints, figures).
    pub seconds_this_run: f64,
}

fn load_train_data(config: &TrainConfig, data_dir: &Option<PathBuf>) -> Result<Dataset> {
    let dir = data_dir.clone().unwrap_or_else(|| config.dataset.default_dir());
    let ds = Dataset::load(&dir, Split::Train, config.dataset)?;
    Ok(match config.limit {
        Some(n) => ds.truncate(n),
        None => ds,
    })
}

/// burn initialises parameters from the backend's global generator: seed it and initialise under
/// one lock, so that runs in the same process (tests run in parallel) cannot interleave their
/// draws and every seed gives the same initial weights.
/// Parameters are initialised lazily (on first use), so the values are materialised here, by a
/// round trip through a record, while the lock is held.
pub fn seeded_init<M: Module>(seed: u64, device: &Device, init: impl FnOnce(&Device) -> M) -> M {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    let model = init(device);
    let record = model.clone().into_record();
    model.load_record(record)
}

/// Trains (or resumes) a run. Returns `Err(Error::Interrupted)` after saving when stopped.
pub fn train(config: TrainConfig, device: &Device, opts: &RunOptions) -> Result<Outcome> {
    config.validate()?;
    let run = RunDir(opts.dir.clone());
    std::fs::create_dir_all(&run.0).map_err(|e| Error::io(&run.0, e))?;
    let adevice = device.clone().autodiff();

    // Initialised on the CPU and moved: a seed gives the same starting weights on every device
    // (the GPU backends have their own generators), so runs compare across devices.
    let initial = package::module_to_bytes(seeded_init(config.seed, &Device::flex(), |d| config.unet().init(d)))?;
    let mut model: UNet = package::load_module_bytes(config.unet().init(&adevice), &initial, "the initial weights")?;
    let mut optim = config.optimizer();
    let mut progress = Progress { config: config.clone(), epoch: 0, batch: 0, losses: Vec::new(), seconds: 0.0, data_sha256: None };

    let data = load_train_data(&config, &opts.data_dir)?;
    let n = data.len();
    if n == 0 {
        return Err(Error::Invalid("the training set is empty".into()));
    }
    let batches = n.div_ceil(config.batch);
    let fingerprint = data.fingerprint();
    progress.data_sha256 = Some(fingerprint.clone());

    if opts.resume && run.checkpoint().exists() {
        let (p, model_bytes, optim_bytes) = read_checkpoint(&run.checkpoint())?;
        if p.config != config {
            // Only the epoch count may grow on resume (train longer); everything else must match.
            let mut same = p.config.clone();
            same.epochs = config.epochs;
            // The default gamma follows the epoch count; that case gets its own message below.
            if same.gamma.is_some() && config.gamma.is_some() {
                same.gamma = config.gamma;
            }
            if same != config {
                return Err(Error::Invalid(format!(
                    "{} was made with different settings ({:?}); resume without changing flags other than --epochs, or use another --out",
                    run.checkpoint().display(),
                    p.config
                )));
            }
            if let (Some(_), Some(_)) = (p.config.gamma, config.gamma)
                && p.config.gamma != config.gamma
            {
                return Err(Error::Invalid(format!(
                    "resuming with another --epochs changes the default decay gamma ({} -> {}): pass --gamma {} to keep the run's decay",
                    p.config.gamma.unwrap_or(1.0),
                    config.gamma.unwrap_or(1.0),
                    p.config.gamma.unwrap_or(1.0)
                )));
            }
        }
        // Settings first (the clearer message when a flag changed), then counters and data.
        check_resume(&p, &config, batches, &fingerprint, &run.checkpoint())?;
        model = package::load_module_bytes(model, &model_bytes, &run.checkpoint().display().to_string())?;
        let record = burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(optim_bytes))
            .map_err(|e| Error::format(run.checkpoint(), format!("optimizer state: {e}")))?;
        optim = optim.load_record(record);
        progress = Progress { config: config.clone(), data_sha256: Some(fingerprint), ..p };
        eprintln!("resuming {} at epoch {} batch {}", run.0.display(), progress.epoch + 1, progress.batch + 1);
    } else if run.checkpoint().exists() && !opts.resume {
        return Err(Error::Invalid(format!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            run.0.display()
        )));
    }
    write_atomic(&run.config(), serde_json::to_string_pretty(&config).unwrap().as_bytes())?;
    let total_steps = batches * config.epochs;

    let bar = if opts.progress_bar {
        let b = indicatif::ProgressBar::new(total_steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .unwrap()
                .progress_chars("=> "),
        );
        b.set_position((progress.epoch * batches + progress.batch) as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    let save = |model: &UNet, optim: &ModuleOptimizer, progress: &Progress| -> Result<()> {
        // `valid()` folds in the last BatchNorm running-statistics update (a plain clone may
        // still hold the value from one step earlier).
        // A checkpoint only ever holds finite weights: a NaN state never replaces a good one.
        if let Some(name) = first_non_finite(model) {
            return Err(Error::Invalid(format!(
                "the weights became NaN or infinite ({name}) at epoch {} batch {}: lower --lr; the checkpoint on disk is the last good state and was not overwritten",
                progress.epoch + 1,
                progress.batch + 1
            )));
        }
        let m = package::module_to_bytes(model.valid())?;
        let o = optim.into_bytes().map_err(|e| Error::Invalid(format!("optimizer state: {e}")))?;
        write_atomic(&run.checkpoint(), &encode_checkpoint(progress, &m, &o))
    };

    let started = Instant::now();
    let seconds_before = progress.seconds;
    let mut last_ckpt = Instant::now();
    let mut window = (Instant::now(), 0usize);
    let mut steps_here = 0usize;

    // A run stopped between its epoch-end checkpoint and that epoch's figures (or model.bpk)
    // writes them now, so "finished" always means every file is there.
    if progress.epoch > 0 && progress.batch == 0 {
        let e = progress.epoch;
        if (opts.figure_epochs.contains(&e) || e == config.epochs) && !figure_path(&config, &run.0, e).exists() {
            epoch_figures(&config, &model.valid(), device, &run.0, e, opts.data_dir.as_deref())?;
        }
        if !run.snapshot(e).exists() {
            write_atomic(&run.snapshot(e), &package::module_to_bytes(model.valid())?)?;
        }
    }

    while progress.epoch < config.epochs {
        let epoch = progress.epoch;
        let lr = config.lr_at(epoch);
        let perm = Rng::derive(config.seed, &[u64::MAX, epoch as u64]).permutation(n);
        bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
        while progress.batch < batches {
            let b = progress.batch;
            let idx = &perm[b * config.batch..((b + 1) * config.batch).min(n)];
            let mut rng = Rng::derive(config.seed, &[epoch as u64, b as u64]);
            let (grads, value) = batch_step(&config, &model, &data, idx, &mut rng, &adevice);
            if !value.is_finite() {
                // Not saved: the checkpoint on disk (if any) holds the last good state.
                let last = if run.checkpoint().exists() { format!("the last good state is in {} (--resume continues from it)", run.checkpoint().display()) } else { "no checkpoint was written yet".into() };
                return Err(Error::Invalid(format!("loss became {value} at epoch {} batch {}: lower --lr; {last}", epoch + 1, b + 1)));
            }
            model = optim.step(lr, model, grads);
            progress.losses.push(value);
            progress.batch += 1;
            steps_here += 1;
            window.1 += idx.len();
            bar.inc(1);
            let dt = window.0.elapsed().as_secs_f64();
            // Redraw twice a second on a terminal; once a minute as a plain line in a log.
            if dt > if bar.is_hidden() { 60.0 } else { 2.0 } {
                let msg = format!("loss {value:.4} lr {lr:.2e} {:.0} img/s", window.1 as f64 / dt);
                if bar.is_hidden() && opts.progress_bar {
                    eprintln!("epoch {}/{} batch {}/{batches}: {msg}", epoch + 1, config.epochs, b + 1);
                }
                bar.set_message(msg);
                window = (Instant::now(), 0);
            }
            let stop = opts.stop.load(Ordering::SeqCst);
            let limit = opts.max_steps.is_some_and(|m| steps_here >= m);
            if stop || limit || last_ckpt.elapsed().as_secs_f64() > opts.checkpoint_minutes * 60.0 {
                progress.seconds = seconds_before + started.elapsed().as_secs_f64();
                save(&model, &optim, &progress)?;
                last_ckpt = Instant::now();
                if stop {
                    bar.abandon_with_message(format!("stopped; saved {}", run.checkpoint().display()));
                    return Err(Error::Interrupted);
                }
                if limit {
                    bar.abandon();
                    // As saved in the checkpoint, so a resumed run continues this count.
                    let seconds_this_run = progress.seconds - seconds_before;
                    return Ok(Outcome { progress, finished: false, seconds_this_run });
                }
            }
        }
        progress.epoch += 1;
        progress.batch = 0;
        progress.seconds = seconds_before + started.elapsed().as_secs_f64();
        // Epoch end: snapshot, checkpoint, curves, figures.
        let snap = package::module_to_bytes(model.valid())?;
        write_atomic(&run.snapshot(progress.epoch), &snap)?;
        save(&model, &optim, &progress)?;
        last_ckpt = Instant::now();
        write_loss_curve(&run.0, &progress.losses, batches)?;
        if opts.figure_epochs.contains(&progress.epoch) || progress.epoch == config.epochs {
            epoch_figures(&config, &model.valid(), device, &run.0, progress.epoch, opts.data_dir.as_deref())?;
        }
    }
    bar.finish();
    write_atomic(&run.model(), &package::module_to_bytes(model.valid())?)?;
    // The same clock as the checkpoint's, now including the last epoch's figures, so the
    // closing line never reports more time for this run than for all runs together.
    let seconds_this_run = started.elapsed().as_secs_f64();
    progress.seconds = seconds_before + seconds_this_run;
    Ok(Outcome { progress, finished: true, seconds_this_run })
}

/// A resumed checkpoint must belong to this run: counters inside the recipe, a loss history
/// that matches them, and the same training data.
fn check_resume(p: &Progress, config: &TrainConfig, batches: usize, fingerprint: &str, path: &Path) -> Result<()> {
    let bad = |why: String| Err(Error::format(path, format!("{why}; it does not belong to this run (use another --out, or start again without --resume)")));
    if let Some(have) = &p.data_sha256
        && have != fingerprint
    {
        return bad("it was trained on another data set (the images or labels differ from --data / --dataset / --limit)".into());
    }
    if p.epoch > config.epochs || (p.epoch == config.epochs && p.batch > 0) {
        return bad(format!("the checkpoint is at epoch {} batch {}, beyond the run's {} epochs", p.epoch + 1, p.batch + 1, config.epochs));
    }
    if p.batch >= batches {
        return bad(format!("the checkpoint is at batch {} of an epoch of {batches} batches", p.batch + 1));
    }
    if p.epoch.checked_mul(batches).and_then(|d| d.checked_add(p.batch)) != Some(p.losses.len()) {
        return bad(format!("its loss history ({} steps) does not match epoch {} batch {} at {batches} batches an epoch", p.losses.len(), p.epoch + 1, p.batch + 1));
    }
    Ok(())
}

/// The name of a parameter holding NaN or infinity, if any.
fn first_non_finite<M: Module>(model: &M) -> Option<String> {
    struct Finder(Option<String>);
    impl burn::module::ModuleVisitor for Finder {
        fn visit_float_with_path<const D: usize>(&mut self, path: &[String], _id: burn::module::ParamId, tensor: &Tensor<D>) {
            if self.0.is_none() {
                // NaN and infinity survive a sum; finite weights of a UNet are far from overflowing it.
                if !tensor.clone().sum().into_scalar::<f32>().is_finite() {
                    self.0 = Some(path.join("."));
                }
            }
        }
    }
    let mut f = Finder(None);
    model.visit(&mut f);
    f.0
}

/// The figure an epoch writes (a recipe's samples or denoising grid).
fn figure_path(config: &TrainConfig, dir: &Path, epoch: usize) -> PathBuf {
    match config.recipe {
        Recipe::Denoiser | Recipe::PureNoise => dir.join(format!("denoise_epoch{epoch}.png")),
        _ => dir.join(format!("samples_epoch{epoch}.png")),
    }
}

/// The gradients of one optimisation step on the images `idx`, and its loss. All of the step's
/// randomness is drawn for the whole batch first and then sliced, so `micro_batch` changes only
/// how the batch is split into passes, never which noise an image gets. Each chunk's mean loss is
/// weighted by its share of the batch, so the summed gradient is that of the batch mean.
fn batch_step(
    config: &TrainConfig,
    model: &UNet,
    data: &Dataset,
    idx: &[usize],
    rng: &mut Rng,
    device: &Device,
) -> (GradientsParams, f32) {
    let n = idx.len();
    let chunk = config.micro_batch.unwrap_or(n).clamp(1, n);
    let denoiser = !config.recipe.is_flow();
    let eps = denoiser.then(|| draw_eps(rng, n));
    let (x_all, labels) = data.batch(idx, device);
    let flow = (!denoiser).then(|| {
        let p = if config.recipe.conditioning() == Conditioning::TimeClass { config.p_uncond } else { 1.0 };
        FlowBatch::draw(rng, &labels, p)
    });
    let mut acc = burn::optim::GradientsAccumulator::<UNet>::new();
    let mut total = 0f32;
    for lo in (0..n).step_by(chunk) {
        let hi = (lo + chunk).min(n);
        let x = if chunk == n { x_all.clone() } else { x_all.clone().slice([lo..hi]) };
        let loss = match (&eps, &flow) {
            (Some(e), _) => denoise_loss(model, x, e[lo * PIXELS..hi * PIXELS].to_vec(), config.sigma, config.recipe == Recipe::PureNoise),
            (_, Some(f)) => flow_loss(model, x, &f.slice(lo..hi)),
            _ => unreachable!("a recipe is a denoiser or a flow"),
        };
        let loss = if chunk == n { loss } else { loss * ((hi - lo) as f32 / n as f32) };
        // Read before backward: on the wgpu backend the loss read afterwards was seen to differ
        // from the CPU's for identical weights and data (the backward pass reuses its buffer).
        total += loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), model);
        if chunk == n {
            return (grads, total);
        }
        acc.accumulate(model, grads);
    }
    (acc.grads(), total)
}

/// Euler steps of the per-epoch sample grids (the course used 300; 50 is within its noise).
pub const FIGURE_STEPS: usize = 50;

/// The figures a recipe owes after an epoch: 4 samples per digit (class flow), 40 samples
/// (time flow), or test-set denoising (denoisers).
fn epoch_figures(config: &TrainConfig, model: &UNet, device: &Device, dir: &Path, epoch: usize, data_dir: Option<&Path>) -> Result<()> {
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
            let x0 = noise(&mut Rng::new(config.seed ^ 0x5eed), labels.len(), device);
            let sampler = FlowSampler::new(Solver::Euler, FIGURE_STEPS);
            let out = sampler.sample(&model, x0, &Conditions { labels, guidance: 5.0 }, |_, _| true);
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

/// Writes `loss.csv` (step, epoch, loss) and `loss.png` (log scale, with a per-epoch mean line).
pub fn write_loss_curve(dir: &Path, losses: &[f32], steps_per_epoch: usize) -> Result<()> {
    let mut csv = String::from("step,epoch,loss\n");
    for (i, l) in losses.iter().enumerate() {
        csv.push_str(&format!("{},{},{}\n", i + 1, i / steps_per_epoch + 1, l));
    }
    write_atomic(&dir.join("loss.csv"), csv.as_bytes())?;
    crate::plot::loss_png(losses, &dir.join("loss.png"))
}

/// Mean pixel-space MSE on a few test images (used by tests and reports).
pub fn pixels_mse(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_truncation() {
        let p = Recipe::ClassFlow.defaults();
        let prog = Progress { config: p, epoch: 2, batch: 5, losses: vec![1.0, 0.5], seconds: 3.0, data_sha256: None };
        let enc = encode_checkpoint(&prog, b"model", b"optim");
        let (q, m, o) = decode_checkpoint(&enc, Path::new("x")).unwrap();
        assert_eq!((q.epoch, q.batch, q.losses), (2, 5, vec![1.0, 0.5]));
        assert_eq!((m.as_slice(), o.as_slice()), (&b"model"[..], &b"optim"[..]));
        for cut in [0, 7, 12, enc.len() - 1] {
            assert!(decode_checkpoint(&enc[..cut], Path::new("x")).is_err());
        }
        // Any flipped bit, in the header, the weights or the checksum itself, is found.
        for i in [3, 20, enc.len() - 40, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            let e = decode_checkpoint(&bad, Path::new("x")).unwrap_err().to_string();
            assert!(e.contains("checksum") || e.contains("not a checkpoint"), "byte {i}: {e}");
        }
    }

    #[test]
    fn run_losses_finds_the_epoch_length_and_refuses_inconsistent_counters() {
        let dir = std::env::temp_dir().join(format!("dp-run-losses-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ckpt = dir.join("checkpoint.ckpt");
        let write = |epoch, batch, n: usize| {
            let prog = Progress { config: Recipe::ClassFlow.defaults(), epoch, batch, losses: vec![0.5; n], seconds: 0.0, data_sha256: None };
            std::fs::write(&ckpt, encode_checkpoint(&prog, b"m", b"o")).unwrap();
        };
        write(2, 3, 2 * 7 + 3);
        assert_eq!(run_losses(&dir).unwrap().1, 7);
        write(0, 4, 4); // still in epoch 1: MNIST's 60,000 images at batch 64
        assert_eq!(run_losses(&ckpt).unwrap().1, 938);
        write(2, 5, 3); // fewer losses than the counters claim
        assert!(run_losses(&dir).unwrap_err().to_string().contains("does not match"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn epoch_means_cover_a_partial_last_epoch() {
        assert_eq!(epoch_means(&[1.0, 3.0, 2.0, 4.0, 5.0], 2), vec![2.0, 3.0, 5.0]);
    }

    #[test]
    fn defaults_are_the_course_recipes() {
        let c = Recipe::ClassFlow.defaults();
        assert_eq!((c.hidden, c.batch, c.lr, c.epochs, c.p_uncond), (64, 64, 1e-2, 10, 0.1));
        assert!((c.lr_at(10) - 1e-3).abs() < 1e-12, "decays by 10x over 10 epochs");
        let d = Recipe::Denoiser.defaults();
        assert_eq!((d.hidden, d.batch, d.lr, d.epochs, d.sigma), (128, 256, 1e-4, 5, 0.5));
        assert_eq!(Recipe::ClassFlowConstant.defaults().lr_at(9), 1e-3);
    }
}

/// Settings of a classifier run.
pub struct ClassifierRun {
    pub out: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Continue from `out`'s checkpoint.
    pub resume: bool,
}

/// Where a classifier run is: the next epoch and batch, and every step's loss.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClassifierProgress {
    epochs: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    epoch: usize,
    next_batch: usize,
    losses: Vec<f32>,
    data_sha256: String,
}

/// Trains the digit classifier with Adam and cross-entropy, writes `model.bpk` (and an
/// `epoch_N.bpk` per epoch) and returns its test-set accuracy. A few minutes on CPU. Like the
/// UNet runs it checkpoints at every epoch end and when stopped, and `resume` continues exactly.
pub fn train_classifier(run: &ClassifierRun, device: &Device, stop: &AtomicBool) -> Result<f64> {
    use super::classifier::{argmax_rows, Classifier};
    use burn::nn::loss::CrossEntropyLossConfig;
    if !(1..=MAX_EPOCHS).contains(&run.epochs) || !(1..=MAX_BATCH).contains(&run.batch) || !(run.lr > 0.0 && run.lr.is_finite()) {
        return Err(Error::Invalid(format!("epochs 1..={MAX_EPOCHS}, batch 1..={MAX_BATCH} and a positive lr are needed (got {}, {}, {})", run.epochs, run.batch, run.lr)));
    }
    let dir = run.data_dir.clone().unwrap_or_else(|| DatasetKind::Mnist.default_dir());
    let train_set = Dataset::load(&dir, Split::Train, DatasetKind::Mnist)?;
    let test = Dataset::load(&dir, Split::Test, DatasetKind::Mnist)?;
    train_set.require(1, "training the classifier")?;
    test.require(1, "measuring the classifier's accuracy")?;
    std::fs::create_dir_all(&run.out).map_err(|e| Error::io(&run.out, e))?;
    let ckpt = RunDir(run.out.clone()).checkpoint();
    let adevice = device.clone().autodiff();
    let mut model = seeded_init(run.seed, &adevice, Classifier::new);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let ce = CrossEntropyLossConfig::new().init(&adevice);
    let n = train_set.len();
    let batches = n.div_ceil(run.batch);
    let mut progress = ClassifierProgress {
        epochs: run.epochs,
        batch: run.batch,
        lr: run.lr,
        seed: run.seed,
        epoch: 0,
        next_batch: 0,
        losses: Vec::new(),
        data_sha256: train_set.fingerprint(),
    };
    if run.resume && ckpt.exists() {
        let bytes = std::fs::read(&ckpt).map_err(|e| Error::io(&ckpt, e))?;
        let [json, m, o] = decode_parts(&bytes, &ckpt)?;
        let p: ClassifierProgress = serde_json::from_slice(&json).map_err(|e| Error::format(&ckpt, format!("not a classifier checkpoint ({e})")))?;
        if (p.batch, p.lr, p.seed, &p.data_sha256) != (run.batch, run.lr, run.seed, &progress.data_sha256) || p.epoch > run.epochs || p.next_batch >= batches {
            return Err(Error::format(&ckpt, "was made with other settings or data (or is past this run's epochs): resume with the same flags, or use another --out"));
        }
        model = package::load_module_bytes(model, &m, &ckpt.display().to_string())?;
        let record = burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(o)).map_err(|e| Error::format(&ckpt, format!("optimizer state: {e}")))?;
        optim = optim.load_record(record);
        progress = ClassifierProgress { epochs: run.epochs, ..p };
        eprintln!("resuming {} at epoch {} batch {}", run.out.display(), progress.epoch + 1, progress.next_batch + 1);
    } else if ckpt.exists() && !run.resume {
        return Err(Error::Invalid(format!("{} already holds a run: pass --resume to continue it, or choose another --out", run.out.display())));
    }
    let save = |model: &Classifier, optim: &ModuleOptimizer, p: &ClassifierProgress| -> Result<()> {
        if let Some(name) = first_non_finite(model) {
            return Err(Error::Invalid(format!("the classifier's weights became NaN or infinite ({name}): lower --lr; the checkpoint on disk was not overwritten")));
        }
        let m = package::module_to_bytes(model.valid())?;
        let o = optim.into_bytes().map_err(|e| Error::Invalid(format!("optimizer state: {e}")))?;
        write_atomic(&ckpt, &encode_parts(&serde_json::to_vec(p).expect("progress serialises"), &m, &o))
    };
    let bar = indicatif::ProgressBar::new((batches * run.epochs) as u64);
    bar.set_position((progress.epoch * batches + progress.next_batch) as u64);
    while progress.epoch < run.epochs {
        let epoch = progress.epoch;
        let perm = Rng::derive(run.seed, &[u64::MAX - 1, epoch as u64]).permutation(n);
        while progress.next_batch < batches {
            let b = progress.next_batch;
            let idx = &perm[b * run.batch..((b + 1) * run.batch).min(n)];
            let (x, labels) = train_set.batch(idx, &adevice);
            let targets = Tensor::<1, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [idx.len()]), &adevice);
            let loss = ce.forward(model.forward(x), targets);
            let v: f32 = loss.clone().into_scalar();
            if !v.is_finite() {
                return Err(Error::Invalid(format!("the classifier's loss became {v} at epoch {} batch {}: lower --lr", epoch + 1, b + 1)));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            // Lower the rate for the last epoch: a cheap anneal that gains a few tenths of a percent.
            let lr = if epoch + 1 == run.epochs && run.epochs > 1 { run.lr * 0.3 } else { run.lr };
            model = optim.step(lr, model, grads);
            progress.losses.push(v);
            progress.next_batch += 1;
            bar.inc(1);
            if b % 20 == 0 {
                bar.set_message(format!("epoch {} loss {v:.4}", epoch + 1));
            }
            if stop.load(Ordering::SeqCst) {
                save(&model, &optim, &progress)?;
                bar.abandon_with_message(format!("stopped; saved {}", ckpt.display()));
                return Err(Error::Interrupted);
            }
        }
        progress.epoch += 1;
        progress.next_batch = 0;
        write_atomic(&run.out.join(format!("epoch_{}.bpk", epoch + 1)), &package::module_to_bytes(model.valid())?)?;
        save(&model, &optim, &progress)?;
    }
    bar.finish_and_clear();
    write_loss_curve(&run.out, &progress.losses, batches)?;
    let model = model.valid().to_device(device);
    let mut correct = 0;
    for chunk in (0..test.len()).collect::<Vec<_>>().chunks(1000) {
        let (x, labels) = test.batch(chunk, device);
        let logits: Vec<f32> = model.forward(x).into_data().try_to_vec().map_err(|e| Error::Device(format!("{e:?}")))?;
        correct += argmax_rows(&logits, super::CLASSES).iter().zip(&labels).filter(|((k, _), l)| k == *l).count();
    }
    let acc = correct as f64 / test.len() as f64;
    write_atomic(&run.out.join("model.bpk"), &package::module_to_bytes(model)?)?;
    write_atomic(&run.out.join("accuracy.json"), format!("{{\"test_accuracy\": {acc}}}").as_bytes())?;
    Ok(acc)
}
