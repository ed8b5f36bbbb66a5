//! The payment provider: Stripe's REST API (form-encoded requests, JSON answers, an
//! `Idempotency-Key` on every change) and its webhook protocol.
//!
//! **Webhook signatures** (Stripe's `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`): HMAC-SHA256
//! over `"{t}.{raw body}"`, keyed with the `whsec_…` string's own bytes; any `v1` may match (a
//! secret being rolled signs twice); compared in constant time; a timestamp older than 300 s is
//! refused (a replay), as Stripe's libraries do.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use tollgate_core::billing::{
    Card, CheckoutRequest, CheckoutSession, CustomerDetails, EventError, EventObject, Payment, PaymentMethod,
    PaymentProvider, PaymentRequest, PaymentStatus, ProviderError, ProviderEvent, Purpose,
};
use tollgate_domain::{TeamId, Timestamp};

/// How old a signed event may be, in seconds (Stripe's `DEFAULT_TOLERANCE`).
pub const TOLERANCE_SECONDS: i64 = 300;

/// The API version the shapes below are read in.
const API_VERSION: &str = "2024-06-20";

/// Stripe, over HTTP.
pub struct Stripe {
    http: reqwest::Client,
    api_base: String,
    secret_key: SecretString,
    webhook_secret: SecretString,
}

impl Stripe {
    /// A client for the API at `api_base` (`https://api.stripe.com`).
    pub fn new(api_base: &str, secret_key: SecretString, webhook_secret: SecretString) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            api_base: api_base.trim_end_matches('/').to_owned(),
            secret_key,
            webhook_secret,
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<T, ProviderError> {
        let url = format!("{}{path}", self.api_base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.secret_key.expose_secret())
            .header("Stripe-Version", API_VERSION);
        if method == reqwest::Method::GET {
            request = request.query(form);
        } else {
            request = request.form(form);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ProviderError::Unavailable(e.without_url().to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| ProviderError::Unavailable(format!("an answer we cannot read: {e}")));
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .and_then(|b| b.error.message)
            .unwrap_or_else(|| format!("HTTP {status}"));
        tracing::warn!(%status, path, error = %message, "Stripe refused a request");
        Err(match status.as_u16() {
            402 => ProviderError::Declined(message),
            404 => ProviderError::NotFound,
            429 | 500..=599 => ProviderError::Unavailable(message),
            _ => ProviderError::Rejected(message),
        })
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: Option<String>,
}

#[derive(Deserialize)]
struct CustomerObject {
    id: String,
    #[serde(default)]
    invoice_settings: Option<InvoiceSettings>,
}

#[derive(Deserialize)]
struct InvoiceSettings {
    default_payment_method: Option<IdOrObject>,
}

/// An expandable field: an id, or the object with its id.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdOrObject {
    Id(String),
    Object { id: String },
}

impl IdOrObject {
    fn into_id(self) -> String {
        match self {
            IdOrObject::Id(id) | IdOrObject::Object { id } => id,
        }
    }
}

#[derive(Deserialize)]
struct PaymentMethodObject {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    customer: Option<IdOrObject>,
    card: Option<CardObject>,
}

#[derive(Deserialize)]
struct CardObject {
    #[serde(default)]
    brand: String,
    #[serde(default)]
    last4: String,
    #[serde(default)]
    exp_month: u32,
    #[serde(default)]
    exp_year: u32,
    country: Option<String>,
}

impl From<PaymentMethodObject> for PaymentMethod {
    fn from(object: PaymentMethodObject) -> Self {
        PaymentMethod {
            id: object.id,
            kind: object.kind,
            customer: object.customer.map(IdOrObject::into_id),
            card: object.card.map(|card| Card {
                brand: card.brand,
                last4: card.last4,
                exp_month: card.exp_month,
                exp_year: card.exp_year,
                country: card.country.and_then(|c| c.parse().ok()),
            }),
        }
    }
}

#[derive(Deserialize)]
struct ListObject<T> {
    data: Vec<T>,
}

#[derive(Deserialize)]
struct PaymentIntentObject {
    id: String,
    status: String,
    #[serde(default)]
    amount: i64,
    #[serde(default)]
    amount_received: i64,
    payment_method: Option<IdOrObject>,
    last_payment_error: Option<ErrorDetail>,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

impl From<PaymentIntentObject> for Payment {
    fn from(object: PaymentIntentObject) -> Self {
        let status = match object.status.as_str() {
            "requires_capture" => PaymentStatus::RequiresCapture,
            "succeeded" => PaymentStatus::Succeeded,
            "processing" => PaymentStatus::Processing,
            "requires_action" => PaymentStatus::RequiresAction,
            "requires_payment_method" => PaymentStatus::RequiresPaymentMethod,
            "canceled" => PaymentStatus::Canceled,
            _ => PaymentStatus::Other,
        };
        let id = |key: &str| object.metadata.get(key).and_then(|v| v.parse::<uuid::Uuid>().ok());
        let purpose = id("top_up_id")
            .map(Purpose::TopUp)
            .or_else(|| id("invoice_id").map(Purpose::Invoice));
        let purpose = id("team_id").zip(purpose).map(|(team, p)| (TeamId::from_uuid(team), p));
        Payment {
            id: object.id,
            status,
            amount_cents: object.amount,
            received_cents: object.amount_received,
            payment_method: object.payment_method.map(IdOrObject::into_id),
            failure: object.last_payment_error.and_then(|e| e.message),
            purpose,
        }
    }
}

fn customer_form(details: &CustomerDetails) -> Vec<(String, String)> {
    let mut form = vec![
        ("name".to_owned(), details.name.clone()),
        ("metadata[team_id]".to_owned(), details.team_id.to_string()),
    ];
    if !details.email.is_empty() {
        form.push(("email".to_owned(), details.email.clone()));
    }
    let address = &details.address;
    if let Some(country) = address.country {
        for (field, value) in [
            ("line1", &address.line1),
            ("line2", &address.line2),
            ("city", &address.city),
            ("state", &address.state),
            ("postal_code", &address.postal_code),
        ] {
            if !value.is_empty() {
                form.push((format!("address[{field}]"), value.clone()));
            }
        }
        form.push(("address[country]".to_owned(), country.to_string()));
    }
    form
}

#[async_trait]
impl PaymentProvider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn create_customer(&self, details: &CustomerDetails) -> Result<String, ProviderError> {
        let key = format!("customer:{}", details.team_id);
        let customer: CustomerObject = self
            .call(
                reqwest::Method::POST,
                "/v1/customers",
                &customer_form(details),
                Some(&key),
            )
            .await?;
        Ok(customer.id)
    }

    async fn update_customer(&self, customer: &str, details: &CustomerDetails) -> Result<(), ProviderError> {
        let _: CustomerObject = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/customers/{customer}"),
                &customer_form(details),
                Some(&format!("customer:{customer}:{}", uuid::Uuid::now_v7())),
            )
            .await?;
        Ok(())
    }

    async fn payment_methods(&self, customer: &str) -> Result<(Vec<PaymentMethod>, Option<String>), ProviderError> {
        let owner: CustomerObject = self
            .call(reqwest::Method::GET, &format!("/v1/customers/{customer}"), &[], None)
            .await?;
        let query = [
            ("customer".to_owned(), customer.to_owned()),
            ("type".to_owned(), "card".to_owned()),
            ("limit".to_owned(), "100".to_owned()),
        ];
        let list: ListObject<PaymentMethodObject> = self
            .call(reqwest::Method::GET, "/v1/payment_methods", &query, None)
            .await?;
        let default = owner
            .invoice_settings
            .and_then(|settings| settings.default_payment_method)
            .map(IdOrObject::into_id);
        Ok((list.data.into_iter().map(PaymentMethod::from).collect(), default))
    }

    async fn payment_method(&self, id: &str) -> Result<PaymentMethod, ProviderError> {
        let method: PaymentMethodObject = self
            .call(reqwest::Method::GET, &format!("/v1/payment_methods/{id}"), &[], None)
            .await?;
        Ok(method.into())
    }

    async fn set_default_payment_method(&self, customer: &str, id: &str) -> Result<(), ProviderError> {
        let form = [("invoice_settings[default_payment_method]".to_owned(), id.to_owned())];
        let _: CustomerObject = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/customers/{customer}"),
                &form,
                Some(&format!("default:{customer}:{id}:{}", uuid::Uuid::now_v7())),
            )
            .await?;
        Ok(())
    }

    async fn authorize(&self, request: &PaymentRequest<'_>) -> Result<Payment, ProviderError> {
        let form = [
            ("amount".to_owned(), request.amount_cents.to_string()),
            ("currency".to_owned(), "usd".to_owned()),
            ("customer".to_owned(), request.customer.to_owned()),
            ("payment_method".to_owned(), request.payment_method.to_owned()),
            ("capture_method".to_owned(), "manual".to_owned()),
            ("confirm".to_owned(), "true".to_owned()),
            ("off_session".to_owned(), "true".to_owned()),
            ("metadata[team_id]".to_owned(), request.team_id.to_string()),
            match request.purpose {
                Purpose::TopUp(id) => ("metadata[top_up_id]".to_owned(), id.to_string()),
                Purpose::Invoice(id) => ("metadata[invoice_id]".to_owned(), id.to_string()),
            },
        ];
        let intent: PaymentIntentObject = self
            .call(
                reqwest::Method::POST,
                "/v1/payment_intents",
                &form,
                Some(&request.idempotency_key),
            )
            .await?;
        Ok(intent.into())
    }

    async fn payment(&self, id: &str) -> Result<Payment, ProviderError> {
        let intent: PaymentIntentObject = self
            .call(reqwest::Method::GET, &format!("/v1/payment_intents/{id}"), &[], None)
            .await?;
        Ok(intent.into())
    }

    async fn capture(&self, id: &str, idempotency_key: &str) -> Result<Payment, ProviderError> {
        let intent: PaymentIntentObject = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/payment_intents/{id}/capture"),
                &[],
                Some(idempotency_key),
            )
            .await?;
        Ok(intent.into())
    }

    async fn cancel(&self, id: &str, idempotency_key: &str) -> Result<Payment, ProviderError> {
        let intent: PaymentIntentObject = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/payment_intents/{id}/cancel"),
                &[],
                Some(idempotency_key),
            )
            .await?;
        Ok(intent.into())
    }

    async fn checkout(&self, request: &CheckoutRequest<'_>) -> Result<CheckoutSession, ProviderError> {
        let mut form = vec![
            ("customer".to_owned(), request.customer.to_owned()),
            ("metadata[team_id]".to_owned(), request.team_id.to_string()),
            (
                "success_url".to_owned(),
                format!("{}?checkout=complete", request.return_url),
            ),
            (
                "cancel_url".to_owned(),
                format!("{}?checkout=cancelled", request.return_url),
            ),
            ("expires_at".to_owned(), request.expires_at.timestamp().to_string()),
        ];
        match request.purchase {
            Some((amount_cents, top_up)) => form.extend([
                ("mode".to_owned(), "payment".to_owned()),
                ("line_items[0][price_data][currency]".to_owned(), "usd".to_owned()),
                (
                    "line_items[0][price_data][unit_amount]".to_owned(),
                    amount_cents.to_string(),
                ),
                (
                    "line_items[0][price_data][product_data][name]".to_owned(),
                    "Prepaid API credit".to_owned(),
                ),
                ("line_items[0][quantity]".to_owned(), "1".to_owned()),
                ("payment_intent_data[capture_method]".to_owned(), "manual".to_owned()),
                (
                    "payment_intent_data[metadata][team_id]".to_owned(),
                    request.team_id.to_string(),
                ),
                (
                    "payment_intent_data[metadata][top_up_id]".to_owned(),
                    top_up.to_string(),
                ),
                ("metadata[top_up_id]".to_owned(), top_up.to_string()),
            ]),
            None => form.extend([
                ("mode".to_owned(), "setup".to_owned()),
                ("currency".to_owned(), "usd".to_owned()),
            ]),
        }
        let session: CheckoutSessionObject = self
            .call(
                reqwest::Method::POST,
                "/v1/checkout/sessions",
                &form,
                Some(&request.idempotency_key),
            )
            .await?;
        Ok(session.into())
    }

    async fn setup_payment_method(&self, setup_intent: &str) -> Result<Option<String>, ProviderError> {
        let intent: SetupIntentObject = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/setup_intents/{setup_intent}"),
                &[],
                None,
            )
            .await?;
        Ok(intent.payment_method.map(IdOrObject::into_id))
    }

    fn parse_event(&self, signature: Option<&str>, body: &[u8], now: Timestamp) -> Result<ProviderEvent, EventError> {
        verify_signature(
            self.webhook_secret.expose_secret().as_bytes(),
            signature.ok_or(EventError::Unsigned)?,
            body,
            now.timestamp(),
        )?;
        parse_event(body)
    }
}

/// Checks a `Stripe-Signature` header over `body` at `now` (Unix seconds).
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], now: i64) -> Result<(), EventError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(EventError::BadSignature)?;
    let matches = signatures.iter().any(|signature| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(signature).is_ok()
    });
    if !matches {
        return Err(EventError::BadSignature);
    }
    if timestamp < now.saturating_sub(TOLERANCE_SECONDS) {
        return Err(EventError::Stale);
    }
    Ok(())
}

#[derive(Deserialize)]
struct EventBody {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct SetupIntentObject {
    payment_method: Option<IdOrObject>,
}

#[derive(Deserialize)]
struct CheckoutSessionObject {
    id: String,
    url: Option<String>,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    status: Option<String>,
    payment_intent: Option<IdOrObject>,
    setup_intent: Option<IdOrObject>,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

impl From<CheckoutSessionObject> for CheckoutSession {
    fn from(object: CheckoutSessionObject) -> Self {
        let id = |key: &str| object.metadata.get(key).and_then(|v| v.parse::<uuid::Uuid>().ok());
        CheckoutSession {
            team_id: id("team_id").map(TeamId::from_uuid),
            top_up_id: id("top_up_id"),
            id: object.id,
            url: object.url,
            mode: object.mode,
            status: object.status.unwrap_or_default(),
            payment_intent: object.payment_intent.map(IdOrObject::into_id),
            setup_intent: object.setup_intent.map(IdOrObject::into_id),
        }
    }
}

#[derive(Deserialize)]
struct ChargeObject {
    payment_intent: Option<IdOrObject>,
    #[serde(default)]
    amount_refunded: i64,
}

#[derive(Deserialize)]
struct DisputeObject {
    payment_intent: Option<IdOrObject>,
    #[serde(default)]
    amount: i64,
}

/// Parses a (verified) event body.
pub fn parse_event(body: &[u8]) -> Result<ProviderEvent, EventError> {
    let malformed = |e: serde_json::Error| EventError::Malformed(e.to_string());
    let event: EventBody = serde_json::from_slice(body).map_err(malformed)?;
    let object = if event.kind.starts_with("payment_intent.") {
        EventObject::Payment(
            serde_json::from_value::<PaymentIntentObject>(event.data.object)
                .map_err(malformed)?
                .into(),
        )
    } else if event.kind.starts_with("checkout.session.") {
        EventObject::Checkout(
            serde_json::from_value::<CheckoutSessionObject>(event.data.object)
                .map_err(malformed)?
                .into(),
        )
    } else if event.kind == "charge.refunded" {
        let charge: ChargeObject = serde_json::from_value(event.data.object).map_err(malformed)?;
        match charge.payment_intent {
            Some(intent) => EventObject::Refund {
                payment_id: intent.into_id(),
                refunded_cents: charge.amount_refunded,
            },
            None => EventObject::Other,
        }
    } else if event.kind == "charge.dispute.created" {
        let dispute: DisputeObject = serde_json::from_value(event.data.object).map_err(malformed)?;
        match dispute.payment_intent {
            Some(intent) => EventObject::Dispute {
                payment_id: intent.into_id(),
                amount_cents: dispute.amount,
            },
            None => EventObject::Other,
        }
    } else {
        EventObject::Other
    };
    Ok(ProviderEvent {
        id: event.id,
        kind: event.kind,
        object,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1"}"#;

    /// A known answer: the header stripe-python 16.1.0's
    /// `WebhookSignature.generate_signature_header('{"id":"evt_1"}', 'whsec_test_secret',
    /// 1700000000)` makes. (The integration tests also sign with the library at run time.)
    #[test]
    fn stripe_pythons_own_header_verifies() {
        let header = "t=1700000000,v1=248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";
        assert_eq!(verify_signature(SECRET, header, BODY, 1_700_000_000), Ok(()));
        assert_eq!(
            verify_signature(b"whsec_test_secreT", header, BODY, 1_700_000_000),
            Err(EventError::BadSignature)
        );
    }

    fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn any_v1_may_match_and_old_ones_are_refused() {
        let t = 1_700_000_000;
        let good = sign(SECRET, t, BODY);
        let header = format!("t={t},v1={},v1={good},v0=ignored", "00".repeat(32));
        assert_eq!(verify_signature(SECRET, &header, BODY, t + 10), Ok(()));
        assert_eq!(verify_signature(SECRET, &header, BODY, t + 300), Ok(()));
        assert_eq!(verify_signature(SECRET, &header, BODY, t + 301), Err(EventError::Stale));
        assert_eq!(
            verify_signature(b"whsec_other", &header, BODY, t),
            Err(EventError::BadSignature)
        );
        assert_eq!(
            verify_signature(SECRET, &header, br#"{"id":"evt_2"}"#, t),
            Err(EventError::BadSignature)
        );
        assert_eq!(
            verify_signature(SECRET, &format!("v1={good}"), BODY, t),
            Err(EventError::BadSignature)
        );
        assert_eq!(
            verify_signature(SECRET, "garbage", BODY, t),
            Err(EventError::BadSignature)
        );
    }

    #[test]
    fn events_parse_into_what_we_act_on() {
        let refund = br#"{"id":"evt_r","type":"charge.refunded","data":{"object":{"id":"ch_1","payment_intent":"pi_1","amount_refunded":700}}}"#;
        assert_eq!(
            parse_event(refund).unwrap().object,
            EventObject::Refund {
                payment_id: "pi_1".into(),
                refunded_cents: 700
            }
        );
        let other = br#"{"id":"evt_o","type":"customer.created","data":{"object":{"id":"cus_1"}}}"#;
        assert_eq!(parse_event(other).unwrap().object, EventObject::Other);
        assert!(matches!(parse_event(b"[]"), Err(EventError::Malformed(_))));
    }
}
