//! Persistence. **Invariant:** only this crate contains SQL.
//!
//! One trait per area ([`AccountStore`], [`TeamStore`], [`KeyStore`], [`UsageStore`],
//! [`AuditStore`]), gathered in [`Store`] and used as `Arc<dyn Store>`. The backend is chosen once,
//! at start-up, from the database URL's scheme ([`connect`]).
//!
//! Both backends share **one implementation** (`sql/`: `mod.rs` with the row conversions and
//! helpers, one module per area), compiled twice: once with `Db = Sqlite` and once with
//! `Db = Postgres`, each backend declaring it with `#[path = "sql/mod.rs"] mod sql;`. The SQL is written once, in the dialect both
//! accept (`$1` placeholders, `ON CONFLICT`, `RETURNING`); each backend keeps its own migrations
//! (same file names, same table, column and constraint names) because the column types differ.
//! The conformance suite in [`testsuite`] runs every case against both.
//!
//! **Invariant:** every mutating method opens one transaction, writes its change and the audit
//! event it is given, and commits both or neither.

// `sql/` is compiled once per backend on purpose (each with its own `Db`).
#![allow(
    clippy::duplicate_mod,
    reason = "sql/ is compiled once for each backend, with its own Db"
)]

mod error;
mod postgres;
mod sqlite;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_domain::keys::KeyHash;
use tollgate_domain::{
    ApiKey, ApiKeyId, AuditChainKey, AuditEvent, AuditEventId, AuditRecord, CeremonyPurpose, ChainHead, Email,
    Identity, IdentityId, Invitation, KeyPolicy, MailId, ManagementKey, Member, Membership, OidcFlow, OutboundMail,
    PasskeyId, PendingIdentity, PruneBoundary, QueuedMail, Role, Session, SessionId, StoredPasskey, Team, TeamDomain,
    TeamId, Timestamp, TokenPurpose, UsageRecord, User, UserId, WebauthnCeremony,
};

pub use error::{OpenError, StoreError};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Accounts.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user, their Personal Team and their Admin membership, with `audit`, atomically.
    async fn create_user_with_personal_team(
        &self,
        user: &User,
        team: &Team,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// The account at this address that signs in with a password (at most one has a password),
    /// else the oldest account at it, if any: several accounts may share an address.
    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    /// Every account at this address (several may share one), oldest first.
    async fn user_ids_by_email(&self, email: &Email) -> Result<Vec<UserId>, StoreError>;
    /// The user with this id; `NotFound` otherwise.
    async fn get_user(&self, id: UserId) -> Result<User, StoreError>;
    /// Starts a session, stored by the hashes of its token and CSRF token, with `audits` and
    /// `mail` (a sign-in alert).
    async fn create_session(
        &self,
        session: &Session,
        token_hash: &[u8; 32],
        csrf_hash: &[u8; 32],
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError>;
    /// The session whose token has this hash (whatever its state), its CSRF hash, and its user.
    async fn find_session(&self, token_hash: &[u8; 32]) -> Result<Option<(Session, [u8; 32], User)>, StoreError>;
    /// Notes that a session was used at `at` (never moves back).
    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<(), StoreError>;
    /// The user's sessions begun since `since`, ended or not, newest first (at most 500): where
    /// and on what they signed in before.
    async fn sessions_since(&self, user_id: UserId, since: Timestamp) -> Result<Vec<Session>, StoreError>;
    /// The user's sessions not ended and not past their absolute expiry, newest first.
    async fn list_sessions(&self, user_id: UserId, now: Timestamp) -> Result<Vec<Session>, StoreError>;
    /// Ends sessions of the user; returns how many (none: nothing is written, `audits` included).
    async fn end_sessions(
        &self,
        user_id: UserId,
        which: EndSessions,
        at: Timestamp,
        audits: &[AuditEvent],
    ) -> Result<u64, StoreError>;
    /// Stores a single-use account token, with the mail carrying it and `audits`.
    async fn insert_account_token(
        &self,
        token: &AccountToken,
        mail: &[OutboundMail],
        audits: &[AuditEvent],
    ) -> Result<(), StoreError>;
    /// The token with this hash, whatever its state.
    async fn find_account_token(&self, hash: &[u8; 32]) -> Result<Option<AccountToken>, StoreError>;
    /// Uses a token once and applies what it is for, atomically: `false` (nothing written) when
    /// it was used or expired meanwhile.
    async fn redeem_account_token(&self, redeem: &TokenRedemption<'_>) -> Result<bool, StoreError>;
    /// Deletes an account (restorable until `purge_after`): off every member list, sessions
    /// ended, its management keys revoked, its pending links dead; with `audits` and `mail`.
    async fn delete_account(&self, deletion: &AccountDeletion<'_>) -> Result<(), StoreError>;
    /// Deleted accounts whose restore period is over and that are not purged yet.
    async fn accounts_due_for_purge(&self, now: Timestamp) -> Result<Vec<User>, StoreError>;
    /// Purges a deleted account's personal data: address, name, secrets, sessions, memberships,
    /// its Personal Team; audit events keep only the user id (their email label is erased).
    async fn purge_account(&self, user_id: UserId, at: Timestamp, audits: &[AuditEvent]) -> Result<(), StoreError>;
    /// Renames the user, with `audits`.
    async fn set_display_name(&self, user_id: UserId, name: &str, audits: &[AuditEvent]) -> Result<(), StoreError>;
    /// Sets a new password and ends every session but `keep`, with `audits` and `mail`.
    async fn set_password(&self, change: &PasswordChange<'_>) -> Result<(), StoreError>;
}

/// An account deletion.
#[derive(Debug)]
pub struct AccountDeletion<'a> {
    /// Whose.
    pub user_id: UserId,
    /// When.
    pub at: Timestamp,
    /// The end of the restore period.
    pub purge_after: Timestamp,
    /// Audit events (written first, into the teams the account was in).
    pub audits: &'a [AuditEvent],
    /// Mail to queue.
    pub mail: &'a [OutboundMail],
}

/// A password change by the account's owner.
#[derive(Debug)]
pub struct PasswordChange<'a> {
    /// Whose.
    pub user_id: UserId,
    /// The new hash.
    pub password_hash: &'a str,
    /// When.
    pub at: Timestamp,
    /// The session that stays signed in.
    pub keep: Option<SessionId>,
    /// Audit events.
    pub audits: &'a [AuditEvent],
    /// Mail to queue.
    pub mail: &'a [OutboundMail],
}

/// A change to a membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// A new role.
    SetRole(Role),
    /// Out of the team.
    Remove,
}

/// Which sessions to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndSessions {
    /// This one.
    One(SessionId),
    /// All, except this one if given.
    AllBut(Option<SessionId>),
}

/// A single-use token sent by mail, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountToken {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// Whose account.
    pub user_id: UserId,
    /// What it does.
    pub purpose: TokenPurpose,
    /// When it was issued.
    pub created_at: Timestamp,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// When it was used.
    pub used_at: Option<Timestamp>,
    /// For an email change: the new address.
    pub data: Option<String>,
}

impl AccountToken {
    /// A fresh token record for `user_id`, living `purpose`'s lifetime from `now`.
    #[must_use]
    pub fn issue(hash: [u8; 32], user_id: UserId, purpose: TokenPurpose, now: Timestamp, data: Option<String>) -> Self {
        Self {
            hash,
            user_id,
            purpose,
            created_at: now,
            expires_at: now + purpose.lifetime(),
            used_at: None,
            data,
        }
    }
}

/// Redeeming a token: verifying the email; setting the new password (which also ends every
/// session and every other reset link); changing the email to the token's address (which ends
/// every session and every other pending change); or stopping a pending change (which ends every
/// session).
#[derive(Debug)]
pub struct TokenRedemption<'a> {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// What it must be for.
    pub purpose: TokenPurpose,
    /// Whose (from the token, already looked up).
    pub user_id: UserId,
    /// The new password's hash, for a reset.
    pub new_password_hash: Option<&'a str>,
    /// When.
    pub at: Timestamp,
    /// Mail to queue with it.
    pub mail: &'a [OutboundMail],
    /// Its audit events.
    pub audits: &'a [AuditEvent],
}

/// A team as the operator's overview lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamSummary {
    /// The team.
    pub team: Team,
    /// Its credit (as its balance row stands: leases taken by nodes are already out of it).
    pub balance: tollgate_domain::Balance,
    /// How many members it has.
    pub members: u64,
    /// The unpaid invoice it is blocked for, if any.
    pub blocked_invoice: Option<String>,
    /// Why the operator blocked it, if they did.
    pub blocked_reason: Option<String>,
}

/// Teams and memberships.
#[async_trait]
pub trait TeamStore: Send + Sync {
    /// The team with this id; `NotFound` otherwise.
    async fn get_team(&self, id: TeamId) -> Result<Team, StoreError>;
    /// Every team the user belongs to, with their role, oldest first.
    async fn list_memberships(&self, user_id: UserId) -> Result<Vec<Membership>, StoreError>;
    /// The user's role in the team, if they are a member.
    async fn find_role(&self, team_id: TeamId, user_id: UserId) -> Result<Option<Role>, StoreError>;
    /// The email addresses of the team's Admins.
    async fn list_admin_emails(&self, team_id: TeamId) -> Result<Vec<Email>, StoreError>;
    /// Creates a team with `admin` as its Admin.
    async fn create_team(&self, team: &Team, admin: UserId, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Writes the team's name and description.
    async fn update_team(&self, team: &Team, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Blocks the team's requests with the operator's `reason`, or lifts that block (`None`),
    /// with `audit`, atomically. Returns whether anything changed (blocking a blocked team, or
    /// lifting no block, writes nothing, not even the event); `NotFound` for no live team.
    async fn set_team_block(
        &self,
        team_id: TeamId,
        reason: Option<&str>,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
    /// Why the operator blocked the team, if they did; `NotFound` for no live team.
    async fn team_block(&self, team_id: TeamId) -> Result<Option<String>, StoreError>;
    /// How the team's data may be used.
    async fn data_use(&self, team_id: TeamId) -> Result<tollgate_domain::DataUse, StoreError>;
    /// Sets how the team's data may be used, with `audit`, atomically.
    async fn set_data_use(
        &self,
        team_id: TeamId,
        data_use: tollgate_domain::DataUse,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Deletes the team: gone from every list, its API keys deleted and management keys revoked
    /// (they stop working), its invitations withdrawn. Usage and audit records stay.
    async fn delete_team(&self, team_id: TeamId, at: Timestamp, audit: &AuditEvent) -> Result<(), StoreError>;
    /// The team's members, oldest first.
    async fn list_members(&self, team_id: TeamId) -> Result<Vec<Member>, StoreError>;
    /// Live teams whose name contains `search` (any case; empty: every team), newest first, at
    /// most `limit`, with their balances: the operator's overview.
    async fn list_teams(&self, search: &str, limit: u32) -> Result<Vec<TeamSummary>, StoreError>;
    /// Adds a member; `Conflict` when they are one already.
    async fn add_member(
        &self,
        team_id: TeamId,
        user_id: UserId,
        role: Role,
        at: Timestamp,
        audits: &[AuditEvent],
    ) -> Result<(), StoreError>;
    /// Changes a member's role or removes them; `NotFound` if not a member, `Conflict` named
    /// `team_members_last_admin` (nothing written) when the team would have no Admin left.
    /// A member who is no longer an Admin (made Member, or removed) loses the management keys
    /// they created in the team: each is revoked in the same transaction.
    async fn change_member(
        &self,
        team_id: TeamId,
        user_id: UserId,
        change: MemberChange,
        at: Timestamp,
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError>;
    /// Stores an invitation (by its token's hash), with its mail. A pending invitation to the
    /// same address in the same team is withdrawn first, so there is one at most (a unique
    /// index holds it; `Conflict` when a concurrent one won).
    async fn create_invitation(
        &self,
        invitation: &Invitation,
        token_hash: &[u8; 32],
        mail: &[OutboundMail],
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// The team's pending invitations.
    async fn list_invitations(&self, team_id: TeamId, now: Timestamp) -> Result<Vec<Invitation>, StoreError>;
    /// The invitation with this token, whatever its state.
    async fn find_invitation(&self, token_hash: &[u8; 32]) -> Result<Option<Invitation>, StoreError>;
    /// Pending invitations for an address (to teams that still exist).
    async fn pending_invitations_for(&self, email: &Email, now: Timestamp) -> Result<Vec<Invitation>, StoreError>;
    /// Withdraws a pending invitation.
    async fn revoke_invitation(
        &self,
        team_id: TeamId,
        id: tollgate_domain::InvitationId,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Adds a domain to verify.
    async fn insert_domain(&self, domain: &TeamDomain, audit: &AuditEvent) -> Result<(), StoreError>;
    /// The team's domains.
    async fn list_domains(&self, team_id: TeamId) -> Result<Vec<TeamDomain>, StoreError>;
    /// Every domain (the periodic re-check).
    async fn list_all_domains(&self) -> Result<Vec<TeamDomain>, StoreError>;
    /// Records a lookup: verified since `verified_at` (or not, with `error`), with `audit` when the
    /// state changed. `Conflict` named `team_domains_verified_domain_key` when another team has
    /// the domain verified.
    async fn record_domain_check(&self, domain: &TeamDomain, audit: Option<&AuditEvent>) -> Result<(), StoreError>;
    /// Removes one of the team's domains.
    async fn delete_domain(
        &self,
        team_id: TeamId,
        id: tollgate_domain::DomainId,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// The team (not deleted) that has `domain` verified, if any.
    async fn team_with_verified_domain(&self, domain: &str) -> Result<Option<TeamId>, StoreError>;
    /// Turns a pending invitation into a membership of `user_id`; `false` when it was used,
    /// withdrawn or expired meanwhile.
    async fn accept_invitation(
        &self,
        invitation: &Invitation,
        user_id: UserId,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
}

/// Which of a key's secrets a presented one matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMatch {
    /// The current secret.
    Current,
    /// The secret a rotation replaced (valid until `previous_secret_expires_at`).
    Previous,
}

/// A rotation: the key's new secret, and how long the old one still works.
#[derive(Debug, Clone)]
pub struct KeyRotation<'a> {
    /// The key's team.
    pub team_id: TeamId,
    /// The key.
    pub id: ApiKeyId,
    /// Hash of the new secret.
    pub new_hash: &'a KeyHash,
    /// Redacted form of the new secret.
    pub new_redacted: &'a str,
    /// The old secret is accepted until then; `None` forgets it at once.
    pub previous_valid_until: Option<Timestamp>,
    /// When.
    pub at: Timestamp,
    /// Who (a user), if a user did it.
    pub by: Option<UserId>,
}

/// API keys and management keys. Only hashes of secrets are stored. Every method that changes a
/// key takes the team id and answers `NotFound` for another team's key (or a deleted one).
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new API key with `audit`, atomically.
    async fn insert_api_key(&self, key: &ApiKey, hash: &KeyHash, audit: &AuditEvent) -> Result<(), StoreError>;
    /// The API key one of whose secrets has this hash, whatever its state (deleted included).
    async fn find_api_key_by_hash(&self, hash: &KeyHash) -> Result<Option<(ApiKey, SecretMatch)>, StoreError>;
    /// The team's API key with this id, unless deleted.
    async fn find_api_key(&self, team_id: TeamId, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError>;
    /// The team's key policy (the default, no ceiling, when none was set).
    async fn key_policy(&self, team_id: TeamId) -> Result<KeyPolicy, StoreError>;
    /// Sets the team's key policy (an open one removes it), with `audit`, atomically.
    async fn set_key_policy(
        &self,
        team_id: TeamId,
        policy: &KeyPolicy,
        at: Timestamp,
        by: Option<UserId>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// The team's API key with this id, deleted or not (the operator's block of a dead key).
    async fn find_api_key_any_state(&self, team_id: TeamId, id: ApiKeyId) -> Result<Option<ApiKey>, StoreError>;
    /// A page of the team's API keys (deleted ones left out) in id (creation) order, after `after`.
    async fn list_api_keys(
        &self,
        team_id: TeamId,
        after: Option<ApiKeyId>,
        limit: u32,
    ) -> Result<Vec<ApiKey>, StoreError>;
    /// Writes the key's changeable fields (name, ACLs, limits, expiry, disabled, modified).
    async fn update_api_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Replaces the key's secret.
    async fn rotate_api_key(&self, rotation: &KeyRotation<'_>, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Deletes the key (softly: usage and audit records keep referring to it).
    async fn delete_api_key(
        &self,
        team_id: TeamId,
        id: ApiKeyId,
        at: Timestamp,
        by: Option<UserId>,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Blocks the key for `reason` (and drops a rotated secret still in grace), queueing `mail`
    /// in the same transaction. Returns `false`, writing nothing, when it was already blocked.
    async fn block_api_key(
        &self,
        team_id: TeamId,
        id: ApiKeyId,
        reason: &str,
        at: Timestamp,
        audit: &AuditEvent,
        mail: &[OutboundMail],
    ) -> Result<bool, StoreError>;
    /// Ends the rotation grace of key `id` whose previous secret is `previous_hash` (it leaked):
    /// that secret is refused from now on, with `mail` queued in the same transaction. Returns
    /// `false`, writing nothing, when that secret is no longer the key's previous one.
    async fn end_previous_secret(
        &self,
        team_id: TeamId,
        id: ApiKeyId,
        previous_hash: &KeyHash,
        at: Timestamp,
        audit: &AuditEvent,
        mail: &[OutboundMail],
    ) -> Result<bool, StoreError>;
    /// Records when keys were last used (a batch, flushed now and then; never moves a time back).
    async fn touch_api_keys(&self, used: &[(ApiKeyId, Timestamp)]) -> Result<(), StoreError>;
    /// Stores a new management key with `audit`, atomically.
    async fn insert_management_key(
        &self,
        key: &ManagementKey,
        hash: &KeyHash,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// The team's management keys, revoked ones included, oldest first.
    async fn list_management_keys(&self, team_id: TeamId) -> Result<Vec<ManagementKey>, StoreError>;
    /// Revokes a management key, queueing `mail` in the same transaction; `NotFound` if it is
    /// not the team's or already revoked.
    async fn revoke_management_key(
        &self,
        team_id: TeamId,
        id: tollgate_domain::ManagementKeyId,
        at: Timestamp,
        audit: &AuditEvent,
        mail: &[OutboundMail],
    ) -> Result<(), StoreError>;
    /// The management key with this secret hash, whatever its state.
    async fn find_management_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ManagementKey>, StoreError>;
}

/// A finished request to record: its usage, and the prices it was charged at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The usage, with its exact cost.
    pub record: UsageRecord,
    /// The prices it was charged at.
    pub pricing: tollgate_domain::ModelPricing,
}

/// Per-request usage, and its spend.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Stores many charges in one transaction (group commit): each usage record, and for each
    /// with a cost its spend entries, taken in consumption order (promotional lots, prepaid
    /// credit, then the month of `at`'s invoice up to the team's effective spending limit, the
    /// operator's default maximum being `default_hard_limit`). Each team's balance, lots and
    /// invoice month move once per batch (its credit lease does not: the node reports its
    /// spends when it renews or grows the lease, [`LeaseRequest::spent`]). Idempotent on the request id: a record
    /// already stored is skipped with its spend, so a retried batch cannot charge twice.
    async fn insert_usage_batch(
        &self,
        batch: &[Charge],
        at: Timestamp,
        default_hard_limit: tollgate_domain::Ticks,
    ) -> Result<(), StoreError>;
    /// Moves the spend journal into the ledger when this store has journaled at least
    /// `at_least` spend entries since its last fold (0: whatever the count). A group commit appends its spend entries to the journal, in the order
    /// they happen; a fold moves them all into the ledger in one transaction, so each team's
    /// part of the ledger is written once per fold rather than once per commit, and each
    /// charge's entries of one bucket (and lot) become one (a node keeps a team's charge open
    /// across its batches until its next fold, within a billing month). Every read sees an
    /// entry in exactly one of the two, so when folds run changes no sum, only how many entries
    /// the newest are. Safe to run on several nodes at once (each entry moves once), and
    /// returns how many journal rows moved.
    async fn fold_spends(&self, at_least: u64) -> Result<u64, StoreError>;
    /// The team's usage that started in `[from, to)`, summed per hour (UTC), model and key —
    /// only `keys`' when given — each cost split by token kind exactly (the parts sum to the
    /// recorded cost).
    async fn usage_cells(
        &self,
        team_id: TeamId,
        from: Timestamp,
        to: Timestamp,
        keys: Option<&[tollgate_domain::ApiKeyId]>,
    ) -> Result<Vec<tollgate_domain::analytics::UsageCell>, StoreError>;
    /// The team's most recent usage, newest first.
    async fn list_usage(&self, team_id: TeamId, limit: u32) -> Result<Vec<UsageRecord>, StoreError>;
}

/// A search of one team's audit log. Filters combine with AND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// The team whose log is searched.
    pub team_id: TeamId,
    /// Only this event.
    pub event_id: Option<AuditEventId>,
    /// Only events by this actor (a user id, or a key id).
    pub actor_id: Option<String>,
    /// Only events whose action or description contains this text, ignoring ASCII case.
    pub text: Option<String>,
    /// Only events at or after this time.
    pub from: Option<Timestamp>,
    /// Only events before this time.
    pub to: Option<Timestamp>,
    /// Newest first (otherwise oldest first).
    pub newest_first: bool,
    /// Keyset position: only events strictly beyond this `(time, id)` in the chosen order.
    pub after: Option<(Timestamp, AuditEventId)>,
    /// At most this many events.
    pub limit: u32,
}

/// A chain's stored state: its head, and where retention last cut it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditChainState {
    /// The team whose chain this is; `None` for platform events.
    pub team_id: Option<TeamId>,
    /// The last event's position and hash.
    pub head: ChainHead,
    /// Where the chain now starts, after retention.
    pub boundary: Option<PruneBoundary>,
}

/// The audit log: append-only, one hash chain per team (see [`tollgate_domain::audit`]).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records an event that goes with no other change (e.g. a read worth auditing).
    async fn insert_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Appends many events in one transaction, in order (each chain's head is read and moved
    /// once, rows go in multi-row statements): for bulk work and imports.
    async fn append_audit_events(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// The team's most recent events, newest first.
    async fn list_audit_events(&self, team_id: TeamId, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Events matching `query`, in its order.
    async fn search_audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Every chain's state.
    async fn list_audit_chains(&self) -> Result<Vec<AuditChainState>, StoreError>;
    /// The state of one chain, `None` when it has no events yet.
    async fn get_audit_chain(&self, team_id: Option<TeamId>) -> Result<Option<AuditChainState>, StoreError>;
    /// A page of one chain in `seq` order, from position `after_seq + 1`. Events written before
    /// chains existed are not part of any chain and not returned.
    async fn audit_chain_page(
        &self,
        team_id: Option<TeamId>,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// How many of the team's events predate the chains (not covered by verification).
    async fn count_unchained_audit_events(&self, team_id: Option<TeamId>) -> Result<u64, StoreError>;
    /// Removes the oldest events of one chain that are all older than `before` (a prefix, so the
    /// rest still verifies), records the MAC'd boundary, and appends `note(removed)` to the
    /// chain, in one transaction. Returns how many events were removed (0: nothing appended).
    async fn prune_audit_chain(
        &self,
        team_id: Option<TeamId>,
        before: Timestamp,
        note: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<u64, StoreError>;
}

/// The mail outbox. Mutations that send mail queue it in their own transaction; these methods
/// serve the sender and the operator.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// Queues mail on its own.
    async fn enqueue_mail(&self, mail: &[OutboundMail]) -> Result<(), StoreError>;
    /// Takes up to `limit` mails due at `now` that no sender holds, and holds them until
    /// `hold_until`: on several nodes, each mail goes to one sender.
    async fn claim_due_mail(
        &self,
        now: Timestamp,
        hold_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, StoreError>;
    /// The mail server accepted it: marked sent, its body dropped (replaced by
    /// [`tollgate_domain::mail::SENT_BODY`]).
    async fn mark_mail_sent(&self, id: MailId, at: Timestamp) -> Result<(), StoreError>;
    /// An attempt failed: try again at `retry_at`, or give up (`None`).
    async fn mark_mail_failed(
        &self,
        id: MailId,
        error: &str,
        retry_at: Option<Timestamp>,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    /// The newest mails, whatever their state.
    async fn list_mail(&self, limit: u32) -> Result<Vec<QueuedMail>, StoreError>;
    /// One mail.
    async fn get_mail(&self, id: MailId) -> Result<Option<QueuedMail>, StoreError>;
}

/// A user's second-factor state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MfaState {
    /// The sealed TOTP seed in force.
    pub seed: Option<Vec<u8>>,
    /// The sealed seed awaiting its first code.
    pub pending_seed: Option<Vec<u8>>,
    /// The last TOTP step accepted (each is accepted once).
    pub last_step: Option<u64>,
    /// Unused recovery codes.
    pub recovery_codes_left: u32,
}

/// Second factors. Every change also ends the user's other sessions where it says so.
#[async_trait]
pub trait MfaStore: Send + Sync {
    /// The user's second-factor state.
    async fn mfa_state(&self, user_id: UserId) -> Result<MfaState, StoreError>;
    /// Stores a seed awaiting confirmation (replacing any earlier one).
    async fn set_pending_totp(&self, user_id: UserId, sealed: &[u8]) -> Result<(), StoreError>;
    /// Puts the pending seed in force (`step` used), with a new set of recovery codes, ends every
    /// session but `keep`, with `audits` and `mail`. `false` (nothing written) when no seed was
    /// pending.
    async fn enable_totp(&self, change: &MfaChange<'_>, step: u64) -> Result<bool, StoreError>;
    /// Removes TOTP and the recovery codes, ends every session but `keep`.
    async fn disable_totp(&self, change: &MfaChange<'_>) -> Result<(), StoreError>;
    /// Replaces the recovery codes (the old set dies).
    async fn replace_recovery_codes(&self, change: &MfaChange<'_>) -> Result<(), StoreError>;
    /// Accepts TOTP `step` once: `false` when it (or a later one) was already used.
    async fn use_totp_step(&self, user_id: UserId, step: u64) -> Result<bool, StoreError>;
    /// Adds a passkey (with the first recovery codes when `change` has them), ends every session
    /// but `keep`. `Conflict` when the credential is registered already.
    async fn add_passkey(&self, passkey: &StoredPasskey, change: &MfaChange<'_>) -> Result<(), StoreError>;
    /// Removes a passkey of the user (`NotFound` otherwise); when it was the last second factor,
    /// the recovery codes go too. Ends every session but `keep`.
    async fn remove_passkey(&self, id: PasskeyId, change: &MfaChange<'_>) -> Result<(), StoreError>;
    /// The user's passkeys, oldest first.
    async fn list_passkeys(&self, user_id: UserId) -> Result<Vec<StoredPasskey>, StoreError>;
    /// Records a passkey's use: its updated data (counter) and the time.
    async fn touch_passkey(&self, id: PasskeyId, data: &str, at: Timestamp) -> Result<(), StoreError>;
    /// Stores a ceremony begun.
    async fn create_ceremony(&self, ceremony: &WebauthnCeremony) -> Result<(), StoreError>;
    /// Takes a live ceremony of `user_id` for `purpose` by its token's hash, once.
    async fn take_ceremony(
        &self,
        token_hash: &[u8; 32],
        user_id: UserId,
        purpose: CeremonyPurpose,
        at: Timestamp,
    ) -> Result<Option<WebauthnCeremony>, StoreError>;
    /// Uses a recovery code once: `false` when unknown or already used.
    async fn use_recovery_code(&self, user_id: UserId, hash: &[u8; 32], at: Timestamp) -> Result<bool, StoreError>;
    /// Stores a sign-in challenge (the step between password and second factor).
    async fn create_mfa_challenge(
        &self,
        hash: &[u8; 32],
        user_id: UserId,
        at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// The user of a live challenge (unused, unexpired), without using it.
    async fn find_mfa_challenge(&self, hash: &[u8; 32], now: Timestamp) -> Result<Option<UserId>, StoreError>;
    /// Uses a challenge once: `false` when used or expired meanwhile.
    async fn use_mfa_challenge(&self, hash: &[u8; 32], at: Timestamp) -> Result<bool, StoreError>;
}

/// A change to a user's second factors.
#[derive(Debug)]
pub struct MfaChange<'a> {
    /// Whose.
    pub user_id: UserId,
    /// When.
    pub at: Timestamp,
    /// Hashes of the new recovery codes (enable, replace).
    pub recovery_code_hashes: &'a [[u8; 32]],
    /// The session that stays signed in (the one making the change).
    pub keep: Option<SessionId>,
    /// Audit events.
    pub audits: &'a [AuditEvent],
    /// Mail to queue.
    pub mail: &'a [OutboundMail],
}

/// External sign-in: identities, flows, pending identities.
#[async_trait]
pub trait FederationStore: Send + Sync {
    /// The identity with this issuer and subject.
    async fn find_identity(&self, issuer: &str, subject: &str) -> Result<Option<Identity>, StoreError>;
    /// The user's identities.
    async fn list_identities(&self, user_id: UserId) -> Result<Vec<Identity>, StoreError>;
    /// Links an identity (with `audits` and `mail`); `Conflict` when it is linked already.
    async fn insert_identity(
        &self,
        identity: &Identity,
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError>;
    /// A new account (and its Personal Team) that signs in with `identity`.
    async fn create_federated_user(
        &self,
        user: &User,
        team: &Team,
        identity: &Identity,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Unlinks an identity; `NotFound` if not the user's, `Conflict` named
    /// `identities_last_method` (nothing written) when the account would have no way to sign in.
    async fn delete_identity(&self, user_id: UserId, id: IdentityId, audits: &[AuditEvent]) -> Result<(), StoreError>;
    /// Removes the user's password (with `audits` and `mail`); `Conflict` when the account has no
    /// external sign-in to fall back on. Serialized per user with unlinking, so the two together
    /// can never leave an account with no way in.
    async fn remove_password(
        &self,
        user_id: UserId,
        audits: &[AuditEvent],
        mail: &[OutboundMail],
    ) -> Result<(), StoreError>;
    /// Stores a flow.
    async fn create_oidc_flow(&self, flow: &OidcFlow) -> Result<(), StoreError>;
    /// Takes a live flow by its state's hash, once, and only for the browser that began it (its
    /// binding token's hash): a callback replayed in another browser leaves the flow untouched.
    async fn take_oidc_flow(
        &self,
        state_hash: &[u8; 32],
        browser_hash: &[u8; 32],
        at: Timestamp,
    ) -> Result<Option<OidcFlow>, StoreError>;
    /// Stores a pending identity.
    async fn insert_pending_identity(&self, pending: &PendingIdentity) -> Result<(), StoreError>;
    /// Takes a live pending identity by its token's hash, once.
    async fn take_pending_identity(
        &self,
        hash: &[u8; 32],
        at: Timestamp,
    ) -> Result<Option<PendingIdentity>, StoreError>;
}

/// A promotional lot whose expiry has come, with what is left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredLot {
    /// The lot (its grant's entry id).
    pub id: uuid::Uuid,
    /// Its team.
    pub team_id: TeamId,
    /// What is left, in ticks (> 0).
    pub remaining: tollgate_domain::Ticks,
    /// When it expired.
    pub expires_at: Timestamp,
}

/// A node asks for (more of) a credit lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The team.
    pub team_id: TeamId,
    /// The node's current lease of the team, to grow and renew (`None`: take a new one).
    pub lease_id: Option<uuid::Uuid>,
    /// What the node's spends on `lease_id` that have committed come to in all, since the lease
    /// was taken: the lease shrinks by what it had not been told of before (spends do not move
    /// a lease when they commit). Cumulative, so a report applied twice changes nothing more.
    pub spent: tollgate_domain::Ticks,
    /// The node.
    pub node_id: uuid::Uuid,
    /// What must be added at least, or nothing is (a request's hold not covered yet; may be 0
    /// to only renew).
    pub need: tollgate_domain::Ticks,
    /// What to add at most.
    pub want: tollgate_domain::Ticks,
    /// How long the lease lasts from now on the database's clock, in milliseconds.
    pub ttl_ms: i64,
    /// The application's now: which month's invoice the headroom is read from.
    pub now: Timestamp,
    /// Promotional lots expiring before this are not lent (they would be gone before the
    /// lease is spent).
    pub promo_horizon: Timestamp,
    /// The operator's default maximum invoiced spending limit.
    pub default_hard_limit: tollgate_domain::Ticks,
}

/// The answer to a [`LeaseRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseGrant {
    /// `added` (at least what was needed) was added to the lease `lease_id`, which now lasts
    /// `ttl_ms` more. `renewed` is false when it is a new lease: the one named had expired or
    /// been returned, and its credit is no longer the node's.
    Granted {
        /// The lease.
        lease_id: uuid::Uuid,
        /// What was added.
        added: tollgate_domain::Ticks,
        /// Whether the named lease was grown (else a new one was taken).
        renewed: bool,
    },
    /// The team's unleased spendable credit does not cover what was needed; nothing changed.
    Insufficient {
        /// What was spendable and not leased.
        free: tollgate_domain::Ticks,
    },
}

/// Credit leases: slices of a team's spendable credit that a node spends locally.
///
/// **Invariant:** the live leases of a team (not expired on the database's clock), less what
/// their nodes have spent on them and not reported yet, never sum to more than its spendable
/// credit; a grant, a spend and a renewal of the same team are serialized. A spend moves the
/// balance and not the lease (its node reports it later), so until then the stored leases
/// overstate what is lent: other nodes see less free credit, never more.
#[async_trait]
pub trait CreditStore: Send + Sync {
    /// Grows (or takes) a lease, in one transaction that also drops the team's expired leases.
    async fn take_lease(&self, request: &LeaseRequest) -> Result<LeaseGrant, StoreError>;
    /// Extends a live lease by `ttl_ms` from now, shrinking it by what of `spent` (the node's
    /// committed spends on it in all, as in [`LeaseRequest::spent`]) it had not been told of;
    /// `false` when it had expired or is gone.
    async fn renew_lease(
        &self,
        lease_id: uuid::Uuid,
        spent: tollgate_domain::Ticks,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Returns a lease: what is left of it is spendable by any node again.
    async fn return_lease(&self, lease_id: uuid::Uuid) -> Result<(), StoreError>;
    /// What the team's live leases hold in all.
    async fn leased(&self, team_id: TeamId) -> Result<tollgate_domain::Ticks, StoreError>;
}

/// The credit ledger: append-only entries, the balances maintained from them, and promotional
/// lots.
///
/// **Invariant:** a team's balance in each bucket always equals the sum of its entries there,
/// and its promotional balance the sum of its lots' remainders: every write changes the entry,
/// the balance (and the lot) in one transaction.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Appends `entry` with `audit` in one transaction, moving the team's balance (a
    /// promotional grant also opens its lot). `false`, writing nothing, when an entry with the
    /// same idempotency key exists.
    async fn append_ledger_entry(
        &self,
        entry: &tollgate_domain::LedgerEntry,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
    /// The team's balance (zero in both buckets when nothing was ever written).
    async fn balance(&self, team_id: TeamId) -> Result<tollgate_domain::Balance, StoreError>;
    /// The team's entries, newest first, at most `limit`.
    async fn ledger_entries(
        &self,
        team_id: TeamId,
        limit: u32,
    ) -> Result<Vec<tollgate_domain::LedgerEntry>, StoreError>;
    /// The changes of the team's prepaid and promotional credit as xAI lists them: its entries
    /// other than spend, newest first, at most `limit`; and its spend of that credit summed
    /// per billing month, newest month first.
    async fn credit_changes(
        &self,
        team_id: TeamId,
        limit: u32,
    ) -> Result<(Vec<tollgate_domain::LedgerEntry>, Vec<tollgate_domain::MonthlySpend>), StoreError>;
    /// What the team's requests charged in `[from, to)` (a billing month's bounds: a charge's
    /// spends may span its month, never more) come to: lines per model, token kind and price,
    /// and how the charges were paid.
    async fn month_usage(
        &self,
        team_id: TeamId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<tollgate_domain::MonthUsage, StoreError>;
    /// Promotional lots expired by `now` with credit left.
    async fn expired_lots(&self, now: Timestamp) -> Result<Vec<ExpiredLot>, StoreError>;
    /// Writes off `lot` with `entry` (its `promo_expiry`) and `audit`, if it still has exactly
    /// what `lot` says (else `false`, nothing written: it changed meanwhile, the next run sees it).
    async fn expire_lot(
        &self,
        lot: &ExpiredLot,
        entry: &tollgate_domain::LedgerEntry,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;
    /// The team's stored limits: (the Admins' soft limit, the operator's override), in ticks.
    async fn spending_limits(
        &self,
        team_id: TeamId,
    ) -> Result<(Option<tollgate_domain::Ticks>, Option<tollgate_domain::Ticks>), StoreError>;
    /// Sets the Admins' soft limit (`None` clears it), with `audit`, atomically.
    async fn set_soft_limit(
        &self,
        team_id: TeamId,
        limit: Option<tollgate_domain::Ticks>,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Sets the operator's override of the maximum (`None` clears it), with `audit`, atomically.
    async fn set_hard_override(
        &self,
        team_id: TeamId,
        limit: Option<tollgate_domain::Ticks>,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Checks, on one consistent snapshot, every team's balances against the sums of its
    /// entries and lots: the first mismatch found (by team id), or `None`.
    async fn verify_ledger(&self) -> Result<Option<String>, StoreError>;
}

/// A change to a top-up, applied in one transaction only if the top-up is still as the caller
/// read it (`expect_*`): the provider event that caused it (recorded, so a redelivery changes
/// nothing), the new status and taken-back amount, the ledger entry it makes, and its audit.
#[derive(Debug, Clone)]
pub struct TopUpChange<'a> {
    /// The top-up.
    pub top_up_id: uuid::Uuid,
    /// The provider event `(id, type)` behind the change, if any.
    pub event: Option<(&'a str, &'a str)>,
    /// The status it must have now.
    pub expect_status: tollgate_domain::TopUpStatus,
    /// What it must have had taken back now, in cents.
    pub expect_taken_back_cents: i64,
    /// Its new status.
    pub status: tollgate_domain::TopUpStatus,
    /// Why it failed or was refused (kept when `None`).
    pub failure: Option<&'a str>,
    /// What has been taken back in all, in cents.
    pub taken_back_cents: i64,
    /// The provider's payment and method, when now known (kept when `None`).
    pub provider_ref: Option<&'a str>,
    /// The payment method charged (kept when `None`).
    pub payment_method: Option<&'a str>,
    /// The ledger entry (a purchase or a refund), idempotent on its key.
    pub entry: Option<&'a tollgate_domain::LedgerEntry>,
    /// The audit event.
    pub audit: Option<&'a AuditEvent>,
    /// When.
    pub at: Timestamp,
}

/// What became of a conditional change ([`TopUpChange`], [`InvoicePayment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// Written.
    Applied,
    /// Its event was processed before: nothing written.
    Duplicate,
    /// The row is no longer as expected (or gone): nothing written; read it again.
    Stale,
}

/// Payments: the team's customer at the provider, its billing details, top-ups and the
/// provider events processed.
///
/// **Invariant:** a top-up's status, its ledger entries and the event that moved them commit
/// together; an event id is processed at most once; at most one top-up per team is pending.
#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// The team's customer id at the provider, if one was made.
    async fn payment_customer(&self, team_id: TeamId) -> Result<Option<String>, StoreError>;
    /// Records the team's customer id unless one is recorded; returns the recorded one (a
    /// concurrent first writer wins).
    async fn save_payment_customer(
        &self,
        team_id: TeamId,
        provider: &str,
        customer_id: &str,
        at: Timestamp,
    ) -> Result<String, StoreError>;
    /// The team's billing details, if set.
    async fn billing_info(&self, team_id: TeamId) -> Result<Option<tollgate_domain::BillingInfo>, StoreError>;
    /// Sets the team's billing details with `audit`, atomically.
    async fn set_billing_info(
        &self,
        team_id: TeamId,
        info: &tollgate_domain::BillingInfo,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Records `top_up` (pending) with `audit`, unless the team has a pending one: that one is
    /// returned instead, and nothing is written.
    async fn start_top_up(
        &self,
        top_up: &tollgate_domain::TopUp,
        audit: &AuditEvent,
    ) -> Result<tollgate_domain::TopUp, StoreError>;
    /// One top-up of the team.
    async fn top_up(&self, team_id: TeamId, id: uuid::Uuid) -> Result<Option<tollgate_domain::TopUp>, StoreError>;
    /// The top-up whose provider payment is `provider_ref`.
    async fn top_up_by_ref(&self, provider_ref: &str) -> Result<Option<tollgate_domain::TopUp>, StoreError>;
    /// The team's pending top-up, if any.
    async fn pending_top_up(&self, team_id: TeamId) -> Result<Option<tollgate_domain::TopUp>, StoreError>;
    /// The team's top-ups, newest first, at most `limit`.
    async fn top_ups(&self, team_id: TeamId, limit: u32) -> Result<Vec<tollgate_domain::TopUp>, StoreError>;
    /// Applies `change` (see [`TopUpChange`]).
    async fn change_top_up(&self, change: &TopUpChange<'_>) -> Result<Changed, StoreError>;
    /// Records the hosted checkout session a top-up is bought on.
    async fn set_top_up_checkout(
        &self,
        id: uuid::Uuid,
        checkout_id: &str,
        checkout_url: &str,
    ) -> Result<(), StoreError>;
    /// Whether the provider event was processed.
    async fn payment_event_seen(&self, event_id: &str) -> Result<bool, StoreError>;
    /// Records a provider event that changes nothing of ours; `false` when it was seen before.
    async fn record_payment_event(&self, event_id: &str, event_type: &str, at: Timestamp) -> Result<bool, StoreError>;
}

/// Which invoices to list (xAI's filters); all `None`: every invoice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvoiceFilter {
    /// Only those of this billing month (`2026-11`): the month a monthly invoice bills, the
    /// month a receipt was issued in.
    pub month: Option<String>,
    /// Only those of this month or later.
    pub since_month: Option<String>,
    /// Only these.
    pub ids: Vec<uuid::Uuid>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// A change of an invoice's payment state, applied only if it is still `expect` (with the
/// provider event behind it recorded, once, and its audit event).
#[derive(Debug, Clone)]
pub struct InvoicePayment<'a> {
    /// The invoice.
    pub invoice_id: uuid::Uuid,
    /// Its team.
    pub team_id: TeamId,
    /// The state it must be in.
    pub expect: tollgate_domain::InvoiceStatus,
    /// Its new state.
    pub status: tollgate_domain::InvoiceStatus,
    /// Charge attempts made in all.
    pub attempts: u32,
    /// When to try again (`None`: not scheduled).
    pub next_attempt_at: Option<Timestamp>,
    /// Why the last attempt failed (`None` clears it).
    pub failure: Option<&'a str>,
    /// The provider's payment of the latest attempt (kept when `None`).
    pub payment_ref: Option<&'a str>,
    /// When it was paid.
    pub paid_at: Option<Timestamp>,
    /// The provider event `(id, type)` behind the change.
    pub event: Option<(&'a str, &'a str)>,
    /// Its audit event.
    pub audit: Option<&'a AuditEvent>,
    /// Mail it sends (queued in the same transaction).
    pub mail: Option<&'a tollgate_domain::OutboundMail>,
    /// Its ledger entry (a payment: `invoice_payment`, reason the invoice's number).
    pub entry: Option<&'a tollgate_domain::LedgerEntry>,
    /// When.
    pub at: Timestamp,
}

/// Invoices and receipts: issued once, numbered without gaps, never changed but for their
/// payment state.
///
/// **Invariant:** the series counter moves only in the transaction that inserts the invoice
/// numbered with it, so numbers have no gaps; a team's month has at most one monthly invoice and
/// a top-up at most one receipt; the database refuses any change to an issued invoice's lines,
/// amounts or billing details.
#[async_trait]
pub trait InvoiceStore: Send + Sync {
    /// `(team, month)` pairs before `before_month` with invoiced usage and no invoice yet (deleted
    /// teams included).
    async fn months_to_invoice(&self, before_month: &str) -> Result<Vec<(TeamId, String)>, StoreError>;
    /// Succeeded top-ups without a receipt yet.
    async fn top_ups_without_receipt(&self, limit: u32) -> Result<Vec<tollgate_domain::TopUp>, StoreError>;
    /// Issues `invoice` with `audit` in one transaction: its number is the next of `prefix`'s
    /// series and its team name is read there (both as the store sets them). `None`, nothing
    /// written and no number used, when the team's month (or the top-up) has one already.
    async fn issue_invoice(
        &self,
        invoice: &tollgate_domain::Invoice,
        prefix: &str,
        audit: &AuditEvent,
    ) -> Result<Option<tollgate_domain::Invoice>, StoreError>;
    /// Issues credit note `note` (its `corrects` is the invoice, of the same team) with `entry` (a
    /// paid invoice's credit to the team) and `audit`, in one transaction, numbered like
    /// [`Self::issue_invoice`]. An unpaid invoice credited in full becomes void and lifts its
    /// block. `Conflict` named `credit_notes_within_invoice` when the invoice's credit notes would
    /// exceed it; `NotFound` when the team has no such invoice.
    async fn issue_credit_note(
        &self,
        note: &tollgate_domain::Invoice,
        prefix: &str,
        entry: Option<&tollgate_domain::LedgerEntry>,
        audit: &AuditEvent,
    ) -> Result<tollgate_domain::Invoice, StoreError>;
    /// What the invoice's credit notes come to.
    async fn credited(&self, invoice_id: uuid::Uuid) -> Result<tollgate_domain::Ticks, StoreError>;
    /// The team's invoices, newest first.
    async fn invoices(
        &self,
        team_id: TeamId,
        filter: &InvoiceFilter,
    ) -> Result<Vec<tollgate_domain::Invoice>, StoreError>;
    /// One invoice of the team.
    async fn invoice(&self, team_id: TeamId, id: uuid::Uuid) -> Result<Option<tollgate_domain::Invoice>, StoreError>;
    /// An invoice by its number (any team), for the operator.
    async fn invoice_by_number(&self, number: &str) -> Result<Option<tollgate_domain::Invoice>, StoreError>;
    /// The invoice whose latest charge is the provider's payment `payment_ref`.
    async fn invoice_by_payment(&self, payment_ref: &str) -> Result<Option<tollgate_domain::Invoice>, StoreError>;
    /// Unpaid invoices whose next charge attempt is due at `now`.
    async fn invoices_due(&self, now: Timestamp, limit: u32) -> Result<Vec<tollgate_domain::Invoice>, StoreError>;
    /// Claims the invoice's due charge attempt for this node: its next attempt moves to `until`
    /// (when another node may try again, should this one stop midway). `false`: it was not due at
    /// `now` any more (another node claimed it).
    async fn claim_invoice_attempt(
        &self,
        invoice_id: uuid::Uuid,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Teams not blocked yet with a monthly invoice unpaid since before `before`: (team, the
    /// oldest such invoice's number).
    async fn teams_to_block(&self, before: Timestamp) -> Result<Vec<(TeamId, String)>, StoreError>;
    /// Blocks the team for the unpaid invoice `number`, with `audit` and `mail` (`false`:
    /// blocked already, nothing written).
    async fn block_team(
        &self,
        team_id: TeamId,
        number: &str,
        audit: &AuditEvent,
        mail: Option<&tollgate_domain::OutboundMail>,
    ) -> Result<bool, StoreError>;
    /// Applies `change`; `Duplicate` when its event was processed, `Stale` when the invoice is
    /// no longer in `expect`. Paid, it lifts the team's block for it in the same transaction.
    async fn set_invoice_payment(&self, change: &InvoicePayment<'_>) -> Result<Changed, StoreError>;
}

/// A team's billing settings: its auto top-up and low-balance alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BillingSettings {
    /// The auto top-up, when on.
    pub auto_top_up: Option<tollgate_domain::AutoTopUp>,
    /// Mail the Admins when prepaid credit falls below this.
    pub low_balance_alert: Option<tollgate_domain::Ticks>,
}

/// A team the billing watch looks at: its settings and credit now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedTeam {
    /// The team.
    pub team_id: TeamId,
    /// Its settings.
    pub settings: BillingSettings,
    /// Its prepaid credit.
    pub prepaid: tollgate_domain::Ticks,
    /// Whether a top-up of it is pending.
    pub top_up_pending: bool,
}

/// Auto top-up and alert settings, and the alerts sent.
///
/// **Invariant:** an alert is recorded at most once per `(team, kind, key)`, with its mail, in one
/// transaction; so each crossing is mailed once whatever the number of nodes.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// The team's billing settings (all off when never set).
    async fn billing_settings(&self, team_id: TeamId) -> Result<BillingSettings, StoreError>;
    /// Sets the team's billing settings with `audit`, atomically.
    async fn set_billing_settings(
        &self,
        team_id: TeamId,
        settings: &BillingSettings,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
    /// Live teams with an auto top-up or a low-balance alert set.
    async fn watched_teams(&self) -> Result<Vec<WatchedTeam>, StoreError>;
    /// The team's automatic top-ups since `day_ago` (how many) and since `month_start` (their
    /// cents, pending or succeeded).
    async fn auto_top_ups_since(
        &self,
        team_id: TeamId,
        day_ago: Timestamp,
        month_start: Timestamp,
    ) -> Result<(u32, i64), StoreError>;
    /// Records an alert with its mail; `false` (nothing written) when it was sent before.
    async fn record_alert(
        &self,
        team_id: TeamId,
        kind: &str,
        key: &str,
        at: Timestamp,
        mail: Option<&tollgate_domain::OutboundMail>,
    ) -> Result<bool, StoreError>;
    /// Forgets an alert, so the next crossing sends it again.
    async fn clear_alert(&self, team_id: TeamId, kind: &str, key: &str) -> Result<(), StoreError>;
    /// Teams with invoiced usage this month: (team, owed so far).
    async fn invoiced_this_month(&self, month: &str) -> Result<Vec<(TeamId, tollgate_domain::Ticks)>, StoreError>;
    /// Promotional lots with credit left expiring in `[now, until)`: (team, lot, remaining, expiry).
    async fn lots_expiring(
        &self,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<(TeamId, uuid::Uuid, tollgate_domain::Ticks, Timestamp)>, StoreError>;
}

/// A stored response of the Responses API: sealed by the caller, kept until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// `resp_…`.
    pub id: String,
    /// Whose: only this team's keys see it.
    pub team_id: TeamId,
    /// The key that made it.
    pub api_key_id: ApiKeyId,
    /// The public model name.
    pub model: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it is deleted (by the sweep) and stops being found.
    pub expires_at: Timestamp,
    /// The response and its conversation, encrypted.
    pub sealed: Vec<u8>,
}

/// Stored responses.
///
/// **Invariant:** a response is found only by its own team, and only before it expires.
#[async_trait]
pub trait ResponseStore: Send + Sync {
    /// Stores responses, all in one transaction (a group commit).
    async fn insert_responses(&self, responses: &[StoredResponse]) -> Result<(), StoreError>;
    /// The team's response `id`, unless it expired by `now`.
    async fn stored_response(
        &self,
        team_id: TeamId,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<StoredResponse>, StoreError>;
    /// Deletes the team's response `id`; `false` when there was none (or it had expired).
    async fn delete_response(&self, team_id: TeamId, id: &str, now: Timestamp) -> Result<bool, StoreError>;
}

/// A deferred chat completion, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeferred {
    /// The request's id (what the client polls with).
    pub id: String,
    /// Whose: only this team's keys fetch it.
    pub team_id: TeamId,
    /// The key that asked.
    pub api_key_id: ApiKeyId,
    /// The public model name.
    pub model: String,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// A request still pending then was lost (its node stopped).
    pub lost_after: Timestamp,
    /// When it is deleted, fetched or not.
    pub expires_at: Timestamp,
}

/// What fetching a deferred completion found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeferredTake {
    /// Still running.
    Pending,
    /// Finished (taken: it is gone now): the status the caller recorded and its sealed body.
    Finished {
        /// Whether it succeeded.
        done: bool,
        /// The status the surface recorded with it.
        http_status: u16,
        /// The body, sealed.
        sealed: Vec<u8>,
    },
    /// Pending past `lost_after` (taken: it is gone now).
    Lost,
}

/// Deferred chat completions.
///
/// **Invariant:** a finished or lost request is taken exactly once (the row is deleted by the
/// read that returns it), only by its own team, and never after it expires.
#[async_trait]
pub trait DeferredStore: Send + Sync {
    /// Records a pending request.
    async fn insert_deferred(&self, deferred: &NewDeferred) -> Result<(), StoreError>;
    /// Finishes a pending request; `false` when it is no longer pending (taken as lost, or
    /// expired).
    async fn finish_deferred(
        &self,
        id: &str,
        done: bool,
        http_status: u16,
        sealed: &[u8],
        at: Timestamp,
    ) -> Result<bool, StoreError>;
    /// The team's request `id` as it stands at `now`, taking it if it is over; `None` when
    /// there is none (never was, another team's, already taken, or expired).
    async fn take_deferred(
        &self,
        team_id: TeamId,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<DeferredTake>, StoreError>;
}

/// Rate-limit tiers: read on a team's first request (then cached a while), raised when its
/// spend reaches a higher one (never lowered), pinned by the operator.
#[async_trait]
pub trait TierStore: Send + Sync {
    /// What decides the team's tier: the tier it reached, the operator's pin, and its prepaid
    /// purchases plus paid monthly invoices.
    async fn tier_standing(&self, team_id: TeamId) -> Result<tollgate_domain::ratelimit::TierStanding, StoreError>;
    /// Records that the team reached `reached` (a lower tier than it has is ignored).
    async fn raise_tier(&self, team_id: TeamId, reached: u32, at: Timestamp) -> Result<(), StoreError>;
    /// Pins the team to a tier (`None` lets its spend decide again), with `audit`, atomically.
    async fn pin_tier(
        &self,
        team_id: TeamId,
        pinned: Option<u32>,
        at: Timestamp,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
}

/// A request's bodies kept for abuse review: sealed (compressed, encrypted) by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedBody {
    /// The request (its usage record's id).
    pub request_id: tollgate_domain::RequestId,
    /// Its team.
    pub team_id: TeamId,
    /// Its key.
    pub api_key_id: ApiKeyId,
    /// The endpoint's name.
    pub endpoint: String,
    /// The model's public name.
    pub model: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// The sealed bodies.
    pub sealed: Vec<u8>,
}

/// Request and response bodies kept for a while (abuse review), then deleted.
#[async_trait]
pub trait RequestBodyStore: Send + Sync {
    /// Keeps `rows` (a request kept before is kept as it was).
    async fn insert_request_bodies(&self, rows: &[RetainedBody]) -> Result<(), StoreError>;
    /// The bodies of `request_id`, if still kept.
    async fn request_body(&self, request_id: tollgate_domain::RequestId) -> Result<Option<RetainedBody>, StoreError>;
    /// Deletes every body made before `before`: whole day partitions on PostgreSQL (making the
    /// next days' partitions as of `now` too), bounded batches otherwise. How many were deleted.
    async fn prune_request_bodies(&self, before: Timestamp, now: Timestamp) -> Result<u64, StoreError>;
}

/// Everything Tollgate persists.
#[async_trait]
pub trait Store:
    AccountStore
    + TeamStore
    + KeyStore
    + UsageStore
    + AuditStore
    + MailStore
    + MfaStore
    + FederationStore
    + LedgerStore
    + CreditStore
    + PaymentStore
    + InvoiceStore
    + AlertStore
    + ResponseStore
    + DeferredStore
    + TierStore
    + RequestBodyStore
{
    /// Which database this is.
    fn backend(&self) -> Backend;
    /// Applies pending migrations. Refuses a database whose applied migrations differ from the
    /// ones this binary carries (edited or unknown), and applies each migration atomically.
    /// Then binds the database to this store's audit chain key (by fingerprint): a node started
    /// with a different key is refused, since its events would not verify.
    async fn migrate(&self) -> Result<(), OpenError>;
    /// A cheap round trip, for readiness probes.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Refreshes the query planner's statistics (after a bulk load).
    async fn analyze(&self) -> Result<(), StoreError>;
    /// Deletes what `sweep` says is over, in one transaction.
    async fn sweep(&self, sweep: &tollgate_domain::Sweep) -> Result<tollgate_domain::Swept, StoreError>;
    /// Closes the connection pools, waiting for connections in use to be returned.
    async fn close(&self);
}

/// Connects to the database named by `url` (`sqlite://…` or `postgres://…`), without migrating.
/// Audit events are chained with `audit_key`.
pub async fn connect(url: &str, audit_key: AuditChainKey) -> Result<Arc<dyn Store>, OpenError> {
    match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("sqlite") => Ok(Arc::new(sqlite::SqlStore::connect(url, audit_key).await?)),
        Some("postgres" | "postgresql") => Ok(Arc::new(postgres::SqlStore::connect(url, audit_key).await?)),
        _ => Err(OpenError::UnsupportedScheme),
    }
}
