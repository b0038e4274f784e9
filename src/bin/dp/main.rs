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
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}
