//! Part B of the course: UNets trained from scratch on MNIST with flow matching.
//!
//! - [`unet`]: the building blocks and the UNet with no, time, or time+class conditioning.
//! - [`flow`]: the flow-matching objective and the Euler / Heun samplers with guidance.
//! - [`denoise`]: the single-step and pure-noise denoiser objectives.
//! - [`classifier`]: the small CNN that judges samples; [`metrics`]: accuracy and FID.
//! - [`data`]: the IDX reader for MNIST / Fashion-MNIST.
//! - `train` (desktop only): the trainer with checkpoints and resume.

pub mod classifier;
pub mod data;
pub mod denoise;
pub mod flow;
pub mod metrics;
pub mod package;
pub mod unet;

#[cfg(not(target_arch = "wasm32"))]
pub mod train;

/// Images are 28 x 28, one channel.
pub const SIDE: usize = 28;
pub const PIXELS: usize = SIDE * SIDE;
pub const CLASSES: usize = 10;
