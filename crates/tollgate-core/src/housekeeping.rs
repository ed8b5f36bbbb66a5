//! Housekeeping: deletes rows that can no longer be used once nothing looks at them any more
//! (expired single-use links and sign-in flows, old sessions, old invitations, old outbox mail,
//! whose bodies carry links), and request bodies past their retention. Without it these tables
//! only grow.

use std::sync::Arc;

use tollgate_domain::{Clock, Sweep, Swept, Timestamp};
use tollgate_store::{Store, StoreError};

use crate::accounts::SEEN_WITHIN;

/// Expired tokens and flows are kept a day, so support can still see why a link failed.
const EXPIRED_KEPT: chrono::Duration = chrono::Duration::days(1);
/// Invitations are listed as expired for a while after they lapse.
const INVITATIONS_KEPT: chrono::Duration = chrono::Duration::days(30);
/// Outbox mail is kept this long for `tollgate mail list`.
const MAIL_KEPT: chrono::Duration = chrono::Duration::days(30);

/// What a sweep at `now` deletes. Sessions outlive [`SEEN_WITHIN`] by a day, since sign-in
/// alerts compare a new sign-in with the sessions begun in that window.
pub fn sweep_at(now: Timestamp) -> Sweep {
    Sweep {
        expired_before: now - EXPIRED_KEPT,
        sessions_begun_before: now - SEEN_WITHIN - chrono::Duration::days(1),
        invitations_expired_before: now - INVITATIONS_KEPT,
        mail_created_before: now - MAIL_KEPT,
        now,
    }
}

/// The housekeeping job.
#[derive(Clone)]
pub struct Housekeeping {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Option<crate::Retention>,
}

impl Housekeeping {
    /// Housekeeping of `store` by `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            retention: None,
        }
    }

    /// Also deletes the request bodies `retention` keeps once past their time.
    #[must_use]
    pub fn with_retention(mut self, retention: crate::Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Sweeps once.
    pub async fn run(&self) -> Result<Swept, StoreError> {
        let swept = self.store.sweep(&sweep_at(self.clock.now())).await?;
        if swept != Swept::default() {
            tracing::info!(
                tokens = swept.tokens,
                sessions = swept.sessions,
                invitations = swept.invitations,
                mail = swept.mail,
                "housekeeping deleted rows that are over"
            );
        }
        if let Some(retention) = &self.retention {
            let bodies = retention.prune().await?;
            if bodies > 0 {
                tracing::info!(bodies, "housekeeping deleted request bodies past their retention");
            }
        }
        Ok(swept)
    }

    /// Runs [`Self::run`] every `every` until `stop`.
    pub fn spawn(
        self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::jobs::every("housekeeping", every, stop, move || {
            let job = self.clone();
            async move { job.run().await.map(drop) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_outlive_the_sign_in_alert_window() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let sweep = sweep_at(now);
        assert!(sweep.sessions_begun_before < now - SEEN_WITHIN);
        assert!(sweep.expired_before < now && sweep.mail_created_before < now);
        assert_eq!(sweep.now, now);
    }
}
