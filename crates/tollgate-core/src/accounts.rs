//! Accounts: sign-up (each user gets a Personal Team they administer), sign-in with sessions,
//! email verification and password reset by single-use links, and the console's view of who is
//! asking ([`AccountService::member`]).
//!
//! Sign-in answers the same, in about the same time, for an unknown email and a wrong password
//! (a dummy hash is verified when there is no account), and is throttled per account and per
//! client address. Every action writes its audit event into each of the user's teams' logs
//! ([`AccountService::account_events`]).
//!
//! This file holds the service, its errors and shared types; each subject is a sibling module:
//! `signup`, `links` (verification, reset), `sign_in`, `sessions`, `second_factors`, `passkeys`,
//! `password` (and re-authentication), `email_change`, `deletion`, and the `throttle`.

use std::sync::Arc;

use tollgate_domain::mfa::SecretSealer;
use tollgate_domain::password::PasswordError;
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Clock, EmailError, Membership, RequestContext, SecretToken, Session, TeamId,
    Timestamp, User,
};
use tollgate_domain::{Entropy, EntropyRng, OsEntropy};
use tollgate_store::{MfaChange, Store, StoreError};

mod deletion;
mod email_change;
mod links;
mod passkeys;
mod password;
mod second_factors;
mod sessions;
mod sign_in;
mod signup;
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
    /// Another account at this address signs in with a password; only one may, so email and
    /// password sign-in is never ambiguous.
    #[error(
        "another account with this email address signs in with a password; only one account per address may, so \
         this one signs in with its own methods"
    )]
    PasswordAtAddressTaken,
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

    /// Counts a password or second-factor attempt on `account` (before any work), or refuses
    /// it: the account or the client address has no attempts left.
    fn begin_attempt(
        &self,
        account: &str,
        context: &RequestContext,
        now: Timestamp,
    ) -> Result<throttle::Attempt, AccountError> {
        self.throttle
            .begin(account, context.ip.as_deref(), now)
            .map_err(|_| AccountError::Throttled {
                retry_after_seconds: THROTTLED_FOR_SECONDS,
            })
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
