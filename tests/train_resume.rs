//! The trainer's promises: a run stopped mid-epoch and resumed ends bit-identical to one that ran
//! straight through; checkpoints and snapshots are where they should be; a run directory is never
//! silently overwritten; bad data gives a message naming the fix.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use diffusion_playground::mnist::train::{read_checkpoint, train, LrSchedule, Recipe, RunOptions, TrainConfig};
use diffusion_playground::mnist::package::unet_from_bytes;
use diffusion_playground::mnist::PIXELS;
use diffusion_playground::rng::Rng;

mod common;
use common::{tmp, write_data};

fn config() -> TrainConfig {
    TrainConfig { hidden: 4, batch: 8, epochs: 2, ..Recipe::ClassFlow.defaults() }
}

fn opts<'a>(dir: &Path, data: &Path, resume: bool, stop: &'a AtomicBool, max_steps: Option<usize>) -> RunOptions<'a> {
    RunOptions {
        dir: dir.to_path_buf(),
        data_dir: Some(data.to_path_buf()),
        resume,
        figure_epochs: vec![],
        checkpoint_minutes: 1e9,
        stop,
        events: &|_| Ok(()),
        max_steps,
    }
}

#[test]
fn resume_mid_epoch_is_exact() {
    let data = tmp("resume-data");
    write_data(&data, 40); // 5 batches per epoch
    let device = Device::flex();
    let stop = AtomicBool::new(false);

    let straight = tmp("straight");
    let a = train(config(), &device, &opts(&straight, &data, false, &stop, None)).unwrap();
    assert!(a.finished);
    assert_eq!(a.progress.losses.len(), 10);

    let split = tmp("split");
    let b1 = train(config(), &device, &opts(&split, &data, false, &stop, Some(7))).unwrap();
    assert!(!b1.finished);
    assert_eq!((b1.progress.epoch, b1.progress.batch), (1, 2), "7 steps = epoch 1 + 2 batches");
    let b2 = train(config(), &device, &opts(&split, &data, true, &stop, None)).unwrap();
    assert!(b2.finished);
    // Same data order, noise, optimizer moments and BN statistics: the runs agree up to the
    // summation-order noise of the multi-threaded CPU kernels (~1e-7 relative per step).
    assert_eq!(a.progress.losses.len(), b2.progress.losses.len());
    for (i, (x, y)) in a.progress.losses.iter().zip(&b2.progress.losses).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "step {i}: loss {x} straight vs {y} resumed");
    }
    // Final weights: the same outputs on a fixed input (the files themselves differ in their
    // random parameter ids).
    let cfg = config().unet();
    let load = |dir: &Path| {
        let bytes = std::fs::read(dir.join("model.bpk")).unwrap();
        unet_from_bytes(&cfg, &bytes, "model.bpk", &device).unwrap()
    };
    let x = Tensor::<4>::from_data(TensorData::new(Rng::new(4).normal_vec(2 * PIXELS), [2, 1, 28, 28]), &device);
    let t = Tensor::<2>::full([2, 1], 0.5, &device);
    let c = Tensor::<2>::zeros([2, 10], &device);
    let ya: Vec<f32> = load(&straight).forward(x.clone(), Some(t.clone()), Some(c.clone())).into_data().try_to_vec().unwrap();
    let yb: Vec<f32> = load(&split).forward(x, Some(t), Some(c)).into_data().try_to_vec().unwrap();
    let d = ya.iter().zip(&yb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(d < 1e-3, "final models differ after resume: max |diff| {d}");
    for f in ["epoch_1.bpk", "epoch_2.bpk", "loss.csv", "config.json", "checkpoint.ckpt", "samples_epoch2.png"] {
        assert!(split.join(f).exists(), "{f} missing");
    }
    let (p, _, _) = read_checkpoint(&split.join("checkpoint.ckpt")).unwrap();
    assert_eq!((p.epoch, p.batch), (2, 0));
}

#[test]
fn refuses_to_overwrite_and_to_resume_with_other_settings() {
    let data = tmp("guard-data");
    write_data(&data, 16);
    let device = Device::flex();
    let stop = AtomicBool::new(false);
    let run = tmp("guard");
    train(config(), &device, &opts(&run, &data, false, &stop, Some(1))).unwrap();
    let err = train(config(), &device, &opts(&run, &data, false, &stop, None)).err().unwrap().to_string();
    assert!(err.contains("`resume`"), "{err}");
    let other = TrainConfig { lr: 0.5, ..config() };
    let err = train(other, &device, &opts(&run, &data, true, &stop, None)).err().unwrap().to_string();
    assert!(err.contains("different settings"), "{err}");
    // More epochs with the default decay (which follows the epoch count): say which flag keeps the run's.
    let longer = TrainConfig { epochs: 3, schedule: LrSchedule::tenfold_over(3), ..config() };
    let err = train(longer, &device, &opts(&run, &data, true, &stop, None)).err().unwrap().to_string();
    assert!(err.contains("`gamma` 0.79"), "{err}");
}

#[test]
fn stop_flag_saves_and_reports_interrupted() {
    let data = tmp("stop-data");
    write_data(&data, 16);
    let run = tmp("stop");
    let stop = AtomicBool::new(true);
    let err = train(config(), &Device::flex(), &opts(&run, &data, false, &stop, None)).err().unwrap();
    assert!(matches!(err, diffusion_playground::Error::Interrupted));
    let (p, _, _) = read_checkpoint(&run.join("checkpoint.ckpt")).unwrap();
    assert_eq!((p.epoch, p.batch, p.losses.len()), (0, 1, 1));
}

#[test]
fn missing_data_names_the_fix() {
    let run = tmp("nodata");
    let stop = AtomicBool::new(false);
    let o = opts(&run, Path::new("/nonexistent/mnist"), false, &stop, None);
    let err = train(config(), &Device::flex(), &o).err().unwrap().to_string();
    assert!(err.contains("setup.sh"), "{err}");
}

/// `--micro-batch`: the step must see the same images and noise as the whole batch would, each
/// pass's mean loss weighted by its share, and one optimizer step per batch. Rebuilt here from
/// the public pieces for one step of batch 4 in passes of 3 + 1 (unequal, so a wrong weighting
/// shows), and compared with what the trainer wrote.
#[test]
fn micro_batches_sum_to_one_step() {
    use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams};
    use diffusion_playground::mnist::data::{Dataset, DatasetKind, Split};
    use diffusion_playground::mnist::denoise::{denoise_loss, draw_eps};
    use diffusion_playground::mnist::train::seeded_init;
    use diffusion_playground::mnist::unet::UNet;

    let data = tmp("micro-data");
    write_data(&data, 8);
    let device = Device::flex();
    let stop = AtomicBool::new(false);
    let cfg = TrainConfig { hidden: 4, batch: 4, epochs: 1, micro_batch: Some(3), ..Recipe::Denoiser.defaults() };
    let run = tmp("micro");
    let out = train(cfg.clone(), &device, &opts(&run, &data, false, &stop, Some(1))).unwrap();
    let (_, model_bytes, _) = read_checkpoint(&run.join("checkpoint.ckpt")).unwrap();
    let trained = unet_from_bytes(&cfg.unet(), &model_bytes, "checkpoint", &device).unwrap();

    let adevice = device.clone().autodiff();
    let model: UNet = seeded_init(cfg.seed, &adevice, |d| cfg.unet().init(d));
    let idx: Vec<usize> = Rng::derive(cfg.seed, &[u64::MAX, 0]).permutation(8)[..4].to_vec();
    let eps = draw_eps(&mut Rng::derive(cfg.seed, &[0, 0]), 4);
    let (x, _) = Dataset::load(&data, Split::Train, DatasetKind::Mnist).unwrap().batch(&idx, &adevice);
    let mut acc = GradientsAccumulator::<UNet>::new();
    let mut loss = 0f32;
    for (lo, hi) in [(0, 3), (3, 4)] {
        let l = denoise_loss(&model, x.clone().slice([lo..hi]), eps[lo * PIXELS..hi * PIXELS].to_vec(), cfg.sigma, false)
            * ((hi - lo) as f32 / 4.0);
        acc.accumulate(&model, GradientsParams::from_grads(l.backward(), &model));
        loss += l.into_scalar::<f32>();
    }
    let mut optim = AdamConfig::new().with_epsilon(cfg.adam_eps).init();
    let expected = optim.step(cfg.lr, model, acc.grads()).valid();

    assert_eq!(out.progress.losses.len(), 1, "one optimizer step per batch, whatever the passes");
    assert!((out.progress.losses[0] - loss).abs() <= 1e-6 * loss, "loss {} vs {loss}", out.progress.losses[0]);
    let z = Tensor::<4>::from_data(TensorData::new(Rng::new(9).normal_vec(2 * PIXELS), [2, 1, 28, 28]), &device);
    let ya: Vec<f32> = trained.forward(z.clone(), None, None).into_data().try_to_vec().unwrap();
    let yb: Vec<f32> = expected.forward(z, None, None).into_data().try_to_vec().unwrap();
    let d = ya.iter().zip(&yb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "trainer's step differs from the summed passes: max |diff| {d}");
}
