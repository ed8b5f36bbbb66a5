//! Usage records and their spend (the group commit writes them).

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use tollgate_domain::{Actor, EntryKind, TeamId, Ticks, Timestamp, UsageRecord, billing_month};
use uuid::Uuid;

use sqlx::Row as _;

use super::ledger::{lock_funds, move_balance};
use super::{SqlStore, to_i64, usage_from_row};
use crate::{Charge, StoreError, UsageStore};

/// Rows per multi-row insert (16 parameters a row: well under both databases' limits).
const ROWS_PER_INSERT: usize = 256;

/// Inserts the usage rows in multi-row statements, each with its team's charge id; returns the
/// request ids that were new (a request recorded before is skipped, with its charge).
async fn insert_records(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    batch: &[Charge],
    charges: &HashMap<Uuid, Uuid>,
) -> Result<HashSet<Uuid>, StoreError> {
    let mut inserted = HashSet::with_capacity(batch.len());
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let mut rows = Vec::with_capacity(chunk.len());
        for charge in chunk {
            let record = &charge.record;
            let usage = &record.usage;
            let charge_id = (record.cost.get() > 0)
                .then(|| charges.get(&record.team_id.as_uuid()).copied())
                .flatten();
            rows.push((
                record,
                charge_id,
                [
                    to_i64(usage.prompt_tokens, "prompt_tokens")?,
                    to_i64(usage.cached_prompt_tokens, "cached_prompt_tokens")?,
                    to_i64(usage.completion_tokens, "completion_tokens")?,
                    to_i64(usage.reasoning_tokens, "reasoning_tokens")?,
                    to_i64(usage.total_tokens(), "total_tokens")?,
                    to_i64(record.duration_ms, "duration_ms")?,
                ],
            ));
        }
        let mut insert = sqlx::QueryBuilder::<super::Db>::new(
            "INSERT INTO usage_events (request_id, team_id, api_key_id, model, endpoint, prompt_tokens, \
             cached_prompt_tokens, completion_tokens, reasoning_tokens, total_tokens, cost_ticks, estimated, \
             streamed, duration_ms, created_at, charge_id) ",
        );
        insert.push_values(&rows, |mut row, (record, charge_id, numbers)| {
            let [prompt, cached, completion, reasoning, total, duration] = *numbers;
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
                .push_bind(*charge_id);
        });
        insert.push(" ON CONFLICT (request_id) DO NOTHING RETURNING request_id");
        for row in insert.build().fetch_all(&mut *conn).await? {
            inserted.insert(row.try_get("request_id")?);
        }
    }
    Ok(inserted)
}

/// Charges one team's new records of the batch as one charge, in `conn`'s transaction: spend
/// entries for their total cost in consumption order (taking the sum at once splits it across
/// buckets exactly as taking each request in turn would), then the team's balance, lots,
/// invoice month and leases, each moved once.
async fn charge_team(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    team_id: TeamId,
    charge_id: Uuid,
    charges: &[&Charge],
    at: Timestamp,
    default_hard_limit: Ticks,
) -> Result<(), StoreError> {
    let before = lock_funds(conn, team_id, at, at, default_hard_limit).await?;
    let mut funds = before.clone();
    let mut leases: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut total = 0i64;
    for charge in charges {
        let cost = charge.record.cost.get();
        total = total.saturating_add(cost);
        if let Some(lease) = charge.lease_id {
            let spent = leases.entry(lease).or_default();
            *spent = spent.saturating_add(cost);
        }
    }
    // Spend names the key when one key made every request of the charge.
    let key = charges.first().map(|c| c.record.api_key_id);
    let actor = match key {
        Some(id) if charges.iter().all(|c| c.record.api_key_id == id) => Actor::ApiKey { id },
        _ => Actor::System,
    };
    let parts = funds.take(Ticks::new(total));
    let mut insert = sqlx::QueryBuilder::<super::Db>::new(
        "INSERT INTO ledger_entries (id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, \
         reason, actor_kind, actor_id, created_at, charge_id) ",
    );
    insert.push_values(parts.iter().enumerate(), |mut row, (index, part)| {
        row.push_bind(Uuid::now_v7())
            .push_bind(team_id.as_uuid())
            .push_bind(EntryKind::Spend.as_str())
            .push_bind(part.bucket.as_str())
            .push_bind(-part.amount.get())
            .push_bind(format!("spend:{charge_id}:{index}"))
            .push_bind(part.lot_id)
            .push_bind(None::<Timestamp>)
            .push_bind(format!("{} requests", charges.len()))
            .push_bind(actor.kind())
            .push_bind(actor.id())
            .push_bind(at)
            .push_bind(charge_id);
    });
    if !parts.is_empty() {
        insert.build().execute(&mut *conn).await?;
    }
    let mut promo_moved = 0i64;
    for ((lot, was), (_, now)) in before.lots.iter().zip(&funds.lots) {
        if was != now {
            promo_moved += now.get() - was.get();
            sqlx::query("UPDATE credit_lots SET remaining = $1 WHERE id = $2")
                .bind(now.get())
                .bind(lot)
                .execute(&mut *conn)
                .await?;
        }
    }
    let prepaid_moved = funds.prepaid.get() - before.prepaid.get();
    if prepaid_moved != 0 || promo_moved != 0 {
        move_balance(conn, team_id, prepaid_moved, promo_moved, at).await?;
    }
    let invoiced = before.invoice_headroom.get() - funds.invoice_headroom.get();
    if invoiced > 0 {
        sqlx::query(
            "INSERT INTO invoice_months (team_id, month, owed, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id, month) DO UPDATE SET owed = invoice_months.owed + $3, updated_at = $4",
        )
        .bind(team_id.as_uuid())
        .bind(billing_month(at))
        .bind(invoiced)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    for (lease, spent) in leases {
        sqlx::query(
            "UPDATE credit_leases SET amount = CASE WHEN amount > $1 THEN amount - $1 ELSE 0 END WHERE id = $2",
        )
        .bind(spent)
        .bind(lease)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
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
        let mut tx = self.write.begin().await?;
        // One charge per team with a cost in the batch.
        let charges: HashMap<Uuid, Uuid> = batch
            .iter()
            .filter(|charge| charge.record.cost.get() > 0)
            .map(|charge| (charge.record.team_id.as_uuid(), Uuid::now_v7()))
            .collect();
        let new = insert_records(&mut tx, batch, &charges).await?;
        // Teams in id order, so two nodes' batches lock them in the same order.
        let mut teams: BTreeMap<Uuid, Vec<&Charge>> = BTreeMap::new();
        for charge in batch {
            if charge.record.cost.get() > 0 && new.contains(&charge.record.request_id.as_uuid()) {
                teams.entry(charge.record.team_id.as_uuid()).or_default().push(charge);
            }
        }
        for (team, team_charges) in teams {
            let charge_id = charges.get(&team).copied().unwrap_or_else(Uuid::now_v7);
            charge_team(
                &mut tx,
                TeamId::from_uuid(team),
                charge_id,
                &team_charges,
                at,
                default_hard_limit,
            )
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
