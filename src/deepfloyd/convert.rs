//! A diffusers `unet/` download turned into a package ([`super::package`]) one tensor at a time,
//! from safetensors headers and tensor bytes wherever they come from: files on the desktop
//! (`dp convert`), slices of the files a visitor picked in the page. Nothing holds more than one
//! tensor of the source and the package being built.
//!
//! Order: [`Converter::add_file`] for every weight file, then [`Converter::plan`] (every key the
//! config implies present with its shape, nothing left over: the same check as loading), then
//! [`Converter::add`] for each planned tensor in the plan's order, then [`Converter::finish`].
//! [`convert_dir`] does this for a folder on the desktop.

use std::collections::BTreeMap;

use super::config::IfConfig;
use super::package::{PackageManifest, PackageWriter};
use super::unet::parameter_shapes;
use super::weights::check_keys;
use crate::artifact::safetensors::{Header, TensorInfo};
use crate::artifact::Dtype;
use crate::{Error, Result};

/// Where the next tensor's bytes lie: `file`'s bytes `start..end`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Planned {
    pub name: String,
    pub file: String,
    pub start: u64,
    pub end: u64,
}

pub struct Converter<'a> {
    cfg: IfConfig,
    /// key -> (its header entry, the file holding it)
    stored: BTreeMap<String, (TensorInfo, String)>,
    headers: BTreeMap<String, Header>,
    plan: Option<Vec<Planned>>,
    done: usize,
    writer: PackageWriter<'a>,
}

impl<'a> Converter<'a> {
    /// `config_json`: the download's `unet/config.json`; `flush(file, bytes)` receives each
    /// finished shard.
    pub fn new(config_json: &str, source: &str, scheme: Dtype, flush: impl FnMut(&str, &[u8]) -> Result<()> + 'a) -> Result<Self> {
        if !super::package::SCHEMES.contains(&scheme) {
            return Err(Error::Invalid(format!("a package is stored as f16, q8 or q4, not {scheme}")));
        }
        let cfg = IfConfig::from_json(config_json, source)?;
        let config: serde_json::Value = serde_json::from_str(config_json).map_err(|e| Error::format(source, e.to_string()))?;
        Ok(Converter { cfg, stored: BTreeMap::new(), headers: BTreeMap::new(), plan: None, done: 0, writer: PackageWriter::new(config, scheme, flush) })
    }

    pub fn config(&self) -> &IfConfig {
        &self.cfg
    }

    /// One weight file's parsed header (see `artifact::safetensors::read_header`). A key in two
    /// files is refused: which one is meant cannot be told.
    pub fn add_file(&mut self, file: &str, header: Header) -> Result<()> {
        if self.plan.is_some() {
            return Err(Error::Invalid("add every weight file before planning the conversion".into()));
        }
        if self.headers.contains_key(file) {
            return Err(Error::Invalid(format!("{file} was given twice")));
        }
        for (k, info) in &header.tensors {
            if let Some((_, other)) = self.stored.get(k) {
                return Err(Error::format(file, format!("holds {k}, which {other} holds too: pick the files of one download (not both the .fp16 and the full-precision weights)")));
            }
            self.stored.insert(k.clone(), (info.clone(), file.to_string()));
        }
        self.headers.insert(file.to_string(), header);
        Ok(())
    }

    /// Checks the files against the config and returns, in conversion order, where each tensor's
    /// bytes are.
    pub fn plan(&mut self) -> Result<Vec<Planned>> {
        if self.headers.is_empty() {
            return Err(Error::Invalid("no weight file given: pick diffusion_pytorch_model[.fp16].safetensors (or all its shards)".into()));
        }
        check_keys(&self.cfg, &self.stored)?;
        let plan: Vec<Planned> = parameter_shapes(&self.cfg)
            .into_iter()
            .map(|(name, _)| {
                let (info, file) = &self.stored[&name];
                let r = self.headers[file].range(info);
                Planned { name, file: file.clone(), start: r.start as u64, end: r.end as u64 }
            })
            .collect();
        self.plan = Some(plan.clone());
        Ok(plan)
    }

    /// The planned tensor `name`'s bytes (the next one in the plan's order): decoded, checked for
    /// NaN and infinity, and stored in the package.
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let plan = self.plan.as_ref().ok_or_else(|| Error::Invalid("plan the conversion before adding tensors".into()))?;
        let want = plan.get(self.done).ok_or_else(|| Error::Invalid(format!("{name}: every planned tensor was already added")))?;
        if want.name != name {
            return Err(Error::Invalid(format!("expected the tensor {} next, got {name}", want.name)));
        }
        if bytes.len() as u64 != want.end - want.start {
            return Err(Error::format(&want.file, format!("tensor {name}: {} bytes given, the header says {} (was the file cut short?)", bytes.len(), want.end - want.start)));
        }
        let (info, file) = &self.stored[name];
        let values = info.dtype.decode(bytes, info.len()).map_err(|e| Error::format(file, format!("tensor {name}: {e}")))?;
        crate::artifact::check_finite(name, &values, file)?;
        let shape = info.shape.clone();
        self.writer.add(name, &shape, &values)?;
        self.done += 1;
        Ok(())
    }

    /// (tensors added, tensors planned)
    pub fn progress(&self) -> (usize, usize) {
        (self.done, self.plan.as_ref().map_or(0, Vec::len))
    }

    /// Flushes the last shard and returns the manifest (write it last: a package without one is
    /// an unfinished conversion).
    pub fn finish(self) -> Result<PackageManifest> {
        let (done, total) = self.progress();
        if total == 0 || done != total {
            return Err(Error::Invalid(format!("the conversion is not complete: {done} of {total} tensors added")));
        }
        self.writer.finish()
    }
}

/// Converts a diffusers `unet/` folder into a package (see [`super::package`]) in `out`,
/// one tensor in memory at a time. Returns the manifest (also written as `manifest.json`, last,
/// so a package without one is an unfinished conversion). `progress(done, total)` is called
/// after each tensor; returning false stops the conversion with `Error::Interrupted`.
#[cfg(not(target_arch = "wasm32"))]
pub fn convert_dir(dir: &std::path::Path, out: &std::path::Path, scheme: crate::artifact::Dtype, mut progress: impl FnMut(usize, usize) -> bool) -> Result<PackageManifest> {
    use std::io::{Read, Seek, SeekFrom};
    let cfg_path = dir.join("config.json");
    let json = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let files = super::weights::weight_files(dir)?;
    let mut paths = BTreeMap::new();
    // The folder is made once the files have passed the plan's checks (before the first shard).
    let mut conv = Converter::new(&json, &cfg_path.display().to_string(), scheme, |file: &str, bytes: &[u8]| crate::image_ops::write_atomic(&out.join(file), bytes))?;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        conv.add_file(&name, crate::artifact::safetensors::read_header_file(f)?)?;
        paths.insert(name, f.clone());
    }
    let plan = conv.plan()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for (i, p) in plan.iter().enumerate() {
        let path = &paths[&p.file];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        f.seek(SeekFrom::Start(p.start)).map_err(|e| Error::io(path, e))?;
        let mut raw = vec![0u8; (p.end - p.start) as usize];
        f.read_exact(&mut raw).map_err(|e| Error::io(path, format!("reading {}: {e}", p.name)))?;
        conv.add(&p.name, &raw)?;
        if !progress(i + 1, plan.len()) {
            return Err(Error::Interrupted);
        }
    }
    let manifest = conv.finish()?;
    crate::image_ops::write_atomic(&out.join("manifest.json"), manifest.to_json().as_bytes())?;
    Ok(manifest)
}
