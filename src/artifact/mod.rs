//! What both halves' manifests share: a file named by a manifest is a plain name inside the
//! manifest's folder, read no further than the size the manifest states, and checked by size and
//! sha256 before anything parses it. Names are checked once, when a manifest is parsed
//! ([`check_file_name`]); the readers check again, so a path built elsewhere cannot slip by.
//! [`Dtype`] is every way a tensor is stored, [`safetensors`] the one reader and writer of that
//! format, [`torch_save`] the one reader of PyTorch's.

use sha2::{Digest, Sha256};

use crate::{Error, Result};

mod dtype;
pub mod manifest;
pub mod safetensors;
pub mod torch_save;

pub use dtype::{Dtype, QUANT_BLOCK};

/// Refuses a manifest's file name unless it is one plain file name: no separators, no `.` or
/// `..`, not absolute, no drive letter, no control characters. The page builds URLs from the
/// same names, so this also keeps every fetch under the package's base URL.
pub fn check_file_name(name: &str, source: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::format(source, format!("names the file {name:?}, which {why}: a manifest may only name plain files in its own folder")));
    if name.is_empty() || name == "." || name == ".." {
        return bad("is not a file name");
    }
    if name.contains(['/', '\\', ':']) {
        return bad("has a path separator or drive letter");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("has control characters");
    }
    if name.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a tensor holding NaN or infinity, by name (such weights give a black image and exit 0).
pub fn check_finite(name: &str, values: &[f32], source: &str) -> Result<()> {
    match values.iter().find(|v| !v.is_finite()) {
        Some(v) => Err(Error::format(source, format!("tensor {name} holds {v}: the weights are damaged (a diverged run, or a corrupt file: download or convert it again)"))),
        None => Ok(()),
    }
}

fn wrong_size(file: impl AsRef<std::path::Path>, len: u64, size: u64) -> Error {
    Error::format(file, format!("is {len} bytes, the manifest says {size} (truncated or wrong file, or an incomplete download: download or copy it again)"))
}

/// Checks that `bytes` are the file a manifest describes: its size, then its sha256.
pub fn verify(file: &str, bytes: &[u8], size: u64, sha256: &str) -> Result<()> {
    if bytes.len() as u64 != size {
        return Err(wrong_size(file, bytes.len() as u64, size));
    }
    let h = sha256_hex(bytes);
    if !h.eq_ignore_ascii_case(sha256) {
        return Err(Error::format(file, format!("sha256 {h} does not match the manifest's {sha256}: the file is corrupt or was replaced")));
    }
    Ok(())
}

/// The path of `name` inside `dir`, after checking that it is a plain name and that what it
/// points to (symbolic links followed) is a regular file inside `dir`: not a device, a pipe,
/// a folder, or a file elsewhere.
#[cfg(not(target_arch = "wasm32"))]
pub fn path_in(dir: &std::path::Path, name: &str, source: &str) -> Result<std::path::PathBuf> {
    check_file_name(name, source)?;
    let path = dir.join(name);
    let real = path.canonicalize().map_err(|e| Error::io(&path, e))?;
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    if !real.starts_with(&root) {
        return Err(Error::format(&path, format!("is a link to {}, outside {}: refused", real.display(), root.display())));
    }
    let meta = std::fs::metadata(&real).map_err(|e| Error::io(&path, e))?;
    if !meta.is_file() {
        return Err(Error::format(&path, "is not a regular file (a folder, device or pipe): refused"));
    }
    Ok(path)
}

/// As [`path_in`], for the user's own diffusers download, which may also be a link into the
/// `blobs/` folder of the Hugging Face cache that holds it (the hub client lays a download out as
/// `<repo>/snapshots/<revision>/unet/<file> -> ../../../blobs/<hash>`); a link anywhere else is
/// refused as by [`path_in`].
#[cfg(not(target_arch = "wasm32"))]
pub fn path_in_download(dir: &std::path::Path, name: &str, source: &str) -> Result<std::path::PathBuf> {
    let refused = match path_in(dir, name, source) {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    check_file_name(name, source)?;
    let path = dir.join(name);
    let (Ok(real), Ok(root)) = (path.canonicalize(), dir.canonicalize()) else { return Err(refused) };
    let in_cache_blobs = root
        .ancestors()
        .filter(|a| a.file_name().is_some_and(|n| n == "snapshots"))
        .any(|snapshots| snapshots.parent().is_some_and(|repo| real.starts_with(repo.join("blobs"))));
    if in_cache_blobs && std::fs::metadata(&real).is_ok_and(|m| m.is_file()) { Ok(path) } else { Err(refused) }
}

/// Reads `name` from `dir` (see [`path_in`]) when it is exactly `size` bytes; never reads more.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_in(dir: &std::path::Path, name: &str, size: u64, source: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let path = path_in(dir, name, source)?;
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
    if len != size {
        return Err(wrong_size(&path, len, size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte more than promised: a file that grows while being read is caught, not followed.
    f.take(size + 1).read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
    if bytes.len() as u64 != size {
        return Err(Error::format(&path, format!("changed while being read ({} bytes, the manifest says {size})", bytes.len())));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass() {
        for ok in ["model.bpk", "shard-00001.bin", "a b.bin", "..x", "x.."] {
            assert!(check_file_name(ok, "m").is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "..\\x", "C:x", "a\0b", "a\nb", &"x".repeat(256)] {
            assert!(check_file_name(bad, "m").is_err(), "{bad:?}");
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn reads_stay_inside_and_within_size() {
        let root = std::env::temp_dir().join(format!("dp-artifact-{}", std::process::id()));
        let dir = root.join("pkg");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.bin"), b"hello").unwrap();
        std::fs::write(root.join("outside.bin"), b"hello").unwrap();
        assert_eq!(read_in(&dir, "a.bin", 5, "m").unwrap(), b"hello");
        assert!(read_in(&dir, "a.bin", 4, "m").unwrap_err().to_string().contains("the manifest says 4"));
        assert!(read_in(&dir, "../outside.bin", 5, "m").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("outside.bin"), dir.join("link.bin")).unwrap();
            assert!(read_in(&dir, "link.bin", 5, "m").unwrap_err().to_string().contains("outside"));
            std::os::unix::fs::symlink("/dev/zero", dir.join("zero.bin")).unwrap();
            assert!(read_in(&dir, "zero.bin", 5, "m").is_err());
            std::os::unix::fs::symlink("a.bin", dir.join("inside.bin")).unwrap();
            assert_eq!(read_in(&dir, "inside.bin", 5, "m").unwrap(), b"hello");
        }
        #[cfg(unix)]
        {
            // A Hugging Face cache: snapshot files are links into the repo's blobs/.
            let repo = root.join("models--x");
            let unet = repo.join("snapshots/abc/unet");
            std::fs::create_dir_all(&unet).unwrap();
            std::fs::create_dir_all(repo.join("blobs")).unwrap();
            std::fs::write(repo.join("blobs/0123"), b"weights").unwrap();
            std::os::unix::fs::symlink("../../../blobs/0123", unet.join("w.safetensors")).unwrap();
            std::os::unix::fs::symlink(root.join("outside.bin"), unet.join("out.safetensors")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", unet.join("zero.safetensors")).unwrap();
            assert!(path_in(&unet, "w.safetensors", "m").is_err());
            assert!(path_in_download(&unet, "w.safetensors", "m").is_ok());
            assert!(path_in_download(&unet, "out.safetensors", "m").is_err());
            assert!(path_in_download(&unet, "zero.safetensors", "m").is_err());
            assert!(path_in_download(&unet, "../../../blobs/0123", "m").is_err());
        }
        assert!(verify("a.bin", b"hello", 5, &sha256_hex(b"hello")).is_ok());
        assert!(verify("a.bin", b"hellp", 5, &sha256_hex(b"hello")).unwrap_err().to_string().contains("corrupt"));
        std::fs::remove_dir_all(&root).ok();
    }
}
