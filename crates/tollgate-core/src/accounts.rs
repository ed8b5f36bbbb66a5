//! Accounts: creating users (each with a Personal Team they administer).

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Clock, Email, EmailError, RequestContext, Team, TeamId, User, UserId,
};
use tollgate_store::{Store, StoreError};
use tracing::instrument;

/// Fewest characters in a password. NIST SP 800-63B-4 asks for 15 when the password is the only
/// factor; we ask for it always.
pub const MIN_PASSWORD_CHARS: usize = 15;
/// Most characters in a password (NIST: allow at least 64).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not an email address.
    #[error(transparent)]
    InvalidEmail(#[from] EmailError),
    /// Display name empty or too long.
    #[error("display name must be 1 to 100 characters")]
    InvalidDisplayName,
    /// Too short or too long.
    #[error("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")]
    InvalidPassword,
    /// An account with this email exists.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Accounts service.
#[derive(Clone)]
pub struct AccountService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl AccountService {
    /// A service over `store`, reading time from `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Creates a user with a password and their Personal Team (they are its Admin).
    #[instrument(skip_all)]
    pub async fn create_user(
        &self,
        email: &str,
        display_name: &str,
        password: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<(User, Team), AccountError> {
        let email = Email::parse(email)?;
        let display_name = display_name.trim();
        if display_name.is_empty() || display_name.chars().count() > 100 {
            return Err(AccountError::InvalidDisplayName);
        }
        let password_chars = password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&password_chars) {
            return Err(AccountError::InvalidPassword);
        }
        let password_hash = hash_password(password.to_owned()).await?;
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            email,
            display_name: display_name.to_owned(),
            password_hash: Some(password_hash),
            created_at: now,
        };
        let team = Team {
            id: TeamId::new(),
            name: "Personal Team".to_owned(),
            personal: true,
            created_at: now,
        };
        let audit = AuditEvent::success(
            now,
            Some(team.id),
            actor,
            AuditAction::CreateUser,
            format!("Created user {} with Personal Team {}", user.id, team.id),
            Some(format!("user:{}", user.id)),
            context,
        );
        match self.store.create_user_with_personal_team(&user, &team, &audit).await {
            Ok(()) => Ok((user, team)),
            Err(StoreError::Conflict { constraint }) if constraint == "users_email_key" => {
                Err(AccountError::EmailTaken)
            }
            Err(other) => Err(AccountError::Store(other)),
        }
    }
}

/// Hashes a password with argon2id at OWASP's parameters (19 MiB, 2 passes, 1 lane), off the
/// async runtime: it takes tens of milliseconds of CPU by design.
async fn hash_password(password: String) -> anyhow::Result<String> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let params = Params::new(19 * 1024, 2, 1, None).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let hash = argon2
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))?;
        Ok(hash.to_string())
    })
    .await?
}
