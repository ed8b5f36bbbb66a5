//! An OpenAI-compatible upstream (vLLM, SGLang, llama.cpp, Ollama, hosted providers): one pooled
//! keep-alive HTTP client with TCP_NODELAY, shared by every model that points at it.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;

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

impl GatewayError {
    fn from_reqwest(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            GatewayError::Timeout
        } else {
            // The chain holds the useful part ("connection refused"); never the URL's secrets,
            // as upstream keys travel in a header, not the URL.
            let mut message = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            GatewayError::Unavailable(message)
        }
    }
}

/// One upstream server.
pub struct Upstream {
    name: String,
    chat_url: String,
    /// `chat_url` parsed once (reqwest would parse the string again on every request); `None`
    /// when it does not parse, and then each request fails as reqwest finds it.
    chat_url_parsed: Option<reqwest::Url>,
    base_url: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("chat_url", &self.chat_url)
            .finish_non_exhaustive()
    }
}

/// A client for upstream calls: keep-alive pool, TCP_NODELAY, connect and overall timeouts.
pub fn http_client(connect_timeout: Duration, request_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .connect_timeout(connect_timeout)
        .read_timeout(request_timeout)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Upstream {
    /// An upstream at `base_url` (e.g. `http://127.0.0.1:8000/v1`).
    #[must_use]
    pub fn new(name: String, base_url: &str, api_key: Option<String>, client: reqwest::Client) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let chat_url = format!("{base_url}/chat/completions");
        Self {
            name,
            chat_url_parsed: reqwest::Url::parse(&chat_url).ok(),
            chat_url,
            base_url,
            api_key,
            client,
        }
    }

    /// The upstream's configured name (for logs and metrics).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &ChatCompletionRequest) -> Result<reqwest::Response, GatewayError> {
        let request = match &self.chat_url_parsed {
            Some(url) => self.client.post(url.clone()),
            None => self.client.post(&self.chat_url),
        };
        let mut request = request.json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| GatewayError::from_reqwest(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(GatewayError::Status {
            status: status.as_u16(),
            message: error_message(&text),
        })
    }

    /// A non-streaming chat completion: the upstream's JSON body.
    pub async fn chat(&self, body: &ChatCompletionRequest) -> Result<Value, GatewayError> {
        let response = self.send(body).await?;
        let bytes = response.bytes().await.map_err(|e| GatewayError::from_reqwest(&e))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| GatewayError::InvalidResponse(e.to_string()))?;
        if !value.is_object() {
            return Err(GatewayError::InvalidResponse("body is not a JSON object".into()));
        }
        Ok(value)
    }

    /// A JSON request to another of the upstream's endpoints (`path` below its base URL, e.g.
    /// `/embeddings`): the upstream's JSON object.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, GatewayError> {
        let response = self.send_json(path, body).await?;
        let bytes = response.bytes().await.map_err(|e| GatewayError::from_reqwest(&e))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| GatewayError::InvalidResponse(e.to_string()))?;
        if !value.is_object() {
            return Err(GatewayError::InvalidResponse("body is not a JSON object".into()));
        }
        Ok(value)
    }

    /// A streaming request to another of the upstream's endpoints (`path` below its base URL,
    /// e.g. `/completions`): the upstream's raw SSE bytes, as they arrive.
    pub async fn post_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<impl Stream<Item = Result<Bytes, GatewayError>> + Send + 'static + use<>, GatewayError> {
        use futures_util::TryStreamExt as _;
        let response = self.send_json(path, body).await?;
        Ok(response.bytes_stream().map_err(|e| GatewayError::from_reqwest(&e)))
    }

    /// Posts `body` to `path` below the base URL: the response, if its status is a success.
    async fn send_json(&self, path: &str, body: &Value) -> Result<reqwest::Response, GatewayError> {
        let mut request = self.client.post(format!("{}{path}", self.base_url)).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| GatewayError::from_reqwest(&e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(GatewayError::Status {
                status: status.as_u16(),
                message: error_message(&text),
            });
        }
        Ok(response)
    }

    /// Whether the upstream answers: `GET {base_url}/models` (every OpenAI-compatible server
    /// has it) succeeds within `timeout`.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<(), GatewayError> {
        let mut request = self.client.get(format!("{}/models", self.base_url)).timeout(timeout);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| GatewayError::from_reqwest(&e))?;
        let status = response.status();
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
        use futures_util::TryStreamExt as _;
        let response = self.send(body).await?;
        Ok(response.bytes_stream().map_err(|e| GatewayError::from_reqwest(&e)))
    }
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
