//! What a sampling run of either half shares: where its noise comes from, the run context
//! (noise, a step callback, how often a frame is kept) and the trajectory it returns. One
//! cancellation convention: a callback that returns false stops the run at the end of that step
//! and the run returns `Error::Interrupted`.

use burn::prelude::*;

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

/// Pre-drawn noise, used in order (tests inject the reference's noise).
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

/// Progress callback: (step index from 0, steps in this run, the state after the step). Return
/// false to stop.
pub type OnStep<'a> = Box<dyn FnMut(usize, usize, &Tensor<4>) -> bool + 'a>;

/// One run's noise, progress callback and frame rate.
pub struct RunContext<'a> {
    pub noise: &'a mut dyn NoiseSource,
    on_step: OnStep<'a>,
    /// Keep the state after every this many steps in the trajectory (0: only the start).
    pub frame_every: usize,
}

impl<'a> RunContext<'a> {
    /// A run that never stops early and keeps every 5th state (the course's figures).
    pub fn new(noise: &'a mut dyn NoiseSource) -> Self {
        RunContext { noise, on_step: Box::new(|_, _, _| true), frame_every: 5 }
    }

    /// Calls `f` after every step; it returns false to stop the run.
    pub fn on_step(self, f: impl FnMut(usize, usize, &Tensor<4>) -> bool + 'a) -> Self {
        RunContext { on_step: Box::new(f), ..self }
    }

    pub fn with_frame_every(self, frame_every: usize) -> Self {
        RunContext { frame_every, ..self }
    }

    /// Reports step `k` of `total` with its state `x`, keeping it as a frame when it is due;
    /// `Err(Interrupted)` when the callback asks to stop.
    pub fn step_done(&mut self, k: usize, total: usize, x: &Tensor<4>, frames: &mut Vec<Tensor<4>>) -> Result<()> {
        if self.frame_every > 0 && (k + 1) % self.frame_every == 0 {
            frames.push(x.clone());
        }
        if (self.on_step)(k, total, x) { Ok(()) } else { Err(Error::Interrupted) }
    }
}

/// The result of a run: the final state and the kept frames, starting with the first state.
pub struct Trajectory {
    pub image: Tensor<4>,
    pub frames: Vec<Tensor<4>>,
}
