//! The HTTPS server over real sockets: TLS with certificates minted at test time, rotation,
//! broken pairs, timeouts, and bad input that never stops it serving.

mod common;

use std::time::{Duration, Instant};

use common::{request_on, Server};
use imagemap_webhook::{http::Limits, listener::Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn quick_timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_millis(500),
        header: Duration::from_millis(500),
        body: Duration::from_millis(500),
        idle: Duration::from_secs(2),
        shutdown: Duration::from_secs(5),
    }
}

async fn start() -> Server {
    Server::start(
        quick_timeouts(),
        Limits { max_body_bytes: 256 * 1024, ..Limits::default() },
        Duration::from_millis(100),
    )
    .await
}

async fn wait_for<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn serves_healthz_over_tls_with_http11_alpn() {
    let server = start().await;
    let reply = server.client().send("GET /healthz HTTP/1.1\r\nHost: x", b"").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    let stream = server.client().connect().await.expect("handshake");
    let version = stream.get_ref().1.protocol_version().expect("version");
    assert!(matches!(version, rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2));
}

#[tokio::test]
async fn rotates_to_a_new_certificate_without_restarting() {
    let server = start().await;
    let client = server.client();
    let before = client.peer_certificate().await;
    // A new CA and leaf: the client must trust the new CA to connect afterwards.
    let v2 = server.dir.join("..v2");
    std::fs::create_dir_all(&v2).expect("mkdir");
    let ca2 = common::mint(&v2);
    // Keep an open connection across the rotation: it must keep working.
    let mut open = client.connect().await.expect("handshake");
    server.swap_current(&v2);
    let new_client = common::Client::new(&ca2.cert_pem, server.addr);
    assert!(
        wait_for(|| {
            let c = new_client.clone();
            async move { c.connect().await.is_ok() }
        })
        .await,
        "new certificate served"
    );
    assert_ne!(new_client.peer_certificate().await, before);
    let reply = request_on(&mut open, "GET /healthz HTTP/1.1\r\nHost: x", b"", true).await;
    assert_eq!(reply.status, 200, "connections opened before the rotation keep working");
}

#[tokio::test]
async fn broken_new_pair_keeps_the_old_one_serving_and_is_reported() {
    let server = start().await;
    let client = server.client();
    let before = client.peer_certificate().await;
    let broken = server.dir.join("..broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("tls.crt"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .expect("write");
    std::fs::write(broken.join("tls.key"), "not a key").expect("write");
    server.swap_current(&broken);
    let metrics_say_broken =
        wait_for(|| {
            let c = client.clone();
            async move {
                c.send("GET /metrics HTTP/1.1\r\nHost: x", b"").await.body.contains("imagemap_tls_reload_broken 1")
            }
        })
        .await;
    assert!(metrics_say_broken, "the broken pair is reported in metrics");
    assert_eq!(client.peer_certificate().await, before, "still serving the old pair");
    // A mismatched pair (valid cert, someone else's key) is refused too.
    let mismatched = server.dir.join("..mismatch");
    std::fs::create_dir_all(&mismatched).expect("mkdir");
    let other = server.dir.join("..other");
    std::fs::create_dir_all(&other).expect("mkdir");
    common::mint(&mismatched);
    common::mint(&other);
    std::fs::copy(other.join("tls.key"), mismatched.join("tls.key")).expect("copy");
    server.swap_current(&mismatched);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.peer_certificate().await, before, "a mismatched pair is not served");
}

#[tokio::test]
async fn bad_input_never_stops_the_server_on_the_same_or_other_connections() {
    let server = start().await;
    let client = server.client();
    let mut conn = client.connect().await.expect("handshake");
    let bad = b"{\"apiVersion\": tru";
    let head =
        format!("POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}", bad.len());
    assert_eq!(request_on(&mut conn, &head, bad, false).await.status, 400);
    assert_eq!(request_on(&mut conn, "GET /nope HTTP/1.1\r\nHost: x", b"", false).await.status, 404);
    assert_eq!(request_on(&mut conn, "GET /mutate HTTP/1.1\r\nHost: x", b"", false).await.status, 405);
    let good = common::FIXTURE.as_bytes();
    let head =
        format!("POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}", good.len());
    let reply = request_on(&mut conn, &head, good, false).await;
    assert_eq!(reply.status, 200, "same connection still serves: {}", reply.body);
    assert_eq!(client.post(good).await.status, 200, "other connections too");
}

#[tokio::test]
async fn oversized_chunked_body_without_length_gets_413() {
    let server = start().await;
    let mut conn = server.client().connect().await.expect("handshake");
    conn.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .expect("write");
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let mut reply = Vec::new();
    // Send chunks until the server answers; it must answer before the whole body is sent.
    while sent < 4 * 1024 * 1024 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if conn.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(5), conn.read(&mut buf)).await {
            reply.extend_from_slice(&buf[..n]);
            if n > 0 {
                break;
            }
        }
    }
    if reply.is_empty() {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap_or(0);
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(sent < 4 * 1024 * 1024, "answered before buffering everything");
}

#[tokio::test]
async fn half_sent_headers_are_closed_at_the_header_timeout() {
    let server = start().await;
    let mut conn = server.client().connect().await.expect("handshake");
    conn.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection closed by the server");
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the timeout");
    assert_eq!(server.client().send("GET /healthz HTTP/1.1\r\nHost: x", b"").await.status, 200);
}

#[tokio::test]
async fn tcp_connections_that_never_start_tls_are_closed_at_the_handshake_timeout() {
    let server = start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed: {closed:?}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let server = start().await;
    let mut conn = server.client().connect().await.expect("handshake");
    assert_eq!(request_on(&mut conn, "GET /healthz HTTP/1.1\r\nHost: x", b"", false).await.status, 200);
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), conn.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "idle connection closed by the server");
}

#[tokio::test]
async fn shutdown_drains_then_stops_accepting() {
    let mut server = start().await;
    assert_eq!(server.client().send("GET /healthz HTTP/1.1\r\nHost: x", b"").await.status, 200);
    server.stop().await;
    assert!(server.client().connect().await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn a_busy_keep_alive_connection_outlives_the_request_timeout_and_then_idles_out() {
    let server = start().await;
    let mut conn = server.client().connect().await.expect("handshake");
    // Requests back to back for three times the header + body timeout (1 s): each is answered
    // in time, so the connection stays open however long it has been busy.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let reply = request_on(&mut conn, "GET /healthz HTTP/1.1\r\nHost: x", b"", false).await;
        assert_eq!(reply.status, 200, "request {answered} after {:?}", started.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then idle: closed after the idle timeout (2 s), not before half of it.
    let idle_from = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "idle connection closed by the server");
    assert!(idle_from.elapsed() >= Duration::from_secs(1), "closed after {:?}", idle_from.elapsed());
}
