//! `kubectl imagemap`: manage ImageMaps, preview and explain image swaps, check an install.
//! Results go to standard output (each command writes to the one it is given), errors (with
//! their fix) to standard error, exit code 1.

mod cli;
mod client;
mod commands;
mod distribution;
mod input;
mod render;
mod scope_wait;
mod stale;
mod transport;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = &mut std::io::stdout();
    let result = match &cli.command {
        Command::Create(a) => commands::create::run(&cli.global, a, out).await,
        Command::List(a) | Command::Get(a) => commands::get::run(&cli.global, a, out).await,
        Command::Describe(a) => commands::describe::run(&cli.global, a, out).await,
        Command::SetImage(a) => commands::set_image::run(&cli.global, a, out).await,
        Command::Build(a) => commands::build::run(&cli.global, a, out).await,
        Command::Registry(a) => commands::registry::run(&cli.global, a, out).await,
        Command::Delete(a) => commands::delete::run(&cli.global, a, out).await,
        Command::Inject(a) => commands::inject::run(&cli.global, a, out).await,
        Command::Explain(a) => commands::explain::run(&cli.global, a, out).await,
        Command::Doctor(a) => commands::doctor::run(&cli.global, a, out).await,
        Command::Rollout(a) => commands::rollout::run(&cli.global, a, out).await,
        Command::Policy(a) => commands::policy::run(&cli.global, a, out).await,
        Command::Version(a) => commands::version::run(&cli.global, a, out).await,
        Command::Completion { shell } => commands::write(out, &commands::completion::script(*shell)),
        Command::Complete { words } => commands::write(out, &commands::completion::complete(words)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
