//! The single-step denoiser objectives (docs/course.md, recipes 1 and 2): `||D(x + sigma eps) - x||^2`,
//! and the same with the input replaced by pure noise `z = eps`.

use burn::prelude::*;

use super::unet::UNet;
use super::{PIXELS, SIDE};
use crate::rng::Rng;

/// `z = x + sigma * eps`.
///
/// # Shapes
/// `x`, `eps`: `[B, 1, 28, 28]`
pub fn add_noise(x: Tensor<4>, eps: Tensor<4>, sigma: f32) -> Tensor<4> {
    x + eps * sigma
}

/// Draws eps for a batch of `b` images.
pub fn draw_eps(rng: &mut Rng, b: usize) -> Vec<f32> {
    rng.normal_vec(b * PIXELS)
}

/// Denoising loss. With `pure_noise` the input is `eps` itself and the best possible output is
/// the training-set mean image (MSE regresses to the mean).
///
/// # Shapes
/// `x`: `[B, 1, 28, 28]`; output scalar `[1]`
pub fn denoise_loss(model: &UNet, x: Tensor<4>, eps: Vec<f32>, sigma: f32, pure_noise: bool) -> Tensor<1> {
    let b = x.dims()[0];
    let eps = Tensor::<4>::from_data(TensorData::new(eps, [b, 1, SIDE, SIDE]), &x.device());
    let z = if pure_noise { eps } else { add_noise(x.clone(), eps, sigma) };
    (model.forward(z, None, None) - x).square().mean()
}
