//! Servers under test as child processes: the release `imagemap-webhook` and
//! `imagemap-bench-server`, optionally pinned to one core, killed with the bench (the e2e
//! harness's process group + watchdog). Each binds a port of its choosing on 127.0.0.1, read
//! back from its log ([`imagemap_e2e::launch`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use imagemap_e2e::process::{ManagedProcess, Watchdog};

use crate::tls::{self, ServingSet};

/// A running server process on 127.0.0.1.
pub struct Server {
    // Dropped first: the process stops before its watchdog is disarmed.
    process: ManagedProcess,
    _watchdog: Watchdog,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificates.
    pub certs: ServingSet,
    client: Arc<rustls::ClientConfig>,
    log: PathBuf,
}

/// How to start a server.
pub struct Spawn<'a> {
    /// A name for logs.
    pub name: &'a str,
    /// The binary.
    pub program: &'a Path,
    /// Flags after the common ones.
    pub args: Vec<String>,
    /// `taskset -c CORE` when set.
    pub core: Option<usize>,
    /// Certificates to serve.
    pub certs: ServingSet,
    /// Where the log goes.
    pub log: PathBuf,
    /// The flag style: the webhook's (`--tls-cert-file`) or the bench server's (`--cert`).
    pub webhook_flags: bool,
}

impl Server {
    /// Starts the server on a port it chooses, reads that port from its log, and waits until
    /// `GET ready_path` answers 200 (at most `timeout`).
    pub async fn start(spawn: Spawn<'_>, ready_path: &str, timeout: Duration) -> Result<Server> {
        let (cert_flag, key_flag) =
            if spawn.webhook_flags { ("--tls-cert-file", "--tls-private-key-file") } else { ("--cert", "--key") };
        let mut args: Vec<String> = Vec::new();
        let program: PathBuf = match spawn.core {
            Some(core) => {
                args.extend(["-c".to_string(), core.to_string(), spawn.program.display().to_string()]);
                PathBuf::from("taskset")
            }
            None => spawn.program.to_path_buf(),
        };
        args.extend([
            "--listen".to_string(),
            imagemap_e2e::launch::ANY_PORT.to_string(),
            cert_flag.into(),
            spawn.certs.cert.display().to_string(),
            key_flag.into(),
            spawn.certs.key.display().to_string(),
        ]);
        args.extend(spawn.args);
        let mut watchdog = Watchdog::spawn(None)?;
        let mut process = ManagedProcess::spawn(spawn.name, &program, &args, &spawn.log, &mut watchdog)?;
        // Blocks the (current-thread) runtime, which has nothing else to run while a server starts.
        let addr = process.wait_for_address()?;
        let ca = std::fs::read(&spawn.certs.ca)?;
        let client = tls::client_config(&ca)?;
        let mut server = Server { process, _watchdog: watchdog, addr, certs: spawn.certs, client, log: spawn.log };
        server.wait_ready(ready_path, timeout).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, path: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.process.ensure_running()?;
            if let Ok((200, _)) = self.get(path).await {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} not ready after {timeout:?}; log {}:\n{}",
                    self.process.name(),
                    self.log.display(),
                    self.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id (read /proc with it).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A TLS client config trusting this server.
    pub fn client(&self) -> &Arc<rustls::ClientConfig> {
        &self.client
    }

    /// `GET path`: (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        tls::get(&self.client, self.addr, path).await
    }

    /// A gauge or counter from `/metrics` (first sample whose name is `name`).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name || key.starts_with(&format!("{name}{{"))).then(|| value.parse::<f64>().ok()).flatten()
            })
            .with_context(|| format!("/metrics has no {name}"))
    }

    /// The log's last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Fails if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// Names the `imagemap-webhook` binary to measure instead of the one next to `imagemap-bench`:
/// `bench.sh` sets it to the container image's binary (`scripts/image.sh binary`).
pub const WEBHOOK_ENV: &str = "IMAGEMAP_BENCH_WEBHOOK";

/// `target/release/NAME` next to the running `imagemap-bench` (for `imagemap-webhook`,
/// `$IMAGEMAP_BENCH_WEBHOOK` when set).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    if name == "imagemap-webhook" {
        if let Some(path) = std::env::var_os(WEBHOOK_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("{WEBHOOK_ENV}={} is not a file", path.display());
            }
            return Ok(path);
        }
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no folder for the running binary")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!("{} is not built: run `cargo build --release -p imagemap-webhook -p imagemap-bench`", path.display());
    }
    Ok(path)
}
