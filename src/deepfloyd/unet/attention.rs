//! diffusers `Attention` with `added_kv_proj_dim` and `AttnAddedKVProcessor`, as IF's
//! SimpleCrossAttn blocks use it: the pixels attend over [projected text tokens, pixels].

use burn::module::Module;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::resnet::group_norm;
use crate::deepfloyd::config::{IfConfig, CROSS_NORM_GROUPS};

#[derive(Module, Debug)]
pub struct Attention {
    /// Over the pixels (the block's channels).
    pub group_norm: GroupNorm,
    /// Over the text tokens' channels (`cross_attention_norm = "group_norm"`).
    pub norm_cross: GroupNorm,
    pub to_q: Linear,
    /// Self-attention keys/values from the pixels; absent with `only_cross_attention`.
    pub to_k: Option<Linear>,
    pub to_v: Option<Linear>,
    pub add_k_proj: Linear,
    pub add_v_proj: Linear,
    /// diffusers' `to_out = [Linear, Dropout]`: only the Linear has weights.
    pub to_out: Vec<Linear>,
    #[module(skip)]
    pub heads: usize,
}

impl Attention {
    pub fn new(cfg: &IfConfig, channels: usize, only_cross: bool, device: &Device) -> Self {
        let lin = |cin: usize| LinearConfig::new(cin, channels).init(device);
        Self {
            group_norm: group_norm(cfg.groups, channels, cfg.eps, device),
            norm_cross: group_norm(CROSS_NORM_GROUPS, cfg.cross_attention_dim, 1e-5, device),
            to_q: lin(channels),
            to_k: (!only_cross).then(|| lin(channels)),
            to_v: (!only_cross).then(|| lin(channels)),
            add_k_proj: lin(cfg.cross_attention_dim),
            add_v_proj: lin(cfg.cross_attention_dim),
            to_out: vec![lin(channels)],
            heads: channels / cfg.head_dim,
        }
    }

    /// # Shapes
    /// `x: [B, C, H, W], text: [B, L, cross_attention_dim] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, text: Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = h * w;
        let [_, l, _] = text.dims();
        let (heads, dh) = (self.heads, c / self.heads);
        let text = self.norm_cross.forward(text.swap_dims(1, 2)).swap_dims(1, 2); // [B, L, X]
        let hs = self.group_norm.forward(x.clone().reshape([b, c, n])).swap_dims(1, 2); // [B, N, C]
        let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, dh]).swap_dims(1, 2); // [B, h, len, dh]
        let q = split(self.to_q.forward(hs.clone()), n);
        let (mut k, mut v) = (self.add_k_proj.forward(text.clone()), self.add_v_proj.forward(text));
        let mut len = l;
        if let (Some(to_k), Some(to_v)) = (&self.to_k, &self.to_v) {
            k = Tensor::cat(vec![k, to_k.forward(hs.clone())], 1);
            v = Tensor::cat(vec![v, to_v.forward(hs)], 1);
            len += n;
        }
        let (k, v) = (split(k, len), split(v, len));
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (dh as f64).sqrt()); // [B, h, N, len]
        let o = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, n, c]); // [B, N, C]
        let o = self.to_out[0].forward(o).swap_dims(1, 2).reshape([b, c, h, w]);
        o + x
    }
}
