//! The credit ledger: entries, the balances maintained from them, promotional lots.

use async_trait::async_trait;
use sqlx::Row as _;
use std::collections::BTreeMap;

use tollgate_domain::{
    AuditEvent, Balance, Funds, InvoiceLine, LedgerEntry, MonthUsage, MonthlySpend, SpendingLimits, TeamId, Ticks,
    Timestamp, TokenKind, billing_month,
};
use uuid::Uuid;

use super::{BACKEND, DbRow, SqlStore, corrupt, insert_audit};
use crate::{ExpiredLot, LedgerStore, StoreError};

const ENTRY_COLUMNS: &str =
    "id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, created_at, charge_id";

/// [`ENTRY_COLUMNS`] of a spend journal row (spends have no key and no expiry). Reads that
/// sum or filter spends read the `ledger` view, the ledger and the journal as one; a read that
/// wants a team's newest entries reads each in its own order and merges them.
const JOURNAL_ENTRY_COLUMNS: &str = "id, team_id, kind, bucket, amount, CAST(NULL AS TEXT) AS idempotency_key, lot_id, \
     CAST(NULL AS TIMESTAMPTZ) AS expires_at, reason, created_at, charge_id";

fn entry_from_row(row: &DbRow) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        id: row.try_get("id")?,
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        kind: row
            .try_get::<String, _>("kind")?
            .parse()
            .map_err(|e| corrupt("ledger_entries.kind", e))?,
        bucket: row
            .try_get::<String, _>("bucket")?
            .parse()
            .map_err(|e| corrupt("ledger_entries.bucket", e))?,
        amount: Ticks::new(row.try_get("amount")?),
        // A spend keeps no key of its own (its usage rows' request ids make it idempotent): it
        // is named by its charge and the part of it it is (a charge takes each bucket, and
        // each promotional lot, once).
        idempotency_key: match row.try_get::<Option<String>, _>("idempotency_key")? {
            Some(key) => key,
            None => {
                let charge: Uuid = row
                    .try_get::<Option<Uuid>, _>("charge_id")?
                    .ok_or_else(|| corrupt("ledger_entries.idempotency_key", "missing"))?;
                let bucket: String = row.try_get("bucket")?;
                match row.try_get::<Option<Uuid>, _>("lot_id")? {
                    Some(lot) => format!("charge:{charge}:{bucket}:{lot}"),
                    None => format!("charge:{charge}:{bucket}"),
                }
            }
        },
        lot_id: row.try_get("lot_id")?,
        expires_at: row.try_get("expires_at")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts `entry` and moves its team's balance, in `conn`'s transaction; `false` (nothing
/// written) when its idempotency key was used before. Not for spend: the group commit writes
/// spend, a batch at a time (`usage.rs`).
pub(super) async fn write_entry(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    entry: &LedgerEntry,
    actor: &tollgate_domain::Actor,
) -> Result<bool, StoreError> {
    let (prepaid, promo) = match (entry.bucket, entry.kind) {
        (tollgate_domain::Bucket::Prepaid, _) => (entry.amount.get(), 0),
        (tollgate_domain::Bucket::Promo, _) => (0, entry.amount.get()),
        // A payment settles an issued invoice: no balance moves (what a month owes stays in
        // `invoice_months`, the record of its usage).
        (tollgate_domain::Bucket::Invoice, tollgate_domain::EntryKind::InvoicePayment) => (0, 0),
        (tollgate_domain::Bucket::Invoice, _) => {
            return Err(corrupt("ledger_entries.bucket", "an invoice entry outside a spend"));
        }
    };
    let inserted = sqlx::query(
        "INSERT INTO ledger_entries (id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, \
         actor_kind, actor_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(entry.id)
    .bind(entry.team_id.as_uuid())
    .bind(entry.kind.as_str())
    .bind(entry.bucket.as_str())
    .bind(entry.amount.get())
    .bind(&entry.idempotency_key)
    .bind(entry.lot_id)
    .bind(entry.expires_at)
    .bind(&entry.reason)
    .bind(actor.kind())
    .bind(actor.id())
    .bind(entry.created_at)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO team_balances (team_id, prepaid, promo, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (team_id) DO UPDATE SET prepaid = team_balances.prepaid + $2, \
         promo = team_balances.promo + $3, updated_at = $4",
    )
    .bind(entry.team_id.as_uuid())
    .bind(prepaid)
    .bind(promo)
    .bind(entry.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// A read-only transaction that sees one snapshot throughout (SQLite's read transactions
/// always do), so several reads agree with each other while a server writes.
async fn snapshot(store: &SqlStore) -> Result<sqlx::Transaction<'static, super::Db>, StoreError> {
    let mut tx = store.read.begin().await?;
    if BACKEND == crate::Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// Locks the team's balance (creating its row) in `conn`'s transaction, so grants of credit
/// leases and spends of one team are serialized, and reads what its spends may draw on at
/// `now`: the lots unexpired at `lot_horizon`, prepaid credit, and the headroom of `now`'s
/// month's invoice under the effective spending limit.
pub(super) async fn lock_funds(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    team_id: TeamId,
    now: Timestamp,
    lot_horizon: Timestamp,
    default_hard_limit: Ticks,
) -> Result<Funds, StoreError> {
    let mut funds = lock_funds_of(conn, &[team_id.as_uuid()], now, lot_horizon, default_hard_limit, None).await?;
    funds.remove(&team_id.as_uuid()).ok_or(StoreError::NotFound)
}

/// Locks and reads `teams`' balance rows (sorted ids): `(team, prepaid, promo)` for each that
/// has one. On SQLite they come back as one row: sqlx hands each row from its connection's
/// thread to the task over a channel, a thread wake-up each, and at a thousand teams a row per
/// team made about a third of settle-bench's thread switches.
async fn lock_balances(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    teams: &[Uuid],
) -> Result<Vec<(Uuid, i64, i64)>, StoreError> {
    let mut balances = Vec::with_capacity(teams.len());
    if BACKEND == crate::Backend::Sqlite {
        let mut query = sqlx::QueryBuilder::<super::Db>::new(
            "SELECT group_concat(hex(team_id) || ' ' || prepaid || ' ' || promo, ' ') AS balances \
             FROM team_balances WHERE team_id",
        );
        super::push_in_list(&mut query, teams);
        let row = query.build().fetch_one(&mut *conn).await?;
        let text: Option<String> = row.try_get("balances")?;
        let mut fields = text.as_deref().unwrap_or_default().split_ascii_whitespace();
        while let Some(team) = fields.next() {
            let (Ok(team), Some(Ok(prepaid)), Some(Ok(promo))) = (
                Uuid::try_parse(team),
                fields.next().map(str::parse),
                fields.next().map(str::parse),
            ) else {
                return Err(super::corrupt("team_balances", "unreadable balance"));
            };
            balances.push((team, prepaid, promo));
        }
        return Ok(balances);
    }
    let mut query =
        sqlx::QueryBuilder::<super::Db>::new("SELECT team_id, prepaid, promo FROM team_balances WHERE team_id");
    super::push_in_list(&mut query, teams);
    query.push(" ORDER BY team_id");
    query.push(LOCK);
    for row in query.build().fetch_all(&mut *conn).await? {
        balances.push((row.try_get("team_id")?, row.try_get("prepaid")?, row.try_get("promo")?));
    }
    Ok(balances)
}

/// [`lock_funds`] for many teams (in id order, so concurrent writers lock them in one order),
/// in a fixed number of statements however many teams. With `spends` (what each team is about
/// to spend), the invoice's headroom is read only for teams whose credit does not cover it (it
/// is zero for the others), which spares two statements in the common case.
pub(super) async fn lock_funds_of(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    teams: &[Uuid],
    now: Timestamp,
    lot_horizon: Timestamp,
    default_hard_limit: Ticks,
    spends: Option<&BTreeMap<Uuid, i64>>,
) -> Result<BTreeMap<Uuid, Funds>, StoreError> {
    let mut teams = teams.to_vec();
    teams.sort_unstable();
    teams.dedup();
    let mut funds = BTreeMap::new();
    if teams.is_empty() {
        return Ok(funds);
    }
    let in_list = |query: &mut sqlx::QueryBuilder<'_, super::Db>, teams: &[Uuid]| {
        query.push(" team_id");
        super::push_in_list(query, teams);
    };
    // Without `spends` this opens the transaction (a lease), so it writes first: on SQLite the
    // transaction then holds the write lock from its start (a read that later writes may find
    // another process's commit in its way). With them, the batch's usage rows were written first.
    let mut balances = Vec::new();
    if spends.is_some() {
        balances = lock_balances(conn, &teams).await?;
    }
    if balances.len() < teams.len() {
        let mut create =
            sqlx::QueryBuilder::<super::Db>::new("INSERT INTO team_balances (team_id, prepaid, promo, updated_at) ");
        create.push_values(&teams, |mut row, team| {
            row.push_bind(*team).push_bind(0i64).push_bind(0i64).push_bind(now);
        });
        create.push(" ON CONFLICT (team_id) DO NOTHING");
        // Once a team: not worth a place in the statement cache.
        create.build().persistent(false).execute(&mut *conn).await?;
        balances = lock_balances(conn, &teams).await?;
    }
    let mut with_promo = Vec::new();
    for (team, prepaid, promo) in balances {
        if promo > 0 {
            with_promo.push(team);
        }
        funds.insert(
            team,
            Funds {
                lots: Vec::new(),
                prepaid: Ticks::new(prepaid),
                invoice_headroom: default_hard_limit,
            },
        );
    }
    if !with_promo.is_empty() {
        let mut lots = sqlx::QueryBuilder::<super::Db>::new(
            "SELECT team_id, id, remaining FROM credit_lots WHERE remaining > 0 AND expires_at > ",
        );
        lots.push_bind(lot_horizon);
        lots.push(" AND");
        in_list(&mut lots, &with_promo);
        lots.push(" ORDER BY team_id, expires_at, id");
        lots.push(LOCK);
        for row in lots.build().fetch_all(&mut *conn).await? {
            let team: Uuid = row.try_get("team_id")?;
            if let Some(funds) = funds.get_mut(&team) {
                funds
                    .lots
                    .push((row.try_get("id")?, Ticks::new(row.try_get("remaining")?)));
            }
        }
    }
    // The invoice's headroom, for the teams whose credit may not cover what they spend.
    let short: Vec<Uuid> = match spends {
        None => teams.clone(),
        Some(spends) => funds
            .iter_mut()
            .filter_map(|(team, funds)| {
                let credit = funds.credit().get();
                if spends.get(team).is_some_and(|&spend| spend > credit) {
                    Some(*team)
                } else {
                    funds.invoice_headroom = Ticks::ZERO;
                    None
                }
            })
            .collect(),
    };
    if short.is_empty() {
        return Ok(funds);
    }
    let teams = short;
    let mut limits = sqlx::QueryBuilder::<super::Db>::new(
        "SELECT team_id, soft_limit, hard_override FROM team_spending_limits WHERE",
    );
    in_list(&mut limits, &teams);
    for row in limits.build().fetch_all(&mut *conn).await? {
        let team: Uuid = row.try_get("team_id")?;
        if let Some(funds) = funds.get_mut(&team) {
            let limits = SpendingLimits {
                hard_auto: default_hard_limit,
                hard_override: row.try_get::<Option<i64>, _>("hard_override")?.map(Ticks::new),
                soft: row.try_get::<Option<i64>, _>("soft_limit")?.map(Ticks::new),
            };
            funds.invoice_headroom = limits.effective();
        }
    }
    let mut owed = sqlx::QueryBuilder::<super::Db>::new("SELECT team_id, owed FROM invoice_months WHERE month = ");
    owed.push_bind(billing_month(now));
    owed.push(" AND");
    in_list(&mut owed, &teams);
    for row in owed.build().fetch_all(&mut *conn).await? {
        let team: Uuid = row.try_get("team_id")?;
        if let Some(funds) = funds.get_mut(&team) {
            funds.invoice_headroom = Ticks::new(funds.invoice_headroom.get().saturating_sub(row.try_get("owed")?));
        }
    }
    Ok(funds)
}

/// `created_at`'s billing month (`2026-11`, UTC). SQLite stores the instant as RFC 3339 text in
/// UTC, whose first seven characters are the month.
const MONTH_OF_CREATED_AT: &str = if matches!(BACKEND, crate::Backend::Postgres) {
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM')"
} else {
    "substr(created_at, 1, 7)"
};

/// Row locks where the database has them (PostgreSQL); SQLite has one writer, which is a lock.
const LOCK: &str = if matches!(BACKEND, crate::Backend::Postgres) {
    " FOR UPDATE"
} else {
    ""
};

/// Forfeits everything `team_id` holds, in `conn`'s transaction (its deletion): one entry per
/// non-empty bucket, its lots emptied.
pub(super) async fn forfeit(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    team_id: TeamId,
    at: Timestamp,
    actor: &tollgate_domain::Actor,
) -> Result<(), StoreError> {
    let Some(row) = sqlx::query("SELECT prepaid, promo FROM team_balances WHERE team_id = $1")
        .bind(team_id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(());
    };
    for (bucket, held) in [
        (tollgate_domain::Bucket::Prepaid, row.try_get::<i64, _>("prepaid")?),
        (tollgate_domain::Bucket::Promo, row.try_get::<i64, _>("promo")?),
    ] {
        if held == 0 {
            continue;
        }
        let entry = LedgerEntry {
            id: Uuid::now_v7(),
            team_id,
            kind: tollgate_domain::EntryKind::Forfeiture,
            bucket,
            amount: Ticks::new(-held),
            idempotency_key: format!("forfeit:{team_id}:{}", bucket.as_str()),
            lot_id: None,
            expires_at: None,
            reason: Some("the team was deleted".into()),
            created_at: at,
        };
        write_entry(conn, &entry, actor).await?;
    }
    sqlx::query("UPDATE credit_lots SET remaining = 0 WHERE team_id = $1")
        .bind(team_id.as_uuid())
        .execute(&mut *conn)
        .await?;
    // Nothing is left to lend: a node's next grant finds no credit.
    sqlx::query("DELETE FROM credit_leases WHERE team_id = $1")
        .bind(team_id.as_uuid())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sets one limit `column` (a constant of ours, never input) of the team, with `audit`.
async fn set_limit(
    store: &SqlStore,
    column: &'static str,
    team_id: TeamId,
    limit: Option<Ticks>,
    at: Timestamp,
    audit: &AuditEvent,
) -> Result<(), StoreError> {
    let mut tx = store.write.begin().await?;
    sqlx::query(&format!(
        "INSERT INTO team_spending_limits (team_id, {column}, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (team_id) DO UPDATE SET {column} = $2, updated_at = $3"
    ))
    .bind(team_id.as_uuid())
    .bind(limit.map(Ticks::get))
    .bind(at)
    .execute(&mut *tx)
    .await?;
    insert_audit(&mut tx, &store.audit_key, audit).await?;
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl LedgerStore for SqlStore {
    async fn append_ledger_entry(&self, entry: &LedgerEntry, audit: &AuditEvent) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        if !write_entry(&mut tx, entry, &audit.actor).await? {
            return Ok(false);
        }
        if entry.kind == tollgate_domain::EntryKind::PromoGrant {
            let expires_at = entry
                .expires_at
                .ok_or_else(|| corrupt("ledger_entries.expires_at", "a promotional grant without an expiry"))?;
            sqlx::query(
                "INSERT INTO credit_lots (id, team_id, granted, remaining, expires_at) VALUES ($1, $2, $3, $3, $4)",
            )
            .bind(entry.id)
            .bind(entry.team_id.as_uuid())
            .bind(entry.amount.get())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn balance(&self, team_id: TeamId) -> Result<Balance, StoreError> {
        let row = sqlx::query("SELECT prepaid, promo FROM team_balances WHERE team_id = $1")
            .bind(team_id.as_uuid())
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(row) => Balance {
                prepaid: Ticks::new(row.try_get("prepaid")?),
                promo: Ticks::new(row.try_get("promo")?),
            },
            None => Balance::default(),
        })
    }

    async fn ledger_entries(&self, team_id: TeamId, limit: u32) -> Result<Vec<LedgerEntry>, StoreError> {
        // The newest of each part, merged: the ledger's part read in its key's order, where
        // through the `ledger` view both backends would sort the team's whole history first.
        let rows = sqlx::query(&format!(
            "SELECT * FROM (SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE team_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2) AS folded \
             UNION ALL SELECT * FROM (SELECT {JOURNAL_ENTRY_COLUMNS} FROM spend_journal WHERE team_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2) AS journaled \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(team_id.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn credit_changes(
        &self,
        team_id: TeamId,
        limit: u32,
    ) -> Result<(Vec<LedgerEntry>, Vec<MonthlySpend>), StoreError> {
        let entries = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE team_id = $1 AND kind <> 'spend' AND bucket <> 'invoice' \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(team_id.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let months = sqlx::query(&format!(
            "SELECT {MONTH_OF_CREATED_AT} AS month, CAST(SUM(amount) AS BIGINT) AS total, MAX(created_at) AS last_at \
             FROM ledger WHERE team_id = $1 AND kind = 'spend' AND bucket IN ('prepaid', 'promo') \
             GROUP BY {MONTH_OF_CREATED_AT} ORDER BY month DESC"
        ))
        .bind(team_id.as_uuid())
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| {
            Ok(MonthlySpend {
                month: row.try_get("month")?,
                amount: Ticks::new(row.try_get("total")?),
                last_at: row.try_get("last_at")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((entries, months))
    }

    async fn month_usage(&self, team_id: TeamId, from: Timestamp, to: Timestamp) -> Result<MonthUsage, StoreError> {
        // One snapshot, so the lines and the spend agree to the tick.
        let mut tx = snapshot(self).await?;
        // The requests of the charges spent this month (a charge's month is its spend's).
        let rows = sqlx::query(
            "SELECT model, prompt_price, cached_prompt_price, completion_price, image_price, web_search_price, \
             x_search_price, \
             CAST(SUM(CASE WHEN cached_prompt_tokens > prompt_tokens THEN 0 \
                 ELSE prompt_tokens - cached_prompt_tokens END) AS BIGINT) AS uncached, \
             CAST(SUM(CASE WHEN cached_prompt_tokens > prompt_tokens THEN prompt_tokens \
                 ELSE cached_prompt_tokens END) AS BIGINT) AS cached, \
             CAST(SUM(completion_tokens + reasoning_tokens) AS BIGINT) AS output, \
             CAST(SUM(images) AS BIGINT) AS images, \
             CAST(SUM(web_search_calls) AS BIGINT) AS web_searches, \
             CAST(SUM(x_search_calls) AS BIGINT) AS x_searches \
             FROM usage_events WHERE team_id = $1 AND charge_id IN \
             (SELECT charge_id FROM ledger WHERE team_id = $1 AND kind = 'spend' \
              AND created_at >= $2 AND created_at < $3) \
             GROUP BY model, prompt_price, cached_prompt_price, completion_price, image_price, web_search_price, \
             x_search_price \
             ORDER BY model, prompt_price, cached_prompt_price, completion_price, image_price, web_search_price, \
             x_search_price",
        )
        .bind(team_id.as_uuid())
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        let mut usage = MonthUsage::default();
        for row in &rows {
            let model: String = row.try_get("model")?;
            for (kind, price, tokens) in [
                (TokenKind::Prompt, "prompt_price", "uncached"),
                (TokenKind::CachedPrompt, "cached_prompt_price", "cached"),
                (TokenKind::Completion, "completion_price", "output"),
                (TokenKind::Image, "image_price", "images"),
                (TokenKind::WebSearch, "web_search_price", "web_searches"),
                (TokenKind::XSearch, "x_search_price", "x_searches"),
            ] {
                let tokens = super::to_u64(row.try_get(tokens)?, "usage_events tokens")?;
                let unit_price = Ticks::new(row.try_get::<Option<i64>, _>(price)?.unwrap_or(0));
                if tokens == 0 {
                    continue;
                }
                let amount = unit_price
                    .checked_mul(tokens)
                    .map_err(|_| corrupt("usage_events", "a month's line overflows"))?;
                usage.lines.push(InvoiceLine {
                    model: model.clone(),
                    kind,
                    unit_price,
                    tokens,
                    amount,
                });
            }
        }
        for row in sqlx::query(
            "SELECT bucket, CAST(SUM(amount) AS BIGINT) AS total FROM ledger \
             WHERE team_id = $1 AND kind = 'spend' AND created_at >= $2 AND created_at < $3 GROUP BY bucket",
        )
        .bind(team_id.as_uuid())
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?
        {
            let spent = Ticks::new(-row.try_get::<i64, _>("total")?);
            match row.try_get::<String, _>("bucket")?.as_str() {
                "invoice" => usage.invoiced = spent,
                _ => usage.credit_used = Ticks::new(usage.credit_used.get().saturating_add(spent.get())),
            }
        }
        tx.commit().await?;
        Ok(usage)
    }

    async fn expired_lots(&self, now: Timestamp) -> Result<Vec<ExpiredLot>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, team_id, remaining, expires_at FROM credit_lots WHERE expires_at <= $1 AND remaining > 0 \
             ORDER BY expires_at, id",
        )
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ExpiredLot {
                    id: row.try_get("id")?,
                    team_id: TeamId::from_uuid(row.try_get("team_id")?),
                    remaining: Ticks::new(row.try_get("remaining")?),
                    expires_at: row.try_get("expires_at")?,
                })
            })
            .collect()
    }

    async fn expire_lot(&self, lot: &ExpiredLot, entry: &LedgerEntry, audit: &AuditEvent) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        // The balance first, then the lot: the order spends lock them in.
        sqlx::query(&format!("SELECT prepaid FROM team_balances WHERE team_id = $1{LOCK}"))
            .bind(lot.team_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
        let emptied = sqlx::query("UPDATE credit_lots SET remaining = 0 WHERE id = $1 AND remaining = $2")
            .bind(lot.id)
            .bind(lot.remaining.get())
            .execute(&mut *tx)
            .await?;
        if emptied.rows_affected() == 0 || !write_entry(&mut tx, entry, &audit.actor).await? {
            return Ok(false);
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn spending_limits(&self, team_id: TeamId) -> Result<(Option<Ticks>, Option<Ticks>), StoreError> {
        let row = sqlx::query("SELECT soft_limit, hard_override FROM team_spending_limits WHERE team_id = $1")
            .bind(team_id.as_uuid())
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(row) => (
                row.try_get::<Option<i64>, _>("soft_limit")?.map(Ticks::new),
                row.try_get::<Option<i64>, _>("hard_override")?.map(Ticks::new),
            ),
            None => (None, None),
        })
    }

    async fn set_soft_limit(
        &self,
        team_id: TeamId,
        limit: Option<Ticks>,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        set_limit(self, "soft_limit", team_id, limit, at, audit).await
    }

    async fn set_hard_override(
        &self,
        team_id: TeamId,
        limit: Option<Ticks>,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        set_limit(self, "hard_override", team_id, limit, at, audit).await
    }

    async fn verify_ledger(&self) -> Result<Option<String>, StoreError> {
        // One snapshot for every read, so a server writing meanwhile raises no false alarm.
        let mut tx = snapshot(self).await?;
        #[derive(Default)]
        struct Sums {
            entries_prepaid: i64,
            entries_promo: i64,
            entries_invoice: i64,
            lots: i64,
            owed: i64,
            balance: Option<(i64, i64)>,
        }
        let mut teams: BTreeMap<Uuid, Sums> = BTreeMap::new();
        for row in sqlx::query(
            "SELECT team_id, bucket, CAST(SUM(amount) AS BIGINT) AS total FROM ledger \
             WHERE kind <> 'invoice_payment' GROUP BY team_id, bucket",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let sums = teams.entry(row.try_get("team_id")?).or_default();
            let total: i64 = row.try_get("total")?;
            match row.try_get::<String, _>("bucket")?.as_str() {
                "prepaid" => sums.entries_prepaid = total,
                "promo" => sums.entries_promo = total,
                _ => sums.entries_invoice = total,
            }
        }
        for row in
            sqlx::query("SELECT team_id, CAST(SUM(owed) AS BIGINT) AS total FROM invoice_months GROUP BY team_id")
                .fetch_all(&mut *tx)
                .await?
        {
            teams.entry(row.try_get("team_id")?).or_default().owed = row.try_get("total")?;
        }
        // Every charge against its spend entries: each charge's usage costs sum to exactly its
        // spend entries, no spend lacks its usage rows, and no usage with a cost recorded since
        // spending began lacks a charge.
        let unmatched = sqlx::query(
            "SELECT u.charge_id AS charge_id, u.cost AS cost, CAST(COALESCE(e.spent, 0) AS BIGINT) AS spent FROM \
             (SELECT charge_id, CAST(SUM(cost_ticks) AS BIGINT) AS cost FROM usage_events \
              WHERE charge_id IS NOT NULL GROUP BY charge_id) u \
             LEFT JOIN (SELECT charge_id, CAST(SUM(amount) AS BIGINT) AS spent FROM ledger \
              WHERE kind = 'spend' GROUP BY charge_id) e ON e.charge_id = u.charge_id \
             WHERE u.cost + COALESCE(e.spent, 0) <> 0 LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let orphan = sqlx::query(
            // A set difference, sorted or hashed once: usage_events has no index on charge_id
            // (it would cost every request a write), and a correlated NOT EXISTS scanned it once
            // per spend entry.
            "SELECT charge_id FROM ledger WHERE kind = 'spend' \
             EXCEPT SELECT charge_id FROM usage_events WHERE charge_id IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let unbilled = sqlx::query(
            "SELECT request_id FROM usage_events WHERE charge_id IS NULL AND cost_ticks <> 0 \
             AND created_at >= (SELECT MIN(created_at) FROM ledger WHERE kind = 'spend') LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        // Every issued invoice against the ledger: a month's invoice bills exactly what the month
        // owed (usage charged into a closed month would show here), a receipt exactly the
        // purchase it is for.
        let misbilled = sqlx::query(
            "SELECT i.number AS number, i.total AS total, CAST(COALESCE(m.owed, 0) AS BIGINT) AS expected \
             FROM invoices i LEFT JOIN invoice_months m ON m.team_id = i.team_id AND m.month = i.month \
             WHERE i.kind = 'monthly' AND i.total <> COALESCE(m.owed, 0) LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let unsettled = sqlx::query(
            "SELECT i.number AS number FROM invoices i WHERE i.kind = 'monthly' AND i.status = 'paid' \
             AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.kind = 'invoice_payment' \
             AND e.team_id = i.team_id AND e.reason = i.number) LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let receipts = sqlx::query("SELECT number, total, top_up_id FROM invoices WHERE kind = 'receipt'")
            .fetch_all(&mut *tx)
            .await?;
        let purchases: std::collections::HashMap<String, i64> = sqlx::query(
            "SELECT idempotency_key, amount FROM ledger_entries WHERE kind = 'purchase' AND idempotency_key LIKE 'top-up:%'",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("idempotency_key")?, row.try_get("amount")?)))
        .collect::<Result<_, StoreError>>()?;
        let mut misreceipted = None;
        for row in &receipts {
            let top_up: Option<Uuid> = row.try_get("top_up_id")?;
            let bought = top_up.and_then(|id| purchases.get(&format!("top-up:{id}")).copied());
            let total: i64 = row.try_get("total")?;
            if bought != Some(total) {
                misreceipted = Some((row.try_get::<String, _>("number")?, total, bought.unwrap_or(0)));
                break;
            }
        }
        // Every credit to prepaid credit from a credit note stands for a credit note of that amount.
        let notes: std::collections::HashMap<String, i64> =
            sqlx::query("SELECT id, total FROM invoices WHERE kind = 'credit_note'")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| {
                    Ok((
                        format!("credit-note:{}", row.try_get::<Uuid, _>("id")?),
                        row.try_get("total")?,
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
        let mut miscredited = None;
        for row in sqlx::query("SELECT idempotency_key, amount FROM ledger_entries WHERE kind = 'credit_note'")
            .fetch_all(&mut *tx)
            .await?
        {
            let key: String = row.try_get("idempotency_key")?;
            let amount: i64 = row.try_get("amount")?;
            if notes.get(&key) != Some(&amount) {
                miscredited = Some((key, amount));
                break;
            }
        }
        for row in
            sqlx::query("SELECT team_id, CAST(SUM(remaining) AS BIGINT) AS total FROM credit_lots GROUP BY team_id")
                .fetch_all(&mut *tx)
                .await?
        {
            teams.entry(row.try_get("team_id")?).or_default().lots = row.try_get("total")?;
        }
        for row in sqlx::query("SELECT team_id, prepaid, promo FROM team_balances")
            .fetch_all(&mut *tx)
            .await?
        {
            teams.entry(row.try_get("team_id")?).or_default().balance =
                Some((row.try_get("prepaid")?, row.try_get("promo")?));
        }
        tx.commit().await?;
        let charge_of = |row: &DbRow| -> Result<String, StoreError> {
            Ok(row
                .try_get::<Option<Uuid>, _>("charge_id")?
                .map_or_else(|| "(none)".to_owned(), |id| id.to_string()))
        };
        if let Some(row) = unmatched {
            let (cost, spent): (i64, i64) = (row.try_get("cost")?, row.try_get("spent")?);
            return Ok(Some(format!(
                "charge {}: its usage costs {cost} ticks, but its spend entries sum to {}",
                charge_of(&row)?,
                -spent
            )));
        }
        if let Some(row) = orphan {
            return Ok(Some(format!(
                "spend of charge {} has no usage records",
                charge_of(&row)?
            )));
        }
        if let Some(row) = misbilled {
            let (number, total, expected): (String, i64, i64) =
                (row.try_get("number")?, row.try_get("total")?, row.try_get("expected")?);
            return Ok(Some(format!(
                "invoice {number} bills {total} ticks, but the ledger says {expected}"
            )));
        }
        if let Some(row) = unsettled {
            let number: String = row.try_get("number")?;
            return Ok(Some(format!(
                "invoice {number} is paid, but the ledger has no payment of it"
            )));
        }
        if let Some((key, amount)) = miscredited {
            return Ok(Some(format!(
                "the ledger credits {amount} ticks by {key}, but no credit note of that amount was issued"
            )));
        }
        if let Some((number, total, bought)) = misreceipted {
            return Ok(Some(format!(
                "receipt {number} is for {total} ticks, but its purchase credited {bought}"
            )));
        }
        if let Some(row) = unbilled {
            let request: Uuid = row.try_get("request_id")?;
            return Ok(Some(format!("request {request} has a cost but was never charged")));
        }
        for (team, sums) in teams {
            let (prepaid, promo) = sums.balance.unwrap_or((0, 0));
            if prepaid != sums.entries_prepaid {
                return Ok(Some(format!(
                    "team {team}: prepaid balance {prepaid} ticks, but its prepaid entries sum to {}",
                    sums.entries_prepaid
                )));
            }
            if promo != sums.entries_promo {
                return Ok(Some(format!(
                    "team {team}: promotional balance {promo} ticks, but its promotional entries sum to {}",
                    sums.entries_promo
                )));
            }
            if -sums.entries_invoice != sums.owed {
                return Ok(Some(format!(
                    "team {team}: its invoices hold {} ticks, but its invoice entries sum to {}",
                    sums.owed, -sums.entries_invoice
                )));
            }
            if promo != sums.lots {
                return Ok(Some(format!(
                    "team {team}: promotional balance {promo} ticks, but its lots hold {}",
                    sums.lots
                )));
            }
        }
        Ok(None)
    }
}
