//! The outbox sender: delivers queued escalation emails over SMTP.
//!
//! Owns: the SMTP (or file) transport, claiming due outbox rows one at a
//! time with a lease, sending each with its stored `Message-ID`, and
//! recording every attempt — sent, retried (transient errors, with backoff),
//! failed (permanent errors, or too many attempts), skipped (the
//! notification was acknowledged or cancelled meanwhile) — in the outbox and
//! the audit log.
//! Delivery to the SMTP server is at least once, not exactly once: between
//! the server's `250` and the commit that records it, a crash or a lost
//! database leaves the row leased, and when the lease runs out the email is
//! sent again with the same `Message-ID`. That window is kept to the one
//! short settle transaction, on a connection held since before the send.
//! Never: send an email that is not in the outbox, drop one silently, or put
//! anything but that transaction between the server's `250` and its commit.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::AsyncSmtpTransportBuilder;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::retry_delay;
use crate::audit::{Action, AuditEvent};
use crate::clock::Timestamp;
use crate::config::SmtpConfig;
use crate::notifications::State;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::escalation::{self as sql, OutboxEmail};
use crate::store::notifications as notifications_sql;
use crate::store::{StoreError, audit};

/// What the outbox sender uses.
#[derive(Clone)]
pub struct Outbox {
    pub config: Arc<Config>,
    pub store: Store,
    /// Rung by the escalation pass when it queued emails.
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// Where emails go, built once from `[smtp]`.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    /// To replace the SMTP transport after an attempt that ran out of time.
    smtp_builder: Option<AsyncSmtpTransportBuilder>,
    /// The bound on one whole attempt (`smtp.timeout`).
    timeout: Duration,
}

/// What a lease adds to `smtp.timeout`: the database work before the send
/// and the settle after it.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How long a claimed email is reserved for its sender: one SMTP attempt,
/// which [`Mailer`] bounds by `smtp.timeout`, plus [`LEASE_MARGIN`]. A
/// sender that crashed mid-attempt has its email retried when this runs
/// out.
fn lease(config: &SmtpConfig) -> Duration {
    config.timeout + LEASE_MARGIN
}

/// How one attempt ended.
enum Attempt {
    Sent,
    Transient(String),
    Permanent(String),
}

impl Mailer {
    /// `None` when no `smtp.url` is configured: emails wait in the outbox.
    pub fn from_config(config: &SmtpConfig) -> Result<Option<Self>, String> {
        let (Some(url), Some(from)) = (&config.url, &config.from) else {
            return Ok(None);
        };
        let from: Mailbox = from.parse().map_err(|e| format!("smtp.from: {e}"))?;
        let (transport, smtp_builder) = if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("smtp.url: cannot create {dir}: {e}"))?;
            (Transport::File(AsyncFileTransport::new(dir)), None)
        } else {
            let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map_err(|e| format!("smtp.url: {e}"))?
                .timeout(Some(config.timeout));
            (Transport::Smtp(builder.clone().build()), Some(builder))
        };
        Ok(Some(Self {
            transport,
            from,
            smtp_builder,
            timeout: config.timeout,
        }))
    }

    /// One attempt, at most `smtp.timeout` long. Returns as soon as the
    /// server has answered the message's DATA: the connection stays in
    /// lettre's pool, so no QUIT round trip follows the `250`.
    async fn send(&mut self, email: &OutboxEmail) -> Attempt {
        self.deliver(
            &email.address,
            &email.subject,
            email.body.clone(),
            Some(email.message_id.clone()),
        )
        .await
    }

    /// Sends one message now, outside the outbox (`readbackd email test`):
    /// proves the relay, its TLS and credentials, and an address, before a
    /// critical finding needs them. `Err` carries the server's refusal or
    /// the transport's error, and whether trying again later may succeed.
    pub async fn send_test(
        &mut self,
        to: &str,
        subject: &str,
        body: String,
    ) -> Result<(), (String, bool)> {
        match self.deliver(to, subject, body, None).await {
            Attempt::Sent => Ok(()),
            Attempt::Transient(error) => Err((error, true)),
            Attempt::Permanent(error) => Err((error, false)),
        }
    }

    /// One message, at most `smtp.timeout` long; without a `Message-ID`,
    /// lettre makes one.
    async fn deliver(
        &mut self,
        address: &str,
        subject: &str,
        body: String,
        message_id: Option<String>,
    ) -> Attempt {
        let to: Mailbox = match address.parse() {
            Ok(to) => to,
            Err(e) => return Attempt::Permanent(format!("bad address: {e}")),
        };
        let message = match Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(message_id)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
        {
            Ok(message) => message,
            Err(e) => return Attempt::Permanent(format!("cannot build the message: {e}")),
        };
        self.transmit(message).await
    }

    /// Sends one email that is not an escalation (the calendar jobs'
    /// reports and tests) to every address in `to`, with an optional
    /// attachment (file name, content type, bytes). Not through the outbox:
    /// the job that sends it records the outcome, and runs again on its
    /// next slot.
    pub async fn send_now(
        &mut self,
        to: &[String],
        subject: &str,
        body: String,
        attachment: Option<(&str, &str, Vec<u8>)>,
    ) -> Result<(), String> {
        use lettre::message::{Attachment, MultiPart, SinglePart};
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for address in to {
            let to: Mailbox = address
                .parse()
                .map_err(|e| format!("bad address {address}: {e}"))?;
            builder = builder.to(to);
        }
        let text = SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(body);
        let message = match attachment {
            None => builder.singlepart(text),
            Some((name, content_type, bytes)) => {
                let content_type = ContentType::parse(content_type)
                    .map_err(|e| format!("attachment content type: {e}"))?;
                builder.multipart(
                    MultiPart::mixed()
                        .singlepart(text)
                        .singlepart(Attachment::new(name.to_string()).body(bytes, content_type)),
                )
            }
        }
        .map_err(|e| format!("cannot build the message: {e}"))?;
        match self.transmit(message).await {
            Attempt::Sent => Ok(()),
            Attempt::Transient(e) | Attempt::Permanent(e) => Err(e),
        }
    }

    /// Hands one built message to the relay (or the file transport).
    async fn transmit(&mut self, message: Message) -> Attempt {
        let smtp = match &self.transport {
            Transport::Smtp(smtp) => smtp,
            Transport::File(file) => {
                return match file.send(message).await {
                    Ok(_) => Attempt::Sent,
                    Err(e) => Attempt::Transient(e.to_string()),
                };
            }
        };
        // lettre's own timeout bounds only the connect; a server that stops
        // answering mid-conversation would otherwise hold the email past
        // its lease (and the whole outbox with it).
        match tokio::time::timeout(self.timeout, smtp.send(message)).await {
            Ok(Ok(_)) => Attempt::Sent,
            Ok(Err(e)) if e.is_permanent() => Attempt::Permanent(e.to_string()),
            Ok(Err(e)) => Attempt::Transient(e.to_string()),
            Err(_) => {
                // The abandoned connection may be mid-command: shut its pool
                // so it is closed, never reused, and start a fresh one.
                smtp.shutdown().await;
                if let Some(builder) = &self.smtp_builder {
                    self.transport = Transport::Smtp(builder.clone().build());
                }
                Attempt::Transient(format!(
                    "no answer within smtp.timeout ({})",
                    humantime::format_duration(self.timeout)
                ))
            }
        }
    }
}

/// Runs the sender until `shutdown`: every scheduler tick, or at once when
/// the escalation pass queued something.
pub fn spawn(
    tasks: &TaskTracker,
    outbox: Outbox,
    mailer: Option<Mailer>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tasks.spawn(async move {
        let Some(mut mailer) = mailer else {
            tracing::info!("smtp.url is not set: escalation emails wait in the outbox");
            return;
        };
        let mut tick = tokio::time::interval(outbox.config.scheduler.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {},
                _ = outbox.wake.notified() => {},
            }
            if let Err(e) = send_due(&outbox, &mut mailer, &shutdown).await {
                tracing::warn!(error = %e, "outbox pass failed; retrying next tick");
            }
        }
        tracing::debug!("outbox sender stopped");
    })
}

/// One pass: claims due emails one at a time and tries each once, until
/// none is due or shutdown is asked for. A claimed email is tried and
/// settled before shutdown is looked at again.
pub async fn send_due(
    outbox: &Outbox,
    mailer: &mut Mailer,
    shutdown: &CancellationToken,
) -> Result<usize, StoreError> {
    let mut attempted = 0;
    while !shutdown.is_cancelled() {
        let now = Timestamp::now();
        let email = {
            let mut tx = outbox.store.begin().await?;
            let email =
                sql::claim_email(&mut tx, now, now.plus(lease(&outbox.config.smtp))).await?;
            tx.commit().await?;
            email
        };
        let Some(email) = email else { break };
        settle(outbox, mailer, &email).await?;
        attempted += 1;
    }
    Ok(attempted)
}

async fn settle(
    outbox: &Outbox,
    mailer: &mut Mailer,
    email: &OutboxEmail,
) -> Result<(), StoreError> {
    // Taken before the send and kept until the outcome is committed: after
    // the server's `250` nothing waits for the pool.
    let mut conn = outbox.store.conn().await?;
    let notification = notifications_sql::find(&mut conn, &email.notification_id).await?;
    let closed = notification
        .as_ref()
        .is_some_and(|n| matches!(n.state, State::Acknowledged | State::Cancelled));
    let smtp = &outbox.config.smtp;
    let (outcome, error, next_attempt) = if closed {
        ("skipped", None, Timestamp::now())
    } else {
        match mailer.send(email).await {
            Attempt::Sent => {
                // Until the commit below, a crash means this email is sent
                // again (same Message-ID); this line is how that shows.
                tracing::debug!(notification_id = %email.notification_id, level = email.level, email_message_id = %email.message_id, "escalation email accepted by the SMTP server; recording it");
                ("sent", None, Timestamp::now())
            }
            Attempt::Permanent(error) => ("failed", Some(error), Timestamp::now()),
            Attempt::Transient(error) if email.attempts >= smtp.max_attempts => {
                ("failed", Some(error), Timestamp::now())
            }
            Attempt::Transient(error) => (
                "pending",
                Some(error),
                Timestamp::now().plus(retry_delay(email.attempts, smtp.retry_base, smtp.retry_max)),
            ),
        }
    };
    let now = Timestamp::now();
    let (action, audit_outcome) = match outcome {
        "sent" => (Action::EmailSent, "ok"),
        "skipped" => (Action::EmailSkipped, "ok"),
        "pending" => (Action::EmailFailed, "retry"),
        _ => (Action::EmailFailed, "failed"),
    };
    let mut event = AuditEvent::new(action, now)
        .by_system()
        .outcome(audit_outcome)
        .detail(json!({
            "level": email.level,
            "address": email.address,
            "messageId": email.message_id,
            "attempt": email.attempts,
            "error": error,
            "nextAttemptAt": (outcome == "pending").then_some(next_attempt),
        }));
    match &notification {
        Some(n) => event = event.about(n),
        None => event.notification_id = Some(email.notification_id.clone()),
    }
    let mut tx = outbox.store.begin_on(&mut conn).await?;
    sql::settle(
        &mut tx,
        email.seq,
        outcome,
        next_attempt,
        error.as_deref(),
        now,
    )
    .await?;
    audit::append(&mut tx, &event).await?;
    tx.commit().await?;
    outbox.metrics.outbox_attempted(
        "email",
        match outcome {
            "pending" => "retry",
            "sent" => "sent",
            "skipped" => "skipped",
            _ => "failed",
        },
    );
    match outcome {
        "sent" => {
            tracing::info!(notification_id = %email.notification_id, level = email.level, "escalation email sent");
        }
        "pending" => {
            tracing::warn!(notification_id = %email.notification_id, attempt = email.attempts, error = ?error, "escalation email failed; will retry");
        }
        "failed" => {
            tracing::error!(notification_id = %email.notification_id, error = ?error, "escalation email given up");
        }
        _ => {}
    }
    Ok(())
}
