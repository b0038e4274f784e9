//! The page's wasm API (wasm32 only). The page runs it inside a Web Worker so the UI never
//! blocks; this layer only turns JS values into library calls and back, and holds no model logic.
//!
//! Every call that can fail on user input returns a rejected Promise / thrown `Error` whose
//! message names the file or value at fault. Methods return Promises built with
//! `future_to_promise` over cloned state, so a long generation never holds a borrow of the
//! playground across an `await`.

use std::cell::RefCell;
use std::rc::Rc;

use burn::prelude::*;
use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

use crate::Error;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: Error) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

mod deepfloyd;
mod mnist;

/// What a playground has loaded, by half.
#[derive(Default)]
struct State {
    mnist: mnist::MnistState,
    deepfloyd: deepfloyd::IfState,
}

/// The models on one device. Create with [`Playground::create`].
#[wasm_bindgen]
pub struct Playground {
    device: Device,
    backend: String,
    adapter: String,
    /// What one GPU buffer may hold and whether f16 shaders exist; None on the CPU.
    limits: Option<deepfloyd::Limits>,
    /// Where IF computes: `device`, or where the adapter has shader-f16 a second runtime on the
    /// same GPU whose float type is f16. burn fixes a device's float type at its first tensor, and
    /// the MNIST models (and their parity with the desktop) stay f32, hence two.
    if_device: Device,
    if_compute: deepfloyd::Compute,
    state: Rc<RefCell<State>>,
}

#[wasm_bindgen]
impl Playground {
    /// Opens a compute device: `"webgpu"` (through wgpu; rejects when the browser has no usable
    /// adapter, so the caller can fall back) or `"cpu"` (burn's Flex backend compiled to wasm).
    /// `if_compute` (`"auto"` by default, `"f16"` or `"f32"`) is the float type IF computes in:
    /// auto is f16 where the adapter has shader-f16, else f32.
    pub fn create(backend: String, if_compute: Option<String>) -> Promise {
        future_to_promise(async move {
            let wanted = deepfloyd::Compute::parse(if_compute.as_deref()).map_err(js_err)?;
            let (device, backend, adapter, limits, if_device, if_compute) = match backend.as_str() {
                "webgpu" => {
                    let (device, setup) = Device::wgpu_options()
                        .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
                        .init_with_setup_async()
                        .await
                        .map_err(|e| js_err(Error::Device(format!("WebGPU could not be initialised: {e}"))))?;
                    let info = setup.adapter.get_info();
                    let name = [info.name.as_str(), info.driver.as_str(), info.driver_info.as_str()]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" / ");
                    let adapter = if name.is_empty() { format!("{:?} adapter", info.backend) } else { name };
                    // burn's runtime requests every limit and feature the adapter has.
                    let l = setup.device.limits();
                    let limits = deepfloyd::Limits {
                        max_buffer_size: l.max_buffer_size,
                        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                        shader_f16: setup.device.features().contains(burn::tensor::wgpu::wgpu::Features::SHADER_F16),
                    };
                    let (if_device, if_compute) = deepfloyd::Compute::webgpu(wanted, limits.shader_f16, &device, setup);
                    (device, "webgpu", adapter, Some(limits), if_device, if_compute)
                }
                "cpu" => {
                    let (if_device, if_compute) = deepfloyd::Compute::cpu(wanted, &Device::flex());
                    (Device::flex(), "cpu", "burn Flex on the CPU (wasm, one thread)".to_string(), None, if_device, if_compute)
                }
                other => return Err(js_err(Error::Invalid(format!("unknown backend '{other}': use webgpu or cpu")))),
            };
            let pg = Playground { device, backend: backend.into(), adapter, limits, if_device, if_compute, state: Rc::default() };
            Ok(pg.into())
        })
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// A human description of the adapter in use.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }
}

/// The browser-safe readback (a blocking read panics on WebGPU).
async fn read_f32<const D: usize>(t: Tensor<D>) -> std::result::Result<Vec<f32>, JsValue> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| js_err(Error::Device(format!("the GPU was lost or ran out of memory while results were read back ({})", one_line(&format!("{e:?}"))))))?;
    // IF may compute in f16; the page always gets f32.
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| js_err(Error::Device(format!("unexpected result type: {e:?}"))))
}

/// wgpu's errors are multi-line chains ("Caused by:", a backtrace note): their causes, on one line.
fn one_line(chain: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for l in chain.lines().map(str::trim) {
        if l.is_empty() || l.starts_with("Caused by") || l.starts_with("Backtrace") || l.starts_with("No backtrace") || parts.contains(&l) {
            continue;
        }
        parts.push(l);
    }
    parts.join("; ")
}

/// Interprets the step callback's answer: a Promise is awaited; only an explicit `false` stops.
async fn keep_going(ret: JsValue) -> std::result::Result<bool, JsValue> {
    let v = match ret.dyn_into::<Promise>() {
        Ok(p) => JsFuture::from(p).await?,
        Err(v) => v,
    };
    Ok(v.as_bool() != Some(false))
}
