//! A lean HTTP/1.1 client for the devices-layer scenarios: one keep-alive connection, one
//! request at a time, bodies by `Content-Length` or chunked. Only what tern's REST API
//! answers; not a general client.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read (a history read of 100,000 messages is ~30 MB).
const MAX_BODY: usize = 1 << 30;

#[derive(Debug)]
pub struct Http {
    stream: TcpStream,
    rbuf: BytesMut,
    host: String,
    /// Sent with every request (`Authorization: FlespiToken ...`), or empty.
    auth: String,
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "status {}, not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }
}

impl Http {
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Http> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            host: addr.to_string(),
            auth: token.map_or_else(String::new, |t| {
                format!("Authorization: FlespiToken {t}\r\n")
            }),
        })
    }

    /// Sends one request and reads its whole answer.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.auth,
            body.len()
        );
        if body.len() < 64 * 1024 {
            let mut out = Vec::with_capacity(head.len() + body.len());
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(body);
            self.stream.write_all(&out).await?;
        } else {
            self.stream.write_all(head.as_bytes()).await?;
            self.stream.write_all(body).await?;
        }
        self.answer().await
    }

    async fn fill(&mut self) -> Result<()> {
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    async fn answer(&mut self) -> Result<Answer> {
        let end = loop {
            if let Some(at) = find(&self.rbuf, b"\r\n\r\n") {
                break at;
            }
            if self.rbuf.len() > 64 * 1024 {
                bail!("an answer head over 64 KiB");
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.rbuf[..end]).into_owned();
        self.rbuf.advance(end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(v.parse::<usize>().context("Content-Length")?);
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
        let body = if chunked {
            self.chunked().await?
        } else {
            let n = length.unwrap_or(0);
            if n > MAX_BODY {
                bail!("an answer of {n} bytes");
            }
            while self.rbuf.len() < n {
                self.fill().await?;
            }
            self.rbuf.split_to(n).to_vec()
        };
        Ok(Answer { status, body })
    }

    async fn chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = loop {
                if let Some(at) = find(&self.rbuf, b"\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let size_text = String::from_utf8_lossy(&self.rbuf[..line]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("chunk size")?;
            self.rbuf.advance(line + 2);
            if body.len() + size > MAX_BODY {
                bail!("an answer over {MAX_BODY} bytes");
            }
            while self.rbuf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.rbuf[..size]);
            self.rbuf.advance(size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
