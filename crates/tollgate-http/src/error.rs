//! Errors as responses. **Invariant:** only this crate knows HTTP status codes.
//!
//! Every failure on `/v1` and on the management API is answered in xAI's shape,
//! `{"code": "<gRPC status text>", "error": "<message>"}`, including body-parse failures.
//! 5xx bodies are opaque; their cause is logged once, here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tollgate_core::{AuthError, KeyError};
use tollgate_gateway::GatewayError;
use tollgate_store::StoreError;

/// An error answer in xAI's shape.
#[derive(Debug)]
pub struct XaiError {
    status: StatusCode,
    message: String,
    source: Option<anyhow::Error>,
    /// Extra response headers; boxed, as most errors have none.
    headers: Option<Box<axum::http::HeaderMap>>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The gRPC status description, e.g. `Client specified an invalid argument`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub error: String,
}

/// The `code` text xAI sends for a status (the canonical gRPC status descriptions).
#[must_use]
pub fn code_text(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 413 | 415 | 422 => "Client specified an invalid argument",
        401 => "The request does not have valid authentication credentials",
        403 => "The caller does not have permission to execute the specified operation",
        404 => "Some requested entity was not found",
        409 => "Some entity that we attempted to create already exists",
        429 => "Some resource has been exhausted",
        502 | 503 => "The service is currently unavailable",
        504 => "Deadline expired before operation could complete",
        _ => "Internal error",
    }
}

impl XaiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            source: None,
            headers: None,
        }
    }

    /// This error, answered with `headers` too (e.g. `retry-after` and `x-ratelimit-*` on a 429).
    #[must_use]
    pub fn with_headers(mut self, headers: axum::http::HeaderMap) -> Self {
        self.headers.get_or_insert_with(Box::default).extend(headers);
        self
    }

    /// 400.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// An error whose cause (`source`) is logged, not shown.
    pub fn with_source(status: StatusCode, message: impl Into<String>, source: impl Into<anyhow::Error>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(status, message)
        }
    }

    /// 500 with an opaque body; `source` is logged.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self::with_source(StatusCode::INTERNAL_SERVER_ERROR, "Internal error", source)
    }

    /// 503 with an opaque body; `source` is logged.
    pub fn unavailable(message: impl Into<String>, source: impl Into<anyhow::Error>) -> Self {
        Self::with_source(StatusCode::SERVICE_UNAVAILABLE, message, source)
    }

    /// The status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body.
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: code_text(self.status),
            error: self.message.clone(),
        }
    }
}

impl IntoResponse for XaiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            match &self.source {
                Some(source) => tracing::error!(
                    status = self.status.as_u16(),
                    error = format!("{source:#}"),
                    "request failed"
                ),
                None => tracing::error!(status = self.status.as_u16(), message = %self.message, "request failed"),
            }
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(headers) = self.headers {
            response.headers_mut().extend(*headers);
        }
        response
    }
}

impl From<StoreError> for XaiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => XaiError::unavailable("The service is temporarily unavailable", error),
            other => XaiError::internal(other),
        }
    }
}

impl From<KeyError> for XaiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::BeyondPolicy(_) => XaiError::permission_denied(error.to_string()),
            KeyError::InvalidName(_)
            | KeyError::InvalidAcl(_)
            | KeyError::InvalidLimit(_)
            | KeyError::LimitTooLarge(_)
            | KeyError::ExpiryInPast
            | KeyError::NothingToUpdate
            | KeyError::InvalidGracePeriod
            | KeyError::Blocked(_) => XaiError::invalid_argument(error.to_string()),
            KeyError::KeyNotFound => XaiError::not_found("Cannot find API key"),
            KeyError::Forbidden(message) => XaiError::permission_denied(message),
            // Another team's id and an unknown one answer alike: no existence leak.
            KeyError::TeamNotFound => XaiError::permission_denied("The management key is not authorized for this team"),
            KeyError::Store(store) => store.into(),
        }
    }
}

impl From<GatewayError> for XaiError {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::Status { status, ref message }
                if (400..500).contains(&status) && status != 401 && status != 403 =>
            {
                // The client's request was refused by the model server: pass the reason on.
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                XaiError::new(status, message.clone())
            }
            GatewayError::Timeout => XaiError::with_source(
                StatusCode::GATEWAY_TIMEOUT,
                "The model server did not answer in time",
                error,
            ),
            GatewayError::Unavailable(_) => XaiError::with_source(
                StatusCode::SERVICE_UNAVAILABLE,
                "The model server is unavailable",
                error,
            ),
            GatewayError::AtCapacity => XaiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "The model is at capacity: every server running it is serving as many requests as it may. Try again shortly.",
            )
            .with_headers(axum::http::HeaderMap::from_iter([(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            )])),
            GatewayError::Status { .. } | GatewayError::InvalidResponse(_) => {
                XaiError::with_source(StatusCode::BAD_GATEWAY, "The model server failed to answer", error)
            }
        }
    }
}

/// The message for a refused inference key, in xAI's words, with the key shown as `xa***yz`.
pub fn incorrect_api_key(presented: &str, console_url: &str) -> XaiError {
    XaiError::invalid_argument(tollgate_domain::keys::incorrect_key_message(presented, console_url))
}

impl From<AuthError> for XaiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Invalid => XaiError::invalid_argument("Incorrect API key provided"),
            AuthError::Disabled => XaiError::permission_denied("The API key is disabled"),
            AuthError::Blocked => XaiError::permission_denied("The API key is blocked"),
            AuthError::Expired => XaiError::permission_denied("The API key has expired"),
            AuthError::Revoked => XaiError::unauthenticated("The management key has been revoked"),
            AuthError::WrongKind => XaiError::permission_denied(
                "This kind of key cannot call this API: inference (/v1) takes an API key, the Management API a management key",
            ),
            AuthError::Store(store) => store.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_xai_codes() {
        assert_eq!(
            code_text(StatusCode::BAD_REQUEST),
            "Client specified an invalid argument"
        );
        assert_eq!(
            code_text(StatusCode::TOO_MANY_REQUESTS),
            "Some resource has been exhausted"
        );
        assert_eq!(
            code_text(StatusCode::FORBIDDEN),
            "The caller does not have permission to execute the specified operation"
        );
        assert_eq!(code_text(StatusCode::IM_A_TEAPOT), "Internal error");
    }

    #[test]
    fn upstream_errors_map_to_gateway_statuses() {
        let status = |e: GatewayError| XaiError::from(e).status();
        assert_eq!(
            status(GatewayError::Unavailable("refused".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(GatewayError::Status {
                status: 500,
                message: "boom".into()
            }),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            status(GatewayError::Status {
                status: 400,
                message: "bad".into()
            }),
            StatusCode::BAD_REQUEST
        );
        // The upstream refusing *our* credentials is our fault, not the client's.
        assert_eq!(
            status(GatewayError::Status {
                status: 401,
                message: "key".into()
            }),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(status(GatewayError::Timeout), StatusCode::GATEWAY_TIMEOUT);
    }
}
