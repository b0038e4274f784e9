//! `dp bench`: this crate and the PyTorch reference, side by side on the same machine, on the
//! class-conditioned UNet: a training step (forward, backward, Adam) and one guided sampling step
//! (conditional + unconditional in one batch). Prints images/s, the ratio to PyTorch and the
//! GFLOP/s reached (convolution and linear FLOPs; backward counted as twice the forward).
//! The two sides alternate over several rounds and the median of the rounds' ratios is the
//! result: a shared machine's speed drifts by a third within minutes, which one burn run followed
//! by one PyTorch run reads as a difference between the two.

use crate::args::{count, seconds};
use std::process::Command;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use clap::Args;
use diffusion_playground::mnist::flow::{flow_loss, noise, FlowBatch, FlowSampler, Solver};
use diffusion_playground::mnist::unet::{forward_flops, UNetConfig};
use diffusion_playground::rng::Rng;
use diffusion_playground::{Error, Result};

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 64, value_parser = count(diffusion_playground::mnist::unet::MAX_HIDDEN))]
    hidden: usize,
    #[arg(long, default_value_t = 64, value_parser = count(1024))]
    train_batch: usize,
    #[arg(long, default_value_t = 80, value_parser = count(1024))]
    sample_batch: usize,
    /// Seconds each measurement runs for (at most an hour).
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    seconds: f64,
    /// Rounds of (burn, PyTorch); the ratios reported are the median of the rounds'.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
    let mut train_step = || {
        let batch = FlowBatch::draw(&mut rng, &labels, 0.1);
        let loss = flow_loss(&model, x1.clone(), &batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model.clone(), grads);
        let _: f32 = loss.into_scalar(); // forces the step to complete
    };

    // One guided sampling step.
    let m = cfg.init(device).valid();
    let x = noise(&mut Rng::new(1), a.sample_batch, device);
    let labels: Vec<usize> = (0..a.sample_batch).map(|i| i % 10).collect();
    let sampler = FlowSampler::new(Solver::Euler, 50);
    let sample_step = || {
        let y = sampler.step(&m, x.clone(), 25, &labels, 5.0);
        let _ = y.into_data();
    };

    println!("device: {device_name}; {} round(s) of {} s per measurement", a.rounds, a.seconds);
    let torch_args = ["--hidden", &a.hidden.to_string(), "--train-batch", &a.train_batch.to_string(), "--sample-batch", &a.sample_batch.to_string(), "--seconds", &a.seconds.to_string()].map(String::from);
    let (mut train_ratios, mut sample_ratios) = (vec![], vec![]);
    for round in 1..=a.rounds {
        let train_ips = timed(a.seconds, &mut train_step) * a.train_batch as f64;
        let sample_ips = timed(a.seconds, sample_step) * a.sample_batch as f64;
        println!("round {round}:");
        println!("  burn   train step (batch {}): {train_ips:8.1} images/s  ({:.1} GFLOP/s)", a.train_batch, train_ips * 3.0 * flops / 1e9);
        println!("  burn   guided sampling step (batch {}, 2x for guidance): {sample_ips:8.1} image-steps/s  ({:.1} GFLOP/s)", a.sample_batch, sample_ips * 2.0 * flops / 1e9);
        if a.no_torch {
            continue;
        }
        let v = run_reference("bench_torch.py", &torch_args, "PyTorch", "torch safetensors")?;
        let tt = v["train_img_s"].as_f64().unwrap_or(f64::NAN);
        let ts = v["sample_img_steps_s"].as_f64().unwrap_or(f64::NAN);
        println!("  torch  train step: {tt:8.1} images/s  ({:.1} GFLOP/s); torch {} with {} threads", tt * 3.0 * flops / 1e9, v["torch"], v["threads"]);
        println!("  torch  guided sampling step: {ts:8.1} image-steps/s  ({:.1} GFLOP/s)", ts * 2.0 * flops / 1e9);
        println!("  ratio burn/torch: training {:.2}x, sampling {:.2}x", train_ips / tt, sample_ips / ts);
        train_ratios.push(train_ips / tt);
        sample_ratios.push(sample_ips / ts);
    }
    if !a.no_torch {
        let list = |r: &[f64]| r.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ");
        println!("ratio burn/torch, median of {} round(s): training {:.2}x ({}), sampling {:.2}x ({})", a.rounds, median(&train_ratios), list(&train_ratios), median(&sample_ratios), list(&sample_ratios));
    }
    Ok(())
}
