//! API keys, management keys, and the team key policy.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::keys::KeyHash;
use tollgate_domain::{
    AclSet, ApiKey, ApiKeyId, AuditEvent, KeyPolicy, ManagementKey, ManagementKeyId, OutboundMail, TeamId, Timestamp,
    UserId,
};
use uuid::Uuid;

use crate::{KeyRotation, KeyStore, SecretMatch, StoreError};

use super::{
    API_KEY_COLUMNS, MANAGEMENT_KEY_COLUMNS, SqlStore, acls_json, api_key_from_row, corrupt, insert_audit, insert_mail,
    management_key_from_row, one_row, opt_u32, to_i64, to_u64,
};

#[async_trait]
impl KeyStore for SqlStore {
    async fn insert_api_key(&self, key: &ApiKey, hash: &KeyHash, audit: &AuditEvent) -> Result<(), StoreError> {
        let acls = acls_json(key)?;
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, team_id, name, key_hash, redacted, acls, qps, qpm, tpm, expire_time, disabled, \
             blocked, created_by, created_at, modified_at, modified_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(key.id.as_uuid())
        .bind(key.team_id.as_uuid())
        .bind(&key.name)
        .bind(&hash.as_bytes()[..])
        .bind(&key.redacted)
        .bind(acls)
        .bind(key.qps.map(i64::from))
        .bind(key.qpm.map(i64::from))
        .bind(key.tpm.map(|v| to_i64(v, "tpm")).transpose()?)
        .bind(key.expire_time)
        .bind(key.disabled)
        .bind(key.blocked)
        .bind(key.created_by.map(|u| u.as_uuid()))
        .bind(key.created_at)
        .bind(key.modified_at)
        .bind(key.modified_by.map(|u| u.as_uuid()))
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_api_key_by_hash(&self, hash: &KeyHash) -> Result<Option<(ApiKey, SecretMatch)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS}, key_hash FROM api_keys WHERE key_hash = $1 OR previous_key_hash = $1"
        ))
        .bind(&hash.as_bytes()[..])
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let current: Vec<u8> = row.try_get("key_hash")?;
        let matched = if current.as_slice() == &hash.as_bytes()[..] {
            SecretMatch::Current
        } else {
            SecretMatch::Previous
        };
        Ok(Some((api_key_from_row(&row)?, matched)))
    }

    async fn key_policy(&self, team_id: TeamId) -> Result<KeyPolicy, StoreError> {
        let Some(row) = sqlx::query("SELECT acls, max_qps, max_qpm, max_tpm FROM team_key_policies WHERE team_id = $1")
            .bind(team_id.as_uuid())
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(KeyPolicy::default());
        };
        let acls = row
            .try_get::<Option<String>, _>("acls")?
            .map(|json| {
                let strings: Vec<String> =
                    serde_json::from_str(&json).map_err(|e| corrupt("team_key_policies.acls", e))?;
                AclSet::parse(&strings).map_err(|e| corrupt("team_key_policies.acls", e))
            })
            .transpose()?;
        let tpm: Option<i64> = row.try_get("max_tpm")?;
        Ok(KeyPolicy {
            acls,
            qps: opt_u32(row.try_get("max_qps")?, "team_key_policies.max_qps")?,
            qpm: opt_u32(row.try_get("max_qpm")?, "team_key_policies.max_qpm")?,
            tpm: tpm.map(|v| to_u64(v, "team_key_policies.max_tpm")).transpose()?,
        })
    }

    async fn set_key_policy(
        &self,
        team_id: TeamId,
        policy: &KeyPolicy,
        at: Timestamp,
        by: Option<UserId>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM team_key_policies WHERE team_id = $1")
            .bind(team_id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if !policy.is_open() {
            let acls = policy
                .acls
                .as_ref()
                .map(|set| {
                    let strings: Vec<String> = set.as_slice().iter().map(ToString::to_string).collect();
                    serde_json::to_string(&strings).map_err(anyhow::Error::from)
                })
                .transpose()?;
            let tpm = policy.tpm.map(|v| to_i64(v, "max_tpm")).transpose()?;
            sqlx::query(
                "INSERT INTO team_key_policies (team_id, acls, max_qps, max_qpm, max_tpm, updated_at, updated_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(team_id.as_uuid())
            .bind(acls)
            .bind(policy.qps.map(i64::from))
            .bind(policy.qpm.map(i64::from))
            .bind(tpm)
            .bind(at)
            .bind(by.map(|u| u.as_uuid()))
            .execute(&mut *tx)
            .await?;
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_api_key_any_state(&self, team_id: TeamId, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE team_id = $1 AND id = $2"
        ))
        .bind(team_id.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(api_key_from_row)
        .transpose()
    }

    async fn find_api_key(&self, team_id: TeamId, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE team_id = $1 AND id = $2 AND deleted_at IS NULL"
        ))
        .bind(team_id.as_uuid())
        .bind(id.as_uuid())
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(api_key_from_row)
        .transpose()
    }

    async fn list_api_keys(
        &self,
        team_id: TeamId,
        after: Option<ApiKeyId>,
        limit: u32,
    ) -> Result<Vec<ApiKey>, StoreError> {
        // Keyset pagination on the time-ordered id; the nil UUID sorts before every real one.
        let after = after.map_or(Uuid::nil(), |id| id.as_uuid());
        let rows = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE team_id = $1 AND id > $2 AND deleted_at IS NULL \
             ORDER BY id LIMIT $3"
        ))
        .bind(team_id.as_uuid())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn update_api_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE api_keys SET name = $3, acls = $4, qps = $5, qpm = $6, tpm = $7, expire_time = $8, disabled = $9, \
             modified_at = $10, modified_by = $11 WHERE team_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(key.team_id.as_uuid())
        .bind(key.id.as_uuid())
        .bind(&key.name)
        .bind(acls_json(key)?)
        .bind(key.qps.map(i64::from))
        .bind(key.qpm.map(i64::from))
        .bind(key.tpm.map(|v| to_i64(v, "tpm")).transpose()?)
        .bind(key.expire_time)
        .bind(key.disabled)
        .bind(key.modified_at)
        .bind(key.modified_by.map(|u| u.as_uuid()))
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_api_key(&self, rotation: &KeyRotation<'_>, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        // With a grace period the old secret moves to previous_key_hash (replacing any older
        // one); without, it is forgotten at once.
        let result = sqlx::query(
            "UPDATE api_keys SET \
             previous_key_hash = CASE WHEN $5 IS NULL THEN NULL ELSE key_hash END, previous_key_expires_at = $5, \
             key_hash = $3, redacted = $4, modified_at = $6, modified_by = $7 \
             WHERE team_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(rotation.team_id.as_uuid())
        .bind(rotation.id.as_uuid())
        .bind(&rotation.new_hash.as_bytes()[..])
        .bind(rotation.new_redacted)
        .bind(rotation.previous_valid_until)
        .bind(rotation.at)
        .bind(rotation.by.map(|u| u.as_uuid()))
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_api_key(
        &self,
        team_id: TeamId,
        id: ApiKeyId,
        at: Timestamp,
        by: Option<UserId>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        // Soft: usage and audit records keep pointing at it.
        let result = sqlx::query(
            "UPDATE api_keys SET deleted_at = $3, modified_at = $3, modified_by = $4, previous_key_hash = NULL, \
             previous_key_expires_at = NULL WHERE team_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .bind(id.as_uuid())
        .bind(at)
        .bind(by.map(|u| u.as_uuid()))
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn block_api_key(
        &self,
        team_id: TeamId,
        id: ApiKeyId,
        reason: &str,
        at: Timestamp,
        audit: &AuditEvent,
        mail: &[OutboundMail],
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE api_keys SET blocked = TRUE, blocked_reason = $3, modified_at = $4, previous_key_hash = NULL, \
             previous_key_expires_at = NULL WHERE team_id = $1 AND id = $2 AND NOT blocked",
        )
        .bind(team_id.as_uuid())
        .bind(id.as_uuid())
        .bind(reason)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            // Already blocked (or not this team's): nothing to record.
            return Ok(false);
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        insert_mail(&mut tx, mail).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn end_previous_secret(
        &self,
        team_id: TeamId,
        id: ApiKeyId,
        previous_hash: &KeyHash,
        at: Timestamp,
        audit: &AuditEvent,
        mail: &[OutboundMail],
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE api_keys SET previous_key_hash = NULL, previous_key_expires_at = NULL, modified_at = $4 \
             WHERE team_id = $1 AND id = $2 AND previous_key_hash = $3",
        )
        .bind(team_id.as_uuid())
        .bind(id.as_uuid())
        .bind(&previous_hash.as_bytes()[..])
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        insert_mail(&mut tx, mail).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn touch_api_keys(&self, used: &[(ApiKeyId, Timestamp)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for (id, at) in used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id.as_uuid())
            .bind(*at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_management_key(
        &self,
        key: &ManagementKey,
        hash: &KeyHash,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO management_keys (id, team_id, name, key_hash, redacted, created_by, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.id.as_uuid())
        .bind(key.team_id.as_uuid())
        .bind(&key.name)
        .bind(&hash.as_bytes()[..])
        .bind(&key.redacted)
        .bind(key.created_by.map(|u| u.as_uuid()))
        .bind(key.created_at)
        .bind(key.revoked_at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_management_keys(&self, team_id: TeamId) -> Result<Vec<ManagementKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MANAGEMENT_KEY_COLUMNS} FROM management_keys WHERE team_id = $1 ORDER BY id"
        ))
        .bind(team_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(management_key_from_row).collect()
    }

    async fn revoke_management_key(
        &self,
        team_id: TeamId,
        id: ManagementKeyId,
        at: Timestamp,
        audit: &AuditEvent,
        mail: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE management_keys SET revoked_at = $3 WHERE team_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .bind(id.as_uuid())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        insert_mail(&mut tx, mail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_management_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ManagementKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {MANAGEMENT_KEY_COLUMNS} FROM management_keys WHERE key_hash = $1"
        ))
        .bind(&hash.as_bytes()[..])
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(management_key_from_row)
        .transpose()
    }
}
