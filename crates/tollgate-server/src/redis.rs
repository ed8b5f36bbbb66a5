//! Rate-limit counters in Redis, shared by every node ([`SharedCounters`]).
//!
//! A counter per subject, kind and fixed window, named by the window's start (from the injected
//! clock, so tests move time). One script call decides a request and counts it atomically, with
//! the domain's sliding-window arithmetic: the previous window's count weighted by how much of it
//! the sliding window still covers. Tokens are added after the answer, in one pipeline. Every
//! counter expires two windows after its own, so Redis holds only what still counts.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tollgate_core::{SharedCounters, SharedError, Subject};
use tollgate_domain::Timestamp;
use tollgate_domain::ratelimit::{LimitDecision, LimitKind, Limits, MINUTE_US, SECOND_US, WindowAt};

/// Decides and counts one request. KEYS: per counter, its current and previous window. ARGV:
/// the counter count, then per counter its previous window's weight (millionths), its limit
/// (-1: none, so neither read nor counted), whether it counts tokens (1) or requests (0), and
/// its lifetime (ms). Returns the 1-based counter that refused (0: none) and each counter's
/// sliding count before the request.
const ACQUIRE: &str = r"
local n = tonumber(ARGV[1])
local counts = {}
local refused = 0
for i = 1, n do
  local base = 1 + (i - 1) * 4
  local weight = tonumber(ARGV[base + 1])
  local limit = tonumber(ARGV[base + 2])
  local tokens = tonumber(ARGV[base + 3])
  local count = 0
  if limit >= 0 then
    local current = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    local previous = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    count = current + math.floor(previous * weight / 1000000)
  end
  counts[i] = count
  if refused == 0 and limit >= 0 then
    if (tokens == 0 and count + 1 > limit) or (tokens == 1 and count > limit) then
      refused = i
    end
  end
end
if refused == 0 then
  for i = 1, n do
    local base = 1 + (i - 1) * 4
    if tonumber(ARGV[base + 3]) == 0 and tonumber(ARGV[base + 2]) >= 0 then
      redis.call('INCR', KEYS[2 * i - 1])
      redis.call('PEXPIRE', KEYS[2 * i - 1], tonumber(ARGV[base + 4]))
    end
  end
end
local answer = {refused}
for i = 1, n do answer[i + 1] = counts[i] end
return answer
";

/// The counters' kinds: requests per second, requests per minute, tokens per minute.
const KINDS: [(&str, i64); 3] = [("s", SECOND_US), ("m", MINUTE_US), ("t", MINUTE_US)];

/// Redis's counters.
pub struct RedisCounters {
    connection: ConnectionManager,
    acquire: redis::Script,
    prefix: String,
}

impl RedisCounters {
    /// Counters at `url`, connecting lazily (a node starts, and falls back, while Redis is down);
    /// each call may take `timeout` before it fails.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
        Ok(Self {
            connection,
            acquire: redis::Script::new(ACQUIRE),
            prefix: "tollgate:rl".to_owned(),
        })
    }

    fn subject_key(&self, subject: &Subject) -> String {
        match subject {
            Subject::Key(id) => format!("{}:k:{id}", self.prefix),
            Subject::TeamModel(team, model) => format!("{}:t:{team}:{model}", self.prefix),
        }
    }
}

fn failed(error: &redis::RedisError) -> SharedError {
    SharedError(error.to_string())
}

#[async_trait]
impl SharedCounters for RedisCounters {
    async fn acquire(&self, checks: &[(Subject, Limits)], now: Timestamp) -> Result<Vec<LimitDecision>, SharedError> {
        let mut invocation = self.acquire.prepare_invoke();
        let mut windows = Vec::with_capacity(checks.len() * 3);
        for (subject, limits) in checks {
            let base = self.subject_key(subject);
            let caps = [limits.qps.map(u64::from), limits.qpm.map(u64::from), limits.tpm];
            for ((kind, window_us), cap) in KINDS.into_iter().zip(caps) {
                let at = WindowAt::of(window_us, now);
                invocation
                    .key(format!("{base}:{kind}:{}", at.start_us))
                    .key(format!("{base}:{kind}:{}", at.previous_start_us));
                windows.push((at, cap, kind == "t", window_us));
            }
        }
        invocation.arg(windows.len());
        for (at, cap, tokens, window_us) in &windows {
            invocation
                .arg(at.previous_weight_ppm)
                .arg(cap.map_or(-1, |cap| i64::try_from(cap).unwrap_or(i64::MAX)))
                .arg(i64::from(*tokens))
                .arg(2 * window_us / 1_000);
        }
        let mut connection = self.connection.clone();
        let answer: Vec<i64> = invocation.invoke_async(&mut connection).await.map_err(|e| failed(&e))?;
        if answer.len() != windows.len() + 1 {
            return Err(SharedError(format!("the script answered {} values", answer.len())));
        }
        let refused_at = usize::try_from(answer[0]).unwrap_or(0);
        if refused_at > windows.len() {
            return Err(SharedError(format!("the script named counter {refused_at}")));
        }
        let counts: Vec<u64> = answer[1..].iter().map(|c| u64::try_from(*c).unwrap_or(0)).collect();
        // The script's decision, with statuses, from the same counts and arithmetic; the
        // script's word is final on whether the request was counted.
        let mut decisions: Vec<LimitDecision> = checks
            .iter()
            .enumerate()
            .map(|(index, (_, limits))| {
                let counter = |kind: usize| counts[3 * index + kind];
                let reset = |kind: usize| windows[3 * index + kind].0.reset_after_us;
                limits.decide([counter(0), counter(1), counter(2)], [reset(0), reset(1), reset(2)])
            })
            .collect();
        match refused_at.checked_sub(1) {
            None => decisions.iter_mut().for_each(|decision| decision.refused = None),
            Some(counter) => {
                let decision = &mut decisions[counter / 3];
                if decision.refused.is_none() {
                    let count = counts[counter];
                    decision.refused = Some(match counter % 3 {
                        0 => (LimitKind::RequestsPerSecond, count + 1),
                        1 => (LimitKind::RequestsPerMinute, count + 1),
                        _ => (LimitKind::TokensPerMinute, count),
                    });
                }
            }
        }
        Ok(decisions)
    }

    async fn record_tokens(&self, subjects: &[Subject], tokens: u64, now: Timestamp) -> Result<(), SharedError> {
        let at = WindowAt::of(MINUTE_US, now);
        let mut pipe = redis::pipe();
        for subject in subjects {
            let key = format!("{}:t:{}", self.subject_key(subject), at.start_us);
            pipe.cmd("INCRBY")
                .arg(&key)
                .arg(tokens)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(2 * MINUTE_US / 1_000)
                .ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await.map_err(|e| failed(&e))
    }
}
