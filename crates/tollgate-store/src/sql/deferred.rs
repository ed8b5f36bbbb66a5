//! Deferred chat completions (bodies sealed by the caller), each taken once.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{TeamId, Timestamp};

use super::SqlStore;
use crate::{DeferredStore, DeferredTake, NewDeferred, StoreError};

#[async_trait]
impl DeferredStore for SqlStore {
    async fn insert_deferred(&self, deferred: &NewDeferred) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deferred_completions (id, team_id, api_key_id, model, status, created_at, lost_after, \
             expires_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)",
        )
        .bind(&deferred.id)
        .bind(deferred.team_id.as_uuid())
        .bind(deferred.api_key_id.as_uuid())
        .bind(&deferred.model)
        .bind(deferred.created_at)
        .bind(deferred.lost_after)
        .bind(deferred.expires_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn finish_deferred(
        &self,
        id: &str,
        done: bool,
        http_status: u16,
        sealed: &[u8],
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE deferred_completions SET status = $2, http_status = $3, sealed = $4, finished_at = $5 \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(if done { "done" } else { "failed" })
        .bind(i32::from(http_status))
        .bind(sealed)
        .bind(at)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    async fn take_deferred(
        &self,
        team_id: TeamId,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<DeferredTake>, StoreError> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "SELECT status, lost_after, http_status, sealed FROM deferred_completions \
             WHERE id = $1 AND team_id = $2 AND expires_at > $3",
        )
        .bind(id)
        .bind(team_id.as_uuid())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: String = row.try_get("status")?;
        let lost_after: Timestamp = row.try_get("lost_after")?;
        let take = match status.as_str() {
            "pending" if lost_after > now => return Ok(Some(DeferredTake::Pending)),
            "pending" => DeferredTake::Lost,
            _ => {
                let http_status: Option<i32> = row.try_get("http_status")?;
                DeferredTake::Finished {
                    done: status == "done",
                    http_status: http_status
                        .and_then(|status| u16::try_from(status).ok())
                        .ok_or_else(|| super::corrupt("deferred_completions.http_status", "missing"))?,
                    sealed: row
                        .try_get::<Option<Vec<u8>>, _>("sealed")?
                        .ok_or_else(|| super::corrupt("deferred_completions.sealed", "missing"))?,
                }
            }
        };
        // Taken exactly once: of two reads at the same time, one deletes the row.
        let deleted = sqlx::query("DELETE FROM deferred_completions WHERE id = $1 AND status = $2")
            .bind(id)
            .bind(&status)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((deleted > 0).then_some(take))
    }
}
