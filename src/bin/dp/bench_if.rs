//! `dp bench-if`: one UNet step of IF stage 1 at a real size (random weights: speed does not
//! depend on their values), batch 2 as guidance runs it, 64x64, 77 tokens, next to diffusers on
//! the same machine. Prints ms per step, GFLOP/s, peak memory and the ratio.

use crate::args::count;
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use clap::Args;
use diffusion_playground::deepfloyd::config::IfConfig;
use diffusion_playground::deepfloyd::unet::forward_flops;
use diffusion_playground::rng::Rng;
use diffusion_playground::{Error, Result};

#[derive(Args)]
pub struct BenchIfArgs {
    /// IF-I size: M, L or XL.
    #[arg(long, default_value = "M")]
    variant: String,
    #[arg(long, default_value_t = 2, value_parser = count(64))]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3, value_parser = count(1000))]
    steps: usize,
    /// Skip the diffusers side.
    #[arg(long)]
    no_torch: bool,
    /// Instead of timing: the output error of f16, q8 and q4 packages against f32 weights.
    #[arg(long)]
    quant_error: bool,
    /// Instead of timing: write the random-weights model as a package in this folder (the
    /// browser benchmark's IF-I-M-shaped model), stored as `--scheme`.
    #[arg(long)]
    package_out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "q8", value_parser = crate::args::choice_of(&diffusion_playground::deepfloyd::package::SCHEMES))]
    scheme: diffusion_playground::artifact::Dtype,
}

/// Peak resident memory of this process (Linux), in MB.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kb| kb / 1024.0)
}

pub fn run(a: BenchIfArgs, device: &Device, device_name: &str) -> Result<()> {
    if a.quant_error {
        return quant_error(&a, device);
    }
    if let Some(dir) = &a.package_out {
        return write_package(&a.variant, a.scheme, dir);
    }
    let cfg = IfConfig::if_i(&a.variant)?;
    let (side, tokens) = (64, 77);
    let flops = forward_flops(&cfg, side, tokens, a.batch);
    println!(
        "IF-I-{} ({} parameters, widths {:?}): {:.1} GFLOP per UNet step at batch {}",
        a.variant,
        cfg.parameter_count(),
        cfg.block_out_channels,
        flops / 1e9,
        a.batch
    );
    let t0 = Instant::now();
    let model = cfg.init(device).valid();
    println!("built with random weights in {:.1} s", t0.elapsed().as_secs_f64());
    let mut rng = Rng::new(0);
    let x = Tensor::<4>::from_data(TensorData::new(rng.normal_vec(a.batch * 3 * side * side), [a.batch, 3, side, side]), device);
    let text = Tensor::<3>::from_data(TensorData::new(rng.normal_vec(a.batch * tokens * 4096), [a.batch, tokens, 4096]), device);
    let t = Tensor::<1>::full([a.batch], 500.0, device);
    let step = || {
        let y = model.forward(x.clone(), t.clone(), text.clone());
        let _ = y.into_data();
    };
    let w = Instant::now();
    step();
    let warm = w.elapsed().as_secs_f64() * 1000.0;
    let s = Instant::now();
    for _ in 0..a.steps {
        step();
    }
    let ms = s.elapsed().as_secs_f64() * 1000.0 / a.steps as f64;
    let mem = peak_rss_mb().map(|m| format!("{m:.0} MB")).unwrap_or("n/a".into());
    println!("device: {device_name}");
    println!("burn      {ms:9.1} ms per step ({:.1} GFLOP/s); first step {warm:.0} ms; peak RSS {mem}", flops / ms / 1e6);
    let _ = model.num_params();
    if a.no_torch {
        return Ok(());
    }
    let widths: Vec<String> = cfg.block_out_channels.iter().map(|w| w.to_string()).collect();
    // The same float type on both sides (the device's, set by --compute).
    let dtype = if device.settings().float_dtype == burn::tensor::FloatDType::F16 { "f16" } else { "f32" };
    // A GPU run of this crate is compared with PyTorch on the GPU (CUDA: an NVIDIA card is assumed).
    let torch_device = if device_name.starts_with("cpu") { "cpu" } else { "cuda" };
    let args = [
        "--widths", &widths.join(","), "--layers", &cfg.layers_per_block.to_string(), "--batch", &a.batch.to_string(),
        "--steps", &a.steps.to_string(), "--dtype", dtype, "--device", torch_device,
    ]
    .map(String::from);
    let v = crate::bench::run_reference("bench_if_torch.py", &args, "diffusers", "torch diffusers")?;
    let tms = v["ms_per_step"].as_f64().unwrap_or(f64::NAN);
    println!(
        "diffusers {tms:9.1} ms per step ({:.1} GFLOP/s); peak RSS {:.0} MB; torch {} with {} threads, {} parameters, {dtype}",
        flops / tms / 1e6,
        v["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        v["torch"],
        v["threads"],
        v["parameters"]
    );
    if let Some(gpu_mb) = v["peak_gpu_mb"].as_f64() {
        println!("diffusers on {}: peak GPU memory allocated by PyTorch {gpu_mb:.0} MB", v["device"]);
    }
    if v["parameters"].as_u64() != Some(cfg.parameter_count()) {
        println!("warning: diffusers built {} parameters, this crate {}", v["parameters"], cfg.parameter_count());
    }
    println!("ratio burn/diffusers (time per step, lower is faster): {:.2}x", ms / tms);
    Ok(())
}

/// Random weights of the variant's real size in diffusers layout (uniform +-1/sqrt(fan-in), as
/// PyTorch initialises, so activations keep a realistic scale), run once as f32 and once from an
/// in-memory package per scheme on the same inputs; prints max|out_q - out_f32| / max|out_f32|.
fn quant_error(a: &BenchIfArgs, device: &Device) -> Result<()> {
    use diffusion_playground::artifact::safetensors::write_f32;
    use diffusion_playground::artifact::Dtype;
    use diffusion_playground::deepfloyd::package::{stored_as, PackageWriter, SCHEMES};
    use diffusion_playground::deepfloyd::weights::{load_package_bytes, load_unet_bytes};

    let json = IfConfig::if_i_json(&a.variant)?;
    let cfg = IfConfig::from_json(&json.to_string(), "config")?;
    let mut rng = Rng::new(7);
    let tensors = random_tensors(&cfg, &mut rng);
    println!("IF-I-{} with random weights: {} parameters", a.variant, cfg.parameter_count());
    let (side, tokens) = (64, 77);
    let x = Tensor::<4>::from_data(TensorData::new(rng.normal_vec(a.batch * 3 * side * side), [a.batch, 3, side, side]), device);
    let text = Tensor::<3>::from_data(TensorData::new(rng.normal_vec(a.batch * tokens * 4096), [a.batch, tokens, 4096]), device);
    let t = Tensor::<1>::full([a.batch], 500.0, device);
    let run = |model: diffusion_playground::deepfloyd::unet::IfUNet| -> Result<Vec<f32>> {
        model.forward(x.clone(), t.clone(), text.clone()).into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Device(format!("{e:?}")))
    };
    let reference = run(load_unet_bytes(&json.to_string(), vec![("random".into(), write_f32(&tensors)?)], device)?)?;
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("f32 output: max |out| {scale:.3}");
    for scheme in SCHEMES {
        let mut shards: Vec<Vec<u8>> = Vec::new();
        let mut writer = PackageWriter::new(json.clone(), scheme, |_: &str, bytes: &[u8]| {
            shards.push(bytes.to_vec());
            Ok(())
        });
        for (name, shape, values) in &tensors {
            writer.add(name, shape, values)?;
        }
        let manifest = writer.finish()?;
        let bytes: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
        let out = run(load_package_bytes(&manifest.to_json(), &shards, device)?)?;
        let err = out.iter().zip(&reference).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
        println!("{scheme:?}: package {:.2} GB, output error max|out - out_f32| / max|out_f32| = {err:.2e}", bytes as f64 / 1e9);
    }
    // Which tensors the q4 error comes from: q4 everywhere but one group kept at q8.
    let groups: [(&str, fn(&str) -> bool); 6] = [
        ("conv_in, conv_out", |n| n.starts_with("conv_in.") || n.starts_with("conv_out.")),
        ("time and text embeddings", |n| n.starts_with("time_embedding.") || n.starts_with("add_embedding.") || n.starts_with("encoder_hid_proj.")),
        ("attention projections", |n| n.contains(".attentions.")),
        ("resnet convs", |n| n.contains(".resnets.") && (n.contains(".conv1.") || n.contains(".conv2."))),
        ("resnet time projections", |n| n.contains(".resnets.") && n.contains(".time_emb_proj.")),
        ("the rest", |_| true),
    ];
    for (k, (label, pick)) in groups.iter().enumerate() {
        // "the rest": what none of the groups before names.
        let is = |n: &str| if k + 1 == groups.len() { !groups[..k].iter().any(|(_, p)| p(n)) } else { pick(n) };
        let mut shards: Vec<Vec<u8>> = Vec::new();
        let mut writer = PackageWriter::new(json.clone(), Dtype::Q4, |_: &str, bytes: &[u8]| {
            shards.push(bytes.to_vec());
            Ok(())
        });
        let mut kept = 0u64;
        for (name, shape, values) in &tensors {
            let base = stored_as(Dtype::Q4, name, shape);
            let dtype = if base == Dtype::Q4 && is(name) { Dtype::Q8 } else { base };
            // (conv_in and conv_out are q8 in every q4 package: `stored_as`.)
            if dtype == Dtype::Q8 {
                kept += values.len() as u64;
            }
            writer.add_as(name, shape, values, dtype)?;
        }
        let manifest = writer.finish()?;
        let out = run(load_package_bytes(&manifest.to_json(), &shards, device)?)?;
        let err = out.iter().zip(&reference).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
        println!(
            "q4, {label} at q8 ({:.1}% of the parameters): package {:.3} GB, output error {err:.2e}",
            100.0 * kept as f64 / cfg.parameter_count() as f64,
            manifest.total_bytes() as f64 / 1e9
        );
    }
    Ok(())
}

/// Random weights of realistic scale: norms' weights near 1, the rest uniform +-1/sqrt(fan-in)
/// as PyTorch initialises.
fn random_tensors(cfg: &IfConfig, rng: &mut Rng) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    use diffusion_playground::deepfloyd::unet::parameter_shapes;
    parameter_shapes(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if shape.len() == 1 && name.contains("norm") && name.ends_with(".weight") {
                (0..n).map(|_| 1.0 + 0.1 * rng.normal()).collect()
            } else {
                let fan_in = if shape.len() > 1 { shape[1..].iter().product::<usize>() } else { shape[0] };
                let bound = 1.0 / (fan_in as f32).sqrt();
                rng.uniform_vec(n).into_iter().map(|u| (2.0 * u - 1.0) * bound).collect()
            };
            (name, shape, values)
        })
        .collect()
}

/// The random-weights model as a package in `dir` (manifest written last).
fn write_package(variant: &str, scheme: diffusion_playground::artifact::Dtype, dir: &std::path::Path) -> Result<()> {
    use diffusion_playground::deepfloyd::package::PackageWriter;
    use diffusion_playground::image_ops::write_atomic;
    let json = IfConfig::if_i_json(variant)?;
    let cfg = IfConfig::from_json(&json.to_string(), "config")?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut writer = PackageWriter::new(json, scheme, |file: &str, bytes: &[u8]| write_atomic(&dir.join(file), bytes));
    for (name, shape, values) in random_tensors(&cfg, &mut Rng::new(7)) {
        writer.add(&name, &shape, &values)?;
    }
    let m = writer.finish()?;
    write_atomic(&dir.join("manifest.json"), m.to_json().as_bytes())?;
    println!("{}: IF-I-{variant} random weights, {scheme}, {} bytes in {} shards", dir.display(), m.total_bytes(), m.shards.len());
    Ok(())
}
