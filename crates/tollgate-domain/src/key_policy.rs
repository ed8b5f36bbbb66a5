//! A team's key policy: the widest grants and the highest limits a Member's API key may have,
//! so a Member can neither undo the limits an Admin set on their key nor make a new key without
//! them. Admins (and management keys) are not bound by it. A Member may always tighten a key,
//! even one that is beyond the policy (made by an Admin, or before the policy).
//!
//! `None` in a field is no ceiling there; the default policy has none at all.

use crate::acl::{Acl, AclSet};

/// The ceiling. With `acls: Some(set)`, a key's every grant must be within `set`: a wildcard
/// grant only under a wildcard, a named one under the same name or a wildcard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    /// The widest grants.
    pub acls: Option<AclSet>,
    /// The highest requests per second.
    pub qps: Option<u32>,
    /// The highest requests per minute.
    pub qpm: Option<u32>,
    /// The highest tokens per minute.
    pub tpm: Option<u64>,
}

/// What of a key the policy bounds.
#[derive(Debug, Clone, Copy)]
pub struct KeyShape<'a> {
    /// Its grants.
    pub acls: &'a AclSet,
    /// Requests per second (`None`: unlimited).
    pub qps: Option<u32>,
    /// Requests per minute.
    pub qpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
}

impl<'a> KeyShape<'a> {
    /// The shape of `key`.
    #[must_use]
    pub fn of(key: &'a crate::ApiKey) -> Self {
        Self {
            acls: &key.acls,
            qps: key.qps,
            qpm: key.qpm,
            tpm: key.tpm,
        }
    }
}

/// Where a key goes beyond the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    /// A grant the policy does not cover.
    #[error("the ACL '{0}' is beyond your team's key policy; ask a team Admin")]
    Acl(String),
    /// A limit missing or above the ceiling.
    #[error("your team's key policy allows {field} of at most {max}; ask a team Admin for more")]
    Limit {
        /// `qps`, `qpm` or `tpm`.
        field: &'static str,
        /// The ceiling.
        max: u64,
    },
}

fn covers(set: &AclSet, acl: &Acl) -> bool {
    match acl {
        Acl::Endpoint(None) => set.as_slice().contains(&Acl::Endpoint(None)),
        Acl::Endpoint(Some(name)) => set.allows_endpoint(name),
        Acl::Model(None) => set.as_slice().contains(&Acl::Model(None)),
        Acl::Model(Some(name)) => set.allows_model(name),
    }
}

/// Whether limit `new` is no looser than `before` (`None` is unlimited).
fn no_looser<T: PartialOrd>(new: Option<T>, before: Option<T>) -> bool {
    match (new, before) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(new), Some(before)) => new <= before,
    }
}

fn check_limit<T: PartialOrd + Copy + Into<u64>>(
    field: &'static str,
    max: Option<T>,
    new: Option<T>,
    before: Option<Option<T>>,
) -> Result<(), PolicyViolation> {
    let Some(max) = max else { return Ok(()) };
    let within = new.is_some_and(|value| value <= max);
    let tightened = before.is_some_and(|before| no_looser(new, before));
    if within || tightened {
        Ok(())
    } else {
        Err(PolicyViolation::Limit { field, max: max.into() })
    }
}

impl KeyPolicy {
    /// Whether the policy sets any ceiling.
    #[must_use]
    pub fn is_open(&self) -> bool {
        *self == Self::default()
    }

    /// Checks a Member's key `new`, which was `before` (`None` for a new key): each grant and
    /// limit must be within the policy, or no looser than it was.
    pub fn check(&self, new: KeyShape<'_>, before: Option<KeyShape<'_>>) -> Result<(), PolicyViolation> {
        if let Some(allowed) = &self.acls {
            for acl in new.acls.as_slice() {
                let tightened = before.is_some_and(|before| covers(before.acls, acl));
                if !covers(allowed, acl) && !tightened {
                    return Err(PolicyViolation::Acl(acl.to_string()));
                }
            }
        }
        check_limit("qps", self.qps, new.qps, before.map(|b| b.qps))?;
        check_limit("qpm", self.qpm, new.qpm, before.map(|b| b.qpm))?;
        check_limit("tpm", self.tpm, new.tpm, before.map(|b| b.tpm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acls(raw: &[&str]) -> AclSet {
        AclSet::parse(raw).unwrap()
    }

    fn shape(acls: &AclSet, qps: Option<u32>) -> KeyShape<'_> {
        KeyShape {
            acls,
            qps,
            qpm: None,
            tpm: None,
        }
    }

    #[test]
    fn the_default_policy_bounds_nothing() {
        let all = acls(&["api-key:endpoint:*", "api-key:model:*"]);
        assert!(KeyPolicy::default().is_open());
        assert_eq!(KeyPolicy::default().check(shape(&all, None), None), Ok(()));
    }

    #[test]
    fn grants_must_be_within_the_policy() {
        let policy = KeyPolicy {
            acls: Some(acls(&[
                "api-key:endpoint:chat",
                "api-key:model:grok-*",
                "api-key:model:mini",
            ])),
            ..KeyPolicy::default()
        };
        let ok = acls(&["api-key:endpoint:chat", "api-key:model:mini"]);
        assert_eq!(policy.check(shape(&ok, None), None), Ok(()));
        for beyond in ["api-key:endpoint:*", "api-key:model:*", "api-key:model:other"] {
            let wide = acls(&[beyond]);
            assert_eq!(
                policy.check(shape(&wide, None), None),
                Err(PolicyViolation::Acl(beyond.into())),
                "{beyond}"
            );
        }
        // A key already wider may keep (or drop) what it had.
        let had = acls(&["api-key:model:*", "api-key:endpoint:chat"]);
        let kept = acls(&["api-key:model:*"]);
        assert_eq!(policy.check(shape(&kept, None), Some(shape(&had, None))), Ok(()));
    }

    #[test]
    fn limits_are_capped_but_may_always_tighten() {
        let none = AclSet::default();
        let policy = KeyPolicy {
            qps: Some(10),
            ..KeyPolicy::default()
        };
        assert_eq!(policy.check(shape(&none, Some(10)), None), Ok(()));
        let over = Err(PolicyViolation::Limit { field: "qps", max: 10 });
        assert_eq!(policy.check(shape(&none, Some(11)), None), over);
        assert_eq!(policy.check(shape(&none, None), None), over, "unlimited is beyond");
        // An Admin's qps 5 cannot be lifted by its Member beyond 10, nor removed.
        let before = Some(shape(&none, Some(5)));
        assert_eq!(policy.check(shape(&none, Some(8)), before), Ok(()));
        assert_eq!(policy.check(shape(&none, None), before), over);
        // A key over the policy may tighten, not loosen.
        let wide = Some(shape(&none, Some(100)));
        assert_eq!(policy.check(shape(&none, Some(50)), wide), Ok(()));
        assert_eq!(policy.check(shape(&none, Some(101)), wide), over);
    }
}
