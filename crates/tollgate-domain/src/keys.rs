//! Secret keys: API keys (inference) and management keys.
//!
//! Format, after GitHub's tokens: `<prefix><32 base62 random chars><6 base62 chars of CRC32>`,
//! e.g. `tgk_3XwXk9…0mLq17`. 32 base62 characters carry about 190 bits of entropy. The CRC32 of
//! the random part lets secret scanners and our own edge reject look-alikes offline, before
//! any lookup; it is public and unkeyed, so it is no security control.
//!
//! **Invariant:** only the SHA-256 of a key is ever stored ([`KeyHash`]); the plaintext exists in
//! a [`PlainKey`] that is shown once and never logged (its `Debug` is redacted). A fast hash is
//! right here: the secret has far more than the 112 bits that make brute force hopeless, so a
//! slow password hash would only slow the hot path.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;

/// An operator-chosen key prefix such as `tgk_`: 2 to 16 characters of `[a-z0-9]`, ending in `_`
/// or `-` so the key's start is visible and a double-click selects the whole key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

/// Why a prefix is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key prefix '{0}' must be 2-16 characters of a-z and 0-9 ending in '_' or '-'")]
pub struct KeyPrefixError(String);

impl KeyPrefix {
    /// Parses a prefix.
    pub fn parse(raw: &str) -> Result<Self, KeyPrefixError> {
        let body = raw.strip_suffix(['_', '-']).unwrap_or("");
        let ok = (1..=15).contains(&body.len()) && body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(KeyPrefixError(raw.chars().take(40).collect()))
        }
    }
}

impl AsRef<str> for KeyPrefix {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A freshly generated key, in plaintext: to be shown once, then dropped.
pub struct PlainKey(String);

impl PlainKey {
    /// Generates a key with `prefix` from a cryptographically secure `rng`.
    pub fn generate(prefix: &KeyPrefix, rng: &mut (impl rand::CryptoRng + Rng)) -> Self {
        let random: String = (0..RANDOM_LEN)
            .map(|_| char::from(BASE62[rng.gen_range(0..BASE62.len())]))
            .collect();
        let checksum = base62_checksum(random.as_bytes());
        Self(format!("{}{random}{checksum}", prefix.as_ref()))
    }

    /// The plaintext, for the one response that shows it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash to store.
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }

    /// The redacted form shown everywhere else, e.g. `tgk_...q17x`.
    #[must_use]
    pub fn redacted(&self, prefix: &KeyPrefix) -> String {
        let tail = &self.0[self.0.len() - 4..];
        format!("{}...{tail}", prefix.as_ref())
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainKey(..)")
    }
}

/// A presented key whose shape and checksum are valid. It may still be unknown or revoked.
pub struct ParsedKey {
    hash: KeyHash,
}

/// Why a presented key was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Wrong prefix, wrong length or a character outside base62.
    #[error("malformed key")]
    Malformed,
    /// Well-formed, but the checksum does not match: a typo or a fake.
    #[error("key checksum mismatch")]
    BadChecksum,
}

impl ParsedKey {
    /// Checks a presented key's prefix, length, alphabet and checksum.
    pub fn parse(prefix: &KeyPrefix, presented: &str) -> Result<Self, KeyFormatError> {
        let rest = presented
            .strip_prefix(prefix.as_ref())
            .ok_or(KeyFormatError::Malformed)?;
        if rest.len() != RANDOM_LEN + CHECKSUM_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyFormatError::Malformed);
        }
        let (random, checksum) = rest.split_at(RANDOM_LEN);
        if base62_checksum(random.as_bytes()) != checksum {
            return Err(KeyFormatError::BadChecksum);
        }
        Ok(Self {
            hash: KeyHash::of(presented),
        })
    }

    /// The hash to look the key up by.
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        self.hash
    }
}

impl fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ParsedKey(..)")
    }
}

/// SHA-256 of a whole key: what storage holds and what lookups use. Looking a key up by its
/// hash means timing can at most reveal bits of a hash, never of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a key's full text.
    #[must_use]
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Rebuilds a hash read from storage.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as GitHub's secret scanning feedback expects.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Compares two hashes in constant time.
    #[must_use]
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}..)", &self.to_hex()[..8])
    }
}

/// CRC32 of `data` in 6 base62 digits, left-padded with `0` (u32::MAX is `4gfFC3`).
fn base62_checksum(data: &[u8]) -> String {
    let mut value = crc32fast::hash(data);
    let mut digits = [b'0'; CHECKSUM_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// xAI's answer to a key it does not know, showing only the key's ends (`xa***yz`; `***` for
/// anything shorter than 8 characters), and where keys are made.
#[must_use]
pub fn incorrect_key_message(presented: &str, console_url: &str) -> String {
    let chars: Vec<char> = presented.chars().collect();
    let shown = if chars.len() < 8 {
        "***".to_owned()
    } else {
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("{head}***{tail}")
    };
    format!("Incorrect API key provided: {shown}. You can obtain an API key from {console_url}.")
}

#[cfg(test)]
mod tests {

    #[test]
    fn presented_keys_are_shown_only_by_their_ends() {
        assert_eq!(
            incorrect_key_message("tgk_abcdefghijklmnop", "https://console.example"),
            "Incorrect API key provided: tg***op. You can obtain an API key from https://console.example."
        );
        assert!(incorrect_key_message("short", "x").starts_with("Incorrect API key provided: ***."));
    }

    use super::*;

    fn prefix() -> KeyPrefix {
        KeyPrefix::parse("tgk_").unwrap()
    }

    #[test]
    fn checksum_matches_githubs_published_example() {
        // 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: CRC32 of the 30 random chars is 0mLq17.
        assert_eq!(base62_checksum(b"zQWBuTSOoRi4A9spHcVY5ncnsDkxkJ"), "0mLq17");
        assert_eq!(base62_checksum(&[]), "000000");
    }

    #[test]
    fn generated_keys_parse_and_hash_alike() {
        let mut rng = rand::thread_rng();
        let key = PlainKey::generate(&prefix(), &mut rng);
        assert_eq!(key.expose().len(), 4 + 38);
        let parsed = ParsedKey::parse(&prefix(), key.expose()).unwrap();
        assert!(parsed.hash().ct_eq(&key.hash()));
        assert!(key.redacted(&prefix()).starts_with("tgk_..."));
        assert_eq!(format!("{key:?}"), "PlainKey(..)");
    }

    #[test]
    fn rejects_lookalikes_offline() {
        let mut rng = rand::thread_rng();
        let key = PlainKey::generate(&prefix(), &mut rng);
        let mut tampered = key.expose().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(
            ParsedKey::parse(&prefix(), &tampered).unwrap_err(),
            KeyFormatError::BadChecksum
        );
        assert_eq!(
            ParsedKey::parse(&prefix(), "tgk_short").unwrap_err(),
            KeyFormatError::Malformed
        );
        let other = KeyPrefix::parse("tgm_").unwrap();
        assert_eq!(
            ParsedKey::parse(&other, key.expose()).unwrap_err(),
            KeyFormatError::Malformed
        );
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(KeyPrefix::parse("xai-").is_ok());
        for bad in ["", "_", "tgk", "TGK_", "a very long prefix_", "t!_"] {
            assert!(KeyPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }
}
