//! Deferred chat completions: `POST /v1/chat/completions` with `"deferred": true` answers
//! `{"request_id"}` at once; the request runs in the background on this node (admitted, held and
//! settled like any other, charged once when it completes) and
//! `GET /v1/chat/deferred-completion/{request_id}` answers 202 until it is done, then 200 with
//! the completion exactly once, then 404. A failure is returned once as its error body, and is
//! not charged. State and results live in the database ([`tollgate_core::Deferred`]), so any
//! node answers the polls.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tollgate_core::{AdmitError, DeferredError, Polled};
use tollgate_domain::{ApiKey, Endpoint};
use tollgate_gateway::search::RequestedTool;
use tollgate_gateway::wire::ChatCompletionRequest;

use super::{Billing, admission_refused, answer_and_settle};
use crate::AppState;
use crate::error::XaiError;
use crate::extract::ApiKeyAuth;

/// Whether the request asks to be deferred (the field is taken out: the upstream never sees it).
pub(super) fn asked(body: &mut ChatCompletionRequest) -> Result<bool, XaiError> {
    let deferred = match body.extra.remove("deferred") {
        None | Some(Value::Null | Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(XaiError::invalid_argument("deferred must be true or false")),
    };
    if deferred && body.is_stream() {
        return Err(XaiError::invalid_argument("A deferred completion cannot be streamed"));
    }
    Ok(deferred)
}

fn unavailable(error: DeferredError) -> XaiError {
    match error {
        DeferredError::Store(error) => XaiError::unavailable("Deferred completions are unavailable; try again", error),
        DeferredError::Sealed(_) => XaiError::internal(error),
    }
}

/// Records the admitted request `id` as pending and runs it in the background: the upstream
/// call, the settle, and the result recorded for the polls.
pub(super) async fn run(
    state: AppState,
    key: Arc<ApiKey>,
    billing: Billing,
    body: ChatCompletionRequest,
    tools: Vec<RequestedTool>,
    id: String,
) -> Result<(), XaiError> {
    let model = billing.admission.route().name.clone();
    // Unrecorded, the request is not run: dropping the admission releases its hold.
    state.deferred.begin(&key, &id, &model).await.map_err(unavailable)?;
    tokio::spawn(async move {
        let outcome = match answer_and_settle(&state, billing, &body, &tools).await {
            Ok(answered) => Ok(answered.into_chat(&model)),
            Err(error) => Err((
                error.status().as_u16(),
                serde_json::to_value(error.body()).unwrap_or(Value::Null),
            )),
        };
        match state.deferred.finish(key.team_id, &id, outcome).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(request_id = %id, "a deferred completion finished after it was reported lost"),
            Err(error) => {
                tracing::error!(request_id = %id, %error, "a deferred completion's result could not be recorded")
            }
        }
    });
    Ok(())
}

/// A deferred chat completion's result: 202 with an empty body while it runs, then 200 with the
/// completion (or its error, with the error's status) exactly once; 404 after that, after 24
/// hours, or for another team's request.
#[utoipa::path(get, path = "/v1/chat/deferred-completion/{request_id}", tag = "inference",
    params(("request_id" = String, Path, description = "The `request_id` a deferred request was answered with")),
    responses(
        (status = 200, description = "The chat completion (returned once)", body = crate::openapi::ChatCompletionDoc),
        (status = 202, description = "Still running: poll again"),
        (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, description = "No such request, already returned, or older than 24 hours", body = crate::ErrorBody),
        (status = 502, description = "The request failed upstream (not charged); returned once", body = crate::ErrorBody),
        (status = 503, description = "The request was lost: the server running it stopped (not charged)", body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn get_deferred_completion(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    Path(request_id): Path<String>,
) -> Result<Response, XaiError> {
    if !key.acls.allows(Endpoint::Chat) {
        return Err(admission_refused(&state, AdmitError::EndpointDenied(Endpoint::Chat)));
    }
    let polled = state
        .deferred
        .poll(key.team_id, &request_id)
        .await
        .map_err(unavailable)?;
    Ok(match polled {
        None => {
            return Err(XaiError::not_found(format!(
                "No deferred completion {request_id} is waiting: results are returned once, within 24 hours."
            )));
        }
        Some(Polled::Pending) => StatusCode::ACCEPTED.into_response(),
        Some(Polled::Done(answer)) => Json(answer).into_response(),
        Some(Polled::Failed { status, body }) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            Json(body),
        )
            .into_response(),
        Some(Polled::Lost) => {
            return Err(XaiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The deferred completion was lost: the server running it stopped before it finished. It was not charged; send it again.",
            ));
        }
    })
}
