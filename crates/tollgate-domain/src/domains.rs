//! Verified domains: a team proves it controls a domain by publishing a DNS TXT record, and then
//! everyone who signs up with a verified address at that domain joins the team as a Member.
//!
//! The record: a TXT record `domain-verification=<token>` at `_tollgate-challenge.<domain>`
//! (preferred: it clutters nothing) or at `<domain>` itself. Public suffixes (`co.uk`, `com`) and
//! free mail providers are refused: nobody controls who signs up there.

/// Where the record may be published, for `domain`.
#[must_use]
pub fn record_names(domain: &str) -> [String; 2] {
    [format!("_tollgate-challenge.{domain}"), domain.to_owned()]
}

/// The TXT value that proves control, for `token`.
#[must_use]
pub fn record_value(token: &str) -> String {
    format!("domain-verification={token}")
}

/// Whether any of the TXT values found is the one for `token` (surrounding space ignored).
#[must_use]
pub fn matches(values: &[String], token: &str) -> bool {
    let expected = record_value(token);
    values.iter().any(|v| v.trim() == expected)
}

/// A fresh 128-bit token, as 32 hex digits.
pub fn new_token(rng: &mut (impl rand::CryptoRng + rand::RngCore)) -> String {
    let mut bytes = [0_u8; 16];
    rng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Mail providers anyone can sign up at: never a team's domain.
const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "yahoo.com",
    "ymail.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "gmx.net",
    "gmx.de",
    "mail.com",
    "mail.ru",
    "yandex.ru",
    "yandex.com",
    "qq.com",
    "163.com",
    "126.com",
    "zoho.com",
    "fastmail.com",
    "tutanota.com",
    "hey.com",
];

/// Why a domain cannot be verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Not a domain name.
    #[error("'{0}' is not a domain name")]
    Invalid(String),
    /// A public suffix: many unrelated parties register under it.
    #[error("'{0}' is a public suffix (like com or co.uk); verify a domain registered under it")]
    PublicSuffix(String),
    /// A free mail provider.
    #[error("'{0}' is a public mail provider; anyone can have an address there")]
    FreeMail(String),
}

/// Checks and normalises a domain a team wants to verify: lower case, no trailing dot.
///
/// # Errors
/// When it is not a domain, is a public suffix, or a free mail provider.
pub fn parse_domain(raw: &str) -> Result<String, DomainError> {
    let domain = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels_ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(DomainError::Invalid(raw.chars().take(100).collect()));
    }
    if psl::suffix_str(&domain) == Some(domain.as_str()) {
        return Err(DomainError::PublicSuffix(domain));
    }
    if FREE_MAIL.contains(&domain.as_str()) {
        return Err(DomainError::FreeMail(domain));
    }
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked() {
        assert_eq!(parse_domain(" Example.COM. "), Ok("example.com".into()));
        assert_eq!(
            parse_domain("research.example.co.uk"),
            Ok("research.example.co.uk".into())
        );
        assert!(matches!(parse_domain("co.uk"), Err(DomainError::PublicSuffix(_))));
        assert!(matches!(parse_domain("github.io"), Err(DomainError::PublicSuffix(_))));
        assert!(matches!(parse_domain("gmail.com"), Err(DomainError::FreeMail(_))));
        for bad in ["", "com", "exa mple.com", "-bad.com", "a..b", "http://example.com"] {
            assert!(
                matches!(
                    parse_domain(bad),
                    Err(DomainError::Invalid(_)) | Err(DomainError::PublicSuffix(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_match_only_their_token() {
        let token = new_token(&mut rand::thread_rng());
        assert_eq!(token.len(), 32);
        assert!(matches(
            &["v=spf1 -all".into(), format!(" domain-verification={token} ")],
            &token
        ));
        assert!(!matches(&["domain-verification=other".into()], &token));
        assert_eq!(
            record_names("example.com"),
            ["_tollgate-challenge.example.com", "example.com"]
        );
    }
}
