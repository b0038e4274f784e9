//! The exact GELU, spread over the CPU's threads on burn's Flex backend.
//!
//! burn 0.22's Flex evaluates GELU and its gradient one element at a time on one thread (scalar
//! `erff`), which was a seventh of a training step on the 2-core machine while the other core
//! waited. This computes the same formulas over chunks in parallel, in and out of autodiff, with
//! a branch-free erf and exp (module `approx`) that the compiler vectorises (16 lanes with AVX-512):
//! within 5e-7 of libm's erff (PyTorch's own vectorised erf: 1.5e-7). Other backends and
//! the browser use burn's (but for the GELU fused into `crate::conv`'s convolutions, which the
//! browser's CPU fallback runs too). Set `DP_BURN_GELU=1` to force burn's path (for A/B benchmarks).

use burn::tensor::Tensor;

/// `0.5 x (1 + erf(x / √2))`, elementwise.
///
/// # Shapes
/// any -> the same
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(not(target_arch = "wasm32"))]
    let x = match flex::try_gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    burn::tensor::activation::gelu(x)
}

/// `x = GELU(x)` over a slice, in place, for kernels that apply it as they write their output
/// (the fused convolution of `crate::conv`, on the desktop and in the browser's CPU fallback).
pub(crate) fn gelu_in_place(x: &mut [f32]) {
    approx::gelu_in_place(x)
}

#[cfg(not(target_arch = "wasm32"))]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, Flex, TensorMetadata};
    use burn::tensor::{DType, Tensor, TensorData};
    use rayon::prelude::*;
    use std::sync::LazyLock;

    static FORCE_BURN: LazyLock<bool> = LazyLock::new(|| crate::device::env_flag("DP_BURN_GELU"));

    use super::approx;

    /// Below this many elements one thread is quicker than sharing out the work.
    const CHUNK: usize = 1 << 14;

    /// GELU of `x`, or with `g` the gradient `g · GELU'(x)`, chunks spread over the threads.
    fn map(x: &FlexTensor, g: Option<&FlexTensor>) -> FlexTensor {
        let xs = x.as_slice::<f32>().expect("a contiguous f32 tensor");
        let mut out = vec![0f32; xs.len()];
        let chunks = out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK));
        match g {
            None => chunks.for_each(|(o, x)| approx::gelu(x, o)),
            Some(g) => {
                let gs = g.as_slice::<f32>().expect("a contiguous f32 tensor");
                chunks.zip(gs.par_chunks(CHUNK)).for_each(|((o, x), g)| approx::gelu_grad(x, g, o));
            }
        }
        FlexTensor::from_data(TensorData::new(out, x.shape()))
    }

    pub(super) fn try_gelu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
        if *FORCE_BURN || x.dtype() != DType::F32 || x.shape().num_elements() < 2 * CHUNK {
            return Err(x);
        }
        if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
            return Ok(Tensor::from_primitive::<Flex>(map(&p.to_contiguous(), None)));
        }
        let Ok(a) = x.clone().try_into_primitive::<Autodiff<Flex>>() else {
            return Err(x);
        };
        let xp = a.primitive().to_contiguous();
        let y = map(&xp, None);
        let out = match GeluBackward.prepare::<NoCheckpointing>([a.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(xp, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(Tensor::from_primitive::<Autodiff<Flex>>(out))
    }

    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        type State = FlexTensor;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
            let [node] = ops.parents;
            let g = grads.consume::<Flex>(&ops.node).to_contiguous();
            let Some(node) = node else { return };
            grads.register::<Flex>(node.id, map(&ops.state, Some(&g)));
        }
    }
}

/// Branch-free f32 erf and exp over slices, written so the loops vectorise; one build for any
/// x86-64, with AVX-512 and AVX2 copies of each loop picked at run time. Products and sums are
/// not fused, so every copy gives the same bits. In the browser (wasm with simd128) only
/// `gelu_in_place` is used, by the fused convolutions.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
mod approx {
    use crate::simd::widest;
    use std::f32::consts::{FRAC_1_SQRT_2, LOG2_E, PI};

    /// erf: Eigen's (and XLA's) rational approximation x·P(x²)/Q(x²), with x clamped to ±4
    /// where erf is ±1 in f32. NaN stays NaN.
    #[inline(always)]
    pub(super) fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
        p = x2 * p + -2.101_024e-6;
        p = x2 * p + -5.692_506_4e-5;
        p = x2 * p + -7.349_906_3e-4;
        p = x2 * p + -2.954_6e-3;
        p = x2 * p + -1.609_603_3e-2;
        let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
        q = x2 * q + -1.682_827e-3;
        q = x2 * q + -7.373_329e-3;
        q = x2 * q + -1.426_473_9e-2;
        x * p / q
    }

    /// e^x for x in [-87, 88] (clamped; NaN stays NaN): Cephes' expf, x = n·ln2 + r with |r| <= ln2/2,
    /// e^r by a degree-7 polynomial, 2^n put straight into the exponent bits.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        // 1.5·2^23: adding it rounds to an integer, which lands in the low mantissa bits.
        const MAGIC: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let t = x * LOG2_E + MAGIC;
        let n = t - MAGIC;
        let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        // ln2 in two parts, so n·LN2_HI is exact.
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let mut p = 1.987_569_1e-4;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 5.000_000_1e-1;
        let y = p * r * r + r + 1.0;
        y * f32::from_bits(((ni + 127) << 23) as u32)
    }

    #[inline(always)]
    fn gelu_loop(x: &[f32], out: &mut [f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
        }
    }

    #[inline(always)]
    fn gelu_grad_loop(x: &[f32], g: &[f32], out: &mut [f32]) {
        let inv_sqrt_2pi = 1.0 / (2.0 * PI).sqrt();
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
            let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            let pdf = inv_sqrt_2pi * exp(-0.5 * x * x);
            *o = g * (cdf + x * pdf);
        }
    }

    /// `out = GELU(x)`, elementwise.
    pub(super) fn gelu(x: &[f32], out: &mut [f32]) {
        widest!(|x: &[f32], out: &mut [f32]| gelu_loop(x, out))
    }

    /// `x = GELU(x)`, elementwise.
    pub(super) fn gelu_in_place(x: &mut [f32]) {
        widest!(|x: &mut [f32]| x.iter_mut().for_each(|x| *x = 0.5 * *x * (1.0 + erf(*x * FRAC_1_SQRT_2))))
    }

    /// `out = g · GELU'(x)`, elementwise.
    pub(super) fn gelu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
        widest!(|x: &[f32], g: &[f32], out: &mut [f32]| gelu_grad_loop(x, g, out))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::{approx, gelu};
    use burn::tensor::{Distribution, Tensor, Tolerance};

    /// Every step of 1e-4 over [-6, 6] plus the edges: erf within 5e-7 of libm's erff (measured
    /// 4.2e-7, a few ulp of values near ±1; PyTorch's vectorised erf, Abramowitz-Stegun 7.1.26,
    /// is within 1.5e-7), exp within 3e-7 relative of libm's expf on the range GELU's gradient uses.
    #[test]
    fn erf_and_exp_are_close_to_libm() {
        let (mut erf_err, mut exp_err) = (0f32, 0f32);
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            erf_err = erf_err.max((approx::erf(x) - libm::erff(x)).abs());
        }
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = libm::expf(x);
            exp_err = exp_err.max(((approx::exp(x) - want) / want).abs());
        }
        assert!(erf_err < 5e-7, "erf off by {erf_err}");
        assert!(exp_err < 3e-7, "exp off by {exp_err} (relative)");
        // The clamp holds the tails at erf(±4), 1e-7 short of ±1.
        assert!((approx::erf(f32::INFINITY) - 1.0).abs() < 5e-7 && approx::erf(f32::NEG_INFINITY) == -approx::erf(f32::INFINITY));
        assert!(approx::erf(f32::NAN).is_nan() && approx::exp(f32::NAN).is_nan(), "NaN must survive (a diverging run must show)");
        assert_eq!(approx::exp(f32::NEG_INFINITY), libm::expf(-87.0));
        assert_eq!(approx::exp(0.0), 1.0);
    }

    /// The parallel, vectorised GELU against burn's (libm erff): forward and gradient within
    /// 1e-6 relative or 3e-6 absolute, in and out of autodiff, on an odd-sized tensor. The
    /// absolute part is erf's error times |x|/2 in the far negative tail (x about -5, where
    /// GELU is ~-1e-7 and both are rounding 1 + erf ≈ 0).
    #[test]
    fn parallel_gelu_matches_burns_gelu() {
        let device = burn::tensor::Device::flex();
        let x = Tensor::<4>::random([3, 5, 47, 61], Distribution::Normal(0.0, 3.0), &device);
        assert!(super::flex::try_gelu(x.clone()).is_ok(), "the parallel path must apply");
        let tol = Tolerance::absolute(3e-6).set_relative(1e-6);
        gelu(x.clone()).into_data().assert_approx_eq::<f32>(&burn::tensor::activation::gelu(x.clone()).into_data(), tol);

        let ad = device.clone().autodiff();
        let g = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &ad);
        let grad = |ours: bool| {
            let xa = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
            let y = if ours { super::flex::try_gelu(xa.clone()).expect("applies in autodiff") } else { burn::tensor::activation::gelu(xa.clone()) };
            let grads = (y * g.clone()).sum().backward();
            xa.grad(&grads).unwrap().into_data()
        };
        grad(true).assert_approx_eq::<f32>(&grad(false), tol);
        // NaN in, NaN out.
        let nan = Tensor::<1>::from_floats([f32::NAN; 40_000].as_slice(), &device);
        assert!(gelu(nan).into_data().try_to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()));
    }
}
