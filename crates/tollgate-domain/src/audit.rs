//! Audit events: who did what, when, from where, with what outcome. Services build them and
//! stores commit them in the same transaction as the change they describe.

use crate::clock::Timestamp;
use crate::ids::{ApiKeyId, AuditEventId, ManagementKeyId, TeamId, UserId};

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
    /// A stable action name in xAI's style, e.g. `CreateApiKey`.
    pub action: &'static str,
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
    /// A successful event.
    #[must_use]
    pub fn success(
        at: Timestamp,
        team_id: Option<TeamId>,
        actor: Actor,
        action: &'static str,
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
