//! Operations: liveness, readiness, metrics, the OpenAPI document, and the answers for unknown
//! paths and methods (in xAI's error shape, like everything else).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::AppState;
use crate::error::XaiError;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(public_metrics))
        .route("/openapi.json", get(openapi))
}

/// The operator's listener: probes and metrics, no token (it listens on a private address).
pub(crate) fn operator_router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Health answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StatusView {
    status: &'static str,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = StatusView)))]
pub(crate) async fn healthz() -> Json<StatusView> {
    Json(StatusView { status: "ok" })
}

/// Readiness: the database answers within two seconds.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = StatusView), (status = 503, description = "The database is unreachable", body = crate::ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<StatusView>, XaiError> {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(StatusView { status: "ready" })),
        Ok(Err(error)) => Err(XaiError::unavailable("The database is unreachable", error)),
        Err(_) => Err(XaiError::unavailable(
            "The database is unreachable",
            anyhow::anyhow!("ping timed out"),
        )),
    }
}

/// Prometheus metrics, text format: on the public listener only with the configured
/// `metrics_token` as a bearer token (without one configured, there is no such endpoint here;
/// the operator's listener, `metrics_listen`, serves it).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("metrics_token" = [])))]
pub(crate) async fn public_metrics(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    use sha2::Digest as _;
    use subtle::ConstantTimeEq as _;
    let Some(expected) = state.settings.metrics_token_hash else {
        return not_found(uri).await.into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| sha2::Sha256::digest(token.trim().as_bytes()));
    match presented {
        Some(digest) if bool::from(digest.as_slice().ct_eq(&expected)) => metrics(State(state)).await,
        _ => XaiError::unauthenticated("/metrics needs the metrics token: 'Authorization: Bearer <metrics_token>'")
            .into_response(),
    }
}

/// Prometheus metrics, text format (the operator's listener).
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.bodies_dropped(state.inference.bodies_dropped());
    match state.metrics.encode() {
        Ok(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(error) => XaiError::internal(anyhow::anyhow!("metrics encoding failed: {error}")).into_response(),
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI 3.1 document")))]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

pub(crate) async fn not_found(uri: Uri) -> XaiError {
    XaiError::not_found(format!("No such endpoint: {}", uri.path()))
}

pub(crate) async fn method_not_allowed() -> XaiError {
    XaiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed for this endpoint")
}
