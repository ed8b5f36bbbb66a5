//! Billing routes of the Management API (`/v1/billing/teams/{team_id}/…`, a management key of
//! the team, as xAI's), and the same data in the console JSON API (`/api/teams/{team_id}/billing/…`,
//! Admins). Amounts are xAI's: USD cents as strings, rounded half away from zero from exact ticks
//! ([`tollgate_domain::Ticks::to_cents_rounded`]); the prepaid ledger is shown inverted, as
//! xAI's is (credit negative, consumption positive).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Deserialize;
use serde::Serialize;
use tollgate_core::billing::{InvoicePreview, LedgerError, TeamCredit};
use tollgate_domain::{EntryKind, SpendingLimits, TeamId, Ticks};

use crate::AppState;
use crate::console::TeamMember;
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
            | LedgerError::NegativeLimit => XaiError::invalid_argument(error.to_string()),
            LedgerError::Store(store) => store.into(),
        }
    }
}

/// USD cents, as a string (proto3 JSON of an int64).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CentView {
    val: String,
}

impl CentView {
    fn of(amount: Ticks) -> Self {
        Self {
            val: amount.to_cents_rounded().to_string(),
        }
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
        EntryKind::Adjustment | EntryKind::PromoGrant | EntryKind::PromoExpiry | EntryKind::Forfeiture => "MANUAL",
    }
}

fn balance_view(credit: TeamCredit, team_id: TeamId) -> Result<PrepaidBalanceView, XaiError> {
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
                amount: CentView::of(Ticks::new(-month.amount.get())),
                create_time: crate::management::rfc3339(month.last_at),
                spend_bp_key_year: year_month.map(|(year, _)| year),
                spend_bp_key_month: year_month.map(|(_, month)| month),
            },
        )
    });
    let mut changes: Vec<_> = entries.chain(spend).collect();
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
    Ok(Json(balance_view(credit, caller.team_id())?))
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
    Ok(Json(balance_view(credit, caller.team_id())?))
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
