//! Stored responses of the Responses API (sealed by the caller).

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{ApiKeyId, TeamId, Timestamp};

use super::SqlStore;
use crate::{ResponseStore, StoreError, StoredResponse};

#[async_trait]
impl ResponseStore for SqlStore {
    async fn insert_responses(&self, responses: &[StoredResponse]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for response in responses {
            sqlx::query(
                "INSERT INTO stored_responses (id, team_id, api_key_id, model, created_at, expires_at, sealed) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&response.id)
            .bind(response.team_id.as_uuid())
            .bind(response.api_key_id.as_uuid())
            .bind(&response.model)
            .bind(response.created_at)
            .bind(response.expires_at)
            .bind(&response.sealed)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stored_response(
        &self,
        team_id: TeamId,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let row = sqlx::query(
            "SELECT id, team_id, api_key_id, model, created_at, expires_at, sealed FROM stored_responses \
             WHERE id = $1 AND team_id = $2 AND expires_at > $3",
        )
        .bind(id)
        .bind(team_id.as_uuid())
        .bind(now)
        .fetch_optional(&self.read)
        .await?;
        row.map(|row| {
            Ok(StoredResponse {
                id: row.try_get("id")?,
                team_id: TeamId::from_uuid(row.try_get("team_id")?),
                api_key_id: ApiKeyId::from_uuid(row.try_get("api_key_id")?),
                model: row.try_get("model")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                sealed: row.try_get("sealed")?,
            })
        })
        .transpose()
    }

    async fn delete_response(&self, team_id: TeamId, id: &str, now: Timestamp) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM stored_responses WHERE id = $1 AND team_id = $2 AND expires_at > $3")
            .bind(id)
            .bind(team_id.as_uuid())
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }
}
