//! Names and descriptions people type: display names, team names, key and passkey names, team
//! descriptions. One rule for all of them, so no surface stores what another cannot read:
//! trimmed, not empty, at most so many characters, and no control characters (PostgreSQL refuses
//! NUL in text, and the others have no place in a name shown in a console or a mail). A
//! description may span lines, so it also allows line feeds and tabs.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing left after trimming.
    #[error("must not be empty")]
    Empty,
    /// More characters than allowed.
    #[error("must be at most {max} characters")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A control character (NUL, escape, …).
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// A trimmed, non-empty name of at most a given length, without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

impl Name {
    /// The usual limit: display names, team names, key names.
    pub const MAX_CHARS: usize = 100;

    /// Parses a name of at most [`Name::MAX_CHARS`] characters.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        Self::parse_max(raw, Self::MAX_CHARS)
    }

    /// Parses a name of at most `max` characters.
    pub fn parse_max(raw: &str, max: usize) -> Result<Self, NameError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if name.chars().count() > max {
            return Err(NameError::TooLong { max });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An optional free text (a team's description): trimmed, empty means none, at most `max`
/// characters, no control characters but line feeds and tabs.
pub fn parse_description(raw: Option<&str>, max: usize) -> Result<Option<String>, NameError> {
    let Some(text) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(NameError::ControlCharacter);
    }
    if text.chars().count() > max {
        return Err(NameError::TooLong { max });
    }
    Ok(Some(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_printable() {
        assert_eq!(Name::parse("  Research Lab ").unwrap().as_str(), "Research Lab");
        assert_eq!(Name::parse(" \t "), Err(NameError::Empty));
        assert_eq!(Name::parse(&"é".repeat(100)).unwrap().as_str().chars().count(), 100);
        assert_eq!(Name::parse(&"é".repeat(101)), Err(NameError::TooLong { max: 100 }));
        for bad in ["a\0b", "a\u{1b}[31mb", "line\nbreak", "a\u{7f}"] {
            assert_eq!(Name::parse(bad), Err(NameError::ControlCharacter), "{bad:?}");
        }
        assert_eq!(Name::parse_max("abcdef", 5), Err(NameError::TooLong { max: 5 }));
    }

    #[test]
    fn descriptions_may_span_lines() {
        assert_eq!(parse_description(None, 10), Ok(None));
        assert_eq!(parse_description(Some("  "), 10), Ok(None));
        assert_eq!(parse_description(Some("a\nb\tc"), 10), Ok(Some("a\nb\tc".into())));
        assert_eq!(parse_description(Some("a\0"), 10), Err(NameError::ControlCharacter));
        assert_eq!(
            parse_description(Some("abcdefghijk"), 10),
            Err(NameError::TooLong { max: 10 })
        );
    }
}
