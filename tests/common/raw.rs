//! A raw HTTP/1.1 client for request targets that `reqwest` would rewrite (`/a/../b`,
//! `%2e%2e`, `//x`), and a kept-open connection to observe keep-alive.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::REQUEST_TIMEOUT;

/// Reads from `stream` until `buf` holds a whole message head (up to its empty line) and
/// takes that head out of `buf`; what follows it stays there for the next read. `None` when
/// the peer closes or fails first. For the tests' hand-written servers.
pub async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(buf.drain(..end + 4).collect());
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response read by [`raw_request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// `GET target HTTP/1.1` with `headers`; adds `Host: gateway` unless given.
pub fn raw_get_request(target: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!("GET {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str("Host: gateway\r\n");
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Sends `request` byte for byte on a new connection and reads one response, framed by its
/// `Content-Length`, chunked encoding, or the connection closing. Use it for request targets
/// that an HTTP client library would normalise (`/a/../b`, `%2e%2e`, `//x`).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    tokio::time::timeout(REQUEST_TIMEOUT, raw_exchange(addr, request))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete response within {REQUEST_TIMEOUT:?} to {:?}",
                String::from_utf8_lossy(request)
            )
        })
}

async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.send(request).await;
    conn.read_response().await.unwrap_or_else(|| {
        panic!(
            "connection closed before a complete response to {:?}",
            String::from_utf8_lossy(request)
        )
    })
}

/// A client connection kept open over several raw requests, to observe keep-alive.
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        RawConn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes bytes; a failure (the peer closed) is ignored here and shows as no response.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads the next response (see [`raw_request`] for framing). `None` when the
    /// connection closes before a complete response; panics after [`REQUEST_TIMEOUT`].
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.read_inner())
            .await
            .unwrap_or_else(|_| panic!("no complete response within {REQUEST_TIMEOUT:?}"))
    }

    async fn read_inner(&mut self) -> Option<RawResponse> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((resp, used)) = parse_response(&self.buf, self.eof) {
                self.buf.drain(..used);
                return Some(resp);
            }
            if self.eof {
                return None;
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A reset after the response arrived still leaves a usable response.
                Err(_) => self.eof = true,
            }
        }
    }

    /// Whether the peer has closed the connection (waits up to `wait` for it).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        if self.eof {
            return true;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                true
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(_) => false,
        }
    }
}

/// A complete response at the start of `buf`, if there is one, and how many bytes it took.
fn parse_response(buf: &[u8], eof: bool) -> Option<(RawResponse, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[head_end + 4..];
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let (body, body_len) = if status == 204 || status == 304 || (100..200).contains(&status) {
        (Vec::new(), 0)
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < len {
            return None;
        }
        (rest[..len].to_vec(), len)
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if eof {
        (rest.to_vec(), rest.len())
    } else {
        return None;
    };
    let response = RawResponse {
        status,
        headers,
        body,
    };
    Some((response, head_end + 4 + body_len))
}

/// The decoded body and the number of bytes the chunked encoding took.
fn decode_chunked(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + data[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers: one empty line; with trailers: they end with an empty line.
            let end = if data[at..].starts_with(b"\r\n") {
                at + 2
            } else {
                at + data[at..].windows(4).position(|w| w == b"\r\n\r\n")? + 4
            };
            return Some((out, end));
        }
        if data.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}
