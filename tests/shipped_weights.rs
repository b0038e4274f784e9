//! The weights in pkg/ are whole (sizes and hashes match the manifest), load into the
//! architectures the manifest names, and do their job: the shipped flow model draws the digit
//! asked for (each class-conditioned one), as judged by the shipped classifier, with the page's default sampler.

use burn::module::Module;
use burn::prelude::*;
use diffusion_playground::mnist::classifier::argmax_rows;
use diffusion_playground::mnist::flow::{FlowPipeline, FlowSampler, Solver};
use diffusion_playground::sampling::{RunContext, SeededNoise};
use diffusion_playground::artifact::manifest::Kind;
use diffusion_playground::mnist::package::{classifier_from_bytes, parse_manifest, unet_from_bytes, Manifest};
use diffusion_playground::mnist::unet::Conditioning;
use diffusion_playground::rng::Rng;

const PKG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pkg");

fn manifest() -> Manifest {
    parse_manifest(&std::fs::read_to_string(format!("{PKG}/manifest.json")).unwrap(), "pkg/manifest.json").unwrap()
}

fn bytes(name: &str) -> Vec<u8> {
    let m = manifest();
    let e = m.get(name).unwrap();
    let b = std::fs::read(format!("{PKG}/{}", e.file().file)).unwrap();
    e.verify(&b).unwrap();
    b
}

#[test]
fn every_entry_is_whole_and_loads() {
    let device = Device::flex();
    for e in manifest().models {
        let b = bytes(&e.name);
        match e.kind {
            Kind::MnistUnet => drop(unet_from_bytes(&e.unet_config().unwrap(), &b, &e.file().file, &device).unwrap()),
            Kind::MnistClassifier => drop(classifier_from_bytes(&b, &e.file().file, &device).unwrap()),
            Kind::IfUnet => panic!("pkg/ ships no IF weights"),
        }
    }
}

#[test]
fn shipped_flows_draw_the_requested_digits() {
    let device = Device::flex();
    let m = manifest();
    let clf = classifier_from_bytes(&bytes("classifier"), "classifier", &device).unwrap().valid();
    // Every class-conditioned flow the page offers (recipe 4's class_flow and recipe 5's class_flow_constant).
    let flows: Vec<_> = m.models.iter().filter(|e| e.conditioning == Some(Conditioning::TimeClass)).collect();
    assert!(flows.iter().any(|e| e.name == "class_flow"), "pkg/ must ship the page's default class_flow");
    for e in flows {
        let flow = unet_from_bytes(&e.unet_config().unwrap(), &bytes(&e.name), &e.name, &device).unwrap().valid();
        let labels: Vec<usize> = (0..2).flat_map(|_| 0..10).collect();
        let mut noise = SeededNoise(Rng::new(7));
        let x = FlowPipeline::new(&flow, FlowSampler::new(Solver::Euler, 20)).sample(&labels, 5.0, &mut RunContext::new(&mut noise)).unwrap().image;
        let p: Vec<f32> = burn::tensor::activation::softmax(clf.forward(x.clamp(0.0, 1.0)), 1).into_data().try_to_vec().unwrap();
        let verdicts = argmax_rows(&p, 10);
        let right = verdicts.iter().zip(&labels).filter(|((k, _), l)| k == *l).count();
        // 100% was measured on 1000 samples of each; 18 of 20 leaves room for an unlucky seed.
        assert!(right >= 18, "{}: only {right}/20 recognised: {verdicts:?}", e.name);
    }
}
