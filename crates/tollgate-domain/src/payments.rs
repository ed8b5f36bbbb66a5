//! Payments: a team's billing details, the countries whose cards the operator refuses, and
//! top-ups (prepaid credit bought through the payment provider) with their states.
//!
//! A top-up is `pending` from the moment it is asked for until the provider says the money was
//! captured (`succeeded`, the credit granted) or not (`failed`, `refused`: a card from a refused
//! country, cancelled before money moved; `canceled`). At most one is pending per team, so
//! asking again returns it (as xAI's `TopUpOrGetExistingPendingChange` does).

use std::fmt;
use std::str::FromStr;

use crate::clock::Timestamp;
use crate::ids::TeamId;
use crate::money::Ticks;
use crate::name::{Name, NameError};

/// An ISO 3166-1 alpha-2 country code, upper case (`FR`, `IN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

/// Not two ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a country is two letters (ISO 3166-1 alpha-2, e.g. \"US\"), not {0:?}")]
pub struct CountryError(String);

impl CountryCode {
    /// The code's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Two ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for CountryCode {
    type Err = CountryError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim().as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Ok(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => Err(CountryError(raw.chars().take(10).collect())),
        }
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A postal address as xAI's `billingInfo.address` holds it. Every field may be empty except the
/// country.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    /// Street, first line.
    pub line1: String,
    /// Street, second line.
    pub line2: String,
    /// City.
    pub city: String,
    /// State, province or region.
    pub state: String,
    /// Postal code.
    pub postal_code: String,
    /// Country.
    pub country: Option<CountryCode>,
}

/// Who the team's invoices are made out to. Copied into each invoice when it is issued, so a
/// later change never alters an issued invoice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BillingInfo {
    /// The person or company billed.
    pub name: String,
    /// Where invoices and receipts go (may be empty: the team's Admins then).
    pub email: String,
    /// The postal address.
    pub address: Address,
    /// The kind of tax number (Stripe's names, e.g. `eu_vat`), or empty.
    pub tax_id_type: String,
    /// The tax number, or empty.
    pub tax_number: String,
}

/// Why billing details were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingInfoError {
    /// A field is too long or has control characters.
    #[error("{field} {error}")]
    Field {
        /// The field's name, as the API spells it.
        field: &'static str,
        /// What is wrong with it.
        error: NameError,
    },
    /// The name is required.
    #[error("name is required")]
    NoName,
    /// An address that does not look like one.
    #[error("email is not an email address")]
    Email,
    /// A tax number without its type, or the other way round.
    #[error("taxIdType and taxNumber go together")]
    TaxId,
}

/// The longest any billing field may be.
const FIELD_MAX: usize = 200;

fn field(value: &str, name: &'static str) -> Result<String, BillingInfoError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    Name::parse_max(value, FIELD_MAX)
        .map(Name::into_string)
        .map_err(|error| BillingInfoError::Field { field: name, error })
}

impl BillingInfo {
    /// Checks and trims every field: the name is required, the rest may be empty.
    pub fn parse(raw: BillingInfo) -> Result<Self, BillingInfoError> {
        let name = field(&raw.name, "name")?;
        if name.is_empty() {
            return Err(BillingInfoError::NoName);
        }
        let email = field(&raw.email, "email")?;
        if !email.is_empty() && crate::Email::parse(&email).is_err() {
            return Err(BillingInfoError::Email);
        }
        let tax_id_type = field(&raw.tax_id_type, "taxIdType")?;
        let tax_number = field(&raw.tax_number, "taxNumber")?;
        if tax_id_type.is_empty() != tax_number.is_empty() {
            return Err(BillingInfoError::TaxId);
        }
        Ok(Self {
            name,
            email,
            address: Address {
                line1: field(&raw.address.line1, "address.line1")?,
                line2: field(&raw.address.line2, "address.line2")?,
                city: field(&raw.address.city, "address.city")?,
                state: field(&raw.address.state, "address.state")?,
                postal_code: field(&raw.address.postal_code, "address.postalCode")?,
                country: raw.address.country,
            },
            tax_id_type,
            tax_number,
        })
    }
}

/// Where a top-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopUpStatus {
    /// Asked for; the money is not captured yet.
    Pending,
    /// The money was captured and the credit granted.
    Succeeded,
    /// The provider declined or the payment failed; nothing was charged.
    Failed,
    /// The card comes from a country the operator refuses; cancelled before money moved.
    Refused,
    /// Cancelled at the provider before it was captured.
    Canceled,
}

impl TopUpStatus {
    /// Every status.
    pub const ALL: [TopUpStatus; 5] = [
        TopUpStatus::Pending,
        TopUpStatus::Succeeded,
        TopUpStatus::Failed,
        TopUpStatus::Refused,
        TopUpStatus::Canceled,
    ];

    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            TopUpStatus::Pending => "pending",
            TopUpStatus::Succeeded => "succeeded",
            TopUpStatus::Failed => "failed",
            TopUpStatus::Refused => "refused",
            TopUpStatus::Canceled => "canceled",
        }
    }

    /// Whether it can still change. Only a pending top-up moves; but money captured always
    /// wins, so a late `succeeded` from the provider also moves a failed or cancelled one.
    #[must_use]
    pub const fn is_final(self) -> bool {
        !matches!(self, TopUpStatus::Pending)
    }
}

/// An unknown stored status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown top-up status {0:?}")]
pub struct UnknownTopUpStatus(String);

impl FromStr for TopUpStatus {
    type Err = UnknownTopUpStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopUpStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownTopUpStatus(s.to_owned()))
    }
}

/// Prepaid credit bought through the payment provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUp {
    /// Ours; also the provider's idempotency key for the payment.
    pub id: uuid::Uuid,
    /// The team the credit belongs to (chosen at purchase, never moved).
    pub team_id: TeamId,
    /// What is bought, in whole USD cents.
    pub amount_cents: i64,
    /// Where it stands.
    pub status: TopUpStatus,
    /// The provider's payment (a Stripe PaymentIntent id), once it exists.
    pub provider_ref: Option<String>,
    /// The payment method charged.
    pub payment_method: Option<String>,
    /// Why it failed or was refused, for people.
    pub failure: Option<String>,
    /// Refunded or disputed at the provider so far, in cents (taken back from the credit).
    pub taken_back_cents: i64,
    /// Asked for by the team's auto top-up, not a person.
    pub automatic: bool,
    /// Bought on the provider's hosted checkout page: the session's id and page.
    pub checkout: Option<(String, String)>,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// Its last change.
    pub updated_at: Timestamp,
}

impl TopUp {
    /// A new top-up, pending: with a saved card (`payment_method`), or on a hosted page (none).
    #[must_use]
    pub fn pending(
        team_id: TeamId,
        amount_cents: i64,
        payment_method: Option<String>,
        automatic: bool,
        now: Timestamp,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            team_id,
            amount_cents,
            status: TopUpStatus::Pending,
            provider_ref: None,
            payment_method,
            failure: None,
            taken_back_cents: 0,
            automatic,
            checkout: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The credit it buys.
    #[must_use]
    pub fn credit(&self) -> Ticks {
        Ticks::new(self.amount_cents.saturating_mul(Ticks::PER_CENT))
    }
}

/// A team's auto top-up: when its prepaid credit falls below `threshold`, buy `amount_cents`
/// with the default payment method, at most `monthly_max_cents` a calendar month (UTC) and at
/// most [`AUTO_TOP_UPS_PER_DAY`] times in 24 hours (xAI's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoTopUp {
    /// Below this much prepaid credit, buy.
    pub threshold: Ticks,
    /// How much each time, in cents.
    pub amount_cents: i64,
    /// The most bought automatically in a calendar month, in cents.
    pub monthly_max_cents: i64,
}

/// At most this many automatic top-ups (tried, whatever became of them) in 24 hours.
pub const AUTO_TOP_UPS_PER_DAY: u32 = 5;

impl AutoTopUp {
    /// Whether another `amount_cents` fits: fewer than [`AUTO_TOP_UPS_PER_DAY`] in the last 24
    /// hours, and the month's automatic purchases plus this one within the monthly maximum.
    #[must_use]
    pub fn allows(&self, last_day: u32, this_month_cents: i64) -> bool {
        last_day < AUTO_TOP_UPS_PER_DAY && this_month_cents.saturating_add(self.amount_cents) <= self.monthly_max_cents
    }
}

/// USD cents as ticks (saturating: cents come from the provider).
#[must_use]
pub fn cents(amount: i64) -> Ticks {
    Ticks::new(amount.saturating_mul(Ticks::PER_CENT))
}

/// The operator's refusal of cards issued in some countries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CardCountryRule {
    refused: Vec<CountryCode>,
}

impl CardCountryRule {
    /// Refuses cards issued in `refused`.
    #[must_use]
    pub fn new(mut refused: Vec<CountryCode>) -> Self {
        refused.sort();
        refused.dedup();
        Self { refused }
    }

    /// `Err` with the reason, for people, when a card issued in `country` is refused. A card
    /// whose country the provider does not say is refused only when some country is.
    pub fn check(&self, country: Option<CountryCode>) -> Result<(), String> {
        if self.refused.is_empty() {
            return Ok(());
        }
        match country {
            Some(country) if self.refused.contains(&country) => Err(format!(
                "Cards issued in {country} are not accepted here (the operator refuses cards issued in {}); \
                 use a card issued elsewhere",
                self.list()
            )),
            Some(_) => Ok(()),
            None => Err(format!(
                "The card's country of issue is unknown, and the operator refuses cards issued in {}; \
                 use another card",
                self.list()
            )),
        }
    }

    fn list(&self) -> String {
        self.refused
            .iter()
            .map(CountryCode::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_are_two_letters() {
        assert_eq!("in".parse::<CountryCode>().map(|c| c.to_string()), Ok("IN".to_owned()));
        assert!("IND".parse::<CountryCode>().is_err());
        assert!("I1".parse::<CountryCode>().is_err());
        assert!("".parse::<CountryCode>().is_err());
    }

    #[test]
    fn refused_countries_name_the_rule() {
        let rule = CardCountryRule::new(vec!["IN".parse().unwrap(), "FR".parse().unwrap()]);
        let refusal = rule.check(Some("IN".parse().unwrap())).unwrap_err();
        assert!(
            refusal.contains("Cards issued in IN") && refusal.contains("FR, IN"),
            "{refusal}"
        );
        assert_eq!(rule.check(Some("US".parse().unwrap())), Ok(()));
        assert!(rule.check(None).is_err(), "unknown country when some are refused");
        assert_eq!(CardCountryRule::default().check(None), Ok(()));
    }

    #[test]
    fn billing_info_needs_a_name_and_a_whole_tax_id() {
        let info = |name: &str, tax: (&str, &str)| BillingInfo {
            name: name.into(),
            tax_id_type: tax.0.into(),
            tax_number: tax.1.into(),
            ..BillingInfo::default()
        };
        assert_eq!(BillingInfo::parse(info("  ", ("", ""))), Err(BillingInfoError::NoName));
        assert_eq!(
            BillingInfo::parse(info("Acme", ("eu_vat", ""))),
            Err(BillingInfoError::TaxId)
        );
        assert_eq!(BillingInfo::parse(info(" Acme ", ("", ""))).unwrap().name, "Acme");
        let bad_email = BillingInfo {
            email: "nope".into(),
            ..info("Acme", ("", ""))
        };
        assert_eq!(BillingInfo::parse(bad_email), Err(BillingInfoError::Email));
    }

    #[test]
    fn auto_top_ups_respect_both_caps() {
        let auto = AutoTopUp {
            threshold: Ticks::new(1),
            amount_cents: 2500,
            monthly_max_cents: 10_000,
        };
        assert!(auto.allows(0, 0));
        assert!(auto.allows(4, 7500), "the fifth in a day, reaching the maximum exactly");
        assert!(!auto.allows(5, 0), "a sixth in 24 hours");
        assert!(!auto.allows(0, 7501), "beyond the monthly maximum");
    }

    #[test]
    fn statuses_round_trip() {
        for status in TopUpStatus::ALL {
            assert_eq!(status.as_str().parse::<TopUpStatus>(), Ok(status));
        }
    }
}
