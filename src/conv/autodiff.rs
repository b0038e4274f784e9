//! The fast convolution as one tracked op under burn's autodiff (training, desktop only), with its
//! own backward: Winograd where it applies, gemms for the rest.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;

use super::buffers::{f32s, flex_tensor};
use super::epilogue::Epilogue;
use super::gemm::{backward_gemm, forward};
use super::geometry::{geometry, Geom};
use super::winograd::{forward_winograd, weight_gradient_winograd};
use super::Conv2d;

/// `try_conv2d` under autodiff (training, desktop only).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn try_conv2d_autodiff(conv: &Conv2d, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    let Some(g) = geometry(conv, x.dims()) else { return Err(x) };
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().map(|b| b.val());

    // Autodiff over Flex (training): the convolution is one tracked op with its own backward;
    // the bias is added after it as an ordinary broadcast add, whose gradient autodiff sums.
    let Ok(xa) = x.clone().try_into_primitive::<Autodiff<Flex>>() else {
        return Err(x);
    };
    let Ok(wa) = weight.try_into_primitive::<Autodiff<Flex>>() else {
        return Err(x);
    };
    let (xp, wp) = (xa.primitive().to_contiguous(), wa.primitive().to_contiguous());
    let y = flex_tensor(forward(&g, &[f32s(&xp)], f32s(&wp), &Epilogue::default()), [g.b, g.cout, g.oh, g.ow]);
    let out = match ConvBackward.prepare::<NoCheckpointing>([xa.node(), wa.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(ConvState { g, x: xp, w: wp }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    let y = Tensor::<4>::from_primitive::<Autodiff<Flex>>(out);
    Ok(match bias {
        Some(bias) => y + bias.reshape([1, g.cout, 1, 1]),
        None => y,
    })
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Debug)]
pub(super) struct ConvState {
    pub(super) g: Geom,
    pub(super) x: FlexTensor,
    pub(super) w: FlexTensor,
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub(super) struct ConvBackward;

#[cfg(not(target_arch = "wasm32"))]
impl Backward<Flex, 2> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let gy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let ConvState { g, x, w } = ops.state;
        let (dx, dw) = backward(&g, f32s(&x), f32s(&w), f32s(&gy), node_x.is_some(), node_w.is_some());
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, flex_tensor(dx, [g.b, g.cin, g.h, g.w]));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, flex_tensor(dw, [g.cout, g.cin, g.kh, g.kw]));
        }
    }
}

/// Gradients of `forward` (without bias) for the output gradient `gy`, each only when asked
/// for. Where the input gradient's own convolution (`Geom::input_gradient`) takes Winograd's
/// path, dx is that forward pass; where the layer's does, dw comes from
/// `weight_gradient_winograd` (each a third of a training step's multiply-adds); what is
/// left from `backward_gemm`.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn backward(g: &Geom, x: &[f32], w: &[f32], gy: &[f32], want_dx: bool, want_dw: bool) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let dx = want_dx.then(|| g.input_gradient()).flatten().filter(Geom::winograd);
    let dx = dx.map(|t| forward_winograd(&t, &[gy], &flipped(w, g.cout, g.cin, g.kh * g.kw), &Epilogue::default()));
    // Both transforms' costs are per channel: with a single output channel the 16 gemms of
    // one row each would not pay for the input transform.
    let dw = (want_dw && g.winograd() && g.cout >= 8).then(|| weight_gradient_winograd(g, x, gy));
    let (rest_dx, rest_dw) = (want_dx && dx.is_none(), want_dw && dw.is_none());
    if !rest_dx && !rest_dw {
        return (dx, dw);
    }
    let (gx, gw) = backward_gemm(g, x, w, gy, rest_dx, rest_dw);
    (dx.or(gx), dw.or(gw))
}

/// `[cout, cin, kh, kw]` weights as `[cin, cout, kh, kw]`, each kernel turned 180 degrees:
/// the weights of `Geom::input_gradient`.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn flipped(w: &[f32], cout: usize, cin: usize, taps: usize) -> Vec<f32> {
    let mut f = vec![0f32; w.len()];
    for (co, wo) in w.chunks(cin * taps).enumerate() {
        for (ci, k) in wo.chunks(taps).enumerate() {
            let dst = &mut f[(ci * cout + co) * taps..][..taps];
            dst.iter_mut().zip(k.iter().rev()).for_each(|(d, s)| *d = *s);
        }
    }
    f
}
