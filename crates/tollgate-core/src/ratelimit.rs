//! Rate limiting on the inference path: each request is counted under every subject that
//! limits it (its key's `qps`/`qpm`/`tpm`, its team's limits for the model by tier) at once, or
//! refused with nothing counted.
//!
//! [`RateLimiter`] is the seam. [`LocalRateLimiter`] keeps the counters in this process (one
//! node). [`GlobalRateLimiter`] keeps them in a store every node shares ([`SharedCounters`],
//! Redis in the server), and, while that store is unreachable, falls back to this node's own
//! counters with every limit divided by the configured node count: never refusing all traffic,
//! never dropping all limits. The arithmetic is the domain's ([`tollgate_domain::ratelimit`]).

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tollgate_domain::ratelimit::{LimitDecision, Limits, Windows};
use tollgate_domain::{ApiKeyId, Clock, TeamId, Timestamp};

/// Who a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An API key (its `qps`, `qpm`, `tpm`).
    Key(ApiKeyId),
    /// A team's use of one model (its tier's limits).
    TeamModel(TeamId, Arc<str>),
}

/// Counts requests and tokens per subject and decides whether a request may start.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Whether a request limited by every `(subject, limits)` of `checks` may start at `now`:
    /// one decision per check, in order. All or nothing: if none refuses, the request is
    /// counted under every subject; if one does, under none.
    async fn acquire(&self, checks: &[(Subject, Limits)], now: Timestamp) -> Vec<LimitDecision>;
    /// Counts the tokens a finished request used under each of `subjects`.
    async fn record_tokens(&self, subjects: &[Subject], tokens: u64, now: Timestamp);
}

const SHARDS: usize = 16;
/// A shard holding more subjects than this drops the idle ones.
const SHARD_SWEEP_AT: usize = 4096;

type Shard = HashMap<Subject, Windows>;

/// In-process counters, sharded by subject so concurrent requests of different keys and teams
/// rarely meet on one lock; idle subjects are swept out.
pub struct LocalRateLimiter {
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl LocalRateLimiter {
    fn shard_of(&self, subject: &Subject) -> usize {
        (self.hasher.hash_one(subject) % SHARDS as u64) as usize
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`RateLimiter::acquire`], synchronously: the subjects' shards are locked together (in
    /// index order, so two requests never wait on each other crosswise), checked, then counted.
    pub fn acquire_now(&self, checks: &[(Subject, Limits)], now: Timestamp) -> Vec<LimitDecision> {
        let shards: Vec<usize> = checks.iter().map(|(subject, _)| self.shard_of(subject)).collect();
        let mut order = shards.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = order.iter().map(|&i| (i, self.lock(i))).collect();
        let mut decisions = Vec::with_capacity(checks.len());
        for ((subject, limits), &index) in checks.iter().zip(&shards) {
            let shard = locked(&mut guards, index);
            if shard.len() >= SHARD_SWEEP_AT && !shard.contains_key(subject) {
                shard.retain(|_, windows| !windows.is_idle(now));
            }
            decisions.push(shard.entry(subject.clone()).or_default().check(limits, now));
        }
        if decisions.iter().all(|decision| decision.refused.is_none()) {
            for ((subject, _), &index) in checks.iter().zip(&shards) {
                if let Some(windows) = locked(&mut guards, index).get_mut(subject) {
                    windows.take(now);
                }
            }
        }
        decisions
    }

    /// [`RateLimiter::record_tokens`], synchronously.
    pub fn record_tokens_now(&self, subjects: &[Subject], tokens: u64, now: Timestamp) {
        for subject in subjects {
            // Only subjects that were counted have windows to add to.
            if let Some(windows) = self.lock(self.shard_of(subject)).get_mut(subject) {
                windows.record_tokens(tokens, now);
            }
        }
    }
}

/// The locked shard `index` among `guards` (which hold every shard asked for).
fn locked<'a>(guards: &'a mut [(usize, MutexGuard<'_, Shard>)], index: usize) -> &'a mut Shard {
    let position = guards.iter().position(|(i, _)| *i == index).unwrap_or(0);
    &mut guards[position].1
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn acquire(&self, checks: &[(Subject, Limits)], now: Timestamp) -> Vec<LimitDecision> {
        self.acquire_now(checks, now)
    }

    async fn record_tokens(&self, subjects: &[Subject], tokens: u64, now: Timestamp) {
        self.record_tokens_now(subjects, tokens, now);
    }
}

/// The shared store's failure (unreachable, timed out, or an answer that makes no sense).
#[derive(Debug, thiserror::Error)]
#[error("the shared rate-limit store failed: {0}")]
pub struct SharedError(pub String);

/// Counters every node shares: one round trip decides and counts a request atomically, as
/// [`RateLimiter::acquire`] does; tokens are added afterwards.
#[async_trait]
pub trait SharedCounters: Send + Sync {
    /// As [`RateLimiter::acquire`].
    async fn acquire(&self, checks: &[(Subject, Limits)], now: Timestamp) -> Result<Vec<LimitDecision>, SharedError>;
    /// As [`RateLimiter::record_tokens`].
    async fn record_tokens(&self, subjects: &[Subject], tokens: u64, now: Timestamp) -> Result<(), SharedError>;
}

/// How long the shared store is left alone after it failed before it is tried again.
const RETRY_SHARED_AFTER: chrono::Duration = chrono::Duration::seconds(5);

/// Limits across nodes through [`SharedCounters`], falling back to per-node counters while the
/// store is unreachable (see the module's documentation).
pub struct GlobalRateLimiter {
    shared: Arc<dyn SharedCounters>,
    local: LocalRateLimiter,
    nodes: u32,
    clock: Arc<dyn Clock>,
    /// Until when the shared store is skipped, after a failure.
    down_until: Mutex<Option<Timestamp>>,
    on_fallback: Box<dyn Fn() + Send + Sync>,
}

impl GlobalRateLimiter {
    /// Limits through `shared`; while it fails, each of `nodes` nodes enforces its share.
    /// `on_fallback` hears of every request decided without the shared store (a metric).
    pub fn new(
        shared: Arc<dyn SharedCounters>,
        nodes: u32,
        clock: Arc<dyn Clock>,
        on_fallback: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared,
            local: LocalRateLimiter::default(),
            nodes: nodes.max(1),
            clock,
            down_until: Mutex::new(None),
            on_fallback: Box::new(on_fallback),
        }
    }

    /// Whether the shared store is being skipped now.
    fn skipping(&self) -> bool {
        let now = self.clock.now();
        let mut down = self.down_until.lock().unwrap_or_else(PoisonError::into_inner);
        match *down {
            Some(until) if now < until => true,
            Some(_) => {
                *down = None;
                tracing::info!("trying the shared rate-limit store again");
                false
            }
            None => false,
        }
    }

    fn failed(&self, error: &SharedError) {
        let mut down = self.down_until.lock().unwrap_or_else(PoisonError::into_inner);
        if down.is_none() {
            tracing::warn!(
                %error,
                nodes = self.nodes,
                "rate limits fall back to per-node counters (each limit divided by the node count)"
            );
        }
        *down = Some(self.clock.now() + RETRY_SHARED_AFTER);
    }

    fn fall_back(&self, checks: &[(Subject, Limits)], now: Timestamp) -> Vec<LimitDecision> {
        (self.on_fallback)();
        let shares: Vec<(Subject, Limits)> = checks
            .iter()
            .map(|(subject, limits)| (subject.clone(), limits.per_node(self.nodes)))
            .collect();
        self.local.acquire_now(&shares, now)
    }
}

#[async_trait]
impl RateLimiter for GlobalRateLimiter {
    async fn acquire(&self, checks: &[(Subject, Limits)], now: Timestamp) -> Vec<LimitDecision> {
        if checks.is_empty() {
            return Vec::new();
        }
        if self.skipping() {
            return self.fall_back(checks, now);
        }
        match self.shared.acquire(checks, now).await {
            Ok(decisions) if decisions.len() == checks.len() => decisions,
            Ok(_) => {
                self.failed(&SharedError("an answer for the wrong number of subjects".into()));
                self.fall_back(checks, now)
            }
            Err(error) => {
                self.failed(&error);
                self.fall_back(checks, now)
            }
        }
    }

    async fn record_tokens(&self, subjects: &[Subject], tokens: u64, now: Timestamp) {
        if subjects.is_empty() || tokens == 0 {
            return;
        }
        // Counted here too, so a fallback starts from this node's recent use.
        self.local.record_tokens_now(subjects, tokens, now);
        if self.skipping() {
            return;
        }
        if let Err(error) = self.shared.record_tokens(subjects, tokens, now).await {
            self.failed(&error);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tollgate_domain::ManualClock;
    use tollgate_domain::ratelimit::LimitKind;

    use super::*;

    fn at(ms: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_790_000_040, 0).unwrap() + chrono::Duration::milliseconds(ms)
    }

    fn qpm(limit: u32) -> Limits {
        Limits {
            qpm: Some(limit),
            ..Limits::default()
        }
    }

    #[test]
    fn a_refusal_by_one_subject_counts_under_none() {
        let limiter = LocalRateLimiter::default();
        let key = Subject::Key(ApiKeyId::new());
        let team = Subject::TeamModel(TeamId::new(), Arc::from("m"));
        let checks = [(key.clone(), qpm(10)), (team.clone(), qpm(1))];
        assert!(limiter.acquire_now(&checks, at(0)).iter().all(|d| d.refused.is_none()));
        let refused = limiter.acquire_now(&checks, at(10));
        assert_eq!(refused[1].refused, Some((LimitKind::RequestsPerMinute, 2)));
        // The key counted one request, not two: nine are left.
        let alone = limiter.acquire_now(&[(key, qpm(10))], at(20));
        assert_eq!(alone[0].requests_per_minute.unwrap().remaining, 8);
    }

    /// A shared store that works until told to fail, counting in a local limiter.
    struct Flaky {
        inner: LocalRateLimiter,
        down: AtomicBool,
    }

    #[async_trait]
    impl SharedCounters for Flaky {
        async fn acquire(
            &self,
            checks: &[(Subject, Limits)],
            now: Timestamp,
        ) -> Result<Vec<LimitDecision>, SharedError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SharedError("connection refused".into()));
            }
            Ok(self.inner.acquire_now(checks, now))
        }

        async fn record_tokens(&self, subjects: &[Subject], tokens: u64, now: Timestamp) -> Result<(), SharedError> {
            self.inner.record_tokens_now(subjects, tokens, now);
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_divides_limits_among_nodes_until_it_is_back() {
        let clock = Arc::new(ManualClock::new(at(0)));
        let shared = Arc::new(Flaky {
            inner: LocalRateLimiter::default(),
            down: AtomicBool::new(false),
        });
        let fallbacks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&fallbacks);
        let limiter = GlobalRateLimiter::new(shared.clone(), 2, clock.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let key = Subject::Key(ApiKeyId::new());
        let checks = [(key, qpm(4))];
        shared.down.store(true, Ordering::SeqCst);
        let now = clock.now();
        let allowed = |decisions: Vec<LimitDecision>| decisions[0].refused.is_none();
        assert!(allowed(limiter.acquire(&checks, now).await));
        assert!(allowed(limiter.acquire(&checks, now).await));
        assert!(
            !allowed(limiter.acquire(&checks, now).await),
            "half of 4 on each of 2 nodes"
        );
        assert_eq!(fallbacks.load(Ordering::SeqCst), 3);
        // Back, after the pause: the shared counts decide again.
        shared.down.store(false, Ordering::SeqCst);
        assert!(
            !allowed(limiter.acquire(&checks, now).await),
            "still skipping the store"
        );
        clock.advance(chrono::Duration::seconds(6));
        assert!(allowed(limiter.acquire(&checks, clock.now()).await));
        assert_eq!(fallbacks.load(Ordering::SeqCst), 4);
    }
}
