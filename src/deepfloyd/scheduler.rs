//! DDPM as diffusers' `DDPMScheduler` computes it for IF stage 1: squaredcos_cap_v2 betas,
//! epsilon prediction, learned-range variance, over any descending list of timesteps.
//!
//! `step` is the course's update
//! `x_t' = sqrt(ab_t') b / (1 - ab_t) x0 + sqrt(a) (1 - ab_t') / (1 - ab_t) x_t + sigma z`
//! with `a = ab_t / ab_t'`, `b = 1 - a`, and sigma from the model's variance channels.
//! The noise `z` is always passed in, so tests and the page can inject their own.

use burn::prelude::*;

use super::config::SchedulerConfig;
use crate::{Error, Result};

/// What to do with the predicted clean image before the update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum X0Mode {
    /// The course's loop: use it as predicted.
    None,
    /// Clamp to `[-r, r]` (diffusers `clip_sample`).
    Clip(f32),
    /// Imagen's dynamic thresholding (diffusers `thresholding`): per image, s = the `ratio`
    /// quantile of |x0| clamped to `[1, max]`; x0 = clamp(x0, -s, s) / s. IF's pipeline uses
    /// ratio 0.95, max 1.5.
    DynamicThreshold { ratio: f32, max: f32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variance {
    LearnedRange,
    FixedSmall,
    FixedLarge,
}

#[derive(Clone, Debug)]
pub struct DdpmScheduler {
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
    pub variance: Variance,
    /// What the config asks for (thresholding > clip > none, as in diffusers): the default of
    /// the pipeline built on this scheduler; `step` takes the mode to apply.
    pub x0_mode: X0Mode,
    timesteps: Vec<usize>,
}

/// 990, 960, ..., 0 for `(990, 30)`: the course's strided schedule.
pub fn strided_timesteps(start: usize, stride: usize) -> Result<Vec<usize>> {
    if stride == 0 {
        return Err(Error::Invalid("the timestep stride must be at least 1".into()));
    }
    Ok(strided(start, stride))
}

/// `start, start - stride, ..., ` down to the last non-negative value; `stride` >= 1.
fn strided(start: usize, stride: usize) -> Vec<usize> {
    (0..=start / stride).map(|i| start - i * stride).collect()
}

impl DdpmScheduler {
    pub fn new(config: &SchedulerConfig) -> Self {
        let n = config.num_train_timesteps;
        // Computed in f64 like diffusers, then stored as f32 like its tensors.
        let betas: Vec<f32> = match config.beta_schedule.as_str() {
            "squaredcos_cap_v2" => {
                let ab = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n).map(|i| (1.0 - ab((i + 1) as f64 / n as f64) / ab(i as f64 / n as f64)).min(0.999) as f32).collect()
            }
            _ => {
                let (a, b) = (config.beta_start as f32, config.beta_end as f32);
                (0..n).map(|i| a + (b - a) * i as f32 / (n - 1) as f32).collect()
            }
        };
        let mut alphas_cumprod = Vec::with_capacity(n);
        // torch's CPU cumprod accumulates f32 in f64.
        let mut acc = 1f64;
        for b in &betas {
            acc *= (1.0 - b) as f64;
            alphas_cumprod.push(acc as f32);
        }
        let variance = match config.variance_type.as_str() {
            "learned_range" => Variance::LearnedRange,
            "fixed_large" => Variance::FixedLarge,
            _ => Variance::FixedSmall,
        };
        let x0_mode = if config.thresholding {
            X0Mode::DynamicThreshold { ratio: config.dynamic_thresholding_ratio as f32, max: config.sample_max_value as f32 }
        } else if config.clip_sample {
            X0Mode::Clip(config.clip_sample_range as f32)
        } else {
            X0Mode::None
        };
        let timesteps = strided(990.min(n - 1), 30);
        DdpmScheduler { betas, alphas_cumprod, variance, x0_mode, timesteps }
    }

    pub fn if_stage1() -> Self {
        Self::new(&SchedulerConfig::if_stage1())
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Any strictly descending list of timesteps below the training count.
    pub fn set_timesteps(&mut self, timesteps: Vec<usize>) -> Result<()> {
        if timesteps.is_empty() {
            return Err(Error::Invalid("the timestep list is empty".into()));
        }
        if let Some(w) = timesteps.windows(2).find(|w| w[1] >= w[0]) {
            return Err(Error::Invalid(format!("timesteps must strictly descend: {} then {}", w[0], w[1])));
        }
        if timesteps[0] >= self.num_train_timesteps() {
            return Err(Error::Invalid(format!("timestep {} is out of range 0..{}", timesteps[0], self.num_train_timesteps())));
        }
        self.timesteps = timesteps;
        Ok(())
    }

    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The timestep after `t` in the list (None after the last: its alpha-bar is 1).
    pub fn previous_timestep(&self, t: usize) -> Option<usize> {
        let i = self.timesteps.iter().position(|&s| s == t)?;
        self.timesteps.get(i + 1).copied()
    }

    pub fn alpha_bar(&self, t: usize) -> f32 {
        self.alphas_cumprod[t]
    }

    fn alpha_bar_prev(&self, t: usize) -> f32 {
        self.previous_timestep(t).map(|p| self.alphas_cumprod[p]).unwrap_or(1.0)
    }

    /// forward(x0, t) = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps.
    pub fn add_noise<const D: usize>(&self, x0: Tensor<D>, eps: Tensor<D>, t: usize) -> Tensor<D> {
        let ab = self.alpha_bar(t);
        x0 * ab.sqrt() + eps * (1.0 - ab).sqrt()
    }

    /// One-step denoise: x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t).
    pub fn predict_x0<const D: usize>(&self, x_t: Tensor<D>, eps: Tensor<D>, t: usize) -> Tensor<D> {
        let ab = self.alpha_bar(t);
        (x_t - eps * (1.0 - ab).sqrt()) / ab.sqrt()
    }

    /// log sigma^2 between `t` and the next listed timestep, from the model's v in [-1, 1]
    /// (diffusers `_get_variance` for learned_range).
    pub fn log_variance(&self, t: usize, v: Tensor<4>) -> Tensor<4> {
        let (ab, ab_prev) = (self.alpha_bar(t), self.alpha_bar_prev(t));
        let beta = 1.0 - ab / ab_prev;
        let var = ((1.0 - ab_prev) / (1.0 - ab) * beta).max(1e-20);
        match self.variance {
            Variance::LearnedRange => {
                let (min_log, max_log) = (var.ln(), beta.ln());
                let frac = (v + 1.0) / 2.0;
                frac.clone() * max_log + (frac.neg() + 1.0) * min_log
            }
            Variance::FixedSmall => v.zeros_like() + var.ln(),
            Variance::FixedLarge => v.zeros_like() + beta.ln(),
        }
    }

    /// One reverse step from `t` to the next listed timestep.
    ///
    /// # Shapes
    /// `model_output: [B, 6, H, W]` (eps, v), `sample, noise: [B, 3, H, W]` -> `[B, 3, H, W]`
    pub fn step(&self, model_output: Tensor<4>, t: usize, sample: Tensor<4>, noise: Tensor<4>, x0_mode: X0Mode) -> StepOutput {
        let x0 = process_x0(self.model_x0(&model_output, sample.clone(), t), x0_mode);
        self.step_from_x0(model_output, t, sample, x0, noise)
    }

    /// The clean image the model's eps predicts, before any [`X0Mode`].
    pub fn model_x0(&self, model_output: &Tensor<4>, sample: Tensor<4>, t: usize) -> Tensor<4> {
        let [b, c6, h, w] = model_output.dims();
        self.predict_x0(sample, model_output.clone().slice([0..b, 0..c6 / 2, 0..h, 0..w]), t)
    }

    /// [`Self::step`] with the x0 already predicted and treated (the page thresholds it after an
    /// asynchronous readback: a blocking one is not allowed on WebGPU).
    pub fn step_from_x0(&self, model_output: Tensor<4>, t: usize, sample: Tensor<4>, x0: Tensor<4>, noise: Tensor<4>) -> StepOutput {
        let [b, c6, h, w] = model_output.dims();
        let c = c6 / 2;
        let v = model_output.slice([0..b, c..c6, 0..h, 0..w]);
        let (ab, ab_prev) = (self.alpha_bar(t), self.alpha_bar_prev(t));
        let a = ab / ab_prev;
        let beta = 1.0 - a;
        let x0_coeff = ab_prev.sqrt() * beta / (1.0 - ab);
        let xt_coeff = a.sqrt() * (1.0 - ab_prev) / (1.0 - ab);
        let mut prev = x0.clone() * x0_coeff + sample * xt_coeff;
        if t > 0 {
            prev = prev + (self.log_variance(t, v) * 0.5).exp() * noise;
        }
        StepOutput { prev_sample: prev, pred_x0: x0 }
    }
}

pub struct StepOutput {
    pub prev_sample: Tensor<4>,
    pub pred_x0: Tensor<4>,
}

/// Applies an [`X0Mode`]. Dynamic thresholding reads the values back to find each image's
/// quantile (a synchronous read: desktop only; the page thresholds after its async readback).
pub fn process_x0(x0: Tensor<4>, mode: X0Mode) -> Tensor<4> {
    match mode {
        X0Mode::None => x0,
        X0Mode::Clip(r) => x0.clamp(-r, r),
        X0Mode::DynamicThreshold { ratio, max } => {
            let values: Vec<f32> = x0.to_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor");
            let s = threshold_scales(&values, x0.dims()[0], ratio, max);
            apply_threshold(x0, &s)
        }
    }
}

/// Dynamic thresholding's second half: x0 of image i clamped to `[-s_i, s_i]` and divided by s_i.
pub fn apply_threshold(x0: Tensor<4>, scales: &[f32]) -> Tensor<4> {
    let [b, c, h, w] = x0.dims();
    let s = Tensor::<1>::from_floats(scales, &x0.device()).reshape([b, 1, 1, 1]);
    let lo = s.clone().neg();
    x0.max_pair(lo.expand([b, c, h, w])).min_pair(s.clone().expand([b, c, h, w])) / s
}

/// Per image of `values` (`batch` equal chunks): the `ratio` quantile of |x| (linear
/// interpolation, as torch.quantile), clamped to `[1, max]`.
pub fn threshold_scales(values: &[f32], batch: usize, ratio: f32, max: f32) -> Vec<f32> {
    let per = values.len() / batch.max(1);
    values
        .chunks(per.max(1))
        .take(batch)
        .map(|chunk| {
            let mut a: Vec<f32> = chunk.iter().map(|v| v.abs()).collect();
            a.sort_by(|x, y| x.total_cmp(y));
            let pos = ratio as f64 * (a.len() - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
            let hi = (lo + 1).min(a.len() - 1);
            let q = a[lo] as f64 + (a[hi] as f64 - a[lo] as f64) * frac;
            (q as f32).clamp(1.0, max)
        })
        .collect()
}
