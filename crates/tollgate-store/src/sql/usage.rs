//! Usage records and their spend (the group commit writes them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tollgate_domain::analytics::UsageCell;
use tollgate_domain::{Actor, ApiKeyId, EntryKind, Funds, TeamId, Ticks, Timestamp, UsageRecord, billing_month};
use uuid::Uuid;

use sqlx::Row as _;

use super::ledger::lock_funds_of;
use super::{SqlStore, to_i64, usage_from_row};
use crate::{Charge, StoreError, UsageStore};

/// `created_at`'s hour as `YYYY-MM-DD?HH` (UTC): SQLite keeps the instant as RFC 3339 text.
const HOUR_OF_CREATED_AT: &str = if matches!(super::BACKEND, crate::Backend::Postgres) {
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24')"
} else {
    "substr(created_at, 1, 13)"
};

fn parse_hour(text: &str) -> Option<Timestamp> {
    use chrono::TimeZone as _;
    let date = chrono::NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()?;
    let hour: u32 = text.get(11..13)?.parse().ok()?;
    chrono::Utc.from_local_datetime(&date.and_hms_opt(hour, 0, 0)?).single()
}

/// Rows per multi-row insert (25 parameters a row: well under both databases' limits).
const ROWS_PER_INSERT: usize = 256;

/// A usage row's columns, in the order both group commits bind them (this one, and SQLite's on
/// its own thread, `sqlite::commit`).
pub(crate) const USAGE_COLUMNS: &str = "request_id, team_id, api_key_id, model, endpoint, prompt_tokens, \
     cached_prompt_tokens, completion_tokens, reasoning_tokens, total_tokens, cost_ticks, estimated, streamed, \
     duration_ms, created_at, charge_id, prompt_price, cached_prompt_price, completion_price, images, image_price, \
     web_search_calls, web_search_price, x_search_calls, x_search_price";

/// A spend entry's columns, in the order both group commits bind them.
pub(crate) const SPEND_COLUMNS: &str =
    "id, team_id, kind, bucket, amount, lot_id, reason, actor_kind, actor_id, created_at, charge_id";

/// A journaled spend's columns: a spend entry's, and its count of requests, which a fold adds up.
pub(crate) const JOURNAL_COLUMNS: &str =
    "id, team_id, kind, bucket, amount, lot_id, reason, actor_kind, actor_id, created_at, charge_id, requests";

/// A folded spend entry's columns after its id, one group of journaled spends summed (a
/// charge's spends of one bucket and lot), with `spends`, how many rows it sums. Its reason
/// counts the requests of them all; it names the key that made them if one key made every one,
/// as a charge does; its time is the last spend's (all within the charge's month).
const FOLDED_ENTRY: &str = "team_id, 'spend' AS kind, bucket, CAST(SUM(amount) AS BIGINT) AS amount, lot_id, \
     CAST(SUM(requests) AS TEXT) || ' requests' AS reason, \
     CASE WHEN MIN(actor_kind) = MAX(actor_kind) AND MIN(COALESCE(actor_id, '')) = MAX(COALESCE(actor_id, '')) \
     THEN MIN(actor_kind) ELSE 'system' END AS actor_kind, \
     CASE WHEN MIN(actor_kind) = MAX(actor_kind) AND MIN(COALESCE(actor_id, '')) = MAX(COALESCE(actor_id, '')) \
     THEN MIN(actor_id) END AS actor_id, \
     MAX(created_at) AS created_at, charge_id, COUNT(*) AS spends";

/// Each team's open charge on this node: the charge its spends are journaled under, batch after
/// batch, until this node's next fold or the end of the billing month. A fold sums a charge's
/// journaled spends of one bucket (and lot) into one ledger entry, so at a thousand teams it
/// writes about one entry per team where it wrote one per batch. A charge never spans two
/// billing months: a month's usage is read through the charges spent in it. Which charge a
/// request falls under changes no amount: a retried batch is charged once by its request ids
/// whatever charge it is given, and `billing verify` compares each charge's usage with its
/// spends, however many entries they are.
#[derive(Default)]
pub(crate) struct OpenCharges(std::sync::Mutex<(String, HashMap<Uuid, Uuid>)>);

impl OpenCharges {
    /// The charge of each team with a cost in `batch`, opened where the team has none open.
    pub(crate) fn for_batch(&self, batch: &[Charge], at: Timestamp) -> HashMap<Uuid, Uuid> {
        let month = billing_month(at);
        let mut open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (open_month, teams) = &mut *open;
        if *open_month != month {
            *open_month = month;
            teams.clear();
        }
        batch
            .iter()
            .filter(|charge| charge.record.cost.get() > 0)
            .map(|charge| {
                let team = charge.record.team_id.as_uuid();
                (team, *teams.entry(team).or_insert_with(Uuid::now_v7))
            })
            .collect()
    }

    /// Closes every open charge (after a fold): the next spends open new ones.
    pub(crate) fn close_all(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .clear();
    }
}

/// Inserts the usage rows in multi-row statements, each with its team's charge id; returns the
/// request ids that were new (a request recorded before is skipped, with its charge). SQLite's
/// (PostgreSQL's are written by [`record_and_take_prepaid`]).
async fn insert_records(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    batch: &[Charge],
    charges: &HashMap<Uuid, Uuid>,
) -> Result<HashSet<Uuid>, StoreError> {
    let mut inserted = HashSet::with_capacity(batch.len());
    for chunk in super::shaped_chunks(batch, ROWS_PER_INSERT) {
        let mut rows = Vec::with_capacity(chunk.len());
        for charge in chunk {
            let record = &charge.record;
            let usage = &record.usage;
            let charge_id = (record.cost.get() > 0)
                .then(|| charges.get(&record.team_id.as_uuid()).copied())
                .flatten();
            rows.push((
                charge,
                charge_id,
                [
                    to_i64(usage.prompt_tokens, "prompt_tokens")?,
                    to_i64(usage.cached_prompt_tokens, "cached_prompt_tokens")?,
                    to_i64(usage.completion_tokens, "completion_tokens")?,
                    to_i64(usage.reasoning_tokens, "reasoning_tokens")?,
                    to_i64(usage.total_tokens(), "total_tokens")?,
                    to_i64(record.duration_ms, "duration_ms")?,
                    to_i64(usage.images, "images")?,
                    to_i64(usage.web_search_calls, "web_search_calls")?,
                    to_i64(usage.x_search_calls, "x_search_calls")?,
                ],
            ));
        }
        let mut insert = sqlx::QueryBuilder::<super::Db>::new(format!("INSERT INTO usage_events ({USAGE_COLUMNS}) "));
        insert.push_values(&rows, |mut row, (charge, charge_id, numbers)| {
            let [prompt, cached, completion, reasoning, total, duration, images, web, x] = *numbers;
            let (record, pricing) = (&charge.record, &charge.pricing);
            row.push_bind(record.request_id.as_uuid())
                .push_bind(record.team_id.as_uuid())
                .push_bind(record.api_key_id.as_uuid())
                .push_bind(record.model.clone())
                .push_bind(record.endpoint.as_str())
                .push_bind(prompt)
                .push_bind(cached)
                .push_bind(completion)
                .push_bind(reasoning)
                .push_bind(total)
                .push_bind(record.cost.get())
                .push_bind(record.estimated)
                .push_bind(record.streamed)
                .push_bind(duration)
                .push_bind(record.started_at)
                .push_bind(*charge_id)
                .push_bind(pricing.prompt.get())
                .push_bind(pricing.cached_prompt.get())
                .push_bind(pricing.completion.get())
                .push_bind(images)
                .push_bind(pricing.image.get())
                .push_bind(web)
                .push_bind(pricing.web_search.get())
                .push_bind(x)
                .push_bind(pricing.x_search.get());
        });
        insert.push(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id");
        for row in insert.build().fetch_all(&mut *conn).await? {
            inserted.insert(row.try_get("request_id")?);
        }
    }
    Ok(inserted)
}

/// What [`record_and_take_prepaid`] did: the requests it recorded (those new to the store),
/// and the teams whose charge it took from prepaid credit.
struct Recorded {
    new: HashSet<Uuid>,
    taken: HashSet<Uuid>,
}

/// PostgreSQL: records the batch's usage rows and takes each team's charge from its prepaid
/// credit, where that alone covers it and the team holds no promotional credit (which
/// consumption order would take first), with its spend entry journaled, all in one statement.
/// Most charges are such; the teams it leaves are charged from their locked funds
/// ([`charge_teams`]), in the same transaction. Each column is bound as one array, `unnest`ed
/// into rows, so the statement's text is the same for every batch: it is planned once per
/// connection, and the commit costs the round trips of a free one (multi-row `VALUES` took a
/// statement per power-of-two piece of the batch, and another per piece of its teams).
///
/// A team is taken only if every one of its charged requests was new (the usage rows the
/// statement inserted carry its count and cost): a request recorded before, by a commit
/// retried after its answer was lost, is not charged twice, and the team is left to the
/// locked path, which charges only the new ones. The conditional `UPDATE` locks each balance
/// row, and rechecks it if another transaction changed it meanwhile; two nodes' statements may
/// lock common teams in different orders, which PostgreSQL aborts as a deadlock, reported as
/// unavailable, and the group commit retries its batch (idempotent on its request ids).
async fn record_and_take_prepaid(
    conn: &mut sqlx::PgConnection,
    batch: &[Charge],
    charges: &HashMap<Uuid, Uuid>,
    at: Timestamp,
) -> Result<Recorded, StoreError> {
    let n = batch.len();
    let (mut request_ids, mut team_ids, mut key_ids) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut models, mut endpoints) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // The token counts and prices, in USAGE_COLUMNS' order of their kinds.
    let mut counts: [Vec<i64>; 9] = std::array::from_fn(|_| Vec::with_capacity(n));
    let mut prices: [Vec<i64>; 6] = std::array::from_fn(|_| Vec::with_capacity(n));
    let (mut costs, mut estimated, mut streamed) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut started, mut charge_ids) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for charge in batch {
        let (record, pricing) = (&charge.record, &charge.pricing);
        let usage = &record.usage;
        request_ids.push(record.request_id.as_uuid());
        team_ids.push(record.team_id.as_uuid());
        key_ids.push(record.api_key_id.as_uuid());
        models.push(record.model.as_str());
        endpoints.push(record.endpoint.as_str());
        for (column, (value, what)) in counts.iter_mut().zip([
            (usage.prompt_tokens, "prompt_tokens"),
            (usage.cached_prompt_tokens, "cached_prompt_tokens"),
            (usage.completion_tokens, "completion_tokens"),
            (usage.reasoning_tokens, "reasoning_tokens"),
            (usage.total_tokens(), "total_tokens"),
            (record.duration_ms, "duration_ms"),
            (usage.images, "images"),
            (usage.web_search_calls, "web_search_calls"),
            (usage.x_search_calls, "x_search_calls"),
        ]) {
            column.push(to_i64(value, what)?);
        }
        for (column, price) in prices.iter_mut().zip([
            pricing.prompt,
            pricing.cached_prompt,
            pricing.completion,
            pricing.image,
            pricing.web_search,
            pricing.x_search,
        ]) {
            column.push(price.get());
        }
        costs.push(record.cost.get());
        estimated.push(record.estimated);
        streamed.push(record.streamed);
        started.push(record.started_at);
        charge_ids.push(
            (record.cost.get() > 0)
                .then(|| charges.get(&record.team_id.as_uuid()).copied())
                .flatten(),
        );
    }
    // Each charged team's charge, as if every request of the batch were new.
    let mut teams: BTreeMap<Uuid, Vec<&Charge>> = BTreeMap::new();
    for charge in batch.iter().filter(|charge| charge.record.cost.get() > 0) {
        teams.entry(charge.record.team_id.as_uuid()).or_default().push(charge);
    }
    let t = teams.len();
    let (mut ids, mut charged_teams, mut amounts, mut counts_of) = (
        Vec::with_capacity(t),
        Vec::with_capacity(t),
        Vec::with_capacity(t),
        Vec::with_capacity(t),
    );
    let (mut reasons, mut actor_kinds, mut actor_ids, mut team_charges) = (
        Vec::with_capacity(t),
        Vec::with_capacity(t),
        Vec::with_capacity(t),
        Vec::with_capacity(t),
    );
    for (team, requests) in &teams {
        let total = requests
            .iter()
            .fold(0i64, |sum, c| sum.saturating_add(c.record.cost.get()));
        let covered = Funds {
            lots: Vec::new(),
            prepaid: Ticks::new(total),
            invoice_headroom: Ticks::ZERO,
        };
        let charge_id = charges.get(team).copied().unwrap_or_else(Uuid::now_v7);
        let charge = team_charge(*team, charge_id, requests, &covered);
        ids.push(Uuid::now_v7());
        charged_teams.push(charge.team_id);
        amounts.push(-charge.prepaid_moved);
        counts_of.push(i64::try_from(charge.requests).unwrap_or(i64::MAX));
        reasons.push(format!("{} requests", charge.requests));
        actor_kinds.push(charge.actor.kind());
        actor_ids.push(charge.actor.id());
        team_charges.push(charge.charge_id);
    }
    let [prompt, cached, completion, reasoning, total, duration, images, web, x] = counts;
    let [
        prompt_price,
        cached_price,
        completion_price,
        image_price,
        web_price,
        x_price,
    ] = prices;
    let rows = sqlx::query(RECORD_AND_TAKE_PREPAID.as_str())
        .bind(request_ids)
        .bind(team_ids)
        .bind(key_ids)
        .bind(models)
        .bind(endpoints)
        .bind(prompt)
        .bind(cached)
        .bind(completion)
        .bind(reasoning)
        .bind(total)
        .bind(costs)
        .bind(estimated)
        .bind(streamed)
        .bind(duration)
        .bind(started)
        .bind(charge_ids)
        .bind(prompt_price)
        .bind(cached_price)
        .bind(completion_price)
        .bind(images)
        .bind(image_price)
        .bind(web)
        .bind(web_price)
        .bind(x)
        .bind(x_price)
        .bind(ids)
        .bind(charged_teams)
        .bind(amounts)
        .bind(counts_of)
        .bind(reasons)
        .bind(actor_kinds)
        .bind(actor_ids)
        .bind(team_charges)
        .bind(at)
        .fetch_all(conn)
        .await?;
    let mut recorded = Recorded {
        new: HashSet::with_capacity(batch.len()),
        taken: HashSet::with_capacity(t),
    };
    for row in rows {
        if let Some(request) = row.try_get::<Option<Uuid>, _>("request_id")? {
            recorded.new.insert(request);
        }
        if let Some(team) = row.try_get::<Option<Uuid>, _>("taken")? {
            recorded.taken.insert(team);
        }
    }
    Ok(recorded)
}

/// [`record_and_take_prepaid`]'s statement: `$1`–`$25` the usage rows' columns in
/// [`USAGE_COLUMNS`]' order, `$26`–`$33` each charged team's prepaid take (its spend entry's
/// id, the team, the amount, its requests' count, then the entry's reason, actor and charge),
/// `$34` the time. Answers a row per new request (`request_id`) and per team taken (`taken`).
/// `b.team_id = ANY($27)` lets the planner find the batch's balances by their key: without it,
/// a plan that hash-joined the teams scanned every balance (0.49 against 0.34 ms for 16 teams
/// of 1,000, `EXPLAIN ANALYZE`).
static RECORD_AND_TAKE_PREPAID: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH recorded AS (INSERT INTO usage_events ({USAGE_COLUMNS}) SELECT * FROM unnest($1::uuid[], \
         $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::int8[], \
         $10::int8[], $11::int8[], $12::bool[], $13::bool[], $14::int8[], $15::timestamptz[], $16::uuid[], \
         $17::int8[], $18::int8[], $19::int8[], $20::int8[], $21::int8[], $22::int8[], $23::int8[], $24::int8[], \
         $25::int8[]) ON CONFLICT (request_id) DO NOTHING RETURNING request_id, team_id, cost_ticks), \
         new AS (SELECT team_id, SUM(cost_ticks) AS amount, COUNT(*) AS requests FROM recorded \
         WHERE cost_ticks > 0 GROUP BY team_id), \
         v AS (SELECT v.* FROM unnest($26::uuid[], $27::uuid[], $28::int8[], $29::int8[], $30::text[], \
         $31::text[], $32::text[], $33::uuid[]) AS v (id, team_id, amount, requests, reason, actor_kind, actor_id, \
         charge_id) JOIN new ON new.team_id = v.team_id AND new.amount = v.amount AND new.requests = v.requests), \
         taken AS (UPDATE team_balances b SET prepaid = b.prepaid - v.amount, updated_at = $34 FROM v \
         WHERE b.team_id = ANY($27) AND b.team_id = v.team_id AND b.promo = 0 AND b.prepaid >= v.amount \
         RETURNING v.*), \
         spent AS (INSERT INTO spend_journal ({JOURNAL_COLUMNS}) SELECT id, team_id, 'spend', 'prepaid', -amount, \
         NULL, reason, actor_kind, actor_id, $34, charge_id, requests FROM taken) \
         SELECT request_id, NULL::uuid AS taken FROM recorded UNION ALL SELECT NULL, team_id FROM taken"
    )
});

/// What one team's charge changes, computed in memory from its locked funds.
pub(crate) struct TeamCharge {
    pub(crate) team_id: Uuid,
    pub(crate) charge_id: Uuid,
    pub(crate) prepaid_moved: i64,
    pub(crate) promo_moved: i64,
    pub(crate) invoiced: i64,
    pub(crate) lots: Vec<(Uuid, i64)>,
    pub(crate) parts: Vec<tollgate_domain::SpendPart>,
    pub(crate) actor: Actor,
    pub(crate) requests: usize,
}

/// Works out one team's charge: its requests' total cost taken in consumption order (taking
/// the sum at once splits it across buckets exactly as taking each request in turn would).
pub(crate) fn team_charge(team_id: Uuid, charge_id: Uuid, charges: &[&Charge], before: &Funds) -> TeamCharge {
    let mut funds = before.clone();
    let total = charges
        .iter()
        .fold(0i64, |sum, charge| sum.saturating_add(charge.record.cost.get()));
    let parts = funds.take(Ticks::new(total));
    let mut lots = Vec::new();
    let mut promo_moved = 0i64;
    for ((lot, was), (_, now)) in before.lots.iter().zip(&funds.lots) {
        if was != now {
            promo_moved += now.get() - was.get();
            lots.push((*lot, now.get()));
        }
    }
    // Spend names the key when one key made every request of the charge.
    let key = charges.first().map(|c| c.record.api_key_id);
    let actor = match key {
        Some(id) if charges.iter().all(|c| c.record.api_key_id == id) => Actor::ApiKey { id },
        _ => Actor::System,
    };
    TeamCharge {
        team_id,
        charge_id,
        prepaid_moved: funds.prepaid.get() - before.prepaid.get(),
        promo_moved,
        invoiced: before.invoice_headroom.get() - funds.invoice_headroom.get(),
        lots,
        parts,
        actor,
        requests: charges.len(),
    }
}

/// Bind parameters one round trip of writes carries (PostgreSQL takes 65,535 in a statement):
/// a batch of 512 teams' charges, each in a bucket or two (34 parameters at most), fits in one.
const BINDS_PER_TRIP: usize = 17_408;

/// The most bind parameters a PostgreSQL round trip of [`Writes`] may carry and be kept
/// prepared: a team's spend entries (a bucket or two, 12 each), its balance, a lot and its
/// invoice month.
const CACHED_TRIP_BINDS: usize = 64;

/// Writes that need no answer. On PostgreSQL they go together, as data-modifying `WITH` clauses
/// of one statement (each runs to completion, all on the statement's snapshot; they write
/// different tables): one round trip where there were one per statement. Such a statement comes
/// in as many shapes as there are mixes of row counts, so only a small one (one team's charge,
/// the shapes that repeat) is kept in the statement cache. On SQLite (this path serves only an
/// in-memory database: a file's group commit runs on its own thread, `sqlite::commit`) each part
/// (one [`shaped_chunks`](super::shaped_chunks) piece of one kind) is sent alone, so each has
/// few shapes and stays prepared.
struct Writes<'args> {
    query: sqlx::QueryBuilder<'args, super::Db>,
    parts: usize,
    binds: usize,
}

impl<'args> Writes<'args> {
    fn new() -> Self {
        Self {
            query: sqlx::QueryBuilder::new(""),
            parts: 0,
            binds: 0,
        }
    }

    /// Starts a part of `binds` parameters (sending what is queued first if they would not fit)
    /// and returns the query to write it into; [`Self::end`] closes it.
    async fn begin(
        &mut self,
        conn: &mut <super::Db as sqlx::Database>::Connection,
        binds: usize,
    ) -> Result<&mut sqlx::QueryBuilder<'args, super::Db>, StoreError> {
        if self.parts > 0 && (super::BACKEND == crate::Backend::Sqlite || self.binds + binds > BINDS_PER_TRIP) {
            self.send(conn).await?;
        }
        let opening = match (super::BACKEND, self.parts) {
            (crate::Backend::Postgres, 0) => "WITH w0 AS (".to_owned(),
            (crate::Backend::Postgres, n) => format!(", w{n} AS ("),
            (crate::Backend::Sqlite, _) => String::new(),
        };
        self.query.push(opening);
        self.parts += 1;
        self.binds += binds;
        Ok(&mut self.query)
    }

    fn end(&mut self) {
        if matches!(super::BACKEND, crate::Backend::Postgres) {
            self.query.push(")");
        }
    }

    /// Sends what is queued, if anything.
    async fn send(&mut self, conn: &mut <super::Db as sqlx::Database>::Connection) -> Result<(), StoreError> {
        if self.parts == 0 {
            return Ok(());
        }
        if matches!(super::BACKEND, crate::Backend::Postgres) {
            self.query.push(" SELECT 1");
        }
        let cached = super::BACKEND == crate::Backend::Sqlite || self.binds <= CACHED_TRIP_BINDS;
        self.query.build().persistent(cached).execute(&mut *conn).await?;
        self.query.reset();
        self.parts = 0;
        self.binds = 0;
        Ok(())
    }

    /// `UPDATE table SET … FROM (VALUES …) AS v WHERE …` over `rows` of `width` parameters each,
    /// in chunks (both databases name a VALUES list's columns `column1`, …).
    async fn update_from_values<T>(
        &mut self,
        conn: &mut <super::Db as sqlx::Database>::Connection,
        (head, tail): (&str, &str),
        rows: &'args [T],
        width: usize,
        mut bind: impl FnMut(&mut sqlx::query_builder::Separated<'_, 'args, super::Db, &'static str>, &'args T),
    ) -> Result<(), StoreError> {
        for chunk in super::shaped_chunks(rows, ROWS_PER_INSERT) {
            let update = self.begin(conn, chunk.len() * width).await?;
            update.push(head);
            update.push(" FROM (");
            update.push_values(chunk, |mut row, value| bind(&mut row, value));
            update.push(") AS v WHERE ");
            update.push(tail);
            self.end();
        }
        Ok(())
    }

    /// One statement per row of `rows` (`width` parameters each), written by `write`: on SQLite,
    /// where a row's `UPDATE … WHERE id = ?` costs far less than an `UPDATE … FROM (VALUES …)`,
    /// which builds a temporary table for its join (statements are still sent together).
    async fn each<T>(
        &mut self,
        conn: &mut <super::Db as sqlx::Database>::Connection,
        rows: &'args [T],
        width: usize,
        mut write: impl FnMut(&mut sqlx::QueryBuilder<'args, super::Db>, &'args T),
    ) -> Result<(), StoreError> {
        for chunk in super::shaped_chunks(rows, ROWS_PER_INSERT) {
            let query = self.begin(conn, chunk.len() * width).await?;
            for (index, row) in chunk.iter().enumerate() {
                if index > 0 {
                    query.push("; ");
                }
                write(query, row);
            }
            self.end();
        }
        Ok(())
    }
}

/// One spend entry, as [`charge_teams`] writes it.
struct SpendRow {
    team_id: Uuid,
    bucket: &'static str,
    amount: i64,
    lot_id: Option<Uuid>,
    reason: String,
    actor_kind: &'static str,
    actor_id: Option<String>,
    charge_id: Uuid,
    requests: i64,
}

/// Charges every team's new records of a batch, in `conn`'s transaction, in a fixed number of
/// statements however many teams: their funds locked and read at once, each team's spend
/// entries inserted, and balances, lots and invoice months moved once each (not leases: a node
/// reports its lease's spends when it renews or grows it). On PostgreSQL these are the teams
/// [`record_and_take_prepaid`] left. Spend entries go to the spend journal
/// ([`UsageStore::fold_spends`]); returns how many.
async fn charge_teams(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    teams: &BTreeMap<Uuid, Vec<&Charge>>,
    charge_ids: &HashMap<Uuid, Uuid>,
    at: Timestamp,
    default_hard_limit: Ticks,
) -> Result<u64, StoreError> {
    if teams.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = teams.keys().copied().collect();
    let spends: BTreeMap<Uuid, i64> = teams
        .iter()
        .map(|(team, charges)| {
            let total = charges
                .iter()
                .fold(0i64, |sum, c| sum.saturating_add(c.record.cost.get()));
            (*team, total)
        })
        .collect();
    let funds = lock_funds_of(conn, &ids, at, at, default_hard_limit, Some(&spends)).await?;
    let mut charges = Vec::with_capacity(teams.len());
    for (team, requests) in teams {
        let before = funds.get(team).ok_or(StoreError::NotFound)?;
        let charge_id = charge_ids.get(team).copied().unwrap_or_else(Uuid::now_v7);
        charges.push(team_charge(*team, charge_id, requests, before));
    }

    // Owned here, so the writes can borrow them until they are sent.
    let spend_rows: Vec<SpendRow> = charges
        .iter()
        .flat_map(|charge| {
            charge.parts.iter().map(move |part| SpendRow {
                team_id: charge.team_id,
                bucket: part.bucket.as_str(),
                amount: -part.amount.get(),
                lot_id: part.lot_id,
                reason: format!("{} requests", charge.requests),
                actor_kind: charge.actor.kind(),
                actor_id: charge.actor.id(),
                charge_id: charge.charge_id,
                requests: i64::try_from(charge.requests).unwrap_or(i64::MAX),
            })
        })
        .collect();
    let balances: Vec<&TeamCharge> = charges
        .iter()
        .filter(|c| c.prepaid_moved != 0 || c.promo_moved != 0)
        .collect();
    let lots: Vec<(Uuid, i64)> = charges.iter().flat_map(|c| c.lots.iter().copied()).collect();
    let invoiced: Vec<&TeamCharge> = charges.iter().filter(|c| c.invoiced > 0).collect();

    let mut writes = Writes::new();
    for chunk in super::shaped_chunks(&spend_rows, ROWS_PER_INSERT) {
        // No idempotency key: the usage rows' request ids make a spend idempotent (it is
        // written only for rows new to the store), and its charge names it.
        let insert = writes.begin(conn, chunk.len() * 12).await?;
        insert.push(format!("INSERT INTO spend_journal ({JOURNAL_COLUMNS}) "));
        insert.push_values(chunk, |mut row, spend| {
            row.push_bind(Uuid::now_v7())
                .push_bind(spend.team_id)
                .push_bind(EntryKind::Spend.as_str())
                .push_bind(spend.bucket)
                .push_bind(spend.amount)
                .push_bind(spend.lot_id)
                .push_bind(spend.reason.as_str())
                .push_bind(spend.actor_kind)
                .push_bind(spend.actor_id.as_deref())
                .push_bind(at)
                .push_bind(spend.charge_id)
                .push_bind(spend.requests);
        });
        writes.end();
    }
    // Balances move by an upsert whose rows always exist (their funds were locked above): one
    // statement however many teams, each row found by its key. On SQLite a statement per row
    // would cost a round of the connection worker's channel each (a thread wake-up, which at a
    // thousand teams cost more than the writes), and `UPDATE … FROM (VALUES …)` a temporary
    // table for its join.
    for chunk in super::shaped_chunks(&balances, ROWS_PER_INSERT) {
        let upsert = writes.begin(conn, chunk.len() * 4).await?;
        upsert.push("INSERT INTO team_balances (team_id, prepaid, promo, updated_at) ");
        upsert.push_values(chunk, |mut row, charge| {
            row.push_bind(charge.team_id)
                .push_bind(charge.prepaid_moved)
                .push_bind(charge.promo_moved)
                .push_bind(at);
        });
        upsert.push(
            " ON CONFLICT (team_id) DO UPDATE SET prepaid = team_balances.prepaid + excluded.prepaid, \
             promo = team_balances.promo + excluded.promo, updated_at = excluded.updated_at",
        );
        writes.end();
    }
    if matches!(super::BACKEND, crate::Backend::Postgres) {
        writes
            .update_from_values(
                conn,
                (
                    "UPDATE credit_lots SET remaining = v.column2",
                    "credit_lots.id = v.column1",
                ),
                &lots,
                2,
                |row, (lot, remaining)| {
                    row.push_bind(*lot).push_bind(*remaining);
                },
            )
            .await?;
    } else {
        writes
            .each(conn, &lots, 2, |query, (lot, remaining)| {
                query
                    .push("UPDATE credit_lots SET remaining = ")
                    .push_bind(*remaining)
                    .push(" WHERE id = ")
                    .push_bind(*lot);
            })
            .await?;
    }
    let month = billing_month(at);
    for chunk in super::shaped_chunks(&invoiced, ROWS_PER_INSERT) {
        let upsert = writes.begin(conn, chunk.len() * 4).await?;
        upsert.push("INSERT INTO invoice_months (team_id, month, owed, updated_at) ");
        upsert.push_values(chunk, |mut row, charge| {
            row.push_bind(charge.team_id)
                .push_bind(month.as_str())
                .push_bind(charge.invoiced)
                .push_bind(at);
        });
        upsert.push(
            " ON CONFLICT (team_id, month) DO UPDATE SET owed = invoice_months.owed + excluded.owed, \
             updated_at = excluded.updated_at",
        );
        writes.end();
    }
    writes.send(conn).await?;
    Ok(u64::try_from(spend_rows.len()).unwrap_or(u64::MAX))
}

#[async_trait]
impl UsageStore for SqlStore {
    async fn insert_usage_batch(
        &self,
        batch: &[Charge],
        at: Timestamp,
        default_hard_limit: Ticks,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(committed) = self.commit_on_own_thread(batch, at, default_hard_limit).await {
            self.journaled.fetch_add(committed?, Ordering::Relaxed);
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        // Each charged team's open charge.
        let charges = self.open_charges.for_batch(batch, at);
        let Recorded { new, taken } = match super::postgres(&mut tx) {
            Some(pg) => record_and_take_prepaid(pg, batch, &charges, at).await?,
            None => Recorded {
                new: insert_records(&mut tx, batch, &charges).await?,
                taken: HashSet::new(),
            },
        };
        // The teams left to charge, in id order, so two nodes' batches lock them in the same
        // order.
        let mut teams: BTreeMap<Uuid, Vec<&Charge>> = BTreeMap::new();
        for charge in batch {
            let team = charge.record.team_id.as_uuid();
            if charge.record.cost.get() > 0
                && !taken.contains(&team)
                && new.contains(&charge.record.request_id.as_uuid())
            {
                teams.entry(team).or_default().push(charge);
            }
        }
        let journaled = charge_teams(&mut tx, &teams, &charges, at, default_hard_limit)
            .await?
            .saturating_add(u64::try_from(taken.len()).unwrap_or(u64::MAX));
        tx.commit().await?;
        self.journaled.fetch_add(journaled, Ordering::Relaxed);
        Ok(())
    }

    async fn fold_spends(&self, at_least: u64) -> Result<u64, StoreError> {
        let due = self.journaled.load(Ordering::Relaxed);
        if due < at_least {
            return Ok(0);
        }
        // The write connection, held: on SQLite no group commit of this process runs meanwhile
        // (its thread writes only while the caller holds this connection), and another process
        // waits for the write lock the first statement takes. Rows journaled meanwhile by
        // another node are moved by this fold or the next. The ledger has no foreign key to
        // check a row's team by (a query per row): the fold checks them all at once, and a spend
        // whose team is missing stops it (migration 20261203000035).
        let mut tx = self.write.begin().await?;
        let moved = if matches!(super::BACKEND, crate::Backend::Postgres) {
            // One statement: the rows this deletes are the rows it sums, and a node folding at
            // the same time waits for these rows' locks, then finds them gone. Each entry is
            // named by its first row's id (the groups are disjoint, so no two share one).
            let row = sqlx::query(&format!(
                "WITH moved AS (DELETE FROM spend_journal RETURNING {JOURNAL_COLUMNS}), \
                 grouped AS (SELECT CAST(MIN(CAST(id AS TEXT)) AS UUID) AS id, {FOLDED_ENTRY} FROM moved \
                 GROUP BY team_id, charge_id, bucket, lot_id), \
                 folded AS (INSERT INTO ledger_entries ({SPEND_COLUMNS}) SELECT {SPEND_COLUMNS} FROM grouped \
                 WHERE team_id IN (SELECT id FROM teams) RETURNING id) \
                 SELECT CAST(COALESCE((SELECT SUM(spends) FROM grouped), 0) AS BIGINT) AS deleted, \
                 CAST(COALESCE((SELECT SUM(spends) FROM grouped JOIN folded USING (id)), 0) AS BIGINT) AS moved"
            ))
            .fetch_one(&mut *tx)
            .await?;
            let (deleted, moved): (i64, i64) = (row.try_get("deleted")?, row.try_get("moved")?);
            if deleted != moved {
                return Err(super::corrupt("spend_journal", "a spend of a team that does not exist"));
            }
            super::to_u64(moved, "folded spends")?
        } else {
            // The insert first: it takes the write lock (a read first would hold a snapshot
            // that another process's commit could make stale), and nothing writes the journal
            // until this transaction ends, so the rows checked are the rows summed and then
            // deleted. A spend of a missing team rolls it all back.
            sqlx::query(&format!(
                "INSERT INTO ledger_entries ({SPEND_COLUMNS}) SELECT {SPEND_COLUMNS} FROM \
                 (SELECT MIN(id) AS id, {FOLDED_ENTRY} FROM spend_journal GROUP BY team_id, charge_id, bucket, lot_id)"
            ))
            .execute(&mut *tx)
            .await?;
            let orphaned: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM spend_journal WHERE team_id NOT IN (SELECT id FROM teams))",
            )
            .fetch_one(&mut *tx)
            .await?;
            if orphaned {
                return Err(super::corrupt("spend_journal", "a spend of a team that does not exist"));
            }
            sqlx::query("DELETE FROM spend_journal")
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        tx.commit().await?;
        self.open_charges.close_all();
        // What was journaled meanwhile counts towards the next fold (a failed fold leaves the
        // count as it was, for the recorder's next try).
        let _ = self
            .journaled
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(due)));
        Ok(moved)
    }

    async fn usage_cells(
        &self,
        team_id: TeamId,
        from: Timestamp,
        to: Timestamp,
        keys: Option<&[ApiKeyId]>,
    ) -> Result<Vec<UsageCell>, StoreError> {
        if keys.is_some_and(<[ApiKeyId]>::is_empty) {
            return Ok(Vec::new());
        }
        let mut query = sqlx::QueryBuilder::<super::Db>::new(format!(
            "SELECT hour, model, api_key_id, COUNT(*) AS requests, \
             CAST(SUM(uncached) AS BIGINT) AS uncached, CAST(SUM(cached) AS BIGINT) AS cached, \
             CAST(SUM(output) AS BIGINT) AS output, CAST(SUM(cost_ticks) AS BIGINT) AS cost, \
             CAST(SUM(cached * COALESCE(cached_prompt_price, 0)) AS BIGINT) AS cached_cost, \
             CAST(SUM(output * COALESCE(completion_price, 0)) AS BIGINT) AS output_cost, \
             CAST(SUM(images) AS BIGINT) AS images, \
             CAST(SUM(images * COALESCE(image_price, 0)) AS BIGINT) AS image_cost, \
             CAST(SUM(web_search_calls) AS BIGINT) AS web_searches, \
             CAST(SUM(web_search_calls * COALESCE(web_search_price, 0)) AS BIGINT) AS web_search_cost, \
             CAST(SUM(x_search_calls) AS BIGINT) AS x_searches, \
             CAST(SUM(x_search_calls * COALESCE(x_search_price, 0)) AS BIGINT) AS x_search_cost FROM \
             (SELECT {HOUR_OF_CREATED_AT} AS hour, model, api_key_id, cost_ticks, cached_prompt_price, completion_price, \
              images, image_price, web_search_calls, web_search_price, x_search_calls, x_search_price, \
              CASE WHEN cached_prompt_tokens > prompt_tokens THEN 0 ELSE prompt_tokens - cached_prompt_tokens END AS uncached, \
              CASE WHEN cached_prompt_tokens > prompt_tokens THEN prompt_tokens ELSE cached_prompt_tokens END AS cached, \
              completion_tokens + reasoning_tokens AS output \
              FROM usage_events WHERE team_id = "
        ));
        query.push_bind(team_id.as_uuid());
        query.push(" AND created_at >= ");
        query.push_bind(from);
        query.push(" AND created_at < ");
        query.push_bind(to);
        if let Some(keys) = keys {
            let keys: Vec<Uuid> = keys.iter().map(|key| key.as_uuid()).collect();
            query.push(" AND api_key_id");
            super::push_in_list(&mut query, &keys);
        }
        query.push(") AS u GROUP BY hour, model, api_key_id ORDER BY hour, model, api_key_id");
        let rows = query.build().fetch_all(&self.read).await?;
        rows.iter()
            .map(|row| {
                let hour: String = row.try_get("hour")?;
                let hour = parse_hour(&hour).ok_or_else(|| super::corrupt("usage_events.created_at", &hour))?;
                let count = |column: &str| -> Result<u64, StoreError> { super::to_u64(row.try_get(column)?, column) };
                let cost: i64 = row.try_get("cost")?;
                let parts: [i64; 5] = [
                    row.try_get("cached_cost")?,
                    row.try_get("output_cost")?,
                    row.try_get("image_cost")?,
                    row.try_get("web_search_cost")?,
                    row.try_get("x_search_cost")?,
                ];
                Ok(UsageCell {
                    hour,
                    model: row.try_get("model")?,
                    api_key_id: ApiKeyId::from_uuid(row.try_get("api_key_id")?),
                    requests: count("requests")?,
                    tokens: [
                        count("uncached")?,
                        count("cached")?,
                        count("output")?,
                        count("images")?,
                        count("web_searches")?,
                        count("x_searches")?,
                    ],
                    // The prompt's part is the rest, so the parts sum to the recorded cost.
                    cost: [
                        Ticks::new(parts.iter().fold(cost, |rest, part| rest.saturating_sub(*part))),
                        Ticks::new(parts[0]),
                        Ticks::new(parts[1]),
                        Ticks::new(parts[2]),
                        Ticks::new(parts[3]),
                        Ticks::new(parts[4]),
                    ],
                })
            })
            .collect()
    }

    async fn list_usage(&self, team_id: TeamId, limit: u32) -> Result<Vec<UsageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT request_id, team_id, api_key_id, model, endpoint, prompt_tokens, cached_prompt_tokens, \
             completion_tokens, reasoning_tokens, images, web_search_calls, x_search_calls, cost_ticks, estimated, streamed, duration_ms, created_at \
             FROM usage_events WHERE team_id = $1 ORDER BY created_at DESC, request_id DESC LIMIT $2",
        )
        .bind(team_id.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(usage_from_row).collect()
    }
}
