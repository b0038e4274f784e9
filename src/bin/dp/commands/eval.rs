//! `dp eval`: many samples per class scored by the classifier (accuracy, confidence, FID, grain).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use clap::Args;
use diffusion_playground::image_ops::write_atomic;
use diffusion_playground::mnist::classifier::{argmax_rows, FEATURES};
use diffusion_playground::mnist::data::{Dataset, DatasetKind, Split};
use diffusion_playground::mnist::flow::{FlowPipeline, FlowSampler};
use diffusion_playground::sampling::{RunContext, SeededNoise};
use diffusion_playground::mnist::metrics::{background_grain, fid};
use diffusion_playground::mnist::unet::Conditioning;
use diffusion_playground::mnist::{CLASSES, PIXELS};
use diffusion_playground::rng::Rng;
use diffusion_playground::{Error, Result};

use crate::args::count;
use crate::models;
use crate::stop::stop_flag;
use super::{guidance_label, to_vec, SamplerArgs};

#[derive(Args)]
pub(super) struct EvalArgs {
    #[arg(long, default_value = "pkg:class_flow")]
    model: String,
    #[arg(long)]
    epoch: Option<usize>,
    #[arg(long, default_value = "pkg:classifier")]
    classifier: String,
    #[arg(long, default_value_t = 1000, value_parser = count(100_000))]
    per_class: usize,
    #[arg(long, default_value_t = 250, value_parser = count(10_000))]
    batch: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(super) fn cmd_eval(a: EvalArgs, device: &Device) -> Result<()> {
    let (model, from) = models::load_unet(&a.model, a.epoch, device)?;
    let classifier = models::load_classifier(&a.classifier, device)?.valid();
    let data_dir = a.data.unwrap_or_else(|| DatasetKind::Mnist.default_dir());
    let test = Dataset::load(&data_dir, Split::Test, DatasetKind::Mnist)?;
    let train_set = Dataset::load(&data_dir, Split::Train, DatasetKind::Mnist)?;
    // A covariance (FID) needs two images at the least.
    test.require(2, "the FID of `dp eval` (test set)")?;
    train_set.require(2, "the FID floor of `dp eval` (training set)")?;
    let sampler = FlowSampler::new(a.sampler.solver, a.sampler.steps);
    let class_model = model.conditioning() == Conditioning::TimeClass;
    let total = a.per_class * CLASSES;
    let mut correct = vec![0usize; CLASSES];
    // Which digit the classifier sees: for a model without a class this is the mode coverage.
    let mut predicted = vec![0usize; CLASSES];
    let mut conf_sum = 0f64;
    let mut samples_grain = Vec::new();
    let mut feats = Vec::with_capacity(total * FEATURES);
    let t = Instant::now();
    let bar = indicatif::ProgressBar::new(total as u64);
    let mut noise = SeededNoise(Rng::new(a.sampler.seed));
    let pipeline = FlowPipeline::new(&model, sampler);
    let mut done = 0;
    let stop = stop_flag();
    while done < total {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Interrupted);
        }
        let n = a.batch.min(total - done);
        let labels: Vec<usize> = (done..done + n).map(|i| i % CLASSES).collect();
        let run = RunContext::new(&mut noise).with_frame_every(0).on_step(|_, _, _| !stop.load(std::sync::atomic::Ordering::SeqCst));
        let x = pipeline.sample(&labels, a.sampler.guidance, &mut { run })?.image;
        let x = x.clamp(0.0, 1.0);
        samples_grain.push(background_grain(&to_vec(x.clone())?) * n as f64);
        let (p, f) = classifier.probs_and_features(x);
        let p: Vec<f32> = p.into_data().try_to_vec().map_err(|e| Error::Device(format!("{e:?}")))?;
        feats.extend(f.into_data().try_to_vec::<f32>().map_err(|e| Error::Device(format!("{e:?}")))?);
        for ((k, conf), &l) in argmax_rows(&p, CLASSES).into_iter().zip(&labels) {
            if k == l {
                correct[l] += 1;
            }
            predicted[k] += 1;
            conf_sum += conf as f64;
        }
        done += n;
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    let sample_secs = t.elapsed().as_secs_f64();
    let feats_of = |ds: &Dataset, n: usize| -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for chunk in (0..n.min(ds.len())).collect::<Vec<_>>().chunks(1000) {
            let (x, _) = ds.batch(chunk, device);
            out.extend(classifier.features(x).into_data().try_to_vec::<f32>().map_err(|e| Error::Device(format!("{e:?}")))?);
        }
        Ok(out)
    };
    let test_feats = feats_of(&test, 10_000)?;
    let grain = samples_grain.iter().sum::<f64>() / total as f64;
    let real: Vec<f32> = test.images[..test.len().min(10_000) * PIXELS].iter().map(|&b| b as f32 / 255.0).collect();
    let real_grain = background_grain(&real);
    let train_feats = feats_of(&train_set, 10_000)?;
    let fid_samples = fid(&feats, &test_feats, FEATURES);
    let fid_floor = fid(&train_feats, &test_feats, FEATURES);
    let acc: f64 = correct.iter().sum::<usize>() as f64 / total as f64;
    println!("model {from}; {total} samples, {} steps {:?}, {}; sampling took {sample_secs:.1} s", a.sampler.steps, a.sampler.solver, guidance_label(model.conditioning(), a.sampler.guidance));
    if class_model {
        println!("recognised as the requested digit: {:.2}%", acc * 100.0);
        println!("  per digit: {}", digit_percentages(&correct, a.per_class));
    } else {
        println!("classified as (no class requested; 10% each is a uniform spread): {}", digit_percentages(&predicted, total));
    }
    println!("mean classifier confidence (top class): {:.4}", conf_sum / total as f64);
    println!("FID (classifier features) samples vs test: {fid_samples:.3}; floor train vs test: {fid_floor:.3}");
    println!("background grain (share of dark pixels that are faint grey): samples {:.1}%, real test digits {:.1}%", grain * 100.0, real_grain * 100.0);
    if let Some(j) = a.json {
        let v = serde_json::json!({
            "model": from, "per_class": a.per_class, "steps": a.sampler.steps, "solver": a.sampler.solver,
            "guidance": a.sampler.guidance, "seed": a.sampler.seed,
            "accuracy": if class_model { Some(acc) } else { None },
            "per_digit_accuracy": if class_model { Some(correct.iter().map(|c| *c as f64 / a.per_class as f64).collect::<Vec<_>>()) } else { None },
            "classified_share": predicted.iter().map(|c| *c as f64 / total as f64).collect::<Vec<_>>(),
            "mean_confidence": conf_sum / total as f64, "fid": fid_samples, "fid_floor_train_vs_test": fid_floor,
            "sampling_seconds": sample_secs, "background_grain": grain, "background_grain_test": real_grain,
            "model_evaluations_per_sample": a.sampler.solver.evaluations(a.sampler.steps),
        });
        write_atomic(&j, serde_json::to_string_pretty(&v).unwrap().as_bytes())?;
    }
    Ok(())
}

/// "0:9.8% 1:10.1% ...": each digit's count as a share of `of`.
pub(super) fn digit_percentages(counts: &[usize], of: usize) -> String {
    counts.iter().enumerate().map(|(d, c)| format!("{d}:{:.1}%", 100.0 * *c as f64 / of as f64)).collect::<Vec<_>>().join(" ")
}

