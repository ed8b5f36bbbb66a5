//! Request-wide middleware: a request id on every request and response, one tracing span per
//! request with its id, and the request metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::AppState;

/// The request's id, as stored in request extensions.
#[derive(Debug, Clone)]
pub struct RequestIdValue(pub String);

const REQUEST_ID: &str = "x-request-id";

/// Assigns the request id, opens the request span, and records metrics.
///
/// The id is always the server's own (a UUIDv7): it keys the request's usage record, so a
/// client must never choose it, or two requests sent with one id would be billed once. A
/// client's own `x-request-id` of sane shape is kept in the span as `client.request_id`, for
/// tracing across systems.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = Uuid::now_v7().to_string();
    let client_request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    request.extensions_mut().insert(RequestIdValue(request_id.clone()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        request.id = %request_id,
        client.request_id = client_request_id.as_deref(),
        http.method = crate::metrics::method_label(&method),
        http.route = %route,
        team.id = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    // The outcome goes in the line itself, not recorded into the span first: each record
    // formats the span's fields again. Logged inside the span, so a JSON line lists it under
    // `spans` too, as every other line of the request does.
    span.in_scope(|| {
        tracing::info!(
            http.status = status,
            duration_ms = elapsed.as_millis() as u64,
            "request finished"
        );
    });
    state.metrics.observe_request(&route, &method, status, elapsed);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}
