//! Probes of burn 0.22's wgpu backend against the CPU, the reason `dp train` runs at most 83
//! images per pass on a GPU (83 x 784 = 65,072 values per BatchNorm channel; `--micro-batch`
//! splits a larger batch). Needs a wgpu adapter (a GPU, or Mesa's lavapipe: `apt-get install
//! mesa-vulkan-drivers`), so they are ignored by default:
//! `cargo test --release --test wgpu_reduce -- --ignored --nocapture`.
//! Seen 2026-11-23 on lavapipe (and as a diverging denoiser on an H100): sums along a dimension
//! of up to 65,504 values agree with the CPU to ~5e-6 x sqrt(n); from 65,520 on they are off by
//! 2e-2 to 2 x sqrt(n), and train-mode BatchNorm at batch 256 (200,704 values) by ~1500.
//! Whole-tensor means are right up to 262,144 values (rel. 6e-5) and off by 25-75% beyond.
//! Seen the same day on lavapipe (`gpu_ops_against_cpu`): every UNet operation, and the whole D=8
//! UNet in eval and train mode, agree with the CPU to 2e-6; but on the autodiff (training)
//! device the scalar mean of the flow-matching error is wrong and not even repeatable (CPU
//! 1.955; GPU 4.78, then 18.39 for the same tensor read again), while the same error read
//! element by element matches, and the weight gradients of one flow-matching step differ from
//! the CPU's by more than their own size (rel. 1-2), also when t is spelled out per pixel instead
//! of broadcast, while the plain UNet's own gradients (loss = mean squared output, no or time
//! conditioning) agree to 1.5e-3: the fault is in how the loss graph around it is fused, not in
//! a layer. The denoiser's steps at batch 64 do match (its first three losses are the
//! CPU's to 4 digits). The class-conditioned flow trained on an H100 (batch 64) evaluates at 100%,
//! so the H100 did not show this for the flows; lavapipe may have a bug of its own. Not chased
//! further.

use burn::prelude::*;
use diffusion_playground::artifact::Dtype;
use diffusion_playground::device::{init_with, DeviceChoice};
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
    let cpu = init_with(DeviceChoice::Cpu, Dtype::F32).unwrap();
    let gpu = init_with(DeviceChoice::Wgpu, Dtype::F32).expect("a wgpu adapter");
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
    let cpu = init_with(DeviceChoice::Cpu, Dtype::F32).unwrap();
    let gpu = init_with(DeviceChoice::Wgpu, Dtype::F32).expect("a wgpu adapter");
    for n in [50_176usize, 200_704, 262_144, 262_145, 400_000, 524_288, 1 << 20] {
        let data: Vec<f32> = Rng::new(4).normal_vec(n).into_iter().map(|v| v * v).collect();
        let m = |d: &Device| -> f32 { Tensor::<1>::from_data(TensorData::new(data.clone(), [n]), d).mean().into_scalar() };
        let (a, b) = (m(&cpu), m(&gpu));
        println!("mean of [{n}]: cpu {a:.6} gpu {b:.6} rel diff {:.1e}", ((a - b) / a).abs());
    }
}

/// The UNet's operations one at a time, CPU against the wgpu adapter on the same inputs
/// (printed: max |diff| over max |value|), then the whole D=8 UNet in train mode.
#[test]
#[ignore = "needs a wgpu adapter"]
fn gpu_ops_against_cpu() {
    use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    use burn::tensor::activation::gelu;
    use diffusion_playground::mnist::package::{module_to_bytes, unet_from_bytes};
    use diffusion_playground::mnist::unet::{Conditioning, UNetConfig};
    let cpu = init_with(DeviceChoice::Cpu, Dtype::F32).unwrap();
    let gpu = init_with(DeviceChoice::Wgpu, Dtype::F32).expect("a wgpu adapter");
    let report = |name: &str, a: Vec<f32>, b: Vec<f32>| {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        println!("{name:>28}: rel {:.1e}", d / scale);
    };
    let v = |t: Tensor<4>| -> Vec<f32> { t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap() };
    let x = |shape: [usize; 4], d: &Device| Tensor::<4>::from_data(TensorData::new(Rng::new(5).normal_vec(shape.iter().product()), shape), d);
    // Modules: initialised on the CPU, copied to the GPU by value.
    macro_rules! both {
        ($name:expr, $m:expr, $shape:expr) => {{
            let m_cpu = $m;
            let rec = m_cpu.clone().into_record();
            let m_gpu = m_cpu.clone().load_record(rec).to_device(&gpu);
            report($name, v(m_cpu.forward(x($shape, &cpu))), v(m_gpu.forward(x($shape, &gpu))));
        }};
    }
    both!("conv 3x3 [8,8,28,28]", Conv2dConfig::new([8, 8], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&cpu), [8, 8, 28, 28]);
    both!("conv 3x3 s2 [8,8,28,28]", Conv2dConfig::new([8, 8], [3, 3]).with_stride([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&cpu), [8, 8, 28, 28]);
    both!("convT k4 s2 p1 [8,16,7,7]", ConvTranspose2dConfig::new([16, 8], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(&cpu), [8, 16, 7, 7]);
    both!("convT k7 s7 [8,16,1,1]", ConvTranspose2dConfig::new([16, 16], [7, 7]).with_stride([7, 7]).init(&cpu), [8, 16, 1, 1]);
    report("gelu", v(gelu(x([8, 8, 28, 28], &cpu))), v(gelu(x([8, 8, 28, 28], &gpu))));
    report("mean over 7x7", v(x([8, 16, 7, 7], &cpu).mean_dim(3).mean_dim(2)), v(x([8, 16, 7, 7], &gpu).mean_dim(3).mean_dim(2)));
    let (ca, ga) = (cpu.clone().autodiff(), gpu.clone().autodiff());
    let bn = BatchNormConfig::new(8).init(&cpu);
    report("batchnorm (eval)", v(bn.forward(x([8, 8, 28, 28], &cpu))), v(bn.clone().to_device(&gpu).forward(x([8, 8, 28, 28], &gpu))));
    let bn_a = BatchNormConfig::new(8).init(&ca);
    report("batchnorm (train)", v(bn_a.forward(x([8, 8, 28, 28], &ca))), v(BatchNormConfig::new(8).init(&ga).forward(x([8, 8, 28, 28], &ga))));
    for (cond, name) in [(Conditioning::None, "unet D=8 none"), (Conditioning::Time, "unet D=8 time")] {
        let cfg = UNetConfig::new(8).with_conditioning(cond);
        let bytes = module_to_bytes(cfg.init(&cpu)).unwrap();
        let t = |d: &Device| Some(Tensor::<2>::full([8, 1], 0.3, d));
        for (dc, dg, mode) in [(&cpu, &gpu, "eval"), (&ca, &ga, "train")] {
            let (mc, mg) = (unet_from_bytes(&cfg, &bytes, "c", dc).unwrap(), unet_from_bytes(&cfg, &bytes, "g", dg).unwrap());
            report(&format!("{name} ({mode})"), v(mc.forward(x([8, 1, 28, 28], dc), t(dc), None)), v(mg.forward(x([8, 1, 28, 28], dg), t(dg), None)));
        }
    }
    // The training losses themselves, read before any backward pass.
    use diffusion_playground::mnist::flow::{flow_loss, FlowBatch};
    let cfg = UNetConfig::new(8).with_conditioning(Conditioning::Time);
    let bytes = module_to_bytes(cfg.init(&cpu)).unwrap();
    let labels: Vec<usize> = (0..8).collect();
    let fb = || FlowBatch::draw(&mut Rng::new(11), &labels, 1.0);
    let x1 = |d: &Device| x([8, 1, 28, 28], d).abs();
    for (dc, dg, mode) in [(&cpu, &gpu, "eval"), (&ca, &ga, "train")] {
        let (mc, mg) = (unet_from_bytes(&cfg, &bytes, "c", dc).unwrap(), unet_from_bytes(&cfg, &bytes, "g", dg).unwrap());
        let (a, b): (f32, f32) = (flow_loss(&mc, x1(dc), &fb()).into_scalar(), flow_loss(&mg, x1(dg), &fb()).into_scalar());
        println!("{:>28}: cpu {a:.6} gpu {b:.6}", format!("flow loss ({mode})"));
    }
    // Bisecting the train-mode difference: the flow step's pieces, built the same way on each device.
    let flow_step = |d: &Device| {
        let b = fb();
        let m = unet_from_bytes(&cfg, &bytes, "m", d).unwrap();
        let x0 = Tensor::<4>::from_data(TensorData::new(b.x0.clone(), [8, 1, 28, 28]), d);
        let t = Tensor::<2>::from_data(TensorData::new(b.t.clone(), [8, 1]), d);
        let t4 = t.clone().unsqueeze_dims::<4>(&[2, 3]);
        let x1v = x1(d);
        let xt = x0.clone() * (t4.clone().neg() + 1.0) + x1v.clone() * t4;
        let u = m.forward(xt.clone(), Some(t), None);
        (m, x0, x1v, xt, u)
    };
    let parts = |d: &Device| -> Vec<Vec<f32>> {
        let (m, x0, x1v, xt, u) = flow_step(d);
        let u_const = m.forward(xt.clone(), Some(Tensor::<2>::full([8, 1], 0.3, d)), None);
        let l = (u.clone() - (x1v - x0)).square();
        vec![v(xt), v(u), v(u_const), v(l)]
    };
    for (name, (a, b)) in ["xt", "u", "u with t=0.3", "squared error"].iter().zip(parts(&ca).into_iter().zip(parts(&ga))) {
        report(&format!("train: {name}"), a, b);
    }
    let variants = |d: &Device| -> Vec<f32> {
        let (_, x0, x1v, _, u) = flow_step(d);
        let e = u - (x1v - x0);
        vec![
            e.clone().square().mean().into_scalar(),
            e.clone().square().sum().into_scalar::<f32>() / 6272.0,
            e.clone().square().mean_dim(3).mean_dim(2).mean_dim(1).mean().into_scalar(),
            e.clone().square().reshape([8, 784]).mean_dim(1).mean().into_scalar(),
            (e.clone() * e.clone()).mean().into_scalar(),
        ]
    };
    println!("loss variants cpu {:?}", variants(&ca));
    println!("loss variants gpu {:?}", variants(&ga));
    println!("loss variants gpu eval {:?}", variants(&gpu));
    // Gradients: what training actually uses.
    let grad = |d: &Device| -> (f32, Vec<f32>, Vec<f32>) {
        let m = unet_from_bytes(&cfg, &bytes, "m", d).unwrap();
        let loss = flow_loss(&m, x1(d), &fb());
        let value: f32 = loss.clone().into_scalar();
        let g = loss.backward();
        let a = m.e1.conv1.conv.weight.grad(&g).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let b = m.d1.conv2.conv.weight.grad(&g).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        (value, a, b)
    };
    let (lc, ac, bc) = grad(&ca);
    let (lg, ag, bg) = grad(&ga);
    println!("flow loss read before backward: cpu {lc:.6} gpu {lg:.6}");
    report("grad e1.conv1 weight", ac, ag);
    report("grad d1.conv2 weight", bc, bg);
    // Bisect: the plain UNet forward from a leaf input, loss = mean of the output squared.
    for cond in [Conditioning::None, Conditioning::Time] {
        let cfg = UNetConfig::new(8).with_conditioning(cond);
        let bytes = module_to_bytes(cfg.init(&cpu)).unwrap();
        let g = |d: &Device| -> Vec<f32> {
            let m = unet_from_bytes(&cfg, &bytes, "m", d).unwrap();
            let loss = m.forward(x([8, 1, 28, 28], d), Some(Tensor::<2>::full([8, 1], 0.3, d)), None).square().mean();
            let g = loss.backward();
            m.e1.conv1.conv.weight.grad(&g).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
        };
        report(&format!("grad e1 {cond:?}"), g(&ca), g(&ga));
    }
}
