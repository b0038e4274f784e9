//! Convolutions as gemms on raw buffers: shifted windows for stride 1 (no im2col), im2col
//! otherwise; forward and, for training, both gradients.

#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

use super::buffers::image_parts;
use super::epilogue::Epilogue;
use super::geometry::Geom;
use super::matmul::{matmul, taps_major};
use super::parallel::per_image;
use super::scratch::{with_scratch, Slot};
use super::winograd::forward_winograd;
use crate::activation::gelu_in_place;

/// One image's column matrix `[cin*kh*kw, oh*ow]`: row (c, i, j) holds input channel c seen
/// through tap (i, j) at every output pixel, zero where the tap falls in the padding.
pub(super) fn im2col(g: &Geom, x: &[f32], cols: &mut [f32]) {
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
pub(super) fn col2im(g: &Geom, cols: &[f32], dx: &mut [f32]) {
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

/// Stride-1 convolutions skip im2col: on the zero-padded image `[cin, hp, wp]` laid out flat,
/// tap (i, j) of every output pixel is one window starting at `i*wp + j`, so the output is nine
/// (kh*kw) gemms over shifted windows, computed on a grid `wp` wide whose last `kw-1` columns
/// are thrown away. That writes nothing the size of im2col's matrix (9x the input).
pub(super) struct Shifted {
    pub(super) hp: usize,
    pub(super) wp: usize,
    /// Output pixels on the wide grid, up to the last real one.
    pub(super) n: usize,
}

impl Geom {
    pub(super) fn shifted(&self) -> Option<Shifted> {
        (self.sh == 1 && self.sw == 1).then(|| {
            let (hp, wp) = (self.oh + self.kh - 1, self.ow + self.kw - 1);
            Shifted { hp, wp, n: (self.oh - 1) * wp + self.ow }
        })
    }

    /// Where input row (c, y) starts inside the padded image `[cin, hp, wp]`.
    pub(super) fn padded_row(&self, sh: &Shifted, c: usize, y: usize) -> usize {
        (c * sh.hp + y + self.pt) * sh.wp + self.pl
    }

    /// The image zero-padded to `[cin, hp, wp]`.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn pad(&self, sh: &Shifted, x: &[f32]) -> Vec<f32> {
        let mut xp = vec![0f32; self.cin * sh.hp * sh.wp];
        self.pad_into(sh, &[x], &mut xp);
        xp
    }

    /// Copies the image, given as parts along channels, into `xp`, `[cin, hp, wp]` already zero.
    pub(super) fn pad_into(&self, sh: &Shifted, parts: &[&[f32]], xp: &mut [f32]) {
        for (r, src) in parts.iter().flat_map(|p| p.chunks(self.w)).enumerate() {
            xp[self.padded_row(sh, r / self.h, r % self.h)..][..self.w].copy_from_slice(src);
        }
    }

    /// Weight tap (i, j) as a `[cout, cin]` matrix view of the layer's own layout (the
    /// backward pass): (start, strides).
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn tap(&self, i: usize, j: usize) -> (usize, (usize, usize)) {
        (i * self.kw + j, (self.cin * self.kh * self.kw, self.kh * self.kw))
    }

    /// One image's output `[cout, oh, ow]` from its parts along channels, the epilogue applied;
    /// `w` as the layer's `[cout, cin, kh, kw]` for im2col (stride > 1), in `taps_major`
    /// layout for shifted windows.
    pub(super) fn forward_image(&self, parts: &[&[f32]], w: &[f32], ep: &Epilogue, y: &mut [f32]) {
        let (k, ohw, threads) = (self.k(), self.ohw(), self.gemm_threads());
        match self.shifted() {
            None => with_scratch(Slot::Gathered, k * ohw, false, |cols| {
                match parts {
                    [x] => im2col(self, x, cols),
                    _ => im2col(self, &parts.concat(), cols),
                }
                matmul(self.cout, ohw, k, y, (ohw, 1), false, w, (k, 1), cols, (ohw, 1), threads);
                ep.image_in_place(y, ohw);
            }),
            Some(sh) => {
                with_scratch(Slot::Gathered, self.cin * sh.hp * sh.wp, true, |xp| {
                    self.pad_into(&sh, parts, xp);
                    let plane = sh.hp * sh.wp;
                    // Every column the gemms write is first overwritten by tap (0, 0); the
                    // rest of the buffer is never read.
                    with_scratch(Slot::Staging, self.cout * self.oh * sh.wp, false, |wide| {
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
    pub(super) fn backward_image(&self, x: &[f32], w: &[f32], gy: &[f32], dw: Option<&mut [f32]>, dx: Option<&mut [f32]>) {
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
pub(super) fn forward(g: &Geom, x: &[&[f32]], w: &[f32], ep: &Epilogue) -> Vec<f32> {
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

/// `backward` on gemms: `dx[b] = col2im(wᵀ @ gy[b])` and `dw = Σ_b gy[b] @ im2col(x[b])ᵀ`.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn backward_gemm(g: &Geom, x: &[f32], w: &[f32], gy: &[f32], want_dx: bool, want_dw: bool) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
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
