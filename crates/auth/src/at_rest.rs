//! Encryption at rest of the signing keys' private halves: AES-256-GCM (aws-lc) under a
//! 32-byte key-encryption key (KEK) from `keys.key_encryption_key_file` or
//! `keys.key_encryption_key` (normally `${ENV}`).
//!
//! A stored private key is either the plain base64 DER that every release wrote before
//! (never containing `:`), or a versioned envelope:
//!
//! ```text
//! enc1:<key id>:<base64(nonce (12 bytes) || ciphertext || tag (16 bytes))>
//! ```
//!
//! The key id is the first 8 bytes (hex) of SHA-256 over a fixed label and the KEK, so a
//! reader knows which KEK a row needs before trying it, and a later rotation can keep
//! older KEKs for reading. The associated data is the signing key's `kid`, so a
//! ciphertext copied onto another row does not decrypt.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The envelope's prefix (version 1).
const PREFIX: &str = "enc1:";

/// A key-encryption key, ready to seal and open.
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).finish()
    }
}

impl Kek {
    /// A KEK from its 32 bytes.
    pub fn new(bytes: &[u8; 32]) -> Kek {
        let mut labelled = b"portico-auth key-encryption key v1\0".to_vec();
        labelled.extend_from_slice(bytes);
        let hash = digest::digest(&digest::SHA256, &labelled);
        let id = hash.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256-GCM takes a 32-byte key"),
        );
        Kek { id, key }
    }

    /// Reads a KEK from a file: exactly 32 raw bytes, or text as [`Kek::parse_text`].
    pub fn parse(content: &[u8]) -> Result<Kek, String> {
        if let Ok(raw) = <[u8; 32]>::try_from(content) {
            // A 32-character text is never a valid hex or base64 32-byte key, so 32 bytes
            // are the raw key.
            return Ok(Kek::new(&raw));
        }
        Kek::parse_text(content)
    }

    /// Reads a KEK written as text: 64 hex digits or base64 of 32 bytes (surrounding
    /// whitespace ignored). Never raw bytes, so a 32-character passphrase in an
    /// environment variable is refused rather than taken for a key.
    pub fn parse_text(content: &[u8]) -> Result<Kek, String> {
        let text = std::str::from_utf8(content)
            .map_err(|_| "is neither 32 raw bytes nor text (64 hex digits or base64)")?
            .trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect::<Vec<u8>>()
        } else {
            STANDARD.decode(text).map_err(|_| {
                "is not a 32-byte key: write 64 hex digits or base64 of 32 bytes \
                 (e.g. `openssl rand -hex 32`)"
                    .to_string()
            })?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "is {} bytes long; a key-encryption key is 32 bytes (e.g. `openssl rand -hex 32`)",
                b.len()
            )
        })?;
        Ok(Kek::new(&bytes))
    }

    /// The key id written into every envelope this KEK seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The envelope of `plain` (a stored private key) for the signing key `kid`.
    pub fn seal(&self, kid: &str, plain: &str) -> Result<String, String> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut buf = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut buf,
            )
            .map_err(|_| format!("cannot encrypt signing key {kid}"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}:{}", self.id, STANDARD.encode(sealed)))
    }

    fn open(&self, kid: &str, key_id: &str, body: &str) -> Result<String, String> {
        if key_id != self.id {
            return Err(format!(
                "signing key {kid} is encrypted under key-encryption key id {key_id}, but the \
                 configured one (keys.key_encryption_key_file / keys.key_encryption_key) has \
                 id {}: it is not the key these rows were written with",
                self.id
            ));
        }
        let sealed = STANDARD
            .decode(body)
            .map_err(|_| format!("signing key {kid}: the encrypted row is not base64"))?;
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(format!("signing key {kid}: the encrypted row is truncated"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|e| e.to_string())?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buf)
            .map_err(|_| {
                format!(
                    "signing key {kid} does not decrypt with the configured key-encryption key \
                     (keys.key_encryption_key_file / keys.key_encryption_key): wrong key or an \
                     altered row"
                )
            })?;
        String::from_utf8(plain.to_vec())
            .map_err(|_| format!("signing key {kid}: the decrypted key is not text"))
    }
}

/// Whether a stored private key is an envelope (rather than the plain base64 DER).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The plain stored form (base64 DER) of a row's private key: decrypted when it is an
/// envelope, as it is otherwise.
pub fn open(kek: Option<&Kek>, kid: &str, stored: &str) -> Result<String, String> {
    let Some(rest) = stored.strip_prefix(PREFIX) else {
        if stored.starts_with("enc") && stored.contains(':') {
            return Err(format!(
                "signing key {kid} is stored in an encryption format this release does not \
                 know (`{}`): a newer release wrote it",
                stored.split(':').next().unwrap_or_default()
            ));
        }
        return Ok(stored.to_string());
    };
    let (key_id, body) = rest
        .split_once(':')
        .ok_or_else(|| format!("signing key {kid}: malformed encrypted row"))?;
    match kek {
        Some(kek) => kek.open(kid, key_id, body),
        None => Err(format!(
            "signing key {kid} is encrypted at rest (key-encryption key id {key_id}) but no key \
             is configured: set keys.key_encryption_key_file or keys.key_encryption_key"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse() {
        let kek = Kek::new(&[7; 32]);
        let sealed = kek.seal("k1", "QUJDRA==").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("QUJDRA"));
        assert_eq!(open(Some(&kek), "k1", &sealed).unwrap(), "QUJDRA==");
        // Plain rows read as they are.
        assert_eq!(open(Some(&kek), "k1", "QUJDRA==").unwrap(), "QUJDRA==");
        assert_eq!(open(None, "k1", "QUJDRA==").unwrap(), "QUJDRA==");
        // Another row's kid, no key, another key: refused with the setting's name.
        assert!(open(Some(&kek), "k2", &sealed).unwrap_err().contains("k2"));
        assert!(open(None, "k1", &sealed)
            .unwrap_err()
            .contains("keys.key_encryption_key_file"));
        let other = Kek::new(&[8; 32]);
        assert!(open(Some(&other), "k1", &sealed)
            .unwrap_err()
            .contains("key-encryption key id"));
        // Same id (forged) but different key: the tag check refuses.
        let forged = sealed.replace(kek.id(), other.id());
        assert!(open(Some(&other), "k1", &forged)
            .unwrap_err()
            .contains("does not decrypt"));
    }

    #[test]
    fn parses_hex_base64_and_raw() {
        let hex = "00".repeat(31) + "01";
        let a = Kek::parse(hex.as_bytes()).unwrap();
        let mut raw = [0u8; 32];
        raw[31] = 1;
        let b = Kek::parse(&raw).unwrap();
        let c = Kek::parse(format!(" {}\n", STANDARD.encode(raw)).as_bytes()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), c.id());
        assert!(Kek::parse(b"short").is_err());
        assert!(
            Kek::parse_text(&[b'x'; 32]).is_err(),
            "a passphrase is not a key"
        );
        assert!(Kek::parse(STANDARD.encode([1u8; 16]).as_bytes())
            .unwrap_err()
            .contains("16 bytes"));
    }
}
