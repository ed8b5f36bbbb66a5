//! Hourly limits on actions people can repeat at others' expense: mail they cause (invitations,
//! email-change confirmations, links), sign-ups, external sign-ins begun. In memory on each node:
//! with several nodes each counts its own, so the hourly caps are per node (`redis_url` shares
//! only the inference rate limits so far).
//!
//! Keys expire one by one: an idle window is pruned when the table is full, never the whole
//! table at once (that would reset every limit). While the table is full of live keys, new keys
//! are refused rather than tracked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tollgate_domain::Timestamp;
use tollgate_domain::ratelimit::SlidingWindow;

const HOUR_US: i64 = 60 * 60 * 1_000_000;
/// Keys in the table; past it, idle ones are pruned (at most once a second).
const MAX_KEYS: usize = 100_000;
const PRUNE_EVERY_US: i64 = 1_000_000;

#[derive(Debug, Default)]
struct Table {
    windows: HashMap<String, SlidingWindow>,
    pruned_at_us: i64,
}

impl Table {
    /// Whether `key` has (or can get) a window.
    fn room_for(&mut self, key: &str, now: Timestamp) -> bool {
        if self.windows.len() < MAX_KEYS || self.windows.contains_key(key) {
            return true;
        }
        let now_us = now.timestamp_micros();
        if now_us - self.pruned_at_us >= PRUNE_EVERY_US {
            self.pruned_at_us = now_us;
            self.windows.retain(|_, window| window.count(now) > 0);
        }
        self.windows.len() < MAX_KEYS
    }
}

/// Counters over the past hour, per key; shared by clones.
#[derive(Debug, Clone, Default)]
pub struct HourlyLimits {
    table: Arc<Mutex<Table>>,
}

impl HourlyLimits {
    /// Counts one action under every `(key, max)` at once, or none: `false` (nothing counted)
    /// when any key already counted its `max` in the past hour.
    pub fn allow_all(&self, limits: &[(&str, u64)], now: Timestamp) -> bool {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, max) in limits {
            if !table.room_for(key, now) {
                return false;
            }
            let over = table
                .windows
                .get_mut(*key)
                .is_some_and(|window| window.count(now) >= *max);
            if over {
                return false;
            }
        }
        for (key, _) in limits {
            table
                .windows
                .entry((*key).to_owned())
                .or_insert_with(|| SlidingWindow::new(HOUR_US))
                .add(now, 1);
        }
        true
    }

    /// Counts one `key` action; `false` when `max` were already counted in the past hour.
    pub fn allow(&self, key: &str, max: u64, now: Timestamp) -> bool {
        self.allow_all(&[(key, max)], now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn every_limit_must_pass_and_a_refusal_counts_nothing() {
        let limits = HourlyLimits::default();
        for _ in 0..2 {
            assert!(limits.allow_all(&[("from:ada", 10), ("to:x", 2)], at(0)));
        }
        assert!(!limits.allow_all(&[("from:ada", 10), ("to:x", 2)], at(1)));
        // The refusal did not count against the sender.
        for _ in 0..8 {
            assert!(limits.allow_all(&[("from:ada", 10), ("to:y", 100)], at(2)));
        }
        assert!(!limits.allow("from:ada", 10, at(3)));
        assert!(limits.allow("from:ada", 10, at(2 * 3600 + 1)));
    }
}
