//! `dp if ...`: the course's DeepFloyd IF stage-1 deliverables as PNGs, from the user's own
//! diffusers download (`--unet path/to/IF-I-XL-v1.0/unet`) and precomputed prompt embeddings.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use burn::prelude::*;
use clap::{Args, Subcommand, ValueEnum};
use diffusion_playground::deepfloyd::config::SchedulerConfig;
use diffusion_playground::deepfloyd::embeddings::PromptEmbeddings;
use diffusion_playground::deepfloyd::pipeline::{Blur, IfPipeline, NoiseSource, Prompt, RunContext, Task, Trajectory};
use diffusion_playground::deepfloyd::scheduler::{strided_timesteps, DdpmScheduler, X0Mode};
use diffusion_playground::deepfloyd::unet::IfUNet;
use diffusion_playground::deepfloyd::views::View;
use diffusion_playground::deepfloyd::config::IfConfig;
use diffusion_playground::artifact::Dtype;
use diffusion_playground::deepfloyd::package::{package_bytes, SCHEMES};
use diffusion_playground::deepfloyd::convert::convert_dir;
use diffusion_playground::deepfloyd::weights::{load_package_dir, load_unet_dir};
use diffusion_playground::image_ops::{decode_mask_square, decode_rgb_square, rgb_image, rgb_row, save_rgb_png};
use diffusion_playground::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{count, finite, guidance, odd_kernel};

#[derive(Args)]
pub struct IfArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: IfCommand,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The `unet` folder of a diffusers IF stage-1 download.
    #[arg(long, required_unless_present = "sizes")]
    unet: Option<PathBuf>,
    /// Output folder (manifest.json + shard-NNNNN.bin).
    #[arg(long, required_unless_present = "sizes")]
    out: Option<PathBuf>,
    #[arg(long, default_value = "q8", value_parser = crate::args::choice_of(&SCHEMES))]
    scheme: Dtype,
    /// Print the package sizes of IF-I M, L and XL for every scheme instead of converting.
    #[arg(long)]
    sizes: bool,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    if a.sizes {
        println!("{:<6} {:>14} {:>10} {:>10} {:>10} {:>10}", "model", "parameters", "f32", "f16", "q8", "q4");
        for v in ["M", "L", "XL"] {
            let cfg = IfConfig::if_i(v)?;
            let gb = |b: u64| format!("{:.2} GB", b as f64 / 1e9);
            println!(
                "IF-I-{v:<2} {:>14} {:>10} {:>10} {:>10} {:>10}  widths {:?}",
                cfg.parameter_count(),
                gb(cfg.parameter_count() * 4),
                gb(package_bytes(&cfg, Dtype::F16)),
                gb(package_bytes(&cfg, Dtype::Q8)),
                gb(package_bytes(&cfg, Dtype::Q4)),
                cfg.block_out_channels
            );
        }
        return Ok(());
    }
    let (unet, out) = (a.unet.unwrap(), a.out.unwrap());
    let bar = ProgressBar::new(0).with_style(ProgressStyle::with_template("converting {bar:30} {pos}/{len} tensors {elapsed}").unwrap());
    let stop = crate::stop::stop_flag();
    let m = convert_dir(&unet, &out, a.scheme, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
        !stop.load(Ordering::SeqCst)
    })?;
    bar.finish();
    let total: u64 = m.shards.iter().map(|s| s.bytes).sum();
    println!("{}: {} tensors in {} shards, {total} bytes ({:?})", out.display(), m.tensors.len(), m.shards.len(), a.scheme);
    Ok(())
}

#[derive(Args)]
struct Common {
    /// The `unet` folder of a diffusers IF stage-1 download (config.json + safetensors).
    #[arg(long, global = true)]
    unet: Option<PathBuf>,
    /// Or a package made by `dp convert` (hashes checked on load).
    #[arg(long, global = true, conflicts_with = "unet")]
    package: Option<PathBuf>,
    /// Prompt embeddings: safetensors or the course's torch.save'd dict (.pth), one [77, 4096] tensor per prompt, keyed by the prompt.
    #[arg(long, global = true)]
    embeddings: Option<PathBuf>,
    /// The null prompt's key in the embeddings file (classifier-free guidance).
    #[arg(long, global = true, default_value = "")]
    null: String,
    /// Classifier-free guidance scale, `uncond + g (cond - uncond)` (the course uses 7): 1 is the
    /// prompt's output alone (one model call per step, no null prompt read), 0 the null prompt's.
    #[arg(long, global = true, default_value_t = 7.0, value_parser = guidance)]
    guidance: f32,
    /// Stride of the timesteps 990, 990 - stride, ..., 0.
    #[arg(long, global = true, default_value_t = 30, value_parser = count(1000))]
    stride: usize,
    #[arg(long, global = true, default_value_t = 0)]
    seed: u64,
    /// What happens to the predicted clean image each step: none (the course), clip, or
    /// dynamic (IF's pipeline: thresholding at the 0.95 quantile, max 1.5).
    #[arg(long, global = true, value_enum, default_value = "none")]
    x0: X0Choice,
    /// Output folder.
    #[arg(long, global = true, default_value = "out/deepfloyd")]
    out: PathBuf,
    /// Pixel scale of the written PNGs.
    #[arg(long, global = true, default_value_t = 4, value_parser = count(32))]
    scale: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum X0Choice {
    None,
    Clip,
    Dynamic,
}

#[derive(Subcommand)]
enum IfCommand {
    /// List the prompts in the embeddings file.
    Prompts,
    /// Write the embeddings as safetensors (turns the course's .pth into one).
    ExportEmbeddings {
        #[arg(long)]
        out: PathBuf,
    },
    /// Forward noising at t = 250, 500, 750, the Gaussian-blur baseline, one-step denoising, and
    /// iterative denoising from i_start with every 5th frame.
    Denoise {
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value = "a high quality photo")]
        prompt: String,
        #[arg(long, default_value_t = 10)]
        i_start: usize,
    },
    /// Sample images from pure noise.
    Sample {
        #[arg(long, default_value = "a high quality photo")]
        prompt: String,
        #[arg(long, default_value_t = 5, value_parser = count(64))]
        n: usize,
    },
    /// SDEdit: the image noised to each i_start and denoised back under the prompt.
    Sdedit {
        #[arg(long)]
        image: PathBuf,
        #[arg(long, default_value = "a high quality photo")]
        prompt: String,
        #[arg(long, value_delimiter = ',', default_value = "1,3,5,7,10,20")]
        i_start: Vec<usize>,
    },
    /// Inpainting: new content where the mask is white.
    Inpaint {
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        mask: PathBuf,
        #[arg(long, default_value = "a high quality photo")]
        prompt: String,
    },
    /// Visual anagram: one prompt per view (e.g. --prompt "an oil painting of an old man"
    /// --view identity --prompt "an oil painting of people around a campfire" --view flip).
    Anagram {
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// identity, flip, rotate_cw, rotate_ccw, rotate_180, negate, skew[:f], patch_permute[:n], pixel_permute, jigsaw[:seed], inner_circle, square_hinge;
        /// or factorization components, all of one kind: low_pass[:sigma], high_pass[:sigma], triple_low_pass, triple_medium_pass, triple_high_pass, grayscale, color, motion[:n], motion_res[:n], scale[:f]
        #[arg(long, required = true)]
        view: Vec<String>,
    },
    /// Hybrid image: the low frequencies of one prompt and the high frequencies of another.
    Hybrid {
        #[arg(long)]
        low: String,
        #[arg(long)]
        high: String,
        /// Gaussian kernel size: odd, at most 127.
        #[arg(long, default_value_t = 33, value_parser = odd_kernel)]
        kernel: usize,
        /// Gaussian sigma of the split (positive; the pipeline refuses 0 and below).
        #[arg(long, default_value_t = 2.0, value_parser = finite)]
        sigma: f32,
    },
}

struct Ctx {
    model: IfUNet,
    sched: DdpmScheduler,
    emb: PromptEmbeddings,
    common: Common,
    device: Device,
}

impl Ctx {
    fn prompt(&self, name: &str) -> Result<Prompt> {
        let width = self.model.config.encoder_hid_dim;
        let cond = self.emb.get(name, width, &self.device)?;
        // Guidance 1 is the conditional output alone: no null prompt needed.
        let uncond = if diffusion_playground::guidance::needs_unconditional(self.common.guidance) { Some(self.emb.get(&self.common.null, width, &self.device)?) } else { None };
        Prompt::new(cond, uncond)
    }

    fn x0(&self) -> X0Mode {
        match self.common.x0 {
            X0Choice::None => X0Mode::None,
            X0Choice::Clip => X0Mode::Clip(1.0),
            X0Choice::Dynamic => X0Mode::DynamicThreshold { ratio: 0.95, max: 1.5 },
        }
    }

    fn side(&self) -> usize {
        self.model.config.sample_size
    }

    fn image(&self, path: &Path) -> Result<(Tensor<4>, (u32, u32))> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let s = self.side();
        let (v, size) = decode_rgb_square(&bytes, s, &path.display().to_string())?;
        Ok((Tensor::from_data(TensorData::new(v, [1, 3, s, s]), &self.device), size))
    }

    fn save(&self, name: &str, images: &[Tensor<4>]) -> Result<PathBuf> {
        let mut tiles = Vec::new();
        for t in images {
            let [b, _, h, _] = t.dims();
            let v: Vec<f32> = t.clone().into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Device(format!("{e:?}")))?;
            for i in 0..b {
                tiles.push(rgb_image(&v[i * 3 * h * h..(i + 1) * 3 * h * h], h, self.common.scale));
            }
        }
        std::fs::create_dir_all(&self.common.out).map_err(|e| Error::io(&self.common.out, e))?;
        let path = self.common.out.join(format!("{name}.png"));
        save_rgb_png(&rgb_row(&tiles), &path)?;
        println!("wrote {}", path.display());
        Ok(path)
    }

    /// Runs `f` with a run context on `noise` that draws a progress bar and stops the loop on
    /// Ctrl-C.
    fn run(&self, label: &str, noise: &mut dyn NoiseSource, f: impl FnOnce(&mut RunContext) -> Result<Trajectory>) -> Result<Trajectory> {
        let stop = crate::stop::stop_flag();
        let bar = ProgressBar::new(0).with_style(ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps {elapsed} (eta {eta})").unwrap());
        bar.set_message(label.to_string());
        let mut ctx = RunContext::new(noise).on_step(|k, total, _| {
            bar.set_length(total as u64);
            bar.set_position(k as u64 + 1);
            !stop.load(Ordering::SeqCst)
        });
        let r = f(&mut ctx);
        drop(ctx);
        bar.finish();
        r
    }
}

pub fn run(a: IfArgs, device: &Device) -> Result<()> {
    let c = a.common;
    let need = |p: &Option<PathBuf>, what: &str| p.clone().ok_or_else(|| Error::Invalid(format!("--{what} is required: {}", match what {
        "unet" => "the `unet` folder of your own diffusers IF stage-1 download, or --package (weights are never downloaded or shipped here)",
        _ => "a safetensors file (or the course's .pth dict) of prompt embeddings, one [77, 4096] tensor per prompt",
    })));
    let emb = PromptEmbeddings::from_file(&need(&c.embeddings, "embeddings")?)?;
    match &a.command {
        IfCommand::Prompts => {
            for n in emb.names() {
                println!("{n:?}");
            }
            return Ok(());
        }
        IfCommand::ExportEmbeddings { out } => {
            diffusion_playground::image_ops::write_atomic(out, emb.safetensors_bytes())?;
            println!("wrote {} ({} prompts)", out.display(), emb.names().count());
            return Ok(());
        }
        _ => {}
    }
    let (model, unet) = match &c.package {
        Some(p) => (load_package_dir(p, device)?, p.clone()),
        None => {
            let unet = need(&c.unet, "unet")?;
            (load_unet_dir(&unet, device)?, unet)
        }
    };
    let sched_path = unet.parent().map(|p| p.join("scheduler/scheduler_config.json"));
    let mut sched = match sched_path.filter(|p| p.is_file()) {
        Some(p) => DdpmScheduler::new(&SchedulerConfig::from_json(&std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?, &p.display().to_string())?),
        None => DdpmScheduler::if_stage1(),
    };
    sched.set_timesteps(strided_timesteps(990.min(sched.num_train_timesteps() - 1), c.stride)?)?;
    let ctx = Ctx { model, sched, emb, common: c, device: device.clone() };
    let (seed, g) = (ctx.common.seed, ctx.common.guidance);
    let pipe = IfPipeline::new(&ctx.model, &ctx.sched).with_x0_mode(ctx.x0());
    match a.command {
        IfCommand::Prompts | IfCommand::ExportEmbeddings { .. } => unreachable!(),
        IfCommand::Denoise { image, prompt, i_start } => {
            let (img, _) = ctx.image(&image)?;
            // The course's denoising demos run unguided (guidance 1: the conditional output).
            let p = Prompt { uncond: None, ..ctx.prompt(&prompt)? };
            let b = pipe.denoise_baselines(img.clone(), &p, seed)?;
            let with_input = |v: Vec<Tensor<4>>| [vec![img.clone()], v].concat();
            ctx.save("forward_t250_500_750", &with_input(b.noisy))?;
            ctx.save("blur_baseline_t250_500_750", &with_input(b.blurred))?;
            ctx.save("one_step_t250_500_750", &with_input(b.one_step))?;
            let (x, mut n) = pipe.iterative_start(img.clone(), i_start, &p, seed)?;
            let task = Task::Iterative { x, i_start, prompt: &p };
            let tr = ctx.run("iterative denoise", &mut n, |run| pipe.run(&task, 1.0, run))?;
            ctx.save("iterative_every_5th", &tr.frames)?;
            ctx.save("iterative_final", &[tr.image])?;
        }
        IfCommand::Sample { prompt, n } => {
            let p = ctx.prompt(&prompt)?;
            let task = Task::Sample { batch: n, side: ctx.side(), prompt: &p };
            let tr = ctx.run("sample", &mut task.noise(seed, 0), |run| pipe.run(&task, g, run))?;
            ctx.save(&format!("sample_{}", slug(&prompt)), &[tr.image])?;
        }
        IfCommand::Sdedit { image, prompt, i_start } => {
            let (img, _) = ctx.image(&image)?;
            let p = ctx.prompt(&prompt)?;
            let mut outs = Vec::new();
            for (k, i) in i_start.iter().enumerate() {
                let task = Task::Sdedit { image: img.clone(), i_start: *i, prompt: &p };
                let tr = ctx.run(&format!("sdedit i_start {i}"), &mut task.noise(seed, k), |run| pipe.run(&task, g, run))?;
                outs.push(tr.image);
            }
            outs.push(img);
            ctx.save(&format!("sdedit_{}", slug(&prompt)), &outs)?;
        }
        IfCommand::Inpaint { image, mask, prompt } => {
            let (img, size) = ctx.image(&image)?;
            let side = ctx.side();
            let mbytes = std::fs::read(&mask).map_err(|e| Error::io(&mask, e))?;
            let mv = decode_mask_square(&mbytes, side, size, &mask.display().to_string())?;
            let mt = Tensor::<4>::from_data(TensorData::new(mv, [1, 1, side, side]), &ctx.device);
            let p = ctx.prompt(&prompt)?;
            let task = Task::Inpaint { original: img.clone(), mask: mt.clone(), prompt: &p };
            let tr = ctx.run("inpaint", &mut task.noise(seed, 0), |run| pipe.run(&task, g, run))?;
            let hole = img.clone() * (mt.clone().neg() + 1.0).expand([1, 3, side, side]);
            ctx.save("inpaint", &[img, hole, tr.image])?;
        }
        IfCommand::Anagram { prompt, view } => {
            if prompt.len() != view.len() {
                return Err(Error::Invalid(format!("{} prompts but {} views: give one --view per --prompt", prompt.len(), view.len())));
            }
            let pairs = prompt.iter().zip(&view).map(|(p, v)| Ok((View::parse(v)?, ctx.prompt(p)?))).collect::<Result<Vec<_>>>()?;
            let task = Task::Anagram { side: ctx.side(), views: &pairs };
            let tr = ctx.run("anagram", &mut task.noise(seed, 0), |run| pipe.run(&task, g, run))?;
            let shown = pairs.iter().map(|(v, _)| v.invert(tr.image.clone(), 3)).collect::<Result<Vec<_>>>()?;
            ctx.save("anagram", &shown)?;
        }
        IfCommand::Hybrid { low, high, kernel, sigma } => {
            let (pl, ph) = (ctx.prompt(&low)?, ctx.prompt(&high)?);
            let task = Task::Hybrid { side: ctx.side(), low: &pl, high: &ph, blur: Blur { kernel, sigma } };
            let tr = ctx.run("hybrid", &mut task.noise(seed, 0), |run| pipe.run(&task, g, run))?;
            ctx.save("hybrid", &[tr.image])?;
        }
    }
    Ok(())
}

fn slug(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    t.chars().take(40).collect()
}
