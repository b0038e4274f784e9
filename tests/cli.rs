//! The `dp` command end to end on a tiny synthetic dataset: every deliverable command writes its
//! files, and bad input (missing data, corrupt or truncated weights, a model of another shape,
//! a manifest mismatch) ends with a message naming the problem, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{tmp, usage_error, write_data};

fn dp(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dp")).current_dir(cwd).args(args).output().expect("dp runs")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = dp(cwd, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "dp {args:?} failed: {err}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn fails(cwd: &Path, args: &[&str], needle: &str) {
    let o = dp(cwd, args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "dp {args:?} should fail");
    assert_eq!(o.status.code(), Some(1), "dp {args:?}: a clean error exit, not a crash: {err}");
    assert!(!err.contains("panicked"), "dp {args:?} panicked: {err}");
    assert!(err.contains(needle), "dp {args:?}: expected '{needle}' in: {err}");
}

/// A scratch directory holding `n` synthetic images under `data/`, and that folder's path.
fn workspace(name: &str, n: usize) -> (PathBuf, String) {
    let w = tmp(name);
    let data = w.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_data(&data, n);
    let d = data.to_str().unwrap().to_string();
    (w, d)
}

fn is_png(p: &Path) {
    let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(img.width() > 28 && img.height() > 28);
}

#[test]
fn flow_pipeline_and_bad_weights() {
    let (w, d) = workspace("cli-flow", 48);
    let d = d.as_str();
    let tiny = ["--data", d, "--hidden", "4", "--batch", "8", "--epochs", "1"];

    let out = ok(&w, &[&["train", "class-flow", "--out", "run"][..], &tiny].concat());
    assert!(out.contains("finished all 1 epochs"), "{out}");
    // One clock for both figures: this run's time can never exceed all runs' time.
    let secs = |tag: &str| -> f64 {
        let head = out.split(tag).next().unwrap_or("");
        head.rsplit(|c: char| c == ',' || c == ';').next().unwrap().trim().trim_end_matches(" s").parse().unwrap_or_else(|e| panic!("{tag}: {e} in {out}"))
    };
    assert!(secs(" this run") <= secs(" in all"), "{out}");
    for f in ["run/model.bpk", "run/epoch_1.bpk", "run/loss.csv", "run/checkpoint.ckpt"] {
        assert!(w.join(f).exists(), "{f}");
    }
    is_png(&w.join("run/samples_epoch1.png"));

    let out = ok(&w, &["sample", "--model", "run", "--steps", "3", "--solver", "heun", "--per-digit", "2", "--out", "s.png", "--gif", "s.gif"]);
    assert!(out.contains("20 samples"), "{out}");
    is_png(&w.join("s.png"));
    assert!(std::fs::read(w.join("s.gif")).unwrap().starts_with(b"GIF89a"));

    ok(&w, &["train-classifier", "--out", "clf", "--data", d, "--epochs", "1", "--batch", "16"]);
    let out = ok(&w, &["eval", "--model", "run", "--classifier", "clf", "--per-class", "2", "--steps", "2", "--data", d, "--json", "e.json"]);
    assert!(out.contains("FID") && out.contains("recognised"), "{out}");
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(w.join("e.json")).unwrap()).unwrap();
    assert!(e["accuracy"].as_f64().is_some() && e["fid"].as_f64().unwrap().is_finite(), "{e}");

    // Recipe 5 beside recipe 4: one chart, a CSV of each epoch's mean loss.
    ok(&w, &[&["train", "class-flow-constant", "--out", "run5"][..], &tiny].concat());
    let out = ok(&w, &["figures", "compare", "run", "run5/checkpoint.ckpt", "--out", "cmp/loss.png"]);
    assert!(out.contains("run (class-flow, lr 1e-2, decayed)") && out.contains("run5 (class-flow-constant, lr 1e-3, constant)"), "{out}");
    let csv = std::fs::read_to_string(w.join("cmp/loss.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    // Per run: the epoch's mean loss and the number of steps behind it (a whole epoch here).
    let cells: Vec<f32> = rows[1].split(',').skip(1).map(|v| v.parse().unwrap()).collect();
    assert!(cells.len() == 4 && [cells[0], cells[2]].iter().all(|m| m.is_finite() && *m > 0.0), "{csv}");
    assert!(cells[1] == cells[3] && cells[1] >= 1.0 && cells[1].fract() == 0.0, "{csv}");
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        is_png(&w.join("cmp/loss.png"));
    }
    fails(&w, &["figures", "compare", "run", "missing_run"], "missing_run");

    // Packaging, and the package's integrity checks.
    ok(&w, &["package", "class_flow", "--from", "run", "--note", "epochs=1"]);
    ok(&w, &["package", "classifier", "--from", "clf"]);
    ok(&w, &["sample", "--model", "pkg:class_flow", "--steps", "2", "--out", "p.png"]);
    fails(&w, &["sample", "--model", "pkg:nope"], "no model 'nope' in the manifest (it has: class_flow, classifier)");
    let bpk = w.join("pkg/class_flow.bpk");
    let good = std::fs::read(&bpk).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(&bpk, &flipped).unwrap();
    fails(&w, &["sample", "--model", "pkg:class_flow"], "sha256");
    std::fs::write(&bpk, &good[..good.len() / 2]).unwrap();
    fails(&w, &["sample", "--model", "pkg:class_flow"], "truncated or wrong file");

    // A run directory whose weights are damaged or of another architecture.
    let run_model = w.join("run/model.bpk");
    std::fs::write(&run_model, &good[..good.len() / 3]).unwrap();
    fails(&w, &["sample", "--model", "run"], "model.bpk");
    std::fs::write(&run_model, b"hello, not a model").unwrap();
    fails(&w, &["sample", "--model", "run"], "not a readable burnpack");
    std::fs::write(&run_model, &good).unwrap();
    let cfg = std::fs::read_to_string(w.join("run/config.json")).unwrap();
    std::fs::write(w.join("run/config.json"), cfg.replace("\"hidden\": 4", "\"hidden\": 8")).unwrap();
    fails(&w, &["sample", "--model", "run"], "does not fit this model");
    fails(&w, &["sample", "--model", "run"], "e1.conv1.conv.weight");
    std::fs::write(w.join("run/config.json"), cfg).unwrap();

    fails(&w, &["sample", "--model", "run", "--digits", "3,12"], "12 is not a digit");
    fails(&w, &["sample", "--model", "no_such_run"], "no_such_run: no such run directory or model file");
    // A .bpk out of its run directory: its architecture is in the run's config.json.
    std::fs::copy(&run_model, w.join("loose.bpk")).unwrap();
    fails(&w, &["sample", "--model", "loose.bpk"], "loose.bpk is read with the training config.json of its run directory");
    // Nothing to draw, no integration, or a scale that makes every pixel NaN: usage errors.
    for (args, needle) in [
        (&["sample", "--steps", "0"][..], "'0' for '--steps <STEPS>': must be at least 1"),
        (&["sample", "--per-digit", "0"][..], "'0' for '--per-digit <PER_DIGIT>': must be at least 1"),
        (&["eval", "--per-class", "0"][..], "'0' for '--per-class <PER_CLASS>': must be at least 1"),
        (&["eval", "--batch", "0"][..], "'0' for '--batch <BATCH>': must be at least 1"),
        (&["sample", "--guidance", "nan"][..], "'nan' for '--guidance <GUIDANCE>': must be a finite number"),
        (&["sample", "--guidance", "inf"][..], "must be a finite number, got inf"),
        (&["sample", "--steps", "many"][..], "not a whole number"),
    ] {
        usage_error(&dp(&w, args), args, needle);
    }
    fails(&w, &["train", "class-flow", "--out", "x", "--data", "/nonexistent/mnist"], "setup.sh");
    fails(&w, &["train", "class-flow", "--out", "x", "--data", d, "--lr=0"], "--lr must be a positive number");
    // The denoiser's default batch 256 hits burn 0.22's GPU reduction bug: refused up front.
    let big = ["--device", "wgpu", "train", "denoiser", "--out", "x", "--data", d];
    fails(&w, &big, "a pass of 256 images is too large for --device wgpu");
    fails(&w, &big, "--micro-batch 64");
    fails(&w, &[&big[..], &["--micro-batch", "128"]].concat(), "a pass of 128 images");
    fails(&w, &[&["train", "denoiser", "--out", "x", "--data", d], &["--micro-batch", "0"][..]].concat(), "--micro-batch must be at least 1");
}

#[test]
fn denoiser_figures() {
    let (w, d) = workspace("cli-denoise", 24);
    let d = d.as_str();
    let tiny = ["--data", d, "--hidden", "4", "--batch", "8", "--epochs", "1"];
    ok(&w, &[&["train", "denoiser", "--out", "dn"][..], &tiny].concat());
    is_png(&w.join("dn/denoise_epoch1.png"));
    ok(&w, &[&["train", "pure-noise", "--out", "pn"][..], &tiny].concat());
    ok(&w, &["figures", "noising", "--data", d, "--out", "n.png"]);
    ok(&w, &["figures", "ood", "--model", "dn", "--data", d, "--out", "o.png"]);
    let out = ok(&w, &["figures", "mean", "--model", "pn", "--data", d, "--out", "m.png"]);
    assert!(out.contains("MSE to the mean"), "{out}");
    for f in ["n.png", "o.png", "m.png", "dn/loss.png"] {
        is_png(&w.join(f));
    }
    fails(&w, &["sample", "--model", "dn"], "is a denoiser");
}

#[test]
fn time_only_eval_reports_the_spread_of_digits() {
    let (w, d) = workspace("cli-time", 24);
    let d = d.as_str();
    ok(&w, &["train", "time-flow", "--out", "tf", "--data", d, "--hidden", "4", "--batch", "8", "--epochs", "1"]);
    ok(&w, &["train-classifier", "--out", "clf", "--data", d, "--epochs", "1", "--batch", "16"]);
    let out = ok(&w, &["eval", "--model", "tf", "--classifier", "clf", "--per-class", "2", "--steps", "2", "--data", d, "--json", "e.json"]);
    // No class was asked for, so there is no recognition rate; the spread over digits replaces it.
    assert!(out.contains("classified as") && !out.contains("recognised"), "{out}");
    assert!(out.contains("no guidance (no class)"), "{out}");
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(w.join("e.json")).unwrap()).unwrap();
    assert!(e["accuracy"].is_null() && e["per_digit_accuracy"].is_null(), "{e}");
    let share: Vec<f64> = e["classified_share"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(share.len(), 10);
    assert!((share.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{share:?}");
}
