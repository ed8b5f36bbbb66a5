//! The store implementation shared by both backends: `sqlite.rs` and `postgres.rs` each declare
//! this module (`#[path = "sql/mod.rs"] mod sql;`) after defining `Db`, `BACKEND`, `MIGRATOR`
//! and `SqlStore { write, read, audit_key }`, so the same statements compile for each. Write SQL
//! here in the dialect both accept. Row conversions and helpers shared by the areas are here;
//! each area's trait implementation is a module of its own.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::audit::GENESIS;
use tollgate_domain::{
    AclSet, ApiKey, ApiKeyId, AuditChainKey, AuditEvent, AuditEventId, AuditRecord, ChainHash, ChainHead, Email,
    Identity, IdentityId, Invitation, MailId, ManagementKey, ManagementKeyId, OutboundMail, PruneBoundary, QueuedMail,
    RequestId, Role, Session, SessionId, Team, TeamDomain, TeamId, Ticks, Timestamp, TokenUsage, UsageRecord, User,
    UserId,
};
use uuid::Uuid;

use crate::{AuditChainState, MfaChange, Store, StoreError};

use super::{BACKEND, Db, MIGRATOR, SqlStore};

mod accounts;
mod alerts;
mod audit;
mod bodies;
mod credit;
mod deferred;
mod federation;
mod invoices;
mod keys;
mod ledger;
mod mail;
mod mfa;
mod payments;
mod responses;
mod teams;
mod tiers;
/// Seen by SQLite's group-commit thread (`sqlite::commit`), which charges as this does.
pub(super) mod usage;

type DbRow = <Db as sqlx::Database>::Row;

/// The connection as PostgreSQL's, in PostgreSQL's instantiation of this module: statements
/// that bind each column as one array (a batch in one statement of one text) exist only there
/// (SQLite has no arrays). A type comparison, settled when this is compiled.
fn postgres(conn: &mut <Db as sqlx::Database>::Connection) -> Option<&mut sqlx::PgConnection> {
    (conn as &mut dyn std::any::Any).downcast_mut()
}

pub(crate) fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| corrupt(what, "does not fit a 64-bit integer"))
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(what, "is negative"))
}

/// The pieces a multi-row statement over `rows` is written in: the largest power of two that
/// fits, at most `max` (itself a power of two), then the rest the same way (100 rows: 64, 32, 4).
/// A multi-row statement's text depends on how many rows it holds, and each text is prepared
/// and kept in the connection's statement cache (100 a connection): with any count, a group
/// commit's statements came in hundreds of shapes, each prepared anew, pushing the statements
/// every request uses out of the cache and, on SQLite, holding a compiled program each (RSS grew
/// by 7 MB over a million requests). With these, a statement has at most `log2(max) + 1` shapes.
fn shaped_chunks<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let fits = rest.len().min(max);
        if fits == 0 {
            return None;
        }
        let (chunk, tail) = rest.split_at(1 << fits.ilog2());
        rest = tail;
        Some(chunk)
    })
}

/// Appends ` IN (…)` over `ids` to `query`, the list padded to a power of two by repeating the
/// last id (which changes nothing an `IN` matches), so it has few shapes ([`shaped_chunks`]).
/// An empty `ids` is written as the nil id alone (`IN ()` is not SQL), which matches no row.
fn push_in_list(query: &mut sqlx::QueryBuilder<'_, Db>, ids: &[Uuid]) {
    query.push(" IN (");
    let mut list = query.separated(", ");
    let padded = ids.len().next_power_of_two();
    for id in ids.iter().chain(std::iter::repeat_n(
        ids.last().unwrap_or(&Uuid::nil()),
        padded - ids.len(),
    )) {
        list.push_bind(*id);
    }
    list.push_unseparated(")");
}

fn opt_u32(value: Option<i64>, what: &str) -> Result<Option<u32>, StoreError> {
    value
        .map(|v| u32::try_from(v).map_err(|_| corrupt(what, "out of range")))
        .transpose()
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
     created_by, created_at, modified_at, modified_by, blocked_reason, deleted_at, last_used_at, previous_key_expires_at, \
     (SELECT t.blocked_invoice FROM teams t WHERE t.id = api_keys.team_id) AS team_blocked_by, \
     (SELECT t.blocked_reason FROM teams t WHERE t.id = api_keys.team_id) AS team_blocked_reason, \
     (SELECT t.zero_retention FROM teams t WHERE t.id = api_keys.team_id) AS team_zero_retention";

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
        team_blocked_reason: row.try_get("team_blocked_reason")?,
        team_blocked_by: row.try_get("team_blocked_by")?,
        team_zero_retention: row.try_get::<Option<bool>, _>("team_zero_retention")?.unwrap_or(false),
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
    if result.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
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
            images: get_u64("images")?,
            web_search_calls: get_u64("web_search_calls")?,
            x_search_calls: get_u64("x_search_calls")?,
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
        seq: row
            .try_get::<Option<i64>, _>("seq")?
            .map(|s| to_u64(s, "audit_events.seq"))
            .transpose()?,
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
    sqlx::query(
        "UPDATE sessions SET revoked_at = $3 WHERE user_id = $1 AND revoked_at IS NULL AND ($2 IS NULL OR id <> $2)",
    )
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

async fn insert_identity_in(
    conn: &mut <Db as sqlx::Database>::Connection,
    identity: &Identity,
) -> Result<(), StoreError> {
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
impl Store for SqlStore {
    fn backend(&self) -> crate::Backend {
        BACKEND
    }

    async fn migrate(&self) -> Result<(), crate::OpenError> {
        MIGRATOR.run(&self.write).await.map_err(crate::OpenError::Migrate)?;
        let ours = self.audit_key.fingerprint();
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('audit_key_fingerprint', $1) ON CONFLICT (name) DO NOTHING",
        )
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
        let responses = sqlx::query("DELETE FROM stored_responses WHERE expires_at < $1")
            .bind(sweep.now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let deferred = sqlx::query("DELETE FROM deferred_completions WHERE expires_at < $1")
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
            responses,
            deferred,
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

#[cfg(test)]
mod tests {
    use super::shaped_chunks;

    #[test]
    fn rows_are_written_in_power_of_two_pieces_no_larger_than_the_most() {
        let rows: Vec<u32> = (0..1000).collect();
        for len in [0, 1, 2, 3, 100, 255, 256, 257, 1000] {
            let chunks: Vec<&[u32]> = shaped_chunks(&rows[..len], 256).collect();
            let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            assert!(
                sizes.iter().all(|&n| n.is_power_of_two() && n <= 256),
                "{len}: {sizes:?}"
            );
            assert!(
                sizes.windows(2).all(|w| w[0] >= w[1]),
                "{len}: largest first: {sizes:?}"
            );
            assert_eq!(chunks.concat(), rows[..len].to_vec(), "{len}: every row once, in order");
        }
        let sizes: Vec<usize> = shaped_chunks(&rows[..100], 256).map(<[u32]>::len).collect();
        assert_eq!(sizes, [64, 32, 4]);
    }
}
