//! Emailed single-use links: verifying the address (which also joins a team whose domain it is
//! at) and resetting a forgotten password.

use tollgate_domain::password::check_password;
use tollgate_domain::{AuditAction, Email, RequestContext, SecretToken, TokenPurpose, User};
use tollgate_store::{AccountToken, TokenRedemption};
use tracing::instrument;

use super::{AccountError, AccountService, MAX_RESETS_PER_HOUR, MAX_VERIFICATIONS_PER_HOUR, SecondFactor};

impl AccountService {
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
    pub(super) async fn live_token(
        &self,
        token: &str,
        purpose: TokenPurpose,
    ) -> Result<(AccountToken, User), AccountError> {
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

    /// Joins the teams a verified address entitles the user to (invitations, verified domains).
    pub(crate) async fn joined_by_verification(
        &self,
        user: &User,
        context: &RequestContext,
    ) -> Result<usize, AccountError> {
        Ok(crate::teams::join_teams_on_verification(&*self.store, &*self.clock, &self.notices, user, context).await?)
    }
}
