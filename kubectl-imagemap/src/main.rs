//! `kubectl imagemap`: manage ImageMaps and preview image swaps.

use clap::Parser;

/// Manage ImageMaps: which freshly built image a Pod's image reference means.
#[derive(Parser)]
#[command(name = "kubectl-imagemap", bin_name = "kubectl imagemap", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
