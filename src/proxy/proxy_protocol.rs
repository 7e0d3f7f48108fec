//! The PROXY protocol (HAProxy's, versions 1 and 2) on listeners with `proxy_protocol = true`:
//! the header a load balancer sends before anything else, read under one deadline, whose
//! source address then stands in for the socket's peer in the connection's socket digest —
//! so caps per client, `X-Forwarded-For`, rate-limit keys, the `ip-filter` plugin and the
//! access log all see the real client. A connection whose header is missing, malformed or
//! late is closed without an answer: HTTP cannot be spoken before the header.
//!
//! Plaintext listeners read the header in `connection.rs`, TLS listeners in the pre-TLS hook
//! (`handshake.rs`), before the ClientHello. Listeners without the option never get here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::SocketDigest;
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The twelve bytes every version 2 header starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a version 2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The longest version 1 line, CRLF included (the spec's own bound).
const V1_MAX: usize = 107;
/// The longest version 2 header accepted, TLVs included. The spec allows 64 KiB; load
/// balancers send tens of bytes, a few hundred with TLS details.
const V2_MAX: usize = 4096;

/// What a PROXY header says once it is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: what follows belongs to the client's own stream.
    pub len: usize,
    /// The client's address; `None` for a `LOCAL` (v2) or `UNKNOWN` (v1) connection, such
    /// as the load balancer's own health check, which is served as the socket's peer.
    pub source: Option<SocketAddr>,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The connection closed before sending anything (a TCP health check, a port scan): not
    /// counted as a refusal.
    Empty,
    /// The connection closed or broke before a whole header.
    Closed,
    /// No whole header within `[limits] proxy_header_timeout`.
    TimedOut,
    /// Not a PROXY header, or a malformed one.
    Invalid(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Empty => f.write_str("closed before sending anything"),
            Refused::Closed => f.write_str("closed before a whole PROXY header"),
            Refused::TimedOut => f.write_str("no whole PROXY header within proxy_header_timeout"),
            Refused::Invalid(why) => write!(f, "invalid PROXY header: {why}"),
        }
    }
}

/// Parses the PROXY header at the start of `buf`: `Ok(None)` while it may still be
/// incomplete, the header once whole, or why it is not one.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err("the connection does not start with a PROXY header")
}

/// `PROXY TCP4 src dst sport dport\r\n`, `PROXY TCP6 …`, or `PROXY UNKNOWN …\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = memchr::memmem::find(window, b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err("version 1 line longer than 107 bytes")
        } else if window.contains(&b'\n') {
            Err("version 1 line not ended by CRLF")
        } else {
            Ok(None)
        };
    };
    // A bare LF before the CRLF is refused whether or not the CRLF has arrived yet, so the
    // answer never depends on how the bytes were split into reads.
    if window[..end].contains(&b'\n') {
        return Err("version 1 line not ended by CRLF");
    }
    let line = std::str::from_utf8(&window[6..end]).map_err(|_| "version 1 line not ASCII")?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or("");
    if family == "UNKNOWN" {
        // The rest of the line may be anything and is ignored (spec 2.1).
        return Ok(Some(Header { len, source: None }));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err("version 1 family is not TCP4, TCP6 or UNKNOWN"),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err("version 1 line does not have four address fields");
    };
    let ip = |text: &str| -> Result<IpAddr, &'static str> {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| "version 1 address is not an IP address")?;
        if ip.is_ipv6() != v6 {
            return Err("version 1 address does not match its family");
        }
        Ok(ip)
    };
    let port = |text: &str| -> Result<u16, &'static str> {
        let digits = !text.is_empty()
            && text.len() <= 5
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        digits
            .then(|| text.parse().ok())
            .flatten()
            .ok_or("version 1 port is not a number from 0 to 65535")
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    ip(dst)?;
    port(dport)?;
    Ok(Some(Header {
        len,
        source: Some(source),
    }))
}

/// The binary header: signature, version 2 and command, family and transport, the length
/// of what follows, the addresses, then TLVs (skipped).
fn parse_v2(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err("version 2 signature with a version other than 2");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err("version 2 command is neither LOCAL nor PROXY"),
    };
    let family = buf[13];
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = V2_FIXED + rest;
    if len > V2_MAX {
        return Err("version 2 header longer than 4096 bytes");
    }
    let needed = match family {
        0x00 => 0,   // UNSPEC
        0x11 => 12,  // TCP over IPv4
        0x21 => 36,  // TCP over IPv6
        0x31 => 216, // stream over a Unix socket
        0x12 | 0x22 | 0x32 => return Err("version 2 family is a datagram transport"),
        _ => return Err("version 2 family is unknown"),
    };
    if rest < needed {
        return Err("version 2 length is shorter than its addresses");
    }
    if buf.len() < len {
        return Ok(None);
    }
    if local {
        // The load balancer's own connection (a health check): its addresses are ignored.
        return Ok(Some(Header { len, source: None }));
    }
    let a = &buf[V2_FIXED..];
    let source = match family {
        0x11 => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        0x21 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC and Unix sockets carry no address a client can be known by.
        _ => None,
    };
    Ok(Some(Header { len, source }))
}

/// Reads a PROXY header from `stream` within `timeout`. Returns the header and the bytes
/// read past it (the start of the client's own stream, usually empty).
pub async fn read<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Header, BytesMut), Refused> {
    let read = async {
        let mut buf = BytesMut::with_capacity(256);
        loop {
            match parse(&buf) {
                Ok(Some(header)) => {
                    let rest = buf.split_off(header.len);
                    return Ok((header, rest));
                }
                Ok(None) => {}
                Err(why) => return Err(Refused::Invalid(why)),
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len());
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => return Err(Refused::Empty),
                Ok(0) | Err(_) => return Err(Refused::Closed),
                Ok(_) => {}
            }
        }
    };
    fast_timeout(timeout, read)
        .await
        .unwrap_or(Err(Refused::TimedOut))
}

/// A socket digest of the connection's file descriptor whose peer is `client`, keeping the
/// local address of `old`: set on the stream in place of its own, it makes every later
/// reader of the peer address (Pingora's session, portico's caps and logs) see the client.
pub fn digest_for(fd: i32, old: Option<&Arc<SocketDigest>>, client: SocketAddr) -> SocketDigest {
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(client)));
    let local = old.and_then(|d| d.local_addr().cloned());
    let _ = digest.local_addr.set(local);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    fn source(buf: &[u8]) -> Option<SocketAddr> {
        parse(buf).unwrap().unwrap().source
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET /";
        let h = parse(line).unwrap().unwrap();
        assert_eq!(h.len, line.len() - 5);
        assert_eq!(h.source, Some("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(
            source(b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 80\r\n"),
            Some("[2001:db8::1]:65535".parse().unwrap())
        );
        assert_eq!(source(b"PROXY UNKNOWN\r\n"), None);
        assert_eq!(source(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), None);
    }

    #[test]
    fn incomplete_headers_wait_for_more() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n";
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Ok(None), "{end}");
        }
        let h = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187], b"");
        for end in 0..h.len() {
            assert_eq!(parse(&h[..end]), Ok(None), "{end}");
        }
    }

    #[test]
    fn a_bare_lf_is_refused_however_the_bytes_arrive() {
        let line = b"PROXY UNKNOWN x\n\r\n";
        assert!(parse(&line[..16]).is_err(), "before the CRLF");
        assert!(parse(line).is_err(), "with the CRLF");
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n";
        assert!(parse(line).is_err());
    }

    #[test]
    fn malformed_version_1_lines_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert!(parse(&long).is_err());
    }

    #[test]
    fn version_2_headers() {
        let ipv4 = [203, 0, 113, 7, 10, 0, 0, 1, 0xdc, 0x04, 1, 187];
        let h = v2(1, 0x11, &ipv4, &[]);
        assert_eq!(source(&h), Some("203.0.113.7:56324".parse().unwrap()));
        // TLVs after the addresses are skipped and counted in the length.
        let with_tlv = v2(1, 0x11, &ipv4, &[0x04, 0, 2, 0xab, 0xcd]);
        let parsed = parse(&with_tlv).unwrap().unwrap();
        assert_eq!(parsed.len, with_tlv.len());
        let mut ipv6 = [0u8; 36];
        ipv6[0] = 0x20;
        ipv6[1] = 0x01;
        ipv6[15] = 9;
        ipv6[32] = 0x1f;
        ipv6[33] = 0x90;
        assert_eq!(
            source(&v2(1, 0x21, &ipv6, &[])),
            Some("[2001::9]:8080".parse().unwrap())
        );
        // LOCAL: the balancer's own health check, served as the socket's peer.
        assert_eq!(source(&v2(0, 0x11, &ipv4, &[])), None);
        assert_eq!(source(&v2(1, 0x00, &[], &[])), None);
    }

    #[test]
    fn malformed_version_2_headers_are_refused() {
        let ipv4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        let mut wrong_version = v2(1, 0x11, &ipv4, &[]);
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version).is_err());
        assert!(parse(&v2(2, 0x11, &ipv4, &[])).is_err(), "command 2");
        assert!(parse(&v2(1, 0x12, &ipv4, &[])).is_err(), "UDP");
        assert!(parse(&v2(1, 0x41, &ipv4, &[])).is_err(), "family 4");
        assert!(parse(&v2(1, 0x11, &ipv4[..8], &[])).is_err(), "short");
        let mut huge = v2(1, 0x11, &ipv4, &[]);
        huge[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert!(parse(&huge).is_err(), "over 4096 bytes");
    }
}
