//! The fast paths against burn's own ops, outputs and gradients.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Tensor, TensorData};

use super::{flex, Conv2d, ConvTranspose2d};

fn max_rel(a: Tensor<4>, b: Tensor<4>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
    (a - b).abs().max().into_scalar::<f32>() / scale
}

/// The fast path against burn's own `Conv2d::forward`: outputs, and the gradients of x, the
/// weight and the bias under a random output gradient. Both sum the same products in another
/// order, so they agree to f32 rounding (1e-5 relative to the largest value).
fn check(b: usize, cin: usize, cout: usize, [h, w]: [usize; 2], k: usize, stride: usize, pad: usize, bias: bool) {
    let device = burn::tensor::Device::flex();
    let ad = device.clone().autodiff();
    let conv: Conv2d = Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
        .init(&ad)
        .into();
    let plain = conv.valid();
    let x = Tensor::<4>::random([b, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
    let case = format!("b{b} {cin}->{cout} {h}x{w} k{k} s{stride} p{pad} bias {bias}");

    assert!(flex::try_conv2d(&plain, x.clone()).is_ok(), "{case}: the fast path must apply");
    let fast = plain.forward(x.clone());
    let slow = plain.burn_forward(x.clone());
    assert_eq!(fast.dims(), slow.dims(), "{case}");
    assert!(max_rel(fast, slow.clone()) < 1e-5, "{case}: forward");

    let gy = Tensor::<4>::random(slow.dims(), Distribution::Normal(0.0, 1.0), &ad);
    let grads = |fast: bool| {
        let xa = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
        let y = if fast { flex::try_conv2d(&conv, xa.clone()).expect("the fast path applies in autodiff") } else { conv.burn_forward(xa.clone()) };
        let g = (y * gy.clone()).sum().backward();
        let gx = xa.grad(&g).unwrap();
        let gw = conv.weight.grad(&g).unwrap();
        let gb = conv.bias.as_ref().map(|p| p.grad(&g).unwrap().reshape([1, 1, 1, cout]));
        (gx, gw, gb)
    };
    let (fx, fw, fb) = grads(true);
    let (sx, sw, sb) = grads(false);
    let as4 = |t: Tensor<4>| Tensor::<4>::from_data(TensorData::from(t.to_data()), &device);
    assert!(max_rel(as4(fx), as4(sx)) < 1e-5, "{case}: x gradient");
    assert!(max_rel(as4(fw), as4(sw)) < 1e-5, "{case}: weight gradient");
    if let (Some(fb), Some(sb)) = (fb, sb) {
        assert!(max_rel(as4(fb), as4(sb)) < 1e-5, "{case}: bias gradient");
    }
}

/// A BatchNorm with running statistics, gamma and beta far from their defaults.
fn batch_norm(channels: usize, device: &burn::tensor::Device) -> burn::nn::BatchNorm {
    use burn::module::{Param, RunningState};
    let r = |lo: f64, hi: f64| Tensor::<1>::random([channels], Distribution::Uniform(lo, hi), device);
    let mut bn = burn::nn::BatchNormConfig::new(channels).with_epsilon(1e-5).init(device);
    bn.gamma = Param::from_tensor(r(-2.0, 2.0));
    bn.beta = Param::from_tensor(r(-1.0, 1.0));
    bn.running_mean = RunningState::new(r(-0.5, 0.5));
    bn.running_var = RunningState::new(r(0.05, 3.0));
    bn
}

/// Inputs `[b, c_i, side, side]` and their concatenation along channels.
fn parts(b: usize, channels: &[usize], [h, w]: [usize; 2], device: &burn::tensor::Device) -> (Vec<Tensor<4>>, Tensor<4>) {
    let xs: Vec<Tensor<4>> = channels.iter().map(|&c| Tensor::random([b, c, h, w], Distribution::Normal(0.0, 1.0), device)).collect();
    (xs.clone(), Tensor::cat(xs, 1))
}

/// The fused (concatenation +) Conv + BatchNorm + GELU, and BatchNorm + GELU alone, against
/// the unfused layers on burn's ops. The fold of BatchNorm into one scale and shift rounds
/// differently: within 1e-5 of the largest value.
fn check_fused(b: usize, cins: &[usize], cout: usize, side: usize, stride: usize, bias: bool) {
    let device = burn::tensor::Device::flex();
    let cin = cins.iter().sum();
    let conv: Conv2d = Conv2dConfig::new([cin, cout], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(bias)
        .init(&device)
        .into();
    let bn = batch_norm(cout, &device);
    let (xs, x) = parts(b, cins, [side, side], &device);
    let case = format!("b{b} {cins:?}->{cout} {side}x{side} s{stride} bias {bias}");

    let fused = flex::try_conv2d_bn_gelu(&conv, &bn, xs.clone()).expect("the fused path must apply");
    let unfused = burn::tensor::activation::gelu(bn.forward(conv.burn_forward(x.clone())));
    assert_eq!(fused.dims(), unfused.dims(), "{case}");
    assert!(max_rel(fused, unfused.clone()) < 1e-5, "{case}: conv + bn + gelu");
    assert!(max_rel(conv.forward_bn_gelu(&bn, xs), unfused.clone()) < 1e-5, "{case}: the module's method");

    let y = conv.burn_forward(x);
    let unfused = burn::tensor::activation::gelu(bn.forward(y.clone()));
    let kept = y.clone(); // a shared buffer must not be changed in place
    let fused = flex::try_batch_norm_gelu(&bn, y.clone()).expect("the fused path must apply");
    assert!(max_rel(fused, unfused) < 1e-5, "{case}: bn + gelu");
    assert_eq!(kept.into_data(), y.into_data(), "{case}: input left alone");
}

#[test]
fn fused_conv_batch_norm_gelu_matches_burns_layers() {
    check_fused(3, &[4], 5, 9, 1, true); // Conv, items in parallel (shifted windows)
    check_fused(1, &[4], 5, 9, 1, false); // one item: threaded gemm
    check_fused(3, &[2, 3], 5, 8, 1, true); // the skip connection's concatenation
    check_fused(3, &[4], 6, 9, 2, true); // DownConv (im2col)
    check_fused(2, &[1, 2], 4, 7, 2, false); // concatenated, im2col
    check_fused(5, &[8], 6, 7, 1, true); // Winograd, 7x7 (cut tiles), 5 items in 2+ groups
    check_fused(3, &[4, 6], 5, 14, 1, true); // Winograd on a concatenation
    check_fused(1, &[8], 3, 8, 1, false); // Winograd, one item: threaded gemm
}

/// The transposed convolution on per-phase gemms (+ BatchNorm + GELU) against burn's
/// `ConvTranspose2d`, BatchNorm and GELU: within 1e-5 of the largest value.
fn check_up(b: usize, cins: &[usize], cout: usize, [h, w]: [usize; 2], k: usize, stride: usize, pad: usize, bias: bool) {
    use burn::nn::conv::ConvTranspose2dConfig;
    let device = burn::tensor::Device::flex();
    let cin = cins.iter().sum();
    let conv: ConvTranspose2d = ConvTranspose2dConfig::new([cin, cout], [k, k]).with_stride([stride, stride]).with_padding([pad, pad]).with_bias(bias).init(&device).into();
    let bn = batch_norm(cout, &device);
    let (xs, x) = parts(b, cins, [h, w], &device);
    let case = format!("b{b} {cins:?}->{cout} {h}x{w} k{k} s{stride} p{pad} bias {bias}");
    let unfused = burn::tensor::activation::gelu(bn.forward(conv.forward(x)));
    let fused = flex::try_conv_transpose2d_bn_gelu(&conv, &bn, xs.clone()).expect("the fast path must apply");
    assert_eq!(fused.dims(), unfused.dims(), "{case}");
    assert!(max_rel(fused, unfused.clone()) < 1e-5, "{case}");
    let public = conv.forward_bn_gelu(&bn, xs);
    assert!(max_rel(public, unfused) < 1e-5, "{case}: the module's method");
}

#[test]
fn transposed_conv_on_phases_matches_burn() {
    check_up(3, &[4], 5, [7, 7], 4, 2, 1, true); // UpConv, items in parallel
    check_up(1, &[3, 2], 4, [6, 5], 4, 2, 1, false); // concatenated, one item, not square
    check_up(2, &[3], 2, [5, 5], 2, 2, 0, true); // one tap per phase
    check_up(2, &[2], 3, [4, 6], 4, 2, 0, true); // no padding: a wider output
    check_up(2, &[2], 3, [5, 4], 4, 2, 3, true); // padding past a tap
    check_up(2, &[3], 3, [6, 6], 3, 1, 1, true); // stride 1: one phase
    check_up(2, &[2], 3, [1, 1], 4, 2, 1, false); // a single input pixel
}

#[test]
fn unflatten_stays_on_burns_transposed_conv() {
    use burn::nn::conv::ConvTranspose2dConfig;
    let device = burn::tensor::Device::flex();
    let conv: ConvTranspose2d = ConvTranspose2dConfig::new([4, 4], [7, 7]).with_stride([7, 7]).init(&device).into();
    let bn = batch_norm(4, &device);
    let x = Tensor::<4>::random([2, 4, 1, 1], Distribution::Normal(0.0, 1.0), &device);
    assert!(flex::try_conv_transpose2d_bn_gelu(&conv, &bn, vec![x.clone()]).is_err(), "49 phases: burn's path");
    let unfused = burn::tensor::activation::gelu(bn.forward(conv.forward(x.clone())));
    assert!(max_rel(conv.forward_bn_gelu(&bn, vec![x]), unfused) < 1e-5);
}

#[test]
fn fast_conv_matches_burn_forward_and_gradients() {
    check(3, 4, 5, [9, 9], 3, 1, 1, true); // UNet Conv, items in parallel
    check(1, 4, 5, [9, 9], 3, 1, 1, true); // one item: threaded gemm
    check(3, 4, 6, [9, 7], 3, 2, 1, true); // DownConv on an odd, non-square side
    check(2, 6, 3, [5, 6], 1, 1, 0, true); // DeepFloyd's 1x1 shortcut
    check(2, 3, 2, [6, 6], 3, 1, 0, false); // no padding, no bias
    check(4, 2, 3, [8, 8], 4, 2, 1, true); // even kernel
    check(2, 2, 3, [3, 4], 3, 2, 2, true); // padding wider than the taps reach
    check(2, 2, 3, [2, 9], 3, 3, 1, true); // stride 3, a side shorter than the kernel
    // 8+ input channels: Winograd F(2x2, 3x3) forward; 8+ output channels: the input
    // gradient on it too (a 3x3 stride-1 convolution of gy with the flipped kernel); both:
    // the weight gradient as well
    check(3, 8, 5, [9, 9], 3, 1, 1, true); // odd side: the last tiles cut
    check(1, 9, 4, [6, 10], 3, 1, 1, false); // one item, even sides, not square
    check(2, 8, 3, [7, 6], 3, 1, 0, true); // no padding
    check(2, 8, 3, [5, 4], 3, 1, 2, true); // padding wider than the taps reach
    check(2, 16, 6, [1, 1], 3, 1, 1, true); // a single pixel
    check(3, 4, 8, [9, 9], 3, 1, 1, true); // only the input gradient on Winograd
    check(1, 8, 12, [6, 10], 3, 1, 1, false); // both; one item, even sides
    check(2, 9, 8, [7, 6], 3, 1, 0, true); // both, no padding: the gradient padded by 2
    check(2, 8, 10, [5, 4], 3, 1, 2, true); // both, padding 2: the gradient unpadded
    check(2, 8, 8, [1, 1], 3, 1, 1, true); // both, a single pixel
    check(5, 8, 9, [5, 4], 3, 1, 1, true); // both, five images in groups of three and two
}
