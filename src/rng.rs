//! A small, seedable, serialisable random source.
//!
//! Everything random in training and sampling (shuffles, noise, timesteps, class dropout) comes
//! from here rather than from a backend's generator, for three reasons: results are identical on
//! every device for a given seed; a training run resumed mid-epoch continues exactly (each batch
//! derives its own stream from `(seed, epoch, batch)`, so no generator state needs saving); and
//! tests can feed the very noise a PyTorch reference used.

/// SplitMix64 (Steele, Lea, Flood 2014): one u64 of state, good statistical quality, trivially
/// serialised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
    /// A second Gaussian from the last Box-Muller pair, not yet handed out.
    spare: Option<u64>,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed, spare: None }
    }

    /// An independent stream for a tuple of indices, e.g. `(seed, epoch, batch)`.
    pub fn derive(seed: u64, parts: &[u64]) -> Self {
        let mut h = seed ^ 0x6a09_e667_f3bc_c909;
        for &p in parts {
            h = mix(h ^ mix(p.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        }
        Self::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias for n << 2^64 is far below anything measurable here.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal sample (Box-Muller, both values used).
    pub fn normal(&mut self) -> f32 {
        if let Some(bits) = self.spare.take() {
            return f64::from_bits(bits) as f32;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some((r * s).to_bits());
        (r * c) as f32
    }

    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }

    pub fn uniform_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform() as f32).collect()
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
        v
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a = Rng::new(7).normal_vec(100);
        let b = Rng::new(7).normal_vec(100);
        assert_eq!(a, b);
        assert_ne!(a, Rng::new(8).normal_vec(100));
    }

    #[test]
    fn normal_moments() {
        let v = Rng::new(1).normal_vec(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::new(3).permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn derived_streams_differ() {
        let a = Rng::derive(1, &[0, 0]).next_u64();
        let b = Rng::derive(1, &[0, 1]).next_u64();
        let c = Rng::derive(1, &[1, 0]).next_u64();
        assert!(a != b && b != c && a != c);
    }
}
