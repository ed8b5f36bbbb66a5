//! Console sessions and single-use account tokens (email verification, password reset): 256
//! random bits, handed out once, stored only as their SHA-256.

use sha2::{Digest as _, Sha256};

use crate::clock::Timestamp;
use crate::ids::{SessionId, UserId};

/// A secret handed to a browser or put in an emailed link; only its hash is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(…)")
    }
}

impl SecretToken {
    /// 256 fresh random bits, as 43 base64url characters.
    pub fn generate(rng: &mut (impl rand::CryptoRng + rand::RngCore)) -> Self {
        let mut bytes = [0_u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(base64url(&bytes))
    }

    /// A token as presented (a cookie, a link); not checked beyond its length.
    #[must_use]
    pub fn presented(text: &str) -> Option<Self> {
        (text.len() == 43
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(text.to_owned()))
    }

    /// The value, to hand out once.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signed-in session of the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Id (shown in session lists; not the secret).
    pub id: SessionId,
    /// Whose.
    pub user_id: UserId,
    /// When it began (sign-in).
    pub created_at: Timestamp,
    /// When it was last used (updated at most once a minute).
    pub last_seen_at: Timestamp,
    /// It ends at this time whatever its use.
    pub absolute_expires_at: Timestamp,
    /// Client address at sign-in.
    pub ip: Option<String>,
    /// Browser at sign-in.
    pub user_agent: Option<String>,
    /// Approximate place at sign-in, from the address (`None`: unknown).
    pub location: Option<String>,
    /// When it was ended (sign-out, "end other sessions", password change).
    pub revoked_at: Option<Timestamp>,
}

impl Session {
    /// Whether it may still be used at `now`, given the idle timeout.
    #[must_use]
    pub fn is_live(&self, now: Timestamp, idle: chrono::Duration) -> bool {
        self.revoked_at.is_none() && now < self.absolute_expires_at && now < self.last_seen_at + idle
    }
}

/// What a single-use account token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Proves the account owns its email address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
    /// Confirms a new email address (sent to the new address).
    ChangeEmail,
    /// Stops an email change the owner did not ask for (sent to the old address).
    ReportEmailChange,
    /// Restores a deleted account (handed out at sign-in, within the 30 days).
    RestoreAccount,
}

impl TokenPurpose {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::VerifyEmail => "verify_email",
            TokenPurpose::ResetPassword => "reset_password",
            TokenPurpose::ChangeEmail => "change_email",
            TokenPurpose::ReportEmailChange => "report_email_change",
            TokenPurpose::RestoreAccount => "restore_account",
        }
    }

    /// How long a link stays valid.
    #[must_use]
    pub const fn lifetime(self) -> chrono::Duration {
        match self {
            TokenPurpose::VerifyEmail => chrono::Duration::hours(24),
            TokenPurpose::ResetPassword => chrono::Duration::minutes(60),
            TokenPurpose::ChangeEmail => chrono::Duration::hours(24),
            TokenPurpose::ReportEmailChange => chrono::Duration::days(7),
            TokenPurpose::RestoreAccount => chrono::Duration::minutes(15),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_url_safe_characters_and_hide_in_debug() {
        let token = SecretToken::generate(&mut rand::thread_rng());
        assert_eq!(token.expose().len(), 43);
        assert_eq!(SecretToken::presented(token.expose()), Some(token.clone()));
        assert_eq!(SecretToken::presented("short"), None);
        assert_eq!(SecretToken::presented(&"a".repeat(42).replace('a', "/")), None);
        assert_eq!(format!("{token:?}"), "SecretToken(…)");
        assert_ne!(SecretToken::generate(&mut rand::thread_rng()), token);
        // Known answer: 32 zero bytes.
        assert_eq!(base64url(&[0; 32]), "A".repeat(43));
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
