//! The outbox sender: delivers queued escalation emails over SMTP.
//!
//! Owns: the SMTP (or file) transport, claiming due outbox rows with a
//! lease, sending each with its stored `Message-ID`, and recording every
//! attempt — sent, retried (transient errors, with backoff), failed
//! (permanent errors, or too many attempts), skipped (the notification was
//! acknowledged or cancelled meanwhile) — in the outbox and the audit log.
//! A crash while sending leaves the row leased; when the lease runs out
//! the email is sent again with the same `Message-ID`.
//! Never: send an email that is not in the outbox, or drop one silently.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::retry_delay;
use crate::app::AppState;
use crate::audit::{Action, AuditEvent};
use crate::clock::Timestamp;
use crate::config::SmtpConfig;
use crate::notifications::State;
use crate::store::escalation::{self as sql, OutboxEmail};
use crate::store::notifications as notifications_sql;
use crate::store::{StoreError, audit};

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// Where emails go, built once from `[smtp]`.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
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
        let transport = if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("smtp.url: cannot create {dir}: {e}"))?;
            Transport::File(AsyncFileTransport::new(dir))
        } else {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                .map_err(|e| format!("smtp.url: {e}"))?
                .timeout(Some(config.timeout))
                .build();
            Transport::Smtp(transport)
        };
        Ok(Some(Self { transport, from }))
    }

    async fn send(&self, email: &OutboxEmail) -> Attempt {
        let to: Mailbox = match email.address.parse() {
            Ok(to) => to,
            Err(e) => return Attempt::Permanent(format!("bad address: {e}")),
        };
        let message = match Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .message_id(Some(email.message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(email.body.clone())
        {
            Ok(message) => message,
            Err(e) => return Attempt::Permanent(format!("cannot build the message: {e}")),
        };
        match &self.transport {
            Transport::Smtp(smtp) => match smtp.send(message).await {
                Ok(_) => Attempt::Sent,
                Err(e) if e.is_permanent() => Attempt::Permanent(e.to_string()),
                Err(e) => Attempt::Transient(e.to_string()),
            },
            Transport::File(file) => match file.send(message).await {
                Ok(_) => Attempt::Sent,
                Err(e) => Attempt::Transient(e.to_string()),
            },
        }
    }
}

/// Runs the sender until `shutdown`: every scheduler tick, or at once when
/// the escalation pass queued something.
pub fn spawn(
    state: AppState,
    mailer: Option<Mailer>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mailer) = mailer else {
            tracing::info!("smtp.url is not set: escalation emails wait in the outbox");
            return;
        };
        let mut tick = tokio::time::interval(state.config.scheduler.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {},
                _ = state.outbox_wake.notified() => {},
            }
            // A pass that was started finishes (its emails are settled)
            // before shutdown is looked at again.
            if let Err(e) = send_due(&state, &mailer).await {
                tracing::warn!(error = %e, "outbox pass failed; retrying next tick");
            }
        }
        tracing::debug!("outbox sender stopped");
    })
}

/// One pass: claim what is due and try each email once.
pub async fn send_due(state: &AppState, mailer: &Mailer) -> Result<usize, StoreError> {
    let now = Timestamp::now();
    // The lease outlives one SMTP conversation, so only a crashed sender's
    // rows are taken over.
    let lease = now.plus(state.config.smtp.timeout * 2 + Duration::from_secs(5));
    let emails = {
        let mut tx = state.store.begin().await?;
        let emails = sql::claim_outbox(&mut tx, now, lease).await?;
        tx.commit().await?;
        emails
    };
    for email in &emails {
        settle(state, mailer, email).await?;
    }
    Ok(emails.len())
}

async fn settle(state: &AppState, mailer: &Mailer, email: &OutboxEmail) -> Result<(), StoreError> {
    let notification = {
        let mut conn = state.store.conn().await?;
        notifications_sql::find(&mut conn, &email.notification_id).await?
    };
    let closed = notification
        .as_ref()
        .is_some_and(|n| matches!(n.state, State::Acknowledged | State::Cancelled));
    let smtp = &state.config.smtp;
    let (outcome, error, next_attempt) = if closed {
        ("skipped", None, Timestamp::now())
    } else {
        match mailer.send(email).await {
            Attempt::Sent => ("sent", None, Timestamp::now()),
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
    let mut tx = state.store.begin().await?;
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
    match outcome {
        "sent" => {
            tracing::info!(notification = %email.notification_id, level = email.level, "escalation email sent")
        }
        "pending" => {
            tracing::warn!(notification = %email.notification_id, attempt = email.attempts, error = ?error, "escalation email failed; will retry")
        }
        "failed" => {
            tracing::error!(notification = %email.notification_id, error = ?error, "escalation email given up")
        }
        _ => {}
    }
    Ok(())
}
