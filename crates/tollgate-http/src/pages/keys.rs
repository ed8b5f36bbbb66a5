//! The console's API Keys page: the current team's keys (when each was last used; its own page,
//! `key`, changes its access, limits and secret); create with the same pickers (the secret
//! shown once), disable and enable, delete.

use super::*;

/// A key as the table shows it.
struct KeyRow {
    id: String,
    name: String,
    redacted: String,
    status: &'static str,
    acls: Vec<String>,
    created: String,
    last_used: String,
}

/// A key's status as the pages show it.
pub(super) fn status_of(key: &ApiKey) -> &'static str {
    if key.blocked {
        "blocked"
    } else if key.disabled {
        "disabled"
    } else {
        "active"
    }
}

impl KeyRow {
    fn new(key: &ApiKey) -> Self {
        let status = status_of(key);
        Self {
            id: key.id.to_string(),
            name: key.name.clone(),
            redacted: key.redacted.clone(),
            status,
            acls: key.acls.as_slice().iter().map(ToString::to_string).collect(),
            created: key.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            last_used: key
                .last_used_at
                .map_or_else(|| "never".to_owned(), |at| at.format("%Y-%m-%d %H:%M UTC").to_string()),
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
    csrf: String,
    keys: Vec<KeyRow>,
    can_manage: bool,
    created: Option<Created>,
    error: Option<String>,
    /// The key whose deletion a plain form asks to confirm (empty: none).
    confirming: String,
}

/// What the keys table shows after a change.
#[derive(Default)]
struct KeysAnswer {
    created: Option<Created>,
    problem: Option<(StatusCode, String)>,
    confirming: Option<ApiKeyId>,
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage {
    frame: Frame,
    can_manage: bool,
    keys: String,
    /// The create form's pickers: everything, until narrowed.
    access: super::key::Access,
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
    csrf: &str,
    meta: &tollgate_domain::RequestContext,
    answer: KeysAnswer,
) -> Result<KeysFragment, KeyError> {
    let keys = state
        .keys
        .list_api_keys(caller, caller.team_id(), None, 1_000, meta)
        .await?;
    Ok(KeysFragment {
        team_id: caller.team_id().to_string(),
        csrf: csrf.to_owned(),
        keys: keys.iter().map(KeyRow::new).collect(),
        can_manage: caller.allows(Permission::ManageOwnApiKeys),
        created: answer.created,
        error: answer.problem.map(|(_, message)| message),
        confirming: answer.confirming.map(|id| id.to_string()).unwrap_or_default(),
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
    keys_page(
        &state,
        &headers,
        &meta,
        query.team,
        StatusCode::OK,
        KeysAnswer::default(),
    )
    .await
}

/// The whole page, showing `answer` (for a plain form's change, with `status`).
async fn keys_page(
    state: &AppState,
    headers: &HeaderMap,
    meta: &tollgate_domain::RequestContext,
    team: Option<String>,
    status: StatusCode,
    answer: KeysAnswer,
) -> Response {
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let keys = match keys_fragment(state, &context.caller, &context.visitor.csrf, meta, answer).await {
        Ok(fragment) => fragment,
        Err(error) => return error_page(failure(error)),
    };
    let Some(keys_html) = rendered(&keys) else {
        return unrendered();
    };
    let page = ConsolePage {
        frame: context.frame(state, "/console"),
        can_manage: keys.can_manage,
        keys: keys_html,
        access: super::key::Access::everything(state),
    };
    let mut response = console_page(state, context.team_id, &page);
    *response.status_mut() = status;
    response
}

/// The answer to a change: the keys fragment for htmx (or an error in its place), the whole
/// page for a plain form. Never cached: it may show a new key's secret.
async fn keys_response(
    state: &AppState,
    headers: &HeaderMap,
    (caller, csrf): (&tollgate_core::Caller, &str),
    meta: &tollgate_domain::RequestContext,
    answer: KeysAnswer,
) -> Response {
    let status = answer.problem.as_ref().map_or(StatusCode::OK, |(status, _)| *status);
    let mut response = if from_htmx(headers) {
        match keys_fragment(state, caller, csrf, meta, answer).await {
            Ok(fragment) => html(status, &fragment),
            Err(error) => fragment_error("keys", failure(error)),
        }
    } else {
        keys_page(state, headers, meta, Some(caller.team_id().to_string()), status, answer).await
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Creates a key (with every endpoint and model, unless its pickers say otherwise) and shows its
/// secret once.
pub(super) async fn create_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = super::key::csrf_of(&pairs);
    let fields = super::key::KeyFields::parse(pairs);
    let (caller, csrf) = match member_of(&state, &headers, &team_id, csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return refused_change(&headers, "keys", problem),
    };
    let created = match fields {
        Ok(fields) => state
            .keys
            .create_api_key(&caller, caller.team_id(), fields.new_key(), &meta)
            .await
            .map_err(failure),
        Err(problem) => Err(problem),
    };
    let answer = match created {
        Ok((key, plain)) => KeysAnswer {
            created: Some(Created {
                name: key.name.clone(),
                secret: plain.expose().to_owned(),
            }),
            ..KeysAnswer::default()
        },
        Err(problem) => KeysAnswer {
            problem: Some(problem),
            ..KeysAnswer::default()
        },
    };
    keys_response(&state, &headers, (&caller, &csrf), &meta, answer).await
}

/// Disables, enables or deletes a key (a deletion from a plain form is confirmed first).
pub(super) async fn change_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, key_id, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let (caller, csrf) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return refused_change(&headers, "keys", problem),
    };
    let member = (&caller, csrf.as_str());
    let problem = |status: StatusCode, message: &str| KeysAnswer {
        problem: Some((status, message.to_owned())),
        ..KeysAnswer::default()
    };
    let Ok(key_id) = key_id.parse::<ApiKeyId>() else {
        return keys_response(
            &state,
            &headers,
            member,
            &meta,
            problem(StatusCode::NOT_FOUND, "No such key"),
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
        "delete" if !form.confirmed() => {
            let answer = KeysAnswer {
                confirming: Some(key_id),
                ..KeysAnswer::default()
            };
            return keys_response(&state, &headers, member, &meta, answer).await;
        }
        "delete" => state.keys.delete_api_key(&caller, key_id, &meta).await,
        _ => {
            return keys_response(
                &state,
                &headers,
                member,
                &meta,
                problem(StatusCode::NOT_FOUND, "No such action"),
            )
            .await;
        }
    };
    let answer = KeysAnswer {
        problem: done.err().map(failure),
        ..KeysAnswer::default()
    };
    keys_response(&state, &headers, member, &meta, answer).await
}
