//! Deleting an account: sessions end and memberships are suspended at once, restorable for
//! 30 days by signing in, then purged.

use tollgate_domain::{
    Actor, AuditAction, AuditEvent, RequestContext, SecretToken, Session, Timestamp, TokenPurpose, User,
};
use tollgate_store::{AccountToken, TokenRedemption};
use tracing::instrument;

use super::{
    AccountError, AccountService, RESTORE_PERIOD, SecondFactor, SignInOutcome, SignedIn, user_actor, user_events,
};

impl AccountService {
    /// A deleted account that proved itself: a token to restore it, while the period lasts.
    pub(super) async fn offer_restore(&self, user: &User) -> Result<SignInOutcome, AccountError> {
        let now = self.clock.now();
        let purge_after = user
            .purge_after
            .filter(|at| *at > now)
            .ok_or(AccountError::BadCredentials)?;
        let restore = SecretToken::generate(&mut self.rng());
        let purpose = TokenPurpose::RestoreAccount;
        let record = AccountToken::issue(restore.hash(), user.id, purpose, now, None);
        self.store.insert_account_token(&record, &[], &[]).await?;
        Ok(SignInOutcome::Deleted { restore, purge_after })
    }

    /// Restores a deleted account with the token its sign-in gave: back on its teams' member
    /// lists, and signed in.
    #[instrument(skip_all)]
    pub async fn restore_account(&self, token: &str, context: &RequestContext) -> Result<SignedIn, AccountError> {
        let (record, user) = self.live_token(token, TokenPurpose::RestoreAccount).await?;
        let now = self.clock.now();
        let audit = AuditEvent::success(
            now,
            None,
            user_actor(&user),
            AuditAction::RestoreAccount,
            "Restored the account within its 30 days".to_owned(),
            Some(format!("user:{}", user.id)),
            context,
        );
        let redeemed = self
            .store
            .redeem_account_token(&TokenRedemption {
                hash: record.hash,
                purpose: TokenPurpose::RestoreAccount,
                user_id: user.id,
                new_password_hash: None,
                at: now,
                mail: &[],
                audits: std::slice::from_ref(&audit),
            })
            .await?;
        if !redeemed {
            return Err(AccountError::InvalidLink);
        }
        // Its teams' logs hear of it too, now that it is back on their lists.
        let user = self.store.get_user(user.id).await?;
        let memberships = self.store.list_memberships(user.id).await?;
        for event in user_events(
            &memberships,
            &user,
            now,
            AuditAction::RestoreAccount,
            "Restored the account",
            true,
            context,
        ) {
            if event.team_id.is_some() {
                self.store.insert_audit_event(&event).await?;
            }
        }
        self.start_session(user, "a password (account restored)", context).await
    }

    /// Deletes the account (password again, and the second factor if on). Refused while it is the
    /// only Admin of a team that is not its Personal Team: that team needs another Admin, or to
    /// be deleted, first. Returns when the account's data will be purged.
    #[instrument(skip_all)]
    pub async fn delete_account(
        &self,
        user: &User,
        session: &Session,
        password: Option<&str>,
        factor: Option<&SecondFactor>,
        context: &RequestContext,
    ) -> Result<Timestamp, AccountError> {
        self.confirm_sensitive(user, session, password, factor, context).await?;
        let memberships = self.store.list_memberships(user.id).await?;
        let mut sole = Vec::new();
        for membership in memberships
            .iter()
            .filter(|m| m.role == tollgate_domain::Role::Admin && !m.team.personal)
        {
            let members = self.store.list_members(membership.team.id).await?;
            let other_admin = members
                .iter()
                .any(|m| m.user_id != user.id && m.role == tollgate_domain::Role::Admin);
            if !other_admin {
                sole.push(format!("\"{}\"", membership.team.name));
            }
        }
        if !sole.is_empty() {
            return Err(AccountError::SoleAdmin(sole.join(", ")));
        }
        let now = self.clock.now();
        let purge_after = now + RESTORE_PERIOD;
        let mut audits = user_events(
            &memberships,
            user,
            now,
            AuditAction::DeleteAccount,
            "Deleted the account (restorable for 30 days); it left the team's member list",
            true,
            context,
        );
        let mut mail = vec![self.notices.account_deleted(user, now, purge_after)];
        // The management keys it created end with it (the store revokes them in the same
        // transaction): each on its team's record, and the team's other Admins told.
        for membership in &memberships {
            let keys = crate::keys::CreatorKeys {
                team: &membership.team,
                creator: user.id,
                actor: user_actor(user),
                reason: "the Admin who created it deleted their account",
                at: now,
            };
            let (revoked, notices) =
                crate::keys::creator_key_revocations(&*self.store, &self.notices, &keys, context).await?;
            audits.extend(revoked);
            mail.extend(notices);
        }
        self.store
            .delete_account(&tollgate_store::AccountDeletion {
                user_id: user.id,
                at: now,
                purge_after,
                audits: &audits,
                mail: &mail,
            })
            .await?;
        self.notices.queued();
        Ok(purge_after)
    }

    /// Purges the personal data of accounts deleted more than 30 days ago (the daily job).
    pub async fn purge_deleted_accounts(&self) -> Result<usize, AccountError> {
        let now = self.clock.now();
        let due = self.store.accounts_due_for_purge(now).await?;
        for user in &due {
            let audit = AuditEvent::success(
                now,
                None,
                Actor::System,
                AuditAction::PurgeAccount,
                format!("Purged the personal data of deleted account {}", user.id),
                Some(format!("user:{}", user.id)),
                &RequestContext::default(),
            );
            self.store
                .purge_account(user.id, now, std::slice::from_ref(&audit))
                .await?;
        }
        if !due.is_empty() {
            tracing::info!(purged = due.len(), "purged deleted accounts");
        }
        Ok(due.len())
    }

    /// Runs [`Self::purge_deleted_accounts`] every `every` until `stop`.
    pub fn spawn_purge(
        self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::jobs::every("account purge", every, stop, move || {
            let service = self.clone();
            async move { service.purge_deleted_accounts().await.map(drop) }
        })
    }
}
