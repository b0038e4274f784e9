//! Reading a diffusers `unet/` folder: `config.json` plus `diffusion_pytorch_model.safetensors`
//! (one file, or shards with their `.index.json`), f32, f16 or bf16.
//!
//! Every file is checked before any tensor is loaded: the safetensors header must parse and its
//! tensors must fit inside the file (a truncated download is caught here), every key the config
//! implies must be present with its PyTorch shape, and no unknown key may be left over. Only then
//! does burn-store copy the tensors in (Linear weights transposed, norms renamed, floats widened
//! to f32).

use std::collections::{BTreeMap, BTreeSet};

use burn::prelude::*;
use burn::store::{FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::DType;

use super::config::IfConfig;
use super::unet::{parameter_shapes, IfUNet};
use crate::artifact::safetensors::{self, read_header, TensorInfo};
#[cfg(not(target_arch = "wasm32"))]
use crate::artifact::safetensors::read_header_file;
use crate::{Error, Result};

/// Every tensor of a safetensors file checked for NaN and infinity, read one at a time.
#[cfg(not(target_arch = "wasm32"))]
fn check_finite_file(path: &std::path::Path) -> Result<()> {
    let header = read_header_file(path)?;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    for (name, info) in &header.tensors {
        let values = safetensors::read_tensor(&mut f, &header, info, path, name)?;
        crate::artifact::check_finite(name, &values, &path.display().to_string())?;
    }
    Ok(())
}

/// The weight files of a diffusers `unet/` folder, in load order.
#[cfg(not(target_arch = "wasm32"))]
pub fn weight_files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    for variant in ["", ".fp16"] {
        let name = format!("diffusion_pytorch_model{variant}.safetensors");
        if dir.join(&name).exists() {
            return Ok(vec![crate::artifact::path_in_download(dir, &name, &dir.display().to_string())?]);
        }
        let index = dir.join(format!("diffusion_pytorch_model{variant}.safetensors.index.json"));
        if index.is_file() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let idx: Index = serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("not a safetensors index ({e})")))?;
            let files: BTreeSet<&String> = idx.weight_map.values().collect();
            let mut out = Vec::new();
            for f in files {
                crate::artifact::check_file_name(f, &index.display().to_string())?;
                if !dir.join(f).exists() {
                    return Err(Error::format(&index, format!("lists shard {f}, which is missing from {}", dir.display())));
                }
                out.push(crate::artifact::path_in_download(dir, f, &index.display().to_string())?);
            }
            return Ok(out);
        }
    }
    Err(Error::io(dir, "no diffusion_pytorch_model.safetensors (or sharded .index.json, or .fp16 variant) here: point at the `unet` folder of a diffusers IF stage-1 download"))
}

/// Compares the stored tensors with what `cfg` needs; every problem is listed, by key.
pub fn check_keys(cfg: &IfConfig, stored: &BTreeMap<String, (TensorInfo, String)>) -> Result<()> {
    let expected: BTreeMap<String, Vec<usize>> = parameter_shapes(cfg).into_iter().collect();
    let (mut missing, mut shapes, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    for (k, shape) in &expected {
        match stored.get(k) {
            None => missing.push(format!("missing {k} {shape:?}")),
            Some((info, file)) if &info.shape != shape => shapes.push(format!("{k} in {file} has shape {:?}, the config needs {shape:?}", info.shape)),
            _ => {}
        }
    }
    for (k, (_, file)) in stored {
        if !expected.contains_key(k) {
            extra.push(format!("unexpected key {k} in {file}"));
        }
    }
    let n = missing.len() + shapes.len() + extra.len();
    if n == 0 {
        return Ok(());
    }
    // A few of each kind, so one long list does not hide the others.
    let mut lines = Vec::new();
    for (what, list) in [("missing", &missing), ("wrong shape", &shapes), ("unexpected", &extra)] {
        if !list.is_empty() {
            lines.extend(list.iter().take(5).cloned());
            if list.len() > 5 {
                lines.push(format!("... and {} more {what}", list.len() - 5));
            }
        }
    }
    Err(Error::Invalid(format!(
        "the weights do not match config.json ({} missing, {} of the wrong shape, {} unexpected; does config.json belong to these weights?):\n  {}",
        missing.len(),
        shapes.len(),
        extra.len(),
        lines.join("\n  ")
    )))
}

/// Stored f16/bf16/f32 tensors become the device's float type: f32 unless the caller configured
/// the device for f16 compute (`Device::configure`).
fn adapter(device: &Device) -> impl ModuleAdapter + 'static {
    PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::from(device.settings().float_dtype)))
}

fn apply<S: burn::store::ModuleStore>(model: &mut IfUNet, store: &mut S, source: &str, applied: &mut BTreeSet<String>) -> Result<()>
where
    S::Error: std::fmt::Display,
{
    let r = model.load_from(store).map_err(|e| Error::format(source, format!("could not load ({e})")))?;
    if !r.errors.is_empty() {
        let msgs: Vec<String> = r.errors.iter().take(8).map(|e| e.to_string()).collect();
        return Err(Error::format(source, format!("tensors do not fit the model: {}", msgs.join("; "))));
    }
    applied.extend(r.applied);
    Ok(())
}

/// Loads a diffusers `unet/` folder (config.json + weights) onto `device`.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_unet_dir(dir: &std::path::Path, device: &Device) -> Result<IfUNet> {
    let cfg_path = dir.join("config.json");
    let json = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, format!("{e} (point at the `unet` folder of a diffusers IF stage-1 download)")))?;
    let cfg = IfConfig::from_json(&json, &cfg_path.display().to_string())?;
    let files = weight_files(dir)?;
    let mut stored = BTreeMap::new();
    for f in &files {
        for (k, info) in read_header_file(f)?.tensors {
            stored.insert(k, (info, f.file_name().unwrap().to_string_lossy().to_string()));
        }
    }
    check_keys(&cfg, &stored)?;
    for f in &files {
        check_finite_file(f)?;
    }
    let mut model = cfg.init(device);
    let mut applied = BTreeSet::new();
    for f in &files {
        let mut store = SafetensorsStore::from_file(f).with_from_adapter(adapter(device)).allow_partial(true);
        apply(&mut model, &mut store, &f.display().to_string(), &mut applied)?;
    }
    finish(model, &applied, &dir.display().to_string())
}

/// Loads weights held in memory (the page): `config_json` and the safetensors files' bytes.
pub fn load_unet_bytes(config_json: &str, files: Vec<(String, Vec<u8>)>, device: &Device) -> Result<IfUNet> {
    let cfg = IfConfig::from_json(config_json, "config.json")?;
    let mut stored = BTreeMap::new();
    for (name, bytes) in &files {
        let header = read_header(bytes, bytes.len() as u64, name)?;
        for (k, info) in &header.tensors {
            let values = info.dtype.decode(&bytes[header.range(info)], info.len()).map_err(|e| Error::format(name, format!("tensor {k}: {e}")))?;
            crate::artifact::check_finite(k, &values, name)?;
        }
        stored.extend(header.tensors.into_iter().map(|(k, info)| (k, (info, name.clone()))));
    }
    check_keys(&cfg, &stored)?;
    let mut model = cfg.init(device);
    let mut applied = BTreeSet::new();
    for (name, bytes) in files {
        let mut store = SafetensorsStore::from_bytes(Some(bytes)).with_from_adapter(adapter(device)).allow_partial(true);
        apply(&mut model, &mut store, &name, &mut applied)?;
    }
    finish(model, &applied, "weights")
}

fn finish(model: IfUNet, applied: &BTreeSet<String>, source: &str) -> Result<IfUNet> {
    let missing: Vec<String> = parameter_shapes(&model.config).into_iter().map(|(k, _)| k).filter(|k| !applied.contains(&burn_key(k))).take(8).collect();
    if !missing.is_empty() {
        return Err(Error::format(source, format!("these parameters were not loaded: {}", missing.join(", "))));
    }
    Ok(model)
}

/// The burn path of a diffusers key (norms call weight/bias gamma/beta).
fn burn_key(k: &str) -> String {
    let norm = ["norm1.", "norm2.", "group_norm.", "norm_cross.", "conv_norm_out."];
    if let Some(stem) = k.strip_suffix(".weight").filter(|s| norm.iter().any(|n| format!("{s}.").ends_with(n))) {
        return format!("{stem}.gamma");
    }
    if let Some(stem) = k.strip_suffix(".bias").filter(|s| norm.iter().any(|n| format!("{s}.").ends_with(n))) {
        return format!("{stem}.beta");
    }
    k.to_string()
}

/// The f32 values of a package are handed to the model in groups of about this many bytes, so
/// loading never holds the whole model in f32 beside its packed form.
const LOAD_GROUP_BYTES: usize = 64 << 20;

/// Loads a package: manifest and shards (each checked for size and sha256 first) into the model,
/// a group of tensors at a time.
pub fn load_package_bytes(manifest_json: &str, shards: &[Vec<u8>], device: &Device) -> Result<IfUNet> {
    let (m, cfg) = super::package::PackageManifest::parse(manifest_json, "manifest.json")?;
    m.verify_shards(shards)?;
    let mut model = cfg.init(device);
    let mut applied = BTreeSet::new();
    let mut group = Vec::new();
    let mut group_bytes = 0;
    for (i, t) in m.tensors.iter().enumerate() {
        let values = m.tensor_f32(t, shards)?;
        group_bytes += values.len() * 4;
        group.push((t.name.clone(), t.shape.clone(), values));
        if group_bytes >= LOAD_GROUP_BYTES || i + 1 == m.tensors.len() {
            let mut store = SafetensorsStore::from_bytes(Some(safetensors::write_f32(&group)?)).with_from_adapter(adapter(device)).allow_partial(true);
            apply(&mut model, &mut store, "the package", &mut applied)?;
            group.clear();
            group_bytes = 0;
        }
    }
    finish(model, &applied, "the package")
}

/// Loads a package folder written by [`super::convert::convert_dir`].
#[cfg(not(target_arch = "wasm32"))]
pub fn load_package_dir(dir: &std::path::Path, device: &Device) -> Result<IfUNet> {
    let mpath = dir.join("manifest.json");
    let json = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
    let (m, _) = super::package::PackageManifest::parse(&json, &mpath.display().to_string())?;
    let source = mpath.display().to_string();
    let shards = m.shards.iter().map(|s| crate::artifact::read_in(dir, &s.file, s.bytes, &source)).collect::<Result<Vec<_>>>()?;
    load_package_bytes(&json, &shards, device)
}
