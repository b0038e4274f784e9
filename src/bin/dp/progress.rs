//! Draws a trainer's events: a bar on a terminal (redrawn twice a second), a plain line a minute
//! in a log, and the loss curve's PNG after every epoch.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use diffusion_playground::mnist::train::TrainEvent;
use diffusion_playground::Result;
use indicatif::{ProgressBar, ProgressStyle};

pub struct TrainBar {
    bar: ProgressBar,
    dir: PathBuf,
    /// Since when, and how many images, the last rate covers.
    window: Mutex<(Instant, usize)>,
}

impl TrainBar {
    /// A bar for the run in `dir` (named in the resume line).
    pub fn new(dir: PathBuf) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template("{spinner} epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}").expect("a valid template").progress_chars("=> "));
        TrainBar { bar, dir, window: Mutex::new((Instant::now(), 0)) }
    }

    pub fn draw(&self, event: &TrainEvent) -> Result<()> {
        let bar = &self.bar;
        match *event {
            TrainEvent::Started { total, done, resumed_at } => {
                if let Some((epoch, batch)) = resumed_at {
                    eprintln!("resuming {} at epoch {epoch} batch {batch}", self.dir.display());
                }
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            TrainEvent::Epoch { epoch, epochs } => bar.set_prefix(format!("{epoch}/{epochs}")),
            TrainEvent::Step { epoch, batch, batches, images, loss, lr } => {
                bar.inc(1);
                let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
                window.1 += images;
                let dt = window.0.elapsed().as_secs_f64();
                if dt > if bar.is_hidden() { 60.0 } else { 2.0 } {
                    let msg = format!("loss {loss:.4} lr {lr:.2e} {:.0} img/s", window.1 as f64 / dt);
                    if bar.is_hidden() {
                        eprintln!("epoch {epoch} batch {batch}/{batches}: {msg}");
                    }
                    bar.set_message(msg);
                    *window = (Instant::now(), 0);
                }
            }
            TrainEvent::Losses { dir, losses, .. } => crate::plot::loss_png(losses, &dir.join("loss.png"))?,
            TrainEvent::Stopped { checkpoint } => bar.abandon_with_message(format!("stopped; saved {}", checkpoint.display())),
            TrainEvent::Ended { finished: false } => bar.abandon(),
            TrainEvent::Ended { finished: true } => bar.finish(),
        }
        Ok(())
    }
}
