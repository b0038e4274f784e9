//! How the kernels share work among threads: rayon's pool on the desktop, one thread in the
//! browser.

use gemm::Parallelism;
#[cfg(not(target_arch = "wasm32"))]
use rayon::prelude::*;


/// Threads the kernels share work among: rayon's pool on the desktop, one in the browser.
pub(super) fn threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::current_num_threads();
    #[cfg(target_arch = "wasm32")]
    1
}

/// A gemm over every thread (`None`: one in the browser).
pub(super) fn all_threads() -> Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    return Parallelism::Rayon(0);
    #[cfg(target_arch = "wasm32")]
    Parallelism::None
}

/// `f((n, chunk))` for each `len`-long chunk n of `s`, on rayon's threads when `parallel`
/// (always in turn in the browser).
pub(super) fn for_each_chunk<T: Send>(s: &mut [T], len: usize, parallel: bool, f: impl Fn((usize, &mut [T])) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    if parallel {
        s.par_chunks_mut(len).enumerate().for_each(f);
        return;
    }
    let _ = parallel;
    s.chunks_mut(len).enumerate().for_each(f);
}

/// `b` images of `len` floats, image n written by `f(n, image)`, in parallel when `parallel`.
/// Each image is zeroed by the thread that computes it, just before, while it is in cache,
/// rather than the whole output on one thread first (`vec![0; b * len]`).
pub(super) fn per_image(b: usize, len: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    per_chunk(b * len, len, parallel, f)
}

/// `total` floats in chunks of `len` (the last one may be shorter), chunk n written by
/// `f(n, chunk)` as in `per_image`.
pub(super) fn per_chunk(total: usize, len: usize, parallel: bool, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(total);
    let one = |(n, image): (usize, &mut [std::mem::MaybeUninit<f32>])| {
        image.fill(std::mem::MaybeUninit::new(0.0));
        // SAFETY: every element was initialised just above, and MaybeUninit<f32> has the
        // layout of f32.
        f(n, unsafe { &mut *(image as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) })
    };
    for_each_chunk(&mut y.spare_capacity_mut()[..total], len.max(1), parallel, one);
    // SAFETY: `one` initialised every chunk of the first `total` elements (a panic in `f`
    // unwinds past this line, leaving the vector empty).
    unsafe { y.set_len(total) };
    y
}
