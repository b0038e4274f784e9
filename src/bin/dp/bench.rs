//! `dp bench`: this crate and the PyTorch reference, side by side on the same machine, on the
//! class-conditioned UNet: a training step (forward, backward, Adam) and one guided sampling step
//! (conditional + unconditional in one batch). Prints images/s, the ratio to PyTorch and the
//! GFLOP/s reached (convolution and linear FLOPs; backward counted as twice the forward).

use std::process::Command;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use clap::Args;
use diffusion_playground::mnist::flow::{flow_loss, noise, Conditions, FlowBatch, FlowSampler, Solver};
use diffusion_playground::mnist::unet::{forward_flops, UNetConfig};
use diffusion_playground::rng::Rng;
use diffusion_playground::{Error, Result};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    #[arg(long, default_value_t = 64)]
    train_batch: usize,
    #[arg(long, default_value_t = 80)]
    sample_batch: usize,
    /// Seconds each measurement runs for.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_torch: bool,
}

/// Runs `tests/reference/<script>` with python3 and parses the one JSON object it prints; `side`
/// names it in errors ("the PyTorch side failed"), `packages` what to pip install.
pub fn run_reference(script: &str, args: &[String], side: &str, packages: &str) -> Result<serde_json::Value> {
    let script = format!("{}/tests/reference/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| Error::Invalid(format!("could not run python3 for the {side} side ({e}); pass --no-torch")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "the {side} side failed (pip install {packages}?): {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )));
    }
    serde_json::from_slice(out.stdout.trim_ascii()).map_err(|e| Error::Invalid(format!("unexpected output from {script}: {e}")))
}

fn timed(seconds: f64, mut f: impl FnMut()) -> f64 {
    f(); // warm-up (allocations, autotune)
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < seconds || n < 2 {
        f();
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

pub fn run(a: BenchArgs, device: &Device, device_name: &str) -> Result<()> {
    let cfg = UNetConfig::new(a.hidden);
    let flops = forward_flops(&cfg);
    println!("UNet D={} time+class: {:.3} GFLOP per image forward", a.hidden, flops / 1e9);

    // Training step.
    let ad = device.clone().autodiff();
    let mut model = cfg.init(&ad);
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut rng = Rng::new(0);
    let labels: Vec<usize> = (0..a.train_batch).map(|i| i % 10).collect();
    let x1 = Tensor::<4>::from_data(TensorData::new(rng.uniform_vec(a.train_batch * 784), [a.train_batch, 1, 28, 28]), &ad);
    let steps_s = timed(a.seconds, || {
        let batch = FlowBatch::draw(&mut rng, &labels, 0.1);
        let loss = flow_loss(&model, x1.clone(), &batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model.clone(), grads);
        let _: f32 = loss.into_scalar(); // forces the step to complete
    });
    let train_ips = steps_s * a.train_batch as f64;

    // One guided sampling step.
    let m = cfg.init(device).valid();
    let x = noise(&mut rng, a.sample_batch, device);
    let cond = Conditions { labels: (0..a.sample_batch).map(|i| i % 10).collect(), guidance: 5.0 };
    let sampler = FlowSampler::new(Solver::Euler, 50);
    let step_s = timed(a.seconds, || {
        let y = sampler.step(&m, x.clone(), 25, &cond);
        let _ = y.into_data();
    });
    let sample_ips = step_s * a.sample_batch as f64;

    let train_gflops = train_ips * 3.0 * flops / 1e9;
    let sample_gflops = sample_ips * 2.0 * flops / 1e9;
    println!("device: {device_name}");
    println!("burn   train step (batch {}): {train_ips:8.1} images/s  ({train_gflops:.1} GFLOP/s)", a.train_batch);
    println!("burn   guided sampling step (batch {}, 2x for guidance): {sample_ips:8.1} image-steps/s  ({sample_gflops:.1} GFLOP/s)", a.sample_batch);
    if a.no_torch {
        return Ok(());
    }
    let args = ["--hidden", &a.hidden.to_string(), "--train-batch", &a.train_batch.to_string(), "--sample-batch", &a.sample_batch.to_string(), "--seconds", &a.seconds.to_string()].map(String::from);
    let v = run_reference("bench_torch.py", &args, "PyTorch", "torch safetensors")?;
    let tt = v["train_img_s"].as_f64().unwrap_or(f64::NAN);
    let ts = v["sample_img_steps_s"].as_f64().unwrap_or(f64::NAN);
    println!("torch  train step: {tt:8.1} images/s  ({:.1} GFLOP/s); torch {} with {} threads", tt * 3.0 * flops / 1e9, v["torch"], v["threads"]);
    println!("torch  guided sampling step: {ts:8.1} image-steps/s  ({:.1} GFLOP/s)", ts * 2.0 * flops / 1e9);
    println!("ratio burn/torch: training {:.2}x, sampling {:.2}x", train_ips / tt, sample_ips / ts);
    Ok(())
}
