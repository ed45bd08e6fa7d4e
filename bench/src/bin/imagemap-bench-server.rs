//! The transport baseline for `make bench`: a minimal axum + rustls HTTPS server, configured
//! like the webhook (tokio multi-thread runtime, rustls with ring, TLS 1.3/1.2, ALPN
//! `http/1.1`, hyper HTTP/1.1 keep-alive), that reads the request body and answers a fixed
//! "allowed" AdmissionReview without parsing anything. What it sustains is the limit the
//! webhook's own work is compared with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The fixed answer: allowed, no patch.
const ALLOWED: &[u8] = imagemap_bench::fixtures::ALLOWED_REVIEW;

#[derive(Parser)]
#[command(name = "imagemap-bench-server", about = "Minimal axum + rustls server answering a fixed allowed review")]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// PEM certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key.
    #[arg(long)]
    key: PathBuf,
}

async fn mutate(request: Request) -> Response {
    // Read the whole body, as the webhook must, but do nothing with it.
    let _ = request.into_body().collect().await;
    ([(header::CONTENT_TYPE, "application/json")], Body::from(Bytes::from_static(ALLOWED))).into_response()
}

fn tls_config(args: &Args) -> Result<Arc<rustls::ServerConfig>> {
    let cert = std::fs::read(&args.cert).with_context(|| format!("reading {}", args.cert.display()))?;
    let key = std::fs::read(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("certificate PEM {}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key).with_context(|| format!("key PEM {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let acceptor = TlsAcceptor::from(tls_config(&args)?);
    let router = Router::new().route("/mutate", post(mutate)).route("/readyz", get(|| async { "ok" }));
    let listener = imagemap_webhook::listener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    // The webhook's line, which the bench's launcher reads the port from (with --listen PORT 0).
    eprintln!("serving HTTPS listen={} address={}", args.listen, listener.local_addr().context("the bound address")?);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).keep_alive(true);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let http = http.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = http.serve_connection(TokioIo::new(tls), service).await;
            }
        });
    }
}
