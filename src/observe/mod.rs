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

/// Lowercase hex of `bytes` into `out`, which is exactly twice as long.
pub fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0xf) as usize];
    }
}
