//! The one place a backend is chosen. Model code only ever sees a `burn::tensor::Device`.

use crate::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

/// A backend the user can pick at run time (`--device cpu|wgpu|cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
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

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

/// Builds the device for a choice. Native only: in the browser the page initialises WebGPU
/// asynchronously (see the web bindings).
#[cfg(not(target_arch = "wasm32"))]
pub fn init(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Wgpu => {
            // wgpu panics when no adapter exists; turn that into a message.
            std::panic::catch_unwind(|| {
                let device = Device::wgpu(Default::default());
                // Touch the device so adapter selection happens here, not mid-job.
                let probe = burn::tensor::Tensor::<1>::zeros([1], &device);
                let _ = probe.into_data();
                device
            })
            .map_err(|_| {
                Error::Device(
                    "no wgpu adapter could be opened (no GPU driver, or no Vulkan/Metal/DX12 \
                     implementation installed; on Linux without a GPU install mesa-vulkan-drivers); \
                     use --device cpu"
                        .into(),
                )
            })
        }
        DeviceChoice::Cuda => cuda(),
    }
}

#[cfg(all(not(target_arch = "wasm32"), feature = "cuda"))]
fn cuda() -> Result<Device> {
    std::panic::catch_unwind(|| {
        let device = Device::cuda(0);
        let _ = burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
        device
    })
    .map_err(|_| Error::Device("CUDA device 0 could not be opened (no NVIDIA driver/NVRTC?); use --device cpu".into()))
}

#[cfg(all(not(target_arch = "wasm32"), not(feature = "cuda")))]
fn cuda() -> Result<Device> {
    Err(Error::Device(
        "this build has no CUDA backend: rebuild with `cargo build --release --features cuda`, or use --device wgpu|cpu".into(),
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
