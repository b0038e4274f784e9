//! A probe of burn 0.22's GPU reductions, the reason `dp train` refuses batches above 83 on a
//! GPU (83 x 784 = 65,072 values per BatchNorm channel). Needs a wgpu adapter (a GPU, or Mesa's lavapipe: `apt-get install
//! mesa-vulkan-drivers`), so it is ignored by default:
//! `cargo test --release --test wgpu_reduce -- --ignored --nocapture`.
//! Seen 2026-11-23 on lavapipe (and as a diverging denoiser on an H100): sums along a dimension
//! of up to 65,504 values agree with the CPU to ~5e-6 x sqrt(n); from 65,520 on they are off by
//! 2e-2 to 2 x sqrt(n), and train-mode BatchNorm at batch 256 (200,704 values) by ~1500.

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
