//! Billing routes of the Management API (`/v1/billing/teams/{team_id}/…`, a management key of
//! the team, as xAI's), and the same data in the console JSON API (`/api/teams/{team_id}/billing/…`,
//! Admins). Amounts are xAI's: USD cents as strings, rounded half away from zero from exact ticks
//! ([`tollgate_domain::Ticks::to_cents_rounded`]); the prepaid ledger is shown inverted, as
//! xAI's is (credit negative, consumption positive).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::Serialize;
use tollgate_core::billing::{InvoicePreview, LedgerError, TeamCredit, UsageQuery};
use tollgate_domain::analytics::{Dimension, Measure, Series, TimeUnit, UsageFilter, Value};
use tollgate_domain::{EntryKind, SpendingLimits, TeamId, Ticks};

use crate::AppState;
use crate::api::TeamMember;
use crate::error::XaiError;
use crate::extract::{ManagementCaller, RequestMeta, XaiJson};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/billing/teams/{team_id}/prepaid/balance", get(prepaid_balance))
        .route(
            "/api/teams/{team_id}/billing/prepaid/balance",
            get(team_prepaid_balance),
        )
        .route(
            "/v1/billing/teams/{team_id}/postpaid/spending-limits",
            get(spending_limits).post(set_spending_limit),
        )
        .route(
            "/api/teams/{team_id}/billing/spending-limits",
            get(team_spending_limits).post(team_set_spending_limit),
        )
        .route(
            "/v1/billing/teams/{team_id}/postpaid/invoice/preview",
            get(invoice_preview),
        )
        .route(
            "/api/teams/{team_id}/billing/invoice/preview",
            get(team_invoice_preview),
        )
        .route("/v1/billing/teams/{team_id}/usage", post(usage))
        .route("/api/teams/{team_id}/billing/usage", post(team_usage))
}

impl From<LedgerError> for XaiError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::TeamNotFound => XaiError::not_found(error.to_string()),
            LedgerError::Forbidden(message) => XaiError::permission_denied(message),
            LedgerError::NotPositive
            | LedgerError::Zero
            | LedgerError::InvalidReason(_)
            | LedgerError::InvalidExpiry
            | LedgerError::AboveCap(_)
            | LedgerError::NegativeLimit
            | LedgerError::InvalidQuery(_) => XaiError::invalid_argument(error.to_string()),
            LedgerError::Store(store) => store.into(),
        }
    }
}

/// USD cents, as a string (proto3 JSON of an int64).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CentView {
    pub(crate) val: String,
}

impl CentView {
    pub(crate) fn of(amount: Ticks) -> Self {
        Self {
            val: amount.to_cents_rounded().to_string(),
        }
    }

    /// Whole cents.
    pub(crate) fn cents(cents: i64) -> Self {
        Self { val: cents.to_string() }
    }
}

/// One change of the prepaid balance (xAI's `PrepaidBalanceChange`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PrepaidBalanceChangeView {
    team_id: String,
    /// `PURCHASE`, `SPEND`, `REFUND` or `MANUAL` (grants, adjustments, promotional credit and its
    /// expiry, forfeiture).
    change_origin: &'static str,
    /// For purchases: `SUCCEEDED` (the credit granted), `TO_CHARGE` (pending, not in `total`)
    /// or `FAILED_TO_CHARGE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    topup_status: Option<&'static str>,
    /// Inverted: credit negative, consumption positive.
    amount: CentView,
    create_time: String,
    /// For spend: the billing month it sums (year).
    #[serde(skip_serializing_if = "Option::is_none")]
    spend_bp_key_year: Option<i32>,
    /// For spend: the billing month it sums (1 to 12).
    #[serde(skip_serializing_if = "Option::is_none")]
    spend_bp_key_month: Option<u32>,
}

/// The prepaid balance and its changes (xAI's shape: the credit left is `-total.val` cents).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PrepaidBalanceView {
    changes: Vec<PrepaidBalanceChangeView>,
    total: CentView,
}

fn change_origin(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Purchase => "PURCHASE",
        EntryKind::Spend => "SPEND",
        EntryKind::Refund => "REFUND",
        EntryKind::CreditNote | EntryKind::InvoicePayment => "MANUAL",
        EntryKind::Adjustment | EntryKind::PromoGrant | EntryKind::PromoExpiry | EntryKind::Forfeiture => "MANUAL",
    }
}

fn balance_view(
    credit: TeamCredit,
    top_ups: &[tollgate_domain::TopUp],
    team_id: TeamId,
) -> Result<PrepaidBalanceView, XaiError> {
    let total = credit
        .balance
        .total()
        .map_err(|_| XaiError::internal(anyhow::anyhow!("balance overflows")))?;
    let entries = credit.entries.iter().map(|entry| {
        (
            entry.created_at,
            PrepaidBalanceChangeView {
                team_id: entry.team_id.to_string(),
                change_origin: change_origin(entry.kind),
                topup_status: (entry.kind == EntryKind::Purchase).then_some("SUCCEEDED"),
                amount: CentView::of(Ticks::new(-entry.amount.get())),
                create_time: crate::management::rfc3339(entry.created_at),
                spend_bp_key_year: None,
                spend_bp_key_month: None,
            },
        )
    });
    // Spend is one change per billing month, as xAI lists it.
    let spend = credit.monthly_spend.iter().map(|month| {
        let year_month = month.year_month();
        (
            month.last_at,
            PrepaidBalanceChangeView {
                team_id: team_id.to_string(),
                change_origin: "SPEND",
                topup_status: None,
                amount: CentView::of(Ticks::new(-month.amount.get())),
                create_time: crate::management::rfc3339(month.last_at),
                spend_bp_key_year: year_month.map(|(year, _)| year),
                spend_bp_key_month: year_month.map(|(_, month)| month),
            },
        )
    });
    // Purchases not (yet) granted: listed with their status, not in the total.
    let unsettled = top_ups
        .iter()
        .filter(|top_up| top_up.status != tollgate_domain::TopUpStatus::Succeeded)
        .map(|top_up| {
            (
                top_up.created_at,
                PrepaidBalanceChangeView {
                    team_id: team_id.to_string(),
                    change_origin: "PURCHASE",
                    topup_status: Some(crate::payments::topup_status(top_up.status)),
                    amount: CentView::cents(-top_up.amount_cents),
                    create_time: crate::management::rfc3339(top_up.created_at),
                    spend_bp_key_year: None,
                    spend_bp_key_month: None,
                },
            )
        });
    let mut changes: Vec<_> = entries.chain(spend).chain(unsettled).collect();
    changes.sort_by_key(|change| std::cmp::Reverse(change.0));
    Ok(PrepaidBalanceView {
        changes: changes.into_iter().map(|(_, change)| change).collect(),
        total: CentView::of(Ticks::new(-total.get())),
    })
}

/// Most changes listed.
const CHANGES: u32 = 1000;

/// The team's prepaid balance and its changes, newest first (a team with no credit: `"0"`).
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/prepaid/balance", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = PrepaidBalanceView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn prepaid_balance(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<PrepaidBalanceView>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let credit = state.ledger.team_credit(&caller, CHANGES).await?;
    let top_ups = state.payments.top_ups(&caller, CHANGES).await?;
    Ok(Json(balance_view(credit, &top_ups, caller.team_id())?))
}

/// The team's prepaid balance and its changes (Admins), as the Management API shows them.
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/prepaid/balance", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = PrepaidBalanceView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_prepaid_balance(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<PrepaidBalanceView>, XaiError> {
    let credit = state.ledger.team_credit(&caller, CHANGES).await?;
    let top_ups = state.payments.top_ups(&caller, CHANGES).await?;
    Ok(Json(balance_view(credit, &top_ups, caller.team_id())?))
}

/// A team's monthly invoiced spending limits (xAI's `spendingLimits`, in cents).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpendingLimitsView {
    /// The operator's maximum for this team, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    hard_sl_override: Option<CentView>,
    /// The operator's default maximum.
    hard_sl_auto: CentView,
    /// The maximum the team's Admins may set.
    effective_hard_sl: CentView,
    /// The Admins' limit, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    soft_sl: Option<CentView>,
    /// The limit in force.
    effective_sl: CentView,
}

/// `GET …/postpaid/spending-limits` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpendingLimitsAnswer {
    spending_limits: SpendingLimitsView,
}

impl SpendingLimitsAnswer {
    fn of(limits: &SpendingLimits) -> Self {
        Self {
            spending_limits: SpendingLimitsView {
                hard_sl_override: limits.hard_override.map(CentView::of),
                hard_sl_auto: CentView::of(limits.hard_auto),
                effective_hard_sl: CentView::of(limits.effective_hard()),
                soft_sl: limits.soft.map(CentView::of),
                effective_sl: CentView::of(limits.effective()),
            },
        }
    }
}

/// `POST …/postpaid/spending-limits` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SetSpendingLimitRequest {
    /// The monthly invoiced spending limit, in whole cents (`"0"`: prepaid credit only).
    desired_soft_spending_limit: CentView,
}

/// `POST …/postpaid/spending-limits` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SetSpendingLimitAnswer {
    this_bp_soft_spending_limit: CentView,
}

fn cents(value: &CentView) -> Result<Ticks, XaiError> {
    value
        .val
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|cents| cents.checked_mul(Ticks::PER_CENT))
        .map(Ticks::new)
        .ok_or_else(|| XaiError::invalid_argument("desiredSoftSpendingLimit.val must be a whole number of cents"))
}

/// The team's monthly invoiced spending limits.
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/postpaid/spending-limits", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = SpendingLimitsAnswer), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn spending_limits(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<SpendingLimitsAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    Ok(Json(SpendingLimitsAnswer::of(
        &state.ledger.spending_limits(&caller).await?,
    )))
}

/// Set the team's monthly invoiced spending limit: at most `effectiveHardSl` (a limit above it
/// is a 400, never clamped).
#[utoipa::path(post, path = "/v1/billing/teams/{team_id}/postpaid/spending-limits", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")), request_body = SetSpendingLimitRequest,
    responses((status = 200, body = SetSpendingLimitAnswer), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn set_spending_limit(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SetSpendingLimitRequest>,
) -> Result<Json<SetSpendingLimitAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let limit = cents(&body.desired_soft_spending_limit)?;
    let limits = state.ledger.set_soft_limit(&caller, limit, &meta).await?;
    Ok(Json(SetSpendingLimitAnswer {
        this_bp_soft_spending_limit: CentView::of(limits.effective()),
    }))
}

/// The team's monthly invoiced spending limits (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/spending-limits", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = SpendingLimitsAnswer), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_spending_limits(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<SpendingLimitsAnswer>, XaiError> {
    Ok(Json(SpendingLimitsAnswer::of(
        &state.ledger.spending_limits(&caller).await?,
    )))
}

/// Set the team's monthly invoiced spending limit (Admins), as the Management API does.
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/spending-limits", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = SetSpendingLimitRequest,
    responses((status = 200, body = SetSpendingLimitAnswer), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_set_spending_limit(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SetSpendingLimitRequest>,
) -> Result<Json<SetSpendingLimitAnswer>, XaiError> {
    let limit = cents(&body.desired_soft_spending_limit)?;
    let limits = state.ledger.set_soft_limit(&caller, limit, &meta).await?;
    Ok(Json(SetSpendingLimitAnswer {
        this_bp_soft_spending_limit: CentView::of(limits.effective()),
    }))
}

/// One line of the month's invoice: a model's tokens of one kind at one price.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InvoiceLineView {
    /// Who serves it (the operator's product name).
    cluster_name: String,
    /// `<model> <token kind>`, e.g. `grok-4 prompt tokens`.
    description: String,
    /// Always `tokens`.
    unit_type: &'static str,
    /// USD ticks per token: xAI's price unit, 1e-4 USD per million tokens.
    unit_price: String,
    /// Tokens.
    num_units: String,
    /// Cents, rounded half away from zero from the exact amount.
    amount: String,
    /// The exact amount, in USD ticks (1e-10 USD).
    amount_in_usd_ticks: String,
}

/// The month's invoice so far (xAI's `coreInvoice`); amounts in cents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CoreInvoiceView {
    lines: Vec<InvoiceLineView>,
    /// Every line: what the month's requests cost.
    amount_before_vat: String,
    /// Tax is not computed yet.
    vat_cost: String,
    amount_after_vat: String,
    /// Credit left (prepaid and promotional).
    prepaid_credits: CentView,
    /// What the month's requests took from credit.
    prepaid_credits_used: CentView,
    /// What the month leaves to be invoiced.
    total_with_corr: CentView,
}

/// The billing cycle: a calendar month in UTC.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BillingCycleView {
    year: i32,
    month: u32,
}

impl BillingCycleView {
    pub(crate) fn new(year: i32, month: u32) -> Self {
        Self { year, month }
    }
}

/// `GET …/postpaid/invoice/preview` answer (xAI's shape).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InvoicePreviewView {
    core_invoice: CoreInvoiceView,
    /// Cents.
    effective_spending_limit: String,
    billing_cycle: BillingCycleView,
}

fn invoice_preview_view(preview: &InvoicePreview, cluster: &str) -> Result<InvoicePreviewView, XaiError> {
    use chrono::Datelike as _;
    let overflow = || XaiError::internal(anyhow::anyhow!("the invoice overflows"));
    let usage = &preview.usage;
    let total = usage
        .lines
        .iter()
        .try_fold(Ticks::ZERO, |sum, line| sum.checked_add(line.amount))
        .map_err(|_| overflow())?;
    let cents = |amount: Ticks| amount.to_cents_rounded().to_string();
    Ok(InvoicePreviewView {
        core_invoice: CoreInvoiceView {
            lines: usage
                .lines
                .iter()
                .map(|line| InvoiceLineView {
                    cluster_name: cluster.to_owned(),
                    description: format!("{} {}", line.model, line.kind.label()),
                    unit_type: "tokens",
                    unit_price: line.unit_price.get().to_string(),
                    num_units: line.tokens.to_string(),
                    amount: cents(line.amount),
                    amount_in_usd_ticks: line.amount.get().to_string(),
                })
                .collect(),
            amount_before_vat: cents(total),
            vat_cost: "0".into(),
            amount_after_vat: cents(total),
            prepaid_credits: CentView::of(preview.balance.total().map_err(|_| overflow())?),
            prepaid_credits_used: CentView::of(usage.credit_used),
            total_with_corr: CentView::of(usage.invoiced),
        },
        effective_spending_limit: cents(preview.limits.effective()),
        billing_cycle: BillingCycleView {
            year: preview.month_start.year(),
            month: preview.month_start.month(),
        },
    })
}

/// The current month's invoice so far: lines per model, token kind and price for every request
/// charged this month, what credit paid and what is left to invoice.
#[utoipa::path(get, path = "/v1/billing/teams/{team_id}/postpaid/invoice/preview", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = InvoicePreviewView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn invoice_preview(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
) -> Result<Json<InvoicePreviewView>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let preview = state.ledger.invoice_preview(&caller).await?;
    Ok(Json(invoice_preview_view(&preview, &state.settings.owned_by)?))
}

/// The current month's invoice so far (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/billing/invoice/preview", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = InvoicePreviewView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_invoice_preview(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<InvoicePreviewView>, XaiError> {
    let preview = state.ledger.invoice_preview(&caller).await?;
    Ok(Json(invoice_preview_view(&preview, &state.settings.owned_by)?))
}

/// `timeRange` of a usage request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TimeRangeRequest {
    /// `2026-11-01 00:00:00` (or RFC 3339), inclusive.
    start_time: String,
    /// Exclusive.
    end_time: String,
    /// Only UTC is supported (`Etc/GMT`, `UTC`).
    #[serde(default)]
    timezone: Option<String>,
}

/// One value asked for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ValueRequest {
    /// `usd`, `tokens` or `requests`.
    name: String,
    /// Only `AGGREGATION_SUM`.
    #[serde(default)]
    aggregation: Option<String>,
}

/// xAI's `analyticsRequest`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AnalyticsRequest {
    time_range: TimeRangeRequest,
    /// `TIME_UNIT_HOUR`, `TIME_UNIT_DAY`, `TIME_UNIT_MONTH` or `TIME_UNIT_NONE`.
    time_unit: String,
    values: Vec<ValueRequest>,
    /// `model`, `api_key_id`, `token_type`.
    #[serde(default)]
    group_by: Vec<String>,
    /// `model:<name>`, `api_key_id:<id>`, `token_type:<prompt|cached_prompt|completion|image>` (for `image`, "tokens" count images), each
    /// optionally prefixed `NOT `; all must hold.
    #[serde(default)]
    filters: Vec<String>,
}

/// `POST …/usage` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UsageRequest {
    analytics_request: AnalyticsRequest,
}

/// One point of a series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DataPointView {
    timestamp: String,
    /// One per value asked for (USD as a number, for charts).
    values: Vec<f64>,
    /// The same, exactly: USD as a decimal with every digit, counts as integers.
    #[serde(rename = "exactValues")]
    exact_values: Vec<String>,
}

/// One series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TimeSeriesView {
    group: Vec<String>,
    group_labels: Vec<String>,
    data_points: Vec<DataPointView>,
}

/// `POST …/usage` answer (xAI's shape).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageAnswer {
    time_series: Vec<TimeSeriesView>,
    limit_reached: bool,
}

fn parse_time(text: &str) -> Result<tollgate_domain::Timestamp, XaiError> {
    chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S")
        .map(|at| at.and_utc())
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(text.trim()).map(|at| at.to_utc()))
        .map_err(|_| XaiError::invalid_argument(format!("'{text}' is not a time (2026-11-01 00:00:00)")))
}

fn dimension(name: &str) -> Result<Dimension, XaiError> {
    match name.trim() {
        "model" => Ok(Dimension::Model),
        "api_key_id" | "api_key" | "apiKeyId" => Ok(Dimension::ApiKey),
        "token_type" | "tokenType" => Ok(Dimension::TokenType),
        other => Err(XaiError::invalid_argument(format!(
            "cannot group or filter by '{other}' (model, api_key_id, token_type)"
        ))),
    }
}

fn usage_query(request: AnalyticsRequest) -> Result<(UsageQuery, Vec<String>), XaiError> {
    let range = &request.time_range;
    if let Some(zone) = range.timezone.as_deref() {
        if !matches!(zone, "Etc/GMT" | "Etc/UTC" | "UTC" | "GMT" | "") {
            return Err(XaiError::invalid_argument(format!(
                "only UTC is supported, not '{zone}'"
            )));
        }
    }
    let unit = match request.time_unit.trim_start_matches("TIME_UNIT_") {
        "HOUR" => TimeUnit::Hour,
        "DAY" => TimeUnit::Day,
        "MONTH" => TimeUnit::Month,
        "NONE" => TimeUnit::None,
        other => {
            return Err(XaiError::invalid_argument(format!(
                "time unit '{other}' is not supported (TIME_UNIT_HOUR, TIME_UNIT_DAY, TIME_UNIT_MONTH, TIME_UNIT_NONE)"
            )));
        }
    };
    let mut measures = Vec::new();
    for value in &request.values {
        if value.aggregation.as_deref().is_some_and(|a| a != "AGGREGATION_SUM") {
            return Err(XaiError::invalid_argument("only AGGREGATION_SUM is supported"));
        }
        measures.push(match value.name.as_str() {
            "usd" => Measure::Usd,
            "tokens" => Measure::Tokens,
            "requests" => Measure::Requests,
            other => {
                return Err(XaiError::invalid_argument(format!(
                    "value '{other}' is not supported (usd, tokens, requests)"
                )));
            }
        });
    }
    let group_by = request
        .group_by
        .iter()
        .map(|g| dimension(g))
        .collect::<Result<Vec<_>, _>>()?;
    let mut filters = Vec::new();
    for filter in &request.filters {
        let (negate, rest) = match filter.trim().strip_prefix("NOT ") {
            Some(rest) => (true, rest),
            None => (false, filter.trim()),
        };
        if rest.contains(" OR ") {
            return Err(XaiError::invalid_argument(
                "OR in filters is not supported; filters all hold",
            ));
        }
        let (field, value) = rest
            .split_once(':')
            .ok_or_else(|| XaiError::invalid_argument(format!("filter '{filter}' is not field:value")))?;
        filters.push(UsageFilter {
            dimension: dimension(field)?,
            value: value.trim().to_owned(),
            negate,
        });
    }
    let labels = request.group_by.iter().map(|g| g.trim().to_owned()).collect();
    Ok((
        UsageQuery {
            from: parse_time(&range.start_time)?,
            to: parse_time(&range.end_time)?,
            unit,
            measures,
            group_by,
            filters,
        },
        labels,
    ))
}

fn usage_answer(series: Vec<Series>, labels: &[String]) -> UsageAnswer {
    UsageAnswer {
        time_series: series
            .into_iter()
            .map(|series| TimeSeriesView {
                group: series.group,
                group_labels: labels.to_vec(),
                data_points: series
                    .points
                    .into_iter()
                    .map(|(at, values)| DataPointView {
                        timestamp: at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        // Display only: the exact figures are beside them.
                        #[allow(clippy::cast_precision_loss, reason = "a chart's number; exactValues is exact")]
                        values: values
                            .iter()
                            .map(|value| match value {
                                Value::Usd(ticks) => ticks.get() as f64 / Ticks::PER_USD as f64,
                                Value::Count(count) => *count as f64,
                            })
                            .collect(),
                        exact_values: values
                            .iter()
                            .map(|value| match value {
                                Value::Usd(ticks) => tollgate_domain::ledger::format_usd(*ticks),
                                Value::Count(count) => count.to_string(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        limit_reached: false,
    }
}

/// Usage analytics: cost, tokens or requests over a time range (UTC), by hour, day or month,
/// grouped by model, API key or token type, filtered; exactly what the ledger charged.
#[utoipa::path(post, path = "/v1/billing/teams/{team_id}/usage", tag = "management",
    params(("team_id" = String, Path, description = "The team's id")),
    request_body = UsageRequest,
    responses((status = 200, body = UsageAnswer), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("management_key" = [])))]
pub(crate) async fn usage(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    XaiJson(body): XaiJson<UsageRequest>,
) -> Result<Json<UsageAnswer>, XaiError> {
    crate::management::own_team(&caller, &team_id)?;
    let (query, labels) = usage_query(body.analytics_request)?;
    let series = state.ledger.usage(&caller, &query).await?;
    Ok(Json(usage_answer(series, &labels)))
}

/// Usage analytics in the console: Admins see the team's; a Member the usage of the keys they
/// created.
#[utoipa::path(post, path = "/api/teams/{team_id}/billing/usage", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    request_body = UsageRequest,
    responses((status = 200, body = UsageAnswer), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_usage(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    XaiJson(body): XaiJson<UsageRequest>,
) -> Result<Json<UsageAnswer>, XaiError> {
    let (query, labels) = usage_query(body.analytics_request)?;
    let series = state.ledger.usage(&caller, &query).await?;
    Ok(Json(usage_answer(series, &labels)))
}
