//! Packages of IF UNet weights for the page: shards of at most 64 MB (a tensor larger than that
//! spans shards) and a JSON manifest naming every tensor's shape, storage type and place, with
//! each shard's sha256. Storage: f16, or per-block symmetric q8 / q4 (blocks of 32 consecutive
//! values in PyTorch order, one f16 scale each: max|x| / 127 or / 7). Tensors that are 1-D,
//! small (< 1024 values) or not a whole number of blocks stay f16.
//!
//! Loading checks every shard's size and hash and every tensor's shape against the config
//! before any value is used.

use serde::{Deserialize, Serialize};

use super::config::IfConfig;
use super::unet::parameter_shapes;
use crate::{Error, Result};

pub const BLOCK: usize = 32;
pub const SHARD_MAX: usize = 64 * 1024 * 1024;
pub const FORMAT: &str = "diffusion-playground/if-unet";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    F16,
    Q8,
    Q4,
}

crate::named!(Scheme { F16 => "f16", Q8 => "q8", Q4 => "q4" });

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stored {
    F16,
    Q8,
    Q4,
}

impl Stored {
    /// Bytes for `n` values (scales first for the quantized kinds).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            Stored::F16 => 2 * n,
            Stored::Q8 => 2 * n / BLOCK + n,
            Stored::Q4 => 2 * n / BLOCK + n.div_ceil(2),
        }
    }
}

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
    pub dtype: Stored,
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackageManifest {
    pub format: String,
    pub version: u32,
    pub scheme: Scheme,
    pub block: usize,
    /// The diffusers `unet/config.json` the weights belong to.
    pub config: serde_json::Value,
    pub tensors: Vec<PackedTensor>,
    pub shards: Vec<ShardInfo>,
}

/// How `scheme` stores a tensor of this shape.
pub fn stored_as(scheme: Scheme, shape: &[usize]) -> Stored {
    let n: usize = shape.iter().product();
    match scheme {
        _ if shape.len() < 2 || n < 1024 || n % BLOCK != 0 => Stored::F16,
        Scheme::F16 => Stored::F16,
        Scheme::Q8 => Stored::Q8,
        Scheme::Q4 => Stored::Q4,
    }
}

/// Package size in bytes for a config, without building anything (M, L, XL in README).
pub fn package_bytes(cfg: &IfConfig, scheme: Scheme) -> u64 {
    parameter_shapes(cfg).iter().map(|(_, s)| stored_as(scheme, s).bytes(s.iter().product()) as u64).sum()
}

/// Encodes values as `dtype`.
pub fn encode(values: &[f32], dtype: Stored) -> Vec<u8> {
    match dtype {
        Stored::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Stored::Q8 | Stored::Q4 => {
            let qmax = if dtype == Stored::Q8 { 127.0 } else { 7.0 };
            let mut scales = Vec::with_capacity(2 * values.len() / BLOCK);
            let mut q: Vec<i8> = Vec::with_capacity(values.len());
            for block in values.chunks(BLOCK) {
                let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                // The scale is stored in f16: quantize against the value that will be read back.
                let s = half::f16::from_f32(m / qmax);
                scales.extend(s.to_le_bytes());
                let s = s.to_f32();
                q.extend(block.iter().map(|v| if s > 0.0 { (v / s).round().clamp(-qmax, qmax) as i8 } else { 0 }));
            }
            if dtype == Stored::Q8 {
                scales.extend(q.iter().map(|v| *v as u8));
            } else {
                scales.extend(q.chunks(2).map(|p| ((p[0] + 8) as u8) | (((p.get(1).copied().unwrap_or(0) + 8) as u8) << 4)));
            }
            scales
        }
    }
}

/// Decodes `n` values stored as `dtype`.
pub fn decode(bytes: &[u8], n: usize, dtype: Stored) -> Result<Vec<f32>> {
    if bytes.len() != dtype.bytes(n) {
        return Err(Error::Invalid(format!("{} bytes for {n} {dtype:?} values (expected {})", bytes.len(), dtype.bytes(n))));
    }
    Ok(match dtype {
        Stored::F16 => crate::artifact::StoredFloat::F16.decode(bytes),
        Stored::Q8 | Stored::Q4 => {
            let nb = n / BLOCK;
            let scales = crate::artifact::StoredFloat::F16.decode(&bytes[..2 * nb]);
            let data = &bytes[2 * nb..];
            (0..n)
                .map(|i| {
                    let q = if dtype == Stored::Q8 { data[i] as i8 as f32 } else { (((data[i / 2] >> (4 * (i % 2))) & 15) as i32 - 8) as f32 };
                    q * scales[i / BLOCK]
                })
                .collect()
        }
    })
}

/// Builds shards as tensors arrive; `flush` is called with each full shard's bytes.
pub struct PackageWriter<'a> {
    manifest: PackageManifest,
    current: Vec<u8>,
    flush: Box<dyn FnMut(&str, &[u8]) -> Result<()> + 'a>,
}

impl<'a> PackageWriter<'a> {
    pub fn new(config: serde_json::Value, scheme: Scheme, flush: impl FnMut(&str, &[u8]) -> Result<()> + 'a) -> Self {
        let manifest = PackageManifest { format: FORMAT.into(), version: 1, scheme, block: BLOCK, config, tensors: vec![], shards: vec![] };
        PackageWriter { manifest, current: Vec::new(), flush: Box::new(flush) }
    }

    pub fn add(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
        let dtype = stored_as(self.manifest.scheme, shape);
        let mut bytes = &encode(values, dtype)[..];
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
    pub fn parse(json: &str, source: &str) -> Result<(Self, IfConfig)> {
        let m: PackageManifest = serde_json::from_str(json).map_err(|e| Error::format(source, format!("not a package manifest ({e})")))?;
        if m.format != FORMAT || m.version != 1 || m.block != BLOCK {
            return Err(Error::format(source, format!("format {:?} v{} (block {}) is not {FORMAT} v1 (block {BLOCK})", m.format, m.version, m.block)));
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
        for s in &m.shards {
            crate::artifact::check_file_name(&s.file, source)?;
        }
        for t in &m.tensors {
            // The shape equals the config's (checked above), so its product is a sane size.
            let n: usize = t.shape.iter().product();
            if t.dtype != Stored::F16 && n % BLOCK != 0 {
                return Err(Error::format(source, format!("tensor {} is stored {:?} but its {n} values are not a whole number of {BLOCK}-value blocks", t.name, t.dtype)));
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
        crate::artifact::verify(&s.file, bytes, s.bytes, &s.sha256)
    }

    /// Every tensor decoded to f32, from verified shards.
    pub fn tensors_f32(&self, shards: &[Vec<u8>]) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        if shards.len() != self.shards.len() {
            return Err(Error::Invalid(format!("{} shards given, the manifest lists {}", shards.len(), self.shards.len())));
        }
        for (i, b) in shards.iter().enumerate() {
            self.verify_shard(i, b)?;
        }
        self.tensors
            .iter()
            .map(|t| {
                let mut bytes = Vec::new();
                for p in &t.pieces {
                    bytes.extend_from_slice(&shards[p.shard][p.offset as usize..(p.offset + p.bytes) as usize]);
                }
                // A NaN block scale shows as NaN values, so this covers the scales too.
                let values = decode(&bytes, t.shape.iter().product(), t.dtype)?;
                crate::artifact::check_finite(&t.name, &values, "the package")?;
                Ok((t.name.clone(), t.shape.clone(), values))
            })
            .collect()
    }
}

/// f32 tensors as safetensors bytes (to load through the same checked path as a diffusers file).
pub fn to_safetensors(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape, v) in tensors {
        let n = 4 * v.len() as u64;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}));
        offset += n;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset as usize);
    out.extend((h.len() as u64).to_le_bytes());
    out.extend(h);
    for (_, _, v) in tensors {
        out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizers_round_trip_within_their_step() {
        let mut rng = crate::rng::Rng::new(1);
        let v = rng.normal_vec(4096);
        for (d, qmax) in [(Stored::Q8, 127.0), (Stored::Q4, 7.0)] {
            let back = decode(&encode(&v, d), v.len(), d).unwrap();
            for (b, (x, y)) in v.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
                let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = x.iter().zip(y).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
                assert!(err <= m / qmax * 0.5 * 1.01 + 1e-6, "{d:?} block {b}: error {err} for max {m}");
            }
        }
        let f = decode(&encode(&v, Stored::F16), v.len(), Stored::F16).unwrap();
        assert!(v.iter().zip(&f).all(|(a, b)| (a - b).abs() <= a.abs() * 1e-3 + 1e-7));
        assert!(decode(&[0u8; 3], 4096, Stored::Q8).is_err());
    }

    #[test]
    fn big_tensors_span_shards() {
        let mut shards: Vec<Vec<u8>> = Vec::new();
        let mut w = PackageWriter::new(serde_json::json!({}), Scheme::F16, |_, b: &[u8]| {
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
