//! Observability: the Prometheus metrics registry, the JSON access log, W3C trace
//! context, and span export over OTLP.

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod trace;

/// 32 lowercase hex characters from 128 random bits: request and trace ids.
pub fn random_hex_128() -> String {
    hex(rand::random::<u128>().to_be_bytes().as_slice())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    // Only ASCII hex digits.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `ip` as text, as `Display` writes it; IPv4, the common case, without the
/// formatter machinery, which costs more than the rest of a header or log field.
pub fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    let std::net::IpAddr::V4(v4) = ip else {
        use std::io::Write;
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// Lowercase hex of `bytes` into `out`, which is exactly twice as long.
pub fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ips_are_written_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.99.100",
            "255.255.255.255",
            "1.20.201.9",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = b"x ".to_vec();
            super::write_ip(&mut out, ip);
            assert_eq!(out, format!("x {ip}").as_bytes());
        }
    }
}
