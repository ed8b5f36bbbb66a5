//! Creating accounts: a user with their Personal Team (by the operator or by sign-up), renaming, and
//! the per-address limit on what costs the platform (sign-ups, sign-ins begun).

use tollgate_domain::password::check_password;
use tollgate_domain::{Actor, AuditAction, AuditEvent, Email, RequestContext, Team, TeamId, User, UserId};
use tollgate_store::StoreError;
use tracing::instrument;

use super::{AccountError, AccountService, MAX_SIGN_UPS_PER_HOUR, SignedIn, throttle, user_actor, valid_display_name};

impl AccountService {
    /// Creates a user with a password and their Personal Team (they are its Admin). Used by the
    /// operator's command line; people sign up with [`Self::sign_up`].
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
        let display_name = valid_display_name(display_name)?;
        check_password(password, email.as_ref(), &self.product)?;
        let password_hash = self.hashing.hash(password.to_owned()).await?;
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            email,
            display_name: display_name.to_owned(),
            password_hash: Some(password_hash),
            created_at: now,
            email_verified_at: None,
            totp_enabled_at: None,
            passkeys: 0,
            deleted_at: None,
            purge_after: None,
        };
        let team = Team {
            id: TeamId::new(),
            name: "Personal Team".to_owned(),
            description: None,
            personal: true,
            created_at: now,
        };
        let actor = match actor {
            // Signing up, the new user is the actor.
            Actor::System => user_actor(&user),
            other => other,
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

    /// Counts one `what` from the request's client address against `max` an hour; `Throttled`
    /// beyond it. Requests without a known address are not counted.
    pub(crate) fn throttle_per_address(
        &self,
        what: &str,
        max: u64,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        let Some(ip) = &context.ip else { return Ok(()) };
        let address = throttle::address_key(ip);
        if self.throttle.allow(&format!("{what}:{address}"), max, self.clock.now()) {
            Ok(())
        } else {
            Err(AccountError::Throttled {
                retry_after_seconds: 3600,
            })
        }
    }

    /// Changes the name shown in the console; the changed account.
    pub async fn rename(
        &self,
        user: &User,
        display_name: &str,
        context: &RequestContext,
    ) -> Result<User, AccountError> {
        let display_name = valid_display_name(display_name)?;
        let audits = self
            .account_events(
                user,
                self.clock.now(),
                AuditAction::UpdateProfile,
                "Changed the account's display name",
                context,
            )
            .await?;
        self.store.set_display_name(user.id, &display_name, &audits).await?;
        Ok(User {
            display_name: display_name.to_owned(),
            ..user.clone()
        })
    }

    /// Self-service sign-up: the account, its Personal Team, a verification link by mail, and a
    /// session. An address any account uses is refused.
    #[instrument(skip_all)]
    pub async fn sign_up(
        &self,
        email: &str,
        display_name: &str,
        password: &str,
        context: &RequestContext,
    ) -> Result<SignedIn, AccountError> {
        self.throttle_per_address("signup", MAX_SIGN_UPS_PER_HOUR, context)?;
        // An address in use (by an account signing in with a provider, say) is not taken over
        // by a password sign-up: its owner signs in and adds a password. A separate account at
        // the same address is chosen only at a provider's sign-up, whose address is vouched for.
        if self.store.find_user_by_email(&Email::parse(email)?).await?.is_some() {
            return Err(AccountError::EmailTaken);
        }
        let (user, _team) = self
            .create_user(email, display_name, password, Actor::System, context)
            .await?;
        self.send_verification(&user, context).await?;
        self.start_session(user, "a password (new account)", context).await
    }
}
