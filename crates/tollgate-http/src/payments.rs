//! Buying credit and paying: top-ups, billing details and payment methods, in xAI's Management
//! API shapes (`/v1/billing/teams/{team_id}/…`, a management key of the team) and the console
//! JSON API (`/api/teams/{team_id}/billing/…`, Admins); and the payment provider's webhook
//! (`/webhooks/stripe`).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tollgate_core::billing::{EventError, EventOutcome, PaymentError, PaymentMethod, ProviderError};
use tollgate_domain::{Address, BillingInfo, TopUp, TopUpStatus};

use crate::AppState;
use crate::billing::CentView;
use crate::console::TeamMember;
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
            PaymentError::NoSuchPaymentMethod | PaymentError::TeamNotFound => XaiError::not_found(error.to_string()),
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
