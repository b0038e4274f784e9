//! Packages of IF UNet weights for the page: shards of at most 64 MB (a tensor larger than that
//! spans shards) and a JSON manifest naming every tensor's shape, storage type and place, with
//! each shard's sha256. Storage: f16, or per-block symmetric q8 / q4 ([`Dtype`]). Tensors that
//! are 1-D, small (< 1024 values) or not a whole number of blocks stay f16 ([`stored_as`]).
//!
//! Loading checks every shard's size and hash and every tensor's shape against the config
//! before any value is used.

use serde::{Deserialize, Serialize};

use super::config::IfConfig;
use crate::artifact::manifest::{self, Kind, StoredFile};
use crate::artifact::{Dtype, QUANT_BLOCK};
use super::unet::parameter_shapes;
use crate::{Error, Result};

pub const BLOCK: usize = QUANT_BLOCK;
pub const SHARD_MAX: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Piece {
    pub shard: usize,
    pub offset: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub pieces: Vec<Piece>,
}

/// One shard: its file name, size and sha256.
pub type ShardInfo = StoredFile;

/// An IF package: what its manifest (the shared schema's one `if-unet` entry) says.
#[derive(Clone, Debug)]
pub struct PackageManifest {
    /// f16, q8 or q4: what the large tensors are stored as (the rest f16).
    pub scheme: Dtype,
    pub block: usize,
    /// The diffusers `unet/config.json` the weights belong to.
    pub config: serde_json::Value,
    pub tensors: Vec<PackedTensor>,
    pub shards: Vec<ShardInfo>,
}

/// The package's entry in the shared manifest schema.
#[derive(Serialize, Deserialize)]
struct IfEntry {
    name: String,
    kind: Kind,
    dtype: Dtype,
    files: Vec<StoredFile>,
    block: usize,
    config: serde_json::Value,
    tensors: Vec<PackedTensor>,
}

impl manifest::Entry for IfEntry {
    fn name(&self) -> &str {
        &self.name
    }
    fn files(&self) -> &[StoredFile] {
        &self.files
    }
}

/// The schemes a package is made with.
pub const SCHEMES: [Dtype; 3] = [Dtype::F16, Dtype::Q8, Dtype::Q4];

/// How `scheme` (one of [`SCHEMES`]) stores the tensor `name` of this shape. Under q4 the first
/// and last convolutions stay q8: they are a negligible share of the parameters and, on IF-I-M
/// with random weights, take a fifth of q4's output error away (`dp bench-if --quant-error`).
pub fn stored_as(scheme: Dtype, name: &str, shape: &[usize]) -> Dtype {
    let n: usize = shape.iter().product();
    if shape.len() < 2 || n < 1024 || n % BLOCK != 0 || !scheme.is_quantized() {
        Dtype::F16
    } else if scheme == Dtype::Q4 && (name.starts_with("conv_in.") || name.starts_with("conv_out.")) {
        Dtype::Q8
    } else {
        scheme
    }
}

/// Package size in bytes for a config, without building anything (M, L, XL in README).
pub fn package_bytes(cfg: &IfConfig, scheme: Dtype) -> u64 {
    parameter_shapes(cfg).iter().map(|(k, s)| stored_as(scheme, k, s).bytes(s.iter().product()) as u64).sum()
}

/// Builds shards as tensors arrive; `flush` is called with each full shard's bytes.
pub struct PackageWriter<'a> {
    manifest: PackageManifest,
    current: Vec<u8>,
    flush: Box<dyn FnMut(&str, &[u8]) -> Result<()> + 'a>,
}

impl<'a> PackageWriter<'a> {
    pub fn new(config: serde_json::Value, scheme: Dtype, flush: impl FnMut(&str, &[u8]) -> Result<()> + 'a) -> Self {
        let manifest = PackageManifest { scheme, block: BLOCK, config, tensors: vec![], shards: vec![] };
        PackageWriter { manifest, current: Vec::new(), flush: Box::new(flush) }
    }

    pub fn add(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        self.add_as(name, shape, values, stored_as(self.manifest.scheme, name, shape))
    }

    /// As [`Self::add`], stored as `dtype` whatever the scheme says (a mixed package: tensors the
    /// output is sensitive to kept at a finer kind). A quantized kind needs whole blocks.
    pub fn add_as(&mut self, name: &str, shape: &[usize], values: &[f32], dtype: Dtype) -> Result<()> {
        if dtype.is_quantized() && values.len() % BLOCK != 0 {
            return Err(Error::Invalid(format!("tensor {name}: {} values are not whole {BLOCK}-value blocks for {dtype}", values.len())));
        }
        let mut bytes = &dtype.encode(values)[..];
        let mut pieces = Vec::new();
        while !bytes.is_empty() {
            if self.current.len() == SHARD_MAX {
                self.finish_shard()?;
            }
            let take = bytes.len().min(SHARD_MAX - self.current.len());
            pieces.push(Piece { shard: self.manifest.shards.len(), offset: self.current.len() as u64, bytes: take as u64 });
            self.current.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.manifest.tensors.push(PackedTensor { name: name.into(), shape: shape.to_vec(), dtype, pieces });
        Ok(())
    }

    fn finish_shard(&mut self) -> Result<()> {
        let file = format!("shard-{:05}.bin", self.manifest.shards.len() + 1);
        (self.flush)(&file, &self.current)?;
        self.manifest.shards.push(ShardInfo { file, bytes: self.current.len() as u64, sha256: crate::artifact::sha256_hex(&self.current) });
        self.current.clear();
        Ok(())
    }

    pub fn finish(mut self) -> Result<PackageManifest> {
        if !self.current.is_empty() {
            self.finish_shard()?;
        }
        Ok(self.manifest)
    }
}

impl PackageManifest {
    /// The manifest as the shared schema's JSON.
    pub fn to_json(&self) -> String {
        let entry = IfEntry {
            name: "unet".into(),
            kind: Kind::IfUnet,
            dtype: self.scheme,
            files: self.shards.clone(),
            block: self.block,
            config: self.config.clone(),
            tensors: self.tensors.clone(),
        };
        let m = manifest::Manifest { models: vec![entry], ..Default::default() };
        serde_json::to_string_pretty(&m).expect("a manifest serialises")
    }

    pub fn parse(json: &str, source: &str) -> Result<(Self, IfConfig)> {
        let mut file = manifest::Manifest::<IfEntry>::parse(json, source).map_err(|e| match e {
            Error::Format { path, message } => Error::Format { path, message: format!("{message} (not a package manifest)") },
            e => e,
        })?;
        let e = match (file.models.pop(), file.models.is_empty()) {
            (Some(e), true) if e.kind == Kind::IfUnet => e,
            _ => return Err(Error::format(source, "a package manifest holds exactly one if-unet entry")),
        };
        let m = PackageManifest { scheme: e.dtype, block: e.block, config: e.config, tensors: e.tensors, shards: e.files };
        if m.block != BLOCK {
            return Err(Error::format(source, format!("block {} is not this format's {BLOCK}", m.block)));
        }
        if !SCHEMES.contains(&m.scheme) {
            return Err(Error::format(source, format!("scheme {} is not one a package is made with (f16, q8 or q4)", m.scheme)));
        }
        let cfg = IfConfig::from_json(&m.config.to_string(), &format!("{source} (config)"))?;
        // Every tensor the config needs, with its shape, and nothing else.
        let want: std::collections::BTreeMap<String, Vec<usize>> = parameter_shapes(&cfg).into_iter().collect();
        let have: std::collections::BTreeMap<&str, &PackedTensor> = m.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        for (k, s) in &want {
            match have.get(k.as_str()) {
                None => return Err(Error::format(source, format!("has no tensor {k}"))),
                Some(t) if &t.shape != s => return Err(Error::format(source, format!("tensor {k} has shape {:?}, the config needs {s:?}", t.shape))),
                _ => {}
            }
        }
        if let Some(t) = m.tensors.iter().find(|t| !want.contains_key(&t.name)) {
            return Err(Error::format(source, format!("has an unexpected tensor {}", t.name)));
        }
        for t in &m.tensors {
            // The shape equals the config's (checked above), so its product is a sane size.
            let n: usize = t.shape.iter().product();
            if t.dtype.is_quantized() && n % BLOCK != 0 {
                return Err(Error::format(source, format!("tensor {} is stored {} but its {n} values are not a whole number of {BLOCK}-value blocks", t.name, t.dtype)));
            }
            let inside = |p: &Piece| p.shard < m.shards.len() && p.offset.checked_add(p.bytes).is_some_and(|end| end <= m.shards[p.shard].bytes);
            let total = t.pieces.iter().try_fold(0u64, |acc, p| acc.checked_add(p.bytes));
            if total != Some(t.dtype.bytes(n) as u64) || !t.pieces.iter().all(inside) {
                return Err(Error::format(source, format!("tensor {} points outside its shards or has the wrong size", t.name)));
            }
        }
        Ok((m, cfg))
    }

    /// Checks one shard's bytes against the manifest (size, then sha256).
    pub fn verify_shard(&self, index: usize, bytes: &[u8]) -> Result<()> {
        let s = self.shards.get(index).ok_or_else(|| Error::Invalid(format!("shard {index} is not in the manifest ({} shards)", self.shards.len())))?;
        s.verify(bytes)
    }

    /// Checks the shards: as many as listed, each of its size and sha256.
    pub fn verify_shards(&self, shards: &[Vec<u8>]) -> Result<()> {
        if shards.len() != self.shards.len() {
            return Err(Error::Invalid(format!("{} shards given, the manifest lists {}", shards.len(), self.shards.len())));
        }
        shards.iter().enumerate().try_for_each(|(i, b)| self.verify_shard(i, b))
    }

    /// One tensor decoded to f32 from verified shards, checked for NaN and infinity.
    pub fn tensor_f32(&self, t: &PackedTensor, shards: &[Vec<u8>]) -> Result<Vec<f32>> {
        let mut bytes = Vec::new();
        for p in &t.pieces {
            bytes.extend_from_slice(&shards[p.shard][p.offset as usize..(p.offset + p.bytes) as usize]);
        }
        // A NaN block scale shows as NaN values, so this covers the scales too.
        let values = t.dtype.decode(&bytes, t.shape.iter().product()).map_err(|e| Error::format("the package", format!("tensor {}: {e}", t.name)))?;
        crate::artifact::check_finite(&t.name, &values, "the package")?;
        Ok(values)
    }

    /// Every tensor decoded to f32, from shards checked here.
    pub fn tensors_f32(&self, shards: &[Vec<u8>]) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        self.verify_shards(shards)?;
        self.tensors.iter().map(|t| Ok((t.name.clone(), t.shape.clone(), self.tensor_f32(t, shards)?))).collect()
    }

    /// The bytes of the largest tensor once on a device computing in `compute` (what one GPU
    /// buffer must hold).
    pub fn largest_tensor_bytes(&self, compute: Dtype) -> u64 {
        self.tensors.iter().map(|t| compute.bytes(t.shape.iter().product()) as u64).max().unwrap_or(0)
    }

    /// The package's total size (what a download fetches).
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }

    /// The model's parameter count.
    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizers_round_trip_within_their_step() {
        let mut rng = crate::rng::Rng::new(1);
        let v = rng.normal_vec(4096);
        for (d, qmax) in [(Dtype::Q8, 127.0), (Dtype::Q4, 7.0)] {
            let back = d.decode(&d.encode(&v), v.len()).unwrap();
            for (b, (x, y)) in v.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = x.iter().zip(y).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
                assert!(err <= m / qmax * 0.5 * 1.01 + 1e-6, "{d:?} block {b}: error {err} for max {m}");
            }
        }
        let f = Dtype::F16.decode(&Dtype::F16.encode(&v), v.len()).unwrap();
        assert!(v.iter().zip(&f).all(|(a, b)| (a - b).abs() <= a.abs() * 1e-3 + 1e-7));
        assert!(Dtype::Q8.decode(&[0u8; 3], 4096).is_err());
    }

    #[test]
    fn big_tensors_span_shards() {
        let mut shards: Vec<Vec<u8>> = Vec::new();
        let mut w = PackageWriter::new(serde_json::json!({}), Dtype::F16, |_, b: &[u8]| {
            shards.push(b.to_vec());
            Ok(())
        });
        let big = vec![0.5f32; SHARD_MAX / 2 + 10]; // f16: just over one shard
        w.add("big", &[big.len()], &big).unwrap();
        let m = w.finish().unwrap();
        assert_eq!(m.shards.len(), 2);
        assert_eq!(m.tensors[0].pieces.len(), 2);
        assert!(m.shards.iter().all(|s| s.bytes as usize <= SHARD_MAX));
    }
}
