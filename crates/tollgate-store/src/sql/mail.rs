//! The outbox.

use async_trait::async_trait;
use tollgate_domain::{MailId, OutboundMail, QueuedMail, Timestamp};

use crate::{MailStore, StoreError};

use super::{MAIL_COLUMNS, SqlStore, insert_mail, mail_from_row};

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
