//! Invoices and receipts: issued in one transaction with their number, never changed but for
//! their payment state (the migrations' triggers refuse the rest).

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{Address, AuditEvent, BillingInfo, Invoice, IssuedLine, TeamId, Ticks, Timestamp, TopUp};
use uuid::Uuid;

use super::{DbRow, SqlStore, corrupt, insert_audit};
use crate::{Changed, InvoiceFilter, InvoicePayment, InvoiceStore, StoreError};

const INVOICE_COLUMNS: &str = "id, team_id, number, kind, month, top_up_id, corrects, status, subtotal, credit_used, total, \
     bill_name, bill_email, bill_line1, bill_line2, bill_city, bill_state, bill_postal_code, bill_country, \
     bill_tax_id_type, bill_tax_number, team_name, issued_at, paid_at, attempts, next_attempt_at, failure";

fn invoice_from_row(row: &DbRow) -> Result<Invoice, StoreError> {
    let country = row
        .try_get::<Option<String>, _>("bill_country")?
        .map(|c| c.parse().map_err(|e| corrupt("invoices.bill_country", e)))
        .transpose()?;
    Ok(Invoice {
        id: row.try_get("id")?,
        team_id: TeamId::from_uuid(row.try_get("team_id")?),
        number: row.try_get("number")?,
        kind: row
            .try_get::<String, _>("kind")?
            .parse()
            .map_err(|e| corrupt("invoices.kind", e))?,
        month: row.try_get("month")?,
        top_up_id: row.try_get("top_up_id")?,
        corrects: row.try_get("corrects")?,
        status: row
            .try_get::<String, _>("status")?
            .parse()
            .map_err(|e| corrupt("invoices.status", e))?,
        lines: Vec::new(),
        subtotal: Ticks::new(row.try_get("subtotal")?),
        credit_used: Ticks::new(row.try_get("credit_used")?),
        total: Ticks::new(row.try_get("total")?),
        billed_to: BillingInfo {
            name: row.try_get("bill_name")?,
            email: row.try_get("bill_email")?,
            address: Address {
                line1: row.try_get("bill_line1")?,
                line2: row.try_get("bill_line2")?,
                city: row.try_get("bill_city")?,
                state: row.try_get("bill_state")?,
                postal_code: row.try_get("bill_postal_code")?,
                country,
            },
            tax_id_type: row.try_get("bill_tax_id_type")?,
            tax_number: row.try_get("bill_tax_number")?,
        },
        team_name: row.try_get("team_name")?,
        issued_at: row.try_get("issued_at")?,
        paid_at: row.try_get("paid_at")?,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).map_err(|e| corrupt("invoices.attempts", e))?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        failure: row.try_get("failure")?,
    })
}

impl SqlStore {
    /// `rows` as invoices, each with its lines (one query for all of them).
    async fn with_lines(&self, rows: Vec<DbRow>) -> Result<Vec<Invoice>, StoreError> {
        let mut invoices = rows.iter().map(invoice_from_row).collect::<Result<Vec<_>, _>>()?;
        for invoice in &mut invoices {
            let lines = sqlx::query(
                "SELECT description, unit_type, unit_price, units, amount FROM invoice_lines \
                 WHERE invoice_id = $1 ORDER BY position",
            )
            .bind(invoice.id)
            .fetch_all(&self.read)
            .await?;
            invoice.lines = lines
                .iter()
                .map(|line| {
                    Ok(IssuedLine {
                        description: line.try_get("description")?,
                        unit_type: line.try_get("unit_type")?,
                        unit_price: Ticks::new(line.try_get("unit_price")?),
                        units: u64::try_from(line.try_get::<i64, _>("units")?)
                            .map_err(|e| corrupt("invoice_lines.units", e))?,
                        amount: Ticks::new(line.try_get("amount")?),
                    })
                })
                .collect::<Result<_, StoreError>>()?;
        }
        Ok(invoices)
    }

    async fn one_invoice(&self, row: Option<DbRow>) -> Result<Option<Invoice>, StoreError> {
        match row {
            Some(row) => Ok(self.with_lines(vec![row]).await?.pop()),
            None => Ok(None),
        }
    }
}

/// Inserts `invoice` numbered next in `prefix`'s series, with its lines, in `conn`'s
/// transaction; `None` when a unique rule refused it (the caller drops the transaction, and the
/// counter goes back with it).
async fn insert_invoice(
    conn: &mut <super::Db as sqlx::Database>::Connection,
    invoice: &Invoice,
    prefix: &str,
) -> Result<Option<Invoice>, StoreError> {
    // The counter row is locked by this upsert until commit: concurrent issuers take turns,
    // and a rollback gives the number back.
    let n: i64 = sqlx::query_scalar(
        "INSERT INTO invoice_series (series, last) VALUES ($1, 1) \
         ON CONFLICT (series) DO UPDATE SET last = invoice_series.last + 1 RETURNING last",
    )
    .bind(prefix)
    .fetch_one(&mut *conn)
    .await?;
    let team_name: String = sqlx::query_scalar("SELECT name FROM teams WHERE id = $1")
        .bind(invoice.team_id.as_uuid())
        .fetch_one(&mut *conn)
        .await?;
    let number = tollgate_domain::invoices::invoice_number(prefix, n);
    let billed = &invoice.billed_to;
    let inserted = sqlx::query(&format!(
        "INSERT INTO invoices ({INVOICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27) ON CONFLICT DO NOTHING"
    ))
    .bind(invoice.id)
    .bind(invoice.team_id.as_uuid())
    .bind(&number)
    .bind(invoice.kind.as_str())
    .bind(&invoice.month)
    .bind(invoice.top_up_id)
    .bind(invoice.corrects)
    .bind(invoice.status.as_str())
    .bind(invoice.subtotal.get())
    .bind(invoice.credit_used.get())
    .bind(invoice.total.get())
    .bind(&billed.name)
    .bind(&billed.email)
    .bind(&billed.address.line1)
    .bind(&billed.address.line2)
    .bind(&billed.address.city)
    .bind(&billed.address.state)
    .bind(&billed.address.postal_code)
    .bind(billed.address.country.map(|c| c.to_string()))
    .bind(&billed.tax_id_type)
    .bind(&billed.tax_number)
    .bind(&team_name)
    .bind(invoice.issued_at)
    .bind(invoice.paid_at)
    .bind(i32::try_from(invoice.attempts).unwrap_or(i32::MAX))
    .bind(invoice.next_attempt_at)
    .bind(invoice.failure.as_deref())
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(None);
    }
    for (position, line) in invoice.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO invoice_lines (invoice_id, position, description, unit_type, unit_price, units, amount) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(invoice.id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(&line.description)
        .bind(&line.unit_type)
        .bind(line.unit_price.get())
        .bind(i64::try_from(line.units).unwrap_or(i64::MAX))
        .bind(line.amount.get())
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(Invoice {
        number,
        team_name,
        ..invoice.clone()
    }))
}

#[async_trait]
impl InvoiceStore for SqlStore {
    async fn months_to_invoice(&self, before_month: &str) -> Result<Vec<(TeamId, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.team_id, m.month FROM invoice_months m WHERE m.month < $1 AND m.owed > 0 \
             AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.team_id = m.team_id AND i.month = m.month \
             AND i.kind = 'monthly') ORDER BY m.month, m.team_id",
        )
        .bind(before_month)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| Ok((TeamId::from_uuid(row.try_get("team_id")?), row.try_get("month")?)))
            .collect()
    }

    async fn top_ups_without_receipt(&self, limit: u32) -> Result<Vec<TopUp>, StoreError> {
        let ids: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT t.team_id, t.id FROM top_ups t WHERE t.status = 'succeeded' \
             AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.top_up_id = t.id) ORDER BY t.created_at LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        let mut top_ups = Vec::with_capacity(ids.len());
        for (team, id) in ids {
            if let Some(top_up) = crate::PaymentStore::top_up(self, TeamId::from_uuid(team), id).await? {
                top_ups.push(top_up);
            }
        }
        Ok(top_ups)
    }

    async fn issue_invoice(
        &self,
        invoice: &Invoice,
        prefix: &str,
        audit: &AuditEvent,
    ) -> Result<Option<Invoice>, StoreError> {
        let mut tx = self.write.begin().await?;
        let Some(issued) = insert_invoice(&mut tx, invoice, prefix).await? else {
            // Dropped unsaved: the counter goes back.
            return Ok(None);
        };
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(Some(issued))
    }

    async fn issue_credit_note(
        &self,
        note: &Invoice,
        prefix: &str,
        entry: Option<&tollgate_domain::LedgerEntry>,
        audit: &AuditEvent,
    ) -> Result<Invoice, StoreError> {
        let target_id = note
            .corrects
            .ok_or_else(|| corrupt("invoices.corrects", "a credit note that corrects nothing"))?;
        let mut tx = self.write.begin().await?;
        // The corrected invoice's row is locked (PostgreSQL) or the writer is alone (SQLite):
        // concurrent credit notes take turns, so together they never exceed the invoice.
        let lock = if matches!(super::BACKEND, crate::Backend::Postgres) {
            " FOR UPDATE"
        } else {
            ""
        };
        let target = sqlx::query(&format!(
            "SELECT number, total, status FROM invoices WHERE id = $1 AND team_id = $2{lock}"
        ))
        .bind(target_id)
        .bind(note.team_id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let (number, total, status): (String, i64, String) = (
            target.try_get("number")?,
            target.try_get("total")?,
            target.try_get("status")?,
        );
        let credited: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM invoices WHERE corrects = $1 AND kind = 'credit_note'",
        )
        .bind(target_id)
        .fetch_one(&mut *tx)
        .await?;
        if credited.saturating_add(note.total.get()) > total {
            return Err(StoreError::Conflict {
                constraint: "credit_notes_within_invoice".into(),
            });
        }
        let issued = insert_invoice(&mut tx, note, prefix)
            .await?
            .ok_or_else(|| corrupt("invoices.id", "a new credit note's id was taken"))?;
        if let Some(entry) = entry {
            super::ledger::write_entry(&mut tx, entry, &audit.actor).await?;
        }
        let unpaid = status == "open" || status == "failed";
        if unpaid && credited.saturating_add(note.total.get()) == total {
            // Credited in full: nothing is left to charge, and it blocks nobody.
            sqlx::query("UPDATE invoices SET status = 'void', next_attempt_at = NULL WHERE id = $1")
                .bind(target_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE teams SET blocked_invoice = NULL WHERE id = $1 AND blocked_invoice = $2")
                .bind(note.team_id.as_uuid())
                .bind(&number)
                .execute(&mut *tx)
                .await?;
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(issued)
    }

    async fn credited(&self, invoice_id: Uuid) -> Result<Ticks, StoreError> {
        let credited: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM invoices WHERE corrects = $1 AND kind = 'credit_note'",
        )
        .bind(invoice_id)
        .fetch_one(&self.read)
        .await?;
        Ok(Ticks::new(credited))
    }

    async fn invoices(&self, team_id: TeamId, filter: &InvoiceFilter) -> Result<Vec<Invoice>, StoreError> {
        let mut sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE team_id = $1");
        if filter.month.is_some() {
            sql.push_str(" AND month = $2");
        }
        if filter.since_month.is_some() {
            sql.push_str(" AND month >= $3");
        }
        sql.push_str(" ORDER BY issued_at DESC, number DESC LIMIT $4");
        let rows = sqlx::query(&sql)
            .bind(team_id.as_uuid())
            .bind(filter.month.as_deref().unwrap_or_default())
            .bind(filter.since_month.as_deref().unwrap_or_default())
            .bind(i64::from(filter.limit.max(1)))
            .fetch_all(&self.read)
            .await?;
        let mut invoices = self.with_lines(rows).await?;
        if !filter.ids.is_empty() {
            invoices.retain(|invoice| filter.ids.contains(&invoice.id));
        }
        Ok(invoices)
    }

    async fn invoice(&self, team_id: TeamId, id: Uuid) -> Result<Option<Invoice>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1 AND team_id = $2"
        ))
        .bind(id)
        .bind(team_id.as_uuid())
        .fetch_optional(&self.read)
        .await?;
        self.one_invoice(row).await
    }

    async fn invoice_by_number(&self, number: &str) -> Result<Option<Invoice>, StoreError> {
        let row = sqlx::query(&format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE number = $1"))
            .bind(number)
            .fetch_optional(&self.read)
            .await?;
        self.one_invoice(row).await
    }

    async fn invoice_by_payment(&self, payment_ref: &str) -> Result<Option<Invoice>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {INVOICE_COLUMNS} FROM invoices WHERE payment_ref = $1"
        ))
        .bind(payment_ref)
        .fetch_optional(&self.read)
        .await?;
        self.one_invoice(row).await
    }

    async fn invoices_due(&self, now: Timestamp, limit: u32) -> Result<Vec<Invoice>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INVOICE_COLUMNS} FROM invoices WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1 \
             AND status IN ('open', 'failed') ORDER BY next_attempt_at LIMIT $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        self.with_lines(rows).await
    }

    async fn claim_invoice_attempt(
        &self,
        invoice_id: Uuid,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "UPDATE invoices SET next_attempt_at = $1 WHERE id = $2 AND next_attempt_at IS NOT NULL \
             AND next_attempt_at <= $3 AND status IN ('open', 'failed')",
        )
        .bind(until)
        .bind(invoice_id)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn teams_to_block(&self, before: Timestamp) -> Result<Vec<(TeamId, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.team_id, MIN(i.number) AS number FROM invoices i JOIN teams t ON t.id = i.team_id \
             WHERE i.kind = 'monthly' AND i.status IN ('open', 'failed') AND i.issued_at < $1 \
             AND t.blocked_invoice IS NULL AND t.deleted_at IS NULL GROUP BY i.team_id",
        )
        .bind(before)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| Ok((TeamId::from_uuid(row.try_get("team_id")?), row.try_get("number")?)))
            .collect()
    }

    async fn block_team(
        &self,
        team_id: TeamId,
        number: &str,
        audit: &AuditEvent,
        mail: Option<&tollgate_domain::OutboundMail>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let updated = sqlx::query("UPDATE teams SET blocked_invoice = $1 WHERE id = $2 AND blocked_invoice IS NULL")
            .bind(number)
            .bind(team_id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        if let Some(mail) = mail {
            super::insert_mail(&mut tx, std::slice::from_ref(mail)).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn set_invoice_payment(&self, change: &InvoicePayment<'_>) -> Result<Changed, StoreError> {
        let mut tx = self.write.begin().await?;
        if let Some((id, kind)) = change.event {
            let inserted = sqlx::query(
                "INSERT INTO payment_events (event_id, event_type, received_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(id)
            .bind(kind)
            .bind(change.at)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Ok(Changed::Duplicate);
            }
        }
        let updated = sqlx::query(
            "UPDATE invoices SET status = $1, attempts = $2, next_attempt_at = $3, failure = $4, \
             payment_ref = COALESCE($5, payment_ref), paid_at = $6 WHERE id = $7 AND team_id = $8 AND status = $9",
        )
        .bind(change.status.as_str())
        .bind(i32::try_from(change.attempts).unwrap_or(i32::MAX))
        .bind(change.next_attempt_at)
        .bind(change.failure)
        .bind(change.payment_ref)
        .bind(change.paid_at)
        .bind(change.invoice_id)
        .bind(change.team_id.as_uuid())
        .bind(change.expect.as_str())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(Changed::Stale);
        }
        if change.status == tollgate_domain::InvoiceStatus::Paid {
            sqlx::query(
                "UPDATE teams SET blocked_invoice = NULL WHERE id = $1 \
                 AND blocked_invoice = (SELECT number FROM invoices WHERE id = $2)",
            )
            .bind(change.team_id.as_uuid())
            .bind(change.invoice_id)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(audit) = change.audit {
            insert_audit(&mut tx, &self.audit_key, audit).await?;
        }
        if let Some(mail) = change.mail {
            super::insert_mail(&mut tx, std::slice::from_ref(mail)).await?;
        }
        if let Some(entry) = change.entry {
            let actor = change.audit.map_or(tollgate_domain::Actor::System, |a| a.actor.clone());
            super::ledger::write_entry(&mut tx, entry, &actor).await?;
        }
        tx.commit().await?;
        Ok(Changed::Applied)
    }
}
