//! Transposed convolutions as one stride-1 convolution per output phase, on the same gemms.

use burn::tensor::DType;
use gemm::Parallelism;

use super::epilogue::Epilogue;
use super::geometry::FORCE_BURN;
use super::matmul::matmul;
use super::parallel::{all_threads, threads};
use super::scratch::{with_scratch, Slot};
use super::ConvTranspose2d;
use crate::activation::gelu_in_place;

/// A transposed convolution `[b, cin, h, w] -> [b, cout, oh, ow]` with weight `[cin, cout,
/// kh, kw]`: output pixel o gets input y through tap i where `o = s·y + i - p`. Sorting the
/// outputs by phase `r = (o + p) mod s` and writing `o = s·q + r - p`, phase r is a stride-1
/// correlation over q with the taps `i = r + s·t` reading input `q - t`, `t < kh/s`: on the
/// input padded by `kh/s - 1` on every side that is the shifted-window gemm of stride-1
/// convolutions (one per tap, `[cout, cin]` times `[cin, pixels]`), and the phase's outputs are
/// written back every s-th pixel.
#[derive(Clone, Copy, Debug)]
pub(super) struct UpGeom {
    pub(super) b: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl UpGeom {
    pub(super) fn new(conv: &ConvTranspose2d, [b, cin, h, w]: [usize; 4]) -> Option<Self> {
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
    pub(super) fn taps(&self) -> (usize, usize) {
        (self.kh / self.sh, self.kw / self.sw)
    }

    /// The padded input's sides.
    pub(super) fn padded(&self) -> (usize, usize) {
        let (ty, tx) = self.taps();
        (self.h + 2 * (ty - 1), self.w + 2 * (tx - 1))
    }

    /// The q of phase r whose output `s·q + r - p` lies in `0..out`: `lo..hi`.
    pub(super) fn span(r: usize, s: usize, p: usize, out: usize) -> (usize, usize) {
        let lo = if p > r { (p - r).div_ceil(s) } else { 0 };
        let hi = if out + p > r { (out - 1 + p - r) / s + 1 } else { 0 };
        (lo, hi.max(lo))
    }

    /// One image's output `[cout, oh, ow]` from its parts along channels, the epilogue applied;
    /// `w` is the layer's `[cin, cout, kh, kw]` in `taps_major` layout.
    pub(super) fn forward_image(&self, parts: &[&[f32]], w: &[f32], ep: &Epilogue, y: &mut [f32]) {
        let (ty, tx) = self.taps();
        let (hp, wp) = self.padded();
        let plane = hp * wp;
        let threads = if self.b >= threads() { Parallelism::None } else { all_threads() };
        // Where weight tap (i, j), a column-major `[cout, cin]` matrix, starts in `taps_major` layout.
        let tap = |i: usize, j: usize| (i * self.kw + j) * self.cin * self.cout;
        with_scratch(Slot::Gathered, self.cin * plane, true, |xp| {
            for (r, src) in parts.iter().flat_map(|p| p.chunks(self.w)).enumerate() {
                let (c, row) = (r / self.h, r % self.h);
                xp[(c * hp + row + ty - 1) * wp + tx - 1..][..self.w].copy_from_slice(src);
            }
            with_scratch(Slot::Staging, self.cout * plane, false, |wide| {
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
