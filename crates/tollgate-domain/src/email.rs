//! Email addresses, parsed once at the edge.

use std::fmt;

/// A syntactically valid email address, lower-cased whole. Domains are case-insensitive, and
/// although RFC 5321 lets a local part be case-sensitive, no mail provider people use treats it
/// so: `Ada@x.com` and `ada@x.com` must never be two accounts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why a string is not an [`Email`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Empty, too long, or not of the form `local@domain.tld`.
    #[error("'{0}' is not a valid email address")]
    Invalid(String),
}

impl Email {
    /// Parses and normalises an address.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let trimmed = raw.trim();
        let invalid = || EmailError::Invalid(trimmed.chars().take(100).collect());
        // RFC 5321 limits a path to 256 octets, so 254 for the address itself.
        if trimmed.is_empty() || trimmed.len() > 254 {
            return Err(invalid());
        }
        let (local, domain) = trimmed.rsplit_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && local.chars().all(|c| !c.is_whitespace() && !c.is_control());
        let domain_ok = domain.len() >= 3
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !(local_ok && domain_ok) {
            return Err(invalid());
        }
        Ok(Self(format!(
            "{}@{}",
            local.to_lowercase(),
            domain.to_ascii_lowercase()
        )))
    }

    /// The domain part, lower-case.
    #[must_use]
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    // Emails are personal data: debug output (and so logs) never shows them whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email(…@{})", self.domain())
    }
}

#[cfg(test)]
mod tests;
