//! The safetensors format, through the `safetensors` crate: headers parsed and checked (offsets
//! contiguous, each tensor exactly its dtype and shape's size, sizes that cannot overflow) before
//! any tensor is read, then checked against the file's real length (a truncated download is
//! caught here, from the header alone), and f32 tensors written.

use std::collections::BTreeMap;

use super::Dtype;
use crate::{Error, Result};

/// The header of a file of at most this many bytes is accepted (the crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor as a header describes it: its dtype, shape and byte range in the data section.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data_offsets: [u64; 2],
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed header: its length (the data section starts at `8 + len`) and its tensors by name.
#[derive(Clone, Debug)]
pub struct Header {
    pub len: usize,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl Header {
    /// Where a tensor's bytes lie in the whole file.
    pub fn range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let start = 8 + self.len;
        start + info.data_offsets[0] as usize..start + info.data_offsets[1] as usize
    }
}

/// How many bytes from the start of a `file_len`-byte safetensors file hold its header (8 + the
/// length its first 8 bytes state), checked to fit the file: what a reader of slices (the page's
/// `File`) fetches before [`read_header`].
pub fn header_bytes(first8: &[u8], file_len: u64, source: &str) -> Result<u64> {
    let Some(n) = first8.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap())) else {
        return Err(Error::format(source, format!("is {} bytes long: not a safetensors file", first8.len())));
    };
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(Error::format(source, format!("header length {n} does not fit in a {file_len}-byte file: not safetensors, or truncated")));
    }
    Ok(8 + n)
}

/// Parses the header at the start of `bytes` (the whole file, or at least its header) of a file
/// `file_len` bytes long. Float tensors only (F32, F16, BF16, F64).
pub fn read_header(bytes: &[u8], file_len: u64, source: &str) -> Result<Header> {
    let err = |m: String| Error::format(source, m);
    let n = header_bytes(bytes, file_len, source)? - 8;
    let Some(json) = bytes.get(8..8 + n as usize) else {
        return Err(err("header is cut short: the file is truncated".into()));
    };
    let metadata: ::safetensors::tensor::Metadata = serde_json::from_slice(json).map_err(|e| {
        let e = e.to_string();
        if e.contains("overflow computing buffer size") {
            err("a tensor's shape has more elements than can exist (corrupt header)".into())
        } else if e.contains("invalid offset") || e.contains("invalid shape, data type, or offset") || e.contains("slice is slicing") {
            err(format!("tensors' byte ranges do not match their shapes ({e}; corrupt header)"))
        } else {
            err(format!("header is not a valid safetensors header ({e}): not a safetensors file"))
        }
    })?;
    let data_len = file_len - 8 - n;
    if metadata.data_len() as u64 > data_len {
        return Err(err(format!("its tensors need {} bytes of data, the file holds {data_len}: the file is truncated", metadata.data_len())));
    }
    let mut tensors = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let Some(dtype) = Dtype::from_safetensors(info.dtype) else {
            return Err(err(format!("tensor {name} has dtype {:?}; only F32, F16, BF16 and F64 weights are supported", info.dtype)));
        };
        let (a, b) = info.data_offsets;
        tensors.insert(name, TensorInfo { dtype, shape: info.shape.clone(), data_offsets: [a as u64, b as u64] });
    }
    Ok(Header { len: n as usize, tensors })
}

/// The header of a safetensors file, reading only its header.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_header_file(path: &std::path::Path) -> Result<Header> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = vec![0u8; 8];
    f.read_exact(&mut head).map_err(|_| Error::format(path, format!("is {len} bytes long: not a safetensors file")))?;
    let source = path.display().to_string();
    head.resize(header_bytes(&head, len, &source)? as usize, 0);
    f.read_exact(&mut head[8..]).map_err(|e| Error::io(path, e))?;
    read_header(&head, len, &source)
}

/// One tensor's values of a file, as f32, read without the rest.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_tensor(file: &mut std::fs::File, header: &Header, info: &TensorInfo, path: &std::path::Path, name: &str) -> Result<Vec<f32>> {
    use std::io::{Read, Seek, SeekFrom};
    let range = header.range(info);
    file.seek(SeekFrom::Start(range.start as u64)).map_err(|e| Error::io(path, e))?;
    let mut raw = vec![0u8; range.len()];
    file.read_exact(&mut raw).map_err(|e| Error::io(path, format!("reading {name}: {e}")))?;
    info.dtype.decode(&raw, info.len()).map_err(|e| Error::format(path, format!("tensor {name}: {e}")))
}

/// f32 tensors `(name, shape, values)` as a safetensors file.
pub fn write_f32(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    use ::safetensors::tensor::TensorView;
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| Dtype::F32.encode(v)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| TensorView::new(::safetensors::Dtype::F32, shape.clone(), b).map(|v| (name.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("a tensor does not match its shape: {e}")))?;
    ::safetensors::serialize(views, None).map_err(|e| Error::Invalid(format!("could not write safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back_and_damaged_ones_are_refused() {
        let t = vec![("a".to_string(), vec![2, 3], vec![1.0; 6]), ("b".to_string(), vec![4], vec![2.0; 4])];
        let bytes = write_f32(&t).unwrap();
        let h = read_header(&bytes, bytes.len() as u64, "t").unwrap();
        assert_eq!(h.tensors["a"].shape, vec![2, 3]);
        assert_eq!(Dtype::F32.decode(&bytes[h.range(&h.tensors["b"])], 4).unwrap(), vec![2.0; 4]);
        let cut = read_header(&bytes, bytes.len() as u64 - 1, "t").unwrap_err().to_string();
        assert!(cut.contains("truncated"), "{cut}");
        assert!(read_header(&bytes[..5], 5, "t").unwrap_err().to_string().contains("not a safetensors file"));
    }
}
