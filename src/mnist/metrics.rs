//! Sample-quality figures: FID between two sets of feature vectors (Heusel et al. 2017):
//! `|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`, in f64 with a Jacobi eigensolver
//! (the feature width is 128, so no LAPACK is needed). And the background grain of a set of
//! digits: the share of its dark pixels that are not quite black.

/// Mean and covariance (divided by n - 1) of `n` rows of width `d`.
pub fn mean_cov(rows: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len() / d;
    assert!(n >= 2, "need at least two feature vectors");
    let mut mu = vec![0f64; d];
    for r in rows.chunks_exact(d) {
        for (m, &v) in mu.iter_mut().zip(r) {
            *m += v as f64;
        }
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![0f64; d * d];
    let mut c = vec![0f64; d];
    for r in rows.chunks_exact(d) {
        for k in 0..d {
            c[k] = r[k] as f64 - mu[k];
        }
        for i in 0..d {
            let ci = c[i];
            for j in i..d {
                cov[i * d + j] += ci * c[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n - 1) as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mu, cov)
}

/// Eigenvalues and eigenvectors (columns of `v`, row-major) of a symmetric matrix, by cyclic
/// Jacobi rotations.
pub fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d).flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * d + j].powi(2)).sum();
        let diag: f64 = (0..d).map(|i| a[i * d + i].powi(2)).sum();
        if off <= 1e-24 * diag.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let akp = a[k * d + p];
                    let akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let apk = a[p * d + k];
                    let aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let vkp = v[k * d + p];
                    let vkq = v[k * d + q];
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0f64; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// Fréchet distance between two Gaussians.
pub fn frechet_distance(mu1: &[f64], s1: &[f64], mu2: &[f64], s2: &[f64], d: usize) -> f64 {
    let (l, v) = sym_eigen(s1, d);
    // S1^1/2 = V diag(sqrt(l)) V^T (negative round-off eigenvalues clamped).
    let mut vs = v.clone();
    for i in 0..d {
        for j in 0..d {
            vs[i * d + j] *= l[j].max(0.0).sqrt();
        }
    }
    let mut vt = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            vt[i * d + j] = v[j * d + i];
        }
    }
    let s1h = matmul(&vs, &vt, d);
    let m = matmul(&matmul(&s1h, s2, d), &s1h, d);
    let mut m_sym = m.clone();
    for i in 0..d {
        for j in 0..d {
            m_sym[i * d + j] = 0.5 * (m[i * d + j] + m[j * d + i]);
        }
    }
    let (lm, _) = sym_eigen(&m_sym, d);
    let tr_sqrt: f64 = lm.iter().map(|&x| x.max(0.0).sqrt()).sum();
    let diff: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let tr1: f64 = (0..d).map(|i| s1[i * d + i]).sum();
    let tr2: f64 = (0..d).map(|i| s2[i * d + i]).sum();
    diff + tr1 + tr2 - 2.0 * tr_sqrt
}

/// FID between two sets of feature rows of width `d`.
pub fn fid(a: &[f32], b: &[f32], d: usize) -> f64 {
    let (m1, s1) = mean_cov(a, d);
    let (m2, s2) = mean_cov(b, d);
    frechet_distance(&m1, &s1, &m2, &s2, d)
}

/// Pixel values (of [0, 1] images) from which a pixel counts as faint grey, and below which as
/// background at all: real MNIST digits are black around the stroke with a thin anti-aliased
/// rim, so few of their dark pixels are grey; a sampler that leaves noise behind greys many.
pub const GRAIN_FROM: f32 = 0.05;
pub const GRAIN_BELOW: f32 = 0.5;

/// The share of background pixels (value below [`GRAIN_BELOW`]) that are faint grey (at least
/// [`GRAIN_FROM`]): 0 for clean black backgrounds.
pub fn background_grain(pixels: &[f32]) -> f64 {
    let (mut dark, mut grey) = (0usize, 0usize);
    for &v in pixels {
        let v = v.clamp(0.0, 1.0);
        if v < GRAIN_BELOW {
            dark += 1;
            if v >= GRAIN_FROM {
                grey += 1;
            }
        }
    }
    if dark == 0 { 0.0 } else { grey as f64 / dark as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn eigen_reconstructs() {
        let d = 6;
        let mut r = Rng::new(5);
        let b: Vec<f64> = (0..d * d).map(|_| r.normal() as f64).collect();
        let mut a = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] = (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum();
            }
        }
        let (l, v) = sym_eigen(&a, d);
        for i in 0..d {
            for j in 0..d {
                let rec: f64 = (0..d).map(|k| v[i * d + k] * l[k] * v[j * d + k]).sum();
                assert!((rec - a[i * d + j]).abs() < 1e-9, "{rec} vs {}", a[i * d + j]);
            }
        }
    }

    #[test]
    fn fid_of_gaussians_matches_closed_form() {
        // Isotropic Gaussians N(0, I) and N(m, 4I) in d dims: FID = |m|^2 + d (1 + 4 - 2*2) = |m|^2 + d.
        let d = 4;
        let n = 40_000;
        let mut r = Rng::new(9);
        let a: Vec<f32> = (0..n * d).map(|_| r.normal()).collect();
        let b: Vec<f32> = (0..n * d).map(|i| 2.0 * r.normal() + if i % d == 0 { 3.0 } else { 0.0 }).collect();
        let f = fid(&a, &b, d);
        assert!((f - (9.0 + d as f64)).abs() < 0.3, "fid {f}");
        assert!(fid(&a, &a, d).abs() < 1e-6);
    }
}
