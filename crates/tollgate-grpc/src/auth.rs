//! The caller's API key, from the `authorization: Bearer <key>` metadata the SDK sends on
//! every call, and `xai_api.Auth/get_api_key_info`.

use std::sync::Arc;

use tollgate_domain::{ApiKey, RequestId, Timestamp};
use tonic::{Request, Response, Status};

use crate::Services;
use crate::proto::ApiKey as ApiKeyInfo;
use crate::proto::auth_server::Auth;

/// The key that signs `request`, authenticated.
pub(crate) async fn api_key<T>(services: &Services, request: &Request<T>) -> Result<Arc<ApiKey>, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("No API key provided. Send it in the authorization metadata as 'Bearer <key>'.")
    })?;
    let value = header
        .to_str()
        .map_err(|_| Status::unauthenticated("The authorization metadata is not valid text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("The authorization metadata must be 'Bearer <key>'"))?
        .trim();
    if token.is_empty() {
        return Err(Status::unauthenticated("No API key provided"));
    }
    services
        .keys
        .authenticate_api_key(token)
        .await
        .map_err(|error| crate::status::unauthorized(&error, token, &services.console_url))
}

/// The request's id: the client's `x-request-id` metadata when it is a UUID, else a new one.
pub(crate) fn request_id<T>(request: &Request<T>) -> RequestId {
    request
        .metadata()
        .get("x-request-id")
        .and_then(|id| id.to_str().ok())
        .and_then(|id| id.parse().ok())
        .unwrap_or_default()
}

pub(crate) fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or_default(),
    }
}

/// `xai_api.Auth`.
pub(crate) struct AuthService {
    services: Arc<Services>,
}

impl AuthService {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    /// The calling key, as REST's `GET /v1/api-key` shows it.
    async fn get_api_key_info(&self, request: Request<()>) -> Result<Response<ApiKeyInfo>, Status> {
        let key = api_key(&self.services, &request).await?;
        let user = |id: Option<tollgate_domain::UserId>| id.map(|id| id.to_string()).unwrap_or_default();
        Ok(Response::new(ApiKeyInfo {
            redacted_api_key: key.redacted.clone(),
            user_id: user(key.created_by),
            name: key.name.clone(),
            create_time: Some(timestamp(key.created_at)),
            modify_time: Some(timestamp(key.modified_at)),
            modified_by: user(key.modified_by),
            team_id: key.team_id.to_string(),
            acls: key.acls.as_slice().iter().map(ToString::to_string).collect(),
            api_key_id: key.id.to_string(),
            api_key_blocked: key.blocked,
            team_blocked: key.team_blocked_by.is_some(),
            disabled: key.disabled,
        }))
    }
}
