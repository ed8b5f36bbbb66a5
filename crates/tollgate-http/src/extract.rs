//! Extractors. A handler's signature states what it needs: `ApiKeyAuth` (an inference key,
//! `/v1` only), `ManagementAuth` (a management key, management API only), `XaiJson<T>` (a JSON
//! body whose every rejection is answered in xAI's shape), `XaiBytes` (a raw body, likewise), `RequestMeta` (where the request
//! came from, for audit events).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tollgate_core::AuthError;
use tollgate_domain::{ApiKey, ManagementKey, RequestContext};

use crate::AppState;
use crate::error::{XaiError, incorrect_api_key};
use crate::middleware::RequestIdValue;

fn bearer(parts: &Parts) -> Result<&str, XaiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        XaiError::unauthenticated("No API key provided. Send it in the Authorization header as 'Bearer <key>'.")
    })?;
    let value = header
        .to_str()
        .map_err(|_| XaiError::unauthenticated("The Authorization header is not valid text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| XaiError::unauthenticated("The Authorization header must be 'Bearer <key>'"))?
        .trim();
    if token.is_empty() {
        return Err(XaiError::unauthenticated("No API key provided"));
    }
    Ok(token)
}

/// An authenticated inference key.
pub struct ApiKeyAuth(pub Arc<ApiKey>);

impl FromRequestParts<AppState> for ApiKeyAuth {
    type Rejection = XaiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, XaiError> {
        let token = bearer(parts)?;
        match state.keys.authenticate_api_key(token).await {
            Ok(key) => {
                tracing::Span::current().record("team.id", tracing::field::display(key.team_id));
                Ok(Self(key))
            }
            Err(AuthError::Invalid) => Err(incorrect_api_key(token, &state.settings.console_url)),
            Err(other) => Err(other.into()),
        }
    }
}

/// An authenticated management key.
pub struct ManagementAuth(pub ManagementKey);

impl FromRequestParts<AppState> for ManagementAuth {
    type Rejection = XaiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, XaiError> {
        let token = bearer(parts)?;
        match state.keys.authenticate_management_key(token).await {
            Ok(key) => Ok(Self(key)),
            // A management key is a credential of its own: unknown means unauthenticated.
            Err(AuthError::Invalid) => Err(XaiError::unauthenticated("Invalid management key")),
            Err(other) => Err(other.into()),
        }
    }
}

/// A management key as the party a service acts for.
pub struct ManagementCaller(pub tollgate_core::Caller);

impl FromRequestParts<AppState> for ManagementCaller {
    type Rejection = XaiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, XaiError> {
        let ManagementAuth(key) = ManagementAuth::from_request_parts(parts, state).await?;
        Ok(Self(key.into()))
    }
}

/// Where a request came from: peer address, user agent, request id.
pub struct RequestMeta(pub RequestContext);

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left
/// are the client's own claims and cannot be believed).
pub(crate) fn client_ip(
    peer: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            // Garbage in the chain: stop at the last address we could trust.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

impl FromRequestParts<AppState> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let ip = client_ip(peer, &parts.headers, &state.settings.trusted_proxies).map(|ip| ip.to_string());
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect());
        let request_id = parts.extensions.get::<RequestIdValue>().map(|id| id.0.clone());
        Ok(Self(RequestContext {
            ip,
            user_agent,
            request_id,
        }))
    }
}

/// A JSON body. Malformed JSON is a 400, a missing or wrong-typed field a 422, a missing
/// `Content-Type` a 415, all in xAI's shape.
pub struct XaiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for XaiJson<T> {
    type Rejection = XaiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, XaiError> {
        // Its type first, as axum's `Json` has it: a body too large and not JSON is a 415.
        if !json_content_type(request.headers()) {
            return Err(not_json());
        }
        let RawJson(value, _) = RawJson::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// A JSON body as [`XaiJson`] reads it, and its bytes as sent (an inference request, kept for
/// abuse review when bodies are retained; the bytes are shared, not copied).
pub struct RawJson<T>(pub T, pub bytes::Bytes);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for RawJson<T> {
    type Rejection = XaiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, XaiError> {
        let json = json_content_type(request.headers());
        // The body first (within the configured limit, `DefaultBodyLimit` in the extensions):
        // one too large is a 413 whatever its type.
        let raw = match bytes::Bytes::from_request(request, state).await {
            Ok(raw) => raw,
            Err(rejection) => return Err(XaiError::new(rejection.status(), rejection.body_text())),
        };
        if !json {
            return Err(not_json());
        }
        Ok(Self(read_json(&raw)?, raw))
    }
}

/// `raw` read as a `T`. serde_json alone reads a good body; one that fails is read again by
/// axum's reader, which tracks the path to the bad field, for the error's words (the same
/// words as before this shortcut, which only spares a good body the tracking).
fn read_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, XaiError> {
    serde_json::from_slice(raw).or_else(|_| match axum::Json::<T>::from_bytes(raw) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => Err(json_rejection(&rejection)),
    })
}

/// Whether the request says its body is JSON, as axum's `Json` decides it: `application/json`,
/// or any `application/…+json`, with parameters or without.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
        .is_some_and(|mime| {
            mime.type_() == "application" && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        })
}

/// A raw body (a signed webhook, an optional JSON body read by hand) whose rejections, a body
/// over the size limit above all, are answered in xAI's shape like every other error.
pub struct XaiBytes(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for XaiBytes {
    type Rejection = XaiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, XaiError> {
        match bytes::Bytes::from_request(request, state).await {
            Ok(body) => Ok(Self(body)),
            Err(rejection) => Err(XaiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

fn not_json() -> XaiError {
    XaiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Expected a JSON body with 'Content-Type: application/json'",
    )
}

fn json_rejection(rejection: &JsonRejection) -> XaiError {
    match rejection {
        JsonRejection::JsonSyntaxError(_) => {
            XaiError::invalid_argument(format!("The request body is not valid JSON: {}", rejection.body_text()))
        }
        JsonRejection::JsonDataError(_) => XaiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("The request body has an invalid field: {}", rejection.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => not_json(),
        JsonRejection::BytesRejection(_) => XaiError::new(rejection.status(), rejection.body_text()),
        _ => XaiError::invalid_argument(rejection.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A good body is read by serde_json alone; a bad one is worded by axum's reader, with the
    /// path to the bad field, and the status for its kind.
    #[test]
    fn a_bad_body_is_worded_with_the_path_to_what_is_wrong() {
        #[derive(serde::Deserialize)]
        struct Message {
            role: u8,
        }
        #[derive(serde::Deserialize)]
        struct Body {
            messages: Vec<Message>,
        }
        let read = read_json::<Body>(br#"{"messages":[{"role":1},{"role":2}]}"#).unwrap();
        assert_eq!(read.messages.iter().map(|m| m.role).collect::<Vec<_>>(), [1, 2]);
        let cases: [(&[u8], StatusCode, &str); 4] = [
            (
                br#"{"messages":[{"role":1},{"role":"x"}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "The request body has an invalid field: Failed to deserialize the JSON body into the target type: \
                 messages[1].role: invalid type: string \"x\", expected u8 at line 1 column 35",
            ),
            (
                br#"{"messages":[]"#,
                StatusCode::BAD_REQUEST,
                "The request body is not valid JSON: Failed to parse the request body as JSON: EOF while \
                 parsing an object at line 1 column 14",
            ),
            (
                br#"{"messages":[]} x"#,
                StatusCode::BAD_REQUEST,
                "The request body is not valid JSON: Failed to parse the request body as JSON: trailing characters at \
                 line 1 column 17",
            ),
            (
                br#"{}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "The request body has an invalid field: Failed to deserialize the JSON body into the target type: \
                 missing field `messages` at line 1 column 2",
            ),
        ];
        for (body, status, words) in cases {
            let error = read_json::<Body>(body).err().unwrap();
            assert_eq!((error.status(), error.body().error.as_str()), (status, words));
        }
    }

    #[test]
    fn a_json_body_is_told_by_its_media_type_as_axum_tells_it() {
        let headers = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::CONTENT_TYPE, value.parse().unwrap());
            headers
        };
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(json_content_type(&headers(json)), "{json}");
        }
        for other in ["text/json", "application/jsonx", "text/plain", "json", ""] {
            assert!(!json_content_type(&headers(other)), "{other}");
        }
        assert!(!json_content_type(&axum::http::HeaderMap::new()));
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let headers = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("x-forwarded-for", value.parse().unwrap());
            headers
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), &headers("198.51.100.1"), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Through one trusted proxy.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &headers("198.51.100.1"), &trusted),
            Some(ip("198.51.100.1"))
        );
        // A client's forged entry to the left is not believed: the rightmost untrusted one is.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                &headers("1.2.3.4, 198.51.100.1, 10.0.0.7"),
                &trusted
            ),
            Some(ip("198.51.100.1"))
        );
        // No header, or garbage: the last trustworthy hop.
        assert_eq!(
            client_ip(Some(ip("::1")), &axum::http::HeaderMap::new(), &trusted),
            Some(ip("::1"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &headers("nonsense"), &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(client_ip(None, &headers("198.51.100.1"), &trusted), None);
    }
}
