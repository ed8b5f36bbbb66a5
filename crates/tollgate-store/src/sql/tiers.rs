//! Rate-limit tiers: what a team reached, the operator's pin, and its qualifying spend.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::ratelimit::TierStanding;
use tollgate_domain::{AuditEvent, TeamId, Ticks, Timestamp};

use super::{SqlStore, insert_audit, to_u64};
use crate::{StoreError, TierStore};

fn tier_value(tier: u32) -> i64 {
    i64::from(tier)
}

#[async_trait]
impl TierStore for SqlStore {
    async fn tier_standing(&self, team_id: TeamId) -> Result<TierStanding, StoreError> {
        // One statement, so the parts agree: prepaid purchases (refunds are their own entries
        // and do not lower it) and paid monthly invoices.
        let row = sqlx::query(
            "SELECT \
             (SELECT reached FROM team_tiers WHERE team_id = $1) AS reached, \
             (SELECT pinned FROM team_tiers WHERE team_id = $1) AS pinned, \
             (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger_entries \
              WHERE team_id = $1 AND kind = 'purchase' AND amount > 0) AS purchased, \
             (SELECT CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM invoices \
              WHERE team_id = $1 AND kind = 'monthly' AND status = 'paid') AS invoiced",
        )
        .bind(team_id.as_uuid())
        .fetch_one(&self.read)
        .await?;
        let tier = |column: &str| -> Result<Option<u32>, StoreError> {
            row.try_get::<Option<i64>, _>(column)?
                .map(|value| u32::try_from(to_u64(value, column)?).map_err(|_| super::corrupt(column, value)))
                .transpose()
        };
        let (purchased, invoiced): (i64, i64) = (row.try_get("purchased")?, row.try_get("invoiced")?);
        Ok(TierStanding {
            reached: tier("reached")?.unwrap_or(0),
            pinned: tier("pinned")?,
            qualifying_spend: Ticks::new(purchased.saturating_add(invoiced)),
        })
    }

    async fn raise_tier(&self, team_id: TeamId, reached: u32, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO team_tiers (team_id, reached, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (team_id) DO UPDATE SET reached = $2, updated_at = $3 WHERE team_tiers.reached < $2",
        )
        .bind(team_id.as_uuid())
        .bind(tier_value(reached))
        .bind(at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn pin_tier(
        &self,
        team_id: TeamId,
        pinned: Option<u32>,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO team_tiers (team_id, pinned, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (team_id) DO UPDATE SET pinned = $2, updated_at = $3",
        )
        .bind(team_id.as_uuid())
        .bind(pinned.map(tier_value))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }
}
