//! Diffusion playground: the course's flow-matching MNIST UNets (part B) and DeepFloyd IF stage 1
//! (part A), written once against burn and run natively (CLI, training, benchmarks) or in the
//! browser on WebGPU (docs/course.md has the models and algorithms).
//!
//! Layout: [`mnist`] holds the models and samplers of part B, [`deepfloyd`] those of part A (the
//! two never import each other); [`artifact`] what both halves' manifests share (plain file
//! names, bounded reads, size and sha256); [`image_ops`] the tensor <-> image helpers both parts
//! share; [`guidance`] the one classifier-free guidance rule; [`device`] the one place a backend is chosen; [`rng`] the seedable noise source every
//! sampler and trainer draws from, so tests can inject their own noise. [`conv`] and
//! [`activation`] are the convolution and GELU every model calls: burn's, except on the CPU
//! (Flex, f32), where this crate's faster kernels run.

pub mod activation;
pub mod artifact;
pub mod conv;
pub mod deepfloyd;
pub mod device;
pub mod error;
pub mod guidance;
pub mod image_ops;
pub mod mnist;
pub mod named;
pub mod rng;
pub mod sampling;
mod simd;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
