//! API key ACLs in xAI's grammar: `api-key:endpoint:<name>` and `api-key:model:<name>`, where
//! `<name>` may be `*`. An empty set allows nothing; a request needs a grant for its endpoint
//! **and** one for its model.

use std::fmt;

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Acl {
    /// `api-key:endpoint:<name>`; `None` is `*`.
    Endpoint(Option<String>),
    /// `api-key:model:<name>`; `None` is `*`.
    Model(Option<String>),
}

/// The endpoint names `api-key:endpoint:<name>` may grant are [`Endpoint`]'s. A name not
/// among them is refused when a key is created or updated, so a typo cannot silently grant
/// nothing.
use crate::endpoint::Endpoint;

/// A string that is not an ACL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// Not in the grammar.
    #[error("invalid ACL '{0}': expected 'api-key:endpoint:<name>' or 'api-key:model:<name>'")]
    Syntax(String),
    /// An endpoint name that does not exist.
    #[error("invalid ACL '{0}': unknown endpoint (known: {known})", known = known_endpoints())]
    UnknownEndpoint(String),
    /// More grants than a key may have.
    #[error("a key has at most {max} ACLs ({given} given)", max = MAX_ACLS)]
    TooMany {
        /// How many were given.
        given: usize,
    },
}

/// The most grants one key may have. Matching is linear in the grants and runs on every
/// request, and each is parsed when a key is loaded, so the set stays small.
pub const MAX_ACLS: usize = 100;

fn known_endpoints() -> String {
    Endpoint::ALL.map(Endpoint::as_str).join(", ")
}

impl Acl {
    /// Parses one grant.
    pub fn parse(raw: &str) -> Result<Self, AclError> {
        let invalid = || AclError::Syntax(raw.chars().take(100).collect());
        let rest = raw.strip_prefix("api-key:").ok_or_else(invalid)?;
        let (kind, name) = rest.split_once(':').ok_or_else(invalid)?;
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.*/:".contains(&b));
        if !valid_name {
            return Err(invalid());
        }
        let name = (name != "*").then(|| name.to_owned());
        match kind {
            "endpoint" => match name {
                Some(name) if name.parse::<Endpoint>().is_err() => {
                    Err(AclError::UnknownEndpoint(raw.chars().take(100).collect()))
                }
                name => Ok(Acl::Endpoint(name)),
            },
            "model" => Ok(Acl::Model(name)),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = match self {
            Acl::Endpoint(name) => ("endpoint", name),
            Acl::Model(name) => ("model", name),
        };
        write!(f, "api-key:{kind}:{}", name.as_deref().unwrap_or("*"))
    }
}

/// A key's grants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclSet(Vec<Acl>);

impl AclSet {
    /// Parses every grant, failing on the first invalid one, or at once when there are more
    /// than [`MAX_ACLS`]. Duplicates are kept once, in the order first given.
    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, AclError> {
        if raw.len() > MAX_ACLS {
            return Err(AclError::TooMany { given: raw.len() });
        }
        let mut seen = std::collections::HashSet::with_capacity(raw.len());
        let mut acls = Vec::with_capacity(raw.len());
        for item in raw {
            let acl = Acl::parse(item.as_ref())?;
            if seen.insert(acl.clone()) {
                acls.push(acl);
            }
        }
        Ok(Self(acls))
    }

    /// The grants, in the order given.
    #[must_use]
    pub fn as_slice(&self) -> &[Acl] {
        &self.0
    }

    /// Whether `endpoint` is granted.
    #[must_use]
    pub fn allows(&self, endpoint: Endpoint) -> bool {
        self.allows_endpoint(endpoint.as_str())
    }

    /// Whether the endpoint `name` (e.g. `chat`) is granted.
    #[must_use]
    pub fn allows_endpoint(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|acl| matches!(acl, Acl::Endpoint(None)) || matches!(acl, Acl::Endpoint(Some(n)) if n == name))
    }

    /// Whether the model `name` is granted.
    #[must_use]
    pub fn allows_model(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|acl| matches!(acl, Acl::Model(None)) || matches!(acl, Acl::Model(Some(n)) if n == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_the_grammar() {
        for raw in [
            "api-key:endpoint:chat",
            "api-key:model:grok-4",
            "api-key:model:*",
            "api-key:endpoint:*",
        ] {
            assert_eq!(Acl::parse(raw).unwrap().to_string(), raw);
        }
        for bad in [
            "",
            "*",
            "api-key:chat",
            "api-key:foo:chat",
            "api-key:model:",
            "key:model:x",
            "api-key:model:a b",
            "api-key:endpoint:imagez",
        ] {
            assert!(Acl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sets_are_capped_and_deduplicated() {
        let many: Vec<String> = (0..=MAX_ACLS).map(|i| format!("api-key:model:m{i}")).collect();
        assert_eq!(AclSet::parse(&many), Err(AclError::TooMany { given: MAX_ACLS + 1 }));
        assert_eq!(AclSet::parse(&many[..MAX_ACLS]).unwrap().as_slice().len(), MAX_ACLS);
        let twice = AclSet::parse(&["api-key:model:*", "api-key:endpoint:chat", "api-key:model:*"]).unwrap();
        assert_eq!(twice.as_slice(), [Acl::Model(None), Acl::Endpoint(Some("chat".into()))]);
    }

    #[test]
    fn empty_set_allows_nothing() {
        let acls = AclSet::default();
        assert!(!acls.allows_endpoint("chat"));
        assert!(!acls.allows_model("m"));
    }

    #[test]
    fn wildcards_and_names_match() {
        let acls = AclSet::parse(&["api-key:endpoint:chat", "api-key:model:*"]).unwrap();
        assert!(acls.allows_endpoint("chat"));
        assert!(!acls.allows_endpoint("image"));
        assert!(acls.allows_model("anything"));
    }
}
