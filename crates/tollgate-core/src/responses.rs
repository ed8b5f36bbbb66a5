//! Stored responses of the Responses API: what `GET /v1/responses/{id}` returns and what
//! `previous_response_id` continues.
//!
//! A response is stored with its conversation (the chat messages the next turn sends the
//! upstream again), sealed with a key of its own (derived from the server's secret like the
//! TOTP seal), with the team and response ids as associated data: a row is readable only as its
//! own team's. Kept for the retention (30 days by default), then swept.
//!
//! **Invariant:** a team never sees another team's response: every read and delete names the
//! caller's team, and the seal would not open otherwise.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
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

/// The stored responses service.
#[derive(Clone)]
pub struct Responses {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sealer: Arc<SecretSealer>,
    entropy: Arc<dyn Entropy>,
    retention: chrono::Duration,
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
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, key: &[u8; 32], retention: chrono::Duration) -> Self {
        Self {
            store,
            clock,
            sealer: Arc::new(SecretSealer::new(key)),
            entropy: Arc::new(OsEntropy),
            retention,
        }
    }

    /// How long responses are kept.
    #[must_use]
    pub fn retention(&self) -> chrono::Duration {
        self.retention
    }

    /// Stores response `id` of `key`'s team with its conversation.
    pub async fn save(&self, key: &ApiKey, id: &str, model: &str, saved: &Saved) -> Result<(), ResponseError> {
        let now = self.clock.now();
        let plain = serde_json::to_vec(saved).map_err(|_| ResponseError::Sealed(id.to_owned()))?;
        let sealed = self
            .sealer
            .seal(&plain, &context(key.team_id, id), &mut EntropyRng(&*self.entropy));
        self.store
            .insert_response(&StoredResponse {
                id: id.to_owned(),
                team_id: key.team_id,
                api_key_id: key.id,
                model: model.to_owned(),
                created_at: now,
                expires_at: now + self.retention,
                sealed,
            })
            .await?;
        Ok(())
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
