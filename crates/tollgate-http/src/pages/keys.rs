//! The console's API Keys page: the current team's keys; create (the secret shown once),
//! disable and enable, delete.

use super::*;

/// A key as the table shows it.
struct KeyRow {
    id: String,
    name: String,
    redacted: String,
    status: &'static str,
    acls: Vec<String>,
    created: String,
}

impl KeyRow {
    fn new(key: &ApiKey) -> Self {
        let status = if key.blocked {
            "blocked"
        } else if key.disabled {
            "disabled"
        } else {
            "active"
        };
        Self {
            id: key.id.to_string(),
            name: key.name.clone(),
            redacted: key.redacted.clone(),
            status,
            acls: key.acls.as_slice().iter().map(ToString::to_string).collect(),
            created: key.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

/// A key just created: its secret, shown once.
struct Created {
    name: String,
    secret: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysFragment {
    team_id: String,
    keys: Vec<KeyRow>,
    can_manage: bool,
    created: Option<Created>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage {
    frame: Frame,
    can_manage: bool,
    keys: String,
}

impl std::ops::Deref for ConsolePage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// The keys table of `caller`'s team.
async fn keys_fragment(
    state: &AppState,
    caller: &tollgate_core::Caller,
    meta: &tollgate_domain::RequestContext,
    created: Option<Created>,
    error: Option<String>,
) -> Result<KeysFragment, KeyError> {
    let keys = state
        .keys
        .list_api_keys(caller, caller.team_id(), None, 1_000, meta)
        .await?;
    Ok(KeysFragment {
        team_id: caller.team_id().to_string(),
        keys: keys.iter().map(KeyRow::new).collect(),
        can_manage: caller.allows(Permission::ManageOwnApiKeys),
        created,
        error,
    })
}

/// The console's API Keys page: the top bar (team switcher, tabs, sign-out) and the current
/// team's keys.
pub(super) async fn console(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    let context = match context(&state, &headers, query.team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let keys = match keys_fragment(&state, &context.caller, &meta, None, None).await {
        Ok(fragment) => fragment,
        Err(error) => return error_page(failure(error)),
    };
    let keys_html = match rendered(&keys) {
        Some(body) => body,
        None => return unrendered(),
    };
    let page = ConsolePage {
        frame: context.frame(&state, "/console"),
        can_manage: keys.can_manage,
        keys: keys_html,
    };
    console_page(&state, context.team_id, &page)
}

/// The keys fragment (after a change), or an error in its place.
async fn keys_response(
    state: &AppState,
    caller: &tollgate_core::Caller,
    meta: &tollgate_domain::RequestContext,
    created: Option<Created>,
    problem: Option<(StatusCode, String)>,
) -> Response {
    let status = problem.as_ref().map_or(StatusCode::OK, |(status, _)| *status);
    match keys_fragment(state, caller, meta, created, problem.map(|(_, message)| message)).await {
        Ok(fragment) => html(status, &fragment),
        Err(error) => fragment_error("keys", failure(error)),
    }
}

#[derive(Deserialize)]
pub(super) struct CreateKeyForm {
    name: String,
}

/// Creates a key with access to every endpoint and model (pickers for ACLs and limits come
/// with the next console pages; the Management API sets them now), and shows its secret once.
pub(super) async fn create_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<CreateKeyForm>,
) -> Response {
    let caller = match member_of(&state, &headers, &team_id).await {
        Ok(caller) => caller,
        Err(failure) => return fragment_error("keys", failure),
    };
    let new = NewApiKey {
        name: form.name.trim().to_owned(),
        acls: vec!["api-key:endpoint:*".into(), "api-key:model:*".into()],
        qps: None,
        qpm: None,
        tpm: None,
        expire_time: None,
    };
    match state.keys.create_api_key(&caller, caller.team_id(), new, &meta).await {
        Ok((key, plain)) => {
            let created = Created {
                name: key.name.clone(),
                secret: plain.expose().to_owned(),
            };
            let mut response = keys_response(&state, &caller, &meta, Some(created), None).await;
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => keys_response(&state, &caller, &meta, None, Some(failure(error))).await,
    }
}

/// Disables, enables or deletes a key.
pub(super) async fn change_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, key_id, action)): Path<(String, String, String)>,
) -> Response {
    let caller = match member_of(&state, &headers, &team_id).await {
        Ok(caller) => caller,
        Err(failure) => return fragment_error("keys", failure),
    };
    let Ok(key_id) = key_id.parse::<ApiKeyId>() else {
        return keys_response(
            &state,
            &caller,
            &meta,
            None,
            Some((StatusCode::NOT_FOUND, "No such key".into())),
        )
        .await;
    };
    let done = match action.as_str() {
        "disable" | "enable" => state
            .keys
            .update_api_key(
                &caller,
                key_id,
                ApiKeyChanges {
                    disabled: Some(action == "disable"),
                    ..ApiKeyChanges::default()
                },
                &meta,
            )
            .await
            .map(|_| ()),
        "delete" => state.keys.delete_api_key(&caller, key_id, &meta).await,
        _ => {
            return keys_response(
                &state,
                &caller,
                &meta,
                None,
                Some((StatusCode::NOT_FOUND, "No such action".into())),
            )
            .await;
        }
    };
    let problem = done.err().map(failure);
    keys_response(&state, &caller, &meta, None, problem).await
}
