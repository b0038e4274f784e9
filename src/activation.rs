//! The exact GELU, spread over the CPU's threads on burn's Flex backend.
//!
//! burn 0.22's Flex evaluates GELU and its gradient one element at a time on one thread (scalar
//! `erff`), which was a seventh of a training step on the 2-core machine while the other core
//! waited. This computes the very same expressions (same `erff`, same formulas, so the same bits)
//! over chunks in parallel, in and out of autodiff; other backends and the browser use burn's.
//! Set `DP_BURN_GELU=1` to force burn's path (for A/B benchmarks).

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

    const SQRT_2: f32 = core::f32::consts::SQRT_2;
    /// Below this many elements one thread is quicker than sharing out the work.
    const CHUNK: usize = 1 << 14;

    fn forward_one(x: f32) -> f32 {
        0.5 * x * (1.0 + libm::erff(x / SQRT_2))
    }

    fn backward_one(x: f32, g: f32) -> f32 {
        let inv_sqrt_2pi: f32 = 1.0 / (2.0 * core::f32::consts::PI).sqrt();
        let cdf = 0.5 * (1.0 + libm::erff(x / SQRT_2));
        let pdf = inv_sqrt_2pi * (-0.5 * x * x).exp();
        g * (cdf + x * pdf)
    }

    fn map(x: &FlexTensor, f: impl Fn(usize, f32) -> f32 + Sync) -> FlexTensor {
        let xs = x.as_slice::<f32>().expect("a contiguous f32 tensor");
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).enumerate().for_each(|(c, (o, s))| {
            for (i, (o, &v)) in o.iter_mut().zip(s).enumerate() {
                *o = f(c * CHUNK + i, v);
            }
        });
        FlexTensor::from_data(TensorData::new(out, x.shape()))
    }

    pub(super) fn try_gelu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
        if *FORCE_BURN || x.dtype() != DType::F32 || x.shape().num_elements() < 2 * CHUNK {
            return Err(x);
        }
        if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
            return Ok(Tensor::from_primitive::<Flex>(map(&p.to_contiguous(), |_, v| forward_one(v))));
        }
        let Ok(a) = x.clone().try_into_primitive::<Autodiff<Flex>>() else {
            return Err(x);
        };
        let xp = a.primitive().to_contiguous();
        let y = map(&xp, |_, v| forward_one(v));
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
            let gs = g.as_slice::<f32>().expect("a contiguous f32 tensor");
            grads.register::<Flex>(node.id, map(&ops.state, |i, x| backward_one(x, gs[i])));
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::gelu;
    use burn::tensor::{Distribution, Tensor};

    /// Same expressions as burn's Flex GELU, so the same bits, forward and backward.
    #[test]
    fn parallel_gelu_is_burns_gelu_bit_for_bit() {
        let device = burn::tensor::Device::flex();
        let x = Tensor::<4>::random([3, 5, 47, 61], Distribution::Normal(0.0, 3.0), &device);
        assert!(super::flex::try_gelu(x.clone()).is_ok(), "the parallel path must apply");
        gelu(x.clone()).into_data().assert_eq(&burn::tensor::activation::gelu(x.clone()).into_data(), true);

        let ad = device.clone().autodiff();
        let g = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &ad);
        let grad = |ours: bool| {
            let xa = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
            let y = if ours { super::flex::try_gelu(xa.clone()).expect("applies in autodiff") } else { burn::tensor::activation::gelu(xa.clone()) };
            let grads = (y * g.clone()).sum().backward();
            xa.grad(&grads).unwrap().into_data()
        };
        grad(true).assert_eq(&grad(false), true);
    }
}
