//! Per-key rate limiting on the inference path. [`RateLimiter`] is the seam: this node's
//! [`LocalRateLimiter`] keeps the counters in memory (one node); a shared store (Redis) for
//! several nodes, and team/model limits, plug in behind the same trait. The arithmetic is the
//! domain's ([`tollgate_domain::ratelimit`]).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tollgate_domain::ratelimit::{KeyLimits, KeyWindows, LimitDecision};
use tollgate_domain::{ApiKeyId, Timestamp};

/// Counts requests and tokens per key and decides whether a request may start.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Whether a request by `key` may start at `now` under `limits`; counted if so.
    async fn acquire(&self, key: ApiKeyId, limits: &KeyLimits, now: Timestamp) -> LimitDecision;
    /// Counts the tokens a finished request of `key` used.
    async fn record_tokens(&self, key: ApiKeyId, tokens: u64, now: Timestamp);
}

const SHARDS: usize = 16;
/// A shard holding more keys than this drops the idle ones.
const SHARD_SWEEP_AT: usize = 4096;

/// In-process counters, sharded by key so concurrent requests of different keys rarely meet on
/// one lock. Keys without limits cost nothing; idle keys are swept out.
pub struct LocalRateLimiter {
    shards: Vec<Mutex<HashMap<ApiKeyId, KeyWindows>>>,
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl LocalRateLimiter {
    fn shard(&self, key: ApiKeyId) -> std::sync::MutexGuard<'_, HashMap<ApiKeyId, KeyWindows>> {
        let index = (key.as_uuid().as_u128() % SHARDS as u128) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn acquire(&self, key: ApiKeyId, limits: &KeyLimits, now: Timestamp) -> LimitDecision {
        if !limits.any() {
            return KeyWindows::default().acquire(limits, now);
        }
        let mut shard = self.shard(key);
        if shard.len() >= SHARD_SWEEP_AT && !shard.contains_key(&key) {
            shard.retain(|_, windows| !windows.is_idle(now));
        }
        shard.entry(key).or_default().acquire(limits, now)
    }

    async fn record_tokens(&self, key: ApiKeyId, tokens: u64, now: Timestamp) {
        // Only keys that were counted (they have limits) have windows to add to.
        if let Some(windows) = self.shard(key).get_mut(&key) {
            windows.record_tokens(tokens, now);
        }
    }
}
