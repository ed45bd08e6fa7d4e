//! The serving certificate: loaded from PEM files, reloaded when they change (Secret volumes swap
//! a symlink, so the files are polled by content), and a broken new pair keeps the old one serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::{self, PemObject};
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
    /// The certificate file holds a PEM block that cannot be decoded.
    #[error("{path} contains a broken PEM block: {detail}")]
    BrokenCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with the block.
        detail: String,
    },
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
    /// The client CA file holds certificates rustls cannot verify clients with.
    #[error("{path} cannot verify client certificates: {detail}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
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

/// Like [`server_config`]; with `client_ca` (a PEM file of one or more CA certificates), a
/// client that presents a certificate must present one issued by those CAs, or the handshake
/// fails. A client may still present none: the kubelet's HTTPS probes do not, so `/healthz`
/// and `/readyz` keep answering, and the listener marks such connections
/// ([`crate::http::ClientAuth::Missing`]) so that `/mutate` refuses them (see
/// [`crate::listener::serve_with_client_auth`]). The file is read once, at start.
pub fn server_config_with_client_ca(
    store: Arc<CertStore>,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let Some(path) = client_ca else { return Ok(server_config(store)?) };
    let bytes = std::fs::read(path).map_err(|error| TlsError::Read { path: path.to_path_buf(), error })?;
    let cas = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| {
        TlsError::BrokenCertificate { path: path.to_path_buf(), detail: imagemap_cluster::pem::describe_error(&e) }
    })?;
    if cas.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    let client_ca = |detail: String| TlsError::ClientCa { path: path.to_path_buf(), detail };
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| client_ca(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| client_ca(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
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
    let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().map_err(|e| {
        TlsError::BrokenCertificate { path: cert_path.to_path_buf(), detail: imagemap_cluster::pem::describe_error(&e) }
    })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let no_key = |detail: String| TlsError::NoKey { path: key_path.to_path_buf(), detail };
    let der = match PrivateKeyDer::from_pem_slice(key) {
        Ok(der) => der,
        Err(pem::Error::NoItemsFound) => return Err(no_key(String::new())),
        Err(e) => return Err(no_key(format!(": {}", imagemap_cluster::pem::describe_error(&e)))),
    };
    let signing = any_supported_type(&der).map_err(|e| no_key(format!(": {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|_| TlsError::Mismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() })?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagemap_certs::{CertificateAuthority, Sans};

    /// A CA and a serving pair for `127.0.0.1`: (CA PEM, leaf PEM, key PEM).
    fn pair() -> (String, String, String) {
        let ca = CertificateAuthority::new("test CA", 1).expect("ca");
        let mut sans = Sans::default();
        sans.add_host("127.0.0.1");
        let leaf = ca.serving("imagemap-test", &sans, 1).expect("leaf");
        (ca.cert_pem, leaf.cert_pem, leaf.key_pem)
    }

    /// Loads `cert` and `key` written to `tls.crt` and `tls.key`; the error as text.
    fn load(cert: &str, key: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert).expect("write");
        std::fs::write(&key_path, key).expect("write");
        CertStore::load(&cert_path, &key_path).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_pair_and_a_chain_with_the_ca_load() {
        let (ca, cert, key) = pair();
        load(&cert, &key).expect("pair");
        load(&format!("{cert}{ca}"), &key).expect("chain");
    }

    #[test]
    fn a_broken_certificate_block_is_refused_naming_the_file() {
        let (ca, cert, key) = pair();
        // A corrupted CA block after a good leaf: the chain must not silently lose it.
        let corrupted = ca.replacen("MII", "MI!", 1);
        let e = load(&format!("{cert}{corrupted}"), &key).expect_err("bad base64");
        assert!(e.contains("tls.crt contains a broken PEM block: the block is not valid base64"), "{e}");
        // A block cut short.
        let cut = &ca[..ca.find("-----END").expect("end line")];
        let e = load(&format!("{cert}{cut}"), &key).expect_err("no END line");
        assert!(e.contains("tls.crt contains a broken PEM block: the CERTIFICATE block has no END line"), "{e}");
        let e = load(&cert.replace("-----BEGIN CERTIFICATE-----", "-----BEGIN CERTIFICATE---"), &key)
            .expect_err("bad BEGIN line");
        assert!(e.contains("tls.crt contains a broken PEM block: malformed BEGIN line"), "{e}");
        // No PEM at all is still reported as such.
        let e = load("garbage", &key).expect_err("no PEM");
        assert!(e.ends_with("tls.crt contains no PEM certificate"), "{e}");
    }

    #[test]
    fn a_missing_or_broken_key_is_refused_naming_the_file() {
        let (_, cert, key) = pair();
        let e = load(&cert, "garbage").expect_err("no key");
        assert!(e.ends_with("tls.key contains no usable PEM private key"), "{e}");
        let cut = &key[..key.find("-----END").expect("end line")];
        let e = load(&cert, cut).expect_err("cut key");
        assert!(
            e.ends_with("tls.key contains no usable PEM private key: the PRIVATE KEY block has no END line"),
            "{e}"
        );
        let (_, _, other_key) = pair();
        let e = load(&cert, &other_key).expect_err("mismatch");
        assert!(e.contains("does not match certificate"), "{e}");
    }
}
