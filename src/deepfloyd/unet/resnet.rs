//! diffusers `ResnetBlock2D` as IF configures it: time embedding as scale and shift of the second
//! GroupNorm, optional 2x resampling inside the block (average pool down, nearest up).

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use crate::conv::Conv2d;

use super::act;
use crate::deepfloyd::config::{Act, IfConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    None,
    Down,
    Up,
}

#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    #[module(skip)]
    pub act: Act,
    #[module(skip)]
    pub skip_time_act: bool,
    #[module(skip)]
    pub output_scale: f64,
    #[module(skip)]
    pub resample: Resample,
}

pub fn conv3(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device).into()
}

pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels).with_epsilon(eps).init(device)
}

impl ResnetBlock2D {
    pub fn new(cfg: &IfConfig, cin: usize, cout: usize, output_scale: f64, resample: Resample, device: &Device) -> Self {
        Self {
            norm1: group_norm(cfg.groups, cin, cfg.eps, device),
            conv1: conv3(cin, cout, device),
            time_emb_proj: LinearConfig::new(cfg.time_embed_dim(), 2 * cout).init(device),
            norm2: group_norm(cfg.groups, cout, cfg.eps, device),
            conv2: conv3(cout, cout, device),
            conv_shortcut: (cin != cout).then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device).into()),
            act: cfg.act,
            skip_time_act: cfg.skip_time_act,
            output_scale,
            resample,
        }
    }

    fn resample(&self, x: Tensor<4>) -> Tensor<4> {
        match self.resample {
            Resample::None => x,
            Resample::Down => avg_pool2(x),
            Resample::Up => upsample_nearest2(x),
        }
    }

    /// # Shapes
    /// `x: [B, cin, H, W], temb: [B, T] -> [B, cout, H', W']` (H' = H, H/2 or 2H)
    pub fn forward(&self, x: Tensor<4>, temb: Tensor<2>) -> Tensor<4> {
        let h = act(self.act, self.norm1.forward(x.clone()));
        let (x, h) = (self.resample(x), self.resample(h));
        let h = self.conv1.forward(h);
        let temb = if self.skip_time_act { temb } else { act(self.act, temb) };
        let temb = self.time_emb_proj.forward(temb); // [B, 2 cout]
        let [b, c2] = temb.dims();
        let c = c2 / 2;
        let scale = temb.clone().slice([0..b, 0..c]).reshape([b, c, 1, 1]);
        let shift = temb.slice([0..b, c..c2]).reshape([b, c, 1, 1]);
        let h = self.norm2.forward(h) * (scale + 1.0) + shift;
        let h = self.conv2.forward(act(self.act, h));
        let x = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = x + h;
        if self.output_scale == 1.0 { out } else { out / self.output_scale }
    }
}

/// Nearest-neighbour 2x upsampling, exact (each pixel copied into a 2x2 square).
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, 2H, 2W]`
pub fn upsample_nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// 2x2 average pooling, stride 2 (diffusers `Downsample2D` without a conv). Sides must be even.
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, H/2, W/2]`
pub fn avg_pool2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2]).sum_dim(5).sum_dim(3).reshape([b, c, h / 2, w / 2]) * 0.25
}
