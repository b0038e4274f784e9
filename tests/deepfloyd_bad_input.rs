//! Bad input to the DeepFloyd loaders never panics: each case is an error that names the file
//! and the problem.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use diffusion_playground::deepfloyd::config::IfConfig;
use diffusion_playground::deepfloyd::embeddings::PromptEmbeddings;
use diffusion_playground::deepfloyd::weights::load_unet_dir;
use diffusion_playground::image_ops::{decode_mask_square, decode_rgb_square};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deepfloyd");

fn copy_unet(name: &str, tag: &str) -> PathBuf {
    let dst = common::tmp(&format!("if-{tag}")).join("unet");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(Path::new(FIX).join(name).join("unet")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn load_err(dir: &Path) -> String {
    match load_unet_dir(dir, &Device::flex()) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn truncated_weights_name_the_file() {
    let d = copy_unet("tiny_m", "trunc");
    let f = d.join("diffusion_pytorch_model.safetensors");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() - 1000]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("diffusion_pytorch_model.safetensors") && e.contains("truncated"), "{e}");
    std::fs::write(&f, &b[..4]).unwrap();
    assert!(load_err(&d).contains("not a safetensors file"));
    std::fs::write(&f, b"{\"not\": \"safetensors\"}").unwrap();
    let e = load_err(&d);
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
}

#[test]
fn a_missing_shard_or_weights_file_is_named() {
    let d = copy_unet("tiny_xl", "shard");
    std::fs::remove_file(d.join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("00002-of-00002") && e.contains("missing"), "{e}");
    let empty = common::tmp("if-empty");
    std::fs::write(empty.join("config.json"), std::fs::read(Path::new(FIX).join("tiny_m/unet/config.json")).unwrap()).unwrap();
    assert!(load_err(&empty).contains("no diffusion_pytorch_model.safetensors"));
    assert!(load_err(&common::tmp("if-nothing")).contains("config.json"));
}

#[test]
fn config_and_weights_that_disagree_list_the_keys() {
    // Wider blocks than the weights: shape mismatches, by key.
    let d = copy_unet("tiny_m", "shape");
    edit_config(&d, |v| v["block_out_channels"] = serde_json::json!([16, 64]));
    let e = load_err(&d);
    assert!(e.contains("has shape") && e.contains("down_blocks.1"), "{e}");
    // Fewer layers than the weights: extra keys.
    let d = copy_unet("tiny_xl", "extra");
    edit_config(&d, |v| v["layers_per_block"] = serde_json::json!(1));
    let e = load_err(&d);
    assert!(e.contains("unexpected key") && e.contains("130 unexpected"), "{e}");
    // More layers than the weights: missing keys.
    let d = copy_unet("tiny_m", "missing");
    edit_config(&d, |v| v["layers_per_block"] = serde_json::json!(2));
    let e = load_err(&d);
    assert!(e.contains("missing down_blocks.0.resnets.1"), "{e}");
}

#[test]
fn an_extra_tensor_in_the_file_is_reported() {
    let d = copy_unet("tiny_m", "extra-tensor");
    let f = d.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let extra = vec![0u8; 16];
    let mut views: Vec<(String, TensorView)> = st.tensors().into_iter().collect();
    views.push(("lora.up.weight".into(), TensorView::new(Dtype::F32, vec![4], &extra).unwrap()));
    std::fs::write(&f, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = load_err(&d);
    assert!(e.contains("unexpected key lora.up.weight"), "{e}");
}

#[test]
fn unsupported_configs_are_refused_by_name() {
    let base = std::fs::read_to_string(Path::new(FIX).join("tiny_m/unet/config.json")).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut j: serde_json::Value = serde_json::from_str(&base).unwrap();
        j[k] = v;
        IfConfig::from_json(&j.to_string(), "config.json").err().map(|e| e.to_string()).unwrap_or_default()
    };
    let e = with("down_block_types", serde_json::json!(["ResnetDownsampleBlock2D", "CrossAttnDownBlock2D"]));
    assert!(e.contains("CrossAttnDownBlock2D") && e.contains("not supported"), "{e}");
    assert!(with("mid_block_type", serde_json::json!("UNetMidBlock2DCrossAttn")).contains("mid_block_type"));
    assert!(with("class_embed_type", serde_json::json!("timestep")).contains("class_embed_type"));
    assert!(with("resnet_time_scale_shift", serde_json::json!("default")).contains("resnet_time_scale_shift"));
    assert!(with("norm_num_groups", serde_json::json!(5)).contains("norm_num_groups"));
    assert!(with("block_out_channels", serde_json::json!([16])).contains("block_out_channels"));
    assert!(IfConfig::from_json("{", "config.json").unwrap_err().to_string().contains("config.json"));
}

#[test]
fn wrong_embeddings_and_inputs_are_errors() {
    let device = Device::flex();
    // Embeddings: a [77, 8] tensor where the model takes 24-wide tokens, and an unknown prompt.
    let data = vec![0u8; 77 * 8 * 4];
    let views = vec![("a photo".to_string(), TensorView::new(Dtype::F32, vec![77, 8], &data).unwrap())];
    let emb = PromptEmbeddings::from_bytes(safetensors::serialize(views, None).unwrap(), "prompts.safetensors").unwrap();
    let e = emb.get("a photo", 24, &device).err().unwrap().to_string();
    assert!(e.contains("prompts.safetensors") && e.contains("[77, 8]") && e.contains("24"), "{e}");
    let e = emb.get("a dog", 24, &device).err().unwrap().to_string();
    assert!(e.contains("no embedding for the prompt \"a dog\"") && e.contains("a photo"), "{e}");
    assert!(PromptEmbeddings::from_bytes(b"garbage".to_vec(), "p.safetensors").is_err());
    // The model refuses a text embedding of the wrong width and odd image sizes.
    let m = load_unet_dir(&Path::new(FIX).join("tiny_m/unet"), &device).unwrap();
    let x = Tensor::<4>::zeros([1, 3, 16, 16], &device);
    let t = Tensor::<1>::zeros([1], &device);
    let e = m.try_forward(x.clone(), t.clone(), Tensor::zeros([1, 77, 8], &device)).err().unwrap().to_string();
    assert!(e.contains("text embedding has shape"), "{e}");
    let e = m.try_forward(Tensor::zeros([1, 3, 15, 16], &device), t, Tensor::zeros([1, 7, 24], &device)).err().unwrap().to_string();
    assert!(e.contains("15x16"), "{e}");
}

#[test]
fn images_that_cannot_be_decoded_and_masks_of_the_wrong_size() {
    let e = decode_rgb_square(b"not an image", 64, "photo.jpg").unwrap_err().to_string();
    assert!(e.contains("photo.jpg") && e.contains("cannot be decoded"), "{e}");
    let mut png = Vec::new();
    image::RgbImage::from_pixel(80, 60, image::Rgb([255, 0, 0])).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let (v, size) = decode_rgb_square(&png, 64, "red.png").unwrap();
    assert_eq!(size, (80, 60));
    assert_eq!(v.len(), 3 * 64 * 64);
    assert!((v[0] - 1.0).abs() < 1e-6 && (v[64 * 64] + 1.0).abs() < 1e-6, "red is (1, -1, -1)");
    let mut mask = Vec::new();
    image::GrayImage::from_pixel(64, 64, image::Luma([255])).write_to(&mut std::io::Cursor::new(&mut mask), image::ImageFormat::Png).unwrap();
    let e = decode_mask_square(&mask, 64, size, "mask.png").unwrap_err().to_string();
    assert!(e.contains("mask.png") && e.contains("64x64") && e.contains("80x60"), "{e}");
}

/// The course's embeddings come as a `torch.save`d dict (`tests/reference/embeddings_pth.py`):
/// every entry reads back exactly as torch saved it (the same values in safetensors beside it),
/// views into a shared storage included; a damaged file is an error naming it.
#[test]
fn course_pth_embeddings_read_exactly() {
    let device = Device::flex();
    let dir = Path::new(FIX).join("embeddings");
    let pth = PromptEmbeddings::from_file(&dir.join("prompts.pth")).unwrap();
    let st = PromptEmbeddings::from_file(&dir.join("prompts.safetensors")).unwrap();
    let names: Vec<&str> = pth.names().collect();
    assert_eq!(names, st.names().collect::<Vec<_>>());
    assert_eq!(names.len(), 5);
    for n in names {
        let a: Vec<f32> = pth.get(n, 8, &device).unwrap().into_data().try_to_vec().unwrap();
        let b: Vec<f32> = st.get(n, 8, &device).unwrap().into_data().try_to_vec().unwrap();
        assert_eq!(a.len(), 77 * 8, "{n:?}");
        assert!(a == b, "{n:?}: the .pth and safetensors values differ");
        assert!(a.iter().any(|v| *v != 0.0), "{n:?} read as zeros");
    }
    // Truncated: the ZIP directory at the end is gone.
    let bytes = std::fs::read(dir.join("prompts.pth")).unwrap();
    let bad = common::tmp("pth-trunc").join("prompts.pth");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let e = PromptEmbeddings::from_file(&bad).err().unwrap().to_string();
    assert!(e.contains("prompts.pth") && e.contains("torch.save"), "{e}");
}

/// The same reader runs in the page on whatever a visitor picks: every truncation of the real
/// file is an error, and every one-byte change is an error or (a byte nothing reads, such as a
/// ZIP timestamp) the same values; none panics.
#[test]
fn damaged_pth_embeddings_are_errors_or_unchanged() {
    let bytes = std::fs::read(Path::new(FIX).join("embeddings/prompts.pth")).unwrap();
    let good = PromptEmbeddings::from_bytes(bytes.clone(), "p.pth").unwrap();
    for n in 0..bytes.len() {
        assert!(PromptEmbeddings::from_bytes(bytes[..n].to_vec(), "p.pth").is_err(), "a .pth cut at {n} bytes was read");
    }
    let (mut refused, mut same) = (0, 0);
    for i in 0..bytes.len() {
        for x in [0x00u8, 0xff, bytes[i] ^ 0x01] {
            if x == bytes[i] {
                continue;
            }
            let mut b = bytes.clone();
            b[i] = x;
            match PromptEmbeddings::from_bytes(b, "p.pth") {
                Err(e) => {
                    assert!(e.to_string().contains("p.pth"), "{e}");
                    refused += 1;
                }
                Ok(e) => {
                    assert!(e.safetensors_bytes() == good.safetensors_bytes(), "changing byte {i} to {x:#04x} changed what was read");
                    same += 1;
                }
            }
        }
    }
    assert!(refused > same, "{refused} changes refused, {same} read the same");
}

/// Every value a later computation divides by, indexes with or allocates from is checked when
/// the config is read, by key: none of these may panic, abort or build a model.
#[test]
fn config_values_that_would_divide_by_zero_or_allocate_without_bound_are_refused() {
    let base = std::fs::read_to_string(Path::new(FIX).join("tiny_m/unet/config.json")).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut j: serde_json::Value = serde_json::from_str(&base).unwrap();
        j[k] = v;
        match IfConfig::from_json(&j.to_string(), "config.json") {
            Ok(_) => panic!("{k} = {}: accepted", j[k]),
            Err(e) => e.to_string(),
        }
    };
    for (k, v) in [
        ("norm_num_groups", serde_json::json!(0)),
        ("in_channels", serde_json::json!(4)),
        ("out_channels", serde_json::json!(3)),
        ("sample_size", serde_json::json!(0)),
        ("sample_size", serde_json::json!(15)),
        ("sample_size", serde_json::json!(1_000_000)),
        ("layers_per_block", serde_json::json!(0)),
        ("layers_per_block", serde_json::json!(100_000)),
        ("block_out_channels", serde_json::json!([16, 1_000_000_000u64])),
        ("block_out_channels", serde_json::json!([16, 32, 64, 128, 256, 512, 1024, 2048, 4096])),
        ("cross_attention_dim", serde_json::json!(0)),
        ("encoder_hid_dim", serde_json::json!(1u64 << 40)),
        ("norm_eps", serde_json::json!(-1e-5)),
        ("norm_eps", serde_json::json!(0)),
        ("resnet_out_scale_factor", serde_json::json!(0)),
        ("mid_block_scale_factor", serde_json::json!(-1)),
        ("addition_embed_type_num_heads", serde_json::json!(0)),
    ] {
        let e = with(k, v.clone());
        assert!(e.contains(k) && e.contains("config.json"), "{k} = {v}: {e}");
    }
    // Within every bound, yet far too big to build: refused by its parameter count.
    let mut j: serde_json::Value = serde_json::from_str(&base).unwrap();
    j["block_out_channels"] = serde_json::json!([8192, 8192]);
    j["cross_attention_dim"] = serde_json::json!(8192);
    j["attention_head_dim"] = serde_json::json!(64);
    j["layers_per_block"] = serde_json::json!(16);
    let e = IfConfig::from_json(&j.to_string(), "config.json").unwrap_err().to_string();
    assert!(e.contains("parameters"), "{e}");
}

#[test]
fn scheduler_configs_out_of_range_are_refused() {
    use diffusion_playground::deepfloyd::config::SchedulerConfig;
    for (json, key) in [
        (r#"{"num_train_timesteps": 100000000000}"#, "num_train_timesteps"),
        (r#"{"num_train_timesteps": 1}"#, "num_train_timesteps"),
        (r#"{"beta_schedule": "linear", "beta_start": 0.5, "beta_end": 1.5}"#, "beta_end"),
        (r#"{"beta_schedule": "linear", "beta_start": 0, "beta_end": 0.02}"#, "beta_start"),
        (r#"{"beta_schedule": "linear", "beta_start": 0.02, "beta_end": 0.01}"#, "beta_start"),
        (r#"{"clip_sample": true, "clip_sample_range": 0}"#, "clip_sample_range"),
        (r#"{"thresholding": true, "dynamic_thresholding_ratio": 2}"#, "dynamic_thresholding_ratio"),
    ] {
        let e = SchedulerConfig::from_json(json, "scheduler_config.json").err().map(|e| e.to_string()).unwrap_or_else(|| panic!("{json}: accepted"));
        assert!(e.contains(key) && e.contains("scheduler_config.json"), "{json}: {e}");
    }
}

/// A NaN or infinity anywhere in the weights is refused at load with the tensor's name, in a
/// diffusers folder (f32 here) and through the converter.
#[test]
fn non_finite_weights_are_refused_by_name() {
    for bad in [f32::NAN, f32::INFINITY] {
        let d = copy_unet("tiny_m", &format!("nan-{bad}"));
        let f = d.join("diffusion_pytorch_model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let name = "conv_in.weight";
        let t = st.tensor(name).unwrap();
        let mut data = t.data().to_vec();
        data[4..8].copy_from_slice(&bad.to_le_bytes());
        let mut views: Vec<(String, TensorView)> = st.tensors().into_iter().filter(|(k, _)| k != name).collect();
        views.push((name.into(), TensorView::new(t.dtype(), t.shape().to_vec(), &data).unwrap()));
        std::fs::write(&f, safetensors::serialize(views, None).unwrap()).unwrap();
        let e = load_err(&d);
        assert!(e.contains(name) && e.contains(&bad.to_string()), "{e}");
        let out = common::tmp(&format!("nan-pkg-{bad}"));
        let e = diffusion_playground::deepfloyd::convert::convert_dir(&d, &out, diffusion_playground::artifact::Dtype::Q8, |_, _| true).err().unwrap().to_string();
        assert!(e.contains(name), "{e}");
    }
}

/// A safetensors header whose shape has more elements than can exist is an error, not an
/// overflow.
#[test]
fn a_shape_that_overflows_is_refused() {
    let header = serde_json::json!({"w": {"dtype": "F32", "shape": [u64::MAX / 2, 4], "data_offsets": [0, 16]}}).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 16]);
    let e = diffusion_playground::artifact::safetensors::read_header(&bytes, bytes.len() as u64, "big.safetensors").unwrap_err().to_string();
    assert!(e.contains("big.safetensors") && e.contains("more elements"), "{e}");
}

#[test]
fn a_null_prompt_of_another_token_count_is_a_clear_error() {
    use diffusion_playground::deepfloyd::pipeline::Prompt;
    let device = Device::flex();
    let e = Prompt::new(Tensor::zeros([1, 77, 24], &device), Some(Tensor::zeros([1, 64, 24], &device))).err().unwrap().to_string();
    assert!(e.contains("[77, 24]") && e.contains("[64, 24]") && e.contains("null prompt"), "{e}");
    assert!(Prompt::new(Tensor::zeros([1, 77, 24], &device), Some(Tensor::zeros([1, 77, 24], &device))).is_ok());
}

/// A shard index names files too: only plain names of regular files in the folder (or, for a
/// Hugging Face cache, its blobs) are opened.
#[test]
fn a_shard_index_cannot_reach_outside_its_folder() {
    let d = copy_unet("tiny_xl", "index-escape");
    let index = d.join("diffusion_pytorch_model.safetensors.index.json");
    let good = std::fs::read_to_string(&index).unwrap();
    let first = "diffusion_pytorch_model-00001-of-00002.safetensors";
    std::fs::write(d.parent().unwrap().join("secret.safetensors"), b"not yours").unwrap();
    for name in ["../secret.safetensors", "/etc/passwd"] {
        std::fs::write(&index, good.replace(first, name)).unwrap();
        let e = load_err(&d);
        assert!(e.contains("plain files"), "{name}: {e}");
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/dev/zero", d.join("zero.safetensors")).unwrap();
        std::fs::write(&index, good.replace(first, "zero.safetensors")).unwrap();
        let e = load_err(&d);
        assert!(e.contains("outside") || e.contains("not a regular file"), "{e}");
    }
}
