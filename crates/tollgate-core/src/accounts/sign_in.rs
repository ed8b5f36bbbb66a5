//! Signing in: the password (uniform timing: a dummy hash for unknown addresses; attempts
//! throttled before hashing), the second factor, and the session that follows with its sign-in
//! alert.

use tollgate_domain::mfa::RecoveryCode;
use tollgate_domain::{AuditAction, Email, RequestContext, SecretToken, Session, SessionId, User};
use tracing::instrument;

use super::{AccountError, AccountService, CHALLENGE_LIFETIME, SEEN_WITHIN, SecondFactor, SignInOutcome, SignedIn};

impl AccountService {
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
        let attempt = self.begin_attempt(&key, context, now)?;
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
    pub(super) async fn check_second_factor(
        &self,
        user: &User,
        factor: &SecondFactor,
        context: &RequestContext,
    ) -> Result<&'static str, AccountError> {
        let now = self.clock.now();
        let attempt = self.begin_attempt(user.email.as_ref(), context, now)?;
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

    pub(super) async fn dummy_hash(&self) -> Result<String, AccountError> {
        let hash = self
            .dummy_hash
            .get_or_try_init(|| self.hashing.hash("not a password: uniform timing".to_owned()))
            .await?;
        Ok(hash.clone())
    }

    pub(super) async fn start_session(
        &self,
        user: User,
        how: &str,
        context: &RequestContext,
    ) -> Result<SignedIn, AccountError> {
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
}
