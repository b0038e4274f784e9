//! 2-D convolution with a faster path on burn's Flex (CPU) backend.
//!
//! burn 0.22's Flex computes a convolution's weight gradient as another convolution with batch and
//! channels swapped (a gemm whose n is the kernel's 9 taps) and its input gradient through the
//! transposed-convolution kernel; forward and backward together ran at under half the speed of
//! well-shaped gemms per image (measured on the UNet's layers, batch 64). On Flex with f32
//! tensors, groups 1 and dilation 1 this module computes each image with gemms on the raw buffers
//! (shifted windows for stride 1, im2col otherwise; 3x3 stride-1 convolutions on Winograd's
//! F(2x2, 3x3), module `winograd`: forward, input and weight gradients), in and out of autodiff
//! (on the desktop; the browser's CPU fallback runs the same inference kernels on one thread
//! with gemm's simd128 kernels); everything else (wgpu/WebGPU, f16, grouped or dilated convolutions) goes to burn's
//! own `Conv2d::forward`. Set `DP_BURN_CONV=1` to force burn's path (for A/B benchmarks).
//!
//! For inference (sampling, evaluation) two fused layers sit on the same kernels:
//! `conv2d_bn_gelu` and `conv_transpose2d_bn_gelu` take their input as parts to concatenate
//! (the UNet's skip connections) and apply BatchNorm with running statistics and GELU as the
//! output is written. Under autodiff and on other backends they are exactly
//! `gelu(bn.forward(conv(cat(xs))))` on burn's ops.

use burn::nn::BatchNorm;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::tensor::Tensor;

use crate::activation::gelu;

mod winograd;

/// `conv.forward(x)`, through the fast CPU path where it applies.
///
/// # Shapes
/// `[B, cin, H, W] -> [B, cout, H', W']` as `Conv2d::forward`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let x = match flex::try_conv2d(conv, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    conv.forward(x)
}

/// `gelu(bn.forward(conv2d(conv, cat(xs, 1))))`, the MNIST UNet's Conv layer on its inputs
/// concatenated along channels. In inference on Flex the concatenation is never built (each
/// image's parts are copied straight into the padded image the gemms read), and the BatchNorm's
/// running statistics fold into a per-channel scale and shift that are applied, with GELU, as
/// each image's output leaves the gemm's buffer: one pass over the output instead of six (the
/// copy, BatchNorm's four broadcast ops, GELU), which were a sixth of a sampling step.
///
/// # Shapes
/// `xs`: `[B, c_i, H, W]` each, `Σ c_i = cin` -> `[B, cout, H', W']` as `Conv2d::forward`.
pub fn conv2d_bn_gelu(conv: &Conv2d, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Tensor<4> {
    let xs = match flex::try_conv2d_bn_gelu(conv, bn, xs) {
        Ok(y) => return y,
        Err(xs) => xs,
    };
    gelu(bn.forward(conv2d(conv, cat(xs))))
}

/// `gelu(bn.forward(conv.forward(cat(xs, 1))))` for a transposed convolution: in inference on
/// Flex, when the kernel is a multiple of the stride with at most 4 output phases (the UNet's
/// UpConv, k4 s2 p1), it runs as one stride-1 convolution per output phase on gemms, with the
/// same fused concatenation and epilogue as `conv2d_bn_gelu` (burn's direct loops were a twentieth
/// of a sampling step); otherwise burn's transposed convolution, then BatchNorm and GELU in one
/// pass.
///
/// # Shapes
/// `xs`: `[B, c_i, H, W]` each, `Σ c_i = cin` -> `[B, cout, H', W']` as `ConvTranspose2d::forward`.
pub fn conv_transpose2d_bn_gelu(conv: &ConvTranspose2d, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Tensor<4> {
    let xs = match flex::try_conv_transpose2d_bn_gelu(conv, bn, xs) {
        Ok(y) => return y,
        Err(xs) => xs,
    };
    let y = conv.forward(cat(xs));
    let y = match flex::try_batch_norm_gelu(bn, y) {
        Ok(y) => return y,
        Err(y) => y,
    };
    gelu(bn.forward(y))
}

fn cat(mut xs: Vec<Tensor<4>>) -> Tensor<4> {
    if xs.len() == 1 { xs.pop().expect("one tensor") } else { Tensor::cat(xs, 1) }
}

/// The CPU kernels. In the browser (wasm, one thread, simd128 gemm) the inference paths run
/// on the page's CPU fallback; autodiff (training) and threads are desktop-only.
pub(crate) mod flex {
    #[cfg(not(target_arch = "wasm32"))]
    use burn::backend::{
        Autodiff,
        autodiff::{checkpoint::base::Checkpointer, checkpoint::strategy::NoCheckpointing, grads::Gradients, ops::{Backward, Ops, OpsKind}},
    };
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::nn::conv::{Conv2d, ConvTranspose2d};
    use burn::nn::{BatchNorm, PaddingConfig2d};
    use burn::tensor::{DType, Tensor, TensorData};
    use gemm::{Parallelism, gemm};
    #[cfg(not(target_arch = "wasm32"))]
    use rayon::prelude::*;
    use std::cell::Cell;
    use std::sync::LazyLock;

    use super::winograd;
    use crate::activation::gelu_in_place;

    static FORCE_BURN: LazyLock<bool> = LazyLock::new(|| crate::device::env_flag("DP_BURN_CONV"));
    static NO_WINOGRAD: LazyLock<bool> = LazyLock::new(|| crate::device::env_flag("DP_NO_WINOGRAD"));

    /// Threads the kernels share work among: rayon's pool on the desktop, one in the browser.
    fn threads() -> usize {
        #[cfg(not(target_arch = "wasm32"))]
        return rayon::current_num_threads();
        #[cfg(target_arch = "wasm32")]
        1
    }

    /// A gemm over every thread (`None`: one in the browser).
    fn all_threads() -> Parallelism {
        #[cfg(not(target_arch = "wasm32"))]
        return Parallelism::Rayon(0);
        #[cfg(target_arch = "wasm32")]
        Parallelism::None
    }

    /// `f((n, chunk))` for each `len`-long chunk n of `s`, on rayon's threads when `parallel`
    /// (always in turn in the browser).
    fn for_each_chunk<T: Send>(s: &mut [T], len: usize, parallel: bool, f: impl Fn((usize, &mut [T])) + Sync + Send) {
        #[cfg(not(target_arch = "wasm32"))]
        if parallel {
            s.par_chunks_mut(len).enumerate().for_each(f);
            return;
        }
        let _ = parallel;
        s.chunks_mut(len).enumerate().for_each(f);
    }

    /// Sizes of one convolution: input `[b, cin, h, w]`, weight `[cout, cin, kh, kw]`, stride,
    /// top/left padding (bottom/right padding only shows in `oh`, `ow`), output `[b, cout, oh, ow]`.
    #[derive(Clone, Copy, Debug)]
    struct Geom {
        b: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        kh: usize,
        kw: usize,
        sh: usize,
        sw: usize,
        pt: usize,
        pl: usize,
        oh: usize,
        ow: usize,
    }

    impl Geom {
        /// Rows of an image's column matrix: one per (input channel, tap).
        fn k(&self) -> usize {
            self.cin * self.kh * self.kw
        }
        /// The output columns `lo..hi` whose tap column `j` lands inside the input (not in the
        /// left or right padding).
        fn inside(&self, j: usize) -> (usize, usize) {
            let lo = if self.pl > j { (self.pl - j).div_ceil(self.sw) } else { 0 };
            let hi = if self.w + self.pl > j { ((self.w - 1 + self.pl - j) / self.sw + 1).min(self.ow) } else { 0 };
            (lo.min(self.ow), hi.max(lo.min(self.ow)))
        }
        fn ohw(&self) -> usize {
            self.oh * self.ow
        }
        #[cfg(not(target_arch = "wasm32"))]
        fn in_len(&self) -> usize {
            self.cin * self.h * self.w
        }
        fn out_len(&self) -> usize {
            self.cout * self.ohw()
        }
        /// Batch items run in parallel (one single-threaded gemm each) when there are enough of
        /// them to share out; otherwise items run in turn and each gemm uses every thread.
        fn split_batch(&self) -> bool {
            self.b >= threads()
        }
        fn gemm_threads(&self) -> Parallelism {
            if self.split_batch() { Parallelism::None } else { all_threads() }
        }
    }

    /// The convolution's sizes for an input `[b, cin, h, w]`, when the fast path applies to it.
    fn geometry(conv: &Conv2d, [b, cin, h, w]: [usize; 4]) -> Option<Geom> {
        if *FORCE_BURN || conv.groups != 1 || conv.dilation != [1, 1] {
            return None;
        }
        let weight = conv.weight.val();
        let [cout, wcin, kh, kw] = weight.dims();
        let (pt, pl, pb, pr) = match conv.padding {
            PaddingConfig2d::Valid => (0, 0, 0, 0),
            PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
            PaddingConfig2d::Same => return None, // none of our models uses it
        };
        let [sh, sw] = conv.stride;
        if wcin != cin || h + pt + pb < kh || w + pl + pr < kw || [b, cin, cout, kh, kw, sh, sw].contains(&0) {
            return None; // let burn report the mismatch
        }
        if weight.dtype() != DType::F32 || conv.bias.as_ref().is_some_and(|b| b.val().dtype() != DType::F32) {
            return None;
        }
        Some(Geom { b, cin, h, w, cout, kh, kw, sh, sw, pt, pl, oh: (h + pt + pb - kh) / sh + 1, ow: (w + pl + pr - kw) / sw + 1 })
    }

    /// Plain (not autodiff) f32 Flex tensors of one batch and side, read as one tensor
    /// concatenated along channels, `dims` = `[b, Σc, h, w]`.
    struct Sources {
        parts: Vec<FlexTensor>,
        dims: [usize; 4],
    }

    impl Sources {
        fn new(xs: &[Tensor<4>]) -> Option<Self> {
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
        fn slices(&self) -> Vec<&[f32]> {
            self.parts.iter().map(f32s).collect()
        }
    }

    /// Image `n`'s slice of each part (all parts hold `b` images).
    fn image_parts<'a>(parts: &[&'a [f32]], b: usize, n: usize) -> Vec<&'a [f32]> {
        parts.iter().map(|p| &p[n * (p.len() / b)..][..p.len() / b]).collect()
    }

    /// A convolution of plain Flex tensors (sampling, evaluation, DeepFloyd): one call, with the
    /// bias (and what `epilogue` makes of it) applied as the output is written. None when the
    /// inputs or the weights are not plain Flex tensors.
    fn plain(conv: &Conv2d, xs: &[Tensor<4>], epilogue: impl FnOnce(&Geom, Option<&[f32]>) -> Option<Epilogue>) -> Option<Tensor<4>> {
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
    pub(crate) fn try_conv2d_bn_gelu(conv: &Conv2d, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Result<Tensor<4>, Vec<Tensor<4>>> {
        plain(conv, &xs, |g, bias| Epilogue::batch_norm(bn, bias, g.cout)).ok_or(xs)
    }

    /// A transposed convolution `[b, cin, h, w] -> [b, cout, oh, ow]` with weight `[cin, cout,
    /// kh, kw]`: output pixel o gets input y through tap i where `o = s·y + i - p`. Sorting the
    /// outputs by phase `r = (o + p) mod s` and writing `o = s·q + r - p`, phase r is a stride-1
    /// correlation over q with the taps `i = r + s·t` reading input `q - t`, `t < kh/s`: on the
    /// input padded by `kh/s - 1` on every side that is the shifted-window gemm of stride-1
    /// convolutions (one per tap, `[cout, cin]` times `[cin, pixels]`), and the phase's outputs are
    /// written back every s-th pixel.
    #[derive(Clone, Copy, Debug)]
    struct UpGeom {
        b: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        kh: usize,
        kw: usize,
        sh: usize,
        sw: usize,
        ph: usize,
        pw: usize,
        oh: usize,
        ow: usize,
    }

    impl UpGeom {
        fn new(conv: &ConvTranspose2d, [b, cin, h, w]: [usize; 4]) -> Option<Self> {
            let weight = conv.weight.val();
            let [wcin, cout, kh, kw] = weight.dims();
            let ([sh, sw], [ph, pw]) = (conv.stride, conv.padding);
            let applies = !*FORCE_BURN
                && conv.groups == 1
                && conv.dilation == [1, 1]
                && conv.padding_out == [0, 0]
                && wcin == cin
                && ![b, cin, cout, h, w, sh, sw].contains(&0)
                && kh % sh == 0
                && kw % sw == 0
                && sh * sw <= 4 // more phases (the 1x1 -> 7x7 Unflatten) make gemms too thin
                && (h - 1) * sh + kh > 2 * ph
                && (w - 1) * sw + kw > 2 * pw
                && weight.dtype() == DType::F32
                && conv.bias.as_ref().is_none_or(|b| b.val().dtype() == DType::F32);
            applies.then(|| Self { b, cin, h, w, cout, kh, kw, sh, sw, ph, pw, oh: (h - 1) * sh + kh - 2 * ph, ow: (w - 1) * sw + kw - 2 * pw })
        }

        /// Taps per phase along each side, `k / s`; the input is padded by one less.
        fn taps(&self) -> (usize, usize) {
            (self.kh / self.sh, self.kw / self.sw)
        }

        /// The padded input's sides.
        fn padded(&self) -> (usize, usize) {
            let (ty, tx) = self.taps();
            (self.h + 2 * (ty - 1), self.w + 2 * (tx - 1))
        }

        /// The q of phase r whose output `s·q + r - p` lies in `0..out`: `lo..hi`.
        fn span(r: usize, s: usize, p: usize, out: usize) -> (usize, usize) {
            let lo = if p > r { (p - r).div_ceil(s) } else { 0 };
            let hi = if out + p > r { (out - 1 + p - r) / s + 1 } else { 0 };
            (lo, hi.max(lo))
        }

        /// One image's output `[cout, oh, ow]` from its parts along channels, the epilogue applied;
        /// `w` is the layer's `[cin, cout, kh, kw]` in `taps_major` layout.
        fn forward_image(&self, parts: &[&[f32]], w: &[f32], ep: &Epilogue, y: &mut [f32]) {
            let (ty, tx) = self.taps();
            let (hp, wp) = self.padded();
            let plane = hp * wp;
            let threads = if self.b >= threads() { Parallelism::None } else { all_threads() };
            // Where weight tap (i, j), a column-major `[cout, cin]` matrix, starts in `taps_major` layout.
            let tap = |i: usize, j: usize| (i * self.kw + j) * self.cin * self.cout;
            with_scratch(0, self.cin * plane, true, |xp| {
                for (r, src) in parts.iter().flat_map(|p| p.chunks(self.w)).enumerate() {
                    let (c, row) = (r / self.h, r % self.h);
                    xp[(c * hp + row + ty - 1) * wp + tx - 1..][..self.w].copy_from_slice(src);
                }
                with_scratch(1, self.cout * plane, false, |wide| {
                    for ry in 0..self.sh {
                        let (qy0, qy1) = Self::span(ry, self.sh, self.ph, self.oh);
                        for rx in 0..self.sw {
                            let (qx0, qx1) = Self::span(rx, self.sw, self.pw, self.ow);
                            if qy0 == qy1 || qx0 == qx1 {
                                continue;
                            }
                            // Phase pixel (qy, qx) lands at wide[co, (qy - qy0)·wp + qx - qx0].
                            let n = (qy1 - qy0 - 1) * wp + qx1 - qx0;
                            for t in 0..ty {
                                for u in 0..tx {
                                    let start = tap(ry + self.sh * t, rx + self.sw * u);
                                    let at = (qy0 + ty - 1 - t) * wp + qx0 + tx - 1 - u;
                                    matmul(self.cout, n, self.cin, wide, (plane, 1), t + u > 0, &w[start..], (1, self.cout), &xp[at..], (plane, 1), threads);
                                }
                            }
                            for co in 0..self.cout {
                                for qy in qy0..qy1 {
                                    let src = &wide[co * plane + (qy - qy0) * wp..][..qx1 - qx0];
                                    let oy = self.sh * qy + ry - self.ph;
                                    let dst = &mut y[(co * self.oh + oy) * self.ow..][..self.ow];
                                    let first = self.sw * qx0 + rx - self.pw;
                                    ep.write_strided(co, src, &mut dst[first..], self.sw);
                                }
                            }
                        }
                    }
                })
            });
            if ep.gelu {
                gelu_in_place(y);
            }
        }
    }

    /// The fused concatenation + transposed convolution + BatchNorm (running statistics) + GELU
    /// on plain Flex tensors, or `xs` back.
    pub(crate) fn try_conv_transpose2d_bn_gelu(conv: &ConvTranspose2d, bn: &BatchNorm, xs: Vec<Tensor<4>>) -> Result<Tensor<4>, Vec<Tensor<4>>> {
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

    /// BatchNorm (running statistics) + GELU on a plain Flex tensor in one pass, or `x` back.
    pub(crate) fn try_batch_norm_gelu(bn: &BatchNorm, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
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
    pub(crate) fn try_conv2d(conv: &Conv2d, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
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

    /// `try_conv2d` under autodiff (training, desktop only).
    #[cfg(not(target_arch = "wasm32"))]
    fn try_conv2d_autodiff(conv: &Conv2d, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
        let Some(g) = geometry(conv, x.dims()) else { return Err(x) };
        let weight = conv.weight.val();
        let bias = conv.bias.as_ref().map(|b| b.val());

        // Autodiff over Flex (training): the convolution is one tracked op with its own backward;
        // the bias is added after it as an ordinary broadcast add, whose gradient autodiff sums.
        let Ok(xa) = x.clone().try_into_primitive::<Autodiff<Flex>>() else {
            return Err(x);
        };
        let Ok(wa) = weight.try_into_primitive::<Autodiff<Flex>>() else {
            return Err(x);
        };
        let (xp, wp) = (xa.primitive().to_contiguous(), wa.primitive().to_contiguous());
        let y = flex_tensor(forward(&g, &[f32s(&xp)], f32s(&wp), &Epilogue::default()), [g.b, g.cout, g.oh, g.ow]);
        let out = match ConvBackward.prepare::<NoCheckpointing>([xa.node(), wa.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(ConvState { g, x: xp, w: wp }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        let y = Tensor::<4>::from_primitive::<Autodiff<Flex>>(out);
        Ok(match bias {
            Some(bias) => y + bias.reshape([1, g.cout, 1, 1]),
            None => y,
        })
    }

    fn f32s(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>().expect("a contiguous f32 tensor")
    }

    fn flex_tensor(v: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, shape))
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[derive(Clone, Debug)]
    struct ConvState {
        g: Geom,
        x: FlexTensor,
        w: FlexTensor,
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[derive(Debug)]
    struct ConvBackward;

    #[cfg(not(target_arch = "wasm32"))]
    impl Backward<Flex, 2> for ConvBackward {
        type State = ConvState;

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
            let [node_x, node_w] = ops.parents;
            let gy = grads.consume::<Flex>(&ops.node).to_contiguous();
            let ConvState { g, x, w } = ops.state;
            let (dx, dw) = backward(&g, f32s(&x), f32s(&w), f32s(&gy), node_x.is_some(), node_w.is_some());
            if let (Some(node), Some(dx)) = (node_x, dx) {
                grads.register::<Flex>(node.id, flex_tensor(dx, [g.b, g.cin, g.h, g.w]));
            }
            if let (Some(node), Some(dw)) = (node_w, dw) {
                grads.register::<Flex>(node.id, flex_tensor(dw, [g.cout, g.cin, g.kh, g.kw]));
            }
        }
    }

    /// What happens to output channel c's values as they are written: `act(acc · scale[c] +
    /// shift[c])`, shift holding the convolution's bias.
    #[derive(Debug, Default)]
    struct Epilogue {
        scale: Option<Vec<f32>>,
        shift: Option<Vec<f32>>,
        gelu: bool,
    }

    impl Epilogue {
        fn bias(bias: Option<&[f32]>) -> Self {
            Self { shift: bias.map(<[f32]>::to_vec), ..Self::default() }
        }

        /// `gelu(((acc + bias) - mean) / sqrt(var + eps) · gamma + beta)` with BatchNorm's running
        /// statistics, folded into one scale and shift per channel. That rounds differently from
        /// burn's four ops by a few ulp of the result. None unless every vector is f32 and
        /// `channels` long.
        fn batch_norm(bn: &BatchNorm, bias: Option<&[f32]>, channels: usize) -> Option<Self> {
            // Only from Flex: reading a GPU tensor back would block (and panics in the browser).
            let read = |t: Tensor<1>| {
                let p = t.try_into_primitive::<Flex>().ok()?.to_contiguous();
                p.as_slice::<f32>().filter(|v| v.len() == channels).map(<[f32]>::to_vec)
            };
            let (gamma, beta) = (read(bn.gamma.val())?, read(bn.beta.val())?);
            let (mean, var) = (read(bn.running_mean.value())?, read(bn.running_var.value())?);
            if bias.is_some_and(|b| b.len() != channels) {
                return None;
            }
            let eps = bn.epsilon as f32;
            let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
            let shift = (0..channels).map(|c| beta[c] + (bias.map_or(0.0, |b| b[c]) - mean[c]) * scale[c]).collect();
            Some(Self { scale: Some(scale), shift: Some(shift), gelu: true })
        }

        /// `dst = src · scale[c] + shift[c]`.
        #[inline]
        fn write(&self, c: usize, src: &[f32], dst: &mut [f32]) {
            let b = self.shift.as_ref().map_or(0.0, |s| s[c]);
            match &self.scale {
                Some(s) => dst.iter_mut().zip(src).for_each(|(d, v)| *d = v * s[c] + b),
                None => dst.iter_mut().zip(src).for_each(|(d, v)| *d = v + b),
            }
        }

        /// Channel c's `(scale, shift)`, `(1, 0)` where there is none.
        fn affine(&self, c: usize) -> (f32, f32) {
            (self.scale.as_ref().map_or(1.0, |s| s[c]), self.shift.as_ref().map_or(0.0, |s| s[c]))
        }

        /// `dst[k·step] = src[k] · scale[c] + shift[c]`.
        #[inline]
        fn write_strided(&self, c: usize, src: &[f32], dst: &mut [f32], step: usize) {
            let (s, b) = self.affine(c);
            dst.iter_mut().step_by(step).zip(src).for_each(|(d, v)| *d = v * s + b);
        }

        /// The whole epilogue on one image `[channels, plane]` in place.
        fn image_in_place(&self, y: &mut [f32], plane: usize) {
            if self.scale.is_some() || self.shift.is_some() {
                for (c, row) in y.chunks_mut(plane).enumerate() {
                    let b = self.shift.as_ref().map_or(0.0, |s| s[c]);
                    match &self.scale {
                        Some(s) => row.iter_mut().for_each(|v| *v = *v * s[c] + b),
                        None => row.iter_mut().for_each(|v| *v += b),
                    }
                }
            }
            if self.gelu {
                gelu_in_place(y);
            }
        }
    }

    thread_local! {
        static SCRATCH: [Cell<Vec<f32>>; 4] = const { [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())] };
    }

    /// Floats each buffer may hold and still stay with its thread for the next call: 16 MB for
    /// the per-image buffers 0-2; 256 MB for buffer 3, a layer's transformed Winograd weights
    /// (IF-I-M's largest is 75 MB, re-faulted from the kernel at every call otherwise).
    const SCRATCH_KEEP: [usize; 4] = [1 << 22, 1 << 22, 1 << 22, 1 << 26];

    /// Runs `f` on this thread's scratch buffer `i`, `len` floats long: all zero when `zeroed`,
    /// otherwise holding whatever the last user left. Reusing a buffer that is still in cache
    /// spares the allocation, page faults and zeroing of a fresh one per image (a twentieth of a
    /// sampling step). The buffer is taken out while in use, so a nested call (rayon may run
    /// another image's job on this thread while a threaded gemm waits) gets a fresh one.
    fn with_scratch<R>(i: usize, len: usize, zeroed: bool, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut v = SCRATCH.with(|s| s[i].take());
        if zeroed {
            v.clear();
        }
        v.resize(len, 0.0);
        let r = f(&mut v);
        if v.capacity() <= SCRATCH_KEEP[i] {
            SCRATCH.with(|s| s[i].set(v));
        }
        r
    }

    /// One image's column matrix `[cin*kh*kw, oh*ow]`: row (c, i, j) holds input channel c seen
    /// through tap (i, j) at every output pixel, zero where the tap falls in the padding.
    fn im2col(g: &Geom, x: &[f32], cols: &mut [f32]) {
        let ohw = g.ohw();
        for c in 0..g.cin {
            let plane = &x[c * g.h * g.w..][..g.h * g.w];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = &mut cols[((c * g.kh + i) * g.kw + j) * ohw..][..ohw];
                    let (lo, hi) = g.inside(j);
                    for oy in 0..g.oh {
                        let out = &mut row[oy * g.ow..][..g.ow];
                        let iy = (oy * g.sh + i) as isize - g.pt as isize;
                        if iy < 0 || iy >= g.h as isize {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * g.w..][..g.w];
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if lo == hi {
                            continue;
                        }
                        let first = lo * g.sw + j - g.pl;
                        if g.sw == 1 {
                            out[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                        } else {
                            for (o, s) in out[lo..hi].iter_mut().zip(src[first..].iter().step_by(g.sw)) {
                                *o = *s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of `im2col`: adds every column entry back onto the input pixel it came from.
    #[cfg(not(target_arch = "wasm32"))]
    fn col2im(g: &Geom, cols: &[f32], dx: &mut [f32]) {
        let ohw = g.ohw();
        dx.fill(0.0);
        for c in 0..g.cin {
            let plane = &mut dx[c * g.h * g.w..][..g.h * g.w];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = &cols[((c * g.kh + i) * g.kw + j) * ohw..][..ohw];
                    let (lo, hi) = g.inside(j);
                    if lo == hi {
                        continue;
                    }
                    for oy in 0..g.oh {
                        let iy = (oy * g.sh + i) as isize - g.pt as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * g.w..][..g.w];
                        let first = lo * g.sw + j - g.pl;
                        let src = &row[oy * g.ow..][lo..hi];
                        if g.sw == 1 {
                            dst[first..first + hi - lo].iter_mut().zip(src).for_each(|(d, v)| *d += v);
                        } else {
                            dst[first..].iter_mut().step_by(g.sw).zip(src).for_each(|(d, v)| *d += v);
                        }
                    }
                }
            }
        }
    }

    /// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`, every operand given by its (row, column) strides,
    /// so transposes and shifted windows cost nothing.
    #[allow(clippy::too_many_arguments)]
    fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], dst_strides: (usize, usize), accumulate: bool, lhs: &[f32], lhs_strides: (usize, usize), rhs: &[f32], rhs_strides: (usize, usize), threads: Parallelism) {
        let span = |(rs, cs): (usize, usize), rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
        assert!(m > 0 && n > 0 && k > 0);
        assert!(dst.len() >= span(dst_strides, m, n) && lhs.len() >= span(lhs_strides, m, k) && rhs.len() >= span(rhs_strides, k, n));
        // SAFETY: the asserts above keep every index gemm touches inside the three slices, and
        // `dst` is borrowed mutably, so it aliases neither input.
        unsafe {
            gemm(
                m, n, k,
                dst.as_mut_ptr(), dst_strides.1 as isize, dst_strides.0 as isize, accumulate,
                lhs.as_ptr(), lhs_strides.1 as isize, lhs_strides.0 as isize,
                rhs.as_ptr(), rhs_strides.1 as isize, rhs_strides.0 as isize,
                1.0, 1.0, false, false, false, threads,
            )
        }
    }

    /// A weight as `taps` column-major `[cout, cin]` matrices, tap after tap: `(co, ci)` of tap t
    /// at `t·cin·cout + ci·cout + co`, read from `(co, ci, t)` at `co·s_co + ci·s_ci + t`. The
    /// shifted-window gemms take each tap's matrix as it lies; in the weights' own layout its
    /// rows are `cin·taps` floats apart, and gemm gathered them into a packed copy on every call
    /// (a tap an image). Done once per layer call.
    fn taps_major(w: &[f32], cout: usize, cin: usize, taps: usize, (s_co, s_ci): (usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; taps * cin * cout];
        for (t, tap) in out.chunks_mut(cin * cout).enumerate() {
            for (ci, col) in tap.chunks_mut(cout).enumerate() {
                for (co, v) in col.iter_mut().enumerate() {
                    *v = w[co * s_co + ci * s_ci + t];
                }
            }
        }
        out
    }

    /// Stride-1 convolutions skip im2col: on the zero-padded image `[cin, hp, wp]` laid out flat,
    /// tap (i, j) of every output pixel is one window starting at `i*wp + j`, so the output is nine
    /// (kh*kw) gemms over shifted windows, computed on a grid `wp` wide whose last `kw-1` columns
    /// are thrown away. That writes nothing the size of im2col's matrix (9x the input), which was
    /// a fifth of the training step's time.
    struct Shifted {
        hp: usize,
        wp: usize,
        /// Output pixels on the wide grid, up to the last real one.
        n: usize,
    }

    impl Geom {
        fn shifted(&self) -> Option<Shifted> {
            (self.sh == 1 && self.sw == 1).then(|| {
                let (hp, wp) = (self.oh + self.kh - 1, self.ow + self.kw - 1);
                Shifted { hp, wp, n: (self.oh - 1) * wp + self.ow }
            })
        }

        /// Where input row (c, y) starts inside the padded image `[cin, hp, wp]`.
        fn padded_row(&self, sh: &Shifted, c: usize, y: usize) -> usize {
            (c * sh.hp + y + self.pt) * sh.wp + self.pl
        }

        /// The image zero-padded to `[cin, hp, wp]`.
        #[cfg(not(target_arch = "wasm32"))]
        fn pad(&self, sh: &Shifted, x: &[f32]) -> Vec<f32> {
            let mut xp = vec![0f32; self.cin * sh.hp * sh.wp];
            self.pad_into(sh, &[x], &mut xp);
            xp
        }

        /// Copies the image, given as parts along channels, into `xp`, `[cin, hp, wp]` already zero.
        fn pad_into(&self, sh: &Shifted, parts: &[&[f32]], xp: &mut [f32]) {
            for (r, src) in parts.iter().flat_map(|p| p.chunks(self.w)).enumerate() {
                xp[self.padded_row(sh, r / self.h, r % self.h)..][..self.w].copy_from_slice(src);
            }
        }

        /// Weight tap (i, j) as a `[cout, cin]` matrix view of the layer's own layout (the
        /// backward pass): (start, strides).
        #[cfg(not(target_arch = "wasm32"))]
        fn tap(&self, i: usize, j: usize) -> (usize, (usize, usize)) {
            (i * self.kw + j, (self.cin * self.kh * self.kw, self.kh * self.kw))
        }

        /// One image's output `[cout, oh, ow]` from its parts along channels, the epilogue applied;
        /// `w` as the layer's `[cout, cin, kh, kw]` for im2col (stride > 1), in `taps_major`
        /// layout for shifted windows.
        fn forward_image(&self, parts: &[&[f32]], w: &[f32], ep: &Epilogue, y: &mut [f32]) {
            let (k, ohw, threads) = (self.k(), self.ohw(), self.gemm_threads());
            match self.shifted() {
                None => with_scratch(0, k * ohw, false, |cols| {
                    match parts {
                        [x] => im2col(self, x, cols),
                        _ => im2col(self, &parts.concat(), cols),
                    }
                    matmul(self.cout, ohw, k, y, (ohw, 1), false, w, (k, 1), cols, (ohw, 1), threads);
                    ep.image_in_place(y, ohw);
                }),
                Some(sh) => {
                    with_scratch(0, self.cin * sh.hp * sh.wp, true, |xp| {
                        self.pad_into(&sh, parts, xp);
                        let plane = sh.hp * sh.wp;
                        // Every column the gemms write is first overwritten by tap (0, 0); the
                        // rest of the buffer is never read.
                        with_scratch(1, self.cout * self.oh * sh.wp, false, |wide| {
                            for i in 0..self.kh {
                                for j in 0..self.kw {
                                    let start = (i * self.kw + j) * self.cin * self.cout;
                                    let first = i == 0 && j == 0;
                                    matmul(self.cout, sh.n, self.cin, wide, (self.oh * sh.wp, 1), !first, &w[start..], (1, self.cout), &xp[i * sh.wp + j..], (plane, 1), threads);
                                }
                            }
                            for co in 0..self.cout {
                                for oy in 0..self.oh {
                                    let src = &wide[(co * self.oh + oy) * sh.wp..][..self.ow];
                                    ep.write(co, src, &mut y[(co * self.oh + oy) * self.ow..][..self.ow]);
                                }
                            }
                        })
                    });
                    if ep.gelu {
                        gelu_in_place(y);
                    }
                }
            }
        }

        /// One image's share of the gradients: adds `gy @ im2col(x)ᵀ` into `dw` and writes
        /// `col2im(wᵀ @ gy)` into `dx`.
        #[cfg(not(target_arch = "wasm32"))]
        fn backward_image(&self, x: &[f32], w: &[f32], gy: &[f32], dw: Option<&mut [f32]>, dx: Option<&mut [f32]>) {
            let (k, ohw, threads) = (self.k(), self.ohw(), self.gemm_threads());
            let Some(sh) = self.shifted() else {
                let mut cols = vec![0f32; k * ohw];
                if let Some(dw) = dw {
                    im2col(self, x, &mut cols);
                    matmul(self.cout, k, ohw, dw, (k, 1), true, gy, (ohw, 1), &cols, (1, ohw), threads);
                }
                if let Some(dx) = dx {
                    matmul(k, ohw, self.cout, &mut cols, (ohw, 1), false, w, (1, k), gy, (ohw, 1), threads);
                    col2im(self, &cols, dx);
                }
                return;
            };
            let plane = sh.hp * sh.wp;
            let wide_row = self.oh * sh.wp;
            // gy on the wide grid, zero in the thrown-away columns so they add nothing.
            let mut wide = vec![0f32; self.cout * wide_row];
            for co in 0..self.cout {
                for oy in 0..self.oh {
                    wide[(co * self.oh + oy) * sh.wp..][..self.ow].copy_from_slice(&gy[(co * self.oh + oy) * self.ow..][..self.ow]);
                }
            }
            if let Some(dw) = dw {
                let xp = self.pad(&sh, x);
                for i in 0..self.kh {
                    for j in 0..self.kw {
                        let (start, strides) = self.tap(i, j);
                        matmul(self.cout, self.cin, sh.n, &mut dw[start..], strides, true, &wide, (wide_row, 1), &xp[i * sh.wp + j..], (1, plane), threads);
                    }
                }
            }
            if let Some(dx) = dx {
                let mut dxp = vec![0f32; self.cin * plane];
                for i in 0..self.kh {
                    for j in 0..self.kw {
                        let (start, (rs, cs)) = self.tap(i, j);
                        matmul(self.cin, sh.n, self.cout, &mut dxp[i * sh.wp + j..], (plane, 1), true, &w[start..], (cs, rs), &wide, (wide_row, 1), threads);
                    }
                }
                for (r, dst) in dx.chunks_mut(self.w).enumerate() {
                    dst.copy_from_slice(&dxp[self.padded_row(&sh, r / self.h, r % self.h)..][..self.w]);
                }
            }
        }
    }

    /// `y[b] = epilogue(conv(x[b]))`, `[b, cout, oh, ow]` flattened; `x` given as parts along
    /// channels, each `[b, c_i, h, w]`.
    fn forward(g: &Geom, x: &[&[f32]], w: &[f32], ep: &Epilogue) -> Vec<f32> {
        if g.winograd() {
            return forward_winograd(g, x, w, ep);
        }
        let taps = g.kh * g.kw;
        let w = match g.shifted() {
            Some(_) => std::borrow::Cow::Owned(taps_major(w, g.cout, g.cin, taps, (g.cin * taps, taps))),
            None => std::borrow::Cow::Borrowed(w),
        };
        per_image(g.b, g.out_len(), g.split_batch(), |n, yb| g.forward_image(&image_parts(x, g.b, n), &w, ep, yb))
    }

    /// `b` images of `len` floats, image n written by `f(n, image)`, in parallel when `parallel`.
    /// Each image is zeroed by the thread that computes it, just before, while it is in cache:
    /// `vec![0; b * len]` zeroed the whole output (32 MB for a UNet layer at batch 160) on one
    /// thread first, a thirtieth of a sampling step.
    fn per_image(b: usize, len: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        per_chunk(b * len, len, parallel, f)
    }

    /// `total` floats in chunks of `len` (the last one may be shorter), chunk n written by
    /// `f(n, chunk)` as in `per_image`.
    fn per_chunk(total: usize, len: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let mut y: Vec<f32> = Vec::with_capacity(total);
        let one = |(n, image): (usize, &mut [std::mem::MaybeUninit<f32>])| {
            image.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: every element was initialised just above, and MaybeUninit<f32> has the
            // layout of f32.
            f(n, unsafe { &mut *(image as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) })
        };
        for_each_chunk(&mut y.spare_capacity_mut()[..total], len.max(1), parallel, one);
        // SAFETY: `one` initialised every chunk of the first `total` elements (a panic in `f`
        // unwinds past this line, leaving the vector empty).
        unsafe { y.set_len(total) };
        y
    }

    /// Gemm columns (tiles) a Winograd group aims at: a 28x28 image alone (210 with the junk
    /// columns), two at 14x14, six at 7x7 (20 each). Measured with `dp sample`: 64 to 256 alike,
    /// 1024 6% and 2048 14% slower (the group's transformed input no longer stays in cache).
    const WINOGRAD_COLUMNS: usize = 128;

    impl Geom {
        /// 3x3 stride-1 convolutions with enough input channels that the 16 gemms outweigh the
        /// transforms run on F(2x2, 3x3) (`winograd`); `DP_NO_WINOGRAD=1` turns it off (A/B).
        fn winograd(&self) -> bool {
            (self.kh, self.kw, self.sh, self.sw) == (3, 3, 1, 1) && self.cin >= 8 && !*NO_WINOGRAD
        }

        /// The stride-1 convolution whose output is this one's input gradient: the output
        /// gradient correlated with the kernel flipped and transposed (`flipped`), padded by
        /// `k - 1 - p` on each side. None for strides > 1 or paddings the taps do not reach.
        #[cfg(not(target_arch = "wasm32"))]
        fn input_gradient(&self) -> Option<Geom> {
            // Stride 1: oh = h + pt + pb - kh + 1, so the bottom and right paddings are implied.
            let pb = (self.oh + self.kh - 1).checked_sub(self.h + self.pt)?;
            let pr = (self.ow + self.kw - 1).checked_sub(self.w + self.pl)?;
            if (self.sh, self.sw) != (1, 1) || self.pt.max(pb) >= self.kh || self.pl.max(pr) >= self.kw {
                return None;
            }
            let (kh, kw) = (self.kh, self.kw);
            Some(Geom { b: self.b, cin: self.cout, h: self.oh, w: self.ow, cout: self.cin, kh, kw, sh: 1, sw: 1, pt: kh - 1 - self.pt, pl: kw - 1 - self.pl, oh: self.h, ow: self.w })
        }
    }

    /// `[cout, cin, kh, kw]` weights as `[cin, cout, kh, kw]`, each kernel turned 180 degrees:
    /// the weights of `Geom::input_gradient`.
    #[cfg(not(target_arch = "wasm32"))]
    fn flipped(w: &[f32], cout: usize, cin: usize, taps: usize) -> Vec<f32> {
        let mut f = vec![0f32; w.len()];
        for (co, wo) in w.chunks(cin * taps).enumerate() {
            for (ci, k) in wo.chunks(taps).enumerate() {
                let dst = &mut f[(ci * cout + co) * taps..][..taps];
                dst.iter_mut().zip(k.iter().rev()).for_each(|(d, s)| *d = *s);
            }
        }
        f
    }

    /// How a layer's images are tiled and grouped on Winograd's path: groups of about
    /// `WINOGRAD_COLUMNS` tiles, as many groups as threads at least (when there are images for
    /// it), each group's transformed input one `[16][cin][n]` buffer.
    struct Tiling {
        th: usize,
        tw: usize,
        /// Tiles per image, counting the junk column of each tile row (`winograd::row_pitch`).
        tiles: usize,
        /// Images per group.
        per: usize,
        /// Groups run in parallel (single-threaded gemms); otherwise in turn with every thread.
        parallel: bool,
    }

    impl Tiling {
        fn new(g: &Geom) -> Self {
            let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
            let tiles = th * winograd::row_pitch(tw);
            let groups = g.b.div_ceil((WINOGRAD_COLUMNS / tiles).max(1)).next_multiple_of(threads()).min(g.b);
            let per = g.b.div_ceil(groups);
            Self { th, tw, tiles, per, parallel: g.b.div_ceil(per) >= threads() && threads() > 1 }
        }

        fn gemm_threads(&self) -> Parallelism {
            if self.parallel { Parallelism::None } else { all_threads() }
        }

        /// Element blocks of `channels` rows of n columns, a cache line more than their size
        /// apart: at a multiple of 4 KiB (64 channels x 784 tiles) the transforms' 16 streams
        /// fell into the same L1 sets.
        fn stride(channels: usize, n: usize) -> usize {
            channels * n + 16
        }

        /// `V = Bᵀ d B` of images `first..first + imgs` (parts of `x`) into `v`, element e of
        /// channel c's tiles of image i at `v[e·v_stride + c·n + i·tiles..]`. Every element of v
        /// the gemms read is written.
        fn inputs(&self, g: &Geom, x: &[&[f32]], first: usize, imgs: usize, v: &mut [f32], v_stride: usize) {
            let (th, tw, half) = (self.th, self.tw, winograd::row_pitch(self.tw));
            // Padded planes `[2th + 2, 2·half]`, at least `[h + pt + pb, w + pl + pr]`.
            let hp = 2 * th + 2;
            let n = imgs * self.tiles;
            with_scratch(1, hp * 2 * half + winograd::input_scratch(th, tw), true, |pad| {
                // The padding stays zero: only the interior is written, at the same places.
                let (xp, t) = pad.split_at_mut(hp * 2 * half);
                for i in 0..imgs {
                    let parts = image_parts(x, g.b, first + i);
                    for (c, plane) in parts.iter().flat_map(|p| p.chunks(g.h * g.w)).enumerate() {
                        winograd::split_plane(plane, g.w, (g.pt, g.pl), half, xp);
                        winograd::input_plane(xp, th, tw, &mut v[c * n + i * self.tiles..], v_stride, t);
                    }
                }
            });
        }
    }

    /// `forward` on Winograd's F(2x2, 3x3): images go in groups (`Tiling`), each group's inputs
    /// transformed, multiplied by the transformed weight in 16 gemms, and transformed back image
    /// by image with the epilogue.
    fn forward_winograd(g: &Geom, x: &[&[f32]], w: &[f32], ep: &Epilogue) -> Vec<f32> {
        const E: usize = winograd::ELEMS;
        // U = G g Gᵀ `[cin][16][cout]`, input channels split over the threads: memory-bound
        // (9 floats in, 16 out per filter), a sixth of an IF-I-M step when one thread did it.
        // Its buffer stays with the thread (`SCRATCH_KEEP`): no fresh pages every call.
        with_scratch(3, E * g.cin * g.cout, false, |u| {
            let per = g.cin.div_ceil(threads());
            for_each_chunk(u, per * E * g.cout, threads() > 1, |(i, part)| winograd::weights_into(w, g.cout, g.cin, i * per, part));
            let u = &*u;
            let tl = Tiling::new(g);
            let (ohw, out_len) = (g.ohw(), g.out_len());
            per_chunk(g.b * out_len, tl.per * out_len, tl.parallel, |gi, ys| {
                let imgs = ys.len() / out_len;
                let n = imgs * tl.tiles;
                let (v_stride, m_stride) = (Tiling::stride(g.cin, n), Tiling::stride(g.cout, n));
                with_scratch(0, E * v_stride, false, |v| {
                    tl.inputs(g, x, gi * tl.per, imgs, v, v_stride);
                    with_scratch(2, E * m_stride, false, |m| {
                        for e in 0..E {
                            matmul(g.cout, n, g.cin, &mut m[e * m_stride..], (n, 1), false, &u[e * g.cout..], (1, E * g.cout), &v[e * v_stride..], (n, 1), tl.gemm_threads());
                        }
                        let mut s = vec![0f32; winograd::output_scratch(tl.th, tl.tw)];
                        for (i, y) in ys.chunks_mut(out_len).enumerate() {
                            for (co, yc) in y.chunks_mut(ohw).enumerate() {
                                winograd::output_plane(&m[co * n + i * tl.tiles..], m_stride, tl.th, tl.tw, yc, g.oh, g.ow, ep.affine(co), &mut s);
                            }
                            if ep.gelu {
                                gelu_in_place(y);
                            }
                        }
                    });
                });
            })
        })
    }

    /// The weight gradient of `forward` on F(2x2, 3x3): per group, the inputs transformed as in
    /// the forward pass (V) and the output gradient by `winograd::gradient_plane` (dM), then
    /// `dU[e] += dM[e] · V[e]ᵀ` in 16 gemms of `[cout, n] x [n, cin]`, summed over groups, and
    /// `Gᵀ dU G` per filter: 16 multiply-adds per 2x2 outputs where the shifted windows take 36.
    #[cfg(not(target_arch = "wasm32"))]
    fn weight_gradient_winograd(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f32> {
        const E: usize = winograd::ELEMS;
        let tl = Tiling::new(g);
        let (ohw, out_len, pairs) = (g.ohw(), g.out_len(), g.cout * g.cin);
        let group = |gi: usize, mut du: Vec<f32>| {
            let first = gi * tl.per;
            let imgs = tl.per.min(g.b - first);
            let n = imgs * tl.tiles;
            let (v_stride, m_stride) = (Tiling::stride(g.cin, n), Tiling::stride(g.cout, n));
            with_scratch(0, E * v_stride, false, |v| {
                tl.inputs(g, &[x], first, imgs, v, v_stride);
                with_scratch(2, E * m_stride, false, |dm| {
                    let mut t = vec![0f32; winograd::gradient_scratch(tl.th, tl.tw)];
                    for (i, gyb) in gy[first * out_len..][..imgs * out_len].chunks(out_len).enumerate() {
                        for (co, plane) in gyb.chunks(ohw).enumerate() {
                            winograd::gradient_plane(plane, g.oh, g.ow, tl.th, tl.tw, &mut dm[co * n + i * tl.tiles..], m_stride, &mut t);
                        }
                    }
                    for e in 0..E {
                        matmul(g.cout, g.cin, n, &mut du[e * pairs..], (g.cin, 1), true, &dm[e * m_stride..], (n, 1), &v[e * v_stride..], (1, n), tl.gemm_threads());
                    }
                });
            });
            du
        };
        let groups = g.b.div_ceil(tl.per);
        let zeros = || vec![0f32; E * pairs];
        let du = if tl.parallel {
            let sum = |mut a: Vec<f32>, b: Vec<f32>| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            };
            (0..groups).into_par_iter().fold(zeros, |du, gi| group(gi, du)).reduce(zeros, sum)
        } else {
            (0..groups).fold(zeros(), |du, gi| group(gi, du))
        };
        winograd::weight_gradients(&du, g.cout, g.cin)
    }

    /// Gradients of `forward` (without bias) for the output gradient `gy`, each only when asked
    /// for. Where the input gradient's own convolution (`Geom::input_gradient`) takes Winograd's
    /// path, dx is that forward pass; where the layer's does, dw comes from
    /// `weight_gradient_winograd` (each a third of a training step's multiply-adds); what is
    /// left from `backward_gemm`.
    #[cfg(not(target_arch = "wasm32"))]
    fn backward(g: &Geom, x: &[f32], w: &[f32], gy: &[f32], want_dx: bool, want_dw: bool) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let dx = want_dx.then(|| g.input_gradient()).flatten().filter(Geom::winograd);
        let dx = dx.map(|t| forward_winograd(&t, &[gy], &flipped(w, g.cout, g.cin, g.kh * g.kw), &Epilogue::default()));
        // Both transforms' costs are per channel: with a single output channel the 16 gemms of
        // one row each would not pay for the input transform.
        let dw = (want_dw && g.winograd() && g.cout >= 8).then(|| weight_gradient_winograd(g, x, gy));
        let (rest_dx, rest_dw) = (want_dx && dx.is_none(), want_dw && dw.is_none());
        if !rest_dx && !rest_dw {
            return (dx, dw);
        }
        let (gx, gw) = backward_gemm(g, x, w, gy, rest_dx, rest_dw);
        (dx.or(gx), dw.or(gw))
    }

    /// `backward` on gemms: `dx[b] = col2im(wᵀ @ gy[b])` and `dw = Σ_b gy[b] @ im2col(x[b])ᵀ`.
    #[cfg(not(target_arch = "wasm32"))]
    fn backward_gemm(g: &Geom, x: &[f32], w: &[f32], gy: &[f32], want_dx: bool, want_dw: bool) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let wlen = if want_dw { g.cout * g.k() } else { 0 };
        let one = |n: usize, dw: &mut Vec<f32>, dxb: Option<&mut [f32]>| {
            let (xb, gyb) = (&x[n * g.in_len()..][..g.in_len()], &gy[n * g.out_len()..][..g.out_len()]);
            g.backward_image(xb, w, gyb, want_dw.then_some(dw.as_mut_slice()), dxb);
        };
        let mut dx = want_dx.then(|| vec![0f32; g.b * g.in_len()]);
        // Each item with its slice of dx, when dx is wanted.
        let items: Vec<(usize, Option<&mut [f32]>)> = match dx.as_mut() {
            Some(dx) => dx.chunks_mut(g.in_len()).map(Some).enumerate().collect(),
            None => (0..g.b).map(|n| (n, None)).collect(),
        };
        let dw = if g.split_batch() {
            // Each thread sums its items' weight gradients, and the sums are added up.
            let sum = |mut a: Vec<f32>, b: Vec<f32>| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            };
            let zeros = || vec![0f32; wlen];
            items.into_par_iter().fold(zeros, |mut dw, (n, dxb)| {
                one(n, &mut dw, dxb);
                dw
            }).reduce(zeros, sum)
        } else {
            let mut dw = vec![0f32; wlen];
            items.into_iter().for_each(|(n, dxb)| one(n, &mut dw, dxb));
            dw
        };
        (dx, want_dw.then_some(dw))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::conv2d;
    use burn::module::Module;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::tensor::{Distribution, Tensor, TensorData};

    fn max_rel(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// The fast path against burn's own `Conv2d::forward`: outputs, and the gradients of x, the
    /// weight and the bias under a random output gradient. Both sum the same products in another
    /// order, so they agree to f32 rounding (1e-5 relative to the largest value).
    fn check(b: usize, cin: usize, cout: usize, [h, w]: [usize; 2], k: usize, stride: usize, pad: usize, bias: bool) {
        let device = burn::tensor::Device::flex();
        let ad = device.clone().autodiff();
        let conv: Conv2d = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .init(&ad);
        let plain = conv.valid();
        let x = Tensor::<4>::random([b, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
        let case = format!("b{b} {cin}->{cout} {h}x{w} k{k} s{stride} p{pad} bias {bias}");

        assert!(super::flex::try_conv2d(&plain, x.clone()).is_ok(), "{case}: the fast path must apply");
        let fast = conv2d(&plain, x.clone());
        let slow = plain.forward(x.clone());
        assert_eq!(fast.dims(), slow.dims(), "{case}");
        assert!(max_rel(fast, slow.clone()) < 1e-5, "{case}: forward");

        let gy = Tensor::<4>::random(slow.dims(), Distribution::Normal(0.0, 1.0), &ad);
        let grads = |fast: bool| {
            let xa = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
            let y = if fast { super::flex::try_conv2d(&conv, xa.clone()).expect("the fast path applies in autodiff") } else { conv.forward(xa.clone()) };
            let g = (y * gy.clone()).sum().backward();
            let gx = xa.grad(&g).unwrap();
            let gw = conv.weight.grad(&g).unwrap();
            let gb = conv.bias.as_ref().map(|p| p.grad(&g).unwrap().reshape([1, 1, 1, cout]));
            (gx, gw, gb)
        };
        let (fx, fw, fb) = grads(true);
        let (sx, sw, sb) = grads(false);
        let as4 = |t: Tensor<4>| Tensor::<4>::from_data(TensorData::from(t.to_data()), &device);
        assert!(max_rel(as4(fx), as4(sx)) < 1e-5, "{case}: x gradient");
        assert!(max_rel(as4(fw), as4(sw)) < 1e-5, "{case}: weight gradient");
        if let (Some(fb), Some(sb)) = (fb, sb) {
            assert!(max_rel(as4(fb), as4(sb)) < 1e-5, "{case}: bias gradient");
        }
    }

    /// A BatchNorm with running statistics, gamma and beta far from their defaults.
    fn batch_norm(channels: usize, device: &burn::tensor::Device) -> burn::nn::BatchNorm {
        use burn::module::{Param, RunningState};
        let r = |lo: f64, hi: f64| Tensor::<1>::random([channels], Distribution::Uniform(lo, hi), device);
        let mut bn = burn::nn::BatchNormConfig::new(channels).with_epsilon(1e-5).init(device);
        bn.gamma = Param::from_tensor(r(-2.0, 2.0));
        bn.beta = Param::from_tensor(r(-1.0, 1.0));
        bn.running_mean = RunningState::new(r(-0.5, 0.5));
        bn.running_var = RunningState::new(r(0.05, 3.0));
        bn
    }

    /// Inputs `[b, c_i, side, side]` and their concatenation along channels.
    fn parts(b: usize, channels: &[usize], [h, w]: [usize; 2], device: &burn::tensor::Device) -> (Vec<Tensor<4>>, Tensor<4>) {
        let xs: Vec<Tensor<4>> = channels.iter().map(|&c| Tensor::random([b, c, h, w], Distribution::Normal(0.0, 1.0), device)).collect();
        (xs.clone(), Tensor::cat(xs, 1))
    }

    /// The fused (concatenation +) Conv + BatchNorm + GELU, and BatchNorm + GELU alone, against
    /// the unfused layers on burn's ops. The fold of BatchNorm into one scale and shift rounds
    /// differently: within 1e-5 of the largest value.
    fn check_fused(b: usize, cins: &[usize], cout: usize, side: usize, stride: usize, bias: bool) {
        let device = burn::tensor::Device::flex();
        let cin = cins.iter().sum();
        let conv: Conv2d = Conv2dConfig::new([cin, cout], [3, 3])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(bias)
            .init(&device);
        let bn = batch_norm(cout, &device);
        let (xs, x) = parts(b, cins, [side, side], &device);
        let case = format!("b{b} {cins:?}->{cout} {side}x{side} s{stride} bias {bias}");

        let fused = super::flex::try_conv2d_bn_gelu(&conv, &bn, xs).expect("the fused path must apply");
        let unfused = burn::tensor::activation::gelu(bn.forward(conv.forward(x.clone())));
        assert_eq!(fused.dims(), unfused.dims(), "{case}");
        assert!(max_rel(fused, unfused.clone()) < 1e-5, "{case}: conv + bn + gelu");

        let y = conv.forward(x);
        let unfused = burn::tensor::activation::gelu(bn.forward(y.clone()));
        let kept = y.clone(); // a shared buffer must not be changed in place
        let fused = super::flex::try_batch_norm_gelu(&bn, y.clone()).expect("the fused path must apply");
        assert!(max_rel(fused, unfused) < 1e-5, "{case}: bn + gelu");
        assert_eq!(kept.into_data(), y.into_data(), "{case}: input left alone");
    }

    #[test]
    fn fused_conv_batch_norm_gelu_matches_burns_layers() {
        check_fused(3, &[4], 5, 9, 1, true); // Conv, items in parallel (shifted windows)
        check_fused(1, &[4], 5, 9, 1, false); // one item: threaded gemm
        check_fused(3, &[2, 3], 5, 8, 1, true); // the skip connection's concatenation
        check_fused(3, &[4], 6, 9, 2, true); // DownConv (im2col)
        check_fused(2, &[1, 2], 4, 7, 2, false); // concatenated, im2col
        check_fused(5, &[8], 6, 7, 1, true); // Winograd, 7x7 (cut tiles), 5 items in 2+ groups
        check_fused(3, &[4, 6], 5, 14, 1, true); // Winograd on a concatenation
        check_fused(1, &[8], 3, 8, 1, false); // Winograd, one item: threaded gemm
    }

    /// The transposed convolution on per-phase gemms (+ BatchNorm + GELU) against burn's
    /// `ConvTranspose2d`, BatchNorm and GELU: within 1e-5 of the largest value.
    fn check_up(b: usize, cins: &[usize], cout: usize, [h, w]: [usize; 2], k: usize, stride: usize, pad: usize, bias: bool) {
        use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
        let device = burn::tensor::Device::flex();
        let cin = cins.iter().sum();
        let conv: ConvTranspose2d = ConvTranspose2dConfig::new([cin, cout], [k, k]).with_stride([stride, stride]).with_padding([pad, pad]).with_bias(bias).init(&device);
        let bn = batch_norm(cout, &device);
        let (xs, x) = parts(b, cins, [h, w], &device);
        let case = format!("b{b} {cins:?}->{cout} {h}x{w} k{k} s{stride} p{pad} bias {bias}");
        let unfused = burn::tensor::activation::gelu(bn.forward(conv.forward(x)));
        let fused = super::flex::try_conv_transpose2d_bn_gelu(&conv, &bn, xs.clone()).expect("the fast path must apply");
        assert_eq!(fused.dims(), unfused.dims(), "{case}");
        assert!(max_rel(fused, unfused.clone()) < 1e-5, "{case}");
        let public = super::conv_transpose2d_bn_gelu(&conv, &bn, xs);
        assert!(max_rel(public, unfused) < 1e-5, "{case}: public function");
    }

    #[test]
    fn transposed_conv_on_phases_matches_burn() {
        check_up(3, &[4], 5, [7, 7], 4, 2, 1, true); // UpConv, items in parallel
        check_up(1, &[3, 2], 4, [6, 5], 4, 2, 1, false); // concatenated, one item, not square
        check_up(2, &[3], 2, [5, 5], 2, 2, 0, true); // one tap per phase
        check_up(2, &[2], 3, [4, 6], 4, 2, 0, true); // no padding: a wider output
        check_up(2, &[2], 3, [5, 4], 4, 2, 3, true); // padding past a tap
        check_up(2, &[3], 3, [6, 6], 3, 1, 1, true); // stride 1: one phase
        check_up(2, &[2], 3, [1, 1], 4, 2, 1, false); // a single input pixel
    }

    #[test]
    fn unflatten_stays_on_burns_transposed_conv() {
        use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
        let device = burn::tensor::Device::flex();
        let conv: ConvTranspose2d = ConvTranspose2dConfig::new([4, 4], [7, 7]).with_stride([7, 7]).init(&device);
        let bn = batch_norm(4, &device);
        let x = Tensor::<4>::random([2, 4, 1, 1], Distribution::Normal(0.0, 1.0), &device);
        assert!(super::flex::try_conv_transpose2d_bn_gelu(&conv, &bn, vec![x.clone()]).is_err(), "49 phases: burn's path");
        let unfused = burn::tensor::activation::gelu(bn.forward(conv.forward(x.clone())));
        assert!(max_rel(super::conv_transpose2d_bn_gelu(&conv, &bn, vec![x]), unfused) < 1e-5);
    }

    #[test]
    fn fast_conv_matches_burn_forward_and_gradients() {
        check(3, 4, 5, [9, 9], 3, 1, 1, true); // UNet Conv, items in parallel
        check(1, 4, 5, [9, 9], 3, 1, 1, true); // one item: threaded gemm
        check(3, 4, 6, [9, 7], 3, 2, 1, true); // DownConv on an odd, non-square side
        check(2, 6, 3, [5, 6], 1, 1, 0, true); // DeepFloyd's 1x1 shortcut
        check(2, 3, 2, [6, 6], 3, 1, 0, false); // no padding, no bias
        check(4, 2, 3, [8, 8], 4, 2, 1, true); // even kernel
        check(2, 2, 3, [3, 4], 3, 2, 2, true); // padding wider than the taps reach
        check(2, 2, 3, [2, 9], 3, 3, 1, true); // stride 3, a side shorter than the kernel
        // 8+ input channels: Winograd F(2x2, 3x3) forward; 8+ output channels: the input
        // gradient on it too (a 3x3 stride-1 convolution of gy with the flipped kernel); both:
        // the weight gradient as well
        check(3, 8, 5, [9, 9], 3, 1, 1, true); // odd side: the last tiles cut
        check(1, 9, 4, [6, 10], 3, 1, 1, false); // one item, even sides, not square
        check(2, 8, 3, [7, 6], 3, 1, 0, true); // no padding
        check(2, 8, 3, [5, 4], 3, 1, 2, true); // padding wider than the taps reach
        check(2, 16, 6, [1, 1], 3, 1, 1, true); // a single pixel
        check(3, 4, 8, [9, 9], 3, 1, 1, true); // only the input gradient on Winograd
        check(1, 8, 12, [6, 10], 3, 1, 1, false); // both; one item, even sides
        check(2, 9, 8, [7, 6], 3, 1, 0, true); // both, no padding: the gradient padded by 2
        check(2, 8, 10, [5, 4], 3, 1, 2, true); // both, padding 2: the gradient unpadded
        check(2, 8, 8, [1, 1], 3, 1, 1, true); // both, a single pixel
        check(5, 8, 9, [5, 4], 3, 1, 1, true); // both, five images in groups of three and two
    }
}
