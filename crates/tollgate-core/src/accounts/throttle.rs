//! The sign-in throttle and the hourly action limits, in memory on each node (a shared store
//! comes with Redis; until then a client spreading attempts over N nodes gets N times the budget).
//!
//! **Invariant:** an attempt is counted *before* the password is hashed, under one lock with the
//! check, so concurrent guesses cannot all pass the check first: at most
//! [`MAX_FAILURES_PER_ACCOUNT`] attempts on one account are evaluated per window, whatever the
//! concurrency. An attempt in flight counts like a failure until it is settled; a success then
//! drops it.
//!
//! Entries expire one by one (an idle window is pruned); a lockout is never reset by clearing a
//! full map. When a map is full of live entries, new keys are refused rather than tracked.
//! IPv6 clients are grouped by /64, which is what one subscriber usually gets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tollgate_domain::Timestamp;
use tollgate_domain::ratelimit::SlidingWindow;

/// The sign-in throttle's window.
const WINDOW_US: i64 = 15 * 60 * 1_000_000;
/// Password or second-factor attempts per account per window.
pub(crate) const MAX_FAILURES_PER_ACCOUNT: u64 = 10;
/// Password or second-factor attempts per client address (or IPv6 /64) per window.
pub(crate) const MAX_FAILURES_PER_ADDRESS: u64 = 100;
/// Entries per map; past it, idle ones are pruned, and new keys are refused while it is full.
const MAX_ENTRIES: usize = 100_000;
/// Pruning scans a map, so a full map of live entries is scanned at most this often.
const PRUNE_EVERY_US: i64 = 1_000_000;

#[derive(Debug)]
struct Attempts {
    failures: SlidingWindow,
    in_flight: u64,
}

impl Attempts {
    fn new() -> Self {
        Self {
            failures: SlidingWindow::new(WINDOW_US),
            in_flight: 0,
        }
    }

    fn count(&mut self, now: Timestamp) -> u64 {
        self.failures.count(now).saturating_add(self.in_flight)
    }
}

#[derive(Debug, Default)]
struct Maps {
    accounts: HashMap<String, Attempts>,
    addresses: HashMap<String, Attempts>,
    pruned_at_us: i64,
}

/// Makes room for a new key in `map`: prunes idle entries (at most once a second); `false` when
/// the map is still full.
fn room<V>(
    map: &mut HashMap<String, V>,
    key: &str,
    now: Timestamp,
    pruned_at_us: &mut i64,
    idle: impl Fn(&mut V) -> bool,
) -> bool {
    if map.len() < MAX_ENTRIES || map.contains_key(key) {
        return true;
    }
    let now_us = now.timestamp_micros();
    if now_us - *pruned_at_us >= PRUNE_EVERY_US {
        *pruned_at_us = now_us;
        map.retain(|_, value| !idle(value));
    }
    map.len() < MAX_ENTRIES
}

/// The throttle: shared by clones of the accounts service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Throttle {
    maps: Arc<Mutex<Maps>>,
    /// Actions that send mail or create accounts, per key (`reset:<user>`, `signup:<ip>`, …),
    /// over an hour.
    actions: crate::limits::HourlyLimits,
}

/// Why an attempt was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Throttled;

/// The key a client address is counted under: IPv4 as is, IPv6 by its /64.
pub(crate) fn address_key(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => ip.to_owned(),
    }
}

impl Throttle {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Begins a password or second-factor attempt on `account` from `ip`: counted now, before
    /// any work, or refused when the account or the address has no attempts left.
    pub(crate) fn begin(&self, account: &str, ip: Option<&str>, now: Timestamp) -> Result<Attempt, Throttled> {
        let address = ip.map(address_key);
        let mut maps = self.maps();
        let Maps {
            accounts,
            addresses,
            pruned_at_us,
        } = &mut *maps;
        let idle = |a: &mut Attempts| a.in_flight == 0 && a.failures.count(now) == 0;
        if !room(accounts, account, now, pruned_at_us, idle) {
            return Err(Throttled);
        }
        if let Some(address) = &address
            && !room(addresses, address, now, pruned_at_us, idle)
        {
            return Err(Throttled);
        }
        let over_account = accounts
            .get_mut(account)
            .is_some_and(|a| a.count(now) >= MAX_FAILURES_PER_ACCOUNT);
        let over_address = address.as_ref().is_some_and(|address| {
            addresses
                .get_mut(address)
                .is_some_and(|a| a.count(now) >= MAX_FAILURES_PER_ADDRESS)
        });
        if over_account || over_address {
            return Err(Throttled);
        }
        accounts
            .entry(account.to_owned())
            .or_insert_with(Attempts::new)
            .in_flight += 1;
        if let Some(address) = &address {
            addresses.entry(address.clone()).or_insert_with(Attempts::new).in_flight += 1;
        }
        Ok(Attempt {
            throttle: self.clone(),
            account: account.to_owned(),
            address,
            began_at: now,
            settled: false,
        })
    }

    /// Counts one `key` action; `false` when `max` were already counted in the past hour (or the
    /// table is full of live keys).
    pub(crate) fn allow(&self, key: &str, max: u64, now: Timestamp) -> bool {
        self.actions.allow(key, max, now)
    }

    fn settle(&self, account: &str, address: Option<&str>, failed_at: Option<Timestamp>) {
        let mut maps = self.maps();
        let settle_one = |attempts: Option<&mut Attempts>| {
            if let Some(attempts) = attempts {
                attempts.in_flight = attempts.in_flight.saturating_sub(1);
                if let Some(at) = failed_at {
                    attempts.failures.add(at, 1);
                }
            }
        };
        settle_one(maps.accounts.get_mut(account));
        if let Some(address) = address {
            settle_one(maps.addresses.get_mut(address));
        }
    }
}

/// An attempt in flight: counted until settled. Dropped unsettled (an error, a cancelled
/// request), it counts as a failure, so an aborted guess is still a guess.
#[derive(Debug)]
pub(crate) struct Attempt {
    throttle: Throttle,
    account: String,
    address: Option<String>,
    began_at: Timestamp,
    settled: bool,
}

impl Attempt {
    /// The secret was right: the attempt no longer counts.
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.throttle.settle(&self.account, self.address.as_deref(), None);
    }

    /// The secret was wrong: counted as a failure at `now`.
    pub(crate) fn failed(mut self, now: Timestamp) {
        self.settled = true;
        self.throttle.settle(&self.account, self.address.as_deref(), Some(now));
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle
                .settle(&self.account, self.address.as_deref(), Some(self.began_at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn attempts_in_flight_count_before_they_finish() {
        let throttle = Throttle::default();
        let attempts: Vec<Attempt> = (0..MAX_FAILURES_PER_ACCOUNT)
            .map(|_| throttle.begin("ada@example.com", Some("192.0.2.1"), at(0)).unwrap())
            .collect();
        assert_eq!(
            throttle.begin("ada@example.com", Some("192.0.2.9"), at(0)).unwrap_err(),
            Throttled
        );
        for attempt in attempts {
            attempt.succeeded();
        }
        // Successes drop out; failures stay for the window, then fade.
        for _ in 0..MAX_FAILURES_PER_ACCOUNT {
            throttle.begin("ada@example.com", None, at(1)).unwrap().failed(at(1));
        }
        assert!(throttle.begin("ada@example.com", None, at(2)).is_err());
        assert!(throttle.begin("bob@example.com", None, at(2)).is_ok());
        assert!(throttle.begin("ada@example.com", None, at(2 * 15 * 60 + 1)).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(address_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(address_key("2001:db8:1:2:ffff::9"), "2001:db8:1:2::/64");
        assert_eq!(address_key("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(address_key("192.0.2.1"), "192.0.2.1");
        let throttle = Throttle::default();
        for i in 0..MAX_FAILURES_PER_ADDRESS {
            let ip = format!("2001:db8:1:2::{i:x}");
            throttle
                .begin(&format!("u{i}@example.com"), Some(&ip), at(0))
                .unwrap()
                .failed(at(0));
        }
        assert!(
            throttle
                .begin("new@example.com", Some("2001:db8:1:2:9::9"), at(0))
                .is_err()
        );
        assert!(
            throttle
                .begin("new@example.com", Some("2001:db8:1:3::9"), at(0))
                .is_ok()
        );
    }

    #[test]
    fn full_maps_prune_idle_entries_one_by_one_and_keep_lockouts() {
        let throttle = Throttle::default();
        for _ in 0..MAX_FAILURES_PER_ACCOUNT {
            throttle.begin("locked@example.com", None, at(0)).unwrap().failed(at(0));
        }
        for i in 0..MAX_ENTRIES - 2 {
            throttle.begin(&format!("u{i}"), None, at(0)).unwrap().failed(at(0));
        }
        // An idle entry makes room when pruned.
        throttle.begin("idle", None, at(0)).unwrap().succeeded();
        throttle.begin("x", None, at(2)).unwrap().failed(at(2));
        assert!(!throttle.maps().accounts.contains_key("idle"));
        // Full of live entries: new keys are refused, not tracked.
        assert!(throttle.begin("y", None, at(3)).is_err());
        // Later the ones whose single failure has faded are pruned; the lockout, still fading,
        // is kept with its count (at(0) starts a window, so at(901) weighs it by 899/900).
        let later = at(15 * 60 + 1);
        assert!(throttle.begin("y", None, later).is_ok());
        let mut maps = throttle.maps();
        assert_eq!(maps.accounts.len(), 2, "locked and y");
        assert_eq!(maps.accounts.get_mut("locked@example.com").unwrap().count(later), 9);
    }

    #[test]
    fn a_dropped_attempt_counts_as_a_failure() {
        let throttle = Throttle::default();
        drop(throttle.begin("ada", None, at(0)).unwrap());
        let mut maps = throttle.maps();
        let attempts = maps.accounts.get_mut("ada").unwrap();
        assert_eq!((attempts.in_flight, attempts.count(at(0))), (0, 1));
    }
}
