//! The inference surface (`/v1`), wire-compatible with xAI's API so the `openai` and xAI SDKs
//! work unchanged.
//!
//! A chat completion: authenticate the key (from memory), check its ACLs, resolve the model,
//! call the upstream, take usage from the upstream's own report (asked for when streaming),
//! price it exactly, and store the usage durably (group commit) **before** the response's last
//! byte: the JSON body, or `data: [DONE]` when streaming. A client that saw a complete answer
//! has been recorded exactly once; a failed upstream call is not charged.

pub(crate) mod completions;
pub(crate) mod deferred;
pub(crate) mod images;
pub(crate) mod models;
pub(crate) mod responses;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tollgate_core::{Admission, AdmitError, AnswerError, Answered, SearchCall, SettleError};
use tollgate_domain::ratelimit::{LimitDecision, LimitStatus};
use tollgate_domain::{Endpoint, RequestId, Ticks, TokenUsage};
use tollgate_gateway::GatewayError;
use tollgate_gateway::pool::UpstreamEvent;
use tollgate_gateway::raw;
use tollgate_gateway::search::{self, RequestedTool};
use tollgate_gateway::sse::{SseDecoder, SseEvent};
use tollgate_gateway::usage::{Demand, parse_usage, usage_json, usage_json_text};
use tollgate_gateway::wire::{ChatCompletionRequest, StreamOptions};

use crate::AppState;
use crate::error::XaiError;
use crate::extract::{ApiKeyAuth, RawJson, RequestMeta, XaiJson};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/responses", post(responses::create_response))
        .route(
            "/v1/responses/{response_id}",
            get(responses::get_response).delete(responses::delete_response),
        )
        .route("/v1/chat/completions", post(create_chat_completion))
        .route("/v1/completions", post(completions::create_completion))
        .route(
            "/v1/chat/deferred-completion/{request_id}",
            get(deferred::get_deferred_completion),
        )
        .route("/v1/embeddings", post(create_embeddings))
        .route("/v1/images/generations", post(images::create_image))
        .route("/v1/tokenize-text", post(tokenize_text))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{model_id}", get(models::get_model))
        .route("/v1/language-models", get(models::list_language_models))
        .route("/v1/language-models/{model_id}", get(models::get_language_model))
        .route("/v1/embedding-models", get(models::list_embedding_models))
        .route("/v1/embedding-models/{model_id}", get(models::get_embedding_model))
        .route("/v1/image-generation-models", get(models::list_image_generation_models))
        .route(
            "/v1/image-generation-models/{model_id}",
            get(models::get_image_generation_model),
        )
        .route("/v1/api-key", get(get_api_key))
}

/// A request admitted by the inference service, and what its surface adds: the metrics.
struct Billing {
    state: AppState,
    admission: Admission,
}

impl Billing {
    /// Whether what the client is answered is kept with its request (bodies retained, and its
    /// team not on zero retention).
    fn keeps_bodies(&self) -> bool {
        self.state.inference.retains_bodies() && self.admission.keeps_bodies()
    }

    /// Settles through the inference service; resolves once the record is durable. `response`
    /// is the answer, whole as the upstream gave it or a stream's events as sent (kept with the request when bodies are retained).
    async fn settle(self, usage: TokenUsage, estimated: bool, response: &[u8]) -> Result<Ticks, XaiError> {
        let model = self.admission.route().name.clone();
        let charged = self
            .state
            .inference
            .settle(self.admission, usage, estimated, response)
            .await
            .map_err(settle_failed)?;
        self.state.metrics.charged(&model, &usage, charged);
        Ok(charged.cost)
    }
}

/// A request that could not be settled: not charged, and not reported complete.
fn settle_failed(error: SettleError) -> XaiError {
    match error {
        SettleError::CostOverflow(_) => XaiError::internal(anyhow::Error::new(error)),
        SettleError::Record(error) => {
            XaiError::unavailable("The request could not be recorded; it was not charged", error)
        }
    }
}

/// Create a chat completion.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "inference",
    request_body = crate::openapi::ChatCompletionRequestDoc,
    responses(
        (status = 200, description = "A chat completion, or an SSE stream of chunks when `stream` is true", body = crate::openapi::ChatCompletionDoc),
        (status = 400, description = "Invalid argument or incorrect API key", body = crate::ErrorBody),
        (status = 401, description = "No API key", body = crate::ErrorBody),
        (status = 403, description = "The key may not use this endpoint or model", body = crate::ErrorBody),
        (status = 404, description = "Unknown model", body = crate::ErrorBody),
        (status = 422, description = "A field has the wrong type", body = crate::ErrorBody),
        (status = 429, description = "A limit of the key is reached, or the team's credit and spending limit do not cover the request", body = crate::ErrorBody),
        (status = 502, description = "The model server failed", body = crate::ErrorBody),
        (status = 503, description = "The model server is unavailable", body = crate::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub(crate) async fn create_chat_completion(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    RequestMeta(meta): RequestMeta,
    RawJson(mut body, raw): RawJson<ChatCompletionRequest>,
) -> Result<Response, XaiError> {
    // Server-side tools come out of `tools` and are offered to the model as functions.
    let tools = search::take_server_tools(&mut body).map_err(XaiError::invalid_argument)?;
    body.validate().map_err(XaiError::invalid_argument)?;
    search::offer(&mut body, &tools).map_err(XaiError::invalid_argument)?;
    let deferred = deferred::asked(&mut body)?;
    // A deferred request's id is what its result is fetched by: always a fresh one.
    let request_id = if deferred { RequestId::new() } else { request_id(&meta) };
    let mut admission = state
        .inference
        .admit_chat(Arc::clone(&key), &body, &tools, body.is_stream(), request_id)
        .await
        .map_err(|error| admission_refused(&state, error))?;
    admission.keep_request(raw);
    // The upstream is held to the budget the credit hold assumed, and to the deadline.
    body.limit_output(admission.output_per_choice());
    let deadline = tokio::time::Instant::from_std(admission.deadline());
    let rate_headers = rate_limit_headers(admission.limits());
    let route = std::sync::Arc::clone(admission.route());
    let billing = Billing {
        admission,
        state: state.clone(),
    };
    body.model = route.upstream_model().to_owned();

    if deferred {
        let id = request_id.to_string();
        deferred::run(state, key, billing, body, tools, id.clone()).await?;
        return Ok((rate_headers, Json(json!({"request_id": id}))).into_response());
    }

    if body.is_stream() && !tools.is_empty() {
        let shape = Chunks::new(&route.name);
        return Ok(stream_with_tools(billing, body, tools, deadline, shape, rate_headers));
    }

    if body.is_stream() {
        // Ask the upstream for usage, so streaming is never billed by guesswork.
        body.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
        let (upstream_stream, upstream) = route
            .chat_stream(&body, observer(&state))
            .await
            .map_err(XaiError::from)?;
        let shape = Chunks::new(&route.name);
        // Counted only if the upstream reports no usage.
        let estimate_route = Arc::clone(&route);
        let relay = Relay {
            billing,
            upstream: upstream_stream,
            upstream_name: upstream,
            prompt_estimate: Box::new(move || estimate_route.estimate_prompt(&body)),
            deadline,
        };
        return Ok(relay.start(shape, rate_headers));
    }

    let answer = in_own_task(async move {
        let answered = answer_and_settle(&state, billing, &body, &tools).await?;
        Ok(answered.into_chat_json(&route.name))
    })
    .await?;
    Ok((
        rate_headers,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        answer,
    )
        .into_response())
}

/// Runs `work` (an upstream call and its settle) in a task of its own: a client that hangs up
/// drops its handler, but what the upstream produced is still charged.
async fn in_own_task<T: Send + 'static>(
    work: impl Future<Output = Result<T, XaiError>> + Send + 'static,
) -> Result<T, XaiError> {
    // Boxed first: the task's cell then takes a pointer, not a copy of the whole (large) future.
    tokio::spawn(Box::pin(work))
        .await
        .map_err(|e| XaiError::internal(anyhow::anyhow!("the request's task failed: {e}")))?
}

/// Posts `body` to another of the upstream's endpoints and settles it with what `read_usage`
/// finds in the answer (core's [`Inference::post`]), with the metrics: the answer, its usage and
/// cost.
///
/// [`Inference::post`]: tollgate_core::Inference::post
async fn post_and_settle(
    state: &AppState,
    billing: Billing,
    path: &str,
    body: &Value,
    read_usage: impl FnOnce(&Value) -> (TokenUsage, bool),
) -> Result<(Value, TokenUsage, Ticks), XaiError> {
    let model = billing.admission.route().name.clone();
    let posted = state
        .inference
        .post(billing.admission, path, body, &observer(state), read_usage)
        .await
        .map_err(|error| match error {
            AnswerError::Upstream { error, .. } => XaiError::from(error),
            AnswerError::Settle(error) => settle_failed(error),
        })?;
    state.metrics.charged(&model, &posted.usage, posted.charged);
    Ok((posted.answer, posted.usage, posted.charged.cost))
}

/// Answers a chat request whole and settles it through the inference service (the tool loop
/// first with server-side `tools`), with the metrics: what core's [`Inference::answer`] gives,
/// or the error to answer with.
///
/// [`Inference::answer`]: tollgate_core::Inference::answer
async fn answer_and_settle(
    state: &AppState,
    billing: Billing,
    body: &ChatCompletionRequest,
    tools: &[RequestedTool],
) -> Result<Answered, XaiError> {
    let model = billing.admission.route().name.clone();
    let answered = state
        .inference
        .answer(billing.admission, body.clone(), tools, &observer(state), &|call| {
            state.metrics.search(call);
        })
        .await;
    match answered {
        Ok(answered) => {
            state.metrics.charged(&model, &answered.usage, answered.charged);
            Ok(answered)
        }
        Err(AnswerError::Upstream { error, settled }) => {
            if let Some((usage, charged)) = settled {
                state.metrics.charged(&model, &usage, charged);
            }
            Err(XaiError::from(error))
        }
        Err(AnswerError::Settle(error)) => Err(settle_failed(error)),
    }
}

/// Runs the tool loop of a streamed request from a task of its own: what the model writes is
/// relayed as it comes, each search shown as it finishes (`shape`'s [`StreamShape::search`]),
/// and the answer settled before its last event.
fn stream_with_tools<S: StreamShape>(
    billing: Billing,
    body: ChatCompletionRequest,
    tools: Vec<RequestedTool>,
    deadline: tokio::time::Instant,
    shape: S,
    headers: HeaderMap,
) -> Response {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let state = billing.state.clone();
        let route = Arc::clone(billing.admission.route());
        let mut sink = ToolStream {
            metrics: Arc::clone(&state.metrics),
            keep: billing.keeps_bodies(),
            shape,
            sender,
            sent: Vec::new(),
            client_gone: false,
            citations: Vec::new(),
        };
        let opening = sink.shape.opening();
        sink.send(opening).await;
        let observe = observer(&state);
        let run = state
            .inference
            .tools()
            .run_streamed(&route, body, &tools, deadline.into_std(), &observe, &mut sink)
            .await;
        let ToolStream {
            mut shape,
            sender,
            mut sent,
            mut client_gone,
            ..
        } = sink;
        if let Err(error) = run.answer {
            let failure = XaiError::from(error);
            if run.usage != TokenUsage::default() {
                let _ = billing.settle(run.usage, run.estimated, &sent).await;
            }
            if !client_gone {
                let _ = sender
                    .send(Ok(shape.fail(&failure.body().error, failure.status())))
                    .await;
            }
            return;
        }
        // The usage, priced, as the stream's last chunk before the end.
        let cost = billing.admission.pricing().cost(&run.usage).unwrap_or_default();
        let report = json!({"object": "chat.completion.chunk", "model": route.name, "choices": []});
        let raw = report.to_string();
        for out in shape.chunk(Some(report), &raw, Some((run.usage, cost))) {
            if billing.keeps_bodies() && sent.len() <= tollgate_core::retention::MAX_KEPT_BYTES {
                sent.extend_from_slice(&out);
            }
            client_gone = client_gone || sender.send(Ok(out)).await.is_err();
        }
        let settled = billing.settle(run.usage, run.estimated, &sent).await;
        if client_gone {
            return;
        }
        let end = match settled {
            Ok(cost) => shape.complete(run.usage, cost).await,
            Err(error) => vec![shape.fail(&error.body().error, error.status())],
        };
        for bytes in end {
            if sender.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    sse_response(receiver, headers)
}

/// Where a streamed tool loop's chunks and searches go: shaped, kept (bounded) when bodies are
/// retained, and sent while the client listens.
struct ToolStream<S> {
    metrics: Arc<crate::metrics::Metrics>,
    keep: bool,
    shape: S,
    sender: mpsc::Sender<Result<Bytes, Infallible>>,
    sent: Vec<u8>,
    client_gone: bool,
    citations: Vec<String>,
}

impl<S: StreamShape> ToolStream<S> {
    async fn send(&mut self, bytes: Vec<Bytes>) {
        for out in bytes {
            if self.keep && self.sent.len() <= tollgate_core::retention::MAX_KEPT_BYTES {
                self.sent.extend_from_slice(&out);
            }
            if !self.client_gone && self.sender.send(Ok(out)).await.is_err() {
                // Gone: the loop still finishes, and is charged.
                self.client_gone = true;
            }
        }
    }
}

impl<S: StreamShape> tollgate_core::tools::ToolSink for ToolStream<S> {
    async fn chunk(&mut self, mut chunk: Value) {
        // The answer's last chunk carries the citations.
        if !chunk["choices"][0]["finish_reason"].is_null() && !self.citations.is_empty() {
            chunk["citations"] = json!(self.citations);
            self.shape.cite(&self.citations);
        }
        let raw = chunk.to_string();
        let out = self.shape.chunk(Some(chunk), &raw, None);
        self.send(out).await;
    }

    async fn search(&mut self, call: &SearchCall) {
        self.metrics.search(call);
        for hit in call.outcome.iter().flatten() {
            if !self.citations.contains(&hit.url) {
                self.citations.push(hit.url.clone());
            }
        }
        let out = self.shape.search(call);
        self.send(out).await;
    }
}

/// `POST /v1/embeddings` body: OpenAI's. `model` and `input` are read; every other field goes to
/// the upstream untouched.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct EmbeddingsRequest {
    /// The model (name or alias).
    model: String,
    /// A text, a list of texts, or token arrays.
    #[schema(value_type = Object)]
    input: Value,
    /// Everything else (`encoding_format`, `dimensions`, `user`, …).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    extra: serde_json::Map<String, Value>,
}

/// Create embeddings, priced per input token at the model's prompt price. The model's upstream
/// must serve embeddings (`endpoints` in its configuration), else 400.
#[utoipa::path(post, path = "/v1/embeddings", tag = "inference", request_body = EmbeddingsRequest,
    responses((status = 200, description = "OpenAI's embeddings list, with `usage.cost_in_usd_ticks`", body = Object),
        (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody), (status = 502, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn create_embeddings(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    RequestMeta(meta): RequestMeta,
    RawJson(body, raw): RawJson<EmbeddingsRequest>,
) -> Result<Response, XaiError> {
    let empty = match &body.input {
        Value::String(text) => text.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => return Err(XaiError::invalid_argument("input must be a string or an array")),
    };
    if empty {
        return Err(XaiError::invalid_argument("input must not be empty"));
    }
    let demand = Demand::of_embeddings(&body.input);
    // Without upstream usage: about four bytes a token, as for chat.
    let estimate = demand.prompt_tokens.div_ceil(4);
    let mut admission = state
        .inference
        .admit(key, Endpoint::Embeddings, &body.model, demand, false, request_id(&meta))
        .await
        .map_err(|error| admission_refused(&state, error))?;
    admission.keep_request(raw);
    let rate_headers = rate_limit_headers(admission.limits());
    let route = std::sync::Arc::clone(admission.route());
    let billing = Billing {
        admission,
        state: state.clone(),
    };
    let mut upstream_body = body.extra;
    upstream_body.insert("model".into(), Value::String(route.upstream_model().to_owned()));
    upstream_body.insert("input".into(), body.input);
    let upstream_body = Value::Object(upstream_body);
    let answer = in_own_task(async move {
        let read_usage = |answer: &Value| {
            let reported = answer["usage"]["prompt_tokens"].as_u64();
            let usage = TokenUsage {
                prompt_tokens: reported.unwrap_or(estimate),
                ..TokenUsage::default()
            };
            (usage, reported.is_none())
        };
        let (mut answer, usage, cost) =
            post_and_settle(&state, billing, "/embeddings", &upstream_body, read_usage).await?;
        answer["model"] = Value::String(route.name.clone());
        answer["usage"] = json!({
            "prompt_tokens": usage.prompt_tokens,
            "total_tokens": usage.prompt_tokens,
            "cost_in_usd_ticks": cost.get(),
        });
        Ok(answer)
    })
    .await?;
    Ok((rate_headers, Json(answer)).into_response())
}

/// `POST /v1/tokenize-text` body (xAI's).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    /// The text.
    text: String,
    /// The model whose tokenizer counts (name or alias).
    model: String,
    /// An end-user id (accepted as xAI does; not used).
    #[serde(default, rename = "user")]
    _user: Option<String>,
}

/// One token (xAI's shape).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenView {
    token_id: u32,
    /// The token's bytes as text (lossy where a token is part of a character).
    string_token: String,
    token_bytes: Vec<u8>,
}

/// `POST /v1/tokenize-text` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenizeView {
    token_ids: Vec<TokenView>,
}

/// The most text one request may tokenize, in bytes.
const MAX_TOKENIZE_BYTES: usize = 1 << 20;

/// Tokenize text with the model's tokenizer (not charged; the key's endpoint ACL `tokenize`,
/// model ACLs and request limits apply). Inference adds a chat template's tokens, so a request is
/// billed for more than this counts.
#[utoipa::path(post, path = "/v1/tokenize-text", tag = "inference", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn tokenize_text(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    XaiJson(body): XaiJson<TokenizeRequest>,
) -> Result<Json<TokenizeView>, XaiError> {
    if body.text.len() > MAX_TOKENIZE_BYTES {
        return Err(XaiError::invalid_argument(format!(
            "text may be at most {MAX_TOKENIZE_BYTES} bytes"
        )));
    }
    let (_, tokenizer) = state
        .inference
        .authorize_tokenize(&key, &body.model)
        .await
        .map_err(|error| admission_refused(&state, error))?;
    let tokens = tokio::task::spawn_blocking(move || tokenizer.tokenize(&body.text))
        .await
        .map_err(|e| XaiError::internal(anyhow::anyhow!("tokenizing failed: {e}")))?;
    Ok(Json(TokenizeView {
        token_ids: tokens
            .into_iter()
            .map(|token| TokenView {
                token_id: token.id,
                string_token: String::from_utf8_lossy(&token.bytes).into_owned(),
                token_bytes: token.bytes,
            })
            .collect(),
    }))
}

/// Seconds, as `x-ratelimit-reset-*` carries them (`"1.5s"`, like OpenAI's `"1s"`).
fn reset_text(microseconds: i64) -> String {
    let millis = (microseconds + 999) / 1000;
    format!("{}.{:03}s", millis / 1000, millis % 1000)
}

/// The `x-ratelimit-*` headers for a key's limits as they stood.
fn rate_limit_headers(decision: Option<&LimitDecision>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(decision) = decision else {
        return headers;
    };
    let mut put = |suffix: &str, status: Option<LimitStatus>| {
        if let Some(status) = status {
            for (name, value) in [
                (format!("x-ratelimit-limit-{suffix}"), status.limit.to_string()),
                (format!("x-ratelimit-remaining-{suffix}"), status.remaining.to_string()),
                (format!("x-ratelimit-reset-{suffix}"), reset_text(status.reset_after_us)),
            ] {
                if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    headers.insert(name, value);
                }
            }
        }
    };
    put("requests", decision.requests_per_minute);
    put("requests-second", decision.requests_per_second);
    put("tokens", decision.tokens_per_minute);
    headers
}

/// A refused admission in xAI's shape: 404 for an unknown model, 403 for an ACL, and a 429 with
/// `retry-after` and the `x-ratelimit-*` headers for a limit.
fn admission_refused(state: &AppState, error: AdmitError) -> XaiError {
    state.metrics.refused(&error);
    let message = error.client_message();
    match error {
        AdmitError::UnknownModel(_) => XaiError::not_found(message),
        AdmitError::NotServed { .. }
        | AdmitError::NoTokenizer(_)
        | AdmitError::ToolNotOffered(_)
        | AdmitError::ToolNotForModel { .. } => XaiError::invalid_argument(message),
        AdmitError::EndpointDenied(_)
        | AdmitError::ModelDenied(_)
        | AdmitError::Unpriced(_)
        | AdmitError::TeamBlocked { .. }
        | AdmitError::TeamBlockedByOperator { .. } => XaiError::permission_denied(message),
        AdmitError::OutOfCredit(_) => XaiError::new(StatusCode::TOO_MANY_REQUESTS, message),
        AdmitError::Unavailable(source) => XaiError::unavailable(message, source),
        AdmitError::RateLimited { kind, decision, .. } => {
            let mut headers = rate_limit_headers(Some(&decision));
            let reset_us = decision.status(kind).map_or(1_000_000, |status| status.reset_after_us);
            let retry_after = ((reset_us + 999_999) / 1_000_000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            XaiError::new(StatusCode::TOO_MANY_REQUESTS, message).with_headers(headers)
        }
    }
}

/// Hears of every failed upstream call and every ejection, for the metrics.
fn observer(state: &AppState) -> impl Fn(UpstreamEvent<'_>) + '_ {
    move |event| state.metrics.upstream_event(&event)
}

/// The request's id: the client's `x-request-id` when it is a UUID, else a new one.
fn request_id(meta: &tollgate_domain::RequestContext) -> RequestId {
    meta.request_id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .unwrap_or_default()
}

/// An admitted request's upstream stream, and what relaying it needs.
struct Relay {
    billing: Billing,
    upstream: tollgate_gateway::catalog::UpstreamStream,
    upstream_name: String,
    /// The prompt's tokens, counted only if the upstream reports no usage.
    prompt_estimate: Box<dyn FnOnce() -> u64 + Send>,
    deadline: tokio::time::Instant,
}

impl Relay {
    /// Relays the stream to the client from a task of its own, shaped by `shape` and settled
    /// before its last event: the streamed answer, with `headers`.
    fn start<S: StreamShape>(self, shape: S, headers: HeaderMap) -> Response {
        let (sender, receiver) = mpsc::channel::<Result<Bytes, Infallible>>(64);
        tokio::spawn(relay_stream(self, sender, shape));
        sse_response(receiver, headers)
    }
}

/// A streamed answer: what `receiver` yields, as server-sent events, with `headers`.
fn sse_response(receiver: mpsc::Receiver<Result<Bytes, Infallible>>, headers: HeaderMap) -> Response {
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut response = Response::new(Body::from_stream(stream));
    let out = response.headers_mut();
    out.extend(headers);
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn sse_data(payload: &str) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

fn sse_error(message: &str, status: StatusCode) -> Bytes {
    let body = json!({"error": {"message": message, "code": crate::code_text(status)}});
    sse_data(&body.to_string())
}

/// How a relayed stream looks to the client: chat chunks as they come (chat completions), or
/// another API's events made from them (the Responses API).
pub(super) trait StreamShape: Send + 'static {
    /// What is sent before the upstream's first chunk.
    fn opening(&mut self) -> Vec<Bytes>;
    /// One upstream chunk (`None` when it is not JSON: `raw` is relayed as it is), with its usage
    /// report, priced, when it has one.
    fn chunk(&mut self, chunk: Option<Value>, raw: &str, priced: Option<(TokenUsage, Ticks)>) -> Vec<Bytes>;
    /// One upstream chunk that is a JSON object, read in place (`read`, over `raw`) rather
    /// than parsed into a tree: a shape that only relays the chunk splices it. By default it
    /// is parsed and shaped as [`Self::chunk`] does.
    fn relay(&mut self, raw: &str, _read: &raw::Chunk<'_>, priced: Option<(TokenUsage, Ticks)>) -> Vec<Bytes> {
        self.chunk(serde_json::from_str(raw).ok(), raw, priced)
    }
    /// A search the platform ran for the model (a server-side tool), shown as it finishes.
    fn search(&mut self, call: &SearchCall) -> Vec<Bytes>;
    /// The URLs the answer draws on, before its last chunk.
    fn cite(&mut self, _citations: &[String]) {}
    /// The end of a stream that was produced in full and settled.
    fn complete(self, usage: TokenUsage, cost: Ticks) -> impl Future<Output = Vec<Bytes>> + Send;
    /// The end of a stream that failed (`status` says how).
    fn fail(self, message: &str, status: StatusCode) -> Bytes;
}

/// OpenAI's chunks (chat or text completions) as they come, with the public model name and each
/// usage report's cost.
struct Chunks {
    model: String,
    /// `model` as a JSON string, written once per stream for [`StreamShape::relay`].
    model_json: String,
}

impl Chunks {
    fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            model_json: serde_json::to_string(model).unwrap_or_else(|_| "\"\"".to_owned()),
        }
    }
}

impl StreamShape for Chunks {
    fn opening(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    fn chunk(&mut self, chunk: Option<Value>, raw: &str, priced: Option<(TokenUsage, Ticks)>) -> Vec<Bytes> {
        let Some(mut chunk) = chunk.filter(Value::is_object) else {
            // Not a JSON object: relay untouched, it is the client's business.
            return vec![sse_data(raw)];
        };
        if let Some((usage, cost)) = priced {
            // Usage is cumulative; the last report is the bill. Show its cost as we go.
            chunk["usage"] = usage_json(&usage, cost);
        }
        if chunk.get("model").is_some() {
            chunk["model"] = Value::String(self.model.clone());
        }
        vec![sse_data(&chunk.to_string())]
    }

    /// The chunk as the upstream wrote it, but for the public model name and the priced usage,
    /// spliced in: nothing else is parsed or printed again.
    fn relay(&mut self, _raw: &str, read: &raw::Chunk<'_>, priced: Option<(TokenUsage, Ticks)>) -> Vec<Bytes> {
        let usage = priced.map(|(usage, cost)| usage_json_text(&usage, cost));
        let mut frame = String::with_capacity(read.len() + usage.as_ref().map_or(0, String::len) + 32);
        frame.push_str("data: ");
        read.splice_into(&mut frame, Some(&self.model_json), usage.as_deref());
        frame.push_str("\n\n");
        vec![Bytes::from(frame)]
    }

    /// A search as a chunk of one tool call whose `type` names the server-side tool (not
    /// `function`: the client does not run it), its query as the arguments, and its outcome.
    fn search(&mut self, call: &SearchCall) -> Vec<Bytes> {
        let arguments = json!({"query": call.query}).to_string();
        let mut tool_call = json!({"index": 0, "id": call.call_id, "type": call.tool.as_str(),
            "function": {"name": call.tool.as_str(), "arguments": arguments}});
        match &call.outcome {
            Ok(hits) => {
                tool_call["status"] = json!("completed");
                tool_call["sources"] = json!(hits.iter().map(|hit| hit.url.as_str()).collect::<Vec<_>>());
            }
            Err(_) => tool_call["status"] = json!("failed"),
        }
        let chunk = json!({"object": "chat.completion.chunk", "model": self.model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [tool_call]}, "finish_reason": null}]});
        vec![sse_data(&chunk.to_string())]
    }

    async fn complete(self, _usage: TokenUsage, _cost: Ticks) -> Vec<Bytes> {
        vec![Bytes::from_static(b"data: [DONE]\n\n")]
    }

    fn fail(self, message: &str, status: StatusCode) -> Bytes {
        sse_error(message, status)
    }
}

/// Relays the upstream's SSE stream chunk by chunk as it arrives, shaped by `shape`, and settles
/// the bill before the stream's last event.
async fn relay_stream<S: StreamShape>(relay: Relay, sender: mpsc::Sender<Result<Bytes, Infallible>>, mut shape: S) {
    let Relay {
        billing,
        upstream,
        upstream_name,
        prompt_estimate,
        deadline,
    } = relay;
    let mut upstream = Box::pin(upstream);
    let mut decoder = SseDecoder::default();
    let mut last_usage: Option<TokenUsage> = None;
    let mut completion_chars: u64 = 0;
    let mut client_gone = false;
    let mut upstream_error: Option<GatewayError> = None;
    let mut finished = false;
    let mut cut_off = false;
    // What the client was sent, kept with the request when bodies are retained (bounded).
    let keep = billing.keeps_bodies();
    let mut sent: Vec<u8> = Vec::new();

    for bytes in shape.opening() {
        if sender.send(Ok(bytes)).await.is_err() {
            return;
        }
    }
    loop {
        // Past the deadline the request is cut off (its credit lease is guaranteed no longer)
        // and charged for what it produced.
        // A client that hangs up while the upstream is silent is noticed at once: dropping the
        // upstream stream cancels the upstream call, and what it produced so far is charged.
        let next = tokio::select! {
            () = sender.closed() => {
                client_gone = true;
                break;
            }
            next = tokio::time::timeout_at(deadline, upstream.next()) => next,
        };
        let Ok(next) = next else {
            upstream_error = Some(GatewayError::Timeout);
            cut_off = true;
            break;
        };
        let Some(item) = next else { break };
        let bytes = match item {
            Ok(bytes) => bytes,
            Err(error) => {
                upstream_error = Some(error);
                break;
            }
        };
        // What one read of the upstream brought goes to the client in one write: the events
        // arrived together, so nothing waits, and the client's socket is written once, not
        // once per event.
        let mut frame: Vec<u8> = Vec::new();
        for event in decoder.push(&bytes) {
            let payload = match event {
                Ok(SseEvent::Data(payload)) => payload,
                Ok(SseEvent::Done) => {
                    finished = true;
                    break;
                }
                Err(error) => {
                    upstream_error = Some(GatewayError::InvalidResponse(error.to_string()));
                    break;
                }
            };
            let price = |usage: TokenUsage| (usage, billing.admission.pricing().cost(&usage).unwrap_or_default());
            // Nearly every chunk is an object read in place; anything else takes the general
            // path, parsed whole.
            let shaped = if let Some(read) = raw::Chunk::parse(&payload) {
                completion_chars = completion_chars.saturating_add(read.generated_chars());
                let usage = read.usage();
                last_usage = usage.or(last_usage);
                shape.relay(&payload, &read, usage.map(price))
            } else {
                let chunk = serde_json::from_str::<Value>(&payload).ok();
                let mut priced = None;
                if let Some(chunk) = &chunk {
                    if let Some(choices) = chunk["choices"].as_array() {
                        for choice in choices {
                            completion_chars += tollgate_gateway::usage::generated_chars(&choice["delta"]);
                            // A text completion's chunk carries its text outside any delta.
                            completion_chars += choice["text"].as_str().map_or(0, |text| text.chars().count() as u64);
                        }
                    }
                    if let Some(usage) = parse_usage(&chunk["usage"]) {
                        last_usage = Some(usage);
                        priced = Some(price(usage));
                    }
                }
                shape.chunk(chunk, &payload, priced)
            };
            for out in shaped {
                if keep && sent.len() <= tollgate_core::retention::MAX_KEPT_BYTES {
                    sent.extend_from_slice(&out);
                }
                frame.extend_from_slice(&out);
            }
        }
        if !frame.is_empty() && sender.send(Ok(Bytes::from(frame))).await.is_err() {
            client_gone = true;
            break;
        }
        if finished || upstream_error.is_some() {
            break;
        }
    }
    // Done with the upstream: closing its connection now cancels a call still generating.
    drop(upstream);
    // A stream that ends without `[DONE]` was cut short (a crashed model server, a proxy
    // timeout): the client must not be told the answer is complete.
    if !finished && !client_gone && upstream_error.is_none() && decoder.finish() != Some(SseEvent::Done) {
        upstream_error = Some(GatewayError::InvalidResponse("the stream ended without [DONE]".into()));
    }
    if let Some(error) = &upstream_error {
        billing.state.metrics.upstream_error(&upstream_name, "stream");
        tracing::warn!(error = %error, "upstream stream failed");
    }

    // Bill what the upstream reported. Without a report, count the relayed text and say so.
    let (usage, estimated) = match last_usage {
        Some(usage) => (usage, false),
        None => (
            TokenUsage {
                prompt_tokens: prompt_estimate(),
                completion_tokens: completion_chars.div_ceil(4),
                ..TokenUsage::default()
            },
            true,
        ),
    };
    let nothing_delivered = upstream_error.is_some() && last_usage.is_none() && completion_chars == 0;
    if nothing_delivered {
        // A failed upstream call is not charged.
        let _ = sender
            .send(Ok(
                shape.fail("The model server failed while streaming", StatusCode::BAD_GATEWAY)
            ))
            .await;
        return;
    }
    // Settling and the last events are boxed: inline, their futures would more than treble
    // the relay task's size (about 6 KiB against 1.6), which every open stream holds.
    let settled = Box::pin(billing.settle(usage, estimated, &sent)).await;
    if client_gone {
        return;
    }
    let last = match (settled, upstream_error) {
        (Ok(cost), None) => Box::pin(shape.complete(usage, cost)).await,
        (Ok(_), Some(_)) if cut_off => vec![shape.fail(
            "The request ran longer than this server allows and was cut off; what was produced is charged",
            StatusCode::GATEWAY_TIMEOUT,
        )],
        (Ok(_), Some(_)) => vec![shape.fail("The model server failed while streaming", StatusCode::BAD_GATEWAY)],
        (Err(error), _) => vec![shape.fail(&error.body().error, error.status())],
    };
    for bytes in last {
        if sender.send(Ok(bytes)).await.is_err() {
            return;
        }
    }
}

/// `GET /v1/api-key` answer: exactly xAI's fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ApiKeyInfoView {
    redacted_api_key: String,
    user_id: String,
    name: String,
    create_time: String,
    modify_time: String,
    modified_by: String,
    team_id: String,
    acls: Vec<String>,
    api_key_id: String,
    team_blocked: bool,
    api_key_blocked: bool,
    api_key_disabled: bool,
}

/// Information about the calling key.
#[utoipa::path(get, path = "/v1/api-key", tag = "inference",
    responses((status = 200, body = ApiKeyInfoView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn get_api_key(ApiKeyAuth(key): ApiKeyAuth) -> Json<ApiKeyInfoView> {
    let user = |id: Option<tollgate_domain::UserId>| id.map(|id| id.to_string()).unwrap_or_default();
    Json(ApiKeyInfoView {
        redacted_api_key: key.redacted.clone(),
        user_id: user(key.created_by),
        name: key.name.clone(),
        create_time: crate::management::rfc3339(key.created_at),
        modify_time: crate::management::rfc3339(key.modified_at),
        modified_by: user(key.modified_by),
        team_id: key.team_id.to_string(),
        acls: key.acls.as_slice().iter().map(ToString::to_string).collect(),
        api_key_id: key.id.to_string(),
        team_blocked: key.team_blocked_by.is_some(),
        api_key_blocked: key.blocked,
        api_key_disabled: key.disabled,
    })
}
