//! DeepFloyd IF stage 1 (docs/course.md, part A): the UNet read from the user's diffusers folder, the DDPM
//! scheduler with learned-range variance, and the course's sampling algorithms.
//!
//! Nothing here touches the file system except the desktop-only loaders in [`weights`]; the page
//! passes bytes.

pub mod config;
pub mod convert;
pub mod embeddings;
pub mod package;
pub mod pipeline;
pub mod scheduler;
pub mod unet;
pub mod views;
pub mod weights;
