// The store implementation shared by both backends. This file is `include!`d by `sqlite.rs` and
// `postgres.rs`, each of which defines `Db`, `BACKEND`, `MIGRATOR` and `SqlStore { write, read }`
// before including it. Write SQL here in the dialect both accept.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::keys::KeyHash;
use tollgate_domain::audit::GENESIS;
use tollgate_domain::{
    AclSet, ApiKey, ApiKeyId, AuditChainKey, AuditEvent, AuditEventId, AuditRecord, ChainHash, ChainHead, Email,
    Identity, IdentityId, Invitation, KeyPolicy, MailId, ManagementKey, OidcFlow, PendingIdentity, TeamDomain, ManagementKeyId, Member, Membership, OutboundMail, PruneBoundary, QueuedMail, RequestId, Role,
    Session, SessionId, Team, TeamId, Ticks, Timestamp, TokenPurpose, TokenUsage, UsageRecord, User, UserId,
    CeremonyPurpose, PasskeyId, StoredPasskey, WebauthnCeremony,
};
use uuid::Uuid;

use crate::{
    AccountDeletion, FederationStore, MemberChange, MfaChange, MfaState, MfaStore, PasswordChange, AccountStore, AccountToken, AuditChainState, EndSessions, TokenRedemption, AuditQuery, AuditStore, KeyRotation, KeyStore, MailStore, SecretMatch, Store,
    StoreError, TeamStore, UsageStore,
};

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

const USER_COLUMNS: &str = "id, email, display_name, password_hash, created_at, email_verified_at, totp_enabled_at, \
                            passkey_count, deleted_at, purge_after";

fn user_from_row(row: &DbRow) -> Result<User, StoreError> {
    let email: String = row.try_get("email").map_err(StoreError::from)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id")?),
        email: Email::parse(&email).map_err(|e| corrupt("users.email", e))?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
        email_verified_at: row.try_get("email_verified_at")?,
        totp_enabled_at: row.try_get("totp_enabled_at")?,
        passkeys: u32::try_from(row.try_get::<i32, _>("passkey_count")?)
            .map_err(|e| corrupt("users.passkey_count", e))?,
        deleted_at: row.try_get("deleted_at")?,
        purge_after: row.try_get("purge_after")?,
    })
}

fn team_from_row(row: &DbRow) -> Result<Team, StoreError> {
    Ok(Team {
        id: TeamId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        personal: row.try_get("personal")?,
        created_at: row.try_get("created_at")?,
    })
}

const API_KEY_COLUMNS: &str = "id, team_id, name, redacted, acls, qps, qpm, tpm, expire_time, disabled, blocked, \
     created_by, created_at, modified_at, modified_by, blocked_reason, deleted_at, last_used_at, previous_key_expires_at";

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
        blocked_reason: row.try_get("blocked_reason")?,
        deleted_at: row.try_get("deleted_at")?,
        last_used_at: row.try_get("last_used_at")?,
        previous_secret_expires_at: row.try_get("previous_key_expires_at")?,
    })
}

fn acls_json(key: &ApiKey) -> Result<String, StoreError> {
    let acls: Vec<String> = key.acls.as_slice().iter().map(ToString::to_string).collect();
    Ok(serde_json::to_string(&acls).map_err(anyhow::Error::from)?)
}

/// A new user, its Personal Team, and the user as that team's Admin.
async fn insert_user_with_personal_team(
    conn: &mut <Db as sqlx::Database>::Connection,
    user: &User,
    team: &Team,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO users (id, email, display_name, password_hash, created_at, email_verified_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user.id.as_uuid())
    .bind(user.email.as_ref())
    .bind(&user.display_name)
    .bind(user.password_hash.as_deref())
    .bind(user.created_at)
    .bind(user.email_verified_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO teams (id, name, description, personal, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(team.id.as_uuid())
        .bind(&team.name)
        .bind(team.description.as_deref())
        .bind(team.personal)
        .bind(team.created_at)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
        .bind(team.id.as_uuid())
        .bind(user.id.as_uuid())
        .bind(Role::Admin.as_str())
        .bind(team.created_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes the user's row lock for the rest of the transaction (PostgreSQL; SQLite has one writer
/// anyway), so checks over the user's sign-in methods see every other change committed.
async fn lock_user(conn: &mut <Db as sqlx::Database>::Connection, user_id: UserId) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET password_hash = password_hash WHERE id = $1")
        .bind(user_id.as_uuid())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `NotFound` unless exactly one row changed.
fn one_row(result: &<Db as sqlx::Database>::QueryResult) -> Result<(), StoreError> {
    if result.rows_affected() == 1 { Ok(()) } else { Err(StoreError::NotFound) }
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
        endpoint: row
            .try_get::<String, _>("endpoint")?
            .parse()
            .map_err(|e| corrupt("usage_events.endpoint", e))?,
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

const AUDIT_COLUMNS: &str = "id, team_id, at, seq, actor_kind, actor_id, actor_label, actor_label_digest, action, \
     description, target, outcome, ip, user_agent, request_id, hash";

fn chain_hash(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<ChainHash>, StoreError> {
    bytes
        .map(|b| ChainHash::try_from(b.as_slice()).map_err(|_| corrupt(what, "is not 32 bytes")))
        .transpose()
}

fn audit_from_row(row: &DbRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: AuditEventId::from_uuid(row.try_get("id")?),
        at: row.try_get("at")?,
        team_id: row.try_get::<Option<Uuid>, _>("team_id")?.map(TeamId::from_uuid),
        seq: row.try_get::<Option<i64>, _>("seq")?.map(|s| to_u64(s, "audit_events.seq")).transpose()?,
        actor_kind: row.try_get("actor_kind")?,
        actor_id: row.try_get("actor_id")?,
        actor_label: row.try_get("actor_label")?,
        actor_label_digest: chain_hash(row.try_get("actor_label_digest")?, "audit_events.actor_label_digest")?,
        action: row.try_get("action")?,
        description: row.try_get("description")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
        hash: chain_hash(row.try_get("hash")?, "audit_events.hash")?,
    })
}

/// The chain an event belongs to: its team's, or the platform's.
fn chain_name(team_id: Option<TeamId>) -> String {
    team_id.map_or_else(|| "platform".to_owned(), |t| t.to_string())
}

fn chain_from_row(row: &DbRow) -> Result<AuditChainState, StoreError> {
    let head_hash = chain_hash(Some(row.try_get("head_hash")?), "audit_chains.head_hash")?.unwrap_or(GENESIS);
    let pruned_seq: Option<i64> = row.try_get("pruned_seq")?;
    let pruned_hash = chain_hash(row.try_get("pruned_hash")?, "audit_chains.pruned_hash")?;
    let pruned_mac = chain_hash(row.try_get("pruned_mac")?, "audit_chains.pruned_mac")?;
    let boundary = match (pruned_seq, pruned_hash, pruned_mac) {
        (Some(seq), Some(hash), Some(mac)) => Some(PruneBoundary {
            seq: to_u64(seq, "audit_chains.pruned_seq")?,
            hash,
            mac,
        }),
        (None, None, None) => None,
        _ => return Err(corrupt("audit_chains.pruned_*", "partly set")),
    };
    Ok(AuditChainState {
        team_id: row.try_get::<Option<Uuid>, _>("team_id")?.map(TeamId::from_uuid),
        head: ChainHead {
            seq: to_u64(row.try_get("head_seq")?, "audit_chains.head_seq")?,
            hash: head_hash,
        },
        boundary,
    })
}

/// Appends an audit event to its team's chain inside the caller's transaction. The chain's head
/// row is locked by the upsert until the transaction ends, so concurrent writers take turns and
/// every event gets the next position.
async fn insert_audit(
    conn: &mut <Db as sqlx::Database>::Connection,
    key: &AuditChainKey,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    append_audit_chain(conn, key, event.team_id, &[event]).await
}

/// Rows per multi-row `INSERT`: 16 columns each stays under both backends' bind limits.
const AUDIT_ROWS_PER_INSERT: usize = 1000;

/// Appends `events` (all of one chain) in the caller's transaction: one head read and lock, one
/// head update, multi-row inserts.
async fn append_audit_chain(
    conn: &mut <Db as sqlx::Database>::Connection,
    key: &AuditChainKey,
    team_id: Option<TeamId>,
    events: &[&AuditEvent],
) -> Result<(), StoreError> {
    let Some(count) = u64::try_from(events.len()).ok().filter(|&n| n > 0) else {
        return Ok(());
    };
    let chain = chain_name(team_id);
    let head = sqlx::query(
        "INSERT INTO audit_chains (chain, team_id, head_seq, head_hash) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (chain) DO UPDATE SET head_seq = audit_chains.head_seq + $3 RETURNING head_seq, head_hash",
    )
    .bind(&chain)
    .bind(team_id.map(|t| t.as_uuid()))
    .bind(to_i64(count, "count")?)
    .bind(GENESIS.as_slice())
    .fetch_one(&mut *conn)
    .await?;
    let last_seq = to_u64(head.try_get("head_seq")?, "audit_chains.head_seq")?;
    let mut prev = chain_hash(Some(head.try_get("head_hash")?), "audit_chains.head_hash")?.unwrap_or(GENESIS);
    let mut seq = last_seq - count;
    let mut records = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        let record = key.seal(event, seq, &prev);
        prev = record.hash.unwrap_or(GENESIS);
        records.push(record);
    }
    for chunk in records.chunks(AUDIT_ROWS_PER_INSERT) {
        let mut insert = sqlx::QueryBuilder::<Db>::new(
            "INSERT INTO audit_events (id, team_id, at, seq, actor_kind, actor_id, actor_label, actor_label_digest, \
             action, description, target, outcome, ip, user_agent, request_id, hash) ",
        );
        let mut failed = None;
        insert.push_values(chunk, |mut row, record| {
            let seq = match record.seq.map(|s| to_i64(s, "audit_events.seq")).transpose() {
                Ok(seq) => seq,
                Err(error) => {
                    failed = Some(error);
                    None
                }
            };
            row.push_bind(record.id.as_uuid())
                .push_bind(record.team_id.map(|t| t.as_uuid()))
                .push_bind(record.at)
                .push_bind(seq)
                .push_bind(record.actor_kind.clone())
                .push_bind(record.actor_id.clone())
                .push_bind(record.actor_label.clone())
                .push_bind(record.actor_label_digest.map(|d| d.to_vec()))
                .push_bind(record.action.clone())
                .push_bind(record.description.clone())
                .push_bind(record.target.clone())
                .push_bind(record.outcome.clone())
                .push_bind(record.ip.clone())
                .push_bind(record.user_agent.clone())
                .push_bind(record.request_id.clone())
                .push_bind(record.hash.map(|h| h.to_vec()));
        });
        if let Some(error) = failed {
            return Err(error);
        }
        insert.build().execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE audit_chains SET head_hash = $2 WHERE chain = $1")
        .bind(&chain)
        .bind(prev.as_slice())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

const DOMAIN_COLUMNS: &str = "id, team_id, domain, token, created_at, verified_at, checked_at, last_error";

fn domain_from_row(row: &DbRow) -> Result<TeamDomain, StoreError> {
    Ok(TeamDomain {
        id: tollgate_domain::DomainId::from_uuid(row.try_get("id")?),
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        domain: row.try_get("domain")?,
        token: row.try_get("token")?,
        created_at: row.try_get("created_at")?,
        verified_at: row.try_get("verified_at")?,
        checked_at: row.try_get("checked_at")?,
        last_error: row.try_get("last_error")?,
    })
}

const INVITATION_COLUMNS: &str =
    "id, team_id, email, role, invited_by, created_at, expires_at, accepted_at, revoked_at";

fn invitation_from_row(row: &DbRow) -> Result<Invitation, StoreError> {
    let email: String = row.try_get("email")?;
    let role: String = row.try_get("role")?;
    Ok(Invitation {
        id: tollgate_domain::InvitationId::from_uuid(row.try_get("id")?),
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        email: Email::parse(&email).map_err(|e| corrupt("team_invitations.email", e))?,
        role: role.parse().map_err(|e| corrupt("team_invitations.role", e))?,
        invited_by: row.try_get::<Option<Uuid>, _>("invited_by")?.map(UserId::from_uuid),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        accepted_at: row.try_get("accepted_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const SESSION_COLUMNS: &str = "s.id, s.user_id, s.created_at, s.last_seen_at, s.absolute_expires_at, s.ip, \
     s.user_agent, s.location, s.revoked_at";

fn session_from_row(row: &DbRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId::from_uuid(row.try_get("id")?),
        user_id: UserId::from_uuid(row.try_get("user_id")?),
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        absolute_expires_at: row.try_get("absolute_expires_at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        location: row.try_get("location")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Queues `mail` inside the caller's transaction.
async fn insert_mail(conn: &mut <Db as sqlx::Database>::Connection, mail: &[OutboundMail]) -> Result<(), StoreError> {
    for item in mail {
        let recipients: Vec<&str> = item.to.iter().map(AsRef::as_ref).collect();
        sqlx::query(
            "INSERT INTO mail_outbox (id, recipients, subject, body, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(item.id.as_uuid())
        .bind(serde_json::to_string(&recipients).map_err(anyhow::Error::from)?)
        .bind(&item.subject)
        .bind(&item.body)
        .bind(item.created_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

const MAIL_COLUMNS: &str =
    "id, recipients, subject, body, created_at, attempts, next_attempt_at, sent_at, failed_at, last_error";

fn mail_from_row(row: &DbRow) -> Result<QueuedMail, StoreError> {
    let recipients: String = row.try_get("recipients")?;
    let recipients: Vec<String> =
        serde_json::from_str(&recipients).map_err(|e| corrupt("mail_outbox.recipients", e))?;
    Ok(QueuedMail {
        mail: OutboundMail {
            id: MailId::from_uuid(row.try_get("id")?),
            to: recipients
                .iter()
                .map(|r| Email::parse(r).map_err(|e| corrupt("mail_outbox.recipients", e)))
                .collect::<Result<_, _>>()?,
            subject: row.try_get("subject")?,
            body: row.try_get("body")?,
            created_at: row.try_get("created_at")?,
        },
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).map_err(|e| corrupt("mail_outbox.attempts", e))?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        sent_at: row.try_get("sent_at")?,
        failed_at: row.try_get("failed_at")?,
        last_error: row.try_get("last_error")?,
    })
}

/// `LIKE` pattern matching `text` anywhere, with the wildcards in `text` taken literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user_with_personal_team(&self, user: &User, team: &Team, audit: &AuditEvent) -> Result<(), StoreError> {
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
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"))
            .bind(email.as_ref())
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
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
                let email = email.ok_or_else(|| corrupt("account_tokens.data", "an email change without an address"))?;
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
        let result = sqlx::query("UPDATE users SET deleted_at = $2, purge_after = $3 WHERE id = $1 AND deleted_at IS NULL")
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
        sqlx::query("INSERT INTO audit_prune_permits (id) VALUES (2)").execute(&mut *tx).await?;
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
        // Its Personal Team goes with it (and that team's keys).
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
                Ok(Membership { team: team_from_row(row)?, role: role.parse().map_err(|e| corrupt("team_members.role", e))? })
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
        role.map(|r| r.parse().map_err(|e| corrupt("team_members.role", e))).transpose()
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
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_members(&self, team_id: TeamId) -> Result<Vec<Member>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.id, u.email, u.display_name, m.role, m.created_at FROM team_members m \
             JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 AND m.suspended_at IS NULL \
             ORDER BY m.created_at, u.id",
        )
        .bind(team_id.as_uuid())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let email: String = row.try_get("email")?;
                let role: String = row.try_get("role")?;
                Ok(Member {
                    user_id: UserId::from_uuid(row.try_get("id")?),
                    email: Email::parse(&email).map_err(|e| corrupt("users.email", e))?,
                    display_name: row.try_get("display_name")?,
                    role: role.parse().map_err(|e| corrupt("team_members.role", e))?,
                    joined_at: row.try_get("created_at")?,
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
        sqlx::query(&format!("SELECT {INVITATION_COLUMNS} FROM team_invitations WHERE token_hash = $1"))
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
        let rows = sqlx::query(&format!("SELECT {DOMAIN_COLUMNS} FROM team_domains WHERE team_id = $1 ORDER BY created_at, id"))
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

    async fn delete_domain(&self, team_id: TeamId, id: tollgate_domain::DomainId, audit: &AuditEvent) -> Result<(), StoreError> {
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
        sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE team_id = $1 AND id = $2"))
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

    async fn list_api_keys(&self, team_id: TeamId, after: Option<ApiKeyId>, limit: u32) -> Result<Vec<ApiKey>, StoreError> {
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

#[async_trait]
impl AuditStore for SqlStore {
    async fn insert_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_audit(&mut tx, &self.audit_key, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit_events(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        // Group by chain, keeping each chain's events in the order given.
        let mut chains: Vec<(Option<TeamId>, Vec<&AuditEvent>)> = Vec::new();
        for event in events {
            match chains.iter_mut().find(|(team, _)| *team == event.team_id) {
                Some((_, list)) => list.push(event),
                None => chains.push((event.team_id, vec![event])),
            }
        }
        let mut tx = self.write.begin().await?;
        for (team_id, list) in &chains {
            append_audit_chain(&mut tx, &self.audit_key, *team_id, list).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit_events(&self, team_id: TeamId, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.search_audit_events(&AuditQuery {
            team_id,
            event_id: None,
            actor_id: None,
            text: None,
            from: None,
            to: None,
            newest_first: true,
            after: None,
            limit,
        })
        .await
    }

    async fn search_audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        // Filters are added as `$n` placeholders in a fixed order, then bound in the same order.
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE team_id = $1");
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        if query.event_id.is_some() {
            sql.push_str(&format!(" AND id = ${}", next()));
        }
        if query.actor_id.is_some() {
            sql.push_str(&format!(" AND actor_id = ${}", next()));
        }
        if query.text.is_some() {
            let p = next();
            sql.push_str(&format!(
                " AND (LOWER(action) LIKE ${p} ESCAPE '\\' OR LOWER(description) LIKE ${p} ESCAPE '\\')"
            ));
        }
        if query.from.is_some() {
            sql.push_str(&format!(" AND at >= ${}", next()));
        }
        if query.to.is_some() {
            sql.push_str(&format!(" AND at < ${}", next()));
        }
        let (cmp, order) = if query.newest_first { ("<", "DESC") } else { (">", "ASC") };
        if query.after.is_some() {
            let (t, i) = (next(), next());
            // A row comparison, so both planners turn it into one index range (an OR of two
            // conditions makes PostgreSQL scan from the start of the team's events every page).
            sql.push_str(&format!(" AND (at, id) {cmp} (${t}, ${i})"));
        }
        sql.push_str(&format!(" ORDER BY at {order}, id {order} LIMIT ${}", next()));

        let mut q = sqlx::query(&sql).bind(query.team_id.as_uuid());
        if let Some(id) = query.event_id {
            q = q.bind(id.as_uuid());
        }
        if let Some(actor) = &query.actor_id {
            q = q.bind(actor.as_str());
        }
        if let Some(text) = &query.text {
            q = q.bind(contains_pattern(text));
        }
        if let Some(from) = query.from {
            q = q.bind(from);
        }
        if let Some(to) = query.to {
            q = q.bind(to);
        }
        if let Some((at, id)) = query.after {
            q = q.bind(at).bind(id.as_uuid());
        }
        let rows = q.bind(i64::from(query.limit)).fetch_all(&self.read).await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn list_audit_chains(&self) -> Result<Vec<AuditChainState>, StoreError> {
        let rows = sqlx::query(
            "SELECT team_id, head_seq, head_hash, pruned_seq, pruned_hash, pruned_mac FROM audit_chains ORDER BY chain",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(chain_from_row).collect()
    }

    async fn get_audit_chain(&self, team_id: Option<TeamId>) -> Result<Option<AuditChainState>, StoreError> {
        let row = sqlx::query(
            "SELECT team_id, head_seq, head_hash, pruned_seq, pruned_hash, pruned_mac FROM audit_chains WHERE chain = $1",
        )
        .bind(chain_name(team_id))
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(chain_from_row).transpose()
    }

    async fn audit_chain_page(
        &self,
        team_id: Option<TeamId>,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let team_filter = if team_id.is_some() { "team_id = $1" } else { "team_id IS NULL AND $1 IS NULL" };
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE {team_filter} AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(team_id.map(|t| t.as_uuid()))
        .bind(to_i64(after_seq, "seq")?)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn count_unchained_audit_events(&self, team_id: Option<TeamId>) -> Result<u64, StoreError> {
        let team_filter = if team_id.is_some() { "team_id = $1" } else { "team_id IS NULL AND $1 IS NULL" };
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE {team_filter} AND seq IS NULL"
        ))
        .bind(team_id.map(|t| t.as_uuid()))
        .fetch_one(&self.read)
        .await?;
        to_u64(count, "count")
    }

    async fn prune_audit_chain(
        &self,
        team_id: Option<TeamId>,
        before: Timestamp,
        note: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<u64, StoreError> {
        let chain = chain_name(team_id);
        let team_filter = if team_id.is_some() { "team_id = $1" } else { "team_id IS NULL AND $1 IS NULL" };
        let team = team_id.map(|t| t.as_uuid());
        let mut tx = self.write.begin().await?;
        // Lock the chain so no event is appended while its prefix is cut.
        let Some(state) = sqlx::query(
            "UPDATE audit_chains SET head_seq = head_seq WHERE chain = $1 \
             RETURNING team_id, head_seq, head_hash, pruned_seq, pruned_hash, pruned_mac",
        )
        .bind(&chain)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(0);
        };
        let state = chain_from_row(&state)?;
        let first_kept: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(seq) FROM audit_events WHERE {team_filter} AND seq IS NOT NULL AND at >= $2"
        ))
        .bind(team)
        .bind(before)
        .fetch_one(&mut *tx)
        .await?;
        let cut = match first_kept {
            Some(seq) => to_u64(seq, "audit_events.seq")?.saturating_sub(1),
            None => state.head.seq,
        };
        let already = state.boundary.as_ref().map_or(0, |b| b.seq);
        if cut <= already {
            return Ok(0);
        }
        let last_removed: Vec<u8> = sqlx::query_scalar(&format!(
            "SELECT hash FROM audit_events WHERE {team_filter} AND seq = $2"
        ))
        .bind(team)
        .bind(to_i64(cut, "seq")?)
        .fetch_one(&mut *tx)
        .await?;
        let last_removed =
            chain_hash(Some(last_removed), "audit_events.hash")?.unwrap_or(GENESIS);
        sqlx::query("INSERT INTO audit_prune_permits (id) VALUES (1)").execute(&mut *tx).await?;
        let removed = sqlx::query(&format!(
            "DELETE FROM audit_events WHERE {team_filter} AND seq IS NOT NULL AND seq <= $2"
        ))
        .bind(team)
        .bind(to_i64(cut, "seq")?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM audit_prune_permits").execute(&mut *tx).await?;
        let mac = self.audit_key.boundary_mac(team_id, cut, &last_removed);
        sqlx::query("UPDATE audit_chains SET pruned_seq = $2, pruned_hash = $3, pruned_mac = $4 WHERE chain = $1")
            .bind(&chain)
            .bind(to_i64(cut, "seq")?)
            .bind(last_removed.as_slice())
            .bind(mac.as_slice())
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &self.audit_key, &note(removed)).await?;
        tx.commit().await?;
        Ok(removed)
    }
}

#[async_trait]
impl MailStore for SqlStore {
    async fn enqueue_mail(&self, mail: &[OutboundMail]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_mail(&mut tx, mail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_due_mail(
        &self,
        now: Timestamp,
        hold_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        // The outer condition is checked again on the row as it is updated, so when two senders
        // race for a mail, only one gets it.
        let rows = sqlx::query(&format!(
            "UPDATE mail_outbox SET claimed_until = $2 WHERE id IN (\
                 SELECT id FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 \
                 AND (claimed_until IS NULL OR claimed_until <= $1) ORDER BY next_attempt_at LIMIT $3) \
             AND sent_at IS NULL AND failed_at IS NULL AND (claimed_until IS NULL OR claimed_until <= $1) \
             RETURNING {MAIL_COLUMNS}"
        ))
        .bind(now)
        .bind(hold_until)
        .bind(i64::from(limit))
        .fetch_all(&self.write)
        .await?;
        rows.iter().map(mail_from_row).collect()
    }

    async fn mark_mail_sent(&self, id: MailId, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mail_outbox SET sent_at = $2, attempts = attempts + 1, claimed_until = NULL, last_error = NULL, \
             body = $3 WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(at)
        .bind(tollgate_domain::mail::SENT_BODY)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn mark_mail_failed(
        &self,
        id: MailId,
        error: &str,
        retry_at: Option<Timestamp>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mail_outbox SET attempts = attempts + 1, claimed_until = NULL, last_error = $2, \
             next_attempt_at = COALESCE($3, next_attempt_at), failed_at = CASE WHEN $3 IS NULL THEN $4 ELSE NULL END \
             WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(error)
        .bind(retry_at)
        .bind(at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn list_mail(&self, limit: u32) -> Result<Vec<QueuedMail>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {MAIL_COLUMNS} FROM mail_outbox ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(mail_from_row).collect()
    }

    async fn get_mail(&self, id: MailId) -> Result<Option<QueuedMail>, StoreError> {
        sqlx::query(&format!("SELECT {MAIL_COLUMNS} FROM mail_outbox WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(mail_from_row)
            .transpose()
    }
}

/// Replaces the user's recovery codes inside the caller's transaction.
async fn passkey_count(conn: &mut <Db as sqlx::Database>::Connection, user_id: UserId) -> Result<i32, StoreError> {
    Ok(sqlx::query_scalar("SELECT passkey_count FROM users WHERE id = $1")
        .bind(user_id.as_uuid())
        .fetch_one(&mut *conn)
        .await?)
}

async fn put_recovery_codes(
    conn: &mut <Db as sqlx::Database>::Connection,
    user_id: UserId,
    hashes: &[[u8; 32]],
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id.as_uuid())
        .execute(&mut *conn)
        .await?;
    for hash in hashes {
        sqlx::query("INSERT INTO recovery_codes (code_hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(hash.as_slice())
            .bind(user_id.as_uuid())
            .bind(at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Ends every session of the user but `keep`, inside the caller's transaction.
async fn end_other_sessions_in(
    conn: &mut <Db as sqlx::Database>::Connection,
    user_id: UserId,
    keep: Option<SessionId>,
    at: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE sessions SET revoked_at = $3 WHERE user_id = $1 AND revoked_at IS NULL AND ($2 IS NULL OR id <> $2)")
        .bind(user_id.as_uuid())
        .bind(keep.map(|id| id.as_uuid()))
        .bind(at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn finish_change(
    conn: &mut <Db as sqlx::Database>::Connection,
    key: &AuditChainKey,
    change: &MfaChange<'_>,
) -> Result<(), StoreError> {
    end_other_sessions_in(conn, change.user_id, change.keep, change.at).await?;
    insert_mail(conn, change.mail).await?;
    for audit in change.audits {
        insert_audit(conn, key, audit).await?;
    }
    Ok(())
}

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

const IDENTITY_COLUMNS: &str = "id, user_id, provider, issuer, subject, email, linked_at";

fn identity_from_row(row: &DbRow) -> Result<Identity, StoreError> {
    Ok(Identity {
        id: IdentityId::from_uuid(row.try_get("id")?),
        user_id: UserId::from_uuid(row.try_get("user_id")?),
        provider: row.try_get("provider")?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        email: row.try_get("email")?,
        linked_at: row.try_get("linked_at")?,
    })
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| corrupt(what, "not 32 bytes"))
}

async fn insert_identity_in(conn: &mut <Db as sqlx::Database>::Connection, identity: &Identity) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO identities (id, user_id, provider, issuer, subject, email, linked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(identity.id.as_uuid())
    .bind(identity.user_id.as_uuid())
    .bind(&identity.provider)
    .bind(&identity.issuer)
    .bind(&identity.subject)
    .bind(identity.email.as_deref())
    .bind(identity.linked_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl FederationStore for SqlStore {
    async fn find_identity(&self, issuer: &str, subject: &str) -> Result<Option<Identity>, StoreError> {
        sqlx::query(&format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE issuer = $1 AND subject = $2"))
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(identity_from_row)
            .transpose()
    }

    async fn list_identities(&self, user_id: UserId) -> Result<Vec<Identity>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE user_id = $1 ORDER BY linked_at, id"))
            .bind(user_id.as_uuid())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(identity_from_row).collect()
    }

    async fn insert_identity(&self, identity: &Identity, audits: &[AuditEvent], mail: &[OutboundMail]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_identity_in(&mut tx, identity).await?;
        insert_mail(&mut tx, mail).await?;
        for audit in audits {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_federated_user(&self, user: &User, team: &Team, identity: &Identity, audit: &AuditEvent) -> Result<(), StoreError> {
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

    async fn take_pending_identity(&self, hash: &[u8; 32], at: Timestamp) -> Result<Option<PendingIdentity>, StoreError> {
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

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> crate::Backend {
        BACKEND
    }

    async fn migrate(&self) -> Result<(), crate::OpenError> {
        MIGRATOR.run(&self.write).await.map_err(crate::OpenError::Migrate)?;
        let ours = self.audit_key.fingerprint();
        sqlx::query("INSERT INTO settings (name, value) VALUES ('audit_key_fingerprint', $1) ON CONFLICT (name) DO NOTHING")
            .bind(&ours)
            .execute(&self.write)
            .await
            .map_err(|e| crate::OpenError::Store(e.into()))?;
        let stored: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = 'audit_key_fingerprint'")
            .fetch_one(&self.write)
            .await
            .map_err(|e| crate::OpenError::Store(e.into()))?;
        if stored != ours {
            return Err(crate::OpenError::AuditKeyMismatch { stored, ours });
        }
        Ok(())
    }

    async fn sweep(&self, sweep: &tollgate_domain::Sweep) -> Result<tollgate_domain::Swept, StoreError> {
        let mut tx = self.write.begin().await?;
        let mut tokens = 0;
        for table in [
            "account_tokens",
            "mfa_challenges",
            "oidc_flows",
            "pending_identities",
            "webauthn_ceremonies",
        ] {
            tokens += sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                .bind(sweep.expired_before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        let sessions = sqlx::query("DELETE FROM sessions WHERE created_at < $1")
            .bind(sweep.sessions_begun_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let invitations = sqlx::query("DELETE FROM team_invitations WHERE expires_at < $1")
            .bind(sweep.invitations_expired_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mail = sqlx::query(
            "DELETE FROM mail_outbox WHERE created_at < $1 AND (claimed_until IS NULL OR claimed_until < $2)",
        )
        .bind(sweep.mail_created_before)
        .bind(sweep.now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(tollgate_domain::Swept {
            tokens,
            sessions,
            invitations,
            mail,
        })
    }

    async fn analyze(&self) -> Result<(), StoreError> {
        sqlx::query("ANALYZE").execute(&self.write).await?;
        Ok(())
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
