//! The config loader and validator: the input is the text of a `portico.toml`.
//!
//! Properties: nothing panics; every problem names the file, a line and column inside the
//! text, and says what is wrong.
//!
//! Inputs that name `/dev`, `/proc` or `/sys` are skipped: validation reads the files a
//! config names (certificates, keys, token files), and `/dev/zero` never ends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let Err(errors) = portico::config::load_str("fuzz.toml", text) else {
        return;
    };
    assert!(!errors.0.is_empty(), "an error without problems");
    let lines = text.split('\n').count();
    for e in &errors.0 {
        assert_eq!(e.file, "fuzz.toml");
        assert!(
            !e.message.trim().is_empty(),
            "a problem without a message: {e:?}"
        );
        let location = e
            .location
            .as_ref()
            .unwrap_or_else(|| panic!("a problem without a line: {e:?}"));
        assert!(
            location.line >= 1 && location.line <= lines && location.column >= 1,
            "a line outside the text: {e:?}"
        );
    }
});
