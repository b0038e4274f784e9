//! The trainer's promises: a run stopped mid-epoch and resumed ends bit-identical to one that ran
//! straight through; checkpoints and snapshots are where they should be; a run directory is never
//! silently overwritten; bad data gives a message naming the fix.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use diffusion_playground::mnist::train::{read_checkpoint, train, Recipe, RunOptions, TrainConfig};
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
        progress_bar: false,
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
    assert!(err.contains("--resume"), "{err}");
    let other = TrainConfig { lr: 0.5, ..config() };
    let err = train(other, &device, &opts(&run, &data, true, &stop, None)).err().unwrap().to_string();
    assert!(err.contains("different settings"), "{err}");
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
