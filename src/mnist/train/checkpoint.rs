//! A run's resumable state on disk: one file, written atomically, that holds the counters and loss
//! history (JSON), the weights with BatchNorm statistics and the optimizer moments (burnpack),
//! closed by a sha256 so a flipped bit is found on resume.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{RunDir, TrainConfig};
use crate::{Error, Result};

/// Counters and history saved with a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    pub config: TrainConfig,
    /// Next epoch to run (0-based) and next batch within it.
    pub epoch: usize,
    pub batch: usize,
    /// Loss of every optimisation step so far.
    pub losses: Vec<f32>,
    /// Wall-clock seconds spent training so far, across resumes.
    pub seconds: f64,
    /// [`Dataset::fingerprint`](crate::mnist::data::Dataset::fingerprint) of the training data (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
}

const MAGIC_V1: &[u8; 8] = b"DPCKPT01";
/// Version 2 ends with the sha256 of everything before it.
const MAGIC: &[u8; 8] = b"DPCKPT02";

/// Serialises a checkpoint: magic, three length-prefixed parts (progress JSON, model burnpack,
/// optimizer burnpack), then a sha256 of all of it, so a flipped bit is found on resume.
pub(super) fn encode_checkpoint(progress: &Progress, model: &[u8], optim: &[u8]) -> Vec<u8> {
    encode_parts(&serde_json::to_vec(progress).expect("progress serialises"), model, optim)
}

pub(super) fn encode_parts(json: &[u8], model: &[u8], optim: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::with_capacity(8 + 24 + json.len() + model.len() + optim.len() + 32);
    out.extend_from_slice(MAGIC);
    for part in [json, model, optim] {
        out.extend((part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    let sum = sha2::Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The three parts of a checkpoint, after checking its checksum (version 1 files, written
/// before checksums, are read as they are).
pub(super) fn decode_parts(bytes: &[u8], path: &Path) -> Result<[Vec<u8>; 3]> {
    use sha2::Digest;
    let body = match bytes.get(..8) {
        Some(m) if m == MAGIC => {
            let Some(split) = bytes.len().checked_sub(32).filter(|&s| s >= 8) else {
                return Err(Error::format(path, "truncated checkpoint (delete it and start again, or use an epoch_N.bpk)"));
            };
            let (body, sum) = bytes.split_at(split);
            if sha2::Sha256::digest(body).as_slice() != sum {
                return Err(Error::format(path, "checkpoint checksum mismatch: the file is corrupt (a disk or copy error); delete it and start again, or use an epoch_N.bpk"));
            }
            body
        }
        Some(m) if m == MAGIC_V1 => bytes,
        _ => return Err(Error::format(path, "not a checkpoint of this tool")),
    };
    let mut parts: [Vec<u8>; 3] = Default::default();
    let mut pos = 8;
    for part in parts.iter_mut() {
        let len = body.get(pos..pos + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        let range = len.and_then(|l| usize::try_from(l).ok()).and_then(|l| Some(pos + 8..(pos + 8).checked_add(l)?));
        let data = range.and_then(|r| body.get(r));
        let data = data.ok_or_else(|| Error::format(path, "truncated checkpoint (delete it and start again, or use an epoch_N.bpk)"))?;
        pos += 8 + data.len();
        *part = data.to_vec();
    }
    if pos != body.len() {
        return Err(Error::format(path, "checkpoint has trailing bytes: corrupt"));
    }
    Ok(parts)
}

fn decode_checkpoint(bytes: &[u8], path: &Path) -> Result<(Progress, Vec<u8>, Vec<u8>)> {
    let [json, model, optim] = decode_parts(bytes, path)?;
    let progress: Progress = serde_json::from_slice(&json).map_err(|e| Error::format(path, format!("checkpoint header: {e}")))?;
    Ok((progress, model, optim))
}

/// Reads a checkpoint's progress (for `--resume` and for reporting).
pub fn read_checkpoint(path: &Path) -> Result<(Progress, Vec<u8>, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_checkpoint(&bytes, path)
}

/// Images in the MNIST and Fashion-MNIST training sets.
const TRAIN_IMAGES: usize = 60_000;

/// A run's loss history as its checkpoint holds it, for comparing runs: `path` is a run
/// directory or a checkpoint file. Returns the progress and the steps in one epoch.
pub fn run_losses(path: &Path) -> Result<(Progress, usize)> {
    let ckpt = if path.is_dir() { RunDir(path.to_path_buf()).checkpoint() } else { path.to_path_buf() };
    let (p, _, _) = read_checkpoint(&ckpt)?;
    let steps = if p.epoch > 0 {
        // Finished epochs are whole, so this also holds for --limit runs.
        p.losses.len().checked_sub(p.batch).map(|n| n / p.epoch)
    } else {
        Some(p.config.limit.map_or(TRAIN_IMAGES, |l| l.min(TRAIN_IMAGES)).div_ceil(p.config.batch.max(1)))
    };
    match steps {
        Some(s) if s > 0 && p.epoch.checked_mul(s).is_some_and(|done| done <= p.losses.len()) => Ok((p, s)),
        _ => Err(Error::format(&ckpt, "its loss history does not match its epoch and batch counters")),
    }
}

/// Mean loss of each epoch (the last one may be partial).
pub fn epoch_means(losses: &[f32], steps_per_epoch: usize) -> Vec<f32> {
    losses.chunks(steps_per_epoch.max(1)).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mnist::train::Recipe;

    #[test]
    fn checkpoint_round_trip_and_truncation() {
        let p = Recipe::ClassFlow.defaults();
        let prog = Progress { config: p, epoch: 2, batch: 5, losses: vec![1.0, 0.5], seconds: 3.0, data_sha256: None };
        let enc = encode_checkpoint(&prog, b"model", b"optim");
        let (q, m, o) = decode_checkpoint(&enc, Path::new("x")).unwrap();
        assert_eq!((q.epoch, q.batch, q.losses), (2, 5, vec![1.0, 0.5]));
        assert_eq!((m.as_slice(), o.as_slice()), (&b"model"[..], &b"optim"[..]));
        for cut in [0, 7, 12, enc.len() - 1] {
            assert!(decode_checkpoint(&enc[..cut], Path::new("x")).is_err());
        }
        // Any flipped bit, in the header, the weights or the checksum itself, is found.
        for i in [3, 20, enc.len() - 40, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            let e = decode_checkpoint(&bad, Path::new("x")).unwrap_err().to_string();
            assert!(e.contains("checksum") || e.contains("not a checkpoint"), "byte {i}: {e}");
        }
    }

    #[test]
    fn run_losses_finds_the_epoch_length_and_refuses_inconsistent_counters() {
        let dir = std::env::temp_dir().join(format!("dp-run-losses-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ckpt = dir.join("checkpoint.ckpt");
        let write = |epoch, batch, n: usize| {
            let prog = Progress { config: Recipe::ClassFlow.defaults(), epoch, batch, losses: vec![0.5; n], seconds: 0.0, data_sha256: None };
            std::fs::write(&ckpt, encode_checkpoint(&prog, b"m", b"o")).unwrap();
        };
        write(2, 3, 2 * 7 + 3);
        assert_eq!(run_losses(&dir).unwrap().1, 7);
        write(0, 4, 4); // still in epoch 1: MNIST's 60,000 images at batch 64
        assert_eq!(run_losses(&ckpt).unwrap().1, 938);
        write(2, 5, 3); // fewer losses than the counters claim
        assert!(run_losses(&dir).unwrap_err().to_string().contains("does not match"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn epoch_means_cover_a_partial_last_epoch() {
        assert_eq!(epoch_means(&[1.0, 3.0, 2.0, 4.0, 5.0], 2), vec![2.0, 3.0, 5.0]);
    }
}
