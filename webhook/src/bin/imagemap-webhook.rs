//! `imagemap-webhook`: the mutating admission webhook that swaps Pod images per ImageMap.

use std::io::IsTerminal;

use clap::{CommandFactory, Parser};
use imagemap_webhook::{config::LogFormat, logging::LogWriter, Config};

fn main() -> anyhow::Result<()> {
    if imagemap_webhook::check::requested() {
        return imagemap_webhook::check::main(); // `imagemap-webhook check`: the chart's helm test
    }
    let config = Config::parse();
    if let Err(why) = config.check() {
        Config::command().error(clap::error::ErrorKind::ArgumentConflict, why).exit();
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("invalid --log-level {:?}: {e}", config.log_level))?;
    // Lines are written to stderr by a background thread in batches (see `logging`), so a
    // review never waits on a write. Not lossy: a burst waits for room rather than losing lines.
    // The guard is declared before the runtime so it is dropped after it: every line is written
    // before exit (SIGTERM, error).
    let log = LogWriter::start(std::io::stderr())?;
    let _flush = log.guard;
    imagemap_webhook::logging::install(log.lines.clone(), config.log_format);
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log.lines)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        // Flat objects: the message and fields next to timestamp, level and target.
        LogFormat::Json => subscriber.json().flatten_event(true).init(),
        LogFormat::Plain => subscriber.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime
        .block_on(imagemap_webhook::run(config))
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "exiting"))
}
