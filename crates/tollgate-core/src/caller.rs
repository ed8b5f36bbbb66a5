//! Who is asking, in one team: a team's management key, or a signed-in member with their role.
//! Services take a [`Caller`] and ask it [`Caller::allows`]; what a management key may do is
//! decided here, what each role may do in [`Role::allows`].

use tollgate_domain::{Actor, Email, ManagementKey, Permission, Role, TeamId, UserId};

/// The party a service acts for.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A team's management key (the Management API).
    ManagementKey(ManagementKey),
    /// A signed-in member of the team (the console API).
    Member {
        /// The person.
        user_id: UserId,
        /// Their email now (recorded in audit events as it was at the time).
        email: Email,
        /// The team they act in.
        team_id: TeamId,
        /// Their role there.
        role: Role,
    },
}

impl Caller {
    /// The one team this caller may act in.
    #[must_use]
    pub fn team_id(&self) -> TeamId {
        match self {
            Caller::ManagementKey(key) => key.team_id,
            Caller::Member { team_id, .. } => *team_id,
        }
    }

    /// Who acted, for the audit log.
    #[must_use]
    pub fn actor(&self) -> Actor {
        match self {
            Caller::ManagementKey(key) => Actor::ManagementKey {
                id: key.id,
                name: key.name.clone(),
            },
            Caller::Member { user_id, email, .. } => Actor::User {
                id: *user_id,
                email: email.as_ref().to_owned(),
            },
        }
    }

    /// The person behind the call: the member, or whoever created the management key.
    #[must_use]
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Caller::ManagementKey(key) => key.created_by,
            Caller::Member { user_id, .. } => Some(*user_id),
        }
    }

    /// Whether the caller holds `permission` in its team. A management key stands for the team's
    /// Admins on API keys and the audit log (what xAI's Management API covers), and on nothing
    /// that changes who may act: not members, not the team, not other management keys, not billing.
    #[must_use]
    pub const fn allows(&self, permission: Permission) -> bool {
        match self {
            Caller::ManagementKey(_) => matches!(
                permission,
                Permission::UseTeam
                    | Permission::ManageOwnApiKeys
                    | Permission::ManageAllApiKeys
                    | Permission::ViewAuditLog
                    | Permission::ManageBilling
            ),
            Caller::Member { role, .. } => role.allows(permission),
        }
    }

    /// Whether the caller may change `key_creator`'s key: with `ManageAllApiKeys`, any; with
    /// `ManageOwnApiKeys`, the ones they created.
    #[must_use]
    pub fn may_manage_key(&self, key_creator: Option<UserId>) -> bool {
        self.allows(Permission::ManageAllApiKeys)
            || (self.allows(Permission::ManageOwnApiKeys) && key_creator.is_some() && key_creator == self.user_id())
    }
}

impl From<ManagementKey> for Caller {
    fn from(key: ManagementKey) -> Self {
        Caller::ManagementKey(key)
    }
}
