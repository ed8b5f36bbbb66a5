//! External sign-in: identities, flows, pending identities.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{
    AuditEvent, Identity, IdentityId, OidcFlow, OutboundMail, PendingIdentity, Team, Timestamp, User, UserId,
};
use uuid::Uuid;

use crate::{FederationStore, StoreError};

use super::{
    IDENTITY_COLUMNS, SqlStore, hash32, identity_from_row, insert_audit, insert_identity_in, insert_mail,
    insert_user_with_personal_team, lock_user, one_row,
};

#[async_trait]
impl FederationStore for SqlStore {
    async fn find_identity(&self, issuer: &str, subject: &str) -> Result<Option<Identity>, StoreError> {
        sqlx::query(&format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities WHERE issuer = $1 AND subject = $2"
        ))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(identity_from_row)
        .transpose()
    }

    async fn list_identities(&self, user_id: UserId) -> Result<Vec<Identity>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities WHERE user_id = $1 ORDER BY linked_at, id"
        ))
        .bind(user_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(identity_from_row).collect()
    }

    async fn insert_identity(
        &self,
        identity: &Identity,
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_identity_in(&mut tx, identity).await?;
        insert_mail(&mut tx, mail).await?;
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_federated_user(
        &self,
        user: &User,
        team: &Team,
        identity: &Identity,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_user_with_personal_team(&mut tx, user, team).await?;
        insert_identity_in(&mut tx, identity).await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_identity(&self, user_id: UserId, id: IdentityId, audits: &[AuditEvent]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        lock_user(&mut tx, user_id).await?;
        let result = sqlx::query("DELETE FROM identities WHERE user_id = $1 AND id = $2")
            .bind(user_id.as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        one_row(&result)?;
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM identities WHERE user_id = $1) + \
             (SELECT COUNT(*) FROM users WHERE id = $1 AND password_hash IS NOT NULL)",
        )
        .bind(user_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        if left == 0 {
            return Err(StoreError::Conflict {
                constraint: "identities_last_method".into(),
            });
        }
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_password(
        &self,
        user_id: UserId,
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        lock_user(&mut tx, user_id).await?;
        let result = sqlx::query(
            "UPDATE users SET password_hash = NULL WHERE id = $1 AND password_hash IS NOT NULL \
             AND EXISTS (SELECT 1 FROM identities WHERE user_id = $1)",
        )
        .bind(user_id.as_uuid())
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                constraint: "identities_last_method".into(),
            });
        }
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        insert_mail(&mut tx, mail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_oidc_flow(&self, flow: &OidcFlow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oidc_flows (state_hash, provider, nonce, pkce_verifier, browser_hash, link_user_id, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(flow.state_hash.as_slice())
        .bind(&flow.provider)
        .bind(&flow.nonce)
        .bind(&flow.pkce_verifier)
        .bind(flow.browser_hash.as_slice())
        .bind(flow.link_user_id.map(|u| u.as_uuid()))
        .bind(flow.created_at)
        .bind(flow.expires_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn take_oidc_flow(
        &self,
        state_hash: &[u8; 32],
        browser_hash: &[u8; 32],
        at: Timestamp,
    ) -> Result<Option<OidcFlow>, StoreError> {
        let row = sqlx::query(
            "UPDATE oidc_flows SET used_at = $3 WHERE state_hash = $1 AND browser_hash = $2 AND used_at IS NULL \
             AND expires_at > $3 \
             RETURNING state_hash, provider, nonce, pkce_verifier, browser_hash, link_user_id, created_at, expires_at",
        )
        .bind(state_hash.as_slice())
        .bind(browser_hash.as_slice())
        .bind(at)
        .fetch_optional(&self.write)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(OidcFlow {
            state_hash: hash32(row.try_get("state_hash")?, "oidc_flows.state_hash")?,
            provider: row.try_get("provider")?,
            nonce: row.try_get("nonce")?,
            pkce_verifier: row.try_get("pkce_verifier")?,
            browser_hash: hash32(row.try_get("browser_hash")?, "oidc_flows.browser_hash")?,
            link_user_id: row.try_get::<Option<Uuid>, _>("link_user_id")?.map(UserId::from_uuid),
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    async fn insert_pending_identity(&self, pending: &PendingIdentity) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pending_identities (token_hash, provider, issuer, subject, email, email_verified, name, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(pending.token_hash.as_slice())
        .bind(&pending.provider)
        .bind(&pending.issuer)
        .bind(&pending.subject)
        .bind(pending.email.as_deref())
        .bind(pending.email_verified)
        .bind(pending.name.as_deref())
        .bind(pending.created_at)
        .bind(pending.expires_at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn take_pending_identity(
        &self,
        hash: &[u8; 32],
        at: Timestamp,
    ) -> Result<Option<PendingIdentity>, StoreError> {
        let row = sqlx::query(
            "UPDATE pending_identities SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING token_hash, provider, issuer, subject, email, email_verified, name, created_at, expires_at",
        )
        .bind(hash.as_slice())
        .bind(at)
        .fetch_optional(&self.write)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(PendingIdentity {
            token_hash: hash32(row.try_get("token_hash")?, "pending_identities.token_hash")?,
            provider: row.try_get("provider")?,
            issuer: row.try_get("issuer")?,
            subject: row.try_get("subject")?,
            email: row.try_get("email")?,
            email_verified: row.try_get("email_verified")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }
}
