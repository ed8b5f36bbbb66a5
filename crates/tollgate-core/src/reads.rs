//! Read events, coalesced: reading keys or being refused leaves a trace in the audit log, but a
//! caller that reads in a loop must not grow the append-only log without bound. The first read of
//! its kind (actor, action, team, target, outcome) in a minute is written; the rest of that
//! minute are not. Reads of the audit log itself are not coalesced (who looked at the log is
//! always on it).
//!
//! Per node: with N nodes a kind is written at most N times a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tollgate_domain::{AuditEvent, Timestamp};

/// How long one written read stands for the others of its kind.
const WINDOW: chrono::Duration = chrono::Duration::minutes(1);
/// Kinds remembered; past it, those older than the window are dropped, and while it is still
/// full new kinds are not written (the log is what is being protected).
const MAX_KINDS: usize = 100_000;

/// Decides which read events are written; shared by clones.
#[derive(Debug, Clone, Default)]
pub struct ReadCoalescer {
    written: Arc<Mutex<HashMap<String, Timestamp>>>,
}

impl ReadCoalescer {
    /// Whether `event` is the first of its kind in the past minute (and so is to be written).
    #[must_use]
    pub fn first_in_minute(&self, event: &AuditEvent) -> bool {
        let kind = format!(
            "{}:{}|{}|{}|{}|{}",
            event.actor.kind(),
            event.actor.id().unwrap_or_default(),
            event.action,
            event.team_id.map(|id| id.to_string()).unwrap_or_default(),
            event.target.as_deref().unwrap_or_default(),
            event.outcome.as_str(),
        );
        let now = event.at;
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = written.get(&kind)
            && now >= *at
            && now - *at < WINDOW
        {
            return false;
        }
        if written.len() >= MAX_KINDS && !written.contains_key(&kind) {
            written.retain(|_, at| now < *at || now - *at < WINDOW);
            if written.len() >= MAX_KINDS {
                tracing::warn!("too many kinds of read events in a minute; this one is not written");
                return false;
            }
        }
        written.insert(kind, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use tollgate_domain::{Actor, AuditAction, RequestContext};

    use super::*;

    fn read(seconds: i64, target: &str) -> AuditEvent {
        AuditEvent::success(
            chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap(),
            None,
            Actor::System,
            AuditAction::GetApiKey,
            "Read".into(),
            Some(target.into()),
            &RequestContext::default(),
        )
    }

    #[test]
    fn one_read_of_a_kind_a_minute() {
        let reads = ReadCoalescer::default();
        assert!(reads.first_in_minute(&read(0, "api_key:a")));
        assert!(!reads.first_in_minute(&read(1, "api_key:a")));
        assert!(!reads.first_in_minute(&read(59, "api_key:a")));
        assert!(reads.first_in_minute(&read(1, "api_key:b")), "another target");
        assert!(reads.first_in_minute(&read(60, "api_key:a")));
    }
}
