//! The credit ledger service: the operator's grants and adjustments, balances, verification,
//! and the expiry of promotional credit. Every entry is written with its audit event in one
//! transaction; amounts are exact ticks (parsed from decimal USD at the edge, never a float).

use std::sync::Arc;

use tollgate_domain::ledger::format_usd;
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Balance, Bucket, Clock, EntryKind, LedgerEntry, RequestContext, TeamId, Ticks,
    Timestamp,
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
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The ledger service.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

fn reason(text: &str) -> Result<String, LedgerError> {
    Ok(tollgate_domain::Name::parse_max(text, 500)
        .map_err(LedgerError::InvalidReason)?
        .into_string())
}

impl Ledger {
    /// A ledger over `store`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
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

    /// The caller's team's credit and its newest entries (Admins and management keys).
    pub async fn team_credit(
        &self,
        caller: &crate::Caller,
        limit: u32,
    ) -> Result<(Balance, Vec<LedgerEntry>), LedgerError> {
        if !caller.allows(tollgate_domain::Permission::ManageBilling) {
            return Err(LedgerError::Forbidden("Only team Admins may see the team's credit"));
        }
        let team_id = caller.team_id();
        Ok((
            self.store.balance(team_id).await?,
            self.store.ledger_entries(team_id, limit).await?,
        ))
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
