//! Shared helpers for the webhook's tests: certificates minted at test time, an in-process
//! HTTPS server, and a raw TLS client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imagemap_certs::{CertificateAuthority, Sans};
use imagemap_webhook::{http::Limits, listener, tls, AppState};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `imagemap-webhook` binary (killed on drop), its folder and its log.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// The `--imagemaps-file`.
    pub maps: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The launcher every test and benchmark shares (`tests/src/launch.rs`): start a server binary
/// on port 0 and read the address it bound from its log.
#[path = "../../../tests/src/launch.rs"]
pub mod launcher;

/// Starts the binary with `--no-cluster`, `maps` as `--imagemaps-file`, a certificate minted
/// into its folder, `--listen 127.0.0.1:0` and `extra`; returns once its log names the address
/// it bound (no port picked beforehand, so no race with another process taking it), with a
/// client trusting its CA. Does not wait for readiness.
pub fn launch(maps: &str, extra: &[&str]) -> (Binary, Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = mint(dir.path());
    let maps_path = dir.path().join("maps.json");
    std::fs::write(&maps_path, maps).expect("write maps");
    let log = dir.path().join("webhook.log");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_imagemap-webhook"));
    command
        .args(["--no-cluster", "--listen", launcher::ANY_PORT])
        .arg("--imagemaps-file")
        .arg(&maps_path)
        .arg("--tls-cert-file")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-private-key-file")
        .arg(dir.path().join("tls.key"))
        .args(extra);
    let (child, addr) = launcher::spawn(command, &log).unwrap_or_else(|e| panic!("the webhook did not serve: {e:#}"));
    let client = Client::new(&ca.cert_pem, addr);
    (Binary { child, addr, dir, log, maps: maps_path }, client)
}

/// Connections the test servers serve at once (the binary's default).
pub const MAX_CONNECTIONS: usize = 4096;

pub const FIXTURE: &str = include_str!("../../core/tests/fixtures/pod-create-review.json");

/// A CA and a serving pair for 127.0.0.1 written into `dir` (ca.crt, tls.crt, tls.key).
pub fn mint(dir: &Path) -> CertificateAuthority {
    let ca = CertificateAuthority::new("test CA", 1).expect("ca");
    write_leaf(&ca, dir);
    ca
}

/// Writes a fresh serving pair signed by `ca` into `dir`.
pub fn write_leaf(ca: &CertificateAuthority, dir: &Path) {
    let mut sans = Sans::default();
    sans.add_host("127.0.0.1");
    let leaf = ca.serving("imagemap-test", &sans, 1).expect("leaf");
    imagemap_certs::write_serving_set(dir, ca, &leaf).expect("write");
}

/// A running in-process server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub ca_pem: String,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Starts a server on 127.0.0.1:0 with certificates in a `certs` dir reached through a
    /// `current` symlink, the way Secret volumes are laid out.
    pub async fn start(timeouts: listener::Timeouts, limits: Limits, reload: Duration) -> Server {
        Self::start_with(timeouts, limits, reload, MAX_CONNECTIONS).await
    }

    /// Like [`Server::start`], serving at most `max_connections` connections at once.
    pub async fn start_with(
        timeouts: listener::Timeouts,
        limits: Limits,
        reload: Duration,
        max_connections: usize,
    ) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = tmp.path().join("..v1");
        std::fs::create_dir_all(&first).expect("mkdir");
        let ca = mint(&first);
        let current = tmp.path().join("current");
        std::os::unix::fs::symlink(&first, &current).expect("symlink");
        let state = AppState::new(None, limits);
        let store = tls::CertStore::load(&current.join("tls.crt"), &current.join("tls.key")).expect("load");
        state.cert_loaded.store(true, std::sync::atomic::Ordering::Release);
        state.synced.store(true, std::sync::atomic::Ordering::Release);
        tokio::spawn(tls::watch(store.clone(), reload, state.clone()));
        let listener = listener::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = imagemap_webhook::router(state.clone());
        let done = tokio::spawn(listener::serve(
            listener,
            tls::server_config(store).expect("a TLS config"),
            router,
            timeouts,
            max_connections,
            async {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            state,
            ca_pem: ca.cert_pem.clone(),
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Stops accepting and drains.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    /// Points the `current` certificate symlink at `new_dir` atomically, as a Secret volume
    /// update does.
    pub fn swap_current(&self, new_dir: &Path) {
        let tmp_link = self.dir.join("current.tmp");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(new_dir, &tmp_link).expect("symlink");
        std::fs::rename(&tmp_link, self.dir.join("current")).expect("rename");
    }

    /// A TLS client trusting this server's CA.
    pub fn client(&self) -> Client {
        Client::new(&self.ca_pem, self.addr)
    }
}

/// A raw HTTPS client: one connection per call unless kept.
#[derive(Clone)]
pub struct Client {
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
}

/// An HTTP response as raw parts.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Client {
    pub fn new(ca_pem: &str, addr: SocketAddr) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(ca_pem) {
            roots.add(cert).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), addr }
    }

    /// Connects and completes a handshake; returns the stream.
    pub async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        self.connector.connect(name, tcp).await
    }

    /// The DER of the certificate the server presents on a new handshake.
    pub async fn peer_certificate(&self) -> Vec<u8> {
        let stream = self.connect().await.expect("handshake");
        stream.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
    }

    /// Sends `head` (request line and headers, without the blank line) and `body` on a new
    /// connection with `Connection: close`, and reads the reply.
    pub async fn send(&self, head: &str, body: &[u8]) -> Reply {
        let mut stream = self.connect().await.expect("handshake");
        request_on(&mut stream, head, body, true).await
    }

    /// POSTs JSON to `/mutate`.
    pub async fn post(&self, body: &[u8]) -> Reply {
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        );
        self.send(&head, body).await
    }
}

/// Sends one request on an open stream; reads a `Content-Length` reply (keeps the connection
/// usable unless `close`).
pub async fn request_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    head: &str,
    body: &[u8],
    close: bool,
) -> Reply {
    let mut req = head.as_bytes().to_vec();
    if close {
        req.extend_from_slice(b"\r\nConnection: close");
    }
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body);
    stream.write_all(&req).await.expect("write");
    read_reply(stream).await
}

async fn read_reply<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("len"))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return Reply { status, body };
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a reply: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Every certificate of a PEM text; a broken block fails the test.
fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().expect("PEM certificates")
}

fn decode_b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).expect("base64")
}

/// Decodes a response review's base64 patch and applies it to the fixture's object.
pub fn apply_response_patch(request: &serde_json::Value, response: &serde_json::Value) -> serde_json::Value {
    let mut object = request["request"]["object"].clone();
    if let Some(b64) = response["response"]["patch"].as_str() {
        let patch: json_patch::Patch = serde_json::from_slice(&decode_b64(b64)).expect("patch json");
        json_patch::patch(&mut object, &patch).expect("patch applies");
    }
    object
}

impl Client {
    /// A client trusting `ca_pem` (one or more CAs) that never resumes a TLS session, so every
    /// connection is a full handshake in which the server presents its current certificate (as
    /// Go clients without a session cache, such as the API server's, do).
    pub fn without_resumption(ca_pem: &str, addr: SocketAddr) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(ca_pem) {
            roots.add(cert).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Client { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), addr }
    }
}

/// Like [`request_on`], but returns errors (including a connection closed before the whole
/// reply) instead of panicking: for load generators that count failures.
pub async fn try_request_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    head: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<Reply> {
    let mut req = head.as_bytes().to_vec();
    if close {
        req.extend_from_slice(b"\r\nConnection: close");
    }
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body);
    stream.write_all(&req).await?;
    try_read_reply(stream).await
}

/// Reads one `Content-Length` reply; errors instead of panicking.
pub async fn try_read_reply<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Reply> {
    use std::io::{Error, ErrorKind};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, format!("no status line in {head:?}")))?;
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .map(|v| v.parse::<usize>().map_err(|e| Error::new(ErrorKind::InvalidData, e)))
                .transpose()?
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed mid-body"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return Ok(Reply { status, body });
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed before a reply"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head of a `POST /mutate` with a JSON body of `len` bytes (no trailing blank line).
pub fn mutate_head(len: usize) -> String {
    format!("POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}")
}

/// The DER of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    pem_certs(pem).into_iter().next().expect("a PEM certificate").to_vec()
}

/// Waits until the peer closes `stream` (EOF or an error such as a reset); `Err` if it is
/// still open after `limit`.
pub async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Result<(), ()> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => continue,
        }
    }
}
