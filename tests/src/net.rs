//! Loopback ports and a minimal plain-HTTP probe.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// `n` distinct free TCP ports on 127.0.0.1, found by binding port 0. All listeners are held
/// until every port is picked (so no port is returned twice), then released for the caller's
/// processes. Another process could still take one in between; [`crate::ControlPlane::start`]
/// retries when a bind fails.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0"))
        .collect::<Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(500)).is_ok()
}

/// `GET path` over plain HTTP/1.0 to 127.0.0.1:`port`; returns the whole response (status
/// line, headers and body). Enough for etcd's `/health`, without an HTTP client dependency.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Whether a returned port is still free when the caller binds it is up to every other
    // process on the machine, so it is not asserted here: a loopback connect can even reach
    // itself when its source port equals the port it dials. What `free_ports` promises is
    // distinct ports.
    #[test]
    fn ports_are_distinct() {
        let ports = free_ports(3).expect("ports");
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2], "{ports:?}");
    }
}
