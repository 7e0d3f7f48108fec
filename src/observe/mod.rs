//! Observability: the Prometheus metrics registry, the JSON access log, W3C trace
//! context, and span export over OTLP.

pub mod access_log;
pub mod journal;
pub mod log_noise;
pub mod metrics;
pub mod otlp;
pub mod process_metrics;
pub mod window;
pub use portico_common::trace;
pub use portico_common::{hex, random_hex_128, write_hex};

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
