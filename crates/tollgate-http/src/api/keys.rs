//! A team's keys from the console: API keys (with the team's key policy) and management keys.

use super::*;

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
