//! Password rules (NIST SP 800-63B-4): 15 to 256 characters (15 is NIST's minimum for a password
//! used alone; we ask it of everyone, MFA or not), any characters, no composition rules, not a
//! common password, not the account's own email or the product's name. Each refusal says why.

use std::collections::HashSet;
use std::sync::LazyLock;

/// Fewest characters.
pub const MIN_PASSWORD_CHARS: usize = 15;
/// Most characters (NIST: allow at least 64).
pub const MAX_PASSWORD_CHARS: usize = 256;

static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("../data/common-passwords.txt").lines().collect());

/// Why a password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Too short.
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// Too long.
    #[error("the password must have at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
    /// On the list of common passwords.
    #[error("this password is on a list of commonly used passwords; choose another")]
    Common,
    /// Made of the account's email, or the product's name.
    #[error("the password must not be your email address or the product's name")]
    Contextual,
    /// One character repeated.
    #[error("the password must not be a single character repeated")]
    Repetitive,
}

/// Checks `password` for an account with `email`, on a platform called `product`.
///
/// # Errors
/// The first rule it breaks.
pub fn check_password(password: &str, email: &str, product: &str) -> Result<(), PasswordError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(PasswordError::TooLong);
    }
    let lower = password.to_lowercase();
    if COMMON.contains(lower.as_str()) || COMMON.contains(password) {
        return Err(PasswordError::Common);
    }
    let mut first = lower.chars();
    if let Some(c) = first.next() {
        if first.all(|other| other == c) {
            return Err(PasswordError::Repetitive);
        }
    }
    let email = email.to_lowercase();
    let local = email.split('@').next().unwrap_or_default();
    let product = product.to_lowercase();
    let stripped: String = lower.chars().filter(|c| c.is_alphanumeric()).collect();
    let context = [email.as_str(), local, product.as_str()];
    if context.iter().any(|word| {
        let word: String = word.chars().filter(|c| c.is_alphanumeric()).collect();
        !word.is_empty() && (stripped == word || stripped.trim_end_matches(|c: char| c.is_ascii_digit()) == word)
    }) {
        return Err(PasswordError::Contextual);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_say_why() {
        let check = |p: &str| check_password(p, "ada.lovelace@example.com", "Tollgate");
        assert_eq!(check("correct horse battery staple"), Ok(()));
        assert_eq!(check("short one"), Err(PasswordError::TooShort));
        assert_eq!(check(&"x".repeat(257)), Err(PasswordError::TooLong));
        // On Django's list, and at least 15 characters long.
        assert_eq!(check("polniypizdec0211"), Err(PasswordError::Common));
        assert_eq!(check("zzzzzzzzzzzzzzzzzz"), Err(PasswordError::Repetitive));
        assert_eq!(check("ada.lovelace@example.com"), Err(PasswordError::Contextual));
        assert_eq!(check("Ada-Lovelace-2026"), Err(PasswordError::Contextual));
        assert_eq!(check("tollgatetollgate"), Ok(()), "only the name itself is refused");
        assert_eq!(check("TOLLGATE2026000000"), Err(PasswordError::Contextual));
        // Any characters count, one per code point.
        assert_eq!(check("пароль-пароль-пароль"), Ok(()));
        assert!(COMMON.len() > 19_000, "the whole list is loaded");
    }
}
