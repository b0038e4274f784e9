//! How the commands that run a model take memory from the kernel.
//!
//! glibc serves each allocation above its mmap threshold (at most 32 MB) with a fresh mmap and
//! unmaps it on free. A D=128 denoiser step at batch 256 allocates and frees activations of
//! ~100 MB many times per step, so every step re-faults and the kernel zeroes gigabytes of pages
//! (`clear_page_erms` was 7% of a `perf` profile, page faults 2% more). Keeping freed memory in
//! the heap instead measured 9.7 -> 12.4 and 8.0 -> 9.4 images/s for that step on the 2-core
//! Intel machine; the D=64 flows' training at batch 64 was unchanged; guided sampling of 80
//! digits (`dp sample`, 160 forwards a step) took 24.0, 23.1, 19.7 s against 25.2, 25.7, 24.7 s
//! with glibc's defaults (page faults and munmap had been ~7% of its profile). A guided IF-I-M
//! step (`dp bench-if --variant M --steps 3 --no-torch`, 2-core AMD EPYC) went from 2948, 3085 to
//! 2558, 2562 ms with peak RSS 1796 -> 1822 MB; IF-I-L from 7068 to 6728 ms, 4214 -> 4220 MB.

/// Serve large blocks from the heap and keep freed memory for reuse instead of giving it back
/// to the kernel, for the rest of the process. glibc on Linux only; elsewhere, or with
/// `DP_SYSTEM_MALLOC=1` set (A/B runs), nothing changes.
pub fn retain_freed_memory() {
    if std::env::var_os("DP_SYSTEM_MALLOC").is_some_and(|v| v != "0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters and may be called at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
