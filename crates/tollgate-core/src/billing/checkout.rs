//! The provider's hosted checkout pages: buying credit as a guest of the page (PCI-light: card
//! numbers never reach us), and saving a card. A purchase is authorized with manual capture, so
//! its card's country is checked before the money moves, as for top-ups with a saved card; the
//! `checkout.session.completed` event arrives unpaid and is not itself the trigger — the
//! authorized payment is checked, captured and granted.

use tollgate_domain::ledger::format_usd;
use tollgate_domain::{Actor, AuditAction, AuditEvent, Outcome, RequestContext, TopUp, TopUpStatus};

use super::payments::{
    CheckoutRequest, CheckoutSession, EventOutcome, PaymentError, Payments, ProviderError, require_admin,
};
use crate::Caller;

/// How long a checkout page stays open.
pub(super) const CHECKOUT_LIFETIME: chrono::Duration = chrono::Duration::hours(1);

impl Payments {
    /// Opens a hosted checkout page buying `amount_cents` of prepaid credit (Admins and
    /// management keys). While one is open, it is returned again; while a top-up with the saved
    /// card is pending, that one is. The answer's `checkout` holds the page to send the person to.
    pub async fn checkout_top_up(
        &self,
        caller: &Caller,
        amount_cents: i64,
        context: &RequestContext,
    ) -> Result<TopUp, PaymentError> {
        require_admin(caller, "Only team Admins may buy credit")?;
        let provider = self.provider()?;
        let team_id = caller.team_id();
        if let Some(pending) = self.pending(team_id, &caller.actor(), context).await? {
            return Ok(pending);
        }
        let amount_cents = amount_cents.checked_abs().unwrap_or(i64::MAX);
        self.check_amount(amount_cents)?;
        let customer = self.customer(team_id).await?;
        let now = self.clock.now();
        let top_up = TopUp::pending(team_id, amount_cents, None, false, now);
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            caller.actor(),
            AuditAction::TopUpCredits,
            format!(
                "Opened a checkout page to buy ${} of prepaid credit",
                format_usd(top_up.credit())
            ),
            Some(format!("top_up:{}", top_up.id)),
            context,
        );
        let started = self.store.start_top_up(&top_up, &audit).await?;
        if started.id != top_up.id {
            return Ok(started);
        }
        let request = CheckoutRequest {
            customer: &customer,
            purchase: Some((amount_cents, top_up.id)),
            team_id,
            return_url: &self.settings.return_url,
            idempotency_key: format!("checkout:{}", top_up.id),
            expires_at: now + CHECKOUT_LIFETIME,
        };
        let session = match provider.checkout(&request).await {
            Ok(session) => session,
            Err(error) => {
                // Nothing was bought: the top-up is not left pending, so the next try starts afresh.
                self.close_unpaid(
                    &started,
                    TopUpStatus::Canceled,
                    &error.to_string(),
                    None,
                    caller.actor(),
                    context,
                )
                .await?;
                return Err(error.into());
            }
        };
        let url = session.url.clone().unwrap_or_default();
        self.store.set_top_up_checkout(top_up.id, &session.id, &url).await?;
        Ok(TopUp {
            checkout: Some((session.id, url)),
            ..started
        })
    }

    /// Opens a hosted page where an Admin saves a card to the team (Admins and management keys);
    /// returns the page. The card becomes the default if the team has none.
    pub async fn add_payment_method(&self, caller: &Caller) -> Result<String, PaymentError> {
        require_admin(caller, "Only team Admins may add payment methods")?;
        let provider = self.provider()?;
        let team_id = caller.team_id();
        let customer = self.customer(team_id).await?;
        let now = self.clock.now();
        let request = CheckoutRequest {
            customer: &customer,
            purchase: None,
            team_id,
            return_url: &self.settings.return_url,
            idempotency_key: format!("setup:{team_id}:{}", uuid::Uuid::now_v7()),
            expires_at: now + CHECKOUT_LIFETIME,
        };
        let session = provider.checkout(&request).await?;
        session
            .url
            .ok_or_else(|| PaymentError::Provider(ProviderError::Rejected("the checkout session has no page".into())))
    }

    /// A `checkout.session.*` event.
    pub(super) async fn checkout_event(
        &self,
        kind: &str,
        session: &CheckoutSession,
        seen: (&str, &str),
        context: &RequestContext,
    ) -> Result<EventOutcome, PaymentError> {
        let provider = self.provider()?;
        match (kind, session.mode.as_str()) {
            ("checkout.session.completed", "payment") => {
                let (Some(team_id), Some(top_up_id), Some(payment_id)) =
                    (session.team_id, session.top_up_id, session.payment_intent.as_deref())
                else {
                    return self.ignore(seen).await;
                };
                let Some(top_up) = self.store.top_up(team_id, top_up_id).await? else {
                    return self.ignore(seen).await;
                };
                // Completed is not paid: with manual capture the payment is only authorized.
                // It is checked and captured (or cancelled) as it is now.
                let payment = provider.payment(payment_id).await?;
                let top_up = self.note_payment(top_up, &payment).await?;
                match self.advance(top_up, payment, Some(seen), Actor::System, context).await {
                    Ok(_) | Err(PaymentError::Refused(_) | PaymentError::Declined(_)) => Ok(EventOutcome::Processed),
                    Err(other) => Err(other),
                }
            }
            ("checkout.session.completed", "setup") => {
                let (Some(team_id), Some(setup)) = (session.team_id, session.setup_intent.as_deref()) else {
                    return self.ignore(seen).await;
                };
                let Some(method) = provider.setup_payment_method(setup).await? else {
                    return self.ignore(seen).await;
                };
                self.card_saved(team_id, &method).await?;
                self.ignore(seen).await.map(|_| EventOutcome::Processed)
            }
            ("checkout.session.expired", "payment") => {
                let (Some(team_id), Some(top_up_id)) = (session.team_id, session.top_up_id) else {
                    return self.ignore(seen).await;
                };
                match self.store.top_up(team_id, top_up_id).await? {
                    Some(top_up) if top_up.status == TopUpStatus::Pending => {
                        self.close_unpaid(
                            &top_up,
                            TopUpStatus::Canceled,
                            "the checkout page expired unpaid",
                            Some(seen),
                            Actor::System,
                            context,
                        )
                        .await?;
                        Ok(EventOutcome::Processed)
                    }
                    _ => self.ignore(seen).await,
                }
            }
            _ => self.ignore(seen).await,
        }
    }

    /// A card saved on the hosted page: audited, and made the default when the team has none
    /// (unless its country is refused).
    async fn card_saved(&self, team_id: tollgate_domain::TeamId, method_id: &str) -> Result<(), PaymentError> {
        let provider = self.provider()?;
        let Some(customer) = self.store.payment_customer(team_id).await? else {
            return Ok(());
        };
        let method = provider.payment_method(method_id).await?;
        let (_, default) = provider.payment_methods(&customer).await?;
        let refusal = self
            .settings
            .card_countries
            .check(method.card.as_ref().and_then(|card| card.country))
            .err();
        let now = self.clock.now();
        let made_default = default.is_none() && refusal.is_none();
        if made_default {
            provider.set_default_payment_method(&customer, &method.id).await?;
        }
        let description = match (&refusal, made_default) {
            (Some(reason), _) => format!("A card ({}) was saved but cannot be used: {reason}", method.id),
            (None, true) => format!("A card ({}) was saved and made the default payment method", method.id),
            (None, false) => format!("A card ({}) was saved", method.id),
        };
        let mut audit = AuditEvent::success(
            now,
            Some(team_id),
            Actor::System,
            AuditAction::SetDefaultPaymentMethod,
            description,
            Some(format!("payment_method:{}", method.id)),
            &RequestContext::default(),
        );
        if refusal.is_some() {
            audit.outcome = Outcome::Denied;
        }
        self.store.insert_audit_event(&audit).await?;
        Ok(())
    }
}
