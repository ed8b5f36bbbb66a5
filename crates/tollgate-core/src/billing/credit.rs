//! Credit holds: before a request reaches a model, its worst-case cost is held against its
//! team's credit; settling charges the actual cost and releases the rest.
//!
//! Holds are local to the node and cost no database write. They draw on a **lease**: a slice of
//! the team's spendable credit (promotional and prepaid credit, plus the month's invoice headroom
//! under the spending limit) that the node takes from the database in one transaction
//! ([`tollgate_store::CreditStore::take_lease`]), growing it as demand grows. Spends move the
//! team's balance in the group commit, and the node's own count of its lease at once; the
//! database's lease shrinks when the node next renews or grows it and reports what it has spent
//! on it in all (until then other nodes see less credit free, never more). The keeper renews
//! leases in use and returns idle ones; a crashed node's lease expires. So however many requests and nodes serve a team, the credit they hold
//! together never exceeds what the team may spend.
//!
//! **Time.** A lease's expiry is on the database's clock. The node counts it from the moment
//! *before* it asked (its own monotonic clock), less a margin, so it never believes a lease
//! lives longer than the database does. A request is admitted on a lease only if the lease
//! outlives the longest request ([`CreditSettings::max_request`]) plus the margin, and requests
//! are cut off at that bound: no spend lands on a lease that other nodes may already re-lend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tollgate_domain::{Clock, TeamId, Ticks};
use tollgate_store::{LeaseGrant, LeaseRequest, Store, StoreError};
use uuid::Uuid;

/// A lease grows by at least this many holds of the request that grows it.
const LEASE_HOLDS: i64 = 8;

/// How leases are sized in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditSettings {
    /// How long a lease lives after it is taken or renewed.
    pub lease_ttl: Duration,
    /// The longest a request may run; admission needs a lease that outlives it.
    pub max_request: Duration,
    /// The operator's default maximum invoiced spending limit (`hardSlAuto`).
    pub default_hard_limit: Ticks,
}

impl CreditSettings {
    /// What a node subtracts from a lease's life for the drift between its clock and the
    /// database's, and for the time its last spend takes to commit.
    #[must_use]
    pub fn margin(&self) -> Duration {
        (self.lease_ttl / 10).max(Duration::from_millis(50))
    }

    /// Whether a lease of this life can admit anything at all.
    #[must_use]
    pub fn is_consistent(&self) -> bool {
        self.lease_ttl > self.max_request + self.margin() * 2
    }

    /// How long after it is taken or renewed a lease may admit requests.
    #[must_use]
    pub fn admit_window(&self) -> Duration {
        self.lease_ttl
            .saturating_sub(self.max_request)
            .saturating_sub(self.margin())
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Why no hold was made.
#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    /// The team's credit and invoice headroom do not cover the request's worst case.
    #[error("the team's credit does not cover this request")]
    Exhausted,
    /// The database could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A node's lease of one team's credit, as the node knows it.
#[derive(Debug)]
struct LocalLease {
    id: Uuid,
    /// What the lease holds (the database's amount, less the spends not reported to it yet).
    granted: i64,
    /// What the node's committed spends on the lease come to since it was taken: reported to
    /// the database whenever the lease is renewed or grown.
    committed: i64,
    /// When the node asked for the lease's current expiry (before the database set it).
    asked_at: Instant,
}

#[derive(Debug, Default)]
struct TeamState {
    lease: Option<LocalLease>,
    /// Credit held by requests in flight on this node.
    held: i64,
    /// Credit spent on the lease since it last grew: how fast the team spends here.
    spent: i64,
    holds: u64,
    last_used: Option<Instant>,
}

#[derive(Debug, Default)]
struct TeamSlot {
    state: Mutex<TeamState>,
    /// One database trip per team at a time: requests that queue behind it find the grown
    /// lease instead of asking again.
    grow: tokio::sync::Mutex<()>,
}

impl TeamSlot {
    fn state(&self) -> MutexGuard<'_, TeamState> {
        // The state is plain numbers, consistent after every statement: a panic elsewhere
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Credit held for one request until it is settled. Dropping it unsettled (an upstream error,
/// a panic, a cancelled task) releases the credit: no exit path keeps it.
#[derive(Debug)]
pub struct Hold {
    slot: Option<Arc<TeamSlot>>,
    amount: i64,
    lease_id: Option<Uuid>,
}

impl Hold {
    /// What is held.
    #[must_use]
    pub fn amount(&self) -> Ticks {
        Ticks::new(self.amount)
    }

    /// The lease it draws on (`None` for a free request).
    #[must_use]
    pub fn lease_id(&self) -> Option<Uuid> {
        self.lease_id
    }

    /// A hold of nothing, for a request that costs nothing.
    #[must_use]
    pub fn free() -> Self {
        Self {
            slot: None,
            amount: 0,
            lease_id: None,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut state = slot.state();
            state.held -= self.amount;
            state.holds = state.holds.saturating_sub(1);
        }
    }
}

/// Where a node reads its monotonic time: [`Instant::now`], unless a test moves its own (a node
/// that stalls, or a lease that ages, without waiting for it).
pub type Monotonic = Arc<dyn Fn() -> Instant + Send + Sync>;

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    instant: Monotonic,
    node_id: Uuid,
    settings: CreditSettings,
    teams: Mutex<HashMap<TeamId, Arc<TeamSlot>>>,
}

/// The node's credit holds and leases. Cheap to clone.
#[derive(Clone)]
pub struct Credits {
    inner: Arc<Inner>,
}

impl Credits {
    /// Holds against `store`'s credit, as a node of its own.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: CreditSettings) -> Self {
        Self::with_monotonic(store, clock, Arc::new(Instant::now), settings)
    }

    /// [`Self::new`], reading monotonic time from `instant` (a test's, which it moves).
    pub fn with_monotonic(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        instant: Monotonic,
        settings: CreditSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                instant,
                node_id: Uuid::now_v7(),
                settings,
                teams: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn now(&self) -> Instant {
        (self.inner.instant)()
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &CreditSettings {
        &self.inner.settings
    }

    fn teams(&self) -> MutexGuard<'_, HashMap<TeamId, Arc<TeamSlot>>> {
        self.inner.teams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, team_id: TeamId) -> Arc<TeamSlot> {
        Arc::clone(self.teams().entry(team_id).or_default())
    }

    /// Whether a lease asked for at `asked_at` may still admit a request at `now`.
    fn admits(&self, asked_at: Instant, now: Instant) -> bool {
        let settings = &self.inner.settings;
        now + settings.max_request + settings.margin() < asked_at + settings.lease_ttl
    }

    /// Holds `amount` if the node's lease covers it.
    fn try_hold(&self, slot: &Arc<TeamSlot>, amount: i64) -> Option<Hold> {
        let now = self.now();
        let mut state = slot.state();
        let held = state.held;
        let lease = state.lease.as_ref()?;
        if !self.admits(lease.asked_at, now) || lease.granted - held < amount {
            return None;
        }
        let lease_id = lease.id;
        state.held += amount;
        state.holds += 1;
        state.last_used = Some(now);
        Some(Hold {
            slot: Some(Arc::clone(slot)),
            amount,
            lease_id: Some(lease_id),
        })
    }

    /// Holds `amount` of the team's credit for one request, growing the node's lease from the
    /// database when it does not cover it; [`CreditError::Exhausted`] when the team cannot.
    pub async fn hold(&self, team_id: TeamId, amount: Ticks) -> Result<Hold, CreditError> {
        let amount = amount.get();
        if amount <= 0 {
            return Ok(Hold::free());
        }
        let slot = self.slot(team_id);
        if let Some(hold) = self.try_hold(&slot, amount) {
            return Ok(hold);
        }
        let _one_trip = slot.grow.lock().await;
        if let Some(hold) = self.try_hold(&slot, amount) {
            return Ok(hold);
        }
        let (lease_id, granted, committed, held, spent) = {
            let state = slot.state();
            let lease = state.lease.as_ref();
            (
                lease.map(|l| l.id),
                lease.map_or(0, |l| l.granted),
                lease.map_or(0, |l| l.committed),
                state.held,
                state.spent,
            )
        };
        let need = amount.saturating_add(held).saturating_sub(granted).max(0);
        // Grow geometrically (by what is left, or twice what was spent since the last growth:
        // a lease spent down still doubles), and by several holds at least: a busy team costs
        // a database trip per doubling, and a quiet one a trip per few requests (holds are
        // worst cases, so a lease of a few outlasts many actual costs), not one per request.
        // The database lends at most half of what would be left free beyond the need.
        let growth = amount
            .saturating_mul(LEASE_HOLDS)
            .max(granted)
            .max(spent.saturating_mul(2));
        let want = need.saturating_add(growth);
        let settings = self.inner.settings;
        let now = self.inner.clock.now();
        let asked_at = self.now();
        let grant = self
            .inner
            .store
            .take_lease(&LeaseRequest {
                team_id,
                lease_id,
                spent: Ticks::new(committed),
                node_id: self.inner.node_id,
                need: Ticks::new(need),
                want: Ticks::new(want),
                ttl_ms: settings.ttl_ms(),
                now,
                promo_horizon: now + chrono::Duration::from_std(settings.lease_ttl).unwrap_or(chrono::Duration::MAX),
                default_hard_limit: settings.default_hard_limit,
            })
            .await?;
        match grant {
            LeaseGrant::Granted {
                lease_id,
                added,
                renewed,
            } => {
                let mut state = slot.state();
                state.spent = 0;
                match state.lease.as_mut().filter(|lease| renewed && lease.id == lease_id) {
                    Some(lease) => {
                        lease.granted += added.get();
                        lease.asked_at = asked_at;
                    }
                    None => {
                        state.lease = Some(LocalLease {
                            id: lease_id,
                            granted: added.get(),
                            committed: 0,
                            asked_at,
                        });
                    }
                }
            }
            LeaseGrant::Insufficient { .. } => return Err(CreditError::Exhausted),
        }
        self.try_hold(&slot, amount).ok_or(CreditError::Exhausted)
    }

    /// Ends `hold` once its request's `cost` is committed: the lease shrinks by the cost (the
    /// database's when the node next reports its spends) and the hold is released.
    pub fn settled(&self, hold: Hold, cost: Ticks) {
        if let Some(slot) = &hold.slot {
            let mut state = slot.state();
            if let Some(lease) = state.lease.as_mut().filter(|lease| Some(lease.id) == hold.lease_id) {
                lease.granted = (lease.granted - cost.get()).max(0);
                lease.committed = lease.committed.saturating_add(cost.get());
                state.spent = state.spent.saturating_add(cost.get());
            }
        }
        drop(hold);
    }

    /// Stops admitting the team's requests on this node's lease at once (credit was taken back,
    /// e.g. a refund or dispute): holds in flight go on; a new request needs a fresh lease,
    /// which the database lends only from what is spendable now. The lease is returned when
    /// idle.
    pub fn revoke(&self, team_id: TeamId) {
        let Some(slot) = self.teams().get(&team_id).cloned() else {
            return;
        };
        let mut state = slot.state();
        let held = state.held;
        if let Some(lease) = state.lease.as_mut() {
            lease.granted = lease.granted.min(held);
        }
    }

    /// One round of the keeper: renews leases in use before they stop admitting, returns those
    /// idle for a while, and forgets teams with nothing held.
    pub async fn keep(&self) -> Result<(), StoreError> {
        let settings = self.inner.settings;
        // Long enough that a team sending a request every few seconds keeps its lease (else
        // each request would cost a take and a return: two database trips), short enough that
        // an idle node does not sit on credit (and, by the leases' fairness, never on more
        // than half of what was free).
        let idle_after = (settings.lease_ttl / 4).min(Duration::from_secs(30));
        let slots: Vec<Arc<TeamSlot>> = {
            let mut teams = self.teams();
            teams.retain(|_, slot| {
                let state = slot.state();
                Arc::strong_count(slot) > 1 || state.lease.is_some() || state.holds > 0
            });
            teams.values().cloned().collect()
        };
        for slot in slots {
            // A request growing the lease is using it: leave it be this round.
            let Ok(_one_trip) = slot.grow.try_lock() else {
                continue;
            };
            let now = self.now();
            let (lease_id, asked_at, committed, idle) = {
                let state = slot.state();
                let Some(lease) = &state.lease else { continue };
                let idle = state.holds == 0 && state.last_used.is_none_or(|at| now - at >= idle_after);
                (lease.id, lease.asked_at, lease.committed, idle)
            };
            if idle {
                // Checked again under the lock a hold takes: a request may have taken a hold
                // since, and a lease with a hold is never returned.
                let returned = {
                    let mut state = slot.state();
                    let still_idle = state.holds == 0 && state.lease.as_ref().is_some_and(|lease| lease.id == lease_id);
                    if still_idle {
                        state.lease = None;
                        state.spent = 0;
                    }
                    still_idle
                };
                if returned {
                    self.inner.store.return_lease(lease_id).await?;
                }
            } else if now - asked_at >= settings.admit_window() / 2 {
                let asked = self.now();
                let renewed = self
                    .inner
                    .store
                    .renew_lease(lease_id, Ticks::new(committed), settings.ttl_ms())
                    .await?;
                let mut state = slot.state();
                if state.lease.as_ref().is_some_and(|lease| lease.id == lease_id) {
                    if renewed {
                        if let Some(lease) = state.lease.as_mut() {
                            lease.asked_at = asked;
                        }
                    } else {
                        // It expired (the node stalled): its credit is the team's again.
                        tracing::warn!(lease.id = %lease_id, "a credit lease expired before it was renewed");
                        state.lease = None;
                        state.spent = 0;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs [`Self::keep`] until `stop`, then returns every lease.
    pub fn spawn_keeper(self, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        let every = (self.inner.settings.admit_window() / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let credits = self.clone();
        let keeper = crate::jobs::every("credit lease keeper", every, stop.clone(), move || {
            let credits = credits.clone();
            async move { credits.keep().await }
        });
        tokio::spawn(async move {
            let _ = keeper.await;
            self.return_all().await;
        })
    }

    /// Returns every lease nothing is held on (at shutdown). A lease still holding for a
    /// request is left to expire: its spend may yet commit.
    pub async fn return_all(&self) {
        let leases: Vec<Uuid> = self
            .teams()
            .values()
            .filter_map(|slot| {
                let mut state = slot.state();
                if state.holds > 0 {
                    return None;
                }
                state.lease.take().map(|lease| lease.id)
            })
            .collect();
        for lease in leases {
            if let Err(error) = self.inner.store.return_lease(lease).await {
                tracing::warn!(error = %error, "a credit lease could not be returned; it will expire");
            }
        }
    }
}
