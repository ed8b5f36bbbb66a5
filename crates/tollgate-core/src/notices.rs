//! The emails the platform sends, worded in one place. Each names the operator's product and
//! console (from the configuration), says what happened and what to do.

use tollgate_domain::{Email, MailId, OutboundMail, RequestContext, SecretToken, Team, Timestamp, User};

use crate::mail::MailWaker;

/// Mail a person may cause to be sent to an address (an invitation, an email-change
/// confirmation), per hour: per sender, and per recipient from all senders together.
pub const MAX_USER_MAIL_PER_SENDER_PER_HOUR: u64 = 100;
/// See [`MAX_USER_MAIL_PER_SENDER_PER_HOUR`].
pub const MAX_USER_MAIL_PER_RECIPIENT_PER_HOUR: u64 = 5;

/// A name people chose (a team's), as it appears in mail: quoted and escaped as data, so it
/// can never read as a sentence of ours ("Your account is locked, visit …").
fn quoted(name: &str) -> String {
    format!("{name:?}")
}

/// Composes notices and wakes the mail sender once they are queued.
#[derive(Clone)]
pub struct Notices {
    product: String,
    console_url: String,
    waker: MailWaker,
    limits: crate::limits::HourlyLimits,
}

/// Which account a mail concerns, for a mailbox several accounts share (a person's own and their
/// company's): its name, id and how it signs in.
fn which_account(user: &User) -> String {
    let how = if user.password_hash.is_some() {
        "a password"
    } else {
        "its sign-in provider"
    };
    format!(
        "This is about the account {name} (account id {id}), which signs in with {how}.",
        name = quoted(&user.display_name),
        id = user.id,
    )
}

impl Notices {
    /// Notices signed by `product`, pointing to `console_url`.
    pub fn new(product: impl Into<String>, console_url: impl Into<String>, waker: MailWaker) -> Self {
        Self {
            product: product.into(),
            console_url: console_url.into(),
            waker,
            limits: crate::limits::HourlyLimits::default(),
        }
    }

    /// Counts one mail that `sender` causes to `recipient` (an address that may not be theirs);
    /// `false`, counting nothing, when the sender or the recipient had their hour's share.
    #[must_use]
    pub fn allow_user_mail(&self, sender: &str, recipient: &Email, now: Timestamp) -> bool {
        self.limits.allow_all(
            &[
                (&format!("mail-from:{sender}"), MAX_USER_MAIL_PER_SENDER_PER_HOUR),
                (
                    &format!("mail-to:{}", recipient.as_ref()),
                    MAX_USER_MAIL_PER_RECIPIENT_PER_HOUR,
                ),
            ],
            now,
        )
    }

    /// The link proving an address, to that address.
    #[must_use]
    pub fn verify_email(&self, user: &User, token: &SecretToken, at: Timestamp) -> OutboundMail {
        let product = &self.product;
        // The token travels in the fragment: browsers never send it to a server or in a Referer.
        let link = format!("{}/verify-email#token={}", self.console_url, token.expose());
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] Verify your email address"),
            body: format!(
                "Hello {name},\n\nConfirm that {email} is your address by opening this link within 24 hours:\n\n\
                 {link}\n\n{which}\n\nIf you did not create a {product} account, ignore this message.\n-- {product}\n",
                name = user.display_name,
                email = user.email.as_ref(),
                which = which_account(user),
            ),
            created_at: at,
        }
    }

    /// The link setting a new password, to the account's address.
    #[must_use]
    pub fn reset_password(&self, user: &User, token: &SecretToken, at: Timestamp) -> OutboundMail {
        let product = &self.product;
        let link = format!("{}/reset-password#token={}", self.console_url, token.expose());
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] Reset your password"),
            body: format!(
                "Hello {name},\n\nSomeone (we hope you) asked to reset the password of your {product} account. \
                 Open this link within 60 minutes to choose a new one; it works once:\n\n{link}\n\n{which}\n\n\
                 If it was not you, ignore this message: your password stays as it is.\n-- {product}\n",
                name = user.display_name,
                which = which_account(user),
            ),
            created_at: at,
        }
    }

    /// "Your password was changed", after a reset or a change.
    #[must_use]
    pub fn password_changed(&self, user: &User, at: Timestamp, context: &RequestContext) -> OutboundMail {
        self.security_notice(
            user,
            "Your password was changed",
            "The password of your account was changed",
            at,
            context,
        )
    }

    /// A change to how the account signs in (second factor, recovery codes), to its owner.
    #[must_use]
    pub fn security_notice(
        &self,
        user: &User,
        subject: &str,
        what: &str,
        at: Timestamp,
        context: &RequestContext,
    ) -> OutboundMail {
        let product = &self.product;
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] {subject}"),
            body: format!(
                "Hello {name},\n\n{what} on {when} UTC from {ip}; your other sessions were signed out.\n\n\
                 {which}\n\nIf this was not you, reset your password now at {console}/reset-password and tell your \
                 team's Admins.\n-- {product}\n",
                name = user.display_name,
                which = which_account(user),
                when = at.format("%Y-%m-%d %H:%M:%S"),
                ip = context.ip.as_deref().unwrap_or("an unknown address"),
                console = self.console_url,
            ),
            created_at: at,
        }
    }

    /// The link confirming a new address, to the new address.
    #[must_use]
    pub fn confirm_new_email(&self, user: &User, new: &Email, token: &SecretToken, at: Timestamp) -> OutboundMail {
        let product = &self.product;
        let link = format!("{}/confirm-email-change#token={}", self.console_url, token.expose());
        OutboundMail {
            id: MailId::new(),
            to: vec![new.clone()],
            subject: format!("[{product}] Confirm your new email address"),
            body: format!(
                "Hello {name},\n\nTo make {new} the address of your {product} account, open this link within 24 \
                 hours:\n\n{link}\n\nIf you did not ask for this, ignore this message.\n-- {product}\n",
                name = user.display_name,
                new = new.as_ref(),
            ),
            created_at: at,
        }
    }

    /// "Your address is about to change", to the old address, with a way to stop it.
    #[must_use]
    pub fn email_change_requested(
        &self,
        user: &User,
        new: &Email,
        report: &SecretToken,
        at: Timestamp,
        context: &RequestContext,
    ) -> OutboundMail {
        let product = &self.product;
        let link = format!("{}/report-email-change#token={}", self.console_url, report.expose());
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] Your email address is about to change"),
            body: format!(
                "Hello {name},\n\nOn {when} UTC, from {ip}, someone signed in to your {product} account asked to \
                 change its email address to {new}. It changes only once the new address confirms.\n\n\
                 If this was not you, stop it and sign every session out with this link (valid 7 days):\n\n\
                 {link}\n\nthen reset your password.\n-- {product}\n",
                name = user.display_name,
                when = at.format("%Y-%m-%d %H:%M:%S"),
                ip = context.ip.as_deref().unwrap_or("an unknown address"),
                new = new.as_ref(),
            ),
            created_at: at,
        }
    }

    /// "Your address changed", to the old address.
    #[must_use]
    pub fn email_changed(&self, user: &User, new: &str, at: Timestamp) -> OutboundMail {
        let product = &self.product;
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] Your email address was changed"),
            body: format!(
                "Hello {name},\n\nThe email address of your {product} account is now {new} (since {when} UTC); \
                 every session was signed out. If this was not you, contact your team's Admins and the \
                 operator of {product} at once.\n-- {product}\n",
                name = user.display_name,
                when = at.format("%Y-%m-%d %H:%M:%S"),
            ),
            created_at: at,
        }
    }

    /// "New sign-in to your account", when a sign-in comes from a device or place not seen before.
    #[must_use]
    pub fn new_sign_in(
        &self,
        user: &User,
        session: &tollgate_domain::Session,
        attribution: Option<&str>,
    ) -> OutboundMail {
        let product = &self.product;
        let location = match &session.location {
            Some(place) => format!("{place} (approximate: derived from the IP address)"),
            None => "unknown (it could not be derived from the IP address)".to_owned(),
        };
        let credit = attribution.map(|a| format!("\n{a}\n")).unwrap_or_default();
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] New sign-in to your account"),
            body: format!(
                "Hello {name},\n\nYour {product} account was signed in to from a device or place it had not been \
                 signed in from recently.\n\n\
                 Time: {when} UTC\nIP address: {ip}\nLocation: {location}\nBrowser: {browser}\n\n{which}\n\n\
                 If this was you, there is nothing to do. If not, reset your password at {console}/reset-password \
                 and sign every session out at {console}/sessions.\n-- {product}\n{credit}",
                name = user.display_name,
                when = session.created_at.format("%Y-%m-%d %H:%M:%S"),
                ip = session.ip.as_deref().unwrap_or("unknown"),
                browser = session.user_agent.as_deref().unwrap_or("unknown"),
                console = self.console_url,
                which = which_account(user),
            ),
            created_at: session.created_at,
        }
    }

    /// An invitation to join a team, to the invited address.
    #[must_use]
    pub fn invitation(
        &self,
        team: &Team,
        inviter: &str,
        invitation: &tollgate_domain::Invitation,
        token: &SecretToken,
    ) -> OutboundMail {
        let product = &self.product;
        let link = format!("{}/accept-invitation#token={}", self.console_url, token.expose());
        OutboundMail {
            id: MailId::new(),
            to: vec![invitation.email.clone()],
            subject: format!("[{product}] You are invited to join a team"),
            body: format!(
                "Hello,\n\n{inviter} invited you to the team {team} on {product}, as {role}.\n\n\
                 Accept within 7 days with this link, signed in with an account that has verified this \
                 address (sign up first with this address if you have no account):\n\n\
                 {link}\n\nIf you do not know {inviter}, ignore this message.\n-- {product}\n",
                team = quoted(&team.name),
                role = invitation.role,
            ),
            created_at: invitation.created_at,
        }
    }

    /// "You joined a team", after an automatic join by verified domain.
    #[must_use]
    pub fn auto_joined(&self, user: &User, team: &Team, at: Timestamp) -> OutboundMail {
        let product = &self.product;
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] You joined a team"),
            body: format!(
                "Hello {name},\n\nYour address is at {domain}, which the team {team} has verified, so you joined \
                 it as a Member. You can leave it from the console ({console}).\n-- {product}\n",
                name = user.display_name,
                domain = user.email.domain(),
                team = quoted(&team.name),
                console = self.console_url,
            ),
            created_at: at,
        }
    }

    /// "Your account was deleted", with how to restore it.
    #[must_use]
    pub fn account_deleted(&self, user: &User, at: Timestamp, purge_after: Timestamp) -> OutboundMail {
        let product = &self.product;
        OutboundMail {
            id: MailId::new(),
            to: vec![user.email.clone()],
            subject: format!("[{product}] Your account was deleted"),
            body: format!(
                "Hello {name},\n\nYour {product} account was deleted on {when} UTC and signed out everywhere. \
                 Until {until} UTC you can restore it by signing in at {console}; after that its personal \
                 data is purged for good. API keys you created stay with their teams.\n-- {product}\n",
                name = user.display_name,
                when = at.format("%Y-%m-%d %H:%M:%S"),
                until = purge_after.format("%Y-%m-%d %H:%M:%S"),
                console = self.console_url,
            ),
            created_at: at,
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
            "The {kind} '{name}' ({redacted}, id {id}) of your team {team} was {verb} on {when} UTC.\n\n\
             Why: {reason}\n\n\
             {consequence} Create a new key ({console}) and replace the old one wherever it is used. The \
             team's audit log shows what was done with the key.\n\n\
             You receive this because you are an Admin of the team.\n\
             -- {product}\n",
            name = key.name,
            redacted = key.redacted,
            id = key.id,
            team = quoted(&team.name),
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

impl Notices {
    /// "Your rotated key's old secret leaked; it no longer works", to the team's Admins. `None`
    /// when there is nobody to tell.
    #[must_use]
    #[expect(clippy::too_many_arguments, reason = "one notice, each part of its text")]
    pub fn previous_secret_ended(
        &self,
        team: &Team,
        name: &str,
        redacted: &str,
        id: &str,
        reason: &str,
        at: Timestamp,
        to: Vec<Email>,
    ) -> Option<OutboundMail> {
        if to.is_empty() {
            return None;
        }
        let product = &self.product;
        Some(OutboundMail {
            id: MailId::new(),
            to,
            subject: format!("[{product}] The previous secret of API key '{name}' was refused"),
            body: format!(
                "The API key '{name}' ({redacted}, id {id}) of your team {team} was rotated, and its previous \
                 secret, still accepted during the rotation's grace period, was reported leaked on {when} UTC.\n\n\
                 Why: {reason}\n\n\
                 The previous secret is refused from now on. The key's current secret is not affected and works on: \
                 make sure everything that used the old secret has the new one.\n\n\
                 You receive this because you are an Admin of the team.\n\
                 -- {product}\n",
                team = quoted(&team.name),
                when = at.format("%Y-%m-%d %H:%M:%S"),
            ),
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

impl Notices {
    /// "Charging invoice N failed; we retry on …; pay it by …", to the team's Admins (and its
    /// billing address). `None` when there is nobody to tell.
    #[must_use]
    pub fn invoice_unpaid(
        &self,
        invoice: &tollgate_domain::Invoice,
        why: &str,
        next_attempt: Timestamp,
        blocked_from: Timestamp,
        at: Timestamp,
        to: Vec<Email>,
    ) -> Option<OutboundMail> {
        if to.is_empty() {
            return None;
        }
        let product = &self.product;
        Some(OutboundMail {
            id: MailId::new(),
            to,
            subject: format!("[{product}] Payment of invoice {} failed", invoice.number),
            body: format!(
                "Charging invoice {number} (${total}, {month}) of your team {team} to its default payment method \
                 failed on {when} UTC.\n\n\
                 Why: {why}\n\n\
                 We try again on {next} UTC. If it is still unpaid on {blocked} UTC, the team's API requests are \
                 refused until it is paid. To pay now, make a working card the default and choose \"Pay now\" on \
                 the invoice: {console}\n\n\
                 You receive this because you are an Admin of the team.\n\
                 -- {product}\n",
                number = invoice.number,
                total = tollgate_domain::ledger::format_usd(invoice.total),
                month = invoice.month,
                team = quoted(&invoice.team_name),
                when = at.format("%Y-%m-%d %H:%M"),
                next = next_attempt.format("%Y-%m-%d %H:%M"),
                blocked = blocked_from.format("%Y-%m-%d %H:%M"),
                console = self.console_url,
            ),
            created_at: at,
        })
    }

    /// "Your team's requests are refused until invoice N is paid", to the team's Admins (and
    /// its billing address). `None` when there is nobody to tell.
    #[must_use]
    pub fn team_blocked(&self, team: &Team, number: &str, at: Timestamp, to: Vec<Email>) -> Option<OutboundMail> {
        if to.is_empty() {
            return None;
        }
        let product = &self.product;
        Some(OutboundMail {
            id: MailId::new(),
            to,
            subject: format!(
                "[{product}] API requests of {} are stopped: invoice {number} is unpaid",
                team.name
            ),
            body: format!(
                "Invoice {number} of your team {team} is still unpaid, past its grace period, so from {when} UTC \
                 the team's API requests are refused.\n\n\
                 They resume as soon as it is paid: make a working card the default and choose \"Pay now\" on the \
                 invoice ({console}), or pay by bank transfer and ask the operator to mark it paid.\n\n\
                 You receive this because you are an Admin of the team.\n\
                 -- {product}\n",
                team = quoted(&team.name),
                when = at.format("%Y-%m-%d %H:%M"),
                console = self.console_url,
            ),
            created_at: at,
        })
    }
}

/// A billing alert's subject and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingAlert<'a> {
    /// Prepaid credit fell below the team's threshold.
    LowBalance {
        /// Left.
        prepaid: tollgate_domain::Ticks,
        /// The threshold set.
        threshold: tollgate_domain::Ticks,
    },
    /// The month's invoiced usage reached a share of the spending limit.
    InvoicedLimit {
        /// 80 or 100.
        percent: u8,
        /// Invoiced so far this month.
        owed: tollgate_domain::Ticks,
        /// The limit in force.
        limit: tollgate_domain::Ticks,
    },
    /// Promotional credit is about to expire.
    PromoExpiring {
        /// Left in the lot.
        remaining: tollgate_domain::Ticks,
        /// When it expires.
        expires_at: Timestamp,
    },
    /// An automatic top-up could not be made.
    AutoTopUpFailed {
        /// Why.
        why: &'a str,
    },
}

impl Notices {
    /// A billing alert, to the team's Admins (and its billing address). `None` when there is
    /// nobody to tell.
    #[must_use]
    pub fn billing_alert(
        &self,
        team: &Team,
        alert: BillingAlert<'_>,
        at: Timestamp,
        to: Vec<Email>,
    ) -> Option<OutboundMail> {
        use tollgate_domain::ledger::format_usd;
        if to.is_empty() {
            return None;
        }
        let product = &self.product;
        let team_name = quoted(&team.name);
        let (subject, what) = match alert {
            BillingAlert::LowBalance { prepaid, threshold } => (
                format!("Prepaid credit of {} is below ${}", team.name, format_usd(threshold)),
                format!(
                    "The prepaid credit of your team {team_name} is ${}, below the ${} you asked to be told about. \
                     Buy credit (or turn on auto top-up) in the console to keep its requests running.",
                    format_usd(prepaid),
                    format_usd(threshold)
                ),
            ),
            BillingAlert::InvoicedLimit { percent, owed, limit } => (
                format!("{} has used {percent}% of its monthly spending limit", team.name),
                if percent >= 100 {
                    format!(
                        "Your team {team_name} has reached its monthly invoiced spending limit (${} of ${}). Its \
                         requests are refused once its credit is used up, until next month or until an Admin \
                         raises the limit.",
                        format_usd(owed),
                        format_usd(limit)
                    )
                } else {
                    format!(
                        "Your team {team_name} has used ${} of its ${} monthly invoiced spending limit ({percent}%).",
                        format_usd(owed),
                        format_usd(limit)
                    )
                },
            ),
            BillingAlert::PromoExpiring { remaining, expires_at } => (
                format!("Promotional credit of {} expires soon", team.name),
                format!(
                    "${} of promotional credit of your team {team_name} expires on {} UTC; what is left then is gone.",
                    format_usd(remaining),
                    expires_at.format("%Y-%m-%d %H:%M")
                ),
            ),
            BillingAlert::AutoTopUpFailed { why } => (
                format!("An automatic top-up of {} failed", team.name),
                format!(
                    "An automatic top-up of your team {team_name} could not be made: {why}. Check its default \
                     payment method in the console."
                ),
            ),
        };
        Some(OutboundMail {
            id: MailId::new(),
            to,
            subject: format!("[{product}] {subject}"),
            body: format!(
                "{what}\n\n{console}\n\nYou receive this because you are an Admin of the team.\n-- {product}\n",
                console = self.console_url
            ),
            created_at: at,
        })
    }
}
