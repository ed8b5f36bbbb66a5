//! Usage records and their spend (the group commit writes them).

use std::collections::BTreeMap;

use async_trait::async_trait;
use tollgate_domain::{Actor, EntryKind, LedgerEntry, TeamId, Ticks, Timestamp, UsageRecord, billing_month};
use uuid::Uuid;

use super::ledger::{insert_entry, lock_funds, move_balance};
use super::{SqlStore, to_i64, usage_from_row};
use crate::{Charge, StoreError, UsageStore};

/// Inserts the usage row; `false` when the request was recorded before.
async fn insert_record(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    record: &UsageRecord,
) -> Result<bool, StoreError> {
    let usage = &record.usage;
    let inserted = sqlx::query(
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
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Charges one team's new records in `conn`'s transaction: their spend entries in consumption
/// order, then the team's balance, lots, invoice month and leases, each moved once.
async fn charge_team(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    team_id: TeamId,
    charges: &[&Charge],
    at: Timestamp,
    default_hard_limit: Ticks,
) -> Result<(), StoreError> {
    let before = lock_funds(conn, team_id, at, at, default_hard_limit).await?;
    let mut funds = before.clone();
    let mut leases: BTreeMap<Uuid, i64> = BTreeMap::new();
    for charge in charges {
        let record = &charge.record;
        for (index, part) in funds.take(record.cost).into_iter().enumerate() {
            let entry = LedgerEntry {
                id: Uuid::now_v7(),
                team_id,
                kind: EntryKind::Spend,
                bucket: part.bucket,
                amount: Ticks::new(-part.amount.get()),
                idempotency_key: format!("spend:{}:{index}", record.request_id),
                lot_id: part.lot_id,
                expires_at: None,
                reason: None,
                created_at: at,
            };
            let actor = Actor::ApiKey { id: record.api_key_id };
            insert_entry(conn, &entry, &actor, Some(record.request_id.as_uuid())).await?;
        }
        if let Some(lease) = charge.lease_id {
            let spent = leases.entry(lease).or_default();
            *spent = spent.saturating_add(record.cost.get());
        }
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
        // Teams in id order, so two nodes' batches lock them in the same order.
        let mut teams: BTreeMap<Uuid, Vec<&Charge>> = BTreeMap::new();
        for charge in batch {
            if insert_record(&mut tx, &charge.record).await? && charge.record.cost.get() > 0 {
                teams.entry(charge.record.team_id.as_uuid()).or_default().push(charge);
            }
        }
        for (team, charges) in teams {
            charge_team(&mut tx, TeamId::from_uuid(team), &charges, at, default_hard_limit).await?;
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
