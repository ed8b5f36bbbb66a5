//! Outbound email, as the platform composes it. Mail is written to an outbox in the same
//! transaction as the change it reports, and sent afterwards (with retries), so a request never
//! waits on, or fails because of, a mail server.

use crate::clock::Timestamp;
use crate::email::Email;
use crate::ids::MailId;

/// One email to send: plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMail {
    /// Its id.
    pub id: MailId,
    /// Recipients (each gets the same message).
    pub to: Vec<Email>,
    /// Subject line.
    pub subject: String,
    /// Plain-text body. May hold links with tokens: never logged.
    pub body: String,
    /// When it was queued.
    pub created_at: Timestamp,
}

/// Where a queued mail stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailState {
    /// Waiting for its next attempt.
    Queued,
    /// Accepted by the mail server.
    Sent,
    /// Given up on after [`MAX_MAIL_ATTEMPTS`] attempts.
    Failed,
}

/// A mail in the outbox, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMail {
    /// The mail.
    pub mail: OutboundMail,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: Timestamp,
    /// When the mail server accepted it.
    pub sent_at: Option<Timestamp>,
    /// When it was given up on.
    pub failed_at: Option<Timestamp>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

impl QueuedMail {
    /// Its state.
    #[must_use]
    pub const fn state(&self) -> MailState {
        if self.sent_at.is_some() {
            MailState::Sent
        } else if self.failed_at.is_some() {
            MailState::Failed
        } else {
            MailState::Queued
        }
    }
}

/// Attempts before a mail is given up on.
pub const MAX_MAIL_ATTEMPTS: u32 = 10;

/// What a sent mail's body becomes in the outbox: bodies carry single-use links (password
/// resets, verifications, invitations), which the database need not keep once they are sent.
pub const SENT_BODY: &str = "(sent; the body, which may hold single-use links, is not kept)";

/// How long to wait after failed attempt number `attempts` (1-based): 1, 2, 4, … minutes, at
/// most six hours, so ten attempts span about a day.
#[must_use]
pub fn retry_delay(attempts: u32) -> chrono::Duration {
    let minutes = 1_i64 << attempts.saturating_sub(1).min(9);
    chrono::Duration::minutes(minutes.min(360))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_cap() {
        assert_eq!(retry_delay(1), chrono::Duration::minutes(1));
        assert_eq!(retry_delay(2), chrono::Duration::minutes(2));
        assert_eq!(retry_delay(9), chrono::Duration::minutes(256));
        assert_eq!(retry_delay(10), chrono::Duration::minutes(360));
        assert_eq!(retry_delay(40), chrono::Duration::minutes(360));
    }
}
