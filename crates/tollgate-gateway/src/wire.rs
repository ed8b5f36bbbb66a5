//! Chat completion request types. Known fields are typed (so a wrong type is a clear 422);
//! every other field is kept as-is and forwarded, so new OpenAI/xAI parameters pass through.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatCompletionRequest {
    /// Model name or alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Output token budget (legacy name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output token budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Every other parameter, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: ChatRole,
    /// Text or content parts; absent for an assistant message that only calls tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Other fields (`name`, `tool_calls`, `tool_call_id`, …), forwarded unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Message roles xAI accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// System prompt.
    System,
    /// Developer prompt.
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
    /// Deprecated function result.
    Function,
}

/// A message's content.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Parts (`text`, `image_url`, …).
    Parts(Vec<Map<String, Value>>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    /// Ask for a usage chunk at the end of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other options, forwarded.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// Whether the client asked for a stream.
    #[must_use]
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The output budget the client set, if any.
    #[must_use]
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Holds the upstream to `per_choice` output tokens at most: the field the client used is
    /// lowered to it, or `max_tokens` set when the client named none. The credit hold assumed
    /// this budget; an upstream that ignores it is charged anyway (and counted).
    pub fn limit_output(&mut self, per_choice: u64) {
        let cap = u32::try_from(per_choice).unwrap_or(u32::MAX);
        match (&mut self.max_completion_tokens, &mut self.max_tokens) {
            (Some(asked), _) | (None, Some(asked)) => *asked = (*asked).min(cap),
            (None, None) => self.max_tokens = Some(cap),
        }
    }

    /// A semantic check after parsing: what the types cannot say.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("model must not be empty".into());
        }
        if self.messages.is_empty() {
            return Err("messages must contain at least one message".into());
        }
        if self.max_output_tokens() == Some(0) {
            return Err("max_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// `POST /v1/completions` body (legacy text completions, OpenAI's shape).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CompletionRequest {
    /// Model name or alias.
    pub model: String,
    /// A text, texts, token ids, or lists of token ids.
    pub prompt: Value,
    /// Output token budget per choice (OpenAI's default: 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Choices returned per prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Choices generated per prompt (the best `n` returned); all are charged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Every other parameter, forwarded unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The most choices one completion request may generate per prompt (OpenAI's limit).
const MAX_COMPLETION_CHOICES: u32 = 128;

impl CompletionRequest {
    /// OpenAI's `max_tokens` when a request names none.
    pub const DEFAULT_MAX_TOKENS: u32 = 16;

    /// Whether the client asked for a stream.
    #[must_use]
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The prompts: one per text or token list.
    #[must_use]
    pub fn prompts(&self) -> u64 {
        match &self.prompt {
            Value::Array(items) if items.iter().all(|item| item.is_string() || item.is_array()) => items.len() as u64,
            _ => 1,
        }
    }

    /// Choices generated per prompt (`best_of`, else `n`, at least 1).
    #[must_use]
    pub fn choices_per_prompt(&self) -> u64 {
        u64::from(self.best_of.unwrap_or(1).max(self.n.unwrap_or(1)).max(1))
    }

    /// Holds the upstream to `per_choice` output tokens, and sets OpenAI's default of 16 when
    /// the client named none (the upstream's own default may be unbounded).
    pub fn limit_output(&mut self, per_choice: u64) {
        let cap = u32::try_from(per_choice).unwrap_or(u32::MAX);
        self.max_tokens = Some(self.max_tokens.unwrap_or(Self::DEFAULT_MAX_TOKENS).min(cap));
    }

    /// A semantic check after parsing: what the types cannot say.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("model must not be empty".into());
        }
        let token = |value: &Value| value.as_u64().is_some_and(|id| id <= u64::from(u32::MAX));
        let valid = match &self.prompt {
            Value::String(text) => !text.is_empty(),
            Value::Array(items) if items.is_empty() => false,
            Value::Array(items) => {
                items
                    .iter()
                    .all(|item| item.as_str().is_some_and(|text| !text.is_empty()))
                    || items.iter().all(token)
                    || items.iter().all(|item| {
                        item.as_array()
                            .is_some_and(|ids| !ids.is_empty() && ids.iter().all(token))
                    })
            }
            _ => false,
        };
        if !valid {
            return Err(
                "prompt must be a text, a list of texts, a list of token ids or a list of such lists, none empty"
                    .into(),
            );
        }
        if self.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".into());
        }
        let (n, best_of) = (self.n.unwrap_or(1), self.best_of.unwrap_or(1));
        if n == 0 || n > MAX_COMPLETION_CHOICES || best_of == 0 || best_of > MAX_COMPLETION_CHOICES {
            return Err(format!("n and best_of must be 1 to {MAX_COMPLETION_CHOICES}"));
        }
        if self.best_of.is_some() && best_of < n {
            return Err("best_of must be at least n".into());
        }
        if self.best_of.is_some_and(|b| b > 1) && self.is_stream() {
            return Err("best_of cannot be used with stream".into());
        }
        Ok(())
    }
}
