//! Sessions: authenticating the cookie (idle and absolute limits), signing out, ending one or
//! all other sessions, and the member view of the signed-in user.

use tollgate_domain::{AuditAction, Membership, RequestContext, SecretToken, Session, SessionId, TeamId, User};
use tollgate_store::EndSessions;

use crate::Caller;

use super::{AccountError, AccountService, TOUCH_EVERY};

impl AccountService {
    /// The session and user behind a session cookie. `csrf` is required (and checked, in
    /// constant time) for requests that change state.
    pub async fn authenticate(
        &self,
        token: &str,
        csrf: Option<&str>,
        changes_state: bool,
    ) -> Result<(Session, User), AccountError> {
        let token = SecretToken::presented(token).ok_or(AccountError::NotSignedIn)?;
        let (session, csrf_hash, user) = self
            .store
            .find_session(&token.hash())
            .await?
            .ok_or(AccountError::NotSignedIn)?;
        let now = self.clock.now();
        if !session.is_live(now, self.sessions.idle) {
            return Err(AccountError::NotSignedIn);
        }
        if changes_state {
            let presented = csrf
                .and_then(SecretToken::presented)
                .ok_or(AccountError::CsrfMismatch)?;
            if !bool::from(subtle::ConstantTimeEq::ct_eq(&presented.hash()[..], &csrf_hash[..])) {
                return Err(AccountError::CsrfMismatch);
            }
        }
        if now - session.last_seen_at >= TOUCH_EVERY {
            self.store.touch_session(session.id, now).await?;
        }
        Ok((session, user))
    }

    /// Ends the current session.
    pub async fn sign_out(&self, session: &Session, user: &User, context: &RequestContext) -> Result<(), AccountError> {
        self.end(
            user,
            EndSessions::One(session.id),
            AuditAction::SignOut,
            "Signed out",
            context,
        )
        .await
        .map(drop)
    }

    /// Ends one of the user's sessions.
    pub async fn end_session(&self, user: &User, id: SessionId, context: &RequestContext) -> Result<(), AccountError> {
        let ended = self
            .end(
                user,
                EndSessions::One(id),
                AuditAction::EndSession,
                &format!("Ended session {id}"),
                context,
            )
            .await?;
        if ended == 0 {
            return Err(AccountError::SessionNotFound);
        }
        Ok(())
    }

    /// Ends every session of the user but `current`; returns how many.
    pub async fn end_other_sessions(
        &self,
        user: &User,
        current: SessionId,
        context: &RequestContext,
    ) -> Result<u64, AccountError> {
        self.end(
            user,
            EndSessions::AllBut(Some(current)),
            AuditAction::EndOtherSessions,
            "Ended every other session",
            context,
        )
        .await
    }

    pub(super) async fn end(
        &self,
        user: &User,
        which: EndSessions,
        action: AuditAction,
        description: &str,
        context: &RequestContext,
    ) -> Result<u64, AccountError> {
        let now = self.clock.now();
        let audits = self.account_events(user, now, action, description, context).await?;
        Ok(self.store.end_sessions(user.id, which, now, &audits).await?)
    }

    /// The user's live sessions, newest first.
    pub async fn sessions(&self, user: &User) -> Result<Vec<Session>, AccountError> {
        let now = self.clock.now();
        let idle = self.sessions.idle;
        Ok(self
            .store
            .list_sessions(user.id, now)
            .await?
            .into_iter()
            .filter(|s| s.is_live(now, idle))
            .collect())
    }

    /// The teams the user belongs to, with their role, oldest first.
    pub async fn memberships(&self, user: &User) -> Result<Vec<Membership>, AccountError> {
        Ok(self.store.list_memberships(user.id).await?)
    }

    /// The user as a [`Caller`] in `team_id`; `TeamNotFound` unless they are a member.
    pub async fn member(&self, user: &User, team_id: TeamId) -> Result<Caller, AccountError> {
        let role = self
            .store
            .find_role(team_id, user.id)
            .await?
            .ok_or(AccountError::TeamNotFound)?;
        Ok(Caller::Member {
            user_id: user.id,
            email: user.email.clone(),
            team_id,
            role,
        })
    }
}
