//! Signing in and up (password, second factor, providers' flows), signing out, email
//! verification, password reset, email-change links and restoring a deleted account.

use super::*;

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
        let mut response = crate::pages::federated(&state, outcome).await;
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
    pub(super) token: String,
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
