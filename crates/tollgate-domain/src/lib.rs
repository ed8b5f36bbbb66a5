//! Tollgate's domain: pure types and rules, no IO.
//!
//! Everything here is parsed at the edge and passed inward as proven values: an [`Email`] is
//! a valid address, a [`Ticks`] amount never overflows silently, a [`keys::ParsedKey`] has a
//! valid checksum. **Invariant:** this crate performs no IO and depends on neither `sqlx`,
//! `axum` nor `reqwest`; nothing here derives `Serialize` (each surface has its own views).

pub mod acl;
pub mod analytics;
pub mod audit;
pub mod clock;
pub mod domains;
pub mod email;
pub mod endpoint;
pub mod entities;
pub mod entropy;
pub mod ids;
pub mod invoices;
pub mod key_policy;
pub mod keys;
pub mod ledger;
pub mod mail;
pub mod mfa;
pub mod money;
pub mod name;
pub mod password;
pub mod payments;
pub mod ratelimit;
pub mod role;
pub mod session;
pub mod usage;

pub use acl::{Acl, AclError, AclSet};
pub use audit::{
    Actor, AuditAction, AuditChainKey, AuditEvent, AuditRecord, ChainBreak, ChainHash, ChainHead, ChainVerifier,
    Outcome, PruneBoundary, RequestContext,
};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use email::{Email, EmailError};
pub use endpoint::{Endpoint, ServerTool};
pub use entities::{
    ApiKey, CeremonyPurpose, DataUse, Identity, Invitation, ManagementKey, Member, Membership, OidcFlow,
    PendingIdentity, StoredPasskey, Sweep, Swept, Team, TeamDomain, User, WebauthnCeremony,
};
pub use entropy::{Entropy, EntropyRng, OsEntropy, SeededEntropy, ThreadEntropy};
pub use ids::{
    ApiKeyId, AuditEventId, DomainId, IdentityId, InvitationId, MailId, ManagementKeyId, PasskeyId, RequestId,
    SessionId, TeamId, UserId,
};
pub use invoices::{Invoice, InvoiceKind, InvoiceStatus, IssuedLine};
pub use key_policy::{KeyPolicy, KeyShape, PolicyViolation};
pub use ledger::{
    Balance, Bucket, EntryKind, Funds, InvoiceLine, LedgerEntry, MonthUsage, MonthlySpend, SpendPart, SpendingLimits,
    TokenKind, billing_month, month_bounds,
};
pub use mail::{MailState, OutboundMail, QueuedMail};
pub use money::{ModelPricing, Ticks, TicksError};
pub use name::{Name, NameError};
pub use payments::{Address, AutoTopUp, BillingInfo, CardCountryRule, CountryCode, TopUp, TopUpStatus};
pub use role::{Permission, Role};
pub use session::{SecretToken, Session, TokenPurpose};
pub use usage::{TokenUsage, UsageRecord};
