// The store implementation shared by both backends. This file is `include!`d by `sqlite.rs` and
// `postgres.rs`, each of which defines `Db`, `BACKEND`, `MIGRATOR` and `SqlStore { write, read }`
// before including it. Write SQL here in the dialect both accept.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::keys::KeyHash;
use tollgate_domain::{
    AclSet, ApiKey, ApiKeyId, AuditEvent, AuditEventId, Email, ManagementKey, ManagementKeyId, Membership, RequestId,
    Role, Team, TeamId, Ticks, TokenUsage, UsageRecord, User, UserId,
};
use uuid::Uuid;

use crate::{AccountStore, AuditStore, KeyStore, Store, StoreError, StoredAuditEvent, TeamStore, UsageStore};

type DbRow = <Db as sqlx::Database>::Row;

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| corrupt(what, "does not fit a 64-bit integer"))
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(what, "is negative"))
}

fn opt_u32(value: Option<i64>, what: &str) -> Result<Option<u32>, StoreError> {
    value.map(|v| u32::try_from(v).map_err(|_| corrupt(what, "out of range"))).transpose()
}

fn user_from_row(row: &DbRow) -> Result<User, StoreError> {
    let email: String = row.try_get("email").map_err(StoreError::from)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id")?),
        email: Email::parse(&email).map_err(|e| corrupt("users.email", e))?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

fn team_from_row(row: &DbRow) -> Result<Team, StoreError> {
    Ok(Team {
        id: TeamId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        personal: row.try_get("personal")?,
        created_at: row.try_get("created_at")?,
    })
}

const API_KEY_COLUMNS: &str = "id, team_id, name, redacted, acls, qps, qpm, tpm, expire_time, disabled, blocked, \
     created_by, created_at, modified_at, modified_by";

fn api_key_from_row(row: &DbRow) -> Result<ApiKey, StoreError> {
    let acls_json: String = row.try_get("acls")?;
    let acl_strings: Vec<String> = serde_json::from_str(&acls_json).map_err(|e| corrupt("api_keys.acls", e))?;
    let tpm: Option<i64> = row.try_get("tpm")?;
    Ok(ApiKey {
        id: ApiKeyId::from_uuid(row.try_get("id")?),
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        name: row.try_get("name")?,
        redacted: row.try_get("redacted")?,
        acls: AclSet::parse(&acl_strings).map_err(|e| corrupt("api_keys.acls", e))?,
        qps: opt_u32(row.try_get("qps")?, "api_keys.qps")?,
        qpm: opt_u32(row.try_get("qpm")?, "api_keys.qpm")?,
        tpm: tpm.map(|v| to_u64(v, "api_keys.tpm")).transpose()?,
        expire_time: row.try_get("expire_time")?,
        disabled: row.try_get("disabled")?,
        blocked: row.try_get("blocked")?,
        created_by: row.try_get::<Option<Uuid>, _>("created_by")?.map(UserId::from_uuid),
        created_at: row.try_get("created_at")?,
        modified_at: row.try_get("modified_at")?,
        modified_by: row.try_get::<Option<Uuid>, _>("modified_by")?.map(UserId::from_uuid),
    })
}

const MANAGEMENT_KEY_COLUMNS: &str = "id, team_id, name, redacted, created_by, created_at, revoked_at";

fn management_key_from_row(row: &DbRow) -> Result<ManagementKey, StoreError> {
    Ok(ManagementKey {
        id: ManagementKeyId::from_uuid(row.try_get("id")?),
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        name: row.try_get("name")?,
        redacted: row.try_get("redacted")?,
        created_by: row.try_get::<Option<Uuid>, _>("created_by")?.map(UserId::from_uuid),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn usage_from_row(row: &DbRow) -> Result<UsageRecord, StoreError> {
    let get_u64 = |column: &str| -> Result<u64, StoreError> { to_u64(row.try_get(column)?, column) };
    Ok(UsageRecord {
        request_id: RequestId::from_uuid(row.try_get("request_id")?),
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        api_key_id: ApiKeyId::from_uuid(row.try_get("api_key_id")?),
        model: row.try_get("model")?,
        endpoint: row.try_get("endpoint")?,
        usage: TokenUsage {
            prompt_tokens: get_u64("prompt_tokens")?,
            cached_prompt_tokens: get_u64("cached_prompt_tokens")?,
            completion_tokens: get_u64("completion_tokens")?,
            reasoning_tokens: get_u64("reasoning_tokens")?,
        },
        cost: Ticks::new(row.try_get("cost_ticks")?),
        estimated: row.try_get("estimated")?,
        streamed: row.try_get("streamed")?,
        started_at: row.try_get("created_at")?,
        duration_ms: get_u64("duration_ms")?,
    })
}

fn audit_from_row(row: &DbRow) -> Result<StoredAuditEvent, StoreError> {
    Ok(StoredAuditEvent {
        id: AuditEventId::from_uuid(row.try_get("id")?),
        at: row.try_get("at")?,
        team_id: row.try_get::<Option<Uuid>, _>("team_id")?.map(TeamId::from_uuid),
        actor_kind: row.try_get("actor_kind")?,
        actor_id: row.try_get("actor_id")?,
        actor_label: row.try_get("actor_label")?,
        action: row.try_get("action")?,
        description: row.try_get("description")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
    })
}

/// Writes an audit event inside the caller's transaction.
async fn insert_audit(conn: &mut <Db as sqlx::Database>::Connection, event: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (id, team_id, at, actor_kind, actor_id, actor_label, action, description, \
         target, outcome, ip, user_agent, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(event.id.as_uuid())
    .bind(event.team_id.map(|t| t.as_uuid()))
    .bind(event.at)
    .bind(event.actor.kind())
    .bind(event.actor.id())
    .bind(event.actor.label())
    .bind(event.action)
    .bind(&event.description)
    .bind(event.target.as_deref())
    .bind(event.outcome.as_str())
    .bind(event.ip.as_deref())
    .bind(event.user_agent.as_deref())
    .bind(event.request_id.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user_with_personal_team(&self, user: &User, team: &Team, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO users (id, email, display_name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(user.id.as_uuid())
            .bind(user.email.as_ref())
            .bind(&user.display_name)
            .bind(user.password_hash.as_deref())
            .bind(user.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO teams (id, name, personal, created_at) VALUES ($1, $2, $3, $4)")
            .bind(team.id.as_uuid())
            .bind(&team.name)
            .bind(team.personal)
            .bind(team.created_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(team.id.as_uuid())
            .bind(user.id.as_uuid())
            .bind(Role::Admin.as_str())
            .bind(team.created_at)
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        sqlx::query("SELECT id, email, display_name, password_hash, created_at FROM users WHERE email = $1")
            .bind(email.as_ref())
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn get_user(&self, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query("SELECT id, email, display_name, password_hash, created_at FROM users WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_one(&self.read)
            .await?;
        user_from_row(&row)
    }
}

#[async_trait]
impl TeamStore for SqlStore {
    async fn get_team(&self, id: TeamId) -> Result<Team, StoreError> {
        let row = sqlx::query("SELECT id, name, personal, created_at FROM teams WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_one(&self.read)
            .await?;
        team_from_row(&row)
    }

    async fn list_memberships(&self, user_id: UserId) -> Result<Vec<Membership>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.name, t.personal, t.created_at, m.role FROM team_members m \
             JOIN teams t ON t.id = m.team_id WHERE m.user_id = $1 ORDER BY t.created_at, t.id",
        )
        .bind(user_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok(Membership { team: team_from_row(row)?, role: role.parse().map_err(|e| corrupt("team_members.role", e))? })
            })
            .collect()
    }

    async fn find_role(&self, team_id: TeamId, user_id: UserId) -> Result<Option<Role>, StoreError> {
        let role: Option<String> = sqlx::query_scalar("SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id.as_uuid())
            .bind(user_id.as_uuid())
            .fetch_optional(&self.read)
            .await?;
        role.map(|r| r.parse().map_err(|e| corrupt("team_members.role", e))).transpose()
    }
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn insert_api_key(&self, key: &ApiKey, hash: &KeyHash, audit: &AuditEvent) -> Result<(), StoreError> {
        let acls: Vec<String> = key.acls.as_slice().iter().map(ToString::to_string).collect();
        let acls = serde_json::to_string(&acls).map_err(anyhow::Error::from)?;
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
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_api_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"))
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(api_key_from_row)
            .transpose()
    }

    async fn find_api_key(&self, team_id: TeamId, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE team_id = $1 AND id = $2"))
            .bind(team_id.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(api_key_from_row)
            .transpose()
    }

    async fn list_api_keys(&self, team_id: TeamId, after: Option<ApiKeyId>, limit: u32) -> Result<Vec<ApiKey>, StoreError> {
        // Keyset pagination on the time-ordered id; the nil UUID sorts before every real one.
        let after = after.map_or(Uuid::nil(), |id| id.as_uuid());
        let rows = sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE team_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(team_id.as_uuid())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn insert_management_key(&self, key: &ManagementKey, hash: &KeyHash, audit: &AuditEvent) -> Result<(), StoreError> {
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
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_management_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ManagementKey>, StoreError> {
        sqlx::query(&format!("SELECT {MANAGEMENT_KEY_COLUMNS} FROM management_keys WHERE key_hash = $1"))
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(management_key_from_row)
            .transpose()
    }
}

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
            .bind(&record.endpoint)
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

#[async_trait]
impl AuditStore for SqlStore {
    async fn insert_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_audit(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit_events(&self, team_id: TeamId, limit: u32) -> Result<Vec<StoredAuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, team_id, at, actor_kind, actor_id, actor_label, action, description, target, outcome, ip, \
             user_agent, request_id FROM audit_events WHERE team_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(team_id.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> crate::Backend {
        BACKEND
    }

    async fn migrate(&self) -> Result<(), crate::OpenError> {
        MIGRATOR.run(&self.write).await.map_err(crate::OpenError::Migrate)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}
