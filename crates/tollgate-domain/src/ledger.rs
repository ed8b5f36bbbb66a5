//! The credit ledger's pure rules: what an entry is, the two buckets of credit, and exact USD
//! amounts typed by people (`12.50`) as ticks. No float ever touches an amount.
//!
//! Entries are append-only and signed from the team's side: credit to the team is positive,
//! consumption negative. A team's balance in each bucket is the sum of its entries there, and
//! the store keeps it maintained in the entries' own transactions.

use std::fmt;
use std::str::FromStr;

use crate::clock::Timestamp;
use crate::ids::TeamId;
use crate::money::Ticks;

/// Which credit an entry moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Bought (or granted) credit that does not expire.
    Prepaid,
    /// Promotional credit: consumed first, soonest expiry first; expires lot by lot.
    Promo,
    /// The month's invoice: consumption beyond the team's credit, up to its spending limit.
    /// Only spend is written here; the month's entries sum to what the invoice will bill.
    Invoice,
}

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Credit bought through the payment provider.
    Purchase,
    /// Promotional credit granted, with an expiry.
    PromoGrant,
    /// Consumption by requests.
    Spend,
    /// The operator's correction or grant (either sign), with a reason.
    Adjustment,
    /// Credit forfeited when its team was deleted.
    Forfeiture,
    /// Promotional credit left when its lot expired.
    PromoExpiry,
    /// Bought credit taken back because its payment was refunded or disputed at the payment
    /// provider (negative).
    Refund,
    /// Prepaid credit from a credit note correcting an invoice already paid.
    CreditNote,
    /// A monthly invoice paid (charged, or marked paid by the operator): settles what its month
    /// owed (bucket invoice, positive).
    InvoicePayment,
}

impl EntryKind {
    /// Every kind.
    pub const ALL: [EntryKind; 9] = [
        EntryKind::Purchase,
        EntryKind::PromoGrant,
        EntryKind::Spend,
        EntryKind::Adjustment,
        EntryKind::Forfeiture,
        EntryKind::PromoExpiry,
        EntryKind::Refund,
        EntryKind::CreditNote,
        EntryKind::InvoicePayment,
    ];

    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Purchase => "purchase",
            EntryKind::PromoGrant => "promo_grant",
            EntryKind::Spend => "spend",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Forfeiture => "forfeiture",
            EntryKind::PromoExpiry => "promo_expiry",
            EntryKind::Refund => "refund",
            EntryKind::CreditNote => "credit_note",
            EntryKind::InvoicePayment => "invoice_payment",
        }
    }
}

impl Bucket {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Bucket::Prepaid => "prepaid",
            Bucket::Promo => "promo",
            Bucket::Invoice => "invoice",
        }
    }
}

/// A stored name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ledger name '{0}'")]
pub struct UnknownLedgerName(pub String);

impl FromStr for EntryKind {
    type Err = UnknownLedgerName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntryKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownLedgerName(s.to_owned()))
    }
}

impl FromStr for Bucket {
    type Err = UnknownLedgerName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prepaid" => Ok(Bucket::Prepaid),
            "promo" => Ok(Bucket::Promo),
            "invoice" => Ok(Bucket::Invoice),
            other => Err(UnknownLedgerName(other.to_owned())),
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Id (a promotional grant's id is also its lot's).
    pub id: uuid::Uuid,
    /// The team.
    pub team_id: TeamId,
    /// What it records.
    pub kind: EntryKind,
    /// Which credit it moves.
    pub bucket: Bucket,
    /// Signed: positive credits the team.
    pub amount: Ticks,
    /// Unique: the same key is the same entry, written once however often it is asked for. A
    /// spend is read back as `charge:<charge id>:<bucket>[:<lot id>]`: it stores no key, as it
    /// is written only for usage rows new to the store, whose request ids make it idempotent.
    /// A charge's spends of several batches share that key until a fold sums them into one.
    pub idempotency_key: String,
    /// The promotional lot it concerns (a grant, an expiry).
    pub lot_id: Option<uuid::Uuid>,
    /// When a promotional grant expires.
    pub expires_at: Option<Timestamp>,
    /// Why (the operator's reason, a purchase's reference).
    pub reason: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// A team's credit, per bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    /// Prepaid credit (may be below zero after an operator's negative adjustment).
    pub prepaid: Ticks,
    /// Unexpired promotional credit.
    pub promo: Ticks,
}

impl Balance {
    /// Both buckets together.
    pub fn total(&self) -> Result<Ticks, crate::money::TicksError> {
        self.prepaid.checked_add(self.promo)
    }
}

/// A team's monthly invoiced spending limits (xAI's `spendingLimits`). Usage beyond the team's
/// credit is invoiced up to the effective limit; $0 (the default) means prepaid only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendingLimits {
    /// The operator's default maximum for every team (`hardSlAuto`).
    pub hard_auto: Ticks,
    /// The operator's maximum for this team, replacing the default (`hardSlOverride`).
    pub hard_override: Option<Ticks>,
    /// The limit the team's Admins chose (`softSl`), at most the effective maximum.
    pub soft: Option<Ticks>,
}

impl SpendingLimits {
    /// The maximum the team's Admins may choose (`effectiveHardSl`).
    #[must_use]
    pub fn effective_hard(&self) -> Ticks {
        self.hard_override.unwrap_or(self.hard_auto)
    }

    /// The limit in force (`effectiveSl`): the Admins' choice, never above the maximum (an
    /// operator lowering the maximum lowers it too); the maximum when they chose none.
    #[must_use]
    pub fn effective(&self) -> Ticks {
        let hard = self.effective_hard();
        self.soft.map_or(hard, |soft| soft.min(hard))
    }
}

/// A team's spend of credit in one billing month, summed (how xAI lists spend among a prepaid
/// balance's changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthlySpend {
    /// `2026-11`.
    pub month: String,
    /// The month's spend entries summed (negative: credit consumed).
    pub amount: Ticks,
    /// The newest of them.
    pub last_at: Timestamp,
}

impl MonthlySpend {
    /// The year and month as numbers (`spendBpKeyYear`, `spendBpKeyMonth`).
    #[must_use]
    pub fn year_month(&self) -> Option<(i32, u32)> {
        let (year, month) = self.month.split_once('-')?;
        Some((year.parse().ok()?, month.parse().ok()?))
    }
}

/// The first instant of the billing month `at` falls in, and of the next one (UTC).
#[must_use]
pub fn month_bounds(at: Timestamp) -> (Timestamp, Timestamp) {
    use chrono::{Datelike as _, TimeZone as _};
    let start = |year: i32, month: u32| {
        chrono::Utc
            .with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .single()
            .unwrap_or(at)
    };
    let (year, month) = (at.year(), at.month());
    let next = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    (start(year, month), start(next.0, next.1))
}

/// What an invoice line counts (kinds of tokens, generated images, server-side tool calls),
/// each at its own price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TokenKind {
    /// Prompt tokens not served from a cache.
    Prompt,
    /// Prompt tokens served from the upstream's cache.
    CachedPrompt,
    /// Completion and reasoning tokens.
    Completion,
    /// Generated images (a count, priced per image).
    Image,
    /// Web searches run by the platform (a count, a fee each).
    WebSearch,
    /// X searches run by the platform (a count, a fee each).
    XSearch,
}

impl TokenKind {
    /// How a line names it.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            TokenKind::Prompt => "prompt tokens",
            TokenKind::CachedPrompt => "cached prompt tokens",
            TokenKind::Completion => "completion tokens",
            TokenKind::Image => "images",
            TokenKind::WebSearch => "web search calls",
            TokenKind::XSearch => "X search calls",
        }
    }

    /// Whether it counts tokens (rather than images or calls).
    #[must_use]
    pub const fn is_tokens(self) -> bool {
        matches!(
            self,
            TokenKind::Prompt | TokenKind::CachedPrompt | TokenKind::Completion
        )
    }
}

/// One line of a month's invoice: a model's tokens of one kind at one price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    /// The model.
    pub model: String,
    /// Which tokens.
    pub kind: TokenKind,
    /// Ticks per token (xAI's price unit, 1e-4 USD per million tokens), or per image or call.
    pub unit_price: Ticks,
    /// How many tokens (images or calls, for the kinds that are not tokens).
    pub tokens: u64,
    /// `tokens × unit_price`, exactly.
    pub amount: Ticks,
}

/// What a team's month so far comes to: the lines of every request charged in it, and how the
/// charges were paid. The lines sum to `credit_used + invoiced` exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthUsage {
    /// Per model, token kind and price.
    pub lines: Vec<InvoiceLine>,
    /// Paid from promotional and prepaid credit.
    pub credit_used: Ticks,
    /// Left to the month's invoice.
    pub invoiced: Ticks,
}

/// The billing month a moment falls in (`2026-11`, UTC): invoices and spend are per month.
#[must_use]
pub fn billing_month(at: Timestamp) -> String {
    at.format("%Y-%m").to_string()
}

/// Which credit pays (part of) a spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendPart {
    /// The bucket.
    pub bucket: Bucket,
    /// The promotional lot, for [`Bucket::Promo`].
    pub lot_id: Option<uuid::Uuid>,
    /// How much (positive; the entry is its negation).
    pub amount: Ticks,
}

/// What a team's spends may draw on, in consumption order: promotional lots (unexpired, soonest
/// expiry first), prepaid credit, then the month's invoice up to the spending limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Funds {
    /// Unexpired promotional lots with credit left, soonest expiry first: (lot, remaining).
    pub lots: Vec<(uuid::Uuid, Ticks)>,
    /// Prepaid credit (below zero after a negative adjustment or an overage).
    pub prepaid: Ticks,
    /// What the month's invoice may still take: the effective limit less what it holds.
    pub invoice_headroom: Ticks,
}

impl Funds {
    /// Everything spendable: lots, prepaid credit and the invoice's headroom. Prepaid credit
    /// below zero (bought credit taken back after a refund or dispute, or a charge beyond its
    /// hold) is a debt: nothing is spendable until it is paid.
    #[must_use]
    pub fn spendable(&self) -> Ticks {
        if self.prepaid.get() < 0 {
            return Ticks::ZERO;
        }
        let lots: i64 = self.lots.iter().map(|(_, t)| t.get()).fold(0, i64::saturating_add);
        Ticks::new(
            lots.saturating_add(self.prepaid.get())
                .saturating_add(self.invoice_headroom.get().max(0)),
        )
    }

    /// What a spend draws on before the invoice: the lots and prepaid credit (none while
    /// prepaid is below zero). A spend beyond it reaches the month's invoice.
    #[must_use]
    pub fn credit(&self) -> Ticks {
        let lots = self.lots.iter().fold(0_i64, |sum, (_, t)| sum.saturating_add(t.get()));
        Ticks::new(lots.saturating_add(self.prepaid.get().max(0)))
    }

    /// Takes `cost` (≥ 0) in consumption order and says from where. What nothing covers (an
    /// upstream that produced more than its hold allowed) is taken from prepaid credit, which
    /// goes below zero by exactly that much: the charge is never dropped.
    pub fn take(&mut self, cost: Ticks) -> Vec<SpendPart> {
        let mut left = cost.get().max(0);
        let mut parts = Vec::new();
        for (lot, remaining) in &mut self.lots {
            if left == 0 {
                break;
            }
            let take = left.min(remaining.get());
            if take > 0 {
                *remaining = Ticks::new(remaining.get() - take);
                left -= take;
                parts.push(SpendPart {
                    bucket: Bucket::Promo,
                    lot_id: Some(*lot),
                    amount: Ticks::new(take),
                });
            }
        }
        let mut from_prepaid = left.min(self.prepaid.get().max(0));
        left -= from_prepaid;
        let from_invoice = left.min(self.invoice_headroom.get().max(0));
        left -= from_invoice;
        self.invoice_headroom = Ticks::new(self.invoice_headroom.get() - from_invoice);
        from_prepaid += left;
        self.prepaid = Ticks::new(self.prepaid.get().saturating_sub(from_prepaid));
        for (bucket, amount) in [(Bucket::Prepaid, from_prepaid), (Bucket::Invoice, from_invoice)] {
            if amount > 0 {
                parts.push(SpendPart {
                    bucket,
                    lot_id: None,
                    amount: Ticks::new(amount),
                });
            }
        }
        parts
    }
}

/// An amount of USD that is not exact or not in range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsdError {
    /// Not a decimal number.
    #[error("'{0}' is not an amount in USD (e.g. 12.50)")]
    Syntax(String),
    /// More than 10 decimal places (a tick is 1e-10 USD).
    #[error("'{0}' has more than 10 decimal places")]
    TooPrecise(String),
    /// Beyond what an i64 of ticks holds.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// Parses an exact decimal amount of USD (`12.50`, `-5`, `0.0000000001`) into ticks.
pub fn parse_usd(text: &str) -> Result<Ticks, UsdError> {
    let raw = text.trim();
    let syntax = || UsdError::Syntax(raw.chars().take(40).collect());
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw.strip_prefix('+').unwrap_or(raw)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || (digits.contains('.') && fraction.is_empty())
    {
        return Err(syntax());
    }
    if fraction.len() > 10 {
        return Err(UsdError::TooPrecise(raw.chars().take(40).collect()));
    }
    let too_large = || UsdError::TooLarge(raw.chars().take(40).collect());
    let whole: i64 = whole.parse().map_err(|_| too_large())?;
    let fraction_ticks: i64 = if fraction.is_empty() {
        0
    } else {
        let padded = format!("{fraction:0<10}");
        padded.parse().map_err(|_| syntax())?
    };
    let ticks = whole
        .checked_mul(Ticks::PER_USD)
        .and_then(|t| t.checked_add(fraction_ticks))
        .ok_or_else(too_large)?;
    Ok(Ticks::new(if negative { -ticks } else { ticks }))
}

/// Ticks as USD with every digit (`12.5000000000` → `12.50`): exact, for people to read.
#[must_use]
pub fn format_usd(amount: Ticks) -> String {
    let ticks = amount.get();
    let sign = if ticks < 0 { "-" } else { "" };
    let abs = ticks.unsigned_abs();
    let per_usd = Ticks::PER_USD.unsigned_abs();
    let fraction = format!("{:010}", abs % per_usd);
    let fraction = fraction.trim_end_matches('0');
    let fraction = if fraction.len() < 2 {
        format!("{fraction:0<2}")
    } else {
        fraction.to_owned()
    };
    format!("{sign}{}.{fraction}", abs / per_usd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_lots_and_prepaid_above_zero_never_the_invoice() {
        let lot = uuid::Uuid::nil();
        let funds = Funds {
            lots: vec![(lot, Ticks::new(30)), (lot, Ticks::new(5))],
            prepaid: Ticks::new(100),
            invoice_headroom: Ticks::new(1_000),
        };
        assert_eq!(funds.credit(), Ticks::new(135));
        let in_debt = Funds {
            prepaid: Ticks::new(-50),
            ..funds
        };
        assert_eq!(in_debt.credit(), Ticks::new(35), "a debt takes nothing from the lots");
    }

    #[test]
    fn usd_is_parsed_exactly() {
        assert_eq!(parse_usd("12.50"), Ok(Ticks::new(125_000_000_000)));
        assert_eq!(parse_usd("-5"), Ok(Ticks::new(-50_000_000_000)));
        assert_eq!(parse_usd("0.0000000001"), Ok(Ticks::new(1)));
        assert_eq!(parse_usd(" +3.1 "), Ok(Ticks::new(31_000_000_000)));
        assert!(matches!(parse_usd("0.00000000001"), Err(UsdError::TooPrecise(_))));
        for bad in ["", "abc", "1.2.3", "1e3", ".5", "5.", "--1", "1,5", "NaN"] {
            assert!(matches!(parse_usd(bad), Err(UsdError::Syntax(_))), "{bad:?}");
        }
        assert!(matches!(parse_usd("922337204"), Err(UsdError::TooLarge(_))));
        assert_eq!(parse_usd("922337203.6854775807"), Ok(Ticks::new(i64::MAX)));
    }

    #[test]
    fn usd_is_formatted_exactly() {
        assert_eq!(format_usd(Ticks::new(125_000_000_000)), "12.50");
        assert_eq!(format_usd(Ticks::new(-50_000_000_000)), "-5.00");
        assert_eq!(format_usd(Ticks::new(1)), "0.0000000001");
        assert_eq!(format_usd(Ticks::ZERO), "0.00");
        for text in ["12.50", "-5.00", "0.0000000001", "7.123"] {
            assert_eq!(format_usd(parse_usd(text).unwrap()), text);
        }
    }

    #[test]
    fn limits_never_exceed_the_maximum() {
        let mut limits = SpendingLimits {
            hard_auto: Ticks::new(100),
            ..SpendingLimits::default()
        };
        assert_eq!(
            (limits.effective_hard(), limits.effective()),
            (Ticks::new(100), Ticks::new(100))
        );
        limits.soft = Some(Ticks::new(40));
        assert_eq!(limits.effective(), Ticks::new(40));
        limits.hard_override = Some(Ticks::new(30));
        assert_eq!(
            (limits.effective_hard(), limits.effective()),
            (Ticks::new(30), Ticks::new(30))
        );
        assert_eq!(
            SpendingLimits::default().effective(),
            Ticks::ZERO,
            "prepaid only by default"
        );
    }

    #[test]
    fn spend_takes_promo_then_prepaid_then_invoice() {
        let (soon, later) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let mut funds = Funds {
            lots: vec![(soon, Ticks::new(3)), (later, Ticks::new(5))],
            prepaid: Ticks::new(10),
            invoice_headroom: Ticks::new(20),
        };
        assert_eq!(funds.spendable(), Ticks::new(38));
        let part = |bucket, lot_id, amount| SpendPart {
            bucket,
            lot_id,
            amount: Ticks::new(amount),
        };
        assert_eq!(funds.take(Ticks::new(2)), vec![part(Bucket::Promo, Some(soon), 2)]);
        assert_eq!(
            funds.take(Ticks::new(10)),
            vec![
                part(Bucket::Promo, Some(soon), 1),
                part(Bucket::Promo, Some(later), 5),
                part(Bucket::Prepaid, None, 4)
            ]
        );
        assert_eq!(
            funds.take(Ticks::new(16)),
            vec![part(Bucket::Prepaid, None, 6), part(Bucket::Invoice, None, 10)]
        );
        assert_eq!(funds.spendable(), Ticks::new(10));
        // Beyond everything (an upstream that ignored its budget): charged, from prepaid.
        assert_eq!(
            funds.take(Ticks::new(15)),
            vec![part(Bucket::Prepaid, None, 5), part(Bucket::Invoice, None, 10)]
        );
        assert_eq!((funds.prepaid, funds.invoice_headroom), (Ticks::new(-5), Ticks::ZERO));
        assert_eq!(funds.take(Ticks::ZERO), vec![]);
    }

    #[test]
    fn negative_prepaid_credit_stops_spending_until_paid() {
        let mut funds = Funds {
            lots: vec![(uuid::Uuid::from_u128(1), Ticks::new(3))],
            prepaid: Ticks::new(-4),
            invoice_headroom: Ticks::new(10),
        };
        assert_eq!(funds.spendable(), Ticks::ZERO);
        funds.prepaid = Ticks::ZERO;
        assert_eq!(funds.spendable(), Ticks::new(13));
    }

    #[test]
    fn months_are_bounded_in_utc() {
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc();
        assert_eq!(
            month_bounds(at("2026-11-29T17:00:00Z")),
            (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            month_bounds(at("2026-12-31T23:59:59Z")),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(billing_month(at("2026-02-03T00:00:00Z")), "2026-02");
    }

    #[test]
    fn names_round_trip() {
        for kind in EntryKind::ALL {
            assert_eq!(kind.as_str().parse::<EntryKind>(), Ok(kind));
        }
        assert_eq!("promo".parse::<Bucket>(), Ok(Bucket::Promo));
        assert!("credit".parse::<Bucket>().is_err());
    }
}
