//! Training the course's five recipes (docs/course.md) and the digit classifier (desktop only:
//! it needs autodiff and a file system). This file holds what a run *is* (recipe, settings,
//! learning-rate schedule, optimizer, its folder); [`run`] the one loop all recipes share,
//! [`checkpoint`] the resumable state on disk, [`figures`] what a run draws, [`events`] what it
//! reports while it runs (the CLI draws the bars), [`classifier`] the classifier's trainer.

use std::path::PathBuf;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer};
use serde::{Deserialize, Serialize};

use super::data::DatasetKind;
use super::unet::{Conditioning, UNetConfig};
use crate::{Error, Result};

mod checkpoint;
mod classifier;
mod events;
mod figures;
mod run;

pub use checkpoint::{epoch_means, read_checkpoint, run_losses, Progress};
pub use classifier::{train_classifier, ClassifierRun};
pub use events::{Events, TrainEvent};
pub use figures::{denoise_grid, pixels_mse, FIGURE_STEPS};
pub use run::{seeded_init, train, Outcome, RunOptions};

/// The course's five training recipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// 1. Single-step denoiser on z = x + sigma eps.
    Denoiser,
    /// 2. The same network trained on z = eps (learns the mean image).
    PureNoise,
    /// 3. Time-conditioned flow matching.
    TimeFlow,
    /// 4. Class-conditioned flow matching with class dropout for guidance.
    ClassFlow,
    /// 5. As 4 without the LR scheduler: constant LR, AdamW and gradient clipping.
    ClassFlowConstant,
}

crate::named!(Recipe {
    Denoiser => "denoiser",
    PureNoise => "pure-noise",
    TimeFlow => "time-flow",
    ClassFlow => "class-flow",
    ClassFlowConstant => "class-flow-constant",
});

impl Recipe {
    pub fn conditioning(self) -> Conditioning {
        match self {
            Recipe::Denoiser | Recipe::PureNoise => Conditioning::None,
            Recipe::TimeFlow => Conditioning::Time,
            Recipe::ClassFlow | Recipe::ClassFlowConstant => Conditioning::TimeClass,
        }
    }

    pub fn is_flow(self) -> bool {
        self.conditioning() != Conditioning::None
    }

    /// The course's defaults for this recipe.
    pub fn defaults(self) -> TrainConfig {
        let base = TrainConfig {
            recipe: self,
            dataset: DatasetKind::Mnist,
            hidden: 64,
            batch: 64,
            lr: 1e-2,
            epochs: 10,
            schedule: LrSchedule::Constant,
            sigma: 0.5,
            p_uncond: 0.0,
            grad_clip: None,
            optimizer: Optimizer::Adam,
            adam_eps: 1e-8,
            seed: 0,
            limit: None,
            micro_batch: None,
        };
        match self {
            Recipe::Denoiser | Recipe::PureNoise => TrainConfig { hidden: 128, batch: 256, lr: 1e-4, epochs: 5, ..base },
            Recipe::TimeFlow => TrainConfig { schedule: LrSchedule::tenfold_over(base.epochs), ..base },
            Recipe::ClassFlow => TrainConfig { schedule: LrSchedule::tenfold_over(base.epochs), p_uncond: 0.1, ..base },
            Recipe::ClassFlowConstant => TrainConfig { lr: 1e-3, p_uncond: 0.1, grad_clip: Some(1.0), optimizer: Optimizer::AdamW { weight_decay: 1e-2 }, ..base },
        }
    }
}

/// The largest batch and epoch count a run accepts (the recipes use 64-256 and 5-20).
pub const MAX_BATCH: usize = 60_000;
pub const MAX_EPOCHS: usize = 10_000;

/// Every value of a training run (all of them CLI flags). Stored in a run's `config.json`, its
/// checkpoints and pkg/manifest.json as the flat `ConfigFile`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "ConfigFile", try_from = "ConfigFile")]
pub struct TrainConfig {
    pub recipe: Recipe,
    pub dataset: DatasetKind,
    /// UNet width D.
    pub hidden: usize,
    pub batch: usize,
    pub lr: f64,
    pub epochs: usize,
    /// How the learning rate moves from epoch to epoch.
    pub schedule: LrSchedule,
    /// Noise level of the single-step denoiser.
    pub sigma: f32,
    /// Probability of dropping the class (classifier-free guidance training).
    pub p_uncond: f32,
    /// Clip each parameter's gradient to this L2 norm.
    pub grad_clip: Option<f32>,
    pub optimizer: Optimizer,
    /// Adam epsilon; PyTorch's 1e-8 (burn's default is 1e-5).
    pub adam_eps: f32,
    pub seed: u64,
    /// Train on the first N images only (quick runs, tests).
    pub limit: Option<usize>,
    /// Split each batch into forward/backward passes of at most this many images and sum their
    /// gradients before the one optimizer step (`None`: the whole batch at once). The step then
    /// sees the same data, noise and gradient weighting; only BatchNorm's batch statistics
    /// come from the smaller chunks. Keeps GPU reductions short (see `dp train --help`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
}

impl TrainConfig {
    pub fn unet(&self) -> UNetConfig {
        UNetConfig::new(self.hidden).with_conditioning(self.recipe.conditioning())
    }

    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.schedule.lr(self.lr, epoch, self.epochs)
    }

    /// The run lengthened or shortened to `epochs`; a recipe's decay keeps falling tenfold over
    /// the whole run ([`LrSchedule::tenfold_over`]) unless the caller then sets its own gamma.
    pub fn with_epochs(mut self, epochs: usize) -> Self {
        if let LrSchedule::Exponential { .. } = self.schedule {
            self.schedule = LrSchedule::tenfold_over(epochs);
        }
        self.epochs = epochs;
        self
    }

    /// Every value checked before anything is allocated or trained: a wrong value is a clear
    /// error naming it, never a panic, an abort on a huge allocation or a NaN run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !(1..=super::unet::MAX_HIDDEN).contains(&self.hidden) {
            return bad(format!("`hidden` {} must be 1..={}", self.hidden, super::unet::MAX_HIDDEN));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return bad(format!("`batch` {} must be 1..={MAX_BATCH}", self.batch));
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad(format!("`epochs` {} must be 1..={MAX_EPOCHS}", self.epochs));
        }
        if self.micro_batch == Some(0) {
            return bad("`micro_batch` must be at least 1".into());
        }
        if !(positive(self.lr) && self.lr <= 10.0) {
            return bad(format!("`lr` {} must be a positive number no larger than 10", self.lr));
        }
        if !(0.0..=1.0).contains(&self.p_uncond) {
            return bad(format!("`p_uncond` {} must be in [0, 1]", self.p_uncond));
        }
        if let LrSchedule::Exponential { gamma: g } = self.schedule
            && !(g > 0.0 && g <= 1.0)
        {
            return bad(format!("`gamma` {g} must be in (0, 1]"));
        }
        if !(self.sigma.is_finite() && (0.0..=100.0).contains(&self.sigma)) {
            return bad(format!("`sigma` {} must be a number in [0, 100]", self.sigma));
        }
        if let Some(c) = self.grad_clip
            && !positive(c as f64)
        {
            return bad(format!("`grad_clip` {c} must be a positive number"));
        }
        if let Optimizer::AdamW { weight_decay } = self.optimizer
            && !(weight_decay.is_finite() && (0.0..=1.0).contains(&weight_decay))
        {
            return bad(format!("`weight_decay` {weight_decay} must be in [0, 1]"));
        }
        if !(positive(self.adam_eps as f64) && self.adam_eps <= 1.0) {
            return bad(format!("`adam_eps` {} must be a positive number no larger than 1", self.adam_eps));
        }
        Ok(())
    }

    fn optimizer(&self) -> ModuleOptimizer {
        self.optimizer.init(self.adam_eps, self.grad_clip)
    }
}

/// How the learning rate moves over a run, applied once per epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// `lr` throughout.
    Constant,
    /// `lr * gamma^epoch`.
    Exponential { gamma: f64 },
    /// `lr`, then `lr * factor` for the last epoch of a run of more than one (the classifier's
    /// cheap anneal).
    LastEpoch { factor: f64 },
}

impl LrSchedule {
    /// The course's decay: tenfold over `epochs` epochs.
    pub fn tenfold_over(epochs: usize) -> Self {
        LrSchedule::Exponential { gamma: 0.1f64.powf(1.0 / epochs.max(1) as f64) }
    }

    /// The rate of (0-based) `epoch` of `epochs` for a base rate `lr`.
    pub fn lr(self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Exponential { gamma } => lr * gamma.powi(epoch as i32),
            LrSchedule::LastEpoch { factor } if epochs > 1 && epoch + 1 == epochs => lr * factor,
            LrSchedule::LastEpoch { .. } => lr,
        }
    }

    /// The decay factor per epoch, when the schedule is exponential.
    pub fn gamma(self) -> Option<f64> {
        match self {
            LrSchedule::Exponential { gamma } => Some(gamma),
            _ => None,
        }
    }
}

/// The optimizer of a run: Adam, or AdamW with decoupled weight decay (PyTorch's meanings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Adam,
    AdamW { weight_decay: f32 },
}

impl Optimizer {
    /// The optimizer with epsilon `eps` and each parameter's gradient clipped to `clip` (L2).
    pub fn init(self, eps: f32, clip: Option<f32>) -> ModuleOptimizer {
        let clip = clip.map(GradientClippingConfig::Norm);
        match self {
            Optimizer::Adam => AdamConfig::new().with_epsilon(eps).with_grad_clipping(clip).init(),
            Optimizer::AdamW { weight_decay } => AdamWConfig::new().with_epsilon(eps).with_weight_decay(weight_decay).with_grad_clipping(clip).init(),
        }
    }
}

/// `TrainConfig` as files hold it: the flat fields of the first runs (`gamma` null for a constant
/// rate; `weight_decay` > 0 meaning AdamW where `optimizer` is absent), so every shipped
/// manifest, config.json and checkpoint still reads.
#[derive(Clone, Serialize, Deserialize)]
struct ConfigFile {
    recipe: Recipe,
    dataset: DatasetKind,
    hidden: usize,
    batch: usize,
    lr: f64,
    epochs: usize,
    gamma: Option<f64>,
    sigma: f32,
    p_uncond: f32,
    grad_clip: Option<f32>,
    weight_decay: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer: Option<String>,
    adam_eps: f32,
    seed: u64,
    limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    micro_batch: Option<usize>,
}

impl From<TrainConfig> for ConfigFile {
    fn from(c: TrainConfig) -> Self {
        let (weight_decay, optimizer) = match c.optimizer {
            Optimizer::Adam => (0.0, "adam"),
            Optimizer::AdamW { weight_decay } => (weight_decay, "adamw"),
        };
        ConfigFile {
            recipe: c.recipe,
            dataset: c.dataset,
            hidden: c.hidden,
            batch: c.batch,
            lr: c.lr,
            epochs: c.epochs,
            gamma: c.schedule.gamma(),
            sigma: c.sigma,
            p_uncond: c.p_uncond,
            grad_clip: c.grad_clip,
            weight_decay,
            optimizer: Some(optimizer.into()),
            adam_eps: c.adam_eps,
            seed: c.seed,
            limit: c.limit,
            micro_batch: c.micro_batch,
        }
    }
}

impl TryFrom<ConfigFile> for TrainConfig {
    type Error = String;
    fn try_from(f: ConfigFile) -> std::result::Result<Self, String> {
        let optimizer = match f.optimizer.as_deref() {
            Some("adam") | None if f.weight_decay == 0.0 => Optimizer::Adam,
            Some("adamw") | None => Optimizer::AdamW { weight_decay: f.weight_decay },
            Some("adam") => return Err(format!("optimizer adam with weight_decay {} (only adamw decays weights)", f.weight_decay)),
            Some(other) => return Err(format!("unknown optimizer '{other}' (adam or adamw)")),
        };
        Ok(TrainConfig {
            recipe: f.recipe,
            dataset: f.dataset,
            hidden: f.hidden,
            batch: f.batch,
            lr: f.lr,
            epochs: f.epochs,
            schedule: f.gamma.map_or(LrSchedule::Constant, |gamma| LrSchedule::Exponential { gamma }),
            sigma: f.sigma,
            p_uncond: f.p_uncond,
            grad_clip: f.grad_clip,
            optimizer,
            adam_eps: f.adam_eps,
            seed: f.seed,
            limit: f.limit,
            micro_batch: f.micro_batch,
        })
    }
}

/// Where a run keeps its files.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.ckpt")
    }
    pub fn snapshot(&self, epoch: usize) -> PathBuf {
        self.0.join(format!("epoch_{epoch}.bpk"))
    }
    pub fn model(&self) -> PathBuf {
        self.0.join("model.bpk")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_course_recipes() {
        let c = Recipe::ClassFlow.defaults();
        assert_eq!((c.hidden, c.batch, c.lr, c.epochs, c.p_uncond), (64, 64, 1e-2, 10, 0.1));
        assert!((c.lr_at(10) - 1e-3).abs() < 1e-12, "decays by 10x over 10 epochs");
        let d = Recipe::Denoiser.defaults();
        assert_eq!((d.hidden, d.batch, d.lr, d.epochs, d.sigma), (128, 256, 1e-4, 5, 0.5));
        assert_eq!(Recipe::ClassFlowConstant.defaults().lr_at(9), 1e-3);
    }

    #[test]
    fn config_files_of_every_version_read_the_same() {
        // Written before `optimizer` existed: weight_decay > 0 meant AdamW, a gamma the decay.
        let old = r#"{"recipe":"class-flow-constant","dataset":"mnist","hidden":64,"batch":64,"lr":0.001,"epochs":10,"gamma":null,
            "sigma":0.5,"p_uncond":0.1,"grad_clip":1.0,"weight_decay":0.01,"adam_eps":1e-8,"seed":0,"limit":null}"#;
        let c: TrainConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c, Recipe::ClassFlowConstant.defaults());
        let flow = Recipe::ClassFlow.defaults();
        assert_eq!(flow.optimizer, Optimizer::Adam);
        for c in [Recipe::ClassFlowConstant.defaults(), flow.clone(), flow.with_epochs(3)] {
            let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
        let bad = old.replace(r#""weight_decay":0.01"#, r#""weight_decay":0.01,"optimizer":"adam""#);
        assert!(serde_json::from_str::<TrainConfig>(&bad).unwrap_err().to_string().contains("only adamw"));
    }

    #[test]
    fn schedules_follow_their_rule() {
        assert_eq!(LrSchedule::Constant.lr(0.5, 7, 10), 0.5);
        assert!((LrSchedule::tenfold_over(4).lr(1.0, 4, 4) - 0.1).abs() < 1e-12);
        let last = LrSchedule::LastEpoch { factor: 0.3 };
        assert_eq!((last.lr(1.0, 1, 3), last.lr(1.0, 2, 3), last.lr(1.0, 0, 1)), (1.0, 0.3, 1.0));
        // The run lengthened keeps decaying tenfold over all of it; a constant rate stays constant.
        assert!((Recipe::TimeFlow.defaults().with_epochs(20).lr_at(20) - 1e-3).abs() < 1e-12);
        assert_eq!(Recipe::ClassFlowConstant.defaults().with_epochs(20).schedule, LrSchedule::Constant);
    }
}
