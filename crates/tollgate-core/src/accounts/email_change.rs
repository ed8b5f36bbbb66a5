//! Changing the email address: confirmed from the new address, reported from the old.

use tollgate_domain::{AuditAction, Email, RequestContext, SecretToken, Session, TokenPurpose, User};
use tollgate_store::{AccountToken, StoreError, TokenRedemption};
use tracing::instrument;

use super::{AccountError, AccountService, SecondFactor};

impl AccountService {
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
}
