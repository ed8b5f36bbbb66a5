//! Auto top-up and alert settings, and the alerts sent (once per crossing).

use async_trait::async_trait;
use sqlx::Row as _;
use tollgate_domain::{AuditEvent, AutoTopUp, OutboundMail, TeamId, Ticks, Timestamp};
use uuid::Uuid;

use super::{DbRow, SqlStore, insert_audit, insert_mail};
use crate::{AlertStore, BillingSettings, StoreError, WatchedTeam};

fn settings_from_row(row: &DbRow) -> Result<BillingSettings, StoreError> {
    let threshold: Option<i64> = row.try_get("auto_threshold")?;
    let amount: Option<i64> = row.try_get("auto_amount_cents")?;
    let monthly: Option<i64> = row.try_get("auto_monthly_cents")?;
    Ok(BillingSettings {
        auto_top_up: match (threshold, amount, monthly) {
            (Some(threshold), Some(amount_cents), Some(monthly_max_cents)) => Some(AutoTopUp {
                threshold: Ticks::new(threshold),
                amount_cents,
                monthly_max_cents,
            }),
            _ => None,
        },
        low_balance_alert: row.try_get::<Option<i64>, _>("low_balance_alert")?.map(Ticks::new),
    })
}

#[async_trait]
impl AlertStore for SqlStore {
    async fn billing_settings(&self, team_id: TeamId) -> Result<BillingSettings, StoreError> {
        let row = sqlx::query(
            "SELECT auto_threshold, auto_amount_cents, auto_monthly_cents, low_balance_alert \
             FROM team_billing_settings WHERE team_id = $1",
        )
        .bind(team_id.as_uuid())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map_or(Ok(BillingSettings::default()), settings_from_row)
    }

    async fn set_billing_settings(
        &self,
        team_id: TeamId,
        settings: &BillingSettings,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError> {
        let auto = settings.auto_top_up;
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO team_billing_settings (team_id, auto_threshold, auto_amount_cents, auto_monthly_cents, \
             low_balance_alert, updated_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (team_id) DO UPDATE SET \
             auto_threshold = $2, auto_amount_cents = $3, auto_monthly_cents = $4, low_balance_alert = $5, \
             updated_at = $6",
        )
        .bind(team_id.as_uuid())
        .bind(auto.map(|a| a.threshold.get()))
        .bind(auto.map(|a| a.amount_cents))
        .bind(auto.map(|a| a.monthly_max_cents))
        .bind(settings.low_balance_alert.map(Ticks::get))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, &self.audit_key, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn watched_teams(&self) -> Result<Vec<WatchedTeam>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.team_id, s.auto_threshold, s.auto_amount_cents, s.auto_monthly_cents, s.low_balance_alert, \
             COALESCE(b.prepaid, 0) AS prepaid, \
             EXISTS (SELECT 1 FROM top_ups p WHERE p.team_id = s.team_id AND p.status = 'pending') AS pending \
             FROM team_billing_settings s JOIN teams t ON t.id = s.team_id \
             LEFT JOIN team_balances b ON b.team_id = s.team_id \
             WHERE t.deleted_at IS NULL AND (s.auto_threshold IS NOT NULL OR s.low_balance_alert IS NOT NULL)",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(WatchedTeam {
                    team_id: TeamId::from_uuid(row.try_get("team_id")?),
                    settings: settings_from_row(row)?,
                    prepaid: Ticks::new(row.try_get("prepaid")?),
                    top_up_pending: row.try_get("pending")?,
                })
            })
            .collect()
    }

    async fn auto_top_ups_since(
        &self,
        team_id: TeamId,
        day_ago: Timestamp,
        month_start: Timestamp,
    ) -> Result<(u32, i64), StoreError> {
        let row = sqlx::query(
            "SELECT \
             CAST(COALESCE(SUM(CASE WHEN created_at >= $2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS last_day, \
             CAST(COALESCE(SUM(CASE WHEN created_at >= $3 AND status IN ('pending', 'succeeded') \
                  THEN amount_cents ELSE 0 END), 0) AS BIGINT) AS this_month \
             FROM top_ups WHERE team_id = $1 AND automatic = $4",
        )
        .bind(team_id.as_uuid())
        .bind(day_ago)
        .bind(month_start)
        .bind(true)
        .fetch_one(&self.read)
        .await?;
        let last_day: i64 = row.try_get("last_day")?;
        Ok((u32::try_from(last_day).unwrap_or(u32::MAX), row.try_get("this_month")?))
    }

    async fn record_alert(
        &self,
        team_id: TeamId,
        kind: &str,
        key: &str,
        at: Timestamp,
        mail: Option<&OutboundMail>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO billing_alerts (team_id, kind, alert_key, sent_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id, kind, alert_key) DO NOTHING",
        )
        .bind(team_id.as_uuid())
        .bind(kind)
        .bind(key)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(mail) = mail {
            insert_mail(&mut tx, std::slice::from_ref(mail)).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn clear_alert(&self, team_id: TeamId, kind: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM billing_alerts WHERE team_id = $1 AND kind = $2 AND alert_key = $3")
            .bind(team_id.as_uuid())
            .bind(kind)
            .bind(key)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn invoiced_this_month(&self, month: &str) -> Result<Vec<(TeamId, Ticks)>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.team_id, m.owed FROM invoice_months m JOIN teams t ON t.id = m.team_id \
             WHERE m.month = $1 AND m.owed > 0 AND t.deleted_at IS NULL",
        )
        .bind(month)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    TeamId::from_uuid(row.try_get("team_id")?),
                    Ticks::new(row.try_get("owed")?),
                ))
            })
            .collect()
    }

    async fn lots_expiring(
        &self,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<(TeamId, Uuid, Ticks, Timestamp)>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.team_id, l.id, l.remaining, l.expires_at FROM credit_lots l JOIN teams t ON t.id = l.team_id \
             WHERE l.remaining > 0 AND l.expires_at >= $1 AND l.expires_at < $2 AND t.deleted_at IS NULL",
        )
        .bind(now)
        .bind(until)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    TeamId::from_uuid(row.try_get("team_id")?),
                    row.try_get("id")?,
                    Ticks::new(row.try_get("remaining")?),
                    row.try_get("expires_at")?,
                ))
            })
            .collect()
    }
}
