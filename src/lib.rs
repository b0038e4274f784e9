//! Diffusion playground: the course's flow-matching MNIST UNets (part B) and DeepFloyd IF stage 1
//! (part A), written once against burn and run natively (CLI, training, benchmarks) or in the
//! browser on WebGPU (docs/course.md has the models and algorithms).
//!
//! Layout: [`mnist`] holds the models and pipelines of part B, [`deepfloyd`] those of part A (the
//! two never import each other). What they share: [`artifact`] (the one manifest schema, the
//! storage [`artifact::Dtype`], safetensors, plain file names, bounded reads, size and sha256);
//! [`sampling`] (noise sources, the run context, trajectories); [`guidance`] (the one
//! classifier-free guidance rule); [`image_ops`] (tensor <-> image helpers); [`device`] (the one
//! place a backend is chosen); [`rng`] (the seedable noise source every sampler and trainer draws
//! from, so tests can inject their own noise); [`named`] (the names of fixed choices, for front
//! ends). [`conv`] and [`activation`] are the convolution modules and GELU every model calls:
//! burn's, except on the CPU (Flex, f32), where this crate's faster kernels run. The CLI lives in
//! src/bin/dp behind the `cli` feature; the page's bindings in [`web`] (wasm32 only).

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
