//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use diffusion_playground::mnist::data::encode_idx;
use diffusion_playground::mnist::PIXELS;
use diffusion_playground::rng::Rng;

/// A command line clap refused: exit code 2 (not 1, a run that failed) and `needle` in the message.
pub fn usage_error(o: &std::process::Output, args: &[&str], needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: a usage error: {err}");
    assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dp-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny synthetic dataset in IDX form: bright squares whose position encodes the label.
pub fn write_data(dir: &Path, n: usize) {
    let mut rng = Rng::new(1);
    let mut imgs = vec![0u8; n * PIXELS];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let l = rng.below(10);
        labels[i] = l as u8;
        let (r0, c0) = (2 + (l / 5) * 12, 2 + (l % 5) * 5);
        for r in r0..r0 + 8 {
            for c in c0..c0 + 4 {
                imgs[i * PIXELS + r * 28 + c] = 200 + rng.below(55) as u8;
            }
        }
    }
    for (split, k) in [("train", n), ("t10k", n.min(16))] {
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), encode_idx(&[k, 28, 28], &imgs[..k * PIXELS])).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), encode_idx(&[k], &labels[..k])).unwrap();
    }
}

