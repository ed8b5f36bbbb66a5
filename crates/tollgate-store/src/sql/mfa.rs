//! Second factors: TOTP, recovery codes, passkeys and their ceremonies.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{CeremonyPurpose, PasskeyId, StoredPasskey, Timestamp, UserId, WebauthnCeremony};
use uuid::Uuid;

use crate::{MfaChange, MfaState, MfaStore, StoreError};

use super::{SqlStore, corrupt, finish_change, one_row, passkey_count, put_recovery_codes, to_i64, to_u64};

#[async_trait]
impl MfaStore for SqlStore {
    async fn mfa_state(&self, user_id: UserId) -> Result<MfaState, StoreError> {
        let row = sqlx::query("SELECT totp_seed, totp_pending_seed, totp_last_step FROM users WHERE id = $1")
            .bind(user_id.as_uuid())
            .fetch_one(&self.read)
            .await?;
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
                .bind(user_id.as_uuid())
                .fetch_one(&self.read)
                .await?;
        Ok(MfaState {
            seed: row.try_get("totp_seed")?,
            pending_seed: row.try_get("totp_pending_seed")?,
            last_step: row
                .try_get::<Option<i64>, _>("totp_last_step")?
                .map(|s| to_u64(s, "users.totp_last_step"))
                .transpose()?,
            recovery_codes_left: u32::try_from(left).map_err(|e| corrupt("recovery_codes", e))?,
        })
    }

    async fn set_pending_totp(&self, user_id: UserId, sealed: &[u8]) -> Result<(), StoreError> {
        let result = sqlx::query("UPDATE users SET totp_pending_seed = $2 WHERE id = $1")
            .bind(user_id.as_uuid())
            .bind(sealed)
            .execute(&self.write)
            .await?;
        one_row(&result)
    }

    async fn enable_totp(&self, change: &MfaChange<'_>, step: u64) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE users SET totp_seed = totp_pending_seed, totp_pending_seed = NULL, totp_enabled_at = $2, \
             totp_last_step = $3 WHERE id = $1 AND totp_pending_seed IS NOT NULL",
        )
        .bind(change.user_id.as_uuid())
        .bind(change.at)
        .bind(to_i64(step, "step")?)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        put_recovery_codes(&mut tx, change.user_id, change.recovery_code_hashes, change.at).await?;
        finish_change(&mut tx, &self.audit_key, change).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn disable_totp(&self, change: &MfaChange<'_>) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE users SET totp_seed = NULL, totp_pending_seed = NULL, totp_enabled_at = NULL, totp_last_step = NULL \
             WHERE id = $1",
        )
        .bind(change.user_id.as_uuid())
        .execute(&mut *tx)
        .await?;
        // Recovery codes belong to two-factor authentication: they stay while passkeys do.
        if passkey_count(&mut tx, change.user_id).await? == 0 {
            put_recovery_codes(&mut tx, change.user_id, &[], change.at).await?;
        }
        finish_change(&mut tx, &self.audit_key, change).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_recovery_codes(&self, change: &MfaChange<'_>) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        put_recovery_codes(&mut tx, change.user_id, change.recovery_code_hashes, change.at).await?;
        finish_change(&mut tx, &self.audit_key, change).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn use_totp_step(&self, user_id: UserId, step: u64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE users SET totp_last_step = $2 WHERE id = $1 AND totp_seed IS NOT NULL \
             AND (totp_last_step IS NULL OR totp_last_step < $2)",
        )
        .bind(user_id.as_uuid())
        .bind(to_i64(step, "step")?)
        .execute(&self.write)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn add_passkey(&self, passkey: &StoredPasskey, change: &MfaChange<'_>) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO passkeys (id, user_id, name, credential_id, data, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(passkey.id.as_uuid())
        .bind(passkey.user_id.as_uuid())
        .bind(&passkey.name)
        .bind(passkey.credential_id.as_slice())
        .bind(&passkey.data)
        .bind(passkey.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE users SET passkey_count = passkey_count + 1 WHERE id = $1")
            .bind(passkey.user_id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if !change.recovery_code_hashes.is_empty() {
            put_recovery_codes(&mut tx, change.user_id, change.recovery_code_hashes, change.at).await?;
        }
        finish_change(&mut tx, &self.audit_key, change).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_passkey(&self, id: PasskeyId, change: &MfaChange<'_>) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query("DELETE FROM passkeys WHERE id = $1 AND user_id = $2")
            .bind(id.as_uuid())
            .bind(change.user_id.as_uuid())
            .execute(&mut *tx)
            .await?;
        one_row(&result)?;
        sqlx::query("UPDATE users SET passkey_count = passkey_count - 1 WHERE id = $1")
            .bind(change.user_id.as_uuid())
            .execute(&mut *tx)
            .await?;
        let totp: Option<Timestamp> = sqlx::query_scalar("SELECT totp_enabled_at FROM users WHERE id = $1")
            .bind(change.user_id.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
        if totp.is_none() && passkey_count(&mut tx, change.user_id).await? == 0 {
            put_recovery_codes(&mut tx, change.user_id, &[], change.at).await?;
        }
        finish_change(&mut tx, &self.audit_key, change).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_passkeys(&self, user_id: UserId) -> Result<Vec<StoredPasskey>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, name, credential_id, data, created_at, last_used_at FROM passkeys \
             WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredPasskey {
                    id: PasskeyId::from_uuid(row.try_get("id")?),
                    user_id: UserId::from_uuid(row.try_get("user_id")?),
                    name: row.try_get("name")?,
                    credential_id: row.try_get("credential_id")?,
                    data: row.try_get("data")?,
                    created_at: row.try_get("created_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    async fn touch_passkey(&self, id: PasskeyId, data: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE passkeys SET data = $2, last_used_at = $3 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(data)
            .bind(at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn create_ceremony(&self, ceremony: &WebauthnCeremony) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (token_hash, user_id, purpose, state, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ceremony.token_hash.as_slice())
        .bind(ceremony.user_id.as_uuid())
        .bind(ceremony.purpose.as_str())
        .bind(&ceremony.state)
        .bind(ceremony.created_at)
        .bind(ceremony.expires_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn take_ceremony(
        &self,
        token_hash: &[u8; 32],
        user_id: UserId,
        purpose: CeremonyPurpose,
        at: Timestamp,
    ) -> Result<Option<WebauthnCeremony>, StoreError> {
        let row = sqlx::query(
            "UPDATE webauthn_ceremonies SET used_at = $4 WHERE token_hash = $1 AND user_id = $2 AND purpose = $3 \
             AND used_at IS NULL AND expires_at > $4 RETURNING state, created_at, expires_at",
        )
        .bind(token_hash.as_slice())
        .bind(user_id.as_uuid())
        .bind(purpose.as_str())
        .bind(at)
        .fetch_optional(&self.write)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(WebauthnCeremony {
            token_hash: *token_hash,
            user_id,
            purpose,
            state: row.try_get("state")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    async fn use_recovery_code(&self, user_id: UserId, hash: &[u8; 32], at: Timestamp) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 WHERE code_hash = $1 AND user_id = $2 AND used_at IS NULL",
        )
        .bind(hash.as_slice())
        .bind(user_id.as_uuid())
        .bind(at)
        .execute(&self.write)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn create_mfa_challenge(
        &self,
        hash: &[u8; 32],
        user_id: UserId,
        at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO mfa_challenges (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(hash.as_slice())
            .bind(user_id.as_uuid())
            .bind(at)
            .bind(expires_at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn find_mfa_challenge(&self, hash: &[u8; 32], now: Timestamp) -> Result<Option<UserId>, StoreError> {
        let user: Option<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM mfa_challenges WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hash.as_slice())
        .bind(now)
        .fetch_optional(&self.read)
        .await?;
        Ok(user.map(UserId::from_uuid))
    }

    async fn use_mfa_challenge(&self, hash: &[u8; 32], at: Timestamp) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE mfa_challenges SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(hash.as_slice())
        .bind(at)
        .execute(&self.write)
        .await?;
        Ok(result.rows_affected() == 1)
    }
}
