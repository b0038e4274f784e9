//! 2-D convolutions: this crate's [`Conv2d`] and [`ConvTranspose2d`] modules, which hold exactly
//! burn's fields (so the same state-dict names and records) and whose `forward` is burn's, except
//! on the Flex (CPU) backend with f32 tensors, groups 1 and dilation 1, where this folder's kernels
//! run. Model code calls `.forward()` as on any burn module; this is the one seam.
//!
//! Why: burn 0.22's Flex computes a convolution's weight gradient as another convolution with
//! batch and channels swapped (a gemm whose n is the kernel's 9 taps) and its input gradient
//! through the transposed-convolution kernel, well below the speed of well-shaped gemms. Here each
//! image is a few gemms on the raw buffers ([`gemm`]: shifted windows for stride 1, im2col
//! otherwise), 3x3 stride-1 convolutions run on Winograd's F(2x2, 3x3) ([`winograd`]), transposed
//! convolutions as one stride-1 convolution per output phase ([`transposed`]), in and out of
//! autodiff ([`autodiff`], desktop only; the browser's CPU fallback runs the inference kernels on
//! one thread with gemm's simd128 kernels). burn's `backend_extension` would be the other seam; it
//! needs burn's `extension` feature and a backend trait per op, for kernels that only ever run on
//! one backend. Set `DP_BURN_CONV=1` to force burn's path everywhere (A/B benchmarks);
//! docs/benchmarks.md has the measurements.
//!
//! For inference two fused layers sit on the same kernels: [`Conv2d::forward_bn_gelu`] and
//! [`ConvTranspose2d::forward_bn_gelu`] take their input as parts to concatenate (the UNet's skip
//! connections) and apply BatchNorm with running statistics and GELU as the output is written, so
//! the concatenation is never built and the output is passed over once instead of six times.
//! Under autodiff and on other backends they are exactly `gelu(bn.forward(conv(cat(xs))))`.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;

use crate::activation::gelu;

#[cfg(not(target_arch = "wasm32"))]
mod autodiff;
mod buffers;
mod epilogue;
mod flex;
mod geometry;
mod gemm;
mod matmul;
mod parallel;
mod scratch;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
mod transposed;
mod winograd;

/// burn's `Conv2d`, field for field, with the fast CPU path in `forward`. Built from burn's
/// `Conv2dConfig`: `Conv2dConfig::new(..).init(device).into()`.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[cout, cin / groups, kh, kw]`.
    pub weight: Param<Tensor<4>>,
    /// `[cout]`.
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: [usize; 2],
    pub kernel_size: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    #[module(skip)]
    pub padding: PaddingConfig2d,
}

impl From<burn::nn::conv::Conv2d> for Conv2d {
    fn from(c: burn::nn::conv::Conv2d) -> Self {
        Conv2d { weight: c.weight, bias: c.bias, stride: c.stride, kernel_size: c.kernel_size, dilation: c.dilation, groups: c.groups, padding: c.padding }
    }
}

impl Conv2d {
    /// # Shapes
    /// `[B, cin, H, W] -> [B, cout, H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match flex::try_conv2d(self, x) {
            Ok(y) => y,
            Err(x) => self.burn_forward(x),
        }
    }

    /// burn's `Conv2d::forward` on the same parameters (shared, not copied).
    fn burn_forward(&self, x: Tensor<4>) -> Tensor<4> {
        let Conv2d { weight, bias, stride, kernel_size, dilation, groups, padding } = self.clone();
        burn::nn::conv::Conv2d { weight, bias, stride, kernel_size, dilation, groups, padding }.forward(x)
    }

    /// `gelu(bn.forward(self.forward(cat(xs, 1))))`, the MNIST UNet's Conv layer on its inputs
    /// concatenated along channels.
    ///
    /// # Shapes
    /// `xs`: `[B, c_i, H, W]` each, `Σ c_i = cin` -> `[B, cout, H', W']`.
    pub fn forward_bn_gelu(&self, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Tensor<4> {
        match flex::try_conv2d_bn_gelu(self, bn, xs) {
            Ok(y) => y,
            Err(xs) => gelu(bn.forward(self.forward(cat(xs)))),
        }
    }
}

/// burn's `ConvTranspose2d`, field for field, with the fast CPU path in `forward_bn_gelu`. Built
/// from burn's `ConvTranspose2dConfig`: `ConvTranspose2dConfig::new(..).init(device).into()`.
#[derive(Module, Debug)]
pub struct ConvTranspose2d {
    /// `[cin, cout / groups, kh, kw]`.
    pub weight: Param<Tensor<4>>,
    /// `[cout]`.
    pub bias: Option<Param<Tensor<1>>>,
    pub stride: [usize; 2],
    pub kernel_size: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub padding: [usize; 2],
    pub padding_out: [usize; 2],
    pub channels: [usize; 2],
}

impl From<burn::nn::conv::ConvTranspose2d> for ConvTranspose2d {
    fn from(c: burn::nn::conv::ConvTranspose2d) -> Self {
        let burn::nn::conv::ConvTranspose2d { weight, bias, stride, kernel_size, dilation, groups, padding, padding_out, channels } = c;
        ConvTranspose2d { weight, bias, stride, kernel_size, dilation, groups, padding, padding_out, channels }
    }
}

impl ConvTranspose2d {
    /// burn's transposed convolution (the fast path only exists fused, in `forward_bn_gelu`).
    ///
    /// # Shapes
    /// `[B, cin, H, W] -> [B, cout, H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvTransposeOptions::new(self.stride, self.padding, self.padding_out, self.dilation, self.groups);
        conv_transpose2d(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()), options)
    }

    /// `gelu(bn.forward(self.forward(cat(xs, 1))))`: in inference on Flex, when the kernel is a
    /// multiple of the stride with at most 4 output phases (the UNet's UpConv, k4 s2 p1), one
    /// stride-1 convolution per phase on gemms with the fused concatenation and epilogue;
    /// otherwise burn's transposed convolution, then BatchNorm and GELU in one pass.
    ///
    /// # Shapes
    /// `xs`: `[B, c_i, H, W]` each, `Σ c_i = cin` -> `[B, cout, H', W']`.
    pub fn forward_bn_gelu(&self, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Tensor<4> {
        let xs = match flex::try_conv_transpose2d_bn_gelu(self, bn, xs) {
            Ok(y) => return y,
            Err(xs) => xs,
        };
        match flex::try_batch_norm_gelu(bn, self.forward(cat(xs))) {
            Ok(y) => y,
            Err(y) => gelu(bn.forward(y)),
        }
    }
}

fn cat(mut xs: Vec<Tensor<4>>) -> Tensor<4> {
    if xs.len() == 1 { xs.pop().expect("one tensor") } else { Tensor::cat(xs, 1) }
}
