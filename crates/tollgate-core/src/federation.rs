//! Signing in with an external OpenID Connect provider the operator configured: authorization
//! code with PKCE (S256), `state` bound to the browser by a cookie, `nonce` in the ID token, issuer
//! and audience checked (by the provider client, [`IdentityProvider`]). Identities are keyed by
//! (issuer, subject), never by email; an identity whose address already has an account is never
//! linked silently: its owner signs in to that account and links it, uses another address, or
//! creates a separate account at the same address (nothing is shared or merged with the other).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Clock, Email, EmailError, Identity, IdentityId, OidcFlow, PendingIdentity,
    RequestContext, SecretToken, Session, Team, TeamId, User, UserId,
};
use tollgate_store::{Store, StoreError};
use tracing::instrument;

use crate::accounts::{
    AccountError, AccountService, MAX_EXTERNAL_STARTS_PER_HOUR, REAUTH_WINDOW, SignInOutcome, SignedIn,
};

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    /// The provider's issuer URL (checked against its configuration).
    pub issuer: String,
    /// The provider's stable id for the person.
    pub subject: String,
    /// Their address, if the provider gave one.
    pub email: Option<String>,
    /// Whether the provider vouches for the address.
    pub email_verified: bool,
    /// Their name, if given.
    pub name: Option<String>,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached, or failed (network, 5xx, discovery): try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The provider refused, or its answer did not validate (code, ID token, user info).
    #[error("{0}")]
    Refused(String),
}

impl From<ProviderError> for FederationError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::Unavailable(message) => FederationError::ProviderUnavailable(message),
            ProviderError::Refused(message) => FederationError::Provider(message),
        }
    }
}

impl ExternalIdentity {
    /// The stored link of this identity to `user_id`.
    fn linked_to(&self, user_id: UserId, provider: &str, at: tollgate_domain::Timestamp) -> Identity {
        Identity {
            id: IdentityId::new(),
            user_id,
            provider: provider.to_owned(),
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            email: self.email.clone(),
            linked_at: at,
        }
    }
}

impl From<PendingIdentity> for ExternalIdentity {
    fn from(pending: PendingIdentity) -> Self {
        Self {
            issuer: pending.issuer,
            subject: pending.subject,
            email: pending.email,
            email_verified: pending.email_verified,
            name: pending.name,
        }
    }
}

/// One configured provider (OpenID Connect discovery, token exchange, ID token validation).
#[async_trait]
pub trait IdentityProvider: Send + Sync {
    /// The name used in paths and configuration.
    fn name(&self) -> &str;
    /// The name people see ("Sign in with …").
    fn display_name(&self) -> &str;
    /// Where to send the browser.
    async fn authorization_url(&self, state: &str, nonce: &str, pkce_verifier: &str) -> Result<String, ProviderError>;
    /// Exchanges the code (with the PKCE verifier) and validates the ID token (signature, issuer,
    /// audience, nonce).
    async fn finish(&self, code: &str, pkce_verifier: &str, nonce: &str) -> Result<ExternalIdentity, ProviderError>;
}

/// Why an external sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// No such provider is configured.
    #[error("no such sign-in provider")]
    UnknownProvider,
    /// The callback does not belong to a sign-in this browser began (state unknown, used,
    /// expired, or begun elsewhere).
    #[error("This sign-in could not be completed: it was not begun here, or it expired. Start again.")]
    BadState,
    /// The provider refused, or its answer did not validate.
    #[error("The sign-in provider's answer was refused: {0}")]
    Provider(String),
    /// The provider could not be reached or failed.
    #[error("The sign-in provider is unavailable; try again later ({0})")]
    ProviderUnavailable(String),
    /// The pending sign-in is unknown, used or expired.
    #[error("This sign-in is no longer pending; start again")]
    PendingInvalid,
    /// A separate account was asked for, but the provider vouched for no address.
    #[error(
        "A separate account takes the address your sign-in provider vouched for, and it vouched for none: give an \
         address for the new account instead"
    )]
    SeparateNeedsVouchedAddress,
    /// The identity is linked to an account already.
    #[error("that sign-in is already linked to an account")]
    IdentityTaken,
    /// Linking needs a fresh sign-in of the account it links to.
    #[error("Sign in again to link a sign-in method: linking needs a sign-in within the last 10 minutes")]
    StaleSession,
    /// Removing it would leave the account with no way to sign in.
    #[error("this is the account's last way to sign in; add another first")]
    LastMethod,
    /// No such identity on the account.
    #[error("no such sign-in method")]
    IdentityNotFound,
    /// Not an address.
    #[error(transparent)]
    InvalidEmail(#[from] EmailError),
    /// An account (sign-in, creation) failure.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a provider's callback led to.
#[derive(Debug)]
pub enum Federated {
    /// Signed in (or a second factor, or a restore, is next), as with a password.
    SignIn(SignInOutcome),
    /// The identity was linked to the signed-in account that began the flow.
    Linked(Identity),
    /// Its address has an account: sign in to that account and link (`pending`), or give another
    /// address for a new account.
    EmailInUse {
        /// Hand back to link, or with another address.
        pending: SecretToken,
        /// The address in use.
        email: String,
    },
    /// The provider gave no address it vouches for: give one for the new account.
    EmailNeeded {
        /// Hand back with the address.
        pending: SecretToken,
    },
}

/// How long a flow (redirect to callback) and a pending identity stay open.
const FLOW_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);
const PENDING_LIFETIME: chrono::Duration = chrono::Duration::minutes(30);

/// External sign-in.
#[derive(Clone)]
pub struct Federation {
    providers: Arc<BTreeMap<String, Arc<dyn IdentityProvider>>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    accounts: AccountService,
}

impl Federation {
    /// A generator over the accounts service's entropy.
    fn rng(&self) -> tollgate_domain::EntropyRng<'_> {
        self.accounts.rng()
    }
}

fn user_actor(user: &User) -> Actor {
    Actor::User {
        id: user.id,
        email: user.email.as_ref().to_owned(),
    }
}

impl Federation {
    /// Sign-in through `providers`; accounts through `accounts`.
    pub fn new(
        providers: Vec<Arc<dyn IdentityProvider>>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        accounts: AccountService,
    ) -> Self {
        Self {
            providers: Arc::new(providers.into_iter().map(|p| (p.name().to_owned(), p)).collect()),
            store,
            clock,
            accounts,
        }
    }

    /// The configured providers: (name, display name).
    pub fn providers(&self) -> Vec<(String, String)> {
        self.providers
            .values()
            .map(|p| (p.name().to_owned(), p.display_name().to_owned()))
            .collect()
    }

    fn provider(&self, name: &str) -> Result<&Arc<dyn IdentityProvider>, FederationError> {
        self.providers.get(name).ok_or(FederationError::UnknownProvider)
    }

    /// Begins a sign-in (or, with `link_to`, linking to that signed-in account): the URL to send
    /// the browser to, and the token to bind the flow to the browser (a cookie).
    pub async fn start(
        &self,
        provider: &str,
        link_to: Option<(&User, &Session)>,
        context: &RequestContext,
    ) -> Result<(String, SecretToken), FederationError> {
        let provider = self.provider(provider)?;
        // Each start stores a flow: bounded per client address.
        self.accounts
            .throttle_per_address("external-sign-in", MAX_EXTERNAL_STARTS_PER_HOUR, context)?;
        if let Some((_, session)) = link_to {
            self.require_recent(session)?;
        }
        let link_to = link_to.map(|(user, _)| user);
        let state = SecretToken::generate(&mut self.rng());
        let nonce = SecretToken::generate(&mut self.rng());
        let verifier = SecretToken::generate(&mut self.rng());
        let browser = SecretToken::generate(&mut self.rng());
        let url = provider
            .authorization_url(state.expose(), nonce.expose(), verifier.expose())
            .await
            .map_err(FederationError::from)?;
        let now = self.clock.now();
        self.store
            .create_oidc_flow(&OidcFlow {
                state_hash: state.hash(),
                provider: provider.name().to_owned(),
                nonce: nonce.expose().to_owned(),
                pkce_verifier: verifier.expose().to_owned(),
                browser_hash: browser.hash(),
                link_user_id: link_to.map(|u| u.id),
                created_at: now,
                expires_at: now + FLOW_LIFETIME,
            })
            .await?;
        Ok((url, browser))
    }

    /// Completes the provider's callback.
    #[instrument(skip_all, fields(provider = provider_name))]
    pub async fn callback(
        &self,
        provider_name: &str,
        code: &str,
        state: &str,
        browser: Option<&str>,
        context: &RequestContext,
    ) -> Result<Federated, FederationError> {
        let provider = self.provider(provider_name)?;
        let state = SecretToken::presented(state).ok_or(FederationError::BadState)?;
        // Bound to the browser by the cookie: without it (or with another's) the flow is not even
        // consumed, so a forged or replayed callback cannot spoil the real one.
        let browser = browser
            .and_then(SecretToken::presented)
            .ok_or(FederationError::BadState)?;
        let flow = self
            .store
            .take_oidc_flow(&state.hash(), &browser.hash(), self.clock.now())
            .await?
            .filter(|f| f.provider == provider_name)
            .ok_or(FederationError::BadState)?;
        let identity = provider
            .finish(code, &flow.pkce_verifier, &flow.nonce)
            .await
            .map_err(FederationError::from)?;

        if let Some(user_id) = flow.link_user_id {
            let user = self.store.get_user(user_id).await?;
            return Ok(Federated::Linked(
                self.link(&user, provider_name, &identity, context).await?,
            ));
        }
        if let Some(known) = self.store.find_identity(&identity.issuer, &identity.subject).await? {
            let user = self.store.get_user(known.user_id).await?;
            let how = format!("{} ({})", provider.display_name(), provider_name);
            return Ok(Federated::SignIn(
                self.accounts.after_first_factor(user, &how, context).await?,
            ));
        }
        let email = identity
            .email
            .as_deref()
            .filter(|_| identity.email_verified)
            .and_then(|e| Email::parse(e).ok());
        match email {
            Some(email) if self.store.find_user_by_email(&email).await?.is_some() => {
                let pending = self.pend(provider_name, &identity).await?;
                Ok(Federated::EmailInUse {
                    pending,
                    email: email.as_ref().to_owned(),
                })
            }
            Some(email) => {
                let signed_in = self
                    .create_account(provider_name, &identity, email, true, context)
                    .await?;
                Ok(Federated::SignIn(SignInOutcome::SignedIn(Box::new(signed_in))))
            }
            None => Ok(Federated::EmailNeeded {
                pending: self.pend(provider_name, &identity).await?,
            }),
        }
    }

    /// Linking proves the account's owner is here: the session must be a fresh sign-in.
    fn require_recent(&self, session: &Session) -> Result<(), FederationError> {
        if self.clock.now() - session.created_at <= REAUTH_WINDOW {
            Ok(())
        } else {
            Err(FederationError::StaleSession)
        }
    }

    async fn pend(&self, provider: &str, identity: &ExternalIdentity) -> Result<SecretToken, FederationError> {
        let token = SecretToken::generate(&mut self.rng());
        let now = self.clock.now();
        self.store
            .insert_pending_identity(&PendingIdentity {
                token_hash: token.hash(),
                provider: provider.to_owned(),
                issuer: identity.issuer.clone(),
                subject: identity.subject.clone(),
                email: identity.email.clone(),
                email_verified: identity.email_verified,
                name: identity.name.clone(),
                created_at: now,
                expires_at: now + PENDING_LIFETIME,
            })
            .await?;
        Ok(token)
    }

    async fn take_pending(&self, token: &str) -> Result<PendingIdentity, FederationError> {
        let token = SecretToken::presented(token.trim()).ok_or(FederationError::PendingInvalid)?;
        self.store
            .take_pending_identity(&token.hash(), self.clock.now())
            .await?
            .ok_or(FederationError::PendingInvalid)
    }

    /// A new account for a pending identity, with the address given (a verification link goes
    /// to it, unless it is the address the provider vouched for).
    pub async fn complete_with_email(
        &self,
        token: &str,
        email: &str,
        context: &RequestContext,
    ) -> Result<SignedIn, FederationError> {
        let email = Email::parse(email)?;
        if self.store.find_user_by_email(&email).await?.is_some() {
            return Err(FederationError::Account(AccountError::EmailTaken));
        }
        let pending = self.take_pending(token).await?;
        let vouched = pending.email_verified
            && pending.email.as_deref().and_then(|e| Email::parse(e).ok()).as_ref() == Some(&email);
        let provider = pending.provider.clone();
        let identity = ExternalIdentity::from(pending);
        let signed_in = self
            .create_account(&provider, &identity, email, vouched, context)
            .await?;
        if !vouched {
            self.accounts.send_verification(&signed_in.user, context).await?;
        }
        Ok(signed_in)
    }

    /// A new, separate account for a pending identity whose address another account already
    /// uses (the person chose not to link): its own user and Personal Team, sharing nothing with
    /// the other account but the address the provider vouched for. It signs in with the provider
    /// (and may add other methods, but not a password while the other account has one).
    pub async fn complete_separately(
        &self,
        token: &str,
        context: &RequestContext,
    ) -> Result<SignedIn, FederationError> {
        let pending = self.take_pending(token).await?;
        let email = pending
            .email
            .as_deref()
            .filter(|_| pending.email_verified)
            .and_then(|e| Email::parse(e).ok())
            .ok_or(FederationError::SeparateNeedsVouchedAddress)?;
        let provider = pending.provider.clone();
        let identity = ExternalIdentity::from(pending);
        self.create_account(&provider, &identity, email, true, context).await
    }

    /// Links a pending identity to the signed-in account (its owner proved it by signing in).
    pub async fn link_pending(
        &self,
        user: &User,
        session: &Session,
        token: &str,
        context: &RequestContext,
    ) -> Result<Identity, FederationError> {
        self.require_recent(session)?;
        let pending = self.take_pending(token).await?;
        let provider = pending.provider.clone();
        self.link(user, &provider, &ExternalIdentity::from(pending), context)
            .await
    }

    async fn link(
        &self,
        user: &User,
        provider: &str,
        identity: &ExternalIdentity,
        context: &RequestContext,
    ) -> Result<Identity, FederationError> {
        let now = self.clock.now();
        let record = identity.linked_to(user.id, provider, now);
        let audits = self
            .accounts
            .account_events(
                user,
                now,
                AuditAction::LinkIdentity,
                &format!("Linked a sign-in with {provider}"),
                context,
            )
            .await?;
        let mail = [self.accounts.notices().security_notice(
            user,
            "A sign-in method was added",
            &format!("Signing in with {provider} was added to your account"),
            now,
            context,
        )];
        match self.store.insert_identity(&record, &audits, &mail).await {
            Ok(()) => {
                self.accounts.notices().queued();
                Ok(record)
            }
            Err(StoreError::Conflict { .. }) => Err(FederationError::IdentityTaken),
            Err(other) => Err(other.into()),
        }
    }

    async fn create_account(
        &self,
        provider: &str,
        identity: &ExternalIdentity,
        email: Email,
        verified: bool,
        context: &RequestContext,
    ) -> Result<SignedIn, FederationError> {
        let now = self.clock.now();
        let user = User {
            id: UserId::new(),
            // The provider's name when it is a valid one, else the address's local part.
            display_name: identity
                .name
                .as_deref()
                .and_then(|n| crate::accounts::valid_display_name(n).ok())
                .or_else(|| {
                    email
                        .as_ref()
                        .split('@')
                        .next()
                        .and_then(|n| crate::accounts::valid_display_name(n).ok())
                })
                .unwrap_or_else(|| "New user".to_owned()),
            email,
            password_hash: None,
            created_at: now,
            email_verified_at: verified.then_some(now),
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
        let record = identity.linked_to(user.id, provider, now);
        let audit = AuditEvent::success(
            now,
            Some(team.id),
            user_actor(&user),
            AuditAction::CreateUser,
            format!(
                "Created user {} with Personal Team {}, signing in with {provider}",
                user.id, team.id
            ),
            // (An address other accounts share is said by no event: accounts are told apart by id.)
            Some(format!("user:{}", user.id)),
            context,
        );
        match self.store.create_federated_user(&user, &team, &record, &audit).await {
            Ok(()) => {}
            Err(StoreError::Conflict { constraint }) if constraint == "users_email_key" => {
                return Err(FederationError::Account(AccountError::EmailTaken));
            }
            Err(StoreError::Conflict { .. }) => return Err(FederationError::IdentityTaken),
            Err(other) => return Err(other.into()),
        }
        if verified {
            self.accounts.joined_by_verification(&user, context).await?;
        }
        let how = format!("{provider} (new account)");
        match self.accounts.after_first_factor(user, &how, context).await? {
            SignInOutcome::SignedIn(signed_in) => Ok(*signed_in),
            // A brand-new account has no second factor and is not deleted.
            _ => Err(FederationError::PendingInvalid),
        }
    }

    /// The account's external sign-ins.
    pub async fn identities(&self, user: &User) -> Result<Vec<Identity>, FederationError> {
        Ok(self.store.list_identities(user.id).await?)
    }

    /// Removes an external sign-in, unless it is the account's last way to sign in.
    pub async fn unlink(&self, user: &User, id: IdentityId, context: &RequestContext) -> Result<(), FederationError> {
        let audits = self
            .accounts
            .account_events(
                user,
                self.clock.now(),
                AuditAction::UnlinkIdentity,
                "Removed an external sign-in",
                context,
            )
            .await?;
        match self.store.delete_identity(user.id, id, &audits).await {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound) => Err(FederationError::IdentityNotFound),
            Err(StoreError::Conflict { .. }) => Err(FederationError::LastMethod),
            Err(other) => Err(other.into()),
        }
    }
}
