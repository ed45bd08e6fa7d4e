//! `imagemap-webhook`: the mutating admission webhook that swaps Pod images per ImageMap.

use std::io::IsTerminal;

use clap::Parser;
use imagemap::server::{config::LogFormat, http, log_format::LineFormat, log_writer::BatchedWriter, Config};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", config.log_level))?;
    // Declared before the runtime so it is dropped after it: every line is written before exit.
    let (writer, _flush) = BatchedWriter::new(std::io::stderr(), http::LOG_TARGET);
    let (json, ansi) = (matches!(config.log_format, LogFormat::Json), std::io::stderr().is_terminal());
    if !ansi {
        http::install_decision_log(http::DecisionLog { writer: writer.clone(), json });
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .event_format(LineFormat { json })
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime
        .block_on(imagemap::server::run(config))
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "exiting"))
}
