//! Raising, delivering, acknowledging and cancelling notifications.
//!
//! Owns: the order of operations that makes delivery durable — store and
//! audit in one transaction, then emit, then record each delivery — and the
//! compare-and-set that lets exactly one acknowledgement win. Both the HTTP
//! handlers and the Socket.IO handlers call these functions.
//! Never: emit a notification that is not committed, or answer success for
//! something that was not stored.

use serde_json::{Value, json};

use super::{
    NewNotification, Notification, RaiseContext, Reference, State, finding_digest, parse_raise,
};
use crate::audit::{Action, AuditEvent};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::realtime::hub::Sent;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::escalation::service::Escalations;
use crate::metrics::Metrics;
use crate::realtime::events;
use crate::realtime::hub::Hub;
use crate::store::Store;
use crate::store::escalation::{self as escalation_sql, EmailStatus, FiredStep};
use crate::store::group_commit::Committer;
use crate::store::notifications::{self as sql, Delivery, ListFilter, OpenCursor};
use crate::store::{StoreError, audit};
use crate::validation::FieldError;

/// What raising, delivering, acknowledging and cancelling use.
#[derive(Clone)]
pub struct Notifications {
    pub config: Arc<Config>,
    pub store: Store,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    /// Raises and delivery records are committed in groups through this
    /// one queue.
    pub writes: Committer,
    pub escalations: Escalations,
    /// Background work started by requests (retries after a commit):
    /// waited for, within `server.shutdown_timeout`, before the pool closes.
    pub tasks: TaskTracker,
    /// Fires when the daemon starts draining.
    pub shutdown: CancellationToken,
}

/// What a raise did: `created` is false when it was an idempotent retry.
pub struct Raised {
    pub notification: Notification,
    pub created: bool,
    pub deliveries: Vec<Delivery>,
}

/// Stores a new notification (committed before anything is sent), then
/// delivers it to every connected socket of its recipient(s).
///
/// Failure policy: a raise fails only *before* its commit, and then nothing
/// was stored. Once committed it is answered as raised, whatever happens
/// next: the notification is open in the database, so it is replayed on
/// every reconnect and escalates at its deadline even if every step after
/// the commit fails. Those steps (delivery records, early escalation) are
/// logged and counted in `readback_post_commit_failures_total`; delivery
/// records are retried in the background until the database takes them.
pub async fn raise(
    notifications: &Notifications,
    caller: &Identity,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<Raised, Error> {
    let received = std::time::Instant::now();
    // 1. Parse: a request that is not a valid raise changes nothing.
    let ack_within = |severity| notifications.config.ack_within(severity);
    let new = parse_raise(
        body,
        &RaiseContext {
            caller,
            idempotency_key,
            now: Timestamp::now(),
            ack_within: &ack_within,
        },
    )?;

    // 2. Plan: the escalation policy in force now is the one it follows,
    //    whatever the config says later.
    let steps = crate::escalation::plan(&notifications.config.escalation, new.ack_deadline);
    let raised = raised_event(&new, steps.len(), caller);

    // 3. Commit the notification, its steps and its audit row together.
    let (id, idempotency_key, request_hash) = (
        new.id.clone(),
        new.idempotency_key.clone(),
        new.request_hash.clone(),
    );
    let Some(notification) = notifications.writes.insert(new, steps, raised).await? else {
        return retried(
            notifications,
            &id,
            idempotency_key.as_deref(),
            &request_hash,
        )
        .await;
    };
    // Committed: from here on the answer is 201 (the failure policy above).
    notifications
        .metrics
        .raise_committed(received.elapsed().as_secs_f64());
    notifications.metrics.raised(notification.severity.as_str());
    tracing::info!(notification_id = %notification.id, severity = %notification.severity, "raised");

    // 4. Emit to the recipient's sockets and record each delivery.
    let (deliveries, sockets_reached) = deliver(notifications, &notification, &[], false).await;

    // 5. Nobody online to see a critical finding: escalate now.
    if let Err(e) = crate::escalation::service::start_early_if_offline(
        &notifications.escalations,
        &notification,
        sockets_reached,
    )
    .await
    {
        post_commit_failed(notifications, "escalate_early", &notification.id, &e);
    }
    notifications
        .hub
        .console_update("raised", Some(&notification.id), None)
        .await;
    Ok(Raised {
        notification,
        created: true,
        deliveries,
    })
}

/// The `notification.raised` audit row of a raise, built before the commit
/// that writes it with the notification.
fn raised_event(new: &NewNotification, escalation_levels: usize, caller: &Identity) -> AuditEvent {
    let finding = new.content();
    AuditEvent::new(Action::NotificationRaised, new.created_at)
        .by(caller)
        .about_finding(&finding)
        .detail(json!({
            "severity": new.severity,
            "recipient": new.recipient,
            "ackDeadline": new.ack_deadline,
            "idempotencyKey": new.idempotency_key,
            "escalationLevels": escalation_levels,
            // Binds the finding's title, message and identifiers into the
            // hash chain.
            "contentDigest": finding_digest(&finding),
        }))
}

/// The id or the idempotency key of a raise is taken: a retry gets the
/// first notification back (and, while it is open, it is sent again to the
/// recipient's sockets that have no delivery on record); a different body
/// under the same key is refused.
async fn retried(
    notifications: &Notifications,
    id: &str,
    idempotency_key: Option<&str>,
    request_hash: &str,
) -> Result<Raised, Error> {
    let (existing, recorded) = {
        let mut conn = notifications.store.conn().await?;
        let existing = match sql::find(&mut conn, id).await? {
            Some(found) => Some(found),
            None => match idempotency_key {
                Some(key) => sql::find_by_idempotency_key(&mut conn, key).await?,
                None => None,
            },
        };
        let existing = existing.ok_or_else(|| {
            Error::Conflict("the notification id or idempotency key is already in use".into())
        })?;
        if existing.request_hash != request_hash {
            return Err(Error::Conflict(format!(
                "notification {} was already raised with a different body; \
                 an id or Idempotency-Key may only be retried with the same body",
                existing.id
            )));
        }
        let recorded = sql::deliveries(&mut conn, &existing.id).await?;
        (existing, recorded)
    };
    let mut deliveries = recorded;
    if matches!(existing.state, State::Pending | State::Escalated) {
        let skip: Vec<String> = deliveries.iter().map(|d| d.connection_id.clone()).collect();
        deliveries.extend(deliver(notifications, &existing, &skip, true).await.0);
    }
    Ok(Raised {
        notification: existing,
        created: false,
        deliveries,
    })
}

/// Sends a committed notification to its recipient's connected sockets
/// (except `skip`) and records what happened; never fails. Returns the
/// deliveries and how many sockets were reached.
async fn deliver(
    notifications: &Notifications,
    notification: &Notification,
    skip: &[String],
    replayed: bool,
) -> (Vec<Delivery>, usize) {
    let payload = serde_json::to_value(notification.to_wire(replayed)).expect("serializable");
    let delivered = notifications
        .hub
        .deliver(
            vec![notification.recipient.room()],
            events::CRITICAL_NOTIFICATION,
            payload,
            skip,
        )
        .await;
    let reached: Vec<_> = delivered
        .reached
        .into_iter()
        .map(|s| (notification, s))
        .collect();
    let missed: Vec<_> = delivered
        .missed
        .into_iter()
        .map(|(s, why)| (notification, s, why))
        .collect();
    let (deliveries, events) = delivery_records(&reached, &missed, replayed);
    let count = reached.len();
    if let Err(e) = record(notifications, deliveries.clone(), events.clone(), replayed).await {
        post_commit_failed(notifications, "record_deliveries", &notification.id, &e);
        retry_recording(notifications, deliveries.clone(), events);
    }
    (deliveries, count)
}

/// Logs and counts a step after a commit that failed; the committed change
/// stands (see [`raise`]).
fn post_commit_failed(
    notifications: &Notifications,
    step: &'static str,
    notification: &str,
    error: &Error,
) {
    notifications.metrics.post_commit_failed(step);
    tracing::error!(notification_id = notification, step, error = %error, "a step after the commit failed; the committed change stands");
}

/// Keeps trying to record deliveries that were made but could not be
/// recorded, with backoff, until the database takes them or the daemon
/// stops (the notification stays open either way, so nothing is lost).
fn retry_recording(
    notifications: &Notifications,
    deliveries: Vec<Delivery>,
    events: Vec<AuditEvent>,
) {
    let notifications = notifications.clone();
    let replayed = deliveries.first().is_some_and(|d| d.replayed);
    notifications.tasks.clone().spawn(async move {
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = notifications.shutdown.cancelled() => {
                    tracing::warn!(deliveries = deliveries.len(), "stopping with delivery records unwritten");
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            match record(&notifications, deliveries.clone(), events.clone(), replayed).await {
                Ok(()) => {
                    tracing::info!(deliveries = deliveries.len(), "delivery records written after a retry");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?wait, "delivery records still not written; retrying");
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    });
}

/// One delivery row and one audit row per (notification, socket) reached,
/// and a `notification.undelivered` audit row per socket missed: a live
/// delivery, or the resend of a PACS's retried raise (`replayed`). A
/// connect's replay is recorded by [`replay_records`].
pub fn delivery_records(
    reached: &[(&Notification, Sent)],
    missed: &[(&Notification, Sent, &'static str)],
    replayed: bool,
) -> (Vec<Delivery>, Vec<AuditEvent>) {
    let now = Timestamp::now();
    let action = if replayed {
        Action::NotificationReplayed
    } else {
        Action::NotificationDelivered
    };
    let mut deliveries = Vec::with_capacity(reached.len());
    let mut events = Vec::with_capacity(reached.len() + missed.len());
    for (notification, socket) in reached {
        deliveries.push(Delivery {
            notification_id: notification.id.clone(),
            user_id: socket.user_id.clone(),
            connection_id: socket.connection_id.clone(),
            delivered_at: now,
            replayed,
        });
        events.push(
            AuditEvent::new(action, now)
                .by_system()
                .user(socket.user_id.clone())
                .about(notification)
                .session(socket.session_id.as_deref())
                .detail(json!({ "socketId": socket.connection_id })),
        );
    }
    for (notification, socket, why) in missed {
        events.push(undelivered(notification, socket, why, replayed, now));
    }
    (deliveries, events)
}

/// The `notification.undelivered` row of a socket whose send buffer stayed
/// full: it was disconnected, and gets the notification by replay.
fn undelivered(
    notification: &Notification,
    socket: &Sent,
    why: &str,
    replayed: bool,
    now: Timestamp,
) -> AuditEvent {
    AuditEvent::new(Action::NotificationUndelivered, now)
        .by_system()
        .user(socket.user_id.clone())
        .about(notification)
        .session(socket.session_id.as_deref())
        .outcome("failed")
        .detail(json!({
            "socketId": socket.connection_id,
            "reason": why,
            "replayed": replayed,
            "then": "disconnected; sent again when the client reconnects",
        }))
}

/// Writes delivery records (after the emit: a crash in between loses only
/// the record, never the notification, which stays open and is replayed).
pub async fn record(
    notifications: &Notifications,
    deliveries: Vec<Delivery>,
    events: Vec<AuditEvent>,
    replayed: bool,
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let count = deliveries.len();
    notifications
        .writes
        .record_deliveries(deliveries, events)
        .await?;
    for _ in 0..count {
        notifications.metrics.delivered(replayed);
    }
    Ok(())
}

/// What one connect replays: at most `realtime.max_replay` of the user's
/// open notifications — the ones due first, so the most urgent are never
/// the ones left out — in raise order, as the contract sends them.
pub struct Backlog {
    pub notifications: Vec<Notification>,
    /// Open notifications left out by the bound.
    pub remaining: u64,
    /// Where the left-out ones start, for `GET /api/v1/me/notifications`.
    pub next_cursor: Option<String>,
}

/// The backlog a connecting user is sent (see [`Backlog`]).
pub async fn backlog(
    notifications: &Notifications,
    who: &Identity,
    max: usize,
) -> Result<Backlog, Error> {
    let mut conn = notifications.store.conn().await?;
    let bound = u32::try_from(max).unwrap_or(u32::MAX);
    let mut due_first = sql::open_for(
        &mut conn,
        &who.user_id,
        &who.roles,
        None,
        bound.saturating_add(1),
    )
    .await?;
    let (remaining, next_cursor) = if due_first.len() > max {
        due_first.truncate(max);
        // Counted only when the bound bites: the common connect reads once.
        let open = sql::count_open_for(&mut conn, &who.user_id, &who.roles).await?;
        (
            u64::try_from(open).unwrap_or(0).saturating_sub(max as u64),
            due_first.last().map(|n| cursor_text(OpenCursor::after(n))),
        )
    } else {
        (0, None)
    };
    due_first.sort_by_key(|n| n.seq);
    Ok(Backlog {
        notifications: due_first,
        remaining,
        next_cursor,
    })
}

/// A page of the caller's own open notifications, due first, from
/// `cursor` (as [`Backlog::next_cursor`] or a previous page gave it): how a
/// viewer reads what a bounded replay left out. The page is audited as a
/// `replay.sent` row.
pub async fn open_page(
    notifications: &Notifications,
    who: &Identity,
    cursor: Option<&str>,
    limit: u32,
) -> Result<(Vec<Notification>, Option<String>), Error> {
    let after = cursor
        .map(|text| {
            parse_cursor(text)
                .ok_or_else(|| FieldError::new("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    let mut conn = notifications.store.conn().await?;
    let mut page = sql::open_for(
        &mut conn,
        &who.user_id,
        &who.roles,
        after,
        limit.saturating_add(1),
    )
    .await?;
    drop(conn);
    let next = if page.len() > limit as usize {
        page.truncate(limit as usize);
        page.last().map(|n| cursor_text(OpenCursor::after(n)))
    } else {
        None
    };
    if !page.is_empty() {
        let ids: Vec<&str> = page.iter().map(|n| n.id.as_str()).collect();
        let event = AuditEvent::new(Action::ReplaySent, Timestamp::now())
            .by(who)
            .user(who.user_id.clone())
            .detail(json!({
                "channel": "http",
                "count": page.len(),
                "notificationIds": ids,
                "cursor": cursor,
            }));
        audit::append_alone(&notifications.store, &event).await?;
    }
    Ok((page, next))
}

/// A cursor as the API shows it: opaque to clients.
fn cursor_text(cursor: OpenCursor) -> String {
    format!("{}.{}", cursor.ack_deadline.as_millis(), cursor.seq)
}

fn parse_cursor(text: &str) -> Option<OpenCursor> {
    let (deadline, seq) = text.split_once('.')?;
    Some(OpenCursor {
        ack_deadline: Timestamp::from_millis(deadline.parse().ok()?),
        seq: seq.parse().ok().filter(|seq| *seq > 0)?,
    })
}

/// How many ids a `replay.sent` row lists: the count is exact, the ids
/// past it are in the deliveries table.
const MAX_LISTED_IDS: usize = 100;

/// The records of one connect's replay: a delivery row per notification
/// reached (`replayed`), one `replay.sent` audit row for the whole replay
/// (not one per notification: a reconnecting viewer with hundreds open
/// would write hundreds of rows per connect), and a
/// `notification.undelivered` row for the one it stalled on, if it did.
pub fn replay_records(
    socket: &Sent,
    reached: &[&Notification],
    stalled_on: Option<&Notification>,
    remaining: u64,
) -> (Vec<Delivery>, Vec<AuditEvent>) {
    let now = Timestamp::now();
    let deliveries = reached
        .iter()
        .map(|notification| Delivery {
            notification_id: notification.id.clone(),
            user_id: socket.user_id.clone(),
            connection_id: socket.connection_id.clone(),
            delivered_at: now,
            replayed: true,
        })
        .collect();
    let ids: Vec<&str> = reached
        .iter()
        .take(MAX_LISTED_IDS)
        .map(|n| n.id.as_str())
        .collect();
    let mut events = Vec::with_capacity(2);
    // A socket gone before the first emit was sent nothing: no summary.
    if !reached.is_empty() {
        events.push(
            AuditEvent::new(Action::ReplaySent, now)
                .by_system()
                .user(socket.user_id.clone())
                .session(socket.session_id.as_deref())
                .detail(json!({
                    "channel": "socket.io",
                    "socketId": socket.connection_id,
                    "count": reached.len(),
                    "notificationIds": ids,
                    "remaining": remaining,
                })),
        );
    }
    if let Some(notification) = stalled_on {
        events.push(undelivered(
            notification,
            socket,
            crate::realtime::hub::SEND_BUFFER_FULL,
            true,
            now,
        ));
    }
    (deliveries, events)
}

/// The answer to an acknowledgement: the first one's time and author, also
/// when this call was a repeat.
#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub notification_id: String,
    pub acknowledged_at: Timestamp,
    pub acknowledged_by: String,
    /// True only for the call that closed the notification.
    pub first: bool,
}

/// Acknowledges a notification for `caller`. The first acknowledgement
/// wins by compare-and-set in the database; later ones (from any tab, or
/// any holder of the role) get the first one's answer.
pub async fn acknowledge(
    notifications: &Notifications,
    caller: &Identity,
    id: &str,
    connection_id: Option<&str>,
) -> Result<Acknowledged, Error> {
    let now = Timestamp::now();
    let mut tx = notifications.store.begin().await?;
    let notification = sql::find(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {id} not found")))?;
    if !notification.may_be_acknowledged_by(caller) {
        drop(tx);
        audit_refusal(notifications, caller, &notification, "not the recipient").await;
        // The same answer as for an unknown id, so ids cannot be probed.
        return Err(Error::NotFound(format!("notification {id} not found")));
    }
    if sql::acknowledge(&mut tx, id, &caller.user_id, connection_id, "socket", now).await? {
        audit::append(
            &mut tx,
            &AuditEvent::new(Action::NotificationAcknowledged, now)
                .by(caller)
                .about(&notification)
                .session(caller.session_id.as_deref())
                .detail(json!({
                    "socketId": connection_id,
                    "millisToAcknowledge": now.millis_since(notification.created_at),
                    "withinDeadline": now <= notification.ack_deadline,
                })),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        notifications.metrics.acknowledged(
            notification.severity.as_str(),
            now.millis_since(notification.created_at) as f64 / 1000.0,
        );
        tracing::info!(notification_id = %id, user_id = %caller.user_id, "acknowledged");
        let answer = Acknowledged {
            notification_id: id.to_string(),
            acknowledged_at: now,
            acknowledged_by: caller.user_id.clone(),
            first: true,
        };
        notifications
            .hub
            .send(
                vec![notification.recipient.room()],
                events::NOTIFICATION_ACKNOWLEDGED,
                &events::NotificationAcknowledged {
                    notification_id: &answer.notification_id,
                    acknowledged_at: answer.acknowledged_at,
                    acknowledged_by: &answer.acknowledged_by,
                },
            )
            .await;
        notifications
            .hub
            .console_update("acknowledged", Some(id), Some(&caller.user_id))
            .await;
        return Ok(answer);
    }
    // Not open any more: read what closed it, under the same transaction.
    let current = sql::find(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {id} not found")))?;
    drop(tx);
    match (
        current.state,
        current.acknowledged_at,
        current.acknowledged_by,
    ) {
        (State::Acknowledged, Some(at), Some(by)) => Ok(Acknowledged {
            notification_id: id.to_string(),
            acknowledged_at: at,
            acknowledged_by: by,
            first: false,
        }),
        (State::Cancelled, ..) => Err(Error::Expired(format!(
            "notification {id} was cancelled and needs no acknowledgement"
        ))),
        _ => Err(Error::Conflict(format!(
            "notification {id} cannot be acknowledged now"
        ))),
    }
}

/// Withdraws an open notification: recipients are told, escalation stops.
/// Cancelling a cancelled notification again answers as the first time.
pub async fn cancel(
    notifications: &Notifications,
    caller: &Identity,
    id: &str,
    reason: &str,
) -> Result<Notification, Error> {
    let now = Timestamp::now();
    let mut tx = notifications.store.begin().await?;
    let notification = sql::find(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {id} not found")))?;
    if !sql::cancel(&mut tx, id, &caller.user_id, reason, now).await? {
        drop(tx);
        return match notification.state {
            State::Cancelled => Ok(notification),
            _ => Err(Error::Conflict(format!(
                "notification {id} is {} and can no longer be cancelled",
                notification.state.as_str()
            ))),
        };
    }
    audit::append(
        &mut tx,
        &AuditEvent::new(Action::NotificationCancelled, now)
            .by(caller)
            .about(&notification)
            .detail(json!({ "reason": reason })),
    )
    .await?;
    let cancelled = sql::find(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {id} not found")))?;
    tx.commit().await.map_err(StoreError::from)?;
    notifications.metrics.cancelled.inc();
    notifications
        .hub
        .send(
            vec![cancelled.recipient.room()],
            events::NOTIFICATION_CANCELLED,
            &events::NotificationCancelled {
                notification_id: id,
                cancelled_at: now,
                reason,
            },
        )
        .await;
    notifications
        .hub
        .console_update("cancelled", Some(id), None)
        .await;
    Ok(cancelled)
}

/// Everything that happened to one notification, for the HTTP API.
pub struct Trace {
    pub notification: Notification,
    pub deliveries: Vec<Delivery>,
    pub escalations: Vec<FiredStep>,
    pub emails: Vec<EmailStatus>,
}

/// The notification named by its id or by its reference (`RB-42`, from an
/// escalation email), with its trace. An id wins over a reference.
pub async fn get(notifications: &Notifications, id: &str) -> Result<Trace, Error> {
    let mut conn = notifications.store.conn().await?;
    let found = match sql::find(&mut conn, id).await? {
        Some(notification) => Some(notification),
        None => match Reference::parse(id) {
            Some(reference) => sql::find_by_seq(&mut conn, reference.0).await?,
            None => None,
        },
    };
    let notification =
        found.ok_or_else(|| Error::NotFound(format!("notification {id} not found")))?;
    let id = notification.id.as_str();
    Ok(Trace {
        deliveries: sql::deliveries(&mut conn, id).await?,
        escalations: escalation_sql::fired_steps(&mut conn, id).await?,
        emails: escalation_sql::emails_for(&mut conn, id).await?,
        notification,
    })
}

pub async fn list(
    notifications: &Notifications,
    filter: &ListFilter,
) -> Result<Vec<Notification>, Error> {
    let mut conn = notifications.store.conn().await?;
    Ok(sql::list(&mut conn, filter).await?)
}

/// Records a refused acknowledgement; failure to audit is logged, since the
/// refusal itself changed nothing.
async fn audit_refusal(
    notifications: &Notifications,
    caller: &Identity,
    notification: &Notification,
    why: &str,
) {
    let event = AuditEvent::new(Action::NotificationAcknowledged, Timestamp::now())
        .by(caller)
        .about(notification)
        .outcome("refused")
        .detail(json!({ "reason": why }));
    if let Err(e) = audit::append_alone(&notifications.store, &event).await {
        tracing::warn!(error = %e, "could not audit a refused acknowledgement");
    }
}
