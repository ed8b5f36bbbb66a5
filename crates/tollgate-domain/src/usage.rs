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
}

impl TokenUsage {
    /// Prompt + completion + reasoning.
    #[must_use]
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_add(self.completion_tokens)
            .saturating_add(self.reasoning_tokens)
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
