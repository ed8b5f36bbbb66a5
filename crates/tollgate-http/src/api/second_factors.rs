//! Second factors: TOTP and recovery codes, passkeys.

use super::*;

/// The account's second factors.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MfaStatusView {
    totp_enabled: bool,
    /// Passkeys registered as second factors.
    passkeys: u32,
    recovery_codes_left: u32,
}

/// Whether two-factor authentication is on, and how many recovery codes are left.
#[utoipa::path(get, path = "/api/account/mfa", tag = "console",
    responses((status = 200, body = MfaStatusView), (status = 401, body = crate::ErrorBody)), security(("session" = [])))]
pub(crate) async fn mfa_status(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> Result<Json<MfaStatusView>, XaiError> {
    let (totp_enabled, recovery_codes_left) = state.accounts.mfa_status(&signed_in.user).await?;
    Ok(Json(MfaStatusView {
        totp_enabled,
        passkeys: signed_in.user.passkeys,
        recovery_codes_left,
    }))
}

/// `POST /api/account/mfa/totp` body: the password, again (an account without one: sign in
/// again first instead, and send `{}`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordAgain {
    password: Option<String>,
}

/// A TOTP enrolment: show `otpauthUri` as a QR code (or `secret` to type), then confirm.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TotpEnrollmentView {
    secret: String,
    otpauth_uri: String,
}

/// Start turning on two-factor authentication (asks for the password again).
#[utoipa::path(post, path = "/api/account/mfa/totp", tag = "console", request_body = PasswordAgain,
    responses((status = 200, body = TotpEnrollmentView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn begin_totp(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<PasswordAgain>,
) -> Result<Json<TotpEnrollmentView>, XaiError> {
    let enrollment = state
        .accounts
        .begin_totp(&signed_in.user, &signed_in.session, body.password.as_deref(), &meta)
        .await?;
    Ok(Json(TotpEnrollmentView {
        secret: enrollment.secret,
        otpauth_uri: enrollment.otpauth_uri,
    }))
}

/// A TOTP code.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CodeRequest {
    code: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecoveryCodesView {
    recovery_codes: Vec<String>,
}

/// Confirm the enrolment with a first code: two-factor authentication is on, the other sessions
/// end, and 10 recovery codes are shown, once.
#[utoipa::path(post, path = "/api/account/mfa/totp/confirm", tag = "console", request_body = CodeRequest,
    responses((status = 200, body = RecoveryCodesView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn confirm_totp(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CodeRequest>,
) -> Result<Json<RecoveryCodesView>, XaiError> {
    let codes = state
        .accounts
        .confirm_totp(&signed_in.user, &signed_in.session, &body.code, &meta)
        .await?;
    Ok(Json(RecoveryCodesView {
        recovery_codes: codes.iter().map(RecoveryCode::display).collect(),
    }))
}

/// Turn two-factor authentication off: only with a code or a recovery code.
#[utoipa::path(post, path = "/api/account/mfa/disable", tag = "console", request_body = FactorFields,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn disable_mfa(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<FactorFields>,
) -> Result<StatusCode, XaiError> {
    let factor = body.required()?;
    state
        .accounts
        .disable_totp(&signed_in.user, &signed_in.session, &factor, &meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the recovery codes (with a second factor: a TOTP code, a passkey, or a recovery
/// code); the old ones stop working.
#[utoipa::path(post, path = "/api/account/mfa/recovery-codes", tag = "console", request_body = FactorFields,
    responses((status = 200, body = RecoveryCodesView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<FactorFields>,
) -> Result<Json<RecoveryCodesView>, XaiError> {
    let factor = body.required()?;
    let codes = state
        .accounts
        .regenerate_recovery_codes(&signed_in.user, &signed_in.session, &factor, &meta)
        .await?;
    Ok(Json(RecoveryCodesView {
        recovery_codes: codes.iter().map(RecoveryCode::display).collect(),
    }))
}

/// A WebAuthn challenge: pass `options` to `navigator.credentials.create` (adding a passkey) or
/// `.get` (proving one), and send the result back with `ceremony` within 5 minutes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PasskeyChallengeView {
    ceremony: String,
    #[schema(value_type = Object)]
    options: serde_json::Value,
}

impl From<tollgate_core::accounts::PasskeyChallenge> for PasskeyChallengeView {
    fn from(challenge: tollgate_core::accounts::PasskeyChallenge) -> Self {
        Self {
            ceremony: challenge.ceremony.expose().to_owned(),
            options: challenge.options,
        }
    }
}

/// A passkey of the account (its key material stays on the server).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PasskeyView {
    passkey_id: String,
    name: String,
    create_time: String,
    last_use_time: Option<String>,
}

impl PasskeyView {
    fn new(passkey: &tollgate_domain::StoredPasskey) -> Self {
        Self {
            passkey_id: passkey.id.to_string(),
            name: passkey.name.clone(),
            create_time: rfc3339(passkey.created_at),
            last_use_time: passkey.last_used_at.map(rfc3339),
        }
    }
}

/// Passkeys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PasskeyListView {
    passkeys: Vec<PasskeyView>,
}

/// The account's passkeys.
#[utoipa::path(get, path = "/api/account/passkeys", tag = "console",
    responses((status = 200, body = PasskeyListView), (status = 401, body = crate::ErrorBody)), security(("session" = [])))]
pub(crate) async fn list_passkeys(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> Result<Json<PasskeyListView>, XaiError> {
    let passkeys = state.accounts.passkeys(&signed_in.user).await?;
    Ok(Json(PasskeyListView {
        passkeys: passkeys.iter().map(PasskeyView::new).collect(),
    }))
}

/// Confirmation of a sensitive change: the password again (an account without one: a recent
/// sign-in instead), and, with two-factor authentication on, a second factor.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ConfirmRequest {
    password: Option<String>,
    /// A TOTP code.
    code: Option<String>,
    /// Or a recovery code.
    recovery_code: Option<String>,
    /// Or a passkey's answer to a challenge.
    passkey: Option<PasskeyAnswer>,
}

impl ConfirmRequest {
    fn split(self) -> Result<(Option<String>, Option<SecondFactor>), XaiError> {
        let factor = FactorFields {
            code: self.code,
            recovery_code: self.recovery_code,
            passkey: self.passkey,
        }
        .factor()?;
        Ok((self.password, factor))
    }
}

/// Start adding a passkey as a second factor (asks for the password again, and the second
/// factor if on): answers the options for `navigator.credentials.create`.
#[utoipa::path(post, path = "/api/account/passkeys/register", tag = "console", request_body = ConfirmRequest,
    responses((status = 200, body = PasskeyChallengeView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn begin_passkey_registration(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<ConfirmRequest>,
) -> Result<Json<PasskeyChallengeView>, XaiError> {
    let (password, factor) = body.split()?;
    let challenge = state
        .accounts
        .begin_passkey_registration(
            &signed_in.user,
            &signed_in.session,
            password.as_deref(),
            factor.as_ref(),
            &meta,
        )
        .await?;
    Ok(Json(challenge.into()))
}

/// `POST /api/account/passkeys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AddPasskeyRequest {
    /// From `POST /api/account/passkeys/register`.
    ceremony: String,
    /// A name to tell it by (1 to 64 characters).
    name: String,
    /// What `navigator.credentials.create` gave (JSON).
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

/// A passkey added; the account's first second factor comes with recovery codes, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PasskeyAddedView {
    passkey: PasskeyView,
    recovery_codes: Option<Vec<String>>,
}

/// Add the passkey that answered the registration challenge. Other sessions end.
#[utoipa::path(post, path = "/api/account/passkeys", tag = "console", request_body = AddPasskeyRequest,
    responses((status = 201, body = PasskeyAddedView), (status = 400, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn add_passkey(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<AddPasskeyRequest>,
) -> Result<(StatusCode, Json<PasskeyAddedView>), XaiError> {
    let (passkey, codes) = state
        .accounts
        .finish_passkey_registration(
            &signed_in.user,
            &signed_in.session,
            &body.ceremony,
            &body.name,
            body.credential,
            &meta,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PasskeyAddedView {
            passkey: PasskeyView::new(&passkey),
            recovery_codes: codes.map(|codes| codes.iter().map(RecoveryCode::display).collect()),
        }),
    ))
}

/// A challenge for the account's passkeys, to confirm a sensitive change with one.
#[utoipa::path(post, path = "/api/account/passkeys/challenge", tag = "console",
    responses((status = 200, body = PasskeyChallengeView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn passkey_challenge(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> Result<Json<PasskeyChallengeView>, XaiError> {
    Ok(Json(state.accounts.passkey_challenge(&signed_in.user).await?.into()))
}

/// Remove a passkey (password again, and a second factor). Removing the last second factor
/// turns two-factor authentication off. Other sessions end.
#[utoipa::path(post, path = "/api/account/passkeys/{passkey_id}/remove", tag = "console", request_body = ConfirmRequest,
    params(("passkey_id" = String, Path, description = "The passkey's id")),
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn remove_passkey(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    Path(passkey_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<ConfirmRequest>,
) -> Result<StatusCode, XaiError> {
    let id = passkey_id
        .parse()
        .map_err(|_| XaiError::not_found(AccountError::PasskeyNotFound.to_string()))?;
    let (password, factor) = body.split()?;
    state
        .accounts
        .remove_passkey(
            &signed_in.user,
            &signed_in.session,
            id,
            password.as_deref(),
            factor.as_ref(),
            &meta,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
