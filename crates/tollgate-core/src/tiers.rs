//! Rate-limit tiers per team (xAI's scheme): a team's cumulative prepaid purchases and paid
//! invoices place it in a tier, which gives it per-model limits; it never moves down, and the
//! operator may pin it. Read from the store on a team's first request, then kept for a minute,
//! so a purchase raises the limits within a minute and the hot path reads nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tollgate_domain::ratelimit::{Limits, TierSchedule, TierStanding};
use tollgate_domain::{Actor, AuditAction, AuditEvent, Clock, RequestContext, TeamId, Timestamp};
use tollgate_store::{Store, StoreError};

/// How long a team's tier is kept before it is read again.
const KEEP_FOR: chrono::Duration = chrono::Duration::seconds(60);
/// Teams kept; past it, the expired ones are dropped.
const MAX_TEAMS: usize = 100_000;

/// Why a tier could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// No such tier in the schedule.
    #[error("there is no tier {0} (the schedule has {1})")]
    NoSuchTier(u32, usize),
    /// No team by that id.
    #[error("no such team")]
    TeamNotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A team's tier, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeamTier {
    /// The tier in force.
    pub tier: u32,
    /// What decided it.
    pub standing: TierStanding,
}

/// The tiers service.
#[derive(Clone)]
pub struct Tiers {
    schedule: Arc<TierSchedule>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    known: Arc<Mutex<HashMap<TeamId, (u32, Timestamp)>>>,
}

impl Tiers {
    /// Tiers by `schedule` (empty: teams are not limited per model).
    #[must_use]
    pub fn new(schedule: TierSchedule, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            schedule: Arc::new(schedule),
            store,
            clock,
            known: Arc::default(),
        }
    }

    /// The schedule.
    #[must_use]
    pub fn schedule(&self) -> &TierSchedule {
        &self.schedule
    }

    /// The limits `team` has for `model`; `None` without tiers.
    pub async fn limits(&self, team_id: TeamId, model: &str) -> Result<Option<Limits>, StoreError> {
        if self.schedule.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now();
        let known = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&team_id)
            .filter(|(_, until)| now < *until)
            .map(|(tier, _)| *tier);
        let tier = match known {
            Some(tier) => tier,
            None => self.refresh(team_id).await?.tier,
        };
        Ok(Some(self.schedule.limits(tier, model)))
    }

    /// Reads the team's standing, records a tier newly reached, and keeps the result.
    async fn refresh(&self, team_id: TeamId) -> Result<TeamTier, StoreError> {
        let standing = self.store.tier_standing(team_id).await?;
        let tier = self.schedule.tier_of(&standing);
        let reached = self.schedule.tier_for(standing.qualifying_spend);
        let now = self.clock.now();
        if reached > standing.reached {
            self.store.raise_tier(team_id, reached, now).await?;
            tracing::info!(team = %team_id, tier = reached, "the team reached a higher rate-limit tier");
        }
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_TEAMS {
            known.retain(|_, (_, until)| now < *until);
        }
        known.insert(team_id, (tier, now + KEEP_FOR));
        Ok(TeamTier {
            tier,
            standing: TierStanding {
                reached: standing.reached.max(reached),
                ..standing
            },
        })
    }

    /// The team's tier now, read afresh (for the operator).
    pub async fn tier_of(&self, team_id: TeamId) -> Result<TeamTier, TierError> {
        self.live_team(team_id).await?;
        Ok(self.refresh(team_id).await?)
    }

    /// Pins the team to `tier` (`None`: its spend decides again), audited. Takes effect on
    /// this node at once, on others within a minute.
    pub async fn pin(
        &self,
        team_id: TeamId,
        tier: Option<u32>,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<TeamTier, TierError> {
        if let Some(tier) = tier.filter(|tier| usize::try_from(*tier).unwrap_or(usize::MAX) >= self.schedule.len()) {
            return Err(TierError::NoSuchTier(tier, self.schedule.len()));
        }
        self.live_team(team_id).await?;
        let now = self.clock.now();
        let description = match tier {
            Some(tier) => format!("The operator pinned the team to rate-limit tier {tier}"),
            None => "The operator let the team's spend decide its rate-limit tier again".to_owned(),
        };
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            actor,
            AuditAction::SetRateLimitTier,
            description,
            Some(format!("team:{team_id}")),
            context,
        );
        self.store.pin_tier(team_id, tier, now, &audit).await?;
        Ok(self.refresh(team_id).await?)
    }

    async fn live_team(&self, team_id: TeamId) -> Result<(), TierError> {
        match self.store.get_team(team_id).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) => Err(TierError::TeamNotFound),
            Err(error) => Err(error.into()),
        }
    }
}
