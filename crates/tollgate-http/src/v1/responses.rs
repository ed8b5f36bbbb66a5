//! The Responses API (`/v1/responses`), xAI's recommended API, served from the upstream's chat
//! completions (the translation is the gateway's, [`tollgate_gateway::responses`]).
//!
//! A response goes through the same admission and settle as a chat completion (the `chat`
//! endpoint ACL, the key's limits, the credit hold, a durable charge before the last byte). With
//! `store` (the default) it is kept, sealed, with its conversation for the retention; a turn
//! naming `previous_response_id` sends that conversation again, billed as prompt, as xAI bills
//! it. A team only ever reads, continues or deletes its own responses.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tollgate_core::{AdmitError, ResponseError, Saved, SearchCall};
use tollgate_domain::{ApiKey, Endpoint, Ticks, TokenUsage};
use tollgate_gateway::responses::{Finished, ResponseBuilder, ResponseHead, ResponsesRequest, usage_json};
use tollgate_gateway::search;
use tollgate_gateway::wire::StreamOptions;

use super::{Billing, StreamShape, admission_refused, answer_and_settle, observer, rate_limit_headers};
use crate::AppState;
use crate::error::XaiError;
use crate::extract::{ApiKeyAuth, RawJson, RequestMeta};

/// Keeps a finished response, with its conversation, when the request asked to store it.
struct Keeper {
    state: AppState,
    key: Arc<ApiKey>,
    id: String,
    model: String,
    store: bool,
    /// The conversation before the answer: the stored one, then this turn's input.
    conversation: Vec<Value>,
}

impl Keeper {
    async fn keep(self, finished: &Finished) -> Result<(), XaiError> {
        if !self.store {
            return Ok(());
        }
        let mut messages = self.conversation;
        messages.push(finished.assistant.clone());
        let saved = Saved {
            response: finished.response.clone(),
            messages,
        };
        self.state
            .responses
            .save(&self.key, &self.id, &self.model, &saved)
            .await
            .map_err(|error| {
                XaiError::unavailable(
                    "The response was produced and charged, but it could not be stored; send it again with \"store\": false or retry",
                    error,
                )
            })
    }
}

/// The Responses API's typed events, made from the upstream's chat chunks.
struct ResponseEvents {
    builder: ResponseBuilder,
    keeper: Keeper,
}

fn bytes(events: Vec<String>) -> Vec<Bytes> {
    events.into_iter().map(Bytes::from).collect()
}

impl StreamShape for ResponseEvents {
    fn opening(&mut self) -> Vec<Bytes> {
        bytes(self.builder.start())
    }

    fn chunk(&mut self, chunk: Option<Value>, _raw: &str, _priced: Option<(TokenUsage, Ticks)>) -> Vec<Bytes> {
        // A payload that is not JSON carries nothing of the answer.
        chunk.map(|chunk| bytes(self.builder.chunk(&chunk))).unwrap_or_default()
    }

    async fn complete(mut self, usage: TokenUsage, cost: Ticks) -> Vec<Bytes> {
        let finished = self.builder.finish(usage_json(&usage, cost));
        let mut events = finished.events.clone();
        match self.keeper.keep(&finished).await {
            Ok(()) => events.push(self.builder.end(&finished.response)),
            Err(error) => {
                tracing::error!(error = %error.body().error, "a streamed response could not be stored");
                events.push(self.builder.fail("server_error", &error.body().error));
            }
        }
        bytes(events)
    }

    fn search(&mut self, call: &SearchCall) -> Vec<Bytes> {
        bytes(
            self.builder
                .server_search(call.tool, &call.query, sources(call).as_deref()),
        )
    }

    fn cite(&mut self, citations: &[String]) {
        self.builder.cite(citations.to_vec());
    }

    fn fail(mut self, message: &str, status: axum::http::StatusCode) -> Bytes {
        Bytes::from(self.builder.fail(crate::code_text(status), message))
    }
}

/// A search's sources (its results' URLs), or `None` when it failed.
fn sources(call: &SearchCall) -> Option<Vec<String>> {
    call.outcome
        .as_ref()
        .ok()
        .map(|hits| hits.iter().map(|hit| hit.url.clone()).collect())
}

fn not_found(id: &str) -> XaiError {
    XaiError::not_found(format!("The response {id} does not exist or has expired."))
}

fn stored_failed(error: ResponseError) -> XaiError {
    match error {
        ResponseError::Store(error) => XaiError::unavailable("Stored responses are unavailable; try again", error),
        ResponseError::Sealed(_) => XaiError::internal(error),
    }
}

/// Stored responses are the `chat` endpoint's: a key without it neither makes nor reads them.
fn require_chat(state: &AppState, key: &ApiKey) -> Result<(), XaiError> {
    if key.acls.allows(Endpoint::Chat) {
        Ok(())
    } else {
        Err(admission_refused(state, AdmitError::EndpointDenied(Endpoint::Chat)))
    }
}

/// Create a response (xAI's recommended API). `input` is a text or items; `previous_response_id`
/// continues a stored conversation (billed again as prompt); `store` (default true) keeps the
/// response for the retention (30 days by default); `stream` sends typed events
/// (`response.created` … `response.completed`).
#[utoipa::path(post, path = "/v1/responses", tag = "inference",
    request_body(content = Object, description = "OpenAI's Responses request: model, input, instructions, previous_response_id, store, stream, max_output_tokens, temperature, top_p, tools (function), tool_choice, text.format, reasoning.effort, metadata, user"),
    responses(
        (status = 200, description = "A response object, or its typed events (SSE) when `stream` is true", body = Object),
        (status = 400, description = "Invalid argument, an unknown `previous_response_id`, or a tool or input not offered here", body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody),
        (status = 422, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody), (status = 502, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn create_response(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    RequestMeta(meta): RequestMeta,
    RawJson(mut body, raw): RawJson<ResponsesRequest>,
) -> Result<Response, XaiError> {
    if key.team_zero_retention {
        // Nothing of a zero-retention team is kept: nothing stored, nothing to continue.
        if body.store == Some(true) {
            return Err(XaiError::invalid_argument(
                "This team has zero data retention: responses cannot be stored (\"store\": true)",
            ));
        }
        if body.previous_response_id.is_some() {
            return Err(XaiError::invalid_argument(
                "This team has zero data retention: no response is stored to continue, so previous_response_id \
                 cannot be used; send the whole conversation as input",
            ));
        }
        body.store = Some(false);
    }
    body.validate().map_err(XaiError::invalid_argument)?;
    require_chat(&state, &key)?;
    // The conversation this turn continues: the team's own stored response, never another's.
    let history = match &body.previous_response_id {
        Some(previous) => {
            state
                .responses
                .load(key.team_id, previous)
                .await
                .map_err(stored_failed)?
                .ok_or_else(|| {
                    XaiError::invalid_argument(format!("Previous response with id '{previous}' not found."))
                })?
                .messages
        }
        None => Vec::new(),
    };
    let turn = body.to_chat(&history).map_err(XaiError::invalid_argument)?;
    let mut chat = turn.request;
    let tools = search::take_server_tools(&mut chat).map_err(XaiError::invalid_argument)?;
    chat.validate().map_err(XaiError::invalid_argument)?;
    search::offer(&mut chat, &tools).map_err(XaiError::invalid_argument)?;
    let request_id = super::request_id(&meta);
    let mut admission = state
        .inference
        .admit_chat(Arc::clone(&key), &chat, &tools, body.is_stream(), request_id)
        .await
        .map_err(|error| admission_refused(&state, error))?;
    admission.keep_request(raw);
    chat.limit_output(admission.output_per_choice());
    let deadline = tokio::time::Instant::from_std(admission.deadline());
    let rate_headers = rate_limit_headers(admission.limits());
    let route = Arc::clone(admission.route());
    let billing = Billing {
        admission,
        state: state.clone(),
    };
    chat.model = route.upstream_model().to_owned();

    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let id = format!("resp_{suffix}");
    let head = ResponseHead::new(
        id.clone(),
        suffix,
        state.clock.now().timestamp(),
        route.name.clone(),
        &body,
    );
    let mut conversation = history;
    conversation.extend(turn.input);
    let keeper = Keeper {
        state: state.clone(),
        key,
        id,
        model: route.name.clone(),
        store: body.is_stored(),
        conversation,
    };

    if body.is_stream() && !tools.is_empty() {
        let shape = ResponseEvents {
            builder: ResponseBuilder::new(head),
            keeper,
        };
        return Ok(super::stream_with_tools(
            billing,
            chat,
            tools,
            deadline,
            shape,
            rate_headers,
        ));
    }

    if body.is_stream() {
        // Ask the upstream for usage, so streaming is never billed by guesswork.
        chat.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
        let (upstream_stream, upstream) = route
            .chat_stream(&chat, observer(&state))
            .await
            .map_err(XaiError::from)?;
        let shape = ResponseEvents {
            builder: ResponseBuilder::new(head),
            keeper,
        };
        // Counted only if the upstream reports no usage.
        let estimate_route = Arc::clone(&route);
        let relay = super::Relay {
            billing,
            upstream: upstream_stream,
            upstream_name: upstream,
            prompt_estimate: Box::new(move || estimate_route.estimate_prompt(&chat)),
            deadline,
        };
        return Ok(relay.start(shape, rate_headers));
    }

    // As for chat: a client that hangs up does not stop the charge, nor the keeping.
    let response = super::in_own_task(async move {
        let answered = answer_and_settle(&state, billing, &chat, &tools).await?;
        let mut builder = ResponseBuilder::new(head);
        for call in &answered.searches {
            let _ = builder.server_search(call.tool, &call.query, sources(call).as_deref());
        }
        builder.cite(tollgate_core::tools::citations(&answered.searches));
        builder.answer(&answered.answer.value());
        let finished = builder.finish(usage_json(&answered.usage, answered.charged.cost));
        keeper.keep(&finished).await?;
        Ok(finished.response)
    })
    .await?;
    Ok((rate_headers, Json(response)).into_response())
}

/// A stored response of the caller's team, as it was answered.
#[utoipa::path(get, path = "/v1/responses/{response_id}", tag = "inference",
    params(("response_id" = String, Path, description = "The response's id (`resp_…`)")),
    responses((status = 200, description = "The response object", body = Object), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn get_response(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    Path(response_id): Path<String>,
) -> Result<Json<Value>, XaiError> {
    require_chat(&state, &key)?;
    let saved = state
        .responses
        .load(key.team_id, &response_id)
        .await
        .map_err(stored_failed)?
        .ok_or_else(|| not_found(&response_id))?;
    Ok(Json(saved.response))
}

/// Deletes a stored response of the caller's team (it can no longer be fetched or continued).
#[utoipa::path(delete, path = "/v1/responses/{response_id}", tag = "inference",
    params(("response_id" = String, Path, description = "The response's id (`resp_…`)")),
    responses((status = 200, description = "`{id, object: \"response\", deleted: true}`", body = Object),
        (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn delete_response(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    Path(response_id): Path<String>,
) -> Result<Json<Value>, XaiError> {
    require_chat(&state, &key)?;
    if !state
        .responses
        .delete(key.team_id, &response_id)
        .await
        .map_err(stored_failed)?
    {
        return Err(not_found(&response_id));
    }
    Ok(Json(json!({"id": response_id, "object": "response", "deleted": true})))
}
