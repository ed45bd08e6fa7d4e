//! The HTTPS listener: TLS handshakes with a timeout, HTTP/1.1 with header and idle timeouts,
//! and graceful shutdown on SIGTERM (readiness fails first, in-flight requests finish).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::http::ClientAuth;
use super::AppState;

/// Connection-level timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TLS handshake.
    pub handshake: Duration,
    /// From a request's first byte until its headers have arrived (the body then gets `body`
    /// more); a connection past that is closed.
    pub header: Duration,
    /// Receiving a request's body, on top of `header`.
    pub body: Duration,
    /// Idle keep-alive connections.
    pub idle: Duration,
    /// Draining in-flight requests at shutdown.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(5),
            header: Duration::from_secs(5),
            body: Duration::from_secs(10),
            idle: Duration::from_secs(90),
            shutdown: Duration::from_secs(20),
        }
    }
}

/// What one `recv` on a connection may read. rustls asks for at most 4 KiB of TLS records at a
/// time, so an 8 KiB review took three `recv`s; reading ahead into this buffer takes one, and
/// rustls's reads are served from memory. Writes pass straight through.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
/// The standard library's 128 overflows when hundreds of clients connect at once; the kernel
/// then drops the handshake's last ACK, and a client that sends nothing first waits seconds
/// for a retransmission before the server even sees it.
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`ACCEPT_BACKLOG`] (and `SO_REUSEADDR`, as the standard library does).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Accepts connections until `shutdown` resolves, then drains them for at most
/// `timeouts.shutdown`. At most `max_connections` are open at once: past that, new ones wait in
/// the kernel's accept queue until one closes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    timeouts: Timeouts,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    serve_with_client_auth(listener, tls, router, timeouts, max_connections, false, shutdown).await
}

/// Like [`serve`]; with `client_auth`, each request carries a [`ClientAuth`] saying whether its
/// connection presented a client certificate (`tls` then verifies any it is given: see
/// [`crate::tls::server_config_with_client_ca`]).
pub async fn serve_with_client_auth(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    timeouts: Timeouts,
    max_connections: usize,
    client_auth: bool,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's own header timer also runs while a kept-alive connection waits for its next
    // request, which would close idle connections at the header timeout: `ConnectionTimer`
    // applies the header, body and idle timeouts instead.
    http.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = open.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot; // released when the connection ends
            let tcp = BufReader::with_capacity(READ_BUFFER_BYTES, tcp);
            let tls = match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            // rustls reports a client certificate only once it verified it.
            let verified = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
            let auth = client_auth.then_some(if verified { ClientAuth::Verified } else { ClientAuth::Missing });
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                if let Some(auth) = auth {
                    request.extensions_mut().insert(auth);
                }
                tower::ServiceExt::oneshot(router.clone(), request)
            });
            let io = ConnectionTimer::new(TokioIo::new(tls), timeouts);
            let conn = watcher.watch(http.serve_connection(io, service));
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("draining in-flight requests");
    if tokio::time::timeout(timeouts.shutdown, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections were still busy at the shutdown timeout");
    }
}

/// Resolves on SIGTERM or SIGINT after marking the server not ready and waiting `delay`
/// (so endpoints stop routing here while it still serves).
pub async fn shutdown_signal(state: Arc<AppState>, delay: Duration) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
    state.shutting_down.store(true, Ordering::Release);
    state.shutdown.notify_waiters();
    tracing::info!(delay_ms = delay.as_millis() as u64, "shutdown requested; readiness now fails");
    tokio::time::sleep(delay).await;
}

/// Closes a connection that takes too long: between requests after `idle`; once a request's
/// first byte has arrived, unless the request has been received and answered within
/// `header + body` (reads do not extend that deadline, so trickling bytes does not help).
///
/// The timer is armed lazily: a later deadline only takes effect when the armed one fires, so
/// a busy keep-alive connection does not touch the timer wheel on every request.
pub struct ConnectionTimer<T> {
    inner: T,
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: tokio::time::Instant,
    timeouts: Timeouts,
    in_request: bool,
}

impl<T> ConnectionTimer<T> {
    /// Wraps `inner`, waiting for a first request.
    pub fn new(inner: T, timeouts: Timeouts) -> Self {
        let deadline = tokio::time::Instant::now() + timeouts.idle;
        ConnectionTimer {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
            timeouts,
            in_request: false,
        }
    }

    fn set_deadline(&mut self, after: Duration) {
        self.deadline = tokio::time::Instant::now() + after;
        if self.deadline < self.sleep.deadline() {
            self.sleep.as_mut().reset(self.deadline);
        }
    }

    /// Bytes arrived: a new request starts its deadline.
    fn on_read(&mut self) {
        if !self.in_request {
            self.in_request = true;
            self.set_deadline(self.timeouts.header + self.timeouts.body);
        }
    }

    /// A response went out: back to waiting, under the idle timeout.
    fn on_write(&mut self) {
        self.in_request = false;
        self.set_deadline(self.timeouts.idle);
    }

    /// Ready when the deadline has passed; re-arms the timer when it fired early.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            self.sleep.as_mut().reset(self.deadline);
        }
        Poll::Pending
    }
}

use hyper::rt::{Read, ReadBufCursor, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle timeout")
}

impl<T: Read + Unpin> Read for ConnectionTimer<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.on_read();
                Poll::Ready(r)
            }
            Poll::Pending => match this.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Err(timed_out())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: Write + Unpin> Write for ConnectionTimer<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.on_write();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.on_write();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue_instead_of_being_dropped() {
        // Far more than the standard library's 128, well inside a 1024 file-descriptor limit.
        const BURST: usize = 400;
        let listener = bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connect_all = async {
            let mut clients = Vec::with_capacity(BURST);
            for _ in 0..BURST {
                clients.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
            }
            clients
        };
        // A short queue makes the kernel drop SYNs, and connects then hang for minutes.
        let clients = tokio::time::timeout(Duration::from_secs(60), connect_all)
            .await
            .expect("every connect completes while nothing accepts (is the accept queue short?)");
        // Every handshake completed on loopback before `connect` returned; with a short queue
        // the kernel would have dropped the overflow, and `accept` would not find it now.
        let std_listener = listener.into_std().expect("std listener");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let mut accepted = Vec::new();
        while let Ok((conn, _)) = std_listener.accept() {
            accepted.push(conn);
        }
        assert_eq!(accepted.len(), clients.len(), "connections queued for accept");
    }
}
