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
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}
