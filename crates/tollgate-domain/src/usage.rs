//! Token usage of one request, and the record the gateway hands to billing.

use crate::clock::Timestamp;
use crate::ids::{ApiKeyId, RequestId, TeamId};
use crate::money::Ticks;

/// Tokens of one request, in xAI's accounting: `completion_tokens` excludes reasoning tokens,
/// and the total counts every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    /// All prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// The part of `prompt_tokens` served from cache.
    pub cached_prompt_tokens: u64,
    /// Output tokens, reasoning excluded.
    pub completion_tokens: u64,
    /// Reasoning ("thinking") tokens.
    pub reasoning_tokens: u64,
    /// Images generated (priced per image, not tokens).
    pub images: u64,
    /// Web searches run by Tollgate for the request (a fee each; a failed search is none).
    pub web_search_calls: u64,
    /// X searches run by Tollgate for the request (a fee each).
    pub x_search_calls: u64,
}

impl TokenUsage {
    /// Prompt + completion + reasoning.
    #[must_use]
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_add(self.completion_tokens)
            .saturating_add(self.reasoning_tokens)
    }

    /// Server-side tool calls charged (xAI's `num_server_side_tools_used`).
    #[must_use]
    pub fn server_side_tool_calls(&self) -> u64 {
        self.web_search_calls.saturating_add(self.x_search_calls)
    }

    /// This usage and `other`'s together (the model calls of one request's tool loop).
    #[must_use]
    pub fn plus(&self, other: &TokenUsage) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            cached_prompt_tokens: self.cached_prompt_tokens.saturating_add(other.cached_prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_add(other.completion_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(other.reasoning_tokens),
            images: self.images.saturating_add(other.images),
            web_search_calls: self.web_search_calls.saturating_add(other.web_search_calls),
            x_search_calls: self.x_search_calls.saturating_add(other.x_search_calls),
        }
    }
}

/// One billable request, as stored for its team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The request's id; usage is idempotent on it.
    pub request_id: RequestId,
    /// The team billed.
    pub team_id: TeamId,
    /// The key that made the request.
    pub api_key_id: ApiKeyId,
    /// The public model name (after alias resolution).
    pub model: String,
    /// The endpoint.
    pub endpoint: crate::Endpoint,
    /// Tokens used.
    pub usage: TokenUsage,
    /// The exact cost.
    pub cost: Ticks,
    /// True when the upstream reported no usage and Tollgate counted the tokens itself.
    pub estimated: bool,
    /// Whether the response was streamed.
    pub streamed: bool,
    /// When the request arrived.
    pub started_at: Timestamp,
    /// Wall time from arrival to the last byte from the upstream, in milliseconds.
    pub duration_ms: u64,
}
