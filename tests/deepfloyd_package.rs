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
use diffusion_playground::artifact::Dtype;
use diffusion_playground::deepfloyd::package::PackageManifest;
use diffusion_playground::deepfloyd::convert::convert_dir;
use diffusion_playground::deepfloyd::weights::{load_package_dir, load_unet_dir};
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
        for (scheme, bound) in [(Dtype::F16, 1e-2), (Dtype::Q8, 5e-2), (Dtype::Q4, 0.5)] {
            let out = common::tmp(&format!("pkg-{name}-{scheme:?}"));
            let m = convert_dir(&unet, &out, scheme, |_, _| true).unwrap();
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
    convert_dir(&unet, &out, Dtype::Q8, |_, _| true).unwrap();
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
    m["models"][0]["config"]["layers_per_block"] = serde_json::json!(2);
    let e = PackageManifest::parse(&m.to_string(), "manifest.json").err().unwrap().to_string();
    assert!(e.contains("has no tensor down_blocks.0.resnets.1"), "{e}");
    assert!(PackageManifest::parse("{}", "manifest.json").is_err());
    std::fs::write(&mpath, &text).unwrap();
    assert!(load_package_dir(&out, &device).is_ok());
}

/// A package's manifest is data from elsewhere: file names that leave the folder, pieces whose
/// offsets wrap around, and quantized tensors that are not whole blocks are refused before
/// anything is read; a shard is never read past the size the manifest states.
#[test]
fn hostile_manifests_are_refused_before_reading() {
    let unet = Path::new(FIX).join("tiny_m").join("unet");
    let root = common::tmp("pkg-hostile");
    let out = root.join("pkg");
    convert_dir(&unet, &out, Dtype::Q8, |_, _| true).unwrap();
    let good = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    std::fs::write(root.join("secret.bin"), b"not yours").unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        f(&mut v);
        std::fs::write(out.join("manifest.json"), v.to_string()).unwrap();
        match load_package_dir(&out, &Device::flex()) {
            Ok(_) => panic!("a hostile manifest loaded"),
            Err(e) => e.to_string(),
        }
    };
    for name in ["../secret.bin", "/etc/passwd", "sub/shard.bin", "..", ""] {
        let e = edit(&|v| v["models"][0]["files"][0]["file"] = serde_json::json!(name));
        assert!(e.contains("plain files"), "{name:?}: {e}");
        assert!(!e.contains("not yours") && !e.contains(" 9 bytes"), "{name:?}: nothing of the outside file is told: {e}");
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(root.join("secret.bin"), out.join("link.bin")).unwrap();
        let e = edit(&|v| v["models"][0]["files"][0]["file"] = serde_json::json!("link.bin"));
        assert!(e.contains("outside"), "{e}");
        // A device that never ends, behind a link: refused without reading it.
        std::os::unix::fs::symlink("/dev/zero", out.join("zero.bin")).unwrap();
        let e = edit(&|v| v["models"][0]["files"][0]["file"] = serde_json::json!("zero.bin"));
        assert!(e.contains("outside") || e.contains("not a regular file"), "{e}");
    }
    let e = edit(&|v| v["models"][0]["tensors"][0]["pieces"][0]["offset"] = serde_json::json!(u64::MAX - 1));
    assert!(e.contains("points outside its shards"), "{e}");
    let e = edit(&|v| v["models"][0]["files"][0]["bytes"] = serde_json::json!(u64::MAX));
    assert!(e.contains("the manifest says"), "{e}");
    // A q8 tensor whose values are not whole 32-value blocks: refused, not an index panic.
    let m: serde_json::Value = serde_json::from_str(&good).unwrap();
    let i = m["models"][0]["tensors"].as_array().unwrap().iter().position(|t| t["dtype"] == "f16" && t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>() % 32 != 0).expect("a tensor of odd size");
    let e = edit(&|v| v["models"][0]["tensors"][i]["dtype"] = serde_json::json!("q8"));
    assert!(e.contains("whole number of 32-value blocks"), "{e}");
    std::fs::write(out.join("manifest.json"), &good).unwrap();
    load_package_dir(&out, &Device::flex()).unwrap();
}

/// A NaN block scale (or value) in a package is refused with the tensor's name.
#[test]
fn a_package_with_a_nan_scale_is_refused() {
    let unet = Path::new(FIX).join("tiny_m").join("unet");
    let out = common::tmp("pkg-nan");
    let m = convert_dir(&unet, &out, Dtype::Q8, |_, _| true).unwrap();
    let t = m.tensors.iter().find(|t| t.dtype == Dtype::Q8).unwrap();
    let p = &t.pieces[0];
    let shard = out.join(&m.shards[p.shard].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = p.offset as usize;
    bytes[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    std::fs::write(&shard, &bytes).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    v["models"][0]["files"][p.shard]["sha256"] = serde_json::json!(diffusion_playground::artifact::sha256_hex(&bytes));
    std::fs::write(out.join("manifest.json"), v.to_string()).unwrap();
    let e = load_package_dir(&out, &Device::flex()).err().unwrap().to_string();
    assert!(e.contains(&t.name) && e.contains("NaN"), "{e}");
}

/// A stopped conversion (Ctrl-C) ends between tensors: no manifest (so nothing loads it as a
/// package) and no temporary file left behind.
#[test]
fn a_stopped_conversion_leaves_no_package() {
    let unet = Path::new(FIX).join("tiny_m").join("unet");
    let out = common::tmp("pkg-stopped");
    let e = convert_dir(&unet, &out, Dtype::Q8, |done, _| done < 3).err().unwrap();
    assert!(matches!(e, diffusion_playground::Error::Interrupted), "{e}");
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert!(!names.iter().any(|n| n == "manifest.json" || n.ends_with(".tmp")), "{names:?}");
    assert!(load_package_dir(&out, &Device::flex()).is_err());
}

/// The converter the page drives (headers, then a planned list of byte ranges, then one tensor
/// at a time) refuses what would make a wrong package, and makes the same package as `dp convert`.
#[test]
fn the_page_converter_checks_its_inputs_and_matches_convert_dir() {
    use diffusion_playground::artifact::safetensors::read_header;
    use diffusion_playground::deepfloyd::convert::Converter;
    let dir = Path::new(FIX).join("tiny_m/unet");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let file = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let header = || read_header(&file, file.len() as u64, "w").unwrap();
    let new = || Converter::new(&config, "config.json", Dtype::F16, |_: &str, _: &[u8]| Ok(())).unwrap();

    // A key in two files (the .fp16 and the full-precision weights picked together).
    let mut c = new();
    c.add_file("a.safetensors", header()).unwrap();
    let e = c.add_file("b.safetensors", header()).unwrap_err().to_string();
    assert!(e.contains("holds too") && e.contains("one download"), "{e}");
    // Nothing planned, tensors out of order, a tensor of the wrong length, an unfinished run.
    let mut c = new();
    assert!(c.plan().unwrap_err().to_string().contains("no weight file"));
    c.add_file("w", header()).unwrap();
    let plan = c.plan().unwrap();
    let bytes = |i: usize| &file[plan[i].start as usize..plan[i].end as usize];
    let e = c.add(&plan[1].name, bytes(1)).unwrap_err().to_string();
    assert!(e.contains(&format!("expected the tensor {} next", plan[0].name)), "{e}");
    let e = c.add(&plan[0].name, &bytes(0)[1..]).unwrap_err().to_string();
    assert!(e.contains("cut short"), "{e}");
    c.add(&plan[0].name, bytes(0)).unwrap();
    assert_eq!(c.progress(), (1, plan.len()));
    assert!(c.finish().unwrap_err().to_string().contains(&format!("1 of {} tensors", plan.len())));
    // A NaN in a tensor's bytes.
    let mut c = new();
    c.add_file("w", header()).unwrap();
    let plan = c.plan().unwrap();
    let mut nan = file[plan[0].start as usize..plan[0].end as usize].to_vec();
    nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(c.add(&plan[0].name, &nan).unwrap_err().to_string().contains("NaN"));

    // Whole: the same manifest, hashes included, as `dp convert` writes.
    let shards = std::cell::RefCell::new(Vec::new());
    let mut c = Converter::new(&config, "config.json", Dtype::F16, |f: &str, b: &[u8]| {
        shards.borrow_mut().push((f.to_string(), b.to_vec()));
        Ok(())
    })
    .unwrap();
    c.add_file("diffusion_pytorch_model.safetensors", header()).unwrap();
    for p in c.plan().unwrap() {
        c.add(&p.name, &file[p.start as usize..p.end as usize]).unwrap();
    }
    let m = c.finish().unwrap();
    let out = common::tmp("pkg-converter");
    let want = convert_dir(&dir, &out, Dtype::F16, |_, _| true).unwrap();
    assert_eq!(m.to_json(), want.to_json());
    assert_eq!(shards.borrow().len(), want.shards.len());
}
