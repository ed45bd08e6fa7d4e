//! Starting a server binary of this workspace (`imagemap-webhook` in either role,
//! `imagemap-bench-server`) on `--listen 127.0.0.1:0` and reading the address it bound back from
//! its log: no port is picked beforehand, so no other process can take it between a pick and the
//! bind.
//!
//! The one implementation behind every launcher: the webhook crate's own tests ([`spawn`]; they
//! include this file with `#[path]`, so it needs nothing but std and anyhow), the e2e harness
//! ([`crate::process::ManagedProcess::wait_for_address`]) and the benchmarks. Both roles of the
//! webhook (`--role serve`, and `--role controller`, whose one listener serves /healthz, /readyz
//! and /metrics) log the same line once bound.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `--listen` value that lets the kernel choose a free port on loopback.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// The message of the line the binaries log once bound, with an `address` field (`info` level).
pub const SERVING: &str = "serving HTTPS";

/// How long a binary may take to log its address (it binds before any API server is reached,
/// but after loading `--imagemaps-file`).
pub const ADDRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The `address` of the first [`SERVING`] line of `log`, plain (`address=127.0.0.1:PORT`) or
/// JSON (`"address":"127.0.0.1:PORT"`).
pub fn bound_address(log: &str) -> Option<SocketAddr> {
    log.lines().filter(|line| line.contains(SERVING)).find_map(|line| {
        ["address=", "\"address\":\""].iter().find_map(|key| {
            let (_, rest) = line.split_once(key)?;
            let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == ',').unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
    })
}

/// Sends `command`'s stdout and stderr to a new file `log` and closes its stdin.
pub fn log_to(command: &mut Command, log: &Path) -> Result<()> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file handle")?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    Ok(())
}

/// Waits (at most `timeout`) until `log` names the address its process bound. `running` fails
/// once the process has exited; that error is returned, as is a timeout, with the log's end.
pub fn wait_for_address(log: &Path, timeout: Duration, mut running: impl FnMut() -> Result<()>) -> Result<SocketAddr> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read(log).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
        if let Some(address) = bound_address(&text) {
            return Ok(address);
        }
        let tail = || text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        running().with_context(|| format!("it exited before logging {SERVING:?}; {}:\n{}", log.display(), tail()))?;
        if Instant::now() >= deadline {
            bail!("no {SERVING:?} line with an address in {} after {timeout:?}:\n{}", log.display(), tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `command` (its output into `log`, stdin closed) and waits until it logs its address;
/// kills it if it does not within [`ADDRESS_TIMEOUT`].
pub fn spawn(mut command: Command, log: &Path) -> Result<(Child, SocketAddr)> {
    log_to(&mut command, log)?;
    let mut child = command.spawn().with_context(|| format!("starting {:?}", command.get_program()))?;
    let waited = wait_for_address(log, ADDRESS_TIMEOUT, || match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => bail!("{status}"),
        Err(e) => bail!("checking on it: {e}"),
    });
    match waited {
        Ok(address) => Ok((child, address)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}
