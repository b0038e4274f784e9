//! The course's algorithms against plain-PyTorch versions of them on the tiny IF-layout model
//! (`tests/reference/deepfloyd_reference.py`, `algorithms_fixture`): the same weights, prompts
//! and injected noise, over the schedule 990, 792, ..., 0.
//!
//! Tolerance 1e-5 relative to the largest value: a random tiny model without thresholding drives
//! the images to values of several hundred, and five steps amplify the model's ~1e-6
//! differences through guidance 7 and the x0 estimate's 1/sqrt(ab_t) (about 70 at t = 990); the
//! relative differences seen are 2e-6 at most. The one-step denoise (values ~4) is compared at
//! 1e-5 absolute, the blur alone at 1e-5.

use std::collections::VecDeque;

use burn::prelude::*;
use diffusion_playground::deepfloyd::pipeline::{Blur, IfPipeline, InjectedNoise, Prompt, RunContext};
use diffusion_playground::deepfloyd::scheduler::{DdpmScheduler, X0Mode};
use diffusion_playground::deepfloyd::unet::IfUNet;
use diffusion_playground::deepfloyd::views::View;
use diffusion_playground::deepfloyd::weights::load_unet_dir;
use diffusion_playground::image_ops::gaussian_blur;
use safetensors::SafeTensors;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deepfloyd/tiny_m");

struct Fx {
    bytes: Vec<u8>,
    device: Device,
}

impl Fx {
    fn new() -> Self {
        Fx { bytes: std::fs::read(format!("{DIR}/algorithms.safetensors")).unwrap(), device: Device::flex() }
    }

    fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).is_ok()
    }

    fn get<const D: usize>(&self, name: &str) -> Tensor<D> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has no {name}"));
        let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        Tensor::from_data(TensorData::new(v, t.shape().to_vec()), &self.device)
    }

    fn noise(&self, name: &str) -> InjectedNoise {
        let mut q = VecDeque::new();
        while self.has(&format!("{name}.noise.{}", q.len())) {
            q.push_back(self.get::<4>(&format!("{name}.noise.{}", q.len())));
        }
        InjectedNoise(q)
    }

    fn prompt(&self, name: &str, guided: bool) -> Prompt {
        Prompt { cond: self.get(name), uncond: guided.then(|| self.get("null")) }
    }
}

fn setup() -> (IfUNet, DdpmScheduler, Fx) {
    let fx = Fx::new();
    let model = load_unet_dir(std::path::Path::new(&format!("{DIR}/unet")), &fx.device).unwrap();
    let mut sched = DdpmScheduler::if_stage1();
    let ts: Vec<usize> = fx.get::<1>("timesteps").into_data().try_to_vec::<f32>().unwrap().iter().map(|&t| t as usize).collect();
    sched.set_timesteps(ts).unwrap();
    (model, sched, fx)
}

fn assert_close(name: &str, got: Tensor<4>, fx: &Fx, rtol: f32) {
    let want: Tensor<4> = fx.get(&format!("{name}.out"));
    assert_eq!(got.dims(), want.dims(), "{name}");
    let scale: f32 = want.clone().abs().max().into_scalar();
    let d: f32 = (got - want).abs().max().into_scalar();
    eprintln!("{name}: max |diff| {d:e} (max |value| {scale})");
    assert!(d <= rtol * scale.max(1.0), "{name}: max |diff| {d:e} > {rtol:e} x {scale}");
}

/// The fixtures' guidance scale (the course's); unguided runs are scale 1.
const G: f32 = 7.0;

fn all_used(name: &str, n: InjectedNoise) {
    assert!(n.0.is_empty(), "{name}: {} injected noise tensors left unused (noise order differs)", n.0.len());
}

#[test]
fn sampling_with_and_without_guidance() {
    let (m, s, fx) = setup();
    for (name, guided) in [("sample", true), ("sample_unguided", false)] {
        let mut n = fx.noise(name);
        let mut steps = 0;
        let mut run = RunContext::new(&mut n).on_step(|_, total, _| {
            steps += 1;
            assert_eq!(total, 5);
            true
        });
        let tr = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None).sample(1, 16, &fx.prompt("p1", guided), if guided { G } else { 1.0 }, &mut run).unwrap();
        drop(run);
        assert_eq!(steps, 5);
        assert_eq!(tr.frames.len(), 2, "the input and step 5");
        all_used(name, n);
        assert_close(name, tr.image, &fx, 1e-5);
    }
}

#[test]
fn sdedit_and_inpainting() {
    let (m, s, fx) = setup();
    let mut n = fx.noise("sdedit");
    let tr = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None).sdedit(fx.get("image"), 2, &fx.prompt("p2", true), G, &mut RunContext::new(&mut n)).unwrap();
    all_used("sdedit", n);
    assert_close("sdedit", tr.image, &fx, 1e-5);

    let mut n = fx.noise("inpaint");
    let tr = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None).inpaint(fx.get("image"), fx.get("mask"), &fx.prompt("p1", true), G, &mut RunContext::new(&mut n)).unwrap();
    all_used("inpaint", n);
    assert_close("inpaint", tr.image, &fx, 1e-5);
}

#[test]
fn visual_anagrams() {
    let (m, s, fx) = setup();
    for (name, views) in [("anagram_flip", [View::Identity, View::Flip]), ("anagram_skew_negate", [View::Skew(1.5), View::Negate])] {
        let pairs = vec![(views[0].clone(), fx.prompt("p1", true)), (views[1].clone(), fx.prompt("p2", true))];
        let mut n = fx.noise(name);
        let tr = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None).visual_anagram(16, &pairs, G, &mut RunContext::new(&mut n)).unwrap();
        all_used(name, n);
        assert_close(name, tr.image, &fx, 1e-5);
    }
}

#[test]
fn hybrid_images_and_the_blur() {
    let (m, s, fx) = setup();
    let blurred = gaussian_blur(fx.get("blur_in"), 33, 2.0);
    let d: f32 = (blurred - fx.get::<4>("blur_out")).abs().max().into_scalar();
    assert!(d < 1e-5, "blur differs by {d}");
    let mut n = fx.noise("hybrid");
    let tr = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None).hybrid(32, &fx.prompt("p1", true), &fx.prompt("p2", true), Blur { kernel: 33, sigma: 2.0 }, G, &mut RunContext::new(&mut n)).unwrap();
    all_used("hybrid", n);
    assert_close("hybrid", tr.image, &fx, 1e-5);
    // The same factorization as anagram components: low_pass + high_pass sum to hybrid's eps.
    let mut n = fx.noise("hybrid");
    let pairs = vec![(View::LowPass(2.0), fx.prompt("p1", true)), (View::HighPass(2.0), fx.prompt("p2", true))];
    let tr = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None).visual_anagram(32, &pairs, G, &mut RunContext::new(&mut n)).unwrap();
    all_used("hybrid as components", n);
    assert_close("hybrid", tr.image, &fx, 1e-5);
}

#[test]
fn one_step_denoise() {
    let (m, s, fx) = setup();
    let out = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None).one_step_denoise(fx.get("one_step.noisy"), 500, &fx.prompt("p1", false), 1.0).unwrap();
    assert_close("one_step", out, &fx, 1e-5);
}

#[test]
fn cancelling_and_bad_arguments_are_errors() {
    let (m, s, fx) = setup();
    let pipe = IfPipeline::new(&m, &s).with_x0_mode(X0Mode::None);
    let mut n = fx.noise("sample");
    let r = pipe.sample(1, 16, &fx.prompt("p1", true), G, &mut RunContext::new(&mut n).on_step(|k, _, _| k < 1));
    assert!(matches!(r, Err(diffusion_playground::Error::Interrupted)));
    let mut n = fx.noise("inpaint");
    let bad_mask = Tensor::<4>::ones([1, 1, 8, 8], &fx.device);
    let e = pipe.inpaint(fx.get("image"), bad_mask, &fx.prompt("p1", true), G, &mut RunContext::new(&mut n)).err().unwrap();
    assert!(e.to_string().contains("mask is 8x8"), "{e}");
    let mut n = fx.noise("sdedit");
    let e = pipe.sdedit(fx.get("image"), 5, &fx.prompt("p1", true), G, &mut RunContext::new(&mut n)).err().unwrap();
    assert!(e.to_string().contains("i_start 5"), "{e}");
    let mut n = fx.noise("hybrid");
    let e = pipe.hybrid(16, &fx.prompt("p1", true), &fx.prompt("p2", true), Blur { kernel: 33, sigma: 2.0 }, G, &mut RunContext::new(&mut n)).err().unwrap();
    assert!(e.to_string().contains("kernel 33"), "{e}");
    let mut n = fx.noise("hybrid");
    let mixed = vec![(View::Flip, fx.prompt("p1", true)), (View::Grayscale, fx.prompt("p2", true))];
    let e = pipe.visual_anagram(32, &mixed, G, &mut RunContext::new(&mut n)).err().unwrap();
    assert!(e.to_string().contains("use one kind"), "{e}");
    // Guidance other than 1 needs the null prompt.
    let mut n = fx.noise("sample");
    let e = pipe.sample(1, 16, &fx.prompt("p1", false), G, &mut RunContext::new(&mut n)).err().unwrap();
    assert!(e.to_string().contains("null prompt"), "{e}");
}
