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
        // xAI's (deprecated) Live Search: there is no search backend here, and the upstream
        // would silently ignore it, answering without the search the client asked for.
        if let Some(search) = self.extra.get("search_parameters") {
            let off = search.get("mode").and_then(Value::as_str) == Some("off");
            if !off {
                return Err(
                    "search_parameters: live search is not available on this platform (send mode \"off\", or leave it out)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    fn request(extra: Value) -> ChatCompletionRequest {
        let mut body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        serde_json::from_value(body).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn live_search_is_refused_unless_off() {
        assert!(request(serde_json::json!({})).validate().is_ok());
        assert!(
            request(serde_json::json!({"search_parameters": {"mode": "off"}}))
                .validate()
                .is_ok()
        );
        let refused = request(serde_json::json!({"search_parameters": {"mode": "auto"}})).validate();
        assert!(refused.unwrap_err().contains("live search is not available"));
        assert!(
            request(serde_json::json!({"search_parameters": {}}))
                .validate()
                .is_err()
        );
    }
}
