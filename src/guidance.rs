//! Classifier-free guidance, the one rule both halves use (the course's MNIST flows and IF):
//! `uncond + scale (cond - uncond)`. Scale 1 is the conditional output itself, so a caller runs
//! the conditional branch alone then ([`needs_unconditional`]); any other scale, 0 (the
//! unconditional output) included, runs both branches in one batch.

use burn::prelude::*;

/// `uncond + scale (cond - uncond)`.
pub fn combine<const D: usize>(uncond: Tensor<D>, cond: Tensor<D>, scale: f32) -> Tensor<D> {
    uncond.clone() + (cond - uncond) * scale
}

/// Whether guidance at `scale` needs the unconditional branch (every scale but 1).
pub fn needs_unconditional(scale: f32) -> bool {
    scale != 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_one_is_conditional_and_zero_unconditional() {
        let d = Device::flex();
        let u = Tensor::<1>::from_floats([1.0, 2.0], &d);
        let c = Tensor::<1>::from_floats([3.0, -1.0], &d);
        let at = |s: f32| combine(u.clone(), c.clone(), s).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(at(1.0), vec![3.0, -1.0]);
        assert_eq!(at(0.0), vec![1.0, 2.0]);
        assert_eq!(at(5.0), vec![11.0, -13.0]);
        assert!(!needs_unconditional(1.0) && needs_unconditional(0.0) && needs_unconditional(7.0));
    }
}
