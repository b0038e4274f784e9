//! The course's algorithms on IF stage 1 (docs/course.md, part A) as one pipeline object, a
//! method each, in the way of diffusers' `IFPipeline`: the model (anything that maps (x_t, t,
//! text) to the 6-channel output), the scheduler and the x0 option are the pipeline's; the
//! prompts and the guidance scale are each call's; the noise, the step callback and the frame
//! rate are the run's ([`RunContext`]), so tests inject the reference's noise.
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
pub use crate::sampling::{InjectedNoise, NoiseSource, OnStep, RunContext, SeededNoise, Trajectory};
use crate::{Error, Result};

/// The timesteps of the course's forward-process demo.
pub const DEMO_TIMESTEPS: [usize; 3] = [250, 500, 750];

/// What [`IfPipeline::denoise_baselines`] makes, one image per [`DEMO_TIMESTEPS`] entry each.
pub struct Baselines {
    /// The image noised to t.
    pub noisy: Vec<Tensor<4>>,
    /// A Gaussian blur of the noisy image: the classical baseline.
    pub blurred: Vec<Tensor<4>>,
    /// One UNet step: the x0 estimate from the noisy image.
    pub one_step: Vec<Tensor<4>>,
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

/// A prompt embedding, with the null prompt's for classifier-free guidance.
#[derive(Clone, Debug)]
pub struct Prompt {
    /// `[1, L, E]`
    pub cond: Tensor<3>,
    /// `[1, L, E]`: the "" prompt's embedding; None allows only guidance 1 (no guidance).
    pub uncond: Option<Tensor<3>>,
}

impl Prompt {
    /// A prompt for guidance: `cond` and `uncond` must have the same token count and width (they
    /// run as one batch), which an embedding file mixing two encoders' outputs can break.
    pub fn new(cond: Tensor<3>, uncond: Option<Tensor<3>>) -> Result<Self> {
        if let Some(u) = &uncond
            && u.dims() != cond.dims()
        {
            let ([_, lc, ec], [_, lu, eu]) = (cond.dims(), u.dims());
            return Err(Error::Invalid(format!(
                "the prompt's embedding is [{lc}, {ec}] but the null prompt's is [{lu}, {eu}]: both must come from the same text encoder with the same token count (T5-XXL: [77, 4096])"
            )));
        }
        Ok(Prompt { cond, uncond })
    }
}

/// The 6-channel output for a batch `x` under `prompt`, guided at `scale`: eps by
/// [`crate::guidance`]'s rule, v from the conditional branch. Both branches run as one batch; at
/// scale 1 the conditional branch runs alone.
///
/// # Shapes
/// `[B, 3, H, W] -> [B, 6, H, W]`
pub fn guided<M: Denoiser>(model: &M, x: Tensor<4>, t: usize, prompt: &Prompt, scale: f32) -> Result<Tensor<4>> {
    let [b, c, h, w] = x.dims();
    let text = |e: &Tensor<3>| {
        let [_, l, d] = e.dims();
        e.clone().expand([b, l, d])
    };
    if !crate::guidance::needs_unconditional(scale) {
        return Ok(model.predict(x, t, text(&prompt.cond)));
    }
    let u = prompt.uncond.as_ref().ok_or_else(|| Error::Invalid(format!("guidance {scale} needs the null prompt's embedding (guidance 1 runs without it)")))?;
    let out = model.predict(Tensor::cat(vec![x.clone(), x], 0), t, Tensor::cat(vec![text(u), text(&prompt.cond)], 0));
    let un = out.clone().slice([0..b, 0..c, 0..h, 0..w]);
    let co = out.slice([b..2 * b]);
    let eps = crate::guidance::combine(un, co.clone().slice([0..b, 0..c, 0..h, 0..w]), scale);
    Ok(Tensor::cat(vec![eps, co.slice([0..b, c..2 * c, 0..h, 0..w])], 1))
}

/// The Gaussian split of hybrid images: `kernel` taps (odd), standard deviation `sigma`.
#[derive(Clone, Copy, Debug)]
pub struct Blur {
    pub kernel: usize,
    pub sigma: f32,
}

/// IF stage 1 with its scheduler: one method per algorithm of the course.
pub struct IfPipeline<'m, M: Denoiser> {
    pub model: &'m M,
    pub scheduler: &'m DdpmScheduler,
    /// What happens to each step's predicted clean image.
    pub x0_mode: X0Mode,
}

impl<'m, M: Denoiser> IfPipeline<'m, M> {
    /// The pipeline with the scheduler config's x0 treatment (IF's: dynamic thresholding).
    pub fn new(model: &'m M, scheduler: &'m DdpmScheduler) -> Self {
        IfPipeline { model, scheduler, x0_mode: scheduler.x0_mode }
    }

    /// Another x0 treatment (the course: none).
    pub fn with_x0_mode(self, x0_mode: X0Mode) -> Self {
        IfPipeline { x0_mode, ..self }
    }

    fn check_start(&self, i_start: usize) -> Result<()> {
        let n = self.scheduler.timesteps().len();
        if i_start + 1 >= n {
            return Err(Error::Invalid(format!("i_start {i_start} leaves no step: the schedule has {n} timesteps (use 0..{})", n.saturating_sub(2))));
        }
        Ok(())
    }

    /// Checks `task` and draws its starting state: `(x, i_start)`, x at timesteps[i_start].
    /// Every size and setting is checked here, before any model call.
    pub fn start(&self, task: &Task, noise: &mut dyn NoiseSource) -> Result<(Tensor<4>, usize)> {
        match task {
            Task::Sample { batch, side, prompt } => Ok((noise.next([*batch, 3, *side, *side], &prompt.cond.device())?, 0)),
            Task::Iterative { x, i_start, .. } => {
                self.check_start(*i_start)?;
                Ok((x.clone(), *i_start))
            }
            Task::Sdedit { image, i_start, .. } => {
                self.check_start(*i_start)?;
                Ok((self.forward_noise(image.clone(), self.scheduler.timesteps()[*i_start], noise)?, *i_start))
            }
            Task::Inpaint { original, mask, .. } => {
                let [b, c, h, w] = original.dims();
                let [mb, mc, mh, mw] = mask.dims();
                if (mh, mw) != (h, w) || !(mb == 1 || mb == b) || !(mc == 1 || mc == c) {
                    return Err(Error::Invalid(format!("the mask is {mh}x{mw} ({mb}x{mc} planes) but the image is {h}x{w}: draw the mask on the image itself")));
                }
                Ok((noise.next([b, c, h, w], &original.device())?, 0))
            }
            Task::Anagram { side, views } => {
                let first = views.first().ok_or_else(|| Error::Invalid("a visual anagram needs at least one (view, prompt) pair".into()))?;
                for (v, _) in views.iter() {
                    v.permutation(*side, *side)?; // size checks before any compute
                }
                let components = views.iter().filter(|(v, _)| v.is_component()).count();
                if components != 0 && components != views.len() {
                    return Err(Error::Invalid("the views mix rearrangements (flip, rotate, ...) with factorization components (low_pass, grayscale, ...): use one kind".into()));
                }
                Ok((noise.next([1, 3, *side, *side], &first.1.cond.device())?, 0))
            }
            Task::Hybrid { side, low, blur: Blur { kernel, sigma }, .. } => {
                if kernel % 2 == 0 || kernel / 2 >= *side {
                    return Err(Error::Invalid(format!("blur kernel {kernel} must be odd and its half-width below the image side {side}")));
                }
                // sigma 0 divides by zero in the kernel's weights; NaN or infinity makes every weight NaN or equal.
                if !(sigma.is_finite() && *sigma > 0.0) {
                    return Err(Error::Invalid(format!("blur sigma must be a positive number, got {sigma}")));
                }
                Ok((noise.next([1, 3, *side, *side], &low.cond.device())?, 0))
            }
        }
    }

    /// The 6-channel output the update uses for `x` at `t`: the guided output, or the views'
    /// and frequency bands' combination.
    pub fn output(&self, task: &Task, x: Tensor<4>, t: usize, guidance: f32) -> Result<Tensor<4>> {
        let model = self.model;
        match task {
            Task::Sample { prompt, .. } | Task::Iterative { prompt, .. } | Task::Sdedit { prompt, .. } | Task::Inpaint { prompt, .. } => guided(model, x, t, prompt, guidance),
            Task::Anagram { views, .. } => {
                // Rearrangements average their estimates; a factorization's components sum theirs
                // (the variance estimates are averaged either way).
                let sum_eps = views.iter().all(|(v, _)| v.is_component());
                let mut sum: Option<Tensor<4>> = None;
                for (view, prompt) in views.iter() {
                    let out = view.invert(guided(model, view.apply(x.clone())?, t, prompt, guidance)?, 3)?;
                    sum = Some(match sum {
                        None => out,
                        Some(s) => s + out,
                    });
                }
                let sum = sum.ok_or_else(|| Error::Invalid("a visual anagram needs at least one (view, prompt) pair".into()))?;
                let n = views.len() as f32;
                if !sum_eps {
                    return Ok(sum / n);
                }
                let [b, c, h, w] = sum.dims();
                Ok(Tensor::cat(vec![sum.clone().slice([0..b, 0..3, 0..h, 0..w]), sum.slice([0..b, 3..c, 0..h, 0..w]) / n], 1))
            }
            Task::Hybrid { side, low, high, blur: Blur { kernel, sigma } } => {
                let side = *side;
                let a = guided(model, x.clone(), t, low, guidance)?;
                let b = guided(model, x, t, high, guidance)?;
                let eps = |o: &Tensor<4>| o.clone().slice([0..1, 0..3, 0..side, 0..side]);
                let var = |o: &Tensor<4>| o.clone().slice([0..1, 3..6, 0..side, 0..side]);
                let (ea, eb) = (eps(&a), eps(&b));
                let lowpass = gaussian_blur(ea, *kernel, *sigma);
                let highpass = eb.clone() - gaussian_blur(eb, *kernel, *sigma);
                Ok(Tensor::cat(vec![lowpass + highpass, (var(&a) + var(&b)) / 2.0], 1))
            }
        }
    }

    /// What follows the update to `t_next`: inpainting puts back the original, noised to
    /// `t_next`, where the mask is 0; the other tasks keep x.
    pub fn after_step(&self, task: &Task, x: Tensor<4>, t_next: usize, noise: &mut dyn NoiseSource) -> Result<Tensor<4>> {
        match task {
            Task::Inpaint { original, mask, .. } => {
                let mask = mask.clone().expand(original.dims());
                let keep = mask.clone().neg() + 1.0;
                Ok(x * mask + self.forward_noise(original.clone(), t_next, noise)? * keep)
            }
            _ => Ok(x),
        }
    }

    /// Runs `task` to the end: per step the output, the scheduler's update with its variance
    /// noise, then [`Self::after_step`]. The page runs the same three calls with its GPU awaited
    /// between them.
    pub fn run(&self, task: &Task, guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        let (mut x, i_start) = self.start(task, &mut *ctx.noise)?;
        let ts = self.scheduler.timesteps().to_vec();
        let total = ts.len() - 1 - i_start;
        let mut frames = vec![x.clone()];
        for (k, i) in (i_start..ts.len() - 1).enumerate() {
            let (t, t_next) = (ts[i], ts[i + 1]);
            let out = self.output(task, x.clone(), t, guidance)?;
            let z = ctx.noise.next(x.dims(), &x.device())?;
            x = self.scheduler.step(out, t, x, z, self.x0_mode).prev_sample;
            x = self.after_step(task, x, t_next, &mut *ctx.noise)?;
            ctx.step_done(k, total, &x, &mut frames)?;
        }
        Ok(Trajectory { image: x, frames })
    }

    /// Iterative (guided) denoising of `x` from timesteps[i_start].
    pub fn iterative_denoise(&self, x: Tensor<4>, i_start: usize, prompt: &Prompt, guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        self.run(&Task::Iterative { x, i_start, prompt }, guidance, ctx)
    }

    /// Sampling from pure noise: `batch` images of `side x side`.
    pub fn sample(&self, batch: usize, side: usize, prompt: &Prompt, guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        self.run(&Task::Sample { batch, side, prompt }, guidance, ctx)
    }

    /// forward(x0, t): the image noised to timestep `t` with fresh noise.
    pub fn forward_noise(&self, x0: Tensor<4>, t: usize, noise: &mut dyn NoiseSource) -> Result<Tensor<4>> {
        let eps = noise.next(x0.dims(), &x0.device())?;
        Ok(self.scheduler.add_noise(x0, eps, t))
    }

    /// The course's forward-process demo: `image` noised to each of [`DEMO_TIMESTEPS`] (the
    /// k-th from noise stream `[1, k]`), and the two one-shot denoisers it compares, a Gaussian
    /// blur (5 taps, sigma 2) and one UNet step. Unguided, as the course's demos are: `prompt`
    /// needs no null embedding.
    pub fn denoise_baselines(&self, image: Tensor<4>, prompt: &Prompt, seed: u64) -> Result<Baselines> {
        let mut b = Baselines { noisy: Vec::new(), blurred: Vec::new(), one_step: Vec::new() };
        for (k, t) in DEMO_TIMESTEPS.into_iter().enumerate() {
            let x = self.forward_noise(image.clone(), t, &mut SeededNoise(Rng::derive(seed, &[1, k as u64])))?;
            b.blurred.push(gaussian_blur(x.clone(), 5, 2.0));
            b.one_step.push(self.one_step_denoise(x.clone(), t, prompt, 1.0)?);
            b.noisy.push(x);
        }
        Ok(b)
    }

    /// The iterative-denoising demo's start: `image` noised to timesteps[i_start] from the run's
    /// own noise stream, which the run ([`Task::Iterative`] from the returned image) goes on
    /// drawing from.
    pub fn iterative_start(&self, image: Tensor<4>, i_start: usize, prompt: &Prompt, seed: u64) -> Result<(Tensor<4>, SeededNoise)> {
        let ts = self.scheduler.timesteps();
        let t0 = *ts.get(i_start).ok_or_else(|| Error::Invalid(format!("i_start {i_start} is beyond the {} timesteps", ts.len())))?;
        let mut noise = Task::Iterative { x: image.clone(), i_start, prompt }.noise(seed, 0);
        let x = self.forward_noise(image, t0, &mut noise)?;
        Ok((x, noise))
    }

    /// One-step denoise of a noisy image at `t`: x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab).
    pub fn one_step_denoise(&self, x_t: Tensor<4>, t: usize, prompt: &Prompt, guidance: f32) -> Result<Tensor<4>> {
        let out = guided(self.model, x_t.clone(), t, prompt, guidance)?;
        let [b, _, h, w] = out.dims();
        Ok(self.scheduler.predict_x0(x_t, out.slice([0..b, 0..3, 0..h, 0..w]), t))
    }

    /// SDEdit: noise `image` to timesteps[i_start] and denoise it back under `prompt` (the
    /// course's "a high quality photo", or any prompt for text-conditioned translation).
    pub fn sdedit(&self, image: Tensor<4>, i_start: usize, prompt: &Prompt, guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        self.run(&Task::Sdedit { image, i_start, prompt }, guidance, ctx)
    }

    /// Inpainting (RePaint-style, as the course does it): sample from noise, and after every
    /// step put back the original, noised to the new timestep, where `mask` is 0. `mask` is 1
    /// where new content goes; `[1, 1, H, W]` or `[B, 3, H, W]`.
    pub fn inpaint(&self, original: Tensor<4>, mask: Tensor<4>, prompt: &Prompt, guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        self.run(&Task::Inpaint { original, mask, prompt }, guidance, ctx)
    }

    /// Visual anagrams: every (view, prompt) pair sees the viewed image; the inverse views of
    /// the guided outputs (eps and v) are averaged. Two pairs with `flip` give the course's
    /// upside-down illusion. With factorization components (`View::is_component`) every prompt
    /// sees the image and the components' eps are summed (factorized diffusion: `low_pass` +
    /// `high_pass` is `hybrid`).
    pub fn visual_anagram(&self, side: usize, views: &[(View, Prompt)], guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        self.run(&Task::Anagram { side, views }, guidance, ctx)
    }

    /// Hybrid images (factorized diffusion): eps = lowpass(eps_1) + highpass(eps_2) with the
    /// Gaussian `blur` (course: 33 taps, sigma 2); v is the mean of the two.
    pub fn hybrid(&self, side: usize, low: &Prompt, high: &Prompt, blur: Blur, guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        self.run(&Task::Hybrid { side, low, high, blur }, guidance, ctx)
    }
}

/// One run of the course's algorithms, as [`IfPipeline::run`] and the page's stepping loop take
/// it. Prompts are borrowed: a run never changes them.
pub enum Task<'a> {
    /// `batch` images of `side x side` from pure noise.
    Sample { batch: usize, side: usize, prompt: &'a Prompt },
    /// Denoising a given x from timesteps[i_start].
    Iterative { x: Tensor<4>, i_start: usize, prompt: &'a Prompt },
    /// SDEdit: `image` noised to timesteps[i_start], then denoised.
    Sdedit { image: Tensor<4>, i_start: usize, prompt: &'a Prompt },
    /// Inpainting: `mask` 1 where new content goes.
    Inpaint { original: Tensor<4>, mask: Tensor<4>, prompt: &'a Prompt },
    /// Visual anagrams over (view, prompt) pairs.
    Anagram { side: usize, views: &'a [(View, Prompt)] },
    /// Hybrid images: low frequencies of `low`, high of `high`.
    Hybrid { side: usize, low: &'a Prompt, high: &'a Prompt, blur: Blur },
}

impl Task<'_> {
    /// The seeded noise of this run: `dp if` and the page both take it from here, so the same
    /// seed gives the same image in both. `k` numbers the runs of one SDEdit series (its i_starts
    /// in order); the other kinds ignore it.
    pub fn noise(&self, seed: u64, k: usize) -> SeededNoise {
        let stream = match self {
            Task::Iterative { .. } => 2,
            Task::Sample { .. } => 3,
            Task::Sdedit { .. } => return SeededNoise(Rng::derive(seed, &[4, k as u64])),
            Task::Inpaint { .. } => 5,
            Task::Anagram { .. } => 6,
            Task::Hybrid { .. } => 7,
        };
        SeededNoise(Rng::derive(seed, &[stream]))
    }
}
