//! The one place a backend is chosen. Model code only ever sees a `burn::tensor::Device`.

use crate::artifact::Dtype;
use crate::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

/// A backend the user can pick at run time (`--device cpu|wgpu|cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's pure-Rust Flex backend (multi-threaded SIMD on the desktop).
    Cpu,
    /// wgpu on whatever graphics API the platform offers (Vulkan, Metal, DX12, WebGPU).
    Wgpu,
    /// CUDA (the crate must be built with `--features cuda`).
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" | "webgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(Error::Invalid(format!("unknown device '{other}': use cpu, wgpu or cuda"))),
        }
    }
}

crate::named!(DeviceChoice { Cpu => "cpu", Wgpu => "wgpu", Cuda => "cuda" });

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::named::Named::name(*self))
    }
}

/// The float types a device computes in (`--compute`): f32, or f16 (half the memory traffic, on
/// hardware with fast f16, GPUs; on the CPU it is emulated and slower; IF only, see
/// tests/deepfloyd_f16.rs for its error). Weights stored in another type are cast on load (see
/// the IF weight adapter).
pub const COMPUTE_DTYPES: [Dtype; 2] = [Dtype::F32, Dtype::F16];

/// Builds the device for a choice and fixes the float type it computes in. Native only: in the
/// browser the page initialises WebGPU asynchronously (see the web bindings). burn locks a device's
/// float type at its first tensor, so it is set here, before anything is made on it.
#[cfg(not(target_arch = "wasm32"))]
pub fn init_with(choice: DeviceChoice, compute: Dtype) -> Result<Device> {
    if !COMPUTE_DTYPES.contains(&compute) {
        return Err(Error::Invalid(format!("`compute` {compute}: a device computes in f32 or f16")));
    }
    match choice {
        DeviceChoice::Cpu => configure(Device::flex(), choice, compute),
        DeviceChoice::Wgpu => {
            // wgpu panics when no adapter exists; turn that into a message.
            std::panic::catch_unwind(|| {
                let device = configure(Device::wgpu(Default::default()), choice, compute)?;
                // Touch the device so adapter selection happens here, not mid-job.
                let probe = burn::tensor::Tensor::<1>::zeros([1], &device);
                let _ = probe.into_data();
                Ok(device)
            })
            .map_err(|_| {
                Error::Device(format!(
                    "no wgpu adapter could be opened{} (no GPU driver, or no Vulkan/Metal/DX12 \
                     implementation installed; on Linux without a GPU install mesa-vulkan-drivers); \
                     use `device` cpu",
                    if compute == Dtype::F16 { " for f16 compute (try `compute` f32)" } else { "" }
                ))
            })?
        }
        DeviceChoice::Cuda => cuda(compute),
    }
}

/// Sets the float type before the device's first tensor (afterwards burn refuses).
#[cfg(not(target_arch = "wasm32"))]
fn configure(mut device: Device, choice: DeviceChoice, compute: Dtype) -> Result<Device> {
    if compute == Dtype::F16 {
        device
            .configure(burn::tensor::FloatDType::F16)
            .map_err(|e| Error::Device(format!("`device` {choice} cannot compute in f16 ({e:?}); use `compute` f32")))?;
    }
    Ok(device)
}

#[cfg(all(not(target_arch = "wasm32"), feature = "cuda"))]
fn cuda(compute: Dtype) -> Result<Device> {
    std::panic::catch_unwind(|| {
        let device = configure(Device::cuda(0), DeviceChoice::Cuda, compute)?;
        let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
        Ok(device)
    })
    .map_err(|_| Error::Device("CUDA device 0 could not be opened (no NVIDIA driver/NVRTC?); use `device` cpu".into()))?
}

#[cfg(all(not(target_arch = "wasm32"), not(feature = "cuda")))]
fn cuda(_: Dtype) -> Result<Device> {
    Err(Error::Device(
        "this build has no CUDA backend: rebuild with `cargo build --release --features cuda`, or use `device` wgpu|cpu".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_choices() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("WGPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Wgpu);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cpu, wgpu or cuda"), "{err}");
    }
}

/// Whether the environment variable `name` is set to anything but "0": the switches that send
/// the CPU kernels of [`crate::conv`] and [`crate::activation`] back to burn's (A/B benchmarks).
/// In the browser there is no environment: always false.
pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v != "0")
}
