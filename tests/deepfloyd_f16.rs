//! The IF stage-1 UNet computing in f16 (the device configured for f16 before any tensor is made:
//! weights, activations and outputs all f16, as a half-precision GPU or browser run would),
//! against diffusers' f32 outputs for the same weights (tests/fixtures/deepfloyd, see
//! deepfloyd_parity.rs for f32). Its own process: a device's float type is fixed at first use.
//!
//! Tolerance: f16 keeps 11 significant bits (relative rounding 4.9e-4 per operation); through the
//! ~40 convolutions, GroupNorms, softmaxes and residual sums of the tiny models the error grows
//! to 2.5e-3 (tiny_m) and 3.5e-3 (tiny_xl) of the largest output here, so the test allows 1e-2 of its largest
//! magnitude. The timestep features are computed in f32 and cast, as diffusers does: in f16 the
//! phase t * freq for t ~ 1000 would keep only half-unit precision.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use diffusion_playground::artifact::Dtype;
use diffusion_playground::device::{init_with, DeviceChoice};
use diffusion_playground::deepfloyd::weights::load_unet_dir;
use safetensors::SafeTensors;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deepfloyd")).join(name)
}

fn f32s<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn f16_compute_tracks_diffusers_f32() {
    // As `dp --compute f16` makes it.
    let device = init_with(DeviceChoice::Cpu, Dtype::F16).expect("flex computes in f16");
    for name in ["tiny_m", "tiny_xl"] {
        let model = load_unet_dir(&dir(name).join("unet"), &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        let io = std::fs::read(dir(name).join("io.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&io).unwrap();
        let get = |k: &str| {
            let t = st.tensor(k).unwrap();
            let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            TensorData::new(v, t.shape().to_vec())
        };
        let x = Tensor::<4>::from_data(get("sample"), &device);
        let t = Tensor::<1>::from_data(get("timesteps"), &device);
        let text = Tensor::<3>::from_data(get("encoder_hidden_states"), &device);
        assert_eq!(x.dtype(), DType::F16, "the device computes in f16");
        let out = model.try_forward(x, t, text).unwrap();
        assert_eq!(out.dtype(), DType::F16);
        let got = f32s(out);
        let want: Vec<f32> = get("out").convert::<f32>().try_to_vec::<f32>().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: f16 compute max |diff| {err:.3e}, {:.2e} of the largest output {scale:.3}", err / scale);
        assert!(got.iter().all(|v| v.is_finite()), "{name}: non-finite output in f16");
        assert!(err <= 1e-2 * scale, "{name}: f16 output off by {err:e} (largest output {scale})");
    }
}
