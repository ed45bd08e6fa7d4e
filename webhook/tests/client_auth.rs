//! Client certificates (`--client-ca-file`): with a client CA, `/mutate` answers only clients
//! presenting a certificate it issued, a certificate from another CA fails the handshake, and
//! the probes (which present none) keep answering.

mod common;

use std::sync::Arc;

use common::{request_on, try_request_on, FIXTURE};
use imagemap_certs::CertificateAuthority;
use imagemap_webhook::{http::Limits, listener, tls, AppState};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A server whose client CA is `client_ca` (none: no client authentication, as without
/// `--client-ca-file`); returns its address, its CA and a stop sender.
async fn start(
    client_ca: Option<&CertificateAuthority>,
) -> (std::net::SocketAddr, String, tokio::sync::oneshot::Sender<()>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_ca = common::mint(dir.path());
    let ca_file = dir.path().join("client-ca.crt");
    if let Some(ca) = client_ca {
        std::fs::write(&ca_file, &ca.cert_pem).expect("write");
    }
    let state = AppState::new(None, Limits::default());
    state.cert_loaded.store(true, std::sync::atomic::Ordering::Release);
    state.synced.store(true, std::sync::atomic::Ordering::Release);
    let map = imagemap_core::types::ImageMap::for_selector("dev", "api", "my-apiserver").with_image("r.io/app:1");
    state.update_index(|idx| idx.replace_cluster([&map]));
    let store = tls::CertStore::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).expect("load");
    let config = tls::server_config_with_client_ca(store, client_ca.map(|_| ca_file.as_path())).expect("a TLS config");
    let required = client_ca.is_some();
    let listener = listener::bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = imagemap_webhook::router(state);
    tokio::spawn(async move {
        let _dir = dir;
        let stop = async {
            let _ = rx.await;
        };
        listener::serve_with_client_auth(listener, config, router, Default::default(), 64, required, stop).await;
    });
    (addr, server_ca.cert_pem, tx)
}

/// A TLS connection presenting `identity` (a client certificate and key), if any.
async fn connect(
    addr: std::net::SocketAddr,
    server_ca: &str,
    identity: Option<&imagemap_certs::LeafCertificate>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(server_ca.as_bytes()).expect("CA")).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = connector.connect(ServerName::IpAddress(addr.ip().into()), tcp).await?;
    // TLS 1.3 reports a refused client certificate only on the first read: a request shows it.
    let probe = try_request_on(&mut stream, "GET /healthz HTTP/1.1\r\nHost: x", b"", false).await?;
    assert_eq!(probe.status, 200);
    Ok(stream)
}

async fn post_review(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) -> common::Reply {
    request_on(stream, &common::mutate_head(FIXTURE.len()), FIXTURE.as_bytes(), false).await
}

#[tokio::test]
async fn with_a_client_ca_reviews_need_its_certificate_and_probes_need_none() {
    let client_ca = CertificateAuthority::new("API server client CA", 1).expect("ca");
    let (addr, server_ca, _stop) = start(Some(&client_ca)).await;

    // The API server's identity, issued by the client CA: reviewed.
    let apiserver = client_ca.client("kube-apiserver", &[], 1).expect("client cert");
    let mut conn = connect(addr, &server_ca, Some(&apiserver)).await.expect("handshake with a good certificate");
    let reply = post_review(&mut conn).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("\"patchType\":\"JSONPatch\""), "{}", reply.body);

    // No certificate (as the kubelet's probes): probes answer, reviews are refused.
    let mut conn = connect(addr, &server_ca, None).await.expect("handshake without a certificate");
    let readyz = request_on(&mut conn, "GET /readyz HTTP/1.1\r\nHost: x", b"", false).await;
    assert_eq!(readyz.status, 200, "{}", readyz.body);
    let reply = post_review(&mut conn).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("--client-ca-file"), "{}", reply.body);

    // A certificate from another CA: the handshake fails.
    let other_ca = CertificateAuthority::new("someone else", 1).expect("ca");
    let stranger = other_ca.client("kube-apiserver", &[], 1).expect("client cert");
    assert!(connect(addr, &server_ca, Some(&stranger)).await.is_err(), "a foreign certificate is refused");
}

#[tokio::test]
async fn without_a_client_ca_reviews_need_no_certificate() {
    let (addr, server_ca, _stop) = start(None).await;
    let mut conn = connect(addr, &server_ca, None).await.expect("handshake without a certificate");
    let reply = post_review(&mut conn).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn a_client_ca_file_without_certificates_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::mint(dir.path());
    let store = tls::CertStore::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).expect("load");
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, "not a certificate").expect("write");
    let e = tls::server_config_with_client_ca(store, Some(&ca_file)).expect_err("no CA");
    assert!(e.to_string().ends_with("client-ca.crt contains no PEM certificate"), "{e}");
}
