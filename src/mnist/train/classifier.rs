//! The digit classifier's trainer (Adam, cross-entropy), checkpointed and resumable like the
//! UNet runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint::{decode_parts, encode_parts};
use super::events::{Events, TrainEvent};
use super::figures::write_loss_csv;
use super::run::{first_non_finite, seeded_init};
use super::{LrSchedule, Optimizer, RunDir, MAX_BATCH, MAX_EPOCHS};
use crate::image_ops::write_atomic;
use crate::mnist::classifier::{argmax_rows, Classifier};
use crate::mnist::data::{Dataset, DatasetKind, Split};
use crate::mnist::{package, CLASSES};
use crate::rng::Rng;
use crate::{Error, Result};

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
pub fn train_classifier(run: &ClassifierRun, device: &Device, stop: &AtomicBool, events: Events) -> Result<f64> {
    if !(1..=MAX_EPOCHS).contains(&run.epochs) || !(1..=MAX_BATCH).contains(&run.batch) || !(run.lr > 0.0 && run.lr.is_finite()) {
        return Err(Error::Invalid(format!("`epochs` 1..={MAX_EPOCHS}, `batch` 1..={MAX_BATCH} and a positive `lr` are needed (got {}, {}, {})", run.epochs, run.batch, run.lr)));
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
    let mut optim = Optimizer::Adam.init(1e-8, None);
    // A cheap anneal that gains a few tenths of a percent.
    let schedule = LrSchedule::LastEpoch { factor: 0.3 };
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
    let resumed = run.resume && ckpt.exists();
    if resumed {
        let bytes = std::fs::read(&ckpt).map_err(|e| Error::io(&ckpt, e))?;
        let [json, m, o] = decode_parts(&bytes, &ckpt)?;
        let p: ClassifierProgress = serde_json::from_slice(&json).map_err(|e| Error::format(&ckpt, format!("not a classifier checkpoint ({e})")))?;
        if (p.batch, p.lr, p.seed, &p.data_sha256) != (run.batch, run.lr, run.seed, &progress.data_sha256) || p.epoch > run.epochs || p.next_batch >= batches {
            return Err(Error::format(&ckpt, "was made with other settings or data (or is past this run's epochs): resume with the same settings, or use another `out`"));
        }
        model = package::load_module_bytes(model, &m, &ckpt.display().to_string())?;
        let record = burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(o)).map_err(|e| Error::format(&ckpt, format!("optimizer state: {e}")))?;
        optim = optim.load_record(record);
        progress = ClassifierProgress { epochs: run.epochs, ..p };
    } else if ckpt.exists() && !run.resume {
        return Err(Error::Invalid(format!("{} already holds a run: set `resume` to continue it, or choose another `out`", run.out.display())));
    }
    let save = |model: &Classifier, optim: &ModuleOptimizer, p: &ClassifierProgress| -> Result<()> {
        if let Some(name) = first_non_finite(model) {
            return Err(Error::Invalid(format!("the classifier's weights became NaN or infinite ({name}): lower `lr`; the checkpoint on disk was not overwritten")));
        }
        let m = package::module_to_bytes(model.valid())?;
        let o = optim.into_bytes().map_err(|e| Error::Invalid(format!("optimizer state: {e}")))?;
        write_atomic(&ckpt, &encode_parts(&serde_json::to_vec(p).expect("progress serialises"), &m, &o))
    };
    let resumed_at = resumed.then_some((progress.epoch + 1, progress.next_batch + 1));
    events(&TrainEvent::Started { total: batches * run.epochs, done: progress.epoch * batches + progress.next_batch, resumed_at })?;
    while progress.epoch < run.epochs {
        let epoch = progress.epoch;
        events(&TrainEvent::Epoch { epoch: epoch + 1, epochs: run.epochs })?;
        let perm = Rng::derive(run.seed, &[u64::MAX - 1, epoch as u64]).permutation(n);
        while progress.next_batch < batches {
            let b = progress.next_batch;
            let idx = &perm[b * run.batch..((b + 1) * run.batch).min(n)];
            let (x, labels) = train_set.batch(idx, &adevice);
            let targets = Tensor::<1, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [idx.len()]), &adevice);
            let loss = ce.forward(model.forward(x), targets);
            let v: f32 = loss.clone().into_scalar();
            if !v.is_finite() {
                return Err(Error::Invalid(format!("the classifier's loss became {v} at epoch {} batch {}: lower `lr`", epoch + 1, b + 1)));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = schedule.lr(run.lr, epoch, run.epochs);
            model = optim.step(lr, model, grads);
            progress.losses.push(v);
            progress.next_batch += 1;
            events(&TrainEvent::Step { epoch: epoch + 1, batch: b + 1, batches, images: idx.len(), loss: v, lr })?;
            if stop.load(Ordering::SeqCst) {
                save(&model, &optim, &progress)?;
                events(&TrainEvent::Stopped { checkpoint: &ckpt })?;
                return Err(Error::Interrupted);
            }
        }
        progress.epoch += 1;
        progress.next_batch = 0;
        write_atomic(&run.out.join(format!("epoch_{}.bpk", epoch + 1)), &package::module_to_bytes(model.valid())?)?;
        save(&model, &optim, &progress)?;
    }
    write_loss_csv(&run.out, &progress.losses, batches)?;
    events(&TrainEvent::Losses { dir: &run.out, losses: &progress.losses, steps_per_epoch: batches })?;
    let model = model.valid().to_device(device);
    let mut correct = 0;
    for chunk in (0..test.len()).collect::<Vec<_>>().chunks(1000) {
        let (x, labels) = test.batch(chunk, device);
        let logits: Vec<f32> = model.forward(x).into_data().try_to_vec().map_err(|e| Error::Device(format!("{e:?}")))?;
        correct += argmax_rows(&logits, CLASSES).iter().zip(&labels).filter(|((k, _), l)| k == *l).count();
    }
    let acc = correct as f64 / test.len() as f64;
    write_atomic(&run.out.join("model.bpk"), &package::module_to_bytes(model)?)?;
    write_atomic(&run.out.join("accuracy.json"), format!("{{\"test_accuracy\": {acc}}}").as_bytes())?;
    events(&TrainEvent::Ended { finished: true })?;
    Ok(acc)
}
