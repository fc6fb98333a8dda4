//! The scheduler's escalation pass: due steps become outbox emails.

use std::time::Duration;

use serde_json::json;

use super::{RECIPIENT, message_id, render};
use crate::audit::{Action, AuditEvent};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::notifications::{Notification, Recipient};
use crate::severity::Severity;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::realtime::hub::Hub;
use crate::store::Store;
use crate::store::escalation::{self as sql, DueStep, OutboxEmail};
use crate::store::notifications as notifications_sql;
use crate::store::{StoreError, audit};

/// What the escalation pass, early escalation and the user directory use.
#[derive(Clone)]
pub struct Escalations {
    pub config: Arc<Config>,
    pub store: Store,
    pub hub: Hub,
    /// Wakes the outbox sender when a pass queued emails.
    pub outbox_wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

/// Claims the due steps and, for each notification still open, marks it
/// `escalated` and queues one email per address — all in one transaction,
/// so a step and its emails exist together or not at all. Returns how many
/// steps fired.
pub async fn scan(escalations: &Escalations) -> Result<usize, Error> {
    let now = Timestamp::now();
    let mut tx = escalations.store.begin().await?;
    let due = sql::claim_due_steps(&mut tx, now).await?;
    let mut fired = 0;
    let mut events = Vec::new();
    let mut escalated = Vec::new();
    let mut levels = Vec::new();
    for step in &due {
        // The compare-and-set on the notification: an acknowledgement or a
        // cancel that committed first stops the step.
        if !notifications_sql::mark_escalated(&mut tx, &step.notification_id).await? {
            sql::stop_step(&mut tx, step.seq).await?;
            continue;
        }
        let notification = notifications_sql::find(&mut tx, &step.notification_id)
            .await?
            .ok_or_else(|| Error::NotFound(step.notification_id.clone()))?;
        let (addresses, unresolved) = resolve(&mut tx, step, &notification.recipient).await?;
        sql::set_step_addresses(&mut tx, step.seq, &addresses).await?;
        let content = render(
            &notification,
            step.level,
            now,
            &escalations.config.escalation,
        );
        let domain = sender_domain(escalations);
        for address in &addresses {
            sql::enqueue(
                &mut tx,
                &OutboxEmail {
                    seq: 0,
                    step_seq: step.seq,
                    notification_id: notification.id.clone(),
                    level: step.level,
                    address: address.clone(),
                    message_id: message_id(&notification, step.level, address, &domain),
                    subject: content.subject.clone(),
                    body: content.body.clone(),
                    attempts: 0,
                },
                now,
            )
            .await?;
        }
        events.push(
            AuditEvent::new(Action::NotificationEscalated, now)
                .by_system()
                .about(&notification)
                .outcome(if addresses.is_empty() {
                    "no_address"
                } else {
                    "ok"
                })
                .detail(json!({
                    "level": step.level,
                    "dueAt": step.due_at,
                    "addresses": addresses,
                    "unresolved": unresolved,
                })),
        );
        if let (Some(every), Some(left)) = (step.repeat_every_ms, step.repeats_left)
            && left > 0
        {
            let next = super::PlannedStep {
                level: step.level + 1,
                due_at: step.due_at.plus(Duration::from_millis(every.max(1) as u64)),
                targets: step.targets.clone(),
                repeat: Some((
                    Duration::from_millis(every.max(1) as u64),
                    (left - 1) as u32,
                )),
            };
            sql::insert_steps(&mut tx, &step.notification_id, &[next]).await?;
        }
        fired += 1;
        escalated.push(notification.id.clone());
        levels.push(step.level);
        tracing::info!(notification_id = %notification.id, level = step.level, emails = addresses.len(), "escalated");
    }
    audit::append_all(&mut tx, events).await?;
    tx.commit().await.map_err(StoreError::from)?;
    if fired > 0 {
        escalations.outbox_wake.notify_one();
    }
    let configured = escalations.config.escalation.levels.len();
    for level in levels {
        // Past the configured levels (repetitions, or a policy shortened
        // since the raise): `repeat`, so the label set stays that small.
        let numbered = usize::try_from(level).is_ok_and(|l| l <= configured);
        escalations.metrics.escalated(numbered.then_some(level));
    }
    for id in &escalated {
        escalations
            .hub
            .console_update("escalated", Some(id), None)
            .await;
    }
    Ok(fired)
}

/// `escalate_when_offline`: a critical notification that reached no socket
/// has its escalation steps moved so the first is due now instead of at the
/// acknowledgement deadline, and the audit log says why. The scheduler's
/// next tick fires it.
pub async fn start_early_if_offline(
    escalations: &Escalations,
    notification: &Notification,
    sockets_reached: usize,
) -> Result<bool, Error> {
    let policy = &escalations.config.escalation;
    if !policy.escalate_when_offline
        || sockets_reached > 0
        || notification.severity != Severity::Critical
    {
        return Ok(false);
    }
    let now = Timestamp::now();
    let by_ms = notification.ack_deadline.millis_since(now).max(0);
    let mut tx = escalations.store.begin().await?;
    let moved = sql::bring_forward(&mut tx, &notification.id, by_ms).await?;
    audit::append(
        &mut tx,
        &AuditEvent::new(Action::EscalationRecipientOffline, now)
            .by_system()
            .about(notification)
            .detail(json!({
                "recipient": notification.recipient,
                "stepsMoved": moved,
                "earlierByMillis": by_ms,
            })),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(notification_id = %notification.id, "recipient offline; escalating now");
    Ok(true)
}

/// Turns a step's targets into addresses: `recipient` becomes the
/// recipient's known e-mail (every known holder's, for a role). Targets that
/// resolve to nothing are returned separately, for the audit row.
async fn resolve(
    conn: &mut sqlx::AnyConnection,
    step: &DueStep,
    recipient: &Recipient,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let mut addresses: Vec<String> = Vec::new();
    let mut unresolved = Vec::new();
    for target in &step.targets {
        if target == RECIPIENT {
            let found = match recipient {
                Recipient::User(user) => sql::emails_of(conn, Some(user), &[]).await?,
                Recipient::Role(role) => {
                    sql::emails_of(conn, None, std::slice::from_ref(role)).await?
                }
            };
            if found.is_empty() {
                unresolved.push(format!("recipient ({})", recipient.room()));
            }
            addresses.extend(found);
        } else {
            addresses.push(target.clone());
        }
    }
    let mut seen = std::collections::HashSet::new();
    addresses.retain(|a| seen.insert(a.to_lowercase()));
    Ok((addresses, unresolved))
}

fn sender_domain(escalations: &Escalations) -> String {
    escalations
        .config
        .smtp
        .from
        .as_deref()
        .and_then(|from| from.rsplit('@').next())
        .map(|d| d.trim_end_matches('>').to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "readback.invalid".into())
}

/// Remembers the e-mail, name and roles a verified token carries, so that
/// `recipient` in an escalation level can be resolved later.
/// An `email` claim that is not one plain address (a line break, a second
/// address, a display name) is not remembered: what the directory holds is
/// written into an envelope and a `To:` header later.
pub async fn remember(escalations: &Escalations, identity: &Identity) {
    let email = identity.email.as_deref().filter(|email| {
        let plain = email.len() <= 254 && email.parse::<lettre::Address>().is_ok();
        if !plain {
            tracing::warn!(user_id = %identity.user_id, "the token's email claim is not one address; not remembered");
        }
        plain
    });
    if email.is_none() && identity.name.is_none() {
        return;
    }
    let result = async {
        let mut tx = escalations.store.begin().await?;
        sql::remember_user(
            &mut tx,
            &identity.user_id,
            email,
            identity.name.as_deref(),
            &identity.roles,
            Timestamp::now(),
        )
        .await?;
        tx.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(user_id = %identity.user_id, error = %e, "could not update the user directory");
    }
}
