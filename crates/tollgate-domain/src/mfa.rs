//! Second factors: TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps, one step of drift
//! either way, each step accepted once) and single-use recovery codes (120 random bits each, so a
//! plain SHA-256 stores them, as NIST allows from 112 bits). Also [`SecretSealer`], which
//! encrypts the TOTP seeds at rest (the verifier needs the seed itself).

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

use crate::clock::Timestamp;

/// Seconds per TOTP step.
pub const TOTP_STEP_SECONDS: i64 = 30;
/// Recovery codes per set.
pub const RECOVERY_CODES: usize = 10;

/// A TOTP seed: 160 random bits (RFC 4226's recommendation).
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret([u8; 20]);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(…)")
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl TotpSecret {
    /// A fresh seed.
    pub fn generate(rng: &mut (impl rand::CryptoRng + rand::RngCore)) -> Self {
        let mut bytes = [0; 20];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A seed from its bytes (as unsealed).
    ///
    /// # Errors
    /// When there are not 20 of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, &'static str> {
        <[u8; 20]>::try_from(bytes)
            .map(Self)
            .map_err(|_| "a TOTP seed is 20 bytes")
    }

    /// The seed's bytes, to seal.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// RFC 4648 base32 without padding: what people type into an authenticator app.
    #[must_use]
    pub fn to_base32(&self) -> String {
        let mut out = String::with_capacity(32);
        for chunk in self.0.chunks(5) {
            let n = chunk.iter().fold(0_u64, |acc, b| (acc << 8) | u64::from(*b)) << (8 * (5 - chunk.len()));
            for i in 0..8 {
                out.push(char::from(BASE32[((n >> (35 - 5 * i)) & 31) as usize]));
            }
        }
        out
    }

    /// A seed from its base32 form (as an authenticator app or a test reads it).
    ///
    /// # Errors
    /// When the text is not base32 of 20 bytes.
    pub fn from_base32(text: &str) -> Result<Self, &'static str> {
        let mut bits = 0_u64;
        let mut count = 0;
        let mut bytes = Vec::with_capacity(20);
        for c in text.trim().trim_end_matches('=').bytes() {
            let value = BASE32
                .iter()
                .position(|b| *b == c.to_ascii_uppercase())
                .ok_or("not base32")?;
            bits = (bits << 5) | value as u64;
            count += 5;
            if count >= 8 {
                count -= 8;
                bytes.push(((bits >> count) & 0xff) as u8);
            }
        }
        Self::from_bytes(&bytes)
    }

    /// The `otpauth://` URI an authenticator app scans as a QR code.
    #[must_use]
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer_enc = percent(issuer);
        format!(
            "otpauth://totp/{issuer_enc}:{}?secret={}&issuer={issuer_enc}&algorithm=SHA1&digits=6&period=30",
            percent(account),
            self.to_base32()
        )
    }

    /// The 6-digit code of `step`.
    #[must_use]
    pub fn code_at_step(&self, step: u64) -> u32 {
        let mut mac = <Hmac<sha1::Sha1> as hmac::digest::KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[19] & 0x0f);
        let binary = (u32::from(digest[offset]) & 0x7f) << 24
            | u32::from(digest[offset + 1]) << 16
            | u32::from(digest[offset + 2]) << 8
            | u32::from(digest[offset + 3]);
        binary % 1_000_000
    }

    /// The step `code` matches at `now` (this step or one either side), if it is later than
    /// `last_used` (a code is never accepted twice).
    #[must_use]
    pub fn verify(&self, code: &str, now: Timestamp, last_used: Option<u64>) -> Option<u64> {
        let code = code.trim().replace(' ', "");
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let presented: u32 = code.parse().ok()?;
        let current = u64::try_from(now.timestamp().div_euclid(TOTP_STEP_SECONDS)).ok()?;
        [current.saturating_sub(1), current, current + 1]
            .into_iter()
            .filter(|step| last_used.is_none_or(|last| *step > last))
            .find(|step| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    &self.code_at_step(*step).to_be_bytes()[..],
                    &presented.to_be_bytes()[..],
                ))
            })
    }
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Crockford's base32: no I, L, O or U, so codes read aloud and typed back survive.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// One recovery code: 24 Crockford characters (120 bits), shown as `XXXXXX-XXXXXX-XXXXXX-XXXXXX`.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(…)")
    }
}

impl RecoveryCode {
    /// A fresh set of [`RECOVERY_CODES`].
    pub fn generate_set(rng: &mut (impl rand::CryptoRng + rand::RngCore)) -> Vec<Self> {
        (0..RECOVERY_CODES)
            .map(|_| {
                let code: String = (0..24)
                    .map(|_| char::from(CROCKFORD[(rng.next_u32() % 32) as usize]))
                    .collect();
                Self(code)
            })
            .collect()
    }

    /// A code as typed: dashes and spaces dropped, any case, O read as 0 and I/L as 1.
    #[must_use]
    pub fn presented(text: &str) -> Option<Self> {
        let normal: String = text
            .chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            })
            .collect();
        (normal.len() == 24 && normal.bytes().all(|b| CROCKFORD.contains(&b))).then_some(Self(normal))
    }

    /// Grouped for display.
    #[must_use]
    pub fn display(&self) -> String {
        let groups: Vec<&str> = (0..4).map(|i| &self.0[i * 6..i * 6 + 6]).collect();
        groups.join("-")
    }

    /// What is stored.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// Encrypts small secrets at rest (XChaCha20-Poly1305, random 192-bit nonce), bound to what they
/// belong to (`context`, e.g. the user id), so a sealed value copied to another row does not open.
#[derive(Clone)]
pub struct SecretSealer(XChaCha20Poly1305);

impl std::fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSealer(…)")
    }
}

impl SecretSealer {
    /// A sealer with this 256-bit key.
    #[must_use]
    pub fn new(key: &[u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(key.into()))
    }

    /// `nonce ‖ ciphertext`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8], rng: &mut (impl rand::CryptoRng + rand::RngCore)) -> Vec<u8> {
        let mut nonce = [0_u8; 24];
        rng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        out
    }

    /// The plaintext, or `None` when the value was tampered with, sealed with another key or for
    /// another context.
    #[must_use]
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 + 16 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    #[test]
    fn rfc_6238_vectors() {
        // RFC 6238 Appendix B, SHA-1 seed "12345678901234567890", truncated to 6 digits.
        let secret = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        for (time, code) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
        ] {
            assert_eq!(secret.code_at_step(u64::try_from(time / 30).unwrap()), code, "t={time}");
        }
        assert_eq!(secret.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(TotpSecret::from_base32("gezdgnbvgy3tqojqgezdgnbvgy3tqojq"), Ok(secret));
        assert!(TotpSecret::from_base32("not base 32!").is_err());
    }

    #[test]
    fn codes_match_one_step_either_side_and_only_once() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        let at = |t: i64| DateTime::from_timestamp(t, 0).unwrap();
        // The code of t=59 (step 1) at t=89 (step 2) is accepted; at t=90 (step 3) it is not.
        assert_eq!(secret.verify("287082", at(89), None), Some(1));
        assert_eq!(secret.verify("287082", at(90), None), None);
        // Once step 1 was used, its code is refused.
        assert_eq!(secret.verify("287082", at(59), Some(1)), None);
        assert_eq!(secret.verify("28708", at(59), None), None);
        assert_eq!(secret.verify("abcdef", at(59), None), None);
        assert_eq!(secret.verify(" 287 082 ", at(59), None), Some(1));
    }

    #[test]
    fn otpauth_uri_is_what_apps_scan() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        assert_eq!(
            secret.otpauth_uri("Acme AI", "ada@example.com"),
            "otpauth://totp/Acme%20AI:ada@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Acme%20AI&algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(format!("{secret:?}"), "TotpSecret(…)");
    }

    #[test]
    fn recovery_codes_are_forgiving_to_type_and_stored_hashed() {
        let codes = RecoveryCode::generate_set(&mut rand::thread_rng());
        assert_eq!(codes.len(), 10);
        let shown = codes[0].display();
        assert_eq!(shown.len(), 27);
        let typed = shown
            .to_lowercase()
            .replace('-', " ")
            .replace('0', "o")
            .replace('1', "l");
        assert_eq!(RecoveryCode::presented(&typed).map(|c| c.hash()), Some(codes[0].hash()));
        assert_eq!(RecoveryCode::presented("too-short"), None);
        assert_eq!(RecoveryCode::presented(&"U".repeat(24)), None, "U is not Crockford");
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let sealer = SecretSealer::new(&[7; 32]);
        let sealed = sealer.seal(b"seed", b"user-1", &mut rand::thread_rng());
        assert_eq!(sealer.open(&sealed, b"user-1").as_deref(), Some(&b"seed"[..]));
        assert_eq!(sealer.open(&sealed, b"user-2"), None);
        assert_eq!(SecretSealer::new(&[8; 32]).open(&sealed, b"user-1"), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open(&tampered, b"user-1"), None);
        assert_eq!(sealer.open(b"short", b"user-1"), None);
    }
}
