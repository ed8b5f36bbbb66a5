//! Teams: create, rename and describe, delete; members by email (every address gets an
//! invitation, which becomes a membership only when an account that verified the address
//! accepts it); roles, with at least one Admin always. What each role may do is
//! [`tollgate_domain::Role::allows`]; management keys do not manage teams ([`Caller::allows`]).

use std::sync::Arc;

use tollgate_domain::{
    Actor, AuditAction, AuditEvent, Clock, DataUse, Email, EmailError, Invitation, InvitationId, Member, Name,
    Permission, RequestContext, Role, SecretToken, Team, TeamDomain, TeamId, User, UserId,
};
use tollgate_store::{MemberChange, Store, StoreError};
use tracing::instrument;

use crate::notices::Notices;
use crate::{Caller, KeyService};

/// DNS TXT lookups, for domain verification (hickory in the server; the tests point it at a
/// DNS server they start).
#[async_trait::async_trait]
pub trait TxtResolver: Send + Sync {
    /// The TXT values at `name` (each record's strings joined); empty when there are none or the
    /// name does not exist.
    async fn txt(&self, name: &str) -> Result<Vec<String>, String>;
}

/// How long an invitation stays open.
pub const INVITATION_LIFETIME: chrono::Duration = chrono::Duration::days(7);

/// Why a team operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TeamError {
    /// Not a member of the team (or no such team: they look alike).
    #[error("team not found")]
    TeamNotFound,
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The name is empty, too long or has control characters.
    #[error("the team name {0}")]
    InvalidName(tollgate_domain::NameError),
    /// The description is too long or has control characters.
    #[error("the description {0}")]
    InvalidDescription(tollgate_domain::NameError),
    /// Deleting needs the team's name typed exactly.
    /// The operator's reason for blocking the team is empty or too long.
    #[error("the reason {0}")]
    InvalidReason(tollgate_domain::NameError),
    #[error("type the team's name exactly to delete it")]
    NameMismatch,
    /// A Personal Team goes with its account, not on its own.
    #[error("a Personal Team cannot be deleted; it is deleted with its account")]
    PersonalTeam,
    /// Already a member.
    #[error("that person is already a member of the team")]
    AlreadyMember,
    /// The change would leave the team without an Admin.
    #[error("a team must keep at least one Admin: make another member Admin first")]
    LastAdmin,
    /// Not a member.
    #[error("no such member")]
    NotAMember,
    /// No such pending invitation.
    #[error("no such invitation")]
    InvitationNotFound,
    /// The link is unknown, used, withdrawn or expired.
    #[error("This invitation is invalid, already used, withdrawn or expired")]
    InvalidInvitation,
    /// The invitation is for another address.
    #[error("This invitation is for another email address; sign in with that address to accept it")]
    WrongAccount,
    /// The account has not proved it owns the invited address.
    #[error("Verify your email address first: only an account that has verified the invited address can accept")]
    EmailNotVerified,
    /// The sender, or the address, had its hour's share of invitations.
    #[error("Too many invitations from you or to this address; try again in an hour")]
    MailLimited,
    /// Another invitation to the address was made at the same moment.
    #[error("an invitation to this address is being sent; try again")]
    InvitationPending,
    /// Not an email address.
    #[error(transparent)]
    InvalidEmail(#[from] EmailError),
    /// Not a domain this platform lets a team verify.
    #[error(transparent)]
    InvalidDomain(#[from] tollgate_domain::domains::DomainError),
    /// Already added to this team, or verified by another team.
    #[error("this domain is already added to this team, or verified by another team")]
    DomainTaken,
    /// No such domain in the team.
    #[error("no such domain")]
    DomainNotFound,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Teams service.
#[derive(Clone)]
pub struct TeamService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    notices: Notices,
    keys: KeyService,
    resolver: Arc<dyn TxtResolver>,
    entropy: Arc<dyn tollgate_domain::Entropy>,
}

/// One team as an operator sees it.
#[derive(Debug, Clone)]
pub struct OperatorView {
    /// The team.
    pub team: Team,
    /// Its members.
    pub members: Vec<Member>,
    /// How its data may be used.
    pub data_use: DataUse,
    /// Why the operator blocked it, if they did.
    pub blocked_reason: Option<String>,
}

/// The longest team description.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

fn valid_name(name: &str) -> Result<String, TeamError> {
    Ok(Name::parse(name).map_err(TeamError::InvalidName)?.into_string())
}

fn valid_description(description: Option<&str>) -> Result<Option<String>, TeamError> {
    tollgate_domain::name::parse_description(description, MAX_DESCRIPTION_CHARS).map_err(TeamError::InvalidDescription)
}

impl TeamService {
    /// A service over `store`; mail through `notices`; a deleted team's keys leave `keys`' cache.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        notices: Notices,
        keys: KeyService,
        resolver: Arc<dyn TxtResolver>,
    ) -> Self {
        Self {
            store,
            clock,
            notices,
            keys,
            resolver,
            entropy: Arc::new(tollgate_domain::OsEntropy),
        }
    }

    /// Draws tokens from `entropy` (tests pin it with a seeded one).
    #[must_use]
    pub fn with_entropy(mut self, entropy: Arc<dyn tollgate_domain::Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    fn rng(&self) -> tollgate_domain::EntropyRng<'_> {
        tollgate_domain::EntropyRng(&*self.entropy)
    }

    /// Adds a domain to verify (Admins): returns it with the token to publish.
    pub async fn add_domain(
        &self,
        caller: &Caller,
        domain: &str,
        context: &RequestContext,
    ) -> Result<TeamDomain, TeamError> {
        Self::require(
            caller,
            Permission::ManageTeam,
            "Only team Admins may manage verified domains",
        )?;
        let domain = tollgate_domain::domains::parse_domain(domain)?;
        let record = TeamDomain {
            id: tollgate_domain::DomainId::new(),
            team_id: caller.team_id(),
            domain,
            token: tollgate_domain::domains::new_token(&mut self.rng()),
            created_at: self.clock.now(),
            verified_at: None,
            checked_at: None,
            last_error: None,
        };
        let audit = self.event(
            caller,
            AuditAction::AddDomain,
            format!("Added the domain {} to verify", record.domain),
            Some(format!("domain:{}", record.id)),
            context,
        );
        self.store.insert_domain(&record, &audit).await.map_err(|e| match e {
            StoreError::Conflict { .. } => TeamError::DomainTaken,
            other => other.into(),
        })?;
        Ok(record)
    }

    /// The team's domains (Admins).
    pub async fn domains(&self, caller: &Caller) -> Result<Vec<TeamDomain>, TeamError> {
        Self::require(
            caller,
            Permission::ManageTeam,
            "Only team Admins may manage verified domains",
        )?;
        Ok(self.store.list_domains(caller.team_id()).await?)
    }

    /// Looks the record up now (Admins): verified if found.
    pub async fn verify_domain(
        &self,
        caller: &Caller,
        id: tollgate_domain::DomainId,
        context: &RequestContext,
    ) -> Result<TeamDomain, TeamError> {
        Self::require(
            caller,
            Permission::ManageTeam,
            "Only team Admins may manage verified domains",
        )?;
        let domain = self
            .store
            .list_domains(caller.team_id())
            .await?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or(TeamError::DomainNotFound)?;
        self.check_domain(domain, Some(caller.actor()), context).await
    }

    /// Removes a domain (Admins).
    pub async fn remove_domain(
        &self,
        caller: &Caller,
        id: tollgate_domain::DomainId,
        context: &RequestContext,
    ) -> Result<(), TeamError> {
        Self::require(
            caller,
            Permission::ManageTeam,
            "Only team Admins may manage verified domains",
        )?;
        let audit = self.event(
            caller,
            AuditAction::RemoveDomain,
            "Removed a domain".to_owned(),
            Some(format!("domain:{id}")),
            context,
        );
        self.store
            .delete_domain(caller.team_id(), id, &audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => TeamError::DomainNotFound,
                other => other.into(),
            })
    }

    /// Re-checks every domain (the periodic job): newly published records verify, records gone
    /// unverify. Returns how many changed.
    pub async fn recheck_domains(&self) -> Result<usize, TeamError> {
        let mut changed = 0;
        for domain in self.store.list_all_domains().await? {
            let before = domain.verified_at.is_some();
            match self.check_domain(domain, None, &RequestContext::default()).await {
                Ok(after) if after.verified_at.is_some() != before => changed += 1,
                Ok(_) | Err(TeamError::DomainTaken) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(changed)
    }

    async fn check_domain(
        &self,
        mut domain: TeamDomain,
        actor: Option<tollgate_domain::Actor>,
        context: &RequestContext,
    ) -> Result<TeamDomain, TeamError> {
        let now = self.clock.now();
        let mut found = false;
        let mut error = None;
        for name in tollgate_domain::domains::record_names(&domain.domain) {
            match self.resolver.txt(&name).await {
                Ok(values) if tollgate_domain::domains::matches(&values, &domain.token) => {
                    found = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => error = Some(e),
            }
        }
        let was_verified = domain.verified_at.is_some();
        domain.checked_at = Some(now);
        domain.last_error = (!found).then(|| {
            error.unwrap_or_else(|| {
                format!(
                    "no TXT record {} at {} or {}",
                    tollgate_domain::domains::record_value(&domain.token),
                    tollgate_domain::domains::record_names(&domain.domain)[0],
                    domain.domain
                )
            })
        });
        domain.verified_at = if found { domain.verified_at.or(Some(now)) } else { None };
        let actor = actor.unwrap_or(tollgate_domain::Actor::System);
        let audit = match (was_verified, found) {
            (false, true) => Some((
                AuditAction::VerifyDomain,
                format!("Verified the domain {}", domain.domain),
            )),
            (true, false) => Some((
                AuditAction::UnverifyDomain,
                format!("The domain {} is no longer verified: its record is gone", domain.domain),
            )),
            _ => None,
        }
        .map(|(action, text)| {
            AuditEvent::success(
                now,
                Some(domain.team_id),
                actor,
                action,
                text,
                Some(format!("domain:{}", domain.id)),
                context,
            )
        });
        self.store
            .record_domain_check(&domain, audit.as_ref())
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => TeamError::DomainTaken,
                other => other.into(),
            })?;
        Ok(domain)
    }

    /// Re-checks domains every `every` until `stop`.
    pub fn spawn_domain_checks(
        self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::jobs::every("domain re-check", every, stop, move || {
            let service = self.clone();
            async move { service.recheck_domains().await.map(drop) }
        })
    }

    fn require(caller: &Caller, permission: Permission, message: &'static str) -> Result<(), TeamError> {
        if caller.allows(permission) {
            Ok(())
        } else {
            Err(TeamError::Forbidden(message))
        }
    }

    fn event(
        &self,
        caller: &Caller,
        action: AuditAction,
        description: String,
        target: Option<String>,
        context: &RequestContext,
    ) -> AuditEvent {
        AuditEvent::success(
            self.clock.now(),
            Some(caller.team_id()),
            caller.actor(),
            action,
            description,
            target,
            context,
        )
    }

    /// Creates a team; `user` is its Admin.
    #[instrument(skip_all)]
    pub async fn create_team(
        &self,
        user: &User,
        name: &str,
        description: Option<&str>,
        context: &RequestContext,
    ) -> Result<Team, TeamError> {
        let team = Team {
            id: TeamId::new(),
            name: valid_name(name)?,
            description: valid_description(description)?,
            personal: false,
            created_at: self.clock.now(),
        };
        let audit = AuditEvent::success(
            team.created_at,
            Some(team.id),
            tollgate_domain::Actor::User {
                id: user.id,
                email: user.email.as_ref().to_owned(),
            },
            AuditAction::CreateTeam,
            format!("Created the team \"{}\"", team.name),
            Some(format!("team:{}", team.id)),
            context,
        );
        self.store.create_team(&team, user.id, &audit).await?;
        Ok(team)
    }

    /// The operator's overview: live teams whose name contains `search`, newest first, with
    /// their credit.
    pub async fn overview(
        &self,
        _operator: &crate::Operator,
        search: &str,
        limit: u32,
    ) -> Result<Vec<tollgate_store::TeamSummary>, TeamError> {
        Ok(self.store.list_teams(search.trim(), limit).await?)
    }

    /// One team as an operator sees it, with its members.
    pub async fn team_for_operator(
        &self,
        _operator: &crate::Operator,
        team_id: TeamId,
    ) -> Result<OperatorView, TeamError> {
        let team = self.store.get_team(team_id).await.map_err(|e| match e {
            StoreError::NotFound => TeamError::TeamNotFound,
            other => other.into(),
        })?;
        let members = self.store.list_members(team_id).await?;
        let data_use = self.store.data_use(team_id).await?;
        let blocked_reason = self.store.team_block(team_id).await?;
        Ok(OperatorView {
            team,
            members,
            data_use,
            blocked_reason,
        })
    }

    /// The caller's team.
    pub async fn team(&self, caller: &Caller) -> Result<Team, TeamError> {
        self.store.get_team(caller.team_id()).await.map_err(|e| match e {
            StoreError::NotFound => TeamError::TeamNotFound,
            other => other.into(),
        })
    }

    /// Renames or describes the team (Admins). `description: Some(None)` clears it.
    pub async fn update_team(
        &self,
        caller: &Caller,
        name: Option<&str>,
        description: Option<Option<&str>>,
        context: &RequestContext,
    ) -> Result<Team, TeamError> {
        Self::require(
            caller,
            Permission::ManageTeam,
            "Only team Admins may rename or describe the team",
        )?;
        let mut team = self.team(caller).await?;
        let before = team.name.clone();
        if let Some(name) = name {
            team.name = valid_name(name)?;
        }
        if let Some(description) = description {
            team.description = valid_description(description)?;
        }
        let text = if before == team.name {
            "Updated the team's description".to_owned()
        } else {
            format!("Renamed the team from \"{before}\" to \"{}\"", team.name)
        };
        let audit = self.event(
            caller,
            AuditAction::UpdateTeam,
            text,
            Some(format!("team:{}", team.id)),
            context,
        );
        self.store.update_team(&team, &audit).await?;
        Ok(team)
    }

    /// How the team's data may be used (every member may read it).
    pub async fn data_use(&self, caller: &Caller) -> Result<DataUse, TeamError> {
        Self::require(caller, Permission::UseTeam, "Not a member of the team")?;
        Ok(self.store.data_use(caller.team_id()).await?)
    }

    /// Allows or refuses training on the team's requests and answers (Admins; off by default).
    pub async fn set_training_allowed(
        &self,
        caller: &Caller,
        allowed: bool,
        context: &RequestContext,
    ) -> Result<DataUse, TeamError> {
        Self::require(
            caller,
            Permission::ManageTeam,
            "Only team Admins may decide whether the team's data may be used for training",
        )?;
        let mut data_use = self.store.data_use(caller.team_id()).await?;
        data_use.training_allowed = allowed;
        let text = if allowed {
            "Allowed the team's requests and answers to be used for training"
        } else {
            "Refused the use of the team's requests and answers for training"
        };
        let audit = self.event(
            caller,
            AuditAction::SetDataUse,
            text.to_owned(),
            Some(format!("team:{}", caller.team_id())),
            context,
        );
        self.store.set_data_use(caller.team_id(), data_use, &audit).await?;
        Ok(data_use)
    }

    /// Grants or withdraws zero retention (the operator): no bodies kept, the Responses API
    /// stores nothing. Every node sees it within a second (with the team's keys).
    pub async fn set_zero_retention(
        &self,
        team_id: TeamId,
        on: bool,
        actor: Actor,
        context: &RequestContext,
    ) -> Result<DataUse, TeamError> {
        let mut data_use = match self.store.data_use(team_id).await {
            Err(StoreError::NotFound) => return Err(TeamError::TeamNotFound),
            other => other?,
        };
        data_use.zero_retention = on;
        let text = if on {
            "The operator granted the team zero retention: nothing of its requests is kept"
        } else {
            "The operator withdrew the team's zero retention: its requests' bodies are kept for abuse review again"
        };
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(team_id),
            actor,
            AuditAction::SetDataUse,
            text.to_owned(),
            Some(format!("team:{team_id}")),
            context,
        );
        self.store.set_data_use(team_id, data_use, &audit).await?;
        Ok(data_use)
    }

    /// Blocks every request of the team (the operator), saying why: its keys are refused with
    /// the reason until the block is lifted. Returns whether it changed (a blocked team stays
    /// blocked for its first reason). This node refuses at once, the others within a second.
    pub async fn block_team(
        &self,
        operator: &crate::Operator,
        team_id: TeamId,
        reason: &str,
        context: &RequestContext,
    ) -> Result<bool, TeamError> {
        let reason = tollgate_domain::Name::parse_max(reason, 500)
            .map_err(TeamError::InvalidReason)?
            .into_string();
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(team_id),
            operator.actor(),
            AuditAction::BlockTeam,
            format!("The operator blocked the team's requests: {reason}"),
            Some(format!("team:{team_id}")),
            context,
        );
        self.set_block(team_id, Some(&reason), &audit).await
    }

    /// Lifts the operator's block of the team (a block for an unpaid invoice stays until it
    /// is paid). Returns whether it changed.
    pub async fn unblock_team(
        &self,
        operator: &crate::Operator,
        team_id: TeamId,
        context: &RequestContext,
    ) -> Result<bool, TeamError> {
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(team_id),
            operator.actor(),
            AuditAction::UnblockTeam,
            "The operator lifted the block of the team's requests".to_owned(),
            Some(format!("team:{team_id}")),
            context,
        );
        self.set_block(team_id, None, &audit).await
    }

    async fn set_block(&self, team_id: TeamId, reason: Option<&str>, audit: &AuditEvent) -> Result<bool, TeamError> {
        let changed = match self.store.set_team_block(team_id, reason, audit).await {
            Err(StoreError::NotFound) => return Err(TeamError::TeamNotFound),
            other => other?,
        };
        self.keys.forget_team(team_id);
        Ok(changed)
    }

    /// Deletes the team (Admins), confirmed by its exact name: its keys stop working at once,
    /// its prepaid credits are forfeited, its invoices and audit records are kept.
    pub async fn delete_team(
        &self,
        caller: &Caller,
        confirm_name: &str,
        context: &RequestContext,
    ) -> Result<(), TeamError> {
        Self::require(caller, Permission::ManageTeam, "Only team Admins may delete the team")?;
        let team = self.team(caller).await?;
        if team.personal {
            return Err(TeamError::PersonalTeam);
        }
        if confirm_name != team.name {
            return Err(TeamError::NameMismatch);
        }
        let balance = self.store.balance(team.id).await?;
        let audit = self.event(
            caller,
            AuditAction::DeleteTeam,
            format!(
                "Deleted the team \"{}\": its API keys and management keys stopped working; its credit was forfeited \
                 (${} prepaid, ${} promotional)",
                team.name,
                tollgate_domain::ledger::format_usd(balance.prepaid),
                tollgate_domain::ledger::format_usd(balance.promo),
            ),
            Some(format!("team:{}", team.id)),
            context,
        );
        self.store.delete_team(team.id, self.clock.now(), &audit).await?;
        self.keys.forget_team(team.id);
        Ok(())
    }

    /// The members (every member sees them).
    pub async fn members(&self, caller: &Caller) -> Result<Vec<Member>, TeamError> {
        Self::require(caller, Permission::UseTeam, "Not a member of this team")?;
        Ok(self.store.list_members(caller.team_id()).await?)
    }

    /// Invites someone by email (Admins). Adding an address always sends an invitation, whether
    /// or not it has an account, and the answer is the same either way: only a signed-in account
    /// that has *verified* the address joins, by accepting. A new invitation to the same address
    /// replaces a pending one (its link stops working), so there is one per (team, address).
    #[instrument(skip_all)]
    pub async fn add_member(
        &self,
        caller: &Caller,
        email: &str,
        role: Role,
        context: &RequestContext,
    ) -> Result<Invitation, TeamError> {
        Self::require(caller, Permission::ManageMembers, "Only team Admins may add members")?;
        let email = Email::parse(email)?;
        let team = self.team(caller).await?;
        // The member list is the Admins' to see, so this reveals nothing about accounts. Several
        // accounts may share an address: refused only when every one of them is a member.
        let members = self.store.list_members(team.id).await?;
        let accounts = self.store.user_ids_by_email(&email).await?;
        if members.iter().any(|member| member.email == email)
            && accounts
                .iter()
                .all(|id| members.iter().any(|member| member.user_id == *id))
        {
            return Err(TeamError::AlreadyMember);
        }
        let now = self.clock.now();
        let sender = caller
            .user_id()
            .map_or_else(|| format!("team:{}", team.id), |id| format!("user:{id}"));
        if !self.notices.allow_user_mail(&sender, &email, now) {
            return Err(TeamError::MailLimited);
        }
        let token = SecretToken::generate(&mut self.rng());
        let invitation = Invitation {
            id: InvitationId::new(),
            team_id: team.id,
            email,
            role,
            invited_by: caller.user_id(),
            created_at: now,
            expires_at: now + INVITATION_LIFETIME,
            accepted_at: None,
            revoked_at: None,
        };
        let inviter = match caller.actor() {
            tollgate_domain::Actor::User { email, .. } => email,
            _ => "A team Admin".to_owned(),
        };
        let mail = [self.notices.invitation(&team, &inviter, &invitation, &token)];
        let audit = self.event(
            caller,
            AuditAction::InviteTeamMember,
            format!("Invited an address as {role}"),
            Some(format!("invitation:{}", invitation.id)),
            context,
        );
        self.store
            .create_invitation(&invitation, &token.hash(), &mail, &audit)
            .await
            .map_err(|e| match e {
                // Another Admin invited the same address at the same moment.
                StoreError::Conflict { .. } => TeamError::InvitationPending,
                other => other.into(),
            })?;
        self.notices.queued();
        Ok(invitation)
    }

    /// Changes a member's role (Admins). The team keeps at least one Admin.
    pub async fn change_role(
        &self,
        caller: &Caller,
        user_id: UserId,
        role: Role,
        context: &RequestContext,
    ) -> Result<(), TeamError> {
        Self::require(caller, Permission::ManageMembers, "Only team Admins may change roles")?;
        let audit = self.event(
            caller,
            AuditAction::ChangeTeamMemberRole,
            format!("Made a member {role}"),
            Some(format!("user:{user_id}")),
            context,
        );
        self.change(caller, user_id, MemberChange::SetRole(role), audit, context)
            .await
    }

    /// Removes a member (Admins), or leaves the team (anyone, themselves). Their API keys stay
    /// with the team and keep working, their management keys are revoked; the team keeps at
    /// least one Admin.
    pub async fn remove_member(
        &self,
        caller: &Caller,
        user_id: UserId,
        context: &RequestContext,
    ) -> Result<(), TeamError> {
        let leaving = caller.user_id() == Some(user_id) && matches!(caller, Caller::Member { .. });
        if !leaving {
            Self::require(caller, Permission::ManageMembers, "Only team Admins may remove members")?;
        }
        let text = if leaving {
            "Left the team"
        } else {
            "Removed a member; their API keys stay with the team, their management keys are revoked"
        };
        let audit = self.event(
            caller,
            AuditAction::RemoveTeamMember,
            text.to_owned(),
            Some(format!("user:{user_id}")),
            context,
        );
        self.change(caller, user_id, MemberChange::Remove, audit, context).await
    }

    /// Applies `change`. A member who stops being an Admin loses the management keys they
    /// created: they are revoked in the same transaction, each audited, and the team's remaining
    /// Admins are told. (Revoking rather than keeping them unusable: a key is a bearer secret
    /// that may have been copied anywhere, so reviving it later would revive every copy.)
    async fn change(
        &self,
        caller: &Caller,
        user_id: UserId,
        change: MemberChange,
        audit: AuditEvent,
        context: &RequestContext,
    ) -> Result<(), TeamError> {
        let now = self.clock.now();
        let mut audits = vec![audit];
        let mut mail = Vec::new();
        if !matches!(change, MemberChange::SetRole(Role::Admin)) {
            let team = self.team(caller).await?;
            let keys = crate::keys::CreatorKeys {
                team: &team,
                creator: user_id,
                actor: caller.actor(),
                reason: "the Admin who created it is no longer an Admin of the team",
                at: now,
            };
            let (revoked, notices) =
                crate::keys::creator_key_revocations(&*self.store, &self.notices, &keys, context).await?;
            audits.extend(revoked);
            mail.extend(notices);
        }
        let result = self
            .store
            .change_member(caller.team_id(), user_id, change, now, &audits, &mail)
            .await;
        if result.is_ok() && !mail.is_empty() {
            self.notices.queued();
        }
        match result {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound) => Err(TeamError::NotAMember),
            Err(StoreError::Conflict { constraint }) if constraint == "team_members_last_admin" => {
                Err(TeamError::LastAdmin)
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Pending invitations (Admins).
    pub async fn invitations(&self, caller: &Caller) -> Result<Vec<Invitation>, TeamError> {
        Self::require(
            caller,
            Permission::ManageMembers,
            "Only team Admins may see invitations",
        )?;
        Ok(self.store.list_invitations(caller.team_id(), self.clock.now()).await?)
    }

    /// Withdraws a pending invitation (Admins).
    pub async fn revoke_invitation(
        &self,
        caller: &Caller,
        id: InvitationId,
        context: &RequestContext,
    ) -> Result<(), TeamError> {
        Self::require(
            caller,
            Permission::ManageMembers,
            "Only team Admins may withdraw invitations",
        )?;
        let audit = self.event(
            caller,
            AuditAction::RevokeInvitation,
            "Withdrew an invitation".to_owned(),
            Some(format!("invitation:{id}")),
            context,
        );
        self.store
            .revoke_invitation(caller.team_id(), id, self.clock.now(), &audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => TeamError::InvitationNotFound,
                other => other.into(),
            })
    }

    /// The invitations waiting for `user`'s address, with their teams (empty until the address
    /// is verified: only a verified address may accept).
    pub async fn my_invitations(&self, user: &User) -> Result<Vec<(Invitation, Team)>, TeamError> {
        if user.email_verified_at.is_none() {
            return Ok(Vec::new());
        }
        let mut pending = Vec::new();
        for invitation in self
            .store
            .pending_invitations_for(&user.email, self.clock.now())
            .await?
        {
            match self.store.get_team(invitation.team_id).await {
                Ok(team) => pending.push((invitation, team)),
                Err(StoreError::NotFound) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Ok(pending)
    }

    /// Accepts invitation `id`, addressed to `user`'s verified address (the signed-in
    /// counterpart of the emailed link: proving the mailbox once, by verifying it, is enough).
    pub async fn accept_invitation_by_id(
        &self,
        user: &User,
        id: InvitationId,
        context: &RequestContext,
    ) -> Result<Team, TeamError> {
        if user.email_verified_at.is_none() {
            return Err(TeamError::EmailNotVerified);
        }
        let now = self.clock.now();
        let invitation = self
            .store
            .pending_invitations_for(&user.email, now)
            .await?
            .into_iter()
            .find(|invitation| invitation.id == id)
            .ok_or(TeamError::InvitationNotFound)?;
        if !join(&*self.store, now, user, &invitation, context).await? {
            return Err(TeamError::InvalidInvitation);
        }
        self.store.get_team(invitation.team_id).await.map_err(|e| match e {
            StoreError::NotFound => TeamError::InvalidInvitation,
            other => other.into(),
        })
    }

    /// Accepts an invitation from its emailed link, as the signed-in `user` (whose address must
    /// be the invited one).
    pub async fn accept_invitation(
        &self,
        user: &User,
        token: &str,
        context: &RequestContext,
    ) -> Result<Team, TeamError> {
        let token = SecretToken::presented(token.trim()).ok_or(TeamError::InvalidInvitation)?;
        let now = self.clock.now();
        let invitation = self
            .store
            .find_invitation(&token.hash())
            .await?
            .filter(|i| i.accepted_at.is_none() && i.revoked_at.is_none() && i.expires_at > now)
            .ok_or(TeamError::InvalidInvitation)?;
        if invitation.email != user.email {
            return Err(TeamError::WrongAccount);
        }
        if user.email_verified_at.is_none() {
            return Err(TeamError::EmailNotVerified);
        }
        if !join(&*self.store, now, user, &invitation, context).await? {
            return Err(TeamError::InvalidInvitation);
        }
        self.store.get_team(invitation.team_id).await.map_err(|e| match e {
            StoreError::NotFound => TeamError::InvalidInvitation,
            other => other.into(),
        })
    }
}

async fn join(
    store: &dyn Store,
    now: chrono::DateTime<chrono::Utc>,
    user: &User,
    invitation: &Invitation,
    context: &RequestContext,
) -> Result<bool, StoreError> {
    let audit = AuditEvent::success(
        now,
        Some(invitation.team_id),
        tollgate_domain::Actor::User {
            id: user.id,
            email: user.email.as_ref().to_owned(),
        },
        AuditAction::AcceptInvitation,
        format!("Joined the team as {} by invitation", invitation.role),
        Some(format!("invitation:{}", invitation.id)),
        context,
    );
    store.accept_invitation(invitation, user.id, now, &audit).await
}

/// Joins the team that has `user`'s (just verified) address's domain verified, as a Member
/// (this counts as accepted: the seeds ask for it). Pending invitations are *not* taken up
/// here: only an explicit accept joins a team by invitation. When another account at the same
/// address is a member already, the person has joined with that one, and this account does not
/// join too (an Admin may invite it, and the person accepts from the account they choose).
pub(crate) async fn join_teams_on_verification(
    store: &dyn Store,
    clock: &dyn Clock,
    notices: &Notices,
    user: &User,
    context: &RequestContext,
) -> Result<usize, StoreError> {
    let now = clock.now();
    let mut joined = 0;
    if let Some(team_id) = store.team_with_verified_domain(user.email.domain()).await? {
        let mut joined_as_another = false;
        for other in store.user_ids_by_email(&user.email).await? {
            if other != user.id && store.find_role(team_id, other).await?.is_some() {
                joined_as_another = true;
            }
        }
        if !joined_as_another && store.find_role(team_id, user.id).await?.is_none() {
            let team = store.get_team(team_id).await?;
            let audit = AuditEvent::success(
                now,
                Some(team_id),
                tollgate_domain::Actor::User {
                    id: user.id,
                    email: user.email.as_ref().to_owned(),
                },
                AuditAction::AutoJoinTeam,
                format!(
                    "Joined as a Member: the address is at the verified domain {}",
                    user.email.domain()
                ),
                Some(format!("user:{}", user.id)),
                context,
            );
            match store.add_member(team_id, user.id, Role::Member, now, &[audit]).await {
                Ok(()) => {
                    store.enqueue_mail(&[notices.auto_joined(user, &team, now)]).await?;
                    notices.queued();
                    joined += 1;
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(other) => return Err(other),
            }
        }
    }
    Ok(joined)
}
