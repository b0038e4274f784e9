//! diffusers' `unet/config.json` and `scheduler/scheduler_config.json` for DeepFloyd IF stage 1.
//!
//! Every size comes from the file (IF-I-M, -L and -XL differ only here). Options IF does not use
//! are rejected with a message naming the key, rather than silently computed differently.

use serde::Deserialize;

use crate::{Error, Result};

/// The subset of diffusers' `UNet2DConditionModel` config that IF stage 1 exercises, with
/// diffusers' defaults for keys a file leaves out.
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_in")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    /// IF: one number, the per-head width.
    pub attention_head_dim: serde_json::Value,
    pub cross_attention_dim: usize,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default = "d_heads")]
    pub addition_embed_type_num_heads: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "d_one")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub sample_size: Option<usize>,
    // Options IF leaves at their defaults; anything else is refused in `validate`.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: usize,
}

fn d_in() -> usize {
    4
}
fn d_layers() -> usize {
    2
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_heads() -> usize {
    64
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_act() -> String {
    "silu".into()
}
fn d_shift() -> String {
    "default".into()
}
fn d_one() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}
fn d_positional() -> String {
    "positional".into()
}
fn d_kernel() -> usize {
    3
}

/// The down/up block kinds of the IF-I layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// `ResnetDownsampleBlock2D` / `ResnetUpsampleBlock2D`: ResNets only, resampling by a ResNet.
    Resnet,
    /// `SimpleCrossAttn{Down,Up}Block2D`: each ResNet followed by attention over
    /// [text tokens, pixels].
    SimpleCrossAttn,
}

/// The activation named by `act_fn` (diffusers' `get_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Gelu,
    Silu,
}

/// A checked config: what the model code needs, with IF's invariants verified.
#[derive(Clone, Debug)]
pub struct IfConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub down: Vec<BlockKind>,
    pub up: Vec<BlockKind>,
    pub head_dim: usize,
    pub cross_attention_dim: usize,
    /// Width of the text tokens the caller passes (T5-XXL: 4096).
    pub encoder_hid_dim: usize,
    pub pool_heads: usize,
    pub groups: usize,
    pub eps: f64,
    pub act: Act,
    pub skip_time_act: bool,
    pub resnet_out_scale: f64,
    pub mid_scale: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub only_cross_attention: bool,
    pub mid_only_cross_attention: bool,
    pub sample_size: usize,
}

/// Bounds of a config this crate builds: a little over IF-I-XL in every direction, far under what
/// would make a size computation overflow.
pub const MAX_LEVELS: usize = 8;
pub const MAX_WIDTH: usize = 8192;
pub const MAX_LAYERS: usize = 16;
pub const MAX_SAMPLE_SIZE: usize = 1024;
pub const MAX_PARAMETERS: u64 = 10_000_000_000;

/// diffusers' `Attention` builds `norm_cross` with this many groups whatever the model's groups.
pub const CROSS_NORM_GROUPS: usize = 32;

impl IfConfig {
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Parses and checks a `unet/config.json`; `source` names the file in errors.
    pub fn from_json(json: &str, source: &str) -> Result<Self> {
        let raw: UNetConfig =
            serde_json::from_str(json).map_err(|e| Error::format(source, format!("not a diffusers UNet config: {e}")))?;
        raw.validate(source)
    }

    /// IF-I-XL as published, for size and FLOP arithmetic; `-M`/`-L` differ in widths
    /// (inferred from their published parameter counts). Parsed from [`Self::if_i_json`], so the
    /// same checks apply as to a user's file.
    pub fn if_i(variant: &str) -> Result<Self> {
        Self::from_json(&Self::if_i_json(variant)?.to_string(), &format!("IF-I-{variant} config"))
    }

    /// The diffusers `unet/config.json` of IF-I-M, -L or -XL.
    pub fn if_i_json(variant: &str) -> Result<serde_json::Value> {
        let widths: [usize; 4] = match variant {
            "M" | "m" => [192, 384, 576, 768],
            "L" | "l" => [320, 640, 960, 1280],
            "XL" | "xl" => [704, 1408, 2112, 2816],
            other => return Err(Error::Invalid(format!("unknown IF-I variant {other:?}: use M, L or XL"))),
        };
        Ok(serde_json::json!({
            "_class_name": "UNet2DConditionModel",
            "act_fn": "gelu",
            "addition_embed_type": "text",
            "addition_embed_type_num_heads": 64,
            "attention_head_dim": 64,
            "block_out_channels": widths,
            "cross_attention_dim": widths[3],
            "cross_attention_norm": "group_norm",
            "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
            "encoder_hid_dim": 4096,
            "encoder_hid_dim_type": "text_proj",
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": 3,
            "layers_per_block": 3,
            "mid_block_scale_factor": 1,
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
            "norm_eps": 1e-05,
            "norm_num_groups": 32,
            "only_cross_attention": false,
            "out_channels": 6,
            "resnet_out_scale_factor": 1.0,
            "resnet_skip_time_act": false,
            "resnet_time_scale_shift": "scale_shift",
            "sample_size": 64,
            "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
            "upcast_attention": false,
            "use_linear_projection": false
        }))
    }
}

impl UNetConfig {
    pub fn validate(self, source: &str) -> Result<IfConfig> {
        let bad = |key: &str, why: String| Error::format(source, format!("`{key}`: {why}"));
        let unsupported = |key: &str, v: &dyn std::fmt::Debug| {
            Error::format(source, format!("`{key}` = {v:?} is not used by DeepFloyd IF stage 1 and not supported here"))
        };
        let n = self.block_out_channels.len();
        if n < 2 {
            return Err(bad("block_out_channels", format!("needs at least 2 levels, got {:?}", self.block_out_channels)));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(bad("down_block_types", format!("{n} levels in block_out_channels but {} down and {} up blocks", self.down_block_types.len(), self.up_block_types.len())));
        }
        let kind = |key: &str, t: &str, resnet: &str, attn: &str| -> Result<BlockKind> {
            match t {
                x if x == resnet => Ok(BlockKind::Resnet),
                x if x == attn => Ok(BlockKind::SimpleCrossAttn),
                other => Err(bad(key, format!("block type {other:?} is not supported (IF stage 1 uses {resnet} and {attn})"))),
            }
        };
        let down = self.down_block_types.iter().map(|t| kind("down_block_types", t, "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")).collect::<Result<Vec<_>>>()?;
        let up = self.up_block_types.iter().map(|t| kind("up_block_types", t, "ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")).collect::<Result<Vec<_>>>()?;
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DSimpleCrossAttn") {
            return Err(bad("mid_block_type", format!("{:?} is not supported (IF stage 1 uses UNetMidBlock2DSimpleCrossAttn)", self.mid_block_type)));
        }
        let head_dim = match &self.attention_head_dim {
            serde_json::Value::Number(x) => x.as_u64().filter(|&h| h > 0).ok_or_else(|| bad("attention_head_dim", format!("{x} is not a positive integer")))? as usize,
            serde_json::Value::Array(v) if !v.is_empty() && v.iter().all(|x| x == &v[0]) => {
                v[0].as_u64().filter(|&h| h > 0).ok_or_else(|| bad("attention_head_dim", "not a positive integer".into()))? as usize
            }
            other => return Err(bad("attention_head_dim", format!("{other} is not supported: IF uses one head width for every block"))),
        };
        let only_cross_attention = match &self.only_cross_attention {
            serde_json::Value::Null => false,
            serde_json::Value::Bool(b) => *b,
            other => return Err(unsupported("only_cross_attention", other)),
        };
        if self.addition_embed_type.as_deref() != Some("text") {
            return Err(bad("addition_embed_type", format!("{:?}: IF stage 1 adds the pooled text embedding (\"text\")", self.addition_embed_type)));
        }
        let encoder_hid_dim = self.encoder_hid_dim.ok_or_else(|| bad("encoder_hid_dim", "missing: IF projects the T5 tokens (4096 wide) with text_proj".into()))?;
        if let Some(t) = &self.encoder_hid_dim_type
            && t != "text_proj"
        {
            return Err(unsupported("encoder_hid_dim_type", t));
        }
        if self.resnet_time_scale_shift != "scale_shift" {
            return Err(unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift));
        }
        let act = match self.act_fn.as_str() {
            "gelu" => Act::Gelu,
            "silu" | "swish" => Act::Silu,
            other => return Err(unsupported("act_fn", &other)),
        };
        match self.cross_attention_norm.as_deref() {
            Some("group_norm") => {}
            other => return Err(unsupported("cross_attention_norm", &other)),
        }
        if self.time_embedding_type != "positional" {
            return Err(unsupported("time_embedding_type", &self.time_embedding_type));
        }
        for (key, set) in [
            ("class_embed_type", self.class_embed_type.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            ("time_embedding_act_fn", self.time_embedding_act_fn.is_some()),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("time_embedding_dim", self.time_embedding_dim.is_some()),
            ("center_input_sample", self.center_input_sample),
            ("dual_cross_attention", self.dual_cross_attention),
            ("conv_in_kernel", self.conv_in_kernel != 3),
            ("conv_out_kernel", self.conv_out_kernel != 3),
        ] {
            if set {
                return Err(Error::format(source, format!("`{key}` is set, which DeepFloyd IF stage 1 does not use; not supported here")));
            }
        }
        let groups = self.norm_num_groups;
        let cfg = IfConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            block_out_channels: self.block_out_channels,
            layers_per_block: self.layers_per_block,
            down,
            up,
            head_dim,
            cross_attention_dim: self.cross_attention_dim,
            encoder_hid_dim,
            pool_heads: self.addition_embed_type_num_heads,
            groups,
            eps: self.norm_eps,
            act,
            skip_time_act: self.resnet_skip_time_act,
            resnet_out_scale: self.resnet_out_scale_factor,
            mid_scale: self.mid_block_scale_factor,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            only_cross_attention,
            mid_only_cross_attention: self.mid_block_only_cross_attention.unwrap_or(false),
            sample_size: self.sample_size.unwrap_or(64),
        };
        // Shapes that would make burn panic later, or allocate without bound: check them here, by name.
        if cfg.in_channels != 3 {
            return Err(bad("in_channels", format!("{}: IF stage 1 takes RGB images (3)", cfg.in_channels)));
        }
        if cfg.out_channels != 6 {
            return Err(bad("out_channels", format!("{}: IF stage 1 predicts noise and a variance value per RGB channel (6)", cfg.out_channels)));
        }
        if n > MAX_LEVELS {
            return Err(bad("block_out_channels", format!("{n} levels; at most {MAX_LEVELS} are supported (IF has 4)")));
        }
        if let Some(&c) = cfg.block_out_channels.iter().find(|&&c| c > MAX_WIDTH) {
            return Err(bad("block_out_channels", format!("width {c} is over {MAX_WIDTH} (IF-I-XL's widest is 2816)")));
        }
        for (key, v) in [("cross_attention_dim", cfg.cross_attention_dim), ("encoder_hid_dim", cfg.encoder_hid_dim)] {
            if v == 0 || v > MAX_WIDTH {
                return Err(bad(key, format!("{v} must be 1..={MAX_WIDTH}")));
            }
        }
        if !(1..=MAX_LAYERS).contains(&cfg.layers_per_block) {
            return Err(bad("layers_per_block", format!("{} must be 1..={MAX_LAYERS} (IF uses 3)", cfg.layers_per_block)));
        }
        let factor = 1usize << (n - 1);
        if cfg.sample_size == 0 || cfg.sample_size > MAX_SAMPLE_SIZE || cfg.sample_size % factor != 0 {
            return Err(bad("sample_size", format!("{} must be a positive multiple of {factor} (the {} downsamplings) up to {MAX_SAMPLE_SIZE}", cfg.sample_size, n - 1)));
        }
        if !(cfg.eps > 0.0 && cfg.eps < 1.0) {
            return Err(bad("norm_eps", format!("{} must be a small positive number (IF: 1e-5)", cfg.eps)));
        }
        for (key, v) in [("resnet_out_scale_factor", cfg.resnet_out_scale), ("mid_block_scale_factor", cfg.mid_scale)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(bad(key, format!("{v} must be a positive number")));
            }
        }
        if !cfg.freq_shift.is_finite() {
            return Err(bad("freq_shift", format!("{} is not a number", cfg.freq_shift)));
        }
        if groups == 0 {
            return Err(bad("norm_num_groups", "must be at least 1 (IF: 32)".into()));
        }
        for &c in &cfg.block_out_channels {
            if c == 0 || c % groups != 0 {
                return Err(bad("norm_num_groups", format!("{groups} groups do not divide the block width {c}")));
            }
            if c % head_dim != 0 {
                return Err(bad("attention_head_dim", format!("{head_dim} does not divide the block width {c}")));
            }
        }
        if cfg.cross_attention_dim % CROSS_NORM_GROUPS != 0 {
            return Err(bad("cross_attention_dim", format!("{} is not a multiple of {CROSS_NORM_GROUPS} (the groups of diffusers' norm_cross)", cfg.cross_attention_dim)));
        }
        if cfg.pool_heads == 0 || encoder_hid_dim % cfg.pool_heads != 0 {
            return Err(bad("addition_embed_type_num_heads", format!("{} heads do not divide encoder_hid_dim {encoder_hid_dim}", cfg.pool_heads)));
        }
        let params = cfg.parameter_count();
        if params > MAX_PARAMETERS {
            return Err(Error::format(source, format!("describes a model of {params} parameters; at most {MAX_PARAMETERS} are supported (IF-I-XL has 4.3 billion)")));
        }
        Ok(cfg)
    }
}

/// diffusers' `DDPMScheduler` config (IF: squaredcos_cap_v2, learned_range, dynamic thresholding).
#[derive(Clone, Debug, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_variance")]
    pub variance_type: String,
    #[serde(default = "d_prediction")]
    pub prediction_type: String,
    #[serde(default = "d_true")]
    pub clip_sample: bool,
    #[serde(default = "d_clip_range")]
    pub clip_sample_range: f64,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default = "d_ratio")]
    pub dynamic_thresholding_ratio: f64,
    #[serde(default = "d_clip_range")]
    pub sample_max_value: f64,
}

fn d_train_steps() -> usize {
    1000
}
fn d_beta_schedule() -> String {
    "linear".into()
}
fn d_beta_start() -> f64 {
    1e-4
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_variance() -> String {
    "fixed_small".into()
}
fn d_prediction() -> String {
    "epsilon".into()
}
fn d_clip_range() -> f64 {
    1.0
}
fn d_ratio() -> f64 {
    0.995
}

/// The most training timesteps a scheduler config may have (diffusers' DDPMs use 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

impl SchedulerConfig {
    /// IF stage 1's published scheduler (what `convert_if.py` writes).
    pub fn if_stage1() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_schedule: "squaredcos_cap_v2".into(),
            beta_start: 1e-4,
            beta_end: 0.02,
            variance_type: "learned_range".into(),
            prediction_type: "epsilon".into(),
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: true,
            dynamic_thresholding_ratio: 0.95,
            sample_max_value: 1.5,
        }
    }

    pub fn from_json(json: &str, source: &str) -> Result<Self> {
        let c: SchedulerConfig =
            serde_json::from_str(json).map_err(|e| Error::format(source, format!("not a diffusers scheduler config: {e}")))?;
        if c.prediction_type != "epsilon" {
            return Err(Error::format(source, format!("prediction_type {:?} is not supported (IF predicts epsilon)", c.prediction_type)));
        }
        if !["learned_range", "fixed_small", "fixed_large"].contains(&c.variance_type.as_str()) {
            return Err(Error::format(source, format!("variance_type {:?} is not supported", c.variance_type)));
        }
        if !["squaredcos_cap_v2", "linear"].contains(&c.beta_schedule.as_str()) {
            return Err(Error::format(source, format!("beta_schedule {:?} is not supported", c.beta_schedule)));
        }
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&c.num_train_timesteps) {
            return Err(Error::format(source, format!("num_train_timesteps {} must be 2..={MAX_TRAIN_TIMESTEPS} (IF: 1000)", c.num_train_timesteps)));
        }
        if c.beta_schedule == "linear" && !(c.beta_start > 0.0 && c.beta_start <= c.beta_end && c.beta_end < 1.0) {
            return Err(Error::format(source, format!("beta_start {} and beta_end {} must satisfy 0 < start <= end < 1", c.beta_start, c.beta_end)));
        }
        if c.clip_sample && !(c.clip_sample_range > 0.0 && c.clip_sample_range.is_finite()) {
            return Err(Error::format(source, format!("clip_sample_range {} must be a positive number", c.clip_sample_range)));
        }
        if c.thresholding && !(c.dynamic_thresholding_ratio > 0.0 && c.dynamic_thresholding_ratio <= 1.0 && c.sample_max_value >= 1.0 && c.sample_max_value.is_finite()) {
            return Err(Error::format(source, format!("dynamic_thresholding_ratio {} must be in (0, 1] and sample_max_value {} at least 1", c.dynamic_thresholding_ratio, c.sample_max_value)));
        }
        Ok(c)
    }
}
