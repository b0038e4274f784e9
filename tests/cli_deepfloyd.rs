//! `dp if ...` end to end on the tiny IF-layout model (the real weights are the user's own):
//! every course deliverable is written as a PNG, and bad input is a clean error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

mod common;
use common::usage_error;

const UNET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deepfloyd/tiny_m/unet");

fn dp(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dp")).current_dir(cwd).args(args).output().expect("dp runs")
}

/// A workspace with prompt embeddings for the tiny model (24-wide tokens), a photo and a mask.
fn workspace(name: &str) -> PathBuf {
    let w = common::tmp(name);
    let mut rng = diffusion_playground::rng::Rng::new(5);
    let prompts = ["", "a high quality photo", "an oil painting of an old man", "a rocket"];
    let data: Vec<Vec<u8>> = prompts.iter().map(|_| rng.normal_vec(8 * 24).iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = prompts.iter().zip(&data).map(|(p, d)| (p.to_string(), TensorView::new(Dtype::F16, vec![8, 24], d).unwrap())).collect();
    std::fs::write(w.join("prompts.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])).save(w.join("photo.png")).unwrap();
    image::GrayImage::from_fn(40, 30, |x, _| image::Luma([if x > 20 { 255 } else { 0 }])).save(w.join("mask.png")).unwrap();
    image::GrayImage::new(20, 20).save(w.join("small_mask.png")).unwrap();
    w
}

fn run(w: &Path, args: &[&str]) -> Output {
    let mut all = vec!["if", "--unet", UNET, "--embeddings", "prompts.safetensors", "--stride", "330", "--out", "out"];
    all.extend_from_slice(args);
    dp(w, &all)
}

fn ok(w: &Path, args: &[&str]) -> String {
    let o = run(w, args);
    assert!(o.status.success(), "dp if {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn fails(w: &Path, args: &[&str], needle: &str) {
    let o = run(w, args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "dp if {args:?}: a clean error exit: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "dp if {args:?}: expected '{needle}' in: {err}");
}

fn png(w: &Path, name: &str) -> image::RgbImage {
    image::open(w.join("out").join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).to_rgb8()
}

#[test]
fn every_deliverable_is_written() {
    let w = workspace("if-cli");
    assert!(ok(&w, &["prompts"]).contains("\"a rocket\""));
    ok(&w, &["denoise", "--image", "photo.png", "--i-start", "1"]);
    // The photo, then t = 250, 500, 750: four 16x16 tiles at scale 4 with 2-pixel gaps.
    assert_eq!(png(&w, "forward_t250_500_750.png").dimensions(), (4 * 64 + 3 * 2, 64));
    for f in ["blur_baseline_t250_500_750.png", "one_step_t250_500_750.png", "iterative_every_5th.png", "iterative_final.png"] {
        png(&w, f);
    }
    ok(&w, &["sample", "--n", "2", "--prompt", "a rocket"]);
    assert_eq!(png(&w, "sample_a_rocket.png").dimensions(), (2 * 64 + 2, 64));
    ok(&w, &["sdedit", "--image", "photo.png", "--i-start", "0,1"]);
    assert_eq!(png(&w, "sdedit_a_high_quality_photo.png").width(), 3 * 64 + 2 * 2);
    ok(&w, &["inpaint", "--image", "photo.png", "--mask", "mask.png", "--x0", "dynamic"]);
    ok(&w, &["anagram", "--prompt", "an oil painting of an old man", "--view", "identity", "--prompt", "a rocket", "--view", "flip"]);
    assert_eq!(png(&w, "anagram.png").width(), 2 * 64 + 2);
    ok(&w, &["hybrid", "--low", "a rocket", "--high", "a high quality photo", "--kernel", "15", "--x0", "clip"]);
}

/// `--compute f16` runs the same loop in half precision and must draw the same picture: mean pixel
/// difference at most 1 level of 255 (seen 0.28). Single pixels differ more (seen 103 at guidance
/// 7, 13 at guidance 1): the UNet's f16 error (~3e-3 of its range, tests/deepfloyd_f16.rs) is
/// multiplied by the guidance scale and by 1/sqrt(alpha-bar) (~150 at t = 990) in the x0
/// estimate of a random tiny model. MNIST commands refuse the flag.
#[test]
fn f16_compute_draws_what_f32_draws() {
    let w = workspace("if-cli-f16");
    let args = ["sample", "--n", "2", "--prompt", "a rocket"];
    ok(&w, &args);
    let f32_png = png(&w, "sample_a_rocket.png");
    let o = dp(&w, &[&["--compute", "f16", "if", "--unet", UNET, "--embeddings", "prompts.safetensors", "--stride", "330", "--out", "out"][..], &args[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f16_png = png(&w, "sample_a_rocket.png");
    let worst = f32_png.as_raw().iter().zip(f16_png.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    let mean = f32_png.as_raw().iter().zip(f16_png.as_raw()).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / f32_png.as_raw().len() as f64;
    eprintln!("f16 vs f32 sample: largest pixel difference {worst} of 255, mean {mean:.2}");
    assert!(mean <= 1.0, "f16 drew something else: pixels differ by {mean:.2} of 255 on average (largest {worst})");
    let o = dp(&w, &["--compute", "f16", "sample", "--model", "pkg:class_flow"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--compute f16 is for `dp if`"), "{err}");
}

#[test]
fn bad_input_is_a_clean_error() {
    let w = workspace("if-cli-bad");
    fails(&w, &["sample", "--prompt", "a horse"], "no embedding for the prompt \"a horse\"");
    fails(&w, &["inpaint", "--image", "photo.png", "--mask", "small_mask.png"], "the mask is 20x20 but the image is 40x30");
    std::fs::write(w.join("broken.jpg"), b"\xff\xd8 not really").unwrap();
    fails(&w, &["sdedit", "--image", "broken.jpg"], "cannot be decoded");
    fails(&w, &["anagram", "--prompt", "a rocket", "--view", "twirl"], "unknown view \"twirl\"");
    fails(&w, &["anagram", "--prompt", "a rocket", "--prompt", "", "--view", "flip"], "give one --view per --prompt");
    fails(&w, &["hybrid", "--low", "a rocket", "--high", "a rocket"], "kernel 33");
    fails(&w, &["hybrid", "--low", "a rocket", "--high", "a rocket", "--kernel", "15", "--sigma", "0"], "blur sigma must be a positive number, got 0");
    // No images, a stride that never steps, NaN guidance, zero-sized PNGs: usage errors (clap's 2).
    for (args, needle) in [
        (&["sample", "--n", "0"][..], "'0' for '--n <N>': must be at least 1"),
        (&["sample", "--guidance", "NaN"][..], "'NaN' for '--guidance <GUIDANCE>': must be a finite number"),
        (&["sample", "--scale", "0"][..], "'0' for '--scale <SCALE>': must be at least 1"),
        (&["hybrid", "--low", "a rocket", "--high", "a rocket", "--sigma", "inf"][..], "must be a finite number, got inf"),
    ] {
        usage_error(&run(&w, args), args, needle);
    }
    // `run` passes its own --stride, so this one goes straight to dp.
    let stride = ["if", "--unet", UNET, "--embeddings", "prompts.safetensors", "--stride", "0", "sample"];
    usage_error(&dp(&w, &stride), &stride, "'0' for '--stride <STRIDE>': must be at least 1");
    let o = dp(&w, &["if", "--embeddings", "prompts.safetensors", "sample"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--unet is required"));
    let o = dp(&w, &["if", "--unet", "nowhere", "--embeddings", "prompts.safetensors", "sample"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere/config.json"), "{}", String::from_utf8_lossy(&o.stderr));
}
