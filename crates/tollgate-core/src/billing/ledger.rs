//! The credit ledger service: the operator's grants and adjustments, balances, verification,
//! and the expiry of promotional credit. Every entry is written with its audit event in one
//! transaction; amounts are exact ticks (parsed from decimal USD at the edge, never a float).

use std::sync::Arc;

use tollgate_domain::ledger::format_usd;
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Balance, Bucket, Clock, EntryKind, LedgerEntry, RequestContext, SpendingLimits,
    TeamId, Ticks, Timestamp,
};
use tollgate_store::{Store, StoreError};

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// No such team, or it was deleted.
    #[error("no such team (or it was deleted)")]
    TeamNotFound,
    /// A grant must be more than zero.
    #[error("a grant must be more than $0")]
    NotPositive,
    /// An adjustment of zero changes nothing.
    #[error("an adjustment must not be $0")]
    Zero,
    /// A reason is required (at most 500 characters, no control characters).
    #[error("the reason {0}")]
    InvalidReason(tollgate_domain::NameError),
    /// A promotional grant needs an expiry in the future.
    #[error("a promotional grant needs an expiry in the future")]
    InvalidExpiry,
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A spending limit above the maximum the operator allows the team.
    #[error("the spending limit may be at most ${0} for this team")]
    AboveCap(String),
    /// A negative spending limit.
    #[error("a spending limit must not be negative")]
    NegativeLimit,
    /// A usage question that cannot be answered as asked.
    #[error("{0}")]
    InvalidQuery(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A team's credit and how it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamCredit {
    /// What is left.
    pub balance: Balance,
    /// The newest entries other than spend.
    pub entries: Vec<LedgerEntry>,
    /// Spend of the credit, per billing month, newest first.
    pub monthly_spend: Vec<tollgate_domain::MonthlySpend>,
}

/// A team's month so far, as its invoice will show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoicePreview {
    /// The month's first instant (UTC).
    pub month_start: Timestamp,
    /// Its lines and how they were paid.
    pub usage: tollgate_domain::MonthUsage,
    /// The spending limits in force.
    pub limits: SpendingLimits,
    /// The credit left.
    pub balance: Balance,
}

/// The ledger service.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The operator's default maximum invoiced spending limit (`hardSlAuto`).
    default_hard_limit: Ticks,
}

fn reason(text: &str) -> Result<String, LedgerError> {
    Ok(tollgate_domain::Name::parse_max(text, 500)
        .map_err(LedgerError::InvalidReason)?
        .into_string())
}

impl Ledger {
    /// A ledger over `store`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            default_hard_limit: Ticks::ZERO,
        }
    }

    /// Every team's maximum invoiced spending limit, unless the operator overrides it for one.
    #[must_use]
    pub fn with_default_hard_limit(mut self, limit: Ticks) -> Self {
        self.default_hard_limit = limit;
        self
    }

    pub(super) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The team's limits.
    async fn limits_of(&self, team_id: TeamId) -> Result<SpendingLimits, LedgerError> {
        let (soft, hard_override) = self.store.spending_limits(team_id).await?;
        Ok(SpendingLimits {
            hard_auto: self.default_hard_limit,
            hard_override,
            soft,
        })
    }

    /// The caller's team's invoiced spending limits (Admins and management keys).
    pub async fn spending_limits(&self, caller: &crate::Caller) -> Result<SpendingLimits, LedgerError> {
        if !caller.allows(tollgate_domain::Permission::ManageBilling) {
            return Err(LedgerError::Forbidden("Only team Admins may see the spending limits"));
        }
        self.limits_of(caller.team_id()).await
    }

    /// Sets the caller's team's monthly invoiced spending limit (Admins and management keys):
    /// at most the maximum the operator allows (`0`: prepaid credit only).
    pub async fn set_soft_limit(
        &self,
        caller: &crate::Caller,
        limit: Ticks,
        context: &RequestContext,
    ) -> Result<SpendingLimits, LedgerError> {
        if !caller.allows(tollgate_domain::Permission::ManageBilling) {
            return Err(LedgerError::Forbidden("Only team Admins may set the spending limit"));
        }
        if limit.get() < 0 {
            return Err(LedgerError::NegativeLimit);
        }
        let mut limits = self.limits_of(caller.team_id()).await?;
        let cap = limits.effective_hard();
        if limit > cap {
            return Err(LedgerError::AboveCap(format_usd(cap)));
        }
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            Some(caller.team_id()),
            caller.actor(),
            AuditAction::SetSpendingLimit,
            format!("Set the monthly invoiced spending limit to ${}", format_usd(limit)),
            Some(format!("team:{}", caller.team_id())),
            context,
        );
        self.store
            .set_soft_limit(caller.team_id(), Some(limit), now, &audit)
            .await?;
        limits.soft = Some(limit);
        Ok(limits)
    }

    /// A team's spending limits, for an operator.
    pub async fn limits_for_operator(
        &self,
        _operator: &crate::Operator,
        team_id: TeamId,
    ) -> Result<SpendingLimits, LedgerError> {
        self.limits_of(team_id).await
    }

    /// Sets the operator's maximum for one team (`hardSlOverride`; `None` returns it to the
    /// default).
    pub async fn set_hard_override(
        &self,
        team_id: TeamId,
        limit: Option<Ticks>,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<SpendingLimits, LedgerError> {
        if limit.is_some_and(|limit| limit.get() < 0) {
            return Err(LedgerError::NegativeLimit);
        }
        self.live_team(team_id).await?;
        let now = self.clock.now();
        let description = match limit {
            Some(limit) => format!(
                "The operator set the team's maximum invoiced spending limit to ${}",
                format_usd(limit)
            ),
            None => "The operator returned the team's maximum invoiced spending limit to the default".to_owned(),
        };
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            actor,
            AuditAction::SetSpendingLimit,
            description,
            Some(format!("team:{team_id}")),
            context,
        );
        self.store.set_hard_override(team_id, limit, now, &audit).await?;
        self.limits_of(team_id).await
    }

    async fn live_team(&self, team_id: TeamId) -> Result<(), LedgerError> {
        match self.store.get_team(team_id).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) => Err(LedgerError::TeamNotFound),
            Err(other) => Err(other.into()),
        }
    }

    async fn append(
        &self,
        entry: LedgerEntry,
        action: AuditAction,
        description: String,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<LedgerEntry, LedgerError> {
        let audit = AuditEvent::success(
            entry.created_at,
            Some(entry.team_id),
            actor,
            action,
            description,
            Some(format!("ledger_entry:{}", entry.id)),
            context,
        );
        self.store.append_ledger_entry(&entry, &audit).await?;
        Ok(entry)
    }

    /// Grants `amount` (> 0) to the team: prepaid credit, or promotional credit that expires at
    /// `promo_expires`. Each call is a new entry.
    pub async fn grant(
        &self,
        team_id: TeamId,
        amount: Ticks,
        why: &str,
        promo_expires: Option<Timestamp>,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<LedgerEntry, LedgerError> {
        if amount.get() <= 0 {
            return Err(LedgerError::NotPositive);
        }
        let why = reason(why)?;
        let now = self.clock.now();
        if promo_expires.is_some_and(|at| at <= now) {
            return Err(LedgerError::InvalidExpiry);
        }
        self.live_team(team_id).await?;
        let id = uuid::Uuid::now_v7();
        let (kind, bucket, description) = match promo_expires {
            Some(at) => (
                EntryKind::PromoGrant,
                Bucket::Promo,
                format!(
                    "Granted ${} of promotional credit, expiring {}: {why}",
                    format_usd(amount),
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            ),
            None => (
                EntryKind::Adjustment,
                Bucket::Prepaid,
                format!("Granted ${} of prepaid credit: {why}", format_usd(amount)),
            ),
        };
        let entry = LedgerEntry {
            id,
            team_id,
            kind,
            bucket,
            amount,
            idempotency_key: format!("manual:{id}"),
            lot_id: promo_expires.map(|_| id),
            expires_at: promo_expires,
            reason: Some(why),
            created_at: now,
        };
        self.append(entry, AuditAction::GrantCredits, description, actor, context)
            .await
    }

    /// Adjusts the team's prepaid credit by `amount` (either sign, not zero), for a reason.
    pub async fn adjust(
        &self,
        team_id: TeamId,
        amount: Ticks,
        why: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<LedgerEntry, LedgerError> {
        if amount.get() == 0 {
            return Err(LedgerError::Zero);
        }
        let why = reason(why)?;
        self.live_team(team_id).await?;
        let id = uuid::Uuid::now_v7();
        let entry = LedgerEntry {
            id,
            team_id,
            kind: EntryKind::Adjustment,
            bucket: Bucket::Prepaid,
            amount,
            idempotency_key: format!("manual:{id}"),
            lot_id: None,
            expires_at: None,
            reason: Some(why.clone()),
            created_at: self.clock.now(),
        };
        let description = format!("Adjusted prepaid credit by ${}: {why}", format_usd(amount));
        self.append(entry, AuditAction::AdjustCredits, description, actor, context)
            .await
    }

    /// The caller's team's credit and its changes (Admins and management keys): its newest
    /// entries other than spend, and its spend summed per billing month.
    pub async fn team_credit(&self, caller: &crate::Caller, limit: u32) -> Result<TeamCredit, LedgerError> {
        if !caller.allows(tollgate_domain::Permission::ManageBilling) {
            return Err(LedgerError::Forbidden("Only team Admins may see the team's credit"));
        }
        let team_id = caller.team_id();
        let (entries, monthly_spend) = self.store.credit_changes(team_id, limit).await?;
        Ok(TeamCredit {
            balance: self.store.balance(team_id).await?,
            entries,
            monthly_spend,
        })
    }

    /// The caller's team's current month so far (Admins and management keys): what its
    /// charged requests come to, line by line, how they were paid, its limits and its credit.
    pub async fn invoice_preview(&self, caller: &crate::Caller) -> Result<InvoicePreview, LedgerError> {
        if !caller.allows(tollgate_domain::Permission::ManageBilling) {
            return Err(LedgerError::Forbidden("Only team Admins may see the invoice"));
        }
        let team_id = caller.team_id();
        let (from, to) = tollgate_domain::month_bounds(self.clock.now());
        Ok(InvoicePreview {
            month_start: from,
            usage: self.store.month_usage(team_id, from, to).await?,
            limits: self.limits_of(team_id).await?,
            balance: self.store.balance(team_id).await?,
        })
    }

    /// The team's balance.
    pub async fn balance(&self, team_id: TeamId) -> Result<Balance, LedgerError> {
        self.live_team(team_id).await?;
        Ok(self.store.balance(team_id).await?)
    }

    /// The team's newest entries.
    pub async fn entries(&self, team_id: TeamId, limit: u32) -> Result<Vec<LedgerEntry>, LedgerError> {
        Ok(self.store.ledger_entries(team_id, limit).await?)
    }

    /// Checks every team's balances against its entries and lots: the first mismatch, if any.
    pub async fn verify(&self) -> Result<Option<String>, LedgerError> {
        Ok(self.store.verify_ledger().await?)
    }

    /// Writes off the promotional credit left in lots whose expiry has come. Returns how many.
    pub async fn expire_promotions(&self) -> Result<usize, LedgerError> {
        let now = self.clock.now();
        let mut expired = 0;
        for lot in self.store.expired_lots(now).await? {
            let entry = LedgerEntry {
                id: uuid::Uuid::now_v7(),
                team_id: lot.team_id,
                kind: EntryKind::PromoExpiry,
                bucket: Bucket::Promo,
                amount: Ticks::new(-lot.remaining.get()),
                idempotency_key: format!("expiry:{}", lot.id),
                lot_id: Some(lot.id),
                expires_at: Some(lot.expires_at),
                reason: Some("promotional credit expired".into()),
                created_at: now,
            };
            let audit = AuditEvent::success(
                now,
                Some(lot.team_id),
                Actor::System,
                AuditAction::ExpireCredits,
                format!(
                    "${} of promotional credit expired (granted with expiry {})",
                    format_usd(lot.remaining),
                    lot.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                Some(format!("ledger_entry:{}", entry.id)),
                &RequestContext::default(),
            );
            if self.store.expire_lot(&lot, &entry, &audit).await? {
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// Expires promotional credit every `every` until `stop`.
    pub fn spawn_expiry(
        self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::jobs::every("promotional credit expiry", every, stop, move || {
            let ledger = self.clone();
            async move { ledger.expire_promotions().await.map(drop) }
        })
    }
}
