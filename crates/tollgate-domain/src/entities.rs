//! The platform's records, as the store returns them and services use them.

use crate::acl::AclSet;
use crate::clock::Timestamp;
use crate::email::Email;
use crate::ids::{ApiKeyId, DomainId, IdentityId, InvitationId, ManagementKeyId, PasskeyId, TeamId, UserId};
use crate::role::Role;

/// A person's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Email address.
    pub email: Email,
    /// Name shown in the console.
    pub display_name: String,
    /// Argon2id PHC string; `None` for accounts without a password.
    pub password_hash: Option<String>,
    /// When the account was created.
    pub created_at: Timestamp,
    /// When the account proved it owns its email address (by a link); `None` until then.
    pub email_verified_at: Option<Timestamp>,
    /// When TOTP became the account's second factor; `None` without one.
    pub totp_enabled_at: Option<Timestamp>,
    /// How many passkeys the account has (each is a second factor).
    pub passkeys: u32,
    /// When its owner deleted the account; it can be restored until `purge_after`.
    pub deleted_at: Option<Timestamp>,
    /// When a deleted account's personal data is purged.
    pub purge_after: Option<Timestamp>,
}

impl User {
    /// Whether signing in (and confirming sensitive changes) needs a second factor: TOTP or a
    /// passkey.
    #[must_use]
    pub fn has_second_factor(&self) -> bool {
        self.totp_enabled_at.is_some() || self.passkeys > 0
    }
}

/// A team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    /// Id.
    pub id: TeamId,
    /// Display name.
    pub name: String,
    /// What the team is for (optional).
    pub description: Option<String>,
    /// Whether this is a user's Personal Team.
    pub personal: bool,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A person in a team's member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub user_id: UserId,
    /// Their address.
    pub email: Email,
    /// Their name.
    pub display_name: String,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_at: Timestamp,
    /// How their account signs in: `password`, then each linked provider's name. Accounts may
    /// share an address; this tells them apart beside it.
    pub sign_in_methods: Vec<String>,
}

/// An invitation to join a team, for an address with no account yet (or not yet accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// Id.
    pub id: InvitationId,
    /// The team.
    pub team_id: TeamId,
    /// Who is invited.
    pub email: Email,
    /// The role they get.
    pub role: Role,
    /// The Admin who invited them.
    pub invited_by: Option<UserId>,
    /// When.
    pub created_at: Timestamp,
    /// It stops working then.
    pub expires_at: Timestamp,
    /// When it became a membership.
    pub accepted_at: Option<Timestamp>,
    /// When an Admin withdrew it.
    pub revoked_at: Option<Timestamp>,
}

/// A domain a team has verified, or is verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamDomain {
    /// Id.
    pub id: DomainId,
    /// The team.
    pub team_id: TeamId,
    /// The domain, lower case.
    pub domain: String,
    /// What the TXT record must carry (`domain-verification=<token>`).
    pub token: String,
    /// When it was added.
    pub created_at: Timestamp,
    /// Since when the record has been found; `None` while unverified.
    pub verified_at: Option<Timestamp>,
    /// The last lookup.
    pub checked_at: Option<Timestamp>,
    /// Why the last lookup did not verify it.
    pub last_error: Option<String>,
}

/// An external identity an account signs in with, keyed by (issuer, subject): never by email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Id.
    pub id: IdentityId,
    /// Whose.
    pub user_id: UserId,
    /// The configured provider's name.
    pub provider: String,
    /// The provider's issuer URL.
    pub issuer: String,
    /// The provider's subject for the person.
    pub subject: String,
    /// The address the provider gave when it was linked, if any.
    pub email: Option<String>,
    /// When it was linked.
    pub linked_at: Timestamp,
}

/// A sign-in at an external provider in progress (between the redirect and the callback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcFlow {
    /// SHA-256 of the `state` sent to the provider.
    pub state_hash: [u8; 32],
    /// Which provider.
    pub provider: String,
    /// The ID token must carry this.
    pub nonce: String,
    /// PKCE: the verifier of the challenge sent.
    pub pkce_verifier: String,
    /// SHA-256 of the cookie binding the flow to the browser that began it.
    pub browser_hash: [u8; 32],
    /// For linking: the signed-in account the identity goes to.
    pub link_user_id: Option<UserId>,
    /// When it began.
    pub created_at: Timestamp,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
}

/// An external identity that signed in but is not linked yet: it needs an address, or the owner
/// of the account with its address must sign in to link it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIdentity {
    /// SHA-256 of the token handed to the browser.
    pub token_hash: [u8; 32],
    /// Which provider.
    pub provider: String,
    /// Issuer.
    pub issuer: String,
    /// Subject.
    pub subject: String,
    /// The address the provider gave, if any.
    pub email: Option<String>,
    /// Whether the provider vouches for that address.
    pub email_verified: bool,
    /// The name the provider gave.
    pub name: Option<String>,
    /// When.
    pub created_at: Timestamp,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
}

/// A user's membership of a team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The team.
    pub team: Team,
    /// The member's role in it.
    pub role: Role,
}

/// An inference API key (its secret is never here: only the hash is stored, elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Id; stays the same across rotations.
    pub id: ApiKeyId,
    /// Owning team.
    pub team_id: TeamId,
    /// Name.
    pub name: String,
    /// Redacted form, e.g. `tgk_...q17x`.
    pub redacted: String,
    /// Grants.
    pub acls: AclSet,
    /// Requests per second, if limited.
    pub qps: Option<u32>,
    /// Requests per minute, if limited.
    pub qpm: Option<u32>,
    /// Tokens per minute, if limited.
    pub tpm: Option<u64>,
    /// Refused from this time on.
    pub expire_time: Option<Timestamp>,
    /// Switched off by a user.
    pub disabled: bool,
    /// Blocked by the platform (e.g. leaked); "enable" does not undo it.
    pub blocked: bool,
    /// Who created it.
    pub created_by: Option<UserId>,
    /// When.
    pub created_at: Timestamp,
    /// When it last changed.
    pub modified_at: Timestamp,
    /// Who last changed it.
    pub modified_by: Option<UserId>,
    /// Why it was blocked (e.g. where a leak was found).
    pub blocked_reason: Option<String>,
    /// When it was deleted; a deleted key is refused and no longer listed.
    pub deleted_at: Option<Timestamp>,
    /// When it was last used (updated in batches, not per request: may lag by a minute).
    pub last_used_at: Option<Timestamp>,
    /// While set, the secret a rotation replaced is still accepted, until this time.
    pub previous_secret_expires_at: Option<Timestamp>,
    /// Why the operator blocked the key's team, if they did: its requests are refused until
    /// the operator lifts the block.
    pub team_blocked_reason: Option<String>,
    /// The unpaid invoice (its number) for which the key's team is blocked, if any: its
    /// requests are refused until it is paid.
    pub team_blocked_by: Option<String>,
    /// Whether the key's team keeps nothing (the operator's zero-retention grant): no bodies
    /// kept, no stored responses.
    pub team_zero_retention: bool,
}

/// How a team's data may be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataUse {
    /// Its Admins allow its requests and answers to be used for training (off by default).
    pub training_allowed: bool,
    /// The operator granted zero retention: no bodies kept, the Responses API stores nothing,
    /// a deferred result is gone once fetched.
    pub zero_retention: bool,
}

/// A management key: authenticates one team's management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementKey {
    /// Id.
    pub id: ManagementKeyId,
    /// The one team it manages.
    pub team_id: TeamId,
    /// Name.
    pub name: String,
    /// Redacted form.
    pub redacted: String,
    /// Who created it; `None` when the operator did, from the command line.
    pub created_by: Option<UserId>,
    /// When.
    pub created_at: Timestamp,
    /// Refused from this time on.
    pub revoked_at: Option<Timestamp>,
}

/// What housekeeping deletes: rows that can no longer be used, once they are old enough that
/// nothing looks at them. Everything is older than these times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Single-use account links, second-factor challenges, external sign-in flows and pending
    /// identities that expired before this.
    pub expired_before: Timestamp,
    /// Sessions begun before this (long over: sign-in alerts look back at recent ones).
    pub sessions_begun_before: Timestamp,
    /// Invitations that expired before this (answered or not).
    pub invitations_expired_before: Timestamp,
    /// Outbox mail created before this and not being sent now (its links are long dead).
    pub mail_created_before: Timestamp,
    /// The time of the sweep (a mail held by a sender until after it is left alone).
    pub now: Timestamp,
}

/// How many rows a sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Account links, challenges, sign-in flows and pending identities.
    pub tokens: u64,
    /// Sessions.
    pub sessions: u64,
    /// Invitations.
    pub invitations: u64,
    /// Mail.
    pub mail: u64,
    /// Stored responses past their retention.
    pub responses: u64,
    /// Deferred completions past their 24 hours.
    pub deferred: u64,
}

/// A passkey of an account: a WebAuthn credential, used as a second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    /// Id.
    pub id: PasskeyId,
    /// Whose.
    pub user_id: UserId,
    /// The name its owner gave it ("YubiKey", "laptop").
    pub name: String,
    /// The credential's id (as the authenticator names it).
    pub credential_id: Vec<u8>,
    /// The credential (public key, counter, flags) as the WebAuthn library serialises it.
    pub data: String,
    /// When it was added.
    pub created_at: Timestamp,
    /// When it was last used.
    pub last_used_at: Option<Timestamp>,
}

/// What a WebAuthn ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyPurpose {
    /// Adding a passkey.
    Register,
    /// Proving one (a second factor).
    Authenticate,
}

impl CeremonyPurpose {
    /// As stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Authenticate => "authenticate",
        }
    }
}

/// A WebAuthn ceremony begun: the challenge's server-side state, kept until it is answered once
/// or expires, found by its token's hash and only for its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnCeremony {
    /// SHA-256 of the token handed to the client.
    pub token_hash: [u8; 32],
    /// Whose.
    pub user_id: UserId,
    /// What for.
    pub purpose: CeremonyPurpose,
    /// The library's state (challenge, allowed credentials), serialised.
    pub state: String,
    /// When it began.
    pub created_at: Timestamp,
    /// When it stops being accepted.
    pub expires_at: Timestamp,
}
