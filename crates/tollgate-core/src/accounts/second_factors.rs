//! Second factors: TOTP enrolment and removal, recovery codes (passkeys are in `passkeys`).

use tollgate_domain::mfa::{RecoveryCode, TotpSecret};
use tollgate_domain::{AuditAction, RequestContext, Session, User};

use super::{AccountError, AccountService, FactorChange, SecondFactor, TotpEnrollment};

impl AccountService {
    pub(super) fn open_seed(&self, user: &User, sealed: Option<&[u8]>) -> Result<TotpSecret, AccountError> {
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

    /// The enrolment begun and not yet confirmed, shown again to its owner after a code that did
    /// not match (the seed is not in force until confirmed); `None` when there is none.
    pub async fn pending_totp(&self, user: &User) -> Result<Option<TotpEnrollment>, AccountError> {
        if user.totp_enabled_at.is_some() {
            return Ok(None);
        }
        let Some(pending) = self.store.mfa_state(user.id).await?.pending_seed else {
            return Ok(None);
        };
        let secret = self.open_seed(user, Some(&pending))?;
        Ok(Some(TotpEnrollment {
            secret: secret.to_base32(),
            otpauth_uri: secret.otpauth_uri(&self.product, user.email.as_ref()),
        }))
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

    /// The audit events and the owner's notice (`subject`, `what`) of a change to the account's
    /// second factors, made now.
    pub(super) async fn factor_change(
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
}
