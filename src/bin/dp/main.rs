//! `dp`: the desktop face of the crate. Train the MNIST models, sample, evaluate, package weights
//! for the page, make the course's figures and benchmark against PyTorch.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod args;
#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod bench_if;
#[cfg(not(target_arch = "wasm32"))]
mod commands;
#[cfg(not(target_arch = "wasm32"))]
mod deepfloyd;
#[cfg(not(target_arch = "wasm32"))]
mod heap;
#[cfg(not(target_arch = "wasm32"))]
mod models;
#[cfg(not(target_arch = "wasm32"))]
mod plot;
#[cfg(not(target_arch = "wasm32"))]
mod progress;
#[cfg(not(target_arch = "wasm32"))]
mod stop;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use clap::Parser;
    let cli = commands::Cli::parse();
    // burn builds some state on its default device (optimizer moments on --resume, later moved
    // to the parameters' device); make that the chosen one rather than the first GPU backend
    // compiled in. Set before any thread exists.
    let backend = match cli.device {
        diffusion_playground::device::DeviceChoice::Cpu => "flex",
        diffusion_playground::device::DeviceChoice::Wgpu => "wgpu",
        diffusion_playground::device::DeviceChoice::Cuda => if cfg!(feature = "cuda") { "cuda" } else { "flex" },
    };
    // SAFETY: single-threaded here (argument parsing only).
    unsafe { std::env::set_var("BURN_DEVICE", backend) };
    let trains = cli.trains();
    if let Err(e) = commands::run(cli) {
        match e {
            diffusion_playground::Error::Interrupted => {
                // The trainers saved a checkpoint; the other commands had nothing to save (the files
                // they finished are written whole, the one in progress is not written).
                if trains {
                    eprintln!("interrupted: progress saved; run the same command with --resume to continue");
                } else {
                    eprintln!("interrupted: the files already written are complete; the one in progress was not written");
                }
                std::process::exit(130);
            }
            e => {
                eprintln!("error: {}", as_flags(&e.to_string()));
                std::process::exit(1);
            }
        }
    }
}

/// The library names its settings as `field`; here each is the flag that sets it (`weight_decay`
/// -> --weight-decay). Other quoted text (commands to run) stays as it is.
#[cfg(not(target_arch = "wasm32"))]
fn as_flags(message: &str) -> String {
    const SETTINGS: [&str; 18] = [
        "adam_eps", "batch", "compute", "data", "dataset", "device", "epochs", "gamma", "grad_clip", "hidden", "limit", "lr", "micro_batch", "out", "p_uncond",
        "resume", "sigma", "weight_decay",
    ];
    let mut out = message.to_string();
    for field in SETTINGS {
        out = out.replace(&format!("`{field}`"), &format!("--{}", field.replace('_', "-")));
    }
    out
}
