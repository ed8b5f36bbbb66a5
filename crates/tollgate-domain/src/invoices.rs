//! Invoices: a month's invoiced usage, issued once the month is over, and receipts for prepaid
//! purchases. Both are numbered in one gap-free series per operator.
//!
//! An invoice is **finalized when issued**: its lines, amounts and the billing details it is
//! made out to are copied in then and never change (the database refuses it); only its payment
//! state moves (`Open` → `Paid` | `Failed` → `Paid`, or `Void`). A correction is a credit note,
//! never a new version.

use std::str::FromStr;

use crate::clock::Timestamp;
use crate::ids::TeamId;
use crate::money::Ticks;
use crate::payments::BillingInfo;

/// What an invoice is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvoiceKind {
    /// A month's invoiced usage (xAI's `monthly`).
    Monthly,
    /// A prepaid purchase, paid when issued (xAI's `prepaid`).
    Receipt,
    /// A correction of an issued invoice: lowers what is due, or (paid already) credits the
    /// team's prepaid balance.
    CreditNote,
}

impl InvoiceKind {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            InvoiceKind::Monthly => "monthly",
            InvoiceKind::Receipt => "receipt",
            InvoiceKind::CreditNote => "credit_note",
        }
    }
}

/// Where an invoice's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvoiceStatus {
    /// Issued, not paid yet (xAI's `PENDING`).
    Open,
    /// Paid (xAI's `PAID`).
    Paid,
    /// Charging it failed; retried on a schedule (xAI's `FAILED`).
    Failed,
    /// Will never be charged (xAI's `WILL_NEVER_BE_CHARGED`).
    Void,
}

impl InvoiceStatus {
    /// Every status.
    pub const ALL: [InvoiceStatus; 4] = [
        InvoiceStatus::Open,
        InvoiceStatus::Paid,
        InvoiceStatus::Failed,
        InvoiceStatus::Void,
    ];

    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Failed => "failed",
            InvoiceStatus::Void => "void",
        }
    }

    /// Whether money is still owed on it.
    #[must_use]
    pub const fn is_unpaid(self) -> bool {
        matches!(self, InvoiceStatus::Open | InvoiceStatus::Failed)
    }
}

/// An unknown stored name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown invoice name {0:?}")]
pub struct UnknownInvoiceName(String);

impl FromStr for InvoiceStatus {
    type Err = UnknownInvoiceName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InvoiceStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownInvoiceName(s.to_owned()))
    }
}

impl FromStr for InvoiceKind {
    type Err = UnknownInvoiceName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "monthly" => Ok(InvoiceKind::Monthly),
            "receipt" => Ok(InvoiceKind::Receipt),
            "credit_note" => Ok(InvoiceKind::CreditNote),
            other => Err(UnknownInvoiceName(other.to_owned())),
        }
    }
}

/// One line, as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedLine {
    /// `grok-4 prompt tokens`, `Prepaid credit`.
    pub description: String,
    /// `tokens` or `credit`.
    pub unit_type: String,
    /// Ticks per unit.
    pub unit_price: Ticks,
    /// How many units.
    pub units: u64,
    /// Exactly `units × unit_price`.
    pub amount: Ticks,
}

/// An issued invoice or receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// Ours.
    pub id: uuid::Uuid,
    /// The team billed (it may since have been deleted).
    pub team_id: TeamId,
    /// In the operator's series, e.g. `TG-000042`; no gaps.
    pub number: String,
    /// Monthly or receipt.
    pub kind: InvoiceKind,
    /// The billing month (`2026-11`): the month a monthly invoice bills, the month a receipt
    /// was issued in.
    pub month: String,
    /// For a receipt: the top-up it is for.
    pub top_up_id: Option<uuid::Uuid>,
    /// For a credit note: the invoice it corrects.
    pub corrects: Option<uuid::Uuid>,
    /// Payment state (the only thing that changes).
    pub status: InvoiceStatus,
    /// The lines.
    pub lines: Vec<IssuedLine>,
    /// Every line, exactly.
    pub subtotal: Ticks,
    /// Paid from credit (promotional and prepaid) already.
    pub credit_used: Ticks,
    /// What is charged: `subtotal − credit_used`, exactly.
    pub total: Ticks,
    /// Who it is made out to, as on the day it was issued.
    pub billed_to: BillingInfo,
    /// The team's name that day.
    pub team_name: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it was paid.
    pub paid_at: Option<Timestamp>,
    /// Charge attempts made.
    pub attempts: u32,
    /// When the next charge attempt is due (unpaid, with a provider).
    pub next_attempt_at: Option<Timestamp>,
    /// Why the last charge failed, for people.
    pub failure: Option<String>,
}

impl Invoice {
    /// The total in whole cents (rounded half away from zero), what is charged.
    #[must_use]
    pub const fn total_cents(&self) -> i64 {
        self.total.to_cents_rounded()
    }
}

/// The invoice number for position `n` of a series with `prefix`.
#[must_use]
pub fn invoice_number(prefix: &str, n: i64) -> String {
    format!("{prefix}-{n:06}")
}

/// When a failed charge is tried again: after 1, 3 and 5 days, then every 7 days.
#[must_use]
pub fn retry_after(attempts: u32) -> chrono::Duration {
    match attempts {
        0 | 1 => chrono::Duration::days(1),
        2 => chrono::Duration::days(2),
        3 => chrono::Duration::days(2),
        _ => chrono::Duration::days(7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names() {
        assert_eq!(invoice_number("TG", 42), "TG-000042");
        assert_eq!(invoice_number("TG", 1_234_567), "TG-1234567");
        for status in InvoiceStatus::ALL {
            assert_eq!(status.as_str().parse::<InvoiceStatus>(), Ok(status));
        }
        assert_eq!("receipt".parse::<InvoiceKind>(), Ok(InvoiceKind::Receipt));
        assert!(InvoiceStatus::Failed.is_unpaid() && !InvoiceStatus::Void.is_unpaid());
    }

    #[test]
    fn retries_back_off() {
        let days: Vec<i64> = (1..=5).map(|n| retry_after(n).num_days()).collect();
        assert_eq!(days, vec![1, 2, 2, 7, 7]);
    }
}
