//! Sending the outbox. Services queue mail in the transaction of the change it reports; the
//! [`MailDispatcher`] sends it afterwards over SMTP, retrying failures with backoff
//! ([`tollgate_domain::mail::retry_delay`]) and giving up after
//! [`tollgate_domain::mail::MAX_MAIL_ATTEMPTS`]. A request never waits on a mail server. With no
//! SMTP server configured, mail stays in the outbox for the operator (`tollgate mail list`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_domain::mail::{MAX_MAIL_ATTEMPTS, retry_delay};
use tollgate_domain::{Clock, OutboundMail};
use tollgate_store::{Store, StoreError};

/// Why a mail could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The message cannot be built (a bad address): retrying will not help.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The server refused or could not be reached: worth retrying.
    #[error("{0}")]
    Transport(String),
}

/// Delivers one mail.
#[async_trait]
pub trait Mailer: Send + Sync {
    /// Sends `mail` to all its recipients.
    async fn send(&self, mail: &OutboundMail) -> Result<(), MailError>;
}

/// SMTP delivery with lettre: `smtp://host:25` (plain; `?tls=required` for STARTTLS) or
/// `smtps://user:password@host:465` (TLS).
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    /// A mailer for the server at `url`, sending as `from` (`Name <address>`).
    ///
    /// # Errors
    /// When the URL or the sender does not parse.
    pub fn new(url: &str, from: &str) -> Result<Self, MailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| MailError::Invalid(format!("mail.smtp_url: {e}")))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from = from
            .parse()
            .map_err(|e| MailError::Invalid(format!("mail.from: {e}")))?;
        Ok(Self { transport, from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: &OutboundMail) -> Result<(), MailError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(mail.subject.clone())
            .header(lettre::message::header::ContentType::TEXT_PLAIN);
        for to in &mail.to {
            let address = to
                .as_ref()
                .parse()
                .map_err(|e| MailError::Invalid(format!("recipient: {e}")))?;
            builder = builder.to(Mailbox::new(None, address));
        }
        let message = builder
            .body(mail.body.clone())
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| MailError::Transport(e.to_string()))
    }
}

/// Wakes the dispatcher when mail was queued, so it goes out at once rather than at the next
/// poll. Cheap to clone; a no-op when no dispatcher runs.
#[derive(Clone, Default)]
pub struct MailWaker(Arc<Notify>);

impl MailWaker {
    /// Signals that mail is waiting.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// How long a dispatcher holds the mails it took before another node may take them.
const HOLD: chrono::Duration = chrono::Duration::minutes(5);
/// Mails taken per round.
const BATCH: u32 = 50;

/// Sends due mail from the outbox.
pub struct MailDispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mailer: Arc<dyn Mailer>,
}

impl MailDispatcher {
    /// A dispatcher sending through `mailer`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, mailer: Arc<dyn Mailer>) -> Self {
        Self { store, clock, mailer }
    }

    /// Sends every mail due now; returns how many were sent. Failures are recorded for a later
    /// retry (or given up on), never returned.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let mut sent = 0;
        loop {
            let now = self.clock.now();
            let due = self.store.claim_due_mail(now, now + HOLD, BATCH).await?;
            if due.is_empty() {
                return Ok(sent);
            }
            for queued in &due {
                let mail = &queued.mail;
                match self.mailer.send(mail).await {
                    Ok(()) => {
                        tracing::info!(mail.id = %mail.id, recipients = mail.to.len(), subject = %mail.subject, "mail sent");
                        self.store.mark_mail_sent(mail.id, self.clock.now()).await?;
                        sent += 1;
                    }
                    Err(error) => {
                        let attempts = queued.attempts + 1;
                        let give_up = matches!(error, MailError::Invalid(_)) || attempts >= MAX_MAIL_ATTEMPTS;
                        let now = self.clock.now();
                        let retry_at = (!give_up).then(|| now + retry_delay(attempts));
                        tracing::warn!(
                            mail.id = %mail.id,
                            attempts,
                            gave_up = give_up,
                            error = %error,
                            "mail not sent"
                        );
                        self.store
                            .mark_mail_failed(mail.id, &error.to_string(), retry_at, now)
                            .await?;
                    }
                }
            }
        }
    }

    /// Runs until `stop`: at once, whenever `waker` is woken, and every `poll` (for retries and
    /// for mail queued by other nodes).
    pub fn spawn(self, waker: MailWaker, poll: Duration, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(error) = self.run_once().await {
                    tracing::error!(error = %error, "cannot read the mail outbox");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = waker.0.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        })
    }
}
