//! What happens to each output value as it leaves a gemm: bias, BatchNorm folded into a scale and
//! shift per channel, GELU. One pass over the output instead of one per op.

use burn::backend::Flex;
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use crate::activation::gelu_in_place;


/// What happens to output channel c's values as they are written: `act(acc · scale[c] +
/// shift[c])`, shift holding the convolution's bias.
#[derive(Debug, Default)]
pub(super) struct Epilogue {
    pub(super) scale: Option<Vec<f32>>,
    pub(super) shift: Option<Vec<f32>>,
    pub(super) gelu: bool,
}

impl Epilogue {
    pub(super) fn bias(bias: Option<&[f32]>) -> Self {
        Self { shift: bias.map(<[f32]>::to_vec), ..Self::default() }
    }

    /// `gelu(((acc + bias) - mean) / sqrt(var + eps) · gamma + beta)` with BatchNorm's running
    /// statistics, folded into one scale and shift per channel. That rounds differently from
    /// burn's four ops by a few ulp of the result. None unless every vector is f32 and
    /// `channels` long.
    pub(super) fn batch_norm(bn: &BatchNorm, bias: Option<&[f32]>, channels: usize) -> Option<Self> {
        // Only from Flex: reading a GPU tensor back would block (and panics in the browser).
        let read = |t: Tensor<1>| {
            let p = t.try_into_primitive::<Flex>().ok()?.to_contiguous();
            p.as_slice::<f32>().filter(|v| v.len() == channels).map(<[f32]>::to_vec)
        };
        let (gamma, beta) = (read(bn.gamma.val())?, read(bn.beta.val())?);
        let (mean, var) = (read(bn.running_mean.value())?, read(bn.running_var.value())?);
        if bias.is_some_and(|b| b.len() != channels) {
            return None;
        }
        let eps = bn.epsilon as f32;
        let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift = (0..channels).map(|c| beta[c] + (bias.map_or(0.0, |b| b[c]) - mean[c]) * scale[c]).collect();
        Some(Self { scale: Some(scale), shift: Some(shift), gelu: true })
    }

    /// `dst = src · scale[c] + shift[c]`.
    #[inline]
    pub(super) fn write(&self, c: usize, src: &[f32], dst: &mut [f32]) {
        let b = self.shift.as_ref().map_or(0.0, |s| s[c]);
        match &self.scale {
            Some(s) => dst.iter_mut().zip(src).for_each(|(d, v)| *d = v * s[c] + b),
            None => dst.iter_mut().zip(src).for_each(|(d, v)| *d = v + b),
        }
    }

    /// Channel c's `(scale, shift)`, `(1, 0)` where there is none.
    pub(super) fn affine(&self, c: usize) -> (f32, f32) {
        (self.scale.as_ref().map_or(1.0, |s| s[c]), self.shift.as_ref().map_or(0.0, |s| s[c]))
    }

    /// `dst[k·step] = src[k] · scale[c] + shift[c]`.
    #[inline]
    pub(super) fn write_strided(&self, c: usize, src: &[f32], dst: &mut [f32], step: usize) {
        let (s, b) = self.affine(c);
        dst.iter_mut().step_by(step).zip(src).for_each(|(d, v)| *d = v * s + b);
    }

    /// The whole epilogue on one image `[channels, plane]` in place.
    pub(super) fn image_in_place(&self, y: &mut [f32], plane: usize) {
        if self.scale.is_some() || self.shift.is_some() {
            for (c, row) in y.chunks_mut(plane).enumerate() {
                let b = self.shift.as_ref().map_or(0.0, |s| s[c]);
                match &self.scale {
                    Some(s) => row.iter_mut().for_each(|v| *v = *v * s[c] + b),
                    None => row.iter_mut().for_each(|v| *v += b),
                }
            }
        }
        if self.gelu {
            gelu_in_place(y);
        }
    }
}
