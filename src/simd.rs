//! Loops compiled for the widest vectors the CPU has, chosen at run time (the crate is built
//! for x86-64's baseline, SSE2, so that one binary runs everywhere).

/// `$body`, a loop over slices, run through a copy compiled for the widest vectors the CPU
/// has: AVX-512 (16 lanes), AVX2 (8), or x86-64's baseline SSE2 (4). std caches the feature
/// checks: each is one atomic load.
macro_rules! widest {
    (|$($a:ident: $t:ty),*| $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn lanes16($($a: $t),*) {
                $body
            }
            #[target_feature(enable = "avx2")]
            fn lanes8($($a: $t),*) {
                $body
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { lanes16($($a),*) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { lanes8($($a),*) };
            }
        }
        $body
    }};
}

pub(crate) use widest;
