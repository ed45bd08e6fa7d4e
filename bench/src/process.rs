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
        Self::ready(process, watchdog, addr, spawn.certs, spawn.log, ready_path, timeout).await
    }

    /// Starts nginx (`master_process off`: one process, so its pid is the one that serves) with
    /// one worker on `core`, answering every request over TLS with `answer`: the reference
    /// fixed TLS answer. nginx cannot report a port it chose, so a free one is picked for it.
    pub async fn start_nginx(
        nginx: &Path,
        work: &Path,
        core: usize,
        certs: ServingSet,
        answer: &str,
    ) -> Result<Server> {
        let port = imagemap_e2e::net::free_ports(1)?[0];
        let dir = work.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("nginx.conf");
        std::fs::write(&config, nginx_config(&dir, port, &certs, answer))?;
        let log = work.join("nginx.log");
        let args: Vec<String> =
            ["-c", &core.to_string(), &nginx.display().to_string(), "-p", &dir.display().to_string()]
                .into_iter()
                .map(String::from)
                .chain(["-c".to_string(), config.display().to_string()])
                .collect();
        let mut watchdog = Watchdog::spawn(None)?;
        let process = ManagedProcess::spawn("nginx", Path::new("taskset"), &args, &log, &mut watchdog)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self::ready(process, watchdog, addr, certs, log, "/readyz", Duration::from_secs(30)).await
    }

    async fn ready(
        process: ManagedProcess,
        watchdog: Watchdog,
        addr: SocketAddr,
        certs: ServingSet,
        log: PathBuf,
        ready_path: &str,
        timeout: Duration,
    ) -> Result<Server> {
        let ca = std::fs::read(&certs.ca)?;
        let client = tls::client_config(&ca)?;
        let mut server = Server { process, _watchdog: watchdog, addr, certs, client, log };
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

/// nginx's configuration: one worker, no access log, keep-alive without a request limit, TLS
/// 1.3 with the same certificate kind as the webhook, `answer` to every request (nginx reads
/// and discards the request body, as a server that answers without parsing it does).
fn nginx_config(dir: &Path, port: u16, certs: &ServingSet, answer: &str) -> String {
    let quoted = answer.replace('\\', "\\\\").replace('\'', "\\'");
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000000;\n  keepalive_timeout 300s;\n\
           client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
           uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n\
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             location / {{ default_type application/json; return 200 '{quoted}'; }}\n  }}\n}}\n",
        dir = dir.display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
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
