//! Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2015): each 2x2 block of a 3x3 stride-1 correlation's output comes from the
//! 4x4 input tile under it as `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Over channels the elementwise product
//! becomes 16 gemms (one per tile element) of 16 multiply-adds per 2x2 outputs where direct
//! convolution needs 36: 2.25x fewer. The transforms are additions and halvings, so the result
//! differs from direct convolution by a few ulp of its terms (see the conv tests' tolerances).
//!
//! Layouts: a transformed weight is `[cin][16][cout]` (each element's `[cout, cin]` matrix
//! column-major with a column stride of 16·cout, so a range of input channels is one contiguous
//! block that a thread transforms alone), a transformed input `[16][cin][n]`
//! and the gemms' product `[16][cout][n]`, n counting tiles. The weight gradient (training)
//! runs the same way backwards: the output gradient transformed to `[16][cout][n]`, its gemms
//! with the transformed input summed over tiles into `[16][cout][cin]`, transformed back by G.

use crate::simd::widest;

/// Elements of a 4x4 tile: gemms per layer.
pub(super) const ELEMS: usize = 16;

/// `U = G g Gᵀ` for every 3x3 filter `g = w[co][ci]` of a weight `[cout, cin, 3, 3]` with ci
/// in `ci0..`, as much of `[cin][16][cout]` as `u` holds (whole input channels, from ci0).
pub(super) fn weights_into(w: &[f32], cout: usize, cin: usize, ci0: usize, u: &mut [f32]) {
    // G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]] applied to three values.
    let g3 = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    // Output channels in blocks of 16, transformed into a local [16][16] and written out as one
    // cache line per element (scattered single-value stores were slow), while the block's
    // filter rows are read in order.
    const BLOCK: usize = 16;
    let mut block = [[0f32; BLOCK]; ELEMS];
    let channels = u.len() / (ELEMS * cout);
    for c0 in (0..cout).step_by(BLOCK) {
        let n = BLOCK.min(cout - c0);
        for (ci, rows) in (ci0..ci0 + channels).zip(u.chunks_mut(ELEMS * cout)) {
            debug_assert!(ci < cin);
            for k in 0..n {
                let g = &w[((c0 + k) * cin + ci) * 9..][..9];
                let cols = [g3(g[0], g[3], g[6]), g3(g[1], g[4], g[7]), g3(g[2], g[5], g[8])]; // G g, by column
                for i in 0..4 {
                    for (j, v) in g3(cols[0][i], cols[1][i], cols[2][i]).into_iter().enumerate() {
                        block[i * 4 + j][k] = v;
                    }
                }
            }
            for (b, row) in block.iter().zip(rows.chunks_mut(cout)) {
                // A constant length for whole blocks: one vector store, where a copy of n
                // floats was a call to memmove.
                if n == BLOCK {
                    row[c0..c0 + BLOCK].copy_from_slice(b);
                } else {
                    row[c0..c0 + n].copy_from_slice(&b[..n]);
                }
            }
        }
    }
}

/// One input plane `[h, w]` into a zero-padded plane (rows `2·half` long, the top padding
/// `pt` rows, the left `pl` columns) in the split layout the input transform reads: each row's
/// even padded columns first, then its odd ones. Tile tx then reads padded columns 2tx..2tx+4 as
/// `even[tx], odd[tx], even[tx+1], odd[tx+1]`: contiguous runs that vectorise, where the plain
/// layout needed stride-2 reads.
pub(super) fn split_plane(src: &[f32], w: usize, (pt, pl): (usize, usize), half: usize, dst: &mut [f32]) {
    widest!(|src: &[f32], w: usize, pt: usize, pl: usize, half: usize, dst: &mut [f32]| {
        for (row, to) in src.chunks(w).zip(dst[pt * 2 * half..].chunks_mut(2 * half)) {
            for parity in 0..2 {
                // The first input column whose padded column has this parity.
                let x0 = (parity + 2 - pl % 2) % 2;
                if x0 < w {
                    let to = &mut to[parity * half + (x0 + pl) / 2..half * (parity + 1)];
                    to.iter_mut().zip(row[x0..].iter().step_by(2)).for_each(|(d, s)| *d = *s);
                }
            }
        }
    })
}

/// Tile columns per tile row in the transformed layouts: `tw + 1`, one more than there are
/// tiles. The extra (junk) column lets each transform run as a few long loops over the whole
/// plane instead of many loops as short as a row of tiles; the gemms carry the junk columns
/// along (1/tw more work) and the output transform skips them.
pub(super) fn row_pitch(tw: usize) -> usize {
    tw + 1
}

/// Scratch floats `input_plane` needs.
pub(super) fn input_scratch(th: usize, tw: usize) -> usize {
    8 * (th * row_pitch(tw) + 1)
}

/// `V = Bᵀ d B` for every tile of one zero-padded input plane of `2·th + 2` rows, each `2·half`
/// long in the `split_plane` layout (`half = row_pitch(tw)`): tile (ty, tx) reads rows
/// `2ty..2ty+4`, columns `2tx..2tx+4`, and its element e goes to `v[e·e_stride + ty·half + tx]`
/// (`tx = tw`: junk). `t` is scratch of `input_scratch` floats.
pub(super) fn input_plane(xp: &[f32], th: usize, tw: usize, v: &mut [f32], e_stride: usize, t: &mut [f32]) {
    widest!(|xp: &[f32], th: usize, tw: usize, v: &mut [f32], e_stride: usize, t: &mut [f32]| input_loops(xp, th, tw, v, e_stride, t))
}

#[inline(always)]
fn input_loops(xp: &[f32], th: usize, tw: usize, v: &mut [f32], e_stride: usize, t: &mut [f32]) {
    let half = row_pitch(tw);
    let (wp, len) = (2 * half, th * half);
    let halves = &mut t[..8 * (len + 1)];
    // Bᵀ d down the columns, a tile row at a time, on the even and the odd half of the rows:
    // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]. Result row k's halves
    // go to whole-plane arrays `halves[2k + parity]`, each `len + 1` long.
    for ty in 0..th {
        for parity in 0..2 {
            let r = |k: usize| &xp[(2 * ty + k) * wp + parity * half..][..half];
            let at = |k: usize| (2 * k + parity) * (len + 1) + ty * half;
            let [t0, t1, t2, t3] = four_mut(halves, [at(0), at(1), at(2), at(3)], half);
            let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
            for i in 0..half {
                t0[i] = r0[i] - r2[i];
                t1[i] = r1[i] + r2[i];
                t2[i] = r2[i] - r1[i];
                t3[i] = r1[i] - r3[i];
            }
        }
    }
    // ... then B along the rows, over the whole plane at once: tile column tx reads
    // even[tx], odd[tx], even[tx+1], odd[tx+1].
    for k in 0..4 {
        let even = &halves[2 * k * (len + 1)..][..len + 1];
        let odd = &halves[(2 * k + 1) * (len + 1)..][..len + 1];
        let (a, b, c, d) = (&even[..len], &odd[..len], &even[1..], &odd[1..]);
        let [v0, v1, v2, v3] = four_mut(v, [k * 4, k * 4 + 1, k * 4 + 2, k * 4 + 3].map(|e| e * e_stride), len);
        for i in 0..len {
            v0[i] = a[i] - c[i];
            v1[i] = b[i] + c[i];
            v2[i] = c[i] - b[i];
            v3[i] = b[i] - d[i];
        }
    }
}

/// Four disjoint `len`-long windows of `v` at increasing offsets.
fn four_mut(v: &mut [f32], at: [usize; 4], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = v[at[0]..].split_at_mut(at[1] - at[0]);
    let (b, rest) = rest.split_at_mut(at[2] - at[1]);
    let (c, d) = rest.split_at_mut(at[3] - at[2]);
    [&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]]
}

/// Scratch floats `output_plane` needs.
pub(super) fn output_scratch(th: usize, tw: usize) -> usize {
    12 * th * row_pitch(tw)
}

/// `Y = Aᵀ M A` for every tile of one output channel: `m[e·e_stride + ty·half + tx]` holds
/// tile (ty, tx)'s element e (`half = row_pitch(tw)`); the 2x2 results, times `scale` plus
/// `shift`, go to `y` `[oh, ow]`, cut at its edges. `s` is scratch of `output_scratch` floats.
#[allow(clippy::too_many_arguments)]
pub(super) fn output_plane(m: &[f32], e_stride: usize, th: usize, tw: usize, y: &mut [f32], oh: usize, ow: usize, (scale, shift): (f32, f32), s: &mut [f32]) {
    widest!(|m: &[f32], e_stride: usize, th: usize, tw: usize, y: &mut [f32], oh: usize, ow: usize, scale: f32, shift: f32, s: &mut [f32]| output_loops(m, e_stride, th, tw, y, oh, ow, scale, shift, s))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_loops(m: &[f32], e_stride: usize, th: usize, tw: usize, y: &mut [f32], oh: usize, ow: usize, scale: f32, shift: f32, s: &mut [f32]) {
    let len = th * row_pitch(tw);
    let (cols, rows) = s[..12 * len].split_at_mut(8 * len);
    // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] down the columns, over the whole plane ...
    for c in 0..4 {
        let e = |i: usize| &m[(i * 4 + c) * e_stride..][..len];
        let (m0, m1, m2, m3) = (e(0), e(1), e(2), e(3));
        let (r0, r1) = cols[2 * c * len..][..2 * len].split_at_mut(len);
        for i in 0..len {
            r0[i] = m0[i] + m1[i] + m2[i];
            r1[i] = m1[i] - m2[i] - m3[i];
        }
    }
    // ... then A along the rows: each output row's even columns and odd columns ...
    for dy in 0..2 {
        let col = |c: usize| &cols[(2 * c + dy) * len..][..len];
        let (a, b, c, d) = (col(0), col(1), col(2), col(3));
        let (even, odd) = rows[2 * dy * len..][..2 * len].split_at_mut(len);
        for i in 0..len {
            even[i] = a[i] + b[i] + c[i];
            odd[i] = b[i] - c[i] - d[i];
        }
    }
    // ... interleaved into the image, the junk column and the cut edges left out.
    let half = row_pitch(tw);
    for (oy, row) in y[..oh * ow].chunks_mut(ow).enumerate() {
        let at = (oy % 2) * 2 * len + (oy / 2) * half;
        let (even, odd) = (&rows[at..][..tw], &rows[at + len..][..tw]);
        for (o, (e, d)) in row.chunks_mut(2).zip(even.iter().zip(odd)) {
            o[0] = e * scale + shift;
            if let Some(o1) = o.get_mut(1) {
                *o1 = d * scale + shift;
            }
        }
    }
}

/// Scratch floats `gradient_plane` needs.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn gradient_scratch(th: usize, tw: usize) -> usize {
    4 * th * row_pitch(tw)
}

/// The weight gradient's side of the output transform: `A dY Aᵀ` for every 2x2 block dY of one
/// output-gradient plane `gy` `[oh, ow]` (zero past its edges), tile (ty, tx)'s element e to
/// `dm[e·e_stride + ty·half + tx]`, zero in the junk column. Since `Y = Aᵀ M A`, this is the
/// gradient of M; the weights' is then `Gᵀ (Σ_tiles dM ⊙ V) G` (`weight_gradients`). `t` is
/// scratch of `gradient_scratch` floats.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
pub(super) fn gradient_plane(gy: &[f32], oh: usize, ow: usize, th: usize, tw: usize, dm: &mut [f32], e_stride: usize, t: &mut [f32]) {
    widest!(|gy: &[f32], oh: usize, ow: usize, th: usize, tw: usize, dm: &mut [f32], e_stride: usize, t: &mut [f32]| {
        let (half, len) = (row_pitch(tw), th * row_pitch(tw));
        // The blocks' four corners as whole-plane arrays: `t[2dy + dx][ty·half + tx]` =
        // gy[2ty + dy][2tx + dx], so every loop below runs over the whole plane at once.
        let t = &mut t[..4 * len];
        t.fill(0.0);
        for (oy, row) in gy[..oh * ow].chunks(ow).enumerate() {
            for (dx, corner) in t[(oy % 2) * 2 * len..][..2 * len].chunks_mut(len).enumerate() {
                let to = &mut corner[(oy / 2) * half..][..tw];
                to.iter_mut().zip(row[dx..].iter().step_by(2)).for_each(|(d, s)| *d = *s);
            }
        }
        let (e0, o0, e1, o1) = (&t[..len], &t[len..2 * len], &t[2 * len..3 * len], &t[3 * len..]);
        // A = [[1, 0], [1, 1], [1, -1], [0, -1]]: down the columns row r of A dY is (even,
        // odd) = (r0, r0 + r1, r0 - r1, -r1) of the block's rows, then the same along the row.
        let at = |r: usize| [0, 1, 2, 3].map(|c| (r * 4 + c) * e_stride);
        gradient_row(four_mut(dm, at(0), len), |i| (e0[i], o0[i]));
        gradient_row(four_mut(dm, at(1), len), |i| (e0[i] + e1[i], o0[i] + o1[i]));
        gradient_row(four_mut(dm, at(2), len), |i| (e0[i] - e1[i], o0[i] - o1[i]));
        gradient_row(four_mut(dm, at(3), len), |i| (-e1[i], -o1[i]));
    })
}

/// Row r of `A dY Aᵀ` from row r of `A dY` (`f(i)`: its even and odd column at tile i).
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn gradient_row([d0, d1, d2, d3]: [&mut [f32]; 4], f: impl Fn(usize) -> (f32, f32)) {
    for i in 0..d0.len() {
        let (even, odd) = f(i);
        d0[i] = even;
        d1[i] = even + odd;
        d2[i] = even - odd;
        d3[i] = -odd;
    }
}

/// `Gᵀ dU G` for every (co, ci) of `du` `[16][cout][cin]` (the 4x4 gradients of the
/// transformed filters): the weight gradient `[cout, cin, 3, 3]`.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn weight_gradients(du: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    // Gᵀ = [[1, ½, ½, 0], [0, ½, -½, 0], [0, ½, ½, 1]] applied to four values.
    let gt = |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
    let pairs = cout * cin;
    let mut dw = vec![0f32; pairs * 9];
    for (p, out) in dw.chunks_mut(9).enumerate() {
        let e = |i: usize, j: usize| du[(i * 4 + j) * pairs + p];
        let rows = [0, 1, 2, 3].map(|i| gt(e(i, 0), e(i, 1), e(i, 2), e(i, 3))); // dU G, by row
        for j in 0..3 {
            for (i, v) in gt(rows[0][j], rows[1][j], rows[2][j], rows[3][j]).into_iter().enumerate() {
                out[i * 3 + j] = v;
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls `f(output index, tap, input index)` for every tap of a 3x3 correlation of one
    /// `[h, w]` plane padded by 1 that lands inside the plane.
    fn each_tap(h: usize, w: usize, mut f: impl FnMut(usize, usize, usize)) {
        for oy in 0..h {
            for ox in 0..w {
                for tap in 0..9 {
                    let (iy, ix) = ((oy + tap / 3).wrapping_sub(1), (ox + tap % 3).wrapping_sub(1));
                    if iy < h && ix < w {
                        f(oy * w + ox, tap, iy * w + ix);
                    }
                }
            }
        }
    }

    /// Direct correlation of one channel, `[h, w]` padded by 1 -> `[h, w]`.
    fn direct(x: &[f32], h: usize, w: usize, g: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; h * w];
        each_tap(h, w, |o, tap, i| y[o] += x[i] * g[tap]);
        y
    }

    /// The weight gradient of `direct` for the output gradient `gy`: `Σ gy[o] · x[o + tap - 1]`.
    fn direct_weight_gradient(x: &[f32], gy: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut dg = vec![0f32; 9];
        each_tap(h, w, |o, tap, i| dg[tap] += gy[o] * x[i]);
        dg
    }

    /// One channel `[h, w]` padded by 1 through the input transform: its tile rows and columns,
    /// tiles per element, and V `[16][tiles]`.
    fn transformed_input(x: &[f32], h: usize, w: usize) -> (usize, usize, usize, Vec<f32>) {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let half = row_pitch(tw);
        let mut xp = vec![0f32; (2 * th + 2) * 2 * half];
        split_plane(x, w, (1, 1), half, &mut xp);
        let tiles = th * half;
        let mut v = vec![0f32; ELEMS * tiles];
        input_plane(&xp, th, tw, &mut v, tiles, &mut vec![0f32; input_scratch(th, tw)]);
        (th, tw, tiles, v)
    }

    #[test]
    fn one_channel_weight_gradient_matches_direct_on_odd_and_even_sides() {
        for (h, w) in [(7usize, 7usize), (6, 9), (1, 1), (2, 5), (5, 2)] {
            let x: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0).collect();
            let gy: Vec<f32> = (0..h * w).map(|i| ((i * 11 % 13) as f32 - 6.0) / 3.0).collect();
            let (th, tw, tiles, v) = transformed_input(&x, h, w);
            let mut dm = vec![f32::NAN; ELEMS * tiles];
            gradient_plane(&gy, h, w, th, tw, &mut dm, tiles, &mut vec![f32::NAN; gradient_scratch(th, tw)]);
            let du: Vec<f32> = (0..ELEMS).map(|e| (0..tiles).map(|t| dm[e * tiles + t] * v[e * tiles + t]).sum()).collect();
            for (a, b) in weight_gradients(&du, 1, 1).iter().zip(direct_weight_gradient(&x, &gy, h, w)) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{h}x{w}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn one_channel_matches_direct_correlation_on_odd_and_even_sides() {
        for (h, w) in [(7usize, 7usize), (6, 9), (1, 1), (2, 5)] {
            let x: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 17) as f32 - 8.0) / 5.0).collect();
            let g: Vec<f32> = (0..9).map(|i| ((i * 5 % 7) as f32 - 3.0) / 4.0).collect();
            let (th, tw, tiles, v) = transformed_input(&x, h, w);
            let mut u = vec![0f32; ELEMS];
            weights_into(&g, 1, 1, 0, &mut u);
            let m: Vec<f32> = (0..ELEMS * tiles).map(|i| v[i] * u[i / tiles]).collect();
            let mut y = vec![f32::NAN; h * w];
            output_plane(&m, tiles, th, tw, &mut y, h, w, (1.0, 0.0), &mut vec![0f32; output_scratch(th, tw)]);
            for (a, b) in y.iter().zip(direct(&x, h, w, &g)) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{h}x{w}: {a} vs {b}");
            }
        }
    }
}
