//! The management API, in xAI's Management API paths and camelCase shapes, authenticated by a
//! management key that manages exactly one team. (The full key lifecycle — update, rotate,
//! delete, propagation — arrives with the API keys work.)

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use serde::{Deserialize, Deserializer, Serialize};
use tollgate_core::NewApiKey;
use tollgate_domain::{ApiKey, ApiKeyId, TeamId, Timestamp};

use crate::AppState;
use crate::error::XaiError;
use crate::extract::{ManagementAuth, ManagementCaller, RequestMeta, XaiJson};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/auth/teams/{team_id}/api-keys",
            post(create_api_key).get(list_api_keys),
        )
        .route(
            "/auth/api-keys/{api_key_id}",
            get(get_api_key).put(update_api_key).delete(delete_api_key),
        )
        .route("/auth/api-keys/{api_key_id}/rotate", post(rotate_api_key))
        .route("/auth/api-keys/{api_key_id}/propagation", get(key_propagation))
        .route("/auth/teams/{team_id}/endpoints", get(list_endpoints))
        .route("/auth/teams/{team_id}/models", get(list_acl_models))
        .route("/auth/management-keys/validation", get(validate_management_key))
}

pub(crate) fn parse_key_id(raw: &str) -> Result<ApiKeyId, XaiError> {
    // A malformed id names no key of the caller's team.
    raw.parse().map_err(|_| XaiError::not_found("Cannot find API key"))
}

pub(crate) fn rfc3339(at: Timestamp) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(crate) fn parse_team_id(raw: &str) -> Result<TeamId, XaiError> {
    // A malformed id cannot be the caller's team: answer as for any other team.
    raw.parse()
        .map_err(|_| XaiError::permission_denied("The management key is not authorized for this team"))
}

/// An int64 that xAI sends as a JSON string (proto3 JSON); numbers are accepted too.
fn int64_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Number(u64),
        Text(String),
    }
    match Option::<Int64>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Int64::Number(n)) => Ok(Some(n)),
        Some(Int64::Text(text)) => text
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("'{text}' is not an integer"))),
    }
}

/// `POST /auth/teams/{teamId}/api-keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateApiKeyRequest {
    /// Name; required.
    name: String,
    /// Grants, e.g. `api-key:endpoint:chat`, `api-key:model:*`. None means no access at all.
    #[serde(default)]
    acls: Vec<String>,
    /// Requests per second.
    #[serde(default)]
    qps: Option<u32>,
    /// Requests per minute.
    #[serde(default)]
    qpm: Option<u32>,
    /// Tokens per minute, an int64 as a string.
    #[serde(default, deserialize_with = "int64_string")]
    #[schema(value_type = Option<String>)]
    tpm: Option<u64>,
    /// Expiry, RFC 3339.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    expire_time: Option<Timestamp>,
}

/// An API key in xAI's management shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiKeyView {
    redacted_api_key: String,
    /// The full key: only in the create response.
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    user_id: String,
    name: String,
    create_time: String,
    modify_time: String,
    modified_by: String,
    team_id: String,
    api_key_id: String,
    disabled: bool,
    api_key_blocked: bool,
    team_blocked: bool,
    expire_time: Option<String>,
    qps: Option<u32>,
    qpm: Option<u32>,
    /// int64 as a string, as xAI sends it.
    tpm: Option<String>,
    acl_strings: Vec<String>,
    /// When the key was last used (recorded in batches: may lag by up to a minute). Not in xAI's
    /// shape; clients ignore it.
    last_use_time: Option<String>,
    /// Until when the secret replaced by the last rotation still works. Not in xAI's shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_expire_time: Option<String>,
    /// Why the platform blocked it. Not in xAI's shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked_reason: Option<String>,
}

impl ApiKeyView {
    pub(crate) fn new(key: &ApiKey, plaintext: Option<String>) -> Self {
        let user = |id: Option<tollgate_domain::UserId>| id.map(|id| id.to_string()).unwrap_or_default();
        Self {
            redacted_api_key: key.redacted.clone(),
            api_key: plaintext,
            user_id: user(key.created_by),
            name: key.name.clone(),
            create_time: rfc3339(key.created_at),
            modify_time: rfc3339(key.modified_at),
            modified_by: user(key.modified_by),
            team_id: key.team_id.to_string(),
            api_key_id: key.id.to_string(),
            disabled: key.disabled,
            api_key_blocked: key.blocked,
            team_blocked: key.team_blocked_by.is_some(),
            expire_time: key.expire_time.map(rfc3339),
            qps: key.qps,
            qpm: key.qpm,
            tpm: key.tpm.map(|tpm| tpm.to_string()),
            acl_strings: key.acls.as_slice().iter().map(ToString::to_string).collect(),
            last_use_time: key.last_used_at.map(rfc3339),
            previous_secret_expire_time: key.previous_secret_expires_at.map(rfc3339),
            blocked_reason: key.blocked_reason.clone(),
        }
    }
}

/// Create an API key for the team. The response is the only place the full key ever appears.
#[utoipa::path(post, path = "/auth/teams/{team_id}/api-keys", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    request_body = CreateApiKeyRequest,
    responses(
        (status = 200, body = ApiKeyView),
        (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody),
        (status = 403, description = "Not this management key's team", body = crate::ErrorBody),
        (status = 422, body = crate::ErrorBody),
    ),
    security(("management_key" = [])))]
pub(crate) async fn create_api_key(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CreateApiKeyRequest>,
) -> Result<Json<ApiKeyView>, XaiError> {
    let team_id = parse_team_id(&team_id)?;
    let new = NewApiKey::from(body);
    let (key, plain) = state.keys.create_api_key(&caller, team_id, new, &meta).await?;
    Ok(Json(ApiKeyView::new(&key, Some(plain.expose().to_owned()))))
}

/// Query of `GET /auth/teams/{teamId}/api-keys`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListApiKeysQuery {
    /// Keys per page, 1 to 1000 (default 100).
    page_size: Option<u32>,
    /// The `paginationToken` of the previous page.
    pagination_token: Option<String>,
    /// Accepted for compatibility; every key is listed.
    #[allow(dead_code, reason = "accepted so xAI clients' query strings parse")]
    active_only: Option<bool>,
}

/// A page of API keys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiKeyListView {
    api_keys: Vec<ApiKeyView>,
    /// Pass back to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pagination_token: Option<String>,
}

impl ApiKeyListView {
    pub(crate) fn new(keys: &[ApiKey], pagination_token: Option<String>) -> Self {
        Self {
            api_keys: keys.iter().map(|k| ApiKeyView::new(k, None)).collect(),
            pagination_token,
        }
    }
}

impl From<CreateApiKeyRequest> for NewApiKey {
    fn from(body: CreateApiKeyRequest) -> Self {
        Self {
            name: body.name,
            acls: body.acls,
            qps: body.qps,
            qpm: body.qpm,
            tpm: body.tpm,
            expire_time: body.expire_time,
        }
    }
}

/// List the team's API keys, oldest first.
#[utoipa::path(get, path = "/auth/teams/{team_id}/api-keys", tag = "management",
    params(("team_id" = String, Path, description = "The team's id"), ListApiKeysQuery),
    responses((status = 200, body = ApiKeyListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn list_api_keys(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    query: Result<Query<ListApiKeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApiKeyListView>, XaiError> {
    let team_id = parse_team_id(&team_id)?;
    let Query(query) = query.map_err(|e| XaiError::invalid_argument(e.body_text()))?;
    let page_size = query.page_size.unwrap_or(100);
    if !(1..=1000).contains(&page_size) {
        return Err(XaiError::invalid_argument("pageSize must be between 1 and 1000"));
    }
    let after = match query.pagination_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => Some(
            token
                .parse::<ApiKeyId>()
                .map_err(|_| XaiError::invalid_argument("invalid paginationToken"))?,
        ),
        None => None,
    };
    let keys = state
        .keys
        .list_api_keys(&caller, team_id, after, page_size, &meta)
        .await?;
    let pagination_token = (keys.len() == page_size as usize)
        .then(|| keys.last().map(|k| k.id.to_string()))
        .flatten();
    Ok(Json(ApiKeyListView::new(&keys, pagination_token)))
}

/// `GET /auth/management-keys/validation` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManagementKeyValidationView {
    api_key_id: String,
    /// Deprecated by xAI in favour of `scopeId`; kept for old clients.
    team_id: String,
    scope: &'static str,
    scope_id: String,
    name: String,
}

/// Check a management key and see what it manages.
#[utoipa::path(get, path = "/auth/management-keys/validation", tag = "management",
    responses((status = 200, body = ManagementKeyValidationView), (status = 401, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn validate_management_key(ManagementAuth(key): ManagementAuth) -> Json<ManagementKeyValidationView> {
    Json(ManagementKeyValidationView {
        api_key_id: key.id.to_string(),
        team_id: key.team_id.to_string(),
        scope: "SCOPE_TEAM",
        scope_id: key.team_id.to_string(),
        name: key.name,
    })
}

/// Get one API key of the management key's team. Audited as `GetApiKey`.
#[utoipa::path(get, path = "/auth/api-keys/{api_key_id}", tag = "management",
    params(("api_key_id" = String, Path, description = "The key's id")),
    responses((status = 200, body = ApiKeyView), (status = 401, body = crate::ErrorBody), (status = 404, description = "Cannot find API key", body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn get_api_key(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(id): Path<String>,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<ApiKeyView>, XaiError> {
    let key = state.keys.get_api_key(&caller, parse_key_id(&id)?, &meta).await?;
    Ok(Json(ApiKeyView::new(&key, None)))
}

/// `PUT /auth/api-keys/{id}` body: the fields to set, and which of them to apply.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateApiKeyRequest {
    /// New values: `name`, `acls` (or `aclStrings`), `qps`, `qpm`, `tpm` (int64 as a string),
    /// `expireTime` (RFC 3339), `disabled`. A field in the mask but null here is cleared (limits,
    /// expiry).
    #[schema(value_type = Object)]
    api_key: serde_json::Map<String, serde_json::Value>,
    /// Comma-separated field names to update, e.g. `"name,qpm"` (camelCase or snake_case).
    field_mask: String,
}

impl UpdateApiKeyRequest {
    pub(crate) fn field_mask(&self) -> &str {
        &self.field_mask
    }

    pub(crate) fn values(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.api_key
    }
}

fn unprocessable(message: String) -> XaiError {
    XaiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// Reads the changes named by `mask` from `values`.
pub(crate) fn changes_from(
    mask: &str,
    values: &serde_json::Map<String, serde_json::Value>,
) -> Result<tollgate_core::ApiKeyChanges, XaiError> {
    use serde_json::Value;
    let mut changes = tollgate_core::ApiKeyChanges::default();
    // The value of a field under either spelling; null and absent are both `None`.
    let value = |names: &[&str]| names.iter().find_map(|n| values.get(*n)).filter(|v| !v.is_null());
    let limit = |name: &str| -> Result<Option<u32>, XaiError> {
        value(&[name])
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| unprocessable(format!("apiKey.{name} must be a positive integer")))
            })
            .transpose()
    };
    for field in mask.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match field {
            "name" => {
                let name = value(&["name"])
                    .and_then(Value::as_str)
                    .ok_or_else(|| unprocessable("apiKey.name must be a string".into()))?;
                changes.name = Some(name.to_owned());
            }
            "acls" | "aclStrings" | "acl_strings" => {
                let acls = value(&["acls", "aclStrings", "acl_strings"])
                    .and_then(Value::as_array)
                    .and_then(|items| {
                        items
                            .iter()
                            .map(|i| i.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| unprocessable("apiKey.acls must be an array of strings".into()))?;
                changes.acls = Some(acls);
            }
            "qps" => changes.qps = Some(limit("qps")?),
            "qpm" => changes.qpm = Some(limit("qpm")?),
            "tpm" => {
                let tpm = match value(&["tpm"]) {
                    None => None,
                    Some(Value::Number(n)) => Some(
                        n.as_u64()
                            .ok_or_else(|| unprocessable("apiKey.tpm must be a positive integer".into()))?,
                    ),
                    Some(Value::String(text)) => Some(
                        text.parse()
                            .map_err(|_| unprocessable(format!("apiKey.tpm: '{text}' is not an integer")))?,
                    ),
                    Some(_) => return Err(unprocessable("apiKey.tpm must be an int64 string".into())),
                };
                changes.tpm = Some(tpm);
            }
            "expireTime" | "expire_time" => {
                let expire = value(&["expireTime", "expire_time"])
                    .map(|v| {
                        v.as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.to_utc())
                            .ok_or_else(|| unprocessable("apiKey.expireTime must be an RFC 3339 time".into()))
                    })
                    .transpose()?;
                changes.expire_time = Some(expire);
            }
            "disabled" => {
                let disabled = value(&["disabled"])
                    .and_then(Value::as_bool)
                    .ok_or_else(|| unprocessable("apiKey.disabled must be true or false".into()))?;
                changes.disabled = Some(disabled);
            }
            other => {
                return Err(XaiError::invalid_argument(format!(
                    "fieldMask: '{other}' cannot be updated (updatable: name, acls, qps, qpm, tpm, expireTime, disabled)"
                )));
            }
        }
    }
    Ok(changes)
}

/// Update an API key: only the fields named in `fieldMask` change. Disabling (`disabled: true`)
/// and enabling take effect on every node within a second; enabling never lifts a block.
#[utoipa::path(put, path = "/auth/api-keys/{api_key_id}", tag = "management",
    params(("api_key_id" = String, Path, description = "The key's id")),
    request_body = UpdateApiKeyRequest,
    responses(
        (status = 200, body = ApiKeyView),
        (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody),
        (status = 404, description = "Cannot find API key", body = crate::ErrorBody),
        (status = 422, body = crate::ErrorBody),
    ),
    security(("management_key" = [])))]
pub(crate) async fn update_api_key(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<UpdateApiKeyRequest>,
) -> Result<Json<ApiKeyView>, XaiError> {
    let id = parse_key_id(&id)?;
    let changes = changes_from(&body.field_mask, &body.api_key)?;
    let key = state.keys.update_api_key(&caller, id, changes, &meta).await?;
    Ok(Json(ApiKeyView::new(&key, None)))
}

/// Delete an API key: refused at once on this node, within a second everywhere. Its usage and
/// audit records stay. Answers `{}`.
#[utoipa::path(delete, path = "/auth/api-keys/{api_key_id}", tag = "management",
    params(("api_key_id" = String, Path, description = "The key's id")),
    responses((status = 200, description = "`{}`"), (status = 401, body = crate::ErrorBody), (status = 404, description = "Cannot find API key", body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn delete_api_key(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(id): Path<String>,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<serde_json::Value>, XaiError> {
    state.keys.delete_api_key(&caller, parse_key_id(&id)?, &meta).await?;
    Ok(Json(serde_json::json!({})))
}

/// Optional body of a rotation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RotateApiKeyRequest {
    /// How long the old secret keeps working, as a protobuf duration (`"3600s"`); at most 7 days.
    /// Absent or `"0s"`: the old secret stops at once.
    grace_period: Option<String>,
    /// The same in whole seconds.
    grace_period_seconds: Option<u32>,
}

pub(crate) fn parse_duration(text: &str) -> Option<chrono::Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    (0.0..=1e9)
        .contains(&seconds)
        .then(|| chrono::Duration::milliseconds((seconds * 1000.0).round() as i64))
}

/// The grace period asked for in a rotation's (optional) body.
pub(crate) fn grace_from_body(body: &[u8]) -> Result<Option<chrono::Duration>, XaiError> {
    // xAI's rotate takes no body; ours may carry a grace period.
    let request: RotateApiKeyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateApiKeyRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| XaiError::invalid_argument(format!("invalid rotate body: {e}")))?
    };
    let grace =
        match (request.grace_period.as_deref(), request.grace_period_seconds) {
            (Some(_), Some(_)) => {
                return Err(XaiError::invalid_argument(
                    "give gracePeriod or gracePeriodSeconds, not both",
                ));
            }
            (Some(text), None) => Some(parse_duration(text).ok_or_else(|| {
                XaiError::invalid_argument("gracePeriod must be a duration in seconds, e.g. \"3600s\"")
            })?),
            (None, Some(seconds)) => Some(chrono::Duration::seconds(i64::from(seconds))),
            (None, None) => None,
        };
    Ok(grace)
}

/// Rotate an API key: a new secret under the same id, shown once in `apiKey`. The old secret
/// stops at once, or after the grace period asked for.
#[utoipa::path(post, path = "/auth/api-keys/{api_key_id}/rotate", tag = "management",
    params(("api_key_id" = String, Path, description = "The key's id")),
    request_body(content = Option<RotateApiKeyRequest>, description = "Optional; an empty body means no grace period"),
    responses(
        (status = 200, body = ApiKeyView),
        (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody),
        (status = 404, description = "Cannot find API key", body = crate::ErrorBody),
    ),
    security(("management_key" = [])))]
pub(crate) async fn rotate_api_key(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(id): Path<String>,
    RequestMeta(meta): RequestMeta,
    crate::extract::XaiBytes(body): crate::extract::XaiBytes,
) -> Result<Json<ApiKeyView>, XaiError> {
    let id = parse_key_id(&id)?;
    let grace = grace_from_body(&body)?;
    let (key, plain) = state.keys.rotate_api_key(&caller, id, grace, &meta).await?;
    Ok(Json(ApiKeyView::new(&key, Some(plain.expose().to_owned()))))
}

/// Whether a key's last change is in force everywhere.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PropagationView {
    api_key_id: String,
    /// True once every node has re-read the key (at most a second after a change).
    propagated: bool,
    modify_time: String,
    /// When the change is (or was) in force everywhere.
    propagation_time: String,
}

/// Propagation status of an API key's last change across nodes.
#[utoipa::path(get, path = "/auth/api-keys/{api_key_id}/propagation", tag = "management",
    params(("api_key_id" = String, Path, description = "The key's id")),
    responses((status = 200, body = PropagationView), (status = 401, body = crate::ErrorBody), (status = 404, description = "Cannot find API key", body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn key_propagation(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(id): Path<String>,
) -> Result<Json<PropagationView>, XaiError> {
    let id = parse_key_id(&id)?;
    let propagation = state.keys.propagation(&caller, id).await?;
    Ok(Json(PropagationView {
        api_key_id: id.to_string(),
        propagated: propagation.propagated,
        modify_time: rfc3339(propagation.modified_at),
        propagation_time: rfc3339(propagation.propagated_at),
    }))
}

/// One endpoint name for `api-key:endpoint:<name>`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EndpointView {
    name: &'static str,
    description: &'static str,
}

/// Endpoint names for ACLs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EndpointListView {
    endpoints: Vec<EndpointView>,
}

pub(crate) fn own_team(caller: &tollgate_core::Caller, raw: &str) -> Result<(), XaiError> {
    if parse_team_id(raw)? == caller.team_id() {
        Ok(())
    } else {
        Err(XaiError::permission_denied(
            "The management key is not authorized for this team",
        ))
    }
}

/// The endpoint names `api-key:endpoint:<name>` grants may use (`*` grants all).
#[utoipa::path(get, path = "/auth/teams/{team_id}/endpoints", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = EndpointListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn list_endpoints(
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<EndpointListView>, XaiError> {
    own_team(&caller, &team_id)?;
    Ok(Json(EndpointListView {
        endpoints: tollgate_domain::Endpoint::ALL
            .iter()
            .map(|endpoint| EndpointView {
                name: endpoint.as_str(),
                description: endpoint.describe(),
            })
            .collect(),
    }))
}

/// One model name for `api-key:model:<name>`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AclModelView {
    name: String,
    /// Other names requests may use; the grant is on `name`.
    aliases: Vec<String>,
}

/// Model names for ACLs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AclModelListView {
    models: Vec<AclModelView>,
}

/// The model names `api-key:model:<name>` grants may use (`*` grants all).
#[utoipa::path(get, path = "/auth/teams/{team_id}/models", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = AclModelListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn list_acl_models(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<AclModelListView>, XaiError> {
    own_team(&caller, &team_id)?;
    Ok(Json(AclModelListView {
        models: state
            .inference
            .catalog()
            .models()
            .iter()
            .map(|route| AclModelView {
                name: route.name.clone(),
                aliases: route.aliases.clone(),
            })
            .collect(),
    }))
}
