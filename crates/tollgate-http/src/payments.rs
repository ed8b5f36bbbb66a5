//! Buying credit and paying: top-ups, billing details and payment methods, in xAI's Management
//! API shapes (`/v1/billing/teams/{team_id}/…`, a management key of the team) and the console
//! JSON API (`/api/teams/{team_id}/billing/…`, Admins); and the payment provider's webhook
//! (`/webhooks/stripe`).

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tollgate_core::billing::{EventError, EventOutcome, PaymentError, PaymentMethod, ProviderError};
use tollgate_domain::{Address, BillingInfo, Invoice, InvoiceKind, InvoiceStatus, TopUp, TopUpStatus};
use tollgate_store::{BillingSettings, InvoiceFilter};

use crate::AppState;
use crate::api::TeamMember;
use crate::billing::CentView;
use crate::error::XaiError;
use crate::extract::{ManagementCaller, RequestMeta, XaiBytes, XaiJson};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/billing/teams/{team_id}/prepaid/top-up", post(top_up))
        .route("/api/teams/{team_id}/billing/top-up", post(team_top_up))
        .route(
            "/v1/billing/teams/{team_id}/billing-info",
            get(billing_info).post(set_billing_info),
        )
        .route(
            "/api/teams/{team_id}/billing/billing-info",
            get(team_billing_info).post(team_set_billing_info),
        )
        .route("/v1/billing/teams/{team_id}/payment-method", get(payment_methods))
        .route(
            "/v1/billing/teams/{team_id}/payment-method/default",
            post(set_default_payment_method),
        )
        .route(
            "/api/teams/{team_id}/billing/payment-methods",
            get(team_payment_methods),
        )
        .route(
            "/api/teams/{team_id}/billing/payment-methods/default",
            post(team_set_default_payment_method),
        )
        .route("/v1/billing/teams/{team_id}/invoices", get(invoices))
        .route("/api/teams/{team_id}/billing/invoices", get(team_invoices))
        .route(
            "/api/teams/{team_id}/billing/invoices/{invoice_id}",
            get(team_invoice_page),
        )
        .route(
            "/api/teams/{team_id}/billing/invoices/{invoice_id}/pdf",
            get(team_invoice_pdf),
        )
        .route(
            "/v1/billing/teams/{team_id}/invoices/{invoice_id}/pdf",
            get(invoice_pdf),
        )
        .route(
            "/api/teams/{team_id}/billing/invoices/{invoice_id}/pay",
            post(team_pay_invoice),
        )
        .route(
            "/v1/billing/teams/{team_id}/billing-settings",
            get(billing_settings).put(set_billing_settings),
        )
        .route(
            "/api/teams/{team_id}/billing/settings",
            get(team_billing_settings).put(team_set_billing_settings),
        )
        .route("/api/teams/{team_id}/billing/checkout", post(team_checkout))
        .route(
            "/api/teams/{team_id}/billing/payment-methods/setup",
            post(team_add_payment_method),
        )
        .route("/webhooks/stripe", post(stripe_webhook))
}

impl From<PaymentError> for XaiError {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Off
            | PaymentError::InvalidAmount(_)
            | PaymentError::InvalidBillingInfo(_)
            | PaymentError::NoPaymentMethod
            | PaymentError::Declined(_)
            | PaymentError::Event(_) => XaiError::invalid_argument(error.to_string()),
            PaymentError::Forbidden(_) | PaymentError::Refused(_) => XaiError::permission_denied(error.to_string()),
            PaymentError::NoSuchPaymentMethod | PaymentError::NoSuchInvoice | PaymentError::TeamNotFound => {
                XaiError::not_found(error.to_string())
            }
            PaymentError::Provider(ProviderError::Unavailable(_)) => {
                XaiError::unavailable("The payment provider cannot be reached; retry later", error)
            }
            PaymentError::Provider(_) => XaiError::with_source(
                StatusCode::BAD_GATEWAY,
                "The payment provider refused the request",
                error,
            ),
            PaymentError::Store(store) => store.into(),
        }
    }
}

/// xAI's `topupStatus`.
pub(crate) fn topup_status(status: TopUpStatus) -> &'static str {
    match status {
        TopUpStatus::Pending => "TO_CHARGE",
        TopUpStatus::Succeeded => "SUCCEEDED",
        TopUpStatus::Failed | TopUpStatus::Refused | TopUpStatus::Canceled => "FAILED_TO_CHARGE",
    }
}

/// A purchase, as a change of the prepaid balance (xAI's `PrepaidBalanceChange`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopUpChangeView {
    team_id: String,
    /// Always `PURCHASE`.
    change_origin: &'static str,
    /// `TO_CHARGE` (pending), `SUCCEEDED` (the credit granted) or `FAILED_TO_CHARGE`.
    topup_status: &'static str,
    /// Inverted, as xAI's ledger: a purchase is negative.
    amount: CentView,
    create_time: String,
    /// Ours: the top-up's id.
    top_up_id: String,
    /// Why it failed, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
    /// Bought on the provider's hosted page: where to send the person (ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    checkout_url: Option<String>,
}

impl From<&TopUp> for TopUpChangeView {
    fn from(top_up: &TopUp) -> Self {
        Self {
            team_id: top_up.team_id.to_string(),
            change_origin: "PURCHASE",
            topup_status: topup_status(top_up.status),
            amount: CentView::cents(-top_up.amount_cents),
            create_time: crate::management::rfc3339(top_up.created_at),
            top_up_id: top_up.id.to_string(),
            failure: top_up.failure.clone(),
            checkout_url: top_up
                .checkout
                .as_ref()
                .filter(|_| top_up.status == TopUpStatus::Pending)
                .map(|(_, url)| url.clone()),
        }
    }
}

/// `POST …/prepaid/top-up` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopUpRequest {
    /// How much, in whole cents (the sign is ignored).
    amount: CentView,
}

/// `POST …/prepaid/top-up` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TopUpAnswer {
    change: TopUpChangeView,
}

fn whole_cents(value: &CentView, field: &str) -> Result<i64, XaiError> {
    value
        .val
        .trim()
        .parse::<i64>()
        .map_err(|_| XaiError::invalid_argument(format!("{field}.val must be a whole number of cents")))
}

/// Buy prepaid credit with the team's default payment method. A top-up already pending is
/// returned instead of a second one. A card issued in a country the operator refuses is refused
/// (403) before money moves.
#[utoipa::path(post, path = "/v1/billing/teams/{team_id}/prepaid/top-up", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")), request_body = TopUpRequest,
    responses((status = 200, body = TopUpAnswer), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody), (status = 503, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn top_up(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TopUpRequest>,
) -> Result<Json<TopUpAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let amount = whole_cents(&body.amount, "amount")?;
    let top_up = state.payments.top_up(&caller, amount, &meta).await?;
    Ok(Json(TopUpAnswer {
        change: (&top_up).into(),
    }))
}

/// Buy prepaid credit (Admins), as the Management API does.
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/top-up", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = TopUpRequest,
    responses((status = 200, body = TopUpAnswer), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_top_up(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TopUpRequest>,
) -> Result<Json<TopUpAnswer>, XaiError> {
    let amount = whole_cents(&body.amount, "amount")?;
    let top_up = state.payments.top_up(&caller, amount, &meta).await?;
    Ok(Json(TopUpAnswer {
        change: (&top_up).into(),
    }))
}

/// A postal address (xAI's `billingInfo.address`).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct AddressView {
    line1: String,
    line2: String,
    city: String,
    state: String,
    postal_code: String,
    /// ISO 3166-1 alpha-2 (`US`).
    country: String,
}

/// Who the team's invoices are made out to (xAI's `billingInfo`).
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub(crate) struct BillingInfoView {
    name: String,
    address: AddressView,
    email: String,
    /// Stripe's tax id types (`eu_vat`, …), or empty.
    tax_id_type: String,
    tax_number: String,
}

impl From<BillingInfo> for BillingInfoView {
    fn from(info: BillingInfo) -> Self {
        Self {
            name: info.name,
            address: AddressView {
                line1: info.address.line1,
                line2: info.address.line2,
                city: info.address.city,
                state: info.address.state,
                postal_code: info.address.postal_code,
                country: info.address.country.map(|c| c.to_string()).unwrap_or_default(),
            },
            email: info.email,
            tax_id_type: info.tax_id_type,
            tax_number: info.tax_number,
        }
    }
}

impl BillingInfoView {
    fn parse(self) -> Result<BillingInfo, XaiError> {
        let country = match self.address.country.trim() {
            "" => None,
            code => Some(
                code.parse()
                    .map_err(|e| XaiError::invalid_argument(format!("address.country: {e}")))?,
            ),
        };
        Ok(BillingInfo {
            name: self.name,
            email: self.email,
            address: Address {
                line1: self.address.line1,
                line2: self.address.line2,
                city: self.address.city,
                state: self.address.state,
                postal_code: self.address.postal_code,
                country,
            },
            tax_id_type: self.tax_id_type,
            tax_number: self.tax_number,
        })
    }
}

/// `…/billing-info` body and answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BillingInfoAnswer {
    billing_info: BillingInfoView,
}

/// The team's billing details (empty fields when never set).
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/billing-info", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = BillingInfoAnswer), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn billing_info(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<BillingInfoAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let info = state.payments.billing_info(&caller).await?;
    Ok(Json(BillingInfoAnswer {
        billing_info: info.map(Into::into).unwrap_or_default(),
    }))
}

/// Set the team's billing details (a name is required). Invoices already issued keep the
/// details they were issued with.
#[utoipa::path(post, path = "/v1/billing/teams/{team_id}/billing-info", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")), request_body = BillingInfoAnswer,
    responses((status = 200, body = BillingInfoAnswer), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody), (status = 503, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn set_billing_info(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<BillingInfoAnswer>,
) -> Result<Json<BillingInfoAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let info = state
        .payments
        .set_billing_info(&caller, body.billing_info.parse()?, &meta)
        .await?;
    Ok(Json(BillingInfoAnswer {
        billing_info: info.into(),
    }))
}

/// The team's billing details (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/billing-info", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = BillingInfoAnswer), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_billing_info(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<BillingInfoAnswer>, XaiError> {
    let info = state.payments.billing_info(&caller).await?;
    Ok(Json(BillingInfoAnswer {
        billing_info: info.map(Into::into).unwrap_or_default(),
    }))
}

/// Set the team's billing details (Admins).
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/billing-info", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = BillingInfoAnswer,
    responses((status = 200, body = BillingInfoAnswer), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_set_billing_info(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<BillingInfoAnswer>,
) -> Result<Json<BillingInfoAnswer>, XaiError> {
    let info = state
        .payments
        .set_billing_info(&caller, body.billing_info.parse()?, &meta)
        .await?;
    Ok(Json(BillingInfoAnswer {
        billing_info: info.into(),
    }))
}

/// A card (xAI's `cardDetails`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CardDetailsView {
    brand: String,
    exp_month: u32,
    exp_year: u32,
    last4: String,
    /// Where it was issued (ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<String>,
}

/// A saved payment method (xAI's `PaymentMethod`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PaymentMethodView {
    payment_method_id: String,
    /// `CARD`, `US_BANK_ACCOUNT`, `LINK`, `CASHAPP`.
    payment_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    card_details: Option<CardDetailsView>,
    /// Whether top-ups and invoices are charged to it (ours).
    is_default: bool,
}

fn payment_method_view(method: PaymentMethod, default: Option<&str>) -> PaymentMethodView {
    PaymentMethodView {
        is_default: default == Some(method.id.as_str()),
        payment_method_id: method.id,
        payment_type: method.kind.to_ascii_uppercase(),
        card_details: method.card.map(|card| CardDetailsView {
            brand: card.brand,
            exp_month: card.exp_month,
            exp_year: card.exp_year,
            last4: card.last4,
            country: card.country.map(|c| c.to_string()),
        }),
    }
}

/// `GET …/payment-method` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PaymentMethodsAnswer {
    payment_methods: Vec<PaymentMethodView>,
    /// Whether purchases are on (a payment provider is configured); ours.
    purchases_enabled: bool,
}

async fn methods_answer(state: &AppState, caller: &tollgate_core::Caller) -> Result<PaymentMethodsAnswer, XaiError> {
    let (methods, default) = state.payments.payment_methods(caller).await?;
    Ok(PaymentMethodsAnswer {
        payment_methods: methods
            .into_iter()
            .map(|method| payment_method_view(method, default.as_deref()))
            .collect(),
        purchases_enabled: state.payments.enabled(),
    })
}

/// The team's saved payment methods.
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/payment-method", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = PaymentMethodsAnswer), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn payment_methods(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<PaymentMethodsAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    Ok(Json(methods_answer(&state, &caller).await?))
}

/// The team's saved payment methods (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/payment-methods", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = PaymentMethodsAnswer), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_payment_methods(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<PaymentMethodsAnswer>, XaiError> {
    Ok(Json(methods_answer(&state, &caller).await?))
}

/// `POST …/payment-method/default` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SetDefaultPaymentMethodRequest {
    payment_method_id: String,
}

/// Choose the payment method top-ups and invoices are charged to (one of the team's own; a
/// card from a refused country is refused).
#[utoipa::path(post, path = "/v1/billing/teams/{team_id}/payment-method/default", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")), request_body = SetDefaultPaymentMethodRequest,
    responses((status = 200, body = serde_json::Value), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody), (status = 503, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn set_default_payment_method(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SetDefaultPaymentMethodRequest>,
) -> Result<Json<serde_json::Value>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    state
        .payments
        .set_default_payment_method(&caller, &body.payment_method_id, &meta)
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// Choose the default payment method (Admins).
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/payment-methods/default", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = SetDefaultPaymentMethodRequest,
    responses((status = 200, body = serde_json::Value), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody), (status = 503, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_set_default_payment_method(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SetDefaultPaymentMethodRequest>,
) -> Result<Json<serde_json::Value>, XaiError> {
    state
        .payments
        .set_default_payment_method(&caller, &body.payment_method_id, &meta)
        .await?;
    Ok(Json(serde_json::json!({})))
}

/// The webhook's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookAnswer {
    received: bool,
    /// `processed`, `duplicate` (seen before, nothing done) or `ignored` (nothing of ours).
    outcome: &'static str,
}

/// Stripe's events. The `Stripe-Signature` header is checked first (400 when missing, wrong or
/// older than 300 s; nothing happens). Each event is acted on once: a redelivery answers 200
/// `duplicate`; types we do not act on answer 200 `ignored`; 5xx only when a retry could help
/// (the database or the provider unreachable).
#[utoipa::path(post, path = "/webhooks/stripe", tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "t=<unix>,v1=<hex HMAC-SHA256 of \"t.body\">")),
    request_body(content = serde_json::Value, description = "A Stripe event"),
    responses((status = 200, body = WebhookAnswer), (status = 400, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)))]
pub(crate) async fn stripe_webhook(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    XaiBytes(body): XaiBytes,
) -> Result<Json<WebhookAnswer>, XaiError> {
    if !state.payments.enabled() {
        return Err(XaiError::not_found("Payments are not configured on this platform"));
    }
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let outcome = match state.payments.handle_event(signature, &body, &meta).await {
        Ok(outcome) => outcome,
        Err(PaymentError::Event(error)) => {
            tracing::warn!(%error, "refused a Stripe webhook");
            state.metrics.payment_event("refused");
            return Err(match error {
                EventError::Malformed(_) => XaiError::invalid_argument(error.to_string()),
                _ => XaiError::invalid_argument(format!("Stripe-Signature: {error}")),
            });
        }
        Err(error) => {
            state.metrics.payment_event("failed");
            return Err(error.into());
        }
    };
    let outcome = match outcome {
        EventOutcome::Processed => "processed",
        EventOutcome::Duplicate => "duplicate",
        EventOutcome::Ignored => "ignored",
    };
    state.metrics.payment_event(outcome);
    Ok(Json(WebhookAnswer {
        received: true,
        outcome,
    }))
}

/// xAI's `invoiceStatus`.
fn invoice_status(status: InvoiceStatus) -> &'static str {
    match status {
        InvoiceStatus::Open => "PENDING",
        InvoiceStatus::Paid => "PAID",
        InvoiceStatus::Failed => "FAILED",
        InvoiceStatus::Void => "WILL_NEVER_BE_CHARGED",
    }
}

/// One line of an issued invoice (xAI's `Line`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IssuedLineView {
    cluster_name: String,
    description: String,
    /// `tokens` or `credit`.
    unit_type: String,
    /// USD ticks per unit.
    unit_price: String,
    num_units: String,
    /// Cents, rounded half away from zero from the exact amount.
    amount: String,
    /// The exact amount, in USD ticks (1e-10 USD).
    amount_in_usd_ticks: String,
}

/// A monthly invoice's billing cycle.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MonthlyView {
    billing_cycle: crate::billing::BillingCycleView,
}

/// An issued invoice or receipt (xAI's `InvoiceBundle`); amounts in cents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InvoiceView {
    team_id: String,
    invoice_id: String,
    invoice_number: String,
    create_time: String,
    /// `PENDING`, `PAID`, `FAILED` or `WILL_NEVER_BE_CHARGED`.
    invoice_status: &'static str,
    lines: Vec<IssuedLineView>,
    /// Every line.
    subtotal: String,
    /// What credit paid already (monthly invoices; ours).
    credits_applied: String,
    tax: String,
    /// What is (or was) charged.
    total: String,
    /// For a monthly invoice.
    #[serde(skip_serializing_if = "Option::is_none")]
    monthly: Option<MonthlyView>,
    /// For a receipt of prepaid credit.
    #[serde(skip_serializing_if = "Option::is_none")]
    prepaid: Option<serde_json::Value>,
    /// For a credit note: the invoice it corrects (ours).
    #[serde(skip_serializing_if = "Option::is_none")]
    credit_note: Option<serde_json::Value>,
    /// Who it is made out to, as on the day it was issued.
    billing_info: BillingInfoView,
    #[serde(skip_serializing_if = "Option::is_none")]
    paid_time: Option<String>,
    /// Why the last charge failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
}

fn invoice_view(invoice: Invoice, cluster: &str) -> InvoiceView {
    let cents = |amount: tollgate_domain::Ticks| amount.to_cents_rounded().to_string();
    let cycle = invoice
        .month
        .split_once('-')
        .and_then(|(year, month)| Some((year.parse().ok()?, month.parse().ok()?)));
    let total = invoice.total_cents().to_string();
    InvoiceView {
        team_id: invoice.team_id.to_string(),
        invoice_id: invoice.id.to_string(),
        invoice_number: invoice.number,
        create_time: crate::management::rfc3339(invoice.issued_at),
        invoice_status: invoice_status(invoice.status),
        lines: invoice
            .lines
            .iter()
            .map(|line| IssuedLineView {
                cluster_name: cluster.to_owned(),
                description: line.description.clone(),
                unit_type: line.unit_type.clone(),
                unit_price: line.unit_price.get().to_string(),
                num_units: line.units.to_string(),
                amount: cents(line.amount),
                amount_in_usd_ticks: line.amount.get().to_string(),
            })
            .collect(),
        subtotal: cents(invoice.subtotal),
        credits_applied: cents(invoice.credit_used),
        tax: "0".into(),
        total,
        monthly: match (invoice.kind, cycle) {
            (InvoiceKind::Monthly, Some((year, month))) => Some(MonthlyView {
                billing_cycle: crate::billing::BillingCycleView::new(year, month),
            }),
            _ => None,
        },
        prepaid: (invoice.kind == InvoiceKind::Receipt).then(|| serde_json::json!({})),
        credit_note: invoice
            .corrects
            .map(|id| serde_json::json!({"correctsInvoiceId": id.to_string()})),
        billing_info: invoice.billed_to.into(),
        paid_time: invoice.paid_at.map(crate::management::rfc3339),
        failure: invoice.failure,
    }
}

/// `GET …/invoices` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InvoicesAnswer {
    invoices: Vec<InvoiceView>,
}

/// xAI's filters: `billingCycle.year` with `billingCycle.month`, `since.year` with
/// `since.month`, `invoiceIds.invoiceIds` (repeated, or comma-separated).
fn invoice_filter(query: Option<&str>) -> Result<InvoiceFilter, XaiError> {
    let mut filter = InvoiceFilter {
        limit: 500,
        ..InvoiceFilter::default()
    };
    let (mut cycle, mut since) = ((None, None), (None, None));
    let number = |name: &str, value: &str| {
        value
            .parse::<u32>()
            .map_err(|_| XaiError::invalid_argument(format!("{name} must be a number")))
    };
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "billingCycle.year" => cycle.0 = Some(number(&name, &value)?),
            "billingCycle.month" => cycle.1 = Some(number(&name, &value)?),
            "since.year" => since.0 = Some(number(&name, &value)?),
            "since.month" => since.1 = Some(number(&name, &value)?),
            "invoiceIds.invoiceIds" | "invoiceIds" => {
                for id in value.split(',').filter(|id| !id.trim().is_empty()) {
                    filter.ids.push(
                        id.trim().parse().map_err(|_| {
                            XaiError::invalid_argument(format!("invoiceIds: {id:?} is not an invoice id"))
                        })?,
                    );
                }
            }
            other => {
                return Err(XaiError::invalid_argument(format!("unknown query parameter {other:?}")));
            }
        }
    }
    let month = |(year, month): (Option<u32>, Option<u32>), what: &str| match (year, month) {
        (None, None) => Ok(None),
        (Some(year), Some(month)) if (1..=12).contains(&month) && (1970..=9999).contains(&year) => {
            Ok(Some(format!("{year:04}-{month:02}")))
        }
        _ => Err(XaiError::invalid_argument(format!(
            "{what}.year and {what}.month go together (month 1 to 12)"
        ))),
    };
    filter.month = month(cycle, "billingCycle")?;
    filter.since_month = month(since, "since")?;
    Ok(filter)
}

/// The team's invoices and receipts, newest first; filters as xAI's.
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/invoices", tag = "management",
    params(("team_id" = String, Path, description = "The team's id"),
        ("billingCycle.year" = Option<u32>, Query, description = "With billingCycle.month: that month's only"),
        ("billingCycle.month" = Option<u32>, Query, description = "1 to 12"),
        ("since.year" = Option<u32>, Query, description = "With since.month: that month and later"),
        ("since.month" = Option<u32>, Query, description = "1 to 12"),
        ("invoiceIds.invoiceIds" = Option<String>, Query, description = "Only these (repeated or comma-separated)")),
    responses((status = 200, body = InvoicesAnswer), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn invoices(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<InvoicesAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let filter = invoice_filter(query.as_deref())?;
    let invoices = state.payments.invoices(&caller, &filter).await?;
    Ok(Json(InvoicesAnswer {
        invoices: invoices
            .into_iter()
            .map(|invoice| invoice_view(invoice, &state.settings.owned_by))
            .collect(),
    }))
}

/// The team's invoices and receipts (Admins), as the Management API lists them.
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/invoices", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = InvoicesAnswer), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_invoices(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RawQuery(query): RawQuery,
) -> Result<Json<InvoicesAnswer>, XaiError> {
    let filter = invoice_filter(query.as_deref())?;
    let invoices = state.payments.invoices(&caller, &filter).await?;
    Ok(Json(InvoicesAnswer {
        invoices: invoices
            .into_iter()
            .map(|invoice| invoice_view(invoice, &state.settings.owned_by))
            .collect(),
    }))
}

fn invoice_id(raw: &str) -> Result<uuid::Uuid, XaiError> {
    raw.parse().map_err(|_| XaiError::not_found("Invoice not found"))
}

/// Charge an unpaid invoice now with the default payment method (Admins): how a team blocked
/// for an unpaid invoice pays it.
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/invoices/{invoice_id}/pay", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("invoice_id" = String, Path, description = "The invoice's id")),
    responses((status = 200, body = InvoiceView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody), (status = 503, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_pay_invoice(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<InvoiceView>, XaiError> {
    let invoice = state.payments.pay_now(&caller, invoice_id(&id)?).await?;
    Ok(Json(invoice_view(invoice, &state.settings.owned_by)))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An invoice as a page to print (or save as PDF from the browser).
fn invoice_page(invoice: &Invoice, product: &str) -> String {
    use std::fmt::Write as _;
    let usd = |amount: tollgate_domain::Ticks| {
        let cents = amount.to_cents_rounded();
        format!("${}.{:02}", cents / 100, (cents % 100).abs())
    };
    let title = match invoice.kind {
        InvoiceKind::Monthly => format!("Invoice {}", invoice.number),
        InvoiceKind::Receipt => format!("Receipt {}", invoice.number),
        InvoiceKind::CreditNote => format!("Credit note {}", invoice.number),
    };
    let billed = &invoice.billed_to;
    let address = [
        billed.address.line1.as_str(),
        billed.address.line2.as_str(),
        &[billed.address.postal_code.as_str(), billed.address.city.as_str()].join(" "),
        billed.address.state.as_str(),
        &billed.address.country.map(|c| c.to_string()).unwrap_or_default(),
    ]
    .iter()
    .map(|part| part.trim())
    .filter(|part| !part.is_empty())
    .map(escape)
    .collect::<Vec<_>>()
    .join("<br>");
    let mut rows = String::new();
    for line in &invoice.lines {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            escape(&line.description),
            line.units,
            usd(line.amount)
        );
    }
    let status = match invoice.status {
        InvoiceStatus::Open => "Unpaid",
        InvoiceStatus::Paid => "Paid",
        InvoiceStatus::Failed => "Payment failed",
        InvoiceStatus::Void => "Not charged",
    };
    let tax = if billed.tax_number.is_empty() {
        String::new()
    } else {
        format!("<br>{}: {}", escape(&billed.tax_id_type), escape(&billed.tax_number))
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>\
         <style>body{{font:14px/1.4 system-ui,sans-serif;max-width:48rem;margin:2rem auto;color:#111}}\
         table{{width:100%;border-collapse:collapse}}td,th{{padding:.3rem;border-bottom:1px solid #ddd;text-align:left}}\
         .n{{text-align:right}}h1{{font-size:1.4rem}}</style></head><body>\
         <h1>{title}</h1><p>{product} · issued {issued} · {month} · <strong>{status}</strong></p>\
         <p><strong>Billed to</strong><br>{name}<br>{address}{tax}<br>{email}<br>Team: {team}</p>\
         <table><thead><tr><th>Description</th><th class=n>Units</th><th class=n>Amount</th></tr></thead>\
         <tbody>{rows}</tbody></table>\
         <p class=n>Subtotal {subtotal}<br>Paid from credit −{credit}<br>Tax $0.00<br><strong>Total {total}</strong></p>\
         </body></html>",
        title = escape(&title),
        product = escape(product),
        issued = invoice.issued_at.format("%Y-%m-%d"),
        month = escape(&invoice.month),
        name = escape(&billed.name),
        email = escape(&billed.email),
        team = escape(&invoice.team_name),
        subtotal = usd(invoice.subtotal),
        credit = usd(invoice.credit_used),
        total = usd(invoice.total),
    )
}

/// One invoice as a printable HTML page (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/invoices/{invoice_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("invoice_id" = String, Path, description = "The invoice's id")),
    responses((status = 200, content_type = "text/html", body = String), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_invoice_page(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path((_, id)): Path<(String, String)>,
) -> Result<axum::response::Html<String>, XaiError> {
    let invoice = state.payments.invoice(&caller, invoice_id(&id)?).await?;
    Ok(axum::response::Html(invoice_page(&invoice, &state.settings.owned_by)))
}

/// An auto top-up (ours: xAI's console has one, its API does not); cents as strings.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AutoTopUpView {
    /// Buy when prepaid credit is below this.
    threshold: CentView,
    /// How much each time (within the top-up bounds).
    amount: CentView,
    /// The most bought automatically in a calendar month (UTC); at most 5 in 24 hours.
    monthly_maximum: CentView,
}

/// A team's billing settings.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BillingSettingsView {
    /// `null`: off.
    auto_top_up: Option<AutoTopUpView>,
    /// Mail the Admins when prepaid credit falls below this (`null`: never).
    low_balance_alert: Option<CentView>,
}

impl From<BillingSettings> for BillingSettingsView {
    fn from(settings: BillingSettings) -> Self {
        Self {
            auto_top_up: settings.auto_top_up.map(|auto| AutoTopUpView {
                threshold: CentView::of(auto.threshold),
                amount: CentView::cents(auto.amount_cents),
                monthly_maximum: CentView::cents(auto.monthly_max_cents),
            }),
            low_balance_alert: settings.low_balance_alert.map(CentView::of),
        }
    }
}

impl BillingSettingsView {
    fn parse(self) -> Result<BillingSettings, XaiError> {
        // Signs and bounds are the service's to check (after the caller's permission).
        let cents = |value: &CentView, field: &str| whole_cents(value, field);
        let ticks = |cents: i64| tollgate_domain::payments::cents(cents);
        Ok(BillingSettings {
            auto_top_up: match &self.auto_top_up {
                Some(auto) => Some(tollgate_domain::AutoTopUp {
                    threshold: ticks(cents(&auto.threshold, "autoTopUp.threshold")?),
                    amount_cents: cents(&auto.amount, "autoTopUp.amount")?,
                    monthly_max_cents: cents(&auto.monthly_maximum, "autoTopUp.monthlyMaximum")?,
                }),
                None => None,
            },
            low_balance_alert: match &self.low_balance_alert {
                Some(value) => Some(ticks(cents(value, "lowBalanceAlert")?)),
                None => None,
            },
        })
    }
}

/// The team's auto top-up and low-balance alert.
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/billing-settings", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = BillingSettingsView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn billing_settings(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<BillingSettingsView>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    Ok(Json(state.payments.billing_settings(&caller).await?.into()))
}

/// Set the team's auto top-up (when prepaid credit falls below `threshold`, buy `amount` with the
/// default payment method; at most `monthlyMaximum` a month and 5 times in 24 hours) and
/// low-balance alert. Auto top-up needs a payment provider.
#[utoipa::path(put, path = "/v1/billing/teams/{team_id}/billing-settings", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")), request_body = BillingSettingsView,
    responses((status = 200, body = BillingSettingsView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn set_billing_settings(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<BillingSettingsView>,
) -> Result<Json<BillingSettingsView>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let settings = state
        .payments
        .set_billing_settings(&caller, body.parse()?, &meta)
        .await?;
    Ok(Json(settings.into()))
}

/// The team's auto top-up and low-balance alert (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/settings", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = BillingSettingsView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_billing_settings(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<BillingSettingsView>, XaiError> {
    Ok(Json(state.payments.billing_settings(&caller).await?.into()))
}

/// Set the team's auto top-up and low-balance alert (Admins).
#[utoipa::path(put, path = "/api/teams/{team_id}/billing/settings", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = BillingSettingsView,
    responses((status = 200, body = BillingSettingsView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_set_billing_settings(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<BillingSettingsView>,
) -> Result<Json<BillingSettingsView>, XaiError> {
    let settings = state
        .payments
        .set_billing_settings(&caller, body.parse()?, &meta)
        .await?;
    Ok(Json(settings.into()))
}

/// Buy prepaid credit on the payment provider's hosted checkout page (Admins): the answer's
/// `change.checkoutUrl` is the page. The card's country is checked before money moves; the
/// credit arrives when the payment is captured. While a purchase is pending, it is returned.
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/checkout", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = TopUpRequest,
    responses((status = 200, body = TopUpAnswer), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_checkout(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TopUpRequest>,
) -> Result<Json<TopUpAnswer>, XaiError> {
    let amount = whole_cents(&body.amount, "amount")?;
    let top_up = state.payments.checkout_top_up(&caller, amount, &meta).await?;
    Ok(Json(TopUpAnswer {
        change: (&top_up).into(),
    }))
}

/// Where an Admin saves a card.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SetupAnswer {
    /// The provider's hosted page.
    url: String,
}

/// Save a card to the team on the payment provider's hosted page (Admins): the answer is the
/// page. The card becomes the default if the team has none.
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/payment-methods/setup", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = SetupAnswer), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_add_payment_method(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<SetupAnswer>, XaiError> {
    Ok(Json(SetupAnswer {
        url: state.payments.add_payment_method(&caller).await?,
    }))
}

fn pdf_response(invoice: &Invoice, product: &str) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let body = crate::invoice_pdf::render(invoice, product);
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/pdf".to_owned()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.pdf\"", invoice.number),
            ),
        ],
        body,
    )
        .into_response()
}

/// One invoice as a PDF.
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/invoices/{invoice_id}/pdf", tag = "management",
    params(("team_id" = String, Path, description = "The team's id"), ("invoice_id" = String, Path, description = "The invoice's id")),
    responses((status = 200, content_type = "application/pdf", body = Vec<u8>), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn invoice_pdf(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path((team_id, id)): Path<(String, String)>,
) -> Result<axum::response::Response, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let invoice = state.payments.invoice(&caller, invoice_id(&id)?).await?;
    Ok(pdf_response(&invoice, &state.settings.owned_by))
}

/// One invoice as a PDF (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/invoices/{invoice_id}/pdf", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("invoice_id" = String, Path, description = "The invoice's id")),
    responses((status = 200, content_type = "application/pdf", body = Vec<u8>), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_invoice_pdf(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path((_, id)): Path<(String, String)>,
) -> Result<axum::response::Response, XaiError> {
    let invoice = state.payments.invoice(&caller, invoice_id(&id)?).await?;
    Ok(pdf_response(&invoice, &state.settings.owned_by))
}
