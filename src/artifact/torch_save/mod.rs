//! The one reader of `torch.save` files, from bytes in memory so that the page and the desktop
//! share it. PyTorch >= 1.6 writes a ZIP archive holding a pickle (`<root>/data.pkl`) and one
//! raw little-endian entry per storage (`<root>/data/<key>`). What a dict of tensors needs is
//! read: the pickle opcodes of protocols 2-5 for dicts, lists, tuples, strings, numbers and
//! persistent ids, and the globals that rebuild a tensor or an `OrderedDict`; any other Python
//! object is kept opaque and refused by name where a tensor is expected. Nothing read is
//! trusted: every length and offset is checked against the bytes held, each entry used is
//! checked by CRC-32, and the tensors built are bounded by the file's size. [`zip`] reads the
//! container, [`pickle`] the objects; here the objects become tensors.

mod pickle;
mod zip;

use super::Dtype;
use crate::{Error, Result};
use pickle::{Items, TensorRef, Unpickler, Value};
use zip::Zip;

/// One tensor of the file: its values contiguous, little-endian, in PyTorch (row-major) order.
pub struct TorchTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Whether `bytes` look like a `torch.save` file: a ZIP archive, or the pickle stream the
/// legacy (pre-1.6) format starts with.
pub fn is_torch_save(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || (bytes.first() == Some(&0x80) && bytes.get(8) != Some(&b'{'))
}

/// Views repeated over one storage could otherwise turn a small file into a huge allocation;
/// a dict saving the same tensor under a few names stays well inside this.
const MAX_OUTPUT_PER_INPUT_BYTE: usize = 4;
const MAX_RANK: usize = 8;

/// Reads a `torch.save`d dict {name: tensor} (float tensors; views into a shared storage are
/// gathered), in the order the dict was saved.
pub fn read_tensor_dict(bytes: &[u8], source: &str) -> Result<Vec<(String, TorchTensor)>> {
    let bad = |m: String| Error::format(source, format!("is not a readable torch.save file: {m}"));
    if !bytes.starts_with(b"PK\x03\x04") {
        if is_torch_save(bytes) {
            return Err(Error::format(
                source,
                "is a torch.save file in the legacy format (PyTorch < 1.6), which is not read here: re-save it with a current PyTorch (`torch.save(torch.load(f), f)`)",
            ));
        }
        return Err(bad("it is not a ZIP archive".into()));
    }
    let zip = Zip::open(bytes).map_err(bad)?;
    let pickle_entry = zip.root_pickle().map_err(bad)?;
    let root = pickle_entry.name.strip_suffix("data.pkl").unwrap_or_default().to_string();
    if let Some(order) = zip.find(&format!("{root}byteorder")) {
        let order = zip.data(order).map_err(bad)?;
        if order != b"little" {
            return Err(bad(format!("its byte order is {:?}; only little-endian files are read", String::from_utf8_lossy(order))));
        }
    }
    let pickle = zip.data(pickle_entry).map_err(bad)?;
    let value = Unpickler::new(pickle).run().map_err(|m| bad(format!("{}: {m}", pickle_entry.name)))?;
    let mut out = Vec::new();
    let mut total = 0usize;
    let limit = bytes.len().saturating_mul(MAX_OUTPUT_PER_INPUT_BYTE);
    let value = Items(vec![value]);
    let Value::Dict(dict) = &value.0[0] else {
        return Err(Error::format(source, format!("holds a {}, not a dict of tensors", value.0[0].kind())));
    };
    for (key, value) in dict.borrow().pairs() {
        let Value::Str(name) = key else {
            return Err(Error::format(source, format!("has a key that is a {}, not a string", key.kind())));
        };
        let Value::Tensor(t) = value else {
            return Err(Error::format(source, format!("holds a {} under {name:?}, not a tensor", value.kind())));
        };
        let tensor = t.gather(&zip, &root).map_err(|m| Error::format(source, format!("tensor {name:?}: {m}")))?;
        total = total.saturating_add(tensor.data.len());
        if total > limit {
            return Err(Error::format(source, format!("its tensors hold more than {MAX_OUTPUT_PER_INPUT_BYTE}x the file's size (views repeated over one storage?)")));
        }
        out.push((name.to_string(), tensor));
    }
    Ok(out)
}

impl TensorRef {
    /// The tensor's values, contiguous, from its storage's entry in `zip`.
    fn gather(&self, zip: &Zip, root: &str) -> std::result::Result<TorchTensor, String> {
        let dtype = match &*self.storage.class {
            "torch.FloatStorage" => Dtype::F32,
            "torch.HalfStorage" => Dtype::F16,
            "torch.BFloat16Storage" => Dtype::Bf16,
            "torch.DoubleStorage" => Dtype::F64,
            other => return Err(format!("its storage is a {other}; only float tensors (f16, bf16, f32, f64) are read")),
        };
        if self.size.len() > MAX_RANK || self.size.len() != self.stride.len() || self.size.iter().chain(&self.stride).any(|&v| v < 0) || self.offset < 0 {
            return Err(format!("its size {:?}, stride {:?} or offset {} is not valid", self.size, self.stride, self.offset));
        }
        let shape: Vec<usize> = self.size.iter().map(|&v| v as usize).collect();
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("its size overflows")?;
        let esize = dtype.bytes(1);
        let bytes = numel.checked_mul(esize).ok_or("its size overflows")?;
        let entry = zip.find(&format!("{root}data/{}", self.storage.key)).ok_or_else(|| format!("its storage {} is missing from the archive", self.storage.key))?;
        let raw = zip.data(entry)?;
        if (raw.len() as u64) < self.storage.elements.saturating_mul(esize as u64) {
            return Err(format!("its storage {} holds {} bytes, less than the {} values the pickle declares", self.storage.key, raw.len(), self.storage.elements));
        }
        if numel == 0 {
            return Ok(TorchTensor { dtype, shape, data: Vec::new() });
        }
        let last = shape.iter().zip(&self.stride).try_fold(self.offset as u64, |a, (&d, &s)| (d as u64 - 1).checked_mul(s as u64).and_then(|x| a.checked_add(x)));
        if last.is_none_or(|l| l.saturating_add(1).saturating_mul(esize as u64) > raw.len() as u64) {
            return Err(format!("it reaches past the end of its storage {}", self.storage.key));
        }
        let mut data = Vec::with_capacity(bytes);
        // Walk the index space innermost first; a run of contiguous values is one copy.
        let rank = shape.len();
        let inner = if rank > 0 && self.stride[rank - 1] == 1 { shape[rank - 1] } else { 1 };
        let outer_dims = if inner > 1 { rank - 1 } else { rank };
        let mut index = vec![0usize; outer_dims];
        loop {
            let off = self.offset as usize + index.iter().zip(&self.stride).map(|(&i, &s)| i * s as usize).sum::<usize>();
            data.extend_from_slice(&raw[off * esize..(off + inner) * esize]);
            let mut d = outer_dims;
            loop {
                if d == 0 {
                    return Ok(TorchTensor { dtype, shape, data });
                }
                d -= 1;
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncations_are_errors() {
        assert!(read_tensor_dict(b"", "x").is_err());
        assert!(read_tensor_dict(b"PK\x03\x04", "x").is_err());
        let legacy = read_tensor_dict(&[0x80, 2, b'}', b'.'], "x").err().unwrap().to_string();
        assert!(legacy.contains("legacy"), "{legacy}");
    }

    /// The CRC stops a damaged pickle before it is parsed; this parses one anyway, every byte
    /// of the real file's pickle changed in turn, and builds what it can.
    #[test]
    fn damaged_real_pickle_does_not_panic() {
        let file: &[u8] = include_bytes!("../../../tests/fixtures/deepfloyd/embeddings/prompts.pth");
        let zip = Zip::open(file).unwrap();
        let pickle = zip.data(zip.root_pickle().unwrap()).unwrap();
        for i in 0..pickle.len() {
            for x in [0u8, 0xff, pickle[i] ^ 1, pickle[i].wrapping_add(1)] {
                let mut b = pickle.to_vec();
                b[i] = x;
                if let Ok(v) = Unpickler::new(&b).run() {
                    let v = Items(vec![v]);
                    if let Value::Dict(d) = &v.0[0] {
                        for (_, t) in d.borrow().pairs() {
                            if let Value::Tensor(t) = t {
                                let _ = t.gather(&zip, "prompts/");
                            }
                        }
                    }
                }
            }
        }
    }
}
