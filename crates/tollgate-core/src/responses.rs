//! Stored responses of the Responses API: what `GET /v1/responses/{id}` returns and what
//! `previous_response_id` continues.
//!
//! A response is stored with its conversation (the chat messages the next turn sends the
//! upstream again), sealed with a key of its own (derived from the server's secret like the
//! TOTP seal), with the team and response ids as associated data: a row is readable only as its
//! own team's. Kept for the retention (30 days by default), then swept. Rows are written by one
//! task in batches (a group commit, as usage is), so storing costs one sync per batch, not per
//! response.
//!
//! **Invariant:** a team never sees another team's response: every read and delete names the
//! caller's team, and the seal would not open otherwise.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tollgate_domain::entropy::{Entropy, EntropyRng, OsEntropy};
use tollgate_domain::mfa::SecretSealer;
use tollgate_domain::{ApiKey, Clock, TeamId};
use tollgate_store::{Store, StoreError, StoredResponse};

/// Why a stored response could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The row does not open with this server's key (the key changed, or the row was altered).
    #[error("stored response {0} cannot be opened with this server's key")]
    Sealed(String),
}

/// A stored response and its conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The response object, as it was answered.
    pub response: Value,
    /// The conversation up to and including this response, as chat messages.
    pub messages: Vec<Value>,
}

/// A response waiting for the writer, and who waits for it to be durable.
struct Pending {
    row: StoredResponse,
    durable: oneshot::Sender<Result<(), String>>,
}

/// Most responses one transaction writes.
const MAX_BATCH: usize = 256;

/// The stored responses service.
#[derive(Clone)]
pub struct Responses {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sealer: Arc<SecretSealer>,
    entropy: Arc<dyn Entropy>,
    retention: chrono::Duration,
    writer: mpsc::Sender<Pending>,
}

/// Writes what is waiting, as many at a time as are waiting (a group commit: one transaction,
/// one sync, however many responses finished meanwhile); each waiter hears when its row is durable.
async fn write(store: Arc<dyn Store>, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let rows: Vec<StoredResponse> = batch.iter().map(|waiting| waiting.row.clone()).collect();
        let result = store.insert_responses(&rows).await.map_err(|error| error.to_string());
        for waiting in batch.drain(..) {
            let _ = waiting.durable.send(result.clone());
        }
    }
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

fn context(team_id: TeamId, id: &str) -> Vec<u8> {
    format!("stored-response|{team_id}|{id}").into_bytes()
}

impl Responses {
    /// Stored responses sealed with `key`, kept for `retention`.
    #[must_use]
    /// Its writer runs on the current Tokio runtime until the service is dropped.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, key: &[u8; 32], retention: chrono::Duration) -> Self {
        let (writer, pending) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write(Arc::clone(&store), pending));
        Self {
            store,
            clock,
            sealer: Arc::new(SecretSealer::new(key)),
            entropy: Arc::new(OsEntropy),
            retention,
            writer,
        }
    }

    /// How long responses are kept.
    #[must_use]
    pub fn retention(&self) -> chrono::Duration {
        self.retention
    }

    /// Stores response `id` of `key`'s team with its conversation; resolves once it is durable.
    pub async fn save(&self, key: &ApiKey, id: &str, model: &str, saved: &Saved) -> Result<(), ResponseError> {
        let now = self.clock.now();
        let plain = serde_json::to_vec(saved).map_err(|_| ResponseError::Sealed(id.to_owned()))?;
        let sealed = self
            .sealer
            .seal(&plain, &context(key.team_id, id), &mut EntropyRng(&*self.entropy));
        let row = StoredResponse {
            id: id.to_owned(),
            team_id: key.team_id,
            api_key_id: key.id,
            model: model.to_owned(),
            created_at: now,
            expires_at: now + self.retention,
            sealed,
        };
        let (durable, written) = oneshot::channel();
        let unwritten = || ResponseError::Store(StoreError::Other(anyhow::anyhow!("the response writer stopped")));
        self.writer
            .send(Pending { row, durable })
            .await
            .map_err(|_| unwritten())?;
        written
            .await
            .map_err(|_| unwritten())?
            .map_err(|error| ResponseError::Store(StoreError::Other(anyhow::anyhow!(error))))
    }

    /// The team's response `id`, if it exists and has not expired.
    pub async fn load(&self, team_id: TeamId, id: &str) -> Result<Option<Saved>, ResponseError> {
        let Some(row) = self.store.stored_response(team_id, id, self.clock.now()).await? else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(&row.sealed, &context(team_id, id))
            .ok_or_else(|| ResponseError::Sealed(id.to_owned()))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|_| ResponseError::Sealed(id.to_owned()))
    }

    /// Deletes the team's response `id`; `false` when there was none.
    pub async fn delete(&self, team_id: TeamId, id: &str) -> Result<bool, ResponseError> {
        Ok(self.store.delete_response(team_id, id, self.clock.now()).await?)
    }
}
