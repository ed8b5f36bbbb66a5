//! The team's Management Keys page (Admins): keys for the Management API (`/auth/...`,
//! `/audit/...`, `/v1/billing/...`), for scripts and CI. Create one (its secret shown once),
//! revoke one (confirmed). A key made by an Admin is revoked when its maker stops being one.

use tollgate_domain::ManagementKeyId;

use super::*;

struct ManagementKeyRow {
    id: String,
    name: String,
    redacted: String,
    created: String,
    created_by: String,
}

#[derive(Template)]
#[template(path = "management_keys.html")]
struct ManagementKeysPage {
    frame: Frame,
    keys: Vec<ManagementKeyRow>,
    created: Option<(String, String)>,
    /// The key whose revocation a plain form asks to confirm (empty: none).
    confirming: String,
    outcome: Outcome,
}

impl std::ops::Deref for ManagementKeysPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// `/console/management-keys`.
pub(super) async fn management_keys(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    page(
        &state,
        &headers,
        &meta,
        query.team,
        Outcome::default(),
        None,
        String::new(),
    )
    .await
}

async fn page(
    state: &AppState,
    headers: &HeaderMap,
    meta: &tollgate_domain::RequestContext,
    team: Option<String>,
    outcome: Outcome,
    created: Option<(String, String)>,
    confirming: String,
) -> Response {
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let keys = match state.keys.list_management_keys_as(&context.caller, meta).await {
        Ok(keys) => keys,
        Err(error) => return error_page(failure(error)),
    };
    let members = state.teams.members(&context.caller).await.unwrap_or_default();
    let page = ManagementKeysPage {
        frame: context.frame(state, "/console/management-keys"),
        keys: keys
            .iter()
            .filter(|key| key.revoked_at.is_none())
            .map(|key| ManagementKeyRow {
                id: key.id.to_string(),
                name: key.name.clone(),
                redacted: key.redacted.clone(),
                created: key.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                created_by: match key.created_by {
                    Some(user) => members
                        .iter()
                        .find(|member| member.user_id == user)
                        .map_or_else(|| "a former Admin".to_owned(), |m| m.email.as_ref().to_owned()),
                    None => "the operator".to_owned(),
                },
            })
            .collect(),
        created,
        confirming,
        outcome,
    };
    let status = page.outcome.status();
    let mut response = console_page(state, context.team_id, &page);
    *response.status_mut() = status;
    response
}

#[derive(Deserialize)]
pub(super) struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Creates a management key; its secret is shown once.
pub(super) async fn create_management_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<CreateForm>,
) -> Response {
    let (caller, _) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let (outcome, created) = match state
        .keys
        .create_management_key_as(&caller, form.name.trim(), &meta)
        .await
    {
        Ok((key, plain)) => (Outcome::default(), Some((key.name.clone(), plain.expose().to_owned()))),
        Err(error) => (Outcome::failed("create", failure(error)), None),
    };
    page(&state, &headers, &meta, Some(team_id), outcome, created, String::new()).await
}

/// Revokes a management key (a plain form confirms first).
pub(super) async fn revoke_management_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, key_id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let (caller, _) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let Ok(id) = key_id.parse::<ManagementKeyId>() else {
        return error_page((StatusCode::NOT_FOUND, "No such management key".into()));
    };
    if !form.confirmed() {
        return page(&state, &headers, &meta, Some(team_id), Outcome::default(), None, key_id).await;
    }
    let done = state
        .keys
        .revoke_management_key_as(&caller, id, &meta)
        .await
        .map(|()| "The management key was revoked; requests with it are refused.".to_owned());
    page(
        &state,
        &headers,
        &meta,
        Some(team_id),
        Outcome::of(done, "keys"),
        None,
        String::new(),
    )
    .await
}
