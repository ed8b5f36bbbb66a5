//! One API key's page (`/console/api-keys/{id}`): what it may call (endpoints and models picked
//! from what this server offers, or all of them), its limits and expiry, when it was last used;
//! rotating it (the new secret shown once, the old one kept for a grace if asked). The create
//! form on the API Keys page takes the same pickers. Plain forms; the services decide (a
//! Member's keys stay within the team's key policy).

use super::*;

/// A checkbox of a picker.
pub(super) struct Choice {
    pub(super) name: String,
    pub(super) label: String,
    pub(super) checked: bool,
}

/// The pickers and limits, as a form shows them.
pub(super) struct Access {
    pub(super) all_endpoints: bool,
    pub(super) endpoints: Vec<Choice>,
    pub(super) all_models: bool,
    pub(super) models: Vec<Choice>,
    pub(super) qps: String,
    pub(super) qpm: String,
    pub(super) tpm: String,
    pub(super) expires: String,
}

impl Access {
    /// Everything granted, no limits: what a new key starts from.
    pub(super) fn everything(state: &AppState) -> Self {
        Self::of(
            state,
            &["api-key:endpoint:*".to_owned(), "api-key:model:*".to_owned()],
            None,
        )
    }

    /// `acls` (and `key`'s limits) as the pickers show them.
    fn of(state: &AppState, acls: &[String], key: Option<&ApiKey>) -> Self {
        let granted = |prefix: &str, name: &str| acls.iter().any(|acl| acl.strip_prefix(prefix) == Some(name));
        let all_endpoints = granted("api-key:endpoint:", "*");
        let all_models = granted("api-key:model:", "*");
        Self {
            all_endpoints,
            endpoints: tollgate_domain::Endpoint::ALL
                .iter()
                .map(|endpoint| Choice {
                    name: endpoint.as_str().to_owned(),
                    label: endpoint.describe().to_owned(),
                    checked: !all_endpoints && granted("api-key:endpoint:", endpoint.as_str()),
                })
                .collect(),
            all_models,
            models: state
                .inference
                .catalog()
                .models()
                .iter()
                .map(|model| Choice {
                    name: model.name.clone(),
                    label: if model.aliases.is_empty() {
                        String::new()
                    } else {
                        format!("also called {}", model.aliases.join(", "))
                    },
                    checked: !all_models && granted("api-key:model:", &model.name),
                })
                .collect(),
            qps: key.and_then(|k| k.qps).map(|v| v.to_string()).unwrap_or_default(),
            qpm: key.and_then(|k| k.qpm).map(|v| v.to_string()).unwrap_or_default(),
            tpm: key.and_then(|k| k.tpm).map(|v| v.to_string()).unwrap_or_default(),
            expires: key
                .and_then(|k| k.expire_time)
                .map(|at| at.format("%Y-%m-%d").to_string())
                .unwrap_or_default(),
        }
    }
}

impl Access {
    /// What a refused form had ticked and typed, shown again as it was.
    fn typed(state: &AppState, pairs: &[(String, String)]) -> Self {
        let value = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let ticked = |name: &str, v: &str| pairs.iter().any(|(n, value)| n == name && value == v);
        let mut acls = Vec::new();
        if ticked("all_endpoints", "yes") {
            acls.push("api-key:endpoint:*".to_owned());
        }
        if ticked("all_models", "yes") {
            acls.push("api-key:model:*".to_owned());
        }
        for (name, v) in pairs {
            match name.as_str() {
                "endpoint" => acls.push(format!("api-key:endpoint:{v}")),
                "model" => acls.push(format!("api-key:model:{v}")),
                _ => {}
            }
        }
        Self {
            qps: value("qps"),
            qpm: value("qpm"),
            tpm: value("tpm"),
            expires: value("expires"),
            ..Self::of(state, &acls, None)
        }
    }
}

/// A plain form's CSRF token among its pairs (read before the rest, so a malformed field is
/// answered next to the form rather than as a refused change).
pub(super) fn csrf_of(pairs: &[(String, String)]) -> Option<String> {
    pairs
        .iter()
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.clone())
}

/// What a key form sent (its fields may repeat: one `endpoint` and `model` per box ticked).
#[derive(Default)]
pub(super) struct KeyFields {
    pub(super) name: String,
    acls: Vec<String>,
    qps: Option<u32>,
    qpm: Option<u32>,
    tpm: Option<u64>,
    expire_time: Option<tollgate_domain::Timestamp>,
    grace_hours: i64,
    /// Whether the form carried the pickers (the create form's are optional).
    has_access: bool,
}

impl KeyFields {
    /// Reads the form's pairs; a malformed number or date is refused with the field's name.
    pub(super) fn parse(pairs: Vec<(String, String)>) -> Result<Self, (StatusCode, String)> {
        let bad = |field: &str, why: &str| (StatusCode::BAD_REQUEST, format!("{field}: {why}"));
        let bad_day = |why: &str| (StatusCode::BAD_REQUEST, why.to_owned());
        let mut fields = Self::default();
        let (mut all_endpoints, mut all_models) = (false, false);
        let (mut endpoints, mut models) = (Vec::new(), Vec::new());
        for (name, value) in pairs {
            let value = value.trim().to_owned();
            match name.as_str() {
                "name" => fields.name = value,
                "access" => fields.has_access = true,
                "all_endpoints" => all_endpoints = value == "yes",
                "all_models" => all_models = value == "yes",
                "endpoint" => endpoints.push(value),
                "model" => models.push(value),
                "qps" | "qpm" | "tpm" if value.is_empty() => {}
                "qps" => {
                    fields.qps = Some(
                        value
                            .parse()
                            .map_err(|_| bad("Requests per second", "a whole number"))?,
                    )
                }
                "qpm" => {
                    fields.qpm = Some(
                        value
                            .parse()
                            .map_err(|_| bad("Requests per minute", "a whole number"))?,
                    )
                }
                "tpm" => fields.tpm = Some(value.parse().map_err(|_| bad("Tokens per minute", "a whole number"))?),
                "expires" if value.is_empty() => {}
                "expires" => {
                    fields.expire_time = day_start("Expires on", &value, false).map_err(|why| bad_day(&why))?
                }
                "grace_hours" if value.is_empty() => {}
                "grace_hours" => {
                    // The longest grace is the service's rule; this only keeps the number a
                    // duration can hold.
                    fields.grace_hours = value
                        .parse()
                        .ok()
                        .filter(|hours| chrono::Duration::try_hours(*hours).is_some())
                        .ok_or_else(|| bad("Keep the old secret working for", "a whole number of hours"))?;
                }
                _ => {}
            }
        }
        if fields.has_access {
            if all_endpoints {
                fields.acls.push("api-key:endpoint:*".to_owned());
            } else if endpoints.is_empty() {
                return Err(bad("Endpoints", "pick at least one, or all"));
            } else {
                fields
                    .acls
                    .extend(endpoints.iter().map(|e| format!("api-key:endpoint:{e}")));
            }
            if all_models {
                fields.acls.push("api-key:model:*".to_owned());
            } else if models.is_empty() {
                return Err(bad("Models", "pick at least one, or all"));
            } else {
                fields.acls.extend(models.iter().map(|m| format!("api-key:model:{m}")));
            }
        }
        Ok(fields)
    }

    /// The new key these fields describe (every endpoint and model when the form had no
    /// pickers).
    pub(super) fn new_key(self) -> NewApiKey {
        NewApiKey {
            name: self.name,
            acls: if self.has_access {
                self.acls
            } else {
                vec!["api-key:endpoint:*".into(), "api-key:model:*".into()]
            },
            qps: self.qps,
            qpm: self.qpm,
            tpm: self.tpm,
            expire_time: self.expire_time,
        }
    }
}

/// What the key's page shows after a change.
#[derive(Default)]
struct After {
    outcome: Outcome,
    /// The rotated key's new secret, shown once.
    rotated: Option<String>,
    /// What a refused form had typed: the name and the pickers.
    typed: Option<(String, Access)>,
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    frame: Frame,
    can_manage: bool,
    id: String,
    name: String,
    redacted: String,
    status: &'static str,
    created: String,
    last_used: String,
    previous_until: String,
    access: Access,
    rotated: Option<String>,
    /// The key's state the page shows (its secret's redacted form and its last change): the
    /// rotate form sends it back, so a reload that posts the form again rotates nothing.
    version: String,
    outcome: Outcome,
}

impl std::ops::Deref for KeyPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// A key's state as its page showed it: a rotation changes its secret (so its redacted form) and
/// any change its last-modified time.
fn version_of(key: &ApiKey) -> String {
    format!("{}.{}", key.modified_at.timestamp_micros(), key.redacted)
}

/// `/console/api-keys/{key_id}`.
pub(super) async fn key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(key_id): Path<String>,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    key_page(&state, &headers, &meta, query.team, &key_id, After::default()).await
}

async fn key_page(
    state: &AppState,
    headers: &HeaderMap,
    meta: &tollgate_domain::RequestContext,
    team: Option<String>,
    key_id: &str,
    after: After,
) -> Response {
    let After {
        outcome,
        rotated,
        typed,
    } = after;
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let Ok(id) = key_id.parse::<ApiKeyId>() else {
        return error_page((StatusCode::NOT_FOUND, "No such key".into()));
    };
    let key = match state.keys.get_api_key(&context.caller, id, meta).await {
        Ok(key) => key,
        Err(error) => return error_page(failure(error)),
    };
    let when = |at: tollgate_domain::Timestamp| at.format("%Y-%m-%d %H:%M UTC").to_string();
    let acls: Vec<String> = key.acls.as_slice().iter().map(ToString::to_string).collect();
    let (name, access) = typed.unwrap_or_else(|| (key.name.clone(), Access::of(state, &acls, Some(&key))));
    let page = KeyPage {
        frame: context.frame(state, "/console"),
        can_manage: context.caller.allows(Permission::ManageOwnApiKeys),
        id: key.id.to_string(),
        name,
        redacted: key.redacted.clone(),
        status: super::keys::status_of(&key),
        created: when(key.created_at),
        last_used: key.last_used_at.map_or_else(|| "never".to_owned(), when),
        previous_until: key.previous_secret_expires_at.map(when).unwrap_or_default(),
        access,
        rotated,
        version: version_of(&key),
        outcome,
    };
    let status = page.outcome.status();
    let mut response = console_page(state, context.team_id, &page);
    *response.status_mut() = status;
    response
}

/// Saves the key's name, access, limits and expiry.
pub(super) async fn update_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, key_id)): Path<(String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = csrf_of(&pairs);
    let typed_name = pairs
        .iter()
        .find(|(n, _)| n == "name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let typed = (typed_name, Access::typed(&state, &pairs));
    let fields = KeyFields::parse(pairs);
    let (caller, _) = match member_of(&state, &headers, &team_id, csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let outcome = match (fields, key_id.parse::<ApiKeyId>()) {
        (Err(problem), _) => Outcome::failed("key", problem),
        (Ok(_), Err(_)) => return error_page((StatusCode::NOT_FOUND, "No such key".into())),
        (Ok(fields), Ok(id)) => {
            let changes = ApiKeyChanges {
                name: Some(fields.name.clone()),
                acls: Some(fields.acls.clone()),
                qps: Some(fields.qps),
                qpm: Some(fields.qpm),
                tpm: Some(fields.tpm),
                expire_time: Some(fields.expire_time),
                ..ApiKeyChanges::default()
            };
            let done = state.keys.update_api_key(&caller, id, changes, &meta).await;
            Outcome::of(done.map(|_| "The key was saved.".to_owned()), "key")
        }
    };
    // A refused form shows what was typed; a saved one, the key as it now is.
    let typed = outcome.error.is_some().then_some(typed);
    let after = After {
        outcome,
        rotated: None,
        typed,
    };
    key_page(&state, &headers, &meta, Some(team_id), &key_id, after).await
}

/// Rotates the key: a new secret, shown once; the old one stops at once or after the grace.
pub(super) async fn rotate_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, key_id)): Path<(String, String)>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = csrf_of(&pairs);
    let version = pairs
        .iter()
        .find(|(name, _)| name == "version")
        .map(|(_, value)| value.clone());
    let fields = KeyFields::parse(pairs);
    let (caller, _) = match member_of(&state, &headers, &team_id, csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let (outcome, rotated) = match (fields, key_id.parse::<ApiKeyId>()) {
        (Err(problem), _) => (Outcome::failed("rotate", problem), None),
        (Ok(_), Err(_)) => return error_page((StatusCode::NOT_FOUND, "No such key".into())),
        // The form was for the key as it was: a reload posting it again after the rotation (or
        // a change made elsewhere since) rotates nothing.
        (Ok(_), Ok(id))
            if state
                .keys
                .get_api_key(&caller, id, &meta)
                .await
                .is_ok_and(|key| Some(version_of(&key)) != version) =>
        {
            (
                Outcome::failed(
                    "rotate",
                    (
                        StatusCode::CONFLICT,
                        "This key changed since the page was shown (rotated already?), so it was not rotated again. Its state is below."
                            .to_owned(),
                    ),
                ),
                None,
            )
        }
        (Ok(fields), Ok(id)) => {
            let grace = chrono::Duration::try_hours(fields.grace_hours).unwrap_or(chrono::Duration::MAX);
            match state.keys.rotate_api_key(&caller, id, Some(grace), &meta).await {
                Ok((_, plain)) => (
                    Outcome::notice(if fields.grace_hours > 0 {
                        format!(
                            "The key was rotated; the old secret keeps working for {} hour{}.",
                            fields.grace_hours,
                            if fields.grace_hours == 1 { "" } else { "s" }
                        )
                    } else {
                        "The key was rotated; the old secret no longer works.".to_owned()
                    }),
                    Some(plain.expose().to_owned()),
                ),
                Err(error) => (Outcome::failed("rotate", failure(error)), None),
            }
        }
    };
    // Pages are never cached (`html`), so the new secret is not kept by the browser.
    let after = After {
        outcome,
        rotated,
        typed: None,
    };
    key_page(&state, &headers, &meta, Some(team_id), &key_id, after).await
}

#[cfg(test)]
mod tests {
    use super::KeyFields;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_key_form_is_read_or_refused_with_its_field() {
        let fields = KeyFields::parse(pairs(&[
            ("name", " ci "),
            ("access", "yes"),
            ("endpoint", "chat"),
            ("all_models", "yes"),
            ("qpm", "60"),
            ("expires", "2027-01-31"),
        ]))
        .unwrap();
        let key = fields.new_key();
        assert_eq!(key.acls, ["api-key:endpoint:chat", "api-key:model:*"]);
        assert_eq!((key.qpm, key.qps, key.name.as_str()), (Some(60), None, "ci"));
        assert_eq!(key.expire_time.unwrap().to_rfc3339(), "2027-01-31T00:00:00+00:00");
        // Without pickers a new key may call everything.
        let open = KeyFields::parse(pairs(&[("name", "x")])).unwrap().new_key();
        assert_eq!(open.acls, ["api-key:endpoint:*", "api-key:model:*"]);
        for bad in [
            vec![("qps", "many")],
            vec![("expires", "next week")],
            vec![("access", "yes"), ("all_models", "yes")],
            vec![("access", "yes"), ("all_endpoints", "yes")],
            // More hours than a duration holds: refused, never a panic.
            vec![("grace_hours", "9223372036854775807")],
            vec![("grace_hours", "-x")],
        ] {
            let (status, message) = KeyFields::parse(pairs(&bad))
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was taken"));
            assert_eq!(status, axum::http::StatusCode::BAD_REQUEST, "{message}");
        }
    }
}
