//! Raising, delivering, acknowledging and cancelling notifications.
//!
//! Owns: the order of operations that makes delivery durable — store and
//! audit in one transaction, then emit, then record each delivery — and the
//! compare-and-set that lets exactly one acknowledgement win. Both the HTTP
//! handlers and the Socket.IO handlers call these functions.
//! Never: emit a notification that is not committed, or answer success for
//! something that was not stored.

use serde_json::{Value, json};

use super::{Notification, RaiseContext, State, parse_raise};
use crate::app::AppState;
use crate::audit::{Action, AuditEvent};
use crate::auth::Identity;
use crate::clock::Timestamp;
use crate::error::Error;
use crate::realtime::Sent;
use crate::store::escalation::{self as escalation_sql, EmailStatus, FiredStep};
use crate::store::notifications::{self as sql, Delivery, ListFilter};
use crate::store::{StoreError, audit};

/// What a raise did: `created` is false when it was an idempotent retry.
pub struct Raised {
    pub notification: Notification,
    pub created: bool,
    pub deliveries: Vec<Delivery>,
}

/// Stores a new notification (committed before anything is sent), then
/// delivers it to every connected socket of its recipient(s).
pub async fn raise(
    state: &AppState,
    caller: &Identity,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<Raised, Error> {
    let now = Timestamp::now();
    let ack_within = |severity| state.config.ack_within(severity);
    let new = parse_raise(
        body,
        &RaiseContext {
            caller,
            idempotency_key,
            now,
            ack_within: &ack_within,
        },
    )?;

    // The escalation plan is written with the notification: the policy in
    // force now is the one it follows, whatever the config says later.
    let steps = crate::escalation::plan(&state.config.escalation, new.ack_deadline);
    let (id, idempotency_key, request_hash) = (
        new.id.clone(),
        new.idempotency_key.clone(),
        new.request_hash.clone(),
    );
    let Some(notification) = state.writes.insert(new, steps, caller).await? else {
        // The id or the idempotency key is taken: a retry gets the first
        // notification back, a different body under the same key is refused.
        let mut conn = state.store.conn().await?;
        let existing = match sql::find(&mut conn, &id).await? {
            Some(found) => Some(found),
            None => match &idempotency_key {
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
        let deliveries = sql::deliveries(&mut conn, &existing.id).await?;
        return Ok(Raised {
            notification: existing,
            created: false,
            deliveries,
        });
    };
    state.metrics.raised(notification.severity.as_str());
    tracing::info!(notification = %notification.id, severity = %notification.severity, "raised");

    let payload = serde_json::to_value(notification.to_wire(false)).expect("serializable");
    let sent = state
        .hub
        .deliver(
            vec![notification.recipient.room()],
            "critical_notification",
            payload,
        )
        .await;
    let sockets_reached = sent.len();
    let reached: Vec<_> = sent.into_iter().map(|s| (&notification, s)).collect();
    let deliveries = record_deliveries(state, &reached, false).await?;
    // Stored and delivered already: a failure here leaves escalation at the
    // deadline, which is still the policy, so the raise stands.
    if let Err(e) =
        crate::escalation::service::start_early_if_offline(state, &notification, sockets_reached)
            .await
    {
        tracing::error!(notification = %notification.id, error = %e, "could not start escalation early for an offline recipient");
    }
    state
        .hub
        .console_update("raised", Some(&notification.id), None)
        .await;
    Ok(Raised {
        notification,
        created: true,
        deliveries,
    })
}

/// Writes one delivery row and one audit row per (notification, socket),
/// all in one transaction. Called after the emit: a crash in between loses
/// only the record, never the notification, which stays open and is
/// replayed.
pub async fn record_deliveries(
    state: &AppState,
    reached: &[(&Notification, Sent)],
    replayed: bool,
) -> Result<Vec<Delivery>, Error> {
    if reached.is_empty() {
        return Ok(Vec::new());
    }
    let now = Timestamp::now();
    let action = if replayed {
        Action::NotificationReplayed
    } else {
        Action::NotificationDelivered
    };
    let records: Vec<(Delivery, AuditEvent)> = reached
        .iter()
        .map(|(notification, socket)| {
            let delivery = Delivery {
                notification_id: notification.id.clone(),
                user_id: socket.user_id.clone(),
                socket_id: socket.socket_id.clone(),
                delivered_at: now,
                replayed,
            };
            let event = AuditEvent::new(action, now)
                .by_system()
                .user(socket.user_id.clone())
                .about(notification)
                .session(socket.session_id.as_deref())
                .detail(json!({ "socketId": socket.socket_id }));
            (delivery, event)
        })
        .collect();
    let deliveries: Vec<Delivery> = records.iter().map(|(d, _)| d.clone()).collect();
    state.writes.record_deliveries(records).await?;
    for _ in &deliveries {
        state.metrics.delivered(replayed);
    }
    Ok(deliveries)
}

/// Open notifications a connecting user must be sent again, oldest first.
pub async fn pending_for(state: &AppState, who: &Identity) -> Result<Vec<Notification>, Error> {
    let mut conn = state.store.conn().await?;
    Ok(sql::open_for(&mut conn, &who.user_id, &who.roles).await?)
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
    state: &AppState,
    caller: &Identity,
    id: &str,
    socket_id: Option<&str>,
) -> Result<Acknowledged, Error> {
    let now = Timestamp::now();
    let mut tx = state.store.begin().await?;
    let notification = sql::find(&mut tx, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {id} not found")))?;
    if !notification.may_be_acknowledged_by(caller) {
        drop(tx);
        audit_refusal(state, caller, &notification, "not the recipient").await;
        return Err(Error::Forbidden(format!(
            "notification {id} is not addressed to you"
        )));
    }
    if sql::acknowledge(&mut tx, id, &caller.user_id, socket_id, "socket", now).await? {
        audit::append(
            &mut tx,
            &AuditEvent::new(Action::NotificationAcknowledged, now)
                .by(caller)
                .about(&notification)
                .session(caller.session_id.as_deref())
                .detail(json!({
                    "socketId": socket_id,
                    "millisToAcknowledge": now.millis_since(notification.created_at),
                    "withinDeadline": now <= notification.ack_deadline,
                })),
        )
        .await?;
        tx.commit().await.map_err(StoreError::from)?;
        state.metrics.acknowledged.inc();
        tracing::info!(notification = %id, user = %caller.user_id, "acknowledged");
        let answer = Acknowledged {
            notification_id: id.to_string(),
            acknowledged_at: now,
            acknowledged_by: caller.user_id.clone(),
            first: true,
        };
        state
            .hub
            .emit(
                vec![notification.recipient.room()],
                "notification_acknowledged",
                json!({
                    "notificationId": answer.notification_id,
                    "acknowledgedAt": answer.acknowledged_at,
                    "acknowledgedBy": answer.acknowledged_by,
                }),
            )
            .await;
        state
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
    state: &AppState,
    caller: &Identity,
    id: &str,
    reason: &str,
) -> Result<Notification, Error> {
    let now = Timestamp::now();
    let mut tx = state.store.begin().await?;
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
    state.metrics.cancelled.inc();
    state
        .hub
        .emit(
            vec![cancelled.recipient.room()],
            "notification_cancelled",
            json!({ "notificationId": id, "cancelledAt": now, "reason": reason }),
        )
        .await;
    state.hub.console_update("cancelled", Some(id), None).await;
    Ok(cancelled)
}

/// Everything that happened to one notification, for the HTTP API.
pub struct Trace {
    pub notification: Notification,
    pub deliveries: Vec<Delivery>,
    pub escalations: Vec<FiredStep>,
    pub emails: Vec<EmailStatus>,
}

pub async fn get(state: &AppState, id: &str) -> Result<Trace, Error> {
    let mut conn = state.store.conn().await?;
    let notification = sql::find(&mut conn, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {id} not found")))?;
    Ok(Trace {
        deliveries: sql::deliveries(&mut conn, id).await?,
        escalations: escalation_sql::fired_steps(&mut conn, id).await?,
        emails: escalation_sql::emails_for(&mut conn, id).await?,
        notification,
    })
}

pub async fn list(state: &AppState, filter: &ListFilter) -> Result<Vec<Notification>, Error> {
    let mut conn = state.store.conn().await?;
    Ok(sql::list(&mut conn, filter).await?)
}

/// Records a refused acknowledgement; failure to audit is logged, since the
/// refusal itself changed nothing.
async fn audit_refusal(
    state: &AppState,
    caller: &Identity,
    notification: &Notification,
    why: &str,
) {
    let event = AuditEvent::new(Action::NotificationAcknowledged, Timestamp::now())
        .by(caller)
        .about(notification)
        .outcome("refused")
        .detail(json!({ "reason": why }));
    if let Err(e) = audit::append_alone(&state.store, &event).await {
        tracing::warn!(error = %e, "could not audit a refused acknowledgement");
    }
}
