//! The sizes of one convolution and which of this folder's paths it takes.

use std::sync::LazyLock;

use burn::nn::PaddingConfig2d;
use burn::tensor::DType;
use gemm::Parallelism;

use super::Conv2d;
use super::parallel::{all_threads, threads};

pub(super) static FORCE_BURN: LazyLock<bool> = LazyLock::new(|| crate::device::env_flag("DP_BURN_CONV"));
pub(super) static NO_WINOGRAD: LazyLock<bool> = LazyLock::new(|| crate::device::env_flag("DP_NO_WINOGRAD"));



/// Sizes of one convolution: input `[b, cin, h, w]`, weight `[cout, cin, kh, kw]`, stride,
/// top/left padding (bottom/right padding only shows in `oh`, `ow`), output `[b, cout, oh, ow]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) b: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) pt: usize,
    pub(super) pl: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geom {
    /// Rows of an image's column matrix: one per (input channel, tap).
    pub(super) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// The output columns `lo..hi` whose tap column `j` lands inside the input (not in the
    /// left or right padding).
    pub(super) fn inside(&self, j: usize) -> (usize, usize) {
        let lo = if self.pl > j { (self.pl - j).div_ceil(self.sw) } else { 0 };
        let hi = if self.w + self.pl > j { ((self.w - 1 + self.pl - j) / self.sw + 1).min(self.ow) } else { 0 };
        (lo.min(self.ow), hi.max(lo.min(self.ow)))
    }
    pub(super) fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    pub(super) fn out_len(&self) -> usize {
        self.cout * self.ohw()
    }
    /// Batch items run in parallel (one single-threaded gemm each) when there are enough of
    /// them to share out; otherwise items run in turn and each gemm uses every thread.
    pub(super) fn split_batch(&self) -> bool {
        self.b >= threads()
    }
    pub(super) fn gemm_threads(&self) -> Parallelism {
        if self.split_batch() { Parallelism::None } else { all_threads() }
    }
}

/// The convolution's sizes for an input `[b, cin, h, w]`, when the fast path applies to it.
pub(super) fn geometry(conv: &Conv2d, [b, cin, h, w]: [usize; 4]) -> Option<Geom> {
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

impl Geom {
    /// 3x3 stride-1 convolutions with enough input channels that the 16 gemms outweigh the
    /// transforms run on F(2x2, 3x3) (`winograd`); `DP_NO_WINOGRAD=1` turns it off (A/B).
    pub(super) fn winograd(&self) -> bool {
        (self.kh, self.kw, self.sh, self.sw) == (3, 3, 1, 1) && self.cin >= 8 && !*NO_WINOGRAD
    }

    /// The stride-1 convolution whose output is this one's input gradient: the output
    /// gradient correlated with the kernel flipped and transposed (`flipped`), padded by
    /// `k - 1 - p` on each side. None for strides > 1 or paddings the taps do not reach.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn input_gradient(&self) -> Option<Geom> {
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
