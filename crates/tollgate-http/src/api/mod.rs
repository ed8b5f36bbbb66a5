//! The console's JSON API (`/api/...`), for people in a browser: sign-up and sign-in with a
//! session cookie, sessions, email verification and password reset, and the team pages' calls
//! (API keys, management keys, the audit log) as the signed-in member, per their role.
//!
//! The session token travels only in an HttpOnly cookie (`__Host-` prefixed and `Secure` when
//! the console is served over HTTPS, `SameSite=Lax`). Every request that changes state also
//! carries the session's CSRF token in `X-CSRF-Token`. Sign-in, sign-up and reset take
//! `application/json` only, which a cross-site form cannot send.
//!
//! One module per subject (`auth`, `account`, `second_factors`, `teams`, `keys`); this one holds
//! the router, the session cookie, the extractors and the views they share. ("Console" is the
//! HTML pages, `pages`.)

mod account;
mod auth;
mod keys;
mod second_factors;
mod teams;

use crate::AppState;
use crate::audit::{AuditEventListView, EventsQuery, ExportFormatQuery, export_request, export_response, query_or_400};
use crate::error::XaiError;
use crate::extract::{RequestMeta, XaiJson};
use crate::management::{ApiKeyListView, ApiKeyView, CreateApiKeyRequest, UpdateApiKeyRequest, changes_from, rfc3339};
use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use tollgate_core::accounts::{SecondFactor, SignInOutcome};
use tollgate_core::{AccountError, Caller, Federated, FederationError, NewApiKey, TeamError};
use tollgate_domain::mfa::RecoveryCode;
use tollgate_domain::{ApiKeyId, ManagementKeyId, Session, SessionId, TeamId, User};

pub(crate) use account::*;
pub(crate) use auth::*;
pub(crate) use keys::*;
pub(crate) use second_factors::*;
pub(crate) use teams::*;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/sign-up", post(sign_up))
        .route("/api/auth/sign-in", post(sign_in))
        .route("/api/auth/sign-in/second-factor", post(sign_in_second_factor))
        .route("/api/account/password", post(change_password))
        .route("/api/account/password/remove", post(remove_password))
        .route("/api/account/passkeys", get(list_passkeys).post(add_passkey))
        .route("/api/account/passkeys/register", post(begin_passkey_registration))
        .route("/api/account/passkeys/challenge", post(passkey_challenge))
        .route("/api/account/passkeys/{passkey_id}/remove", post(remove_passkey))
        .route("/api/auth/sign-in/passkey-challenge", post(sign_in_passkey_challenge))
        .route("/api/account/delete", post(delete_account))
        .route("/api/auth/restore", post(restore_account))
        .route("/api/auth/providers", get(list_providers))
        .route("/api/auth/oidc/{provider}/start", get(oidc_start))
        .route("/api/auth/oidc/{provider}/callback", get(oidc_callback))
        .route("/api/auth/oidc/complete", post(oidc_complete))
        .route("/api/auth/oidc/separate", post(oidc_separate))
        .route("/api/account/identities", get(list_identities))
        .route("/api/account/identities/link", post(link_pending_identity))
        .route("/api/account/identities/{identity_id}", delete(unlink_identity))
        .route("/api/account/identities/{provider}/start", post(start_linking))
        .route("/api/account/email", post(request_email_change))
        .route("/api/auth/email-change/confirm", post(confirm_email_change))
        .route("/api/auth/email-change/report", post(report_email_change))
        .route("/api/account/mfa", get(mfa_status))
        .route("/api/account/mfa/totp", post(begin_totp))
        .route("/api/account/mfa/totp/confirm", post(confirm_totp))
        .route("/api/account/mfa/disable", post(disable_mfa))
        .route("/api/account/mfa/recovery-codes", post(regenerate_recovery_codes))
        .route("/api/auth/sign-out", post(sign_out))
        .route("/api/auth/verify-email", post(verify_email))
        .route("/api/auth/verify-email/resend", post(resend_verification))
        .route("/api/auth/password-reset", post(request_password_reset))
        .route("/api/auth/password-reset/confirm", post(reset_password))
        .route(
            "/api/auth/password-reset/passkey-challenge",
            post(reset_passkey_challenge),
        )
        .route("/api/me", get(me))
        .route("/api/account", axum::routing::patch(update_account))
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/end-others", post(end_other_sessions))
        .route("/api/sessions/{session_id}", delete(end_session))
        .route("/api/teams", post(create_team))
        .route(
            "/api/teams/{team_id}",
            get(get_team).patch(update_team).delete(delete_team),
        )
        .route("/api/teams/{team_id}/members", get(team_members).post(add_team_member))
        .route(
            "/api/teams/{team_id}/members/{user_id}",
            axum::routing::patch(change_member_role).delete(remove_team_member),
        )
        .route("/api/teams/{team_id}/invitations", get(team_invitations))
        .route(
            "/api/teams/{team_id}/invitations/{invitation_id}",
            delete(revoke_team_invitation),
        )
        .route("/api/invitations/accept", post(accept_invitation))
        .route("/api/invitations", get(my_invitations))
        .route("/api/invitations/{invitation_id}/accept", post(accept_my_invitation))
        .route("/api/teams/{team_id}/domains", get(team_domains).post(add_team_domain))
        .route("/api/teams/{team_id}/domains/{domain_id}", delete(remove_team_domain))
        .route(
            "/api/teams/{team_id}/domains/{domain_id}/verify",
            post(verify_team_domain),
        )
        .route("/api/teams/{team_id}/audit/events", get(team_audit_events))
        .route("/api/teams/{team_id}/audit/events/export", get(team_audit_export))
        .route(
            "/api/teams/{team_id}/api-keys",
            get(team_api_keys).post(team_create_api_key),
        )
        .route(
            "/api/teams/{team_id}/api-keys/{api_key_id}",
            get(team_get_api_key)
                .put(team_update_api_key)
                .delete(team_delete_api_key),
        )
        .route(
            "/api/teams/{team_id}/api-keys/{api_key_id}/rotate",
            post(team_rotate_api_key),
        )
        .route(
            "/api/teams/{team_id}/data-use",
            get(team_data_use).put(team_set_data_use),
        )
        .route(
            "/api/teams/{team_id}/key-policy",
            get(team_key_policy).put(team_set_key_policy),
        )
        .route(
            "/api/teams/{team_id}/management-keys",
            get(team_management_keys).post(team_create_management_key),
        )
        .route(
            "/api/teams/{team_id}/management-keys/{management_key_id}",
            delete(team_revoke_management_key),
        )
}

impl From<FederationError> for XaiError {
    fn from(error: FederationError) -> Self {
        match error {
            FederationError::UnknownProvider | FederationError::IdentityNotFound => {
                XaiError::not_found(error.to_string())
            }
            FederationError::BadState
            | FederationError::PendingInvalid
            | FederationError::SeparateNeedsVouchedAddress
            | FederationError::LastMethod
            | FederationError::InvalidEmail(_) => XaiError::invalid_argument(error.to_string()),
            FederationError::Provider(_) | FederationError::StaleSession => {
                XaiError::unauthenticated(error.to_string())
            }
            FederationError::ProviderUnavailable(_) => {
                XaiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            FederationError::IdentityTaken => XaiError::new(StatusCode::CONFLICT, error.to_string()),
            FederationError::Account(account) => account.into(),
            FederationError::Store(store) => store.into(),
        }
    }
}

impl From<TeamError> for XaiError {
    fn from(error: TeamError) -> Self {
        match error {
            TeamError::TeamNotFound => XaiError::permission_denied("You are not a member of this team"),
            TeamError::Forbidden(message) => XaiError::permission_denied(message),
            TeamError::InvalidName(_)
            | TeamError::InvalidDescription(_)
            | TeamError::InvalidReason(_)
            | TeamError::NameMismatch
            | TeamError::PersonalTeam
            | TeamError::LastAdmin
            | TeamError::InvalidInvitation
            | TeamError::InvalidEmail(_) => XaiError::invalid_argument(error.to_string()),
            TeamError::AlreadyMember | TeamError::DomainTaken => XaiError::new(StatusCode::CONFLICT, error.to_string()),
            TeamError::NotAMember | TeamError::InvitationNotFound | TeamError::DomainNotFound => {
                XaiError::not_found(error.to_string())
            }
            TeamError::InvalidDomain(_) => XaiError::invalid_argument(error.to_string()),
            TeamError::WrongAccount | TeamError::EmailNotVerified => XaiError::permission_denied(error.to_string()),
            TeamError::InvitationPending => XaiError::new(StatusCode::CONFLICT, error.to_string()),
            TeamError::MailLimited => {
                let mut headers = HeaderMap::new();
                headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(3600));
                XaiError::new(StatusCode::TOO_MANY_REQUESTS, error.to_string()).with_headers(headers)
            }
            TeamError::Store(store) => store.into(),
        }
    }
}

impl From<AccountError> for XaiError {
    fn from(error: AccountError) -> Self {
        match error {
            AccountError::PasskeysUnavailable
            | AccountError::TooManyPasskeys(_)
            | AccountError::InvalidPasskeyName(_)
            | AccountError::InvalidCeremony
            | AccountError::BadPasskey(_)
            | AccountError::NoPasskeys => XaiError::invalid_argument(error.to_string()),
            AccountError::PasskeyTaken => XaiError::new(StatusCode::CONFLICT, error.to_string()),
            AccountError::PasskeyNotFound => XaiError::not_found(error.to_string()),
            AccountError::InvalidEmail(_)
            | AccountError::InvalidDisplayName(_)
            | AccountError::InvalidPassword(_)
            | AccountError::InvalidLink
            | AccountError::SameEmail
            | AccountError::SoleAdmin(_) => XaiError::invalid_argument(error.to_string()),
            AccountError::EmailTaken | AccountError::PasswordAtAddressTaken => {
                XaiError::new(StatusCode::CONFLICT, error.to_string())
            }
            AccountError::BadCredentials | AccountError::NotSignedIn | AccountError::ReauthenticationRequired => {
                XaiError::unauthenticated(error.to_string())
            }
            AccountError::PasswordRequired | AccountError::LastSignInMethod | AccountError::NoPassword => {
                XaiError::invalid_argument(error.to_string())
            }
            AccountError::CsrfMismatch => XaiError::permission_denied(error.to_string()),
            AccountError::TeamNotFound => XaiError::permission_denied("You are not a member of this team"),
            AccountError::BadSecondFactor => XaiError::unauthenticated(error.to_string()),
            AccountError::SecondFactorRequired
            | AccountError::MfaAlreadyEnabled
            | AccountError::MfaNotEnabled
            | AccountError::NoPendingEnrollment => XaiError::invalid_argument(error.to_string()),
            AccountError::SessionNotFound => XaiError::not_found("No such session"),
            AccountError::Throttled { retry_after_seconds } => {
                let mut headers = HeaderMap::new();
                headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
                XaiError::new(StatusCode::TOO_MANY_REQUESTS, error.to_string()).with_headers(headers)
            }
            AccountError::MailLimited => {
                let mut headers = HeaderMap::new();
                headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(3600));
                XaiError::new(StatusCode::TOO_MANY_REQUESTS, error.to_string()).with_headers(headers)
            }
            AccountError::Busy => {
                let mut headers = HeaderMap::new();
                headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(1));
                XaiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).with_headers(headers)
            }
            AccountError::Store(store) => store.into(),
            AccountError::Unexpected(source) => XaiError::internal(source),
        }
    }
}

/// The session cookie's name and attributes, from the console's URL.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// `__Host-tollgate_session` over HTTPS, `tollgate_session` otherwise.
    pub name: &'static str,
    /// Whether to mark it `Secure`.
    pub secure: bool,
}

impl CookieSettings {
    /// Settings for a console served at `console_url`.
    #[must_use]
    pub fn for_console(console_url: &str) -> Self {
        let secure = console_url.starts_with("https://");
        Self {
            name: if secure {
                "__Host-tollgate_session"
            } else {
                "tollgate_session"
            },
            secure,
        }
    }

    pub(crate) fn set(&self, value: &str, max_age_seconds: i64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let cookie = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_seconds}{secure}",
            self.name
        );
        HeaderValue::try_from(cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub(crate) fn read<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value)
    }
}

/// A signed-in person: the session and its user. Requests that change state must carry the
/// session's CSRF token.
pub(crate) struct SignedInUser {
    session: Session,
    user: User,
}

impl FromRequestParts<AppState> for SignedInUser {
    type Rejection = XaiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, XaiError> {
        let token = state
            .cookies
            .read(&parts.headers)
            .ok_or_else(|| XaiError::unauthenticated(AccountError::NotSignedIn.to_string()))?;
        let changes_state = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let csrf = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        let (session, user) = state.accounts.authenticate(token, csrf, changes_state).await?;
        Ok(Self { session, user })
    }
}

/// The signed-in user as a member of the team in the path (`{team_id}`).
pub(crate) struct TeamMember(pub(crate) Caller);

impl FromRequestParts<AppState> for TeamMember {
    type Rejection = XaiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, XaiError> {
        let signed_in = SignedInUser::from_request_parts(parts, state).await?;
        let Path(params) = Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| XaiError::permission_denied("You are not a member of this team"))?;
        let team_id: TeamId = params
            .get("team_id")
            .and_then(|raw| raw.parse().ok())
            .ok_or_else(|| XaiError::permission_denied("You are not a member of this team"))?;
        Ok(Self(state.accounts.member(&signed_in.user, team_id).await?))
    }
}

/// A user as the console shows them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserView {
    user_id: String,
    email: String,
    name: String,
    email_verified: bool,
    /// Two-factor authentication is on.
    mfa_enabled: bool,
    create_time: String,
}

impl UserView {
    fn new(user: &User) -> Self {
        Self {
            user_id: user.id.to_string(),
            email: user.email.as_ref().to_owned(),
            name: user.display_name.clone(),
            email_verified: user.email_verified_at.is_some(),
            mfa_enabled: user.has_second_factor(),
            create_time: rfc3339(user.created_at),
        }
    }
}

/// The answer to a sign-in or sign-up (the session token is in the cookie, not here).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SignedInView {
    user: UserView,
    /// Send back in `X-CSRF-Token` on every request that changes state.
    csrf_token: String,
    session_id: String,
    expire_time: String,
}

fn signed_in_response(state: &AppState, signed_in: &tollgate_core::accounts::SignedIn, status: StatusCode) -> Response {
    let max_age = (signed_in.session.absolute_expires_at - signed_in.session.created_at).num_seconds();
    let body = SignedInView {
        user: UserView::new(&signed_in.user),
        csrf_token: signed_in.csrf.expose().to_owned(),
        session_id: signed_in.session.id.to_string(),
        expire_time: rfc3339(signed_in.session.absolute_expires_at),
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, state.cookies.set(signed_in.token.expose(), max_age));
    response
        .headers_mut()
        .insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A passkey's answer to a challenge: the challenge's `ceremony`, and the `PublicKeyCredential`
/// the browser's `navigator.credentials.get` gave (as JSON).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PasskeyAnswer {
    ceremony: String,
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

/// A second factor: a TOTP `code`, a `recoveryCode`, or a `passkey`'s answer.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FactorFields {
    /// The 6-digit code from the authenticator app.
    code: Option<String>,
    /// One of the recovery codes (`XXXXXX-XXXXXX-XXXXXX-XXXXXX`).
    recovery_code: Option<String>,
    /// A passkey's answer to a challenge.
    passkey: Option<PasskeyAnswer>,
}

impl FactorFields {
    fn factor(self) -> Result<Option<SecondFactor>, XaiError> {
        match (self.code, self.recovery_code, self.passkey) {
            (Some(code), None, None) => Ok(Some(SecondFactor::Totp(code))),
            (None, Some(code), None) => Ok(Some(SecondFactor::RecoveryCode(code))),
            (None, None, Some(answer)) => Ok(Some(SecondFactor::Passkey {
                ceremony: answer.ceremony,
                credential: answer.credential,
            })),
            (None, None, None) => Ok(None),
            _ => Err(XaiError::invalid_argument(
                "send one second factor: code, recoveryCode or passkey",
            )),
        }
    }

    fn required(self) -> Result<SecondFactor, XaiError> {
        self.factor()?
            .ok_or_else(|| XaiError::invalid_argument(AccountError::SecondFactorRequired.to_string()))
    }
}
