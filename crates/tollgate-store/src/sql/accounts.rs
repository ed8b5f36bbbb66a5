//! Accounts: users, Personal Teams, sessions, single-use links, deletion and purge.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{
    AuditEvent, Email, OutboundMail, Session, SessionId, Team, Timestamp, TokenPurpose, User, UserId,
};

use crate::{AccountDeletion, AccountStore, AccountToken, EndSessions, PasswordChange, StoreError, TokenRedemption};

use super::{
    SESSION_COLUMNS, SqlStore, USER_COLUMNS, corrupt, end_other_sessions_in, insert_audit, insert_mail,
    insert_user_with_personal_team, one_row, session_from_row, user_from_row,
};

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user_with_personal_team(
        &self,
        user: &User,
        team: &Team,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_user_with_personal_team(&mut tx, user, team).await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_display_name(&self, user_id: UserId, name: &str, audits: &[AuditEvent]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query("UPDATE users SET display_name = $2 WHERE id = $1 AND deleted_at IS NULL")
            .bind(user_id.as_uuid())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        one_row(&result)?;
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        // Several accounts may share an address: the one that signs in with a password (at most
        // one), else the oldest.
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1 \
             ORDER BY CASE WHEN password_hash IS NULL THEN 1 ELSE 0 END, created_at, id LIMIT 1"
        ))
        .bind(email.as_ref())
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn user_ids_by_email(&self, email: &Email) -> Result<Vec<UserId>, StoreError> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1 ORDER BY created_at, id")
            .bind(email.as_ref())
            .fetch_all(&self.read)
            .await?;
        Ok(ids.into_iter().map(UserId::from_uuid).collect())
    }

    async fn create_session(
        &self,
        session: &Session,
        token_hash: &[u8; 32],
        csrf_hash: &[u8; 32],
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, token_hash, csrf_hash, created_at, last_seen_at, absolute_expires_at, \
             ip, user_agent, location) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(session.id.as_uuid())
        .bind(session.user_id.as_uuid())
        .bind(token_hash.as_slice())
        .bind(csrf_hash.as_slice())
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.absolute_expires_at)
        .bind(session.ip.as_deref())
        .bind(session.user_agent.as_deref())
        .bind(session.location.as_deref())
        .execute(&mut *tx)
        .await?;
        insert_mail(&mut tx, mail).await?;
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn find_session(&self, token_hash: &[u8; 32]) -> Result<Option<(Session, [u8; 32], User)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS}, s.csrf_hash, u.id AS u_id, u.email, u.display_name, u.password_hash, \
             u.created_at AS u_created_at, u.email_verified_at, u.totp_enabled_at, u.passkey_count, u.deleted_at, \
             u.purge_after \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1"
        ))
        .bind(token_hash.as_slice())
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let csrf: Vec<u8> = row.try_get("csrf_hash")?;
        let csrf = <[u8; 32]>::try_from(csrf.as_slice()).map_err(|_| corrupt("sessions.csrf_hash", "not 32 bytes"))?;
        let email: String = row.try_get("email")?;
        let user = User {
            id: UserId::from_uuid(row.try_get("u_id")?),
            email: Email::parse(&email).map_err(|e| corrupt("users.email", e))?,
            display_name: row.try_get("display_name")?,
            password_hash: row.try_get("password_hash")?,
            created_at: row.try_get("u_created_at")?,
            email_verified_at: row.try_get("email_verified_at")?,
            totp_enabled_at: row.try_get("totp_enabled_at")?,
            passkeys: u32::try_from(row.try_get::<i32, _>("passkey_count")?)
                .map_err(|e| corrupt("users.passkey_count", e))?,
            deleted_at: row.try_get("deleted_at")?,
            purge_after: row.try_get("purge_after")?,
        };
        Ok(Some((session_from_row(&row)?, csrf, user)))
    }

    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2")
            .bind(id.as_uuid())
            .bind(at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn sessions_since(&self, user_id: UserId, since: Timestamp) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.user_id = $1 AND s.created_at >= $2 \
             ORDER BY s.created_at DESC, s.id DESC LIMIT 500"
        ))
        .bind(user_id.as_uuid())
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn list_sessions(&self, user_id: UserId, now: Timestamp) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.user_id = $1 AND s.revoked_at IS NULL \
             AND s.absolute_expires_at > $2 ORDER BY s.created_at DESC, s.id DESC"
        ))
        .bind(user_id.as_uuid())
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn end_sessions(
        &self,
        user_id: UserId,
        which: EndSessions,
        at: Timestamp,
        audits: &[AuditEvent],
    ) -> Result<u64, StoreError> {
        let mut tx = self.write.begin().await?;
        let result = match which {
            EndSessions::One(id) => {
                sqlx::query("UPDATE sessions SET revoked_at = $3 WHERE user_id = $1 AND id = $2 AND revoked_at IS NULL")
                    .bind(user_id.as_uuid())
                    .bind(id.as_uuid())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
            }
            EndSessions::AllBut(keep) => {
                sqlx::query(
                    "UPDATE sessions SET revoked_at = $3 WHERE user_id = $1 AND revoked_at IS NULL \
                     AND ($2 IS NULL OR id <> $2)",
                )
                .bind(user_id.as_uuid())
                .bind(keep.map(|id| id.as_uuid()))
                .bind(at)
                .execute(&mut *tx)
                .await?
            }
        };
        let ended = result.rows_affected();
        if ended == 0 {
            return Ok(0);
        }
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(ended)
    }

    async fn insert_account_token(
        &self,
        token: &AccountToken,
        mail: &[OutboundMail],
        audits: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO account_tokens (token_hash, user_id, purpose, created_at, expires_at, data) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.hash.as_slice())
        .bind(token.user_id.as_uuid())
        .bind(token.purpose.as_str())
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.data.as_deref())
        .execute(&mut *tx)
        .await?;
        insert_mail(&mut tx, mail).await?;
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn find_account_token(&self, hash: &[u8; 32]) -> Result<Option<AccountToken>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, user_id, purpose, created_at, expires_at, used_at, data FROM account_tokens \
             WHERE token_hash = $1",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let purpose: String = row.try_get("purpose")?;
        let purpose = match purpose.as_str() {
            "verify_email" => TokenPurpose::VerifyEmail,
            "reset_password" => TokenPurpose::ResetPassword,
            "restore_account" => TokenPurpose::RestoreAccount,
            "change_email" => TokenPurpose::ChangeEmail,
            "report_email_change" => TokenPurpose::ReportEmailChange,
            other => return Err(corrupt("account_tokens.purpose", other)),
        };
        Ok(Some(AccountToken {
            hash: *hash,
            user_id: UserId::from_uuid(row.try_get("user_id")?),
            purpose,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
            data: row.try_get("data")?,
        }))
    }

    async fn redeem_account_token(&self, redeem: &TokenRedemption<'_>) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let used = sqlx::query(
            "UPDATE account_tokens SET used_at = $3 WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL \
             AND expires_at > $3",
        )
        .bind(redeem.hash.as_slice())
        .bind(redeem.purpose.as_str())
        .bind(redeem.at)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            // Used or expired meanwhile: nothing happens.
            return Ok(false);
        }
        match redeem.purpose {
            TokenPurpose::VerifyEmail => {
                sqlx::query("UPDATE users SET email_verified_at = $2 WHERE id = $1 AND email_verified_at IS NULL")
                    .bind(redeem.user_id.as_uuid())
                    .bind(redeem.at)
                    .execute(&mut *tx)
                    .await?;
            }
            TokenPurpose::ResetPassword => {
                let hash = redeem
                    .new_password_hash
                    .ok_or_else(|| StoreError::Other(anyhow::anyhow!("a password reset needs the new password")))?;
                sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                    .bind(redeem.user_id.as_uuid())
                    .bind(hash)
                    .execute(&mut *tx)
                    .await?;
                // A reset ends every session, and every other outstanding reset link.
                sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                    .bind(redeem.user_id.as_uuid())
                    .bind(redeem.at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE account_tokens SET used_at = $2 WHERE user_id = $1 AND purpose = 'reset_password' \
                     AND used_at IS NULL",
                )
                .bind(redeem.user_id.as_uuid())
                .bind(redeem.at)
                .execute(&mut *tx)
                .await?;
            }
            TokenPurpose::ChangeEmail => {
                let email: Option<String> = sqlx::query_scalar("SELECT data FROM account_tokens WHERE token_hash = $1")
                    .bind(redeem.hash.as_slice())
                    .fetch_one(&mut *tx)
                    .await?;
                let email =
                    email.ok_or_else(|| corrupt("account_tokens.data", "an email change without an address"))?;
                sqlx::query("UPDATE users SET email = $2, email_verified_at = $3 WHERE id = $1")
                    .bind(redeem.user_id.as_uuid())
                    .bind(&email)
                    .bind(redeem.at)
                    .execute(&mut *tx)
                    .await?;
                end_other_sessions_in(&mut tx, redeem.user_id, None, redeem.at).await?;
                sqlx::query(
                    "UPDATE account_tokens SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL \
                     AND purpose IN ('change_email', 'report_email_change')",
                )
                .bind(redeem.user_id.as_uuid())
                .bind(redeem.at)
                .execute(&mut *tx)
                .await?;
            }
            TokenPurpose::RestoreAccount => {
                let restored = sqlx::query(
                    "UPDATE users SET deleted_at = NULL, purge_after = NULL WHERE id = $1 AND deleted_at IS NOT NULL \
                     AND purged_at IS NULL",
                )
                .bind(redeem.user_id.as_uuid())
                .execute(&mut *tx)
                .await?;
                if restored.rows_affected() != 1 {
                    return Ok(false);
                }
                sqlx::query("UPDATE team_members SET suspended_at = NULL WHERE user_id = $1")
                    .bind(redeem.user_id.as_uuid())
                    .execute(&mut *tx)
                    .await?;
            }
            TokenPurpose::ReportEmailChange => {
                end_other_sessions_in(&mut tx, redeem.user_id, None, redeem.at).await?;
                sqlx::query(
                    "UPDATE account_tokens SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL \
                     AND purpose IN ('change_email', 'report_email_change')",
                )
                .bind(redeem.user_id.as_uuid())
                .bind(redeem.at)
                .execute(&mut *tx)
                .await?;
            }
        }
        insert_mail(&mut tx, redeem.mail).await?;
        for audit in redeem.audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn set_password(&self, change: &PasswordChange<'_>) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(change.user_id.as_uuid())
            .bind(change.password_hash)
            .execute(&mut *tx)
            .await?;
        one_row(&result)?;
        end_other_sessions_in(&mut tx, change.user_id, change.keep, change.at).await?;
        insert_mail(&mut tx, change.mail).await?;
        for audit in change.audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_account(&self, deletion: &AccountDeletion<'_>) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        // Events first: they land in the teams' logs while the account is still a member.
        for audit in deletion.audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        let user = deletion.user_id.as_uuid();
        let result =
            sqlx::query("UPDATE users SET deleted_at = $2, purge_after = $3 WHERE id = $1 AND deleted_at IS NULL")
                .bind(user)
                .bind(deletion.at)
                .bind(deletion.purge_after)
                .execute(&mut *tx)
                .await?;
        one_row(&result)?;
        sqlx::query("UPDATE team_members SET suspended_at = $2 WHERE user_id = $1")
            .bind(user)
            .bind(deletion.at)
            .execute(&mut *tx)
            .await?;
        end_other_sessions_in(&mut tx, deletion.user_id, None, deletion.at).await?;
        // Its management keys stop; the API keys it created stay with their teams.
        sqlx::query("UPDATE management_keys SET revoked_at = $2 WHERE created_by = $1 AND revoked_at IS NULL")
            .bind(user)
            .bind(deletion.at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE account_tokens SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
            .bind(user)
            .bind(deletion.at)
            .execute(&mut *tx)
            .await?;
        insert_mail(&mut tx, deletion.mail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn accounts_due_for_purge(&self, now: Timestamp) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE purge_after IS NOT NULL AND purge_after <= $1 AND purged_at IS NULL"
        ))
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn purge_account(&self, user_id: UserId, at: Timestamp, audits: &[AuditEvent]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let user = user_id.as_uuid();
        // The audit log keeps the events, with the user id as a pseudonym: the email at the time
        // is erased (the chain commits to its keyed digest, which stays).
        sqlx::query("INSERT INTO audit_prune_permits (id) VALUES (2)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE audit_events SET actor_label = NULL WHERE actor_kind = 'user' AND actor_id = $1 AND actor_label IS NOT NULL")
            .bind(user_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM audit_prune_permits").execute(&mut *tx).await?;
        for table in [
            "sessions",
            "account_tokens",
            "recovery_codes",
            "mfa_challenges",
            "identities",
            "passkeys",
            "webauthn_ceremonies",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE team_invitations SET invited_by = NULL WHERE invited_by = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        // Its Personal Team goes with it (and that team's keys, stored responses and deferred
        // completions).
        for table in ["stored_responses", "deferred_completions"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE team_id IN \
                 (SELECT t.id FROM teams t JOIN team_members m ON m.team_id = t.id WHERE m.user_id = $1 AND t.personal)"
            ))
            .bind(user)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE api_keys SET deleted_at = $2 WHERE deleted_at IS NULL AND team_id IN \
             (SELECT t.id FROM teams t JOIN team_members m ON m.team_id = t.id WHERE m.user_id = $1 AND t.personal)",
        )
        .bind(user)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE teams SET deleted_at = $2 WHERE deleted_at IS NULL AND personal AND id IN \
             (SELECT team_id FROM team_members WHERE user_id = $1)",
        )
        .bind(user)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM team_members WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        // The address becomes free for a new account; the row stays for the records that name it.
        let result = sqlx::query(
            "UPDATE users SET email = $2, display_name = 'Deleted user', password_hash = NULL, totp_seed = NULL, \
             totp_pending_seed = NULL, totp_enabled_at = NULL, totp_last_step = NULL, email_verified_at = NULL, \
             passkey_count = 0, purged_at = $3 WHERE id = $1 AND purged_at IS NULL",
        )
        .bind(user)
        .bind(format!("deleted-{}@purged.invalid", user_id.as_uuid().simple()))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_one(&self.read)
            .await?;
        user_from_row(&row)
    }
}
