//! Usage records (the group commit writes them).

use async_trait::async_trait;
use tollgate_domain::{TeamId, UsageRecord};

use crate::{StoreError, UsageStore};

use super::{SqlStore, to_i64, usage_from_row};

#[async_trait]
impl UsageStore for SqlStore {
    async fn insert_usage_batch(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for record in batch {
            let usage = &record.usage;
            sqlx::query(
                "INSERT INTO usage_events (request_id, team_id, api_key_id, model, endpoint, prompt_tokens, \
                 cached_prompt_tokens, completion_tokens, reasoning_tokens, total_tokens, cost_ticks, estimated, \
                 streamed, duration_ms, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(record.request_id.as_uuid())
            .bind(record.team_id.as_uuid())
            .bind(record.api_key_id.as_uuid())
            .bind(&record.model)
            .bind(record.endpoint.as_str())
            .bind(to_i64(usage.prompt_tokens, "prompt_tokens")?)
            .bind(to_i64(usage.cached_prompt_tokens, "cached_prompt_tokens")?)
            .bind(to_i64(usage.completion_tokens, "completion_tokens")?)
            .bind(to_i64(usage.reasoning_tokens, "reasoning_tokens")?)
            .bind(to_i64(usage.total_tokens(), "total_tokens")?)
            .bind(record.cost.get())
            .bind(record.estimated)
            .bind(record.streamed)
            .bind(to_i64(record.duration_ms, "duration_ms")?)
            .bind(record.started_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_usage(&self, team_id: TeamId, limit: u32) -> Result<Vec<UsageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id, team_id, api_key_id, model, endpoint, prompt_tokens, cached_prompt_tokens, \
             completion_tokens, reasoning_tokens, cost_ticks, estimated, streamed, duration_ms, created_at \
             FROM usage_events WHERE team_id = $1 ORDER BY created_at DESC, request_id DESC LIMIT $2",
        )
        .bind(team_id.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(usage_from_row).collect()
    }
}
