//! What several portico crates share, and nothing that would pull a heavy dependency into
//! a crate that does not need it: the gateway, the token service and the client library
//! all depend on it.
//!
//! - [`config_error`]: config problems with file, line, column and field path;
//! - [`humantime_serde`]: durations written as `"250ms"`, `"5s"`, `"1m"` in config files;
//! - [`trace`]: W3C Trace Context (`traceparent`);
//! - `sd_notify` (Linux): systemd's notification protocol and watchdog period;
//! - [`hex`], [`write_hex`], [`random_hex_128`]: ids as lowercase hex;
//! - [`ip_network`]: an address or CIDR block from a config list.

pub mod config_error;
#[cfg(target_os = "linux")]
pub mod sd_notify;
pub mod trace;

/// An entry of a config list of peers: an address (`10.0.0.5`, a one-address network) or a
/// CIDR block (`10.0.0.0/8`, `fd00::/8`; host bits are dropped).
pub fn ip_network(entry: &str) -> Result<ipnet::IpNet, String> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    entry
        .parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| format!("`{entry}` is not an IP address or CIDR block"))
}

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

/// Serde for durations written as humantime strings (`1s`, `250ms`); the token service's
/// config uses it too.
pub mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text)
            .map_err(|e| format!("invalid duration `{text}`: {e} (write e.g. `250ms`, `5s`, `1m`)"))
    }

    /// The same for optional durations.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = String::deserialize(d)?;
            super::parse(&text)
                .map(Some)
                .map_err(serde::de::Error::custom)
        }
    }
}
