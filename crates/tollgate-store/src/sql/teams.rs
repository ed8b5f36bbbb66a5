//! Teams: members, invitations, verified domains.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{
    AuditEvent, Email, Invitation, Member, Membership, OutboundMail, Role, Team, TeamDomain, TeamId, Timestamp, UserId,
};
use uuid::Uuid;

use crate::{MemberChange, StoreError, TeamStore};

use super::{
    DOMAIN_COLUMNS, INVITATION_COLUMNS, SqlStore, corrupt, domain_from_row, insert_audit, insert_mail,
    invitation_from_row, one_row, team_from_row,
};

#[async_trait]
impl TeamStore for SqlStore {
    async fn get_team(&self, id: TeamId) -> Result<Team, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, description, personal, created_at FROM teams WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.as_uuid())
        .fetch_one(&self.read)
        .await?;
        team_from_row(&row)
    }

    async fn list_teams(&self, search: &str, limit: u32) -> Result<Vec<crate::TeamSummary>, StoreError> {
        // The search is a literal part of the name: LIKE's wildcards in it are escaped.
        let pattern = format!(
            "%{}%",
            search
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows = sqlx::query(
            "SELECT t.id, t.name, t.description, t.personal, t.created_at, t.blocked_invoice, t.blocked_reason, \
             COALESCE(b.prepaid, 0) AS prepaid, COALESCE(b.promo, 0) AS promo, \
             CAST((SELECT COUNT(*) FROM team_members m WHERE m.team_id = t.id AND m.suspended_at IS NULL) AS BIGINT) \
             AS members \
             FROM teams t LEFT JOIN team_balances b ON b.team_id = t.id \
             WHERE t.deleted_at IS NULL AND LOWER(t.name) LIKE $1 ESCAPE '\\' \
             ORDER BY t.created_at DESC, t.id DESC LIMIT $2",
        )
        .bind(pattern)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let members: i64 = row.try_get("members")?;
                Ok(crate::TeamSummary {
                    team: team_from_row(row)?,
                    balance: tollgate_domain::Balance {
                        prepaid: tollgate_domain::Ticks::new(row.try_get("prepaid")?),
                        promo: tollgate_domain::Ticks::new(row.try_get("promo")?),
                    },
                    members: u64::try_from(members).map_err(|error| corrupt("member count", error))?,
                    blocked_invoice: row.try_get("blocked_invoice")?,
                    blocked_reason: row.try_get("blocked_reason")?,
                })
            })
            .collect()
    }

    async fn list_memberships(&self, user_id: UserId) -> Result<Vec<Membership>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.name, t.description, t.personal, t.created_at, m.role FROM team_members m \
             JOIN teams t ON t.id = m.team_id WHERE m.user_id = $1 AND t.deleted_at IS NULL AND m.suspended_at IS NULL \
             ORDER BY t.created_at, t.id",
        )
        .bind(user_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(Membership {
                    team: team_from_row(row)?,
                    role: role.parse().map_err(|e| corrupt("team_members.role", e))?,
                })
            })
            .collect()
    }

    async fn find_role(&self, team_id: TeamId, user_id: UserId) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = sqlx::query_scalar(
            "SELECT m.role FROM team_members m JOIN teams t ON t.id = m.team_id \
             WHERE m.team_id = $1 AND m.user_id = $2 AND t.deleted_at IS NULL AND m.suspended_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .bind(user_id.as_uuid())
        .fetch_optional(&self.read)
        .await?;
        role.map(|r| r.parse().map_err(|e| corrupt("team_members.role", e)))
            .transpose()
    }

    async fn create_team(&self, team: &Team, admin: UserId, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO teams (id, name, description, personal, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(team.id.as_uuid())
            .bind(&team.name)
            .bind(team.description.as_deref())
            .bind(team.personal)
            .bind(team.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(team.id.as_uuid())
            .bind(admin.as_uuid())
            .bind(Role::Admin.as_str())
            .bind(team.created_at)
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_team(&self, team: &Team, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query("UPDATE teams SET name = $2, description = $3 WHERE id = $1 AND deleted_at IS NULL")
            .bind(team.id.as_uuid())
            .bind(&team.name)
            .bind(team.description.as_deref())
            .execute(&mut *tx)
            .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn data_use(&self, team_id: TeamId) -> Result<tollgate_domain::DataUse, StoreError> {
        let row =
            sqlx::query("SELECT training_allowed, zero_retention FROM teams WHERE id = $1 AND deleted_at IS NULL")
                .bind(team_id.as_uuid())
                .fetch_optional(&self.read)
                .await?
                .ok_or(StoreError::NotFound)?;
        Ok(tollgate_domain::DataUse {
            training_allowed: row.try_get("training_allowed")?,
            zero_retention: row.try_get("zero_retention")?,
        })
    }

    async fn set_team_block(
        &self,
        team_id: TeamId,
        reason: Option<&str>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        // Only a change is written: blocking a blocked team (or lifting no block) matches no row.
        let sql = if reason.is_some() {
            "UPDATE teams SET blocked_reason = $2 WHERE id = $1 AND deleted_at IS NULL AND blocked_reason IS NULL"
        } else {
            "UPDATE teams SET blocked_reason = $2 WHERE id = $1 AND deleted_at IS NULL AND blocked_reason IS NOT NULL"
        };
        let changed = sqlx::query(sql)
            .bind(team_id.as_uuid())
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if !changed {
            drop(tx);
            // Unchanged, or no such live team.
            return self.team_block(team_id).await.map(|_| false);
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn team_block(&self, team_id: TeamId) -> Result<Option<String>, StoreError> {
        let found: Option<Option<String>> =
            sqlx::query_scalar("SELECT blocked_reason FROM teams WHERE id = $1 AND deleted_at IS NULL")
                .bind(team_id.as_uuid())
                .fetch_optional(&self.read)
                .await?;
        found.ok_or(StoreError::NotFound)
    }

    async fn set_data_use(
        &self,
        team_id: TeamId,
        data_use: tollgate_domain::DataUse,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE teams SET training_allowed = $2, zero_retention = $3 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .bind(data_use.training_allowed)
        .bind(data_use.zero_retention)
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_team(&self, team_id: TeamId, at: Timestamp, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query("UPDATE teams SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
            .bind(team_id.as_uuid())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        one_row(&result)?;
        // Its keys stop working (every node re-reads a key within a second).
        sqlx::query(
            "UPDATE api_keys SET deleted_at = $2, previous_key_hash = NULL, previous_key_expires_at = NULL \
             WHERE team_id = $1 AND deleted_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE management_keys SET revoked_at = $2 WHERE team_id = $1 AND revoked_at IS NULL")
            .bind(team_id.as_uuid())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE team_invitations SET revoked_at = $2 WHERE team_id = $1 AND revoked_at IS NULL AND accepted_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        // What it kept of inference goes now, not at the end of its retention.
        for table in ["stored_responses", "deferred_completions"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE team_id = $1"))
                .bind(team_id.as_uuid())
                .execute(&mut *tx)
                .await?;
        }
        // Its credit is forfeited, on the ledger (no refunds of prepaid credit).
        super::ledger::forfeit(&mut tx, team_id, at, &audit.actor).await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_members(&self, team_id: TeamId) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.id, u.email, u.display_name, m.role, m.created_at, \
             CAST(CASE WHEN u.password_hash IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_password \
             FROM team_members m JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 AND m.suspended_at IS NULL \
             ORDER BY m.created_at, u.id",
        )
        .bind(team_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        let providers = sqlx::query(
            "SELECT DISTINCT i.user_id, i.provider FROM identities i JOIN team_members m ON m.user_id = i.user_id \
             WHERE m.team_id = $1 AND m.suspended_at IS NULL ORDER BY i.provider",
        )
        .bind(team_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let email: String = row.try_get("email")?;
                let role: String = row.try_get("role")?;
                let user_id: Uuid = row.try_get("id")?;
                let mut sign_in_methods = Vec::new();
                if row.try_get::<i64, _>("has_password")? == 1 {
                    sign_in_methods.push("password".to_owned());
                }
                for provider in &providers {
                    if provider.try_get::<Uuid, _>("user_id")? == user_id {
                        sign_in_methods.push(provider.try_get("provider")?);
                    }
                }
                Ok(Member {
                    user_id: UserId::from_uuid(user_id),
                    email: Email::parse(&email).map_err(|e| corrupt("users.email", e))?,
                    display_name: row.try_get("display_name")?,
                    role: role.parse().map_err(|e| corrupt("team_members.role", e))?,
                    joined_at: row.try_get("created_at")?,
                    sign_in_methods,
                })
            })
            .collect()
    }

    async fn add_member(
        &self,
        team_id: TeamId,
        user_id: UserId,
        role: Role,
        at: Timestamp,
        audits: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(team_id.as_uuid())
            .bind(user_id.as_uuid())
            .bind(role.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn change_member(
        &self,
        team_id: TeamId,
        user_id: UserId,
        change: MemberChange,
        at: Timestamp,
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        // Take the team's row lock, so two Admins demoting each other take turns.
        sqlx::query("UPDATE teams SET name = name WHERE id = $1")
            .bind(team_id.as_uuid())
            .execute(&mut *tx)
            .await?;
        let result = match change {
            MemberChange::SetRole(role) => {
                sqlx::query("UPDATE team_members SET role = $3 WHERE team_id = $1 AND user_id = $2")
                    .bind(team_id.as_uuid())
                    .bind(user_id.as_uuid())
                    .bind(role.as_str())
                    .execute(&mut *tx)
                    .await?
            }
            MemberChange::Remove => {
                sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
                    .bind(team_id.as_uuid())
                    .bind(user_id.as_uuid())
                    .execute(&mut *tx)
                    .await?
            }
        };
        one_row(&result)?;
        let admins: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM team_members WHERE team_id = $1 AND role = 'admin' AND suspended_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        if admins == 0 {
            // Dropping the transaction undoes the change.
            return Err(StoreError::Conflict {
                constraint: "team_members_last_admin".into(),
            });
        }
        if !matches!(change, MemberChange::SetRole(Role::Admin)) {
            // Admin power held through a key ends with the Admin role that made it.
            sqlx::query(
                "UPDATE management_keys SET revoked_at = $3 WHERE team_id = $1 AND created_by = $2 AND revoked_at IS NULL",
            )
            .bind(team_id.as_uuid())
            .bind(user_id.as_uuid())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        insert_mail(&mut tx, mail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_invitation(
        &self,
        invitation: &Invitation,
        token_hash: &[u8; 32],
        mail: &[OutboundMail],
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE team_invitations SET revoked_at = $3 WHERE team_id = $1 AND email = $2 \
             AND accepted_at IS NULL AND revoked_at IS NULL",
        )
        .bind(invitation.team_id.as_uuid())
        .bind(invitation.email.as_ref())
        .bind(invitation.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO team_invitations (id, team_id, email, role, token_hash, invited_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(invitation.id.as_uuid())
        .bind(invitation.team_id.as_uuid())
        .bind(invitation.email.as_ref())
        .bind(invitation.role.as_str())
        .bind(token_hash.as_slice())
        .bind(invitation.invited_by.map(|u| u.as_uuid()))
        .bind(invitation.created_at)
        .bind(invitation.expires_at)
        .execute(&mut *tx)
        .await?;
        insert_mail(&mut tx, mail).await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_invitations(&self, team_id: TeamId, now: Timestamp) -> Result<Vec<Invitation>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INVITATION_COLUMNS} FROM team_invitations WHERE team_id = $1 AND accepted_at IS NULL \
             AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at, id"
        ))
        .bind(team_id.as_uuid())
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(invitation_from_row).collect()
    }

    async fn find_invitation(&self, token_hash: &[u8; 32]) -> Result<Option<Invitation>, StoreError> {
        sqlx::query(&format!(
            "SELECT {INVITATION_COLUMNS} FROM team_invitations WHERE token_hash = $1"
        ))
        .bind(token_hash.as_slice())
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(invitation_from_row)
        .transpose()
    }

    async fn pending_invitations_for(&self, email: &Email, now: Timestamp) -> Result<Vec<Invitation>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INVITATION_COLUMNS} FROM team_invitations i WHERE email = $1 AND accepted_at IS NULL \
             AND revoked_at IS NULL AND expires_at > $2 \
             AND EXISTS (SELECT 1 FROM teams t WHERE t.id = i.team_id AND t.deleted_at IS NULL) ORDER BY created_at"
        ))
        .bind(email.as_ref())
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(invitation_from_row).collect()
    }

    async fn revoke_invitation(
        &self,
        team_id: TeamId,
        id: tollgate_domain::InvitationId,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE team_invitations SET revoked_at = $3 WHERE team_id = $1 AND id = $2 AND revoked_at IS NULL \
             AND accepted_at IS NULL",
        )
        .bind(team_id.as_uuid())
        .bind(id.as_uuid())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_domain(&self, domain: &TeamDomain, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO team_domains (id, team_id, domain, token, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(domain.id.as_uuid())
            .bind(domain.team_id.as_uuid())
            .bind(&domain.domain)
            .bind(&domain.token)
            .bind(domain.created_at)
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_domains(&self, team_id: TeamId) -> Result<Vec<TeamDomain>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM team_domains WHERE team_id = $1 ORDER BY created_at, id"
        ))
        .bind(team_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(domain_from_row).collect()
    }

    async fn list_all_domains(&self) -> Result<Vec<TeamDomain>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DOMAIN_COLUMNS} FROM team_domains d WHERE EXISTS \
             (SELECT 1 FROM teams t WHERE t.id = d.team_id AND t.deleted_at IS NULL) ORDER BY created_at, id"
        ))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(domain_from_row).collect()
    }

    async fn record_domain_check(&self, domain: &TeamDomain, audit: Option<&AuditEvent>) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE team_domains SET verified_at = $3, checked_at = $4, last_error = $5 WHERE team_id = $1 AND id = $2",
        )
        .bind(domain.team_id.as_uuid())
        .bind(domain.id.as_uuid())
        .bind(domain.verified_at)
        .bind(domain.checked_at)
        .bind(domain.last_error.as_deref())
        .execute(&mut *tx)
        .await?;
        one_row(&result)?;
        if let Some(audit) = audit {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_domain(
        &self,
        team_id: TeamId,
        id: tollgate_domain::DomainId,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query("DELETE FROM team_domains WHERE team_id = $1 AND id = $2")
            .bind(team_id.as_uuid())
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        one_row(&result)?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn team_with_verified_domain(&self, domain: &str) -> Result<Option<TeamId>, StoreError> {
        let team: Option<Uuid> = sqlx::query_scalar(
            "SELECT d.team_id FROM team_domains d JOIN teams t ON t.id = d.team_id \
             WHERE d.domain = $1 AND d.verified_at IS NOT NULL AND t.deleted_at IS NULL",
        )
        .bind(domain)
        .fetch_optional(&self.read)
        .await?;
        Ok(team.map(TeamId::from_uuid))
    }

    async fn accept_invitation(
        &self,
        invitation: &Invitation,
        user_id: UserId,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let result = sqlx::query(
            "UPDATE team_invitations SET accepted_at = $2 WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL \
             AND expires_at > $2",
        )
        .bind(invitation.id.as_uuid())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id, user_id) DO NOTHING",
        )
        .bind(invitation.team_id.as_uuid())
        .bind(user_id.as_uuid())
        .bind(invitation.role.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_admin_emails(&self, team_id: TeamId) -> Result<Vec<Email>, StoreError> {
        let emails: Vec<String> = sqlx::query_scalar(
            "SELECT u.email FROM team_members m JOIN users u ON u.id = m.user_id \
             WHERE m.team_id = $1 AND m.role = 'admin' AND m.suspended_at IS NULL ORDER BY u.email",
        )
        .bind(team_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        emails
            .iter()
            .map(|e| Email::parse(e).map_err(|error| corrupt("users.email", error)))
            .collect()
    }
}
