//! The process's one stop flag: long commands poll it between steps and stop cleanly.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The process's one stop flag, raised by Ctrl-C (SIGINT) or SIGTERM. The handler is installed
/// once, on first use, and every long loop of the process polls the same flag, so a command
/// that runs several jobs (`dp if sdedit` with several --i-start) stops at the first signal.
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // A second signal while saving falls through to the default handler only after this one
        // returned, so a half-written checkpoint cannot happen (writes are atomic anyway).
        let installed = ctrlc::set_handler(move || {
            eprintln!("\nstop requested: saving and stopping after this step...");
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        if let Err(e) = installed {
            eprintln!("warning: could not install the Ctrl-C handler ({e}); Ctrl-C will end the process without saving");
        }
        flag
    })
    .clone()
}
