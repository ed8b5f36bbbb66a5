//! Deferred chat completions (`"deferred": true`): the request is admitted (ACLs, limits, the
//! credit hold) and answered with its id at once; the node that admitted it runs it in the
//! background, settles it and records the result here; any node answers the polls.
//!
//! The state is in the database, so a poll may reach any node. A result is taken once: the poll
//! that returns it deletes it. A request still pending `lost_after` its start was lost (its
//! node stopped; its credit hold went with the node's lease) and is reported as failed, once.
//! Everything is deleted after 24 hours, fetched or not. Bodies are sealed like stored responses,
//! with the team and request ids as associated data.

use std::sync::Arc;

use serde_json::Value;
use tollgate_domain::entropy::{Entropy, EntropyRng, OsEntropy};
use tollgate_domain::mfa::SecretSealer;
use tollgate_domain::{ApiKey, Clock, TeamId};
use tollgate_store::{DeferredTake, NewDeferred, Store, StoreError};

/// How long a deferred result may be fetched.
pub const KEPT_FOR: chrono::Duration = chrono::Duration::hours(24);

/// Why a deferred request could not be recorded or read.
#[derive(Debug, thiserror::Error)]
pub enum DeferredError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The body does not open with this server's key.
    #[error("deferred result {0} cannot be opened with this server's key")]
    Sealed(String),
}

/// A deferred request as a poll finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Polled {
    /// Still running.
    Pending,
    /// Finished: the answer.
    Done(Value),
    /// Failed: the status and body the surface recorded (nothing was charged).
    Failed {
        /// The status the surface recorded.
        status: u16,
        /// The error body.
        body: Value,
    },
    /// Lost: the node running it stopped before it finished (nothing was charged).
    Lost,
}

/// The deferred completions service.
#[derive(Clone)]
pub struct Deferred {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sealer: Arc<SecretSealer>,
    entropy: Arc<dyn Entropy>,
    lost_after: chrono::Duration,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("lost_after", &self.lost_after)
            .finish_non_exhaustive()
    }
}

fn context(team_id: TeamId, id: &str) -> Vec<u8> {
    format!("deferred-completion|{team_id}|{id}").into_bytes()
}

impl Deferred {
    /// Deferred completions sealed with `key`; one still pending `lost_after` its start was
    /// lost (set it beyond the longest a request may run).
    #[must_use]
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, key: &[u8; 32], lost_after: chrono::Duration) -> Self {
        Self {
            store,
            clock,
            sealer: Arc::new(SecretSealer::new(key)),
            entropy: Arc::new(OsEntropy),
            lost_after,
        }
    }

    /// Records request `id` of `key`'s team for `model` as pending.
    pub async fn begin(&self, key: &ApiKey, id: &str, model: &str) -> Result<(), DeferredError> {
        let now = self.clock.now();
        self.store
            .insert_deferred(&NewDeferred {
                id: id.to_owned(),
                team_id: key.team_id,
                api_key_id: key.id,
                model: model.to_owned(),
                created_at: now,
                lost_after: now + self.lost_after,
                expires_at: now + KEPT_FOR,
            })
            .await?;
        Ok(())
    }

    /// Records how request `id` of `team_id` ended: `Ok(answer)`, or `Err((status, body))`.
    /// `false` when it was no longer pending (already reported lost).
    pub async fn finish(
        &self,
        team_id: TeamId,
        id: &str,
        outcome: Result<Value, (u16, Value)>,
    ) -> Result<bool, DeferredError> {
        let (done, status, body) = match outcome {
            Ok(answer) => (true, 200, answer),
            Err((status, body)) => (false, status, body),
        };
        let plain = serde_json::to_vec(&body).map_err(|_| DeferredError::Sealed(id.to_owned()))?;
        let sealed = self
            .sealer
            .seal(&plain, &context(team_id, id), &mut EntropyRng(&*self.entropy));
        Ok(self
            .store
            .finish_deferred(id, done, status, &sealed, self.clock.now())
            .await?)
    }

    /// Polls request `id` of `team_id`: a finished or lost one is taken (a second poll finds
    /// nothing). `None` when there is none.
    pub async fn poll(&self, team_id: TeamId, id: &str) -> Result<Option<Polled>, DeferredError> {
        let Some(take) = self.store.take_deferred(team_id, id, self.clock.now()).await? else {
            return Ok(None);
        };
        Ok(Some(match take {
            DeferredTake::Pending => Polled::Pending,
            DeferredTake::Lost => Polled::Lost,
            DeferredTake::Finished {
                done,
                http_status,
                sealed,
            } => {
                let plain = self
                    .sealer
                    .open(&sealed, &context(team_id, id))
                    .ok_or_else(|| DeferredError::Sealed(id.to_owned()))?;
                let body: Value = serde_json::from_slice(&plain).map_err(|_| DeferredError::Sealed(id.to_owned()))?;
                if done {
                    Polled::Done(body)
                } else {
                    Polled::Failed {
                        status: http_status,
                        body,
                    }
                }
            }
        }))
    }
}
