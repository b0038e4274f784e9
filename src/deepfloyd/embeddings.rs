//! Precomputed T5-XXL prompt embeddings: a safetensors file whose keys are the prompts and whose
//! tensors are `[77, 4096]` (or `[1, 77, 4096]`), f16, bf16 or f32. "" is the null prompt used
//! for classifier-free guidance. (T5-XXL itself is 4.7B parameters and not run here.)
//! The course's own file, a `torch.save`d dict {prompt: tensor}, is read too (desktop and page).

use burn::prelude::*;

use crate::artifact::safetensors::{read_header, Header};
use crate::artifact::{torch_save, Dtype};
use crate::{Error, Result};

pub struct PromptEmbeddings {
    bytes: Vec<u8>,
    header: Header,
    source: String,
}

impl PromptEmbeddings {
    /// A safetensors file, or the course's `torch.save`d dict {prompt: tensor} (told apart by
    /// content), which is re-packed as safetensors in memory.
    pub fn from_bytes(bytes: Vec<u8>, source: &str) -> Result<Self> {
        let bytes = if torch_save::is_torch_save(&bytes) { Self::repack(&bytes, source)? } else { bytes };
        let header = read_header(&bytes, bytes.len() as u64, source)?;
        if header.tensors.is_empty() {
            return Err(Error::format(source, "holds no embeddings"));
        }
        Ok(PromptEmbeddings { bytes, header, source: source.to_string() })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    fn repack(bytes: &[u8], source: &str) -> Result<Vec<u8>> {
        use ::safetensors::tensor::{Dtype as St, TensorView};
        let tensors = torch_save::read_tensor_dict(bytes, source)?;
        let views = tensors
            .iter()
            .map(|(name, t)| {
                let dtype = match t.dtype {
                    Dtype::F32 => St::F32,
                    Dtype::F16 => St::F16,
                    Dtype::Bf16 => St::BF16,
                    Dtype::F64 => St::F64,
                    Dtype::Q8 | Dtype::Q4 => unreachable!("torch_save reads float tensors only"),
                };
                TensorView::new(dtype, t.shape.clone(), &t.data).map(|v| (name.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::format(source, format!("{e}")))?;
        ::safetensors::serialize(views, None).map_err(|e| Error::format(source, format!("{e}")))
    }

    /// The embeddings as a safetensors file (what a `.pth` was re-packed as).
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
