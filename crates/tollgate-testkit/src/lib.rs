//! A small OpenAI-compatible upstream for tests and benchmarks: an axum server on a free
//! loopback port answering `POST /v1/chat/completions`, streaming and not, with usage. Tests can
//! make it fail, omit usage, or hold a stream after its first chunk until released (to prove
//! that a relay forwards chunks as they arrive).
//!
//! This is the test double for the model server, which is outside Tollgate. The others: in
//! [`checkout`], Stripe's hosted Checkout pages, which no installable server speaks; in
//! [`search`], the search services Tollgate's server-side tools call (SearXNG's JSON API, Brave's
//! and X's, which are remote services not installable here), answering their documented JSON.

pub mod checkout;
pub mod search;

/// A `Stripe-Signature` `v1` value: HMAC-SHA256 of `"{t}.{payload}"` keyed with the secret's
/// bytes, hex.
#[must_use]
pub fn sign_stripe(secret: &str, t: i64, payload: &[u8]) -> String {
    use hmac::Mac as _;
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// The answer's words; streamed one chunk each.
pub const ANSWER_WORDS: [&str; 5] = ["Hello", " from", " the", " mock", " upstream."];
/// Prompt tokens the mock reports.
pub const PROMPT_TOKENS: u64 = 12;
/// Completion tokens the mock reports (one per word).
pub const COMPLETION_TOKENS: u64 = ANSWER_WORDS.len() as u64;
/// Cached prompt tokens the mock reports.
pub const CACHED_TOKENS: u64 = 4;

#[derive(Default)]
struct MockState {
    failure: Mutex<Option<(u16, String)>>,
    omit_usage: AtomicBool,
    cut_streams: AtomicBool,
    requests: Mutex<Vec<Value>>,
    gate: Mutex<Option<Arc<Notify>>>,
    answer_gate: Mutex<Option<Arc<Notify>>>,
    answered: Notify,
    tool_call_arguments: Mutex<Option<String>>,
    reported_usage: Mutex<Option<(u64, u64)>>,
    barrier: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    abandoned_streams: AtomicUsize,
    search_rounds: AtomicUsize,
}

/// A running mock upstream. Stops when dropped.
pub struct MockUpstream {
    /// Base URL to configure, e.g. `http://127.0.0.1:40123/v1`.
    pub base_url: String,
    state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts a mock on `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Self> {
        let state = Arc::new(MockState {
            search_rounds: AtomicUsize::new(1),
            ..MockState::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/images/generations", post(images))
            .route("/v1/models", get(models))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base_url: format!("http://{addr}/v1"),
            state,
            task,
        })
    }

    /// From now on, answer every request with `status` and an OpenAI-style error `message`.
    pub fn fail_with(&self, status: u16, message: &str) {
        *self.state.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some((status, message.to_owned()));
    }

    /// From now on, answer normally.
    pub fn recover(&self) {
        *self.state.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether to leave `usage` out of answers (as some model servers do).
    pub fn omit_usage(&self, omit: bool) {
        self.state.omit_usage.store(omit, Ordering::SeqCst);
    }

    /// Whether to end streams after their first word, without usage or `[DONE]`, as a model
    /// server that crashes mid-answer does.
    pub fn cut_streams(&self, cut: bool) {
        self.state.cut_streams.store(cut, Ordering::SeqCst);
    }

    /// Holds the next stream after its first content chunk until the returned `Notify` is
    /// notified.
    pub fn hold_streams(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        *self.state.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&notify));
        notify
    }

    /// Holds the next non-streaming answer until the returned `Notify` is notified.
    pub fn hold_answers(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        *self.state.answer_gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&notify));
        notify
    }

    /// Holds every non-streaming answer from now on until the returned semaphore is given a
    /// permit (then all pass, one after the other).
    pub fn hold_all_answers(&self) -> Arc<tokio::sync::Semaphore> {
        let barrier = Arc::new(tokio::sync::Semaphore::new(0));
        *self.state.barrier.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&barrier));
        barrier
    }

    /// Resolves when the mock has sent its next non-streaming answer.
    pub async fn answered(&self) {
        self.state.answered.notified().await;
    }

    /// From now on, answer with a call of the tool `lookup` with these arguments (after the
    /// words, when streaming), or, with `None`, with words only.
    pub fn call_tool_with(&self, arguments: Option<String>) {
        *self
            .state
            .tool_call_arguments
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = arguments;
    }

    /// How many times the model asks for a search before it answers, when it is offered the
    /// server-side `web_search`/`x_search` functions (default 1): each time it calls every one
    /// offered, with the last user message as the query. A large number: it never stops asking
    /// while the tools are offered.
    pub fn search_rounds(&self, rounds: usize) {
        self.state.search_rounds.store(rounds, Ordering::SeqCst);
    }

    /// From now on, report this usage (prompt, completion tokens, none cached) whatever the
    /// request (a model that ignores `max_tokens`, or one that uses its whole budget); `None`
    /// returns to the default report.
    pub fn report_usage(&self, usage: Option<(u64, u64)>) {
        *self.state.reported_usage.lock().unwrap_or_else(PoisonError::into_inner) = usage;
    }

    /// How many streams the mock could not finish because the caller had gone away: the
    /// upstream side of a cancelled request.
    pub fn abandoned_streams(&self) -> usize {
        self.state.abandoned_streams.load(Ordering::SeqCst)
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Notes a request; the failure to answer with, if the mock was told to fail.
fn received(state: &MockState, body: &Value) -> Option<Response> {
    state
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(body.clone());
    let (status, message) = state.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some((status, Json(json!({"error": {"message": message}}))).into_response())
}

fn usage(state: &MockState) -> Value {
    if let Some((prompt, completion)) = *state.reported_usage.lock().unwrap_or_else(PoisonError::into_inner) {
        return json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        });
    }
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    })
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}))
}

async fn chat_completions(State(state): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
    state
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(body.clone());
    let failure = state.failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some((status, message)) = failure {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            status,
            Json(json!({"error": {"message": message, "type": "mock_error"}})),
        )
            .into_response();
    }
    let model = body["model"].as_str().unwrap_or("mock-model").to_owned();
    let with_usage = !state.omit_usage.load(Ordering::SeqCst);
    let tool_call = state
        .tool_call_arguments
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .map(|arguments| json!([{"id": "call_mock", "type": "function", "function": {"name": "lookup", "arguments": arguments}}]));
    // Offered server-side searches: ask for them (as a model would) until it has searched
    // enough, then answer.
    let searches: Vec<&str> = body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|tool| tool["function"]["name"].as_str())
                .filter(|name| matches!(*name, "web_search" | "x_search"))
                .collect()
        })
        .unwrap_or_default();
    let rounds_done = body["messages"].as_array().map_or(0, |messages| {
        messages.iter().filter(|m| m["role"] == "tool").count() / searches.len().max(1)
    });
    let searching = !searches.is_empty() && rounds_done < state.search_rounds.load(Ordering::SeqCst);
    let tool_call = if searching {
        let query = body["messages"]
            .as_array()
            .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or("news");
        Some(Value::Array(
            searches
                .iter()
                .enumerate()
                .map(|(index, name)| {
                    json!({"id": format!("call_{name}_{rounds_done}_{index}"), "type": "function",
                        "function": {"name": name, "arguments": json!({"query": query}).to_string()}})
                })
                .collect(),
        ))
    } else {
        tool_call
    };
    if body["stream"].as_bool() != Some(true) {
        let finish = if tool_call.is_some() { "tool_calls" } else { "stop" };
        let message = match &tool_call {
            Some(calls) => json!({"role": "assistant", "content": null, "tool_calls": calls}),
            None => json!({"role": "assistant", "content": ANSWER_WORDS.concat()}),
        };
        let mut answer = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "system_fingerprint": "fp_mock",
        });
        if with_usage {
            answer["usage"] = usage(&state);
        }
        let gate = state.answer_gate.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        let barrier = state.barrier.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(barrier) = barrier {
            // A closed or released barrier lets everyone through.
            let _ = barrier.acquire().await;
        }
        state.answered.notify_one();
        return Json(answer).into_response();
    }

    let include_usage = with_usage && body["stream_options"]["include_usage"].as_bool() == Some(true);
    let gate = state.gate.lock().unwrap_or_else(PoisonError::into_inner).take();
    let cut = state.cut_streams.load(Ordering::SeqCst);
    let (sender, receiver) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let final_usage = usage(&state);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let chunk = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            Bytes::from(format!("data: {chunk}\n\n"))
        };
        let _ = sender
            .send(Ok(chunk(json!({"role": "assistant", "content": ""}), Value::Null)))
            .await;
        // A model asking for a search writes nothing else.
        let words: &[&str] = if searching { &[] } else { &ANSWER_WORDS };
        for (index, word) in words.iter().enumerate() {
            if sender
                .send(Ok(chunk(json!({"content": word}), Value::Null)))
                .await
                .is_err()
            {
                state.abandoned_streams.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if index == 0 && cut {
                return;
            }
            if index == 0 {
                if let Some(gate) = &gate {
                    gate.notified().await;
                }
            }
        }
        let finish = if tool_call.is_some() { "tool_calls" } else { "stop" };
        if let Some(calls) = tool_call {
            let _ = sender.send(Ok(chunk(json!({"tool_calls": calls}), Value::Null))).await;
        }
        let _ = sender.send(Ok(chunk(json!({}), json!(finish)))).await;
        if include_usage {
            let last = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": model, "choices": [], "usage": final_usage});
            let _ = sender.send(Ok(Bytes::from(format!("data: {last}\n\n")))).await;
        }
        let _ = sender.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `POST /v1/completions` (legacy): the answer words as one text per choice (`n`), whole or
/// streamed word by word, with the usual usage (none when told to omit it).
async fn completions(State(state): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
    if let Some(failure) = received(&state, &body) {
        return failure;
    }
    let model = body["model"].as_str().unwrap_or("mock-model").to_owned();
    let with_usage = !state.omit_usage.load(Ordering::SeqCst);
    let choices = body["n"].as_u64().unwrap_or(1);
    if body["stream"].as_bool() != Some(true) {
        let choices: Vec<Value> = (0..choices)
            .map(|index| json!({"text": ANSWER_WORDS.concat(), "index": index, "logprobs": null, "finish_reason": "stop"}))
            .collect();
        let mut answer = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000,
            "model": model, "choices": choices});
        if with_usage {
            answer["usage"] = usage(&state);
        }
        return Json(answer).into_response();
    }
    let include_usage = with_usage && body["stream_options"]["include_usage"].as_bool() == Some(true);
    let final_usage = usage(&state);
    let mut events: Vec<Bytes> = ANSWER_WORDS
        .iter()
        .map(|word| {
            let chunk = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": model,
                "choices": [{"text": word, "index": 0, "logprobs": null, "finish_reason": null}]});
            Bytes::from(format!("data: {chunk}\n\n"))
        })
        .collect();
    if include_usage {
        let last = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": model,
            "choices": [], "usage": final_usage});
        events.push(Bytes::from(format!("data: {last}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A small Hugging Face `tokenizer.json` (word-level, lower-cased, a vocabulary of the mock's
/// words) for tests of configured tokenizers.
pub const TOKENIZER_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/tokenizer.json");

/// Tokens the mock reports per embeddings input.
/// `POST /v1/images/generations`: `n` images (default 1), as URLs or, with
/// `response_format: b64_json`, as a tiny base64 PNG; no usage (image servers report none).
async fn images(State(state): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
    if let Some(failure) = received(&state, &body) {
        return failure;
    }
    let n = body["n"].as_u64().unwrap_or(1);
    let base64 = body["response_format"] == "b64_json";
    let data: Vec<Value> = (0..n)
        .map(|index| {
            if base64 {
                json!({"b64_json": "iVBORw0KGgo=", "revised_prompt": body["prompt"]})
            } else {
                json!({"url": format!("https://images.example/{index}.png"), "revised_prompt": body["prompt"]})
            }
        })
        .collect();
    Json(json!({"created": 1_790_000_000, "data": data})).into_response()
}

pub const EMBEDDING_TOKENS_PER_INPUT: u64 = 8;

/// `POST /v1/embeddings`: one three-dimensional vector per input, [`EMBEDDING_TOKENS_PER_INPUT`]
/// prompt tokens each (no usage when told to omit it).
async fn embeddings(State(state): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
    if let Some(failure) = received(&state, &body) {
        return failure;
    }
    let inputs = match &body["input"] {
        Value::Array(items) if items.iter().all(Value::is_number) => 1,
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|index| json!({"object": "embedding", "index": index, "embedding": [0.25, -0.5, 0.125]}))
        .collect();
    let mut answer = json!({"object": "list", "data": data, "model": body["model"]});
    if !state.omit_usage.load(Ordering::SeqCst) {
        let tokens = inputs as u64 * EMBEDDING_TOKENS_PER_INPUT;
        answer["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    Json(answer).into_response()
}
