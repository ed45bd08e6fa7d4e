//! Certificates for the servers under test (ECDSA P-256 as the chart makes them, RSA 2048 for
//! comparison) and a TLS client with session resumption off, so that every connection is a
//! full handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use imagemap_certs::{CertificateAuthority, Sans};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key type of a serving certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256 (what the chart, cert-manager mode and `imagemap-certs` make).
    EcdsaP256,
    /// RSA 2048.
    Rsa2048,
}

impl KeyType {
    /// A label for reports.
    pub fn label(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::Rsa2048 => "RSA 2048",
        }
    }
}

/// `ca.crt`, `tls.crt`, `tls.key` for `127.0.0.1` in `dir`.
#[derive(Debug, Clone)]
pub struct ServingSet {
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    /// The serving certificate (PEM file).
    pub cert: PathBuf,
    /// The serving key (PEM file).
    pub key: PathBuf,
}

/// Mints a CA and a serving pair for 127.0.0.1 of `key_type` into `dir`.
pub fn mint(dir: &Path, key_type: KeyType) -> Result<ServingSet> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match key_type {
        KeyType::EcdsaP256 => {
            let ca = CertificateAuthority::new("imagemap-bench CA", 2)?;
            let mut sans = Sans::default();
            sans.add_host("127.0.0.1");
            let leaf = ca.serving("imagemap-bench", &sans, 2)?;
            imagemap_certs::write_serving_set(dir, &ca, &leaf)?;
        }
        KeyType::Rsa2048 => mint_rsa(dir)?,
    }
    Ok(ServingSet { ca: dir.join("ca.crt"), cert: dir.join("tls.crt"), key: dir.join("tls.key") })
}

/// rcgen with ring cannot generate RSA keys, so the openssl command line makes them: an RSA CA
/// and an RSA leaf (`CA:FALSE`, SAN `IP:127.0.0.1`) signed by it.
fn mint_rsa(dir: &Path) -> Result<()> {
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (needed for the RSA certificate)")?;
        if !out.status.success() {
            bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )?;
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "ca.key"])?;
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=imagemap-bench RSA CA",
        "-out",
        "ca.crt",
    ])?;
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "tls.key"])?;
    openssl(&["req", "-new", "-key", "tls.key", "-subj", "/CN=imagemap-bench", "-out", "tls.csr"])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "leaf.ext",
        "-out",
        "tls.crt",
    ])?;
    Ok(())
}

/// A rustls client trusting `ca_pem` only, TLS 1.3/1.2 as rustls defaults, no session
/// resumption (every connection is a full handshake, as the API server's webhook client does
/// when it opens a connection).
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("bad CA PEM")?).context("adding the CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a TLS connection to `addr` (a full handshake).
pub async fn connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.context("TLS handshake")?;
    Ok(stream)
}

/// `GET path` over a new TLS connection with `Connection: close`: (status, body).
pub async fn get(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let fetch = async {
        let mut stream = connect(config, addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        // The server closes after the reply; a missing close_notify is fine here.
        let _ = stream.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).context("no HTTP status")?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fetch).await.context("GET timed out")?
}
