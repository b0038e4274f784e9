//! The attachment to burn's Flex (CPU) backend: plain f32 Flex tensors in, this folder's kernels
//! on their buffers, a Flex tensor out. Every `try_*` gives its input back when the fast path does
//! not apply (another backend, f16, grouped or dilated convolutions, `DP_BURN_CONV=1`), so the
//! caller runs burn's own op instead.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::nn::BatchNorm;
use burn::tensor::{DType, Tensor};

#[cfg(not(target_arch = "wasm32"))]
use super::autodiff::try_conv2d_autodiff;
use super::buffers::{f32s, flex_tensor, image_parts};
use super::epilogue::Epilogue;
use super::gemm::forward;
use super::geometry::{geometry, Geom, FORCE_BURN};
use super::matmul::taps_major;
use super::parallel::{for_each_chunk, per_image, threads};
use super::transposed::UpGeom;
use super::{Conv2d, ConvTranspose2d};

/// Plain (not autodiff) f32 Flex tensors of one batch and side, read as one tensor
/// concatenated along channels, `dims` = `[b, Σc, h, w]`.
pub(super) struct Sources {
    pub(super) parts: Vec<FlexTensor>,
    pub(super) dims: [usize; 4],
}

impl Sources {
    pub(super) fn new(xs: &[Tensor<4>]) -> Option<Self> {
        let [b, _, h, w] = xs.first()?.dims();
        let mut parts = Vec::with_capacity(xs.len());
        let mut cin = 0;
        for x in xs {
            let [xb, c, xh, xw] = x.dims();
            if [xb, xh, xw] != [b, h, w] || x.dtype() != DType::F32 {
                return None;
            }
            cin += c;
            parts.push(x.clone().try_into_primitive::<Flex>().ok()?.to_contiguous());
        }
        Some(Self { parts, dims: [b, cin, h, w] })
    }

    /// Each part's whole-batch slice.
    pub(super) fn slices(&self) -> Vec<&[f32]> {
        self.parts.iter().map(f32s).collect()
    }
}


/// A convolution of plain Flex tensors (sampling, evaluation, DeepFloyd): one call, with the
/// bias (and what `epilogue` makes of it) applied as the output is written. None when the
/// inputs or the weights are not plain Flex tensors.
pub(super) fn plain(conv: &Conv2d, xs: &[Tensor<4>], epilogue: impl FnOnce(&Geom, Option<&[f32]>) -> Option<Epilogue>) -> Option<Tensor<4>> {
    let src = Sources::new(xs)?;
    let g = geometry(conv, src.dims)?;
    let wp = conv.weight.val().try_into_primitive::<Flex>().ok()?.to_contiguous();
    let bp = conv.bias.as_ref().map(|b| b.val().try_into_primitive::<Flex>().map(|p| p.to_contiguous())).transpose().ok()?;
    let ep = epilogue(&g, bp.as_ref().map(f32s))?;
    let y = forward(&g, &src.slices(), f32s(&wp), &ep);
    Some(Tensor::from_primitive::<Flex>(flex_tensor(y, [g.b, g.cout, g.oh, g.ow])))
}

/// The fused concatenation + Conv + BatchNorm (running statistics) + GELU on plain Flex
/// tensors, or `xs` back.
pub(super) fn try_conv2d_bn_gelu(conv: &Conv2d, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Result<Tensor<4>, Vec<Tensor<4>>> {
    plain(conv, &xs, |g, bias| Epilogue::batch_norm(bn, bias, g.cout)).ok_or(xs)
}

/// BatchNorm (running statistics) + GELU on a plain Flex tensor in one pass, or `x` back.
pub(super) fn try_batch_norm_gelu(bn: &BatchNorm, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    let [_, c, h, w] = x.dims();
    if *FORCE_BURN || x.dtype() != DType::F32 {
        return Err(x);
    }
    // Dropping `x` leaves the primitive's buffer unshared, so it is changed in place.
    let mut p = match x.clone().try_into_primitive::<Flex>() {
        Ok(p) => {
            drop(x);
            p.to_contiguous()
        }
        Err(_) => return Err(x),
    };
    let Some(ep) = Epilogue::batch_norm(bn, None, c) else { return Err(Tensor::from_primitive::<Flex>(p)) };
    if p.as_slice::<f32>().map(<[f32]>::len) != Some(p.storage::<f32>().len()) {
        return Err(Tensor::from_primitive::<Flex>(p)); // a view into a larger buffer
    }
    let parallel = threads() > 1;
    for_each_chunk(p.storage_mut::<f32>(), c * h * w, parallel, |(_, image)| ep.image_in_place(image, h * w));
    Ok(Tensor::from_primitive::<Flex>(p))
}

/// The fast path, or `x` back when it does not apply.
pub(super) fn try_conv2d(conv: &Conv2d, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    let xs = [x];
    if let Some(y) = plain(conv, &xs, |_, bias| Some(Epilogue::bias(bias))) {
        return Ok(y);
    }
    let [x] = xs;
    #[cfg(not(target_arch = "wasm32"))]
    return try_conv2d_autodiff(conv, x);
    #[cfg(target_arch = "wasm32")]
    Err(x)
}



/// The fused concatenation + transposed convolution + BatchNorm (running statistics) + GELU
/// on plain Flex tensors, or `xs` back.
pub(super) fn try_conv_transpose2d_bn_gelu(conv: &ConvTranspose2d, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Result<Tensor<4>, Vec<Tensor<4>>> {
    let run = || {
        let src = Sources::new(&xs)?;
        let g = UpGeom::new(conv, src.dims)?;
        let wp = conv.weight.val().try_into_primitive::<Flex>().ok()?.to_contiguous();
        let bp = conv.bias.as_ref().map(|b| b.val().try_into_primitive::<Flex>().map(|p| p.to_contiguous())).transpose().ok()?;
        let ep = Epilogue::batch_norm(bn, bp.as_ref().map(f32s), g.cout)?;
        let parts = src.slices();
        let parallel = g.b >= threads();
        let taps = g.kh * g.kw;
        let w = taps_major(f32s(&wp), g.cout, g.cin, taps, (taps, g.cout * taps));
        let y = per_image(g.b, g.cout * g.oh * g.ow, parallel, |n, yb| g.forward_image(&image_parts(&parts, g.b, n), &w, &ep, yb));
        Some(Tensor::from_primitive::<Flex>(flex_tensor(y, [g.b, g.cout, g.oh, g.ow])))
    };
    run().ok_or(xs)
}
