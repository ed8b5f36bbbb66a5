//! The team's Billing page (Admins: the services refuse anyone else, and the tab shows only to
//! them): the credit left and this month's usage, buying credit (the saved card, or the payment
//! provider's page), the invoiced spending limit, payment methods, auto top-up and the
//! low-balance alert, purchases, and invoices (their page and PDF; paying one that is due).
//! Amounts are typed in dollars and shown exactly (ticks never pass through a float).

use tollgate_domain::Ticks;
use tollgate_domain::ledger::{format_usd, parse_usd};

use super::*;

/// `$12.50`, exactly (small amounts keep their digits: `$0.0000158500`).
pub(super) fn dollars(amount: Ticks) -> String {
    let text = format_usd(amount);
    match text.strip_prefix('-') {
        Some(positive) => format!("-${positive}"),
        None => format!("${text}"),
    }
}

/// A form's amount in dollars (`25`, `25.00`, `$25`), as ticks; the refusal names the field.
pub(super) fn typed_dollars(text: &str, field: &str) -> Result<Ticks, (StatusCode, String)> {
    let text = text.trim().trim_start_matches('$').replace(',', "");
    parse_usd(&text).map_err(|error| (StatusCode::BAD_REQUEST, format!("{field}: {error}")))
}

/// A form's amount in whole cents.
fn typed_cents(text: &str, field: &str) -> Result<i64, (StatusCode, String)> {
    let ticks = typed_dollars(text, field)?;
    if ticks.get() % Ticks::PER_CENT != 0 {
        return Err((StatusCode::BAD_REQUEST, format!("{field}: give whole cents")));
    }
    Ok(ticks.get() / Ticks::PER_CENT)
}

/// Dollars for a form's field (`12.5` → `12.50`).
fn field_dollars(amount: Ticks) -> String {
    format_usd(amount)
}

struct MethodRow {
    id: String,
    label: String,
    default: bool,
}

struct PurchaseRow {
    when: String,
    amount: String,
    how: &'static str,
    status: &'static str,
    failure: String,
}

struct InvoiceRow {
    id: String,
    number: String,
    kind: &'static str,
    month: String,
    status: &'static str,
    due: bool,
    total: String,
    issued: String,
}

/// The auto top-up's fields as the form shows them (empty: off).
#[derive(Default)]
struct AutoFields {
    on: bool,
    threshold: String,
    amount: String,
    monthly_max: String,
}

/// The billing details' fields as the form shows them.
#[derive(Default)]
struct DetailsFields {
    name: String,
    email: String,
    line1: String,
    line2: String,
    city: String,
    state: String,
    postal_code: String,
    country: String,
    tax_id_type: String,
    tax_number: String,
}

impl DetailsFields {
    fn of(info: &tollgate_domain::payments::BillingInfo) -> Self {
        Self {
            name: info.name.clone(),
            email: info.email.clone(),
            line1: info.address.line1.clone(),
            line2: info.address.line2.clone(),
            city: info.address.city.clone(),
            state: info.address.state.clone(),
            postal_code: info.address.postal_code.clone(),
            country: info.address.country.map(|c| c.as_str().to_owned()).unwrap_or_default(),
            tax_id_type: info.tax_id_type.clone(),
            tax_number: info.tax_number.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "billing.html")]
struct BillingPage {
    frame: Frame,
    available: String,
    prepaid: String,
    promo: String,
    month: String,
    month_total: String,
    month_credit: String,
    month_invoiced: String,
    limit: String,
    limit_max: String,
    purchases: bool,
    methods: Vec<MethodRow>,
    top_ups: Vec<PurchaseRow>,
    invoices: Vec<InvoiceRow>,
    auto: AutoFields,
    alert: String,
    details: DetailsFields,
    outcome: Outcome,
}

impl std::ops::Deref for BillingPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// `/console/billing`.
pub(super) async fn billing(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    billing_page(&state, &headers, query.team, Outcome::default()).await
}

async fn billing_page(state: &AppState, headers: &HeaderMap, team: Option<String>, outcome: Outcome) -> Response {
    billing_page_with(state, headers, team, outcome, None).await
}

/// The page, its billing details' form showing `typed` (a refused form keeps what was typed).
async fn billing_page_with(
    state: &AppState,
    headers: &HeaderMap,
    team: Option<String>,
    outcome: Outcome,
    typed: Option<DetailsFields>,
) -> Response {
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    match billing_of(state, &context, outcome).await {
        Ok(mut page) => {
            if let Some(typed) = typed {
                page.details = typed;
            }
            let status = page.outcome.status();
            let mut response = console_page(state, context.team_id, &page);
            *response.status_mut() = status;
            response
        }
        Err(problem) => error_page(problem),
    }
}

async fn billing_of(
    state: &AppState,
    context: &Context,
    outcome: Outcome,
) -> Result<BillingPage, (StatusCode, String)> {
    let caller = &context.caller;
    let preview = state.ledger.invoice_preview(caller).await.map_err(failure)?;
    let balance = preview.balance;
    let month_total = preview
        .usage
        .credit_used
        .checked_add(preview.usage.invoiced)
        .unwrap_or(Ticks::ZERO);
    let (methods, default) = state.payments.payment_methods(caller).await.map_err(failure)?;
    let top_ups = state.payments.top_ups(caller, 10).await.map_err(failure)?;
    let invoices = state
        .payments
        .invoices(caller, &tollgate_store::InvoiceFilter::default())
        .await
        .map_err(failure)?;
    let settings = state.payments.billing_settings(caller).await.map_err(failure)?;
    let details = state.payments.billing_info(caller).await.map_err(failure)?;
    let when = |at: tollgate_domain::Timestamp| at.format("%Y-%m-%d %H:%M UTC").to_string();
    Ok(BillingPage {
        frame: context.frame(state, "/console/billing"),
        available: dollars(balance.total().unwrap_or(Ticks::ZERO)),
        prepaid: dollars(balance.prepaid),
        promo: dollars(balance.promo),
        month: tollgate_domain::billing_month(preview.month_start),
        month_total: dollars(month_total),
        month_credit: dollars(preview.usage.credit_used),
        month_invoiced: dollars(preview.usage.invoiced),
        limit: field_dollars(preview.limits.effective()),
        limit_max: dollars(preview.limits.effective_hard()),
        purchases: state.payments.enabled(),
        methods: methods
            .iter()
            .map(|method| MethodRow {
                id: method.id.clone(),
                label: match &method.card {
                    Some(card) => format!(
                        "{} ending {} (expires {:02}/{})",
                        card.brand, card.last4, card.exp_month, card.exp_year
                    ),
                    None => method.kind.clone(),
                },
                default: default.as_deref() == Some(method.id.as_str()),
            })
            .collect(),
        top_ups: top_ups
            .iter()
            .map(|top_up| PurchaseRow {
                when: when(top_up.created_at),
                amount: dollars(tollgate_domain::payments::cents(top_up.amount_cents)),
                how: if top_up.automatic {
                    "auto top-up"
                } else if top_up.checkout.is_some() {
                    "payment page"
                } else {
                    "saved card"
                },
                status: top_up.status.as_str(),
                failure: top_up.failure.clone().unwrap_or_default(),
            })
            .collect(),
        invoices: invoices
            .iter()
            .map(|invoice| InvoiceRow {
                id: invoice.id.to_string(),
                number: invoice.number.clone(),
                kind: match invoice.kind {
                    tollgate_domain::InvoiceKind::Monthly => "Monthly",
                    tollgate_domain::InvoiceKind::Receipt => "Receipt",
                    tollgate_domain::InvoiceKind::CreditNote => "Credit note",
                },
                month: invoice.month.clone(),
                status: invoice.status.as_str(),
                due: invoice.status.is_unpaid(),
                total: dollars(invoice.total),
                issued: when(invoice.issued_at),
            })
            .collect(),
        auto: settings
            .auto_top_up
            .map(|auto| AutoFields {
                on: true,
                threshold: field_dollars(auto.threshold),
                amount: field_dollars(tollgate_domain::payments::cents(auto.amount_cents)),
                monthly_max: field_dollars(tollgate_domain::payments::cents(auto.monthly_max_cents)),
            })
            .unwrap_or_default(),
        alert: settings.low_balance_alert.map(field_dollars).unwrap_or_default(),
        details: details.as_ref().map(DetailsFields::of).unwrap_or_default(),
        outcome,
    })
}

/// What the Billing page's forms send.
#[derive(Deserialize, Default)]
pub(super) struct BillingForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    limit: String,
    #[serde(default)]
    amount: String,
    /// `card` (the default payment method) or `page` (the provider's checkout page).
    #[serde(default)]
    how: String,
    #[serde(default)]
    auto_on: Option<String>,
    #[serde(default)]
    threshold: String,
    #[serde(default)]
    monthly_max: String,
    #[serde(default)]
    alert: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    line1: String,
    #[serde(default)]
    line2: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    tax_id_type: String,
    #[serde(default)]
    tax_number: String,
}

/// Runs one change as the signed-in member of the team (CSRF checked), then shows the page
/// with its outcome next to the form `place`.
async fn change(
    state: &AppState,
    headers: &HeaderMap,
    team_id: &str,
    form: &BillingForm,
    place: &'static str,
    run: impl AsyncFnOnce(&tollgate_core::Caller) -> Result<String, (StatusCode, String)>,
) -> Response {
    let (caller, _) = match member_of(state, headers, team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let outcome = match run(&caller).await {
        Ok(notice) => Outcome::notice(notice),
        Err(problem) => Outcome::failed(place, problem),
    };
    billing_page(state, headers, Some(team_id.to_owned()), outcome).await
}

/// Sets the invoiced spending limit (at most the operator's maximum: above it is refused).
pub(super) async fn set_limit(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<BillingForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "limit", async |caller| {
        let limit = typed_dollars(&form.limit, "Spending limit")?;
        let limits = state
            .ledger
            .set_soft_limit(caller, limit, &meta)
            .await
            .map_err(failure)?;
        Ok(format!(
            "The monthly spending limit is {}.",
            dollars(limits.effective())
        ))
    })
    .await
}

/// Buys credit: charged to the default card at once, or paid on the provider's page (the page
/// then links there).
pub(super) async fn buy(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<BillingForm>,
) -> Response {
    if form.how == "page" {
        let (caller, csrf) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
            Ok(member) => member,
            Err(problem) => return error_page(problem),
        };
        let started = match typed_cents(&form.amount, "Amount") {
            Ok(cents) => state
                .payments
                .checkout_top_up(&caller, cents, &meta)
                .await
                .map_err(failure),
            Err(problem) => Err(problem),
        };
        return match started {
            Ok(top_up) => match top_up.checkout {
                Some((_, url)) => html(
                    StatusCode::OK,
                    &ContinuePage {
                        layout: Layout::new(&state, csrf),
                        heading: format!(
                            "Buy {} of credit",
                            dollars(tollgate_domain::payments::cents(top_up.amount_cents))
                        ),
                        explanation:
                            "Pay on the payment provider's page; the credit arrives as soon as the payment is captured."
                                .to_owned(),
                        href: url,
                        label: "Continue to payment".to_owned(),
                        back: format!("/console/billing?team={team_id}"),
                    },
                ),
                None => {
                    let notice = "A purchase is already pending: it completes or fails first.".to_owned();
                    billing_page(&state, &headers, Some(team_id), Outcome::notice(notice)).await
                }
            },
            Err(problem) => billing_page(&state, &headers, Some(team_id), Outcome::failed("buy", problem)).await,
        };
    }
    change(&state, &headers, &team_id, &form, "buy", async |caller| {
        let cents = typed_cents(&form.amount, "Amount")?;
        let top_up = state.payments.top_up(caller, cents, &meta).await.map_err(failure)?;
        let amount = dollars(tollgate_domain::payments::cents(top_up.amount_cents));
        match top_up.status {
            tollgate_domain::TopUpStatus::Succeeded => Ok(format!("{amount} of credit was added.")),
            tollgate_domain::TopUpStatus::Pending => Ok(format!(
                "The purchase of {amount} is pending; the credit arrives when the payment is captured."
            )),
            _ => Err((
                StatusCode::PAYMENT_REQUIRED,
                top_up
                    .failure
                    .unwrap_or_else(|| format!("The purchase of {amount} did not go through.")),
            )),
        }
    })
    .await
}

/// Saves a card on the provider's page (the page links there).
pub(super) async fn add_method(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<BillingForm>,
) -> Response {
    let (caller, csrf) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    match state.payments.add_payment_method(&caller).await {
        Ok(url) => html(
            StatusCode::OK,
            &ContinuePage {
                layout: Layout::new(&state, csrf),
                heading: "Add a card".to_owned(),
                explanation: "Give the card on the payment provider's page; the team's first card becomes its default."
                    .to_owned(),
                href: url,
                label: "Continue to the payment provider".to_owned(),
                back: format!("/console/billing?team={team_id}"),
            },
        ),
        Err(error) => {
            billing_page(
                &state,
                &headers,
                Some(team_id),
                Outcome::failed("methods", failure(error)),
            )
            .await
        }
    }
}

/// Makes a saved card the default.
pub(super) async fn default_method(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, method_id)): Path<(String, String)>,
    Form(form): Form<BillingForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "methods", async |caller| {
        state
            .payments
            .set_default_payment_method(caller, &method_id, &meta)
            .await
            .map_err(failure)?;
        Ok("The default payment method was changed.".to_owned())
    })
    .await
}

/// Sets the auto top-up (or turns it off) and the low-balance alert.
pub(super) async fn set_settings(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<BillingForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "settings", async |caller| {
        let auto_top_up = if form.auto_on.is_some() {
            Some(tollgate_domain::AutoTopUp {
                threshold: typed_dollars(&form.threshold, "Below")?,
                amount_cents: typed_cents(&form.amount, "Buy")?,
                monthly_max_cents: typed_cents(&form.monthly_max, "At most per month")?,
            })
        } else {
            None
        };
        let low_balance_alert = match form.alert.trim() {
            "" => None,
            alert => Some(typed_dollars(alert, "Alert below")?),
        };
        state
            .payments
            .set_billing_settings(
                caller,
                tollgate_store::BillingSettings {
                    auto_top_up,
                    low_balance_alert,
                },
                &meta,
            )
            .await
            .map_err(failure)?;
        Ok("The auto top-up and alert were saved.".to_owned())
    })
    .await
}

/// Charges a due invoice to the default payment method now.
pub(super) async fn pay_invoice(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((team_id, invoice_id)): Path<(String, String)>,
    Form(form): Form<BillingForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "invoices", async |caller| {
        let id = invoice_id
            .parse()
            .map_err(|_| (StatusCode::NOT_FOUND, "No such invoice".to_owned()))?;
        let invoice = state.payments.pay_now(caller, id).await.map_err(failure)?;
        Ok(if invoice.status.is_unpaid() {
            format!(
                "Invoice {} is not paid yet: {}",
                invoice.number,
                invoice.failure.unwrap_or_else(|| "the payment is pending".to_owned())
            )
        } else {
            format!("Invoice {} was paid.", invoice.number)
        })
    })
    .await
}

/// Sets who the team's invoices are made out to (issued invoices keep what they were issued
/// with).
pub(super) async fn set_details(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<BillingForm>,
) -> Response {
    let (caller, _) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let typed = DetailsFields {
        name: form.name.clone(),
        email: form.email.clone(),
        line1: form.line1.clone(),
        line2: form.line2.clone(),
        city: form.city.clone(),
        state: form.state.clone(),
        postal_code: form.postal_code.clone(),
        country: form.country.trim().to_owned(),
        tax_id_type: form.tax_id_type.clone(),
        tax_number: form.tax_number.clone(),
    };
    let saved = async {
        let country = match typed.country.as_str() {
            "" => None,
            code => Some(
                code.parse::<tollgate_domain::payments::CountryCode>()
                    .map_err(|e| (StatusCode::BAD_REQUEST, format!("Country: {e}")))?,
            ),
        };
        let info = tollgate_domain::payments::BillingInfo {
            name: typed.name.clone(),
            email: typed.email.clone(),
            address: tollgate_domain::payments::Address {
                line1: typed.line1.clone(),
                line2: typed.line2.clone(),
                city: typed.city.clone(),
                state: typed.state.clone(),
                postal_code: typed.postal_code.clone(),
                country,
            },
            tax_id_type: typed.tax_id_type.clone(),
            tax_number: typed.tax_number.clone(),
        };
        state
            .payments
            .set_billing_info(&caller, info, &meta)
            .await
            .map_err(failure)
    }
    .await;
    let (outcome, typed) = match saved {
        Ok(_) => (
            Outcome::notice("The billing details were saved; invoices from now on carry them.".to_owned()),
            None,
        ),
        Err(problem) => (Outcome::failed("details", problem), Some(typed)),
    };
    billing_page_with(&state, &headers, Some(team_id), outcome, typed).await
}
