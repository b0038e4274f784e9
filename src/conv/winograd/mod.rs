//! Convolutions on Winograd's F(2x2, 3x3) (the transforms are in `transform`): images tiled and
//! grouped, each group's inputs transformed, 16 gemms with the transformed weight, transformed back
//! with the epilogue; and the weight gradient the same way backwards.

use gemm::Parallelism;
#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;

use super::buffers::image_parts;
use super::epilogue::Epilogue;
use super::geometry::Geom;
use super::matmul::matmul;
use super::parallel::{all_threads, for_each_chunk, per_chunk, threads};
use super::scratch::{with_scratch, Slot};
use crate::activation::gelu_in_place;

mod transform;

/// Gemm columns (tiles) a Winograd group aims at: a 28x28 image alone (210 with the junk
/// columns), two at 14x14, six at 7x7 (20 each). Much larger groups are slower: the group's
/// transformed input no longer stays in cache.
pub(super) const WINOGRAD_COLUMNS: usize = 128;

/// How a layer's images are tiled and grouped on Winograd's path: groups of about
/// `WINOGRAD_COLUMNS` tiles, as many groups as threads at least (when there are images for
/// it), each group's transformed input one `[16][cin][n]` buffer.
pub(super) struct Tiling {
    pub(super) th: usize,
    pub(super) tw: usize,
    /// Tiles per image, counting the junk column of each tile row (`transform::row_pitch`).
    pub(super) tiles: usize,
    /// Images per group.
    pub(super) per: usize,
    /// Groups run in parallel (single-threaded gemms); otherwise in turn with every thread.
    pub(super) parallel: bool,
}

impl Tiling {
    pub(super) fn new(g: &Geom) -> Self {
        let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
        let tiles = th * transform::row_pitch(tw);
        let groups = g.b.div_ceil((WINOGRAD_COLUMNS / tiles).max(1)).next_multiple_of(threads()).min(g.b);
        let per = g.b.div_ceil(groups);
        Self { th, tw, tiles, per, parallel: g.b.div_ceil(per) >= threads() && threads() > 1 }
    }

    pub(super) fn gemm_threads(&self) -> Parallelism {
        if self.parallel { Parallelism::None } else { all_threads() }
    }

    /// Element blocks of `channels` rows of n columns, a cache line more than their size
    /// apart: at a multiple of 4 KiB (64 channels x 784 tiles) the transforms' 16 streams
    /// fell into the same L1 sets.
    pub(super) fn stride(channels: usize, n: usize) -> usize {
        channels * n + 16
    }

    /// `V = Bᵀ d B` of images `first..first + imgs` (parts of `x`) into `v`, element e of
    /// channel c's tiles of image i at `v[e·v_stride + c·n + i·tiles..]`. Every element of v
    /// the gemms read is written.
    pub(super) fn inputs(&self, g: &Geom, x: &[&[f32]], first: usize, imgs: usize, v: &mut [f32], v_stride: usize) {
        let (th, tw, half) = (self.th, self.tw, transform::row_pitch(self.tw));
        // Padded planes `[2th + 2, 2·half]`, at least `[h + pt + pb, w + pl + pr]`.
        let hp = 2 * th + 2;
        let n = imgs * self.tiles;
        with_scratch(Slot::Staging, hp * 2 * half + transform::input_scratch(th, tw), true, |pad| {
            // The padding stays zero: only the interior is written, at the same places.
            let (xp, t) = pad.split_at_mut(hp * 2 * half);
            for i in 0..imgs {
                let parts = image_parts(x, g.b, first + i);
                for (c, plane) in parts.iter().flat_map(|p| p.chunks(g.h * g.w)).enumerate() {
                    transform::split_plane(plane, g.w, (g.pt, g.pl), half, xp);
                    transform::input_plane(xp, th, tw, &mut v[c * n + i * self.tiles..], v_stride, t);
                }
            }
        });
    }
}

/// `forward` on Winograd's F(2x2, 3x3): images go in groups (`Tiling`), each group's inputs
/// transformed, multiplied by the transformed weight in 16 gemms, and transformed back image
/// by image with the epilogue.
pub(super) fn forward_winograd(g: &Geom, x: &[&[f32]], w: &[f32], ep: &Epilogue) -> Vec<f32> {
    const E: usize = transform::ELEMS;
    // U = G g Gᵀ `[cin][16][cout]`, input channels split over the threads: memory-bound
    // (9 floats in, 16 out per filter). Its buffer stays with the thread
    // (`Slot::WinogradWeights`): no fresh pages every call.
    with_scratch(Slot::WinogradWeights, E * g.cin * g.cout, false, |u| {
        let per = g.cin.div_ceil(threads());
        for_each_chunk(u, per * E * g.cout, threads() > 1, |(i, part)| transform::weights_into(w, g.cout, g.cin, i * per, part));
        let u = &*u;
        let tl = Tiling::new(g);
        let (ohw, out_len) = (g.ohw(), g.out_len());
        per_chunk(g.b * out_len, tl.per * out_len, tl.parallel, |gi, ys| {
            let imgs = ys.len() / out_len;
            let n = imgs * tl.tiles;
            let (v_stride, m_stride) = (Tiling::stride(g.cin, n), Tiling::stride(g.cout, n));
            with_scratch(Slot::Gathered, E * v_stride, false, |v| {
                tl.inputs(g, x, gi * tl.per, imgs, v, v_stride);
                with_scratch(Slot::Products, E * m_stride, false, |m| {
                    for e in 0..E {
                        matmul(g.cout, n, g.cin, &mut m[e * m_stride..], (n, 1), false, &u[e * g.cout..], (1, E * g.cout), &v[e * v_stride..], (n, 1), tl.gemm_threads());
                    }
                    let mut s = vec![0f32; transform::output_scratch(tl.th, tl.tw)];
                    for (i, y) in ys.chunks_mut(out_len).enumerate() {
                        for (co, yc) in y.chunks_mut(ohw).enumerate() {
                            transform::output_plane(&m[co * n + i * tl.tiles..], m_stride, tl.th, tl.tw, yc, g.oh, g.ow, ep.affine(co), &mut s);
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
/// the forward pass (V) and the output gradient by `transform::gradient_plane` (dM), then
/// `dU[e] += dM[e] · V[e]ᵀ` in 16 gemms of `[cout, n] x [n, cin]`, summed over groups, and
/// `Gᵀ dU G` per filter: 16 multiply-adds per 2x2 outputs where the shifted windows take 36.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn weight_gradient_winograd(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f32> {
    const E: usize = transform::ELEMS;
    let tl = Tiling::new(g);
    let (ohw, out_len, pairs) = (g.ohw(), g.out_len(), g.cout * g.cin);
    let group = |gi: usize, mut du: Vec<f32>| {
        let first = gi * tl.per;
        let imgs = tl.per.min(g.b - first);
        let n = imgs * tl.tiles;
        let (v_stride, m_stride) = (Tiling::stride(g.cin, n), Tiling::stride(g.cout, n));
        with_scratch(Slot::Gathered, E * v_stride, false, |v| {
            tl.inputs(g, &[x], first, imgs, v, v_stride);
            with_scratch(Slot::Products, E * m_stride, false, |dm| {
                let mut t = vec![0f32; transform::gradient_scratch(tl.th, tl.tw)];
                for (i, gyb) in gy[first * out_len..][..imgs * out_len].chunks(out_len).enumerate() {
                    for (co, plane) in gyb.chunks(ohw).enumerate() {
                        transform::gradient_plane(plane, g.oh, g.ow, tl.th, tl.tw, &mut dm[co * n + i * tl.tiles..], m_stride, &mut t);
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
    transform::weight_gradients(&du, g.cout, g.cin)
}
