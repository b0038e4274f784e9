//! The packaged model files the page and the CLI load: burnpack bytes (`.bpk`) described by a
//! `manifest.json` (name, kind, architecture, size, sha256, how it was trained, what it scored).
//! Loading checks size and hash before parsing, and parsing errors become messages naming the
//! file, so a truncated or foreign file never panics.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::classifier::Classifier;
use super::unet::{Conditioning, UNet, UNetConfig};
use crate::{Error, Result};

/// What a packaged model is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A UNet (denoiser or flow; its conditioning says which).
    Unet,
    /// The digit classifier.
    Classifier,
}

/// One model in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub kind: ModelKind,
    /// UNet width D (UNets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditioning: Option<Conditioning>,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    /// Free-form facts: training command, device, wall time, metrics.
    #[serde(default)]
    pub notes: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub models: Vec<Entry>,
}

impl Manifest {
    pub fn parse(json: &str, source: &str) -> Result<Self> {
        let m: Manifest = serde_json::from_str(json).map_err(|e| Error::format(source, format!("not a valid manifest: {e}")))?;
        if m.format != 1 {
            return Err(Error::format(source, format!("manifest format {} is not supported (expected 1)", m.format)));
        }
        Ok(m)
    }

    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.models.iter().find(|e| e.name == name).ok_or_else(|| {
            let names: Vec<_> = self.models.iter().map(|e| e.name.as_str()).collect();
            Error::Invalid(format!("no model '{name}' in the manifest (it has: {})", names.join(", ")))
        })
    }

    /// Adds or replaces an entry of the same name.
    pub fn upsert(&mut self, entry: Entry) {
        self.format = 1;
        self.models.retain(|e| e.name != entry.name);
        self.models.push(entry);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Entry {
    /// Checks that `bytes` are this entry's file, whole and unaltered.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != self.bytes {
            return Err(Error::format(
                &self.file,
                format!("is {} bytes, the manifest says {} (truncated or wrong file: download it again)", bytes.len(), self.bytes),
            ));
        }
        let h = sha256_hex(bytes);
        if h != self.sha256 {
            return Err(Error::format(&self.file, format!("sha256 {h} does not match the manifest's {} (corrupt or replaced file)", self.sha256)));
        }
        Ok(())
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        match (self.kind, self.hidden, self.conditioning) {
            (ModelKind::Unet, Some(h), Some(c)) => Ok(UNetConfig::new(h).with_conditioning(c)),
            _ => Err(Error::format(&self.file, format!("manifest entry '{}' is not a UNet with hidden and conditioning", self.name))),
        }
    }
}

/// Serialises a module's parameters (and BatchNorm running statistics) to burnpack bytes.
pub fn module_to_bytes<M: Module>(module: M) -> Result<Vec<u8>> {
    let bytes = module.into_record().into_bytes().map_err(|e| Error::Invalid(format!("could not serialise the model: {e}")))?;
    Ok(bytes.to_vec())
}

/// Loads burnpack bytes into `module`, checking every tensor's presence and shape.
pub fn load_module_bytes<M: Module>(module: M, bytes: &[u8], source: &str) -> Result<M> {
    // burnpack starts with a fixed magic; reject other files before parsing them.
    if bytes.len() < 8 {
        return Err(Error::format(source, format!("is only {} bytes: not a model file", bytes.len())));
    }
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| Error::format(source, format!("not a readable burnpack model file ({e})")))?;
    module.try_load_record(record).map_err(|e| Error::format(source, format!("does not fit this model ({})", abridge(&e.to_string(), 600))))
}

/// The first `max` characters of a long message (burn lists every mismatching tensor).
fn abridge(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{} ... [{} more characters]", &s[..i], s.len() - i),
        None => s.to_string(),
    }
}

pub fn unet_from_bytes(config: &UNetConfig, bytes: &[u8], source: &str, device: &Device) -> Result<UNet> {
    load_module_bytes(config.init(device), bytes, source)
}

pub fn classifier_from_bytes(bytes: &[u8], source: &str, device: &Device) -> Result<Classifier> {
    load_module_bytes(Classifier::new(device), bytes, source)
}
