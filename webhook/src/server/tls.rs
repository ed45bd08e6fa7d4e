//! The serving certificate: loaded from PEM files, reloaded when they change (Secret volumes swap
//! a symlink, so the files are polled by content), and a broken new pair keeps the old one serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::AppState;

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0} contains no PEM certificate")]
    NoCertificate(PathBuf),
    /// The key file holds no usable PEM private key.
    #[error("{path} contains no usable PEM private key{detail}")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// More detail, if any.
        detail: String,
    },
    /// The key does not belong to the certificate.
    #[error("private key {key} does not match certificate {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// The files and the pair currently served.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    loaded_bytes: RwLock<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

impl CertStore {
    /// Loads the pair; fails with a message naming the file at fault.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert_bytes, key_bytes) = read_pair(cert_path, key_path)?;
        let key = certified_key(cert_path, key_path, &cert_bytes, &key_bytes)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
            loaded_bytes: RwLock::new((cert_bytes, key_bytes)),
        }))
    }

    /// Re-reads the files; swaps in a changed valid pair. `Ok(false)` when unchanged; on error
    /// the old pair keeps serving.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_bytes, key_bytes) = read_pair(&self.cert_path, &self.key_path)?;
        {
            let loaded = self.loaded_bytes.read().unwrap_or_else(|p| p.into_inner());
            if loaded.0 == cert_bytes && loaded.1 == key_bytes {
                return Ok(false);
            }
        }
        let key = certified_key(&self.cert_path, &self.key_path, &cert_bytes, &key_bytes)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        *self.loaded_bytes.write().unwrap_or_else(|p| p.into_inner()) = (cert_bytes, key_bytes);
        Ok(true)
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration serving the store's current pair, TLS 1.2+, ALPN `http/1.1`,
/// with ring's cryptography. Fails only if the provider cannot do TLS 1.2 and 1.3.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Polls the files every `interval` and reloads on change, reporting in logs and metrics.
pub async fn watch(store: Arc<CertStore>, interval: Duration, state: Arc<AppState>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tick.tick().await;
        match store.reload() {
            Ok(false) => {
                // The files hold the pair being served again (e.g. a broken update reverted).
                if last_error.take().is_some() {
                    state.metrics.cert_reload(true);
                    tracing::info!(cert = %store.cert_path.display(), "certificate files are valid again");
                }
            }
            Ok(true) => {
                last_error = None;
                state.metrics.cert_reload(true);
                tracing::info!(cert = %store.cert_path.display(), "serving certificate reloaded");
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    state.metrics.cert_reload(false);
                    tracing::error!(error = %text, "new certificate pair is broken; still serving the previous one");
                    last_error = Some(text);
                }
            }
        }
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|error| TlsError::Read { path: p.to_path_buf(), error });
    Ok((read(cert)?, read(key)?))
}

fn certified_key(cert_path: &Path, key_path: &Path, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert[..]).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let no_key = |detail: String| TlsError::NoKey { path: key_path.to_path_buf(), detail };
    let der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
        .map_err(|e| no_key(format!(": {e}")))?
        .ok_or_else(|| no_key(String::new()))?;
    let signing = any_supported_type(&der).map_err(|e| no_key(format!(": {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| TlsError::Mismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() })?;
    Ok(certified)
}
