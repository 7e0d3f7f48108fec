//! W3C Trace Context (`traceparent`): continue the caller's trace with a new span for the
//! gateway hop, or start a new trace when the caller sent none or an invalid one.

use crate::{hex, write_hex};

/// The trace the gateway's hop belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's own span, which is the parent the upstream sees.
    pub span_id: [u8; 8],
    /// The caller's span, when the trace came from the caller.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
}

impl TraceContext {
    /// Continues the trace in `traceparent` (if valid) or starts a new sampled one.
    pub fn from_header(traceparent: Option<&[u8]>) -> TraceContext {
        let span_id = nonzero_random::<8>();
        match traceparent.and_then(parse) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            },
            None => TraceContext {
                trace_id: nonzero_random::<16>(),
                span_id,
                parent_id: None,
                flags: 0x01,
            },
        }
    }

    /// The `traceparent` value to send upstream (version 00).
    pub fn header_value(&self) -> String {
        // Only ASCII hex digits and dashes.
        String::from_utf8_lossy(&self.header_bytes()).into_owned()
    }

    /// [`TraceContext::header_value`] written on the stack: the proxy renders it for every
    /// request, so it costs no allocation besides the header value's own.
    pub fn header_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        write_hex(&mut out[53..55], &[self.flags]);
        out
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
pub const TRACEPARENT_LEN: usize = 55;

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let mut bytes = [0u8; N];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
        if bytes.iter().any(|&b| b != 0) {
            return bytes;
        }
    }
}

/// Parses `version-traceid-parentid-flags`. Versions above 00 may append fields, which
/// are ignored as the spec asks; version ff and all-zero ids are invalid.
fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
        return None;
    }
    let version = u8::from_str_radix(version, 16).ok()?;
    if version == 0 && parts.next().is_some() {
        return None;
    }
    if flags.len() != 2 {
        return None;
    }
    let trace_id: [u8; 16] = unhex(trace)?;
    let parent_id: [u8; 8] = unhex(parent)?;
    if trace_id.iter().all(|&b| b == 0) || parent_id.iter().all(|&b| b == 0) {
        return None;
    }
    Some((trace_id, parent_id, u8::from_str_radix(flags, 16).ok()?))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    // Only lowercase hex is valid in traceparent.
    if s.len() != N * 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::from_header(Some(tp));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let out = t.header_value();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert!(!out.contains("00f067aa0ba902b7"));
    }

    #[test]
    fn starts_a_new_trace_on_invalid_input() {
        for bad in [
            &b"garbage"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let t = TraceContext::from_header(Some(bad));
            assert!(t.parent_id.is_none(), "{:?}", std::str::from_utf8(bad));
        }
        let t = TraceContext::from_header(None);
        assert_eq!(t.header_value().len(), 55);
        // The stack rendering is the same text as the formatted one.
        let expected = format!(
            "00-{}-{}-{:02x}",
            hex(&t.trace_id),
            hex(&t.span_id),
            t.flags
        );
        assert_eq!(t.header_value(), expected);
        assert_eq!(&t.header_bytes()[..], expected.as_bytes());
    }
}
