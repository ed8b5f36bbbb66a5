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
use crate::extract::{ManagementAuth, RequestMeta, XaiJson};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/auth/teams/{team_id}/api-keys",
            post(create_api_key).get(list_api_keys),
        )
        .route("/auth/management-keys/validation", get(validate_management_key))
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
}

impl ApiKeyView {
    fn new(key: &ApiKey, plaintext: Option<String>) -> Self {
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
            team_blocked: false,
            expire_time: key.expire_time.map(rfc3339),
            qps: key.qps,
            qpm: key.qpm,
            tpm: key.tpm.map(|tpm| tpm.to_string()),
            acl_strings: key.acls.as_slice().iter().map(ToString::to_string).collect(),
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
    ManagementAuth(caller): ManagementAuth,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CreateApiKeyRequest>,
) -> Result<Json<ApiKeyView>, XaiError> {
    let team_id = parse_team_id(&team_id)?;
    let new = NewApiKey {
        name: body.name,
        acls: body.acls,
        qps: body.qps,
        qpm: body.qpm,
        tpm: body.tpm,
        expire_time: body.expire_time,
    };
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

/// List the team's API keys, oldest first.
#[utoipa::path(get, path = "/auth/teams/{team_id}/api-keys", tag = "management",
    params(("team_id" = String, Path, description = "The team's id"), ListApiKeysQuery),
    responses((status = 200, body = ApiKeyListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn list_api_keys(
    State(state): State<AppState>,
    ManagementAuth(caller): ManagementAuth,
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
    Ok(Json(ApiKeyListView {
        api_keys: keys.iter().map(|k| ApiKeyView::new(k, None)).collect(),
        pagination_token,
    }))
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
