//! Credit leases: slices of a team's spendable credit that a node spends locally. Expiry is
//! judged on the database's clock, so every node sees a lease end at the same moment. Spends
//! move a lease only when its node reports them (renewing or growing it).

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{TeamId, Ticks};
use uuid::Uuid;

use super::{BACKEND, SqlStore};
use crate::{CreditStore, LeaseGrant, LeaseRequest, StoreError};

/// The database's clock, in milliseconds since the epoch.
const DB_NOW_MS: &str = if matches!(BACKEND, crate::Backend::Postgres) {
    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms"
} else {
    "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now_ms"
};

/// `UPDATE credit_leases SET` clauses that apply a node's report of what it has spent on the
/// lease in all (the one bind `$1`): the lease shrinks by what it had not been told of (never
/// below zero, as a charge beyond its hold may exceed what is left), and `spent` keeps the
/// report. A report no larger than the last one changes nothing: reports are cumulative.
const APPLY_SPENT: &str = if matches!(BACKEND, crate::Backend::Postgres) {
    "amount = GREATEST(amount - GREATEST($1 - spent, 0), 0), spent = GREATEST(spent, $1)"
} else {
    "amount = max(amount - max($1 - spent, 0), 0), spent = max(spent, $1)"
};

async fn db_now_ms(conn: &mut <super::Db as sqlx::Database>::Connection) -> Result<i64, StoreError> {
    Ok(sqlx::query(DB_NOW_MS).fetch_one(&mut *conn).await?.try_get("now_ms")?)
}

#[async_trait]
impl CreditStore for SqlStore {
    async fn take_lease(&self, request: &LeaseRequest) -> Result<LeaseGrant, StoreError> {
        let mut tx = self.write.begin().await?;
        let funds = super::ledger::lock_funds(
            &mut tx,
            request.team_id,
            request.now,
            request.promo_horizon,
            request.default_hard_limit,
        )
        .await?;
        let now_ms = db_now_ms(&mut tx).await?;
        sqlx::query("DELETE FROM credit_leases WHERE team_id = $1 AND expires_at_ms <= $2")
            .bind(request.team_id.as_uuid())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        // The node's spends on its lease, before what is free is counted: a node growing its
        // own lease sees exactly what the team has left.
        if let Some(id) = request.lease_id.filter(|_| request.spent.get() > 0) {
            sqlx::query(&format!(
                "UPDATE credit_leases SET {APPLY_SPENT} WHERE id = $2 AND team_id = $3"
            ))
            .bind(request.spent.get())
            .bind(id)
            .bind(request.team_id.as_uuid())
            .execute(&mut *tx)
            .await?;
        }
        let leased: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS leased FROM credit_leases WHERE team_id = $1",
        )
        .bind(request.team_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?
        .try_get("leased")?;
        let free = funds.spendable().get().saturating_sub(leased);
        if free < request.need.get() {
            return Ok(LeaseGrant::Insufficient {
                free: Ticks::new(free.max(0)),
            });
        }
        // Beyond what it needs now, a lease takes at most half of what would be left free: a
        // node with a busy team never corners its credit, and another node serving the team
        // finds some to lease while any is unleased (near the end, leases grow by halves).
        let need = request.need.get().max(0);
        let extra = request.want.get().saturating_sub(need).clamp(0, (free - need) / 2);
        let added = need + extra;
        let expires_at_ms = now_ms.saturating_add(request.ttl_ms);
        let renewed = match request.lease_id {
            Some(id) => {
                sqlx::query(
                    "UPDATE credit_leases SET amount = amount + $1, expires_at_ms = $2 \
                     WHERE id = $3 AND team_id = $4 AND expires_at_ms > $5",
                )
                .bind(added)
                .bind(expires_at_ms)
                .bind(id)
                .bind(request.team_id.as_uuid())
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1
            }
            None => false,
        };
        let lease_id = match (renewed, request.lease_id) {
            (true, Some(id)) => id,
            _ => {
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO credit_leases (id, team_id, node_id, amount, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(request.team_id.as_uuid())
                .bind(request.node_id)
                .bind(added)
                .bind(expires_at_ms)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        tx.commit().await?;
        Ok(LeaseGrant::Granted {
            lease_id,
            added: Ticks::new(added),
            renewed,
        })
    }

    async fn renew_lease(&self, lease_id: Uuid, spent: Ticks, ttl_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let now_ms = db_now_ms(&mut tx).await?;
        let renewed = sqlx::query(&format!(
            "UPDATE credit_leases SET {APPLY_SPENT}, expires_at_ms = $2 WHERE id = $3 AND expires_at_ms > $4"
        ))
        .bind(spent.get())
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(lease_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(renewed)
    }

    async fn return_lease(&self, lease_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM credit_leases WHERE id = $1")
            .bind(lease_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn leased(&self, team_id: TeamId) -> Result<Ticks, StoreError> {
        let mut conn = self.read.acquire().await?;
        let now_ms = db_now_ms(&mut conn).await?;
        let leased: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS leased FROM credit_leases \
             WHERE team_id = $1 AND expires_at_ms > $2",
        )
        .bind(team_id.as_uuid())
        .bind(now_ms)
        .fetch_one(&mut *conn)
        .await?
        .try_get("leased")?;
        Ok(Ticks::new(leased))
    }
}
