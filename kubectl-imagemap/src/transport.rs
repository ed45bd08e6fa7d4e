//! The plugin's HTTPS stack to the API server: rustls with ring, the kubeconfig's CA and client
//! certificate, and kube's own base-URI, auth and header layers on top.
//!
//! kube's `rustls-tls` feature links the operating system's certificate verifier (Security and
//! CoreFoundation on macOS), which cannot be linked without Apple's SDK; building the stack here
//! keeps the plugin one pure-Rust binary on every platform (docs/decisions.md). A kubeconfig
//! without a CA is trusted against Mozilla's roots on Apple targets and the system store elsewhere.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::{Client, Config};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::ExposeSecret;
use tower::ServiceBuilder;

/// How long connecting to the API server may take when the kubeconfig does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A kube client for `config` over the plugin's own TLS.
pub fn client(config: Config) -> Result<Client> {
    if let Some(proxy) = &config.proxy_url {
        return Err(anyhow!(
            "the kubeconfig's cluster sets proxy-url {proxy}, which kubectl imagemap does not support: \
             use a context without a proxy (or reach the API server directly)"
        ));
    }
    let tls = client_config(&config)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout.unwrap_or(CONNECT_TIMEOUT)));
    let mut https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = ServerName::try_from(name.clone())
            .map_err(|e| anyhow!("the kubeconfig's tls-server-name {name:?} is not a host name: {e}"))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let connector = https.enable_http1().wrap_connector(http);
    let http_client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().context("reading the kubeconfig's credentials")?)
        .layer(config.extra_headers_layer().context("reading the kubeconfig's impersonation headers")?)
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(Client::new(service, config.default_namespace))
}

/// The rustls configuration the kubeconfig asks for: its CA (else the platform's roots), its
/// client certificate if any, and no verification only under `insecure-skip-tls-verify`.
fn client_config(config: &Config) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots(config.root_cert.as_deref())?);
    let mut tls = match identity(config)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| anyhow!("the kubeconfig's client certificate and key do not fit together: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    if config.accept_invalid_certs {
        tls.dangerous().set_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)));
    }
    Ok(tls)
}

/// The kubeconfig's CA certificates (DER), else the platform's roots.
fn roots(ca: Option<&[Vec<u8>]>) -> Result<RootCertStore> {
    let Some(ca) = ca else { return platform_roots() };
    let mut store = RootCertStore::empty();
    for der in ca {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| anyhow!("the kubeconfig's certificate-authority is not a usable CA certificate: {e}"))?;
    }
    Ok(store)
}

/// Mozilla's roots, compiled in: Apple's trust store needs the Security framework.
#[cfg(target_vendor = "apple")]
fn platform_roots() -> Result<RootCertStore> {
    Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
}

/// The system's trust store (files on Linux, the certificate store on Windows).
#[cfg(not(target_vendor = "apple"))]
fn platform_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _unparsable) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return Err(anyhow!(
            "the kubeconfig names no certificate-authority and the system trust store has no usable \
             certificates ({why}): add certificate-authority-data to the cluster entry"
        ));
    }
    Ok(store)
}

/// The client certificate chain and key, from `client-certificate[-data]` and `client-key[-data]`.
fn identity(config: &Config) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let auth = &config.auth_info;
    let cert =
        pem_field("client-certificate", auth.client_certificate_data.as_deref(), auth.client_certificate.as_deref())?;
    let key_data = auth.client_key_data.as_ref().map(|k| k.expose_secret().to_string());
    let key = pem_field("client-key", key_data.as_deref(), auth.client_key.as_deref())?;
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err(anyhow!("the kubeconfig has a client-certificate but no client-key")),
        (None, Some(_)) => return Err(anyhow!("the kubeconfig has a client-key but no client-certificate")),
    };
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the kubeconfig's client-certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err(anyhow!("the kubeconfig's client-certificate holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| anyhow!("the kubeconfig's client-key is not a PEM private key: {e}"))?;
    Ok(Some((chain, key)))
}

/// A PEM field of the kubeconfig: base64 `*-data` (preferred, as kubectl does), else a file.
fn pem_field(field: &str, data: Option<&str>, path: Option<&str>) -> Result<Option<Vec<u8>>> {
    if let Some(data) = data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| anyhow!("the kubeconfig's {field}-data is not base64: {e}"))?;
        return Ok(Some(bytes));
    }
    path.map(|p| std::fs::read(p).with_context(|| format!("cannot read the kubeconfig's {field} {p}"))).transpose()
}

/// `insecure-skip-tls-verify: true`: any server certificate, signatures still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_ca_that_is_not_a_certificate_is_named() {
        let err = roots(Some(&[b"not DER".to_vec()])).expect_err("garbage CA");
        assert!(err.to_string().contains("certificate-authority"), "{err}");
    }

    #[test]
    fn client_certificate_data_must_be_base64() {
        let err = pem_field("client-certificate", Some("%%%"), None).expect_err("not base64");
        assert!(err.to_string().contains("client-certificate-data is not base64"), "{err}");
    }

    #[test]
    fn a_client_certificate_file_is_read_when_there_is_no_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, b"pem bytes").expect("write");
        let read = pem_field("client-certificate", None, path.to_str()).expect("read");
        assert_eq!(read.as_deref(), Some(&b"pem bytes"[..]));
        assert_eq!(pem_field("client-key", None, None).expect("absent"), None);
        let err = pem_field("client-key", None, Some("/nonexistent/key.pem")).expect_err("missing file");
        assert!(err.to_string().contains("cannot read the kubeconfig's client-key /nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn a_proxy_in_the_kubeconfig_is_refused_not_ignored() {
        let mut config = Config::new("https://127.0.0.1:6443".parse().expect("URL"));
        config.proxy_url = Some("http://proxy.example:3128".parse().expect("URL"));
        let err = client(config).err().expect("a proxy is refused");
        assert!(err.to_string().contains("proxy-url http://proxy.example:3128/"), "{err}");
    }

    #[test]
    fn platform_roots_are_not_empty() {
        assert!(!platform_roots().expect("roots").is_empty());
    }
}
