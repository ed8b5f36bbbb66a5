//! API keys and management keys: creation (the plaintext is returned once), and authentication.
//!
//! Inference requests authenticate from an in-memory cache keyed by the key's hash. An entry is
//! trusted for [`AUTH_CACHE_TTL`] and then re-read, so a change made on any node (disable,
//! delete, rotate, block) takes effect everywhere within that time, while the hot path does at
//! most one database read per key per TTL. Changes made through this node also evict at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tollgate_domain::keys::{KeyHash, KeyPrefix, ParsedKey, PlainKey};
use tollgate_domain::{
    AclError, AclSet, Actor, ApiKey, ApiKeyId, AuditAction, AuditEvent, Clock, ManagementKey, ManagementKeyId,
    RequestContext, Timestamp, UserId,
};
use tollgate_store::{Store, StoreError};
use tracing::instrument;

/// How long an authenticated key is trusted before it is read again.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries above this are dropped wholesale (a crude bound; real keys are far fewer).
const AUTH_CACHE_MAX_ENTRIES: usize = 100_000;

/// Why a presented key was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed, bad checksum, or unknown.
    #[error("invalid key")]
    Invalid,
    /// Switched off by a user.
    #[error("key disabled")]
    Disabled,
    /// Blocked by the platform.
    #[error("key blocked")]
    Blocked,
    /// Past its expiry time.
    #[error("key expired")]
    Expired,
    /// Revoked management key.
    #[error("key revoked")]
    Revoked,
    /// A genuine key of the other kind: an inference key on the management API, or a
    /// management key on inference.
    #[error("wrong kind of key")]
    WrongKind,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Name empty or too long.
    #[error("name must be 1 to 100 characters")]
    InvalidName,
    /// An ACL string is not in the grammar.
    #[error(transparent)]
    InvalidAcl(#[from] AclError),
    /// A limit is zero.
    #[error("{0} must be a positive integer")]
    InvalidLimit(&'static str),
    /// Expiry in the past.
    #[error("expireTime must be in the future")]
    ExpiryInPast,
    /// The caller may not act on this team (or the team does not exist; the two look alike).
    #[error("team not found")]
    TeamNotFound,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request to create an API key.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    /// Name.
    pub name: String,
    /// ACL strings in xAI's grammar.
    pub acls: Vec<String>,
    /// Requests per second.
    pub qps: Option<u32>,
    /// Requests per minute.
    pub qpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Expiry.
    pub expire_time: Option<Timestamp>,
}

struct CachedKey {
    key: Arc<ApiKey>,
    fetched_at: Instant,
}

/// Keys service.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    api_prefix: KeyPrefix,
    management_prefix: KeyPrefix,
    cache: Arc<RwLock<HashMap<KeyHash, CachedKey>>>,
}

fn validate_name(name: &str) -> Result<String, KeyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(KeyError::InvalidName);
    }
    Ok(name.to_owned())
}

impl KeyService {
    /// A service issuing keys with the given prefixes.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        api_prefix: KeyPrefix,
        management_prefix: KeyPrefix,
    ) -> Self {
        Self {
            store,
            clock,
            api_prefix,
            management_prefix,
            cache: Arc::default(),
        }
    }

    /// The prefix of inference keys.
    pub fn api_prefix(&self) -> &KeyPrefix {
        &self.api_prefix
    }

    /// Creates a management key for `team_id`. The plaintext is in the returned [`PlainKey`] and
    /// nowhere else.
    #[instrument(skip_all, fields(team.id = %team_id))]
    pub async fn create_management_key(
        &self,
        team_id: tollgate_domain::TeamId,
        name: &str,
        actor: Actor,
        created_by: Option<UserId>,
        context: &RequestContext,
    ) -> Result<(ManagementKey, PlainKey), KeyError> {
        let name = validate_name(name)?;
        match self.store.get_team(team_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => return Err(KeyError::TeamNotFound),
            Err(other) => return Err(other.into()),
        }
        let plain = PlainKey::generate(&self.management_prefix, &mut rand::rngs::OsRng);
        let now = self.clock.now();
        let key = ManagementKey {
            id: ManagementKeyId::new(),
            team_id,
            redacted: plain.redacted(&self.management_prefix),
            name,
            created_by,
            created_at: now,
            revoked_at: None,
        };
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            actor,
            AuditAction::CreateManagementKey,
            format!("Created management key '{}' ({})", key.name, key.redacted),
            Some(format!("management_key:{}", key.id)),
            context,
        );
        self.store.insert_management_key(&key, &plain.hash(), &audit).await?;
        Ok((key, plain))
    }

    /// Authenticates a management key.
    pub async fn authenticate_management_key(&self, presented: &str) -> Result<ManagementKey, AuthError> {
        let parsed = ParsedKey::parse(&self.management_prefix, presented).map_err(|_| {
            if ParsedKey::parse(&self.api_prefix, presented).is_ok() {
                AuthError::WrongKind
            } else {
                AuthError::Invalid
            }
        })?;
        let key = self
            .store
            .find_management_key_by_hash(&parsed.hash())
            .await?
            .ok_or(AuthError::Invalid)?;
        if key.revoked_at.is_some_and(|at| at <= self.clock.now()) {
            return Err(AuthError::Revoked);
        }
        Ok(key)
    }

    /// Creates an API key in the management key's team.
    #[instrument(skip_all, fields(team.id = %team_id))]
    pub async fn create_api_key(
        &self,
        caller: &ManagementKey,
        team_id: tollgate_domain::TeamId,
        new: NewApiKey,
        context: &RequestContext,
    ) -> Result<(ApiKey, PlainKey), KeyError> {
        // A management key manages exactly one team; any other team looks like it does not exist.
        if caller.team_id != team_id {
            crate::audit::record_denied(
                &*self.store,
                &*self.clock,
                caller,
                AuditAction::CreateApiKey,
                team_id,
                context,
            )
            .await;
            return Err(KeyError::TeamNotFound);
        }
        let name = validate_name(&new.name)?;
        let acls = AclSet::parse(&new.acls)?;
        if new.qps == Some(0) {
            return Err(KeyError::InvalidLimit("qps"));
        }
        if new.qpm == Some(0) {
            return Err(KeyError::InvalidLimit("qpm"));
        }
        if new.tpm == Some(0) {
            return Err(KeyError::InvalidLimit("tpm"));
        }
        let now = self.clock.now();
        if new.expire_time.is_some_and(|at| at <= now) {
            return Err(KeyError::ExpiryInPast);
        }
        let plain = PlainKey::generate(&self.api_prefix, &mut rand::rngs::OsRng);
        let key = ApiKey {
            id: ApiKeyId::new(),
            team_id,
            redacted: plain.redacted(&self.api_prefix),
            name,
            acls,
            qps: new.qps,
            qpm: new.qpm,
            tpm: new.tpm,
            expire_time: new.expire_time,
            disabled: false,
            blocked: false,
            created_by: caller.created_by,
            created_at: now,
            modified_at: now,
            modified_by: caller.created_by,
        };
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            Actor::ManagementKey {
                id: caller.id,
                name: caller.name.clone(),
            },
            AuditAction::CreateApiKey,
            format!("Created API key '{}' ({})", key.name, key.redacted),
            Some(format!("api_key:{}", key.id)),
            context,
        );
        self.store.insert_api_key(&key, &plain.hash(), &audit).await?;
        Ok((key, plain))
    }

    /// Authenticates an inference key from the cache, reading the store at most once per key per
    /// [`AUTH_CACHE_TTL`]. Checks state and expiry on every call.
    pub async fn authenticate_api_key(&self, presented: &str) -> Result<Arc<ApiKey>, AuthError> {
        let parsed = ParsedKey::parse(&self.api_prefix, presented).map_err(|_| {
            if ParsedKey::parse(&self.management_prefix, presented).is_ok() {
                AuthError::WrongKind
            } else {
                AuthError::Invalid
            }
        })?;
        let hash = parsed.hash();
        let cached = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash)
            .filter(|entry| entry.fetched_at.elapsed() < AUTH_CACHE_TTL)
            .map(|entry| Arc::clone(&entry.key));
        let key = match cached {
            Some(key) => key,
            None => {
                let found = self.store.find_api_key_by_hash(&hash).await?;
                let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                match found {
                    Some(key) => {
                        if cache.len() >= AUTH_CACHE_MAX_ENTRIES {
                            cache.clear();
                        }
                        let key = Arc::new(key);
                        cache.insert(
                            hash,
                            CachedKey {
                                key: Arc::clone(&key),
                                fetched_at: Instant::now(),
                            },
                        );
                        key
                    }
                    None => {
                        cache.remove(&hash);
                        return Err(AuthError::Invalid);
                    }
                }
            }
        };
        if key.blocked {
            return Err(AuthError::Blocked);
        }
        if key.disabled {
            return Err(AuthError::Disabled);
        }
        if key.expire_time.is_some_and(|at| at <= self.clock.now()) {
            return Err(AuthError::Expired);
        }
        Ok(key)
    }

    /// A page of the team's keys (management API), audited as `ListApiKeys`.
    pub async fn list_api_keys(
        &self,
        caller: &ManagementKey,
        team_id: tollgate_domain::TeamId,
        after: Option<ApiKeyId>,
        limit: u32,
        context: &RequestContext,
    ) -> Result<Vec<ApiKey>, KeyError> {
        if caller.team_id != team_id {
            crate::audit::record_denied(
                &*self.store,
                &*self.clock,
                caller,
                AuditAction::ListApiKeys,
                team_id,
                context,
            )
            .await;
            return Err(KeyError::TeamNotFound);
        }
        let keys = self.store.list_api_keys(team_id, after, limit).await?;
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(team_id),
            Actor::ManagementKey {
                id: caller.id,
                name: caller.name.clone(),
            },
            AuditAction::ListApiKeys,
            format!("Listed {} API keys", keys.len()),
            None,
            context,
        );
        self.store.insert_audit_event(&audit).await?;
        Ok(keys)
    }
}
