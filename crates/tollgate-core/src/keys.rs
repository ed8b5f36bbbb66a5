//! API keys and management keys: creation (the plaintext is returned once), and authentication.
//!
//! Inference requests authenticate from an in-memory cache keyed by the key's hash. An entry is
//! trusted for [`AUTH_CACHE_TTL`] and then re-read, so a change made on any node (disable,
//! delete, rotate, block) takes effect everywhere within that time, while the hot path does at
//! most one database read per key per TTL. Changes made through this node also evict at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tollgate_domain::keys::{KeyHash, KeyPrefix, ParsedKey, PlainKey};
use tollgate_domain::{
    AclError, AclSet, Actor, ApiKey, ApiKeyId, AuditAction, AuditEvent, Clock, ManagementKey, ManagementKeyId,
    Permission, RequestContext, Timestamp, UserId,
};
use tollgate_store::{KeyRotation, SecretMatch, Store, StoreError};

use crate::Caller;
use crate::notices::{KeyKind, Notices, WithdrawnKey};
use tollgate_domain::{KeyPolicy, KeyShape};
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
    /// Name empty, too long or with control characters.
    #[error("name {0}")]
    InvalidName(tollgate_domain::NameError),
    /// An ACL string is not in the grammar.
    #[error(transparent)]
    InvalidAcl(#[from] AclError),
    /// A limit is zero.
    #[error("{0} must be a positive integer")]
    InvalidLimit(&'static str),
    /// A limit is beyond what an int64 holds.
    #[error("{0} must be at most 9223372036854775807")]
    LimitTooLarge(&'static str),
    /// Expiry in the past.
    #[error("expireTime must be in the future")]
    ExpiryInPast,
    /// The caller may not act on this team (or the team does not exist; the two look alike).
    #[error("team not found")]
    TeamNotFound,
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such key in the caller's team (or deleted): xAI's "Cannot find API key".
    #[error("Cannot find API key")]
    KeyNotFound,
    /// An update named no field.
    #[error("fieldMask names no field to update")]
    NothingToUpdate,
    /// A rotation's grace period is out of range.
    #[error("the grace period must be between 0 and 7 days")]
    InvalidGracePeriod,
    /// The key is blocked by the platform; it cannot be rotated back into use.
    #[error("the API key is blocked ({0}); create a new key instead")]
    Blocked(String),
    /// A Member's key beyond the team's key policy.
    #[error(transparent)]
    BeyondPolicy(#[from] tollgate_domain::PolicyViolation),
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
    matched: SecretMatch,
    /// By the injected clock, so tests can age the cache without sleeping.
    fetched_at: Timestamp,
}

/// Changes to an API key: each `Some` field is in the update's field mask. For the limits and
/// the expiry, `Some(None)` clears the value.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyChanges {
    /// New name.
    pub name: Option<String>,
    /// New ACL strings (replacing the old ones).
    pub acls: Option<Vec<String>>,
    /// Requests per second.
    pub qps: Option<Option<u32>>,
    /// Requests per minute.
    pub qpm: Option<Option<u32>>,
    /// Tokens per minute.
    pub tpm: Option<Option<u64>>,
    /// Expiry.
    pub expire_time: Option<Option<Timestamp>>,
    /// Disabled (`false` enables; a block stays).
    pub disabled: Option<bool>,
}

impl ApiKeyChanges {
    fn field_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for (set, name) in [
            (self.name.is_some(), "name"),
            (self.acls.is_some(), "acls"),
            (self.qps.is_some(), "qps"),
            (self.qpm.is_some(), "qpm"),
            (self.tpm.is_some(), "tpm"),
            (self.expire_time.is_some(), "expireTime"),
            (self.disabled.is_some(), "disabled"),
        ] {
            if set {
                names.push(name);
            }
        }
        names
    }
}

/// What reporting a leaked API key secret did ([`KeyService::block_api_key_by_secret`]).
#[derive(Debug, Clone)]
pub enum LeakOutcome {
    /// The key was blocked now.
    Blocked(ApiKey),
    /// The key was blocked before; nothing new was written.
    AlreadyBlocked(ApiKey),
    /// The secret was the key's previous one, in its rotation grace: the grace ended now.
    GraceEnded(ApiKey),
    /// The secret opened nothing any more (rotated out, key or team deleted): recorded only.
    AlreadyDead(ApiKey),
}

/// When a change to a key is in force on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    /// The key's last change.
    pub modified_at: Timestamp,
    /// Every node has re-read the key by then.
    pub propagated_at: Timestamp,
    /// Whether that time has passed.
    pub propagated: bool,
}

/// The longest grace period a rotation may give the old secret.
pub const MAX_ROTATION_GRACE: chrono::Duration = chrono::Duration::days(7);

fn check_limits(qps: Option<u32>, qpm: Option<u32>, tpm: Option<u64>) -> Result<(), KeyError> {
    if qps == Some(0) {
        return Err(KeyError::InvalidLimit("qps"));
    }
    if qpm == Some(0) {
        return Err(KeyError::InvalidLimit("qpm"));
    }
    if tpm == Some(0) {
        return Err(KeyError::InvalidLimit("tpm"));
    }
    // Stored as a signed 64-bit integer (xAI sends it as an int64 string).
    if tpm.is_some_and(|tpm| i64::try_from(tpm).is_err()) {
        return Err(KeyError::LimitTooLarge("tpm"));
    }
    Ok(())
}

/// Keys service.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    api_prefix: KeyPrefix,
    management_prefix: KeyPrefix,
    cache: Arc<RwLock<HashMap<KeyHash, CachedKey>>>,
    last_used: Arc<std::sync::Mutex<HashMap<ApiKeyId, Timestamp>>>,
    notices: Notices,
    reads: crate::reads::ReadCoalescer,
    entropy: Arc<dyn tollgate_domain::Entropy>,
}

fn validate_name(name: &str) -> Result<String, KeyError> {
    Ok(tollgate_domain::Name::parse(name)
        .map_err(KeyError::InvalidName)?
        .into_string())
}

impl KeyService {
    /// Draws key secrets from `entropy` (tests pin it with a seeded one).
    #[must_use]
    pub fn with_entropy(mut self, entropy: Arc<dyn tollgate_domain::Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    fn rng(&self) -> tollgate_domain::EntropyRng<'_> {
        tollgate_domain::EntropyRng(&*self.entropy)
    }

    /// A service issuing keys with the given prefixes.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        api_prefix: KeyPrefix,
        management_prefix: KeyPrefix,
        notices: Notices,
    ) -> Self {
        Self {
            store,
            clock,
            api_prefix,
            management_prefix,
            cache: Arc::default(),
            last_used: Arc::default(),
            notices,
            reads: crate::reads::ReadCoalescer::default(),
            entropy: Arc::new(tollgate_domain::OsEntropy),
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
        let plain = PlainKey::generate(&self.management_prefix, &mut self.rng());
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

    /// Creates a management key in the caller's team: team Admins only.
    pub async fn create_management_key_as(
        &self,
        caller: &Caller,
        name: &str,
        context: &RequestContext,
    ) -> Result<(ManagementKey, PlainKey), KeyError> {
        if !caller.allows(Permission::ManageManagementKeys) {
            return Err(KeyError::Forbidden("Only team Admins may create management keys"));
        }
        self.create_management_key(caller.team_id(), name, caller.actor(), caller.user_id(), context)
            .await
    }

    /// The caller's team's management keys: team Admins only.
    pub async fn list_management_keys_as(
        &self,
        caller: &Caller,
        context: &RequestContext,
    ) -> Result<Vec<ManagementKey>, KeyError> {
        if !caller.allows(Permission::ManageManagementKeys) {
            return Err(KeyError::Forbidden("Only team Admins may see management keys"));
        }
        self.list_management_keys(caller.team_id(), caller.actor(), context)
            .await
    }

    /// Revokes one of the caller's team's management keys: team Admins only.
    pub async fn revoke_management_key_as(
        &self,
        caller: &Caller,
        id: ManagementKeyId,
        context: &RequestContext,
    ) -> Result<(), KeyError> {
        if !caller.allows(Permission::ManageManagementKeys) {
            return Err(KeyError::Forbidden("Only team Admins may revoke management keys"));
        }
        self.revoke_management_key(caller.team_id(), id, caller.actor(), context)
            .await
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
        caller: &Caller,
        team_id: tollgate_domain::TeamId,
        new: NewApiKey,
        context: &RequestContext,
    ) -> Result<(ApiKey, PlainKey), KeyError> {
        // A management key manages exactly one team; any other team looks like it does not exist.
        if caller.team_id() != team_id {
            crate::audit::record_denied(
                &*self.store,
                &*self.clock,
                &self.reads,
                caller,
                AuditAction::CreateApiKey,
                team_id,
                context,
            )
            .await;
            return Err(KeyError::TeamNotFound);
        }
        if !caller.allows(Permission::ManageOwnApiKeys) {
            return Err(KeyError::Forbidden("Your role may not create API keys in this team"));
        }
        let name = validate_name(&new.name)?;
        let acls = AclSet::parse(&new.acls)?;
        check_limits(new.qps, new.qpm, new.tpm)?;
        let shape = KeyShape {
            acls: &acls,
            qps: new.qps,
            qpm: new.qpm,
            tpm: new.tpm,
        };
        self.within_policy(caller, shape, None).await?;
        let now = self.clock.now();
        if new.expire_time.is_some_and(|at| at <= now) {
            return Err(KeyError::ExpiryInPast);
        }
        let plain = PlainKey::generate(&self.api_prefix, &mut self.rng());
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
            created_by: caller.user_id(),
            created_at: now,
            modified_at: now,
            modified_by: caller.user_id(),
            blocked_reason: None,
            deleted_at: None,
            last_used_at: None,
            previous_secret_expires_at: None,
            team_blocked_reason: None,
            team_blocked_by: None,
            team_zero_retention: false,
        };
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            caller.actor(),
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
        let now = self.clock.now();
        let ttl = chrono::Duration::from_std(AUTH_CACHE_TTL).unwrap_or(chrono::Duration::seconds(1));
        let cached = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash)
            .filter(|entry| now >= entry.fetched_at && now - entry.fetched_at < ttl)
            .map(|entry| (Arc::clone(&entry.key), entry.matched));
        let (key, matched) = match cached {
            Some(hit) => hit,
            None => {
                let found = self.store.find_api_key_by_hash(&hash).await?;
                let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                match found {
                    Some((key, matched)) => {
                        if cache.len() >= AUTH_CACHE_MAX_ENTRIES {
                            cache.clear();
                        }
                        let key = Arc::new(key);
                        cache.insert(
                            hash,
                            CachedKey {
                                key: Arc::clone(&key),
                                matched,
                                fetched_at: now,
                            },
                        );
                        (key, matched)
                    }
                    None => {
                        cache.remove(&hash);
                        return Err(AuthError::Invalid);
                    }
                }
            }
        };
        // A deleted key, or a secret rotated away (past its grace), is no key at all.
        let rotated_away =
            matched == SecretMatch::Previous && key.previous_secret_expires_at.is_none_or(|until| until <= now);
        if key.deleted_at.is_some() || rotated_away {
            return Err(AuthError::Invalid);
        }
        if key.blocked {
            return Err(AuthError::Blocked);
        }
        if key.disabled {
            return Err(AuthError::Disabled);
        }
        if key.expire_time.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired);
        }
        self.last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.id, now);
        Ok(key)
    }

    /// Forgets cached entries of key `id`, so this node sees a change at once (others within
    /// [`AUTH_CACHE_TTL`]).
    fn evict(&self, id: ApiKeyId) {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, entry| entry.key.id != id);
    }

    /// Forgets every cached key of `team_id` (the team was deleted): refused at once on this
    /// node, within [`AUTH_CACHE_TTL`] on the others.
    pub fn forget_team(&self, team_id: tollgate_domain::TeamId) {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, entry| entry.key.team_id != team_id);
    }

    /// Writes the last-use times gathered since the previous flush, in one transaction. Run
    /// periodically and at shutdown; the hot path never writes.
    pub async fn flush_last_used(&self) -> Result<(), StoreError> {
        let used: Vec<(ApiKeyId, Timestamp)> =
            std::mem::take(&mut *self.last_used.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
                .into_iter()
                .collect();
        self.store.touch_api_keys(&used).await
    }

    /// Flushes last-use times every `every` until `stop`, then once more.
    pub fn spawn_last_used_flusher(
        self,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    () = stop.cancelled() => true,
                    _ = ticks.tick() => false,
                };
                if let Err(error) = self.flush_last_used().await {
                    tracing::warn!(error = %error, "could not record when keys were last used");
                }
                if stopping {
                    return;
                }
            }
        })
    }

    /// The caller's team's key `id`, which the caller may see.
    async fn team_key(&self, caller: &Caller, id: ApiKeyId) -> Result<ApiKey, KeyError> {
        if !caller.allows(Permission::UseTeam) {
            return Err(KeyError::KeyNotFound);
        }
        self.store
            .find_api_key(caller.team_id(), id)
            .await?
            .ok_or(KeyError::KeyNotFound)
    }

    /// Checks a key a Member makes or changes against the team's key policy; Admins and
    /// management keys are not bound by it.
    async fn within_policy(
        &self,
        caller: &Caller,
        new: KeyShape<'_>,
        before: Option<KeyShape<'_>>,
    ) -> Result<(), KeyError> {
        if caller.allows(Permission::ManageAllApiKeys) {
            return Ok(());
        }
        let policy = self.store.key_policy(caller.team_id()).await?;
        Ok(policy.check(new, before)?)
    }

    /// The team's key policy (every member may read it).
    pub async fn key_policy(&self, caller: &Caller) -> Result<KeyPolicy, KeyError> {
        if !caller.allows(Permission::UseTeam) {
            return Err(KeyError::TeamNotFound);
        }
        Ok(self.store.key_policy(caller.team_id()).await?)
    }

    /// Sets the team's key policy (Admins): the widest grants and highest limits a Member's
    /// key may have; `KeyPolicy::default()` lifts every ceiling. Keys already beyond it stay as
    /// they are; their Members may tighten them, not loosen them.
    pub async fn set_key_policy(
        &self,
        caller: &Caller,
        acls: Option<&[String]>,
        qps: Option<u32>,
        qpm: Option<u32>,
        tpm: Option<u64>,
        context: &RequestContext,
    ) -> Result<KeyPolicy, KeyError> {
        if !caller.allows(Permission::ManageAllApiKeys) {
            return Err(KeyError::Forbidden("Only team Admins may set the key policy"));
        }
        check_limits(qps, qpm, tpm)?;
        let policy = KeyPolicy {
            acls: acls.map(AclSet::parse).transpose()?,
            qps,
            qpm,
            tpm,
        };
        let now = self.clock.now();
        let describe =
            |field: &str, value: Option<String>| format!("{field} {}", value.unwrap_or_else(|| "unbounded".to_owned()));
        let description = if policy.is_open() {
            "Lifted the team's key policy: Members' keys have no ceiling".to_owned()
        } else {
            format!(
                "Set the team's key policy for Members' keys: {}; {}; {}; {}",
                describe(
                    "ACLs",
                    policy.acls.as_ref().map(|set| {
                        set.as_slice()
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                ),
                describe("qps", policy.qps.map(|v| v.to_string())),
                describe("qpm", policy.qpm.map(|v| v.to_string())),
                describe("tpm", policy.tpm.map(|v| v.to_string())),
            )
        };
        let audit = AuditEvent::success(
            now,
            Some(caller.team_id()),
            caller.actor(),
            AuditAction::SetKeyPolicy,
            description,
            Some(format!("team:{}", caller.team_id())),
            context,
        );
        self.store
            .set_key_policy(caller.team_id(), &policy, now, caller.user_id(), &audit)
            .await?;
        Ok(policy)
    }

    /// The caller's team's key `id`, which the caller may change.
    async fn managed_key(&self, caller: &Caller, id: ApiKeyId) -> Result<ApiKey, KeyError> {
        let key = self.team_key(caller, id).await?;
        if !caller.may_manage_key(key.created_by) {
            return Err(KeyError::Forbidden(
                "Only a team Admin or the key's creator may change this API key",
            ));
        }
        Ok(key)
    }

    /// One key of the caller's team, audited as `GetApiKey`.
    pub async fn get_api_key(
        &self,
        caller: &Caller,
        id: ApiKeyId,
        context: &RequestContext,
    ) -> Result<ApiKey, KeyError> {
        let key = self.team_key(caller, id).await?;
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(key.team_id),
            caller.actor(),
            AuditAction::GetApiKey,
            format!("Read API key '{}' ({})", key.name, key.redacted),
            Some(format!("api_key:{}", key.id)),
            context,
        );
        if self.reads.first_in_minute(&audit) {
            self.store.insert_audit_event(&audit).await?;
        }
        Ok(key)
    }

    /// Applies `changes` to key `id` of the caller's team.
    #[instrument(skip_all, fields(api_key.id = %id))]
    pub async fn update_api_key(
        &self,
        caller: &Caller,
        id: ApiKeyId,
        changes: ApiKeyChanges,
        context: &RequestContext,
    ) -> Result<ApiKey, KeyError> {
        let fields = changes.field_names();
        if fields.is_empty() {
            return Err(KeyError::NothingToUpdate);
        }
        let mut key = self.managed_key(caller, id).await?;
        let before = key.clone();
        let now = self.clock.now();
        if let Some(name) = &changes.name {
            key.name = validate_name(name)?;
        }
        if let Some(acls) = &changes.acls {
            key.acls = AclSet::parse(acls)?;
        }
        key.qps = changes.qps.unwrap_or(key.qps);
        key.qpm = changes.qpm.unwrap_or(key.qpm);
        key.tpm = changes.tpm.unwrap_or(key.tpm);
        check_limits(key.qps, key.qpm, key.tpm)?;
        self.within_policy(caller, KeyShape::of(&key), Some(KeyShape::of(&before)))
            .await?;
        if let Some(expire_time) = changes.expire_time {
            if expire_time.is_some_and(|at| at <= now) {
                return Err(KeyError::ExpiryInPast);
            }
            key.expire_time = expire_time;
        }
        let switched = changes
            .disabled
            .filter(|&d| d != key.disabled)
            .map(|d| if d { "disabled" } else { "enabled" });
        key.disabled = changes.disabled.unwrap_or(key.disabled);
        key.modified_at = now;
        key.modified_by = caller.user_id();
        let description = match switched {
            Some(state) => format!(
                "API key '{}' ({}) {state}; fields: {}",
                key.name,
                key.redacted,
                fields.join(", ")
            ),
            None => format!(
                "Updated API key '{}' ({}); fields: {}",
                key.name,
                key.redacted,
                fields.join(", ")
            ),
        };
        let audit = AuditEvent::success(
            now,
            Some(key.team_id),
            caller.actor(),
            AuditAction::UpdateApiKey,
            description,
            Some(format!("api_key:{}", key.id)),
            context,
        );
        self.store
            .update_api_key(&key, &audit)
            .await
            .map_err(not_found_is_key)?;
        self.evict(key.id);
        Ok(key)
    }

    /// Gives key `id` a new secret, same id. The old secret keeps working for `grace` (at most
    /// [`MAX_ROTATION_GRACE`]); without grace it stops at once. The new plaintext is returned once.
    #[instrument(skip_all, fields(api_key.id = %id))]
    pub async fn rotate_api_key(
        &self,
        caller: &Caller,
        id: ApiKeyId,
        grace: Option<chrono::Duration>,
        context: &RequestContext,
    ) -> Result<(ApiKey, PlainKey), KeyError> {
        let grace = grace.filter(|g| !g.is_zero());
        if grace.is_some_and(|g| g < chrono::Duration::zero() || g > MAX_ROTATION_GRACE) {
            return Err(KeyError::InvalidGracePeriod);
        }
        let mut key = self.managed_key(caller, id).await?;
        if key.blocked {
            return Err(KeyError::Blocked(key.blocked_reason.clone().unwrap_or_default()));
        }
        let now = self.clock.now();
        let plain = PlainKey::generate(&self.api_prefix, &mut self.rng());
        let new_hash = plain.hash();
        let new_redacted = plain.redacted(&self.api_prefix);
        let previous_valid_until = grace.map(|g| now + g);
        let audit = AuditEvent::success(
            now,
            Some(key.team_id),
            caller.actor(),
            AuditAction::RotateApiKey,
            match previous_valid_until {
                Some(until) => format!(
                    "Rotated API key '{}' ({} → {}); the old secret works until {}",
                    key.name,
                    key.redacted,
                    new_redacted,
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => format!("Rotated API key '{}' ({} → {})", key.name, key.redacted, new_redacted),
            },
            Some(format!("api_key:{}", key.id)),
            context,
        );
        let rotation = KeyRotation {
            team_id: key.team_id,
            id: key.id,
            new_hash: &new_hash,
            new_redacted: &new_redacted,
            previous_valid_until,
            at: now,
            by: caller.user_id(),
        };
        self.store
            .rotate_api_key(&rotation, &audit)
            .await
            .map_err(not_found_is_key)?;
        self.evict(key.id);
        key.redacted = new_redacted;
        key.modified_at = now;
        key.modified_by = caller.user_id();
        key.previous_secret_expires_at = previous_valid_until;
        Ok((key, plain))
    }

    /// Deletes key `id` of the caller's team: refused from now on, gone from lists; its usage
    /// and audit records stay.
    #[instrument(skip_all, fields(api_key.id = %id))]
    pub async fn delete_api_key(
        &self,
        caller: &Caller,
        id: ApiKeyId,
        context: &RequestContext,
    ) -> Result<(), KeyError> {
        let key = self.managed_key(caller, id).await?;
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            Some(key.team_id),
            caller.actor(),
            AuditAction::DeleteApiKey,
            format!("Deleted API key '{}' ({})", key.name, key.redacted),
            Some(format!("api_key:{}", key.id)),
            context,
        );
        self.store
            .delete_api_key(key.team_id, key.id, now, caller.user_id(), &audit)
            .await
            .map_err(not_found_is_key)?;
        self.evict(key.id);
        Ok(())
    }

    /// Whether the last change to key `id` is in force on every node (each re-reads a key at
    /// least once per [`AUTH_CACHE_TTL`]).
    pub async fn propagation(&self, caller: &Caller, id: ApiKeyId) -> Result<Propagation, KeyError> {
        let key = self.team_key(caller, id).await?;
        let ttl = chrono::Duration::from_std(AUTH_CACHE_TTL).unwrap_or(chrono::Duration::seconds(1));
        let propagated_at = key.modified_at + ttl;
        Ok(Propagation {
            modified_at: key.modified_at,
            propagated_at,
            propagated: self.clock.now() >= propagated_at,
        })
    }

    /// Withdraws the API key secret `presented`, for leaks. A key that is not ours (bad prefix
    /// or checksum, or unknown) is `Ok(None)`. What happens depends on what the secret still
    /// opens:
    /// - the key's current secret: the key is blocked (once; a second report writes nothing);
    /// - its previous secret, still in its rotation grace: the grace ends now, and the current
    ///   secret (which the rotation was for) works on;
    /// - a secret that opens nothing any more (rotated out, key or team deleted): nothing
    ///   changes, and the report is recorded in the team's log.
    pub async fn block_api_key_by_secret(
        &self,
        presented: &str,
        reason: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<Option<LeakOutcome>, KeyError> {
        let Ok(parsed) = ParsedKey::parse(&self.api_prefix, presented) else {
            return Ok(None);
        };
        let hash = parsed.hash();
        let Some((key, matched)) = self.store.find_api_key_by_hash(&hash).await? else {
            return Ok(None);
        };
        if let Some(why) = self.opens_nothing(&key, matched).await? {
            return self.record_dead(key, why, reason, actor, context).await.map(Some);
        }
        if matched == SecretMatch::Previous {
            return self.end_grace(key, &hash, reason, actor, context).await.map(Some);
        }
        self.block(key, reason, actor, context).await.map(Some)
    }

    /// Why `key`'s secret (`matched`) opens nothing any more, if it does not.
    async fn opens_nothing(&self, key: &ApiKey, matched: SecretMatch) -> Result<Option<&'static str>, KeyError> {
        match self.store.get_team(key.team_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => return Ok(Some("its team was deleted")),
            Err(other) => return Err(other.into()),
        }
        let in_grace = key
            .previous_secret_expires_at
            .is_some_and(|until| until > self.clock.now());
        Ok(match (key.deleted_at, matched) {
            (Some(_), _) => Some("the key was deleted"),
            (None, SecretMatch::Previous) if !in_grace => Some("it was rotated out and its grace period is over"),
            _ => None,
        })
    }

    /// Records a report of a secret that opens nothing any more: nothing else changes.
    async fn record_dead(
        &self,
        key: ApiKey,
        why: &str,
        reason: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<LeakOutcome, KeyError> {
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(key.team_id),
            actor,
            AuditAction::ReportLeakedSecret,
            format!(
                "A leaked secret of API key '{}' ({}) was reported ({reason}); it opens nothing any more ({why}), so \
                 nothing changed",
                key.name, key.redacted
            ),
            Some(format!("api_key:{}", key.id)),
            context,
        );
        self.store.insert_audit_event(&audit).await?;
        Ok(LeakOutcome::AlreadyDead(key))
    }

    /// Ends the rotation grace of `key`'s previous secret `hash`, which leaked: that secret is
    /// refused from now on, the current one works on; audited, the team's Admins told.
    async fn end_grace(
        &self,
        key: ApiKey,
        hash: &KeyHash,
        reason: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<LeakOutcome, KeyError> {
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            Some(key.team_id),
            actor,
            AuditAction::EndRotationGrace,
            format!(
                "Ended the grace period of API key '{}' ({}): its previous secret leaked ({reason}); the current \
                 secret works on",
                key.name, key.redacted
            ),
            Some(format!("api_key:{}", key.id)),
            context,
        );
        let team = self.store.get_team(key.team_id).await?;
        let admins = self.store.list_admin_emails(key.team_id).await?;
        let mail: Vec<_> = self
            .notices
            .previous_secret_ended(
                &team,
                &key.name,
                &key.redacted,
                &key.id.to_string(),
                reason,
                now,
                admins,
            )
            .into_iter()
            .collect();
        let ended = self
            .store
            .end_previous_secret(key.team_id, key.id, hash, now, &audit, &mail)
            .await?;
        self.evict(key.id);
        if ended && !mail.is_empty() {
            self.notices.queued();
        }
        Ok(LeakOutcome::GraceEnded(key))
    }

    /// Withdraws whatever key of ours `presented` is, because it leaked: an API key is blocked,
    /// a management key revoked, the team's Admins told. Returns whether it was one of ours (a
    /// key withdrawn before counts).
    pub async fn withdraw_leaked_secret(
        &self,
        presented: &str,
        reason: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<bool, KeyError> {
        if self
            .block_api_key_by_secret(presented, reason, actor.clone(), context)
            .await?
            .is_some()
        {
            return Ok(true);
        }
        let Ok(parsed) = ParsedKey::parse(&self.management_prefix, presented) else {
            return Ok(false);
        };
        let Some(key) = self.store.find_management_key_by_hash(&parsed.hash()).await? else {
            return Ok(false);
        };
        if key.revoked_at.is_some() {
            return Ok(true);
        }
        let now = self.clock.now();
        match self.store.get_team(key.team_id).await {
            // A deleted team's management keys were revoked with it.
            Err(StoreError::NotFound) => return Ok(true),
            Err(other) => return Err(other.into()),
            Ok(_) => {}
        }
        let mail = self
            .withdrawal_notice(
                key.team_id,
                KeyKind::Management,
                &key.name,
                &key.redacted,
                &key.id.to_string(),
                reason,
            )
            .await?;
        let audit = AuditEvent::success(
            now,
            Some(key.team_id),
            actor,
            AuditAction::RevokeManagementKey,
            format!("Revoked management key '{}' ({}): {reason}", key.name, key.redacted),
            Some(format!("management_key:{}", key.id)),
            context,
        );
        match self
            .store
            .revoke_management_key(key.team_id, key.id, now, &audit, &mail)
            .await
        {
            // Revoked meanwhile by someone else: still ours, and withdrawn.
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(other) => return Err(other.into()),
        }
        if !mail.is_empty() {
            self.notices.queued();
        }
        Ok(true)
    }

    /// The mail telling a team's Admins that one of its keys was withdrawn (none if no Admin).
    async fn withdrawal_notice(
        &self,
        team_id: tollgate_domain::TeamId,
        kind: KeyKind,
        name: &str,
        redacted: &str,
        id: &str,
        reason: &str,
    ) -> Result<Vec<tollgate_domain::OutboundMail>, KeyError> {
        let team = self.store.get_team(team_id).await?;
        let admins = self.store.list_admin_emails(team_id).await?;
        let withdrawn = WithdrawnKey {
            kind,
            name,
            redacted,
            id,
        };
        Ok(self
            .notices
            .key_withdrawn(&team, &withdrawn, reason, self.clock.now(), admins)
            .into_iter()
            .collect())
    }

    /// Blocks key `id` of `team_id` (the operator's command). `KeyNotFound` if there never was
    /// one; a deleted key, or one of a deleted team, is already withdrawn (recorded only).
    pub async fn block_api_key(
        &self,
        team_id: tollgate_domain::TeamId,
        id: ApiKeyId,
        reason: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<LeakOutcome, KeyError> {
        let key = self
            .store
            .find_api_key_any_state(team_id, id)
            .await?
            .ok_or(KeyError::KeyNotFound)?;
        if let Some(why) = self.opens_nothing(&key, SecretMatch::Current).await? {
            return self.record_dead(key, why, reason, actor, context).await;
        }
        self.block(key, reason, actor, context).await
    }

    async fn block(
        &self,
        key: ApiKey,
        reason: &str,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<LeakOutcome, KeyError> {
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            Some(key.team_id),
            actor,
            AuditAction::BlockApiKey,
            format!("Blocked API key '{}' ({}): {reason}", key.name, key.redacted),
            Some(format!("api_key:{}", key.id)),
            context,
        );
        let mail = self
            .withdrawal_notice(
                key.team_id,
                KeyKind::Api,
                &key.name,
                &key.redacted,
                &key.id.to_string(),
                reason,
            )
            .await?;
        let newly = self
            .store
            .block_api_key(key.team_id, key.id, reason, now, &audit, &mail)
            .await?;
        self.evict(key.id);
        if newly && !mail.is_empty() {
            self.notices.queued();
        }
        Ok(if newly {
            LeakOutcome::Blocked(key)
        } else {
            LeakOutcome::AlreadyBlocked(key)
        })
    }

    /// The team's management keys (operator), audited as `ListManagementKeys`.
    pub async fn list_management_keys(
        &self,
        team_id: tollgate_domain::TeamId,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<Vec<ManagementKey>, KeyError> {
        self.store.get_team(team_id).await.map_err(not_found_is_team)?;
        let keys = self.store.list_management_keys(team_id).await?;
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(team_id),
            actor,
            AuditAction::ListManagementKeys,
            format!("Listed {} management keys", keys.len()),
            None,
            context,
        );
        if self.reads.first_in_minute(&audit) {
            self.store.insert_audit_event(&audit).await?;
        }
        Ok(keys)
    }

    /// Revokes management key `id` of `team_id`: refused from now on.
    pub async fn revoke_management_key(
        &self,
        team_id: tollgate_domain::TeamId,
        id: ManagementKeyId,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<(), KeyError> {
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            Some(team_id),
            actor,
            AuditAction::RevokeManagementKey,
            format!("Revoked management key {id}"),
            Some(format!("management_key:{id}")),
            context,
        );
        self.store
            .revoke_management_key(team_id, id, now, &audit, &[])
            .await
            .map_err(not_found_is_key)
    }

    /// Every live API key of `team_id`, for an operator (to block one).
    pub async fn keys_for_operator(
        &self,
        _operator: &crate::Operator,
        team_id: tollgate_domain::TeamId,
    ) -> Result<Vec<ApiKey>, KeyError> {
        Ok(self.store.list_api_keys(team_id, None, 1_000).await?)
    }

    /// A page of the team's keys (management API), audited as `ListApiKeys`.
    pub async fn list_api_keys(
        &self,
        caller: &Caller,
        team_id: tollgate_domain::TeamId,
        after: Option<ApiKeyId>,
        limit: u32,
        context: &RequestContext,
    ) -> Result<Vec<ApiKey>, KeyError> {
        if caller.team_id() != team_id {
            crate::audit::record_denied(
                &*self.store,
                &*self.clock,
                &self.reads,
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
            caller.actor(),
            AuditAction::ListApiKeys,
            format!("Listed {} API keys", keys.len()),
            None,
            context,
        );
        if self.reads.first_in_minute(&audit) {
            self.store.insert_audit_event(&audit).await?;
        }
        Ok(keys)
    }
}

fn not_found_is_key(error: StoreError) -> KeyError {
    match error {
        StoreError::NotFound => KeyError::KeyNotFound,
        other => other.into(),
    }
}

fn not_found_is_team(error: StoreError) -> KeyError {
    match error {
        StoreError::NotFound => KeyError::TeamNotFound,
        other => other.into(),
    }
}

/// The management keys a person created in a team, ended because they no longer hold its Admin
/// role (demoted, removed, or their account deleted).
pub(crate) struct CreatorKeys<'a> {
    /// The team.
    pub team: &'a tollgate_domain::Team,
    /// Whose keys.
    pub creator: tollgate_domain::UserId,
    /// Who acts (recorded in the events).
    pub actor: Actor,
    /// Why, in the events and the notice.
    pub reason: &'a str,
    /// When.
    pub at: Timestamp,
}

/// The audit events and the notices to the team's other Admins for revoking `keys.creator`'s
/// live management keys in `keys.team`; the caller's store transaction revokes them.
pub(crate) async fn creator_key_revocations(
    store: &dyn Store,
    notices: &Notices,
    keys: &CreatorKeys<'_>,
    context: &RequestContext,
) -> Result<(Vec<AuditEvent>, Vec<tollgate_domain::OutboundMail>), StoreError> {
    let live: Vec<_> = store
        .list_management_keys(keys.team.id)
        .await?
        .into_iter()
        .filter(|key| key.created_by == Some(keys.creator) && key.revoked_at.is_none())
        .collect();
    if live.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let admins: Vec<tollgate_domain::Email> = store
        .list_members(keys.team.id)
        .await?
        .into_iter()
        .filter(|member| member.role == tollgate_domain::Role::Admin && member.user_id != keys.creator)
        .map(|member| member.email)
        .collect();
    let reason = keys.reason;
    let mut audits = Vec::with_capacity(live.len());
    let mut mail = Vec::with_capacity(live.len());
    for key in &live {
        audits.push(AuditEvent::success(
            keys.at,
            Some(keys.team.id),
            keys.actor.clone(),
            AuditAction::RevokeManagementKey,
            format!("Revoked management key '{}' ({}): {reason}", key.name, key.redacted),
            Some(format!("management_key:{}", key.id)),
            context,
        ));
        let withdrawn = WithdrawnKey {
            kind: KeyKind::Management,
            name: &key.name,
            redacted: &key.redacted,
            id: &key.id.to_string(),
        };
        mail.extend(notices.key_withdrawn(keys.team, &withdrawn, reason, keys.at, admins.clone()));
    }
    Ok((audits, mail))
}
