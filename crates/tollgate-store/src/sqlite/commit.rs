//! SQLite's group commit, on a thread of its own with a connection of its own; the kept request
//! bodies' batches are written there too.
//!
//! sqlx runs each SQLite connection on a thread and hands it every statement over a channel:
//! a group commit of a few statements was half a dozen hand-offs to that thread and back (two
//! thread switches each on a busy core), which cost more than SQLite's work. Here the whole
//! commit is one hand-off: the batch goes to this thread, which runs the transaction through
//! `rusqlite` on its own connection to the same file, with statements prepared once and run a
//! row at a time (no statement texts per batch size), and answers when it is durable.
//!
//! SQLite allows one writer. The caller holds the store's one write connection (the sqlx pool
//! of one) while this thread writes, so the two never contend in this process; another process
//! (an operator's CLI) is waited for by SQLite's busy timeout, as for any write. Values are
//! written exactly as sqlx writes them (ids as 16-byte blobs, instants as sqlx's RFC 3339 text),
//! so every other query reads these rows as its own.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use chrono::SecondsFormat;
use rusqlite::{OptionalExtension as _, TransactionBehavior, params};
use tollgate_domain::{EntryKind, Funds, SpendingLimits, Ticks, Timestamp, billing_month};
use uuid::Uuid;

use super::sql::usage::{JOURNAL_COLUMNS, TeamCharge, USAGE_COLUMNS, team_charge};
use crate::{Charge, RetainedBody, StoreError};

/// One batch for the thread, and where its answer goes.
enum Job {
    /// Usage rows and their charges ([`commit`]).
    Charges {
        batch: Vec<Charge>,
        /// Each charged team's open charge.
        charge_ids: HashMap<Uuid, Uuid>,
        at: Timestamp,
        default_hard_limit: Ticks,
        done: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Kept request bodies ([`keep_bodies`]).
    Bodies {
        rows: Vec<RetainedBody>,
        done: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// The group-commit thread. It ends, closing its connection, when this is dropped.
pub(crate) struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl Committer {
    /// Opens a connection to the database file at `path` (already migrated) and starts the
    /// thread.
    pub(crate) fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path).map_err(other)?;
        // The pool's settings: WAL (already the file's), FULL sync (a commit is on disk before
        // it is acknowledged), the busy timeout, foreign keys.
        conn.busy_timeout(Duration::from_secs(5)).map_err(other)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(other)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(other)?;
        conn.set_prepared_statement_cache_capacity(32);
        let (jobs, pending) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-commit".to_owned())
            .spawn(move || {
                let mut conn = conn;
                while let Ok(job) = pending.recv() {
                    let (result, done) = match job {
                        Job::Charges {
                            batch,
                            charge_ids,
                            at,
                            default_hard_limit,
                            done,
                        } => (
                            guarded(|| commit(&mut conn, &batch, &charge_ids, at, default_hard_limit)),
                            done,
                        ),
                        Job::Bodies { rows, done } => (guarded(|| keep_bodies(&mut conn, &rows)), done),
                    };
                    let _ = done.send(result);
                }
            })
            .map_err(|error| StoreError::Other(error.into()))?;
        Ok(Self { jobs })
    }

    /// Writes `batch` as [`crate::UsageStore::insert_usage_batch`] says, in one transaction,
    /// and returns once it is durable, with the number of spend entries it journaled. The
    /// caller holds the store's write connection.
    pub(crate) async fn commit(
        &self,
        batch: &[Charge],
        charge_ids: HashMap<Uuid, Uuid>,
        at: Timestamp,
        default_hard_limit: Ticks,
    ) -> Result<u64, StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.run(
            Job::Charges {
                batch: batch.to_vec(),
                charge_ids,
                at,
                default_hard_limit,
                done,
            },
            answer,
        )
        .await
    }

    /// Writes `rows` as [`crate::RequestBodyStore::insert_request_bodies`] says, in one
    /// transaction, and returns once it is durable. The caller holds the store's write
    /// connection.
    pub(crate) async fn keep_bodies(&self, rows: Vec<RetainedBody>) -> Result<(), StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.run(Job::Bodies { rows, done }, answer).await.map(|_| ())
    }

    async fn run(
        &self,
        job: Job,
        answer: tokio::sync::oneshot::Receiver<Result<u64, StoreError>>,
    ) -> Result<u64, StoreError> {
        let stopped = || StoreError::Other(anyhow::anyhow!("the group-commit thread has stopped"));
        self.jobs.send(job).map_err(|_| stopped())?;
        // Not cancelled midway in effect: the thread finishes the transaction either way, and
        // the request ids make a retry of it harmless.
        answer.await.map_err(|_| stopped())?
    }
}

/// `work`'s result, or an error if it panicked: a panic (a bug) fails its batch, not every batch
/// after it (the transaction is rolled back as it unwinds, and the thread takes the next job).
fn guarded(work: impl FnOnce() -> Result<u64, StoreError>) -> Result<u64, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .unwrap_or_else(|_| Err(StoreError::Other(anyhow::anyhow!("the group commit panicked"))))
}

/// sqlx's text for an instant (what its `Encode` for `DateTime` writes).
fn instant(at: Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn blob(id: &Uuid) -> &[u8] {
    id.as_bytes()
}

fn other(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(error)))
        }
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict {
            constraint: error.to_string(),
        },
        _ => StoreError::Other(error.into()),
    }
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} is out of range")))
}

/// The transaction: usage rows (a request recorded before is skipped, with its charge), then
/// each team's charge from its funds, as the sqlx path writes them. Returns the number of
/// spend entries journaled.
fn commit(
    conn: &mut rusqlite::Connection,
    batch: &[Charge],
    charge_ids: &HashMap<Uuid, Uuid>,
    at: Timestamp,
    default_hard_limit: Ticks,
) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(other)?;
    let now = instant(at);
    // Teams in id order, as the sqlx path (and a PostgreSQL node) locks them.
    let mut teams: BTreeMap<Uuid, Vec<&Charge>> = BTreeMap::new();
    {
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO usage_events ({USAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25) \
                 ON CONFLICT (request_id) DO NOTHING"
            ))
            .map_err(other)?;
        for charge in batch {
            let (record, pricing, usage) = (&charge.record, &charge.pricing, &charge.record.usage);
            let team = record.team_id.as_uuid();
            let charge_id = (record.cost.get() > 0).then(|| charge_ids.get(&team)).flatten();
            let inserted = insert
                .execute(params![
                    blob(&record.request_id.as_uuid()),
                    blob(&team),
                    blob(&record.api_key_id.as_uuid()),
                    record.model,
                    record.endpoint.as_str(),
                    to_i64(usage.prompt_tokens, "prompt_tokens")?,
                    to_i64(usage.cached_prompt_tokens, "cached_prompt_tokens")?,
                    to_i64(usage.completion_tokens, "completion_tokens")?,
                    to_i64(usage.reasoning_tokens, "reasoning_tokens")?,
                    to_i64(usage.total_tokens(), "total_tokens")?,
                    record.cost.get(),
                    record.estimated,
                    record.streamed,
                    to_i64(record.duration_ms, "duration_ms")?,
                    instant(record.started_at),
                    charge_id.map(blob),
                    pricing.prompt.get(),
                    pricing.cached_prompt.get(),
                    pricing.completion.get(),
                    to_i64(usage.images, "images")?,
                    pricing.image.get(),
                    to_i64(usage.web_search_calls, "web_search_calls")?,
                    pricing.web_search.get(),
                    to_i64(usage.x_search_calls, "x_search_calls")?,
                    pricing.x_search.get(),
                ])
                .map_err(other)?;
            if inserted == 1 && record.cost.get() > 0 {
                teams.entry(team).or_default().push(charge);
            }
        }
    }
    let mut charges = Vec::with_capacity(teams.len());
    for (team, requests) in &teams {
        let total = requests
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(c.record.cost.get()));
        let charge_id = charge_ids.get(team).copied().unwrap_or_else(Uuid::now_v7);
        let charge = if take_from_prepaid(&tx, *team, total, &now)? {
            // Prepaid credit alone covered it: that is where consumption order takes it from.
            let covered = Funds {
                lots: Vec::new(),
                prepaid: Ticks::new(total),
                invoice_headroom: Ticks::ZERO,
            };
            Charged {
                charge: team_charge(*team, charge_id, requests, &covered),
                balance_moved: true,
            }
        } else {
            let funds = lock_funds(&tx, *team, at, &now, default_hard_limit, total)?;
            Charged {
                charge: team_charge(*team, charge_id, requests, &funds),
                balance_moved: false,
            }
        };
        charges.push(charge);
    }
    let journaled = write_charges(&tx, &charges, at, &now)?;
    tx.commit().map_err(other)?;
    Ok(journaled)
}

/// Kept bodies, a request kept before left as it was. Returns the number of rows written.
fn keep_bodies(conn: &mut rusqlite::Connection, rows: &[RetainedBody]) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(other)?;
    let mut written = 0;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO request_bodies (request_id, team_id, api_key_id, endpoint, model, created_at, sealed) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )
            .map_err(other)?;
        for row in rows {
            written += insert
                .execute(params![
                    blob(&row.request_id.as_uuid()),
                    blob(&row.team_id.as_uuid()),
                    blob(&row.api_key_id.as_uuid()),
                    row.endpoint,
                    row.model,
                    instant(row.created_at),
                    row.sealed,
                ])
                .map_err(other)?;
        }
    }
    tx.commit().map_err(other)?;
    Ok(written as u64)
}

/// A team's charge, and whether its balance has been moved already.
struct Charged {
    charge: TeamCharge,
    balance_moved: bool,
}

/// Takes `spend` from the team's prepaid credit when that alone covers it and the team holds
/// no promotional credit (which consumption order would take first); says whether it did. Most
/// charges are such, and this is one statement where reading the funds and writing them back is
/// two. Otherwise nothing is written, and the funds are read ([`lock_funds`]).
fn take_from_prepaid(tx: &rusqlite::Transaction<'_>, team: Uuid, spend: i64, now: &str) -> Result<bool, StoreError> {
    let taken = tx
        .prepare_cached(
            "UPDATE team_balances SET prepaid = prepaid - ?2, updated_at = ?3 \
             WHERE team_id = ?1 AND promo = 0 AND prepaid >= ?2",
        )
        .and_then(|mut take| take.execute(params![blob(&team), spend, now]))
        .map_err(other)?;
    Ok(taken == 1)
}

/// One team's funds at `at` (its balance row created if it has none), as the sqlx path's
/// `lock_funds_of` reads them for a spend of `spend`: the invoice's headroom only when its
/// credit does not cover the spend (zero otherwise).
fn lock_funds(
    tx: &rusqlite::Transaction<'_>,
    team: Uuid,
    at: Timestamp,
    now: &str,
    default_hard_limit: Ticks,
    spend: i64,
) -> Result<Funds, StoreError> {
    let read = |tx: &rusqlite::Transaction<'_>| {
        tx.prepare_cached("SELECT prepaid, promo FROM team_balances WHERE team_id = ?1")?
            .query_row([blob(&team)], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))
            .optional()
    };
    let (prepaid, promo) = match read(tx).map_err(other)? {
        Some(balance) => balance,
        None => {
            tx.prepare_cached(
                "INSERT INTO team_balances (team_id, prepaid, promo, updated_at) VALUES (?1, 0, 0, ?2) \
                 ON CONFLICT (team_id) DO NOTHING",
            )
            .and_then(|mut create| create.execute(params![blob(&team), now]))
            .map_err(other)?;
            read(tx).map_err(other)?.ok_or(StoreError::NotFound)?
        }
    };
    let mut funds = Funds {
        lots: Vec::new(),
        prepaid: Ticks::new(prepaid),
        invoice_headroom: default_hard_limit,
    };
    if promo > 0 {
        let mut lots = tx
            .prepare_cached(
                "SELECT id, remaining FROM credit_lots WHERE remaining > 0 AND expires_at > ?1 AND team_id = ?2 \
                 ORDER BY expires_at, id",
            )
            .map_err(other)?;
        let rows = lots
            .query_map(params![now, blob(&team)], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(other)?;
        for row in rows {
            let (id, remaining) = row.map_err(other)?;
            let id = Uuid::from_slice(&id).map_err(|_| super::sql::corrupt("credit_lots", "unreadable id"))?;
            funds.lots.push((id, Ticks::new(remaining)));
        }
    }
    if spend <= funds.credit().get() {
        funds.invoice_headroom = Ticks::ZERO;
        return Ok(funds);
    }
    let limits = tx
        .prepare_cached("SELECT soft_limit, hard_override FROM team_spending_limits WHERE team_id = ?1")
        .and_then(|mut limits| {
            limits
                .query_row([blob(&team)], |row| {
                    Ok((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
                })
                .optional()
        })
        .map_err(other)?;
    if let Some((soft, hard_override)) = limits {
        funds.invoice_headroom = SpendingLimits {
            hard_auto: default_hard_limit,
            hard_override: hard_override.map(Ticks::new),
            soft: soft.map(Ticks::new),
        }
        .effective();
    }
    let owed = tx
        .prepare_cached("SELECT owed FROM invoice_months WHERE month = ?1 AND team_id = ?2")
        .and_then(|mut owed| {
            owed.query_row(params![billing_month(at), blob(&team)], |row| row.get::<_, i64>(0))
                .optional()
        })
        .map_err(other)?;
    if let Some(owed) = owed {
        funds.invoice_headroom = Ticks::new(funds.invoice_headroom.get().saturating_sub(owed));
    }
    Ok(funds)
}

/// Each team's spend entries (into the spend journal, whose fold moves them into the ledger),
/// and its balance (unless moved already), lots and invoice month moved once. Returns the
/// number of spend entries.
fn write_charges(
    tx: &rusqlite::Transaction<'_>,
    charges: &[Charged],
    at: Timestamp,
    now: &str,
) -> Result<u64, StoreError> {
    let mut entry = tx
        .prepare_cached(&format!(
            "INSERT INTO spend_journal ({JOURNAL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ))
        .map_err(other)?;
    let mut balance = tx
        .prepare_cached(
            "UPDATE team_balances SET prepaid = prepaid + ?2, promo = promo + ?3, updated_at = ?4 WHERE team_id = ?1",
        )
        .map_err(other)?;
    let mut lot = tx
        .prepare_cached("UPDATE credit_lots SET remaining = ?2 WHERE id = ?1")
        .map_err(other)?;
    let mut invoice = tx
        .prepare_cached(
            "INSERT INTO invoice_months (team_id, month, owed, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (team_id, month) DO UPDATE SET owed = invoice_months.owed + excluded.owed, \
             updated_at = excluded.updated_at",
        )
        .map_err(other)?;
    let month = billing_month(at);
    let mut journaled = 0;
    for Charged { charge, balance_moved } in charges {
        let team = blob(&charge.team_id);
        let reason = format!("{} requests", charge.requests);
        let requests = to_i64(
            u64::try_from(charge.requests).unwrap_or(u64::MAX),
            "a charge's requests",
        )?;
        let actor_id = charge.actor.id();
        for part in &charge.parts {
            entry
                .execute(params![
                    blob(&Uuid::now_v7()),
                    team,
                    EntryKind::Spend.as_str(),
                    part.bucket.as_str(),
                    -part.amount.get(),
                    part.lot_id.as_ref().map(blob),
                    reason,
                    charge.actor.kind(),
                    actor_id,
                    now,
                    blob(&charge.charge_id),
                    requests,
                ])
                .map_err(other)?;
            journaled += 1;
        }
        if !balance_moved && (charge.prepaid_moved != 0 || charge.promo_moved != 0) {
            balance
                .execute(params![team, charge.prepaid_moved, charge.promo_moved, now])
                .map_err(other)?;
        }
        for (id, remaining) in &charge.lots {
            lot.execute(params![blob(id), remaining]).map_err(other)?;
        }
        if charge.invoiced > 0 {
            invoice
                .execute(params![team, month, charge.invoiced, now])
                .map_err(other)?;
        }
    }
    Ok(journaled)
}
