//! Passkeys (WebAuthn) as second factors, through the `webauthn-rs` crate: added after
//! re-authentication, proven against a challenge whose state stays on the server (a ceremony
//! row, answered once, for one user), their signature counters kept. The relying party is the
//! console's host; the origin is the console's URL.

use std::sync::Arc;

use tollgate_domain::mfa::RecoveryCode;
use tollgate_domain::{
    AuditAction, CeremonyPurpose, PasskeyId, RequestContext, SecretToken, Session, StoredPasskey, User,
    WebauthnCeremony,
};
use tollgate_store::StoreError;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url,
    Webauthn, WebauthnBuilder,
};

use super::{AccountError, AccountService, SecondFactor};

/// How long a challenge may take to answer.
const CEREMONY_LIFETIME: chrono::Duration = chrono::Duration::minutes(5);
/// Passkeys an account may have.
const MAX_PASSKEYS: usize = 10;

/// The WebAuthn relying party for the console at `console_url`: its host names it (an IP
/// address cannot, by WebAuthn's rules), its URL is the only origin accepted.
pub fn relying_party(console_url: &str, product: &str) -> Result<Arc<Webauthn>, String> {
    let origin = Url::parse(console_url).map_err(|e| format!("console_url: {e}"))?;
    let host = origin.host_str().ok_or("console_url has no host")?.to_owned();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err("passkeys need console_url to name a host (localhost or a domain), not an IP address".into());
    }
    WebauthnBuilder::new(&host, &origin)
        .and_then(|builder| builder.rp_name(product).build())
        .map(Arc::new)
        .map_err(|e| format!("passkeys: {e}"))
}

/// A challenge for the browser: `navigator.credentials.create` (adding) or `.get` (proving)
/// takes `options`; the answer comes back with `ceremony`.
#[derive(Debug)]
pub struct PasskeyChallenge {
    /// Hand back with the answer.
    pub ceremony: SecretToken,
    /// The WebAuthn options (JSON: `{"publicKey": …}`).
    pub options: serde_json::Value,
}

fn unexpected(error: impl std::fmt::Display) -> AccountError {
    AccountError::Unexpected(anyhow::anyhow!("passkeys: {error}"))
}

fn parse_passkey(stored: &StoredPasskey) -> Result<Passkey, AccountError> {
    serde_json::from_str(&stored.data).map_err(unexpected)
}

impl AccountService {
    /// Whether passkeys can be added here (the console URL names a host).
    pub fn passkeys_available(&self) -> bool {
        self.webauthn.is_some()
    }

    fn webauthn(&self) -> Result<&Webauthn, AccountError> {
        self.webauthn.as_deref().ok_or(AccountError::PasskeysUnavailable)
    }

    async fn begin_ceremony(
        &self,
        user: &User,
        purpose: CeremonyPurpose,
        state: String,
        options: serde_json::Value,
    ) -> Result<PasskeyChallenge, AccountError> {
        let ceremony = SecretToken::generate(&mut self.rng());
        let now = self.clock.now();
        self.store
            .create_ceremony(&WebauthnCeremony {
                token_hash: ceremony.hash(),
                user_id: user.id,
                purpose,
                state,
                created_at: now,
                expires_at: now + CEREMONY_LIFETIME,
            })
            .await?;
        Ok(PasskeyChallenge { ceremony, options })
    }

    async fn take_ceremony(
        &self,
        user: &User,
        purpose: CeremonyPurpose,
        token: &str,
    ) -> Result<Option<WebauthnCeremony>, AccountError> {
        let Some(token) = SecretToken::presented(token.trim()) else {
            return Ok(None);
        };
        Ok(self
            .store
            .take_ceremony(&token.hash(), user.id, purpose, self.clock.now())
            .await?)
    }

    /// Starts adding a passkey (password again, and the second factor if on).
    pub async fn begin_passkey_registration(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        factor: Option<&SecondFactor>,
        context: &RequestContext,
    ) -> Result<PasskeyChallenge, AccountError> {
        let webauthn = self.webauthn()?;
        self.confirm_sensitive(user, session, password, factor, context).await?;
        let existing = self.store.list_passkeys(user.id).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Err(AccountError::TooManyPasskeys(MAX_PASSKEYS));
        }
        let exclude = existing
            .iter()
            .map(|p| parse_passkey(p).map(|p| p.cred_id().clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let (options, state) = webauthn
            .start_passkey_registration(
                user.id.as_uuid(),
                user.email.as_ref(),
                &user.display_name,
                Some(exclude),
            )
            .map_err(unexpected)?;
        let state = serde_json::to_string(&state).map_err(unexpected)?;
        let options = serde_json::to_value(&options).map_err(unexpected)?;
        self.begin_ceremony(user, CeremonyPurpose::Register, state, options)
            .await
    }

    /// Adds the passkey that answered the registration challenge. The account's first second
    /// factor comes with recovery codes (shown once); other sessions end; the owner is told.
    pub async fn finish_passkey_registration(
        &self,
        user: &User,
        session: &Session,
        ceremony: &str,
        name: &str,
        credential: serde_json::Value,
        context: &RequestContext,
    ) -> Result<(StoredPasskey, Option<Vec<RecoveryCode>>), AccountError> {
        let webauthn = self.webauthn()?;
        let name = tollgate_domain::Name::parse_max(name, 64)
            .map_err(AccountError::InvalidPasskeyName)?
            .into_string();
        let ceremony = self
            .take_ceremony(user, CeremonyPurpose::Register, ceremony)
            .await?
            .ok_or(AccountError::InvalidCeremony)?;
        let state: PasskeyRegistration = serde_json::from_str(&ceremony.state).map_err(unexpected)?;
        let credential: RegisterPublicKeyCredential = serde_json::from_value(credential)
            .map_err(|e| AccountError::BadPasskey(format!("not a WebAuthn credential: {e}")))?;
        let passkey = webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|e| AccountError::BadPasskey(e.to_string()))?;
        let now = self.clock.now();
        let record = StoredPasskey {
            id: PasskeyId::new(),
            user_id: user.id,
            name: name.to_owned(),
            credential_id: passkey.cred_id().as_ref().to_vec(),
            data: serde_json::to_string(&passkey).map_err(unexpected)?,
            created_at: now,
            last_used_at: None,
        };
        let codes = (!user.has_second_factor()).then(|| RecoveryCode::generate_set(&mut self.rng()));
        let hashes: Vec<[u8; 32]> = codes.iter().flatten().map(RecoveryCode::hash).collect();
        let change = self
            .factor_change(
                user,
                AuditAction::AddPasskey,
                &format!("Added a passkey ({}); other sessions ended", record.id),
                (
                    "A passkey was added",
                    &format!("A passkey named \"{name}\" was added to your account as a second factor"),
                ),
                context,
            )
            .await?;
        match self
            .store
            .add_passkey(&record, &change.change(user, session, &hashes))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => return Err(AccountError::PasskeyTaken),
            Err(other) => return Err(other.into()),
        }
        self.notices.queued();
        Ok((record, codes))
    }

    /// A challenge for the user's passkeys (to sign in, or to confirm a sensitive change).
    pub async fn passkey_challenge(&self, user: &User) -> Result<PasskeyChallenge, AccountError> {
        let webauthn = self.webauthn()?;
        let passkeys = self
            .store
            .list_passkeys(user.id)
            .await?
            .iter()
            .map(parse_passkey)
            .collect::<Result<Vec<_>, _>>()?;
        if passkeys.is_empty() {
            return Err(AccountError::NoPasskeys);
        }
        let (options, state) = webauthn.start_passkey_authentication(&passkeys).map_err(unexpected)?;
        let state = serde_json::to_string(&state).map_err(unexpected)?;
        let options = serde_json::to_value(&options).map_err(unexpected)?;
        self.begin_ceremony(user, CeremonyPurpose::Authenticate, state, options)
            .await
    }

    /// A challenge for the second step of a sign-in (`mfa_token` from the first).
    pub async fn passkey_challenge_for_sign_in(&self, mfa_token: &str) -> Result<PasskeyChallenge, AccountError> {
        let token = SecretToken::presented(mfa_token.trim()).ok_or(AccountError::NotSignedIn)?;
        let user_id = self
            .store
            .find_mfa_challenge(&token.hash(), self.clock.now())
            .await?
            .ok_or(AccountError::NotSignedIn)?;
        let user = self.store.get_user(user_id).await?;
        self.passkey_challenge(&user).await
    }

    /// A challenge for a password reset's second factor (`token` from the emailed link, not used
    /// up by this).
    pub async fn passkey_challenge_for_reset(&self, token: &str) -> Result<PasskeyChallenge, AccountError> {
        let (_, user) = self
            .live_token(token, tollgate_domain::TokenPurpose::ResetPassword)
            .await?;
        self.passkey_challenge(&user).await
    }

    /// Checks a passkey's answer: `Some` (how the user signed in) when it proves one of theirs.
    pub(super) async fn check_passkey(
        &self,
        user: &User,
        ceremony: &str,
        credential: &serde_json::Value,
    ) -> Result<Option<&'static str>, AccountError> {
        let webauthn = self.webauthn()?;
        let Some(ceremony) = self
            .take_ceremony(user, CeremonyPurpose::Authenticate, ceremony)
            .await?
        else {
            return Ok(None);
        };
        let state: PasskeyAuthentication = serde_json::from_str(&ceremony.state).map_err(unexpected)?;
        let Ok(credential) = serde_json::from_value::<PublicKeyCredential>(credential.clone()) else {
            return Ok(None);
        };
        let Ok(result) = webauthn.finish_passkey_authentication(&credential, &state) else {
            return Ok(None);
        };
        for stored in self.store.list_passkeys(user.id).await? {
            let mut passkey = parse_passkey(&stored)?;
            if passkey.cred_id() == result.cred_id() {
                passkey.update_credential(&result);
                let data = serde_json::to_string(&passkey).map_err(unexpected)?;
                self.store.touch_passkey(stored.id, &data, self.clock.now()).await?;
                return Ok(Some("a passkey"));
            }
        }
        Ok(None)
    }

    /// The account's passkeys.
    pub async fn passkeys(&self, user: &User) -> Result<Vec<StoredPasskey>, AccountError> {
        Ok(self.store.list_passkeys(user.id).await?)
    }

    /// Removes a passkey (password again, and a second factor). When it was the last second
    /// factor, two-factor authentication is off and the recovery codes go. Other sessions end.
    pub async fn remove_passkey(
        &self,
        user: &User,
        session: &Session,
        id: PasskeyId,
        password: Option<&str>,
        factor: Option<&SecondFactor>,
        context: &RequestContext,
    ) -> Result<(), AccountError> {
        self.confirm_sensitive(user, session, password, factor, context).await?;
        let change = self
            .factor_change(
                user,
                AuditAction::RemovePasskey,
                &format!("Removed a passkey ({id}); other sessions ended"),
                ("A passkey was removed", "A passkey was removed from your account"),
                context,
            )
            .await?;
        match self.store.remove_passkey(id, &change.change(user, session, &[])).await {
            Ok(()) => {
                self.notices.queued();
                Ok(())
            }
            Err(StoreError::NotFound) => Err(AccountError::PasskeyNotFound),
            Err(other) => Err(other.into()),
        }
    }
}
