//! The real `imagemap-webhook` serving the certificates it is given (the chart's, written into
//! a folder), on a port of its choosing on 127.0.0.1 ([`crate::launch`]), checked over HTTPS
//! under the host names a certificate should cover (`curl --resolve`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use imagemap_certs::{CertificateAuthority, Sans};
use serde_json::Value;

use crate::kubectl::text;
use crate::manifests::secret_data;
use crate::poll;
use crate::process::{ManagedProcess, Watchdog, STOP_GRACE};
use crate::webhook::{workspace_binary, WEBHOOK_BIN};

/// How long the webhook may take to answer `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP status of `GET https://HOST:PORT/PATH`, verifying the server's certificate with
/// `ca` and connecting to 127.0.0.1 whatever HOST is (`--resolve`); `Err` with curl's message
/// when the connection or the verification fails.
pub fn https_status(host: &str, port: u16, path: &str, ca: &Path) -> Result<u16, String> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    if !output.status.success() {
        return Err(format!("curl {}: {}", output.status, text(&output.stderr).trim()));
    }
    text(&output.stdout).trim().parse().map_err(|e| format!("curl printed no status: {e}"))
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` of a chart-made Secret into `dir`.
pub fn write_certificates(secret: &Value, dir: &Path) {
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.join(key), secret_data(secret, key)).expect("write a certificate file");
    }
}

/// Writes a CA and a serving pair for 127.0.0.1 of this test's own into `dir`: for a webhook
/// that must serve before the chart's certificate exists (its URL, in the chart's values, names
/// the port the webhook chose). [`write_certificates`] replaces them; the webhook reloads them.
pub fn write_placeholder_certificates(dir: &Path) {
    let ca = CertificateAuthority::new("imagemap-e2e placeholder CA", 1).expect("a CA");
    let mut sans = Sans::default();
    sans.add_host("127.0.0.1");
    let leaf = ca.serving("imagemap-e2e-placeholder", &sans, 1).expect("a serving certificate");
    imagemap_certs::write_serving_set(dir, &ca, &leaf).expect("write the certificates");
}

/// The real `imagemap-webhook` on 127.0.0.1:PORT (a port it chose), serving `tls.crt`/`tls.key`
/// from a folder. Stopped on drop; its watchdog kills it if the test process dies.
pub struct LocalWebhook {
    // Dropped first: SIGTERM, then SIGKILL after a grace period.
    process: ManagedProcess,
    _watchdog: Watchdog,
    dir: PathBuf,
    port: u16,
    log: PathBuf,
}

impl LocalWebhook {
    /// Starts the binary serving `dir/tls.crt` and `dir/tls.key` on `--listen 127.0.0.1:0` with
    /// `args` added, and returns once its log names the port it bound (not yet ready: see
    /// [`LocalWebhook::wait_ready`]). Logs to `dir/webhook.log`.
    pub fn start(dir: &Path, args: &[String]) -> LocalWebhook {
        let program = workspace_binary(WEBHOOK_BIN).unwrap_or_else(|e| panic!("{e:#}"));
        let mut all = vec![
            "--listen".to_string(),
            crate::launch::ANY_PORT.to_string(),
            "--tls-cert-file".into(),
            dir.join("tls.crt").display().to_string(),
            "--tls-private-key-file".into(),
            dir.join("tls.key").display().to_string(),
        ];
        all.extend(args.iter().cloned());
        let log = dir.join("webhook.log");
        let mut watchdog = Watchdog::spawn(None).expect("start a watchdog");
        let mut process = ManagedProcess::spawn(WEBHOOK_BIN, &program, &all, &log, &mut watchdog)
            .unwrap_or_else(|e| panic!("starting {}: {e:#}", program.display()));
        let port = process.wait_for_address().unwrap_or_else(|e| panic!("{e:#}")).port();
        LocalWebhook { process, _watchdog: watchdog, dir: dir.to_path_buf(), port, log }
    }

    /// Waits until `https://HOST:PORT/readyz` (HOST resolved to 127.0.0.1) answers 200, verified
    /// with the folder's `ca.crt`: that CA signed the certificate served, valid for `host`.
    /// Panics, with the log, after [`READY_TIMEOUT`] or if the process exits.
    pub fn wait_ready(&mut self, host: &str) {
        let ca = self.dir.join("ca.crt");
        let mut last = String::new();
        let ready = poll(READY_TIMEOUT, Duration::from_millis(100), || {
            if let Err(e) = self.process.ensure_running() {
                panic!("{e:#}");
            }
            match https_status(host, self.port, "/readyz", &ca) {
                Ok(200) => Some(()),
                Ok(code) => {
                    last = format!("HTTP {code}");
                    None
                }
                Err(e) => {
                    last = e;
                    None
                }
            }
        });
        assert!(
            ready.is_some(),
            "the webhook was not ready within {READY_TIMEOUT:?} (last: {last})\n{}",
            self.log_tail()
        );
    }

    /// The port it serves on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last lines of its log, with the log's path.
    pub fn log_tail(&self) -> String {
        format!("last lines of {}:\n{}", self.log.display(), crate::process::tail(&self.log, 30))
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(mut self) {
        self.process.stop(STOP_GRACE);
    }
}
