//! Invoices: a month's invoiced usage is issued once the month is over (by the injected clock,
//! UTC, after `close_grace`), then charged to the team's default payment method; a failed
//! charge is retried on a schedule and, after `unpaid_grace`, blocks the team until paid (by a
//! charge, or the operator marking it paid). Prepaid purchases get receipts. Numbers come from
//! one gap-free series; an issued invoice never changes (the store refuses it).

use tollgate_domain::invoices::retry_after;
use tollgate_domain::ledger::format_usd;
use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Invoice, InvoiceKind, InvoiceStatus, IssuedLine, Outcome, RequestContext, TeamId,
    Ticks, Timestamp, TopUp, billing_month, month_bounds,
};
use tollgate_store::{InvoiceFilter, InvoicePayment};

use super::payments::{Payment, PaymentError, PaymentRequest, PaymentStatus, Payments, ProviderError, Purpose};
use crate::Caller;

/// How long a node's claim on a charge attempt lasts.
const ATTEMPT_CLAIM: chrono::Duration = chrono::Duration::minutes(10);

/// What one run of the billing job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BillingRun {
    /// Monthly invoices issued.
    pub invoices: usize,
    /// Receipts issued.
    pub receipts: usize,
    /// Charge attempts made.
    pub charges: usize,
    /// Teams blocked for an unpaid invoice.
    pub blocked: usize,
}

/// The first instant of billing month `month` (`2026-11`).
fn month_start(month: &str) -> Option<Timestamp> {
    let date = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

fn month_name(month: &str) -> String {
    month_start(month).map_or_else(|| month.to_owned(), |at| at.format("%B %Y").to_string())
}

impl Payments {
    /// One run of the billing job: issues the invoices of months that are over, receipts for
    /// purchases that have none, and charges what is due.
    pub async fn run_billing(&self) -> Result<BillingRun, PaymentError> {
        let invoices = self.close_months().await?;
        let receipts = self.issue_receipts().await?;
        let charges = self.charge_due().await?;
        let blocked = self.block_unpaid().await?;
        Ok(BillingRun {
            invoices,
            receipts,
            charges,
            blocked,
        })
    }

    /// Blocks every team with a monthly invoice unpaid `unpaid_grace` after issue (only with a
    /// payment provider: without one nothing is charged, so nothing blocks). Returns how many.
    pub async fn block_unpaid(&self) -> Result<usize, PaymentError> {
        if self.provider.is_none() {
            return Ok(0);
        }
        let now = self.clock.now();
        let mut blocked = 0;
        for (team_id, number) in self.store.teams_to_block(now - self.settings.unpaid_grace).await? {
            let audit = AuditEvent::success(
                now,
                Some(team_id),
                Actor::System,
                AuditAction::BlockTeam,
                format!("The team's requests are stopped until invoice {number} is paid"),
                Some(format!("team:{team_id}")),
                &RequestContext::default(),
            );
            let mail = match (&self.notices, self.store.get_team(team_id).await) {
                (Some(notices), Ok(team)) => {
                    notices.team_blocked(&team, &number, now, self.billing_recipients(team_id).await?)
                }
                _ => None,
            };
            if self.store.block_team(team_id, &number, &audit, mail.as_ref()).await? {
                blocked += 1;
                if let (Some(notices), Some(_)) = (&self.notices, &mail) {
                    notices.queued();
                }
            }
        }
        Ok(blocked)
    }

    /// Runs [`Self::run_billing`] every `every` until `stop`.
    pub fn spawn_billing(
        self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::jobs::every("billing", every, stop, move || {
            let payments = self.clone();
            async move { payments.run_billing().await.map(drop) }
        })
    }

    /// Issues an invoice for every team's month that is over (by `close_grace`) with invoiced
    /// usage and no invoice yet, and charges it when a provider is configured. Returns how many.
    pub async fn close_months(&self) -> Result<usize, PaymentError> {
        let now = self.clock.now();
        let open_month = billing_month(now - self.settings.close_grace);
        let mut issued = 0;
        for (team_id, month) in self.store.months_to_invoice(&open_month).await? {
            if let Some(invoice) = self.issue_monthly(team_id, &month).await? {
                issued += 1;
                if invoice.next_attempt_at.is_some() && self.claim(&invoice).await? {
                    self.charge_invoice(invoice).await?;
                }
            }
        }
        Ok(issued)
    }

    async fn issue_monthly(&self, team_id: TeamId, month: &str) -> Result<Option<Invoice>, PaymentError> {
        let Some(start) = month_start(month) else {
            return Ok(None);
        };
        let (from, to) = month_bounds(start);
        let usage = self.store.month_usage(team_id, from, to).await?;
        let lines: Vec<IssuedLine> = usage
            .lines
            .iter()
            .map(|line| IssuedLine {
                description: format!("{} {}", line.model, line.kind.label()),
                unit_type: "tokens".into(),
                unit_price: line.unit_price,
                units: line.tokens,
                amount: line.amount,
            })
            .collect();
        let subtotal = lines.iter().fold(Ticks::ZERO, |sum, line| {
            Ticks::new(sum.get().saturating_add(line.amount.get()))
        });
        let now = self.clock.now();
        let total = usage.invoiced;
        let chargeable = self.provider.is_some() && total.to_cents_rounded() > 0;
        let invoice = Invoice {
            id: uuid::Uuid::now_v7(),
            team_id,
            number: String::new(),
            kind: InvoiceKind::Monthly,
            month: month.to_owned(),
            top_up_id: None,
            corrects: None,
            // Less than half a cent is never charged.
            status: if total.to_cents_rounded() > 0 {
                InvoiceStatus::Open
            } else {
                InvoiceStatus::Void
            },
            lines,
            subtotal,
            credit_used: usage.credit_used,
            total,
            billed_to: self.store.billing_info(team_id).await?.unwrap_or_default(),
            team_name: String::new(),
            issued_at: now,
            paid_at: None,
            attempts: 0,
            next_attempt_at: chargeable.then_some(now),
            failure: None,
        };
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            Actor::System,
            AuditAction::IssueInvoice,
            format!(
                "Issued the invoice for {}: ${} of invoiced usage",
                month_name(month),
                format_usd(total)
            ),
            Some(format!("invoice:{}", invoice.id)),
            &RequestContext::default(),
        );
        Ok(self
            .store
            .issue_invoice(&invoice, &self.settings.invoice_prefix, &audit)
            .await?)
    }

    /// Issues receipts for succeeded purchases that have none (a node stopped between the
    /// grant and its receipt). Returns how many.
    pub async fn issue_receipts(&self) -> Result<usize, PaymentError> {
        let mut issued = 0;
        for top_up in self.store.top_ups_without_receipt(100).await? {
            if self.issue_receipt(&top_up).await?.is_some() {
                issued += 1;
            }
        }
        Ok(issued)
    }

    /// The receipt of a succeeded purchase (once; `None` if it has one).
    pub(super) async fn issue_receipt(&self, top_up: &TopUp) -> Result<Option<Invoice>, PaymentError> {
        if top_up.status != tollgate_domain::TopUpStatus::Succeeded {
            return Ok(None);
        }
        let now = self.clock.now();
        let amount = top_up.credit();
        let invoice = Invoice {
            id: uuid::Uuid::now_v7(),
            team_id: top_up.team_id,
            number: String::new(),
            kind: InvoiceKind::Receipt,
            month: billing_month(now),
            top_up_id: Some(top_up.id),
            corrects: None,
            status: InvoiceStatus::Paid,
            lines: vec![IssuedLine {
                description: "Prepaid API credit".into(),
                unit_type: "credit".into(),
                unit_price: amount,
                units: 1,
                amount,
            }],
            subtotal: amount,
            credit_used: Ticks::ZERO,
            total: amount,
            billed_to: self.store.billing_info(top_up.team_id).await?.unwrap_or_default(),
            team_name: String::new(),
            issued_at: now,
            paid_at: Some(top_up.updated_at),
            attempts: 1,
            next_attempt_at: None,
            failure: None,
        };
        let audit = AuditEvent::success(
            now,
            Some(top_up.team_id),
            Actor::System,
            AuditAction::IssueInvoice,
            format!("Issued the receipt for ${} of prepaid credit", format_usd(amount)),
            Some(format!("invoice:{}", invoice.id)),
            &RequestContext::default(),
        );
        Ok(self
            .store
            .issue_invoice(&invoice, &self.settings.invoice_prefix, &audit)
            .await?)
    }

    /// Charges every unpaid invoice whose attempt is due. Returns how many were tried.
    pub async fn charge_due(&self) -> Result<usize, PaymentError> {
        if self.provider.is_none() {
            return Ok(0);
        }
        let mut tried = 0;
        for invoice in self.store.invoices_due(self.clock.now(), 100).await? {
            if self.claim(&invoice).await? {
                tried += 1;
                self.charge_invoice(invoice).await?;
            }
        }
        Ok(tried)
    }

    /// Claims an invoice's due attempt, so that of the nodes running the billing job one charges
    /// it; should that node stop midway, another tries after [`ATTEMPT_CLAIM`].
    async fn claim(&self, invoice: &Invoice) -> Result<bool, PaymentError> {
        let now = self.clock.now();
        Ok(self
            .store
            .claim_invoice_attempt(invoice.id, now, now + ATTEMPT_CLAIM)
            .await?)
    }

    /// One charge attempt of `invoice` with the team's default payment method: authorized, the
    /// card's country checked, then captured (paid) or cancelled (failed, retried later).
    async fn charge_invoice(&self, invoice: Invoice) -> Result<Invoice, PaymentError> {
        let provider = self.provider()?;
        let attempt = invoice.attempts + 1;
        let customer = self.store.payment_customer(invoice.team_id).await?;
        let default = match &customer {
            Some(customer) => provider.payment_methods(customer).await?.1,
            None => None,
        };
        let (Some(customer), Some(method)) = (customer, default) else {
            return self
                .invoice_failed(&invoice, attempt, "the team has no default payment method", None, None)
                .await;
        };
        // Credit notes lower what is due.
        let due = Ticks::new(invoice.total.get() - self.store.credited(invoice.id).await?.get());
        if due.to_cents_rounded() <= 0 {
            return Ok(invoice);
        }
        let request = PaymentRequest {
            customer: &customer,
            payment_method: &method,
            amount_cents: due.to_cents_rounded(),
            idempotency_key: format!("invoice:{}:{attempt}", invoice.id),
            team_id: invoice.team_id,
            purpose: Purpose::Invoice(invoice.id),
        };
        let payment = match provider.authorize(&request).await {
            Ok(payment) => payment,
            Err(ProviderError::Declined(message)) => {
                return self.invoice_failed(&invoice, attempt, &message, None, None).await;
            }
            Err(other) => return Err(other.into()),
        };
        self.settle_invoice(invoice, attempt, payment, None).await
    }

    /// Moves an invoice as its payment says (an authorization is checked and captured).
    async fn settle_invoice(
        &self,
        invoice: Invoice,
        attempt: u32,
        payment: Payment,
        event: Option<(&str, &str)>,
    ) -> Result<Invoice, PaymentError> {
        let provider = self.provider()?;
        match payment.status {
            PaymentStatus::RequiresCapture if invoice.status.is_unpaid() => {
                let method = match &payment.payment_method {
                    Some(id) => Some(provider.payment_method(id).await?),
                    None => None,
                };
                let country = method
                    .as_ref()
                    .and_then(|m| m.card.as_ref())
                    .and_then(|card| card.country);
                if let Err(reason) = self.settings.card_countries.check(country) {
                    provider.cancel(&payment.id, &format!("cancel:{}", payment.id)).await?;
                    return self
                        .invoice_failed(&invoice, attempt, &reason, Some(&payment.id), event)
                        .await;
                }
                let captured = provider
                    .capture(&payment.id, &format!("capture:{}", payment.id))
                    .await?;
                Box::pin(self.settle_invoice(invoice, attempt, captured, event)).await
            }
            PaymentStatus::Succeeded if invoice.status.is_unpaid() => {
                self.invoice_paid(&invoice, attempt, Some(&payment.id), event, Actor::System, None)
                    .await
            }
            PaymentStatus::RequiresPaymentMethod | PaymentStatus::RequiresAction | PaymentStatus::Canceled
                if invoice.status.is_unpaid() =>
            {
                if payment.status == PaymentStatus::RequiresAction {
                    provider.cancel(&payment.id, &format!("cancel:{}", payment.id)).await?;
                }
                let why = payment
                    .failure
                    .clone()
                    .unwrap_or_else(|| "the payment did not go through".to_owned());
                self.invoice_failed(&invoice, attempt, &why, Some(&payment.id), event)
                    .await
            }
            _ => {
                // Processing, or already settled: the provider's event finishes it.
                let change = InvoicePayment {
                    invoice_id: invoice.id,
                    team_id: invoice.team_id,
                    expect: invoice.status,
                    status: invoice.status,
                    attempts: attempt.max(invoice.attempts),
                    next_attempt_at: None,
                    failure: invoice.failure.as_deref(),
                    payment_ref: Some(&payment.id),
                    paid_at: invoice.paid_at,
                    event,
                    audit: None,
                    mail: None,
                    entry: None,
                    at: self.clock.now(),
                };
                self.store.set_invoice_payment(&change).await?;
                Ok(self.reread_invoice(&invoice).await?)
            }
        }
    }

    async fn reread_invoice(&self, invoice: &Invoice) -> Result<Invoice, PaymentError> {
        Ok(self
            .store
            .invoice(invoice.team_id, invoice.id)
            .await?
            .unwrap_or_else(|| invoice.clone()))
    }

    async fn invoice_paid(
        &self,
        invoice: &Invoice,
        attempts: u32,
        payment_ref: Option<&str>,
        event: Option<(&str, &str)>,
        actor: Actor,
        how: Option<&str>,
    ) -> Result<Invoice, PaymentError> {
        let now = self.clock.now();
        // What was due: the total less its credit notes.
        let paid = Ticks::new(invoice.total.get() - self.store.credited(invoice.id).await?.get());
        let description = match how {
            Some(how) => format!("Invoice {} (${}) marked paid: {how}", invoice.number, format_usd(paid)),
            None => format!(
                "Invoice {} (${}) paid by the default payment method",
                invoice.number,
                format_usd(paid)
            ),
        };
        let entry = tollgate_domain::LedgerEntry {
            id: uuid::Uuid::now_v7(),
            team_id: invoice.team_id,
            kind: tollgate_domain::EntryKind::InvoicePayment,
            bucket: tollgate_domain::Bucket::Invoice,
            amount: paid,
            idempotency_key: format!("invoice-paid:{}", invoice.id),
            lot_id: None,
            expires_at: None,
            reason: Some(invoice.number.clone()),
            created_at: now,
        };
        let audit = AuditEvent::success(
            now,
            Some(invoice.team_id),
            actor,
            AuditAction::PayInvoice,
            description,
            Some(format!("invoice:{}", invoice.id)),
            &RequestContext::default(),
        );
        let change = InvoicePayment {
            invoice_id: invoice.id,
            team_id: invoice.team_id,
            expect: invoice.status,
            status: InvoiceStatus::Paid,
            attempts,
            next_attempt_at: None,
            failure: None,
            payment_ref,
            paid_at: Some(now),
            event,
            audit: Some(&audit),
            mail: None,
            entry: Some(&entry),
            at: now,
        };
        self.store.set_invoice_payment(&change).await?;
        self.reread_invoice(invoice).await
    }

    async fn invoice_failed(
        &self,
        invoice: &Invoice,
        attempts: u32,
        why: &str,
        payment_ref: Option<&str>,
        event: Option<(&str, &str)>,
    ) -> Result<Invoice, PaymentError> {
        let now = self.clock.now();
        let next = now + retry_after(attempts);
        let mut audit = AuditEvent::success(
            now,
            Some(invoice.team_id),
            Actor::System,
            AuditAction::PayInvoice,
            format!(
                "Charging invoice {} (${}) failed: {why}; next attempt {}",
                invoice.number,
                format_usd(invoice.total),
                next.format("%Y-%m-%d %H:%M UTC")
            ),
            Some(format!("invoice:{}", invoice.id)),
            &RequestContext::default(),
        );
        audit.outcome = Outcome::Failure;
        let mail = match &self.notices {
            Some(notices) => notices.invoice_unpaid(
                invoice,
                why,
                next,
                invoice.issued_at + self.settings.unpaid_grace,
                now,
                self.billing_recipients(invoice.team_id).await?,
            ),
            None => None,
        };
        let change = InvoicePayment {
            invoice_id: invoice.id,
            team_id: invoice.team_id,
            expect: invoice.status,
            status: InvoiceStatus::Failed,
            attempts,
            next_attempt_at: Some(next),
            failure: Some(why),
            payment_ref,
            paid_at: None,
            event,
            audit: Some(&audit),
            mail: mail.as_ref(),
            entry: None,
            at: now,
        };
        if self.store.set_invoice_payment(&change).await? == tollgate_store::Changed::Applied
            && mail.is_some()
            && let Some(notices) = &self.notices
        {
            notices.queued();
        }
        self.reread_invoice(invoice).await
    }

    /// A provider event about an invoice's payment.
    pub(super) async fn invoice_event(
        &self,
        kind: &str,
        payment: &Payment,
        seen: (&str, &str),
        _context: &RequestContext,
    ) -> Result<super::EventOutcome, PaymentError> {
        let invoice = match payment.purpose {
            Some((team, Purpose::Invoice(id))) => self.store.invoice(team, id).await?,
            _ => self.store.invoice_by_payment(&payment.id).await?,
        };
        let Some(invoice) = invoice else {
            return self.ignore(seen).await;
        };
        let payment = match kind {
            "payment_intent.amount_capturable_updated" => self.provider()?.payment(&payment.id).await?,
            "payment_intent.succeeded" => Payment {
                status: PaymentStatus::Succeeded,
                ..payment.clone()
            },
            "payment_intent.payment_failed" => Payment {
                status: PaymentStatus::RequiresPaymentMethod,
                ..payment.clone()
            },
            _ => return self.ignore(seen).await,
        };
        // Settled already, or a failure this node recorded when the charge was declined.
        let failed_before =
            payment.status == PaymentStatus::RequiresPaymentMethod && invoice.status == InvoiceStatus::Failed;
        if !invoice.status.is_unpaid() || failed_before {
            return self.ignore(seen).await.map(|_| super::EventOutcome::Processed);
        }
        let attempts = invoice.attempts.max(1);
        self.settle_invoice(invoice, attempts, payment, Some(seen)).await?;
        Ok(super::EventOutcome::Processed)
    }

    /// The caller's team's invoices and receipts, newest first (Admins and management keys).
    pub async fn invoices(&self, caller: &Caller, filter: &InvoiceFilter) -> Result<Vec<Invoice>, PaymentError> {
        super::payments::require_admin(caller, "Only team Admins may see the invoices")?;
        Ok(self.store.invoices(caller.team_id(), filter).await?)
    }

    /// One of the caller's team's invoices (Admins and management keys).
    pub async fn invoice(&self, caller: &Caller, id: uuid::Uuid) -> Result<Invoice, PaymentError> {
        super::payments::require_admin(caller, "Only team Admins may see the invoices")?;
        self.store
            .invoice(caller.team_id(), id)
            .await?
            .ok_or(PaymentError::NoSuchInvoice)
    }

    /// Charges an unpaid invoice now with the default payment method (Admins and management
    /// keys): how a blocked team pays.
    pub async fn pay_now(&self, caller: &Caller, id: uuid::Uuid) -> Result<Invoice, PaymentError> {
        let invoice = self.invoice(caller, id).await?;
        self.provider()?;
        if !invoice.status.is_unpaid() {
            return Ok(invoice);
        }
        let paid = self.charge_invoice(invoice).await?;
        match paid.status {
            InvoiceStatus::Paid => Ok(paid),
            _ => Err(PaymentError::Declined(
                paid.failure.unwrap_or_else(|| "the payment did not go through".into()),
            )),
        }
    }

    /// The operator corrects an issued monthly invoice by `amount` (> 0, at most what earlier
    /// credit notes left of it), with a reason: a credit note, numbered in the series. Unpaid, it
    /// lowers what is charged (credited in full, the invoice is never charged and blocks
    /// nobody); paid, the amount is credited to the team's prepaid balance. The invoice itself
    /// never changes.
    pub async fn credit_note(
        &self,
        number: &str,
        amount: Ticks,
        why: &str,
        actor: Actor,
    ) -> Result<Invoice, PaymentError> {
        let why = tollgate_domain::Name::parse_max(why, 500)
            .map_err(|e| PaymentError::InvalidAmount(format!("the reason {e}")))?
            .into_string();
        if amount.get() <= 0 {
            return Err(PaymentError::InvalidAmount("a credit note is for more than $0".into()));
        }
        let invoice = self
            .store
            .invoice_by_number(number)
            .await?
            .ok_or(PaymentError::NoSuchInvoice)?;
        if invoice.kind != InvoiceKind::Monthly {
            return Err(PaymentError::InvalidAmount(format!(
                "{number} is not a monthly invoice: purchases are not refunded through the product"
            )));
        }
        let now = self.clock.now();
        let id = uuid::Uuid::now_v7();
        let paid = invoice.status == InvoiceStatus::Paid;
        let entry = paid.then(|| tollgate_domain::LedgerEntry {
            id: uuid::Uuid::now_v7(),
            team_id: invoice.team_id,
            kind: tollgate_domain::EntryKind::CreditNote,
            bucket: tollgate_domain::Bucket::Prepaid,
            amount,
            idempotency_key: format!("credit-note:{id}"),
            lot_id: None,
            expires_at: None,
            reason: Some(format!("credit note for {number}: {why}")),
            created_at: now,
        });
        let note = Invoice {
            id,
            team_id: invoice.team_id,
            number: String::new(),
            kind: InvoiceKind::CreditNote,
            month: invoice.month.clone(),
            top_up_id: None,
            corrects: Some(invoice.id),
            status: InvoiceStatus::Void,
            lines: vec![IssuedLine {
                description: format!("Credit for invoice {number}: {why}"),
                unit_type: "credit".into(),
                unit_price: amount,
                units: 1,
                amount,
            }],
            subtotal: amount,
            credit_used: Ticks::ZERO,
            total: amount,
            billed_to: invoice.billed_to.clone(),
            team_name: String::new(),
            issued_at: now,
            paid_at: None,
            attempts: 0,
            next_attempt_at: None,
            failure: None,
        };
        let audit = AuditEvent::success(
            now,
            Some(invoice.team_id),
            actor,
            AuditAction::IssueInvoice,
            format!(
                "Issued a credit note of ${} for invoice {number}{}: {why}",
                format_usd(amount),
                if paid { ", credited to prepaid credit" } else { "" }
            ),
            Some(format!("invoice:{id}")),
            &RequestContext::default(),
        );
        match self
            .store
            .issue_credit_note(&note, &self.settings.invoice_prefix, entry.as_ref(), &audit)
            .await
        {
            Ok(issued) => Ok(issued),
            Err(tollgate_store::StoreError::Conflict { .. }) => Err(PaymentError::InvalidAmount(format!(
                "credit notes for {number} may come to at most its total, ${}",
                format_usd(invoice.total)
            ))),
            Err(other) => Err(other.into()),
        }
    }

    /// The operator marks an invoice paid (a bank transfer, say), with how.
    pub async fn mark_paid(&self, number: &str, how: &str, actor: Actor) -> Result<Invoice, PaymentError> {
        let how = tollgate_domain::Name::parse_max(how, 500)
            .map_err(|e| PaymentError::InvalidAmount(format!("the reason {e}")))?
            .into_string();
        let invoice = self
            .store
            .invoice_by_number(number)
            .await?
            .ok_or(PaymentError::NoSuchInvoice)?;
        if !invoice.status.is_unpaid() {
            return Err(PaymentError::InvalidAmount(format!(
                "invoice {number} is {}, not unpaid",
                invoice.status.as_str()
            )));
        }
        let attempts = invoice.attempts;
        self.invoice_paid(&invoice, attempts, None, None, actor, Some(&how))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse() {
        assert_eq!(
            month_start("2026-11").map(|at| at.to_rfc3339()),
            Some("2026-11-01T00:00:00+00:00".to_owned())
        );
        assert_eq!(month_start("2026-13"), None);
        assert_eq!(month_name("2026-02"), "February 2026");
    }
}
