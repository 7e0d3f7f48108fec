//! The PROXY protocol header (versions 1 and 2) a listener with `proxy_protocol = true`
//! reads before anything else on a connection, as `proxy::proxy_protocol::parse` sees it
//! while bytes arrive.
//!
//! Properties: nothing panics; a whole header is never longer than the bytes read nor than
//! the spec's and portico's bounds (107 bytes for version 1, 4 KiB for version 2); the
//! answer depends only on the header's own bytes (the client's data after it changes
//! nothing); and reading the same bytes in pieces gives the same answer as all at once:
//! "incomplete" on every prefix of a whole header, never a different header or a refusal;
//! a refusal says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::proxy::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Ok(Some(header)) = whole {
        assert!(header.len <= data.len(), "{header:?} past the input");
        let bound = if data.starts_with(b"PROXY ") { 107 } else { 4096 };
        assert!(header.len <= bound, "{header:?} longer than {bound}");
        // The header alone parses to the same header: what follows is the client's.
        assert_eq!(parse(&data[..header.len]), Ok(Some(header)));
        // Every strict prefix is "not yet" (the reader keeps reading), never an answer.
        for cut in 0..header.len {
            assert_eq!(parse(&data[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }
    if let Err(why) = whole {
        assert!(!why.is_empty());
    }
});
