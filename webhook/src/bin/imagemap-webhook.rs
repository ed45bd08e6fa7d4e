//! `imagemap-webhook`: the mutating admission webhook that swaps Pod images per ImageMap.

use std::io::IsTerminal;

use clap::Parser;
use imagemap::server::{config::LogFormat, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", config.log_level))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Plain => logs.init(),
    }
    imagemap::server::run(config).await.inspect_err(|e| tracing::error!(error = format!("{e:#}"), "exiting"))
}
