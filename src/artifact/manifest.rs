//! The one manifest schema of both halves (version 2): `{"format": "diffusion-playground",
//! "version": 2, "models": [entry, ...]}`, every entry naming its kind, how its tensors are
//! stored and its files (one file, or shards), each with its size and sha256, plus what its
//! kind needs (an MNIST UNet's width and conditioning, an IF package's config and tensor table)
//! and, for the page, how to offer it. Provenance holds facts (command, device, metrics), not
//! prose. Manifests written before version 2 (pkg/manifest.json's `"format": 1`, IF packages'
//! `"diffusion-playground/if-unet"` v1) are read by upgrading them to it.

use serde::{Deserialize, Serialize};

use super::{check_file_name, verify};
use crate::{Error, Result};

pub const FORMAT: &str = "diffusion-playground";
pub const VERSION: u32 = 2;

/// What a manifest entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An MNIST UNet: a denoiser or a flow, by its conditioning.
    MnistUnet,
    /// The MNIST digit classifier.
    MnistClassifier,
    /// An IF stage-1 UNet package.
    IfUnet,
}

/// One stored file: a plain name inside the manifest's folder, its size and sha256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

impl StoredFile {
    /// Checks that `bytes` are this file, whole and unaltered (size, then sha256).
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        verify(&self.file, bytes, self.bytes, &self.sha256)
    }

    /// Reads this file from `dir`, no further than its stated size, and verifies it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_in(&self, dir: &std::path::Path, source: &str) -> Result<Vec<u8>> {
        let bytes = super::read_in(dir, &self.file, self.bytes, source)?;
        self.verify(&bytes)?;
        Ok(bytes)
    }
}

/// A manifest: the envelope both halves share, around their own entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest<E> {
    pub format: String,
    pub version: u32,
    pub models: Vec<E>,
}

impl<E> Default for Manifest<E> {
    fn default() -> Self {
        Manifest { format: FORMAT.into(), version: VERSION, models: Vec::new() }
    }
}

/// Fields every entry has, checked once when the manifest is parsed.
pub trait Entry {
    fn name(&self) -> &str;
    fn files(&self) -> &[StoredFile];
}

impl<E: Entry + for<'de> Deserialize<'de>> Manifest<E> {
    /// Parses a manifest of any version (older ones upgraded), checking the envelope, that names
    /// are unique and that every file is a plain name in the manifest's folder.
    pub fn parse(json: &str, source: &str) -> Result<Self> {
        let bad = |m: String| Error::format(source, m);
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
        let v = upgrade(v).map_err(bad)?;
        let m: Manifest<E> = serde_json::from_value(v).map_err(|e| bad(format!("not a valid manifest: {e}")))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(bad(format!("manifest format {:?} version {} is not supported (expected {FORMAT:?} version {VERSION})", m.format, m.version)));
        }
        let mut names = std::collections::BTreeSet::new();
        for e in &m.models {
            if !names.insert(e.name()) {
                return Err(bad(format!("names the model '{}' twice", e.name())));
            }
            if e.files().is_empty() {
                return Err(bad(format!("entry '{}' lists no files", e.name())));
            }
            for f in e.files() {
                check_file_name(&f.file, source)?;
            }
        }
        Ok(m)
    }

    pub fn get(&self, name: &str) -> Result<&E> {
        self.models.iter().find(|e| e.name() == name).ok_or_else(|| {
            let names: Vec<_> = self.models.iter().map(|e| e.name()).collect();
            Error::Invalid(format!("no model '{name}' in the manifest (it has: {})", names.join(", ")))
        })
    }

    /// Adds or replaces the entry of the same name.
    pub fn upsert(&mut self, entry: E) {
        self.format = FORMAT.into();
        self.version = VERSION;
        self.models.retain(|e| e.name() != entry.name());
        self.models.push(entry);
    }
}

/// A manifest of an older version as version 2; others unchanged.
fn upgrade(mut v: serde_json::Value) -> std::result::Result<serde_json::Value, String> {
    use serde_json::json;
    let file_of = |e: &mut serde_json::Value| json!([{"file": e["file"].take(), "bytes": e["bytes"].take(), "sha256": e["sha256"].take()}]);
    if v["format"] == json!(1) {
        // pkg/manifest.json before version 2: one file per entry, "unet" / "classifier", notes.
        let models = v["models"].as_array_mut().ok_or("\"models\" is not a list")?;
        for e in models.iter_mut() {
            let files = file_of(e);
            let o = e.as_object_mut().ok_or("an entry is not an object")?;
            for k in ["file", "bytes", "sha256"] {
                o.remove(k);
            }
            let kind = match o.get("kind").and_then(|k| k.as_str()) {
                Some("unet") => "mnist-unet",
                Some("classifier") => "mnist-classifier",
                other => return Err(format!("unknown model kind {other:?}")),
            };
            o.insert("kind".into(), json!(kind));
            o.insert("files".into(), files);
            if let Some(notes) = o.remove("notes") {
                o.insert("provenance".into(), notes);
            }
        }
        return Ok(json!({"format": FORMAT, "version": VERSION, "models": v["models"].take()}));
    }
    if v["format"] == json!("diffusion-playground/if-unet") && v["version"] == json!(1) {
        // An IF package before version 2: the one entry is the whole file.
        let model = json!({
            "name": "unet", "kind": "if-unet", "dtype": v["scheme"].take(), "files": v["shards"].take(),
            "block": v["block"].take(), "config": v["config"].take(), "tensors": v["tensors"].take(),
        });
        return Ok(json!({"format": FORMAT, "version": VERSION, "models": [model]}));
    }
    Ok(v)
}

/// How the page offers a model: its label, whether it is fetched before the first use, and the
/// sampler settings' limits and defaults (`[min, max, default]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageHints {
    pub label: String,
    /// Fetched when the page starts (otherwise at first use).
    pub at_start: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<[f32; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<[f32; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver: Option<String>,
}

impl PageHints {
    /// Limits that a slider can show: finite, min <= default <= max.
    pub fn check(&self, name: &str, source: &str) -> Result<()> {
        for (what, r) in [("steps", self.steps), ("guidance", self.guidance)] {
            if let Some([lo, hi, d]) = r
                && !(lo.is_finite() && hi.is_finite() && d.is_finite() && lo <= d && d <= hi && lo >= 0.0)
            {
                return Err(Error::format(source, format!("entry '{name}': page {what} [{lo}, {hi}, {d}] is not [min, max, default] with 0 <= min <= default <= max")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Dtype;
    use super::*;

    #[derive(Debug, Deserialize)]
    struct E {
        name: String,
        files: Vec<StoredFile>,
        dtype: Dtype,
    }
    impl Entry for E {
        fn name(&self) -> &str {
            &self.name
        }
        fn files(&self) -> &[StoredFile] {
            &self.files
        }
    }

    #[test]
    fn older_manifests_upgrade_and_bad_ones_are_refused() {
        let v1 = r#"{"format": 1, "models": [{"name": "a", "kind": "unet", "dtype": "f16", "file": "a.bpk", "bytes": 3, "sha256": "00"}]}"#;
        let m = Manifest::<E>::parse(v1, "m").unwrap();
        assert_eq!((m.models[0].files[0].file.as_str(), m.models[0].dtype), ("a.bpk", Dtype::F16));
        let twice = r#"{"format": "diffusion-playground", "version": 2, "models": [
            {"name": "a", "dtype": "f16", "files": [{"file": "a", "bytes": 1, "sha256": "0"}]},
            {"name": "a", "dtype": "f16", "files": [{"file": "b", "bytes": 1, "sha256": "0"}]}]}"#;
        assert!(Manifest::<E>::parse(twice, "m").unwrap_err().to_string().contains("twice"));
        let outside = v1.replace("a.bpk", "../a.bpk");
        assert!(Manifest::<E>::parse(&outside, "m").is_err());
        let if_v1 = r#"{"format": "diffusion-playground/if-unet", "version": 1, "scheme": "q8", "block": 32, "config": {},
            "tensors": [], "shards": [{"file": "shard-00001.bin", "bytes": 9, "sha256": "00"}]}"#;
        let m = Manifest::<E>::parse(if_v1, "m").unwrap();
        assert_eq!((m.models[0].name.as_str(), m.models[0].dtype, m.models[0].files.len()), ("unet", Dtype::Q8, 1));
        let future = r#"{"format": "diffusion-playground", "version": 3, "models": []}"#;
        assert!(Manifest::<E>::parse(future, "m").unwrap_err().to_string().contains("version 3"));
    }
}
