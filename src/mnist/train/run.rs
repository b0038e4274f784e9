//! The one training loop all five recipes share.
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
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::checkpoint::{encode_checkpoint, read_checkpoint, Progress};
use super::events::{Events, TrainEvent};
use super::figures::{epoch_figures, figure_path, write_loss_csv};
use super::{LrSchedule, Recipe, RunDir, TrainConfig};
use crate::image_ops::write_atomic;
use crate::mnist::data::{Dataset, Split};
use crate::mnist::denoise::{denoise_loss, draw_eps};
use crate::mnist::flow::{flow_loss, FlowBatch};
use crate::mnist::unet::{Conditioning, UNet};
use crate::mnist::{package, PIXELS};
use crate::rng::Rng;
use crate::{Error, Result};

/// Options of a run that do not change its result.
pub struct RunOptions<'a> {
    pub dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub resume: bool,
    /// Epochs (1-based) after which sample / denoising grids are written.
    pub figure_epochs: Vec<usize>,
    pub checkpoint_minutes: f64,
    pub stop: &'a AtomicBool,
    /// Where progress goes (see [`TrainEvent`]).
    pub events: Events<'a>,
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

    let resumed = opts.resume && run.checkpoint().exists();
    if resumed {
        let (p, model_bytes, optim_bytes) = read_checkpoint(&run.checkpoint())?;
        if p.config != config {
            // Only the epoch count may grow on resume (train longer); everything else must match.
            let mut same = p.config.clone();
            same.epochs = config.epochs;
            // The default gamma follows the epoch count; that case gets its own message below.
            if let (LrSchedule::Exponential { .. }, LrSchedule::Exponential { .. }) = (same.schedule, config.schedule) {
                same.schedule = config.schedule;
            }
            if same != config {
                return Err(Error::Invalid(format!(
                    "{} was made with different settings ({:?}); resume without changing settings other than `epochs`, or use another `out`",
                    run.checkpoint().display(),
                    p.config
                )));
            }
            if let (Some(_), Some(_)) = (p.config.schedule.gamma(), config.schedule.gamma())
                && p.config.schedule != config.schedule
            {
                return Err(Error::Invalid(format!(
                    "resuming with another `epochs` changes the default decay `gamma` ({} -> {}): set `gamma` {} to keep the run's decay",
                    p.config.schedule.gamma().unwrap_or(1.0),
                    config.schedule.gamma().unwrap_or(1.0),
                    p.config.schedule.gamma().unwrap_or(1.0)
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
    } else if run.checkpoint().exists() && !opts.resume {
        return Err(Error::Invalid(format!(
            "{} already holds a run: set `resume` to continue it, or choose another `out`",
            run.0.display()
        )));
    }
    write_atomic(&run.config(), serde_json::to_string_pretty(&config).unwrap().as_bytes())?;
    let total_steps = batches * config.epochs;

    let events = opts.events;
    events(&TrainEvent::Started { total: total_steps, done: progress.epoch * batches + progress.batch, resumed_at: resumed.then_some((progress.epoch + 1, progress.batch + 1)) })?;

    let save = |model: &UNet, optim: &ModuleOptimizer, progress: &Progress| -> Result<()> {
        // `valid()` folds in the last BatchNorm running-statistics update (a plain clone may
        // still hold the value from one step earlier).
        // A checkpoint only ever holds finite weights: a NaN state never replaces a good one.
        if let Some(name) = first_non_finite(model) {
            return Err(Error::Invalid(format!(
                "the weights became NaN or infinite ({name}) at epoch {} batch {}: lower `lr`; the checkpoint on disk is the last good state and was not overwritten",
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
        events(&TrainEvent::Epoch { epoch: epoch + 1, epochs: config.epochs })?;
        while progress.batch < batches {
            let b = progress.batch;
            let idx = &perm[b * config.batch..((b + 1) * config.batch).min(n)];
            let mut rng = Rng::derive(config.seed, &[epoch as u64, b as u64]);
            let (grads, value) = batch_step(&config, &model, &data, idx, &mut rng, &adevice);
            if !value.is_finite() {
                // Not saved: the checkpoint on disk (if any) holds the last good state.
                let last = if run.checkpoint().exists() { format!("the last good state is in {} (`resume` continues from it)", run.checkpoint().display()) } else { "no checkpoint was written yet".into() };
                return Err(Error::Invalid(format!("loss became {value} at epoch {} batch {}: lower `lr`; {last}", epoch + 1, b + 1)));
            }
            model = optim.step(lr, model, grads);
            progress.losses.push(value);
            progress.batch += 1;
            steps_here += 1;
            events(&TrainEvent::Step { epoch: epoch + 1, batch: b + 1, batches, images: idx.len(), loss: value, lr })?;
            let stop = opts.stop.load(Ordering::SeqCst);
            let limit = opts.max_steps.is_some_and(|m| steps_here >= m);
            if stop || limit || last_ckpt.elapsed().as_secs_f64() > opts.checkpoint_minutes * 60.0 {
                progress.seconds = seconds_before + started.elapsed().as_secs_f64();
                save(&model, &optim, &progress)?;
                last_ckpt = Instant::now();
                if stop {
                    events(&TrainEvent::Stopped { checkpoint: &run.checkpoint() })?;
                    return Err(Error::Interrupted);
                }
                if limit {
                    events(&TrainEvent::Ended { finished: false })?;
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
        write_loss_csv(&run.0, &progress.losses, batches)?;
        events(&TrainEvent::Losses { dir: &run.0, losses: &progress.losses, steps_per_epoch: batches })?;
        if opts.figure_epochs.contains(&progress.epoch) || progress.epoch == config.epochs {
            epoch_figures(&config, &model.valid(), device, &run.0, progress.epoch, opts.data_dir.as_deref())?;
        }
    }
    write_atomic(&run.model(), &package::module_to_bytes(model.valid())?)?;
    // The same clock as the checkpoint's, now including the last epoch's figures, so the
    // closing line never reports more time for this run than for all runs together.
    let seconds_this_run = started.elapsed().as_secs_f64();
    progress.seconds = seconds_before + seconds_this_run;
    events(&TrainEvent::Ended { finished: true })?;
    Ok(Outcome { progress, finished: true, seconds_this_run })
}

/// A resumed checkpoint must belong to this run: counters inside the recipe, a loss history
/// that matches them, and the same training data.
fn check_resume(p: &Progress, config: &TrainConfig, batches: usize, fingerprint: &str, path: &Path) -> Result<()> {
    let bad = |why: String| Err(Error::format(path, format!("{why}; it does not belong to this run (use another `out`, or start again without `resume`)")));
    if let Some(have) = &p.data_sha256
        && have != fingerprint
    {
        return bad("it was trained on another data set (the images or labels differ from `data` / `dataset` / `limit`)".into());
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
pub(super) fn first_non_finite<M: Module>(model: &M) -> Option<String> {
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
