//! The DeepFloyd IF half of the page's API: the adapter check before a download, packages
//! (verified, then loaded a group of tensors at a time), the in-browser conversion of a diffusers
//! `unet/` folder, prompt embeddings, and the course's algorithms stepped with the GPU awaited
//! between steps. The pipeline, its noise streams and its checks are the library's, so the page
//! draws what `dp if` draws for the same inputs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use burn::prelude::*;
use js_sys::{Array, Float32Array, Function, Promise, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::{js_err, keep_going, now_ms, read_f32, Playground};
use crate::artifact::safetensors::{header_bytes, read_header};
use crate::artifact::{sha256_hex, Dtype};
use crate::deepfloyd::convert::Converter;
use crate::deepfloyd::embeddings::PromptEmbeddings;
use crate::deepfloyd::package::{PackageManifest, SCHEMES};
use crate::deepfloyd::pipeline::{Blur, IfPipeline, NoiseSource, Prompt, Task};
use crate::deepfloyd::scheduler::{apply_threshold, strided_timesteps, threshold_scales, DdpmScheduler, X0Mode};
use crate::deepfloyd::unet::IfUNet;
use crate::deepfloyd::views::{View, NAMES};
use crate::{Error, Result};

/// What the WebGPU device allows (burn's runtime requests all the adapter has).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Limits {
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub shader_f16: bool,
}

/// The float type IF computes in on this device, and why (shown by the page).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Compute {
    pub dtype: Dtype,
    pub note: String,
}

/// What the page asked for: f16 or f32, or None for "f16 where the adapter has shader-f16".
type Wanted = Option<Dtype>;

impl Compute {
    /// `auto` (or nothing), or one of the desktop's `--compute` types.
    pub fn parse(s: Option<&str>) -> Result<Wanted> {
        match s.unwrap_or("auto") {
            "" | "auto" => Ok(None),
            name => crate::named::Named::from_name(name)
                .filter(|d| crate::device::COMPUTE_DTYPES.contains(d))
                .map(Some)
                .ok_or_else(|| Error::Invalid(format!("ifcompute={name}: IF computes in auto, f16 or f32"))),
        }
    }

    /// On WebGPU: a second runtime over the same GPU device, configured for f16 before its first
    /// tensor, where the adapter has shader-f16 and f32 was not asked for.
    pub fn webgpu(wanted: Wanted, shader_f16: bool, device: &Device, setup: burn::tensor::wgpu::WgpuSetup) -> (Device, Compute) {
        let f32 = |note: String| (device.clone(), Compute { dtype: Dtype::F32, note });
        match (wanted, shader_f16) {
            (Some(Dtype::F32), _) => f32("IF computes in f32, as asked (ifcompute=f32).".into()),
            (_, false) => f32(format!(
                "This adapter has no shader-f16: IF computes in f32{}.",
                if wanted.is_some() { " (f16 was asked for)" } else { "" }
            )),
            (_, true) => {
                let half = Device::wgpu_options().setup(setup).init().map_err(|e| format!("{e}")).and_then(|mut d| {
                    d.configure(burn::tensor::FloatDType::F16).map_err(|e| format!("{e:?}"))?;
                    Ok(d)
                });
                match half {
                    Ok(d) => (d, Compute { dtype: Dtype::F16, note: "IF computes in f16 (the adapter has shader-f16); add ?ifcompute=f32 to the address for f32.".into() }),
                    Err(e) => f32(format!("An f16 device could not be set up ({e}): IF computes in f32.")),
                }
            }
        }
    }

    /// On the CPU the one Flex device is the MNIST models' too, so IF computes in f32.
    pub fn cpu(wanted: Wanted, device: &Device) -> (Device, Compute) {
        let note = match wanted {
            Some(Dtype::F16) => "The CPU backend computes IF in f32 (f16 was asked for; it needs WebGPU with shader-f16).",
            _ => "The CPU backend computes IF in f32.",
        };
        (device.clone(), Compute { dtype: Dtype::F32, note: note.into() })
    }
}

/// The loaded IF model and prompt embeddings.
#[derive(Default)]
pub(super) struct IfState {
    model: Option<Rc<IfUNet>>,
    embeddings: Option<Rc<PromptEmbeddings>>,
}

/// What the page shows about a package before and after loading it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PackageInfo {
    /// sha256 of the manifest's text: the key the page stores the package under.
    key: String,
    scheme: Dtype,
    parameters: u64,
    bytes: u64,
    largest_tensor_bytes: u64,
    side: usize,
    width: usize,
    shards: Vec<crate::artifact::manifest::StoredFile>,
}

/// One run's settings as the page sends them (JSON); defaults are the course's and `dp if`'s.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RunSettings {
    /// sample | sdedit | inpaint | anagram | hybrid | denoise
    mode: String,
    #[serde(default)]
    prompt: String,
    /// The null prompt's key for guidance ("" by default).
    #[serde(default)]
    null_prompt: String,
    #[serde(default = "default_guidance")]
    guidance: f32,
    #[serde(default = "default_stride")]
    stride: usize,
    #[serde(default)]
    seed: u64,
    /// none | clip | dynamic
    #[serde(default = "default_x0")]
    x0: String,
    /// SDEdit: one run per entry, side by side (the course: 1, 3, 5, 7, 10, 20); the denoising
    /// demo: its iterative run's start (the first entry; 10 if none).
    #[serde(default)]
    i_starts: Vec<usize>,
    /// Anagram: one prompt per view.
    #[serde(default)]
    prompts: Vec<String>,
    #[serde(default)]
    views: Vec<String>,
    /// Hybrid: the low- and high-frequency prompts and the split.
    #[serde(default)]
    low: String,
    #[serde(default)]
    high: String,
    #[serde(default = "default_kernel")]
    kernel: usize,
    #[serde(default = "default_sigma")]
    sigma: f32,
}

fn default_guidance() -> f32 {
    7.0
}
fn default_stride() -> usize {
    30
}
fn default_x0() -> String {
    "none".into()
}
fn default_kernel() -> usize {
    33
}
fn default_sigma() -> f32 {
    2.0
}

fn to_js<T: Serialize>(v: &T) -> std::result::Result<JsValue, JsValue> {
    js_sys::JSON::parse(&serde_json::to_string(v).map_err(|e| js_err(Error::Invalid(e.to_string())))?)
}

fn bytes_of(v: &JsValue, what: &str) -> Result<Vec<u8>> {
    v.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec).ok_or_else(|| Error::Invalid(format!("{what} is not a byte array")))
}

/// A shard is at most 64 MB, a GPU buffer's binding often 128 MiB: the largest tensor decides.
fn check_fits(m: &PackageManifest, limits: Option<Limits>, compute: Dtype) -> Result<()> {
    let Some(l) = limits else { return Ok(()) };
    let largest = m.largest_tensor_bytes(compute);
    let cap = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
    if largest > cap {
        return Err(Error::Device(format!(
            "this GPU binds buffers of at most {:.0} MiB but the model's largest tensor needs {:.0} MiB in {compute}: use a smaller IF variant (IF-I-M), or the CPU backend",
            cap as f64 / (1 << 20) as f64,
            largest as f64 / (1 << 20) as f64
        )));
    }
    Ok(())
}

fn package_info(json: &str, m: &PackageManifest, cfg: &crate::deepfloyd::config::IfConfig) -> PackageInfo {
    PackageInfo {
        key: sha256_hex(json.as_bytes()),
        scheme: m.scheme,
        parameters: m.parameters(),
        bytes: m.total_bytes(),
        largest_tensor_bytes: m.largest_tensor_bytes(Dtype::F32),
        side: cfg.sample_size,
        width: cfg.encoder_hid_dim,
        shards: m.shards.clone(),
    }
}

/// The state x0 estimate treated by `mode`; dynamic thresholding reads x0 back asynchronously
/// (a blocking read is not allowed on WebGPU), then applies the library's rule.
async fn treat_x0(x0: Tensor<4>, mode: X0Mode) -> std::result::Result<Tensor<4>, JsValue> {
    match mode {
        X0Mode::DynamicThreshold { ratio, max } => {
            let values = read_f32(x0.clone()).await?;
            let s = threshold_scales(&values, x0.dims()[0], ratio, max);
            Ok(apply_threshold(x0, &s))
        }
        other => Ok(crate::deepfloyd::scheduler::process_x0(x0, other)),
    }
}

fn chw_tensor(values: &[f32], channels: usize, side: usize, what: &str, device: &Device) -> Result<Tensor<4>> {
    if values.len() != channels * side * side {
        return Err(Error::Invalid(format!("{what} has {} values; the model's {side}x{side} needs {}", values.len(), channels * side * side)));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!("{what} holds NaN or infinite values")));
    }
    Ok(Tensor::from_data(TensorData::new(values.to_vec(), [1, channels, side, side]), device))
}

#[wasm_bindgen]
impl Playground {
    /// The device's limits for big models (`{maxBufferSize, maxStorageBufferBindingSize,
    /// shaderF16}`), or null on the CPU.
    #[wasm_bindgen(getter)]
    pub fn limits(&self) -> JsValue {
        self.limits.as_ref().and_then(|l| to_js(l).ok()).unwrap_or(JsValue::NULL)
    }

    /// The float type IF computes in here and why: `{dtype: "f16" | "f32", note}`.
    #[wasm_bindgen(getter, js_name = ifCompute)]
    pub fn if_compute(&self) -> JsValue {
        to_js(&self.if_compute).unwrap_or(JsValue::NULL)
    }

    /// The names of the visual-anagram views, rearrangements first.
    #[wasm_bindgen(js_name = ifViews)]
    pub fn if_views() -> Vec<String> {
        NAMES.iter().map(|s| s.to_string()).collect()
    }

    /// Checks an IF package manifest, and that its largest tensor fits this device, before any
    /// shard is fetched; returns what it holds (key, scheme, sizes, shards).
    #[wasm_bindgen(js_name = ifCheckPackage)]
    pub fn if_check_package(&self, manifest_json: &str) -> std::result::Result<JsValue, JsValue> {
        let (m, cfg) = PackageManifest::parse(manifest_json, "manifest.json").map_err(js_err)?;
        check_fits(&m, self.limits, self.if_compute.dtype).map_err(js_err)?;
        to_js(&package_info(manifest_json, &m, &cfg))
    }

    /// Checks one shard (index in the manifest's list) as it arrives: size and sha256.
    #[wasm_bindgen(js_name = ifVerifyShard)]
    pub fn if_verify_shard(&self, manifest_json: &str, index: usize, bytes: &[u8]) -> std::result::Result<(), JsValue> {
        let (m, _) = PackageManifest::parse(manifest_json, "manifest.json").map_err(js_err)?;
        m.verify_shard(index, bytes).map_err(js_err)
    }

    /// Loads a package (manifest and every shard, each verified) as the IF model; resolves to its
    /// info. Embeddings already loaded are checked against its text width.
    #[wasm_bindgen(js_name = ifLoadPackage)]
    pub fn if_load_package(&self, manifest_json: String, shards: Array) -> Promise {
        let device = self.if_device.clone();
        let state = self.state.clone();
        let limits = self.limits;
        let compute = self.if_compute.dtype;
        future_to_promise(async move {
            let (m, cfg) = PackageManifest::parse(&manifest_json, "manifest.json").map_err(js_err)?;
            check_fits(&m, limits, compute).map_err(js_err)?;
            let shards = shards.iter().enumerate().map(|(i, v)| bytes_of(&v, &format!("shard {i}"))).collect::<Result<Vec<_>>>().map_err(js_err)?;
            // The model replaces the old one only once it has loaded whole.
            state.borrow_mut().deepfloyd.model = None;
            let model = crate::deepfloyd::weights::load_package_bytes(&manifest_json, &shards, &device).map_err(js_err)?;
            drop(shards);
            // Wait for the uploads, so a lost device or an out-of-memory GPU shows here.
            let probe = Tensor::<1>::zeros([1], &device);
            read_f32(probe).await?;
            let info = package_info(&manifest_json, &m, &cfg);
            let mut st = state.borrow_mut();
            if let Some(e) = &st.deepfloyd.embeddings {
                check_widths(e, cfg.encoder_hid_dim).map_err(js_err)?;
            }
            st.deepfloyd.model = Some(Rc::new(model));
            to_js(&info)
        })
    }

    /// Drops the IF model (the page's "forget", or before loading another).
    #[wasm_bindgen(js_name = ifUnload)]
    pub fn if_unload(&self) {
        self.state.borrow_mut().deepfloyd.model = None;
    }

    /// Prompt embeddings from a safetensors file (`dp`'s, one `[77, width]` tensor per prompt
    /// keyed by the prompt) or the course's `torch.save`d dict; returns the prompts. Checked
    /// against the loaded model's width.
    #[wasm_bindgen(js_name = ifLoadEmbeddings)]
    pub fn if_load_embeddings(&self, bytes: Vec<u8>, source: &str) -> std::result::Result<Vec<String>, JsValue> {
        let e = PromptEmbeddings::from_bytes(bytes, source).map_err(js_err)?;
        let mut st = self.state.borrow_mut();
        if let Some(m) = &st.deepfloyd.model {
            check_widths(&e, m.config.encoder_hid_dim).map_err(js_err)?;
        }
        let names = e.names().map(str::to_string).collect();
        st.deepfloyd.embeddings = Some(Rc::new(e));
        Ok(names)
    }

    /// The loaded embeddings as a safetensors file (a `.pth` re-packed), what the page stores.
    #[wasm_bindgen(js_name = ifEmbeddingsFile)]
    pub fn if_embeddings_file(&self) -> Option<Uint8Array> {
        self.state.borrow().deepfloyd.embeddings.as_ref().map(|e| Uint8Array::from(e.safetensors_bytes()))
    }

    /// An uploaded or drawn picture (PNG or JPEG bytes) as the model's input: the desktop's rule
    /// (the centred square of the shorter side, resized to the model's side). Resolves to
    /// `[3*side*side]` values in [-1, 1], CHW.
    #[wasm_bindgen(js_name = ifPrepareImage)]
    pub fn if_prepare_image(&self, bytes: &[u8], source: &str) -> std::result::Result<Float32Array, JsValue> {
        let side = self.if_model().map_err(js_err)?.config.sample_size;
        let (v, _) = crate::image_ops::decode_rgb_square(bytes, side, source).map_err(js_err)?;
        Ok(Float32Array::from(v.as_slice()))
    }

    /// Runs one of the course's algorithms (settings: see `RunSettings`). `image` (`[3*side*side]`
    /// CHW in [-1, 1], from `ifPrepareImage`) is SDEdit's, inpainting's and the denoising demo's; `mask`
    /// (`[side*side]`, 1 where new content goes) is inpainting's.
    ///
    /// After every step `on_step(run, runs, step, steps, x0, ms)` gets the current estimate of
    /// the clean image (`[B*3*side*side]`); returning false (or a Promise of false) cancels, and
    /// the Promise resolves to null. Otherwise it resolves to an Array of images: the result(s),
    /// then what the mode shows beside them (SDEdit: the input; anagram: the result under each
    /// view).
    #[wasm_bindgen(js_name = ifRun)]
    pub fn if_run(&self, settings_json: &str, image: Option<Vec<f32>>, mask: Option<Vec<f32>>, on_step: Function) -> Promise {
        let prepared = self.if_prepare_run(settings_json, image, mask);
        let device = self.if_device.clone();
        future_to_promise(async move {
            let (model, emb, s, image, mask, mut sched) = prepared.map_err(js_err)?;
            let side = model.config.sample_size;
            let width = model.config.encoder_hid_dim;
            let need_null = crate::guidance::needs_unconditional(s.guidance);
            let prompt = |name: &str| -> Result<Prompt> {
                let uncond = if need_null { Some(emb.get(&s.null_prompt, width, &device)?) } else { None };
                Prompt::new(emb.get(name, width, &device)?, uncond)
            };
            let x0_mode = match s.x0.as_str() {
                "none" => X0Mode::None,
                "clip" => X0Mode::Clip(1.0),
                "dynamic" => X0Mode::DynamicThreshold { ratio: 0.95, max: 1.5 },
                other => return Err(js_err(Error::Invalid(format!("x0 {other:?}: use none, clip or dynamic")))),
            };
            sched.set_timesteps(strided_timesteps(990.min(sched.num_train_timesteps() - 1), s.stride).map_err(js_err)?).map_err(js_err)?;
            let pipe = IfPipeline::new(&*model, &sched).with_x0_mode(x0_mode);
            let mut out: Vec<Tensor<4>> = Vec::new();
            match s.mode.as_str() {
                "sample" => {
                    let p = prompt(&s.prompt).map_err(js_err)?;
                    let task = Task::Sample { batch: 1, side, prompt: &p };
                    match step_loop(&pipe, &task, &mut task.noise(s.seed, 0), s.guidance, (0, 1), &on_step).await? {
                        Some(x) => out.push(x),
                        None => return Ok(JsValue::NULL),
                    }
                }
                "sdedit" => {
                    let p = prompt(&s.prompt).map_err(js_err)?;
                    let image = image.ok_or_else(|| js_err(Error::Invalid("SDEdit needs an image: upload or draw one".into())))?;
                    let starts = if s.i_starts.is_empty() { vec![1, 3, 5, 7, 10, 20] } else { s.i_starts.clone() };
                    if starts.len() > 12 {
                        return Err(js_err(Error::Invalid(format!("{} i_start values: at most 12 side by side", starts.len()))));
                    }
                    for (k, &i_start) in starts.iter().enumerate() {
                        let task = Task::Sdedit { image: image.clone(), i_start, prompt: &p };
                        match step_loop(&pipe, &task, &mut task.noise(s.seed, k), s.guidance, (k, starts.len()), &on_step).await? {
                            Some(x) => out.push(x),
                            None => return Ok(JsValue::NULL),
                        }
                    }
                    out.push(image);
                }
                "inpaint" => {
                    let p = prompt(&s.prompt).map_err(js_err)?;
                    let image = image.ok_or_else(|| js_err(Error::Invalid("inpainting needs an image: upload or draw one".into())))?;
                    let mask = mask.ok_or_else(|| js_err(Error::Invalid("inpainting needs a mask: paint where new content should go".into())))?;
                    let task = Task::Inpaint { original: image, mask, prompt: &p };
                    match step_loop(&pipe, &task, &mut task.noise(s.seed, 0), s.guidance, (0, 1), &on_step).await? {
                        Some(x) => out.push(x),
                        None => return Ok(JsValue::NULL),
                    }
                }
                "anagram" => {
                    if s.prompts.len() != s.views.len() || s.prompts.is_empty() {
                        return Err(js_err(Error::Invalid(format!("{} prompts but {} views: give one view per prompt", s.prompts.len(), s.views.len()))));
                    }
                    let pairs = s.prompts.iter().zip(&s.views).map(|(p, v)| Ok((View::parse(v)?, prompt(p)?))).collect::<Result<Vec<_>>>().map_err(js_err)?;
                    let task = Task::Anagram { side, views: &pairs };
                    let x = match step_loop(&pipe, &task, &mut task.noise(s.seed, 0), s.guidance, (0, 1), &on_step).await? {
                        Some(x) => x,
                        None => return Ok(JsValue::NULL),
                    };
                    // As `dp if anagram` writes it: the result under each view's inverse.
                    for (v, _) in &pairs {
                        out.push(v.invert(x.clone(), 3).map_err(js_err)?);
                    }
                }
                "hybrid" => {
                    let (pl, ph) = (prompt(&s.low).map_err(js_err)?, prompt(&s.high).map_err(js_err)?);
                    let task = Task::Hybrid { side, low: &pl, high: &ph, blur: Blur { kernel: s.kernel, sigma: s.sigma } };
                    match step_loop(&pipe, &task, &mut task.noise(s.seed, 0), s.guidance, (0, 1), &on_step).await? {
                        Some(x) => out.push(x),
                        None => return Ok(JsValue::NULL),
                    }
                }
                "denoise" => {
                    // `dp if denoise`: unguided (guidance 1, the conditional output), as the course's demo.
                    let image = image.ok_or_else(|| js_err(Error::Invalid("the denoising demo needs an image: upload or draw one".into())))?;
                    let p = Prompt { uncond: None, ..prompt(&s.prompt).map_err(js_err)? };
                    let i_start = s.i_starts.first().copied().unwrap_or(10);
                    let b = pipe.denoise_baselines(image.clone(), &p, s.seed).map_err(js_err)?;
                    let (x, mut noise) = pipe.iterative_start(image.clone(), i_start, &p, s.seed).map_err(js_err)?;
                    let task = Task::Iterative { x, i_start, prompt: &p };
                    let last = match step_loop(&pipe, &task, &mut noise, 1.0, (0, 1), &on_step).await? {
                        Some(x) => x,
                        None => return Ok(JsValue::NULL),
                    };
                    // Per timestep: noisy, blurred, one step; then the iterative result and the input.
                    for ((n, bl), o) in b.noisy.into_iter().zip(b.blurred).zip(b.one_step) {
                        out.extend([n, bl, o]);
                    }
                    out.extend([last, image]);
                }
                other => return Err(js_err(Error::Invalid(format!("unknown mode {other:?}: use sample, sdedit, inpaint, anagram, hybrid or denoise")))),
            }
            let arr = Array::new();
            for t in out {
                arr.push(&Float32Array::from(read_f32(t).await?.as_slice()));
            }
            Ok(arr.into())
        })
    }

    /// Starts converting a diffusers `unet/` folder in the page: `config_json` is its
    /// config.json, `scheme` f16 | q8 | q4.
    #[wasm_bindgen(js_name = ifConverter)]
    pub fn if_converter(&self, config_json: &str, scheme: &str) -> std::result::Result<IfConverter, JsValue> {
        let scheme: Dtype = crate::named::Named::from_name(scheme).ok_or_else(|| js_err(Error::Invalid(format!("scheme {scheme:?}: use f16, q8 or q4"))))?;
        if !SCHEMES.contains(&scheme) {
            return Err(js_err(Error::Invalid(format!("scheme {scheme}: use f16, q8 or q4"))));
        }
        let ready: Rc<RefCell<VecDeque<(String, Vec<u8>)>>> = Rc::default();
        let sink = ready.clone();
        let inner = Converter::new(config_json, "config.json", scheme, move |file: &str, bytes: &[u8]| {
            sink.borrow_mut().push_back((file.to_string(), bytes.to_vec()));
            Ok(())
        })
        .map_err(js_err)?;
        Ok(IfConverter { inner: Some(inner), ready })
    }
}

impl Playground {
    fn if_model(&self) -> Result<Rc<IfUNet>> {
        self.state.borrow().deepfloyd.model.clone().ok_or_else(|| Error::Invalid("no IF model is loaded: pick a package or a diffusers unet folder first".into()))
    }

    #[allow(clippy::type_complexity)]
    fn if_prepare_run(&self, settings_json: &str, image: Option<Vec<f32>>, mask: Option<Vec<f32>>) -> Result<(Rc<IfUNet>, Rc<PromptEmbeddings>, RunSettings, Option<Tensor<4>>, Option<Tensor<4>>, DdpmScheduler)> {
        let model = self.if_model()?;
        let emb = self.state.borrow().deepfloyd.embeddings.clone().ok_or_else(|| Error::Invalid("no prompt embeddings are loaded: pick a .safetensors file of embeddings".into()))?;
        let s: RunSettings = serde_json::from_str(settings_json).map_err(|e| Error::Invalid(format!("run settings: {e}")))?;
        if !s.guidance.is_finite() || !(0.0..=100.0).contains(&s.guidance) {
            return Err(Error::Invalid(format!("guidance must be in [0, 100], got {}", s.guidance)));
        }
        if !(1..=1000).contains(&s.stride) {
            return Err(Error::Invalid(format!("stride must be 1..1000, got {}", s.stride)));
        }
        if s.kernel == 0 || s.kernel > 127 || s.kernel % 2 == 0 {
            return Err(Error::Invalid(format!("the blur kernel must be odd and at most 127, got {}", s.kernel)));
        }
        let side = model.config.sample_size;
        let image = image.map(|v| chw_tensor(&v, 3, side, "the image", &self.if_device)).transpose()?;
        let mask = match mask {
            None => None,
            Some(m) => {
                let painted = m.iter().filter(|&&v| v >= 0.5).count();
                if painted == 0 && m.len() == side * side {
                    return Err(Error::Invalid("the mask is empty: paint where new content should go".into()));
                }
                if painted == m.len() && m.len() == side * side {
                    return Err(Error::Invalid("the mask covers the whole image: inpainting would ignore it (that is text-to-image); leave some of the image unpainted".into()));
                }
                // Half grey and above is "new content", as the desktop reads a mask picture.
                let m: Vec<f32> = m.iter().map(|&v| if v >= 0.5 { 1.0 } else { 0.0 }).collect();
                Some(chw_tensor(&m, 1, side, "the mask", &self.if_device)?)
            }
        };
        Ok((model, emb, s, image, mask, DdpmScheduler::if_stage1()))
    }
}

/// Every embedding must be as wide as the model's text input.
fn check_widths(e: &PromptEmbeddings, width: usize) -> Result<()> {
    let device = Device::flex();
    for name in e.names() {
        e.get(name, width, &device).map_err(|err| Error::Invalid(format!("{err}: these embeddings were made for another model")))?;
    }
    Ok(())
}

/// [`IfPipeline::run`]'s loop with the GPU awaited between steps: the same calls in the same
/// order (output, variance noise, update, after-step), so the same noise stream gives the same
/// image. `(run, runs)` numbers this run of a series. Resolves to None when cancelled.
async fn step_loop<M: crate::deepfloyd::pipeline::Denoiser>(
    pipe: &IfPipeline<'_, M>,
    task: &Task<'_>,
    noise: &mut dyn NoiseSource,
    guidance: f32,
    (run, runs): (usize, usize),
    on_step: &Function,
) -> std::result::Result<Option<Tensor<4>>, JsValue> {
    let (mut x, i_start) = pipe.start(task, noise).map_err(js_err)?;
    let ts = pipe.scheduler.timesteps().to_vec();
    let total = ts.len() - 1 - i_start;
    for (k, i) in (i_start..ts.len() - 1).enumerate() {
        let t0 = now_ms();
        let (t, t_next) = (ts[i], ts[i + 1]);
        let out = pipe.output(task, x.clone(), t, guidance).map_err(js_err)?;
        let x0 = treat_x0(pipe.scheduler.model_x0(&out, x.clone(), t), pipe.x0_mode).await?;
        let z = noise.next(x.dims(), &x.device()).map_err(js_err)?;
        x = pipe.scheduler.step_from_x0(out, t, x, x0.clone(), z).prev_sample;
        x = pipe.after_step(task, x, t_next, noise).map_err(js_err)?;
        // Reading back waits for the GPU, so `ms` is the real cost of the step.
        let preview = read_f32(x0).await?;
        let ms = now_ms() - t0;
        let args = Array::of5(&run.into(), &runs.into(), &k.into(), &total.into(), &Float32Array::from(preview.as_slice()));
        args.push(&ms.into());
        if !keep_going(on_step.apply(&JsValue::NULL, &args)?).await? {
            return Ok(None);
        }
    }
    Ok(Some(x))
}

/// A diffusers `unet/` folder being converted to a package in the page. The page reads each
/// weight file's header (`headerLength` tells how much), hands it to `addFile`, asks `plan` for
/// the byte ranges to read, then gives each tensor's bytes to `addTensor` in that order; finished
/// shards are taken with `takeShard` as they fill, and `finish` returns the manifest. At most
/// one source tensor and one unfinished shard are held.
#[wasm_bindgen]
pub struct IfConverter {
    inner: Option<Converter<'static>>,
    ready: Rc<RefCell<VecDeque<(String, Vec<u8>)>>>,
}

#[wasm_bindgen]
impl IfConverter {
    /// How many bytes from the start of a safetensors file hold its header, from its first 8.
    #[wasm_bindgen(js_name = headerLength)]
    pub fn header_length(first8: &[u8], file_size: f64, source: &str) -> std::result::Result<f64, JsValue> {
        Ok(header_bytes(first8, file_size as u64, source).map_err(js_err)? as f64)
    }

    fn inner(&mut self) -> Result<&mut Converter<'static>> {
        self.inner.as_mut().ok_or_else(|| Error::Invalid("the conversion is finished".into()))
    }

    /// A weight file's header bytes (`headerLength` of them) and its whole size.
    #[wasm_bindgen(js_name = addFile)]
    pub fn add_file(&mut self, name: &str, head: &[u8], file_size: f64) -> std::result::Result<(), JsValue> {
        crate::artifact::check_file_name(name, "the picked folder").map_err(js_err)?;
        let header = read_header(head, file_size as u64, name).map_err(js_err)?;
        self.inner().and_then(|c| c.add_file(name, header)).map_err(js_err)
    }

    /// Checks the files against config.json; returns `[{name, file, start, end}]` to read, in order.
    pub fn plan(&mut self) -> std::result::Result<JsValue, JsValue> {
        let plan = self.inner().and_then(|c| c.plan()).map_err(js_err)?;
        to_js(&plan)
    }

    /// The next planned tensor's bytes.
    #[wasm_bindgen(js_name = addTensor)]
    pub fn add_tensor(&mut self, name: &str, bytes: &[u8]) -> std::result::Result<(), JsValue> {
        self.inner().and_then(|c| c.add(name, bytes)).map_err(js_err)
    }

    /// A finished shard `{file, bytes}`, or null when none is waiting.
    #[wasm_bindgen(js_name = takeShard)]
    pub fn take_shard(&self) -> JsValue {
        match self.ready.borrow_mut().pop_front() {
            None => JsValue::NULL,
            Some((file, bytes)) => {
                let o = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&o, &"file".into(), &file.into());
                let _ = js_sys::Reflect::set(&o, &"bytes".into(), &Uint8Array::from(bytes.as_slice()));
                o.into()
            }
        }
    }

    /// Ends the conversion (the last shard becomes ready) and returns the manifest's JSON.
    pub fn finish(&mut self) -> std::result::Result<String, JsValue> {
        let c = self.inner.take().ok_or_else(|| js_err(Error::Invalid("the conversion is finished".into())))?;
        Ok(c.finish().map_err(js_err)?.to_json())
    }
}
