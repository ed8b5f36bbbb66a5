//! The signed-in account: who it is (`/api/me`), its name, password, email address, ways to sign
//! in, sessions and deletion.

use super::*;

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
    pub(super) fn new(identity: &tollgate_domain::Identity) -> Self {
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
