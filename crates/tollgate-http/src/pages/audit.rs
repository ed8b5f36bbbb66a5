//! The console's Audit Log page (Admins): the team's events, newest first, searched by text,
//! user or key id, event id and a range of days, a page at a time, and exported as the search
//! shows them (through the JSON API's export).

use super::*;

/// Events per page.
const PAGE_SIZE: u32 = 50;

/// The search as the form holds it (kept as typed, to show it again).
#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditQuery {
    team: Option<String>,
    #[serde(default)]
    q: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    page: Option<String>,
}

/// The search's fields, to fill the form again.
struct Filters {
    q: String,
    user: String,
    event: String,
    from: String,
    to: String,
}

/// An event as the table shows it.
struct EventRow {
    id: String,
    at: String,
    action: String,
    description: String,
    actor: String,
    actor_id: Option<String>,
    ip: Option<String>,
    outcome: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditLogPage {
    frame: Frame,
    filters: Filters,
    events: Vec<EventRow>,
    next: Option<String>,
    export_csv: String,
    export_jsonl: String,
    error: Option<String>,
}

impl std::ops::Deref for AuditLogPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// The filter the form asks for, or what is wrong with it.
fn filter(query: &AuditQuery) -> Result<tollgate_core::AuditFilter, String> {
    let trimmed = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let event_id = match trimmed(&query.event) {
        Some(id) => Some(id.parse().map_err(|_| "Event ID is not an event's id".to_owned())?),
        None => None,
    };
    let filter = tollgate_core::AuditFilter {
        event_id,
        user_id: trimmed(&query.user),
        query: trimmed(&query.q),
        from: day_start("From", &query.from, false)?,
        // The last day is included: up to the next day's start.
        to: day_start("To", &query.to, true)?,
        oldest_first: false,
    };
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from >= to
    {
        return Err("From must not be after To".into());
    }
    Ok(filter)
}

/// The same search as a query string (for the next page's link), URL-encoded.
fn search_query(query: &AuditQuery) -> String {
    let mut pairs = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("q", query.q.trim()),
        ("user", query.user.trim()),
        ("event", query.event.trim()),
        ("from", query.from.trim()),
        ("to", query.to.trim()),
    ] {
        if !value.is_empty() {
            pairs.append_pair(key, value);
        }
    }
    pairs.finish()
}

/// The JSON API's export of the same search (its parameter names are xAI's).
fn export_link(team_id: &str, filter: &tollgate_core::AuditFilter, format: &str) -> String {
    let mut pairs = form_urlencoded::Serializer::new(String::new());
    pairs.append_pair("format", format);
    if let Some(query) = &filter.query {
        pairs.append_pair("eventFilter.query", query);
    }
    if let Some(user) = &filter.user_id {
        pairs.append_pair("eventFilter.userId", user);
    }
    if let Some(id) = filter.event_id {
        pairs.append_pair("eventFilter.eventId", &id.to_string());
    }
    if let Some(from) = filter.from {
        pairs.append_pair("eventTimeFrom", &crate::management::rfc3339(from));
    }
    if let Some(to) = filter.to {
        pairs.append_pair("eventTimeTo", &crate::management::rfc3339(to));
    }
    format!("/api/teams/{team_id}/audit/events/export?{}", pairs.finish())
}

pub(super) async fn audit_log(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Response {
    let context = match context(&state, &headers, query.team.clone()).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let team_id = context.team_id.to_string();
    let mut status = StatusCode::OK;
    let mut error = None;
    let mut events = Vec::new();
    let mut next = None;
    let mut exports = (String::new(), String::new());
    match filter(&query) {
        Err(message) => {
            status = StatusCode::BAD_REQUEST;
            error = Some(message);
        }
        Ok(filter) => {
            exports = (
                export_link(&team_id, &filter, "csv"),
                export_link(&team_id, &filter, "jsonl"),
            );
            match state
                .audit
                .search(
                    &context.caller,
                    context.team_id,
                    &filter,
                    query.page.as_deref(),
                    PAGE_SIZE,
                    &meta,
                )
                .await
            {
                Ok(page) => {
                    events = page
                        .events
                        .iter()
                        .map(|event| EventRow {
                            id: event.id.to_string(),
                            at: event.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            action: event.action.clone(),
                            description: event.description.clone(),
                            // Users are told apart by id (accounts may share an address).
                            actor: event.actor_label.clone().unwrap_or_else(|| event.actor_kind.clone()),
                            actor_id: event.actor_id.clone(),
                            ip: event.ip.clone(),
                            outcome: event.outcome.clone(),
                        })
                        .collect();
                    next = page.next_page_token.map(|token| {
                        let mut pairs = form_urlencoded::Serializer::new(search_query(&query));
                        pairs.append_pair("page", &token);
                        format!("/console/audit?{}", pairs.finish())
                    });
                }
                Err(refused) => {
                    let (refused_status, message) = failure(refused);
                    status = refused_status;
                    error = Some(message);
                }
            }
        }
    }
    let page = AuditLogPage {
        frame: context.frame(&state, "/console/audit"),
        filters: Filters {
            q: query.q,
            user: query.user,
            event: query.event,
            from: query.from,
            to: query.to,
        },
        events,
        next,
        export_csv: exports.0,
        export_jsonl: exports.1,
        error,
    };
    let mut response = console_page(&state, context.team_id, &page);
    *response.status_mut() = status;
    response
}
