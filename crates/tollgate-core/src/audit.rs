//! The audit log as its readers see it: search (by event id, text, user, dates; keyset pages),
//! export, chain verification and retention.
//!
//! Reading the log is itself audited (`ListAuditEvents`, `ExportAuditEvents`): who looked at
//! the log is part of the log. Retention removes a chain's oldest events and leaves a MAC'd
//! boundary, so what remains still verifies (see [`tollgate_domain::audit`]).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_domain::{
    Actor, AuditAction, AuditChainKey, AuditEvent, AuditEventId, AuditRecord, ChainBreak, ChainHead, ChainVerifier,
    Clock, Permission, RequestContext, TeamId, Timestamp,
};
use tollgate_store::{AuditQuery, Store, StoreError};
use tracing::instrument;

use crate::Caller;
use crate::reads::ReadCoalescer;

/// Most events one search page returns.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Longest search text.
const MAX_QUERY_CHARS: usize = 200;
/// Events read per round trip when exporting or verifying.
const BATCH: u32 = 1000;

/// Why an audit log request failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The caller may not read this team's log (or the team does not exist; they look alike).
    #[error("team not found")]
    TeamNotFound,
    /// The caller's role may not read the audit log.
    #[error("Only team Admins may read the audit log")]
    Forbidden,
    /// A filter is out of range.
    #[error("{0}")]
    InvalidFilter(String),
    /// The page token is not one this server issued for this search order.
    #[error("invalid pageToken")]
    InvalidPageToken,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to search for. Every field narrows the result; all empty lists everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// One event, by id.
    pub event_id: Option<AuditEventId>,
    /// Events by this actor: a user id, or a management or API key id.
    pub user_id: Option<String>,
    /// Text in the action name or description (e.g. `ListApiKeys`), ignoring case.
    pub query: Option<String>,
    /// From this time, inclusive.
    pub from: Option<Timestamp>,
    /// Until this time, exclusive.
    pub to: Option<Timestamp>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

impl AuditFilter {
    fn validate(&self) -> Result<(), AuditError> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from >= to {
                return Err(AuditError::InvalidFilter(
                    "eventTimeFrom must be before eventTimeTo".into(),
                ));
            }
        }
        if self.query.as_ref().is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS) {
            return Err(AuditError::InvalidFilter(format!(
                "eventFilter.query must be at most {MAX_QUERY_CHARS} characters"
            )));
        }
        Ok(())
    }

    fn to_query(&self, team_id: TeamId, after: Option<(Timestamp, AuditEventId)>, limit: u32) -> AuditQuery {
        AuditQuery {
            team_id,
            event_id: self.event_id,
            actor_id: self.user_id.clone(),
            text: self.query.clone().filter(|q| !q.is_empty()),
            from: self.from,
            to: self.to,
            newest_first: !self.oldest_first,
            after,
            limit,
        }
    }
}

/// A keyset position, handed to clients as an opaque token: the last event's time and id, and
/// the order it belongs to (a token of one order is refused by the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    at: Timestamp,
    id: AuditEventId,
    oldest_first: bool,
}

impl Cursor {
    fn encode(self) -> String {
        let order = if self.oldest_first { 'a' } else { 'd' };
        URL_SAFE_NO_PAD.encode(format!("{order}.{}.{}", self.at.timestamp_micros(), self.id))
    }

    fn decode(token: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = text.splitn(3, '.');
        let oldest_first = match parts.next()? {
            "a" => true,
            "d" => false,
            _ => return None,
        };
        let at = chrono::DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
        let id = parts.next()?.parse().ok()?;
        Some(Self { at, id, oldest_first })
    }
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct AuditPage {
    /// The events, in the requested order.
    pub events: Vec<AuditRecord>,
    /// The token of the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

/// What verifying one chain found.
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// Whose chain: a team, or `None` for platform events.
    pub team_id: Option<TeamId>,
    /// Events whose links were checked.
    pub checked: u64,
    /// Events older than the chains themselves (written before tamper evidence existed).
    pub unchained: u64,
    /// The head as stored: anchor it elsewhere (`seq`, `hash`) to also catch a removal of the
    /// newest events together with the head.
    pub head: ChainHead,
    /// Where retention cut the chain, if it did.
    pub pruned_through: Option<u64>,
    /// `Err` names the first broken link.
    pub result: Result<(), ChainBreak>,
}

/// The audit log service.
#[derive(Clone)]
pub struct AuditService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    key: AuditChainKey,
    retention: chrono::Duration,
    reads: ReadCoalescer,
}

/// Records, in the caller's own team's log, that it asked for something it may not do (OWASP
/// `authz_fail`): act on another team, or exceed its role. Written into the caller's log, never
/// another team's, so nobody can fill another team's log. Best effort: a failure to record is
/// logged and the caller still gets its refusal.
///
/// Refusals are coalesced like reads ([`ReadCoalescer`]): one of a kind a minute.
pub(crate) async fn record_denied(
    store: &dyn Store,
    clock: &dyn Clock,
    reads: &ReadCoalescer,
    caller: &Caller,
    action: AuditAction,
    attempted_team: TeamId,
    context: &RequestContext,
) {
    let event = AuditEvent::denied(
        clock.now(),
        Some(caller.team_id()),
        caller.actor(),
        action,
        if attempted_team == caller.team_id() {
            format!("Refused {action}: not allowed for this caller's role")
        } else {
            format!("Refused {action}: the caller may not act on team {attempted_team}")
        },
        Some(format!("team:{attempted_team}")),
        context,
    );
    if !reads.first_in_minute(&event) {
        return;
    }
    if let Err(error) = store.insert_audit_event(&event).await {
        tracing::warn!(error = %error, "could not record a refused request in the audit log");
    }
}

impl AuditService {
    /// A service keeping events for `retention`, verifying with `key`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, key: AuditChainKey, retention: chrono::Duration) -> Self {
        Self {
            store,
            clock,
            key,
            retention,
            reads: ReadCoalescer::default(),
        }
    }

    /// One page of the team's log matching `filter`, after the position in `page_token`.
    /// Audited as `ListAuditEvents`.
    #[instrument(skip_all, fields(team.id = %team_id), err(Debug))]
    pub async fn search(
        &self,
        caller: &Caller,
        team_id: TeamId,
        filter: &AuditFilter,
        page_token: Option<&str>,
        page_size: u32,
        context: &RequestContext,
    ) -> Result<AuditPage, AuditError> {
        if caller.team_id() != team_id {
            record_denied(
                &*self.store,
                &*self.clock,
                &self.reads,
                caller,
                AuditAction::ListAuditEvents,
                team_id,
                context,
            )
            .await;
            return Err(AuditError::TeamNotFound);
        }
        if !caller.allows(Permission::ViewAuditLog) {
            record_denied(
                &*self.store,
                &*self.clock,
                &self.reads,
                caller,
                AuditAction::ListAuditEvents,
                team_id,
                context,
            )
            .await;
            return Err(AuditError::Forbidden);
        }
        filter.validate()?;
        let page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        let after = match page_token.filter(|t| !t.is_empty()) {
            Some(token) => {
                let cursor = Cursor::decode(token).ok_or(AuditError::InvalidPageToken)?;
                if cursor.oldest_first != filter.oldest_first {
                    return Err(AuditError::InvalidPageToken);
                }
                Some((cursor.at, cursor.id))
            }
            None => None,
        };
        let events = self
            .store
            .search_audit_events(&filter.to_query(team_id, after, page_size))
            .await?;
        let next_page_token = (events.len() == page_size as usize)
            .then(|| events.last())
            .flatten()
            .map(|last| {
                Cursor {
                    at: last.at,
                    id: last.id,
                    oldest_first: filter.oldest_first,
                }
                .encode()
            });
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(team_id),
            caller.actor(),
            AuditAction::ListAuditEvents,
            format!("Searched the audit log ({} events)", events.len()),
            None,
            context,
        );
        self.store.insert_audit_event(&audit).await?;
        Ok(AuditPage {
            events,
            next_page_token,
        })
    }

    /// Starts an export of every event matching `filter`, oldest first unless the filter says
    /// otherwise. Audited as `ExportAuditEvents` before the first event is read.
    #[instrument(skip_all, fields(team.id = %team_id), err(Debug))]
    pub async fn export(
        &self,
        caller: &Caller,
        team_id: TeamId,
        filter: AuditFilter,
        format: &str,
        context: &RequestContext,
    ) -> Result<AuditExport, AuditError> {
        if caller.team_id() != team_id {
            record_denied(
                &*self.store,
                &*self.clock,
                &self.reads,
                caller,
                AuditAction::ExportAuditEvents,
                team_id,
                context,
            )
            .await;
            return Err(AuditError::TeamNotFound);
        }
        if !caller.allows(Permission::ViewAuditLog) {
            record_denied(
                &*self.store,
                &*self.clock,
                &self.reads,
                caller,
                AuditAction::ExportAuditEvents,
                team_id,
                context,
            )
            .await;
            return Err(AuditError::Forbidden);
        }
        self.start_export(caller.actor(), team_id, filter, format, context)
            .await
    }

    /// [`Self::export`] for the operator (command line), who may export any team's log.
    pub async fn export_as_operator(
        &self,
        team_id: TeamId,
        filter: AuditFilter,
        format: &str,
    ) -> Result<AuditExport, AuditError> {
        self.start_export(Actor::Operator, team_id, filter, format, &RequestContext::default())
            .await
    }

    async fn start_export(
        &self,
        actor: Actor,
        team_id: TeamId,
        filter: AuditFilter,
        format: &str,
        context: &RequestContext,
    ) -> Result<AuditExport, AuditError> {
        filter.validate()?;
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(team_id),
            actor,
            AuditAction::ExportAuditEvents,
            format!("Exported the audit log as {format}"),
            None,
            context,
        );
        self.store.insert_audit_event(&audit).await?;
        Ok(AuditExport {
            store: Arc::clone(&self.store),
            team_id,
            filter,
            after: None,
            done: false,
        })
    }

    /// Walks one chain from its start (or retention boundary) to its head.
    pub async fn verify(&self, team_id: Option<TeamId>) -> Result<Option<ChainReport>, StoreError> {
        let Some(state) = self.store.get_audit_chain(team_id).await? else {
            return Ok(None);
        };
        let unchained = self.store.count_unchained_audit_events(team_id).await?;
        let mut report = ChainReport {
            team_id,
            checked: 0,
            unchained,
            head: state.head.clone(),
            pruned_through: state.boundary.as_ref().map(|b| b.seq),
            result: Ok(()),
        };
        let mut verifier = match ChainVerifier::new(&self.key, team_id, state.boundary.as_ref()) {
            Ok(verifier) => verifier,
            Err(broken) => {
                report.result = Err(broken);
                return Ok(Some(report));
            }
        };
        let mut after = state.boundary.as_ref().map_or(0, |b| b.seq);
        loop {
            let page = self.store.audit_chain_page(team_id, after, BATCH).await?;
            let Some(last_seq) = page.last().and_then(|r| r.seq) else {
                break;
            };
            for record in &page {
                if let Err(broken) = verifier.check(record) {
                    report.result = Err(broken);
                    return Ok(Some(report));
                }
            }
            after = last_seq;
        }
        match verifier.finish(&state.head) {
            Ok(checked) => report.checked = checked,
            Err(broken) => report.result = Err(broken),
        }
        Ok(Some(report))
    }

    /// Verifies every chain.
    pub async fn verify_all(&self) -> Result<Vec<ChainReport>, StoreError> {
        let mut reports = Vec::new();
        for chain in self.store.list_audit_chains().await? {
            if let Some(report) = self.verify(chain.team_id).await? {
                reports.push(report);
            }
        }
        Ok(reports)
    }

    /// Removes, from every chain, the events older than the retention period. Returns how many.
    #[instrument(skip_all, err(Debug))]
    pub async fn prune_expired(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let cutoff = now - self.retention;
        let days = self.retention.num_days();
        let mut total = 0;
        for chain in self.store.list_audit_chains().await? {
            let team_id = chain.team_id;
            let note = move |removed: u64| {
                AuditEvent::success(
                    now,
                    team_id,
                    Actor::System,
                    AuditAction::PruneAuditEvents,
                    format!(
                        "Removed {removed} audit events older than {} (retention: {days} days)",
                        cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    None,
                    &RequestContext::default(),
                )
            };
            total += self.store.prune_audit_chain(team_id, cutoff, &note).await?;
        }
        if total > 0 {
            tracing::info!(removed = total, "audit retention removed old events");
        }
        Ok(total)
    }

    /// Runs [`Self::prune_expired`] now and then every `every`, until `stop` is cancelled. A
    /// failed run is logged and retried at the next tick.
    pub fn spawn_retention(self, every: Duration, stop: CancellationToken) -> JoinHandle<()> {
        crate::jobs::every("audit retention", every, stop, move || {
            let service = self.clone();
            async move { service.prune_expired().await.map(drop) }
        })
    }
}

/// An export in progress: pages of events, read on demand, so an export of any size streams in
/// constant memory.
pub struct AuditExport {
    store: Arc<dyn Store>,
    team_id: TeamId,
    filter: AuditFilter,
    after: Option<(Timestamp, AuditEventId)>,
    done: bool,
}

impl AuditExport {
    /// The next page of events; `None` when the export is complete.
    pub async fn next_page(&mut self) -> Result<Option<Vec<AuditRecord>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .search_audit_events(&self.filter.to_query(self.team_id, self.after, BATCH))
            .await?;
        self.done = page.len() < BATCH as usize;
        match page.last() {
            Some(last) => {
                self.after = Some((last.at, last.id));
                Ok(Some(page))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            at: chrono::DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: AuditEventId::new(),
            oldest_first: true,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for garbage in [
            "",
            "!!",
            "eA",
            &URL_SAFE_NO_PAD.encode("x.1.2"),
            &URL_SAFE_NO_PAD.encode("a.1.nope"),
        ] {
            assert_eq!(Cursor::decode(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn filters_are_validated() {
        let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
        let backwards = AuditFilter {
            from: Some(at(10)),
            to: Some(at(5)),
            ..AuditFilter::default()
        };
        assert!(matches!(backwards.validate(), Err(AuditError::InvalidFilter(_))));
        let long = AuditFilter {
            query: Some("x".repeat(201)),
            ..AuditFilter::default()
        };
        assert!(matches!(long.validate(), Err(AuditError::InvalidFilter(_))));
        assert!(AuditFilter::default().validate().is_ok());
    }
}
