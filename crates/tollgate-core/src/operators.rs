//! Operators: the people who run this Tollgate. The configuration names their addresses; an
//! account is an operator only while that address is its own, verified, and it has two-factor
//! authentication on. Only an [`Operator`] (made by [`Operators::admit`], nowhere else) opens
//! the operator pages; what it does there is audited as that person.

use tollgate_domain::{Actor, Email, User};

/// The configured operators' addresses.
#[derive(Debug, Clone, Default)]
pub struct Operators {
    addresses: Vec<Email>,
}

/// A signed-in person admitted as an operator.
#[derive(Debug, Clone)]
pub struct Operator {
    actor: Actor,
}

/// Why an account is not admitted as an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    /// Its address is not an operator's (or its address is not verified).
    #[error("Only the operators of this server open these pages")]
    NotAnOperator,
    /// An operator's account without a second factor.
    #[error("Turn on two-factor authentication first: the operator pages need it")]
    NeedsSecondFactor,
}

impl Operators {
    /// The operators with these addresses.
    #[must_use]
    pub fn new(addresses: Vec<Email>) -> Self {
        Self { addresses }
    }

    /// Whether `user` may act as an operator now: an operator's verified address, and a second
    /// factor.
    pub fn admit(&self, user: &User) -> Result<Operator, OperatorError> {
        if user.email_verified_at.is_none() || !self.addresses.contains(&user.email) {
            return Err(OperatorError::NotAnOperator);
        }
        if !user.has_second_factor() {
            return Err(OperatorError::NeedsSecondFactor);
        }
        Ok(Operator {
            actor: Actor::User {
                id: user.id,
                email: user.email.as_ref().to_owned(),
            },
        })
    }

    /// Whether `user`'s address is an operator's (to show the way to the pages).
    #[must_use]
    pub fn names(&self, user: &User) -> bool {
        self.addresses.contains(&user.email)
    }
}

impl Operator {
    /// Who the audit log records.
    #[must_use]
    pub fn actor(&self) -> Actor {
        self.actor.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(email: &str, verified: bool, totp: bool) -> User {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        User {
            id: tollgate_domain::UserId::new(),
            email: Email::parse(email).unwrap(),
            display_name: "Op".into(),
            password_hash: None,
            created_at: now,
            email_verified_at: verified.then_some(now),
            totp_enabled_at: totp.then_some(now),
            passkeys: 0,
            deleted_at: None,
            purge_after: None,
        }
    }

    #[test]
    fn only_a_verified_operator_with_a_second_factor_is_admitted() {
        let operators = Operators::new(vec![Email::parse("ops@example.com").unwrap()]);
        assert!(operators.admit(&user("ops@example.com", true, true)).is_ok());
        assert_eq!(
            operators.admit(&user("ops@example.com", true, false)).unwrap_err(),
            OperatorError::NeedsSecondFactor
        );
        assert_eq!(
            operators.admit(&user("ops@example.com", false, true)).unwrap_err(),
            OperatorError::NotAnOperator
        );
        assert_eq!(
            operators.admit(&user("someone@example.com", true, true)).unwrap_err(),
            OperatorError::NotAnOperator
        );
        assert_eq!(
            Operators::default()
                .admit(&user("ops@example.com", true, true))
                .unwrap_err(),
            OperatorError::NotAnOperator
        );
    }
}
