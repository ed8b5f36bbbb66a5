//! The operator pages (`/operator`): every team with its credit, tier and state, searched by
//! name; one team's page to grant credit (prepaid, or promotional with an expiry), set the most
//! its Admins may invoice, pin its tier, grant or withdraw zero retention, block one of its
//! API keys, and block the whole team (every request refused, saying why) or lift that block. Only operators open them (core `Operators`: a configured, verified address with
//! two-factor authentication on); each change is audited as that person.

use tollgate_core::Operator;
use tollgate_domain::ledger::format_usd;

use super::billing::{dollars, typed_dollars};
use super::*;

/// The signed-in operator of a page (else the page saying why not).
async fn operator_context(state: &AppState, headers: &HeaderMap) -> Result<(Context, Operator), Response> {
    let context = context(state, headers, None).await?;
    match state.operators.admit(&context.visitor.user) {
        Ok(operator) => Ok((context, operator)),
        Err(refusal) => Err(error_page((StatusCode::FORBIDDEN, refusal.to_string()))),
    }
}

/// The operator making a change (CSRF checked).
async fn acting_operator(state: &AppState, headers: &HeaderMap, csrf: Option<&str>) -> Result<Operator, Response> {
    let visitor = acting(state, headers, csrf).await.map_err(|e| error_page(failure(e)))?;
    state
        .operators
        .admit(&visitor.user)
        .map_err(|refusal| error_page((StatusCode::FORBIDDEN, refusal.to_string())))
}

struct TeamRow {
    id: String,
    name: String,
    personal: bool,
    members: u64,
    credit: String,
    tier: String,
    blocked: String,
    created: String,
}

#[derive(Template)]
#[template(path = "operator.html")]
struct OperatorPage {
    frame: Frame,
    search: String,
    teams: Vec<TeamRow>,
}

impl std::ops::Deref for OperatorPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// `/operator`: teams, newest first, searched by name.
pub(super) async fn operator(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<SearchQuery>,
) -> Response {
    let (context, operator) = match operator_context(&state, &headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let summaries = match state.teams.overview(&operator, &query.q, 200).await {
        Ok(summaries) => summaries,
        Err(error) => return error_page(failure(error)),
    };
    let mut teams = Vec::with_capacity(summaries.len());
    for summary in summaries {
        let tier = match state.tiers.tier_of(summary.team.id).await {
            Ok(tier) => tier_text(&tier),
            Err(_) => "?".to_owned(),
        };
        teams.push(TeamRow {
            id: summary.team.id.to_string(),
            name: summary.team.name,
            personal: summary.team.personal,
            members: summary.members,
            credit: dollars(summary.balance.total().unwrap_or(tollgate_domain::Ticks::ZERO)),
            tier,
            blocked: match (summary.blocked_reason, summary.blocked_invoice) {
                (Some(reason), _) => format!("by the operator: {reason}"),
                (None, Some(invoice)) => format!("invoice {invoice} unpaid"),
                (None, None) => String::new(),
            },
            created: summary.team.created_at.format("%Y-%m-%d").to_string(),
        });
    }
    let page = OperatorPage {
        frame: context.frame(&state, "/operator"),
        search: query.q,
        teams,
    };
    html(StatusCode::OK, &page)
}

/// A tier refused: the operator's mistake is a 4xx; a store failure a 500, logged, its
/// details kept from the page.
fn tier_failure(error: tollgate_core::tiers::TierError) -> (StatusCode, String) {
    use tollgate_core::tiers::TierError;
    match error {
        TierError::NoSuchTier(..) => bad(error.to_string()),
        TierError::TeamNotFound => (StatusCode::NOT_FOUND, error.to_string()),
        TierError::Store(error) => failure(error),
    }
}

fn tier_text(tier: &tollgate_core::tiers::TeamTier) -> String {
    match tier.standing.pinned {
        Some(_) => format!("{} (pinned)", tier.tier),
        None => tier.tier.to_string(),
    }
}

struct KeyRow {
    id: String,
    name: String,
    redacted: String,
    status: &'static str,
    reason: String,
}

struct EntryRow {
    when: String,
    kind: String,
    amount: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "operator_team.html")]
struct TeamPage {
    frame: Frame,
    id: String,
    name: String,
    personal: bool,
    members: Vec<(String, &'static str)>,
    prepaid: String,
    promo: String,
    entries: Vec<EntryRow>,
    limit_max: String,
    limit_is_default: bool,
    tier: String,
    tiers: usize,
    zero_retention: bool,
    /// Why the operator blocked the team, if they did.
    blocked_reason: Option<String>,
    keys: Vec<KeyRow>,
    outcome: Outcome,
}

impl std::ops::Deref for TeamPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// `/operator/teams/{team_id}`.
pub(super) async fn operator_team(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(team_id): Path<String>,
) -> Response {
    team_page(&state, &headers, &team_id, Outcome::default()).await
}

async fn team_page(state: &AppState, headers: &HeaderMap, team_id: &str, outcome: Outcome) -> Response {
    let (context, operator) = match operator_context(state, headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Ok(team_id) = team_id.parse::<TeamId>() else {
        return error_page((StatusCode::NOT_FOUND, "No such team".into()));
    };
    let page = async {
        let tollgate_core::OperatorView {
            team,
            members,
            data_use,
            blocked_reason,
        } = state
            .teams
            .team_for_operator(&operator, team_id)
            .await
            .map_err(failure)?;
        let balance = state.ledger.balance(team_id).await.map_err(failure)?;
        let entries = state.ledger.entries(team_id, 20).await.map_err(failure)?;
        let limits = state
            .ledger
            .limits_for_operator(&operator, team_id)
            .await
            .map_err(failure)?;
        let tier = state.tiers.tier_of(team_id).await.map_err(tier_failure)?;
        let keys = state
            .keys
            .keys_for_operator(&operator, team_id)
            .await
            .map_err(failure)?;
        Ok::<_, (StatusCode, String)>(TeamPage {
            frame: context.frame(state, "/operator"),
            id: team.id.to_string(),
            name: team.name,
            personal: team.personal,
            members: members
                .iter()
                .map(|m| {
                    (
                        m.email.as_ref().to_owned(),
                        if m.role == Role::Admin { "Admin" } else { "Member" },
                    )
                })
                .collect(),
            prepaid: dollars(balance.prepaid),
            promo: dollars(balance.promo),
            entries: entries
                .iter()
                .map(|entry| EntryRow {
                    when: entry.created_at.format("%Y-%m-%d %H:%M").to_string(),
                    kind: entry.kind.to_string(),
                    amount: dollars(entry.amount),
                    reason: entry.reason.clone().unwrap_or_default(),
                })
                .collect(),
            limit_max: format_usd(limits.effective_hard()),
            limit_is_default: limits.hard_override.is_none(),
            tier: tier_text(&tier),
            tiers: state.tiers.schedule().len(),
            zero_retention: data_use.zero_retention,
            blocked_reason,
            keys: keys
                .iter()
                .map(|key| KeyRow {
                    id: key.id.to_string(),
                    name: key.name.clone(),
                    redacted: key.redacted.clone(),
                    status: super::keys::status_of(key),
                    reason: key.blocked_reason.clone().unwrap_or_default(),
                })
                .collect(),
            outcome,
        })
    }
    .await;
    match page {
        Ok(page) => html(page.outcome.status(), &page),
        Err(problem) => error_page(problem),
    }
}

/// What the operator's forms send.
#[derive(Deserialize, Default)]
pub(super) struct OperatorForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    usd: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    promo: Option<String>,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    tier: String,
    #[serde(default)]
    on: Option<String>,
}

/// Runs one operator's change on a team, then shows its page with the outcome at `place`.
async fn change(
    state: &AppState,
    headers: &HeaderMap,
    team_id: &str,
    form: &OperatorForm,
    place: &'static str,
    run: impl AsyncFnOnce(&Operator, TeamId) -> Result<String, (StatusCode, String)>,
) -> Response {
    let operator = match acting_operator(state, headers, form.csrf.as_deref()).await {
        Ok(operator) => operator,
        Err(response) => return response,
    };
    let Ok(id) = team_id.parse::<TeamId>() else {
        return error_page((StatusCode::NOT_FOUND, "No such team".into()));
    };
    let outcome = match run(&operator, id).await {
        Ok(notice) => Outcome::notice(notice),
        Err(problem) => Outcome::failed(place, problem),
    };
    team_page(state, headers, team_id, outcome).await
}

fn bad(message: String) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, message)
}

/// Grants credit: prepaid, or promotional until a day.
pub(super) async fn grant(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<OperatorForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "grant", async |operator, team| {
        let amount = typed_dollars(&form.usd, "Amount")?;
        let expires = if form.promo.is_some() {
            day_start("Expires on", &form.expires, false)
                .map_err(bad)?
                .ok_or_else(|| bad("Promotional credit needs the day it expires".to_owned()))
                .map(Some)?
        } else {
            None
        };
        state
            .ledger
            .grant(team, amount, form.reason.trim(), expires, operator.actor(), &meta)
            .await
            .map_err(failure)?;
        Ok(format!(
            "{} of {} credit was granted.",
            dollars(amount),
            if expires.is_some() { "promotional" } else { "prepaid" }
        ))
    })
    .await
}

/// Sets the most the team's Admins may invoice a month (empty: the configured default).
pub(super) async fn limit(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<OperatorForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "limit", async |operator, team| {
        let max = match form.usd.trim() {
            "" => None,
            text => Some(typed_dollars(text, "Maximum")?),
        };
        let limits = state
            .ledger
            .set_hard_override(team, max, operator.actor(), &meta)
            .await
            .map_err(failure)?;
        Ok(format!(
            "The team's Admins may invoice at most {} a month.",
            dollars(limits.effective_hard())
        ))
    })
    .await
}

/// Pins the team's rate-limit tier, or (empty) lets its spend decide again.
pub(super) async fn tier(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<OperatorForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "tier", async |operator, team| {
        let tier = match form.tier.trim() {
            "" => None,
            text => Some(
                text.parse::<u32>()
                    .map_err(|_| bad("Tier: a whole number".to_owned()))?,
            ),
        };
        let standing = state
            .tiers
            .pin(team, tier, operator.actor(), &meta)
            .await
            .map_err(tier_failure)?;
        Ok(format!("The team's tier is {}.", tier_text(&standing)))
    })
    .await
}

/// Grants or withdraws zero retention.
pub(super) async fn zero_retention(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<OperatorForm>,
) -> Response {
    change(
        &state,
        &headers,
        &team_id,
        &form,
        "retention",
        async |operator, team| {
            let on = form.on.as_deref() == Some("yes");
            state
                .teams
                .set_zero_retention(team, on, operator.actor(), &meta)
                .await
                .map_err(failure)?;
            Ok(if on {
                "Zero retention is granted: no bodies are kept.".to_owned()
            } else {
                "Zero retention is withdrawn.".to_owned()
            })
        },
    )
    .await
}

/// Blocks one of the team's API keys (refused on every node within a second; enabling it does
/// not lift the block).
pub(super) async fn block_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, key_id)): Path<(String, String)>,
    Form(form): Form<OperatorForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "keys", async |operator, team| {
        let id = key_id
            .parse::<ApiKeyId>()
            .map_err(|_| (StatusCode::NOT_FOUND, "No such key".to_owned()))?;
        if form.reason.trim().is_empty() {
            return Err(bad("Say why the key is blocked: the team is told".to_owned()));
        }
        state
            .keys
            .block_api_key(team, id, form.reason.trim(), operator.actor(), &meta)
            .await
            .map_err(failure)?;
        Ok("The key is blocked.".to_owned())
    })
    .await
}

/// Blocks every request of the team, saying why (the team's callers read the reason), or lifts
/// that block.
pub(super) async fn block_team(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<OperatorForm>,
) -> Response {
    change(&state, &headers, &team_id, &form, "block", async |operator, team| {
        if form.on.as_deref() == Some("yes") {
            let changed = state
                .teams
                .block_team(operator, team, &form.reason, &meta)
                .await
                .map_err(failure)?;
            Ok(if changed {
                "The team is blocked: every request is refused with your reason.".to_owned()
            } else {
                "The team was blocked already.".to_owned()
            })
        } else {
            state.teams.unblock_team(operator, team, &meta).await.map_err(failure)?;
            Ok("The block is lifted: the team's requests are served again.".to_owned())
        }
    })
    .await
}
