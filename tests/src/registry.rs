//! A local OCI registry: `crane registry serve` on 127.0.0.1, plain HTTP, blobs in a temporary
//! folder (manifests live in its memory). containerd pulls from it as `localhost:PORT`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::binaries;
use crate::net;
use crate::process::{ManagedProcess, Watchdog};
use crate::wait::poll;

/// A running registry. Dropping it stops the process and removes its folder; if the test
/// process exits first, a watchdog does.
#[derive(Debug)]
pub struct Registry {
    // Stopped before the watchdog is dropped (field order).
    process: ManagedProcess,
    watchdog: Watchdog,
    dir: tempfile::TempDir,
    crane: PathBuf,
    port: u16,
}

impl Registry {
    /// Starts `crane registry serve --address 127.0.0.1:PORT` (a free port chosen by crane when
    /// `port` is `None`; `make dev` uses 5000) and waits until `GET /v2/` answers 200.
    pub fn start(port: Option<u16>) -> Result<Registry> {
        let started = Instant::now();
        let crane = binaries::bin_dir()?.join("crane");
        if !crane.is_file() {
            bail!("{} is missing; run tests/controlplane/build.sh", crane.display());
        }
        let dir = tempfile::Builder::new().prefix("imagemap-registry-").tempdir().context("creating a folder")?;
        let blobs = dir.path().join("blobs");
        std::fs::create_dir(&blobs)?;
        let mut watchdog = Watchdog::spawn(Some(dir.path()))?;
        let log = dir.path().join("registry.log");
        let mut command = Command::new(&crane);
        command
            .args(["registry", "serve", "--address"])
            .arg(format!("127.0.0.1:{}", port.unwrap_or(0)))
            .arg("--disk")
            .arg(&blobs)
            .current_dir(dir.path())
            .env_remove("PORT");
        let mut process = ManagedProcess::spawn_command("crane-registry", command, &log, &mut watchdog)?;
        // crane logs `serving on port N` once it listens (N is the chosen one for port 0).
        let mut exited = None;
        let found = poll(Duration::from_secs(60), Duration::from_millis(50), || {
            if let Err(e) = process.ensure_running() {
                exited = Some(e);
                return Some(None);
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find_map(|l| l.split_once("serving on port ").and_then(|(_, p)| p.trim().parse::<u16>().ok()))
                .map(Some)
        });
        if let Some(e) = exited {
            return Err(e);
        }
        let Some(Some(port)) = found else {
            bail!("crane registry did not report its port; log:\n{}", process.log_tail(20));
        };
        let ready = poll(Duration::from_secs(60), Duration::from_millis(50), || {
            net::http_get(port, "/v2/").ok().filter(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
        });
        if ready.is_none() {
            bail!("the registry on port {port} does not answer GET /v2/; log:\n{}", process.log_tail(20));
        }
        eprintln!("imagemap-e2e: registry at localhost:{port} ready in {:.1?}", started.elapsed());
        Ok(Registry { process, watchdog, dir, crane, port })
    }

    /// `localhost:PORT`, the registry part of image references.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The crane binary (push, digest, manifest...).
    pub fn crane(&self) -> &Path {
        &self.crane
    }

    /// The registry's folder (`blobs/`, `registry.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry process's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The last lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Runs `crane ARGS` (any exit status is an error with its stderr); returns stdout.
    pub fn crane_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(&self.crane);
        cmd.args(args);
        let output = crate::kubectl::run(cmd, None).context("running crane")?;
        crate::kubectl::check("crane", &output)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.watchdog.disarm();
        self.process.stop(crate::process::STOP_GRACE);
    }
}
