//! Request and response bodies kept for abuse review (sealed by the caller).
//!
//! PostgreSQL keeps them in one partition a day: [`RequestBodyStore::prune_request_bodies`]
//! makes the next days' partitions (moving any rows the default partition holds for them) and
//! drops whole partitions once every row in them is past the cutoff, then deletes what the
//! default partition holds past it in bounded batches. SQLite deletes in bounded batches.

use async_trait::async_trait;
use chrono::{Datelike as _, Duration, NaiveDate, TimeZone as _, Utc};
use sqlx::Row as _;
use tollgate_domain::{ApiKeyId, RequestId, TeamId, Timestamp};

use super::SqlStore;
use crate::{Backend, RequestBodyStore, RetainedBody, StoreError};

/// Rows per delete: each statement is short, so writers never wait long behind it.
const DELETE_BATCH: i64 = 5_000;
/// Days of partitions made ahead of today.
const DAYS_AHEAD: i64 = 3;
/// Rows per multi-row insert (7 parameters a row).
const ROWS_PER_INSERT: usize = 512;

fn partition_name(day: NaiveDate) -> String {
    format!("request_bodies_p{:04}{:02}{:02}", day.year(), day.month(), day.day())
}

fn day_start(day: NaiveDate) -> Timestamp {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

impl SqlStore {
    /// Makes the partition of `day` if it is missing, taking over the rows the default
    /// partition holds for it (attaching would fail otherwise). Serialized across nodes.
    async fn make_partition(&self, day: NaiveDate) -> Result<(), StoreError> {
        let name = partition_name(day);
        let (from, to) = (day_start(day), day_start(day + Duration::days(1)));
        let mut tx = self.write.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7206158427593841)")
            .execute(&mut *tx)
            .await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
        if exists {
            return Ok(());
        }
        // Inserts routed to the default partition wait while its rows for the day move, so
        // attaching never finds one there.
        sqlx::query("LOCK TABLE request_bodies_default IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        // The name is ours (digits of a date), never input.
        sqlx::query(&format!(
            "CREATE TABLE {name} (LIKE request_bodies INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "WITH moved AS (DELETE FROM request_bodies_default WHERE created_at >= $1 AND created_at < $2 RETURNING *) \
             INSERT INTO {name} SELECT * FROM moved"
        ))
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "ALTER TABLE request_bodies ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
            from.to_rfc3339(),
            to.to_rfc3339()
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops the day partitions wholly before `before`; how many rows they held.
    async fn drop_partitions(&self, before: Timestamp) -> Result<u64, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'request_bodies'::regclass AND c.relname::text LIKE 'request_bodies_p%'",
        )
        .fetch_all(&self.read)
        .await?;
        let mut dropped = 0;
        for name in names {
            let Some(day) = name
                .strip_prefix("request_bodies_p")
                .and_then(|digits| NaiveDate::parse_from_str(digits, "%Y%m%d").ok())
            else {
                continue;
            };
            if day_start(day + Duration::days(1)) > before {
                continue;
            }
            let mut tx = self.write.begin().await?;
            let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {name}"))
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            dropped += u64::try_from(rows).unwrap_or(0);
        }
        Ok(dropped)
    }

    /// Deletes rows of `table` before `before`, a batch at a time.
    async fn delete_in_batches(&self, table: &str, before: Timestamp) -> Result<u64, StoreError> {
        let key = if matches!(super::BACKEND, Backend::Postgres) {
            "ctid"
        } else {
            "rowid"
        };
        let mut deleted = 0;
        loop {
            let done = sqlx::query(&format!(
                "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE created_at < $1 LIMIT $2)"
            ))
            .bind(before)
            .bind(DELETE_BATCH)
            .execute(&self.write)
            .await?
            .rows_affected();
            deleted += done;
            if done < u64::try_from(DELETE_BATCH).unwrap_or(u64::MAX) {
                return Ok(deleted);
            }
        }
    }
}

#[async_trait]
impl RequestBodyStore for SqlStore {
    async fn insert_request_bodies(&self, rows: &[RetainedBody]) -> Result<(), StoreError> {
        if let Some(kept) = self.keep_bodies_on_own_thread(rows).await {
            return kept;
        }
        let mut conn = self.write.acquire().await?;
        // PostgreSQL: the rows in one statement, each column bound as one array and
        // `unnest`ed, so a batch is one transaction with one text that stays prepared, where
        // multi-row `VALUES` took a statement, and a commit, per power-of-two piece of it.
        if let Some(pg) = super::postgres(&mut conn) {
            let n = rows.len();
            let (mut requests, mut teams, mut keys) =
                (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut endpoints, mut models, mut times, mut sealed) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for body in rows {
                requests.push(body.request_id.as_uuid());
                teams.push(body.team_id.as_uuid());
                keys.push(body.api_key_id.as_uuid());
                endpoints.push(body.endpoint.as_str());
                models.push(body.model.as_str());
                times.push(body.created_at);
                sealed.push(body.sealed.as_slice());
            }
            sqlx::query(
                "INSERT INTO request_bodies (request_id, team_id, api_key_id, endpoint, model, created_at, sealed) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], \
                 $7::bytea[]) ON CONFLICT DO NOTHING",
            )
            .bind(requests)
            .bind(teams)
            .bind(keys)
            .bind(endpoints)
            .bind(models)
            .bind(times)
            .bind(sealed)
            .execute(pg)
            .await?;
            return Ok(());
        }
        for chunk in super::shaped_chunks(rows, ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<super::Db>::new(
                "INSERT INTO request_bodies (request_id, team_id, api_key_id, endpoint, model, created_at, sealed) ",
            );
            insert.push_values(chunk, |mut row, body| {
                row.push_bind(body.request_id.as_uuid())
                    .push_bind(body.team_id.as_uuid())
                    .push_bind(body.api_key_id.as_uuid())
                    .push_bind(body.endpoint.clone())
                    .push_bind(body.model.clone())
                    .push_bind(body.created_at)
                    .push_bind(body.sealed.clone());
            });
            insert.push(" ON CONFLICT DO NOTHING");
            insert.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn request_body(&self, request_id: RequestId) -> Result<Option<RetainedBody>, StoreError> {
        let row = sqlx::query(
            "SELECT request_id, team_id, api_key_id, endpoint, model, created_at, sealed FROM request_bodies \
             WHERE request_id = $1",
        )
        .bind(request_id.as_uuid())
        .fetch_optional(&self.read)
        .await?;
        row.map(|row| {
            Ok(RetainedBody {
                request_id: RequestId::from_uuid(row.try_get("request_id")?),
                team_id: TeamId::from_uuid(row.try_get("team_id")?),
                api_key_id: ApiKeyId::from_uuid(row.try_get("api_key_id")?),
                endpoint: row.try_get("endpoint")?,
                model: row.try_get("model")?,
                created_at: row.try_get("created_at")?,
                sealed: row.try_get("sealed")?,
            })
        })
        .transpose()
    }

    async fn prune_request_bodies(&self, before: Timestamp, now: Timestamp) -> Result<u64, StoreError> {
        if !matches!(super::BACKEND, Backend::Postgres) {
            return self.delete_in_batches("request_bodies", before).await;
        }
        let today = now.date_naive();
        for ahead in 0..=DAYS_AHEAD {
            self.make_partition(today + Duration::days(ahead)).await?;
        }
        let dropped = self.drop_partitions(before).await?;
        Ok(dropped + self.delete_in_batches("request_bodies_default", before).await?)
    }
}
