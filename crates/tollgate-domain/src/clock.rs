//! Time as a parameter. No service reads the wall clock directly: they take a [`Clock`], so
//! tests move time (MFA windows, key expiry, month close) instead of sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Duration, DurationRound as _, Utc};

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
        // backends.
        let now = Utc::now();
        now.duration_round(Duration::microseconds(1)).unwrap_or(now)
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
