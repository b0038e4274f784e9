//! The course's algorithms on IF stage 1 (docs/course.md, part A), one readable function each. They take
//! the model as anything that maps (x_t, t, text) to the 6-channel output, and draw every random
//! number from a [`NoiseSource`], so tests inject the reference's noise.
//!
//! Noise order (the reference script follows it): sampling from noise draws x_T first; SDEdit
//! draws the forward noise first; then every step draws its variance noise, and inpainting then
//! draws the noise that re-noises the known pixels.
//!
//! Timesteps: the course's loop, pairs (t_i, t_i+1) for i = i_start .. len-2 of the scheduler's
//! list (990, 960, ..., 0): 33 steps from pure noise, the last one 30 -> 0 with its variance.

use burn::prelude::*;

use super::scheduler::{DdpmScheduler, X0Mode};
use super::unet::IfUNet;
use super::views::View;
use crate::image_ops::gaussian_blur;
use crate::rng::Rng;
use crate::{Error, Result};

/// Where Gaussian noise comes from.
pub trait NoiseSource {
    fn next(&mut self, shape: [usize; 4], device: &Device) -> Result<Tensor<4>>;
}

/// Seeded noise from the crate's generator.
pub struct SeededNoise(pub Rng);

impl NoiseSource for SeededNoise {
    fn next(&mut self, shape: [usize; 4], device: &Device) -> Result<Tensor<4>> {
        let n = shape.iter().product();
        Ok(Tensor::from_data(TensorData::new(self.0.normal_vec(n), shape), device))
    }
}

/// Pre-drawn noise, used in order (tests).
pub struct InjectedNoise(pub std::collections::VecDeque<Tensor<4>>);

impl NoiseSource for InjectedNoise {
    fn next(&mut self, shape: [usize; 4], _: &Device) -> Result<Tensor<4>> {
        let t = self.0.pop_front().ok_or_else(|| Error::Invalid("the injected noise ran out".into()))?;
        if t.dims() != shape {
            return Err(Error::Invalid(format!("injected noise has shape {:?}, the algorithm needs {shape:?}", t.dims())));
        }
        Ok(t)
    }
}

/// Anything that predicts IF's 6-channel output.
pub trait Denoiser {
    /// # Shapes
    /// `x: [B, 3, H, W], text: [B, L, E] -> [B, 6, H, W]`
    fn predict(&self, x: Tensor<4>, t: usize, text: Tensor<3>) -> Tensor<4>;
}

impl Denoiser for IfUNet {
    fn predict(&self, x: Tensor<4>, t: usize, text: Tensor<3>) -> Tensor<4> {
        let b = x.dims()[0];
        let t = Tensor::<1>::full([b], t as f32, &x.device());
        self.forward(x, t, text)
    }
}

/// A prompt embedding, with the null prompt and scale for classifier-free guidance.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// `[1, L, E]`
    pub cond: Tensor<3>,
    /// `[1, L, E]`: the "" prompt's embedding; None means no guidance.
    pub uncond: Option<Tensor<3>>,
    pub guidance: f32,
}

impl Prompt {
    /// A prompt for guidance: `cond` and `uncond` must have the same token count and width (they
    /// run as one batch), which an embedding file mixing two encoders' outputs can break.
    pub fn new(cond: Tensor<3>, uncond: Option<Tensor<3>>, guidance: f32) -> Result<Self> {
        if let Some(u) = &uncond
            && u.dims() != cond.dims()
        {
            let ([_, lc, ec], [_, lu, eu]) = (cond.dims(), u.dims());
            return Err(Error::Invalid(format!(
                "the prompt's embedding is [{lc}, {ec}] but the null prompt's is [{lu}, {eu}]: both must come from the same text encoder with the same token count (T5-XXL: [77, 4096])"
            )));
        }
        Ok(Prompt { cond, uncond, guidance })
    }
}

/// The (guided) 6-channel output for a batch `x` under `prompt`: eps by [`crate::guidance`]'s
/// rule, v from the conditional branch. Both branches run as one batch; without a null prompt,
/// or at scale 1, the conditional branch runs alone.
///
/// # Shapes
/// `[B, 3, H, W] -> [B, 6, H, W]`
pub fn guided<M: Denoiser>(model: &M, x: Tensor<4>, t: usize, prompt: &Prompt) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let text = |e: &Tensor<3>| {
        let [_, l, d] = e.dims();
        e.clone().expand([b, l, d])
    };
    match &prompt.uncond {
        Some(u) if crate::guidance::needs_unconditional(prompt.guidance) => {
            let out = model.predict(Tensor::cat(vec![x.clone(), x], 0), t, Tensor::cat(vec![text(u), text(&prompt.cond)], 0));
            let un = out.clone().slice([0..b, 0..c, 0..h, 0..w]);
            let co = out.slice([b..2 * b]);
            let eps = crate::guidance::combine(un, co.clone().slice([0..b, 0..c, 0..h, 0..w]), prompt.guidance);
            Tensor::cat(vec![eps, co.slice([0..b, c..2 * c, 0..h, 0..w])], 1)
        }
        _ => model.predict(x, t, text(&prompt.cond)),
    }
}

/// Progress callback: (step index from 0, steps in this run, current x_t). Return false to stop:
/// the function then returns `Error::Interrupted`.
pub type OnStep<'a> = &'a mut dyn FnMut(usize, usize, &Tensor<4>) -> bool;

/// The result of a denoising loop: the final image and every 5th intermediate (the course's
/// figures), starting with the input.
pub struct Trajectory {
    pub image: Tensor<4>,
    pub frames: Vec<Tensor<4>>,
}

fn check_start(sched: &DdpmScheduler, i_start: usize) -> Result<()> {
    let n = sched.timesteps().len();
    if i_start + 1 >= n {
        return Err(Error::Invalid(format!("i_start {i_start} leaves no step: the schedule has {n} timesteps (use 0..{})", n.saturating_sub(2))));
    }
    Ok(())
}

/// The generic loop: from `x` at timesteps[i_start], each step gets the model output from
/// `output(x_t, t)` and may post-process x_t' with `after(x_t', t')`.
#[allow(clippy::too_many_arguments)]
fn denoise_loop(
    sched: &DdpmScheduler,
    mut x: Tensor<4>,
    i_start: usize,
    noise: &mut dyn NoiseSource,
    x0_mode: X0Mode,
    output: &mut dyn FnMut(Tensor<4>, usize) -> Result<Tensor<4>>,
    after: &mut dyn FnMut(Tensor<4>, usize, &mut dyn NoiseSource) -> Result<Tensor<4>>,
    on_step: OnStep,
) -> Result<Trajectory> {
    check_start(sched, i_start)?;
    let ts = sched.timesteps().to_vec();
    let total = ts.len() - 1 - i_start;
    let mut frames = vec![x.clone()];
    for (k, i) in (i_start..ts.len() - 1).enumerate() {
        let (t, t_next) = (ts[i], ts[i + 1]);
        let out = output(x.clone(), t)?;
        let z = noise.next(x.dims(), &x.device())?;
        x = sched.step(out, t, x, z, x0_mode).prev_sample;
        x = after(x, t_next, noise)?;
        if (k + 1) % 5 == 0 {
            frames.push(x.clone());
        }
        if !on_step(k, total, &x) {
            return Err(Error::Interrupted);
        }
    }
    Ok(Trajectory { image: x, frames })
}

/// Iterative (guided) denoising of `x` from timesteps[i_start].
pub fn iterative_denoise<M: Denoiser>(
    model: &M,
    sched: &DdpmScheduler,
    x: Tensor<4>,
    i_start: usize,
    prompt: &Prompt,
    noise: &mut dyn NoiseSource,
    x0_mode: X0Mode,
    on_step: OnStep,
) -> Result<Trajectory> {
    denoise_loop(sched, x, i_start, noise, x0_mode, &mut |x, t| Ok(guided(model, x, t, prompt)), &mut |x, _, _| Ok(x), on_step)
}

/// Sampling from pure noise: `batch` images of `side x side`.
#[allow(clippy::too_many_arguments)]
pub fn sample<M: Denoiser>(
    model: &M,
    sched: &DdpmScheduler,
    batch: usize,
    side: usize,
    prompt: &Prompt,
    noise: &mut dyn NoiseSource,
    x0_mode: X0Mode,
    on_step: OnStep,
) -> Result<Trajectory> {
    let x = noise.next([batch, 3, side, side], &prompt.cond.device())?;
    iterative_denoise(model, sched, x, 0, prompt, noise, x0_mode, on_step)
}

/// forward(x0, t): the image noised to timestep `t` with fresh noise.
pub fn forward_noise(sched: &DdpmScheduler, x0: Tensor<4>, t: usize, noise: &mut dyn NoiseSource) -> Result<Tensor<4>> {
    let eps = noise.next(x0.dims(), &x0.device())?;
    Ok(sched.add_noise(x0, eps, t))
}

/// One-step denoise of a noisy image at `t`: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab).
pub fn one_step_denoise<M: Denoiser>(model: &M, sched: &DdpmScheduler, x_t: Tensor<4>, t: usize, prompt: &Prompt) -> Tensor<4> {
    let out = guided(model, x_t.clone(), t, prompt);
    let [b, _, h, w] = out.dims();
    sched.predict_x0(x_t, out.slice([0..b, 0..3, 0..h, 0..w]), t)
}

/// SDEdit: noise `image` to timesteps[i_start] and denoise it back under `prompt` (the course's
/// "a high quality photo", or any prompt for text-conditioned translation).
#[allow(clippy::too_many_arguments)]
pub fn sdedit<M: Denoiser>(
    model: &M,
    sched: &DdpmScheduler,
    image: Tensor<4>,
    i_start: usize,
    prompt: &Prompt,
    noise: &mut dyn NoiseSource,
    x0_mode: X0Mode,
    on_step: OnStep,
) -> Result<Trajectory> {
    check_start(sched, i_start)?;
    let x = forward_noise(sched, image, sched.timesteps()[i_start], noise)?;
    iterative_denoise(model, sched, x, i_start, prompt, noise, x0_mode, on_step)
}

/// Inpainting (RePaint-style, as the course does it): sample from noise, and after every step
/// put back the original, noised to the new timestep, where `mask` is 0. `mask` is 1 where new
/// content goes; `[1, 1, H, W]` or `[B, 3, H, W]`.
#[allow(clippy::too_many_arguments)]
pub fn inpaint<M: Denoiser>(
    model: &M,
    sched: &DdpmScheduler,
    original: Tensor<4>,
    mask: Tensor<4>,
    prompt: &Prompt,
    noise: &mut dyn NoiseSource,
    x0_mode: X0Mode,
    on_step: OnStep,
) -> Result<Trajectory> {
    let [b, c, h, w] = original.dims();
    let [mb, mc, mh, mw] = mask.dims();
    if (mh, mw) != (h, w) || !(mb == 1 || mb == b) || !(mc == 1 || mc == c) {
        return Err(Error::Invalid(format!("the mask is {mh}x{mw} ({mb}x{mc} planes) but the image is {h}x{w}: draw the mask on the image itself")));
    }
    let mask = mask.expand([b, c, h, w]);
    let x = noise.next([b, c, h, w], &original.device())?;
    let keep = mask.clone().neg() + 1.0;
    denoise_loop(
        sched,
        x,
        0,
        noise,
        x0_mode,
        &mut |x, t| Ok(guided(model, x, t, prompt)),
        &mut |x, t_next, noise| Ok(x * mask.clone() + forward_noise(sched, original.clone(), t_next, noise)? * keep.clone()),
        on_step,
    )
}

/// Visual anagrams: every (view, prompt) pair sees the viewed image; the inverse views of the
/// guided outputs (eps and v) are averaged. Two pairs with `flip` give the course's
/// upside-down illusion.
pub fn visual_anagram<M: Denoiser>(
    model: &M,
    sched: &DdpmScheduler,
    side: usize,
    views: &[(View, Prompt)],
    noise: &mut dyn NoiseSource,
    x0_mode: X0Mode,
    on_step: OnStep,
) -> Result<Trajectory> {
    let first = views.first().ok_or_else(|| Error::Invalid("a visual anagram needs at least one (view, prompt) pair".into()))?;
    for (v, _) in views {
        v.permutation(side, side)?; // size checks before any compute
    }
    let x = noise.next([1, 3, side, side], &first.1.cond.device())?;
    let n = views.len() as f32;
    denoise_loop(
        sched,
        x,
        0,
        noise,
        x0_mode,
        &mut |x, t| {
            let mut sum: Option<Tensor<4>> = None;
            for (view, prompt) in views {
                let out = view.invert(guided(model, view.apply(x.clone())?, t, prompt), 3)?;
                sum = Some(match sum {
                    None => out,
                    Some(s) => s + out,
                });
            }
            Ok(sum.unwrap() / n)
        },
        &mut |x, _, _| Ok(x),
        on_step,
    )
}

/// Hybrid images (factorized diffusion): eps = lowpass(eps_1) + highpass(eps_2) with a
/// Gaussian of `kernel` taps and `sigma` (course: 33, 2); v is the mean of the two.
#[allow(clippy::too_many_arguments)]
pub fn hybrid<M: Denoiser>(
    model: &M,
    sched: &DdpmScheduler,
    side: usize,
    low: &Prompt,
    high: &Prompt,
    kernel: usize,
    sigma: f32,
    noise: &mut dyn NoiseSource,
    x0_mode: X0Mode,
    on_step: OnStep,
) -> Result<Trajectory> {
    if kernel % 2 == 0 || kernel / 2 >= side {
        return Err(Error::Invalid(format!("blur kernel {kernel} must be odd and its half-width below the image side {side}")));
    }
    // sigma 0 divides by zero in the kernel's weights; NaN or infinity makes every weight NaN or equal.
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::Invalid(format!("blur sigma must be a positive number, got {sigma}")));
    }
    let x = noise.next([1, 3, side, side], &low.cond.device())?;
    denoise_loop(
        sched,
        x,
        0,
        noise,
        x0_mode,
        &mut |x, t| {
            let a = guided(model, x.clone(), t, low);
            let b = guided(model, x, t, high);
            let eps = |o: &Tensor<4>| o.clone().slice([0..1, 0..3, 0..side, 0..side]);
            let var = |o: &Tensor<4>| o.clone().slice([0..1, 3..6, 0..side, 0..side]);
            let (ea, eb) = (eps(&a), eps(&b));
            let lowpass = gaussian_blur(ea, kernel, sigma);
            let highpass = eb.clone() - gaussian_blur(eb, kernel, sigma);
            Ok(Tensor::cat(vec![lowpass + highpass, (var(&a) + var(&b)) / 2.0], 1))
        },
        &mut |x, _, _| Ok(x),
        on_step,
    )
}
