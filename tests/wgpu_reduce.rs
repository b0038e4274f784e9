//! A probe of burn 0.22's GPU reductions, the reason `dp train` refuses batches above 83 on a
//! GPU (83 x 784 = 65,072 values per BatchNorm channel). Needs a wgpu adapter (a GPU, or Mesa's lavapipe: `apt-get install
//! mesa-vulkan-drivers`), so it is ignored by default:
//! `cargo test --release --test wgpu_reduce -- --ignored --nocapture`.
//! Seen 2026-11-23 on lavapipe (and as a diverging denoiser on an H100): sums along a dimension
//! of up to 65,504 values agree with the CPU to ~5e-6 x sqrt(n); from 65,520 on they are off by
//! 2e-2 to 2 x sqrt(n), and train-mode BatchNorm at batch 256 (200,704 values) by ~1500.
//! Whole-tensor means are right up to 262,144 values (rel. 6e-5) and off by 25-75% beyond.
//! Taking BatchNorm's statistics one axis at a time was tried and did not rescue training at
//! batch 256 on lavapipe (the loss stayed at ~0.3 where the CPU's falls to 0.14 in 20 steps), so
//! reductions inside the backward pass (e.g. bias gradients over N x H x W) are hit too.

use burn::prelude::*;
use diffusion_playground::device::{init, DeviceChoice};
use diffusion_playground::rng::Rng;

fn max_rel_err(n: usize, cpu: &Device, gpu: &Device) -> f32 {
    let data = Rng::new(3).normal_vec(8 * n);
    let sum = |d: &Device| -> Vec<f32> {
        Tensor::<2>::from_data(TensorData::new(data.clone(), [8, n]), d).sum_dim(1).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    let (a, b) = (sum(cpu), sum(gpu));
    // Sums of n unit normals have std sqrt(n): compare on that scale.
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (n as f32).sqrt()).fold(0.0, f32::max)
}

#[test]
#[ignore = "needs a wgpu adapter"]
fn gpu_sums_are_right_up_to_the_limit() {
    let cpu = init(DeviceChoice::Cpu).unwrap();
    let gpu = init(DeviceChoice::Wgpu).expect("a wgpu adapter");
    for n in [50_176, 65_072, 65_504] {
        let e = max_rel_err(n, &cpu, &gpu);
        println!("[8, {n}]: max error {e:.2e} x sqrt(n)");
        assert!(e < 1e-4, "[8, {n}]: GPU sum off by {e} x sqrt(n)");
    }
    for n in [65_520, 65_856, 200_704] {
        println!("[8, {n}]: max error {:.2e} x sqrt(n) (beyond the limit)", max_rel_err(n, &cpu, &gpu));
    }
}

/// Whole-tensor means (the training losses): printed against the CPU for a range of sizes.
#[test]
#[ignore = "needs a wgpu adapter"]
fn gpu_whole_means() {
    let cpu = init(DeviceChoice::Cpu).unwrap();
    let gpu = init(DeviceChoice::Wgpu).expect("a wgpu adapter");
    for n in [50_176usize, 200_704, 262_144, 262_145, 400_000, 524_288, 1 << 20] {
        let data: Vec<f32> = Rng::new(4).normal_vec(n).into_iter().map(|v| v * v).collect();
        let m = |d: &Device| -> f32 { Tensor::<1>::from_data(TensorData::new(data.clone(), [n]), d).mean().into_scalar() };
        let (a, b) = (m(&cpu), m(&gpu));
        println!("mean of [{n}]: cpu {a:.6} gpu {b:.6} rel diff {:.1e}", ((a - b) / a).abs());
    }
}
