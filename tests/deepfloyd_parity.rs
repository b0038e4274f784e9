//! The IF stage-1 UNet against diffusers (`tests/reference/deepfloyd_reference.py`): two tiny
//! randomly initialised `UNet2DConditionModel`s with the IF-I layout, loaded from their diffusers
//! folders exactly as a user's real download would be (tiny_m: one f32 file; tiny_xl: two f16
//! shards and an index), run on the same inputs.
//!
//! Tolerances (f32 on the CPU backend): the time and pooled-text embeddings at 1e-5 (a few
//! matmuls), the whole UNet output at 1e-4 absolute on outputs of std ~0.3: about 40 layers of
//! convolutions, GroupNorms and softmaxes summed in a different order than PyTorch's; the
//! differences seen are ~1e-6. tiny_xl's reference is computed from the f16 values widened to
//! f32, so f16 storage adds no error beyond that.

use std::path::PathBuf;

use burn::prelude::*;
use diffusion_playground::deepfloyd::config::IfConfig;
use diffusion_playground::deepfloyd::unet::{parameter_shapes, IfUNet};
use diffusion_playground::deepfloyd::weights::load_unet_dir;
use safetensors::SafeTensors;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deepfloyd")).join(name)
}

struct Io(Vec<u8>);

impl Io {
    fn load(name: &str) -> Self {
        Io(std::fs::read(dir(name).join("io.safetensors")).unwrap())
    }

    fn get<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has no {name}"));
        let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        Tensor::from_data(TensorData::new(v, t.shape().to_vec()), device)
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

fn assert_close(name: &str, got: &[f32], want: &[f32], atol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (i, d) = got.iter().zip(want).map(|(a, b)| (a - b).abs()).enumerate().fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(d <= atol, "{name}: max |diff| {d:e} at {i} (got {}, want {}) > {atol:e}", got[i], want[i]);
}

fn check(name: &str) {
    let device = Device::flex();
    let model: IfUNet = load_unet_dir(&dir(name).join("unet"), &device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let io = Io::load(name);
    let x: Tensor<4> = io.get("sample", &device);
    let t: Tensor<1> = io.get("timesteps", &device);
    let text: Tensor<3> = io.get("encoder_hidden_states", &device);
    let t_emb = model.time_embedding.forward(diffusion_playground::deepfloyd::unet::timestep_features(
        t.clone(),
        model.config.block_out_channels[0],
        true,
        0.0,
    ));
    assert_close(&format!("{name} time_emb"), &values(t_emb), &values(io.get::<2>("time_emb", &device)), 1e-5);
    assert_close(&format!("{name} text_time_emb"), &values(model.add_embedding.forward(text.clone())), &values(io.get::<2>("text_time_emb", &device)), 1e-5);
    let out = model.try_forward(x, t, text).unwrap();
    assert_close(&format!("{name} out"), &values(out), &values(io.get::<4>("out", &device)), 1e-4);
}

#[test]
fn tiny_m_single_f32_file_matches_diffusers() {
    check("tiny_m");
}

#[test]
fn tiny_xl_sharded_f16_matches_diffusers() {
    check("tiny_xl");
}

#[test]
fn parameter_counts_match_the_files() {
    // The analytic key list is what packages, sizes and the key check rely on.
    for (name, n) in [("tiny_m", 222_486u64), ("tiny_xl", 448_582)] {
        let cfg = IfConfig::from_json(&std::fs::read_to_string(dir(name).join("unet/config.json")).unwrap(), name).unwrap();
        assert_eq!(cfg.parameter_count(), n, "{name}");
        use burn::module::Module;
        assert_eq!(cfg.init(&Device::flex()).num_params() as u64, n, "{name}: built model");
        assert!(parameter_shapes(&cfg).iter().any(|(k, _)| k == "add_embedding.pool.positional_embedding"));
    }
}
