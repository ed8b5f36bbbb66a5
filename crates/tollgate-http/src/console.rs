//! The console's JSON API (`/api/...`), for people in a browser: sign-up and sign-in with a
//! session cookie, sessions, email verification and password reset, and the team pages' calls
//! (API keys, management keys, the audit log) as the signed-in member, per their role.
//!
//! The session token travels only in an HttpOnly cookie (`__Host-` prefixed and `Secure` when
//! the console is served over HTTPS, `SameSite=Lax`). Every request that changes state also
//! carries the session's CSRF token in `X-CSRF-Token`. Sign-in, sign-up and reset take
//! `application/json` only, which a cross-site form cannot send.

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

use crate::AppState;
use crate::audit::{AuditEventListView, EventsQuery, ExportFormatQuery, export_request, export_response, query_or_400};
use crate::error::XaiError;
use crate::extract::{RequestMeta, XaiJson};
use crate::management::{ApiKeyListView, ApiKeyView, CreateApiKeyRequest, UpdateApiKeyRequest, changes_from, rfc3339};

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

/// `POST /api/auth/sign-up` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignUpRequest {
    email: String,
    /// 15 to 256 characters, not a common password.
    password: String,
    /// Shown in the console.
    name: String,
}

/// Create an account (with its Personal Team), send the email verification link, and sign in.
#[utoipa::path(post, path = "/api/auth/sign-up", tag = "console", request_body = SignUpRequest,
    responses((status = 201, body = SignedInView), (status = 400, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)))]
pub(crate) async fn sign_up(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SignUpRequest>,
) -> Result<Response, XaiError> {
    let signed_in = state
        .accounts
        .sign_up(&body.email, &body.name, &body.password, &meta)
        .await?;
    Ok(signed_in_response(&state, &signed_in, StatusCode::CREATED))
}

/// `POST /api/auth/sign-in` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignInRequest {
    email: String,
    password: String,
}

/// The password was right; the second factor is next.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecondFactorView {
    /// Always true.
    mfa_required: bool,
    /// Send with the code to `/api/auth/sign-in/second-factor` within 5 minutes.
    mfa_token: String,
    /// The second factors the account has: `totp`, `passkey` (get a challenge at
    /// `/api/auth/sign-in/passkey-challenge`), `recovery_code`.
    methods: Vec<&'static str>,
}

/// Sign in with email and password: a new session cookie (200), or, for an account with
/// two-factor authentication, a token for the second step (202). An unknown email and a wrong
/// password get the same answer; repeated failures are throttled per account and per address.
#[utoipa::path(post, path = "/api/auth/sign-in", tag = "console", request_body = SignInRequest,
    responses(
        (status = 200, body = SignedInView),
        (status = 202, description = "A second factor is needed", body = SecondFactorView),
        (status = 401, body = crate::ErrorBody),
        (status = 429, body = crate::ErrorBody),
    ))]
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SignInRequest>,
) -> Result<Response, XaiError> {
    let outcome = state.accounts.sign_in(&body.email, &body.password, &meta).await?;
    Ok(outcome_response(&state, outcome))
}

/// One configured external sign-in provider.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProviderView {
    name: String,
    display_name: String,
    /// Send the browser here to sign in with it.
    start_url: String,
}

/// Providers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ProviderListView {
    providers: Vec<ProviderView>,
}

/// The external sign-in providers the operator configured.
#[utoipa::path(get, path = "/api/auth/providers", tag = "console", responses((status = 200, body = ProviderListView)))]
pub(crate) async fn list_providers(State(state): State<AppState>) -> Json<ProviderListView> {
    Json(ProviderListView {
        providers: state
            .federation
            .providers()
            .into_iter()
            .map(|(name, display_name)| ProviderView {
                start_url: format!("/api/auth/oidc/{name}/start"),
                name,
                display_name,
            })
            .collect(),
    })
}

const FLOW_COOKIE: &str = "tollgate_oidc";

pub(crate) fn flow_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.cookies.secure { "; Secure" } else { "" };
    HeaderValue::try_from(format!(
        "{FLOW_COOKIE}={value}; Path=/api; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn read_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// Sign in with an external provider: redirects the browser there (authorization code with
/// PKCE; the flow is bound to this browser by a cookie).
#[utoipa::path(get, path = "/api/auth/oidc/{provider}/start", tag = "console",
    params(("provider" = String, Path, description = "The provider's name")),
    responses((status = 303, description = "To the provider"), (status = 404, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody)))]
pub(crate) async fn oidc_start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    RequestMeta(meta): RequestMeta,
) -> Result<Response, XaiError> {
    let (url, browser) = state.federation.start(&provider, None, &meta).await?;
    let mut response = (StatusCode::SEE_OTHER, [(axum::http::header::LOCATION, url)]).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, flow_cookie(&state, browser.expose(), 600));
    Ok(response)
}

/// Link an external provider to the signed-in account: answers the URL to send the browser to.
/// Needs a sign-in within the last 10 minutes.
#[utoipa::path(post, path = "/api/account/identities/{provider}/start", tag = "console",
    params(("provider" = String, Path, description = "The provider's name")),
    responses((status = 200, body = LinkStartView), (status = 401, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn start_linking(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    Path(provider): Path<String>,
    RequestMeta(meta): RequestMeta,
) -> Result<Response, XaiError> {
    let (url, browser) = state
        .federation
        .start(&provider, Some((&signed_in.user, &signed_in.session)), &meta)
        .await?;
    let mut response = Json(LinkStartView { authorization_url: url }).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, flow_cookie(&state, browser.expose(), 600));
    Ok(response)
}

/// Where to send the browser to link a provider.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LinkStartView {
    authorization_url: String,
}

/// The provider's answer.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// What an external sign-in needs next.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FederatedView {
    /// `linked`, `email_in_use` (sign in to that account and link with `pendingToken`, create a
    /// separate account at the same address, or give another address), `email_needed` (give an
    /// address).
    outcome: &'static str,
    pending_token: Option<String>,
    email: Option<String>,
    identity: Option<IdentityView>,
}

/// The provider redirects the browser here. Checks state (bound to this browser), exchanges the
/// code with the PKCE verifier, validates the ID token (signature, issuer, audience, nonce), then
/// signs in, links, or asks what to do.
#[utoipa::path(get, path = "/api/auth/oidc/{provider}/callback", tag = "console",
    params(("provider" = String, Path, description = "The provider's name"), CallbackQuery),
    responses(
        (status = 200, description = "Signed in (the session cookie is set), or linked", body = SignedInView),
        (status = 202, description = "A second factor, a restore, or a choice is needed", body = FederatedView),
        (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody),
    ))]
pub(crate) async fn oidc_callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, XaiError> {
    if let Some(error) = query.error {
        let detail = query.error_description.unwrap_or_default();
        return Err(XaiError::unauthenticated(
            format!("The sign-in provider refused: {error} {detail}")
                .trim_end()
                .to_owned(),
        ));
    }
    let (Some(code), Some(flow_state)) = (query.code, query.state) else {
        return Err(XaiError::invalid_argument("the callback needs code and state"));
    };
    let outcome = state
        .federation
        .callback(&provider, &code, &flow_state, read_cookie(&headers, FLOW_COOKIE), &meta)
        .await;
    // A browser (it asks for HTML) lands on the console's pages; API clients get JSON.
    if crate::pages::wants_html(&headers) {
        let mut response = crate::pages::federated(&state, outcome);
        response.headers_mut().append(SET_COOKIE, flow_cookie(&state, "", 0));
        return Ok(response);
    }
    let mut response = match outcome? {
        Federated::SignIn(outcome) => outcome_response(&state, outcome),
        Federated::Linked(identity) => Json(FederatedView {
            outcome: "linked",
            pending_token: None,
            email: None,
            identity: Some(IdentityView::new(&identity)),
        })
        .into_response(),
        Federated::EmailInUse { pending, email } => (
            StatusCode::ACCEPTED,
            Json(FederatedView {
                outcome: "email_in_use",
                pending_token: Some(pending.expose().to_owned()),
                email: Some(email),
                identity: None,
            }),
        )
            .into_response(),
        Federated::EmailNeeded { pending } => (
            StatusCode::ACCEPTED,
            Json(FederatedView {
                outcome: "email_needed",
                pending_token: Some(pending.expose().to_owned()),
                email: None,
                identity: None,
            }),
        )
            .into_response(),
    };
    response.headers_mut().append(SET_COOKIE, flow_cookie(&state, "", 0));
    Ok(response)
}

/// `POST /api/auth/oidc/complete` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CompleteRequest {
    pending_token: String,
    /// The new account's address (a verification link goes to it unless the provider vouched for it).
    email: String,
}

/// Create the account for a pending external sign-in, with the address given.
#[utoipa::path(post, path = "/api/auth/oidc/complete", tag = "console", request_body = CompleteRequest,
    responses((status = 200, body = SignedInView), (status = 400, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)))]
pub(crate) async fn oidc_complete(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CompleteRequest>,
) -> Result<Response, XaiError> {
    let signed_in = state
        .federation
        .complete_with_email(&body.pending_token, &body.email, &meta)
        .await?;
    Ok(signed_in_response(&state, &signed_in, StatusCode::OK))
}

/// `POST /api/auth/oidc/separate` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SeparateRequest {
    pending_token: String,
}

/// Create a separate account for a pending external sign-in whose address another account
/// already uses: "You can create multiple accounts of different sign-in methods with the same
/// email. We will not be able to merge the content, subscriptions, etc. of different accounts."
/// The new account has its own Personal Team and shares nothing with the other; it signs in
/// with this provider.
#[utoipa::path(post, path = "/api/auth/oidc/separate", tag = "console", request_body = SeparateRequest,
    responses((status = 200, body = SignedInView), (status = 400, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)))]
pub(crate) async fn oidc_separate(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SeparateRequest>,
) -> Result<Response, XaiError> {
    let signed_in = state.federation.complete_separately(&body.pending_token, &meta).await?;
    Ok(signed_in_response(&state, &signed_in, StatusCode::OK))
}

/// An external sign-in of the account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdentityView {
    identity_id: String,
    provider: String,
    issuer: String,
    subject: String,
    email: Option<String>,
    link_time: String,
}

impl IdentityView {
    fn new(identity: &tollgate_domain::Identity) -> Self {
        Self {
            identity_id: identity.id.to_string(),
            provider: identity.provider.clone(),
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            email: identity.email.clone(),
            link_time: rfc3339(identity.linked_at),
        }
    }
}

/// Identities.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdentityListView {
    identities: Vec<IdentityView>,
    /// Whether the account also signs in with a password.
    password: bool,
}

/// The account's sign-in methods.
#[utoipa::path(get, path = "/api/account/identities", tag = "console",
    responses((status = 200, body = IdentityListView), (status = 401, body = crate::ErrorBody)), security(("session" = [])))]
pub(crate) async fn list_identities(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> Result<Json<IdentityListView>, XaiError> {
    let identities = state.federation.identities(&signed_in.user).await?;
    Ok(Json(IdentityListView {
        identities: identities.iter().map(IdentityView::new).collect(),
        password: signed_in.user.password_hash.is_some(),
    }))
}

/// `POST /api/account/identities/link` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LinkRequest {
    pending_token: String,
}

/// Link a pending external sign-in (whose address is this account's) to the signed-in account.
/// Needs a sign-in within the last 10 minutes (the owner proves the account is theirs).
#[utoipa::path(post, path = "/api/account/identities/link", tag = "console", request_body = LinkRequest,
    responses((status = 200, body = IdentityView), (status = 400, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn link_pending_identity(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<LinkRequest>,
) -> Result<Json<IdentityView>, XaiError> {
    let identity = state
        .federation
        .link_pending(&signed_in.user, &signed_in.session, &body.pending_token, &meta)
        .await?;
    Ok(Json(IdentityView::new(&identity)))
}

/// Remove an external sign-in (not the account's last way to sign in).
#[utoipa::path(delete, path = "/api/account/identities/{identity_id}", tag = "console",
    params(("identity_id" = String, Path, description = "The identity's id")),
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn unlink_identity(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    Path(identity_id): Path<String>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    let id = identity_id
        .parse()
        .map_err(|_| XaiError::not_found("no such sign-in method"))?;
    state.federation.unlink(&signed_in.user, id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The account was deleted; it can be restored for a while.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeletedAccountView {
    /// Always true.
    account_deleted: bool,
    /// Send to `/api/auth/restore` within 15 minutes to restore the account.
    restore_token: String,
    /// After this the account's data is purged.
    restore_until: String,
}

fn outcome_response(state: &AppState, outcome: SignInOutcome) -> Response {
    match outcome {
        SignInOutcome::SignedIn(signed_in) => signed_in_response(state, &signed_in, StatusCode::OK),
        SignInOutcome::SecondFactor { challenge, methods } => (
            StatusCode::ACCEPTED,
            Json(SecondFactorView {
                mfa_required: true,
                mfa_token: challenge.expose().to_owned(),
                methods,
            }),
        )
            .into_response(),
        SignInOutcome::Deleted { restore, purge_after } => (
            StatusCode::ACCEPTED,
            Json(DeletedAccountView {
                account_deleted: true,
                restore_token: restore.expose().to_owned(),
                restore_until: rfc3339(purge_after),
            }),
        )
            .into_response(),
    }
}

/// Restore a deleted account (within its 30 days) with the token its sign-in answered with.
#[utoipa::path(post, path = "/api/auth/restore", tag = "console", request_body = TokenRequest,
    responses((status = 200, body = SignedInView), (status = 400, body = crate::ErrorBody)))]
pub(crate) async fn restore_account(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TokenRequest>,
) -> Result<Response, XaiError> {
    let signed_in = state.accounts.restore_account(&body.token, &meta).await?;
    Ok(signed_in_response(&state, &signed_in, StatusCode::OK))
}

/// `POST /api/account/delete` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeleteAccountRequest {
    /// The password, again (an account without one: sign in again first instead).
    password: Option<String>,
    /// With two-factor authentication on: a TOTP code.
    code: Option<String>,
    /// Or a recovery code.
    recovery_code: Option<String>,
    /// Or a passkey\'s answer to a challenge.
    passkey: Option<PasskeyAnswer>,
}

/// When the data goes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccountDeletedView {
    /// Sign in before this to restore the account; after it, its personal data is purged.
    restore_until: String,
}

/// Delete your account: at once every session ends, its management keys stop, and it leaves its
/// teams' member lists (the API keys it created stay with their teams). Signing in within 30 days
/// offers to restore it. Refused while you are the only Admin of a team.
#[utoipa::path(post, path = "/api/account/delete", tag = "console", request_body = DeleteAccountRequest,
    responses((status = 200, body = AccountDeletedView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn delete_account(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<DeleteAccountRequest>,
) -> Result<Response, XaiError> {
    let factor = FactorFields {
        code: body.code,
        recovery_code: body.recovery_code,
        passkey: body.passkey,
    }
    .factor()?;
    let purge_after = state
        .accounts
        .delete_account(
            &signed_in.user,
            &signed_in.session,
            body.password.as_deref(),
            factor.as_ref(),
            &meta,
        )
        .await?;
    let mut response = Json(AccountDeletedView {
        restore_until: rfc3339(purge_after),
    })
    .into_response();
    response.headers_mut().insert(SET_COOKIE, state.cookies.set("", 0));
    Ok(response)
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

/// `POST /api/auth/sign-in/second-factor` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SecondFactorRequest {
    mfa_token: String,
    code: Option<String>,
    recovery_code: Option<String>,
    /// A passkey's answer to `POST /api/auth/sign-in/passkey-challenge`.
    passkey: Option<PasskeyAnswer>,
}

/// Complete a sign-in with the second factor: a TOTP code (each accepted once) or a recovery code
/// (each works once; the owner is emailed when one is used).
#[utoipa::path(post, path = "/api/auth/sign-in/second-factor", tag = "console", request_body = SecondFactorRequest,
    responses((status = 200, body = SignedInView), (status = 401, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody)))]
pub(crate) async fn sign_in_second_factor(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SecondFactorRequest>,
) -> Result<Response, XaiError> {
    let factor = FactorFields {
        code: body.code,
        recovery_code: body.recovery_code,
        passkey: body.passkey,
    }
    .required()?;
    let outcome = state
        .accounts
        .sign_in_second_factor(&body.mfa_token, &factor, &meta)
        .await?;
    Ok(outcome_response(&state, outcome))
}

/// `POST /api/account/password` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ChangePasswordRequest {
    /// The current password; leave it out to set the first password of an account that signs in
    /// with a provider (within 10 minutes of signing in).
    current_password: Option<String>,
    new_password: String,
}

/// Change the password (the current one is asked again), or add one to an account that signs in
/// with a provider; the other sessions end.
#[utoipa::path(post, path = "/api/account/password", tag = "console", request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<ChangePasswordRequest>,
) -> Result<StatusCode, XaiError> {
    state
        .accounts
        .change_password(
            &signed_in.user,
            &signed_in.session,
            body.current_password.as_deref(),
            &body.new_password,
            &meta,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/account/password/remove` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RemovePasswordRequest {
    /// The password, again.
    password: String,
    /// With two-factor authentication on: a TOTP code.
    code: Option<String>,
    /// Or a recovery code.
    recovery_code: Option<String>,
    /// Or a passkey\'s answer to a challenge.
    passkey: Option<PasskeyAnswer>,
}

/// Remove the password, when the account also signs in with a provider (it cannot be the last
/// way to sign in).
#[utoipa::path(post, path = "/api/account/password/remove", tag = "console", request_body = RemovePasswordRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn remove_password(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<RemovePasswordRequest>,
) -> Result<StatusCode, XaiError> {
    let factor = FactorFields {
        code: body.code,
        recovery_code: body.recovery_code,
        passkey: body.passkey,
    }
    .factor()?;
    state
        .accounts
        .remove_password(
            &signed_in.user,
            &signed_in.session,
            Some(&body.password),
            factor.as_ref(),
            &meta,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/account/email` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EmailChangeRequest {
    /// The password, again (an account without one: sign in again first instead).
    password: Option<String>,
    /// The new address.
    new_email: String,
    /// With two-factor authentication on: a TOTP code.
    code: Option<String>,
    /// Or a recovery code.
    recovery_code: Option<String>,
    /// Or a passkey\'s answer to a challenge.
    passkey: Option<PasskeyAnswer>,
}

/// Ask to change the email address: the new address gets a confirmation link, the old one a
/// notice with a link to stop it. Nothing changes until the new address confirms.
#[utoipa::path(post, path = "/api/account/email", tag = "console", request_body = EmailChangeRequest,
    responses((status = 202), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn request_email_change(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<EmailChangeRequest>,
) -> Result<StatusCode, XaiError> {
    let factor = FactorFields {
        code: body.code,
        recovery_code: body.recovery_code,
        passkey: body.passkey,
    }
    .factor()?;
    state
        .accounts
        .request_email_change(
            &signed_in.user,
            &signed_in.session,
            body.password.as_deref(),
            factor.as_ref(),
            &body.new_email,
            &meta,
        )
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Confirm a new email address with the link sent to it: the address changes, every session ends.
#[utoipa::path(post, path = "/api/auth/email-change/confirm", tag = "console", request_body = TokenRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)))]
pub(crate) async fn confirm_email_change(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TokenRequest>,
) -> Result<StatusCode, XaiError> {
    state.accounts.confirm_email_change(&body.token, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stop an email change you did not ask for, with the link sent to the old address; every
/// session ends.
#[utoipa::path(post, path = "/api/auth/email-change/report", tag = "console", request_body = TokenRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody)))]
pub(crate) async fn report_email_change(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TokenRequest>,
) -> Result<StatusCode, XaiError> {
    state.accounts.report_email_change(&body.token, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

/// End this session and clear its cookie.
#[utoipa::path(post, path = "/api/auth/sign-out", tag = "console",
    responses((status = 204), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
) -> Result<Response, XaiError> {
    state
        .accounts
        .sign_out(&signed_in.session, &signed_in.user, &meta)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(SET_COOKIE, state.cookies.set("", 0));
    response.headers_mut().insert(
        "clear-site-data",
        HeaderValue::from_static("\"cache\", \"cookies\", \"storage\""),
    );
    Ok(response)
}

/// A single-use token from an emailed link.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    token: String,
}

/// Verify the email address with the token from the emailed link.
#[utoipa::path(post, path = "/api/auth/verify-email", tag = "console", request_body = TokenRequest,
    responses((status = 200, body = UserView), (status = 400, body = crate::ErrorBody)))]
pub(crate) async fn verify_email(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TokenRequest>,
) -> Result<Json<UserView>, XaiError> {
    let user = state.accounts.verify_email(&body.token, &meta).await?;
    Ok(Json(UserView::new(&user)))
}

/// Send a new verification link to the signed-in user's address.
#[utoipa::path(post, path = "/api/auth/verify-email/resend", tag = "console",
    responses((status = 202), (status = 401, body = crate::ErrorBody)), security(("session" = [])))]
pub(crate) async fn resend_verification(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    if signed_in.user.email_verified_at.is_none() {
        state.accounts.send_verification(&signed_in.user, &meta).await?;
    }
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/auth/password-reset` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetRequest {
    email: String,
}

/// Ask for a password reset link. The answer is the same whether or not the account exists.
#[utoipa::path(post, path = "/api/auth/password-reset", tag = "console", request_body = ResetRequest,
    responses((status = 202)))]
pub(crate) async fn request_password_reset(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<ResetRequest>,
) -> Result<StatusCode, XaiError> {
    state.accounts.request_password_reset(&body.email, &meta).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/auth/password-reset/confirm` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ResetConfirmRequest {
    token: String,
    /// The new password.
    password: String,
    /// With two-factor authentication on: a TOTP code (a reset does not bypass the second factor).
    code: Option<String>,
    /// Or a recovery code.
    recovery_code: Option<String>,
    /// Or a passkey\'s answer to a challenge.
    passkey: Option<PasskeyAnswer>,
}

/// Set a new password with the emailed link (60 minutes, single use). Every session ends.
#[utoipa::path(post, path = "/api/auth/password-reset/confirm", tag = "console", request_body = ResetConfirmRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody)))]
pub(crate) async fn reset_password(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<ResetConfirmRequest>,
) -> Result<StatusCode, XaiError> {
    let factor = FactorFields {
        code: body.code,
        recovery_code: body.recovery_code,
        passkey: body.passkey,
    }
    .factor()?;
    state
        .accounts
        .reset_password(&body.token, &body.password, factor.as_ref(), &meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One team of the user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TeamMembershipView {
    team_id: String,
    name: String,
    /// `admin` or `member`.
    role: &'static str,
    personal: bool,
}

/// Who is signed in, and their teams.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MeView {
    user: UserView,
    teams: Vec<TeamMembershipView>,
    /// The team pages open on: the Personal Team, else the oldest.
    current_team_id: Option<String>,
}

/// The signed-in user, their teams and roles.
#[utoipa::path(get, path = "/api/me", tag = "console",
    responses((status = 200, body = MeView), (status = 401, body = crate::ErrorBody)), security(("session" = [])))]
pub(crate) async fn me(State(state): State<AppState>, signed_in: SignedInUser) -> Result<Json<MeView>, XaiError> {
    let memberships = state.accounts.memberships(&signed_in.user).await?;
    let current = memberships
        .iter()
        .find(|m| m.team.personal)
        .or_else(|| memberships.first())
        .map(|m| m.team.id.to_string());
    Ok(Json(MeView {
        user: UserView::new(&signed_in.user),
        teams: memberships
            .iter()
            .map(|m| TeamMembershipView {
                team_id: m.team.id.to_string(),
                name: m.team.name.clone(),
                role: m.role.as_str(),
                personal: m.team.personal,
            })
            .collect(),
        current_team_id: current,
    }))
}

/// One session of the user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionView {
    session_id: String,
    /// This request's session.
    current: bool,
    create_time: String,
    last_seen_time: String,
    ip_address: Option<String>,
    /// Approximate place, derived from the IP address at sign-in; absent when unknown.
    location: Option<String>,
    user_agent: Option<String>,
}

/// Sessions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SessionListView {
    sessions: Vec<SessionView>,
}

/// The signed-in user's live sessions, newest first.
#[utoipa::path(get, path = "/api/sessions", tag = "console",
    responses((status = 200, body = SessionListView), (status = 401, body = crate::ErrorBody)), security(("session" = [])))]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> Result<Json<SessionListView>, XaiError> {
    let sessions = state.accounts.sessions(&signed_in.user).await?;
    Ok(Json(SessionListView {
        sessions: sessions
            .iter()
            .map(|s| SessionView {
                session_id: s.id.to_string(),
                current: s.id == signed_in.session.id,
                create_time: rfc3339(s.created_at),
                last_seen_time: rfc3339(s.last_seen_at),
                ip_address: s.ip.clone(),
                location: s.location.clone(),
                user_agent: s.user_agent.clone(),
            })
            .collect(),
    }))
}

/// End one of the user's sessions.
#[utoipa::path(delete, path = "/api/sessions/{session_id}", tag = "console",
    params(("session_id" = String, Path, description = "The session's id")),
    responses((status = 204), (status = 401, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn end_session(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    Path(session_id): Path<String>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    let id: SessionId = session_id.parse().map_err(|_| XaiError::not_found("No such session"))?;
    state.accounts.end_session(&signed_in.user, id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How many sessions were ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EndedView {
    ended: u64,
}

/// End every session of the user but this one.
#[utoipa::path(post, path = "/api/sessions/end-others", tag = "console",
    responses((status = 200, body = EndedView), (status = 401, body = crate::ErrorBody)), security(("session" = [])))]
pub(crate) async fn end_other_sessions(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<EndedView>, XaiError> {
    let ended = state
        .accounts
        .end_other_sessions(&signed_in.user, signed_in.session.id, &meta)
        .await?;
    Ok(Json(EndedView { ended }))
}

/// A team, as its members see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TeamView {
    team_id: String,
    name: String,
    description: Option<String>,
    personal: bool,
    create_time: String,
}

impl TeamView {
    fn new(team: &tollgate_domain::Team) -> Self {
        Self {
            team_id: team.id.to_string(),
            name: team.name.clone(),
            description: team.description.clone(),
            personal: team.personal,
            create_time: rfc3339(team.created_at),
        }
    }
}

/// `POST /api/teams` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTeamRequest {
    name: String,
    description: Option<String>,
}

/// Create a team; you are its Admin.
#[utoipa::path(post, path = "/api/teams", tag = "console", request_body = CreateTeamRequest,
    responses((status = 201, body = TeamView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn create_team(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CreateTeamRequest>,
) -> Result<(StatusCode, Json<TeamView>), XaiError> {
    let team = state
        .teams
        .create_team(&signed_in.user, &body.name, body.description.as_deref(), &meta)
        .await?;
    Ok((StatusCode::CREATED, Json(TeamView::new(&team))))
}

/// The team (members).
#[utoipa::path(get, path = "/api/teams/{team_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = TeamView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn get_team(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<TeamView>, XaiError> {
    Ok(Json(TeamView::new(&state.teams.team(&caller).await?)))
}

/// `PATCH /api/teams/{team_id}` body: what to change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTeamRequest {
    name: Option<String>,
    /// `null` clears it; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// Rename or describe the team (Admins).
#[utoipa::path(patch, path = "/api/teams/{team_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = UpdateTeamRequest,
    responses((status = 200, body = TeamView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn update_team(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<UpdateTeamRequest>,
) -> Result<Json<TeamView>, XaiError> {
    let description = body.description.as_ref().map(|d| d.as_deref());
    let team = state
        .teams
        .update_team(&caller, body.name.as_deref(), description, &meta)
        .await?;
    Ok(Json(TeamView::new(&team)))
}

/// `DELETE /api/teams/{team_id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeleteTeamRequest {
    /// The team's name, typed exactly.
    confirm_name: String,
}

/// Delete the team (Admins), confirmed by typing its name: its API keys and management keys stop
/// working at once; its prepaid credits are forfeited; invoices and audit records are kept. A
/// Personal Team goes only with its account.
#[utoipa::path(delete, path = "/api/teams/{team_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = DeleteTeamRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn delete_team(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<DeleteTeamRequest>,
) -> Result<StatusCode, XaiError> {
    state.teams.delete_team(&caller, &body.confirm_name, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A member.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MemberView {
    user_id: String,
    email: String,
    name: String,
    /// `admin` or `member`.
    role: &'static str,
    join_time: String,
    /// How the member's account signs in (`password`, each provider's name): accounts may share
    /// an address, and this tells them apart.
    sign_in_methods: Vec<String>,
}

impl MemberView {
    fn new(member: &tollgate_domain::Member) -> Self {
        Self {
            user_id: member.user_id.to_string(),
            email: member.email.as_ref().to_owned(),
            name: member.display_name.clone(),
            role: member.role.as_str(),
            join_time: rfc3339(member.joined_at),
            sign_in_methods: member.sign_in_methods.clone(),
        }
    }
}

/// Members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MemberListView {
    members: Vec<MemberView>,
}

/// The team's members (members).
#[utoipa::path(get, path = "/api/teams/{team_id}/members", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = MemberListView), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_members(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<MemberListView>, XaiError> {
    let members = state.teams.members(&caller).await?;
    Ok(Json(MemberListView {
        members: members.iter().map(MemberView::new).collect(),
    }))
}

fn parse_role(raw: &str) -> Result<tollgate_domain::Role, XaiError> {
    raw.parse()
        .map_err(|e: tollgate_domain::role::RoleError| XaiError::invalid_argument(e.to_string()))
}

/// `POST /api/teams/{team_id}/members` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMemberRequest {
    email: String,
    /// `admin` or `member`.
    role: String,
}

/// An invitation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InvitationView {
    invitation_id: String,
    email: String,
    role: &'static str,
    create_time: String,
    expire_time: String,
}

impl InvitationView {
    fn new(invitation: &tollgate_domain::Invitation) -> Self {
        Self {
            invitation_id: invitation.id.to_string(),
            email: invitation.email.as_ref().to_owned(),
            role: invitation.role.as_str(),
            create_time: rfc3339(invitation.created_at),
            expire_time: rfc3339(invitation.expires_at),
        }
    }
}

/// What adding by email did: an invitation, always (whether the address has an account is not
/// said).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AddedView {
    invitation: InvitationView,
}

/// Add someone by email (Admins): the address gets an emailed invitation (202), whether or not
/// it has an account; an account that has verified the address joins by accepting it. A new
/// invitation to the same address replaces the pending one.
#[utoipa::path(post, path = "/api/teams/{team_id}/members", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = AddMemberRequest,
    responses((status = 202, body = AddedView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn add_team_member(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<AddMemberRequest>,
) -> Result<(StatusCode, Json<AddedView>), XaiError> {
    let role = parse_role(&body.role)?;
    let invitation = state.teams.add_member(&caller, &body.email, role, &meta).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AddedView {
            invitation: InvitationView::new(&invitation),
        }),
    ))
}

fn path_user(params: &std::collections::HashMap<String, String>) -> Result<tollgate_domain::UserId, XaiError> {
    params
        .get("user_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such member"))
}

/// `PATCH /api/teams/{team_id}/members/{user_id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeRoleRequest {
    /// `admin` or `member`.
    role: String,
}

/// Change a member's role (Admins). The team keeps at least one Admin.
#[utoipa::path(patch, path = "/api/teams/{team_id}/members/{user_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("user_id" = String, Path, description = "The member's user id")),
    request_body = ChangeRoleRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn change_member_role(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<ChangeRoleRequest>,
) -> Result<StatusCode, XaiError> {
    let role = parse_role(&body.role)?;
    state
        .teams
        .change_role(&caller, path_user(&params)?, role, &meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member (Admins), or leave the team (yourself). Their API keys stay with the team and
/// keep working. The team keeps at least one Admin.
#[utoipa::path(delete, path = "/api/teams/{team_id}/members/{user_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("user_id" = String, Path, description = "The member's user id")),
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn remove_team_member(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    state.teams.remove_member(&caller, path_user(&params)?, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invitations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InvitationListView {
    invitations: Vec<InvitationView>,
}

/// Pending invitations (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/invitations", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = InvitationListView), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_invitations(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<InvitationListView>, XaiError> {
    let invitations = state.teams.invitations(&caller).await?;
    Ok(Json(InvitationListView {
        invitations: invitations.iter().map(InvitationView::new).collect(),
    }))
}

/// Withdraw a pending invitation (Admins).
#[utoipa::path(delete, path = "/api/teams/{team_id}/invitations/{invitation_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("invitation_id" = String, Path, description = "The invitation's id")),
    responses((status = 204), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn revoke_team_invitation(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    let id = params
        .get("invitation_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such invitation"))?;
    state.teams.revoke_invitation(&caller, id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invitation with the token from its emailed link, as the invited address's account.
#[utoipa::path(post, path = "/api/invitations/accept", tag = "console", request_body = TokenRequest,
    responses((status = 200, body = TeamView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn accept_invitation(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TokenRequest>,
) -> Result<Json<TeamView>, XaiError> {
    let team = state
        .teams
        .accept_invitation(&signed_in.user, &body.token, &meta)
        .await?;
    Ok(Json(TeamView::new(&team)))
}

/// An invitation waiting for the signed-in account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MyInvitationView {
    invitation_id: String,
    team_id: String,
    team_name: String,
    role: &'static str,
    expire_time: String,
}

/// Invitations waiting for the signed-in account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MyInvitationListView {
    invitations: Vec<MyInvitationView>,
}

/// The invitations waiting for the signed-in account's address (none until it is verified).
#[utoipa::path(get, path = "/api/invitations", tag = "console",
    responses((status = 200, body = MyInvitationListView), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn my_invitations(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> Result<Json<MyInvitationListView>, XaiError> {
    let pending = state.teams.my_invitations(&signed_in.user).await?;
    Ok(Json(MyInvitationListView {
        invitations: pending
            .iter()
            .map(|(invitation, team)| MyInvitationView {
                invitation_id: invitation.id.to_string(),
                team_id: team.id.to_string(),
                team_name: team.name.clone(),
                role: invitation.role.as_str(),
                expire_time: rfc3339(invitation.expires_at),
            })
            .collect(),
    }))
}

/// Accept an invitation waiting for the signed-in account's verified address.
#[utoipa::path(post, path = "/api/invitations/{invitation_id}/accept", tag = "console",
    params(("invitation_id" = String, Path, description = "The invitation's id")),
    responses((status = 200, body = TeamView), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn accept_my_invitation(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<TeamView>, XaiError> {
    let id = params
        .get("invitation_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such invitation"))?;
    let team = state.teams.accept_invitation_by_id(&signed_in.user, id, &meta).await?;
    Ok(Json(TeamView::new(&team)))
}

/// A domain of the team, and the DNS record that verifies it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DomainView {
    domain_id: String,
    domain: String,
    verified: bool,
    /// Publish a TXT record with this value...
    record_value: String,
    /// ...at this name (preferred), or at the domain itself.
    record_name: String,
    verify_time: Option<String>,
    check_time: Option<String>,
    /// Why the last lookup did not verify it.
    last_error: Option<String>,
}

impl DomainView {
    fn new(domain: &tollgate_domain::TeamDomain) -> Self {
        let [preferred, _] = tollgate_domain::domains::record_names(&domain.domain);
        Self {
            domain_id: domain.id.to_string(),
            domain: domain.domain.clone(),
            verified: domain.verified_at.is_some(),
            record_value: tollgate_domain::domains::record_value(&domain.token),
            record_name: preferred,
            verify_time: domain.verified_at.map(rfc3339),
            check_time: domain.checked_at.map(rfc3339),
            last_error: domain.last_error.clone(),
        }
    }
}

/// Domains.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DomainListView {
    domains: Vec<DomainView>,
}

/// The team's domains (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/domains", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = DomainListView), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_domains(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<DomainListView>, XaiError> {
    let domains = state.teams.domains(&caller).await?;
    Ok(Json(DomainListView {
        domains: domains.iter().map(DomainView::new).collect(),
    }))
}

/// `POST /api/teams/{team_id}/domains` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddDomainRequest {
    domain: String,
}

/// Add a domain to verify (Admins): publish the returned TXT record, then ask for a check. Once
/// verified, everyone who signs up and verifies an address at the domain joins as a Member.
#[utoipa::path(post, path = "/api/teams/{team_id}/domains", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = AddDomainRequest,
    responses((status = 201, body = DomainView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn add_team_domain(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<AddDomainRequest>,
) -> Result<(StatusCode, Json<DomainView>), XaiError> {
    let domain = state.teams.add_domain(&caller, &body.domain, &meta).await?;
    Ok((StatusCode::CREATED, Json(DomainView::new(&domain))))
}

fn path_domain(params: &std::collections::HashMap<String, String>) -> Result<tollgate_domain::DomainId, XaiError> {
    params
        .get("domain_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such domain"))
}

/// Look the domain's TXT record up now (Admins).
#[utoipa::path(post, path = "/api/teams/{team_id}/domains/{domain_id}/verify", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("domain_id" = String, Path, description = "The domain's id")),
    responses((status = 200, body = DomainView), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn verify_team_domain(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<DomainView>, XaiError> {
    let domain = state.teams.verify_domain(&caller, path_domain(&params)?, &meta).await?;
    Ok(Json(DomainView::new(&domain)))
}

/// Remove a domain from the team (Admins).
#[utoipa::path(delete, path = "/api/teams/{team_id}/domains/{domain_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("domain_id" = String, Path, description = "The domain's id")),
    responses((status = 204), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn remove_team_domain(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    state.teams.remove_domain(&caller, path_domain(&params)?, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Search the team's audit log (Admins), with the Management API's query parameters.
#[utoipa::path(get, path = "/api/teams/{team_id}/audit/events", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), EventsQuery),
    responses((status = 200, body = AuditEventListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_audit_events(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditEventListView>, XaiError> {
    crate::audit::search(&state, &caller, caller.team_id(), &meta, query_or_400(query)?).await
}

/// Export the team's audit log (Admins) as CSV or JSON lines.
#[utoipa::path(get, path = "/api/teams/{team_id}/audit/events/export", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ExportFormatQuery, EventsQuery),
    responses((status = 200, description = "The file"), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_audit_export(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    format: Result<Query<ExportFormatQuery>, axum::extract::rejection::QueryRejection>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, XaiError> {
    let (format, filter) = export_request(format, query)?;
    let team_id = caller.team_id();
    let export = state
        .audit
        .export(&caller, team_id, filter, format.name(), &meta)
        .await?;
    Ok(export_response(export, format, team_id))
}

/// The team's API keys (every member sees them, redacted).
#[utoipa::path(get, path = "/api/teams/{team_id}/api-keys", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = ApiKeyListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_api_keys(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<ApiKeyListView>, XaiError> {
    let keys = state
        .keys
        .list_api_keys(&caller, caller.team_id(), None, 1000, &meta)
        .await?;
    Ok(Json(ApiKeyListView::new(&keys, None)))
}

/// The team's key policy: the widest ACLs and highest limits a Member's API key may have.
/// `null` is no ceiling.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyPolicyView {
    /// The widest grants (ACL strings), or `null`.
    acls: Option<Vec<String>>,
    /// The highest requests per second, or `null`.
    qps: Option<u32>,
    /// The highest requests per minute, or `null`.
    qpm: Option<u32>,
    /// The highest tokens per minute, or `null`.
    tpm: Option<u64>,
}

impl KeyPolicyView {
    fn new(policy: &tollgate_domain::KeyPolicy) -> Self {
        Self {
            acls: policy
                .acls
                .as_ref()
                .map(|set| set.as_slice().iter().map(ToString::to_string).collect()),
            qps: policy.qps,
            qpm: policy.qpm,
            tpm: policy.tpm,
        }
    }
}

/// How the team's data may be used.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DataUseView {
    /// Its Admins allow its requests and answers to be used for training (off by default).
    training_allowed: bool,
    /// The operator granted zero retention: no request bodies kept, the Responses API stores
    /// nothing (`store: true` and `previous_response_id` are refused), a deferred result is
    /// gone once fetched.
    zero_retention: bool,
}

impl From<tollgate_domain::DataUse> for DataUseView {
    fn from(data_use: tollgate_domain::DataUse) -> Self {
        Self {
            training_allowed: data_use.training_allowed,
            zero_retention: data_use.zero_retention,
        }
    }
}

/// `PUT /api/teams/{team_id}/data-use` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SetDataUseRequest {
    /// Allow training on the team's requests and answers.
    training_allowed: bool,
}

/// How the team's data may be used (every member may read it).
#[utoipa::path(get, path = "/api/teams/{team_id}/data-use", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = DataUseView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_data_use(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<DataUseView>, XaiError> {
    Ok(Json(state.teams.data_use(&caller).await?.into()))
}

/// Allow or refuse training on the team's requests and answers (Admins; audited). Zero
/// retention is the operator's to grant (`tollgate team zero-retention`).
#[utoipa::path(put, path = "/api/teams/{team_id}/data-use", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = SetDataUseRequest,
    responses((status = 200, body = DataUseView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_set_data_use(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SetDataUseRequest>,
) -> Result<Json<DataUseView>, XaiError> {
    let data_use = state
        .teams
        .set_training_allowed(&caller, body.training_allowed, &meta)
        .await?;
    Ok(Json(data_use.into()))
}

/// The team's key policy (every member may read it).
#[utoipa::path(get, path = "/api/teams/{team_id}/key-policy", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = KeyPolicyView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_key_policy(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<KeyPolicyView>, XaiError> {
    Ok(Json(KeyPolicyView::new(&state.keys.key_policy(&caller).await?)))
}

/// Set the team's key policy (Admins). Members then create and change their own keys within
/// it (and may always tighten a key); Admins are not bound by it. All `null` lifts it.
#[utoipa::path(put, path = "/api/teams/{team_id}/key-policy", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = KeyPolicyView,
    responses((status = 200, body = KeyPolicyView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_set_key_policy(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<KeyPolicyView>,
) -> Result<Json<KeyPolicyView>, XaiError> {
    let policy = state
        .keys
        .set_key_policy(&caller, body.acls.as_deref(), body.qps, body.qpm, body.tpm, &meta)
        .await?;
    Ok(Json(KeyPolicyView::new(&policy)))
}

/// Create an API key in the team (any member; the full key is in this response only).
#[utoipa::path(post, path = "/api/teams/{team_id}/api-keys", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = CreateApiKeyRequest,
    responses((status = 200, body = ApiKeyView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_create_api_key(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CreateApiKeyRequest>,
) -> Result<Json<ApiKeyView>, XaiError> {
    let new: NewApiKey = body.into();
    let (key, plain) = state.keys.create_api_key(&caller, caller.team_id(), new, &meta).await?;
    Ok(Json(ApiKeyView::new(&key, Some(plain.expose().to_owned()))))
}

fn key_id(params: &std::collections::HashMap<String, String>) -> Result<ApiKeyId, XaiError> {
    crate::management::parse_key_id(params.get("api_key_id").map_or("", String::as_str))
}

/// One API key of the team.
#[utoipa::path(get, path = "/api/teams/{team_id}/api-keys/{api_key_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("api_key_id" = String, Path, description = "The key's id")),
    responses((status = 200, body = ApiKeyView), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_get_api_key(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<ApiKeyView>, XaiError> {
    let key = state.keys.get_api_key(&caller, key_id(&params)?, &meta).await?;
    Ok(Json(ApiKeyView::new(&key, None)))
}

/// Update an API key by `fieldMask` (Admins: any key; Members: their own).
#[utoipa::path(put, path = "/api/teams/{team_id}/api-keys/{api_key_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("api_key_id" = String, Path, description = "The key's id")),
    request_body = UpdateApiKeyRequest,
    responses((status = 200, body = ApiKeyView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_update_api_key(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<UpdateApiKeyRequest>,
) -> Result<Json<ApiKeyView>, XaiError> {
    let changes = changes_from(body.field_mask(), body.values())?;
    let key = state
        .keys
        .update_api_key(&caller, key_id(&params)?, changes, &meta)
        .await?;
    Ok(Json(ApiKeyView::new(&key, None)))
}

/// Delete an API key (Admins: any key; Members: their own).
#[utoipa::path(delete, path = "/api/teams/{team_id}/api-keys/{api_key_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("api_key_id" = String, Path, description = "The key's id")),
    responses((status = 204), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_delete_api_key(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    state.keys.delete_api_key(&caller, key_id(&params)?, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate an API key (Admins: any key; Members: their own). Body as the Management API's.
#[utoipa::path(post, path = "/api/teams/{team_id}/api-keys/{api_key_id}/rotate", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("api_key_id" = String, Path, description = "The key's id")),
    responses((status = 200, body = ApiKeyView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_rotate_api_key(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
    crate::extract::XaiBytes(body): crate::extract::XaiBytes,
) -> Result<Json<ApiKeyView>, XaiError> {
    let grace = crate::management::grace_from_body(&body)?;
    let (key, plain) = state
        .keys
        .rotate_api_key(&caller, key_id(&params)?, grace, &meta)
        .await?;
    Ok(Json(ApiKeyView::new(&key, Some(plain.expose().to_owned()))))
}

/// A management key as the console lists it (never its secret, except once on creation).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManagementKeyView {
    management_key_id: String,
    name: String,
    redacted_key: String,
    create_time: String,
    revoke_time: Option<String>,
    /// The full key: only in the create response.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl ManagementKeyView {
    fn new(key: &tollgate_domain::ManagementKey, plaintext: Option<String>) -> Self {
        Self {
            management_key_id: key.id.to_string(),
            name: key.name.clone(),
            redacted_key: key.redacted.clone(),
            create_time: rfc3339(key.created_at),
            revoke_time: key.revoked_at.map(rfc3339),
            key: plaintext,
        }
    }
}

/// Management keys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManagementKeyListView {
    management_keys: Vec<ManagementKeyView>,
}

/// The team's management keys (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/management-keys", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = ManagementKeyListView), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_management_keys(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<ManagementKeyListView>, XaiError> {
    let keys = state.keys.list_management_keys_as(&caller, &meta).await?;
    Ok(Json(ManagementKeyListView {
        management_keys: keys.iter().map(|k| ManagementKeyView::new(k, None)).collect(),
    }))
}

/// `POST /api/teams/{team_id}/management-keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateManagementKeyRequest {
    name: String,
}

/// Create a management key for the team (Admins); the full key is in this response only.
#[utoipa::path(post, path = "/api/teams/{team_id}/management-keys", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = CreateManagementKeyRequest,
    responses((status = 200, body = ManagementKeyView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_create_management_key(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CreateManagementKeyRequest>,
) -> Result<Json<ManagementKeyView>, XaiError> {
    let (key, plain) = state.keys.create_management_key_as(&caller, &body.name, &meta).await?;
    Ok(Json(ManagementKeyView::new(&key, Some(plain.expose().to_owned()))))
}

/// Revoke a management key of the team (Admins).
#[utoipa::path(delete, path = "/api/teams/{team_id}/management-keys/{management_key_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("management_key_id" = String, Path, description = "The key's id")),
    responses((status = 204), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_revoke_management_key(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    let id: ManagementKeyId = params
        .get("management_key_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("No such management key"))?;
    state
        .keys
        .revoke_management_key_as(&caller, id, &meta)
        .await
        .map_err(|e| match e {
            tollgate_core::KeyError::KeyNotFound => XaiError::not_found("No such management key"),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
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

/// `POST /api/auth/sign-in/passkey-challenge` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SignInChallengeRequest {
    /// From the first step of the sign-in.
    mfa_token: String,
}

/// A challenge for the second step of a sign-in with a passkey; answer it at
/// `POST /api/auth/sign-in/second-factor` with `passkey`.
#[utoipa::path(post, path = "/api/auth/sign-in/passkey-challenge", tag = "console", request_body = SignInChallengeRequest,
    responses((status = 200, body = PasskeyChallengeView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)))]
pub(crate) async fn sign_in_passkey_challenge(
    State(state): State<AppState>,
    XaiJson(body): XaiJson<SignInChallengeRequest>,
) -> Result<Json<PasskeyChallengeView>, XaiError> {
    Ok(Json(
        state
            .accounts
            .passkey_challenge_for_sign_in(&body.mfa_token)
            .await?
            .into(),
    ))
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

/// `POST /api/auth/password-reset/passkey-challenge` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetChallengeRequest {
    /// The emailed link's token (not used up by this).
    token: String,
}

/// A challenge for the second factor of a password reset, for an account with passkeys; answer
/// it at `POST /api/auth/password-reset/confirm` with `passkey`.
#[utoipa::path(post, path = "/api/auth/password-reset/passkey-challenge", tag = "console", request_body = ResetChallengeRequest,
    responses((status = 200, body = PasskeyChallengeView), (status = 400, body = crate::ErrorBody)))]
pub(crate) async fn reset_passkey_challenge(
    State(state): State<AppState>,
    XaiJson(body): XaiJson<ResetChallengeRequest>,
) -> Result<Json<PasskeyChallengeView>, XaiError> {
    Ok(Json(
        state.accounts.passkey_challenge_for_reset(&body.token).await?.into(),
    ))
}

/// `PATCH /api/account` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateAccountRequest {
    /// The name shown in the console (1 to 100 characters).
    name: String,
}

/// Change the account's display name.
#[utoipa::path(patch, path = "/api/account", tag = "console", request_body = UpdateAccountRequest,
    responses((status = 200, body = UserView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn update_account(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<UpdateAccountRequest>,
) -> Result<Json<UserView>, XaiError> {
    let user = state.accounts.rename(&signed_in.user, &body.name, &meta).await?;
    Ok(Json(UserView::new(&user)))
}
