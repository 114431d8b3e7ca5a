//! `tern health`: asks a running tern for `/health` on its HTTP listener and succeeds on a 200.
//! Container health checks use it, so that the images need no curl (the `FROM scratch` image
//! has nothing but tern). A plain HTTP/1.1 request over a socket, bounded by a timeout.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

/// Where to reach the HTTP listener of a server running `config`: its address, with an
/// unspecified IP (`0.0.0.0`, `::`) replaced by loopback.
pub fn probe_addr(config: &Config) -> Option<SocketAddr> {
    let mut addr = config.listeners.http?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(addr)
}

/// Sends `GET path` to `addr` and returns the status line's code.
pub fn check(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tern-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer from {addr}"))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_becomes_loopback() {
        let mut c = Config::default();
        assert_eq!(probe_addr(&c), Some("127.0.0.1:8080".parse().unwrap()));
        c.listeners.http = Some("[::]:80".parse().unwrap());
        assert_eq!(probe_addr(&c), Some("[::1]:80".parse().unwrap()));
        c.listeners.http = None;
        assert_eq!(probe_addr(&c), None);
    }
}
