//! The packaged model files the page and the CLI load: burnpack bytes (`.bpk`) described by a
//! `manifest.json` in the shared schema (name, kind, architecture, file with size and sha256,
//! how the page offers it, how it was trained and what it scored).
//! Loading checks size and hash before parsing, and parsing errors become messages naming the
//! file, so a truncated or foreign file never panics.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::prelude::*;
use burn::store::{BurnpackStore, FloatCastAdapter, ModuleSnapshot, ModuleStore};
use burn::tensor::{Bytes, DType};
use serde::{Deserialize, Serialize};

use super::classifier::Classifier;
use super::unet::{Conditioning, UNet, UNetConfig};
use crate::artifact::manifest::{self, Kind, PageHints, StoredFile};
use crate::artifact::Dtype;
use crate::{Error, Result};

/// One model of pkg/manifest.json (the shared schema, [`crate::artifact::manifest`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// `mnist-unet` or `mnist-classifier`.
    pub kind: Kind,
    /// UNet width D (UNets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditioning: Option<Conditioning>,
    /// How the file stores floats, f32 or f16 (older manifests: f32).
    #[serde(default = "f32_dtype")]
    pub dtype: Dtype,
    /// The model file (exactly one).
    pub files: Vec<StoredFile>,
    /// How the page offers the model (absent: the page does not list it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PageHints>,
    /// Facts: training command, device, wall time, metrics.
    #[serde(default)]
    pub provenance: BTreeMap<String, serde_json::Value>,
}

impl manifest::Entry for Entry {
    fn name(&self) -> &str {
        &self.name
    }
    fn files(&self) -> &[StoredFile] {
        &self.files
    }
}

/// pkg/manifest.json.
pub type Manifest = manifest::Manifest<Entry>;

/// Parses pkg/manifest.json (any version) and checks what the MNIST models need: one file each
/// of a float type a model file holds, a UNet's width and conditioning, the page's limits.
pub fn parse_manifest(json: &str, source: &str) -> Result<Manifest> {
    let m = Manifest::parse(json, source)?;
    for e in &m.models {
        if e.files.len() != 1 {
            return Err(Error::format(source, format!("entry '{}' lists {} files; an MNIST model is one file", e.name, e.files.len())));
        }
        if !FLOAT_DTYPES.contains(&e.dtype) {
            return Err(Error::format(source, format!("entry '{}' is stored as {}; model files hold f32 or f16", e.name, e.dtype)));
        }
        match e.kind {
            Kind::MnistUnet => {
                e.unet_config()?;
            }
            Kind::MnistClassifier => {}
            Kind::IfUnet => return Err(Error::format(source, format!("entry '{}' is an IF package, not an MNIST model", e.name))),
        }
        if let Some(p) = &e.page {
            p.check(&e.name, source)?;
        }
    }
    Ok(m)
}

impl Entry {
    /// The model's one file.
    pub fn file(&self) -> &StoredFile {
        &self.files[0]
    }

    /// Checks that `bytes` are this entry's file, whole and unaltered.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        self.file().verify(bytes)
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        match (self.kind, self.hidden, self.conditioning) {
            (Kind::MnistUnet, Some(h), _) if !(1..=super::unet::MAX_HIDDEN).contains(&h) => {
                Err(Error::format(&self.file().file, format!("manifest entry '{}' has hidden {h}; a UNet's width D must be 1..={}", self.name, super::unet::MAX_HIDDEN)))
            }
            (Kind::MnistUnet, Some(h), Some(c)) => Ok(UNetConfig::new(h).with_conditioning(c)),
            _ => Err(Error::format(&self.file().file, format!("manifest entry '{}' is not a UNet with hidden and conditioning", self.name))),
        }
    }
}

/// Serialises a module's parameters (and BatchNorm running statistics) to burnpack bytes.
pub fn module_to_bytes<M: Module>(module: M) -> Result<Vec<u8>> {
    let bytes = module.into_record().into_bytes().map_err(|e| Error::Invalid(format!("could not serialise the model: {e}")))?;
    Ok(bytes.to_vec())
}

/// The float types a model file may hold: f16 halves the page's download; the model still runs
/// in f32 (weights are widened on load), and the error this adds is measured in docs/.
pub const FLOAT_DTYPES: [Dtype; 2] = [Dtype::F32, Dtype::F16];

fn f32_dtype() -> Dtype {
    Dtype::F32
}

/// Serialises a module to burnpack bytes with its float tensors stored as `float`.
pub fn module_to_bytes_as<M: Module>(module: &M, float: Dtype) -> Result<Vec<u8>> {
    let dtype = match float {
        Dtype::F32 => return module_to_bytes(module.clone()),
        Dtype::F16 => DType::F16,
        other => return Err(Error::Invalid(format!("a model file stores f32 or f16, not {other}"))),
    };
    let mut store = BurnpackStore::from_bytes(None).with_to_adapter(FloatCastAdapter::to(dtype));
    module.save_into(&mut store).map_err(|e| Error::Invalid(format!("could not serialise the model: {e}")))?;
    let bytes = store.get_bytes().map_err(|e| Error::Invalid(format!("could not serialise the model: {e}")))?;
    Ok(bytes.to_vec())
}

/// Loads burnpack bytes (f32 or f16) into `module`, checking that the file holds exactly the
/// module's tensors (none missing, none left over: a class-conditioned file does not load as a
/// time-only model), each of the right shape and with finite values; floats are widened to f32
/// so the model computes in f32 whatever the file holds.
pub fn load_module_bytes<M: Module>(module: M, bytes: &[u8], source: &str) -> Result<M> {
    // burnpack starts with a fixed magic; reject other files before parsing them.
    if bytes.len() < 8 {
        return Err(Error::format(source, format!("is only {} bytes: not a model file", bytes.len())));
    }
    check_finite(bytes, source)?;
    let mut module = module;
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes.to_vec()))).with_from_adapter(FloatCastAdapter::to(DType::F32));
    let result = module.load_from(&mut store).map_err(|e| {
        let e = e.to_string();
        // burn reports shape/dtype mismatches as a validation error listing each tensor.
        let what = if e.contains("Mismatch") { "does not fit this model" } else { "not a readable burnpack model file" };
        Error::format(source, format!("{what} ({})", abridge(&e, 600)))
    })?;
    if !result.is_success() || !result.missing.is_empty() {
        return Err(Error::format(source, format!("does not fit this model ({})", abridge(&format!("{result:?}"), 600))));
    }
    if !result.unused.is_empty() {
        return Err(Error::format(
            source,
            format!("holds tensors this model does not have ({}): it was made for another architecture or conditioning", abridge(&result.unused.join(", "), 300)),
        ));
    }
    Ok(module)
}

/// Refuses a burnpack file with a NaN or infinite float, naming the tensor (such weights draw a
/// black image without any other sign of trouble).
fn check_finite(bytes: &[u8], source: &str) -> Result<()> {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes.to_vec())));
    let tensors = store.get_all_tensors().map_err(|e| Error::format(source, format!("not a readable burnpack model file ({})", abridge(&e.to_string(), 300))))?;
    for (name, t) in tensors {
        let stored = match t.dtype {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::Bf16,
            DType::F64 => Dtype::F64,
            _ => continue,
        };
        let raw = t.to_bytes().map_err(|e| Error::format(source, format!("tensor {name}: {e:?}")))?;
        crate::artifact::check_finite(name, &stored.decode_floats(&raw), source)?;
    }
    Ok(())
}

/// Whether a burnpack file holds f16 tensors (its header names each tensor's dtype).
#[cfg(test)]
fn has_f16(bytes: &[u8]) -> bool {
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes.to_vec())));
    store.get_all_tensors().map(|t| t.values().any(|t| t.dtype == DType::F16)).unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnist::unet::Conditioning;

    fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn f16_package_round_trips_within_half_precision() {
        let device = Device::flex();
        let cfg = UNetConfig::new(8).with_conditioning(Conditioning::TimeClass);
        let m = cfg.init(&device).valid();
        let f32_bytes = module_to_bytes_as(&m, Dtype::F32).unwrap();
        let f16_bytes = module_to_bytes_as(&m, Dtype::F16).unwrap();
        // Same tensors, half the float bytes (the header and ints are not halved).
        assert!(f16_bytes.len() * 10 < f32_bytes.len() * 7, "{} vs {}", f16_bytes.len(), f32_bytes.len());
        assert!(!has_f16(&f32_bytes) && has_f16(&f16_bytes));

        let a = unet_from_bytes(&cfg, &f32_bytes, "f32", &device).unwrap().valid();
        let b = unet_from_bytes(&cfg, &f16_bytes, "f16", &device).unwrap().valid();
        let x = Tensor::<4>::random([2, 1, 28, 28], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let t = Tensor::<2>::from_floats([[0.3], [0.9]], &device);
        let c = Tensor::<2>::zeros([2, 10], &device);
        let ya = a.forward(x.clone(), Some(t.clone()), Some(c.clone()));
        let yb = b.forward(x, Some(t), Some(c));
        // f16 keeps 11 significant bits: relative weight error <= 2^-11; through a few layers of
        // normalised activations the output moves by well under 1% of its scale.
        let scale: f32 = ya.clone().abs().max().into_scalar();
        let err = max_abs_diff(ya, yb);
        assert!(err <= 1e-2 * scale.max(1.0), "f16 output error {err} (scale {scale})");
        assert!(err > 0.0, "the f16 file should not be bit-identical to f32");
    }

    #[test]
    fn truncated_f16_package_is_a_clear_error() {
        let device = Device::flex();
        let cfg = UNetConfig::new(8);
        let bytes = module_to_bytes_as(&cfg.init(&device), Dtype::F16).unwrap();
        let err = unet_from_bytes(&cfg, &bytes[..bytes.len() / 2], "half.bpk", &device).err().expect("must fail");
        assert!(err.to_string().contains("half.bpk"), "{err}");
        let wrong = UNetConfig::new(16);
        let err = unet_from_bytes(&wrong, &bytes, "small.bpk", &device).err().expect("must fail");
        assert!(err.to_string().contains("does not fit") || err.to_string().contains("fitting"), "{err}");
    }
}
