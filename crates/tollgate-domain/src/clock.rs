//! Time as a parameter. No service reads the wall clock directly: they take a [`Clock`], so
//! tests move time (MFA windows, key expiry, month close) instead of sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// A point in time, always UTC.
pub type Timestamp = DateTime<Utc>;

/// The source of "now".
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(clippy::disallowed_methods, reason = "the one place that reads the wall clock")]
    fn now(&self) -> Timestamp {
        // Microseconds: the precision PostgreSQL keeps, so a time round-trips exactly on both
        // backends. Cut, not rounded: a time never runs ahead of the clock, and cutting is a
        // division where rounding a `DateTime` took a third of the call.
        let now = Utc::now();
        Timestamp::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock stopped at `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system clock's time has no part below a microsecond, and is never ahead of the
    /// wall clock.
    #[test]
    #[expect(clippy::disallowed_methods, reason = "compared with the wall clock it reads")]
    fn the_system_clock_reads_to_the_microsecond_and_never_ahead() {
        for _ in 0..1000 {
            let now = SystemClock.now();
            let after = Utc::now();
            assert_eq!(now.timestamp_subsec_nanos() % 1000, 0, "{now:?}");
            assert!(now <= after, "{now:?} is ahead of {after:?}");
            assert!(after - now < Duration::seconds(1));
        }
    }
}
