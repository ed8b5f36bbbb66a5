//! The billing watch, every minute: auto top-ups (prepaid credit below a team's threshold buys
//! more, within xAI's caps: a monthly maximum and five in 24 hours) and alerts to the team's
//! Admins — prepaid credit below their threshold, 80% and 100% of the month's invoiced limit,
//! promotional credit expiring within a week. Each alert is mailed once per crossing (recorded
//! with its mail in one transaction); the low-balance alert re-arms when the credit is back above
//! the threshold.

use tollgate_domain::ledger::format_usd;
use tollgate_domain::payments::cents;
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, AutoTopUp, Permission, RequestContext, SpendingLimits, TeamId, Ticks,
    billing_month, month_bounds,
};
use tollgate_store::BillingSettings;

use super::payments::{PaymentError, Payments};
use crate::Caller;
use crate::notices::BillingAlert;

/// What one watch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchRun {
    /// Automatic top-ups tried.
    pub auto_top_ups: usize,
    /// Alerts mailed.
    pub alerts: usize,
}

/// Promotional credit is announced this long before it expires.
const PROMO_NOTICE: chrono::Duration = chrono::Duration::days(7);

impl Payments {
    /// The caller's team's billing settings (Admins and management keys).
    pub async fn billing_settings(&self, caller: &Caller) -> Result<BillingSettings, PaymentError> {
        super::payments::require_admin(caller, "Only team Admins may see the billing settings")?;
        Ok(self.store.billing_settings(caller.team_id()).await?)
    }

    /// Sets the caller's team's auto top-up and low-balance alert (Admins and management keys).
    /// An auto top-up needs a payment provider; its amount is within the top-up bounds and at
    /// most its monthly maximum.
    pub async fn set_billing_settings(
        &self,
        caller: &Caller,
        settings: BillingSettings,
        context: &RequestContext,
    ) -> Result<BillingSettings, PaymentError> {
        if !caller.allows(Permission::ManageBilling) {
            return Err(PaymentError::Forbidden(
                "Only team Admins may change the billing settings",
            ));
        }
        if let Some(auto) = settings.auto_top_up {
            self.provider()?;
            self.check_amount(auto.amount_cents)?;
            if auto.monthly_max_cents < auto.amount_cents || auto.threshold.get() < 0 {
                // (The amount's own bounds were checked above.)
                return Err(PaymentError::InvalidAmount(
                    "the monthly maximum must be at least the top-up amount, and the threshold not negative".into(),
                ));
            }
        }
        if settings.low_balance_alert.is_some_and(|t| t.get() < 0) {
            return Err(PaymentError::InvalidAmount(
                "the alert threshold must not be negative".into(),
            ));
        }
        let now = self.clock.now();
        let description = match settings.auto_top_up {
            Some(AutoTopUp {
                threshold,
                amount_cents,
                monthly_max_cents,
            }) => format!(
                "Set auto top-up: ${} when prepaid credit is below ${}, at most ${} a month",
                format_usd(cents(amount_cents)),
                format_usd(threshold),
                format_usd(cents(monthly_max_cents))
            ),
            None => "Turned auto top-up off".to_owned(),
        };
        let description = match settings.low_balance_alert {
            Some(threshold) => format!("{description}; alert below ${}", format_usd(threshold)),
            None => format!("{description}; no low-balance alert"),
        };
        let audit = AuditEvent::success(
            now,
            Some(caller.team_id()),
            caller.actor(),
            AuditAction::SetBillingSettings,
            description,
            Some(format!("team:{}", caller.team_id())),
            context,
        );
        self.store
            .set_billing_settings(caller.team_id(), &settings, now, &audit)
            .await?;
        Ok(settings)
    }

    /// One round of the watch: auto top-ups, then alerts.
    pub async fn watch(&self, default_hard_limit: Ticks) -> Result<WatchRun, PaymentError> {
        let now = self.clock.now();
        let (month_start, _) = month_bounds(now);
        let mut run = WatchRun::default();
        for team in self.store.watched_teams().await? {
            if let Some(threshold) = team.settings.low_balance_alert {
                if team.prepaid < threshold {
                    let alert = BillingAlert::LowBalance {
                        prepaid: team.prepaid,
                        threshold,
                    };
                    if self.alert(team.team_id, "low_balance", "now", alert).await? {
                        run.alerts += 1;
                    }
                } else {
                    self.store.clear_alert(team.team_id, "low_balance", "now").await?;
                }
            }
            let Some(auto) = team.settings.auto_top_up else {
                continue;
            };
            if team.prepaid >= auto.threshold || team.top_up_pending || self.provider.is_none() {
                continue;
            }
            let (last_day, this_month) = self
                .store
                .auto_top_ups_since(team.team_id, now - chrono::Duration::hours(24), month_start)
                .await?;
            if !auto.allows(last_day, this_month) {
                continue;
            }
            run.auto_top_ups += 1;
            match self
                .purchase(
                    team.team_id,
                    auto.amount_cents,
                    true,
                    Actor::System,
                    &RequestContext::default(),
                )
                .await
            {
                Ok(_) => {}
                Err(
                    error @ (PaymentError::Declined(_)
                    | PaymentError::Refused(_)
                    | PaymentError::NoPaymentMethod
                    | PaymentError::InvalidAmount(_)),
                ) => {
                    tracing::info!(team.id = %team.team_id, %error, "an automatic top-up failed");
                    let why = error.to_string();
                    let key = format!("{}", now.format("%Y-%m-%d"));
                    let alert = BillingAlert::AutoTopUpFailed { why: &why };
                    if self.alert(team.team_id, "auto_top_up_failed", &key, alert).await? {
                        run.alerts += 1;
                    }
                }
                Err(other) => return Err(other),
            }
        }
        // The month's invoiced usage against the spending limit.
        let month = billing_month(now);
        for (team_id, owed) in self.store.invoiced_this_month(&month).await? {
            let (soft, hard_override) = self.store.spending_limits(team_id).await?;
            let limit = SpendingLimits {
                hard_auto: default_hard_limit,
                hard_override,
                soft,
            }
            .effective();
            if limit.get() <= 0 {
                continue;
            }
            let share = i128::from(owed.get()) * 100 / i128::from(limit.get());
            for percent in [100_u8, 80] {
                if share >= i128::from(percent) {
                    let alert = BillingAlert::InvoicedLimit { percent, owed, limit };
                    if self
                        .alert(team_id, &format!("invoiced_{percent}"), &month, alert)
                        .await?
                    {
                        run.alerts += 1;
                    }
                    break;
                }
            }
        }
        for (team_id, lot, remaining, expires_at) in self.store.lots_expiring(now, now + PROMO_NOTICE).await? {
            let alert = BillingAlert::PromoExpiring { remaining, expires_at };
            if self.alert(team_id, "promo_expiry", &lot.to_string(), alert).await? {
                run.alerts += 1;
            }
        }
        Ok(run)
    }

    /// Mails `alert` unless this crossing was mailed already.
    async fn alert(
        &self,
        team_id: TeamId,
        kind: &str,
        key: &str,
        alert: BillingAlert<'_>,
    ) -> Result<bool, PaymentError> {
        let now = self.clock.now();
        let mail = match (&self.notices, self.store.get_team(team_id).await) {
            (Some(notices), Ok(team)) => {
                notices.billing_alert(&team, alert, now, self.billing_recipients(team_id).await?)
            }
            _ => None,
        };
        let sent = self.store.record_alert(team_id, kind, key, now, mail.as_ref()).await?;
        if sent && let (Some(notices), Some(_)) = (&self.notices, &mail) {
            notices.queued();
        }
        Ok(sent)
    }

    /// Runs [`Self::watch`] every `every` until `stop`.
    pub fn spawn_watch(
        self,
        default_hard_limit: Ticks,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::jobs::every("billing watch", every, stop, move || {
            let payments = self.clone();
            async move { payments.watch(default_hard_limit).await.map(drop) }
        })
    }
}
