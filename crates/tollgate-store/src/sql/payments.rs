//! Payments: the team's customer at the provider, billing details, top-ups and the provider
//! events processed.

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{Address, AuditEvent, BillingInfo, TeamId, Timestamp, TopUp};
use uuid::Uuid;

use super::{DbRow, SqlStore, corrupt, insert_audit};
use crate::{Changed, PaymentStore, StoreError, TopUpChange};

const TOP_UP_COLUMNS: &str = "id, team_id, amount_cents, status, provider_ref, payment_method, failure, \
     taken_back_cents, created_at, updated_at, automatic, checkout_id, checkout_url";

fn top_up_from_row(row: &DbRow) -> Result<TopUp, StoreError> {
    Ok(TopUp {
        id: row.try_get("id")?,
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        amount_cents: row.try_get("amount_cents")?,
        status: row
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|e| corrupt("top_ups.status", e))?,
        provider_ref: row.try_get("provider_ref")?,
        payment_method: row.try_get("payment_method")?,
        failure: row.try_get("failure")?,
        taken_back_cents: row.try_get("taken_back_cents")?,
        automatic: row.try_get("automatic")?,
        checkout: row
            .try_get::<Option<String>, _>("checkout_id")?
            .zip(row.try_get::<Option<String>, _>("checkout_url")?),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Records a provider event in `conn`'s transaction; `false` when it was recorded before.
async fn record_event(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    event_id: &str,
    event_type: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO payment_events (event_id, event_type, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(event_type)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

#[async_trait]
impl PaymentStore for SqlStore {
    async fn payment_customer(&self, team_id: TeamId) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT customer_id FROM payment_customers WHERE team_id = $1")
                .bind(team_id.as_uuid())
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn save_payment_customer(
        &self,
        team_id: TeamId,
        provider: &str,
        customer_id: &str,
        at: Timestamp,
    ) -> Result<String, StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO payment_customers (team_id, provider, customer_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id) DO NOTHING",
        )
        .bind(team_id.as_uuid())
        .bind(provider)
        .bind(customer_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let recorded: String = sqlx::query_scalar("SELECT customer_id FROM payment_customers WHERE team_id = $1")
            .bind(team_id.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn billing_info(&self, team_id: TeamId) -> Result<Option<BillingInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT name, email, line1, line2, city, state, postal_code, country, tax_id_type, tax_number \
             FROM billing_info WHERE team_id = $1",
        )
        .bind(team_id.as_uuid())
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let country = row
            .try_get::<Option<String>, _>("country")?
            .map(|c| c.parse().map_err(|e| corrupt("billing_info.country", e)))
            .transpose()?;
        Ok(Some(BillingInfo {
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            address: Address {
                line1: row.try_get("line1")?,
                line2: row.try_get("line2")?,
                city: row.try_get("city")?,
                state: row.try_get("state")?,
                postal_code: row.try_get("postal_code")?,
                country,
            },
            tax_id_type: row.try_get("tax_id_type")?,
            tax_number: row.try_get("tax_number")?,
        }))
    }

    async fn set_billing_info(
        &self,
        team_id: TeamId,
        info: &BillingInfo,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO billing_info (team_id, name, email, line1, line2, city, state, postal_code, country, \
             tax_id_type, tax_number, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (team_id) DO UPDATE SET name = $2, email = $3, line1 = $4, line2 = $5, city = $6, \
             state = $7, postal_code = $8, country = $9, tax_id_type = $10, tax_number = $11, updated_at = $12",
        )
        .bind(team_id.as_uuid())
        .bind(&info.name)
        .bind(&info.email)
        .bind(&info.address.line1)
        .bind(&info.address.line2)
        .bind(&info.address.city)
        .bind(&info.address.state)
        .bind(&info.address.postal_code)
        .bind(info.address.country.map(|c| c.to_string()))
        .bind(&info.tax_id_type)
        .bind(&info.tax_number)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn start_top_up(&self, top_up: &TopUp, audit: &AuditEvent) -> Result<TopUp, StoreError> {
        let mut tx = self.write.begin().await?;
        // The partial unique index allows one pending top-up per team; a conflict with it (or
        // the id) writes nothing, and the pending one is returned.
        let inserted = sqlx::query(&format!(
            "INSERT INTO top_ups ({TOP_UP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(top_up.id)
        .bind(top_up.team_id.as_uuid())
        .bind(top_up.amount_cents)
        .bind(top_up.status.as_str())
        .bind(top_up.provider_ref.as_deref())
        .bind(top_up.payment_method.as_deref())
        .bind(top_up.failure.as_deref())
        .bind(top_up.taken_back_cents)
        .bind(top_up.created_at)
        .bind(top_up.updated_at)
        .bind(top_up.automatic)
        .bind(top_up.checkout.as_ref().map(|(id, _)| id.as_str()))
        .bind(top_up.checkout.as_ref().map(|(_, url)| url.as_str()))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            let row = sqlx::query(&format!(
                "SELECT {TOP_UP_COLUMNS} FROM top_ups WHERE team_id = $1 AND status = 'pending'"
            ))
            .bind(top_up.team_id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
            return match row {
                Some(row) => top_up_from_row(&row),
                None => Err(corrupt("top_ups.id", "a new top-up's id was taken")),
            };
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(top_up.clone())
    }

    async fn top_up(&self, team_id: TeamId, id: Uuid) -> Result<Option<TopUp>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TOP_UP_COLUMNS} FROM top_ups WHERE id = $1 AND team_id = $2"
        ))
        .bind(id)
        .bind(team_id.as_uuid())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(top_up_from_row).transpose()
    }

    async fn top_up_by_ref(&self, provider_ref: &str) -> Result<Option<TopUp>, StoreError> {
        let row = sqlx::query(&format!("SELECT {TOP_UP_COLUMNS} FROM top_ups WHERE provider_ref = $1"))
            .bind(provider_ref)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(top_up_from_row).transpose()
    }

    async fn pending_top_up(&self, team_id: TeamId) -> Result<Option<TopUp>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {TOP_UP_COLUMNS} FROM top_ups WHERE team_id = $1 AND status = 'pending'"
        ))
        .bind(team_id.as_uuid())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(top_up_from_row).transpose()
    }

    async fn top_ups(&self, team_id: TeamId, limit: u32) -> Result<Vec<TopUp>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TOP_UP_COLUMNS} FROM top_ups WHERE team_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(team_id.as_uuid())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(top_up_from_row).collect()
    }

    async fn change_top_up(&self, change: &TopUpChange<'_>) -> Result<Changed, StoreError> {
        let mut tx = self.write.begin().await?;
        if let Some((id, kind)) = change.event
            && !record_event(&mut tx, id, kind, change.at).await?
        {
            return Ok(Changed::Duplicate);
        }
        let updated = sqlx::query(
            "UPDATE top_ups SET status = $1, failure = COALESCE($2, failure), taken_back_cents = $3, \
             provider_ref = COALESCE($4, provider_ref), payment_method = COALESCE($5, payment_method), \
             updated_at = $6 WHERE id = $7 AND status = $8 AND taken_back_cents = $9",
        )
        .bind(change.status.as_str())
        .bind(change.failure)
        .bind(change.taken_back_cents)
        .bind(change.provider_ref)
        .bind(change.payment_method)
        .bind(change.at)
        .bind(change.top_up_id)
        .bind(change.expect_status.as_str())
        .bind(change.expect_taken_back_cents)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            // Rolled back: the event is not recorded, so it is processed again once re-read.
            return Ok(Changed::Stale);
        }
        if let Some(entry) = change.entry {
            let actor = change
                .audit
                .map_or(tollgate_domain::Actor::System, |audit| audit.actor.clone());
            super::ledger::write_entry(&mut tx, entry, &actor).await?;
        }
        if let Some(audit) = change.audit {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        tx.commit().await?;
        Ok(Changed::Applied)
    }

    async fn payment_event_seen(&self, event_id: &str) -> Result<bool, StoreError> {
        let seen: Option<String> = sqlx::query_scalar("SELECT event_id FROM payment_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(seen.is_some())
    }

    async fn set_top_up_checkout(&self, id: Uuid, checkout_id: &str, checkout_url: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE top_ups SET checkout_id = $1, checkout_url = $2 WHERE id = $3")
            .bind(checkout_id)
            .bind(checkout_url)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn record_payment_event(&self, event_id: &str, event_type: &str, at: Timestamp) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let new = record_event(&mut tx, event_id, event_type, at).await?;
        tx.commit().await?;
        Ok(new)
    }
}
