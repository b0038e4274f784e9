//! Finding and loading model files named on the command line.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use diffusion_playground::mnist::classifier::Classifier;
use diffusion_playground::mnist::package::{self, parse_manifest, Entry, Manifest};
use diffusion_playground::mnist::train::TrainConfig;
use diffusion_playground::mnist::unet::{UNet, UNetConfig};
use diffusion_playground::{Error, Result};

pub const PKG_DIR: &str = "pkg";

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

pub fn manifest(pkg: &Path) -> Result<Manifest> {
    let p = pkg.join("manifest.json");
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    parse_manifest(&s, &p.display().to_string())
}

/// The manifest entry `name` of `pkg/`, with its file's bytes (size and sha256 checked) and path.
fn pkg_file(name: &str) -> Result<(Entry, Vec<u8>, String)> {
    let m = manifest(Path::new(PKG_DIR))?;
    let entry = m.get(name)?.clone();
    let path = Path::new(PKG_DIR).join(&entry.file().file);
    let bytes = entry.file().read_in(Path::new(PKG_DIR), "pkg/manifest.json")?;
    Ok((entry, bytes, path.display().to_string()))
}

/// A UNet named by a run directory (its `model.bpk`, or `epoch_N.bpk` with `epoch`), a `.bpk`
/// file inside a run directory, or `pkg:NAME` for an entry of `pkg/manifest.json`.
pub fn load_unet(spec: &str, epoch: Option<usize>, device: &Device) -> Result<(UNet, String)> {
    if let Some(name) = spec.strip_prefix("pkg:") {
        let (entry, bytes, path) = pkg_file(name)?;
        let model = package::unet_from_bytes(&entry.unet_config()?, &bytes, &path, device)?;
        return Ok((model, path));
    }
    let p = PathBuf::from(spec);
    if !p.exists() {
        return Err(Error::io(&p, "no such run directory or model file: give a run directory (config.json with model.bpk or epoch_N.bpk), a .bpk file inside one, or pkg:NAME for a model in pkg/manifest.json"));
    }
    let (dir, file) = if p.is_dir() {
        let file = match epoch {
            Some(e) => p.join(format!("epoch_{e}.bpk")),
            None if p.join("model.bpk").exists() => p.join("model.bpk"),
            None => latest_snapshot(&p)?,
        };
        (p.clone(), file)
    } else {
        (p.parent().unwrap_or(Path::new(".")).to_path_buf(), p.clone())
    };
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::io(&cfg_path, format!("not found: {} is read with the training config.json of its run directory (`dp train` writes it); for a model in pkg/ use pkg:NAME", file.display())));
    }
    let cfg: TrainConfig = serde_json::from_slice(&read(&cfg_path)?)
        .map_err(|e| Error::format(&cfg_path, format!("not a training config: {e}")))?;
    cfg.validate().map_err(|e| Error::format(&cfg_path, format!("not a usable training config: {e}")))?;
    let model = load_unet_file(&cfg.unet(), &file, device)?;
    Ok((model, file.display().to_string()))
}

pub fn load_unet_file(cfg: &UNetConfig, file: &Path, device: &Device) -> Result<UNet> {
    package::unet_from_bytes(cfg, &read(file)?, &file.display().to_string(), device)
}

fn latest_snapshot(dir: &Path) -> Result<PathBuf> {
    let mut best = None;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("epoch_").and_then(|s| s.strip_suffix(".bpk")).and_then(|s| s.parse::<usize>().ok())
            && best.as_ref().is_none_or(|(b, _)| n > *b)
        {
            best = Some((n, entry.path()));
        }
    }
    best.map(|(_, p)| p).ok_or_else(|| Error::io(dir, "no model.bpk or epoch_N.bpk here: train first"))
}

/// The classifier: a `.bpk` file or `pkg:NAME`.
pub fn load_classifier(spec: &str, device: &Device) -> Result<Classifier> {
    if let Some(name) = spec.strip_prefix("pkg:") {
        let (_, bytes, path) = pkg_file(name)?;
        return package::classifier_from_bytes(&bytes, &path, device);
    }
    let p = PathBuf::from(spec);
    let file = if p.is_dir() { p.join("model.bpk") } else { p };
    package::classifier_from_bytes(&read(&file)?, &file.display().to_string(), device)
}
