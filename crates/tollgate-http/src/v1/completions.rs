//! `POST /v1/completions`: legacy text completions (OpenAI's shape), passed to the model's
//! upstream where it serves them (`endpoints` in its configuration lists `completions`), with the
//! same admission, hold and settle as chat.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tollgate_domain::{Endpoint, TokenUsage};
use tollgate_gateway::usage::{Demand, estimate_text_completion_tokens, parse_usage, usage_json};
use tollgate_gateway::wire::{CompletionRequest, StreamOptions};

use super::{Billing, Chunks, admission_refused, observer, rate_limit_headers};
use crate::AppState;
use crate::error::XaiError;
use crate::extract::{ApiKeyAuth, RawJson, RequestMeta};

/// Create a text completion (legacy). `max_tokens` defaults to 16, as OpenAI's does; `best_of`
/// choices are all generated and all charged.
#[utoipa::path(post, path = "/v1/completions", tag = "inference",
    request_body(content = Object, description = "OpenAI's completions request: model, prompt (text, texts or token ids), max_tokens (default 16), n, best_of, stream, echo, stop, temperature, …"),
    responses(
        (status = 200, description = "A text completion, or an SSE stream of chunks when `stream` is true, with `usage.cost_in_usd_ticks`", body = Object),
        (status = 400, description = "Invalid argument, or the model's upstream serves no completions", body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody),
        (status = 422, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody), (status = 502, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn create_completion(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    RequestMeta(meta): RequestMeta,
    RawJson(mut body, raw): RawJson<CompletionRequest>,
) -> Result<Response, XaiError> {
    body.validate().map_err(XaiError::invalid_argument)?;
    let request_id = super::request_id(&meta);
    let demand = Demand::of_completion(&body);
    // Without upstream usage: about four bytes a token, as for chat.
    let prompt_estimate = demand.prompt_tokens.div_ceil(4);
    let mut admission = state
        .inference
        .admit(
            key,
            Endpoint::Completions,
            &body.model,
            demand,
            body.is_stream(),
            request_id,
        )
        .await
        .map_err(|error| admission_refused(&state, error))?;
    admission.keep_request(raw);
    body.limit_output(admission.output_per_choice());
    let deadline = tokio::time::Instant::from_std(admission.deadline());
    let rate_headers = rate_limit_headers(admission.limits());
    let route = Arc::clone(admission.route());
    let billing = Billing {
        admission,
        state: state.clone(),
    };
    body.model = route.upstream_model().to_owned();

    if body.is_stream() {
        // Ask the upstream for usage, so streaming is never billed by guesswork.
        body.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
        let upstream_body = serde_json::to_value(&body).map_err(|e| XaiError::internal(anyhow::Error::new(e)))?;
        let (upstream_stream, upstream) = route
            .post_stream("/completions", &upstream_body, observer(&state))
            .await
            .map_err(XaiError::from)?;
        let relay = super::Relay {
            billing,
            upstream: upstream_stream,
            upstream_name: upstream,
            prompt_estimate: Box::new(move || prompt_estimate),
            deadline,
        };
        let shape = Chunks::new(&route.name);
        return Ok(relay.start(shape, rate_headers));
    }

    let upstream_body = serde_json::to_value(&body).map_err(|e| XaiError::internal(anyhow::Error::new(e)))?;
    let answer = super::in_own_task(async move {
        let read_usage = |answer: &Value| match parse_usage(&answer["usage"]) {
            Some(usage) => (usage, false),
            None => {
                let usage = TokenUsage {
                    prompt_tokens: prompt_estimate,
                    completion_tokens: estimate_text_completion_tokens(answer),
                    ..TokenUsage::default()
                };
                (usage, true)
            }
        };
        let (mut answer, usage, cost) =
            super::post_and_settle(&state, billing, "/completions", &upstream_body, read_usage).await?;
        answer["model"] = Value::String(route.name.clone());
        answer["usage"] = usage_json(&usage, cost);
        Ok(answer)
    })
    .await?;
    Ok((rate_headers, Json(answer)).into_response())
}
