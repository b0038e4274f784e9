//! How a tensor's values are stored in a file: the one list for both halves (MNIST burnpacks,
//! diffusers safetensors, IF packages) and for the float type a device computes in.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Values per block of the quantized kinds, each block with one f16 scale.
pub const QUANT_BLOCK: usize = 32;

/// A storage (or compute) type. The float kinds are little-endian IEEE values; `Q8` and `Q4` are
/// per-block symmetric quantizations ([`QUANT_BLOCK`] consecutive values in PyTorch order share
/// one f16 scale, `max|x| / 127` or `/ 7`), all scales first, then the values (Q4: two a byte,
/// low nibble first, offset by 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    F64,
    Q8,
    Q4,
}

crate::named!(Dtype { F32 => "f32", F16 => "f16", Bf16 => "bf16", F64 => "f64", Q8 => "q8", Q4 => "q4" });

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::named::Named::name(*self))
    }
}

impl Dtype {
    /// Bytes for `n` values (`n` a whole number of blocks for the quantized kinds).
    pub fn bytes(self, n: usize) -> usize {
        match self {
            Dtype::F32 => 4 * n,
            Dtype::F16 | Dtype::Bf16 => 2 * n,
            Dtype::F64 => 8 * n,
            Dtype::Q8 => 2 * n / QUANT_BLOCK + n,
            Dtype::Q4 => 2 * n / QUANT_BLOCK + n.div_ceil(2),
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Dtype::Q8 | Dtype::Q4)
    }

    /// The safetensors name of a float kind (`F32`, `F16`, `BF16`, `F64`).
    pub fn from_safetensors(d: ::safetensors::Dtype) -> Option<Self> {
        match d {
            ::safetensors::Dtype::F32 => Some(Dtype::F32),
            ::safetensors::Dtype::F16 => Some(Dtype::F16),
            ::safetensors::Dtype::BF16 => Some(Dtype::Bf16),
            ::safetensors::Dtype::F64 => Some(Dtype::F64),
            _ => None,
        }
    }

    /// `values` stored as this kind.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            Dtype::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            Dtype::F64 => values.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
            Dtype::Q8 | Dtype::Q4 => {
                let qmax = if self == Dtype::Q8 { 127.0 } else { 7.0 };
                let mut out = Vec::with_capacity(self.bytes(values.len()));
                let mut q: Vec<i8> = Vec::with_capacity(values.len());
                for block in values.chunks(QUANT_BLOCK) {
                    let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    // The scale is stored in f16: quantize against the value that will be read back.
                    let s = half::f16::from_f32(m / qmax);
                    out.extend(s.to_le_bytes());
                    let s = s.to_f32();
                    q.extend(block.iter().map(|v| if s > 0.0 { (v / s).round().clamp(-qmax, qmax) as i8 } else { 0 }));
                }
                if self == Dtype::Q8 {
                    out.extend(q.iter().map(|v| *v as u8));
                } else {
                    out.extend(q.chunks(2).map(|p| ((p[0] + 8) as u8) | (((p.get(1).copied().unwrap_or(0) + 8) as u8) << 4)));
                }
                out
            }
        }
    }

    /// `n` values stored as this kind, as f32; an error when `raw` is not exactly their size.
    pub fn decode(self, raw: &[u8], n: usize) -> Result<Vec<f32>> {
        if raw.len() != self.bytes(n) || (self.is_quantized() && n % QUANT_BLOCK != 0) {
            return Err(Error::Invalid(format!("{} bytes for {n} {self} values (expected {})", raw.len(), self.bytes(n))));
        }
        Ok(match self {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::Bf16 => raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F64 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::Q8 | Dtype::Q4 => {
                let nb = n / QUANT_BLOCK;
                let scales = Dtype::F16.decode(&raw[..2 * nb], nb)?;
                let data = &raw[2 * nb..];
                (0..n)
                    .map(|i| {
                        let q = if self == Dtype::Q8 { data[i] as i8 as f32 } else { (((data[i / 2] >> (4 * (i % 2))) & 15) as i32 - 8) as f32 };
                        q * scales[i / QUANT_BLOCK]
                    })
                    .collect()
            }
        })
    }

    /// The bytes of a float kind as f32 (however many values they hold).
    pub fn decode_floats(self, raw: &[u8]) -> Vec<f32> {
        let width = self.bytes(1).max(1);
        self.decode(&raw[..raw.len() / width * width], raw.len() / width).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_within_its_step() {
        let v: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        for (d, tol) in [(Dtype::F32, 0.0), (Dtype::F64, 1e-7), (Dtype::F16, 2e-3), (Dtype::Bf16, 2e-2), (Dtype::Q8, 3.0 / 127.0), (Dtype::Q4, 3.0 / 7.0)] {
            let raw = d.encode(&v);
            assert_eq!(raw.len(), d.bytes(v.len()), "{d}");
            let back = d.decode(&raw, v.len()).unwrap();
            let err = v.iter().zip(&back).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= tol, "{d}: {err}");
            assert!(d.decode(&raw[1..], v.len()).is_err(), "{d}: a short buffer");
        }
    }
}
