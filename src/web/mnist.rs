//! The MNIST half of the page's API: the shipped manifest, loading its models, drawing digits,
//! classifying them and the denoiser playground.

use burn::prelude::*;
use js_sys::{Float32Array, Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::{js_err, keep_going, now_ms, read_f32, Playground};
use crate::artifact::manifest::Kind;
use crate::mnist::classifier::{argmax_rows, Classifier};
use crate::mnist::flow::{noise, FlowPipeline, FlowSampler, Solver};
use crate::mnist::package::{classifier_from_bytes, parse_manifest, unet_from_bytes, Manifest};
use crate::mnist::unet::{Conditioning, UNet};
use crate::mnist::{PIXELS, SIDE};
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Default)]
pub(super) struct MnistState {
    manifest: Option<Manifest>,
    unets: std::collections::BTreeMap<String, UNet>,
    classifier: Option<Classifier>,
}

#[wasm_bindgen]
impl Playground {
    /// Reads `pkg/manifest.json` (any version); returns its entries in the current schema (name,
    /// kind, files, conditioning, page hints, provenance) with each one's total `bytes`.
    #[wasm_bindgen(js_name = setManifest)]
    pub fn set_manifest(&self, json: &str) -> std::result::Result<JsValue, JsValue> {
        let m = parse_manifest(json, "pkg/manifest.json").map_err(js_err)?;
        // Each entry as the manifest has it, plus `bytes`: what fetching it downloads.
        let mut entries = serde_json::to_value(&m.models).map_err(|e| js_err(Error::Invalid(e.to_string())))?;
        for (v, e) in entries.as_array_mut().into_iter().flatten().zip(&m.models) {
            v["bytes"] = e.files.iter().map(|f| f.bytes).sum::<u64>().into();
        }
        let out = entries.to_string();
        self.state.borrow_mut().mnist.manifest = Some(m);
        js_sys::JSON::parse(&out)
    }

    /// Checks `bytes` against the manifest entry `name` (size and sha256), then builds the model
    /// on this playground's device.
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(&self, name: &str, bytes: &[u8]) -> std::result::Result<(), JsValue> {
        let mut st = self.state.borrow_mut();
        let entry = st
            .mnist
            .manifest
            .as_ref()
            .ok_or_else(|| js_err(Error::Invalid("load pkg/manifest.json before the models".into())))?
            .get(name)
            .map_err(js_err)?
            .clone();
        entry.verify(bytes).map_err(js_err)?;
        let source = format!("pkg/{}", entry.file().file);
        match entry.kind {
            Kind::MnistUnet => {
                let config = entry.unet_config().map_err(js_err)?;
                let model = unet_from_bytes(&config, bytes, &source, &self.device).map_err(js_err)?;
                st.mnist.unets.insert(name.to_string(), model);
            }
            Kind::MnistClassifier => {
                st.mnist.classifier = Some(classifier_from_bytes(bytes, &source, &self.device).map_err(js_err)?);
            }
            Kind::IfUnet => return Err(js_err(Error::Invalid(format!("{name} is an IF package; this page loads MNIST models")))),
        }
        Ok(())
    }

    /// Draws `labels.length` digits with the flow model `model` (labels are ignored by a
    /// time-only model), `steps` steps of `solver` ("euler" | "heun") at guidance `guidance`,
    /// from the noise of `seed` (the same noise as `dp sample --seed`).
    ///
    /// After each step `on_step(step, steps, pixels, ms)` is called with the current images
    /// (`[n*28*28]` floats, 0 = black, 1 = white); it may return a boolean or a Promise of one:
    /// `false` cancels (the Promise then resolves to `null`). Awaiting a returned Promise also
    /// lets the worker's event loop run between steps, which is how a cancel message gets in.
    /// Resolves to the final images as a Float32Array.
    pub fn generate(&self, model: &str, labels: Vec<u32>, guidance: f32, steps: u32, solver: &str, seed: u32, on_step: Function) -> Promise {
        let prepared = self.flow_model(model).and_then(|unet| {
            let solver = match solver {
                "euler" => Solver::Euler,
                "heun" => Solver::Heun,
                other => return Err(Error::Invalid(format!("unknown solver '{other}': use euler or heun"))),
            };
            if !(1..=1000).contains(&steps) {
                return Err(Error::Invalid(format!("steps must be 1..1000, got {steps}")));
            }
            if !guidance.is_finite() || !(0.0..=50.0).contains(&guidance) {
                return Err(Error::Invalid(format!("guidance must be between 0 and 50, got {guidance}")));
            }
            if labels.is_empty() || labels.len() > 256 {
                return Err(Error::Invalid(format!("ask for 1..256 images, got {}", labels.len())));
            }
            if let Some(bad) = labels.iter().find(|&&l| l > 9) {
                return Err(Error::Invalid(format!("digit {bad} is not 0-9")));
            }
            Ok((unet, solver))
        });
        let device = self.device.clone();
        future_to_promise(async move {
            let (unet, solver) = prepared.map_err(js_err)?;
            let n = labels.len();
            let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
            // The async form of `FlowPipeline::sample`: the GPU is awaited between steps.
            let pipeline = FlowPipeline::new(&unet, FlowSampler::new(solver, steps as usize));
            let total = pipeline.sampler.steps;
            let mut x = noise(&mut Rng::new(seed as u64), n, &device);
            for i in 0..total {
                let t0 = now_ms();
                x = pipeline.step(x, i, &labels, guidance);
                // Reading back waits for the GPU, so `ms` is the real cost of the step.
                let pixels = read_f32(x.clone()).await?;
                let ms = now_ms() - t0;
                let arr = Float32Array::from(pixels.as_slice());
                let ret = on_step.call4(&JsValue::NULL, &(i as u32).into(), &(total as u32).into(), &arr, &ms.into())?;
                if !keep_going(ret).await? {
                    return Ok(JsValue::NULL);
                }
            }
            let pixels = read_f32(x).await?;
            Ok(Float32Array::from(pixels.as_slice()).into())
        })
    }

    /// Classifies `[n*28*28]` images; resolves to `[digit0, confidence0, digit1, ...]`.
    pub fn classify(&self, pixels: Vec<f32>) -> Promise {
        let prepared = (|| {
            let clf = self
                .state
                .borrow()
                .mnist
                .classifier
                .clone()
                .ok_or_else(|| Error::Invalid("the classifier is not loaded".into()))?;
            let x = images_tensor(&pixels, &self.device)?;
            Ok((clf, x))
        })();
        future_to_promise(async move {
            let (clf, x) = prepared.map_err(js_err)?;
            let (probs, _) = clf.probs_and_features(x);
            let probs = read_f32(probs).await?;
            let out: Vec<f32> = argmax_rows(&probs, 10).into_iter().flat_map(|(d, p)| [d as f32, p]).collect();
            Ok(Float32Array::from(out.as_slice()).into())
        })
    }

    /// The denoiser playground: adds `sigma`-scaled noise of `seed` to `[n*28*28]` images and runs
    /// the denoiser `model` on the result. Resolves to `[noisy..., denoised...]` (2*n*784 floats).
    pub fn denoise(&self, model: &str, pixels: Vec<f32>, sigma: f32, seed: u32) -> Promise {
        let prepared = (|| {
            let unet = self.unet(model)?;
            if unet.conditioning() != Conditioning::None {
                return Err(Error::Invalid(format!("'{model}' is a flow model, not a denoiser")));
            }
            if !sigma.is_finite() || !(0.0..=5.0).contains(&sigma) {
                return Err(Error::Invalid(format!("sigma must be between 0 and 5, got {sigma}")));
            }
            let x = images_tensor(&pixels, &self.device)?;
            Ok((unet, x))
        })();
        let device = self.device.clone();
        future_to_promise(async move {
            let (unet, x) = prepared.map_err(js_err)?;
            let n = x.dims()[0];
            let z = x + noise(&mut Rng::new(seed as u64), n, &device) * sigma;
            let d = unet.forward(z.clone(), None, None);
            let mut out = read_f32(z).await?;
            out.extend(read_f32(d).await?);
            Ok(Float32Array::from(out.as_slice()).into())
        })
    }
}

impl Playground {
    fn unet(&self, name: &str) -> Result<UNet> {
        let st = self.state.borrow();
        st.mnist.unets.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = st.mnist.unets.keys().map(String::as_str).collect();
            Error::Invalid(format!("model '{name}' is not loaded (loaded: {})", if known.is_empty() { "none".into() } else { known.join(", ") }))
        })
    }

    fn flow_model(&self, name: &str) -> Result<UNet> {
        let unet = self.unet(name)?;
        if unet.conditioning() == Conditioning::None {
            return Err(Error::Invalid(format!("'{name}' is a denoiser, not a flow model")));
        }
        Ok(unet)
    }
}

/// `[n*784]` floats -> `[n, 1, 28, 28]`, checking the length.
fn images_tensor(pixels: &[f32], device: &Device) -> Result<Tensor<4>> {
    if pixels.is_empty() || pixels.len() % PIXELS != 0 {
        return Err(Error::Invalid(format!("expected a multiple of {PIXELS} pixels (28x28 images), got {}", pixels.len())));
    }
    if pixels.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid("the image contains NaN or infinite values".into()));
    }
    let n = pixels.len() / PIXELS;
    Ok(Tensor::from_data(TensorData::new(pixels.to_vec(), [n, 1, SIDE, SIDE]), device))
}

