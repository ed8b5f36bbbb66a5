//! An OpenAI-compatible upstream (vLLM, SGLang, llama.cpp, Ollama, hosted providers): one pooled
//! keep-alive HTTP client ([`UpstreamClient`]), shared by every model that points at it.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;
use tollgate_domain::TokenUsage;

use http::Method;
use http::header::HeaderValue;

pub use crate::client::UpstreamClient;
use crate::client::{Answer, Target};
use crate::raw::MemberSpans;
use crate::wire::ChatCompletionRequest;

/// What went wrong talking to an upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Could not connect, or the connection broke before an answer.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream answered with an error status.
    #[error("upstream answered {status}: {message}")]
    Status {
        /// Its HTTP status.
        status: u16,
        /// Its error message, if one could be read.
        message: String,
    },
    /// The upstream's answer is not what an OpenAI-compatible server sends.
    #[error("invalid upstream response: {0}")]
    InvalidResponse(String),
    /// Every upstream of the model is serving as many requests as it may.
    #[error("every upstream of the model is at its concurrency limit")]
    AtCapacity,
}

/// A whole chat completion from an upstream: its bytes, and the answer read into a tree unless
/// it is *plain* — a JSON object whose choices call no tools, with a usage report — which is
/// passed on as it came with a member or two spliced in, so nothing needs more of it than its
/// usage.
#[derive(Debug, Clone)]
pub struct WholeChat {
    /// The answer as the upstream sent it.
    pub raw: Bytes,
    read: Read,
}

#[derive(Debug, Clone)]
enum Read {
    Tree(Value),
    /// Its usage, and where its members lie (so splicing it needs no second scan).
    Plain(TokenUsage, MemberSpans),
}

impl WholeChat {
    /// `raw` checked to be a JSON object, and read into a tree unless it is plain.
    pub fn new(raw: Bytes) -> Result<Self, GatewayError> {
        let read = match plain_usage(&raw) {
            Some((usage, spans)) => Read::Plain(usage, spans),
            None => Read::Tree(json_object(&raw)?),
        };
        Ok(Self { raw, read })
    }

    /// A plain answer's usage; `None` when the answer was read into a tree.
    #[must_use]
    pub fn plain_usage(&self) -> Option<TokenUsage> {
        match &self.read {
            Read::Plain(usage, _) => Some(*usage),
            Read::Tree(_) => None,
        }
    }

    /// A plain answer taken apart: its bytes, its usage, and where its members lie in them
    /// ([`crate::raw::RawObject::at_spans`]); the answer back when it is not plain.
    pub fn into_plain(self) -> Result<(Bytes, TokenUsage, MemberSpans), Self> {
        match self.read {
            Read::Plain(usage, spans) => Ok((self.raw, usage, spans)),
            Read::Tree(_) => Err(self),
        }
    }

    /// The answer read into a tree (read now, if it is plain).
    pub fn into_value(self) -> Result<Value, GatewayError> {
        match self.read {
            Read::Tree(value) => Ok(value),
            Read::Plain(..) => json_object(&self.raw),
        }
    }
}

/// The usage of `raw` when it is a plain answer: an object that [`crate::raw::RawObject`] reads
/// (keys as written, nesting well within what a tree reader takes, so one read later by a
/// surface that wants the tree cannot fail) whose `choices` never mention `tool_calls` (nor
/// escape a character, which could spell it), with a usage report; and where its members lie.
fn plain_usage(raw: &[u8]) -> Option<(TokenUsage, MemberSpans)> {
    let text = std::str::from_utf8(raw).ok()?;
    let object = crate::raw::RawObject::parse(text)?;
    if let Some(choices) = object.get("choices") {
        let choices = choices.as_bytes();
        if memchr::memmem::find(choices, b"tool_calls").is_some() || memchr::memmem::find(choices, b"\\u").is_some() {
            return None;
        }
    }
    let usage = crate::usage::parse_usage_text(object.get("usage")?)?;
    Some((usage, object.spans(text)))
}

/// One upstream server.
pub struct Upstream {
    name: String,
    base_url: String,
    chat: Target,
    models: Target,
    /// `Bearer <key>`, made once; `Err` when the configured key cannot be a header value (a
    /// stray newline, say): every call then fails saying so, and nothing is sent.
    bearer: Option<Result<HeaderValue, ()>>,
    client: UpstreamClient,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// A client for calls the gateway makes elsewhere (the search backends): keep-alive pool,
/// TCP_NODELAY, connect and read timeouts.
pub fn http_client(connect_timeout: Duration, request_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    crate::client::reqwest_client(connect_timeout, request_timeout)
}

impl Upstream {
    /// An upstream at `base_url` (e.g. `http://127.0.0.1:8000/v1`).
    #[must_use]
    pub fn new(name: String, base_url: &str, api_key: Option<String>, client: UpstreamClient) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        Self {
            name,
            chat: client.target(&format!("{base_url}/chat/completions")),
            models: client.target(&format!("{base_url}/models")),
            bearer: api_key.map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| ())?;
                value.set_sensitive(true);
                Ok(value)
            }),
            base_url,
            client,
        }
    }

    /// The upstream's configured name (for logs and metrics).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Authorization` value to send, if the upstream has a key.
    fn bearer(&self) -> Result<Option<&HeaderValue>, GatewayError> {
        match &self.bearer {
            None => Ok(None),
            Some(Ok(value)) => Ok(Some(value)),
            Some(Err(())) => Err(GatewayError::Unavailable(format!(
                "the API key configured for upstream {} is not a valid HTTP header value",
                self.name
            ))),
        }
    }

    /// Posts `body` to `target`: the answer, if its status is a success; else its error.
    async fn post(&self, target: &Target, body: Bytes) -> Result<Answer, GatewayError> {
        let answer = self
            .client
            .send(Method::POST, target, self.bearer()?, Some(body), None)
            .await?;
        let status = answer.status;
        if status.is_success() {
            return Ok(answer);
        }
        let text = answer.text().await;
        Err(GatewayError::Status {
            status: status.as_u16(),
            message: error_message(&text),
        })
    }

    async fn send(&self, body: &ChatCompletionRequest) -> Result<Answer, GatewayError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| GatewayError::Unavailable(format!("the request could not be encoded: {e}")))?;
        self.post(&self.chat, body.into()).await
    }

    /// A non-streaming chat completion: the upstream's body, checked to be a JSON object.
    pub async fn chat(&self, body: &ChatCompletionRequest) -> Result<WholeChat, GatewayError> {
        let raw = self.send(body).await?.bytes().await?;
        WholeChat::new(raw)
    }

    /// A JSON request to another of the upstream's endpoints (`path` below its base URL, e.g.
    /// `/embeddings`): the upstream's JSON object.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, GatewayError> {
        let bytes = self.send_json(path, body).await?.bytes().await?;
        json_object(&bytes)
    }

    /// A streaming request to another of the upstream's endpoints (`path` below its base URL,
    /// e.g. `/completions`): the upstream's raw SSE bytes, as they arrive.
    pub async fn post_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<impl Stream<Item = Result<Bytes, GatewayError>> + Send + 'static + use<>, GatewayError> {
        Ok(self.send_json(path, body).await?.stream())
    }

    /// Posts `body` to `path` below the base URL: the answer, if its status is a success.
    async fn send_json(&self, path: &str, body: &Value) -> Result<Answer, GatewayError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| GatewayError::Unavailable(format!("the request could not be encoded: {e}")))?;
        let target = self.client.target(&format!("{}{path}", self.base_url));
        self.post(&target, body.into()).await
    }

    /// Whether the upstream answers: `GET {base_url}/models` (every OpenAI-compatible server
    /// has it) succeeds within `timeout`.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<(), GatewayError> {
        let answer = self
            .client
            .send(Method::GET, &self.models, self.bearer()?, None, Some(timeout))
            .await?;
        let status = answer.status;
        if status.is_success() {
            Ok(())
        } else {
            Err(GatewayError::Status {
                status: status.as_u16(),
                message: format!("the probe got {status}"),
            })
        }
    }

    /// A streaming chat completion: the upstream's raw SSE bytes, as they arrive.
    pub async fn chat_stream(
        &self,
        body: &ChatCompletionRequest,
    ) -> Result<impl Stream<Item = Result<Bytes, GatewayError>> + Send + 'static + use<>, GatewayError> {
        Ok(self.send(body).await?.stream())
    }
}

/// `bytes` as a JSON object, or why they are not one.
fn json_object(bytes: &[u8]) -> Result<Value, GatewayError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| GatewayError::InvalidResponse(e.to_string()))?;
    if !value.is_object() {
        return Err(GatewayError::InvalidResponse("body is not a JSON object".into()));
    }
    Ok(value)
}

/// The message inside an upstream's error body, in the OpenAI (`{"error":{"message"}}`), xAI
/// (`{"error":"…"}`) or plain-text shape.
fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| match &value["error"] {
            Value::String(message) => Some(message.clone()),
            Value::Object(error) => error.get("message").and_then(Value::as_str).map(str::to_owned),
            _ => value.get("message").and_then(Value::as_str).map(str::to_owned),
        });
    let message = from_json.unwrap_or_else(|| body.trim().to_owned());
    message.chars().take(1000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an object whose choices call no tool, with usage, is plain (passed on unread); any
    /// other object is read into a tree, and what is not an object is refused.
    #[test]
    fn an_answer_is_plain_only_when_nothing_in_it_needs_reading() {
        let whole = |text: &str| WholeChat::new(Bytes::from(text.to_owned()));
        let usage = r#""usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}"#;
        let plain = whole(&format!(
            r#"{{"id":"c","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hi [{{"}}}}],{usage}}}"#
        ))
        .unwrap();
        let counted = plain.plain_usage().unwrap();
        assert_eq!((counted.prompt_tokens, counted.completion_tokens), (3, 2));
        assert_eq!(plain.into_value().unwrap()["choices"][0]["message"]["content"], "Hi [{");

        for read in [
            // A tool call (perhaps a server-side one, to be taken out).
            format!(
                r#"{{"choices":[{{"message":{{"tool_calls":[{{"id":"t","type":"function","function":{{"name":"web_search","arguments":"{{}}"}}}}]}}}}],{usage}}}"#
            ),
            // A key that may spell tool_calls with an escape.
            format!(r#"{{"choices":[{{"message":{{"tool\u005fcalls":[]}}}}],{usage}}}"#),
            // No usage: counting it needs the answer.
            r#"{"choices":[{"message":{"content":"Hi"}}]}"#.to_owned(),
            // Nested deeper than a plain answer may be.
            format!(
                r#"{{"choices":[{{"message":{{"content":"Hi"}}}}],"x":{}{},{usage}}}"#,
                "[".repeat(110),
                "]".repeat(110)
            ),
        ] {
            let answer = whole(&read).unwrap();
            assert_eq!(answer.plain_usage(), None, "{read}");
            assert!(answer.into_value().unwrap().is_object());
        }
        for refused in ["[1]", "{\"choices\":", "not json"] {
            assert!(
                matches!(whole(refused), Err(GatewayError::InvalidResponse(_))),
                "{refused}"
            );
        }
    }

    #[tokio::test]
    async fn a_key_that_cannot_be_a_header_fails_each_call_saying_so() {
        let client = UpstreamClient::new(Duration::from_secs(1), Duration::from_secs(1)).expect("client");
        let upstream = Upstream::new("local".into(), "http://127.0.0.1:9/v1", Some("key\n".into()), client);
        match upstream.probe(Duration::from_secs(1)).await {
            Err(GatewayError::Unavailable(message)) => {
                assert!(message.contains("not a valid HTTP header value"), "{message}");
                assert!(!message.contains("key\n"), "the key is not in the message");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}
