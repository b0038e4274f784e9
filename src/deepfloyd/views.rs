//! Visual-anagram views (Geng et al., "Visual Anagrams"): each is applied to the noisy image
//! before the model sees it, and its inverse to the model's 6-channel output (eps and v), as the
//! research code does. All but `Negate` permute pixels, which keeps the noise Gaussian.

use burn::prelude::*;
use burn::tensor::Int;

use crate::image_ops::gaussian_blur;
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum View {
    Identity,
    /// Upside down (the course's flip: rows reversed).
    Flip,
    RotateCw,
    RotateCcw,
    Rotate180,
    /// x -> -x; the inverse negates eps only (negating the variance estimate makes no sense;
    /// the research code does the same).
    Negate,
    /// Column `i` rolled down by `trunc(factor * (i - W/2))` pixels (research default 1.5).
    Skew(f32),
    /// `n x n` square patches shuffled by a seeded permutation (`n = side`: single pixels).
    PatchPermute { patches: usize, seed: u64 },
    /// 4x4 square jigsaw: each piece moves to another slot of its kind (corner, edge, inner)
    /// and turns by a multiple of 90 degrees so the border stays a border. The research code's
    /// tabbed piece shapes come from image files not reproduced here; squares keep the property
    /// that matters, a pixel permutation that reads as a rearranged picture.
    Jigsaw { seed: u64 },
    /// The disc of radius 3/8 of the side around the centre turned by 180 degrees, the border
    /// left in place (the research code's `inner_circle`: radius 24 at 64x64).
    InnerCircle,
    /// The image as a 3x3 grid of squares, each turned by 90 degrees, alternately clockwise (the
    /// corners and the centre) and counter-clockwise (the research code's `square_hinge`; the
    /// last `side % 3` rows and columns stay in place).
    SquareHinge,
    /// An explicit pixel permutation: `perm[dst] = src` over `H * W` (tests, custom views).
    Permutation(Vec<usize>),
    /// Factorized diffusion's components: each prompt sees the image itself, and the inverse
    /// keeps one part of the noise estimate; the parts of one factorization add up to the whole,
    /// so the sampler sums them (the research code's `reduction = "sum"`). Gaussian low / high
    /// pass of sigma (at 64x64; research default 2) with 33 taps.
    LowPass(f32),
    HighPass(f32),
    /// Three bands split by Gaussians of sigma 1, then 2 (25 taps): low, medium, high.
    TripleLowPass,
    TripleMediumPass,
    TripleHighPass,
    /// The channels' mean, and what is left of the colour.
    Grayscale,
    Color,
    /// A diagonal motion blur of this many taps (at 64x64; research default 7), and what is
    /// left after it.
    Motion(usize),
    MotionResidual(usize),
    /// The estimate times this factor (research default 0.5: two of them make the whole).
    Scale(f32),
}

/// Every view's name as [`View::parse`] reads it (the page's menu): the rearrangements, then the
/// factorization components.
pub const NAMES: [&str; 22] = [
    "identity", "flip", "rotate_cw", "rotate_ccw", "rotate_180", "negate", "skew", "patch_permute", "pixel_permute", "jigsaw", "inner_circle", "square_hinge",
    "low_pass", "high_pass", "triple_low_pass", "triple_medium_pass", "triple_high_pass", "grayscale", "color", "motion", "motion_res", "scale",
];

impl View {
    pub fn parse(s: &str) -> Result<View> {
        let (name, arg) = s.split_once(':').map(|(a, b)| (a, Some(b))).unwrap_or((s, None));
        let num = |d: f64| -> Result<f64> { arg.map(|a| a.parse::<f64>().map_err(|_| Error::Invalid(format!("view {s}: {a:?} is not a number")))).unwrap_or(Ok(d)) };
        Ok(match name {
            "identity" => View::Identity,
            "flip" => View::Flip,
            "rotate_cw" | "rot90cw" => View::RotateCw,
            "rotate_ccw" | "rot90" => View::RotateCcw,
            "rotate_180" | "rot180" => View::Rotate180,
            "negate" => View::Negate,
            "skew" => View::Skew(num(1.5)? as f32),
            "patch_permute" => View::PatchPermute { patches: num(8.0)? as usize, seed: 0 },
            "pixel_permute" => View::PatchPermute { patches: 64, seed: 0 },
            "jigsaw" => View::Jigsaw { seed: num(11.0)? as u64 },
            "inner_circle" => View::InnerCircle,
            "square_hinge" => View::SquareHinge,
            "low_pass" | "high_pass" => {
                let sigma = num(2.0)? as f32;
                if !(sigma.is_finite() && sigma > 0.0) {
                    return Err(Error::Invalid(format!("view {s}: the blur's sigma must be a positive number")));
                }
                if name == "low_pass" { View::LowPass(sigma) } else { View::HighPass(sigma) }
            }
            "triple_low_pass" => View::TripleLowPass,
            "triple_medium_pass" => View::TripleMediumPass,
            "triple_high_pass" => View::TripleHighPass,
            "grayscale" => View::Grayscale,
            "color" => View::Color,
            "motion" | "motion_res" => {
                let taps = num(7.0)?;
                if !(taps >= 1.0 && taps <= 63.0 && taps.fract() == 0.0) {
                    return Err(Error::Invalid(format!("view {s}: the blur's length must be a whole number 1..=63")));
                }
                if name == "motion" { View::Motion(taps as usize) } else { View::MotionResidual(taps as usize) }
            }
            "scale" => {
                let f = num(0.5)? as f32;
                if !f.is_finite() {
                    return Err(Error::Invalid(format!("view {s}: the scale must be a finite number")));
                }
                View::Scale(f)
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unknown view {other:?}: use identity, flip, rotate_cw, rotate_ccw, rotate_180, negate, skew[:f], patch_permute[:n], pixel_permute, jigsaw[:seed], inner_circle, square_hinge, or the components low_pass[:sigma], high_pass[:sigma], triple_low_pass, triple_medium_pass, triple_high_pass, grayscale, color, motion[:n], motion_res[:n], scale[:f]"
                )))
            }
        })
    }

    /// The pixel permutation of this view on an `h x w` image (`perm[dst] = src`), or None for
    /// `Identity` and `Negate`.
    pub fn permutation(&self, h: usize, w: usize) -> Result<Option<Vec<usize>>> {
        let square = |what: &str| if h == w { Ok(()) } else { Err(Error::Invalid(format!("the {what} view needs a square image, got {h}x{w}"))) };
        let idx = |r: usize, c: usize| r * w + c;
        let mut p = vec![0usize; h * w];
        if self.is_component() {
            return Ok(None);
        }
        match self {
            View::Identity | View::Negate => return Ok(None),
            View::Flip => (0..h).for_each(|r| (0..w).for_each(|c| p[idx(r, c)] = idx(h - 1 - r, c))),
            // torch.rot90 / TF.rotate(+90) turn counter-clockwise: dst (r, c) <- src (c, n-1-r).
            View::RotateCcw => {
                square("rotate")?;
                (0..h).for_each(|r| (0..w).for_each(|c| p[idx(r, c)] = idx(c, w - 1 - r)))
            }
            View::RotateCw => {
                square("rotate")?;
                (0..h).for_each(|r| (0..w).for_each(|c| p[idx(r, c)] = idx(h - 1 - c, r)))
            }
            View::Rotate180 => (0..h).for_each(|r| (0..w).for_each(|c| p[idx(r, c)] = idx(h - 1 - r, w - 1 - c))),
            View::Skew(f) => {
                for c in 0..w {
                    let d = (f * (c as f32 - (h / 2) as f32)).trunc() as isize;
                    for r in 0..h {
                        // roll(d): dst r <- src r - d (mod h)
                        let src = (r as isize - d).rem_euclid(h as isize) as usize;
                        p[idx(r, c)] = idx(src, c);
                    }
                }
            }
            View::PatchPermute { patches, seed } => {
                let n = *patches;
                if n == 0 || h % n != 0 || w % n != 0 {
                    return Err(Error::Invalid(format!("patch_permute:{n} needs the image sides ({h}x{w}) to be multiples of {n}")));
                }
                let order = Rng::new(*seed).permutation(n * n); // new patch k <- old patch order[k]
                let (ph, pw) = (h / n, w / n);
                for k in 0..n * n {
                    let (dr, dc) = (k / n * ph, k % n * pw);
                    let (sr, sc) = (order[k] / n * ph, order[k] % n * pw);
                    (0..ph).for_each(|i| (0..pw).for_each(|j| p[idx(dr + i, dc + j)] = idx(sr + i, sc + j)));
                }
            }
            View::Jigsaw { seed } => {
                square("jigsaw")?;
                if h % 4 != 0 {
                    return Err(Error::Invalid(format!("the jigsaw view needs a side divisible by 4, got {h}")));
                }
                return Ok(Some(jigsaw(h, *seed)));
            }
            View::InnerCircle => {
                square("inner_circle")?;
                if h % 2 != 0 {
                    return Err(Error::Invalid(format!("the inner_circle view needs an even side (its half turn is about a pixel corner), got {h}")));
                }
                let (n, half) = (h as f64, (h / 2) as f64);
                let r = 3.0 * n / 8.0;
                for iy in 0..h {
                    for ix in 0..w {
                        // Pixel centres about the image centre; inside the disc, the point reflected
                        // through it (as the research code computes it, with its half-pixel offset).
                        let (x, y) = (ix as f64 - half + 0.5, iy as f64 - half + 0.5);
                        let (x, y) = if x * x + y * y < r * r { (-x, -y) } else { (x, y) };
                        let (sx, sy) = ((x + half - 0.5) as usize, (y + half - 0.5) as usize);
                        p[idx(iy, ix)] = idx(sy.min(h - 1), sx.min(w - 1));
                    }
                }
            }
            View::SquareHinge => {
                square("square_hinge")?;
                for (r, c) in (0..h).flat_map(|r| (0..w).map(move |c| (r, c))) {
                    p[idx(r, c)] = idx(r, c);
                }
                let s = h / 3;
                for bi in 0..3 {
                    for bj in 0..3 {
                        let (r0, c0) = (bi * s, bj * s);
                        for a in 0..s {
                            for b in 0..s {
                                // torch.rot90 of the block: k = -1 (clockwise) where bi + bj is
                                // even, out[a][b] = in[s-1-b][a]; k = 1 otherwise, in[b][s-1-a].
                                let (sa, sb) = if (bi + bj) % 2 == 0 { (s - 1 - b, a) } else { (b, s - 1 - a) };
                                p[idx(r0 + a, c0 + b)] = idx(r0 + sa, c0 + sb);
                            }
                        }
                    }
                }
            }
            View::Permutation(perm) => {
                let mut seen = vec![false; h * w];
                if perm.len() != h * w || perm.iter().any(|&s| s >= h * w || std::mem::replace(&mut seen[s], true)) {
                    return Err(Error::Invalid(format!("the permutation view has {} entries but is not a permutation of the {h}x{w} pixels", perm.len())));
                }
                return Ok(Some(perm.clone()));
            }
            _ => unreachable!("components return above"),
        }
        Ok(Some(p))
    }

    /// Whether this is a factorized-diffusion component (summed by the sampler) rather than a
    /// rearrangement of the image (averaged).
    pub fn is_component(&self) -> bool {
        matches!(
            self,
            View::LowPass(_) | View::HighPass(_) | View::TripleLowPass | View::TripleMediumPass | View::TripleHighPass | View::Grayscale | View::Color | View::Motion(_) | View::MotionResidual(_) | View::Scale(_)
        )
    }

    /// This component's part of `e`; the whole for a view that is not a component.
    ///
    /// # Shapes
    /// `[B, C, H, W] -> [B, C, H, W]`
    fn component(&self, e: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = e.dims();
        // The research code scales the blur with the side (factor h / 64: 33 taps at 64x64, 129 at
        // 256); below 64 the kernel shrinks to the widest the reflect padding allows.
        let blur = |x: Tensor<4>, taps: usize, sigma: f32| {
            let factor = (h / 64).max(1);
            let k = (taps * factor + (factor + 1) % 2).min(2 * h - 1);
            gaussian_blur(x, k, sigma * factor as f32)
        };
        let bands = |e: Tensor<4>| {
            let mp = blur(e.clone(), 25, 1.0);
            let hp = e - mp.clone();
            let lp = blur(mp.clone(), 25, 2.0);
            (lp.clone(), mp - lp, hp)
        };
        let grey = |e: Tensor<4>| e.mean_dim(1).expand([b, c, h, w]);
        match self {
            View::LowPass(s) => blur(e, 33, *s),
            View::HighPass(s) => e.clone() - blur(e, 33, *s),
            View::TripleLowPass => bands(e).0,
            View::TripleMediumPass => bands(e).1,
            View::TripleHighPass => bands(e).2,
            View::Grayscale => grey(e),
            View::Color => e.clone() - grey(e),
            View::Motion(n) => motion_blur(e, *n),
            View::MotionResidual(n) => e.clone() - motion_blur(e, *n),
            View::Scale(f) => e * *f,
            _ => e,
        }
    }

    /// The view applied to a batch of images (any channel count).
    ///
    /// # Shapes
    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn apply(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let [_, _, h, w] = x.dims();
        match self {
            View::Negate => Ok(x.neg()),
            _ if self.is_component() => Ok(x),
            _ => Ok(match self.permutation(h, w)? {
                Some(p) => gather(x, &p),
                None => x,
            }),
        }
    }

    /// The inverse view applied to model outputs whose first `eps_channels` channels are noise.
    ///
    /// # Shapes
    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn invert(&self, y: Tensor<4>, eps_channels: usize) -> Result<Tensor<4>> {
        let [b, c, h, w] = y.dims();
        match self {
            _ if self.is_component() => {
                let eps = self.component(y.clone().slice([0..b, 0..eps_channels, 0..h, 0..w]));
                Ok(Tensor::cat(vec![eps, y.slice([0..b, eps_channels..c, 0..h, 0..w])], 1))
            }
            View::Negate => {
                let eps = y.clone().slice([0..b, 0..eps_channels, 0..h, 0..w]).neg();
                let rest = y.slice([0..b, eps_channels..c, 0..h, 0..w]);
                Ok(Tensor::cat(vec![eps, rest], 1))
            }
            _ => Ok(match self.permutation(h, w)? {
                Some(p) => {
                    let mut inv = vec![0usize; p.len()];
                    for (dst, &src) in p.iter().enumerate() {
                        inv[src] = dst;
                    }
                    gather(y, &inv)
                }
                None => y,
            }),
        }
    }
}

/// The research code's motion blur: each channel correlated with `eye(taps) / taps` (scaled
/// with the side, odd), zero padding of half its width.
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, H, W]`
fn motion_blur(x: Tensor<4>, taps: usize) -> Tensor<4> {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    let [_, c, h, w] = x.dims();
    let factor = (h / 64).max(1);
    // Odd, and no wider than the image (a wider kernel only adds zeros).
    let k = (taps * factor + (factor + 1) % 2).min(2 * h.min(w) - 1) | 1;
    let mut kernel = vec![0f32; c * k * k];
    for ch in 0..c {
        for i in 0..k {
            kernel[ch * k * k + i * k + i] = 1.0 / k as f32;
        }
    }
    let weight = Tensor::<4>::from_data(TensorData::new(kernel, [c, 1, k, k]), &x.device());
    conv2d(x, weight, None, ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], c))
}

/// `out[.., dst] = x[.., perm[dst]]` over the flattened pixels.
fn gather(x: Tensor<4>, perm: &[usize]) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let idx: Vec<i64> = perm.iter().map(|&i| i as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [h * w]), &x.device());
    x.reshape([b, c, h * w]).select(2, idx).reshape([b, c, h, w])
}

/// The square-piece 4x4 jigsaw permutation on an `n x n` image.
fn jigsaw(n: usize, seed: u64) -> Vec<usize> {
    let s = n / 4;
    let mut rng = Rng::new(seed);
    // Slots by kind; a piece's "base orientation" rotation is the one that puts its outer border
    // where the slot needs it, so moving piece a -> slot b turns it by rot(b) - rot(a).
    let corners = [(0, 0), (0, 3), (3, 3), (3, 0)]; // clockwise: rotation index = position
    let edges = [(0, 1), (0, 2), (1, 3), (2, 3), (3, 2), (3, 1), (2, 0), (1, 0)]; // clockwise, 2 per side
    let inner = [(1, 1), (1, 2), (2, 2), (2, 1)];
    let mut moves: Vec<((usize, usize), (usize, usize), usize)> = Vec::new(); // (src slot, dst slot, quarter turns cw)
    let pc = rng.permutation(4);
    for (i, &j) in pc.iter().enumerate() {
        moves.push((corners[j], corners[i], (i + 4 - j) % 4));
    }
    let pe = rng.permutation(8);
    for (i, &j) in pe.iter().enumerate() {
        moves.push((edges[j], edges[i], (i / 2 + 4 - j / 2) % 4));
    }
    let pi = rng.permutation(4);
    for (i, &j) in pi.iter().enumerate() {
        moves.push((inner[j], inner[i], (i + 4 - j) % 4));
    }
    let mut p = vec![0usize; n * n];
    for ((sr, sc), (dr, dc), q) in moves {
        for i in 0..s {
            for j in 0..s {
                // dst pixel (i, j) inside the piece comes from the source piece turned q times cw:
                // turning cw maps (a, b) -> (b, s-1-a), so the source of (i, j) is the inverse.
                let (mut a, mut b) = (i, j);
                for _ in 0..q {
                    (a, b) = (s - 1 - b, a);
                }
                p[(dr * s + i) * n + dc * s + j] = (sr * s + a) * n + sc * s + b;
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_perm(p: &[usize]) -> bool {
        let mut s = p.to_vec();
        s.sort();
        s.iter().enumerate().all(|(i, &v)| i == v)
    }

    #[test]
    fn every_view_is_a_permutation_and_inverts() {
        let device = Device::flex();
        let x = Tensor::<4>::random([1, 6, 16, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        for v in ["flip", "rotate_cw", "rotate_ccw", "rotate_180", "skew", "patch_permute:4", "pixel_permute", "jigsaw", "inner_circle", "square_hinge"] {
            let mut view = View::parse(v).unwrap();
            if let View::PatchPermute { patches: 64, .. } = view {
                view = View::PatchPermute { patches: 16, seed: 3 };
            }
            let p = view.permutation(16, 16).unwrap().unwrap();
            assert!(is_perm(&p), "{v}");
            assert!(p.iter().enumerate().any(|(i, &s)| i != s), "{v} moves nothing");
            let back = view.invert(view.apply(x.clone()).unwrap(), 6).unwrap();
            let d: f32 = (back - x.clone()).abs().max().into_scalar();
            assert_eq!(d, 0.0, "{v}");
        }
        // Four quarter turns are the identity; cw and ccw are inverse.
        let cw = View::RotateCw.permutation(8, 8).unwrap().unwrap();
        let ccw = View::RotateCcw.permutation(8, 8).unwrap().unwrap();
        assert!((0..64).all(|i| cw[ccw[i]] == i));
        // Negate keeps v and flips eps.
        let y = View::Negate.invert(x.clone(), 3).unwrap();
        let d: f32 = (y.clone().slice([0..1, 3..6]) - x.clone().slice([0..1, 3..6])).abs().max().into_scalar();
        assert_eq!(d, 0.0);
        let s: f32 = (y.slice([0..1, 0..3]) + x.slice([0..1, 0..3])).abs().max().into_scalar();
        assert_eq!(s, 0.0);
    }

    /// The research code's permutations, worked by hand on small images.
    #[test]
    fn inner_circle_and_square_hinge_match_the_research_code() {
        // 64x64, radius 24: the centre's four pixels swap across it; a corner stays.
        let p = View::InnerCircle.permutation(64, 64).unwrap().unwrap();
        assert_eq!((p[32 * 64 + 32], p[31 * 64 + 31], p[31 * 64 + 32]), (31 * 64 + 31, 32 * 64 + 32, 32 * 64 + 31));
        assert_eq!(p[0], 0);
        // Radius 24 reaches pixel (32, 55) (x = 23.5) but not (32, 56) (x = 24.5).
        assert_eq!((p[32 * 64 + 55], p[32 * 64 + 56]), (31 * 64 + 8, 32 * 64 + 56));
        assert!((0..64 * 64).all(|i| p[p[i]] == i), "a half turn is its own inverse");
        // 6x6: squares of 2; block (0, 0) turns clockwise, block (0, 1) counter-clockwise.
        let h = View::SquareHinge.permutation(6, 6).unwrap().unwrap();
        assert_eq!([h[0], h[1], h[6], h[7]], [6, 0, 7, 1]);
        assert_eq!([h[2], h[3], h[8], h[9]], [3, 9, 2, 8]);
        // 7x7: the last row and column stay.
        let h = View::SquareHinge.permutation(7, 7).unwrap().unwrap();
        assert!((0..7).all(|i| h[6 * 7 + i] == 6 * 7 + i && h[i * 7 + 6] == i * 7 + 6));
    }

    #[test]
    fn the_components_of_a_factorization_add_up_to_the_whole() {
        let device = Device::flex();
        let x = Tensor::<4>::random([1, 6, 16, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let factorizations = [
            vec!["low_pass", "high_pass"],
            vec!["low_pass:3", "high_pass:3"],
            vec!["triple_low_pass", "triple_medium_pass", "triple_high_pass"],
            vec!["grayscale", "color"],
            vec!["motion", "motion_res"],
            vec!["motion:3", "motion_res:3"],
            vec!["scale", "scale"],
            vec!["scale:0.25", "scale:0.75"],
        ];
        for parts in factorizations {
            let views: Vec<View> = parts.iter().map(|v| View::parse(v).unwrap()).collect();
            assert!(views.iter().all(View::is_component));
            assert_eq!(views[0].apply(x.clone()).unwrap().into_data(), x.clone().into_data(), "{parts:?}: every prompt sees the image");
            let sum = views.iter().map(|v| v.invert(x.clone(), 3).unwrap()).reduce(|a, b| a + b).unwrap();
            let eps: f32 = (sum.clone().slice([0..1, 0..3]) - x.clone().slice([0..1, 0..3])).abs().max().into_scalar();
            assert!(eps < 1e-5, "{parts:?}: the parts sum to {eps} away from the estimate");
            // The variance channels are each view's own: summed, n copies.
            let var: f32 = (sum.slice([0..1, 3..6]) - x.clone().slice([0..1, 3..6]) * parts.len() as f32).abs().max().into_scalar();
            assert!(var < 1e-5, "{parts:?}");
        }
        let grey = View::Grayscale.invert(x.clone(), 3).unwrap();
        let spread: f32 = (grey.clone().slice([0..1, 0..1]) - grey.slice([0..1, 2..3])).abs().max().into_scalar();
        assert_eq!(spread, 0.0, "grayscale is the same in every channel");
        assert!(View::parse("low_pass:0").is_err() && View::parse("high_pass:nan").is_err());
        assert!(View::parse("motion:0").is_err() && View::parse("motion:2.5").is_err() && View::parse("scale:inf").is_err());
        // The motion blur averages along the diagonal: a single bright pixel becomes a line.
        let mut dot = vec![0f32; 9 * 9];
        dot[4 * 9 + 4] = 1.0;
        let dot = Tensor::<4>::from_data(TensorData::new(dot, [1, 1, 9, 9]), &device);
        let line: Vec<f32> = motion_blur(dot, 3).into_data().try_to_vec().unwrap();
        for (i, v) in line.iter().enumerate() {
            let want = if [3 * 9 + 3, 4 * 9 + 4, 5 * 9 + 5].contains(&i) { 1.0 / 3.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-6, "pixel {i}: {v}");
        }
    }

    #[test]
    fn jigsaw_keeps_corners_in_corners() {
        let n = 16;
        let p = jigsaw(n, 11);
        let s = n / 4;
        for (r, c) in [(0, 0), (0, 3), (3, 0), (3, 3)] {
            let src = p[(r * s) * n + c * s];
            let (sr, sc) = (src / n / s, src % n / s);
            assert!((sr == 0 || sr == 3) && (sc == 0 || sc == 3), "corner slot ({r},{c}) got piece ({sr},{sc})");
        }
    }

    #[test]
    fn bad_views_are_errors() {
        assert!(View::parse("twirl").is_err());
        assert!(View::RotateCw.permutation(8, 16).is_err());
        assert!(View::PatchPermute { patches: 5, seed: 0 }.permutation(16, 16).is_err());
        assert!(View::Permutation(vec![0, 0, 1, 2]).permutation(2, 2).is_err());
        assert!(View::InnerCircle.permutation(15, 15).is_err());
        assert!(View::SquareHinge.permutation(6, 9).is_err());
    }
}
