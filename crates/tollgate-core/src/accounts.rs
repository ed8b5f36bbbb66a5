//! Accounts: sign-up (each user gets a Personal Team they administer), sign-in with sessions,
//! email verification and password reset by single-use links, and the console's view of who is
//! asking ([`AccountService::member`]).
//!
//! Sign-in answers the same, in about the same time, for an unknown email and a wrong password
//! (a dummy hash is verified when there is no account), and is throttled per account and per
//! client address. Every action writes its audit event into each of the user's teams' logs.

use std::sync::Arc;

use tollgate_domain::mfa::{RecoveryCode, SecretSealer, TotpSecret};
use tollgate_domain::password::{PasswordError, check_password};
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Clock, Email, EmailError, Membership, RequestContext, SecretToken, Session,
    SessionId, Team, TeamId, Timestamp, TokenPurpose, User, UserId,
};
use tollgate_domain::{Entropy, EntropyRng, OsEntropy};
use tollgate_store::{AccountToken, EndSessions, MfaChange, PasswordChange, Store, StoreError, TokenRedemption};
use tracing::instrument;

use crate::Caller;

mod passkeys;
mod throttle;
use crate::geo::Locator;
use crate::notices::Notices;
use crate::passwords::{HashingError, PasswordHashing};
pub use passkeys::{PasskeyChallenge, relying_party};
use throttle::Throttle;

pub use tollgate_domain::password::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not an email address.
    #[error(transparent)]
    InvalidEmail(#[from] EmailError),
    /// Display name empty or too long.
    #[error("display name {0}")]
    InvalidDisplayName(tollgate_domain::NameError),
    /// The password breaks a rule (the message says which).
    #[error(transparent)]
    InvalidPassword(#[from] PasswordError),
    /// An account with this email exists.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// The new address is the current one.
    #[error("that is already the account's email address")]
    SameEmail,
    /// Unknown email or wrong password: the two answer alike.
    #[error("Incorrect email or password")]
    BadCredentials,
    /// Passkeys are not available here (the console URL names no host).
    #[error("Passkeys are not available on this server (its console URL must name a host, not an IP address)")]
    PasskeysUnavailable,
    /// The account has as many passkeys as it may.
    #[error("an account may have at most {0} passkeys; remove one first")]
    TooManyPasskeys(usize),
    /// A passkey's name is empty, too long or has control characters.
    #[error("a passkey's name {0}")]
    InvalidPasskeyName(tollgate_domain::NameError),
    /// The passkey ceremony is unknown, used, expired or someone else's.
    #[error("This passkey request expired or was already answered; start again")]
    InvalidCeremony,
    /// The authenticator's answer did not validate.
    #[error("The passkey was not accepted: {0}")]
    BadPasskey(String),
    /// The credential is registered already.
    #[error("this passkey is registered already")]
    PasskeyTaken,
    /// No such passkey on the account.
    #[error("no such passkey")]
    PasskeyNotFound,
    /// The account has no passkeys.
    #[error("the account has no passkeys")]
    NoPasskeys,
    /// Removing the password would leave the account with no way to sign in.
    #[error("this is the account's last way to sign in: link a sign-in provider before removing the password")]
    LastSignInMethod,
    /// The account has no password to remove.
    #[error("the account has no password")]
    NoPassword,
    /// A sensitive change on an account with a password, sent without it.
    #[error("Enter your password again to confirm this change")]
    PasswordRequired,
    /// A sensitive change on an account without a password (it signs in with a provider), from a
    /// session older than the re-authentication window.
    #[error(
        "Sign in again to confirm this change: your account has no password, so a sign-in within the last 10 minutes stands in for it"
    )]
    ReauthenticationRequired,
    /// Too many failed sign-ins for this account or from this address.
    #[error("Too many failed sign-in attempts; try again in {retry_after_seconds} seconds")]
    Throttled {
        /// When to try again.
        retry_after_seconds: u64,
    },
    /// No session, or it ended or expired.
    #[error("You are not signed in, or your session has ended")]
    NotSignedIn,
    /// A state-changing request without the session's CSRF token.
    #[error("Missing or wrong X-CSRF-Token header")]
    CsrfMismatch,
    /// The link is unknown, used or expired.
    #[error("This link is invalid, already used or expired")]
    InvalidLink,
    /// No such session of this user.
    #[error("session not found")]
    SessionNotFound,
    /// The account has a second factor, and none was given.
    #[error(
        "This account has two-factor authentication: send a code from the authenticator app, a passkey, or a recovery code"
    )]
    SecondFactorRequired,
    /// The code or recovery code is wrong, or was used before.
    #[error("Incorrect or already used code")]
    BadSecondFactor,
    /// TOTP is already the second factor.
    #[error("Two-factor authentication is already on; turn it off first")]
    MfaAlreadyEnabled,
    /// There is no second factor to use or remove.
    #[error("Two-factor authentication is not on")]
    MfaNotEnabled,
    /// No enrolment was started.
    #[error("Start the enrolment first (POST /api/account/mfa/totp)")]
    NoPendingEnrollment,
    /// Not a member of the team (or no such team: they look alike).
    #[error("team not found")]
    TeamNotFound,
    /// Deleting would leave these teams without an Admin.
    #[error("You are the only Admin of {0}: make another member Admin, or delete the team, first")]
    SoleAdmin(String),
    /// The account, or the address, had its hour's share of mail a person can cause.
    #[error("Too many emails from your account or to this address; try again in an hour")]
    MailLimited,
    /// Every password hashing worker is busy and the queue is full: try again in a moment.
    #[error("Too many sign-ins at once; try again in a moment")]
    Busy,
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for AccountError {
    fn from(error: StoreError) -> Self {
        AccountError::Store(error)
    }
}

impl From<HashingError> for AccountError {
    fn from(error: HashingError) -> Self {
        match error {
            HashingError::Busy => AccountError::Busy,
            HashingError::Failed(error) => AccountError::Unexpected(error),
        }
    }
}

/// Session lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A session unused this long ends.
    pub idle: chrono::Duration,
    /// A session ends this long after sign-in, however used.
    pub absolute: chrono::Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            idle: chrono::Duration::minutes(30),
            absolute: chrono::Duration::hours(12),
        }
    }
}

/// A new session: the secrets are handed to the browser once.
#[derive(Debug)]
pub struct SignedIn {
    /// The user.
    pub user: User,
    /// The session.
    pub session: Session,
    /// The session token (the cookie's value).
    pub token: SecretToken,
    /// The CSRF token the console sends back in `X-CSRF-Token`.
    pub csrf: SecretToken,
}

/// Per hour: reset links per address, verification mails per account, sign-ups per client address.
const MAX_RESETS_PER_HOUR: u64 = 5;
const MAX_VERIFICATIONS_PER_HOUR: u64 = 5;
const MAX_SIGN_UPS_PER_HOUR: u64 = 20;
/// Per hour and client address: external sign-ins begun (each stores a flow until it expires).
pub(crate) const MAX_EXTERNAL_STARTS_PER_HOUR: u64 = 300;
/// How long a tripped sign-in throttle asks the client to wait.
const THROTTLED_FOR_SECONDS: u64 = 15 * 60;
/// A session's last use is written at most this often.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::minutes(1);
/// How recent a sign-in stands in for the password, for accounts that have none.
pub const REAUTH_WINDOW: chrono::Duration = chrono::Duration::minutes(10);

/// Accounts service.
#[derive(Clone)]
pub struct AccountService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    notices: Notices,
    product: String,
    sessions: SessionSettings,
    throttle: Throttle,
    hashing: PasswordHashing,
    /// Verified when an email has no account, so both answers take as long.
    dummy_hash: Arc<tokio::sync::OnceCell<String>>,
    /// Seals TOTP seeds at rest.
    sealer: SecretSealer,
    /// Places addresses, for sessions and sign-in alerts.
    locator: Arc<dyn Locator>,
    /// The WebAuthn relying party, when passkeys are available.
    webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// Where tokens, seeds and codes are drawn from.
    entropy: Arc<dyn Entropy>,
}

/// A sign-in from a device (browser) and place pair not seen in this long is announced by mail.
pub(crate) const SEEN_WITHIN: chrono::Duration = chrono::Duration::days(90);

/// What a sign-in with a password leads to.
#[derive(Debug)]
pub enum SignInOutcome {
    /// Signed in.
    SignedIn(Box<SignedIn>),
    /// The password was right; now the second factor, with this challenge (5 minutes).
    SecondFactor {
        /// Sent back with the code.
        challenge: SecretToken,
        /// The factors the account has: `totp`, `passkey`, `recovery_code`.
        methods: Vec<&'static str>,
    },
    /// The account was deleted and can still be restored, with this token (15 minutes).
    Deleted {
        /// Sent back to restore.
        restore: SecretToken,
        /// The end of the restore period.
        purge_after: Timestamp,
    },
}

/// How long after deletion an account can be restored.
pub const RESTORE_PERIOD: chrono::Duration = chrono::Duration::days(30);

/// A second factor as presented.
#[derive(Debug, Clone)]
pub enum SecondFactor {
    /// A 6-digit code from the authenticator app.
    Totp(String),
    /// One of the recovery codes.
    RecoveryCode(String),
    /// A passkey's answer to a challenge from [`AccountService::passkey_challenge`].
    Passkey {
        /// The ceremony token the challenge came with.
        ceremony: String,
        /// The browser's `PublicKeyCredential`, as JSON.
        credential: serde_json::Value,
    },
}

/// A TOTP enrolment in progress: shown once, confirmed with a first code.
#[derive(Debug)]
pub struct TotpEnrollment {
    /// The seed in base32, to type in.
    pub secret: String,
    /// The `otpauth://` URI, to show as a QR code.
    pub otpauth_uri: String,
}

/// How long the step between password and second factor stays open.
const CHALLENGE_LIFETIME: chrono::Duration = chrono::Duration::minutes(5);

/// One event per team the user belongs to (the platform's log when none), so each team's
/// Admins see their members' sign-ins and account changes.
fn user_events(
    memberships: &[Membership],
    user: &User,
    at: Timestamp,
    action: AuditAction,
    description: &str,
    success: bool,
    context: &RequestContext,
) -> Vec<AuditEvent> {
    let actor = user_actor(user);
    let target = Some(format!("user:{}", user.id));
    let make = |team: Option<TeamId>| {
        let build = if success {
            AuditEvent::success
        } else {
            AuditEvent::denied
        };
        let mut event = build(
            at,
            team,
            actor.clone(),
            action,
            description.to_owned(),
            target.clone(),
            context,
        );
        if !success {
            event.outcome = tollgate_domain::Outcome::Failure;
        }
        event
    };
    if memberships.is_empty() {
        vec![make(None)]
    } else {
        memberships.iter().map(|m| make(Some(m.team.id))).collect()
    }
}

fn user_actor(user: &User) -> Actor {
    Actor::User {
        id: user.id,
        email: user.email.as_ref().to_owned(),
    }
}

impl AccountService {
    /// A service over `store`, reading time from `clock`; mail through `notices`; `product`
    /// names the platform (a password may not be just that).
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        notices: Notices,
        product: impl Into<String>,
        sessions: SessionSettings,
        sealer: SecretSealer,
        locator: Arc<dyn Locator>,
    ) -> Self {
        Self {
            store,
            clock,
            notices,
            product: product.into(),
            sessions,
            throttle: Throttle::default(),
            hashing: PasswordHashing::for_this_machine(),
            dummy_hash: Arc::default(),
            sealer,
            locator,
            webauthn: None,
            entropy: Arc::new(OsEntropy),
        }
    }

    /// Draws secrets from `entropy` (tests pin it with a seeded one).
    #[must_use]
    pub fn with_entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    /// A generator over this service's entropy.
    pub(crate) fn rng(&self) -> EntropyRng<'_> {
        EntropyRng(&*self.entropy)
    }

    /// Hashes passwords with `hashing` (tests count and hold hashes through it).
    #[must_use]
    pub fn with_password_hashing(mut self, hashing: PasswordHashing) -> Self {
        self.hashing = hashing;
        self
    }

    /// Turns passkeys on, with this relying party ([`relying_party`]).
    #[must_use]
    pub fn with_passkeys(mut self, webauthn: Arc<webauthn_rs::Webauthn>) -> Self {
        self.webauthn = Some(webauthn);
        self
    }

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
    /// session.
    #[instrument(skip_all)]
    pub async fn sign_up(
        &self,
        email: &str,
        display_name: &str,
        password: &str,
        context: &RequestContext,
    ) -> Result<SignedIn, AccountError> {
        self.throttle_per_address("signup", MAX_SIGN_UPS_PER_HOUR, context)?;
        let (user, _team) = self
            .create_user(email, display_name, password, Actor::System, context)
            .await?;
        self.send_verification(&user, context).await?;
        self.start_session(user, "a password (new account)", context).await
    }

    /// Mails a link proving the address (24 hours, single use). Also the "resend" action.
    pub async fn send_verification(&self, user: &User, context: &RequestContext) -> Result<(), AccountError> {
        if !self.throttle.allow(
            &format!("verify:{}", user.id),
            MAX_VERIFICATIONS_PER_HOUR,
            self.clock.now(),
        ) {
            return Err(AccountError::Throttled {
                retry_after_seconds: 3600,
            });
        }
        let token = SecretToken::generate(&mut self.rng());
        let now = self.clock.now();
        let purpose = TokenPurpose::VerifyEmail;
        let mail = self.notices.verify_email(user, &token, now);
        let audits = self
            .account_events(
                user,
                now,
                AuditAction::RequestEmailVerification,
                "Sent an email verification link to the account's address",
                context,
            )
            .await?;
        let record = AccountToken::issue(token.hash(), user.id, purpose, now, None);
        self.store.insert_account_token(&record, &[mail], &audits).await?;
        self.notices.queued();
        Ok(())
    }

    /// Redeems an email verification link.
    pub async fn verify_email(&self, token: &str, context: &RequestContext) -> Result<User, AccountError> {
        let (record, user) = self.live_token(token, TokenPurpose::VerifyEmail).await?;
        let now = self.clock.now();
        let audits = self
            .account_events(
                &user,
                now,
                AuditAction::VerifyEmail,
                "Verified the account's email address",
                context,
            )
            .await?;
        let redeemed = self
            .store
            .redeem_account_token(&TokenRedemption {
                hash: record.hash,
                purpose: TokenPurpose::VerifyEmail,
                user_id: user.id,
                new_password_hash: None,
                at: now,
                mail: &[],
                audits: &audits,
            })
            .await?;
        if !redeemed {
            return Err(AccountError::InvalidLink);
        }
        let user = self.store.get_user(user.id).await?;
        // A verified address takes up the invitations waiting for it.
        crate::teams::join_teams_on_verification(&*self.store, &*self.clock, &self.notices, &user, context).await?;
        Ok(user)
    }

    /// A token that exists, is for `purpose`, unused and unexpired, with its user.
    async fn live_token(&self, token: &str, purpose: TokenPurpose) -> Result<(AccountToken, User), AccountError> {
        let token = SecretToken::presented(token.trim()).ok_or(AccountError::InvalidLink)?;
        let record = self
            .store
            .find_account_token(&token.hash())
            .await?
            .filter(|r| r.purpose == purpose && r.used_at.is_none() && r.expires_at > self.clock.now())
            .ok_or(AccountError::InvalidLink)?;
        let user = self.store.get_user(record.user_id).await?;
        Ok((record, user))
    }

    /// Asks for a password reset link. Answers the same whether or not the account exists; the
    /// link (60 minutes, single use) goes only to the account's address.
    #[instrument(skip_all)]
    pub async fn request_password_reset(&self, email: &str, context: &RequestContext) -> Result<(), AccountError> {
        let Ok(email) = Email::parse(email) else {
            return Ok(());
        };
        let Some(user) = self.store.find_user_by_email(&email).await? else {
            return Ok(());
        };
        // The same answer when over the limit too: the address is not mail-bombed, and nobody
        // learns whether it has an account.
        if !self
            .throttle
            .allow(&format!("reset:{}", user.id), MAX_RESETS_PER_HOUR, self.clock.now())
        {
            tracing::warn!(user.id = %user.id, "password reset links asked too often; none sent");
            return Ok(());
        }
        let token = SecretToken::generate(&mut self.rng());
        let now = self.clock.now();
        let purpose = TokenPurpose::ResetPassword;
        let mail = self.notices.reset_password(&user, &token, now);
        let audits = self
            .account_events(
                &user,
                now,
                AuditAction::RequestPasswordReset,
                "Asked for a password reset link",
                context,
            )
            .await?;
        let record = AccountToken::issue(token.hash(), user.id, purpose, now, None);
        self.store.insert_account_token(&record, &[mail], &audits).await?;
        self.notices.queued();
        Ok(())
    }

    /// Sets a new password with a reset link: every session ends, every other reset link dies,
    /// and the account is told.
    #[instrument(skip_all)]
    pub async fn reset_password(
        &self,
        token: &str,
        password: &str,
        factor: Option<&SecondFactor>,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        let (record, user) = self.live_token(token, TokenPurpose::ResetPassword).await?;
        check_password(password, user.email.as_ref(), &self.product)?;
        // A reset link proves the mailbox, not the second factor.
        if user.has_second_factor() {
            let factor = factor.ok_or(AccountError::SecondFactorRequired)?;
            self.check_second_factor(&user, factor, context).await?;
        }
        let password_hash = self.hashing.hash(password.to_owned()).await?;
        let now = self.clock.now();
        let audits = self
            .account_events(
                &user,
                now,
                AuditAction::ResetPassword,
                "Reset the password with an emailed link; every session was ended",
                context,
            )
            .await?;
        let mail = [self.notices.password_changed(&user, now, context)];
        let redeemed = self
            .store
            .redeem_account_token(&TokenRedemption {
                hash: record.hash,
                purpose: TokenPurpose::ResetPassword,
                user_id: user.id,
                new_password_hash: Some(&password_hash),
                at: now,
                mail: &mail,
                audits: &audits,
            })
            .await?;
        if !redeemed {
            return Err(AccountError::InvalidLink);
        }
        self.notices.queued();
        Ok(())
    }

    /// Signs in with email and password: a new session (new tokens every time).
    #[instrument(skip_all)]
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        context: &RequestContext,
    ) -> Result<SignInOutcome, AccountError> {
        let now = self.clock.now();
        let key = email.trim().to_lowercase();
        // Counted before any work, so concurrent guesses cannot all pass the check.
        let attempt = self
            .throttle
            .begin(&key, context.ip.as_deref(), now)
            .map_err(|_| AccountError::Throttled {
                retry_after_seconds: THROTTLED_FOR_SECONDS,
            })?;
        let user = match Email::parse(email) {
            Ok(email) => self.store.find_user_by_email(&email).await?,
            Err(_) => None,
        };
        let stored_hash = match user.as_ref().and_then(|u| u.password_hash.clone()) {
            Some(hash) => hash,
            None => self.dummy_hash().await?,
        };
        let matches = self.hashing.verify(password.to_owned(), stored_hash).await?;
        let user = match (user, matches) {
            (Some(user), true) => {
                attempt.succeeded();
                user
            }
            (user, _) => {
                attempt.failed(now);
                // A failed sign-in to an existing account is on its teams' record.
                if let Some(user) = user {
                    self.record_account_failure(
                        &user,
                        now,
                        AuditAction::SignIn,
                        "Sign-in failed: wrong password",
                        context,
                    )
                    .await?;
                }
                return Err(AccountError::BadCredentials);
            }
        };
        self.after_first_factor(user, "a password", context).await
    }

    /// What follows a first factor (a password, or an external sign-in `how`): the second factor
    /// if the account has one, a restore offer if it was deleted, else a session.
    pub async fn after_first_factor(
        &self,
        user: User,
        how: &str,
        context: &RequestContext,
    ) -> Result<SignInOutcome, AccountError> {
        let now = self.clock.now();
        if user.has_second_factor() {
            // (A deleted account with a second factor proves it too before it may be restored.)
            let challenge = SecretToken::generate(&mut self.rng());
            self.store
                .create_mfa_challenge(&challenge.hash(), user.id, now, now + CHALLENGE_LIFETIME)
                .await?;
            let mut methods = Vec::new();
            if user.totp_enabled_at.is_some() {
                methods.push("totp");
            }
            if user.passkeys > 0 {
                methods.push("passkey");
            }
            methods.push("recovery_code");
            return Ok(SignInOutcome::SecondFactor { challenge, methods });
        }
        if user.deleted_at.is_some() {
            return self.offer_restore(&user).await;
        }
        Ok(SignInOutcome::SignedIn(Box::new(
            self.start_session(user, how, context).await?,
        )))
    }

    /// The audit events of an action on `user`'s account: one per team they belong to (the
    /// platform's log when none), so each team's Admins see their members' account changes.
    pub(crate) async fn account_events(
        &self,
        user: &User,
        at: Timestamp,
        action: AuditAction,
        description: &str,
        context: &RequestContext,
    ) -> Result<Vec<AuditEvent>, AccountError> {
        let memberships = self.store.list_memberships(user.id).await?;
        Ok(user_events(&memberships, user, at, action, description, true, context))
    }

    /// Records a failed attempt on `user`'s account (a wrong password or code) in each of their
    /// teams' logs.
    async fn record_account_failure(
        &self,
        user: &User,
        at: Timestamp,
        action: AuditAction,
        description: &str,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        let memberships = self.store.list_memberships(user.id).await?;
        for event in user_events(&memberships, user, at, action, description, false, context) {
            self.store.insert_audit_event(&event).await?;
        }
        Ok(())
    }

    /// The notices (mail wording).
    pub(crate) fn notices(&self) -> &Notices {
        &self.notices
    }

    /// Joins the teams a verified address entitles the user to (invitations, verified domains).
    pub(crate) async fn joined_by_verification(
        &self,
        user: &User,
        context: &RequestContext,
    ) -> Result<usize, AccountError> {
        Ok(crate::teams::join_teams_on_verification(&*self.store, &*self.clock, &self.notices, user, context).await?)
    }

    /// A deleted account that proved itself: a token to restore it, while the period lasts.
    async fn offer_restore(&self, user: &User) -> Result<SignInOutcome, AccountError> {
        let now = self.clock.now();
        let purge_after = user
            .purge_after
            .filter(|at| *at > now)
            .ok_or(AccountError::BadCredentials)?;
        let restore = SecretToken::generate(&mut self.rng());
        let purpose = TokenPurpose::RestoreAccount;
        let record = AccountToken::issue(restore.hash(), user.id, purpose, now, None);
        self.store.insert_account_token(&record, &[], &[]).await?;
        Ok(SignInOutcome::Deleted { restore, purge_after })
    }

    /// Restores a deleted account with the token its sign-in gave: back on its teams' member
    /// lists, and signed in.
    #[instrument(skip_all)]
    pub async fn restore_account(&self, token: &str, context: &RequestContext) -> Result<SignedIn, AccountError> {
        let (record, user) = self.live_token(token, TokenPurpose::RestoreAccount).await?;
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            None,
            user_actor(&user),
            AuditAction::RestoreAccount,
            "Restored the account within its 30 days".to_owned(),
            Some(format!("user:{}", user.id)),
            context,
        );
        let redeemed = self
            .store
            .redeem_account_token(&TokenRedemption {
                hash: record.hash,
                purpose: TokenPurpose::RestoreAccount,
                user_id: user.id,
                new_password_hash: None,
                at: now,
                mail: &[],
                audits: std::slice::from_ref(&audit),
            })
            .await?;
        if !redeemed {
            return Err(AccountError::InvalidLink);
        }
        // Its teams' logs hear of it too, now that it is back on their lists.
        let user = self.store.get_user(user.id).await?;
        let memberships = self.store.list_memberships(user.id).await?;
        for event in user_events(
            &memberships,
            &user,
            now,
            AuditAction::RestoreAccount,
            "Restored the account",
            true,
            context,
        ) {
            if event.team_id.is_some() {
                self.store.insert_audit_event(&event).await?;
            }
        }
        self.start_session(user, "a password (account restored)", context).await
    }

    /// Deletes the account (password again, and the second factor if on). Refused while it is the
    /// only Admin of a team that is not its Personal Team: that team needs another Admin, or to
    /// be deleted, first. Returns when the account's data will be purged.
    #[instrument(skip_all)]
    pub async fn delete_account(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        factor: Option<&SecondFactor>,
        context: &RequestContext,
    ) -> Result<Timestamp, AccountError> {
        self.confirm_sensitive(user, session, password, factor, context).await?;
        let memberships = self.store.list_memberships(user.id).await?;
        let mut sole = Vec::new();
        for membership in memberships
            .iter()
            .filter(|m| m.role == tollgate_domain::Role::Admin && !m.team.personal)
        {
            let members = self.store.list_members(membership.team.id).await?;
            let other_admin = members
                .iter()
                .any(|m| m.user_id != user.id && m.role == tollgate_domain::Role::Admin);
            if !other_admin {
                sole.push(format!("\"{}\"", membership.team.name));
            }
        }
        if !sole.is_empty() {
            return Err(AccountError::SoleAdmin(sole.join(", ")));
        }
        let now = self.clock.now();
        let purge_after = now + RESTORE_PERIOD;
        let audits = user_events(
            &memberships,
            user,
            now,
            AuditAction::DeleteAccount,
            "Deleted the account (restorable for 30 days); it left the team's member list",
            true,
            context,
        );
        let mail = [self.notices.account_deleted(user, now, purge_after)];
        self.store
            .delete_account(&tollgate_store::AccountDeletion {
                user_id: user.id,
                at: now,
                purge_after,
                audits: &audits,
                mail: &mail,
            })
            .await?;
        self.notices.queued();
        Ok(purge_after)
    }

    /// Purges the personal data of accounts deleted more than 30 days ago (the daily job).
    pub async fn purge_deleted_accounts(&self) -> Result<usize, AccountError> {
        let now = self.clock.now();
        let due = self.store.accounts_due_for_purge(now).await?;
        for user in &due {
            let audit = AuditEvent::success(
                now,
                None,
                Actor::System,
                AuditAction::PurgeAccount,
                format!("Purged the personal data of deleted account {}", user.id),
                Some(format!("user:{}", user.id)),
                &RequestContext::default(),
            );
            self.store
                .purge_account(user.id, now, std::slice::from_ref(&audit))
                .await?;
        }
        if !due.is_empty() {
            tracing::info!(purged = due.len(), "purged deleted accounts");
        }
        Ok(due.len())
    }

    /// Runs [`Self::purge_deleted_accounts`] every `every` until `stop`.
    pub fn spawn_purge(
        self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::jobs::every("account purge", every, stop, move || {
            let service = self.clone();
            async move { service.purge_deleted_accounts().await.map(drop) }
        })
    }

    /// Completes a sign-in with the second factor.
    #[instrument(skip_all)]
    pub async fn sign_in_second_factor(
        &self,
        challenge: &str,
        factor: &SecondFactor,
        context: &RequestContext,
    ) -> Result<SignInOutcome, AccountError> {
        let challenge = SecretToken::presented(challenge.trim()).ok_or(AccountError::NotSignedIn)?;
        let now = self.clock.now();
        let user_id = self
            .store
            .find_mfa_challenge(&challenge.hash(), now)
            .await?
            .ok_or(AccountError::NotSignedIn)?;
        let user = self.store.get_user(user_id).await?;
        let how = self.check_second_factor(&user, factor, context).await?;
        if !self.store.use_mfa_challenge(&challenge.hash(), now).await? {
            return Err(AccountError::NotSignedIn);
        }
        if user.deleted_at.is_some() {
            return self.offer_restore(&user).await;
        }
        Ok(SignInOutcome::SignedIn(Box::new(
            self.start_session(user, how, context).await?,
        )))
    }

    /// Checks `factor` for `user` (each TOTP step and each recovery code works once); failures
    /// count toward the sign-in throttle. Returns how the user proved it, for the audit log.
    async fn check_second_factor(
        &self,
        user: &User,
        factor: &SecondFactor,
        context: &RequestContext,
    ) -> Result<&'static str, AccountError> {
        let now = self.clock.now();
        let attempt = self
            .throttle
            .begin(user.email.as_ref(), context.ip.as_deref(), now)
            .map_err(|_| AccountError::Throttled {
                retry_after_seconds: THROTTLED_FOR_SECONDS,
            })?;
        let accepted = match factor {
            SecondFactor::Totp(code) => {
                let state = self.store.mfa_state(user.id).await?;
                let secret = self.open_seed(user, state.seed.as_deref())?;
                match secret.verify(code, now, state.last_step) {
                    Some(step) => self
                        .store
                        .use_totp_step(user.id, step)
                        .await?
                        .then_some("a password and a TOTP code"),
                    None => None,
                }
            }
            SecondFactor::RecoveryCode(code) => match RecoveryCode::presented(code) {
                Some(code) => {
                    let used = self.store.use_recovery_code(user.id, &code.hash(), now).await?;
                    if used {
                        let left = self.store.mfa_state(user.id).await?.recovery_codes_left;
                        let mail = self.notices.security_notice(
                            user,
                            "A recovery code was used",
                            &format!("One of your recovery codes was used to sign in ({left} left)"),
                            now,
                            context,
                        );
                        self.store.enqueue_mail(&[mail]).await?;
                        self.notices.queued();
                    }
                    used.then_some("a password and a recovery code")
                }
                None => None,
            },
            SecondFactor::Passkey { ceremony, credential } => self.check_passkey(user, ceremony, credential).await?,
        };
        match accepted {
            Some(how) => {
                attempt.succeeded();
                Ok(how)
            }
            None => {
                attempt.failed(now);
                self.record_account_failure(
                    user,
                    now,
                    AuditAction::SignIn,
                    "Second factor refused (wrong or reused code)",
                    context,
                )
                .await?;
                Err(AccountError::BadSecondFactor)
            }
        }
    }

    fn open_seed(&self, user: &User, sealed: Option<&[u8]>) -> Result<TotpSecret, AccountError> {
        let sealed = sealed.ok_or(AccountError::MfaNotEnabled)?;
        let plain = self
            .sealer
            .open(sealed, user.id.to_string().as_bytes())
            .ok_or_else(|| anyhow::anyhow!("the TOTP seed of user {} does not open with this server key", user.id))?;
        Ok(TotpSecret::from_bytes(&plain).map_err(anyhow::Error::msg)?)
    }

    /// Whether TOTP is on, and how many recovery codes are left.
    pub async fn mfa_status(&self, user: &User) -> Result<(bool, u32), AccountError> {
        let state = self.store.mfa_state(user.id).await?;
        Ok((state.seed.is_some(), state.recovery_codes_left))
    }

    /// Starts a TOTP enrolment after checking the password again: a fresh seed, shown once,
    /// that takes effect when confirmed with a code.
    pub async fn begin_totp(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        context: &RequestContext,
    ) -> Result<TotpEnrollment, AccountError> {
        self.reauthenticate(user, session, password, context).await?;
        if user.totp_enabled_at.is_some() {
            return Err(AccountError::MfaAlreadyEnabled);
        }
        let secret = TotpSecret::generate(&mut self.rng());
        let sealed = self
            .sealer
            .seal(secret.as_bytes(), user.id.to_string().as_bytes(), &mut self.rng());
        self.store.set_pending_totp(user.id, &sealed).await?;
        Ok(TotpEnrollment {
            secret: secret.to_base32(),
            otpauth_uri: secret.otpauth_uri(&self.product, user.email.as_ref()),
        })
    }

    /// Confirms the enrolment with a first code: TOTP is on, the other sessions end, and the 10
    /// recovery codes are returned (once).
    pub async fn confirm_totp(
        &self,
        user: &User,
        session: &Session,
        code: &str,
        context: &RequestContext,
    ) -> Result<Vec<RecoveryCode>, AccountError> {
        if user.totp_enabled_at.is_some() {
            return Err(AccountError::MfaAlreadyEnabled);
        }
        let state = self.store.mfa_state(user.id).await?;
        let pending = state.pending_seed.ok_or(AccountError::NoPendingEnrollment)?;
        let secret = self.open_seed(user, Some(&pending))?;
        let now = self.clock.now();
        let step = secret.verify(code, now, None).ok_or(AccountError::BadSecondFactor)?;
        let codes = RecoveryCode::generate_set(&mut self.rng());
        let hashes: Vec<[u8; 32]> = codes.iter().map(RecoveryCode::hash).collect();
        let record = self
            .factor_change(
                user,
                AuditAction::EnableMfa,
                "Turned on two-factor authentication (TOTP)",
                (
                    "Two-factor authentication is on",
                    "Two-factor authentication was turned on for your account",
                ),
                context,
            )
            .await?;
        if !self
            .store
            .enable_totp(&record.change(user, session, &hashes), step)
            .await?
        {
            return Err(AccountError::NoPendingEnrollment);
        }
        self.notices.queued();
        Ok(codes)
    }

    /// Turns TOTP off, proven with a code or a recovery code (there is no other way, by design).
    pub async fn disable_totp(
        &self,
        user: &User,
        session: &Session,
        factor: &SecondFactor,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        if user.totp_enabled_at.is_none() {
            return Err(AccountError::MfaNotEnabled);
        }
        self.check_second_factor(user, factor, context).await?;
        // With passkeys left, two-factor authentication stays on, without TOTP.
        let (description, notice) = if user.passkeys > 0 {
            (
                "Turned off TOTP (passkeys remain)",
                (
                    "TOTP is off",
                    "Codes from an authenticator app no longer count as your second factor",
                ),
            )
        } else {
            (
                "Turned off two-factor authentication",
                (
                    "Two-factor authentication is off",
                    "Two-factor authentication was turned off for your account",
                ),
            )
        };
        let record = self
            .factor_change(user, AuditAction::DisableMfa, description, notice, context)
            .await?;
        self.store.disable_totp(&record.change(user, session, &[])).await?;
        self.notices.queued();
        Ok(())
    }

    /// A new set of recovery codes, proven with a second factor; the old set dies.
    pub async fn regenerate_recovery_codes(
        &self,
        user: &User,
        session: &Session,
        factor: &SecondFactor,
        context: &RequestContext,
    ) -> Result<Vec<RecoveryCode>, AccountError> {
        if !user.has_second_factor() {
            return Err(AccountError::MfaNotEnabled);
        }
        self.check_second_factor(user, factor, context).await?;
        let codes = RecoveryCode::generate_set(&mut self.rng());
        let hashes: Vec<[u8; 32]> = codes.iter().map(RecoveryCode::hash).collect();
        let record = self
            .factor_change(
                user,
                AuditAction::RegenerateRecoveryCodes,
                "Replaced the recovery codes",
                ("New recovery codes", "A new set of recovery codes replaced the old one"),
                context,
            )
            .await?;
        self.store
            .replace_recovery_codes(&record.change(user, session, &hashes))
            .await?;
        self.notices.queued();
        Ok(codes)
    }

    /// Changes the password, given the current one, or sets the first one of an account that
    /// signs in with a provider (after a fresh sign-in): the other sessions end and the owner is
    /// told.
    pub async fn change_password(
        &self,
        user: &User,
        session: &Session,
        current: Option<&str>,
        new: &str,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        self.reauthenticate(user, session, current, context).await?;
        check_password(new, user.email.as_ref(), &self.product)?;
        let hash = self.hashing.hash(new.to_owned()).await?;
        let now = self.clock.now();
        let description = if user.password_hash.is_some() {
            "Changed the password; other sessions ended"
        } else {
            "Set a password (the account signed in only with providers); other sessions ended"
        };
        let audits = self
            .account_events(user, now, AuditAction::ChangePassword, description, context)
            .await?;
        let mail = [self.notices.password_changed(user, now, context)];
        self.store
            .set_password(&PasswordChange {
                user_id: user.id,
                password_hash: &hash,
                at: now,
                keep: Some(session.id),
                audits: &audits,
                mail: &mail,
            })
            .await?;
        self.notices.queued();
        Ok(())
    }

    /// Removes the password of an account that also signs in with a provider (password again,
    /// and the second factor if on). Sessions go on; the owner is told.
    #[instrument(skip_all)]
    pub async fn remove_password(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        factor: Option<&SecondFactor>,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        if user.password_hash.is_none() {
            return Err(AccountError::NoPassword);
        }
        self.confirm_sensitive(user, session, password, factor, context).await?;
        let now = self.clock.now();
        let audits = self
            .account_events(
                user,
                now,
                AuditAction::RemovePassword,
                "Removed the password; the account signs in with its providers",
                context,
            )
            .await?;
        let mail = [self.notices.security_notice(
            user,
            "Your password was removed",
            "The password of your account was removed; you sign in with your linked providers",
            now,
            context,
        )];
        match self.store.remove_password(user.id, &audits, &mail).await {
            Ok(()) => {
                self.notices.queued();
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Err(AccountError::LastSignInMethod),
            Err(other) => Err(other.into()),
        }
    }

    /// Asks to change the account's address (password again, and the second factor if on): the new
    /// address gets a confirmation link, the old one a notice with a link to stop it. Nothing
    /// changes until the new address confirms.
    #[instrument(skip_all)]
    pub async fn request_email_change(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        factor: Option<&SecondFactor>,
        new_email: &str,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        self.confirm_sensitive(user, session, password, factor, context).await?;
        let new = Email::parse(new_email)?;
        if new == user.email {
            return Err(AccountError::SameEmail);
        }
        if self.store.find_user_by_email(&new).await?.is_some() {
            return Err(AccountError::EmailTaken);
        }
        let now = self.clock.now();
        if !self.notices.allow_user_mail(&format!("user:{}", user.id), &new, now) {
            return Err(AccountError::MailLimited);
        }
        let confirm = SecretToken::generate(&mut self.rng());
        let report = SecretToken::generate(&mut self.rng());
        let audits = self
            .account_events(
                user,
                now,
                AuditAction::RequestEmailChange,
                "Asked to change the account's email address (the new address must confirm)",
                context,
            )
            .await?;
        let token = |token: &SecretToken, purpose: TokenPurpose, data: Option<String>| {
            AccountToken::issue(token.hash(), user.id, purpose, now, data)
        };
        let mail = [
            self.notices.confirm_new_email(user, &new, &confirm, now),
            self.notices.email_change_requested(user, &new, &report, now, context),
        ];
        self.store
            .insert_account_token(&token(&report, TokenPurpose::ReportEmailChange, None), &[], &[])
            .await?;
        self.store
            .insert_account_token(
                &token(&confirm, TokenPurpose::ChangeEmail, Some(new.as_ref().to_owned())),
                &mail,
                &audits,
            )
            .await?;
        self.notices.queued();
        Ok(())
    }

    /// Confirms an email change from the new address: the address changes (verified), every
    /// session ends, and the old address is told.
    #[instrument(skip_all)]
    pub async fn confirm_email_change(&self, token: &str, context: &RequestContext) -> Result<(), AccountError> {
        let (record, user) = self.live_token(token, TokenPurpose::ChangeEmail).await?;
        let new = record.data.clone().unwrap_or_default();
        let now = self.clock.now();
        let audits = self
            .account_events(
                &user,
                now,
                AuditAction::ChangeEmail,
                "Changed the account's email address (confirmed from the new address)",
                context,
            )
            .await?;
        let mail = [self.notices.email_changed(&user, &new, now)];
        let redeemed = self
            .store
            .redeem_account_token(&TokenRedemption {
                hash: record.hash,
                purpose: TokenPurpose::ChangeEmail,
                user_id: user.id,
                new_password_hash: None,
                at: now,
                mail: &mail,
                audits: &audits,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => AccountError::EmailTaken,
                other => other.into(),
            })?;
        if !redeemed {
            return Err(AccountError::InvalidLink);
        }
        self.notices.queued();
        Ok(())
    }

    /// Stops a pending email change from the old address's link, and ends every session.
    #[instrument(skip_all)]
    pub async fn report_email_change(&self, token: &str, context: &RequestContext) -> Result<(), AccountError> {
        let (record, user) = self.live_token(token, TokenPurpose::ReportEmailChange).await?;
        let now = self.clock.now();
        let audits = self
            .account_events(
                &user,
                now,
                AuditAction::ReportEmailChange,
                "Reported an email change they did not ask for; it was stopped and every session ended",
                context,
            )
            .await?;
        let redeemed = self
            .store
            .redeem_account_token(&TokenRedemption {
                hash: record.hash,
                purpose: TokenPurpose::ReportEmailChange,
                user_id: user.id,
                new_password_hash: None,
                at: now,
                mail: &[],
                audits: &audits,
            })
            .await?;
        if !redeemed {
            return Err(AccountError::InvalidLink);
        }
        Ok(())
    }

    /// The audit events and the owner's notice (`subject`, `what`) of a change to the account's
    /// second factors, made now.
    async fn factor_change(
        &self,
        user: &User,
        action: AuditAction,
        description: &str,
        (subject, what): (&str, &str),
        context: &RequestContext,
    ) -> Result<FactorChange, AccountError> {
        let at = self.clock.now();
        Ok(FactorChange {
            audits: self.account_events(user, at, action, description, context).await?,
            mail: [self.notices.security_notice(user, subject, what, at, context)],
            at,
        })
    }

    /// Confirms a sensitive change: [`Self::reauthenticate`], then the second factor if it is on.
    async fn confirm_sensitive(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        factor: Option<&SecondFactor>,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        self.reauthenticate(user, session, password, context).await?;
        if user.has_second_factor() {
            let factor = factor.ok_or(AccountError::SecondFactorRequired)?;
            self.check_second_factor(user, factor, context).await?;
        }
        Ok(())
    }

    /// Re-authentication for sensitive changes: the password; or, for an account without one (it
    /// signs in with a provider, which is where it re-authenticates), a session begun within
    /// [`REAUTH_WINDOW`].
    ///
    /// A password goes through the sign-in throttle (a stolen session cannot guess it faster
    /// than a sign-in could), and a wrong one is on the account's teams' record.
    async fn reauthenticate(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        match (user.password_hash.clone(), password) {
            (Some(hash), Some(password)) => {
                let now = self.clock.now();
                let attempt = self
                    .throttle
                    .begin(user.email.as_ref(), context.ip.as_deref(), now)
                    .map_err(|_| AccountError::Throttled {
                        retry_after_seconds: THROTTLED_FOR_SECONDS,
                    })?;
                if self.hashing.verify(password.to_owned(), hash).await? {
                    attempt.succeeded();
                    Ok(())
                } else {
                    attempt.failed(now);
                    self.record_account_failure(
                        user,
                        now,
                        AuditAction::Reauthenticate,
                        "Re-authentication for a sensitive change failed: wrong password",
                        context,
                    )
                    .await?;
                    Err(AccountError::BadCredentials)
                }
            }
            (Some(_), None) => Err(AccountError::PasswordRequired),
            (None, _) if self.clock.now() - session.created_at <= REAUTH_WINDOW => Ok(()),
            (None, _) => Err(AccountError::ReauthenticationRequired),
        }
    }

    async fn dummy_hash(&self) -> Result<String, AccountError> {
        let hash = self
            .dummy_hash
            .get_or_try_init(|| self.hashing.hash("not a password: uniform timing".to_owned()))
            .await?;
        Ok(hash.clone())
    }

    async fn start_session(&self, user: User, how: &str, context: &RequestContext) -> Result<SignedIn, AccountError> {
        let now = self.clock.now();
        let token = SecretToken::generate(&mut self.rng());
        let csrf = SecretToken::generate(&mut self.rng());
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            created_at: now,
            last_seen_at: now,
            absolute_expires_at: now + self.sessions.absolute,
            ip: context.ip.clone(),
            user_agent: context.user_agent.clone(),
            location: context
                .ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .and_then(|ip| self.locator.locate(ip)),
            revoked_at: None,
        };
        // A device and place not seen lately (and not the very first session) is announced.
        let earlier = self.store.sessions_since(user.id, now - SEEN_WITHIN).await?;
        let place = |s: &Session| s.location.clone().or_else(|| s.ip.clone());
        let seen = earlier
            .iter()
            .any(|s| s.user_agent == session.user_agent && place(s) == place(&session));
        let alert: Vec<_> = (!earlier.is_empty() && !seen)
            .then(|| self.notices.new_sign_in(&user, &session, self.locator.attribution()))
            .into_iter()
            .collect();
        let description = format!(
            "Signed in with {how} from {}",
            context.ip.as_deref().unwrap_or("an unknown address")
        );
        let audits = self
            .account_events(&user, now, AuditAction::SignIn, &description, context)
            .await?;
        self.store
            .create_session(&session, &token.hash(), &csrf.hash(), &audits, &alert)
            .await?;
        if !alert.is_empty() {
            self.notices.queued();
        }
        Ok(SignedIn {
            user,
            session,
            token,
            csrf,
        })
    }

    /// The session and user behind a session cookie. `csrf` is required (and checked, in
    /// constant time) for requests that change state.
    pub async fn authenticate(
        &self,
        token: &str,
        csrf: Option<&str>,
        changes_state: bool,
    ) -> Result<(Session, User), AccountError> {
        let token = SecretToken::presented(token).ok_or(AccountError::NotSignedIn)?;
        let (session, csrf_hash, user) = self
            .store
            .find_session(&token.hash())
            .await?
            .ok_or(AccountError::NotSignedIn)?;
        let now = self.clock.now();
        if !session.is_live(now, self.sessions.idle) {
            return Err(AccountError::NotSignedIn);
        }
        if changes_state {
            let presented = csrf
                .and_then(SecretToken::presented)
                .ok_or(AccountError::CsrfMismatch)?;
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&presented.hash()[..], &csrf_hash[..])) {
                return Err(AccountError::CsrfMismatch);
            }
        }
        if now - session.last_seen_at >= TOUCH_EVERY {
            self.store.touch_session(session.id, now).await?;
        }
        Ok((session, user))
    }

    /// Ends the current session.
    pub async fn sign_out(&self, session: &Session, user: &User, context: &RequestContext) -> Result<(), AccountError> {
        self.end(
            user,
            EndSessions::One(session.id),
            AuditAction::SignOut,
            "Signed out",
            context,
        )
        .await
        .map(drop)
    }

    /// Ends one of the user's sessions.
    pub async fn end_session(&self, user: &User, id: SessionId, context: &RequestContext) -> Result<(), AccountError> {
        let ended = self
            .end(
                user,
                EndSessions::One(id),
                AuditAction::EndSession,
                &format!("Ended session {id}"),
                context,
            )
            .await?;
        if ended == 0 {
            return Err(AccountError::SessionNotFound);
        }
        Ok(())
    }

    /// Ends every session of the user but `current`; returns how many.
    pub async fn end_other_sessions(
        &self,
        user: &User,
        current: SessionId,
        context: &RequestContext,
    ) -> Result<u64, AccountError> {
        self.end(
            user,
            EndSessions::AllBut(Some(current)),
            AuditAction::EndOtherSessions,
            "Ended every other session",
            context,
        )
        .await
    }

    async fn end(
        &self,
        user: &User,
        which: EndSessions,
        action: AuditAction,
        description: &str,
        context: &RequestContext,
    ) -> Result<u64, AccountError> {
        let now = self.clock.now();
        let audits = self.account_events(user, now, action, description, context).await?;
        Ok(self.store.end_sessions(user.id, which, now, &audits).await?)
    }

    /// The user's live sessions, newest first.
    pub async fn sessions(&self, user: &User) -> Result<Vec<Session>, AccountError> {
        let now = self.clock.now();
        let idle = self.sessions.idle;
        Ok(self
            .store
            .list_sessions(user.id, now)
            .await?
            .into_iter()
            .filter(|s| s.is_live(now, idle))
            .collect())
    }

    /// The teams the user belongs to, with their role, oldest first.
    pub async fn memberships(&self, user: &User) -> Result<Vec<Membership>, AccountError> {
        Ok(self.store.list_memberships(user.id).await?)
    }

    /// The user as a [`Caller`] in `team_id`; `TeamNotFound` unless they are a member.
    pub async fn member(&self, user: &User, team_id: TeamId) -> Result<Caller, AccountError> {
        let role = self
            .store
            .find_role(team_id, user.id)
            .await?
            .ok_or(AccountError::TeamNotFound)?;
        Ok(Caller::Member {
            user_id: user.id,
            email: user.email.clone(),
            team_id,
            role,
        })
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
pub(crate) fn valid_display_name(name: &str) -> Result<String, AccountError> {
    Ok(tollgate_domain::Name::parse(name)
        .map_err(AccountError::InvalidDisplayName)?
        .into_string())
}

/// What a change to the second factors writes besides itself: its audit events and the notice.
struct FactorChange {
    audits: Vec<AuditEvent>,
    mail: [tollgate_domain::OutboundMail; 1],
    at: Timestamp,
}

impl FactorChange {
    /// The store's change for `user`, keeping `session` signed in.
    fn change<'a>(&'a self, user: &User, session: &Session, recovery_code_hashes: &'a [[u8; 32]]) -> MfaChange<'a> {
        MfaChange {
            user_id: user.id,
            at: self.at,
            recovery_code_hashes,
            keep: Some(session.id),
            audits: &self.audits,
            mail: &self.mail,
        }
    }
}
