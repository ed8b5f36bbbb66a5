//! Rate-limit arithmetic: sliding-window counters and the decision for one request against a
//! key's `qps`, `qpm` and `tpm`. Pure: the caller owns the state and passes the time in, so the
//! same rules serve an in-process limiter and a shared one.
//!
//! Semantics follow xAI's: request limits refuse the request that would go over; the token limit
//! "engages when the limit is strictly exceeded" (tokens are counted when a request finishes, so
//! in-flight requests may push the count over; the next request is refused).

use crate::clock::Timestamp;

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

/// A key's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per second.
    pub qps: Option<u32>,
    /// Requests per minute.
    pub qpm: Option<u32>,
    /// Tokens (prompt + completion + reasoning, cached included) per minute.
    pub tpm: Option<u64>,
}

impl KeyLimits {
    /// Whether any limit is set.
    #[must_use]
    pub const fn any(&self) -> bool {
        self.qps.is_some() || self.qpm.is_some() || self.tpm.is_some()
    }
}

/// The counters of one limited subject (a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyWindows {
    second: SlidingWindow,
    minute: SlidingWindow,
    tokens: SlidingWindow,
}

impl Default for KeyWindows {
    fn default() -> Self {
        Self {
            second: SlidingWindow::new(1_000_000),
            minute: SlidingWindow::new(60_000_000),
            tokens: SlidingWindow::new(60_000_000),
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

impl KeyWindows {
    /// Decides whether a new request may start at `now` under `limits`, and counts it if so.
    pub fn acquire(&mut self, limits: &KeyLimits, now: Timestamp) -> LimitDecision {
        let second = self.second.count(now);
        let minute = self.minute.count(now);
        let tokens = self.tokens.count(now);
        let refused = if limits.qps.is_some_and(|l| second + 1 > u64::from(l)) {
            Some((LimitKind::RequestsPerSecond, second + 1))
        } else if limits.qpm.is_some_and(|l| minute + 1 > u64::from(l)) {
            Some((LimitKind::RequestsPerMinute, minute + 1))
        } else {
            limits
                .tpm
                .filter(|&l| tokens > l)
                .map(|_| (LimitKind::TokensPerMinute, tokens))
        };
        let taken = u64::from(refused.is_none());
        if refused.is_none() {
            self.second.add(now, 1);
            self.minute.add(now, 1);
        }
        let status = |limit: u64, used: u64, window: &SlidingWindow| LimitStatus {
            limit,
            remaining: limit.saturating_sub(used),
            reset_after_us: window.reset_after_us(now),
        };
        LimitDecision {
            refused,
            requests_per_second: limits.qps.map(|l| status(u64::from(l), second + taken, &self.second)),
            requests_per_minute: limits.qpm.map(|l| status(u64::from(l), minute + taken, &self.minute)),
            tokens_per_minute: limits.tpm.map(|l| status(l, tokens, &self.tokens)),
        }
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
        let limits = KeyLimits {
            qps: Some(2),
            ..KeyLimits::default()
        };
        let mut windows = KeyWindows::default();
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
        let limits = KeyLimits {
            tpm: Some(100),
            ..KeyLimits::default()
        };
        let mut windows = KeyWindows::default();
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
        let limits = KeyLimits {
            qpm: Some(3),
            qps: Some(10),
            tpm: None,
        };
        let mut windows = KeyWindows::default();
        for i in 0..3 {
            assert_eq!(windows.acquire(&limits, t(i * 1_000)).refused, None);
        }
        let refused = windows.acquire(&limits, t(5_000));
        assert_eq!(refused.refused, Some((LimitKind::RequestsPerMinute, 4)));
        let status = refused.requests_per_minute.unwrap();
        assert_eq!((status.limit, status.remaining), (3, 0));
        assert_eq!(status.reset_after_us, 55_000_000);
    }
}
