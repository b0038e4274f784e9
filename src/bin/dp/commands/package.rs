//! `dp package`: a trained model into pkg/ and its entry in pkg/manifest.json.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use clap::Args;
use diffusion_playground::artifact::Dtype;
use diffusion_playground::image_ops::write_atomic;
use diffusion_playground::artifact::manifest::{Kind, PageHints, StoredFile};
use diffusion_playground::mnist::package::{self, Entry, Manifest};
use diffusion_playground::mnist::train;
use diffusion_playground::{Error, Result};

use crate::args::choice_of;
use crate::models;

#[derive(Args)]
pub(super) struct PackageArgs {
    /// Name in the manifest (class_flow, time_flow, class_flow_constant, denoiser, classifier).
    name: String,
    /// Run directory (or .bpk inside one); for the classifier its run directory.
    #[arg(long)]
    from: PathBuf,
    #[arg(long)]
    epoch: Option<usize>,
    #[arg(long, default_value = "pkg")]
    pkg: PathBuf,
    /// How float tensors are stored: f16 halves the download, the page computes in f32 either way.
    #[arg(long, default_value = "f16", value_parser = choice_of(&package::FLOAT_DTYPES))]
    dtype: Dtype,
    /// Facts to record, KEY=VALUE (training command, wall time, metrics).
    #[arg(long = "note")]
    notes: Vec<String>,
    /// List the model on the page with this label (kept from the replaced entry otherwise).
    #[arg(long)]
    page_label: Option<String>,
    /// With --page-label: the page fetches the model when it starts, not at first use.
    #[arg(long, requires = "page_label")]
    page_at_start: bool,
}

pub(super) fn cmd_package(a: PackageArgs, device: &Device) -> Result<()> {
    let mut notes = std::collections::BTreeMap::new();
    for kv in &a.notes {
        let (k, v) = kv.split_once('=').ok_or_else(|| Error::Invalid(format!("--note {kv}: expected KEY=VALUE")))?;
        let val = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        notes.insert(k.to_string(), val);
    }
    let file = format!("{}.bpk", a.name);
    // The name becomes a file in --pkg and a URL of the page: one plain name, nothing else.
    if a.name.is_empty() || !a.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Error::Invalid(format!("{:?} is not a model name: use letters, digits, '_' or '-' (it becomes {}/<name>.bpk)", a.name, a.pkg.display())));
    }
    let (bytes, kind, hidden, conditioning) = if a.name.starts_with("classifier") {
        let c = models::load_classifier(&a.from.display().to_string(), device)?;
        (package::module_to_bytes_as(&c.valid(), a.dtype)?, Kind::MnistClassifier, None, None)
    } else {
        let (m, _) = models::load_unet(&a.from.display().to_string(), a.epoch, device)?;
        let cfg_path = if a.from.is_dir() { a.from.join("config.json") } else { a.from.parent().unwrap_or(Path::new(".")).join("config.json") };
        let cfg: train::TrainConfig = serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?)
            .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        notes.entry("train_config".into()).or_insert(serde_json::to_value(&cfg).unwrap());
        let c = m.conditioning();
        (package::module_to_bytes_as(&m.valid(), a.dtype)?, Kind::MnistUnet, Some(cfg.hidden), Some(c))
    };
    write_atomic(&a.pkg.join(&file), &bytes)?;
    let mpath = a.pkg.join("manifest.json");
    let mut manifest = if mpath.exists() { models::manifest(&a.pkg)? } else { Manifest::default() };
    // How the page offers the model: kept from the entry this one replaces, or set by the flags.
    let kept = manifest.get(&a.name).ok().and_then(|e| e.page.clone());
    let page = match (a.page_label, kept) {
        (Some(label), kept) => Some(PageHints { label, at_start: a.page_at_start, ..kept.unwrap_or(PageHints { label: String::new(), at_start: false, steps: None, guidance: None, solver: None }) }),
        (None, kept) => kept,
    };
    let stored = StoredFile { file: file.clone(), bytes: bytes.len() as u64, sha256: diffusion_playground::artifact::sha256_hex(&bytes) };
    manifest.upsert(Entry { name: a.name.clone(), kind, hidden, conditioning, dtype: a.dtype, files: vec![stored], page, provenance: notes });
    manifest.models.sort_by(|x, y| x.name.cmp(&y.name));
    write_atomic(&mpath, serde_json::to_string_pretty(&manifest).unwrap().as_bytes())?;
    println!("{} ({} bytes) recorded in {}", a.pkg.join(file).display(), bytes.len(), mpath.display());
    Ok(())
}
