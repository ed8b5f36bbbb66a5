//! GitHub's secret scanning partner protocol: GitHub POSTs the tokens it found in public code,
//! signed with ECDSA P-256 over the raw body; we verify the signature with the key it names
//! (fetched from GitHub's keys endpoint, cached, refetched when an unknown id appears), block
//! every API key of ours among the tokens (and revoke management keys), tell the team's Admins,
//! and answer with GitHub's feedback labels.
//!
//! Reference: `../shared/reference/security.md` §1.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tollgate_domain::{Actor, Clock, RequestContext, Timestamp};

use crate::keys::{KeyError, KeyService};

/// The public keys GitHub signs with: `(key_identifier, PEM)` pairs.
#[async_trait]
pub trait SigningKeySource: Send + Sync {
    /// Fetches the current list.
    async fn fetch(&self) -> Result<Vec<(String, String)>, String>;
}

/// Why a report was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// No signature or key id header.
    #[error("the request is not signed (Github-Public-Key-Identifier and Github-Public-Key-Signature are required)")]
    Unsigned,
    /// The signature does not verify, or names a key GitHub does not publish.
    #[error("the signature does not verify")]
    BadSignature,
    /// The signing keys cannot be fetched right now.
    #[error("GitHub's signing keys cannot be fetched: {0}")]
    KeysUnavailable(String),
    /// The body is not GitHub's JSON array.
    #[error("the body is not a JSON array of matches: {0}")]
    InvalidBody(String),
    /// Blocking failed (storage).
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// One match GitHub reports.
#[derive(Debug, Deserialize)]
struct Match {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// Our verdict on one reported token, in GitHub's feedback shape (the raw token is never echoed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feedback {
    /// SHA-256 of the raw token, hex.
    pub token_hash: String,
    /// The type GitHub sent.
    pub token_type: String,
    /// `true_positive` (one of our keys) or `false_positive`.
    pub label: &'static str,
}

/// Refetches of the key list are at most this frequent, so forged ids cannot make us hammer
/// GitHub.
const REFETCH_EVERY: chrono::Duration = chrono::Duration::minutes(1);

struct KeyCache {
    keys: HashMap<String, VerifyingKey>,
    fetched_at: Option<Timestamp>,
    /// Fetches failed in a row since the last success, and the last failure's time and error:
    /// no fetch is tried again before the back-off ([`retry_after`]) has passed.
    failures: u32,
    failed: Option<(Timestamp, String)>,
}

/// How long after `failures` failed fetches in a row the next may be tried: 1 minute, doubling
/// up to an hour. Unsigned callers must not be able to make us fetch at will.
fn retry_after(failures: u32) -> chrono::Duration {
    let minutes = 1_i64 << failures.saturating_sub(1).min(6);
    chrono::Duration::minutes(minutes.min(60))
}

/// The secret scanning endpoint's logic.
#[derive(Clone)]
pub struct SecretScanning {
    keys: KeyService,
    clock: Arc<dyn Clock>,
    source: Arc<dyn SigningKeySource>,
    cache: Arc<RwLock<KeyCache>>,
    refetch: Arc<tokio::sync::Mutex<()>>,
}

impl SecretScanning {
    /// A handler blocking through `keys`, with GitHub's keys from `source`.
    pub fn new(keys: KeyService, clock: Arc<dyn Clock>, source: Arc<dyn SigningKeySource>) -> Self {
        Self {
            keys,
            clock,
            source,
            cache: Arc::new(RwLock::new(KeyCache {
                keys: HashMap::new(),
                fetched_at: None,
                failures: 0,
                failed: None,
            })),
            refetch: Arc::default(),
        }
    }

    fn cached(&self, id: &str) -> Option<VerifyingKey> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys
            .get(id)
            .copied()
    }

    /// The key named `id`: from the cache, else from a fresh fetch (at most one per minute).
    async fn key(&self, id: &str) -> Result<VerifyingKey, ScanError> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let _one_fetch_at_a_time = self.refetch.lock().await;
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let now = self.clock.now();
        {
            let cache = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, error)) = &cache.failed
                && now >= *at
                && now - *at < retry_after(cache.failures)
            {
                return Err(ScanError::KeysUnavailable(error.clone()));
            }
            if cache.fetched_at.is_some_and(|at| now - at < REFETCH_EVERY && now >= at) {
                return Err(ScanError::BadSignature);
            }
        }
        let fetched = match self.source.fetch().await {
            Ok(fetched) => fetched,
            Err(error) => {
                let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                cache.failures = cache.failures.saturating_add(1);
                cache.failed = Some((now, error.clone()));
                tracing::warn!(failures = cache.failures, %error, "GitHub's signing keys cannot be fetched; backing off");
                return Err(ScanError::KeysUnavailable(error));
            }
        };
        let mut keys = HashMap::new();
        for (key_id, pem) in fetched {
            match VerifyingKey::from_public_key_pem(&pem) {
                Ok(key) => {
                    keys.insert(key_id, key);
                }
                Err(error) => tracing::warn!(key_id, %error, "GitHub published a key that is not P-256 PEM; skipped"),
            }
        }
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.keys = keys;
        cache.fetched_at = Some(now);
        cache.failures = 0;
        cache.failed = None;
        cache.keys.get(id).copied().ok_or(ScanError::BadSignature)
    }

    /// Handles one report: verifies, then blocks and labels each match. Nothing changes unless
    /// the signature verifies over exactly these bytes.
    pub async fn report(
        &self,
        key_id: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        context: &RequestContext,
    ) -> Result<Vec<Feedback>, ScanError> {
        let (Some(key_id), Some(signature)) = (key_id, signature) else {
            return Err(ScanError::Unsigned);
        };
        let der = STANDARD.decode(signature.trim()).map_err(|_| ScanError::BadSignature)?;
        let signature = Signature::from_der(&der).map_err(|_| ScanError::BadSignature)?;
        let key = self.key(key_id.trim()).await?;
        key.verify(body, &signature).map_err(|_| ScanError::BadSignature)?;

        let matches: Vec<Match> = serde_json::from_slice(body).map_err(|e| ScanError::InvalidBody(e.to_string()))?;
        let mut feedback = Vec::with_capacity(matches.len());
        let mut first_failure = None;
        for found in matches {
            let place = match (found.source.as_str(), found.url.as_str()) {
                ("", "") => "GitHub secret scanning found it in public code".to_owned(),
                (source, "") => format!("GitHub secret scanning found it in public code ({source})"),
                ("", url) => format!("GitHub secret scanning found it at {url}"),
                (source, url) => format!("GitHub secret scanning found it at {url} ({source})"),
            };
            // Each token on its own: one that cannot be handled now does not keep the others
            // from being withdrawn. GitHub retries the whole report on a 5xx, and withdrawing
            // is idempotent, so the ones done now are not done twice.
            let ours = match self
                .keys
                .withdraw_leaked_secret(&found.token, &place, Actor::System, context)
                .await
            {
                Ok(ours) => ours,
                Err(error) => {
                    tracing::error!(%error, "a reported token could not be withdrawn; the others are handled");
                    first_failure.get_or_insert(error);
                    continue;
                }
            };
            feedback.push(Feedback {
                token_hash: hex::encode(Sha256::digest(found.token.as_bytes())),
                token_type: found.token_type,
                label: if ours { "true_positive" } else { "false_positive" },
            });
        }
        let hits = feedback.iter().filter(|f| f.label == "true_positive").count();
        tracing::info!(matches = feedback.len(), ours = hits, "secret scanning report handled");
        match first_failure {
            Some(error) => Err(error.into()),
            None => Ok(feedback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented sample request, and the public key it was signed with.
    const SAMPLE_BODY: &str =
        r#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#;
    const SAMPLE_SIGNATURE: &str =
        "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==";
    const SAMPLE_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n";

    #[test]
    fn failed_fetches_back_off_up_to_an_hour() {
        let minutes: Vec<i64> = (1..=9).map(|n| retry_after(n).num_minutes()).collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn githubs_published_sample_verifies_and_a_changed_byte_does_not() {
        let key = VerifyingKey::from_public_key_pem(SAMPLE_KEY).unwrap();
        let signature = Signature::from_der(&STANDARD.decode(SAMPLE_SIGNATURE).unwrap()).unwrap();
        assert!(key.verify(SAMPLE_BODY.as_bytes(), &signature).is_ok());
        let tampered = SAMPLE_BODY.replace("some_token", "some_tokem");
        assert!(key.verify(tampered.as_bytes(), &signature).is_err());
    }
}
