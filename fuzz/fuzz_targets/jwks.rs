//! JWKS documents, as a fetched key set or a `keys` file is read.
//!
//! Properties: nothing panics; only a JSON object with a `keys` array is a key set, and it
//! never holds more usable keys than it lists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_plugins::jwt::fuzzing;

fuzz_target!(|data: &[u8]| {
    let result = fuzzing::jwks(data);
    let document = serde_json::from_slice::<serde_json::Value>(data).ok();
    let listed = document
        .as_ref()
        .and_then(|d| d.as_object())
        .and_then(|o| o.get("keys"))
        .and_then(|k| k.as_array())
        .map(Vec::len);
    match (result, listed) {
        (Ok(usable), Some(listed)) => assert!(usable <= listed),
        (Ok(_), None) => panic!("read as a key set: {:?}", String::from_utf8_lossy(data)),
        (Err(e), _) => assert!(!e.is_empty()),
    }
});
