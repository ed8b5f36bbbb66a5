//! The emails the platform sends, worded in one place. Each names the operator's product and
//! console (from the configuration), says what happened and what to do.

use tollgate_domain::{Email, MailId, OutboundMail, Team, Timestamp};

use crate::mail::MailWaker;

/// Composes notices and wakes the mail sender once they are queued.
#[derive(Clone)]
pub struct Notices {
    product: String,
    console_url: String,
    waker: MailWaker,
}

impl Notices {
    /// Notices signed by `product`, pointing to `console_url`.
    pub fn new(product: impl Into<String>, console_url: impl Into<String>, waker: MailWaker) -> Self {
        Self {
            product: product.into(),
            console_url: console_url.into(),
            waker,
        }
    }

    /// Tells the sender that mail was queued.
    pub fn queued(&self) {
        self.waker.wake();
    }

    /// "Your key was blocked (or revoked)", to the team's Admins. `None` when there is nobody
    /// to tell.
    #[must_use]
    pub fn key_withdrawn(
        &self,
        team: &Team,
        key: &WithdrawnKey<'_>,
        reason: &str,
        at: Timestamp,
        to: Vec<Email>,
    ) -> Option<OutboundMail> {
        if to.is_empty() {
            return None;
        }
        let product = &self.product;
        let (kind, verb, consequence) = match key.kind {
            KeyKind::Api => (
                "API key",
                "blocked",
                "A blocked key is refused on every request from now on, and cannot be enabled again.",
            ),
            KeyKind::Management => (
                "management key",
                "revoked",
                "A revoked management key is refused from now on.",
            ),
        };
        let body = format!(
            "The {kind} '{name}' ({redacted}, id {id}) of your team \"{team}\" was {verb} on {when} UTC.\n\n\
             Why: {reason}\n\n\
             {consequence} Create a new key ({console}) and replace the old one wherever it is used. The \
             team's audit log shows what was done with the key.\n\n\
             You receive this because you are an Admin of the team.\n\
             -- {product}\n",
            name = key.name,
            redacted = key.redacted,
            id = key.id,
            team = team.name,
            when = at.format("%Y-%m-%d %H:%M:%S"),
            console = self.console_url,
        );
        Some(OutboundMail {
            id: MailId::new(),
            to,
            subject: format!("[{product}] {kind} '{}' was {verb}", key.name),
            body,
            created_at: at,
        })
    }
}

/// Which kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An inference API key (blocked).
    Api,
    /// A management key (revoked).
    Management,
}

/// The key a notice is about.
#[derive(Debug, Clone, Copy)]
pub struct WithdrawnKey<'a> {
    /// Its kind.
    pub kind: KeyKind,
    /// Its name.
    pub name: &'a str,
    /// Its redacted form.
    pub redacted: &'a str,
    /// Its id, as text.
    pub id: &'a str,
}
