//! Services: the use cases. They take the store, the clock and randomness as injected
//! dependencies, enforce the rules, build the audit event of every mutation and hand both to
//! the store, which commits them together.
//!
//! **Invariant:** this crate sees only `dyn Store` (no SQL) and knows nothing of HTTP.

pub mod accounts;
pub mod audit;
pub mod billing;
pub mod caller;
pub mod deferred;
pub mod federation;
pub mod geo;
pub mod housekeeping;
pub mod inference;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod mail;
pub mod notices;
pub mod operators;
pub mod passwords;
pub mod ratelimit;
pub mod reads;
pub mod responses;
pub mod retention;
pub mod secret_scanning;
pub mod teams;
pub mod tiers;
pub mod tools;
pub mod usage;

pub use accounts::{AccountError, AccountService};
pub use audit::{AuditError, AuditExport, AuditFilter, AuditPage, AuditService, ChainReport};
pub use caller::Caller;
pub use deferred::{Deferred, DeferredError, Polled};
pub use federation::{ExternalIdentity, Federated, Federation, FederationError, IdentityProvider, ProviderError};
pub use housekeeping::Housekeeping;
pub use inference::{
    Admission, AdmitError, AnswerError, Answered, Charged, Inference, LimitScope, Posted, SettleError,
};
pub use keys::{ApiKeyChanges, AuthError, KeyError, KeyService, LeakOutcome, NewApiKey, Propagation};
pub use mail::{MailDispatcher, MailError, MailWaker, Mailer, SmtpMailer};
pub use notices::Notices;
pub use operators::{Operator, OperatorError, Operators};
pub use passwords::{Argon2id, HashingError, PasswordHasher, PasswordHashing};
pub use ratelimit::{GlobalRateLimiter, LocalRateLimiter, RateLimiter, SharedCounters, SharedError, Subject};
pub use responses::{ResponseError, Responses, Saved};
pub use retention::{Retention, RetentionError, ToKeep};
pub use secret_scanning::{Feedback, ScanError, SecretScanning, SigningKeySource};
pub use teams::{OperatorView, TeamError, TeamService};
pub use tiers::{TeamTier, TierError, Tiers};
pub use tools::{SearchCall, ServerTools, ToolRun, ToolSettings};
pub use usage::{UsageError, UsageRecorder};
