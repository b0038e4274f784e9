//! Per-thread scratch buffers, reused from call to call, in named slots. Reusing a buffer that is
//! still in cache spares the allocation, page faults and zeroing of a fresh one per image.

use std::cell::Cell;

/// What a scratch buffer holds while a kernel uses it. Calls nest in this order (a kernel holding
/// one slot may take a later one, never the same one).
#[derive(Clone, Copy, Debug)]
pub(super) enum Slot {
    /// One layer's transformed Winograd weights, kept for the next call of the layer.
    WinogradWeights,
    /// An image's gathered input: im2col's columns, the zero-padded image, or a group's
    /// Winograd-transformed input.
    Gathered,
    /// The shifted windows' wide-grid output, or Winograd's padded input planes.
    Staging,
    /// The Winograd gemms' products.
    Products,
}

impl Slot {
    /// Floats the buffer may hold and still stay with its thread: a few MB for the per-image
    /// buffers, enough for the largest IF-I-M layer's transformed weights (re-faulted from the
    /// kernel at every call otherwise).
    fn keep(self) -> usize {
        match self {
            Slot::WinogradWeights => 1 << 26,
            Slot::Gathered | Slot::Staging | Slot::Products => 1 << 22,
        }
    }
}

thread_local! {
    static SCRATCH: [Cell<Vec<f32>>; 4] = const { [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())] };
}

/// Runs `f` on this thread's buffer for `slot`, `len` floats long: all zero when `zeroed`,
/// otherwise holding whatever the last user left. The buffer is taken out while in use, so a
/// nested call (rayon may run another image's job on this thread while a threaded gemm waits)
/// gets a fresh one.
pub(super) fn with_scratch<R>(slot: Slot, len: usize, zeroed: bool, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let i = slot as usize;
    let mut v = SCRATCH.with(|s| s[i].take());
    if zeroed {
        v.clear();
    }
    v.resize(len, 0.0);
    let r = f(&mut v);
    if v.capacity() <= slot.keep() {
        SCRATCH.with(|s| s[i].set(v));
    }
    r
}
