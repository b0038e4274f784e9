//! The one gemm call every kernel makes, on strided views, and the weight layout its
//! shifted-window callers want.

use gemm::{gemm, Parallelism};

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`, every operand given by its (row, column) strides,
/// so transposes and shifted windows cost nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], dst_strides: (usize, usize), accumulate: bool, lhs: &[f32], lhs_strides: (usize, usize), rhs: &[f32], rhs_strides: (usize, usize), threads: Parallelism) {
    let span = |(rs, cs): (usize, usize), rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs + 1;
    assert!(m > 0 && n > 0 && k > 0);
    assert!(dst.len() >= span(dst_strides, m, n) && lhs.len() >= span(lhs_strides, m, k) && rhs.len() >= span(rhs_strides, k, n));
    // SAFETY: the asserts above keep every index gemm touches inside the three slices, and
    // `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm(
            m, n, k,
            dst.as_mut_ptr(), dst_strides.1 as isize, dst_strides.0 as isize, accumulate,
            lhs.as_ptr(), lhs_strides.1 as isize, lhs_strides.0 as isize,
            rhs.as_ptr(), rhs_strides.1 as isize, rhs_strides.0 as isize,
            1.0, 1.0, false, false, false, threads,
        )
    }
}

/// A weight as `taps` column-major `[cout, cin]` matrices, tap after tap: `(co, ci)` of tap t
/// at `t·cin·cout + ci·cout + co`, read from `(co, ci, t)` at `co·s_co + ci·s_ci + t`. The
/// shifted-window gemms take each tap's matrix as it lies; in the weights' own layout its
/// rows are `cin·taps` floats apart, and gemm gathered them into a packed copy on every call
/// (a tap an image). Done once per layer call.
pub(super) fn taps_major(w: &[f32], cout: usize, cin: usize, taps: usize, (s_co, s_ci): (usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; taps * cin * cout];
    for (t, tap) in out.chunks_mut(cin * cout).enumerate() {
        for (ci, col) in tap.chunks_mut(cout).enumerate() {
            for (co, v) in col.iter_mut().enumerate() {
                *v = w[co * s_co + ci * s_ci + t];
            }
        }
    }
    out
}
