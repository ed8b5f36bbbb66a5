//! Team roles and what each may do. This table is the one place that answers "may this
//! member do that"; handlers state the permission they need and never compare roles.

use std::fmt;
use std::str::FromStr;

/// A member's role in a team. Stored as text (`admin`, `member`), never as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Changes the team's name, billing, members, roles, domains, all keys; reads the audit log.
    Admin,
    /// Uses the team: creates and manages their own API keys, sees usage.
    Member,
}

/// Something a team member may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read the team's basic details and use its models.
    UseTeam,
    /// Create API keys and manage the ones they created.
    ManageOwnApiKeys,
    /// Manage every API key of the team, whoever created it.
    ManageAllApiKeys,
    /// Create and revoke management keys.
    ManageManagementKeys,
    /// Rename or describe the team, delete it.
    ManageTeam,
    /// Add, remove and change the roles of members.
    ManageMembers,
    /// Billing details, credits, spending limits.
    ManageBilling,
    /// Read and export the audit log.
    ViewAuditLog,
}

impl Role {
    /// Whether this role grants `permission`. Exhaustive on purpose: a new permission or role
    /// does not compile until this table says who holds it.
    #[must_use]
    pub const fn allows(self, permission: Permission) -> bool {
        match (self, permission) {
            (Role::Admin, _) => true,
            (Role::Member, Permission::UseTeam | Permission::ManageOwnApiKeys) => true,
            (
                Role::Member,
                Permission::ManageAllApiKeys
                | Permission::ManageManagementKeys
                | Permission::ManageTeam
                | Permission::ManageMembers
                | Permission::ManageBilling
                | Permission::ViewAuditLog,
            ) => false,
        }
    }

    /// The stored and displayed name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}' (expected 'admin' or 'member')")]
pub struct RoleError(String);

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            other => Err(RoleError(other.chars().take(40).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_cannot_administer() {
        assert!(Role::Member.allows(Permission::ManageOwnApiKeys));
        assert!(!Role::Member.allows(Permission::ManageAllApiKeys));
        assert!(!Role::Member.allows(Permission::ViewAuditLog));
        assert!(Role::Admin.allows(Permission::ManageBilling));
    }

    #[test]
    fn round_trips_as_text() {
        for role in [Role::Admin, Role::Member] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("owner".parse::<Role>().is_err());
    }
}
