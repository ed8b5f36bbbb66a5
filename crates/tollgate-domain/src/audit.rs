//! Audit events: who did what, when, from where, with what outcome. Services build them and
//! stores commit them in the same transaction as the change they describe.
//!
//! **Tamper evidence.** Each team's events form a hash chain: every stored event carries
//! `HMAC-SHA-256(chain key, previous hash ‖ canonical encoding of the event)`, so editing,
//! removing or reordering an event breaks every link after it, and nobody without the server's
//! chain key can forge a replacement. [`ChainVerifier`] walks a chain and names the first broken
//! link. Retention prunes a chain's oldest events and keeps a MAC'd boundary ([`PruneBoundary`])
//! from which verification resumes.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::clock::Timestamp;
use crate::ids::{ApiKeyId, AuditEventId, ManagementKeyId, TeamId, UserId};

macro_rules! audit_actions {
    ($($variant:ident => $doc:literal,)*) => {
        /// Every action the audit log records: a stable list, named like xAI's
        /// (`CreateApiKey`, `ListApiKeys`, …). Stored and shown as [`AuditAction::as_str`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum AuditAction {
            $(#[doc = $doc] $variant,)*
        }

        impl AuditAction {
            /// All actions, in documentation order.
            pub const ALL: &'static [AuditAction] = &[$(AuditAction::$variant,)*];

            /// The stored name, e.g. `CreateApiKey`.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(AuditAction::$variant => stringify!($variant),)*
                }
            }

            /// What the action means, for the documentation.
            #[must_use]
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(AuditAction::$variant => $doc,)*
                }
            }
        }
    };
}

audit_actions! {
    CreateUser => "An account was created, with its Personal Team.",
    SignIn => "Someone signed in (outcome success), or failed to (outcome failure).",
    Reauthenticate => "Someone confirming a sensitive change gave a wrong password (outcome failure).",
    SignOut => "A session was ended by signing out.",
    EndSession => "A session was ended from the session list.",
    EndOtherSessions => "Every session but the current one was ended.",
    RequestEmailVerification => "An email verification link was sent.",
    VerifyEmail => "An email address was verified by its link.",
    RequestPasswordReset => "A password reset link was sent.",
    ResetPassword => "A password was reset by its link; every session ended.",
    ChangePassword => "A password was changed by its owner; their other sessions ended.",
    UpdateProfile => "An account's display name changed.",
    RemovePassword => "The account's password was removed; it signs in with its external sign-ins.",
    LinkIdentity => "An external sign-in (OpenID Connect) was linked to the account.",
    UnlinkIdentity => "An external sign-in was removed from the account.",
    DeleteAccount => "An account was deleted by its owner (restorable for 30 days); it left its teams' member lists.",
    RestoreAccount => "A deleted account was restored within its 30 days.",
    PurgeAccount => "A deleted account's personal data was purged; its events keep only its id.",
    RequestEmailChange => "A change of email address was asked for; the new address must confirm it.",
    ChangeEmail => "The account's email address changed (confirmed from the new address); every session ended.",
    ReportEmailChange => "The owner reported an email change they did not ask for; it was stopped and every session ended.",
    EnableMfa => "TOTP became the account's second factor, with new recovery codes.",
    DisableMfa => "The account's second factor was removed.",
    RegenerateRecoveryCodes => "A new set of recovery codes replaced the old one.",
    AddPasskey => "A passkey was added as a second factor; the owner's other sessions ended.",
    RemovePasskey => "A passkey was removed; the owner's other sessions ended.",
    CreateTeam => "A team was created; its creator is its Admin.",
    UpdateTeam => "The team's name or description changed.",
    DeleteTeam => "The team was deleted: its keys stopped working, its prepaid credits were forfeited.",
    AddTeamMember => "Someone with an account was added to the team.",
    ChangeTeamMemberRole => "A member's role changed.",
    RemoveTeamMember => "A member was removed from the team (or left it); their API keys stay with the team.",
    InviteTeamMember => "An address with no account yet was invited to the team.",
    RevokeInvitation => "A pending invitation was withdrawn.",
    AcceptInvitation => "An invitation became a membership.",
    AutoJoinTeam => "Someone with a verified address at one of the team's verified domains joined as a Member.",
    AddDomain => "A domain to verify was added to the team.",
    VerifyDomain => "A domain's DNS record was found: the domain is verified for the team.",
    UnverifyDomain => "A verified domain's DNS record is gone: new sign-ups there no longer join.",
    RemoveDomain => "A domain was removed from the team.",
    CreateManagementKey => "A management key was created for the team.",
    CreateApiKey => "An API key was created for the team.",
    ListApiKeys => "The team's API keys were listed.",
    GetApiKey => "One API key was read.",
    UpdateApiKey => "An API key's name, ACLs, limits, expiry or disabled state changed.",
    RotateApiKey => "An API key got a new secret (the old one possibly kept for a grace period).",
    DeleteApiKey => "An API key was deleted.",
    BlockApiKey => "An API key was blocked by the platform (a leak was reported, or the operator blocked it).",
    SetKeyPolicy => "A team Admin set (or lifted) the team's key policy: the widest ACLs and highest limits a Member's key may have.",
    GrantCredits => "The operator granted credit to the team (prepaid, or promotional with an expiry).",
    AdjustCredits => "The operator adjusted the team's prepaid credit (either sign), with a reason.",
    ExpireCredits => "Promotional credit left in a lot expired.",
    SetBillingInfo => "A team Admin set the team's billing details (name, address, tax number).",
    SetDefaultPaymentMethod => "A team Admin chose the payment method top-ups and invoices are charged to.",
    TopUpCredits => "Prepaid credit was bought: asked for (pending), granted when the money was captured, or failed.",
    RefuseTopUp => "A purchase was refused before money moved: the card comes from a country the operator refuses (outcome failure).",
    RefundCredits => "Bought credit was taken back because its payment was refunded or disputed at the payment provider.",
    IssueInvoice => "An invoice was issued: a month's invoiced usage, or a receipt for a purchase (numbered, never changed after).",
    PayInvoice => "An invoice was paid (charged, or marked paid by the operator), or charging it failed (outcome failure).",
    BlockTeam => "A team's requests were stopped: a monthly invoice stayed unpaid past its grace (paying it lifts the block), or the operator blocked the team, saying why.",
    UnblockTeam => "The operator lifted their block of the team's requests.",
    SetBillingSettings => "A team Admin set the team's auto top-up (threshold, amount, monthly maximum) or low-balance alert.",
    SetSpendingLimit => "A team's monthly invoiced spending limit was set (by its Admins), or its maximum (by the operator).",
    SetRateLimitTier => "The operator pinned the team to a rate-limit tier, or let its spend decide again.",
    SetDataUse => "How the team's data may be used changed: its Admins allowed or refused training on it, or the operator granted or withdrew zero retention.",
    ReadRequestBodies => "The operator read a request's kept bodies (request and answer) for an abuse review, saying why.",
    EndRotationGrace => "A rotated API key's previous secret leaked while still in its grace period: the grace ended, the current secret works on.",
    ReportLeakedSecret => "A leaked secret was reported that opens nothing any more (rotated out, key or team deleted): nothing changed.",
    ListManagementKeys => "The team's management keys were listed.",
    RevokeManagementKey => "A management key was revoked.",
    ListAuditEvents => "The team's audit log was searched.",
    ExportAuditEvents => "The team's audit log was exported.",
    PruneAuditEvents => "Events older than the retention period were removed from the team's audit log.",
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in person; `email` as it was at the time.
    User { id: UserId, email: String },
    /// A management key of a team.
    ManagementKey { id: ManagementKeyId, name: String },
    /// An inference API key.
    ApiKey { id: ApiKeyId },
    /// The operator, through the `tollgate` command line.
    Operator,
    /// Tollgate itself (jobs, automatic actions).
    System,
}

impl Actor {
    /// The stored kind: `user`, `management_key`, `api_key`, `operator`, `system`.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Actor::User { .. } => "user",
            Actor::ManagementKey { .. } => "management_key",
            Actor::ApiKey { .. } => "api_key",
            Actor::Operator => "operator",
            Actor::System => "system",
        }
    }

    /// The actor's id as text, when it has one.
    #[must_use]
    pub fn id(&self) -> Option<String> {
        match self {
            Actor::User { id, .. } => Some(id.to_string()),
            Actor::ManagementKey { id, .. } => Some(id.to_string()),
            Actor::ApiKey { id } => Some(id.to_string()),
            Actor::Operator | Actor::System => None,
        }
    }

    /// A human label: the email or key name.
    #[must_use]
    pub fn label(&self) -> Option<&str> {
        match self {
            Actor::User { email, .. } => Some(email),
            Actor::ManagementKey { name, .. } => Some(name),
            Actor::ApiKey { .. } | Actor::Operator | Actor::System => None,
        }
    }
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused (permission, validation).
    Denied,
    /// It failed.
    Failure,
}

impl Outcome {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The event's id.
    pub id: AuditEventId,
    /// When it happened.
    pub at: Timestamp,
    /// The team it concerns, if any.
    pub team_id: Option<TeamId>,
    /// Who acted.
    pub actor: Actor,
    /// What was done.
    pub action: AuditAction,
    /// A readable sentence.
    pub description: String,
    /// What was acted on, e.g. `api_key:<id>`.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The client's address, when known.
    pub ip: Option<String>,
    /// The client's user agent, when known.
    pub user_agent: Option<String>,
    /// The request that caused it.
    pub request_id: Option<String>,
}

/// Where a request came from; attached to every audit event it causes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's address.
    pub ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
}

impl AuditEvent {
    /// A refused attempt: `action` was asked for and not allowed.
    #[must_use]
    pub fn denied(
        at: Timestamp,
        team_id: Option<TeamId>,
        actor: Actor,
        action: AuditAction,
        description: String,
        target: Option<String>,
        context: &RequestContext,
    ) -> Self {
        Self {
            outcome: Outcome::Denied,
            ..Self::success(at, team_id, actor, action, description, target, context)
        }
    }

    /// A successful event.
    #[must_use]
    pub fn success(
        at: Timestamp,
        team_id: Option<TeamId>,
        actor: Actor,
        action: AuditAction,
        description: String,
        target: Option<String>,
        context: &RequestContext,
    ) -> Self {
        Self {
            id: AuditEventId::new(),
            at,
            team_id,
            actor,
            action,
            description,
            target,
            outcome: Outcome::Success,
            ip: context.ip.clone(),
            user_agent: context.user_agent.clone(),
            request_id: context.request_id.clone(),
        }
    }
}

/// An event as stored and read back: the event's fields in their stored form, plus its place in
/// its team's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The event's id (xAI's "Event ID").
    pub id: AuditEventId,
    /// When it happened (UTC, microseconds).
    pub at: Timestamp,
    /// The team it concerns; `None` for platform events.
    pub team_id: Option<TeamId>,
    /// Its position in the chain, from 1. `None` for events written before chains existed.
    pub seq: Option<u64>,
    /// `user`, `management_key`, `api_key`, `operator` or `system`.
    pub actor_kind: String,
    /// The actor's id.
    pub actor_id: Option<String>,
    /// The actor's email or key name at the time; `None` once erased.
    pub actor_label: Option<String>,
    /// Keyed digest of the label, which the chain commits to, so the label itself can be erased
    /// (account purge) without breaking the chain.
    pub actor_label_digest: Option<ChainHash>,
    /// Action name, e.g. `CreateApiKey`.
    pub action: String,
    /// Readable description.
    pub description: String,
    /// What was acted on.
    pub target: Option<String>,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    /// Client address.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// This event's link hash; `None` for events written before chains existed.
    pub hash: Option<ChainHash>,
}

/// A link hash: HMAC-SHA-256 output.
pub type ChainHash = [u8; 32];

/// The hash before a chain's first event.
pub const GENESIS: ChainHash = [0; 32];

/// The server-side key of the audit hash chains. Without it nobody can produce a valid link, so
/// someone who can write to the database still cannot hide an edit.
#[derive(Clone)]
pub struct AuditChainKey([u8; 32]);

impl std::fmt::Debug for AuditChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditChainKey(…)")
    }
}

impl AuditChainKey {
    /// A key from its 32 bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut bytes = [0; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A 256-bit key for `purpose`, derived from this one (so one server secret serves several
    /// uses without any two sharing a key), e.g. the key sealing TOTP seeds.
    #[must_use]
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut mac = self.mac(b"tollgate.derive.v1");
        mac.update(purpose);
        mac.finalize().into_bytes().into()
    }

    /// The key as 64 hex digits, for its key file.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A key from 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    /// When the text is not 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, &'static str> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| "an audit chain key is 64 hex digits")?;
        Ok(Self(bytes))
    }

    /// A short public identifier of the key (not the key): lets a node notice that it was given a
    /// different key from the one the database's chains were written with.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let mut mac = self.mac(b"tollgate.audit.fingerprint.v1");
        mac.update(&[]);
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    fn mac(&self, domain: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(domain);
        mac.update(&[0]);
        mac
    }

    /// The keyed digest of an actor label that the chain commits to.
    #[must_use]
    pub fn label_digest(&self, label: &str) -> ChainHash {
        let mut mac = self.mac(b"tollgate.audit.label.v1");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The link hash of `record` following `prev`. Covers every field except the erasable label
    /// itself (its digest stands in for it).
    #[must_use]
    pub fn link_hash(&self, prev: &ChainHash, seq: u64, record: &AuditRecord) -> ChainHash {
        let mut mac = self.mac(b"tollgate.audit.event.v1");
        mac.update(prev);
        mac.update(&seq.to_be_bytes());
        mac.update(record.id.as_uuid().as_bytes());
        mac.update(&record.at.timestamp_micros().to_be_bytes());
        match record.team_id {
            Some(team) => {
                mac.update(&[1]);
                mac.update(team.as_uuid().as_bytes());
            }
            None => mac.update(&[0]),
        }
        let text = |mac: &mut Hmac<Sha256>, value: Option<&[u8]>| match value {
            Some(bytes) => {
                mac.update(&[1]);
                mac.update(&(bytes.len() as u64).to_be_bytes());
                mac.update(bytes);
            }
            None => mac.update(&[0]),
        };
        text(&mut mac, Some(record.actor_kind.as_bytes()));
        text(&mut mac, record.actor_id.as_deref().map(str::as_bytes));
        text(&mut mac, record.actor_label_digest.as_ref().map(<[u8; 32]>::as_slice));
        text(&mut mac, Some(record.action.as_bytes()));
        text(&mut mac, Some(record.description.as_bytes()));
        text(&mut mac, record.target.as_deref().map(str::as_bytes));
        text(&mut mac, Some(record.outcome.as_bytes()));
        text(&mut mac, record.ip.as_deref().map(str::as_bytes));
        text(&mut mac, record.user_agent.as_deref().map(str::as_bytes));
        text(&mut mac, record.request_id.as_deref().map(str::as_bytes));
        mac.finalize().into_bytes().into()
    }

    /// The MAC that authenticates a prune boundary, so a forged boundary cannot hide removed
    /// events.
    #[must_use]
    pub fn boundary_mac(&self, team_id: Option<TeamId>, seq: u64, hash: &ChainHash) -> ChainHash {
        let mut mac = self.mac(b"tollgate.audit.boundary.v1");
        match team_id {
            Some(team) => {
                mac.update(&[1]);
                mac.update(team.as_uuid().as_bytes());
            }
            None => mac.update(&[0]),
        }
        mac.update(&seq.to_be_bytes());
        mac.update(hash);
        mac.finalize().into_bytes().into()
    }

    /// `event` as it is stored at position `seq` after `prev`, with its label digest and link hash.
    #[must_use]
    pub fn seal(&self, event: &AuditEvent, seq: u64, prev: &ChainHash) -> AuditRecord {
        let label = event.actor.label().map(str::to_owned);
        let mut record = AuditRecord {
            id: event.id,
            at: event.at,
            team_id: event.team_id,
            seq: Some(seq),
            actor_kind: event.actor.kind().to_owned(),
            actor_id: event.actor.id(),
            actor_label_digest: label.as_deref().map(|l| self.label_digest(l)),
            actor_label: label,
            action: event.action.as_str().to_owned(),
            description: event.description.clone(),
            target: event.target.clone(),
            outcome: event.outcome.as_str().to_owned(),
            ip: event.ip.clone(),
            user_agent: event.user_agent.clone(),
            request_id: event.request_id.clone(),
            hash: None,
        };
        record.hash = Some(self.link_hash(prev, seq, &record));
        record
    }
}

/// Where a pruned chain now starts: the last removed event's position and hash, MAC'd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneBoundary {
    /// The last removed event's position.
    pub seq: u64,
    /// The last removed event's hash.
    pub hash: ChainHash,
    /// `boundary_mac` of the two.
    pub mac: ChainHash,
}

/// The head of a chain as the store keeps it: the last event's position and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The last event's position (0 before any).
    pub seq: u64,
    /// The last event's hash.
    pub hash: ChainHash,
}

/// Why a chain does not verify. Each names the first broken link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The event's hash does not match its content and predecessor: it (or its predecessor's
    /// hash) was edited.
    #[error("event {id} (#{seq}) does not match its hash: it was edited, or its predecessor's hash was")]
    Altered {
        /// The event.
        id: AuditEventId,
        /// Its position.
        seq: u64,
    },
    /// Events are missing between two positions.
    #[error("events #{from}..#{to} are missing: removed behind the application's back")]
    Missing {
        /// The first missing position.
        from: u64,
        /// The last missing position.
        to: u64,
    },
    /// The label does not match the digest the chain committed to.
    #[error("event {id} (#{seq}) has an actor label that was edited")]
    LabelAltered {
        /// The event.
        id: AuditEventId,
        /// Its position.
        seq: u64,
    },
    /// The prune boundary is not one the server wrote.
    #[error("the retention boundary at #{seq} was not written by this server (or with this key)")]
    ForgedBoundary {
        /// The boundary's claimed position.
        seq: u64,
    },
    /// The head does not point at the last event: the newest events were removed, or the head
    /// was edited.
    #[error("the chain head says #{head_seq}, but the last event is #{last_seq}")]
    HeadMismatch {
        /// The head's position.
        head_seq: u64,
        /// The last event found.
        last_seq: u64,
    },
}

/// Walks one chain in order, event by event, so a chain of any length is checked in pages.
#[derive(Debug)]
pub struct ChainVerifier<'k> {
    key: &'k AuditChainKey,
    team_id: Option<TeamId>,
    prev_seq: u64,
    prev_hash: ChainHash,
    checked: u64,
}

impl<'k> ChainVerifier<'k> {
    /// A verifier for the chain of `team_id`, starting after the prune `boundary` if there is one.
    ///
    /// # Errors
    /// [`ChainBreak::ForgedBoundary`] when the boundary's MAC is wrong.
    pub fn new(
        key: &'k AuditChainKey,
        team_id: Option<TeamId>,
        boundary: Option<&PruneBoundary>,
    ) -> Result<Self, ChainBreak> {
        let (prev_seq, prev_hash) = match boundary {
            None => (0, GENESIS),
            Some(b) => {
                let expected = key.boundary_mac(team_id, b.seq, &b.hash);
                if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &b.mac[..])) {
                    return Err(ChainBreak::ForgedBoundary { seq: b.seq });
                }
                (b.seq, b.hash)
            }
        };
        Ok(Self {
            key,
            team_id,
            prev_seq,
            prev_hash,
            checked: 0,
        })
    }

    /// Checks the next event of the chain (events in `seq` order, unchained ones skipped by the
    /// caller).
    ///
    /// # Errors
    /// The first broken link.
    pub fn check(&mut self, record: &AuditRecord) -> Result<(), ChainBreak> {
        let (Some(seq), Some(hash)) = (record.seq, record.hash) else {
            return Ok(());
        };
        if seq != self.prev_seq + 1 {
            return Err(ChainBreak::Missing {
                from: self.prev_seq + 1,
                to: seq.saturating_sub(1),
            });
        }
        let tampered = record.team_id != self.team_id
            || !bool::from(subtle::ConstantTimeEq::ct_eq(
                &self.key.link_hash(&self.prev_hash, seq, record)[..],
                &hash[..],
            ));
        if tampered {
            return Err(ChainBreak::Altered { id: record.id, seq });
        }
        if let (Some(label), Some(digest)) = (&record.actor_label, &record.actor_label_digest) {
            if self.key.label_digest(label) != *digest {
                return Err(ChainBreak::LabelAltered { id: record.id, seq });
            }
        }
        self.prev_seq = seq;
        self.prev_hash = hash;
        self.checked += 1;
        Ok(())
    }

    /// Ends the walk against the chain's stored head; returns how many events were checked.
    ///
    /// # Errors
    /// [`ChainBreak::HeadMismatch`] when the newest events are gone or the head was moved.
    pub fn finish(self, head: &ChainHead) -> Result<u64, ChainBreak> {
        if head.seq != self.prev_seq || head.hash != self.prev_hash {
            return Err(ChainBreak::HeadMismatch {
                head_seq: head.seq,
                last_seq: self.prev_seq,
            });
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> AuditEvent {
        AuditEvent::success(
            chrono::DateTime::from_timestamp(1_790_000_000 + i64::from(n), 0).unwrap(),
            Some(TeamId::from_uuid(uuid::Uuid::from_u128(7))),
            Actor::User {
                id: UserId::from_uuid(uuid::Uuid::from_u128(1)),
                email: "ada@example.com".into(),
            },
            AuditAction::ListApiKeys,
            format!("listed keys, time {n}"),
            None,
            &RequestContext::default(),
        )
    }

    fn chain(key: &AuditChainKey, n: u32) -> (Vec<AuditRecord>, ChainHead) {
        let mut prev = GENESIS;
        let mut records = Vec::new();
        for i in 1..=n {
            let record = key.seal(&event(i), u64::from(i), &prev);
            prev = record.hash.unwrap();
            records.push(record);
        }
        (
            records,
            ChainHead {
                seq: u64::from(n),
                hash: prev,
            },
        )
    }

    fn verify(key: &AuditChainKey, records: &[AuditRecord], head: &ChainHead) -> Result<u64, ChainBreak> {
        let mut verifier = ChainVerifier::new(key, records.first().and_then(|r| r.team_id), None)?;
        for record in records {
            verifier.check(record)?;
        }
        verifier.finish(head)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let key = AuditChainKey::from_bytes([9; 32]);
        let (records, head) = chain(&key, 5);
        assert_eq!(verify(&key, &records, &head), Ok(5));
    }

    #[test]
    fn each_kind_of_tampering_names_the_first_broken_link() {
        let key = AuditChainKey::from_bytes([9; 32]);
        let (records, head) = chain(&key, 5);

        let mut edited = records.clone();
        edited[2].description = "nothing happened".into();
        assert_eq!(
            verify(&key, &edited, &head),
            Err(ChainBreak::Altered {
                id: records[2].id,
                seq: 3
            })
        );

        let mut removed = records.clone();
        removed.remove(1);
        assert_eq!(
            verify(&key, &removed, &head),
            Err(ChainBreak::Missing { from: 2, to: 2 })
        );

        let truncated = &records[..4];
        assert_eq!(
            verify(&key, truncated, &head),
            Err(ChainBreak::HeadMismatch {
                head_seq: 5,
                last_seq: 4
            })
        );

        let mut relabelled = records.clone();
        relabelled[0].actor_label = Some("mallory@example.com".into());
        assert_eq!(
            verify(&key, &relabelled, &head),
            Err(ChainBreak::LabelAltered {
                id: records[0].id,
                seq: 1
            })
        );

        // An erased label (account purge) still verifies: the chain commits to its digest.
        let mut erased = records.clone();
        erased[0].actor_label = None;
        assert_eq!(verify(&key, &erased, &head), Ok(5));

        let other_key = AuditChainKey::from_bytes([8; 32]);
        assert!(matches!(
            verify(&other_key, &records, &head),
            Err(ChainBreak::Altered { seq: 1, .. })
        ));
    }

    #[test]
    fn verification_resumes_from_a_genuine_boundary_only() {
        let key = AuditChainKey::from_bytes([9; 32]);
        let (records, head) = chain(&key, 5);
        let team = records[0].team_id;
        let last_pruned = &records[1];
        let boundary = PruneBoundary {
            seq: 2,
            hash: last_pruned.hash.unwrap(),
            mac: key.boundary_mac(team, 2, &last_pruned.hash.unwrap()),
        };
        let mut verifier = ChainVerifier::new(&key, team, Some(&boundary)).unwrap();
        for record in &records[2..] {
            verifier.check(record).unwrap();
        }
        assert_eq!(verifier.finish(&head), Ok(3));

        // Someone who deletes the oldest events and writes their own boundary is caught.
        let forged = PruneBoundary {
            mac: [0; 32],
            ..boundary
        };
        assert_eq!(
            ChainVerifier::new(&key, team, Some(&forged)).unwrap_err(),
            ChainBreak::ForgedBoundary { seq: 2 }
        );
    }

    #[test]
    fn the_key_round_trips_through_hex_and_never_prints() {
        let key = AuditChainKey::generate(&mut rand::thread_rng());
        assert_eq!(
            AuditChainKey::from_hex(&format!("{}\n", key.to_hex()))
                .unwrap()
                .fingerprint(),
            key.fingerprint()
        );
        assert!(AuditChainKey::from_hex("abc").is_err());
        assert_eq!(format!("{key:?}"), "AuditChainKey(…)");
    }

    #[test]
    fn action_names_are_unique() {
        let mut names: Vec<_> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditAction::ALL.len());
    }
}
