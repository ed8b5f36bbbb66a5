//! Rate-limit arithmetic: sliding-window counters, the decision for one request against a
//! subject's limits (a key's `qps`, `qpm` and `tpm`; a team's per-model limits of its tier), and
//! the tiers. Pure: the caller owns the state and passes the time in, so the same rules serve an
//! in-process limiter and a shared one (Redis), which runs the same decision on counts it keeps.
//!
//! Semantics follow xAI's: request limits refuse the request that would go over; the token limit
//! "engages when the limit is strictly exceeded" (tokens are counted when a request finishes, so
//! in-flight requests may push the count over; the next request is refused).

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use crate::money::Ticks;

/// A sliding-window counter approximated from two fixed windows: the previous window's count,
/// weighted by how much of it the sliding window still covers, plus the current window's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    window_us: i64,
    current_start_us: i64,
    current: u64,
    previous: u64,
}

impl SlidingWindow {
    /// An empty counter over windows of `window_us` microseconds (at least 1).
    #[must_use]
    pub const fn new(window_us: i64) -> Self {
        Self {
            window_us: if window_us < 1 { 1 } else { window_us },
            current_start_us: 0,
            current: 0,
            previous: 0,
        }
    }

    fn roll(&mut self, now_us: i64) {
        let start = now_us - now_us.rem_euclid(self.window_us);
        if start == self.current_start_us {
            return;
        }
        self.previous = if start - self.current_start_us == self.window_us {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.current_start_us = start;
    }

    /// The count over the sliding window ending at `now`.
    pub fn count(&mut self, now: Timestamp) -> u64 {
        let now_us = now.timestamp_micros();
        self.roll(now_us);
        let elapsed = now_us - self.current_start_us;
        let overlap = u128::from(self.previous) * u128::try_from(self.window_us - elapsed).unwrap_or(0)
            / u128::try_from(self.window_us).unwrap_or(1);
        self.current.saturating_add(u64::try_from(overlap).unwrap_or(u64::MAX))
    }

    /// Adds `n` at `now`.
    pub fn add(&mut self, now: Timestamp, n: u64) {
        self.roll(now.timestamp_micros());
        self.current = self.current.saturating_add(n);
    }

    /// Microseconds until the current fixed window ends (when its count starts to fade).
    #[must_use]
    pub fn reset_after_us(&self, now: Timestamp) -> i64 {
        (self.current_start_us + self.window_us - now.timestamp_micros()).clamp(0, self.window_us)
    }
}

/// Where `now` falls in fixed windows of `window_us`: what a shared store needs to keep the
/// same sliding count as [`SlidingWindow`] (a counter per fixed window, named by its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAt {
    /// The current fixed window's start, in microseconds since the epoch.
    pub start_us: i64,
    /// The previous fixed window's start.
    pub previous_start_us: i64,
    /// How much of the previous window's count still counts, in millionths.
    pub previous_weight_ppm: i64,
    /// Microseconds until the current window ends.
    pub reset_after_us: i64,
}

impl WindowAt {
    /// The position of `now` in windows of `window_us` (at least 1).
    #[must_use]
    pub fn of(window_us: i64, now: Timestamp) -> Self {
        let window_us = window_us.max(1);
        let now_us = now.timestamp_micros();
        let start_us = now_us - now_us.rem_euclid(window_us);
        let elapsed = now_us - start_us;
        Self {
            start_us,
            previous_start_us: start_us - window_us,
            previous_weight_ppm: i64::try_from(i128::from(window_us - elapsed) * 1_000_000 / i128::from(window_us))
                .unwrap_or(0),
            reset_after_us: window_us - elapsed,
        }
    }

    /// The sliding count from the two fixed windows' counts.
    #[must_use]
    pub fn count(&self, current: u64, previous: u64) -> u64 {
        let carried = u128::from(previous) * u128::try_from(self.previous_weight_ppm).unwrap_or(0) / 1_000_000;
        current.saturating_add(u64::try_from(carried).unwrap_or(u64::MAX))
    }
}

/// The one-second window, in microseconds.
pub const SECOND_US: i64 = 1_000_000;
/// The one-minute window, in microseconds.
pub const MINUTE_US: i64 = 60_000_000;

/// A subject's limits (a key's, or a team's for one model); `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per second.
    pub qps: Option<u32>,
    /// Requests per minute.
    pub qpm: Option<u32>,
    /// Tokens (prompt + completion + reasoning, cached included) per minute.
    pub tpm: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    #[must_use]
    pub const fn any(&self) -> bool {
        self.qps.is_some() || self.qpm.is_some() || self.tpm.is_some()
    }

    /// This node's share when `nodes` nodes each count on their own (a shared store being
    /// unreachable): every limit divided by `nodes`, rounded up, never below 1.
    #[must_use]
    pub fn per_node(&self, nodes: u32) -> Self {
        let nodes = nodes.max(1);
        Self {
            qps: self.qps.map(|l| l.div_ceil(nodes).max(1)),
            qpm: self.qpm.map(|l| l.div_ceil(nodes).max(1)),
            tpm: self.tpm.map(|l| l.div_ceil(u64::from(nodes)).max(1)),
        }
    }

    /// The decision for a new request, given the subject's sliding counts before it (`used`:
    /// requests this second, requests this minute, tokens this minute) and when each window
    /// resets. Request limits refuse the request that would go over; the token limit refuses
    /// once strictly exceeded. Checked in that order, the first reached refusing.
    #[must_use]
    pub fn decide(&self, used: [u64; 3], reset_after_us: [i64; 3]) -> LimitDecision {
        let [second, minute, tokens] = used;
        let refused = if self.qps.is_some_and(|l| second + 1 > u64::from(l)) {
            Some((LimitKind::RequestsPerSecond, second + 1))
        } else if self.qpm.is_some_and(|l| minute + 1 > u64::from(l)) {
            Some((LimitKind::RequestsPerMinute, minute + 1))
        } else {
            self.tpm
                .filter(|&l| tokens > l)
                .map(|_| (LimitKind::TokensPerMinute, tokens))
        };
        let taken = u64::from(refused.is_none());
        let status = |limit: u64, used: u64, reset_after_us: i64| LimitStatus {
            limit,
            remaining: limit.saturating_sub(used),
            reset_after_us,
        };
        LimitDecision {
            refused,
            requests_per_second: self
                .qps
                .map(|l| status(u64::from(l), second + taken, reset_after_us[0])),
            requests_per_minute: self
                .qpm
                .map(|l| status(u64::from(l), minute + taken, reset_after_us[1])),
            tokens_per_minute: self.tpm.map(|l| status(l, tokens, reset_after_us[2])),
        }
    }
}

/// The counters of one limited subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    second: SlidingWindow,
    minute: SlidingWindow,
    tokens: SlidingWindow,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            second: SlidingWindow::new(SECOND_US),
            minute: SlidingWindow::new(MINUTE_US),
            tokens: SlidingWindow::new(MINUTE_US),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// `qps`.
    RequestsPerSecond,
    /// `qpm`.
    RequestsPerMinute,
    /// `tpm`.
    TokensPerMinute,
}

/// Where a subject stands against one limit, after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// The limit.
    pub limit: u64,
    /// What is left of it now.
    pub remaining: u64,
    /// Microseconds until the count starts to fall.
    pub reset_after_us: i64,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDecision {
    /// `None`: allowed (and counted). `Some`: refused by this limit, with the count that
    /// refused it (`actual`, as xAI's message shows "actual/limit").
    pub refused: Option<(LimitKind, u64)>,
    /// Per-second requests.
    pub requests_per_second: Option<LimitStatus>,
    /// Per-minute requests.
    pub requests_per_minute: Option<LimitStatus>,
    /// Per-minute tokens.
    pub tokens_per_minute: Option<LimitStatus>,
}

impl LimitDecision {
    /// The status of one kind of limit, if the subject has that limit.
    #[must_use]
    pub const fn status(&self, kind: LimitKind) -> Option<LimitStatus> {
        match kind {
            LimitKind::RequestsPerSecond => self.requests_per_second,
            LimitKind::RequestsPerMinute => self.requests_per_minute,
            LimitKind::TokensPerMinute => self.tokens_per_minute,
        }
    }

    /// What the answer's `x-ratelimit-*` headers show when several subjects limited one
    /// request (its key and its team): for each kind, the status with the least left.
    #[must_use]
    pub fn tightest(decisions: &[LimitDecision]) -> Option<LimitDecision> {
        fn least(a: Option<LimitStatus>, b: Option<LimitStatus>) -> Option<LimitStatus> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        let (first, rest) = decisions.split_first()?;
        Some(rest.iter().fold(*first, |tight, next| LimitDecision {
            refused: tight.refused.or(next.refused),
            requests_per_second: least(tight.requests_per_second, next.requests_per_second),
            requests_per_minute: least(tight.requests_per_minute, next.requests_per_minute),
            tokens_per_minute: least(tight.tokens_per_minute, next.tokens_per_minute),
        }))
    }
}

/// One tier of the schedule: from what cumulative spend a team reaches it, and the limits it
/// gives each model (a model not named gets the tier's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tier {
    /// Cumulative qualifying spend (prepaid purchases and paid invoices) that reaches it.
    pub min_spend: Ticks,
    /// Per team and model, for models not named in `models`.
    pub default: Limits,
    /// Per team, for the models named.
    pub models: BTreeMap<String, Limits>,
}

/// Rate-limit tiers by cumulative spend, xAI's scheme: a team is in the highest tier its
/// spend reaches, never moves down, and the operator may pin it to one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierSchedule {
    tiers: Vec<Tier>,
}

/// A schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierScheduleError {
    /// The first tier must start at 0 (every team is in one).
    #[error("the first tier must start at a spend of 0")]
    FirstNotZero,
    /// Thresholds must rise.
    #[error("tier {0} does not start above the tier before it")]
    NotRising(usize),
}

impl TierSchedule {
    /// A schedule of `tiers`, in order (empty: no team limits).
    pub fn new(tiers: Vec<Tier>) -> Result<Self, TierScheduleError> {
        if tiers.first().is_some_and(|tier| tier.min_spend != Ticks::ZERO) {
            return Err(TierScheduleError::FirstNotZero);
        }
        if let Some(index) = (1..tiers.len()).find(|&i| tiers[i].min_spend <= tiers[i - 1].min_spend) {
            return Err(TierScheduleError::NotRising(index));
        }
        Ok(Self { tiers })
    }

    /// Whether there are tiers (else teams are not limited per model).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// How many tiers there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tiers.len()
    }

    /// The highest tier `spend` reaches.
    #[must_use]
    pub fn tier_for(&self, spend: Ticks) -> u32 {
        let reached = self.tiers.iter().filter(|tier| tier.min_spend <= spend).count();
        u32::try_from(reached.saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// A team's tier: the operator's pin, else the higher of the tier it reached before (tiers
    /// never go down) and the one its spend reaches now; within the schedule.
    #[must_use]
    pub fn tier_of(&self, standing: &TierStanding) -> u32 {
        let tier = standing
            .pinned
            .unwrap_or_else(|| standing.reached.max(self.tier_for(standing.qualifying_spend)));
        tier.min(u32::try_from(self.tiers.len().saturating_sub(1)).unwrap_or(0))
    }

    /// The limits `tier` gives a team for `model` (none without tiers).
    #[must_use]
    pub fn limits(&self, tier: u32, model: &str) -> Limits {
        let index = usize::try_from(tier)
            .unwrap_or(usize::MAX)
            .min(self.tiers.len().saturating_sub(1));
        self.tiers
            .get(index)
            .map(|tier| tier.models.get(model).copied().unwrap_or(tier.default))
            .unwrap_or_default()
    }
}

/// What decides a team's tier, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStanding {
    /// The highest tier it has reached (it never goes down).
    pub reached: u32,
    /// The operator's pin, if any.
    pub pinned: Option<u32>,
    /// Its prepaid purchases and paid invoices, summed.
    pub qualifying_spend: Ticks,
}

impl Windows {
    /// Decides whether a new request may start at `now` under `limits`, without counting it.
    pub fn check(&mut self, limits: &Limits, now: Timestamp) -> LimitDecision {
        let used = [self.second.count(now), self.minute.count(now), self.tokens.count(now)];
        let resets = [
            self.second.reset_after_us(now),
            self.minute.reset_after_us(now),
            self.tokens.reset_after_us(now),
        ];
        limits.decide(used, resets)
    }

    /// Counts a request that started at `now`.
    pub fn take(&mut self, now: Timestamp) {
        self.second.add(now, 1);
        self.minute.add(now, 1);
    }

    /// Decides whether a new request may start at `now` under `limits`, and counts it if so.
    pub fn acquire(&mut self, limits: &Limits, now: Timestamp) -> LimitDecision {
        let decision = self.check(limits, now);
        if decision.refused.is_none() {
            self.take(now);
        }
        decision
    }

    /// Whether every counter has drained to zero at `now` (the entry can be forgotten).
    pub fn is_idle(&mut self, now: Timestamp) -> bool {
        self.second.count(now) == 0 && self.minute.count(now) == 0 && self.tokens.count(now) == 0
    }

    /// Counts `tokens` a finished request used.
    pub fn record_tokens(&mut self, tokens: u64, now: Timestamp) {
        self.tokens.add(now, tokens);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};

    use super::*;

    fn t(ms: i64) -> Timestamp {
        DateTime::from_timestamp(1_790_000_040, 0).unwrap() + Duration::milliseconds(ms)
    }

    #[test]
    fn qps_refuses_the_request_that_would_go_over_and_recovers() {
        let limits = Limits {
            qps: Some(2),
            ..Limits::default()
        };
        let mut windows = Windows::default();
        assert_eq!(windows.acquire(&limits, t(0)).refused, None);
        let second = windows.acquire(&limits, t(100));
        assert_eq!(second.refused, None);
        assert_eq!(second.requests_per_second.unwrap().remaining, 0);
        assert_eq!(
            windows.acquire(&limits, t(200)).refused,
            Some((LimitKind::RequestsPerSecond, 3))
        );
        // A refused request is not counted; two seconds later the window is clear.
        assert_eq!(windows.acquire(&limits, t(2_100)).refused, None);
    }

    #[test]
    fn the_sliding_window_weights_the_previous_window() {
        let mut window = SlidingWindow::new(60_000_000);
        window.add(t(0), 60);
        // 30 s into the next window, half of the previous one still counts.
        assert_eq!(window.count(t(50_000)), 60);
        assert_eq!(window.count(t(90_000)), 30);
        assert_eq!(window.count(t(125_000)), 0);
    }

    #[test]
    fn tokens_refuse_only_once_strictly_exceeded() {
        let limits = Limits {
            tpm: Some(100),
            ..Limits::default()
        };
        let mut windows = Windows::default();
        windows.record_tokens(100, t(0));
        let at_limit = windows.acquire(&limits, t(10));
        assert_eq!(at_limit.refused, None, "exactly at the limit is not over it");
        assert_eq!(at_limit.tokens_per_minute.unwrap().remaining, 0);
        windows.record_tokens(5, t(20));
        assert_eq!(
            windows.acquire(&limits, t(30)).refused,
            Some((LimitKind::TokensPerMinute, 105))
        );
        assert_eq!(windows.acquire(&limits, t(121_000)).refused, None);
    }

    #[test]
    fn qpm_counts_across_seconds_and_reports_reset() {
        let limits = Limits {
            qpm: Some(3),
            qps: Some(10),
            tpm: None,
        };
        let mut windows = Windows::default();
        for i in 0..3 {
            assert_eq!(windows.acquire(&limits, t(i * 1_000)).refused, None);
        }
        let refused = windows.acquire(&limits, t(5_000));
        assert_eq!(refused.refused, Some((LimitKind::RequestsPerMinute, 4)));
        let status = refused.requests_per_minute.unwrap();
        assert_eq!((status.limit, status.remaining), (3, 0));
        assert_eq!(status.reset_after_us, 55_000_000);
    }

    #[test]
    fn a_shared_count_agrees_with_the_local_one() {
        let mut window = SlidingWindow::new(MINUTE_US);
        window.add(t(0), 60);
        window.add(t(61_000), 7);
        let at = WindowAt::of(MINUTE_US, t(90_000));
        assert_eq!(at.count(7, 60), window.count(t(90_000)));
        assert_eq!(at.reset_after_us, window.reset_after_us(t(90_000)));
        assert_eq!(at.previous_start_us + MINUTE_US, at.start_us);
    }

    #[test]
    fn the_tightest_status_is_shown_and_limits_split_across_nodes() {
        let key = Limits {
            qpm: Some(100),
            ..Limits::default()
        }
        .decide([0, 10, 0], [0, 5, 0]);
        let team = Limits {
            qpm: Some(20),
            tpm: Some(1_000),
            ..Limits::default()
        }
        .decide([0, 15, 10], [0, 7, 9]);
        let tight = LimitDecision::tightest(&[key, team]).unwrap();
        assert_eq!(tight.requests_per_minute.unwrap().remaining, 4);
        assert_eq!(tight.tokens_per_minute.unwrap().limit, 1_000);
        let split = Limits {
            qps: Some(5),
            qpm: Some(1),
            tpm: Some(1_000),
        }
        .per_node(2);
        assert_eq!((split.qps, split.qpm, split.tpm), (Some(3), Some(1), Some(500)));
    }

    #[test]
    fn tiers_rise_with_spend_never_fall_and_can_be_pinned() {
        let usd = |n: i64| Ticks::new(n * Ticks::PER_USD);
        let tier = |min: i64, rpm: u32| Tier {
            min_spend: usd(min),
            default: Limits {
                qpm: Some(rpm),
                ..Limits::default()
            },
            models: BTreeMap::from([(
                "big".to_owned(),
                Limits {
                    qpm: Some(rpm / 2),
                    ..Limits::default()
                },
            )]),
        };
        let schedule = TierSchedule::new(vec![tier(0, 10), tier(50, 100), tier(250, 1_000)]).unwrap();
        assert_eq!(schedule.tier_for(usd(49)), 0);
        assert_eq!(schedule.tier_for(usd(50)), 1);
        let standing = |reached, pinned, spend| TierStanding {
            reached,
            pinned,
            qualifying_spend: usd(spend),
        };
        assert_eq!(schedule.tier_of(&standing(0, None, 300)), 2);
        assert_eq!(schedule.tier_of(&standing(2, None, 0)), 2, "never downgraded");
        assert_eq!(
            schedule.tier_of(&standing(2, Some(0), 300)),
            0,
            "the operator's pin wins"
        );
        assert_eq!(schedule.tier_of(&standing(9, None, 0)), 2, "within the schedule");
        assert_eq!(schedule.limits(1, "small").qpm, Some(100));
        assert_eq!(schedule.limits(1, "big").qpm, Some(50));
        assert_eq!(TierSchedule::default().limits(0, "any"), Limits::default());
        assert_eq!(
            TierSchedule::new(vec![tier(5, 1)]),
            Err(TierScheduleError::FirstNotZero)
        );
        assert_eq!(
            TierSchedule::new(vec![tier(0, 1), tier(0, 2)]),
            Err(TierScheduleError::NotRising(1))
        );
    }
}
