//! Precomputed T5-XXL prompt embeddings: a safetensors file whose keys are the prompts and whose
//! tensors are `[77, 4096]` (or `[1, 77, 4096]`), f16, bf16 or f32. "" is the null prompt used
//! for classifier-free guidance. (T5-XXL itself is 4.7B parameters and not run here.)
//! On the desktop the course's own file, a `torch.save`d dict {prompt: tensor}, is read too.

use burn::prelude::*;

use crate::artifact::safetensors::{read_header, Header};
use crate::{Error, Result};

pub struct PromptEmbeddings {
    bytes: Vec<u8>,
    header: Header,
    source: String,
}

impl PromptEmbeddings {
    pub fn from_bytes(bytes: Vec<u8>, source: &str) -> Result<Self> {
        let header = read_header(&bytes, bytes.len() as u64, source)?;
        if header.tensors.is_empty() {
            return Err(Error::format(source, "holds no embeddings"));
        }
        Ok(PromptEmbeddings { bytes, header, source: source.to_string() })
    }

    /// A safetensors file, or a `torch.save`d dict of tensors (`.pth`, told apart by content).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // safetensors: an 8-byte header length, then the JSON header. torch.save: a ZIP archive
        // (PyTorch >= 1.6) or a pickle stream (protocol 2+ starts with 0x80).
        let safetensors = bytes.get(8) == Some(&b'{');
        if !safetensors && (bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80)) {
            return Self::from_pth(path);
        }
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// Reads a `torch.save`d dict {prompt: tensor} (f16, bf16 or f32; views into shared storage
    /// are gathered by the reader) by re-packing it as safetensors in memory.
    #[cfg(not(target_arch = "wasm32"))]
    fn from_pth(path: &std::path::Path) -> Result<Self> {
        use pytorch_reader::{DType, PytorchReader};
        use safetensors::tensor::{Dtype, TensorView};
        let source = path.display().to_string();
        let reader = PytorchReader::new(path).map_err(|e| Error::format(path, format!("is not a readable torch.save file: {e}")))?;
        let mut tensors = Vec::new();
        for (name, t) in reader.tensors() {
            let dtype = match t.dtype() {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                other => return Err(Error::format(path, format!("embedding {name:?} is {other:?}; expected f16, bf16 or f32"))),
            };
            let data = t.read().map_err(|e| Error::format(path, format!("{e}")))?;
            tensors.push((name.clone(), dtype, t.shape().to_vec(), data));
        }
        // The reader hands back native-endian bytes; safetensors is little-endian (as are x86,
        // ARM and wasm).
        let views = tensors
            .iter()
            .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::format(path, format!("{e}")))?;
        let bytes = safetensors::serialize(views, None).map_err(|e| Error::format(path, format!("{e}")))?;
        Self::from_bytes(bytes, &source)
    }

    /// The embeddings as a safetensors file (a `.pth` read on the desktop becomes what the page
    /// reads).
    pub fn safetensors_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.header.tensors.keys().map(|s| s.as_str())
    }

    /// The embedding of `prompt` as `[1, tokens, width]`, checked against the model's `width`.
    pub fn get(&self, prompt: &str, width: usize, device: &Device) -> Result<Tensor<3>> {
        let info = self.header.tensors.get(prompt).ok_or_else(|| {
            let mut known: Vec<&str> = self.names().take(12).collect();
            known.iter_mut().for_each(|s| if s.is_empty() { *s = "\"\" (null)" });
            Error::format(&self.source, format!("has no embedding for the prompt {prompt:?}; it holds: {}", known.join(" | ")))
        })?;
        let (tokens, w) = match info.shape.as_slice() {
            [t, w] | [1, t, w] => (*t, *w),
            s => return Err(Error::format(&self.source, format!("embedding {prompt:?} has shape {s:?}; expected [77, {width}] or [1, 77, {width}]"))),
        };
        if w != width || tokens == 0 {
            return Err(Error::format(&self.source, format!("embedding {prompt:?} is [{tokens}, {w}] but the model takes {width}-wide tokens (T5-XXL: [77, 4096])")));
        }
        let v = info.dtype.decode(&self.bytes[self.header.range(info)], info.len()).map_err(|e| Error::format(&self.source, format!("embedding {prompt:?}: {e}")))?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::format(&self.source, format!("embedding {prompt:?} holds NaN or infinite values")));
        }
        Ok(Tensor::from_data(TensorData::new(v, [1, tokens, w]), device))
    }
}
