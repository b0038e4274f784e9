//! Packages: a diffusers folder converted to f16, q8 and q4 loads back (every shard hashed), and
//! the quantized models stay close to f32 on the tiny IF-layout models. A changed byte, a
//! missing or truncated shard, or a manifest that disagrees with its config is an error.
//!
//! Output error is measured as max |out_q - out_f32| / max |out_f32| on the fixture inputs;
//! the bounds (f16 1e-2, q8 5e-2, q4 0.5) are loose ceilings over what was measured (printed
//! with --nocapture; README lists the figures).

mod common;

use std::path::Path;

use burn::prelude::*;
use diffusion_playground::deepfloyd::package::{PackageManifest, Scheme};
use diffusion_playground::deepfloyd::weights::{convert_dir, load_package_dir, load_unet_dir};
use safetensors::SafeTensors;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deepfloyd");

fn io<const D: usize>(name: &str, key: &str, device: &Device) -> Tensor<D> {
    let b = std::fs::read(format!("{FIX}/{name}/io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&b).unwrap();
    let t = st.tensor(key).unwrap();
    let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    Tensor::from_data(TensorData::new(v, t.shape().to_vec()), device)
}

#[test]
fn quantized_packages_load_and_stay_close() {
    let device = Device::flex();
    for name in ["tiny_m", "tiny_xl"] {
        let unet = Path::new(FIX).join(name).join("unet");
        let reference = load_unet_dir(&unet, &device).unwrap();
        let run = |m: &diffusion_playground::deepfloyd::unet::IfUNet| m.forward(io(name, "sample", &device), io(name, "timesteps", &device), io(name, "encoder_hidden_states", &device));
        let want = run(&reference);
        let scale: f32 = want.clone().abs().max().into_scalar();
        for (scheme, bound) in [(Scheme::F16, 1e-2), (Scheme::Q8, 5e-2), (Scheme::Q4, 0.5)] {
            let out = common::tmp(&format!("pkg-{name}-{scheme:?}"));
            let m = convert_dir(&unet, &out, scheme, |_, _| {}).unwrap();
            let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
            let model = load_package_dir(&out, &device).unwrap();
            let err: f32 = (run(&model) - want.clone()).abs().max().into_scalar();
            eprintln!("{name} {scheme:?}: {bytes} bytes, relative output error {:.2e}", err / scale);
            assert!(err / scale < bound, "{name} {scheme:?}: relative error {}", err / scale);
        }
    }
}

#[test]
fn corrupt_or_incomplete_packages_are_refused() {
    let device = Device::flex();
    let unet = Path::new(FIX).join("tiny_m/unet");
    let out = common::tmp("pkg-bad");
    convert_dir(&unet, &out, Scheme::Q8, |_, _| {}).unwrap();
    let shard = out.join("shard-00001.bin");
    let good = std::fs::read(&shard).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 1;
    std::fs::write(&shard, &bad).unwrap();
    let e = load_package_dir(&out, &device).err().unwrap().to_string();
    assert!(e.contains("shard-00001.bin") && e.contains("sha256"), "{e}");
    std::fs::write(&shard, &good[..good.len() - 1]).unwrap();
    let e = load_package_dir(&out, &device).err().unwrap().to_string();
    assert!(e.contains("incomplete"), "{e}");
    std::fs::remove_file(&shard).unwrap();
    assert!(load_package_dir(&out, &device).err().unwrap().to_string().contains("shard-00001.bin"));
    std::fs::write(&shard, &good).unwrap();
    // A manifest whose config does not fit its tensors.
    let mpath = out.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["config"]["layers_per_block"] = serde_json::json!(2);
    let e = PackageManifest::parse(&m.to_string(), "manifest.json").err().unwrap().to_string();
    assert!(e.contains("has no tensor down_blocks.0.resnets.1"), "{e}");
    assert!(PackageManifest::parse("{}", "manifest.json").is_err());
    std::fs::write(&mpath, &text).unwrap();
    assert!(load_package_dir(&out, &device).is_ok());
}
