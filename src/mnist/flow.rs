//! Flow matching (docs/course.md, recipes 3-4): the training objective, the velocity with
//! classifier-free guidance, and the ODE solvers that integrate it from noise (t = 0) to data
//! (t = 1). The solvers follow diffusers' shape: `timesteps(n)` then one `step` per timestep, so
//! the page can drive them one step at a time and the CLI in a loop.

use burn::prelude::*;

use super::unet::{Conditioning, UNet};
use super::{CLASSES, PIXELS, SIDE};
use crate::rng::Rng;
use crate::sampling::{RunContext, Trajectory};
use crate::Result;

/// One-hot class rows, `None` meaning "no class" (all zeros).
///
/// # Shapes
/// output `[labels.len(), 10]`
pub fn one_hot(labels: &[Option<usize>], device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * CLASSES];
    for (i, l) in labels.iter().enumerate() {
        if let Some(c) = l {
            v[i * CLASSES + c] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), CLASSES]), device)
}

/// The batch a flow-matching step trains on, with all its randomness drawn up front so a test
/// can supply the reference's.
pub struct FlowBatch {
    /// Noise x0 ~ N(0, I), `[B, 1, 28, 28]`.
    pub x0: Vec<f32>,
    /// t ~ U[0, 1], one per image.
    pub t: Vec<f32>,
    /// Class per image, `None` where dropped for classifier-free guidance (or no class model).
    pub labels: Vec<Option<usize>>,
}

impl FlowBatch {
    /// Draws x0, t and the class dropout for `labels` (dropped with probability `p_uncond`).
    pub fn draw(rng: &mut Rng, labels: &[usize], p_uncond: f32) -> Self {
        let b = labels.len();
        let x0 = rng.normal_vec(b * PIXELS);
        let t = rng.uniform_vec(b);
        let labels = labels.iter().map(|&l| (rng.uniform() >= p_uncond as f64).then_some(l)).collect();
        Self { x0, t, labels }
    }

    /// Images `range` of the batch (for passes over part of it).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            x0: self.x0[range.start * PIXELS..range.end * PIXELS].to_vec(),
            t: self.t[range.clone()].to_vec(),
            labels: self.labels[range].to_vec(),
        }
    }
}

/// The flow-matching loss `mean ||(x1 - x0) - u(x_t, t, c)||^2` with `x_t = (1 - t) x0 + t x1`.
///
/// # Shapes
/// - `x1`: `[B, 1, 28, 28]` data; output: scalar `[1]`
pub fn flow_loss(model: &UNet, x1: Tensor<4>, batch: &FlowBatch) -> Tensor<1> {
    let device = x1.device();
    let b = x1.dims()[0];
    let x0 = Tensor::<4>::from_data(TensorData::new(batch.x0.clone(), [b, 1, SIDE, SIDE]), &device);
    let t = Tensor::<2>::from_data(TensorData::new(batch.t.clone(), [b, 1]), &device);
    let t4 = t.clone().unsqueeze_dims::<4>(&[2, 3]); // [B, 1, 1, 1]
    let xt = x0.clone() * (t4.clone().neg() + 1.0) + x1.clone() * t4;
    let c = (model.conditioning() == Conditioning::TimeClass).then(|| one_hot(&batch.labels, &device));
    let u = model.forward(xt, Some(t), c);
    (u - (x1 - x0)).square().mean()
}

/// Which ODE solver integrates the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// The course's sampler: `x += u(x, t) / T`. One model call per step.
    Euler,
    /// Heun's second-order method: an Euler predictor, then the mean of the velocities at both
    /// ends of the step; the last step is a plain Euler step, as in EDM's sampler. Two model
    /// calls per step (one for the last), error O(1/T^2) instead of O(1/T).
    ///
    /// Why the last step differs: its corrector would evaluate the velocity at t = 1, where x_t
    /// is the data itself and the model was never asked to tell noise from digit (a t ~ U[0, 1]
    /// draw almost never lands there); that velocity is unreliable, and half of it went into
    /// the final image as faint grey grain.
    Heun,
}

crate::named!(Solver { Euler => "euler", Heun => "heun" });

impl Solver {
    /// Model evaluations (each possibly doubled by guidance) for `steps` steps.
    pub fn evaluations(self, steps: usize) -> usize {
        match self {
            Solver::Euler => steps,
            Solver::Heun => (2 * steps).saturating_sub(1),
        }
    }
}

/// The velocity field at time `t` for a whole batch, class `labels[i]` for image i (ignored by
/// a time-only model), guided at `guidance` by [`crate::guidance`]'s rule (1: the conditional
/// velocity alone, one model call).
///
/// # Shapes
/// `x`: `[B, 1, 28, 28]` -> `[B, 1, 28, 28]`
pub fn velocity(model: &UNet, x: Tensor<4>, t: f32, labels: &[usize], guidance: f32) -> Tensor<4> {
    let device = x.device();
    let b = x.dims()[0];
    match model.conditioning() {
        Conditioning::None => panic!("a denoiser has no velocity field"),
        Conditioning::Time => model.forward(x, Some(Tensor::full([b, 1], t, &device)), None),
        Conditioning::TimeClass => {
            assert_eq!(labels.len(), b, "one label per image");
            let labels: Vec<Option<usize>> = labels.iter().map(|&l| Some(l)).collect();
            if !crate::guidance::needs_unconditional(guidance) {
                let c = one_hot(&labels, &device);
                return model.forward(x, Some(Tensor::full([b, 1], t, &device)), Some(c));
            }
            // Conditional and unconditional halves in one batch: one pass over the weights.
            let mut both = labels;
            both.extend(std::iter::repeat_n(None, b));
            let c = one_hot(&both, &device);
            let u = model.forward(Tensor::cat(vec![x.clone(), x], 0), Some(Tensor::full([2 * b, 1], t, &device)), Some(c));
            crate::guidance::combine(u.clone().slice([b..2 * b]), u.slice([0..b]), guidance)
        }
    }
}

/// A flow sampler: solver + number of steps, stepped diffusers-style.
#[derive(Clone, Copy, Debug)]
pub struct FlowSampler {
    pub solver: Solver,
    pub steps: usize,
}

impl FlowSampler {
    /// `steps` 0 integrates nothing (the callers refuse it before asking).
    pub fn new(solver: Solver, steps: usize) -> Self {
        Self { solver, steps }
    }

    /// The times the steps start from: `0, 1/T, ..., (T-1)/T`.
    pub fn timesteps(&self) -> Vec<f32> {
        (0..self.steps).map(|i| i as f32 / self.steps as f32).collect()
    }

    /// Advances `x` from step `i` (time i/T) to time (i+1)/T.
    pub fn step(&self, model: &UNet, x: Tensor<4>, i: usize, labels: &[usize], guidance: f32) -> Tensor<4> {
        let dt = 1.0 / self.steps as f32;
        let t = i as f32 * dt;
        let u = velocity(model, x.clone(), t, labels, guidance);
        let last = i + 1 == self.steps;
        match self.solver {
            Solver::Euler => x + u * dt,
            Solver::Heun if last => x + u * dt,
            Solver::Heun => {
                let x_pred = x.clone() + u.clone() * dt;
                let u2 = velocity(model, x_pred, t + dt, labels, guidance);
                x + (u + u2) * (dt / 2.0)
            }
        }
    }
}

/// A flow model with its sampler, diffusers-style: the classes and the guidance scale are each
/// call's, the noise, step callback and frame rate the run's ([`RunContext`]).
pub struct FlowPipeline<'m> {
    pub model: &'m UNet,
    pub sampler: FlowSampler,
}

impl<'m> FlowPipeline<'m> {
    pub fn new(model: &'m UNet, sampler: FlowSampler) -> Self {
        FlowPipeline { model, sampler }
    }

    /// One step of a run (the page drives these itself, awaiting the GPU between them).
    pub fn step(&self, x: Tensor<4>, i: usize, labels: &[usize], guidance: f32) -> Tensor<4> {
        self.sampler.step(self.model, x, i, labels, guidance)
    }

    /// Draws one image per label: noise x0 from the context, then every step to t = 1.
    pub fn sample(&self, labels: &[usize], guidance: f32, ctx: &mut RunContext) -> Result<Trajectory> {
        let mut x = ctx.noise.next([labels.len(), 1, SIDE, SIDE], &self.model.device())?;
        let mut frames = vec![x.clone()];
        for i in 0..self.sampler.steps {
            x = self.step(x, i, labels, guidance);
            ctx.step_done(i, self.sampler.steps, &x, &mut frames)?;
        }
        Ok(Trajectory { image: x, frames })
    }
}

/// Standard normal noise for `n` images, from `rng`.
///
/// # Shapes
/// output `[n, 1, 28, 28]`
pub fn noise(rng: &mut Rng, n: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(rng.normal_vec(n * PIXELS), [n, 1, SIDE, SIDE]), device)
}
