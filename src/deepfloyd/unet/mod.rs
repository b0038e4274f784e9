//! The IF stage-1 UNet: diffusers `UNet2DConditionModel` restricted to the blocks IF uses.
//! Field names are the diffusers state-dict keys, so `diffusion_pytorch_model.safetensors` loads
//! with burn-store's PyTorch adapter and no renaming.

mod attention;
mod embeddings;
mod resnet;

use burn::module::Module;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use crate::activation::gelu;
use crate::conv::Conv2d;

pub use attention::Attention;
pub use embeddings::{timestep_features, AttentionPooling, TextTimeEmbedding, TimestepEmbedding};
pub use resnet::{avg_pool2, upsample_nearest2, Resample, ResnetBlock2D};

use crate::deepfloyd::config::{Act, BlockKind, IfConfig};
use crate::{Error, Result};
use resnet::{conv3, group_norm};

pub(crate) fn act<const D: usize>(a: Act, x: Tensor<D>) -> Tensor<D> {
    match a {
        Act::Gelu => gelu(x),
        Act::Silu => silu(x),
    }
}

/// `ResnetDownsampleBlock2D` (no attentions) or `SimpleCrossAttnDownBlock2D`.
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
    pub downsamplers: Vec<ResnetBlock2D>,
}

impl DownBlock {
    /// # Shapes
    /// `x: [B, Cin, H, W] -> ([B, C, H', W'], skips: layers (+1) x [B, C, ., .])`
    pub fn forward(&self, mut x: Tensor<4>, temb: &Tensor<2>, text: &Tensor<3>) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, temb.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, text.clone());
            }
            skips.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x, temb.clone());
            skips.push(x.clone());
        }
        (x, skips)
    }
}

/// `UNetMidBlock2DSimpleCrossAttn`: resnet, (attention, resnet) once.
#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
}

impl MidBlock {
    /// # Shapes
    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, text: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, temb.clone());
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, text.clone()), temb.clone());
        }
        x
    }
}

/// `ResnetUpsampleBlock2D` (no attentions) or `SimpleCrossAttnUpBlock2D`.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
    pub upsamplers: Vec<ResnetBlock2D>,
}

impl UpBlock {
    /// Consumes `resnets.len()` skips from the end of `skips`.
    ///
    /// # Shapes
    /// `x: [B, Cprev, H, W] -> [B, C, H', W']`
    pub fn forward(&self, mut x: Tensor<4>, skips: &mut Vec<Tensor<4>>, temb: &Tensor<2>, text: &Tensor<3>) -> Tensor<4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the down path leaves one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), temb.clone());
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(x, text.clone());
            }
        }
        for up in &self.upsamplers {
            x = up.forward(x, temb.clone());
        }
        x
    }
}

/// IF stage 1: eps and the variance interpolation v from a noisy 64x64 RGB image, a timestep and
/// T5 text tokens.
#[derive(Module, Debug)]
pub struct IfUNet {
    pub time_embedding: TimestepEmbedding,
    pub add_embedding: TextTimeEmbedding,
    pub encoder_hid_proj: Linear,
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    #[module(skip)]
    pub config: IfConfig,
}

impl IfConfig {
    /// Builds the model with random weights (load real ones with `deepfloyd::weights`).
    pub fn init(&self, device: &Device) -> IfUNet {
        let c = &self.block_out_channels;
        let n = c.len();
        let td = self.time_embed_dim();
        let rs = self.resnet_out_scale;
        let attn = |ch: usize, kind: BlockKind, count: usize| -> Vec<Attention> {
            match kind {
                BlockKind::Resnet => vec![],
                BlockKind::SimpleCrossAttn => (0..count).map(|_| Attention::new(self, ch, self.only_cross_attention, device)).collect(),
            }
        };
        let mut down_blocks = Vec::new();
        let mut cin = c[0];
        for i in 0..n {
            let cout = c[i];
            let resnets = (0..self.layers_per_block)
                .map(|j| ResnetBlock2D::new(self, if j == 0 { cin } else { cout }, cout, rs, Resample::None, device))
                .collect();
            let downsamplers = if i + 1 < n { vec![ResnetBlock2D::new(self, cout, cout, rs, Resample::Down, device)] } else { vec![] };
            down_blocks.push(DownBlock { resnets, attentions: attn(cout, self.down[i], self.layers_per_block), downsamplers });
            cin = cout;
        }
        let last = c[n - 1];
        let ms = self.mid_scale;
        let mid_block = MidBlock {
            resnets: vec![ResnetBlock2D::new(self, last, last, ms, Resample::None, device), ResnetBlock2D::new(self, last, last, ms, Resample::None, device)],
            attentions: vec![Attention::new(self, last, self.mid_only_cross_attention, device)],
        };
        let mut up_blocks = Vec::new();
        for (i, (out, ins)) in up_resnet_channels(self).into_iter().enumerate() {
            let resnets = ins.iter().map(|&cin| ResnetBlock2D::new(self, cin, out, rs, Resample::None, device)).collect();
            let upsamplers = if i + 1 < n { vec![ResnetBlock2D::new(self, out, out, rs, Resample::Up, device)] } else { vec![] };
            up_blocks.push(UpBlock { resnets, attentions: attn(out, self.up[i], ins.len()), upsamplers });
        }
        IfUNet {
            time_embedding: TimestepEmbedding::new(c[0], td, self.act, device),
            add_embedding: TextTimeEmbedding::new(self.encoder_hid_dim, td, self.pool_heads, device),
            encoder_hid_proj: LinearConfig::new(self.encoder_hid_dim, self.cross_attention_dim).init(device),
            conv_in: conv3(self.in_channels, c[0], device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(self.groups, c[0], self.eps, device),
            conv_out: conv3(c[0], self.out_channels, device),
            config: self.clone(),
        }
    }
}

impl IfUNet {
    /// Checks the inputs' shapes against the config, so a wrong embedding or image size is a
    /// message and not a panic deep inside a matmul.
    pub fn check_inputs(&self, x: &[usize; 4], t: &[usize; 1], text: &[usize; 3]) -> Result<()> {
        let cfg = &self.config;
        let [b, ch, h, w] = *x;
        let factor = 1usize << (cfg.block_out_channels.len() - 1);
        if ch != cfg.in_channels {
            return Err(Error::Invalid(format!("image has {ch} channels, the model takes {}", cfg.in_channels)));
        }
        if h == 0 || w == 0 || h % factor != 0 || w % factor != 0 {
            return Err(Error::Invalid(format!("image is {h}x{w}: both sides must be non-zero multiples of {factor} for this UNet")));
        }
        if t[0] != b {
            return Err(Error::Invalid(format!("{} timesteps for a batch of {b}", t[0])));
        }
        if text[0] != b || text[2] != cfg.encoder_hid_dim || text[1] == 0 {
            return Err(Error::Invalid(format!(
                "text embedding has shape {text:?}; this model needs [{b}, tokens, {}] (T5-XXL: [B, 77, 4096])",
                cfg.encoder_hid_dim
            )));
        }
        Ok(())
    }

    /// The time embedding with the pooled text added (what every ResNet is conditioned on).
    ///
    /// # Shapes
    /// `t: [B], text: [B, L, E] -> [B, 4 C0]`
    pub fn embed(&self, t: Tensor<1>, text: Tensor<3>) -> Tensor<2> {
        let cfg = &self.config;
        let t_emb = timestep_features(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift);
        self.time_embedding.forward(t_emb) + self.add_embedding.forward(text)
    }

    /// # Shapes
    /// `x: [B, 3, H, W], t: [B], text: [B, L, E] -> [B, 6, H, W]` (eps in 0..3, v in 3..6)
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, text: Tensor<3>) -> Tensor<4> {
        let temb = self.embed(t, text.clone());
        let text = self.encoder_hid_proj.forward(text);
        let mut x = self.conv_in.forward(x);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (y, s) = block.forward(x, &temb, &text);
            x = y;
            skips.extend(s);
        }
        x = self.mid_block.forward(x, &temb, &text);
        for block in &self.up_blocks {
            x = block.forward(x, &mut skips, &temb, &text);
        }
        self.conv_out.forward(act(self.config.act, self.conv_norm_out.forward(x)))
    }

    /// Checked `forward`.
    pub fn try_forward(&self, x: Tensor<4>, t: Tensor<1>, text: Tensor<3>) -> Result<Tensor<4>> {
        self.check_inputs(&x.dims(), &t.dims(), &text.dims())?;
        Ok(self.forward(x, t, text))
    }
}

/// The up path's channels as diffusers wires them, per up block (deepest first): its output
/// width and, for each of its `layers_per_block + 1` resnets, the input width including the skip
/// connection it concatenates. Shared by the model, its parameter list and its FLOP count.
fn up_resnet_channels(cfg: &IfConfig) -> Vec<(usize, Vec<usize>)> {
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let n = rev.len();
    let layers = cfg.layers_per_block + 1;
    let mut out = rev[0];
    (0..n)
        .map(|i| {
            let prev = out;
            out = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let ins = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { input } else { out };
                    let rin = if j == 0 { prev } else { out };
                    rin + skip
                })
                .collect();
            (out, ins)
        })
        .collect()
}

/// Every parameter's diffusers key and shape for `cfg`, without allocating the model (the real
/// XL has 4.3 billion parameters): sizes, FLOPs and package layouts are computed from this.
impl IfConfig {
    /// Number of parameters of the model this config builds.
    pub fn parameter_count(&self) -> u64 {
        parameter_shapes(self).iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }
}

pub fn parameter_shapes(cfg: &IfConfig) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut lin = |out: &mut Vec<(String, Vec<usize>)>, name: String, cin: usize, cout: usize| {
        out.push((format!("{name}.weight"), vec![cout, cin]));
        out.push((format!("{name}.bias"), vec![cout]));
    };
    let norm = |out: &mut Vec<(String, Vec<usize>)>, name: String, ch: usize| {
        out.push((format!("{name}.weight"), vec![ch]));
        out.push((format!("{name}.bias"), vec![ch]));
    };
    let conv = |out: &mut Vec<(String, Vec<usize>)>, name: String, cin: usize, cout: usize, k: usize| {
        out.push((format!("{name}.weight"), vec![cout, cin, k, k]));
        out.push((format!("{name}.bias"), vec![cout]));
    };
    let td = cfg.time_embed_dim();
    let resnet = |out: &mut Vec<(String, Vec<usize>)>, lin: &mut dyn FnMut(&mut Vec<(String, Vec<usize>)>, String, usize, usize), p: String, cin: usize, cout: usize| {
        norm(out, format!("{p}.norm1"), cin);
        conv(out, format!("{p}.conv1"), cin, cout, 3);
        lin(out, format!("{p}.time_emb_proj"), td, 2 * cout);
        norm(out, format!("{p}.norm2"), cout);
        conv(out, format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            conv(out, format!("{p}.conv_shortcut"), cin, cout, 1);
        }
    };
    let attention = |out: &mut Vec<(String, Vec<usize>)>, lin: &mut dyn FnMut(&mut Vec<(String, Vec<usize>)>, String, usize, usize), p: String, ch: usize, only_cross: bool| {
        norm(out, format!("{p}.group_norm"), ch);
        norm(out, format!("{p}.norm_cross"), cfg.cross_attention_dim);
        lin(out, format!("{p}.to_q"), ch, ch);
        if !only_cross {
            lin(out, format!("{p}.to_k"), ch, ch);
            lin(out, format!("{p}.to_v"), ch, ch);
        }
        lin(out, format!("{p}.add_k_proj"), cfg.cross_attention_dim, ch);
        lin(out, format!("{p}.add_v_proj"), cfg.cross_attention_dim, ch);
        lin(out, format!("{p}.to_out.0"), ch, ch);
    };
    let c = &cfg.block_out_channels;
    let n = c.len();
    let e = cfg.encoder_hid_dim;
    lin(&mut out, "time_embedding.linear_1".into(), c[0], td);
    lin(&mut out, "time_embedding.linear_2".into(), td, td);
    norm(&mut out, "add_embedding.norm1".into(), e);
    out.push(("add_embedding.pool.positional_embedding".into(), vec![1, e]));
    for p in ["k_proj", "q_proj", "v_proj"] {
        lin(&mut out, format!("add_embedding.pool.{p}"), e, e);
    }
    lin(&mut out, "add_embedding.proj".into(), e, td);
    norm(&mut out, "add_embedding.norm2".into(), td);
    lin(&mut out, "encoder_hid_proj".into(), e, cfg.cross_attention_dim);
    conv(&mut out, "conv_in".into(), cfg.in_channels, c[0], 3);
    let mut cin = c[0];
    for i in 0..n {
        for j in 0..cfg.layers_per_block {
            resnet(&mut out, &mut lin, format!("down_blocks.{i}.resnets.{j}"), if j == 0 { cin } else { c[i] }, c[i]);
            if cfg.down[i] == BlockKind::SimpleCrossAttn {
                attention(&mut out, &mut lin, format!("down_blocks.{i}.attentions.{j}"), c[i], cfg.only_cross_attention);
            }
        }
        if i + 1 < n {
            resnet(&mut out, &mut lin, format!("down_blocks.{i}.downsamplers.0"), c[i], c[i]);
        }
        cin = c[i];
    }
    let last = c[n - 1];
    resnet(&mut out, &mut lin, "mid_block.resnets.0".into(), last, last);
    attention(&mut out, &mut lin, "mid_block.attentions.0".into(), last, cfg.mid_only_cross_attention);
    resnet(&mut out, &mut lin, "mid_block.resnets.1".into(), last, last);
    for (i, (o, ins)) in up_resnet_channels(cfg).into_iter().enumerate() {
        for (j, &cin) in ins.iter().enumerate() {
            resnet(&mut out, &mut lin, format!("up_blocks.{i}.resnets.{j}"), cin, o);
            if cfg.up[i] == BlockKind::SimpleCrossAttn {
                attention(&mut out, &mut lin, format!("up_blocks.{i}.attentions.{j}"), o, cfg.only_cross_attention);
            }
        }
        if i + 1 < n {
            resnet(&mut out, &mut lin, format!("up_blocks.{i}.upsamplers.0"), o, o);
        }
    }
    norm(&mut out, "conv_norm_out".into(), c[0]);
    conv(&mut out, "conv_out".into(), c[0], cfg.out_channels, 3);
    out
}

/// FLOPs of one forward pass (multiply-add = 2) for `batch` images of `side x side` with
/// `tokens` text tokens: convolutions, linear layers and attention matmuls (norms and
/// activations, a few percent, are left out).
pub fn forward_flops(cfg: &IfConfig, side: usize, tokens: usize, batch: usize) -> f64 {
    let (td, e, x) = (cfg.time_embed_dim() as f64, cfg.encoder_hid_dim as f64, cfg.cross_attention_dim as f64);
    let l = tokens as f64;
    let conv = |cin: usize, cout: usize, k: f64, hw: f64| 2.0 * cin as f64 * cout as f64 * k * hw;
    // `hw_out`: conv1 runs after any resampling; the shortcut is 1x1.
    let resnet = |cin: usize, cout: usize, hw_out: f64| {
        conv(cin, cout, 9.0, hw_out) + conv(cout, cout, 9.0, hw_out) + if cin != cout { conv(cin, cout, 1.0, hw_out) } else { 0.0 } + 2.0 * td * 2.0 * cout as f64
    };
    let attn = |c: usize, hw: f64, only_cross: bool| {
        let c = c as f64;
        let keys = l + if only_cross { 0.0 } else { hw };
        2.0 * c * c * hw * (2.0 + if only_cross { 0.0 } else { 2.0 }) + 2.0 * 2.0 * x * c * l + 2.0 * 2.0 * hw * keys * c
    };
    let c = &cfg.block_out_channels;
    let n = c.len();
    let mut f = 0.0;
    // Embeddings: time MLP, text pooling (q over 1 token, k/v over L+1), projections.
    f += 2.0 * (c[0] as f64 * td + td * td) + 2.0 * e * e * (1.0 + 2.0 * (l + 1.0)) + 2.0 * e * td + 2.0 * e * x * l;
    let hw = |i: usize| ((side >> i) * (side >> i)) as f64;
    f += conv(cfg.in_channels, c[0], 9.0, hw(0));
    let mut cin = c[0];
    for i in 0..n {
        for j in 0..cfg.layers_per_block {
            f += resnet(if j == 0 { cin } else { c[i] }, c[i], hw(i));
            if cfg.down[i] == BlockKind::SimpleCrossAttn {
                f += attn(c[i], hw(i), cfg.only_cross_attention);
            }
        }
        if i + 1 < n {
            f += resnet(c[i], c[i], hw(i + 1));
        }
        cin = c[i];
    }
    f += 2.0 * resnet(c[n - 1], c[n - 1], hw(n - 1)) + attn(c[n - 1], hw(n - 1), cfg.mid_only_cross_attention);
    for (i, (o, ins)) in up_resnet_channels(cfg).into_iter().enumerate() {
        let level = n - 1 - i;
        for &cin in &ins {
            f += resnet(cin, o, hw(level));
            if cfg.up[i] == BlockKind::SimpleCrossAttn {
                f += attn(o, hw(level), cfg.only_cross_attention);
            }
        }
        if i + 1 < n {
            f += resnet(o, o, hw(level - 1));
        }
    }
    f += conv(c[0], cfg.out_channels, 9.0, hw(0));
    f * batch as f64
}
