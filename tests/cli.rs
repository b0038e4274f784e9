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
    usage_error(&dp(&w, &["train", "class-flow", "--out", "x", "--data", d, "--lr=0"]), &["--lr=0"], "must be a positive finite number");
    // The denoiser's default batch 256 hits burn 0.22's GPU reduction bug: refused up front.
    let big = ["--device", "wgpu", "train", "denoiser", "--out", "x", "--data", d];
    fails(&w, &big, "a pass of 256 images is too large for --device wgpu");
    fails(&w, &big, "--micro-batch 64");
    fails(&w, &[&big[..], &["--micro-batch", "128"]].concat(), "a pass of 128 images");
    usage_error(&dp(&w, &[&["train", "denoiser", "--out", "x", "--data", d], &["--micro-batch", "0"][..]].concat()), &["--micro-batch", "0"], "must be at least 1");
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

/// Every count and size on the command line has an upper bound checked before anything is
/// allocated, and every rate, tolerance and scale must be a finite number in its range: usage
/// errors (exit 2) naming the flag, never an abort or a NaN run.
#[test]
fn numbers_on_the_command_line_are_bounded() {
    let w = tmp("cli-bounds");
    let cases: &[(&[&str], &str)] = &[
        (&["sample", "--per-digit", "1000000000"], "'1000000000' for '--per-digit <PER_DIGIT>': 1000000000 is more than the 100"),
        (&["eval", "--per-class", "100000000000000"], "--per-class"),
        (&["eval", "--batch", "100000"], "--batch"),
        (&["sample", "--steps", "100000000"], "--steps"),
        (&["sample", "--guidance", "1e9"], "must be in [0, 100]"),
        (&["sample", "--guidance=-3"], "must be in [0, 100]"),
        (&["train", "class-flow", "--out", "x", "--hidden", "100000"], "--hidden"),
        (&["train", "class-flow", "--out", "x", "--batch", "0"], "--batch"),
        (&["train", "class-flow", "--out", "x", "--epochs", "100000000"], "--epochs"),
        (&["train", "class-flow", "--out", "x", "--lr", "nan"], "--lr"),
        (&["train", "class-flow", "--out", "x", "--lr=-1"], "must be a positive finite number"),
        (&["train", "denoiser", "--out", "x", "--sigma", "nan"], "--sigma"),
        (&["train", "denoiser", "--out", "x", "--sigma=-0.5"], "must not be negative"),
        (&["train", "class-flow", "--out", "x", "--adam-eps", "nan"], "--adam-eps"),
        (&["train", "class-flow", "--out", "x", "--adam-eps", "0"], "--adam-eps"),
        (&["train", "class-flow", "--out", "x", "--grad-clip=-1"], "--grad-clip"),
        (&["train", "class-flow", "--out", "x", "--weight-decay=-0.1"], "--weight-decay"),
        (&["train", "class-flow", "--out", "x", "--weight-decay", "inf"], "--weight-decay"),
        (&["train", "class-flow", "--out", "x", "--p-uncond", "1.5"], "--p-uncond"),
        (&["train", "class-flow", "--out", "x", "--checkpoint-minutes", "nan"], "--checkpoint-minutes"),
        (&["train-classifier", "--batch", "0"], "--batch"),
        (&["train-classifier", "--lr", "nan"], "--lr"),
        (&["bench", "--hidden", "100000"], "--hidden"),
        (&["bench", "--seconds", "1e300"], "more than an hour"),
        (&["bench", "--rounds", "4000000000"], "--rounds"),
        (&["if", "--n", "100000000", "sample"], "--n"),
        (&["if", "sample", "--n", "100000000"], "--n"),
        (&["if", "--scale", "100000", "prompts"], "--scale"),
        (&["if", "--scale", "268435457", "prompts"], "--scale"),
        (&["if", "--stride", "100000", "prompts"], "--stride"),
        (&["if", "--guidance", "1e30", "prompts"], "--guidance"),
        (&["if", "hybrid", "--low", "a", "--high", "b", "--kernel", "34"], "must be odd"),
        (&["if", "hybrid", "--low", "a", "--high", "b", "--kernel", "100001"], "--kernel"),
        (&["bench-if", "--batch", "100000"], "--batch"),
    ];
    for (args, needle) in cases {
        usage_error(&dp(&w, args), args, needle);
    }
}

/// A manifest names files; a name that is not a plain file in pkg/ is refused before anything is
/// opened (nothing of the outside file, not even its size, reaches the message), and `dp package`
/// writes only inside --pkg.
#[test]
fn manifests_and_package_names_stay_inside_their_folder() {
    let (w, d) = workspace("cli-paths", 32);
    let d = d.as_str();
    ok(&w, &["train", "time-flow", "--out", "run", "--data", d, "--hidden", "4", "--batch", "8", "--epochs", "1"]);
    // The page's hints are set by flags and kept when the model is packaged again without them.
    ok(&w, &["package", "time_flow", "--from", "run", "--pkg", "pkg", "--page-label", "time only", "--page-at-start"]);
    ok(&w, &["package", "time_flow", "--from", "run", "--pkg", "pkg"]);
    let manifest = std::fs::read_to_string(w.join("pkg/manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!((&v["format"], &v["version"]), (&serde_json::json!("diffusion-playground"), &serde_json::json!(2)));
    assert_eq!(v["models"][0]["page"], serde_json::json!({"label": "time only", "at_start": true}), "{manifest}");
    std::fs::write(w.join("secret.bpk"), b"outside the package folder").unwrap();
    let entry = |file: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        v["models"][0]["files"][0]["file"] = serde_json::json!(file);
        std::fs::write(w.join("pkg/manifest.json"), v.to_string()).unwrap();
    };
    for name in ["../secret.bpk", "/etc/passwd", "sub/../../secret.bpk"] {
        entry(name);
        let o = dp(&w, &["sample", "--model", "pkg:time_flow", "--steps", "1", "--per-digit", "1", "--out", "s.png"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("plain files") && !err.contains("26 bytes"), "{name}: {err}");
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", w.join("pkg/zero.bpk")).unwrap();
        entry("zero.bpk");
        fails(&w, &["sample", "--model", "pkg:time_flow", "--steps", "1", "--out", "s.png"], "refused");
    }
    entry("time_flow.bpk");
    // A hidden width out of range in a manifest entry is refused when the manifest is read.
    let mut v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    v["models"][0]["hidden"] = serde_json::json!(0);
    std::fs::write(w.join("pkg/manifest.json"), v.to_string()).unwrap();
    fails(&w, &["sample", "--model", "pkg:time_flow", "--steps", "1", "--out", "s.png"], "hidden 0");
    std::fs::write(w.join("pkg/manifest.json"), &manifest).unwrap();
    // A time-only entry whose file holds a class-conditioned model: refused, not run silently.
    ok(&w, &["train", "class-flow", "--out", "cf", "--data", d, "--hidden", "4", "--batch", "8", "--epochs", "1"]);
    std::fs::copy(w.join("cf/model.bpk"), w.join("cf.bpk")).unwrap();
    let bytes = std::fs::read(w.join("cf/model.bpk")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    v["models"][0]["files"][0] = serde_json::json!({"file": "cf.bpk", "bytes": bytes.len(), "sha256": diffusion_playground::artifact::sha256_hex(&bytes)});
    std::fs::copy(w.join("cf/model.bpk"), w.join("pkg/cf.bpk")).unwrap();
    std::fs::write(w.join("pkg/manifest.json"), v.to_string()).unwrap();
    fails(&w, &["sample", "--model", "pkg:time_flow", "--steps", "1", "--out", "s.png"], "another architecture or conditioning");
    // `dp package` names: one plain name, written inside --pkg.
    for name in ["../../escaped", "/tmp/abs", "a/b", ".."] {
        fails(&w, &["package", name, "--from", "run", "--pkg", "pkg"], "is not a model name");
    }
    assert!(!w.join("escaped.bpk").exists() && !w.parent().unwrap().join("escaped.bpk").exists());
    // A run config with a width of 0 (hand-edited): a clear error, not a panic.
    let cfg = w.join("run/config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    c["hidden"] = serde_json::json!(0);
    std::fs::write(&cfg, c.to_string()).unwrap();
    fails(&w, &["sample", "--model", "run", "--steps", "1", "--out", "s.png"], "not a usable training config");
}

/// Data sets smaller than a command needs are a message, not a slice panic; a classifier on an
/// empty test set writes no NaN.
#[test]
fn small_data_sets_are_a_clear_error() {
    let (w, d) = workspace("cli-small", 3);
    let d = d.as_str();
    fails(&w, &["figures", "noising", "--data", d, "--out", "n.png"], "needs at least 5 images");
    ok(&w, &["train", "pure-noise", "--out", "dn", "--data", d, "--hidden", "4", "--batch", "2", "--epochs", "1"]);
    fails(&w, &["figures", "ood", "--model", "dn", "--data", d, "--out", "o.png"], "needs at least 4 images");
    let empty = w.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    common::write_data(&empty, 0);
    fails(&w, &["train-classifier", "--out", "clf", "--data", empty.to_str().unwrap()], "needs at least 1 images");
    assert!(!w.join("clf/accuracy.json").exists());
}

/// A loss history with inf, NaN or non-positive values is drawn (or skipped) quickly.
#[test]
fn figures_loss_on_unplottable_values_ends() {
    let w = tmp("cli-loss");
    std::fs::create_dir_all(w.join("r")).unwrap();
    std::fs::write(w.join("r/loss.csv"), "step,epoch,loss\n1,1,inf\n2,1,NaN\n3,1,0\n4,1,-1\n").unwrap();
    let t = std::time::Instant::now();
    ok(&w, &["figures", "loss", "r"]);
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
}

/// Checkpoints: a flipped bit is refused on resume; a checkpoint of another data set, or whose
/// counters do not fit the run, is refused; a run killed after its last checkpoint but before
/// its figures writes them on resume; SIGTERM saves like Ctrl-C.
#[test]
fn checkpoints_are_checked_and_runs_finish_whole() {
    let (w, d) = workspace("cli-ckpt", 48);
    let d = d.as_str();
    let tiny = ["--data", d, "--hidden", "4", "--batch", "8", "--epochs", "1"];
    ok(&w, &[&["train", "class-flow", "--out", "run"][..], &tiny].concat());
    // Killed between the checkpoint and the figures: resume writes what is missing.
    for f in ["run/samples_epoch1.png", "run/model.bpk"] {
        std::fs::remove_file(w.join(f)).unwrap();
    }
    let out = ok(&w, &[&["train", "class-flow", "--out", "run", "--resume"][..], &tiny].concat());
    assert!(out.contains("finished all 1 epochs"), "{out}");
    assert!(w.join("run/samples_epoch1.png").exists() && w.join("run/model.bpk").exists());
    // Another data set under the same run: refused.
    let other = w.join("other");
    std::fs::create_dir_all(&other).unwrap();
    common::write_data(&other, 40);
    fails(&w, &["train", "class-flow", "--out", "run", "--resume", "--data", other.to_str().unwrap(), "--hidden", "4", "--batch", "8", "--epochs", "1"], "another data set");
    // Fewer epochs than the checkpoint has done: its counters do not fit.
    ok(&w, &[&["train", "class-flow", "--out", "run2", "--data", d, "--hidden", "4", "--batch", "8", "--epochs", "2"][..]].concat());
    fails(&w, &["train", "class-flow", "--out", "run2", "--resume", "--data", d, "--hidden", "4", "--batch", "8", "--epochs", "1", "--gamma", "0.31622776601683794"], "beyond the run's 1 epochs");
    // One flipped bit in the checkpoint.
    let ck = w.join("run/checkpoint.ckpt");
    let mut bytes = std::fs::read(&ck).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&ck, &bytes).unwrap();
    fails(&w, &[&["train", "class-flow", "--out", "run", "--resume"][..], &tiny].concat(), "checksum mismatch");
    // SIGTERM while training: saved, exit 130, and --resume continues to the end.
    #[cfg(unix)]
    {
        let long = ["--data", d, "--hidden", "4", "--batch", "1", "--epochs", "50"];
        let child = Command::new(env!("CARGO_BIN_EXE_dp")).current_dir(&w).args([&["train", "class-flow", "--out", "term"][..], &long].concat()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let t = std::time::Instant::now();
        while !w.join("term/config.json").exists() && t.elapsed().as_secs() < 120 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{err}");
        assert!(err.contains("progress saved") && w.join("term/checkpoint.ckpt").exists(), "{err}");
        let leftovers: Vec<_> = std::fs::read_dir(w.join("term")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).filter(|n| n.ends_with(".tmp")).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// The classifier trainer checkpoints too: SIGTERM saves it, and --resume finishes the run.
#[cfg(unix)]
#[test]
fn a_stopped_classifier_run_resumes() {
    let (w, d) = workspace("cli-clf-resume", 64);
    let d = d.as_str();
    let args = ["train-classifier", "--out", "clf", "--data", d, "--epochs", "200", "--batch", "1"];
    let child = Command::new(env!("CARGO_BIN_EXE_dp")).current_dir(&w).args(args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while !w.join("clf/epoch_1.bpk").exists() && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(w.join("clf/checkpoint.ckpt").exists(), "{err}");
    fails(&w, &args, "--resume");
    let out = ok(&w, &["train-classifier", "--out", "clf", "--data", d, "--epochs", "5", "--batch", "1", "--resume"]);
    assert!(out.contains("test accuracy"), "{out}");
}
