//! A minimal HTTP/1.1 client over a TCP stream, so tests see exactly what tern answers
//! (status, headers, body) without a client library in between.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Sends `request_head` (without the final blank line) and reads the response. With
/// `until_headers`, stops after the headers (for upgrades, whose connection stays open).
pub async fn raw(addr: SocketAddr, request_head: &str, until_headers: bool) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("{request_head}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    read_response(&mut stream, until_headers).await
}

/// Sends `request_head` (without the final blank line) over `stream` (TLS, say) and reads the
/// response until the server closes.
pub async fn raw_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request_head: &str,
) -> HttpResponse {
    stream
        .write_all(format!("{request_head}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    read_response(&mut stream, false).await
}

/// Reads a response until the server closes (or, with `until_headers`, the headers end).
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, until_headers: bool) -> HttpResponse {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if until_headers && buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("response in time");
    parse(&buf)
}

/// `GET path` with `Connection: close` and optional extra header lines.
pub async fn get(addr: SocketAddr, path: &str, extra: &[&str]) -> HttpResponse {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close");
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    raw(addr, &head, false).await
}

/// `method path` with `Connection: close`, optional extra header lines and a body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[&str],
    body: &str,
) -> HttpResponse {
    let bytes = request_bytes(&addr.to_string(), method, path, extra, body);
    raw_exact(addr, &bytes).await
}

/// Like [`request`], over an open stream (TLS, say) to `host` (the `Host` header).
pub async fn request_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    method: &str,
    path: &str,
    extra: &[&str],
    body: &str,
) -> HttpResponse {
    let bytes = request_bytes(host, method, path, extra, body);
    stream.write_all(bytes.as_bytes()).await.expect("send");
    read_response(&mut stream, false).await
}

fn request_bytes(host: &str, method: &str, path: &str, extra: &[&str], body: &str) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}",
        body.len()
    );
    for h in extra {
        head.push_str("\r\n");
        head.push_str(h);
    }
    head.push_str("\r\n\r\n");
    head.push_str(body);
    head
}

/// Sends `bytes` as they are and reads the response until the server closes.
async fn raw_exact(addr: SocketAddr, bytes: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes.as_bytes()).await.expect("send");
    read_response(&mut stream, false).await
}

/// A WebSocket upgrade request to `path`; `protocols` is the raw `Sec-WebSocket-Protocol`
/// value, if any. Returns the answer's head.
pub async fn upgrade(addr: SocketAddr, path: &str, protocols: Option<&str>) -> HttpResponse {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
    );
    if let Some(p) = protocols {
        head.push_str(&format!("\r\nSec-WebSocket-Protocol: {p}"));
    }
    raw(addr, &head, true).await
}

fn parse(buf: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
