//! The audit log on the management API, in xAI's shape: `GET /audit/teams/{teamId}/events`
//! with `pageSize`, `pageToken`, `eventFilter.userId`, `eventFilter.query`,
//! `eventFilter.eventId`, `eventTimeFrom`, `eventTimeTo` and `orderBy`; and an export of the
//! same search as CSV or JSON lines (`GET /audit/teams/{teamId}/events/export?format=…`),
//! streamed page by page.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tollgate_core::{AuditError, AuditFilter};
use tollgate_domain::{AuditEventId, AuditRecord, Timestamp};

use crate::AppState;
use crate::error::XaiError;
use crate::extract::{ManagementCaller, RequestMeta};
use crate::management::{parse_team_id, rfc3339};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/audit/teams/{team_id}/events", get(list_events))
        .route("/audit/teams/{team_id}/events/export", get(export_events))
}

impl From<AuditError> for XaiError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::TeamNotFound => {
                XaiError::permission_denied("The management key is not authorized for this team")
            }
            AuditError::Forbidden => XaiError::permission_denied(error.to_string()),
            AuditError::InvalidFilter(_) | AuditError::InvalidPageToken => {
                XaiError::invalid_argument(error.to_string())
            }
            AuditError::Store(store) => store.into(),
        }
    }
}

/// The search, as query parameters (xAI's names).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Events per page, 1 to 1000 (default 100).
    #[serde(rename = "pageSize")]
    #[param(rename = "pageSize")]
    page_size: Option<u32>,
    /// The `nextPageToken` of the previous page, with the same filters and order.
    #[serde(rename = "pageToken")]
    #[param(rename = "pageToken")]
    page_token: Option<String>,
    /// Only events by this user (or management key, or API key) id.
    #[serde(rename = "eventFilter.userId")]
    #[param(rename = "eventFilter.userId")]
    user_id: Option<String>,
    /// Only events whose action or description contains this text, ignoring case (e.g. `ListApiKeys`).
    #[serde(rename = "eventFilter.query")]
    #[param(rename = "eventFilter.query")]
    query: Option<String>,
    /// Only this event.
    #[serde(rename = "eventFilter.eventId")]
    #[param(rename = "eventFilter.eventId")]
    event_id: Option<String>,
    /// From this time (RFC 3339), inclusive.
    #[serde(rename = "eventTimeFrom")]
    #[param(rename = "eventTimeFrom")]
    event_time_from: Option<String>,
    /// Until this time (RFC 3339), exclusive.
    #[serde(rename = "eventTimeTo")]
    #[param(rename = "eventTimeTo")]
    event_time_to: Option<String>,
    /// `TIME_DESCENDING` (default) or `TIME_ASCENDING`.
    #[serde(rename = "orderBy")]
    #[param(rename = "orderBy")]
    order_by: Option<String>,
}

fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<Timestamp>, XaiError> {
    raw.filter(|r| !r.is_empty())
        .map(|r| {
            chrono::DateTime::parse_from_rfc3339(r)
                .map(|t| t.to_utc())
                .map_err(|_| {
                    XaiError::invalid_argument(format!("{name} must be an RFC 3339 time, e.g. 2026-11-22T10:00:00Z"))
                })
        })
        .transpose()
}

impl EventsQuery {
    fn filter(&self, default_oldest_first: bool) -> Result<AuditFilter, XaiError> {
        let event_id = match self.event_id.as_deref().filter(|id| !id.is_empty()) {
            Some(raw) => Some(
                raw.parse::<AuditEventId>()
                    .map_err(|_| XaiError::invalid_argument("eventFilter.eventId is not an event id"))?,
            ),
            None => None,
        };
        let oldest_first = match self.order_by.as_deref() {
            None | Some("") => default_oldest_first,
            Some("TIME_DESCENDING") => false,
            Some("TIME_ASCENDING") => true,
            Some(_) => {
                return Err(XaiError::invalid_argument(
                    "orderBy must be TIME_DESCENDING or TIME_ASCENDING",
                ));
            }
        };
        Ok(AuditFilter {
            event_id,
            user_id: self.user_id.clone().filter(|u| !u.is_empty()),
            query: self.query.clone().filter(|q| !q.is_empty()),
            from: parse_time("eventTimeFrom", self.event_time_from.as_deref())?,
            to: parse_time("eventTimeTo", self.event_time_to.as_deref())?,
            oldest_first,
        })
    }
}

/// The person who acted, when a person did (xAI's `user`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventUserView {
    user_id: String,
    /// The email at the time of the event; empty once the account is purged.
    email: String,
}

/// Who acted, whatever they are.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventActorView {
    /// `user`, `management_key`, `api_key`, `operator` or `system`.
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    /// Email or key name at the time.
    name: Option<String>,
}

/// One audit event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditEventView {
    event_id: String,
    /// RFC 3339, UTC.
    event_time: String,
    team_id: Option<String>,
    /// Stable action name, e.g. `ListApiKeys`.
    action: String,
    description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<EventUserView>,
    actor: EventActorView,
    target: Option<String>,
    /// `success`, `denied` or `failure`.
    outcome: String,
    ip_address: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    /// Position in the team's tamper-evident chain (int64 as a string).
    chain_seq: Option<String>,
    /// The event's link hash, hex.
    chain_hash: Option<String>,
}

impl AuditEventView {
    fn new(record: &AuditRecord) -> Self {
        let user = (record.actor_kind == "user").then(|| EventUserView {
            user_id: record.actor_id.clone().unwrap_or_default(),
            email: record.actor_label.clone().unwrap_or_default(),
        });
        Self {
            event_id: record.id.to_string(),
            event_time: rfc3339(record.at),
            team_id: record.team_id.map(|t| t.to_string()),
            action: record.action.clone(),
            description: record.description.clone(),
            user,
            actor: EventActorView {
                kind: record.actor_kind.clone(),
                id: record.actor_id.clone(),
                name: record.actor_label.clone(),
            },
            target: record.target.clone(),
            outcome: record.outcome.clone(),
            ip_address: record.ip.clone(),
            user_agent: record.user_agent.clone(),
            request_id: record.request_id.clone(),
            chain_seq: record.seq.map(|s| s.to_string()),
            chain_hash: record.hash.map(hex::encode),
        }
    }
}

/// A page of audit events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditEventListView {
    events: Vec<AuditEventView>,
    /// Pass as `pageToken` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

pub(crate) fn query_or_400(
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<EventsQuery, XaiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| XaiError::invalid_argument(e.body_text()))
}

/// Search the team's audit log. Team Admins (through a management key) only.
#[utoipa::path(get, path = "/audit/teams/{team_id}/events", tag = "management",
    params(("team_id" = String, Path, description = "The team's id"), EventsQuery),
    responses(
        (status = 200, body = AuditEventListView),
        (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody),
        (status = 403, description = "Not this management key's team, or not a management key", body = crate::ErrorBody),
    ),
    security(("management_key" = [])))]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditEventListView>, XaiError> {
    let team_id = parse_team_id(&team_id)?;
    search(&state, &caller, team_id, &meta, query_or_400(query)?).await
}

/// The search both surfaces share.
pub(crate) async fn search(
    state: &AppState,
    caller: &tollgate_core::Caller,
    team_id: tollgate_domain::TeamId,
    meta: &tollgate_domain::RequestContext,
    query: EventsQuery,
) -> Result<Json<AuditEventListView>, XaiError> {
    let page_size = query.page_size.unwrap_or(100);
    if !(1..=tollgate_core::audit::MAX_PAGE_SIZE).contains(&page_size) {
        return Err(XaiError::invalid_argument("pageSize must be between 1 and 1000"));
    }
    let filter = query.filter(false)?;
    let page = state
        .audit
        .search(caller, team_id, &filter, query.page_token.as_deref(), page_size, meta)
        .await?;
    Ok(Json(AuditEventListView {
        events: page.events.iter().map(AuditEventView::new).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// `format` of an export.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportFormatQuery {
    /// `csv` or `jsonl`.
    format: Option<String>,
}

/// An export file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Comma-separated values with a header row (RFC 4180), spreadsheet formulas neutralised.
    Csv,
    /// One JSON event per line, in the search API's shape.
    JsonLines,
}

impl ExportFormat {
    /// `csv` or `jsonl`.
    ///
    /// # Errors
    /// On any other name.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::JsonLines),
            other => Err(format!("format must be csv or jsonl, not '{other}'")),
        }
    }

    /// The name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::JsonLines => "jsonl",
        }
    }

    const fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::JsonLines => "application/x-ndjson",
        }
    }

    /// The first line of the file (CSV's header), if the format has one.
    #[must_use]
    pub fn header(self) -> Option<String> {
        match self {
            Self::Csv => Some(format!("{}\r\n", CSV_COLUMNS.join(","))),
            Self::JsonLines => None,
        }
    }

    /// One event as one line of the file.
    #[must_use]
    pub fn line(self, record: &AuditRecord) -> String {
        match self {
            Self::Csv => {
                let time = rfc3339(record.at);
                let seq = record.seq.map(|s| s.to_string());
                let hash = record.hash.map(hex::encode);
                let id = record.id.to_string();
                let team = record.team_id.map(|t| t.to_string());
                let fields: [Option<&str>; 15] = [
                    Some(&id),
                    Some(&time),
                    team.as_deref(),
                    Some(&record.actor_kind),
                    record.actor_id.as_deref(),
                    record.actor_label.as_deref(),
                    Some(&record.action),
                    Some(&record.description),
                    record.target.as_deref(),
                    Some(&record.outcome),
                    record.ip.as_deref(),
                    record.user_agent.as_deref(),
                    record.request_id.as_deref(),
                    seq.as_deref(),
                    hash.as_deref(),
                ];
                let mut line = fields
                    .iter()
                    .map(|f| csv_field(f.unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",");
                line.push_str("\r\n");
                line
            }
            Self::JsonLines => {
                let mut line = serde_json::to_string(&AuditEventView::new(record)).unwrap_or_default();
                line.push('\n');
                line
            }
        }
    }
}

const CSV_COLUMNS: [&str; 15] = [
    "event_id",
    "event_time",
    "team_id",
    "actor_type",
    "actor_id",
    "actor_name",
    "action",
    "description",
    "target",
    "outcome",
    "ip_address",
    "user_agent",
    "request_id",
    "chain_seq",
    "chain_hash",
];

/// One CSV field: quoted when it holds a separator, quote or line break (RFC 4180), and prefixed
/// with `'` when a spreadsheet would read it as a formula (OWASP CSV injection).
fn csv_field(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// Export the team's audit log (the same filters as the search, oldest first by default) as CSV
/// or JSON lines. Streams every matching event; audited as `ExportAuditEvents`.
#[utoipa::path(get, path = "/audit/teams/{team_id}/events/export", tag = "management",
    params(("team_id" = String, Path, description = "The team's id"), ExportFormatQuery, EventsQuery),
    responses(
        (status = 200, description = "The events, as `text/csv` or `application/x-ndjson`", content_type = "text/csv"),
        (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody),
    ),
    security(("management_key" = [])))]
pub(crate) async fn export_events(
    State(state): State<AppState>,
    ManagementCaller(caller): ManagementCaller,
    Path(team_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    format: Result<Query<ExportFormatQuery>, axum::extract::rejection::QueryRejection>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, XaiError> {
    let team_id = parse_team_id(&team_id)?;
    let (format, filter) = export_request(format, query)?;
    let export = state
        .audit
        .export(&caller, team_id, filter, format.name(), &meta)
        .await?;
    Ok(export_response(export, format, team_id))
}

/// Reads an export request's `format` (default CSV) and filters (oldest first by default).
pub(crate) fn export_request(
    format: Result<Query<ExportFormatQuery>, axum::extract::rejection::QueryRejection>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(ExportFormat, AuditFilter), XaiError> {
    let Query(format) = format.map_err(|e| XaiError::invalid_argument(e.body_text()))?;
    let format = ExportFormat::parse(format.format.as_deref().unwrap_or("csv")).map_err(XaiError::invalid_argument)?;
    let filter = query_or_400(query)?.filter(true)?;
    Ok((format, filter))
}

/// Streams an export as a file download, page by page.
pub(crate) fn export_response(
    export: tollgate_core::AuditExport,
    format: ExportFormat,
    team_id: tollgate_domain::TeamId,
) -> Response {
    let header = futures_util::stream::iter(format.header().map(|h| Ok::<_, std::io::Error>(Bytes::from(h))));
    let body = futures_util::stream::unfold(Some(export), move |export| async move {
        let mut export = export?;
        match export.next_page().await {
            Ok(Some(page)) => {
                let chunk: String = page.iter().map(|r| format.line(r)).collect();
                Some((Ok(Bytes::from(chunk)), Some(export)))
            }
            Ok(None) => None,
            Err(error) => {
                // The status line is gone; cutting the body short is the only signal left.
                tracing::error!(error = %error, "audit export failed midway");
                Some((Err(std::io::Error::other("audit export failed")), None))
            }
        }
    });
    let filename = format!("audit-{team_id}.{}", format.name());
    (
        [
            (CONTENT_TYPE, format.content_type().to_owned()),
            (CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        Body::from_stream(futures_util::StreamExt::chain(header, body)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(csv_field(""), "");
    }
}
