//! What a training run reports while it runs. The library only emits these; the CLI draws them
//! (a progress bar on a terminal, a line a minute in a log, the loss curve's PNG), the tests ignore
//! them.

use std::path::Path;

use crate::Result;

/// One moment of a run, in the order a run emits them.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// The run starts with `done` of its `total` optimisation steps behind it; `resumed_at`: it
    /// continues a checkpoint at this epoch and batch (1-based).
    Started { total: usize, done: usize, resumed_at: Option<(usize, usize)> },
    /// Epoch `epoch` (1-based) of `epochs` begins.
    Epoch { epoch: usize, epochs: usize },
    /// One optimisation step on `images` images finished with this loss, at this rate.
    Step { epoch: usize, batch: usize, batches: usize, images: usize, loss: f32, lr: f64 },
    /// The loss history was written as `dir/loss.csv` (after every epoch); `steps_per_epoch`
    /// places the epoch boundaries.
    Losses { dir: &'a Path, losses: &'a [f32], steps_per_epoch: usize },
    /// The run stopped on request after saving `checkpoint`.
    Stopped { checkpoint: &'a Path },
    /// The run paused after its step limit, or finished.
    Ended { finished: bool },
}

/// Where a run sends its events. An error (say, the loss curve could not be drawn on a full disk)
/// ends the run with it, after what the run had saved.
pub type Events<'a> = &'a (dyn Fn(&TrainEvent) -> Result<()> + Sync);
