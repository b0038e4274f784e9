//! A small CNN that judges generated digits: its verdict gives "share recognised as the requested
//! class", and its 128-d penultimate features give FID (as Inception features do for ImageNet).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use crate::activation::gelu;

use super::unet::Conv;
use super::CLASSES;

/// Width of the feature vector FID is computed on.
pub const FEATURES: usize = 128;

/// 28x28 -> Conv(32) -> Conv(32, s2) 14x14 -> Conv(64) -> Conv(64, s2) 7x7 -> FC 128 -> FC 10.
#[derive(Module, Debug)]
pub struct Classifier {
    pub conv1: Conv,
    pub conv2: Conv,
    pub conv3: Conv,
    pub conv4: Conv,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Classifier {
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: Conv::new(1, 32, 1, device),
            conv2: Conv::new(32, 32, 2, device),
            conv3: Conv::new(32, 64, 1, device),
            conv4: Conv::new(64, 64, 2, device),
            fc1: LinearConfig::new(64 * 7 * 7, FEATURES).init(device),
            fc2: LinearConfig::new(FEATURES, CLASSES).init(device),
        }
    }

    /// Penultimate features.
    ///
    /// # Shapes
    /// `[B, 1, 28, 28]` -> `[B, 128]`
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let h = self.conv4.forward(self.conv3.forward(self.conv2.forward(self.conv1.forward(x)))); // [B, 64, 7, 7]
        gelu(self.fc1.forward(h.flatten(1, 3)))
    }

    /// Logits.
    ///
    /// # Shapes
    /// `[B, 1, 28, 28]` -> `[B, 10]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }

    /// Class probabilities and features together (one pass).
    ///
    /// # Shapes
    /// `[B, 1, 28, 28]` -> (`[B, 10]`, `[B, 128]`)
    pub fn probs_and_features(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let f = self.features(x);
        (softmax(self.fc2.forward(f.clone()), 1), f)
    }
}

/// Index and value of the largest entry of each row of a `[B, n]` row-major matrix.
pub fn argmax_rows(values: &[f32], n: usize) -> Vec<(usize, f32)> {
    values
        .chunks_exact(n)
        .map(|row| row.iter().copied().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, v)| if v > b.1 { (i, v) } else { b }))
        .collect()
}
