//! `dp`: the desktop face of the crate. Train the MNIST models, sample, evaluate, package weights
//! for the page, make the course's figures and benchmark against PyTorch.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod bench_if;
#[cfg(not(target_arch = "wasm32"))]
mod commands;
#[cfg(not(target_arch = "wasm32"))]
mod deepfloyd;
#[cfg(not(target_arch = "wasm32"))]
mod models;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use clap::Parser;
    let cli = commands::Cli::parse();
    if let Err(e) = commands::run(cli) {
        match e {
            diffusion_playground::Error::Interrupted => {
                eprintln!("interrupted: progress saved; run the same command with --resume to continue");
                std::process::exit(130);
            }
            e => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}
