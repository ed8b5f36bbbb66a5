//! The password and re-authentication: changing, setting or removing the password; confirming
//! sensitive changes with the password (throttled, audited) or a recent sign-in.

use tollgate_domain::password::check_password;
use tollgate_domain::{AuditAction, RequestContext, Session, User};
use tollgate_store::{PasswordChange, StoreError};
use tracing::instrument;

use super::{AccountError, AccountService, REAUTH_WINDOW, SecondFactor};

impl AccountService {
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
        match self
            .store
            .set_password(&PasswordChange {
                user_id: user.id,
                password_hash: &hash,
                at: now,
                keep: Some(session.id),
                audits: &audits,
                mail: &mail,
            })
            .await
        {
            Ok(()) => {}
            // Another account at this address signs in with a password: only one may.
            Err(StoreError::Conflict { constraint }) if constraint == "users_email_key" => {
                return Err(AccountError::PasswordAtAddressTaken);
            }
            Err(other) => return Err(other.into()),
        }
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

    /// Confirms a sensitive change: [`Self::reauthenticate`], then the second factor if it is on.
    pub(super) async fn confirm_sensitive(
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
    pub(super) async fn reauthenticate(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        match (user.password_hash.clone(), password) {
            (Some(hash), Some(password)) => {
                let now = self.clock.now();
                let attempt = self.begin_attempt(user.email.as_ref(), context, now)?;
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
}
