//! Payments: buying prepaid credit through a payment provider, billing details and payment
//! methods, and the provider's events (webhooks).
//!
//! The provider sits behind [`PaymentProvider`] (Stripe's REST API and webhook protocol,
//! implemented in the server). A top-up is authorized with manual capture, so the card's country
//! is checked **before money moves**: a card from a refused country is cancelled, never
//! captured. Credit is granted when the money is captured — from the capture's answer or the
//! provider's `succeeded` event, whichever comes first; both write the same idempotent entry.
//! Every event is processed once (its id is recorded in the transaction of its effect), in any
//! order: money captured always wins over an earlier failure, and a refund or dispute takes the
//! credit back with a negative entry whatever arrived before it.

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_domain::ledger::format_usd;
use tollgate_domain::payments::cents;
use tollgate_domain::{
    Actor, Address, AuditAction, AuditEvent, BillingInfo, Bucket, CardCountryRule, Clock, CountryCode, EntryKind,
    LedgerEntry, Outcome, Permission, RequestContext, TeamId, Timestamp, TopUp, TopUpStatus,
};
use tollgate_store::{Changed, Store, StoreError, TopUpChange};

use crate::Caller;

/// What the provider is told about the team (its customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerDetails {
    /// The team (kept in the provider's metadata).
    pub team_id: TeamId,
    /// Who is billed (the billing name, else the team's name).
    pub name: String,
    /// Where receipts go (may be empty).
    pub email: String,
    /// The billing address.
    pub address: Address,
}

/// A card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// `visa`, `mastercard`, ….
    pub brand: String,
    /// The last four digits.
    pub last4: String,
    /// Expiry month (1–12).
    pub exp_month: u32,
    /// Expiry year.
    pub exp_year: u32,
    /// Where the card was issued, as the provider says.
    pub country: Option<CountryCode>,
}

/// A saved payment method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethod {
    /// The provider's id (`pm_…`).
    pub id: String,
    /// The provider's type (`card`, `us_bank_account`, `link`, …).
    pub kind: String,
    /// The customer it is saved to.
    pub customer: Option<String>,
    /// For cards.
    pub card: Option<Card>,
}

/// Where a payment stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Authorized; the money moves only when captured.
    RequiresCapture,
    /// Captured.
    Succeeded,
    /// Captured, settling (e.g. a bank debit).
    Processing,
    /// The customer must act (e.g. 3-D Secure) — not possible off-session.
    RequiresAction,
    /// Failed, or never confirmed.
    RequiresPaymentMethod,
    /// Cancelled.
    Canceled,
    /// Any other state.
    Other,
}

/// A payment (Stripe's PaymentIntent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The provider's id (`pi_…`).
    pub id: String,
    /// Its state.
    pub status: PaymentStatus,
    /// What was asked for, in cents.
    pub amount_cents: i64,
    /// What was captured, in cents.
    pub received_cents: i64,
    /// The method charged.
    pub payment_method: Option<String>,
    /// The last failure, for people.
    pub failure: Option<String>,
    /// What it pays for, from the payment's metadata.
    pub purpose: Option<(TeamId, Purpose)>,
}

/// What a payment pays for (kept in the provider's metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A top-up.
    TopUp(uuid::Uuid),
    /// A monthly invoice.
    Invoice(uuid::Uuid),
}

/// A payment asked for.
#[derive(Debug, Clone)]
pub struct PaymentRequest<'a> {
    /// The team's customer.
    pub customer: &'a str,
    /// The method to charge.
    pub payment_method: &'a str,
    /// How much, in USD cents.
    pub amount_cents: i64,
    /// Makes a retried request the same payment.
    pub idempotency_key: String,
    /// The team (metadata).
    pub team_id: TeamId,
    /// What it pays for (metadata).
    pub purpose: Purpose,
}

/// A hosted checkout page asked for.
#[derive(Debug, Clone)]
pub struct CheckoutRequest<'a> {
    /// The team's customer.
    pub customer: &'a str,
    /// A purchase of `amount_cents` for a top-up (authorized with manual capture), or `None`:
    /// saving a card.
    pub purchase: Option<(i64, uuid::Uuid)>,
    /// The team.
    pub team_id: TeamId,
    /// Where the page returns to.
    pub return_url: &'a str,
    /// Makes a retried request the same session.
    pub idempotency_key: String,
    /// When the page expires.
    pub expires_at: Timestamp,
}

/// A hosted checkout session (Stripe's Checkout Session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    /// The provider's id (`cs_…`).
    pub id: String,
    /// The page to send the person to.
    pub url: Option<String>,
    /// `payment` or `setup`.
    pub mode: String,
    /// `open`, `complete` or `expired`.
    pub status: String,
    /// The payment it made (payment mode), once complete.
    pub payment_intent: Option<String>,
    /// The setup it made (setup mode), once complete.
    pub setup_intent: Option<String>,
    /// The team and top-up, from its metadata.
    pub team_id: Option<TeamId>,
    /// The top-up it buys, from its metadata.
    pub top_up_id: Option<uuid::Uuid>,
}

/// A provider event, checked and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEvent {
    /// The provider's event id (`evt_…`): each is processed once.
    pub id: String,
    /// Its type (`payment_intent.succeeded`, …).
    pub kind: String,
    /// What it is about.
    pub object: EventObject,
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventObject {
    /// A payment changed (`payment_intent.*`).
    Payment(Payment),
    /// A payment was refunded at the provider: `refunded_cents` in all so far.
    Refund {
        /// The payment.
        payment_id: String,
        /// Refunded so far, in cents.
        refunded_cents: i64,
    },
    /// A hosted checkout session completed or expired (`checkout.session.*`).
    Checkout(CheckoutSession),
    /// A payment is disputed (a chargeback).
    Dispute {
        /// The payment.
        payment_id: String,
        /// The amount disputed, in cents.
        amount_cents: i64,
    },
    /// Nothing we act on.
    Other,
}

/// Why the provider refused or failed a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The card was declined.
    #[error("{0}")]
    Declined(String),
    /// No such object at the provider.
    #[error("not found at the payment provider")]
    NotFound,
    /// The provider refused the request as asked.
    #[error("the payment provider refused the request: {0}")]
    Rejected(String),
    /// The provider cannot be reached or failed; worth retrying.
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No signature header.
    #[error("the event is not signed (Stripe-Signature is required)")]
    Unsigned,
    /// No signature matches.
    #[error("the signature does not match")]
    BadSignature,
    /// Signed too long ago (a replay).
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    /// Not an event.
    #[error("the body is not an event: {0}")]
    Malformed(String),
}

/// The payment provider (Stripe's protocol, implemented in the server).
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// Its name, stored with customers (`stripe`).
    fn name(&self) -> &'static str;
    /// Makes the team's customer; returns its id. Idempotent per team.
    async fn create_customer(&self, details: &CustomerDetails) -> Result<String, ProviderError>;
    /// Updates the customer's name, email and address.
    async fn update_customer(&self, customer: &str, details: &CustomerDetails) -> Result<(), ProviderError>;
    /// The customer's saved payment methods and its default one.
    async fn payment_methods(&self, customer: &str) -> Result<(Vec<PaymentMethod>, Option<String>), ProviderError>;
    /// One payment method.
    async fn payment_method(&self, id: &str) -> Result<PaymentMethod, ProviderError>;
    /// Makes `id` the customer's default.
    async fn set_default_payment_method(&self, customer: &str, id: &str) -> Result<(), ProviderError>;
    /// Authorizes a payment off-session with manual capture (no money moves yet).
    async fn authorize(&self, request: &PaymentRequest<'_>) -> Result<Payment, ProviderError>;
    /// One payment.
    async fn payment(&self, id: &str) -> Result<Payment, ProviderError>;
    /// Captures an authorized payment.
    async fn capture(&self, id: &str, idempotency_key: &str) -> Result<Payment, ProviderError>;
    /// Cancels an authorized payment (nothing is charged).
    async fn cancel(&self, id: &str, idempotency_key: &str) -> Result<Payment, ProviderError>;
    /// Opens a hosted checkout page: a purchase, or saving a card.
    async fn checkout(&self, request: &CheckoutRequest<'_>) -> Result<CheckoutSession, ProviderError>;
    /// The payment method a completed setup saved.
    async fn setup_payment_method(&self, setup_intent: &str) -> Result<Option<String>, ProviderError>;
    /// Checks an event's signature (at `now`) and parses it.
    fn parse_event(&self, signature: Option<&str>, body: &[u8], now: Timestamp) -> Result<ProviderEvent, EventError>;
}

/// The operator's payment settings.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// The smallest top-up, in cents.
    pub min_top_up_cents: i64,
    /// The largest top-up, in cents.
    pub max_top_up_cents: i64,
    /// Cards refused by their country of issue.
    pub card_countries: CardCountryRule,
    /// The invoice series' prefix (`TG` numbers `TG-000001`, …).
    pub invoice_prefix: String,
    /// Where the provider's hosted pages return to (the console's billing page).
    pub return_url: String,
    /// How long after a month ends its invoices are issued (charges still committing land
    /// first).
    pub close_grace: chrono::Duration,
    /// How long a monthly invoice may stay unpaid before the team is blocked (with a payment
    /// provider only).
    pub unpaid_grace: chrono::Duration,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            min_top_up_cents: 500,
            max_top_up_cents: 1_000_000,
            card_countries: CardCountryRule::default(),
            invoice_prefix: "TG".into(),
            return_url: "http://localhost:8080/billing".into(),
            close_grace: chrono::Duration::hours(1),
            unpaid_grace: chrono::Duration::days(14),
        }
    }
}

/// Why a payment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// No payment provider is configured.
    #[error("Purchases are off: this platform has no payment provider configured. Ask the operator to grant credit")]
    Off,
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// An amount outside the operator's bounds.
    #[error("{0}")]
    InvalidAmount(String),
    /// Billing details that do not parse.
    #[error("{0}")]
    InvalidBillingInfo(#[from] tollgate_domain::payments::BillingInfoError),
    /// No default payment method to charge.
    #[error("The team has no default payment method; add one first")]
    NoPaymentMethod,
    /// No such payment method for this team.
    #[error("Payment method not found")]
    NoSuchPaymentMethod,
    /// No such invoice for this team.
    #[error("Invoice not found")]
    NoSuchInvoice,
    /// No such team (or it was deleted).
    #[error("no such team (or it was deleted)")]
    TeamNotFound,
    /// The card was declined.
    #[error("The payment was declined: {0}")]
    Declined(String),
    /// The card comes from a refused country; nothing was charged.
    #[error("{0}")]
    Refused(String),
    /// The provider cannot be reached, or failed.
    #[error("{0}")]
    Provider(ProviderError),
    /// A webhook that is not signed, badly signed, stale or malformed.
    #[error(transparent)]
    Event(#[from] EventError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ProviderError> for PaymentError {
    fn from(error: ProviderError) -> Self {
        match error {
            ProviderError::Declined(message) => PaymentError::Declined(message),
            other => PaymentError::Provider(other),
        }
    }
}

/// What became of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Acted on.
    Processed,
    /// Seen before: nothing done.
    Duplicate,
    /// Not about anything of ours (another type, or a payment we did not make): recorded.
    Ignored,
}

/// The payments service.
#[derive(Clone)]
pub struct Payments {
    pub(super) store: Arc<dyn Store>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) provider: Option<Arc<dyn PaymentProvider>>,
    pub(super) settings: PaymentSettings,
    credits: Option<super::Credits>,
    pub(super) notices: Option<crate::Notices>,
}

/// How often a change is retried after reading a top-up that moved meanwhile.
const RETRIES: usize = 5;

pub(super) fn require_admin(caller: &Caller, what: &'static str) -> Result<(), PaymentError> {
    if caller.allows(Permission::ManageBilling) {
        Ok(())
    } else {
        Err(PaymentError::Forbidden(what))
    }
}

impl Payments {
    /// The service; `provider` is `None` when purchases are off.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        provider: Option<Arc<dyn PaymentProvider>>,
        settings: PaymentSettings,
    ) -> Self {
        Self {
            store,
            clock,
            provider,
            settings,
            credits: None,
            notices: None,
        }
    }

    /// Failed charges and blocks are mailed to the team's Admins.
    #[must_use]
    pub fn with_notices(mut self, notices: crate::Notices) -> Self {
        self.notices = Some(notices);
        self
    }

    /// Who hears about the team's billing: its Admins, and its billing address if set.
    pub(super) async fn billing_recipients(
        &self,
        team_id: TeamId,
    ) -> Result<Vec<tollgate_domain::Email>, PaymentError> {
        let mut to = self.store.list_admin_emails(team_id).await?;
        if let Some(info) = self.store.billing_info(team_id).await?
            && let Ok(email) = tollgate_domain::Email::parse(&info.email)
            && !to.contains(&email)
        {
            to.push(email);
        }
        Ok(to)
    }

    /// Credit taken back (a refund or dispute) also stops this node's lease of it at once.
    #[must_use]
    pub fn with_credits(mut self, credits: super::Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Whether purchases are on.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    pub(super) fn provider(&self) -> Result<&dyn PaymentProvider, PaymentError> {
        self.provider.as_deref().ok_or(PaymentError::Off)
    }

    async fn customer_details(
        &self,
        team_id: TeamId,
        info: Option<&BillingInfo>,
    ) -> Result<CustomerDetails, PaymentError> {
        let team = match self.store.get_team(team_id).await {
            Ok(team) => team,
            Err(StoreError::NotFound) => return Err(PaymentError::TeamNotFound),
            Err(other) => return Err(other.into()),
        };
        Ok(match info {
            Some(info) => CustomerDetails {
                team_id,
                name: info.name.clone(),
                email: info.email.clone(),
                address: info.address.clone(),
            },
            None => CustomerDetails {
                team_id,
                name: team.name,
                email: String::new(),
                address: Address::default(),
            },
        })
    }

    /// The team's customer at the provider, made (from its billing details) if it has none.
    pub(super) async fn customer(&self, team_id: TeamId) -> Result<String, PaymentError> {
        let provider = self.provider()?;
        if let Some(id) = self.store.payment_customer(team_id).await? {
            return Ok(id);
        }
        let info = self.store.billing_info(team_id).await?;
        let details = self.customer_details(team_id, info.as_ref()).await?;
        let made = provider.create_customer(&details).await?;
        Ok(self
            .store
            .save_payment_customer(team_id, provider.name(), &made, self.clock.now())
            .await?)
    }

    /// The caller's team's billing details (Admins and management keys).
    pub async fn billing_info(&self, caller: &Caller) -> Result<Option<BillingInfo>, PaymentError> {
        require_admin(caller, "Only team Admins may see the billing details")?;
        Ok(self.store.billing_info(caller.team_id()).await?)
    }

    /// Sets the caller's team's billing details (Admins and management keys). With a provider,
    /// its customer is updated first, so a provider that cannot be reached leaves both as they
    /// were. Issued invoices keep the details they were issued with.
    pub async fn set_billing_info(
        &self,
        caller: &Caller,
        info: BillingInfo,
        context: &RequestContext,
    ) -> Result<BillingInfo, PaymentError> {
        require_admin(caller, "Only team Admins may set the billing details")?;
        let info = BillingInfo::parse(info)?;
        let team_id = caller.team_id();
        if let Some(provider) = self.provider.as_deref() {
            let details = self.customer_details(team_id, Some(&info)).await?;
            match self.store.payment_customer(team_id).await? {
                Some(customer) => provider.update_customer(&customer, &details).await?,
                None => {
                    let made = provider.create_customer(&details).await?;
                    self.store
                        .save_payment_customer(team_id, provider.name(), &made, self.clock.now())
                        .await?;
                }
            }
        }
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            caller.actor(),
            AuditAction::SetBillingInfo,
            "Set the team's billing details".to_owned(),
            Some(format!("team:{team_id}")),
            context,
        );
        self.store.set_billing_info(team_id, &info, now, &audit).await?;
        Ok(info)
    }

    /// The caller's team's saved payment methods and the id of its default (Admins and
    /// management keys). None without a provider, or before the team has a customer.
    pub async fn payment_methods(&self, caller: &Caller) -> Result<(Vec<PaymentMethod>, Option<String>), PaymentError> {
        require_admin(caller, "Only team Admins may see the payment methods")?;
        let Some(provider) = self.provider.as_deref() else {
            return Ok((Vec::new(), None));
        };
        match self.store.payment_customer(caller.team_id()).await? {
            Some(customer) => Ok(provider.payment_methods(&customer).await?),
            None => Ok((Vec::new(), None)),
        }
    }

    /// Makes one of the team's saved payment methods its default (Admins and management keys).
    /// A card from a refused country is refused here already.
    pub async fn set_default_payment_method(
        &self,
        caller: &Caller,
        payment_method: &str,
        context: &RequestContext,
    ) -> Result<PaymentMethod, PaymentError> {
        require_admin(caller, "Only team Admins may choose the default payment method")?;
        let provider = self.provider()?;
        let team_id = caller.team_id();
        let customer = self
            .store
            .payment_customer(team_id)
            .await?
            .ok_or(PaymentError::NoSuchPaymentMethod)?;
        let method = match provider.payment_method(payment_method).await {
            Ok(method) => method,
            Err(ProviderError::NotFound) => return Err(PaymentError::NoSuchPaymentMethod),
            Err(other) => return Err(other.into()),
        };
        if method.customer.as_deref() != Some(customer.as_str()) {
            return Err(PaymentError::NoSuchPaymentMethod);
        }
        let now = self.clock.now();
        if let Err(reason) = self
            .settings
            .card_countries
            .check(method.card.as_ref().and_then(|card| card.country))
        {
            let mut audit = AuditEvent::success(
                now,
                Some(team_id),
                caller.actor(),
                AuditAction::SetDefaultPaymentMethod,
                format!("Refused payment method {}: {reason}", method.id),
                Some(format!("payment_method:{}", method.id)),
                context,
            );
            audit.outcome = Outcome::Denied;
            self.store.insert_audit_event(&audit).await?;
            return Err(PaymentError::Refused(reason));
        }
        provider.set_default_payment_method(&customer, &method.id).await?;
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            caller.actor(),
            AuditAction::SetDefaultPaymentMethod,
            format!("Made {} the default payment method", describe(&method)),
            Some(format!("payment_method:{}", method.id)),
            context,
        );
        self.store.insert_audit_event(&audit).await?;
        Ok(method)
    }

    /// The caller's team's top-ups, newest first (Admins and management keys).
    pub async fn top_ups(&self, caller: &Caller, limit: u32) -> Result<Vec<TopUp>, PaymentError> {
        require_admin(caller, "Only team Admins may see the team's purchases")?;
        Ok(self.store.top_ups(caller.team_id(), limit).await?)
    }

    /// Buys `amount_cents` of prepaid credit with the team's default payment method (Admins and
    /// management keys). When a top-up is pending already, that one is returned (and carried on
    /// where it stopped) instead of a second. The card's country is checked before the money
    /// moves. The answer is the top-up: `Succeeded` when the money was captured (and the credit
    /// granted), `Pending` while the provider settles it.
    pub async fn top_up(
        &self,
        caller: &Caller,
        amount_cents: i64,
        context: &RequestContext,
    ) -> Result<TopUp, PaymentError> {
        require_admin(caller, "Only team Admins may buy credit")?;
        self.purchase(caller.team_id(), amount_cents, false, caller.actor(), context)
            .await
    }

    /// Buys credit for the team (see [`Self::top_up`]); `automatic` for the auto top-up.
    pub(super) async fn purchase(
        &self,
        team_id: TeamId,
        amount_cents: i64,
        automatic: bool,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<TopUp, PaymentError> {
        let provider = self.provider()?;
        if let Some(pending) = self.pending(team_id, &actor, context).await? {
            if pending.checkout.is_some() && pending.provider_ref.is_none() {
                // Being bought on a hosted page: it finishes there.
                return Ok(pending);
            }
            return self.carry_on(pending, actor, context).await;
        }
        let amount_cents = amount_cents.checked_abs().unwrap_or(i64::MAX);
        self.check_amount(amount_cents)?;
        let customer = self.customer(team_id).await?;
        let (_, default) = provider.payment_methods(&customer).await?;
        let payment_method = default.ok_or(PaymentError::NoPaymentMethod)?;
        let now = self.clock.now();
        let top_up = TopUp::pending(team_id, amount_cents, Some(payment_method), automatic, now);
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            actor.clone(),
            AuditAction::TopUpCredits,
            format!(
                "Asked to buy ${} of prepaid credit{}",
                format_usd(top_up.credit()),
                if automatic { " (auto top-up)" } else { "" }
            ),
            Some(format!("top_up:{}", top_up.id)),
            context,
        );
        let started = self.store.start_top_up(&top_up, &audit).await?;
        self.carry_on(started, actor, context).await
    }

    /// The team's pending top-up, if any. A hosted checkout page past its expiry (whose expiry
    /// event never came) can no longer be paid: it is closed here, so it blocks no purchase.
    pub(super) async fn pending(
        &self,
        team_id: TeamId,
        actor: &Actor,
        context: &RequestContext,
    ) -> Result<Option<TopUp>, PaymentError> {
        let Some(pending) = self.store.pending_top_up(team_id).await? else {
            return Ok(None);
        };
        let expired = pending.checkout.is_some()
            && pending.provider_ref.is_none()
            && self.clock.now()
                > pending.created_at + super::checkout::CHECKOUT_LIFETIME + chrono::Duration::minutes(5);
        if expired {
            self.close_unpaid(
                &pending,
                TopUpStatus::Canceled,
                "the checkout page expired unpaid",
                None,
                actor.clone(),
                context,
            )
            .await?;
            return Ok(None);
        }
        Ok(Some(pending))
    }

    /// An amount within the operator's bounds.
    pub(super) fn check_amount(&self, amount_cents: i64) -> Result<(), PaymentError> {
        let (min, max) = (self.settings.min_top_up_cents, self.settings.max_top_up_cents);
        if amount_cents < min || amount_cents > max {
            return Err(PaymentError::InvalidAmount(format!(
                "A top-up is between ${} and ${}",
                format_usd(cents(min)),
                format_usd(cents(max))
            )));
        }
        Ok(())
    }

    /// Takes a pending top-up as far as it goes now: authorizes it (the same payment on a
    /// retry), then checks the card and captures or cancels.
    async fn carry_on(&self, top_up: TopUp, actor: Actor, context: &RequestContext) -> Result<TopUp, PaymentError> {
        let provider = self.provider()?;
        let payment = match &top_up.provider_ref {
            Some(id) => provider.payment(id).await?,
            None => {
                let customer = self.customer(top_up.team_id).await?;
                let method = top_up.payment_method.clone().ok_or(PaymentError::NoPaymentMethod)?;
                let request = PaymentRequest {
                    customer: &customer,
                    payment_method: &method,
                    amount_cents: top_up.amount_cents,
                    idempotency_key: format!("top-up:{}", top_up.id),
                    team_id: top_up.team_id,
                    purpose: Purpose::TopUp(top_up.id),
                };
                match provider.authorize(&request).await {
                    Ok(payment) => payment,
                    Err(ProviderError::Declined(message)) => {
                        self.close_unpaid(&top_up, TopUpStatus::Failed, &message, None, actor, context)
                            .await?;
                        return Err(PaymentError::Declined(message));
                    }
                    Err(other) => return Err(other.into()),
                }
            }
        };
        let top_up = self.note_payment(top_up, &payment).await?;
        self.advance(top_up, payment, None, actor, context).await
    }

    /// Records the provider's payment id on the top-up, if it is new.
    pub(super) async fn note_payment(&self, top_up: TopUp, payment: &Payment) -> Result<TopUp, PaymentError> {
        if top_up.provider_ref.as_deref() == Some(payment.id.as_str()) {
            return Ok(top_up);
        }
        let change = TopUpChange {
            top_up_id: top_up.id,
            event: None,
            expect_status: top_up.status,
            expect_taken_back_cents: top_up.taken_back_cents,
            status: top_up.status,
            failure: None,
            taken_back_cents: top_up.taken_back_cents,
            provider_ref: Some(&payment.id),
            payment_method: payment.payment_method.as_deref(),
            entry: None,
            audit: None,
            at: self.clock.now(),
        };
        self.store.change_top_up(&change).await?;
        Ok(self.reread(&top_up).await?.unwrap_or(top_up))
    }

    async fn reread(&self, top_up: &TopUp) -> Result<Option<TopUp>, StoreError> {
        self.store.top_up(top_up.team_id, top_up.id).await
    }

    /// Moves a top-up as its payment says: an authorized card is checked and captured (or
    /// cancelled), a captured payment grants the credit, a failed one fails it.
    pub(super) async fn advance(
        &self,
        top_up: TopUp,
        payment: Payment,
        event: Option<(&str, &str)>,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<TopUp, PaymentError> {
        let provider = self.provider()?;
        match payment.status {
            // Pending, or failed before (a hosted page's first card declined, a second one
            // authorized): checked, then captured.
            PaymentStatus::RequiresCapture if matches!(top_up.status, TopUpStatus::Pending | TopUpStatus::Failed) => {
                let method = match &payment.payment_method {
                    Some(id) => Some(provider.payment_method(id).await?),
                    None => None,
                };
                let country = method
                    .as_ref()
                    .and_then(|m| m.card.as_ref())
                    .and_then(|card| card.country);
                if let Err(reason) = self.settings.card_countries.check(country) {
                    provider.cancel(&payment.id, &format!("cancel:{}", top_up.id)).await?;
                    self.close_unpaid(&top_up, TopUpStatus::Refused, &reason, event, actor, context)
                        .await?;
                    return Err(PaymentError::Refused(reason));
                }
                let captured = provider.capture(&payment.id, &format!("capture:{}", top_up.id)).await?;
                if captured.status == PaymentStatus::Succeeded {
                    self.grant(top_up, &captured, event, actor, context).await
                } else {
                    self.record(event).await?;
                    Ok(top_up)
                }
            }
            PaymentStatus::Succeeded => self.grant(top_up, &payment, event, actor, context).await,
            PaymentStatus::RequiresCapture if top_up.status != TopUpStatus::Succeeded => {
                // Authorized for a purchase that is over (refused, or cancelled: an expired page):
                // the hold on the card is released, never captured.
                provider.cancel(&payment.id, &format!("cancel:{}", top_up.id)).await?;
                self.record(event).await?;
                Ok(top_up)
            }
            PaymentStatus::RequiresAction | PaymentStatus::RequiresPaymentMethod | PaymentStatus::Canceled
                if top_up.status == TopUpStatus::Pending =>
            {
                let (status, why) = match payment.status {
                    PaymentStatus::Canceled => (TopUpStatus::Canceled, "the payment was cancelled".to_owned()),
                    PaymentStatus::RequiresAction => (
                        TopUpStatus::Failed,
                        "the card asks for authentication, which a top-up cannot do; use another card".to_owned(),
                    ),
                    _ => (
                        TopUpStatus::Failed,
                        payment
                            .failure
                            .clone()
                            .unwrap_or_else(|| "the payment failed".to_owned()),
                    ),
                };
                if payment.status == PaymentStatus::RequiresAction {
                    provider.cancel(&payment.id, &format!("cancel:{}", top_up.id)).await?;
                }
                self.close_unpaid(&top_up, status, &why, event, actor, context).await?;
                if status == TopUpStatus::Failed {
                    return Err(PaymentError::Declined(why));
                }
                Ok(self.reread(&top_up).await?.unwrap_or(top_up))
            }
            _ => {
                self.record(event).await?;
                Ok(top_up)
            }
        }
    }

    async fn record(&self, event: Option<(&str, &str)>) -> Result<(), PaymentError> {
        if let Some((id, kind)) = event {
            self.store.record_payment_event(id, kind, self.clock.now()).await?;
        }
        Ok(())
    }

    /// Grants the credit a captured payment bought, once (the entry is keyed by the top-up).
    /// Money captured wins over an earlier failure or cancellation.
    async fn grant(
        &self,
        mut top_up: TopUp,
        payment: &Payment,
        event: Option<(&str, &str)>,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<TopUp, PaymentError> {
        for _ in 0..RETRIES {
            if top_up.status == TopUpStatus::Succeeded {
                self.record(event).await?;
                return Ok(top_up);
            }
            // What was asked for is what is captured (in full, never partly); a provider that
            // says otherwise is logged, and the purchase (and its receipt) stays as asked.
            let received = top_up.amount_cents;
            if payment.received_cents > 0 && payment.received_cents != received {
                tracing::warn!(
                    payment = %payment.id,
                    asked = received,
                    received = payment.received_cents,
                    "the provider captured another amount than the top-up asked for"
                );
            }
            let now = self.clock.now();
            let entry = LedgerEntry {
                id: uuid::Uuid::now_v7(),
                team_id: top_up.team_id,
                kind: EntryKind::Purchase,
                bucket: Bucket::Prepaid,
                amount: cents(received),
                idempotency_key: format!("top-up:{}", top_up.id),
                lot_id: None,
                expires_at: None,
                reason: Some(format!("payment {}", payment.id)),
                created_at: now,
            };
            let audit = AuditEvent::success(
                now,
                Some(top_up.team_id),
                actor.clone(),
                AuditAction::TopUpCredits,
                format!(
                    "Bought ${} of prepaid credit (payment {})",
                    format_usd(entry.amount),
                    payment.id
                ),
                Some(format!("top_up:{}", top_up.id)),
                context,
            );
            let change = TopUpChange {
                top_up_id: top_up.id,
                event,
                expect_status: top_up.status,
                expect_taken_back_cents: top_up.taken_back_cents,
                status: TopUpStatus::Succeeded,
                failure: None,
                taken_back_cents: top_up.taken_back_cents,
                provider_ref: Some(&payment.id),
                payment_method: payment.payment_method.as_deref(),
                entry: Some(&entry),
                audit: Some(&audit),
                at: now,
            };
            match self.store.change_top_up(&change).await? {
                Changed::Applied | Changed::Duplicate => {
                    let granted = self.reread(&top_up).await?.unwrap_or(top_up);
                    // The receipt follows; were this node to stop first, the billing job issues it.
                    if let Err(error) = self.issue_receipt(&granted).await {
                        tracing::warn!(%error, top_up.id = %granted.id, "the receipt will be issued by the billing job");
                    }
                    return Ok(granted);
                }
                Changed::Stale => match self.reread(&top_up).await? {
                    Some(fresh) => top_up = fresh,
                    None => return Ok(top_up),
                },
            }
        }
        Err(PaymentError::Provider(ProviderError::Unavailable(
            "the top-up kept changing; retry".into(),
        )))
    }

    /// Moves a pending top-up to `status` (failed, refused, cancelled), audited.
    pub(super) async fn close_unpaid(
        &self,
        top_up: &TopUp,
        status: TopUpStatus,
        why: &str,
        event: Option<(&str, &str)>,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<(), PaymentError> {
        let now = self.clock.now();
        let (action, outcome, description) = match status {
            TopUpStatus::Refused => (
                AuditAction::RefuseTopUp,
                Outcome::Denied,
                format!(
                    "Refused a purchase of ${} before money moved: {why}",
                    format_usd(top_up.credit())
                ),
            ),
            _ => (
                AuditAction::TopUpCredits,
                Outcome::Failure,
                format!("A purchase of ${} failed: {why}", format_usd(top_up.credit())),
            ),
        };
        let mut audit = AuditEvent::success(
            now,
            Some(top_up.team_id),
            actor,
            action,
            description,
            Some(format!("top_up:{}", top_up.id)),
            context,
        );
        audit.outcome = outcome;
        let change = TopUpChange {
            top_up_id: top_up.id,
            event,
            expect_status: top_up.status,
            expect_taken_back_cents: top_up.taken_back_cents,
            status,
            failure: Some(why),
            taken_back_cents: top_up.taken_back_cents,
            provider_ref: None,
            payment_method: None,
            entry: None,
            audit: Some(&audit),
            at: now,
        };
        if self.store.change_top_up(&change).await? == Changed::Stale {
            // It moved meanwhile (e.g. captured): nothing to fail; the event is still processed.
            self.record(event).await?;
        }
        Ok(())
    }

    /// Takes credit back after a refund or dispute: `total` cents taken back in all (never
    /// more than was bought), the difference as a negative entry.
    async fn take_back(
        &self,
        mut top_up: TopUp,
        total: impl Fn(&TopUp) -> i64,
        what: &str,
        event: (&str, &str),
    ) -> Result<EventOutcome, PaymentError> {
        for _ in 0..RETRIES {
            let new_total = total(&top_up).clamp(top_up.taken_back_cents, top_up.amount_cents);
            let now = self.clock.now();
            let difference = new_total - top_up.taken_back_cents;
            let entry = LedgerEntry {
                id: uuid::Uuid::now_v7(),
                team_id: top_up.team_id,
                kind: EntryKind::Refund,
                bucket: Bucket::Prepaid,
                amount: cents(-difference),
                idempotency_key: format!("take-back:{}", event.0),
                lot_id: None,
                expires_at: None,
                reason: Some(format!(
                    "{what} of payment {}",
                    top_up.provider_ref.as_deref().unwrap_or("?")
                )),
                created_at: now,
            };
            let audit = AuditEvent::success(
                now,
                Some(top_up.team_id),
                Actor::System,
                AuditAction::RefundCredits,
                format!(
                    "Took back ${} of bought credit: {what} at the payment provider",
                    format_usd(cents(difference))
                ),
                Some(format!("top_up:{}", top_up.id)),
                &RequestContext::default(),
            );
            let change = TopUpChange {
                top_up_id: top_up.id,
                event: Some(event),
                expect_status: top_up.status,
                expect_taken_back_cents: top_up.taken_back_cents,
                status: top_up.status,
                failure: None,
                taken_back_cents: new_total,
                provider_ref: None,
                payment_method: None,
                entry: (difference > 0).then_some(&entry),
                audit: (difference > 0).then_some(&audit),
                at: now,
            };
            match self.store.change_top_up(&change).await? {
                Changed::Applied => {
                    if difference > 0
                        && let Some(credits) = &self.credits
                    {
                        credits.revoke(top_up.team_id);
                    }
                    return Ok(EventOutcome::Processed);
                }
                Changed::Duplicate => return Ok(EventOutcome::Duplicate),
                Changed::Stale => match self.reread(&top_up).await? {
                    Some(fresh) => top_up = fresh,
                    None => return Ok(EventOutcome::Ignored),
                },
            }
        }
        Err(PaymentError::Provider(ProviderError::Unavailable(
            "the top-up kept changing; retry".into(),
        )))
    }

    /// Finds the top-up a payment belongs to: by the provider's id, else by its metadata.
    async fn top_up_of(
        &self,
        payment_id: &str,
        metadata: Option<(TeamId, uuid::Uuid)>,
    ) -> Result<Option<TopUp>, PaymentError> {
        if let Some(top_up) = self.store.top_up_by_ref(payment_id).await? {
            return Ok(Some(top_up));
        }
        match metadata {
            Some((team_id, id)) => Ok(self.store.top_up(team_id, id).await?),
            None => Ok(None),
        }
    }

    /// Handles a webhook: checks its signature (refused: nothing happens), then acts on it once.
    pub async fn handle_event(
        &self,
        signature: Option<&str>,
        body: &[u8],
        context: &RequestContext,
    ) -> Result<EventOutcome, PaymentError> {
        let provider = self.provider()?;
        let event = provider.parse_event(signature, body, self.clock.now())?;
        if self.store.payment_event_seen(&event.id).await? {
            return Ok(EventOutcome::Duplicate);
        }
        let seen = (event.id.as_str(), event.kind.as_str());
        match &event.object {
            EventObject::Payment(payment) => {
                let top_up_id = match payment.purpose {
                    Some((team, Purpose::TopUp(id))) => Some((team, id)),
                    Some((_, Purpose::Invoice(_))) => {
                        return self.invoice_event(&event.kind, payment, seen, context).await;
                    }
                    None => None,
                };
                let Some(top_up) = self.top_up_of(&payment.id, top_up_id).await? else {
                    if self.store.invoice_by_payment(&payment.id).await?.is_some() {
                        return self.invoice_event(&event.kind, payment, seen, context).await;
                    }
                    return self.ignore(seen).await;
                };
                let top_up = self.note_payment(top_up, payment).await?;
                let payment = match event.kind.as_str() {
                    // An authorization: act on the payment as it is now, not as the event saw it.
                    "payment_intent.amount_capturable_updated" => provider.payment(&payment.id).await?,
                    "payment_intent.succeeded" => Payment {
                        status: PaymentStatus::Succeeded,
                        ..payment.clone()
                    },
                    // On a hosted page the person may try another card: the page's end decides.
                    "payment_intent.payment_failed" if top_up.checkout.is_some() => {
                        return self.ignore(seen).await.map(|_| EventOutcome::Processed);
                    }
                    "payment_intent.payment_failed" => Payment {
                        status: PaymentStatus::RequiresPaymentMethod,
                        ..payment.clone()
                    },
                    "payment_intent.canceled" => Payment {
                        status: PaymentStatus::Canceled,
                        ..payment.clone()
                    },
                    _ => return self.ignore(seen).await,
                };
                match self.advance(top_up, payment, Some(seen), Actor::System, context).await {
                    Ok(_) | Err(PaymentError::Refused(_) | PaymentError::Declined(_)) => Ok(EventOutcome::Processed),
                    Err(other) => Err(other),
                }
            }
            EventObject::Refund {
                payment_id,
                refunded_cents,
            } => {
                let Some(top_up) = self.top_up_of(payment_id, None).await? else {
                    return self.ignore(seen).await;
                };
                let refunded = *refunded_cents;
                self.take_back(top_up, |t| t.taken_back_cents.max(refunded), "a refund", seen)
                    .await
            }
            EventObject::Dispute {
                payment_id,
                amount_cents,
            } => {
                let Some(top_up) = self.top_up_of(payment_id, None).await? else {
                    return self.ignore(seen).await;
                };
                let disputed = *amount_cents;
                self.take_back(
                    top_up,
                    |t| t.taken_back_cents.saturating_add(disputed),
                    "a dispute",
                    seen,
                )
                .await
            }
            EventObject::Checkout(session) => self.checkout_event(&event.kind, session, seen, context).await,
            EventObject::Other => self.ignore(seen).await,
        }
    }

    pub(super) async fn ignore(&self, (id, kind): (&str, &str)) -> Result<EventOutcome, PaymentError> {
        if self.store.record_payment_event(id, kind, self.clock.now()).await? {
            Ok(EventOutcome::Ignored)
        } else {
            Ok(EventOutcome::Duplicate)
        }
    }
}

/// "visa •••• 4242", for the audit log.
fn describe(method: &PaymentMethod) -> String {
    match &method.card {
        Some(card) => format!("{} card ending {} ({})", card.brand, card.last4, method.id),
        None => format!("{} ({})", method.kind, method.id),
    }
}
