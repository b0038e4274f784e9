//! Flex tensors as f32 slices and back, and a batch's image as slices of its parts.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

/// Image `n`'s slice of each part (all parts hold `b` images).
pub(super) fn image_parts<'a>(parts: &[&'a [f32]], b: usize, n: usize) -> Vec<&'a [f32]> {
    parts.iter().map(|p| &p[n * (p.len() / b)..][..p.len() / b]).collect()
}

pub(super) fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

pub(super) fn flex_tensor(v: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}
