//! Time and text embeddings of IF stage 1 (diffusers `Timesteps`, `TimestepEmbedding`,
//! `TextTimeEmbedding` with `AttentionPooling`).

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::DType;

use super::act;
use crate::deepfloyd::config::Act;

/// Sinusoidal timestep features (diffusers `get_timestep_embedding`, max period 10000).
///
/// # Shapes
/// `t: [B] -> [B, dim]`
pub fn timestep_features(t: Tensor<1>, dim: usize, flip_sin_to_cos: bool, shift: f64) -> Tensor<2> {
    // Always in f32, cast to the model's type at the end, as diffusers does: in f16, t * freq
    // for t near 1000 would keep only ~0.5 of absolute precision inside sin/cos.
    let dtype = t.dtype();
    let t = t.cast(DType::F32);
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32).collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), (&device, DType::F32)).reshape([1, half]);
    let [b] = t.dims();
    let args = t.reshape([b, 1]) * freqs;
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos { Tensor::cat(vec![cos, sin], 1) } else { Tensor::cat(vec![sin, cos], 1) };
    let emb = if dim % 2 == 1 { Tensor::cat(vec![emb, Tensor::zeros([b, 1], (&device, DType::F32))], 1) } else { emb };
    emb.cast(dtype)
}

/// `TimestepEmbedding`: linear_1, activation, linear_2.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
    #[module(skip)]
    pub act: Act,
}

impl TimestepEmbedding {
    pub fn new(cin: usize, dim: usize, act: Act, device: &Device) -> Self {
        Self { linear_1: LinearConfig::new(cin, dim).init(device), linear_2: LinearConfig::new(dim, dim).init(device), act }
    }

    /// # Shapes
    /// `[B, cin] -> [B, dim]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(act(self.act, self.linear_1.forward(x)))
    }
}

/// IF's attention pooling of the text tokens into one vector: a query made from the token mean
/// (plus a learned position) attends over [that query, tokens], `heads` heads.
#[derive(Module, Debug)]
pub struct AttentionPooling {
    pub positional_embedding: Param<Tensor<2>>,
    pub k_proj: Linear,
    pub q_proj: Linear,
    pub v_proj: Linear,
    #[module(skip)]
    pub heads: usize,
}

impl AttentionPooling {
    pub fn new(heads: usize, dim: usize, device: &Device) -> Self {
        let lin = || LinearConfig::new(dim, dim).init(device);
        Self {
            positional_embedding: Param::from_tensor(Tensor::random([1, dim], burn::tensor::Distribution::Normal(0.0, 1.0 / (dim as f64).sqrt()), device)),
            k_proj: lin(),
            q_proj: lin(),
            v_proj: lin(),
            heads,
        }
    }

    /// # Shapes
    /// `[B, L, E] -> [B, E]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, l, e] = x.dims();
        let (h, dh) = (self.heads, e / self.heads);
        let class_token = x.clone().mean_dim(1) + self.positional_embedding.val().reshape([1, 1, e]); // [B, 1, E]
        let x = Tensor::cat(vec![class_token.clone(), x], 1); // [B, L+1, E]
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, n, h, dh]).swap_dims(1, 2); // [B, h, n, dh]
        // Both sides scaled by dh^-1/4, as IF does (steadier in f16 than scaling afterwards).
        let scale = 1.0 / (dh as f64).sqrt().sqrt();
        let q = heads(self.q_proj.forward(class_token), 1) * scale;
        let k = heads(self.k_proj.forward(x.clone()), l + 1) * scale;
        let v = heads(self.v_proj.forward(x), l + 1);
        let w = softmax(q.matmul(k.swap_dims(2, 3)), 3); // [B, h, 1, L+1]
        w.matmul(v).reshape([b, e]) // heads-major, like the reference's reshape
    }
}

/// `TextTimeEmbedding`: LayerNorm, attention pooling, projection to the time-embedding width,
/// LayerNorm. Added to the time embedding.
#[derive(Module, Debug)]
pub struct TextTimeEmbedding {
    pub norm1: LayerNorm,
    pub pool: AttentionPooling,
    pub proj: Linear,
    pub norm2: LayerNorm,
}

impl TextTimeEmbedding {
    pub fn new(encoder_dim: usize, time_dim: usize, heads: usize, device: &Device) -> Self {
        Self {
            norm1: LayerNormConfig::new(encoder_dim).init(device),
            pool: AttentionPooling::new(heads, encoder_dim, device),
            proj: LinearConfig::new(encoder_dim, time_dim).init(device),
            norm2: LayerNormConfig::new(time_dim).init(device),
        }
    }

    /// # Shapes
    /// `[B, L, E] -> [B, time_dim]`
    pub fn forward(&self, text: Tensor<3>) -> Tensor<2> {
        self.norm2.forward(self.proj.forward(self.pool.forward(self.norm1.forward(text))))
    }
}
