//! The course's UNet (docs/course.md, part B). Field names are those of the PyTorch reference in
//! `tests/reference/mnist_reference.py`, so its state dict loads with no renaming.

use burn::module::Module;
use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use crate::activation::gelu;
use crate::conv::{Conv2d, ConvTranspose2d};

use crate::mnist::CLASSES;

/// Which signals the UNet is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conditioning {
    /// Plain denoiser: `D(z)`.
    None,
    /// `u(x_t, t)`: the FC embeddings of t multiply the two decoder features.
    Time,
    /// `u(x_t, t, c)`: `fc_c(c) * h + fc_t(t)` on both decoder features.
    TimeClass,
}

/// The widest UNet the tools build (the course's are 64 and 128): beyond it the weights alone
/// run to gigabytes, which is a typo rather than a plan.
pub const MAX_HIDDEN: usize = 512;

#[derive(Config, Debug)]
pub struct UNetConfig {
    /// Hidden channels D.
    pub hidden: usize,
    #[config(default = "Conditioning::TimeClass")]
    pub conditioning: Conditioning,
    #[config(default = 1)]
    pub in_channels: usize,
}

// PyTorch BatchNorm2d defaults.
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

fn bn(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).with_epsilon(BN_EPS).with_momentum(BN_MOMENTUM).init(device)
}

/// Conv2d(k3, s1, p1) + BN + GELU; with `stride` 2 it is the course's DownConv.
#[derive(Module, Debug)]
pub struct Conv {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl Conv {
    pub fn new(cin: usize, cout: usize, stride: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([cin, cout], [3, 3])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device)
            .into();
        Self { conv, bn: bn(cout, device) }
    }

    /// # Shapes
    /// `[B, cin, H, W] -> [B, cout, H/stride, W/stride]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_cat(vec![x])
    }

    /// `forward(cat(xs, 1))`; on the CPU the concatenation is never built.
    ///
    /// # Shapes
    /// `xs`: `[B, c_i, H, W]` with `Σ c_i = cin` -> `[B, cout, H/stride, W/stride]`
    pub fn forward_cat(&self, xs: Vec<Tensor<4>>) -> Tensor<4> {
        self.conv.forward_bn_gelu(&self.bn, xs)
    }
}

/// A transposed convolution + BN + GELU: UpConv (k4, s2, p1) doubles the side, Unflatten
/// (k7, s7, p0) turns the 1x1 bottleneck back into 7x7.
#[derive(Module, Debug)]
pub struct ConvUp {
    pub conv: ConvTranspose2d,
    pub bn: BatchNorm,
}

impl ConvUp {
    pub fn new(cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize, device: &Device) -> Self {
        let conv = ConvTranspose2dConfig::new([cin, cout], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding([padding, padding])
            .init(device)
            .into();
        Self { conv, bn: bn(cout, device) }
    }

    /// # Shapes
    /// UpConv `[B, cin, H, W] -> [B, cout, 2H, 2W]`; Unflatten `[B, cin, 1, 1] -> [B, cout, 7, 7]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_cat(vec![x])
    }

    /// `forward(cat(xs, 1))`; on the CPU the concatenation is never built.
    ///
    /// # Shapes
    /// `xs`: `[B, c_i, H, W]` with `Σ c_i = cin` -> as `forward`
    pub fn forward_cat(&self, xs: Vec<Tensor<4>>) -> Tensor<4> {
        self.conv.forward_bn_gelu(&self.bn, xs)
    }
}

/// ConvBlock = Conv, Conv.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv1: Conv,
    pub conv2: Conv,
}

impl ConvBlock {
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self { conv1: Conv::new(cin, cout, 1, device), conv2: Conv::new(cout, cout, 1, device) }
    }

    /// # Shapes
    /// `[B, cin, H, W] -> [B, cout, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_cat(vec![x])
    }

    /// `forward(cat(xs, 1))`, the skip connection's concatenation fused where it can be.
    ///
    /// # Shapes
    /// `xs`: `[B, c_i, H, W]` with `Σ c_i = cin` -> `[B, cout, H, W]`
    pub fn forward_cat(&self, xs: Vec<Tensor<4>>) -> Tensor<4> {
        self.conv2.forward(self.conv1.forward_cat(xs))
    }
}

/// DownBlock = DownConv, ConvBlock.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub down: Conv,
    pub block: ConvBlock,
}

impl DownBlock {
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self { down: Conv::new(cin, cout, 2, device), block: ConvBlock::new(cout, cout, device) }
    }

    /// # Shapes
    /// `[B, cin, H, W] -> [B, cout, H/2, W/2]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.block.forward(self.down.forward(x))
    }
}

/// UpBlock = UpConv, ConvBlock.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub up: ConvUp,
    pub block: ConvBlock,
}

impl UpBlock {
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self { up: ConvUp::new(cin, cout, 4, 2, 1, device), block: ConvBlock::new(cout, cout, device) }
    }

    /// # Shapes
    /// `[B, cin, H, W] -> [B, cout, 2H, 2W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_cat(vec![x])
    }

    /// `forward(cat(xs, 1))`, the skip connection's concatenation fused where it can be.
    ///
    /// # Shapes
    /// `xs`: `[B, c_i, H, W]` with `Σ c_i = cin` -> `[B, cout, 2H, 2W]`
    pub fn forward_cat(&self, xs: Vec<Tensor<4>>) -> Tensor<4> {
        self.block.forward(self.up.forward_cat(xs))
    }
}

/// FCBlock(in, out) = Linear(in, out), GELU, Linear(out, out) (docs/course.md).
#[derive(Module, Debug)]
pub struct FCBlock {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl FCBlock {
    pub fn new(din: usize, dout: usize, device: &Device) -> Self {
        Self { fc1: LinearConfig::new(din, dout).init(device), fc2: LinearConfig::new(dout, dout).init(device) }
    }

    /// # Shapes
    /// `[B, in] -> [B, out, 1, 1]`, ready to broadcast over a feature map.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<4> {
        self.fc2.forward(gelu(self.fc1.forward(x))).unsqueeze_dims(&[2, 3])
    }
}

/// The UNet with D hidden channels. Conditioning is given by which FC blocks exist:
/// none, `fc1_t`/`fc2_t`, or those plus `fc1_c`/`fc2_c`.
#[derive(Module, Debug)]
pub struct UNet {
    pub e1: ConvBlock,
    pub e2: DownBlock,
    pub e3: DownBlock,
    pub unflatten: ConvUp,
    pub u1: UpBlock,
    pub u2: UpBlock,
    pub d1: ConvBlock,
    pub out: Conv2d,
    pub fc1_t: Option<FCBlock>,
    pub fc2_t: Option<FCBlock>,
    pub fc1_c: Option<FCBlock>,
    pub fc2_c: Option<FCBlock>,
}

impl UNetConfig {
    pub fn init(&self, device: &Device) -> UNet {
        let d = self.hidden;
        let time = self.conditioning != Conditioning::None;
        let class = self.conditioning == Conditioning::TimeClass;
        UNet {
            e1: ConvBlock::new(self.in_channels, d, device),
            e2: DownBlock::new(d, d, device),
            e3: DownBlock::new(d, 2 * d, device),
            unflatten: ConvUp::new(2 * d, 2 * d, 7, 7, 0, device),
            u1: UpBlock::new(4 * d, d, device),
            u2: UpBlock::new(2 * d, d, device),
            d1: ConvBlock::new(2 * d, d, device),
            out: Conv2dConfig::new([d, self.in_channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
                .into(),
            fc1_t: time.then(|| FCBlock::new(1, 2 * d, device)),
            fc2_t: time.then(|| FCBlock::new(1, d, device)),
            fc1_c: class.then(|| FCBlock::new(CLASSES, 2 * d, device)),
            fc2_c: class.then(|| FCBlock::new(CLASSES, d, device)),
        }
    }
}

impl UNet {
    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.out.weight.val().device()
    }

    pub fn conditioning(&self) -> Conditioning {
        match (&self.fc1_t, &self.fc1_c) {
            (None, _) => Conditioning::None,
            (Some(_), None) => Conditioning::Time,
            (Some(_), Some(_)) => Conditioning::TimeClass,
        }
    }

    /// # Shapes
    /// - `x`: `[B, 1, 28, 28]`
    /// - `t`: `[B, 1]` in [0, 1] (ignored without time conditioning)
    /// - `c`: `[B, 10]` one-hot, all zero for "no class" (ignored without class conditioning)
    /// - output: `[B, 1, 28, 28]`
    pub fn forward(&self, x: Tensor<4>, t: Option<Tensor<2>>, c: Option<Tensor<2>>) -> Tensor<4> {
        let e1 = self.e1.forward(x); // [B, D, 28, 28]
        let e2 = self.e2.forward(e1.clone()); // [B, D, 14, 14]
        let e3 = self.e3.forward(e2.clone()); // [B, 2D, 7, 7]
        // Flatten = AvgPool(7) + GELU; on a 7x7 map the pool is the spatial mean: [B, 2D, 1, 1]
        let flat = gelu(e3.clone().mean_dim(3).mean_dim(2));
        let mut u = self.unflatten.forward(flat); // [B, 2D, 7, 7]
        let mut t_emb2 = None;
        if let (Some(fc1_t), Some(fc2_t)) = (&self.fc1_t, &self.fc2_t) {
            let t = t.expect("a time-conditioned UNet needs t");
            match (&self.fc1_c, &self.fc2_c) {
                (Some(fc1_c), Some(_)) => {
                    let c = c.clone().expect("a class-conditioned UNet needs c");
                    u = fc1_c.forward(c) * u + fc1_t.forward(t.clone());
                }
                _ => u = u * fc1_t.forward(t.clone()),
            }
            t_emb2 = Some(fc2_t.forward(t)); // [B, D, 1, 1]
        }
        let mut u1 = self.u1.forward_cat(vec![e3, u]); // cat -> [B, 4D, 7, 7] -> [B, D, 14, 14]
        if let Some(t2) = t_emb2 {
            u1 = match &self.fc2_c {
                Some(fc2_c) => fc2_c.forward(c.expect("a class-conditioned UNet needs c")) * u1 + t2,
                None => u1 * t2,
            };
        }
        let u2 = self.u2.forward_cat(vec![e2, u1]); // cat -> [B, 2D, 14, 14] -> [B, D, 28, 28]
        self.out.forward(self.d1.forward_cat(vec![e1, u2])) // cat -> [B, 2D, 28, 28] -> [B, 1, 28, 28]
    }
}

/// Floating-point operations of one forward pass for one image (multiply-add = 2 FLOPs),
/// convolutions and linears only: what the benchmark divides by.
pub fn forward_flops(config: &UNetConfig) -> f64 {
    let d = config.hidden as f64;
    let cin = config.in_channels as f64;
    let conv = |ci: f64, co: f64, k: f64, side: f64| 2.0 * ci * co * k * k * side * side;
    let mut f = 0.0;
    f += conv(cin, d, 3.0, 28.0) + conv(d, d, 3.0, 28.0); // e1
    f += conv(d, d, 3.0, 14.0) + 2.0 * conv(d, d, 3.0, 14.0); // e2
    f += conv(d, 2.0 * d, 3.0, 7.0) + 2.0 * conv(2.0 * d, 2.0 * d, 3.0, 7.0); // e3
    f += 2.0 * (2.0 * d) * (2.0 * d) * 49.0; // unflatten: each input pixel hits a 7x7 patch
    // Transposed conv k4 s2: every input pixel meets 16 taps.
    f += 2.0 * 4.0 * d * d * 16.0 * 49.0 + 2.0 * conv(d, d, 3.0, 14.0); // u1
    f += 2.0 * 2.0 * d * d * 16.0 * 196.0 + 2.0 * conv(d, d, 3.0, 28.0); // u2
    f += conv(2.0 * d, d, 3.0, 28.0) + conv(d, d, 3.0, 28.0) + conv(d, cin, 3.0, 28.0); // d1 + out
    f
}
